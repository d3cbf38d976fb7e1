//! The conformance suite every bus implementation must pass, so the
//! in-process bus and NATS behave the same to the services.
//!
//! Each check takes a factory that opens a bus on a prefix; two buses
//! opened on the same prefix must reach the same subjects and streams, as
//! two processes on one NATS server do. Every check works under a prefix of
//! its own and deletes the streams it made, even when it fails.
//! Instantiate all checks with [`bus_conformance!`](crate::bus_conformance).
//!
//! No check sleeps to wait for something to be ready: waits are bounded
//! polls, and a missing message is detected by a marker published after it.

use std::collections::BTreeMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;

use crate::{
    Bus, BusError, ConsumerConfig, Deliveries, Delivery, DurableMessage, Incoming,
    MAX_PAYLOAD_BYTES, Outgoing, Persisted, Storage, StreamConfig, Subscription, TRACEPARENT,
    partition, partition_subject,
};

/// Expands to one `#[tokio::test]` per conformance check. `$factory` is an
/// `async fn(&str) -> impl Bus` in the calling crate that opens a bus on
/// the given prefix.
#[macro_export]
macro_rules! bus_conformance {
    ($factory:path) => {
        $crate::bus_conformance!(@each $factory;
            publish_reaches_matching_subscribers,
            prefixes_keep_buses_apart,
            queue_groups_share_the_work,
            request_gets_the_reply,
            request_without_responders_fails_fast,
            request_times_out,
            durable_messages_arrive_in_order,
            unsettled_deliveries_come_back,
            nak_redelivers_before_later_messages,
            dedup_ids_store_once_within_the_window,
            durable_batches_store_in_order,
            memory_streams_work_alike,
            partitions_route_each_key_to_one_consumer,
            one_delivery_in_flight_across_processes,
            ack_floor_follows_the_acks,
            trace_context_crosses_the_bus,
            bad_input_is_refused,
            stream_lifecycle,
            concurrent_publishers_all_arrive,
        );
    };
    (@each $factory:path; $($check:ident,)*) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                $crate::conformance::$check(async |prefix: &str| $factory(prefix).await).await;
            }
        )*
    };
}

/// The longest any single wait may take before the check fails.
const WAIT: Duration = Duration::from_secs(15);

/// A short ack wait, so redelivery checks finish quickly.
const SHORT_ACK_WAIT: Duration = Duration::from_millis(500);

const HOUR: Duration = Duration::from_secs(3600);

