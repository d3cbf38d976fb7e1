//! Acknowledged means durable: a process that dies mid-write loses nothing
//! it acknowledged, and leaves seqs gap-free.
//!
//! The test runs itself again as a child process that appends from several
//! tasks, reports each acknowledged seq on stdout, and exits abruptly (no
//! destructors, no clean close) while appends are still in flight.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::{conversation, tenant, text};
use natter_core::{ConversationId, Limits, Role, Seq};
use natter_store::{ConversationStore, MessageRange};
use natter_store_embedded::EmbeddedStore;

const CHILD_DIR: &str = "NATTER_CRASH_TEST_DIR";
const CHILD_CONVERSATION: &str = "NATTER_CRASH_TEST_CONVERSATION";
/// Acknowledged appends the child waits for before it dies.
const ACKNOWLEDGED: u64 = 60;
const WRITERS: u64 = 4;

#[test]
fn acknowledged_appends_survive_a_crash() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        crashing_writer(&dir);
    }

    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let acme = tenant("acme");
    let id = runtime.block_on(async {
        let store = EmbeddedStore::open(dir.path(), Limits::default()).unwrap();
        let new = conversation(&acme, &[("alice", Role::Customer)]);
        store.create_conversation(&new).await.unwrap().id
    });

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "acknowledged_appends_survive_a_crash",
            "--nocapture",
        ])
        .env(CHILD_DIR, dir.path())
        .env(CHILD_CONVERSATION, id.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut acknowledged = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(seq) = line.unwrap().strip_prefix("acknowledged ") {
            acknowledged.push(seq.parse::<u64>().unwrap());
        }
    }
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "the child crashed on purpose, not by accident"
    );
    assert!(
        acknowledged.len() as u64 >= ACKNOWLEDGED,
        "the child acknowledged only {} appends",
        acknowledged.len()
    );

    runtime.block_on(async {
        let store = EmbeddedStore::open(dir.path(), Limits::default()).unwrap();
        let range = MessageRange::After {
            after: Seq::ZERO,
            limit: 1000,
        };
        let stored: Vec<u64> = store
            .list_messages(&acme, id, range)
            .await
            .unwrap()
            .iter()
            .map(|m| m.seq.get())
            .collect();
        let last = store.conversation(&acme, id).await.unwrap().last_seq.get();
        assert_eq!(
            stored,
            (1..=last).collect::<Vec<_>>(),
            "gap-free after recovery"
        );
        for seq in acknowledged {
            assert!(seq <= last, "acknowledged seq {seq} was lost");
        }
    });
}

/// The child: appends until enough are acknowledged, then exits at once.
fn crashing_writer(dir: &str) -> ! {
    let id: ConversationId = std::env::var(CHILD_CONVERSATION)
        .expect("conversation id from the parent")
        .parse()
        .expect("a conversation id");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = Arc::new(EmbeddedStore::open(dir, Limits::default()).expect("open store"));
        let (acknowledged, mut seqs) = tokio::sync::mpsc::channel(64);
        for writer in 0..WRITERS {
            let (store, acknowledged) = (store.clone(), acknowledged.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let message = text(id, "alice", &format!("w{writer}-{i}"), "hi");
                    let appended = store
                        .append_message(&tenant("acme"), message)
                        .await
                        .expect("append");
                    if acknowledged.send(appended.message.seq).await.is_err() {
                        break;
                    }
                }
            });
        }
        let mut out = std::io::stdout().lock();
        for _ in 0..ACKNOWLEDGED {
            let seq = seqs.recv().await.expect("writers keep appending");
            writeln!(out, "acknowledged {seq}").expect("report to the parent");
            out.flush().expect("report to the parent");
        }
        // Exits without running destructors: the store is never closed and
        // the writers are mid-transaction.
        std::process::exit(0);
    })
}
