//! Acknowledged means durable: a process that dies mid-write loses nothing
//! it acknowledged, leaves each conversation's seqs gap-free, and keeps an
//! announcement exactly when it keeps the messages of its write.
//!
//! The test runs itself again as a child process that writes messages to
//! several conversations from several tasks at once (so their writes share
//! transactions), reports each acknowledged write on stdout, and exits
//! abruptly (no destructors, no clean close) while writes are still in
//! flight.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{VERSION, conversation, numbered, tenant};
use natter_core::{ConversationId, Limits, Role, Seq};
use natter_store::{Announcement, ConversationStore, MessageRange};
use natter_store_embedded::EmbeddedStore;

const CHILD_DIR: &str = "NATTER_CRASH_TEST_DIR";
const CHILD_CONVERSATIONS: &str = "NATTER_CRASH_TEST_CONVERSATIONS";
/// Acknowledged writes the child waits for before it dies.
const ACKNOWLEDGED: usize = 60;
/// Writers, one conversation each, as a sequencer writes many at once.
const WRITERS: usize = 4;
/// Messages in each write.
const PER_WRITE: u64 = 3;

#[test]
fn acknowledged_writes_survive_a_crash() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        crashing_writer(&dir);
    }

    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let acme = tenant("acme");
    let ids: Vec<ConversationId> = runtime.block_on(async {
        let store = EmbeddedStore::open(dir.path(), Limits::default()).unwrap();
        let mut ids = Vec::new();
        for _ in 0..WRITERS {
            let new = conversation(&acme, &[("alice", Role::Customer)]);
            ids.push(store.create_conversation(&new).await.unwrap().id);
        }
        ids
    });
    // The store's last commit task may hold the file a moment after the
    // store is dropped; the child must find it free.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = EmbeddedStore::open(dir.path(), Limits::default()) {
        assert!(Instant::now() < deadline, "the file stays open: {e}");
        std::thread::sleep(Duration::from_millis(10));
    }

    let listed: Vec<String> = ids.iter().map(ToString::to_string).collect();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "acknowledged_writes_survive_a_crash",
            "--nocapture",
        ])
        .env(CHILD_DIR, dir.path())
        .env(CHILD_CONVERSATIONS, listed.join(","))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The highest acknowledged seq of each conversation.
    let mut acknowledged = vec![0u64; WRITERS];
    let mut count = 0;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(report) = line.strip_prefix("acknowledged ") {
            let (writer, seq) = report.split_once(' ').unwrap();
            let (writer, seq): (usize, u64) = (writer.parse().unwrap(), seq.parse().unwrap());
            acknowledged[writer] = acknowledged[writer].max(seq);
            count += 1;
        }
    }
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "the child crashed on purpose, not by accident"
    );
    assert!(
        count >= ACKNOWLEDGED,
        "the child acknowledged only {count} writes"
    );

    runtime.block_on(async {
        let store = EmbeddedStore::open(dir.path(), Limits::default()).unwrap();
        for (writer, (id, acknowledged)) in ids.into_iter().zip(acknowledged).enumerate() {
            let mut stored = Vec::new();
            loop {
                let range = MessageRange::After {
                    after: Seq::new(stored.last().copied().unwrap_or(0)),
                    limit: 1000,
                };
                let page = store.list_messages(&acme, id, range).await.unwrap();
                if page.is_empty() {
                    break;
                }
                stored.extend(page.iter().map(|m| m.seq.get()));
            }
            let last = store.conversation(&acme, id).await.unwrap().last_seq.get();
            assert_eq!(
                stored,
                (1..=last).collect::<Vec<_>>(),
                "gap-free after recovery, and the last seq agrees"
            );
            assert!(
                acknowledged <= last,
                "acknowledged seq {acknowledged} was lost"
            );
            // Each write's announcement names the last seq it wrote: one
            // per write that landed, none of one that did not.
            let partition = writer as u32;
            let kept = store.announcements(partition, 0, 10_000).await.unwrap();
            let named: Vec<u64> = kept
                .iter()
                .map(|a| {
                    String::from_utf8(a.events.clone())
                        .unwrap()
                        .parse()
                        .unwrap()
                })
                .collect();
            let landed: Vec<u64> = (1..=last / PER_WRITE).map(|w| w * PER_WRITE).collect();
            assert_eq!(named, landed, "writer {writer}");
        }
    });
}

/// The child: writes until enough are acknowledged, then exits at once.
fn crashing_writer(dir: &str) -> ! {
    let ids: Vec<ConversationId> = std::env::var(CHILD_CONVERSATIONS)
        .expect("conversation ids from the parent")
        .split(',')
        .map(|id| id.parse().expect("a conversation id"))
        .collect();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = Arc::new(EmbeddedStore::open(dir, Limits::default()).expect("open store"));
        let (acknowledged, mut reports) = tokio::sync::mpsc::channel(64);
        for (writer, id) in ids.into_iter().enumerate() {
            let (store, acknowledged) = (store.clone(), acknowledged.clone());
            tokio::spawn(async move {
                for write in 0.. {
                    let seqs = write * PER_WRITE + 1..=(write + 1) * PER_WRITE;
                    let batch: Vec<_> = seqs
                        .map(|seq| (tenant("acme"), numbered(id, "alice", seq)))
                        .collect();
                    let last = (write + 1) * PER_WRITE;
                    // Each writer is the sequencer of a partition of its own.
                    let announcement = Announcement {
                        partition: writer as u32,
                        version: VERSION + write,
                        events: last.to_string().into_bytes(),
                    };
                    store
                        .write_messages(&batch, Some(&announcement), announcement.version)
                        .await
                        .expect("write messages");
                    if acknowledged.send((writer, last)).await.is_err() {
                        break;
                    }
                }
            });
        }
        let mut out = std::io::stdout().lock();
        for _ in 0..ACKNOWLEDGED {
            let (writer, seq) = reports.recv().await.expect("writers keep writing");
            writeln!(out, "acknowledged {writer} {seq}").expect("report to the parent");
            out.flush().expect("report to the parent");
        }
        // Exits without running destructors: the store is never closed and
        // the writers are mid-transaction.
        std::process::exit(0);
    })
}