fn unique_prefix() -> String {
    natter_testkit::unique_name("t")
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

async fn received(subscription: &mut Subscription, what: &str) -> Incoming {
    within(what, subscription.next())
        .await
        .unwrap_or_else(|| panic!("subscription ended while waiting for {what}"))
}

async fn delivered(deliveries: &mut Deliveries, what: &str) -> Delivery {
    loop {
        match within(what, deliveries.next()).await {
            Some(Ok(delivery)) => return delivery,
            // Transient errors (a missed heartbeat) are allowed; the
            // bounded wait still catches a stream that never recovers.
            Some(Err(err)) => eprintln!("consumer error while waiting for {what}: {err}"),
            None => panic!("deliveries ended while waiting for {what}"),
        }
    }
}

fn text(message: &Incoming) -> &str {
    std::str::from_utf8(&message.payload).expect("utf-8 payload")
}

/// Runs `body`, deletes `streams` whatever happened, then re-raises a
/// failure.
async fn cleaning_up(bus: &dyn Bus, streams: &[&str], body: impl Future<Output = ()>) {
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    for stream in streams {
        if let Err(err) = bus.delete_stream(stream).await {
            eprintln!("cleanup: could not delete stream {stream}: {err}");
        }
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn ensure(bus: &dyn Bus, config: &StreamConfig) {
    bus.ensure_stream(config)
        .await
        .unwrap_or_else(|err| panic!("ensure stream {}: {err}", config.name));
}

async fn publish(bus: &dyn Bus, subject: &str, payload: &str) {
    bus.publish(subject, Outgoing::new(payload.to_owned()))
        .await
        .unwrap_or_else(|err| panic!("publish to {subject}: {err}"));
}

async fn publish_durable(bus: &dyn Bus, subject: &str, payload: &str) -> u64 {
    let persisted = bus
        .publish_durable(subject, Outgoing::new(payload.to_owned()), None)
        .await
        .unwrap_or_else(|err| panic!("durable publish to {subject}: {err}"));
    assert!(!persisted.duplicate);
    persisted.sequence
}

async fn consume(bus: &dyn Bus, config: &ConsumerConfig) -> Deliveries {
    bus.consume(config)
        .await
        .unwrap_or_else(|err| panic!("consume {}: {err}", config.name))
}

/// Subscribers see what matches their subject, `*` (one token) and `>`
/// (one or more tokens) included, with headers and payload intact and the
/// prefix removed from the subject.
pub async fn publish_reaches_matching_subscribers<B: Bus>(factory: impl AsyncFn(&str) -> B) {
    let bus = factory(&unique_prefix()).await;
    let mut subscriptions = Vec::new();
    for filter in ["greet.alice", "greet.*", "greet.>", ">"] {
        let subscription = bus.subscribe(filter, None).await.expect("subscribe");
        subscriptions.push((filter, subscription));
    }

    bus.publish(
        "greet.alice",
        Outgoing::new("hi").with_header("x-kind", "hello"),
    )
    .await
    .expect("publish");
    for subject in ["greet.alice.bob", "greet", "other.x"] {
        publish(&bus, subject, subject).await;
    }
    publish(&bus, "greet.alice", "end").await;

    let expected: [(&str, &[&str]); 4] = [
        ("greet.alice", &["greet.alice"]),
        ("greet.*", &["greet.alice"]),
        ("greet.>", &["greet.alice", "greet.alice.bob"]),
        (">", &["greet.alice", "greet.alice.bob", "greet", "other.x"]),
    ];
    for ((filter, subscription), (_, subjects)) in subscriptions.iter_mut().zip(expected) {
        let first = received(subscription, filter).await;
        assert_eq!(first.subject, "greet.alice", "{filter}");
        assert_eq!(text(&first), "hi");
        assert_eq!(first.headers.get("x-kind"), Some("hello"));
        assert_eq!(first.reply, None);
        let mut seen = vec![first.subject];
        loop {
            let message = received(subscription, filter).await;
            if text(&message) == "end" {
                break;
            }
            seen.push(message.subject);
        }
        assert_eq!(seen, subjects, "subjects seen by {filter}");
    }
}

/// Buses on different prefixes share neither subjects nor streams.
pub async fn prefixes_keep_buses_apart<B: Bus>(factory: impl AsyncFn(&str) -> B) {
    let ours = factory(&unique_prefix()).await;
    let theirs = factory(&unique_prefix()).await;
    let mut our_view = ours.subscribe(">", None).await.expect("subscribe");
    let mut their_view = theirs.subscribe(">", None).await.expect("subscribe");

    publish(&theirs, "shared.subject", "theirs").await;
    assert_eq!(
        text(&received(&mut their_view, "their message").await),
        "theirs"
    );
    publish(&ours, "shared.subject", "ours").await;
    assert_eq!(text(&received(&mut our_view, "our message").await), "ours");

    let config = StreamConfig::new("shared", &["kept.>"], HOUR);
    ensure(&ours, &config).await;
    cleaning_up(&ours, &["shared"], async {
        ensure(&theirs, &config).await;
        cleaning_up(&theirs, &["shared"], async {
            assert_eq!(publish_durable(&ours, "kept.1", "a").await, 1);
            assert_eq!(publish_durable(&ours, "kept.1", "b").await, 2);
            assert_eq!(publish_durable(&theirs, "kept.1", "c").await, 1);
        })
        .await;
    })
    .await;
}

/// Each message goes to exactly one member of a queue group, while a
/// subscriber outside the group sees them all.
pub async fn queue_groups_share_the_work<B: Bus>(factory: impl AsyncFn(&str) -> B) {
    const COUNT: usize = 60;
    let bus = factory(&unique_prefix()).await;
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(
            bus.subscribe("work.*", Some("workers"))
                .await
                .expect("subscribe member"),
        );
    }
    let mut watcher = bus.subscribe("work.*", None).await.expect("subscribe");

    for i in 0..COUNT {
        publish(&bus, &format!("work.{}", i % 3), &i.to_string()).await;
    }
    publish(&bus, "work.end", "end").await;

    let mut watched = Vec::new();
    loop {
        let message = received(&mut watcher, "watched message").await;
        if text(&message) == "end" {
            break;
        }
        watched.push(text(&message).parse::<usize>().expect("number"));
    }
    assert_eq!(watched, (0..COUNT).collect::<Vec<_>>());

    // Every message was handed to its member before the marker reached
    // the watcher, so once the marker is in, the rest can be drained.
    let mut per_member = vec![Vec::new(); members.len()];
    let mut marker_seen = 0;
    let mut merged = futures::stream::select_all(
        members
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.map(move |m| (i, m))),
    );
    while marker_seen == 0 {
        let (member, message) = within("queue group message", merged.next())
            .await
            .expect("members ended");
        match text(&message) {
            "end" => marker_seen += 1,
            n => per_member[member].push(n.parse::<usize>().expect("number")),
        }
    }
    while let Some(Some((member, message))) = merged.next().now_or_never() {
        match text(&message) {
            "end" => marker_seen += 1,
            n => per_member[member].push(n.parse::<usize>().expect("number")),
        }
    }
    assert_eq!(marker_seen, 1, "the marker went to one member");
    let mut all: Vec<usize> = per_member.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..COUNT).collect::<Vec<_>>(), "each message once");
    assert!(
        per_member.iter().all(|m| !m.is_empty()),
        "every member got work: {per_member:?}"
    );
}

/// A responder replies to `reply`; concurrent requests get their own
/// replies.
pub async fn request_gets_the_reply<B: Bus>(factory: impl AsyncFn(&str) -> B) {
    let bus = Arc::new(factory(&unique_prefix()).await);
    let mut requests = bus
        .subscribe("svc.echo", Some("echo"))
        .await
        .expect("subscribe");
    let responder = {
        let bus = Arc::clone(&bus);
        tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                let reply_to = request
                    .reply
                    .clone()
                    .expect("a request has a reply subject");
                let reply = Outgoing::new(text(&request).to_uppercase())
                    .with_header("x-seen", request.headers.get("x-ask").unwrap_or("-"));
                bus.publish(&reply_to, reply).await.expect("reply");
            }
        })
    };

    let asks = (0..5).map(|i| {
        let bus = Arc::clone(&bus);
        async move {
            let ask = Outgoing::new(format!("ping {i}")).with_header("x-ask", i.to_string());
            let reply = bus
                .request("svc.echo", ask, WAIT)
                .await
                .expect("request answered");
            assert_eq!(text(&reply), format!("PING {i}"));
            assert_eq!(reply.headers.get("x-seen"), Some(i.to_string().as_str()));
        }
    });
    within("replies", futures::future::join_all(asks)).await;
    responder.abort();
}

