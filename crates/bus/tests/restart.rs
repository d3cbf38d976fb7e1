//! A persistent [`LocalBus`] across restarts: dropped without a goodbye,
//! and killed with `SIGKILL` mid-flight in a child process.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use futures::StreamExt;
use natter_bus::{
    Bus, BusError, ConsumerConfig, Deliveries, Delivery, DurableMessage, LOCAL_BUS_FILE, LocalBus,
    Outgoing, Storage, StreamConfig,
};

const HOUR: Duration = Duration::from_secs(3600);

/// The longest any single wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(15);

fn temporary_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("natter-bus-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temporary directory")
}

fn open(dir: &Path) -> LocalBus {
    LocalBus::open("natter", dir).expect("open the bus")
}

async fn consume(bus: &LocalBus, name: &str) -> Deliveries {
    bus.consume(&ConsumerConfig::new("events", name, "events.>"))
        .await
        .expect("consume")
}

async fn delivered(deliveries: &mut Deliveries) -> Delivery {
    tokio::time::timeout(WAIT, deliveries.next())
        .await
        .expect("a delivery in time")
        .expect("deliveries go on")
        .expect("a delivery")
}

/// Sequence and payload of the next delivery, acked.
async fn take(deliveries: &mut Deliveries) -> (u64, String) {
    let delivery = delivered(deliveries).await;
    let taken = (
        delivery.sequence,
        String::from_utf8(delivery.message.payload.to_vec()).expect("utf-8"),
    );
    delivery.ack().await.expect("ack");
    taken
}

async fn publish(bus: &LocalBus, payload: &str, dedup_id: Option<&str>) -> (u64, bool) {
    let persisted = bus
        .publish_durable("events.a", Outgoing::new(payload.to_owned()), dedup_id)
        .await
        .expect("durable publish");
    (persisted.sequence, persisted.duplicate)
}

/// Publishes, acks part, drops everything with a delivery in flight, and
/// opens the directory again: the unacked messages come back in order,
/// the acked ones do not, and sequences and dedup ids carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_come_back_after_a_restart() {
    let dir = temporary_dir();
    let bus = open(dir.path());
    assert_eq!(bus.path(), Some(dir.path().join(LOCAL_BUS_FILE).as_path()));
    bus.ensure_stream(&StreamConfig::new("events", &["events.>"], HOUR))
        .await
        .expect("ensure stream");
    for i in 1..=10 {
        let id = format!("id-{i}");
        assert_eq!(publish(&bus, &format!("m{i}"), Some(&id)).await, (i, false));
    }
    let mut worker = consume(&bus, "worker").await;
    for i in 1..=4 {
        assert_eq!(take(&mut worker).await, (i, format!("m{i}")));
    }
    let in_flight = delivered(&mut worker).await;
    assert_eq!(in_flight.sequence, 5);
    // A second consumer that never acked anything.
    let idle = consume(&bus, "idle").await;

    // The process dies: nothing is settled or closed.
    drop((in_flight, worker, idle, bus));

    let bus = open(dir.path());
    let mut worker = consume(&bus, "worker").await;
    let five = delivered(&mut worker).await;
    assert_eq!(
        (five.sequence, five.delivered),
        (5, 1),
        "the unacked message comes back first, counted anew"
    );
    five.ack().await.expect("ack");
    for i in 6..=10 {
        assert_eq!(take(&mut worker).await, (i, format!("m{i}")), "in order");
    }
    assert_eq!(
        publish(&bus, "retry", Some("id-3")).await,
        (3, true),
        "a dedup id inside the window is still a duplicate"
    );
    assert_eq!(
        publish(&bus, "m11", None).await,
        (11, false),
        "the sequence continues"
    );
    assert_eq!(take(&mut worker).await, (11, "m11".to_owned()));

    let mut idle = consume(&bus, "idle").await;
    for i in 1..=11 {
        assert_eq!(
            take(&mut idle).await.0,
            i,
            "the idle consumer gets everything"
        );
    }
    let result = bus
        .ensure_stream(&StreamConfig::new("other", &["events.b"], HOUR))
        .await;
    assert!(
        matches!(result, Err(BusError::Conflict(_))),
        "the stream's subjects are back too: {result:?}"
    );

    // Acks after the restart are kept too.
    drop((worker, idle, bus));
    let bus = open(dir.path());
    assert_eq!(publish(&bus, "m12", None).await, (12, false));
    let mut worker = consume(&bus, "worker").await;
    assert_eq!(take(&mut worker).await, (12, "m12".to_owned()));
    let mut idle = consume(&bus, "idle").await;
    assert_eq!(
        take(&mut idle).await.0,
        12,
        "acks no change had written yet are written when the bus closes"
    );
}

