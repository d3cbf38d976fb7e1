//! Roughly what an idle WebSocket connection costs the server: the gateway
//! runs in this process, the clients in a child process (this same test
//! binary, running [`idle_clients`]), so the resident set measured here
//! holds the server's side only. Printed, not asserted: run with
//! `--nocapture` to read it.

// Helpers outside #[test] functions panic on the unexpected too.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use natter_proto::v1::ServerFrame;
use prost::Message as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

const CONNECTIONS: usize = 2_000;
/// Sessions opened before the baseline, so one-time allocations (the
/// allocator's arenas, lazily built tables) are not counted.
const WARM_UP: usize = 100;
/// Set in the child process: where to connect.
const CLIENTS_ENV: &str = "NATTER_GATEWAY_TEST_IDLE_CLIENTS";

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_per_idle_websocket_connection() {
    if std::env::var(CLIENTS_ENV).is_ok() {
        return;
    }
    let harness = Harness::start().await;
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "idle_clients", "--nocapture", "--test-threads=1"])
        .env(CLIENTS_ENV, harness.http_addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut step = async |command: &str, wait_for: &str| {
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
        let deadline = Duration::from_secs(120);
        tokio::time::timeout(deadline, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.trim_end().ends_with(wait_for) {
                    return;
                }
            }
            panic!("the client process ended before {wait_for}");
        })
        .await
        .expect("the client process keeps up");
        // Let the server settle what the last frames started.
        tokio::time::sleep(Duration::from_millis(300)).await;
    };

    step(&format!("open {WARM_UP}"), "opened").await;
    let baseline = rss_kib();
    step(&format!("connect {CONNECTIONS}"), "connected").await;
    let connected = rss_kib();
    step("hello", "opened").await;
    let idle = rss_kib();
    assert!(
        harness
            .has_live_session(&format!("u{}", CONNECTIONS - 1))
            .await
    );

    let per = |kib: u64| kib as f64 * 1024.0 / CONNECTIONS as f64;
    println!(
        "idle websocket connections: {CONNECTIONS}; server RSS {baseline} KiB before, \
         {connected} KiB upgraded without hello ({:.0} B each), \
         {idle} KiB with open idle sessions ({:.0} B each)",
        per(connected.saturating_sub(baseline)),
        per(idle.saturating_sub(baseline)),
    );
    step("quit", "quitting").await;
    let _ = child.wait().await;
    harness.stop().await;
}

/// The client side of [`memory_per_idle_websocket_connection`], run in a
/// child process; does nothing in an ordinary test run. Commands on stdin:
/// `open N` (N sessions with hello), `connect N` (N upgraded sockets),
/// `hello` (say hello on the sockets of `connect`), `quit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients() {
    let Ok(addr) = std::env::var(CLIENTS_ENV) else {
        return;
    };
    let url = format!("ws://{addr}/v1/connect");
    let mut warm = Vec::new();
    let mut idle = Vec::new();
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    while let Some(command) = commands.next_line().await.unwrap() {
        let mut words = command.split_whitespace();
        match (
            words.next(),
            words.next().and_then(|n| n.parse::<usize>().ok()),
        ) {
            (Some("open"), Some(n)) => {
                for i in 0..n {
                    let mut socket = ws_connect(&url, Some("natter.v1.proto"), None)
                        .await
                        .unwrap();
                    say_hello(&mut socket, &format!("warm{i}")).await;
                    warm.push(socket);
                }
                println!("opened");
            }
            (Some("connect"), Some(n)) => {
                for _ in 0..n {
                    idle.push(
                        ws_connect(&url, Some("natter.v1.proto"), None)
                            .await
                            .unwrap(),
                    );
                }
                println!("connected");
            }
            (Some("hello"), _) => {
                for (i, socket) in idle.iter_mut().enumerate() {
                    say_hello(socket, &format!("u{i}")).await;
                }
                println!("opened");
            }
            (Some("quit"), _) => {
                println!("quitting");
                return;
            }
            _ => panic!("unknown command {command:?}"),
        }
    }
}

async fn say_hello(socket: &mut Socket, user: &str) {
    let hello = hello(user, "d1", 0).encode_to_vec();
    socket.send(Message::Binary(hello.into())).await.unwrap();
    loop {
        match socket.next().await {
            Some(Ok(Message::Binary(bytes))) => {
                let frame = ServerFrame::decode(bytes).unwrap();
                assert!(
                    matches!(
                        frame.frame,
                        Some(natter_proto::v1::server_frame::Frame::Welcome(_))
                    ),
                    "{frame:?}"
                );
                return;
            }
            Some(Ok(_)) => continue,
            other => panic!("no welcome: {other:?}"),
        }
    }
}