/// A request nobody subscribes to fails at once with `NoResponders`,
/// not after its timeout.
pub async fn request_without_responders_fails_fast<B: Bus>(factory: impl AsyncFn(&str) -> B) {
    let bus = factory(&unique_prefix()).await;
    let started = Instant::now();
    let result = bus
        .request("nobody.home", Outgoing::new("hello?"), WAIT)
        .await;
    assert!(
        matches!(result, Err(BusError::NoResponders { .. })),
        "expected NoResponders, got {result:?}"
    );
    assert!(started.elapsed() < WAIT / 2, "took {:?}", started.elapsed());
}

/// A request whose responder stays silent fails with `Timeout`.
pub async fn request_times_out<B: Bus>(factory: impl AsyncFn(&str) -> B) {
    let bus = factory(&unique_prefix()).await;
    let _silent = bus.subscribe("svc.slow", None).await.expect("subscribe");
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let result = bus.request("svc.slow", Outgoing::new("?"), timeout).await;
    assert!(
        matches!(result, Err(BusError::Timeout { .. })),
        "expected Timeout, got {result:?}"
    );
    assert!(started.elapsed() >= timeout, "gave up early");
}

/// Durable messages get consecutive sequences and reach a consumer in
/// order, filtered by subject; new messages follow live.
pub async fn durable_messages_arrive_in_order<B: Bus>(factory: impl AsyncFn(&str) -> B) {
    let bus = factory(&unique_prefix()).await;
    let config = StreamConfig::new("orders", &["orders.*"], HOUR);
    ensure(&bus, &config).await;
    ensure(&bus, &config).await;
    cleaning_up(&bus, &["orders"], async {
        let mut expected = Vec::new();
        for i in 0..20 {
            let sequence = publish_durable(&bus, "orders.mine", &format!("m{i}")).await;
            expected.push((sequence, format!("m{i}")));
            publish_durable(&bus, "orders.other", &format!("o{i}")).await;
        }
        assert_eq!(
            expected.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            (0..20).map(|i| 2 * i + 1).collect::<Vec<_>>(),
            "sequences are consecutive across the stream"
        );

        let mut deliveries = consume(
            &bus,
            &ConsumerConfig::new("orders", "reader", "orders.mine"),
        )
        .await;
        for (sequence, payload) in &expected {
            let delivery = delivered(&mut deliveries, payload).await;
            assert_eq!(delivery.sequence, *sequence);
            assert_eq!(delivery.delivered, 1);
            assert_eq!(delivery.message.subject, "orders.mine");
            assert_eq!(text(&delivery.message), payload);
            delivery.ack().await.expect("ack");
        }
        let sequence = publish_durable(&bus, "orders.mine", "live").await;
        let live = delivered(&mut deliveries, "live message").await;
        assert_eq!((live.sequence, text(&live.message)), (sequence, "live"));
        live.ack().await.expect("ack");
    })
    .await;
}

/// An unsettled delivery comes back after the ack wait, and again after
/// its consumer is re-created by another process; acked ones never do.
pub async fn unsettled_deliveries_come_back<B: Bus>(factory: impl AsyncFn(&str) -> B) {
    let prefix = unique_prefix();
    let first = factory(&prefix).await;
    ensure(&first, &StreamConfig::new("jobs", &["jobs.>"], HOUR)).await;
    let mut consumer = ConsumerConfig::new("jobs", "worker", "jobs.>");
    consumer.ack_wait = SHORT_ACK_WAIT;
    cleaning_up(&first, &["jobs"], async {
        for payload in ["a", "b", "c"] {
            publish_durable(&first, "jobs.x", payload).await;
        }
        let mut deliveries = consume(&first, &consumer).await;
        let a = delivered(&mut deliveries, "a").await;
        assert_eq!(text(&a.message), "a");
        a.ack().await.expect("ack a");

        let b = delivered(&mut deliveries, "b").await;
        assert_eq!((text(&b.message), b.delivered), ("b", 1));
        drop(b);
        let b = delivered(&mut deliveries, "b again").await;
        assert_eq!(
            text(&b.message),
            "b",
            "the unacked message comes back first"
        );
        assert!(b.delivered >= 2, "counted as a redelivery: {}", b.delivered);
        // The process dies with `b` unsettled.
        drop(b);
        drop(deliveries);

        let second = factory(&prefix).await;
        let mut deliveries = consume(&second, &consumer).await;
        let b = delivered(&mut deliveries, "b after restart").await;
        assert_eq!(text(&b.message), "b", "acked `a` is not redelivered");
        assert!(b.delivered >= 3, "counted as a redelivery: {}", b.delivered);
        b.ack().await.expect("ack b");
        let c = delivered(&mut deliveries, "c").await;
        assert_eq!((text(&c.message), c.delivered), ("c", 1));
        c.ack().await.expect("ack c");
        publish_durable(&second, "jobs.x", "d").await;
        let d = delivered(&mut deliveries, "d").await;
        assert_eq!(text(&d.message), "d", "nothing else was pending");
        d.ack().await.expect("ack d");
    })
    .await;
}