/// What the stream's limits discard stays discarded, on disk as in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_across_a_restart() {
    let dir = temporary_dir();
    let bus = open(dir.path());
    let mut config = StreamConfig::new("events", &["events.>"], HOUR);
    config.max_messages = Some(5);
    bus.ensure_stream(&config).await.expect("ensure stream");
    for i in 1..=50 {
        publish(&bus, &format!("m{i}"), None).await;
    }
    drop(bus);

    let bus = open(dir.path());
    let mut reader = consume(&bus, "reader").await;
    for i in 46..=50 {
        assert_eq!(take(&mut reader).await, (i, format!("m{i}")));
    }
    assert_eq!(publish(&bus, "m51", None).await, (51, false));
    assert_eq!(take(&mut reader).await.0, 51, "nothing older was kept");
}

/// A batch is on disk whole, its dedup ids too, whatever the stream held
/// before it; one that runs past the count limit keeps the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_survive_a_restart() {
    let dir = temporary_dir();
    let bus = open(dir.path());
    let mut config = StreamConfig::new("events", &["events.>"], HOUR);
    config.max_messages = Some(4);
    bus.ensure_stream(&config).await.expect("ensure stream");
    let batch = |range: std::ops::RangeInclusive<u32>| -> Vec<DurableMessage> {
        range
            .map(|i| DurableMessage {
                subject: "events.a".to_owned(),
                message: Outgoing::new(format!("m{i}")),
                dedup_id: Some(format!("id-{i}")),
            })
            .collect()
    };
    bus.publish_durable_batch(batch(1..=3))
        .await
        .expect("first batch");
    drop(bus);

    let bus = open(dir.path());
    let mut early = consume(&bus, "early").await;
    for i in 1..=3_u64 {
        assert_eq!(take(&mut early).await, (i, format!("m{i}")));
    }
    bus.publish_durable_batch(batch(4..=9))
        .await
        .expect("second batch");
    drop((early, bus));

    let bus = open(dir.path());
    let mut reader = consume(&bus, "reader").await;
    for i in 6..=9_u64 {
        assert_eq!(take(&mut reader).await, (i, format!("m{i}")));
    }
    let retried = bus
        .publish_durable_batch(batch(8..=9))
        .await
        .expect("retry");
    assert!(
        retried.iter().all(|p| p.duplicate),
        "the dedup ids are back: {retried:?}"
    );
}

/// A stream in memory storage is gone after a restart, with its messages
/// and its consumers' positions; one on disk is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_streams_do_not_outlive_the_bus() {
    let dir = temporary_dir();
    let bus = open(dir.path());
    let memory = StreamConfig {
        storage: Storage::Memory,
        ..StreamConfig::new("commands", &["commands.>"], HOUR)
    };
    bus.ensure_stream(&memory).await.expect("memory stream");
    bus.ensure_stream(&StreamConfig::new("events", &["events.>"], HOUR))
        .await
        .expect("disk stream");
    for payload in ["c1", "c2"] {
        bus.publish_durable("commands.a", Outgoing::new(payload), None)
            .await
            .expect("publish");
    }
    publish(&bus, "e1", None).await;
    let config = ConsumerConfig::new("commands", "worker", "commands.>");
    let mut worker = bus.consume(&config).await.expect("consume");
    assert_eq!(take(&mut worker).await, (1, "c1".to_owned()));
    drop((worker, bus));

    let bus = open(dir.path());
    let gone = bus.consume(&config).await;
    assert!(
        matches!(gone, Err(BusError::StreamNotFound { .. })),
        "the memory stream is gone: {gone:?}"
    );
    bus.ensure_stream(&memory)
        .await
        .expect("memory stream again");
    let persisted = bus
        .publish_durable("commands.a", Outgoing::new("c3"), None)
        .await
        .expect("publish");
    assert_eq!(persisted.sequence, 1, "a new stream starts afresh");
    let mut worker = bus.consume(&config).await.expect("consume");
    assert_eq!(take(&mut worker).await, (1, "c3".to_owned()));
    let mut reader = consume(&bus, "reader").await;
    assert_eq!(take(&mut reader).await, (1, "e1".to_owned()));
}

/// A deleted stream stays deleted, with its consumers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_stream_stays_deleted() {
    let dir = temporary_dir();
    let bus = open(dir.path());
    let config = StreamConfig::new("events", &["events.>"], HOUR);
    bus.ensure_stream(&config).await.expect("ensure stream");
    publish(&bus, "old", Some("id")).await;
    let mut reader = consume(&bus, "reader").await;
    take(&mut reader).await;
    drop(reader);
    bus.delete_stream("events").await.expect("delete");
    drop(bus);

    let bus = open(dir.path());
    let result = bus
        .publish_durable("events.a", Outgoing::new("x"), None)
        .await;
    assert!(
        matches!(result, Err(BusError::NoStream { .. })),
        "{result:?}"
    );
    bus.ensure_stream(&config).await.expect("ensure stream");
    assert_eq!(
        publish(&bus, "new", Some("id")).await,
        (1, false),
        "a new stream"
    );
    let mut reader = consume(&bus, "reader").await;
    assert_eq!(
        take(&mut reader).await,
        (1, "new".to_owned()),
        "a new consumer"
    );
}

