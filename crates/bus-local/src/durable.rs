//! The streams and consumers behind [`LocalBus`]: a plain state machine
//! that is handed the time and never waits, so the async shell around it
//! stays thin. Everything lives in memory and is gone with the process.
//!
//! It follows JetStream where the services can observe the difference:
//! sequences start at 1 and have no gaps, limits discard the oldest
//! messages, a dedup id is remembered for the duplicate window, streams may
//! not overlap, and a consumer has at most one unacknowledged delivery.
//!
//! # Two clocks
//!
//! [`Now`] carries both. Message ages and dedup windows follow the wall
//! clock, as they do in JetStream; a wall clock set back keeps messages
//! longer, never loses them. Ack deadlines follow the monotonic clock.
//!
//! [`LocalBus`]: crate::LocalBus

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use natter_bus::{BusError, Headers, Persisted, Result, StreamConfig, matches, overlaps};

/// The time as the shell reads it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Now {
    /// For ack deadlines.
    pub(super) instant: Instant,
    /// For message ages and dedup windows.
    pub(super) wall: SystemTime,
}

impl Now {
    /// Reads both clocks; the shell's only source of time.
    pub(super) fn current() -> Self {
        Self {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// A stored message. Subjects here carry the bus prefix.
#[derive(Debug, Clone)]
pub(super) struct Stored {
    pub(super) sequence: u64,
    pub(super) subject: String,
    pub(super) headers: Headers,
    pub(super) payload: Bytes,
    /// When the stream stored it, by the wall clock.
    pub(super) at: SystemTime,
}

/// What a consumer should do next.
#[derive(Debug)]
pub(super) enum Next {
    Deliver {
        message: Stored,
        delivered: u32,
    },
    /// Nothing to deliver before `Some(instant)`, or before a change.
    Wait(Option<Instant>),
    /// The stream or the consumer is gone; the consumer's stream ends.
    Gone(BusError),
}

/// One message to store: subject (prefixed), headers, payload, dedup id.
pub(super) type ToStore<'a> = (&'a str, &'a Headers, &'a Bytes, Option<&'a str>);

#[derive(Debug, Default)]
pub(super) struct Streams {
    by_name: HashMap<String, Stream>,
}

#[derive(Debug)]
struct Stream {
    config: StreamConfig,
    /// Consecutive sequences, oldest first.
    messages: VecDeque<Stored>,
    last_sequence: u64,
    dedup: HashMap<String, u64>,
    /// In sequence order, which is the order they were stored in.
    dedup_order: VecDeque<(SystemTime, String, u64)>,
    consumers: HashMap<String, Consumer>,
}

#[derive(Debug)]
struct Consumer {
    /// Prefixed, as are all subjects here.
    filter: String,
    ack_wait: Duration,
    /// The lowest sequence not yet delivered.
    next: u64,
    in_flight: Option<InFlight>,
    /// Whether it has acked anything yet; its ack floor is 0 until then,
    /// as on NATS.
    acked: bool,
    /// Wakes the consumer's readers; dropped with the consumer.
    changed: watch::Sender<()>,
}

#[derive(Debug)]
struct InFlight {
    sequence: u64,
    delivered: u32,
    due: Instant,
}

/// `now + duration`, saturating far in the future instead of overflowing.
fn after(now: Instant, duration: Duration) -> Instant {
    now.checked_add(duration)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// How long ago `at` was; zero if the wall clock was set back since.
fn age(now: SystemTime, at: SystemTime) -> Duration {
    now.duration_since(at).unwrap_or_default()
}

impl Streams {
    /// Creates the stream of `config` (with prefixed names), or updates it,
    /// unless it would overlap another stream or change its storage.
    pub(super) fn ensure(&mut self, config: StreamConfig, now: Now) -> Result<()> {
        for (name, other) in &self.by_name {
            if *name == config.name {
                if other.config.storage != config.storage {
                    return Err(BusError::Conflict(format!(
                        "stream {name} keeps its messages in {:?} storage; that cannot change",
                        other.config.storage
                    )));
                }
                continue;
            }
            for mine in &config.subjects {
                if let Some(theirs) = other.config.subjects.iter().find(|s| overlaps(mine, s)) {
                    return Err(BusError::Conflict(format!(
                        "subject {mine} of stream {} overlaps subject {theirs} of stream {name}",
                        config.name
                    )));
                }
            }
        }
        match self.by_name.entry(config.name.clone()) {
            Entry::Occupied(mut entry) => {
                let stream = entry.get_mut();
                stream.config = config;
                stream.prune(now.wall);
            }
            Entry::Vacant(entry) => {
                entry.insert(Stream::new(config));
            }
        }
        Ok(())
    }

    /// Deletes a stream with its messages and consumers, if there is one
    /// of that name. Its consumers' readers end.
    pub(super) fn delete(&mut self, name: &str) {
        self.by_name.remove(name);
    }

    /// Whether a stream captures `subject`.
    pub(super) fn captures(&self, subject: &str) -> bool {
        self.capturing(subject).is_some()
    }

    fn capturing(&self, subject: &str) -> Option<&String> {
        self.by_name
            .iter()
            .find(|(_, s)| s.config.subjects.iter().any(|f| matches(f, subject)))
            .map(|(name, _)| name)
    }

    /// Stores messages one after another, each in the stream capturing its
    /// subject; a dedup id seen within the duplicate window (or earlier in
    /// the batch) is a duplicate of its first. `None`, storing nothing, if
    /// no stream captures one of the subjects.
    pub(super) fn store(&mut self, messages: &[ToStore<'_>], now: Now) -> Option<Vec<Persisted>> {
        let names = messages
            .iter()
            .map(|(subject, ..)| self.capturing(subject).cloned())
            .collect::<Option<Vec<_>>>()?;
        let mut persisted = Vec::with_capacity(messages.len());
        for (&(subject, headers, payload, dedup_id), name) in messages.iter().zip(names) {
            let stream = self.by_name.get_mut(&name)?;
            persisted.push(stream.append(subject, headers, payload, dedup_id, now.wall));
        }
        Some(persisted)
    }

    /// Creates or updates a durable consumer, which starts at the beginning
    /// of the stream; an existing one keeps its position. Returns what wakes
    /// its readers.
    pub(super) fn consumer(
        &mut self,
        stream: &str,
        name: &str,
        filter: &str,
        ack_wait: Duration,
    ) -> Result<watch::Receiver<()>> {
        let Some(stream_state) = self.by_name.get_mut(stream) else {
            return Err(BusError::StreamNotFound {
                name: stream.to_owned(),
            });
        };
        if !stream_state
            .config
            .subjects
            .iter()
            .any(|s| overlaps(s, filter))
        {
            return Err(BusError::Invalid {
                what: "subject filter",
                value: filter.to_owned(),
                reason: "matches none of the stream's subjects",
            });
        }
        let consumer = stream_state
            .consumers
            .entry(name.to_owned())
            .or_insert_with(|| Consumer::new(filter, ack_wait));
        filter.clone_into(&mut consumer.filter);
        consumer.ack_wait = ack_wait;
        consumer.changed.send_replace(());
        Ok(consumer.changed.subscribe())
    }

    /// The sequence up to which the consumer has settled every message
    /// it takes; 0 before its first ack, or if there is no such consumer.
    /// `None` if there is no such stream.
    pub(super) fn ack_floor(&self, stream: &str, consumer: &str) -> Option<u64> {
        let stream = self.by_name.get(stream)?;
        Some(
            stream
                .consumers
                .get(consumer)
                .map_or(0, Consumer::ack_floor),
        )
    }

    /// The consumer's next step: redeliver the message in flight once it is
    /// due, else deliver the next matching message, else wait.
    pub(super) fn next(&mut self, stream: &str, consumer: &str, now: Now) -> Next {
        let Some(stream_state) = self.by_name.get_mut(stream) else {
            return Next::Gone(BusError::StreamNotFound {
                name: stream.to_owned(),
            });
        };
        stream_state.prune(now.wall);
        let Stream {
            messages,
            last_sequence,
            consumers,
            ..
        } = stream_state;
        let Some(consumer) = consumers.get_mut(consumer) else {
            return Next::Gone(BusError::Unavailable(format!(
                "consumer {consumer} of stream {stream} was deleted"
            )));
        };
        let now = now.instant;
        let first = messages.front().map_or(*last_sequence + 1, |m| m.sequence);
        let index = |sequence: u64| usize::try_from(sequence.saturating_sub(first)).ok();

        if let Some(in_flight) = &mut consumer.in_flight {
            match index(in_flight.sequence)
                .filter(|_| in_flight.sequence >= first)
                .and_then(|i| messages.get(i))
            {
                // Discarded by the stream's limits while in flight.
                None => consumer.in_flight = None,
                Some(message) if now >= in_flight.due => {
                    in_flight.delivered = in_flight.delivered.saturating_add(1);
                    in_flight.due = after(now, consumer.ack_wait);
                    return Next::Deliver {
                        message: message.clone(),
                        delivered: in_flight.delivered,
                    };
                }
                Some(_) => return Next::Wait(Some(in_flight.due)),
            }
        }

        let start = index(consumer.next.max(first)).unwrap_or(usize::MAX);
        let found = messages
            .iter()
            .skip(start)
            .find(|m| matches(&consumer.filter, &m.subject));
        match found {
            Some(message) => {
                consumer.next = message.sequence + 1;
                consumer.in_flight = Some(InFlight {
                    sequence: message.sequence,
                    delivered: 1,
                    due: after(now, consumer.ack_wait),
                });
                Next::Deliver {
                    message: message.clone(),
                    delivered: 1,
                }
            }
            None => {
                consumer.next = *last_sequence + 1;
                Next::Wait(None)
            }
        }
    }

    /// Settles the delivery of `sequence`; `false`, changing nothing, when
    /// that delivery is no longer in flight (redelivered and acked
    /// meanwhile, or discarded by the stream's limits).
    pub(super) fn ack(&mut self, stream: &str, consumer: &str, sequence: u64) -> bool {
        let Some(consumer) = self.in_flight(stream, consumer, sequence) else {
            return false;
        };
        consumer.in_flight = None;
        consumer.acked = true;
        consumer.changed.send_replace(());
        true
    }

    /// Gives the delivery of `sequence` back, to be delivered again after
    /// `delay`; a delivery no longer in flight is ignored.
    pub(super) fn nak(
        &mut self,
        stream: &str,
        consumer: &str,
        sequence: u64,
        delay: Duration,
        now: Now,
    ) {
        if let Some(consumer) = self.in_flight(stream, consumer, sequence) {
            if let Some(in_flight) = &mut consumer.in_flight {
                in_flight.due = after(now.instant, delay);
            }
            consumer.changed.send_replace(());
        }
    }

    /// The consumer, if the delivery of `sequence` is its one in flight.
    fn in_flight(&mut self, stream: &str, consumer: &str, sequence: u64) -> Option<&mut Consumer> {
        self.by_name
            .get_mut(stream)?
            .consumers
            .get_mut(consumer)
            .filter(|c| c.in_flight.as_ref().is_some_and(|f| f.sequence == sequence))
    }
}

impl Stream {
    fn new(config: StreamConfig) -> Self {
        Self {
            config,
            messages: VecDeque::new(),
            last_sequence: 0,
            dedup: HashMap::new(),
            dedup_order: VecDeque::new(),
            consumers: HashMap::new(),
        }
    }

    /// Appends a message under the next sequence, unless its dedup id was
    /// seen within the duplicate window, and applies the limits.
    fn append(
        &mut self,
        subject: &str,
        headers: &Headers,
        payload: &Bytes,
        dedup_id: Option<&str>,
        now: SystemTime,
    ) -> Persisted {
        self.prune(now);
        if let Some(&sequence) = dedup_id.and_then(|id| self.dedup.get(id)) {
            return Persisted {
                sequence,
                duplicate: true,
            };
        }
        self.last_sequence += 1;
        let sequence = self.last_sequence;
        if let Some(id) = dedup_id {
            self.dedup.insert(id.to_owned(), sequence);
            self.dedup_order.push_back((now, id.to_owned(), sequence));
        }
        for consumer in self.consumers.values() {
            if matches(&consumer.filter, subject) {
                consumer.changed.send_replace(());
            }
        }
        self.messages.push_back(Stored {
            sequence,
            subject: subject.to_owned(),
            headers: headers.clone(),
            payload: payload.clone(),
            at: now,
        });
        self.prune(now);
        Persisted {
            sequence,
            duplicate: false,
        }
    }

    /// Applies the age and count limits and forgets expired dedup ids.
    fn prune(&mut self, now: SystemTime) {
        let max_age = self.config.max_age;
        while self
            .messages
            .front()
            .is_some_and(|m| age(now, m.at) >= max_age)
        {
            self.messages.pop_front();
        }
        if let Some(max) = self.config.max_messages {
            let max = usize::try_from(max).unwrap_or(usize::MAX);
            while self.messages.len() > max {
                self.messages.pop_front();
            }
        }
        let window = self.config.duplicate_window;
        while let Some((at, id, sequence)) = self.dedup_order.front() {
            if age(now, *at) < window {
                break;
            }
            if self.dedup.get(id) == Some(sequence) {
                self.dedup.remove(id);
            }
            self.dedup_order.pop_front();
        }
    }
}

impl Consumer {
    fn new(filter: &str, ack_wait: Duration) -> Self {
        Self {
            filter: filter.to_owned(),
            ack_wait,
            next: 1,
            in_flight: None,
            acked: false,
            changed: watch::channel(()).0,
        }
    }

    /// Everything below the lowest sequence not yet delivered but the
    /// delivery in flight is settled: acked, or not taken (another
    /// subject, or discarded by the stream's limits).
    fn ack_floor(&self) -> u64 {
        if !self.acked {
            return 0;
        }
        self.in_flight.as_ref().map_or(self.next, |f| f.sequence) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(name: &str, subjects: &[&str]) -> StreamConfig {
        StreamConfig::new(name, subjects, Duration::from_secs(60))
    }

    fn start() -> Now {
        Now {
            instant: Instant::now(),
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    /// `now`, `duration` later on both clocks.
    fn later(now: Now, duration: Duration) -> Now {
        Now {
            instant: now.instant + duration,
            wall: now.wall + duration,
        }
    }

    fn ensure(streams: &mut Streams, config: StreamConfig, now: Now) -> Result<()> {
        streams.ensure(config, now)
    }

    fn consumer(streams: &mut Streams, name: &str, filter: &str) {
        streams
            .consumer("s", name, filter, Duration::from_secs(5))
            .expect("consumer");
    }

    fn store(streams: &mut Streams, subject: &str, dedup: Option<&str>, now: Now) -> Persisted {
        let (headers, payload) = (Headers::new(), Bytes::new());
        streams
            .store(&[(subject, &headers, &payload, dedup)], now)
            .and_then(|mut persisted| persisted.pop())
            .expect("a stream captures the subject")
    }

    /// Acks a delivery of consumer `c`; its new ack floor, if it was in
    /// flight.
    fn ack(streams: &mut Streams, sequence: u64) -> Option<u64> {
        streams
            .ack("s", "c", sequence)
            .then(|| streams.ack_floor("s", "c").expect("stream"))
    }

    fn delivered(next: Next) -> (u64, u32) {
        match next {
            Next::Deliver { message, delivered } => (message.sequence, delivered),
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    #[test]
    fn one_in_flight_then_redelivery_after_ack_wait() {
        let now = start();
        let mut streams = Streams::default();
        ensure(&mut streams, stream("s", &["a.*"]), now).expect("ensure");
        consumer(&mut streams, "c", "a.*");
        store(&mut streams, "a.1", None, now);
        store(&mut streams, "a.2", None, now);

        assert_eq!(delivered(streams.next("s", "c", now)), (1, 1));
        let due = later(now, Duration::from_secs(5));
        assert!(matches!(streams.next("s", "c", now), Next::Wait(Some(d)) if d == due.instant));
        assert_eq!(delivered(streams.next("s", "c", due)), (1, 2));
        ack(&mut streams, 1).expect("in flight");
        assert_eq!(delivered(streams.next("s", "c", due)), (2, 1));
        streams.nak("s", "c", 2, Duration::ZERO, due);
        assert_eq!(delivered(streams.next("s", "c", due)), (2, 2));
        ack(&mut streams, 2).expect("in flight");
        assert!(matches!(streams.next("s", "c", due), Next::Wait(None)));
    }

    #[test]
    fn limits_discard_the_oldest_and_skip_the_consumer_past_them() {
        let now = start();
        let mut streams = Streams::default();
        let mut config = stream("s", &["a"]);
        config.max_messages = Some(2);
        ensure(&mut streams, config, now).expect("ensure");
        consumer(&mut streams, "c", "a");
        for _ in 0..3 {
            store(&mut streams, "a", None, now);
        }
        assert_eq!(delivered(streams.next("s", "c", now)), (2, 1));
        let aged = later(now, Duration::from_secs(61));
        assert!(matches!(streams.next("s", "c", aged), Next::Wait(None)));
    }

    #[test]
    fn dedup_ids_expire_with_the_window() {
        let now = start();
        let mut streams = Streams::default();
        let mut config = stream("s", &["a"]);
        config.duplicate_window = Duration::from_secs(2);
        ensure(&mut streams, config, now).expect("ensure");
        assert_eq!(store(&mut streams, "a", Some("x"), now).sequence, 1);
        let again = store(
            &mut streams,
            "a",
            Some("x"),
            later(now, Duration::from_secs(1)),
        );
        assert_eq!((again.sequence, again.duplicate), (1, true));
        let after_window = store(
            &mut streams,
            "a",
            Some("x"),
            later(now, Duration::from_secs(2)),
        );
        assert_eq!((after_window.sequence, after_window.duplicate), (2, false));
    }

    #[test]
    fn overlapping_streams_conflict() {
        let now = start();
        let mut streams = Streams::default();
        ensure(&mut streams, stream("s", &["a.*"]), now).expect("ensure");
        ensure(&mut streams, stream("s", &["a.*", "b"]), now).expect("a stream may update itself");
        assert!(matches!(
            ensure(&mut streams, stream("t", &["a.b"]), now),
            Err(BusError::Conflict(_))
        ));
        ensure(&mut streams, stream("t", &["c.>"]), now).expect("disjoint");
    }

    #[test]
    fn the_ack_floor_covers_what_was_acked_and_skipped() {
        let now = start();
        let mut streams = Streams::default();
        ensure(&mut streams, stream("s", &["a", "b"]), now).expect("ensure");
        consumer(&mut streams, "c", "a");
        for subject in ["b", "a", "b", "b", "a", "b"] {
            store(&mut streams, subject, None, now);
        }
        assert_eq!(delivered(streams.next("s", "c", now)), (2, 1));
        assert_eq!(streams.ack_floor("s", "c"), Some(0), "before the first ack");
        assert_eq!(ack(&mut streams, 2), Some(2));
        assert_eq!(ack(&mut streams, 2), None, "acked twice");
        assert_eq!(delivered(streams.next("s", "c", now)), (5, 1));
        assert_eq!(
            streams.ack_floor("s", "c"),
            Some(4),
            "the delivery in flight is not acked"
        );
        assert_eq!(ack(&mut streams, 5), Some(5));
        assert!(matches!(streams.next("s", "c", now), Next::Wait(None)));
        assert_eq!(streams.ack_floor("s", "c"), Some(6), "nothing more to take");
        assert_eq!(streams.ack_floor("s", "other"), Some(0), "no such consumer");
        assert_eq!(streams.ack_floor("t", "c"), None, "no such stream");
    }

    #[test]
    fn a_batch_is_stored_whole_or_not_at_all() {
        let now = start();
        let mut streams = Streams::default();
        ensure(&mut streams, stream("s", &["a"]), now).expect("ensure");
        let (headers, payload) = (Headers::new(), Bytes::new());
        let batch = |subjects: &[(&'static str, Option<&'static str>)]| {
            subjects
                .iter()
                .map(|&(subject, dedup)| (subject, &headers, &payload, dedup))
                .collect::<Vec<_>>()
        };
        assert!(
            streams
                .store(&batch(&[("a", Some("x")), ("b", None)]), now)
                .is_none(),
            "no stream captures b"
        );
        let persisted = streams
            .store(
                &batch(&[("a", Some("x")), ("a", None), ("a", Some("x"))]),
                now,
            )
            .expect("captured");
        assert_eq!(
            persisted
                .iter()
                .map(|p| (p.sequence, p.duplicate))
                .collect::<Vec<_>>(),
            [(1, false), (2, false), (1, true)],
            "the refused batch left no trace, and an id repeated in a batch is a duplicate"
        );
    }

    #[test]
    fn a_wall_clock_set_back_keeps_messages() {
        let now = start();
        let mut streams = Streams::default();
        ensure(&mut streams, stream("s", &["a"]), now).expect("ensure");
        consumer(&mut streams, "c", "a");
        store(&mut streams, "a", None, now);
        let earlier = Now {
            instant: now.instant,
            wall: now.wall - Duration::from_secs(3600),
        };
        assert_eq!(delivered(streams.next("s", "c", earlier)), (1, 1));
    }
}