/// A nakked message is redelivered (after its delay) before any later
/// message.
pub async fn nak_redelivers_before_later_messages<B: Bus>(factory: impl AsyncFn(&str) -> B) {
    let bus = factory(&unique_prefix()).await;
    ensure(&bus, &StreamConfig::new("retry", &["retry"], HOUR)).await;
    cleaning_up(&bus, &["retry"], async {
        for payload in ["1", "2", "3"] {
            publish_durable(&bus, "retry", payload).await;
        }
        let mut deliveries = consume(&bus, &ConsumerConfig::new("retry", "worker", "retry")).await;

        let one = delivered(&mut deliveries, "1").await;
        assert_eq!((text(&one.message), one.delivered), ("1", 1));
        one.nak(Duration::ZERO).await.expect("nak");
        let one = delivered(&mut deliveries, "1 again").await;
        assert_eq!((text(&one.message), one.delivered), ("1", 2));

        let delay = Duration::from_millis(300);
        let nakked_at = Instant::now();
        one.nak(delay).await.expect("nak with delay");
        let one = delivered(&mut deliveries, "1 after the delay").await;
        assert_eq!((text(&one.message), one.delivered), ("1", 3));
        assert!(nakked_at.elapsed() >= delay, "redelivered before the delay");
        one.ack().await.expect("ack");

        for payload in ["2", "3"] {
            let next = delivered(&mut deliveries, payload).await;
            assert_eq!((text(&next.message), next.delivered), (payload, 1));
            next.ack().await.expect("ack");
        }
    })
    .await;
}