#[test]
fn one_bus_per_directory() {
    let dir = temporary_dir();
    let bus = open(dir.path());
    let second = LocalBus::open("natter", dir.path());
    assert!(
        matches!(second, Err(BusError::Unavailable(_))),
        "{second:?}"
    );
    drop(bus);
    open(dir.path());
}

/// Set, in the child process of [`survives_kill_9`], to the directory of
/// the bus it works on.
const CHILD_DIR: &str = "NATTER_BUS_CRASH_CHILD_DIR";

/// What the child reports on stderr, one line each, once the bus returned
/// `Ok`: `published <sequence> <payload>` and `acked <sequence>`.
const REPORT: &str = "report:";

/// Kills the child when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // SIGKILL on Unix; fails only if the child is already gone.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child process publishes as fast as it can, and acks a little slower,
/// until it is killed with `SIGKILL`, at whatever point it is in a commit. Reopened,
/// the bus has every message the child was told was published, in order
/// and with its dedup id, and redelivers none the child was told was acked.
#[test]
fn survives_kill_9() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        child(Path::new(&dir));
        return;
    }
    let dir = temporary_dir();
    let mut child = Killed(
        Command::new(std::env::current_exe().expect("test binary"))
            .args(["survives_kill_9", "--exact", "--nocapture"])
            .env(CHILD_DIR, dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the child"),
    );
    let stderr = child.0.stderr.take().expect("child stderr");
    let (lines, reports) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if lines.send(line.expect("child stderr")).is_err() {
                break;
            }
        }
    });

    let mut published = BTreeMap::new();
    let mut acked = 0;
    let mut killed = false;
    let deadline = Instant::now() + WAIT;
    loop {
        let line = match reports.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => line,
            // The child is gone and everything it wrote is read.
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!("the child is too slow"),
        };
        let Some(report) = line.strip_prefix(REPORT) else {
            eprintln!("child: {line}");
            continue;
        };
        match report.split_whitespace().collect::<Vec<_>>()[..] {
            ["published", sequence, payload] => {
                published.insert(
                    sequence.parse::<u64>().expect("sequence"),
                    payload.to_owned(),
                );
            }
            ["acked", sequence] => acked = sequence.parse().expect("sequence"),
            _ => panic!("unexpected report {report:?}"),
        }
        if !killed && published.len() >= 300 && acked >= 50 {
            child.0.kill().expect("kill the child");
            killed = true;
        }
    }
    // The reports end when the child is gone.
    assert!(killed, "the child stopped before it was killed");
    let status = child.0.wait().expect("child status");
    assert!(!status.success(), "killed, not finished: {status}");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let bus = open(dir.path());
        let last = *published.keys().last().expect("published");
        let mut worker = consume(&bus, "worker").await;
        let mut sequence = 0;
        while sequence < last {
            let (next, payload) = take(&mut worker).await;
            // Acks wait for no flush, so the newest may be lost and come
            // back: the consumer resumes at or before the message after
            // its last ack, never past it.
            assert!(
                sequence != 0 || next <= acked + 1,
                "resumed at {next} after the last ack {acked}: one skipped"
            );
            assert!(
                sequence == 0 || next == sequence + 1,
                "{next} after {sequence}: in order, none lost"
            );
            if let Some(expected) = published.get(&next) {
                assert_eq!(&payload, expected, "message {next}");
            }
            sequence = next;
        }
        // Whatever the child stored after its last report is there too,
        // then the sequence carries on.
        let (marker, _) = publish(&bus, "marker", None).await;
        loop {
            let (next, payload) = take(&mut worker).await;
            assert_eq!(next, sequence + 1, "in order, none lost");
            sequence = next;
            if payload == "marker" {
                break;
            }
        }
        assert_eq!(sequence, marker);
        for (sequence, payload) in published.iter().rev().take(5) {
            let (first, duplicate) = publish(&bus, "retry", Some(payload)).await;
            assert_eq!(
                (first, duplicate),
                (*sequence, true),
                "the dedup id of {sequence}"
            );
        }
    });
}

/// The child of [`survives_kill_9`]: publishes with dedup ids while a
/// consumer acks, reporting each success, until it is killed.
fn child(dir: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let bus = open(dir);
        bus.ensure_stream(&StreamConfig::new("events", &["events.>"], HOUR))
            .await
            .expect("ensure stream");
        let mut worker = consume(&bus, "worker").await;
        tokio::spawn(async move {
            loop {
                let delivery = delivered(&mut worker).await;
                // Lag behind the publisher, so a backlog is unacked when
                // the kill comes.
                tokio::time::sleep(Duration::from_millis(3)).await;
                let sequence = delivery.sequence;
                delivery.ack().await.expect("ack");
                eprintln!("{REPORT}acked {sequence}");
            }
        });
        // Bounded, in case the parent is gone without killing it.
        for i in 0..100_000 {
            let payload = format!("p{i}");
            let (sequence, duplicate) = publish(&bus, &payload, Some(&payload)).await;
            assert!(!duplicate);
            eprintln!("{REPORT}published {sequence} {payload}");
        }
    });
}