/// A publish repeated with the same dedup id inside the duplicate window
/// is stored once; after the window the id is new again.
pub async fn dedup_ids_store_once_within_the_window<B: Bus>(factory: impl AsyncFn(&str) -> B) {
    let bus = factory(&unique_prefix()).await;
    let mut config = StreamConfig::new("dedup", &["dedup.*"], HOUR);
    config.duplicate_window = Duration::from_secs(1);
    ensure(&bus, &config).await;
    cleaning_up(&bus, &["dedup"], async {
        let send = async |payload: &str, id: &str| {
            bus.publish_durable("dedup.a", Outgoing::new(payload.to_owned()), Some(id))
                .await
                .expect("durable publish")
        };
        let first = send("first", "id-1").await;
        assert!(!first.duplicate);
        let retry = send("retry", "id-1").await;
        assert!(retry.duplicate, "a retry inside the window is a duplicate");
        assert_eq!(
            retry.sequence, first.sequence,
            "a duplicate reports the first sequence"
        );
        let other = send("other", "id-2").await;
        assert_eq!(
            (other.sequence, other.duplicate),
            (first.sequence + 1, false)
        );

        let mut deliveries =
            consume(&bus, &ConsumerConfig::new("dedup", "reader", "dedup.*")).await;
        for payload in ["first", "other"] {
            let delivery = delivered(&mut deliveries, payload).await;
            assert_eq!(text(&delivery.message), payload, "the retry was not stored");
            delivery.ack().await.expect("ack");
        }

        let deadline = Instant::now() + WAIT;
        let late = loop {
            let late = send("late", "id-1").await;
            if !late.duplicate {
                break late;
            }
            assert!(Instant::now() < deadline, "dedup id never expired");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(late.sequence, other.sequence + 1);
        let delivery = delivered(&mut deliveries, "late").await;
        assert_eq!(text(&delivery.message), "late");
        delivery.ack().await.expect("ack");
    })
    .await;
}

/// A batch is stored as if published one message after another: in
/// order, with sequences that follow on, and a dedup id repeated in the
/// batch or in a retry of it stored once.
pub async fn durable_batches_store_in_order<B: Bus>(factory: impl AsyncFn(&str) -> B) {
    let bus = factory(&unique_prefix()).await;
    ensure(&bus, &StreamConfig::new("batch", &["batch.*"], HOUR)).await;
    cleaning_up(&bus, &["batch"], async {
        let batch = |entries: &[(&str, &str, &str)]| -> Vec<DurableMessage> {
            entries
                .iter()
                .map(|&(subject, payload, id)| DurableMessage {
                    subject: subject.to_owned(),
                    message: Outgoing::new(payload.to_owned()),
                    dedup_id: Some(id.to_owned()),
                })
                .collect()
        };
        let entries = [
            ("batch.x", "a", "id-a"),
            ("batch.y", "b", "id-b"),
            ("batch.x", "a again", "id-a"),
            ("batch.x", "c", "id-c"),
        ];
        let sequences = |persisted: Vec<Persisted>| -> Vec<(u64, bool)> {
            persisted
                .iter()
                .map(|p| (p.sequence, p.duplicate))
                .collect()
        };
        let first = bus
            .publish_durable_batch(batch(&entries))
            .await
            .expect("batch publish");
        assert_eq!(
            sequences(first),
            [(1, false), (2, false), (1, true), (3, false)]
        );
        let retry = bus
            .publish_durable_batch(batch(&entries))
            .await
            .expect("batch retry");
        assert_eq!(
            sequences(retry),
            [(1, true), (2, true), (1, true), (3, true)],
            "a retried batch is stored once"
        );
        assert!(
            bus.publish_durable_batch(Vec::new())
                .await
                .expect("empty batch")
                .is_empty()
        );

        let invalid = bus
            .publish_durable_batch(batch(&[("batch.x", "d", "id-d"), ("batch.x", "e", "")]))
            .await;
        assert!(
            matches!(invalid, Err(BusError::Invalid { .. })),
            "expected Invalid for an empty dedup id, got {invalid:?}"
        );
        let uncaptured = bus
            .publish_durable_batch(batch(&[("elsewhere.x", "f", "id-f")]))
            .await;
        assert!(
            matches!(uncaptured, Err(BusError::NoStream { .. })),
            "expected NoStream, got {uncaptured:?}"
        );
        assert_eq!(
            publish_durable(&bus, "batch.x", "g").await,
            4,
            "nothing of the refused batches was stored"
        );

        let mut deliveries =
            consume(&bus, &ConsumerConfig::new("batch", "reader", "batch.*")).await;
        for payload in ["a", "b", "c", "g"] {
            let delivery = delivered(&mut deliveries, payload).await;
            assert_eq!(text(&delivery.message), payload, "in batch order");
            delivery.ack().await.expect("ack");
        }
    })
    .await;
}

/// A stream in memory storage stores, dedups and delivers as one on disk
/// does, and keeps its storage: asking for the other is a conflict.
pub async fn memory_streams_work_alike<B: Bus>(factory: impl AsyncFn(&str) -> B) {
    let bus = factory(&unique_prefix()).await;
    let config = StreamConfig {
        storage: Storage::Memory,
        ..StreamConfig::new("memory", &["memory.*"], HOUR)
    };
    ensure(&bus, &config).await;
    cleaning_up(&bus, &["memory"], async {
        ensure(&bus, &config).await;
        let on_disk = bus
            .ensure_stream(&StreamConfig {
                storage: Storage::Disk,
                ..config.clone()
            })
            .await;
        assert!(
            matches!(on_disk, Err(BusError::Conflict(_))),
            "expected Conflict for a change of storage, got {on_disk:?}"
        );
        assert_eq!(publish_durable(&bus, "memory.a", "one").await, 1);
        let retry = bus
            .publish_durable("memory.a", Outgoing::new("again"), Some("id"))
            .await
            .expect("durable publish");
        let again = bus
            .publish_durable("memory.a", Outgoing::new("again"), Some("id"))
            .await
            .expect("durable publish");
        assert_eq!((retry.sequence, again.duplicate), (2, true));
        let mut deliveries =
            consume(&bus, &ConsumerConfig::new("memory", "reader", "memory.*")).await;
        for payload in ["one", "again"] {
            let delivery = delivered(&mut deliveries, payload).await;
            assert_eq!(text(&delivery.message), payload);
            delivery.ack().await.expect("ack");
        }
    })
    .await;
}

/// Every message for a key lands on the key's partition subject, in
/// order, and one consumer per partition sees exactly its keys.
pub async fn partitions_route_each_key_to_one_consumer<B: Bus>(factory: impl AsyncFn(&str) -> B) {
    let partitions = NonZeroU32::new(4).expect("non-zero");
    let bus = factory(&unique_prefix()).await;
    ensure(&bus, &StreamConfig::new("parts", &["parts.*"], HOUR)).await;
    cleaning_up(&bus, &["parts"], async {
        let keys: Vec<String> = (0..12).map(|i| format!("conversation-{i}")).collect();
        for round in 0..3 {
            for key in &keys {
                let subject = partition_subject("parts", key.as_bytes(), partitions);
                publish_durable(&bus, &subject, &format!("{key}/{round}")).await;
            }
        }
        for p in 0..partitions.get() {
            let mut mine: Vec<&String> = keys
                .iter()
                .filter(|k| partition(k.as_bytes(), partitions) == p)
                .collect();
            mine.sort();
            let config = ConsumerConfig::new("parts", format!("p{p}"), format!("parts.{p}"));
            let mut deliveries = consume(&bus, &config).await;
            let mut rounds: BTreeMap<String, Vec<u32>> = BTreeMap::new();
            for _ in 0..mine.len() * 3 {
                let delivery = delivered(&mut deliveries, "partition message").await;
                assert_eq!(delivery.message.subject, format!("parts.{p}"));
                let (key, round) = text(&delivery.message).split_once('/').expect("key/round");
                rounds
                    .entry(key.to_owned())
                    .or_default()
                    .push(round.parse().expect("round"));
                delivery.ack().await.expect("ack");
            }
            assert_eq!(
                rounds.keys().collect::<Vec<_>>(),
                mine,
                "partition {p} holds exactly its keys"
            );
            assert!(
                rounds.values().all(|r| r == &[0, 1, 2]),
                "each key in order: {rounds:?}"
            );
        }
    })
    .await;
}

/// Two processes consuming one durable consumer never hold two of its
/// deliveries at once, and together see its messages in order.
pub async fn one_delivery_in_flight_across_processes<B: Bus>(factory: impl AsyncFn(&str) -> B) {
    const COUNT: usize = 30;
    let prefix = unique_prefix();
    let buses = [
        Arc::new(factory(&prefix).await),
        Arc::new(factory(&prefix).await),
    ];
    ensure(&*buses[0], &StreamConfig::new("serial", &["serial"], HOUR)).await;
    cleaning_up(&*buses[0], &["serial"], async {
        for i in 0..COUNT {
            publish_durable(&*buses[0], "serial", &i.to_string()).await;
        }
        let in_flight = Arc::new(AtomicUsize::new(0));
        let overlaps = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let config = ConsumerConfig::new("serial", "shared", "serial");
        let mut workers = Vec::new();
        for (worker, bus) in buses.iter().enumerate() {
            let mut deliveries = consume(&**bus, &config).await;
            let (in_flight, overlaps, seen) = (
                Arc::clone(&in_flight),
                Arc::clone(&overlaps),
                Arc::clone(&seen),
            );
            workers.push(tokio::spawn(async move {
                while let Some(delivery) = deliveries.next().await {
                    let Ok(delivery) = delivery else { continue };
                    if in_flight.fetch_add(1, Ordering::SeqCst) != 0 {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    // Hold the delivery a moment, as real work would.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let payload: usize = text(&delivery.message).parse().expect("number");
                    seen.lock().expect("lock").push((payload, worker));
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    delivery.ack().await.expect("ack");
                }
            }));
        }
        let deadline = Instant::now() + WAIT;
        while seen.lock().expect("lock").len() < COUNT {
            assert!(
                Instant::now() < deadline,
                "only {:?} processed",
                seen.lock().expect("lock")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for worker in &workers {
            worker.abort();
        }
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(
            seen.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            (0..COUNT).collect::<Vec<_>>(),
            "processed once each, in order: {seen:?}"
        );
        assert_eq!(
            overlaps.load(Ordering::SeqCst),
            0,
            "two deliveries were in flight at once"
        );
    })
    .await;
}

/// Polls the ack floor of `consumer` until it reaches `at_least`, and
/// returns it.
async fn ack_floor_reaching(bus: &dyn Bus, stream: &str, consumer: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let floor = bus
            .ack_floor(stream, consumer)
            .await
            .unwrap_or_else(|err| panic!("ack floor of {consumer}: {err}"));
        if floor >= at_least {
            return floor;
        }
        assert!(
            Instant::now() < deadline,
            "the ack floor of {consumer} stayed at {floor}, below {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A consumer's ack floor is 0 until its first ack; it reaches a message's
/// stream sequence once that message and every earlier one the consumer
/// takes are acked, and never passes a message in flight. Each consumer
/// has its own; one not created yet reads 0, and a missing stream is
/// `StreamNotFound`.
pub async fn ack_floor_follows_the_acks<B: Bus>(factory: impl AsyncFn(&str) -> B) {
    let bus = factory(&unique_prefix()).await;
    let missing = bus.ack_floor("floor", "reader").await;
    assert!(
        matches!(missing, Err(BusError::StreamNotFound { .. })),
        "expected StreamNotFound, got {missing:?}"
    );
    ensure(&bus, &StreamConfig::new("floor", &["floor.*"], HOUR)).await;
    cleaning_up(&bus, &["floor"], async {
        let floor = async |consumer: &str| {
            bus.ack_floor("floor", consumer)
                .await
                .unwrap_or_else(|err| panic!("ack floor of {consumer}: {err}"))
        };
        assert_eq!(floor("reader").await, 0, "before the consumer exists");
        // 2, 4 and 5 are the reader's; 1 and 3 are of a subject it does
        // not take.
        for (subject, payload) in [
            ("floor.other", "1"),
            ("floor.mine", "2"),
            ("floor.other", "3"),
            ("floor.mine", "4"),
            ("floor.mine", "5"),
        ] {
            publish_durable(&bus, subject, payload).await;
        }
        let config = ConsumerConfig::new("floor", "reader", "floor.mine");
        let mut deliveries = consume(&bus, &config).await;
        let mut idle = consume(&bus, &ConsumerConfig::new("floor", "idle", "floor.mine")).await;
        let unacked = delivered(&mut idle, "2 to the idle consumer").await;
        assert_eq!(unacked.sequence, 2);

        let two = delivered(&mut deliveries, "2").await;
        assert_eq!(two.sequence, 2);
        assert_eq!(floor("reader").await, 0, "before the first ack");
        two.ack().await.expect("ack 2");
        let four = delivered(&mut deliveries, "4").await;
        assert_eq!(four.sequence, 4);
        let reached = ack_floor_reaching(&bus, "floor", "reader", 2).await;
        assert!(reached < 4, "the floor {reached} passed 4, in flight");

        four.ack().await.expect("ack 4");
        let five = delivered(&mut deliveries, "5").await;
        assert_eq!(five.sequence, 5);
        let reached = ack_floor_reaching(&bus, "floor", "reader", 4).await;
        assert_eq!(reached, 4, "the floor passed 5, in flight");
        five.ack().await.expect("ack 5");
        assert_eq!(ack_floor_reaching(&bus, "floor", "reader", 5).await, 5);

        assert_eq!(floor("idle").await, 0, "another consumer's acks count not");
        assert_eq!(floor("nobody").await, 0, "a consumer not created yet");
        drop(unacked);
    })
    .await;
}

/// The current OpenTelemetry context travels in `traceparent`, on core and
/// durable messages alike, unless the caller set the header itself.
pub async fn trace_context_crosses_the_bus<B: Bus>(factory: impl AsyncFn(&str) -> B) {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("trace id");
    let span_id = SpanId::from_hex("00f067aa0ba902b7").expect("span id");
    let cx = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ));
    let assert_carried = |message: &Incoming, what: &str| {
        let carried = message.trace_context();
        let span = carried.span();
        let context = span.span_context();
        assert_eq!(
            context.trace_id(),
            trace_id,
            "{what}: {:?}",
            message.headers
        );
        assert_eq!(context.span_id(), span_id, "{what}");
        assert!(context.is_sampled(), "{what}");
    };

    let bus = factory(&unique_prefix()).await;
    let mut subscription = bus.subscribe("traced.*", None).await.expect("subscribe");
    bus.publish("traced.core", Outgoing::new("core"))
        .with_context(cx.clone())
        .await
        .expect("publish");
    assert_carried(&received(&mut subscription, "core message").await, "core");

    let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    bus.publish(
        "traced.own",
        Outgoing::new("own").with_header(TRACEPARENT, own),
    )
    .with_context(cx.clone())
    .await
    .expect("publish");
    let message = received(&mut subscription, "message with its own traceparent").await;
    assert_eq!(message.headers.get(TRACEPARENT), Some(own), "kept as set");

    ensure(
        &bus,
        &StreamConfig::new("traced", &["traced-durable"], HOUR),
    )
    .await;
    cleaning_up(&bus, &["traced"], async {
        bus.publish_durable("traced-durable", Outgoing::new("durable"), None)
            .with_context(cx.clone())
            .await
            .expect("durable publish");
        let mut deliveries = consume(
            &bus,
            &ConsumerConfig::new("traced", "reader", "traced-durable"),
        )
        .await;
        let delivery = delivered(&mut deliveries, "durable message").await;
        assert_carried(&delivery.message, "durable");
        delivery.ack().await.expect("ack");
    })
    .await;
}

/// Malformed subjects, names, headers, payloads and configurations are
/// refused with `Invalid` (never a panic), and missing streams are named.
pub async fn bad_input_is_refused<B: Bus>(factory: impl AsyncFn(&str) -> B) {
    fn assert_invalid<T: std::fmt::Debug>(result: crate::Result<T>, what: &str) {
        assert!(
            matches!(result, Err(BusError::Invalid { .. })),
            "{what}: expected Invalid, got {result:?}"
        );
    }
    let bus = factory(&unique_prefix()).await;
    let ok = || Outgoing::new("x");
    for subject in [
        "",
        " ",
        "a b",
        "a..b",
        ".a",
        "a.",
        "a.*",
        "a.>",
        "tab\there",
        "a\r\nb",
    ] {
        assert_invalid(
            bus.publish(subject, ok()).await,
            &format!("publish {subject:?}"),
        );
        assert_invalid(
            bus.request(subject, ok(), Duration::from_secs(1)).await,
            &format!("request {subject:?}"),
        );
        assert_invalid(
            bus.publish_durable(subject, ok(), None).await,
            &format!("durable publish {subject:?}"),
        );
    }
    for filter in ["", "a b", "a.>.b", "a*", "a..b"] {
        assert_invalid(
            bus.subscribe(filter, None).await,
            &format!("subscribe {filter:?}"),
        );
    }
    for group in ["", "two words", "a.b"] {
        assert_invalid(
            bus.subscribe("a", Some(group)).await,
            &format!("queue group {group:?}"),
        );
    }
    for (name, value) in [
        ("bad name", "v"),
        ("a:b", "v"),
        ("", "v"),
        ("Nats-Msg-Id", "v"),
        ("ok", "a\r\nb"),
    ] {
        assert_invalid(
            bus.publish("a", ok().with_header(name, value)).await,
            &format!("header {name:?}: {value:?}"),
        );
    }
    assert_invalid(
        bus.publish("a", Outgoing::new(vec![0u8; MAX_PAYLOAD_BYTES + 1]))
            .await,
        "oversized payload",
    );

    for config in [
        StreamConfig::new("bad.name", &["s"], HOUR),
        StreamConfig::new("", &["s"], HOUR),
        StreamConfig::new("nosubjects", &[], HOUR),
        StreamConfig::new("badsubject", &["a b"], HOUR),
        StreamConfig::new("noage", &["s"], Duration::ZERO),
    ] {
        assert_invalid(bus.ensure_stream(&config).await, &format!("{config:?}"));
    }
    let mut no_ack_wait = ConsumerConfig::new("any", "c", "a");
    no_ack_wait.ack_wait = Duration::ZERO;
    for config in [
        ConsumerConfig::new("any", "bad name", "a"),
        ConsumerConfig::new("bad.stream", "c", "a"),
        ConsumerConfig::new("any", "c", "a b"),
        no_ack_wait,
    ] {
        assert_invalid(bus.consume(&config).await, &format!("{config:?}"));
    }

    let result = bus.publish_durable("nowhere", ok(), None).await;
    assert!(
        matches!(result, Err(BusError::NoStream { .. })),
        "expected NoStream, got {result:?}"
    );
    let result = bus.consume(&ConsumerConfig::new("missing", "c", "a")).await;
    assert!(
        matches!(result, Err(BusError::StreamNotFound { .. })),
        "expected StreamNotFound, got {result:?}"
    );

    ensure(&bus, &StreamConfig::new("strict", &["strict.*"], HOUR)).await;
    cleaning_up(&bus, &["strict"], async {
        assert_invalid(
            bus.publish_durable("strict.a", ok(), Some("")).await,
            "empty dedup id",
        );
        assert_invalid(
            bus.publish_durable("strict.a", ok(), Some("a\nb")).await,
            "dedup id with a line break",
        );
        assert_invalid(
            bus.consume(&ConsumerConfig::new("strict", "c", "elsewhere.>"))
                .await,
            "a filter outside the stream's subjects",
        );
    })
    .await;
}

/// Streams may not overlap; ensuring is idempotent and updates; a deleted
/// stream stores nothing and deleting it again is fine.
pub async fn stream_lifecycle<B: Bus>(factory: impl AsyncFn(&str) -> B) {
    let bus = factory(&unique_prefix()).await;
    let wide = StreamConfig::new("wide", &["life.*"], HOUR);
    ensure(&bus, &wide).await;
    cleaning_up(&bus, &["wide", "narrow"], async {
        let result = bus
            .ensure_stream(&StreamConfig::new("narrow", &["life.a"], HOUR))
            .await;
        assert!(
            matches!(result, Err(BusError::Conflict(_))),
            "expected Conflict, got {result:?}"
        );

        publish_durable(&bus, "life.a", "kept").await;
        let wider = StreamConfig::new("wide", &["life.*", "more.>"], HOUR);
        ensure(&bus, &wider).await;
        assert_eq!(
            publish_durable(&bus, "more.x.y", "new subject").await,
            2,
            "an update keeps the messages and adds subjects"
        );

        bus.delete_stream("wide").await.expect("delete");
        let result = bus
            .publish_durable("life.a", Outgoing::new("x"), None)
            .await;
        assert!(
            matches!(result, Err(BusError::NoStream { .. })),
            "expected NoStream after delete, got {result:?}"
        );
        bus.delete_stream("wide").await.expect("delete again");
        ensure(&bus, &StreamConfig::new("narrow", &["life.a"], HOUR)).await;
    })
    .await;
}

/// Many tasks publishing at once lose nothing, and each publisher's
/// messages keep their order.
pub async fn concurrent_publishers_all_arrive<B: Bus>(factory: impl AsyncFn(&str) -> B) {
    const TASKS: usize = 8;
    const EACH: usize = 50;
    let bus = Arc::new(factory(&unique_prefix()).await);

    let mut subscription = bus.subscribe("load.*", None).await.expect("subscribe");
    let publishers: Vec<_> = (0..TASKS)
        .map(|t| {
            let bus = Arc::clone(&bus);
            tokio::spawn(async move {
                for i in 0..EACH {
                    publish(&*bus, &format!("load.{t}"), &format!("{t}/{i}")).await;
                }
            })
        })
        .collect();
    let mut per_task = vec![Vec::new(); TASKS];
    for _ in 0..TASKS * EACH {
        let message = received(&mut subscription, "concurrent message").await;
        let (t, i) = text(&message).split_once('/').expect("t/i");
        per_task[t.parse::<usize>().expect("task")].push(i.parse::<usize>().expect("index"));
    }
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    for (t, seen) in per_task.iter().enumerate() {
        assert_eq!(seen, &(0..EACH).collect::<Vec<_>>(), "task {t}");
    }

    ensure(&*bus, &StreamConfig::new("load", &["dload.*"], HOUR)).await;
    cleaning_up(&*bus, &["load"], async {
        const DURABLE_TASKS: usize = 4;
        const DURABLE_EACH: usize = 25;
        let publishers: Vec<_> = (0..DURABLE_TASKS)
            .map(|t| {
                let bus = Arc::clone(&bus);
                tokio::spawn(async move {
                    let mut sequences = Vec::new();
                    for i in 0..DURABLE_EACH {
                        sequences.push(
                            publish_durable(&*bus, &format!("dload.{t}"), &format!("{t}/{i}"))
                                .await,
                        );
                    }
                    sequences
                })
            })
            .collect();
        let mut sequences = Vec::new();
        for publisher in publishers {
            sequences.extend(
                within("durable publishers", publisher)
                    .await
                    .expect("publisher"),
            );
        }
        sequences.sort_unstable();
        let total = (DURABLE_TASKS * DURABLE_EACH) as u64;
        assert_eq!(sequences, (1..=total).collect::<Vec<_>>());

        let mut deliveries =
            consume(&*bus, &ConsumerConfig::new("load", "reader", "dload.*")).await;
        let mut per_task = vec![Vec::new(); DURABLE_TASKS];
        for _ in 0..total {
            let delivery = delivered(&mut deliveries, "durable message").await;
            let (t, i) = text(&delivery.message).split_once('/').expect("t/i");
            per_task[t.parse::<usize>().expect("task")].push(i.parse::<usize>().expect("index"));
            delivery.ack().await.expect("ack");
        }
        for (t, seen) in per_task.iter().enumerate() {
            assert_eq!(
                seen,
                &(0..DURABLE_EACH).collect::<Vec<_>>(),
                "durable task {t}"
            );
        }
    })
    .await;
}
