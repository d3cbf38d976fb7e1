//! The streams and consumers behind [`LocalBus`]: a plain state machine
//! that is handed the time and never waits or touches a file, so the async
//! shell around it stays thin.
//!
//! It follows JetStream where the services can observe the difference:
//! sequences start at 1 and have no gaps, limits discard the oldest
//! messages, a dedup id is remembered for the duplicate window, streams may
//! not overlap, and a consumer has at most one unacknowledged delivery.
//!
//! # Plan, then apply
//!
//! Every change a restart must not lose comes in two steps. `plan_*` checks
//! the request and decides everything (the sequence a message gets, what
//! its stream keeps afterwards, a consumer's new ack floor) and returns it
//! as a value, changing nothing but what a restart recomputes anyway: it
//! may discard messages and dedup ids that have aged out. `apply_*` carries
//! the plan out and cannot fail. A persistent bus writes the plan to its
//! journal in between, so nothing is answered or visible before it is on
//! disk; an in-memory bus applies it at once. Plans must be applied in the
//! order they were made, one at a time; the shell ensures that.
//!
//! # Two clocks
//!
//! [`Now`] carries both. Message ages and dedup windows follow the wall
//! clock, as they do in JetStream, because they must mean the same after a
//! restart; a wall clock set back keeps messages longer, never loses them.
//! Ack deadlines follow the monotonic clock: they live in memory only.
//!
//! [`LocalBus`]: super::LocalBus

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{BusError, Headers, Persisted, Result, Storage, StreamConfig, matches, overlaps};

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

/// The lowest sequences for which a stream still holds a message and a
/// dedup id; everything below has been discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Floors {
    pub(super) messages: u64,
    pub(super) dedup_ids: u64,
}

/// The plan for storing one message.
#[derive(Debug)]
pub(super) enum Store {
    /// The dedup id was seen within the duplicate window: nothing changes.
    Duplicate(Persisted),
    Append(Append),
}

/// A message to append to a stream.
#[derive(Debug)]
pub(super) struct Append {
    /// The stream's (prefixed) name.
    pub(super) stream: String,
    pub(super) message: Stored,
    pub(super) dedup_id: Option<String>,
    /// What the stream holds once the message is in and its limits applied.
    pub(super) floors: Floors,
    /// The stream is on disk, so the journal writes the message.
    pub(super) journaled: bool,
}

/// What a durable consumer keeps across restarts. Deliveries in flight and
/// their counts are not kept: after a restart, everything above the ack
/// floor is delivered again, counted from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ConsumerState {
    /// Prefixed, as are all subjects here.
    pub(super) filter: String,
    pub(super) ack_wait: Duration,
    /// Every message up to this sequence that the filter matches has been
    /// acked (or discarded by the stream's limits).
    pub(super) ack_floor: u64,
}

/// The plan to create or update a consumer, or to move its ack floor.
#[derive(Debug, Clone)]
pub(super) struct ConsumerPlan {
    pub(super) stream: String,
    pub(super) name: String,
    pub(super) state: ConsumerState,
    /// The stream is on disk, so the journal writes the consumer.
    pub(super) journaled: bool,
}

/// The plan to ack one delivery: the consumer with its new ack floor.
#[derive(Debug)]
pub(super) struct Ack {
    pub(super) consumer: ConsumerPlan,
    sequence: u64,
}

/// The plan to delete a stream.
#[derive(Debug)]
pub(super) struct Deletion {
    /// The stream's (prefixed) name.
    pub(super) stream: String,
}

/// A stream as a journal read it back.
#[derive(Debug)]
pub(super) struct Restored {
    /// Carries the prefixed name.
    pub(super) config: StreamConfig,
    pub(super) last_sequence: u64,
    /// In sequence order.
    pub(super) messages: Vec<Stored>,
    /// `(sequence, stored at, id)`, in sequence order.
    pub(super) dedup_ids: Vec<(u64, SystemTime, String)>,
    pub(super) consumers: Vec<(String, ConsumerState)>,
}

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
    filter: String,
    ack_wait: Duration,
    /// The lowest sequence not yet delivered.
    next: u64,
    in_flight: Option<InFlight>,
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

fn corrupt(stream: &str, reason: &str) -> BusError {
    BusError::Unavailable(format!("journal of stream {stream} is corrupt: {reason}"))
}

impl Streams {
    /// Checks that `config` (with prefixed names) overlaps no other stream
    /// and hands it back to apply.
    pub(super) fn plan_ensure(&self, config: StreamConfig) -> Result<StreamConfig> {
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
        Ok(config)
    }

    /// Creates or updates a stream planned by [`plan_ensure`](Self::plan_ensure).
    pub(super) fn apply_ensure(&mut self, config: StreamConfig, now: Now) {
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
    }

    /// Plans deleting a stream; `None` if there is none of that name.
    pub(super) fn plan_delete(&self, name: &str) -> Option<Deletion> {
        self.by_name.contains_key(name).then(|| Deletion {
            stream: name.to_owned(),
        })
    }

    pub(super) fn apply_delete(&mut self, deletion: Deletion) {
        self.by_name.remove(&deletion.stream);
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

    /// Plans storing a message in the stream capturing `subject`; `None`
    /// if no stream does.
    pub(super) fn plan_store(
        &mut self,
        subject: &str,
        headers: &Headers,
        payload: &Bytes,
        dedup_id: Option<&str>,
        now: Now,
    ) -> Option<Store> {
        let mut plans = self.plan_stores(&[(subject, headers, payload, dedup_id)], now)?;
        plans.pop()
    }

    /// Plans storing messages one after another, as if each plan were
    /// applied before the next is made: sequences follow on, and a dedup
    /// id repeated in the batch is a duplicate of its first. `None` if no
    /// stream captures one of the subjects.
    pub(super) fn plan_stores(
        &mut self,
        messages: &[(&str, &Headers, &Bytes, Option<&str>)],
        now: Now,
    ) -> Option<Vec<Store>> {
        // Per stream: the first sequence this batch appends, and the last.
        let mut appended: HashMap<String, (u64, u64)> = HashMap::new();
        let mut ids: HashMap<(String, &str), u64> = HashMap::new();
        let mut plans = Vec::with_capacity(messages.len());
        for &(subject, headers, payload, dedup_id) in messages {
            let name = self.capturing(subject)?.clone();
            let stream = self.by_name.get_mut(&name)?;
            stream.prune(now.wall);
            let earlier = dedup_id.and_then(|id| {
                stream
                    .dedup
                    .get(id)
                    .or_else(|| ids.get(&(name.clone(), id)))
                    .copied()
            });
            if let Some(sequence) = earlier {
                plans.push(Store::Duplicate(Persisted {
                    sequence,
                    duplicate: true,
                }));
                continue;
            }
            let sequence = appended
                .get(&name)
                .map_or(stream.last_sequence, |&(_, last)| last)
                + 1;
            let first = appended.get(&name).map_or(sequence, |&(first, _)| first);
            appended.insert(name.clone(), (first, sequence));
            if let Some(id) = dedup_id {
                ids.insert((name.clone(), id), sequence);
            }
            plans.push(Store::Append(Append {
                message: Stored {
                    sequence,
                    subject: subject.to_owned(),
                    headers: headers.clone(),
                    payload: payload.clone(),
                    at: now.wall,
                },
                dedup_id: dedup_id.map(str::to_owned),
                floors: stream.floors_with(first, sequence),
                journaled: stream.config.storage == Storage::Disk,
                stream: name,
            }));
        }
        Some(plans)
    }

    /// Carries out a plan of [`plan_store`](Self::plan_store).
    pub(super) fn apply_store(&mut self, store: Store, now: Now) -> Persisted {
        let append = match store {
            Store::Duplicate(persisted) => return persisted,
            Store::Append(append) => append,
        };
        let Append {
            stream,
            message,
            dedup_id,
            ..
        } = append;
        let persisted = Persisted {
            sequence: message.sequence,
            duplicate: false,
        };
        // Plans are applied in order, so the stream is still there and the
        // sequence is the next one.
        let Some(stream) = self.by_name.get_mut(&stream) else {
            return persisted;
        };
        debug_assert_eq!(message.sequence, stream.last_sequence + 1);
        stream.last_sequence = message.sequence;
        if let Some(id) = dedup_id {
            stream.dedup.insert(id.clone(), message.sequence);
            stream
                .dedup_order
                .push_back((message.at, id, message.sequence));
        }
        for consumer in stream.consumers.values() {
            if matches(&consumer.filter, &message.subject) {
                consumer.changed.send_replace(());
            }
        }
        stream.messages.push_back(message);
        stream.prune(now.wall);
        persisted
    }

    /// Plans creating or updating a durable consumer; an existing one
    /// keeps its ack floor.
    pub(super) fn plan_consumer(
        &self,
        stream: &str,
        name: &str,
        filter: &str,
        ack_wait: Duration,
    ) -> Result<ConsumerPlan> {
        let Some(stream_state) = self.by_name.get(stream) else {
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
        Ok(ConsumerPlan {
            stream: stream.to_owned(),
            name: name.to_owned(),
            state: ConsumerState {
                filter: filter.to_owned(),
                ack_wait,
                ack_floor: stream_state
                    .consumers
                    .get(name)
                    .map_or(0, Consumer::ack_floor),
            },
            journaled: stream_state.config.storage == Storage::Disk,
        })
    }

    /// Creates or updates the consumer planned by
    /// [`plan_consumer`](Self::plan_consumer) and returns what wakes its
    /// readers.
    pub(super) fn apply_consumer(&mut self, plan: ConsumerPlan) -> watch::Receiver<()> {
        let ConsumerPlan {
            stream,
            name,
            state,
            ..
        } = plan;
        let Some(stream) = self.by_name.get_mut(&stream) else {
            // The stream is gone: a receiver whose sender is dropped ends
            // the reader at once.
            return watch::channel(()).1;
        };
        let consumer = stream
            .consumers
            .entry(name)
            .or_insert_with(|| Consumer::new(&state));
        consumer.filter = state.filter;
        consumer.ack_wait = state.ack_wait;
        consumer.changed.send_replace(());
        consumer.changed.subscribe()
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

    /// Plans acking the delivery of `sequence`; `None` when that delivery
    /// is no longer in flight (redelivered and acked meanwhile, or
    /// discarded by the stream's limits), which makes the ack a no-op.
    pub(super) fn plan_ack(&self, stream: &str, consumer: &str, sequence: u64) -> Option<Ack> {
        let stream_state = self.by_name.get(stream)?;
        let state = stream_state.consumers.get(consumer)?;
        let in_flight = state.in_flight.as_ref()?;
        (in_flight.sequence == sequence).then(|| Ack {
            consumer: ConsumerPlan {
                stream: stream.to_owned(),
                name: consumer.to_owned(),
                state: ConsumerState {
                    filter: state.filter.clone(),
                    ack_wait: state.ack_wait,
                    // Everything below `next` but the delivery in flight is
                    // settled, so acking it settles everything below `next`.
                    ack_floor: state.next - 1,
                },
                journaled: stream_state.config.storage == Storage::Disk,
            },
            sequence,
        })
    }

    /// Settles a delivery planned by [`plan_ack`](Self::plan_ack), unless
    /// it was settled since.
    pub(super) fn apply_ack(&mut self, ack: Ack) {
        let Ack { consumer, sequence } = ack;
        if let Some(consumer) = self.in_flight(&consumer.stream, &consumer.name, sequence) {
            consumer.in_flight = None;
            consumer.changed.send_replace(());
        }
    }

    /// Gives the delivery of `sequence` back, to be delivered again after
    /// `delay`; a delivery no longer in flight is ignored. Not journaled:
    /// after a restart everything unacked is delivered again anyway.
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

    /// Puts back a stream a journal read, applies its limits as of `now`
    /// and returns what it still holds. Fails, changing nothing, on
    /// records no sequence of plans could have written.
    pub(super) fn restore(&mut self, restored: Restored, now: Now) -> Result<Floors> {
        let Restored {
            config,
            last_sequence,
            messages,
            dedup_ids,
            consumers,
        } = restored;
        let name = config.name.clone();
        let consecutive = messages
            .windows(2)
            .all(|w| w[0].sequence.checked_add(1) == Some(w[1].sequence));
        let in_range = messages.first().is_none_or(|m| m.sequence > 0)
            && messages.last().is_none_or(|m| m.sequence <= last_sequence);
        if !consecutive || !in_range {
            return Err(corrupt(
                &name,
                "messages are not consecutive up to the last sequence",
            ));
        }
        if !dedup_ids.is_sorted_by_key(|(s, _, _)| *s)
            || dedup_ids.last().is_some_and(|(s, _, _)| *s > last_sequence)
        {
            return Err(corrupt(&name, "dedup ids are out of sequence"));
        }
        if consumers.iter().any(|(_, c)| c.ack_floor > last_sequence) {
            return Err(corrupt(&name, "a consumer acked past the last sequence"));
        }
        if self.plan_ensure(config.clone()).is_err() {
            return Err(corrupt(&name, "it overlaps another stream"));
        }

        let mut stream = Stream::new(config);
        stream.last_sequence = last_sequence;
        stream.messages = messages.into();
        for (sequence, at, id) in dedup_ids {
            stream.dedup.insert(id.clone(), sequence);
            stream.dedup_order.push_back((at, id, sequence));
        }
        for (consumer, state) in consumers {
            stream.consumers.insert(consumer, Consumer::new(&state));
        }
        stream.prune(now.wall);
        let floors = stream.floors();
        self.by_name.insert(name, stream);
        Ok(floors)
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

    fn floors(&self) -> Floors {
        let next = self.last_sequence + 1;
        Floors {
            messages: self.messages.front().map_or(next, |m| m.sequence),
            dedup_ids: self.dedup_order.front().map_or(next, |(_, _, s)| *s),
        }
    }

    /// The floors once messages `first_new..=sequence`, the next ones, are
    /// appended and the count limit applied. Messages are consecutive, so
    /// the count limit keeps the last `max` sequences.
    fn floors_with(&self, first_new: u64, sequence: u64) -> Floors {
        let first = self.messages.front().map_or(first_new, |m| m.sequence);
        Floors {
            messages: self
                .config
                .max_messages
                .map_or(first, |max| first.max((sequence + 1).saturating_sub(max))),
            dedup_ids: self.dedup_order.front().map_or(first_new, |(_, _, s)| *s),
        }
    }
}

impl Consumer {
    fn new(state: &ConsumerState) -> Self {
        Self {
            filter: state.filter.clone(),
            ack_wait: state.ack_wait,
            next: state.ack_floor + 1,
            in_flight: None,
            changed: watch::channel(()).0,
        }
    }

    fn ack_floor(&self) -> u64 {
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
        let config = streams.plan_ensure(config)?;
        streams.apply_ensure(config, now);
        Ok(())
    }

    fn consumer(streams: &mut Streams, name: &str, filter: &str) -> ConsumerPlan {
        let plan = streams
            .plan_consumer("s", name, filter, Duration::from_secs(5))
            .expect("consumer");
        streams.apply_consumer(plan.clone());
        plan
    }

    fn store(streams: &mut Streams, subject: &str, dedup: Option<&str>, now: Now) -> Persisted {
        let plan = streams
            .plan_store(subject, &Headers::new(), &Bytes::new(), dedup, now)
            .expect("a stream captures the subject");
        streams.apply_store(plan, now)
    }

    /// Acks a delivery of consumer `c`; its new ack floor, if it was in
    /// flight.
    fn ack(streams: &mut Streams, sequence: u64) -> Option<u64> {
        let plan = streams.plan_ack("s", "c", sequence)?;
        let floor = plan.consumer.state.ack_floor;
        streams.apply_ack(plan);
        Some(floor)
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
    fn a_plan_changes_nothing_until_applied() {
        let now = start();
        let mut streams = Streams::default();
        ensure(&mut streams, stream("s", &["a"]), now).expect("ensure");
        consumer(&mut streams, "c", "a");
        let plan = streams
            .plan_store("a", &Headers::new(), &Bytes::new(), Some("x"), now)
            .expect("captured");
        assert!(matches!(&plan, Store::Append(a) if a.message.sequence == 1));
        assert!(matches!(streams.next("s", "c", now), Next::Wait(None)));
        // A plan that is dropped (its journal write failed) leaves no trace.
        drop(plan);
        assert_eq!(store(&mut streams, "a", Some("x"), now).sequence, 1);
        assert!(matches!(
            streams.plan_store("a", &Headers::new(), &Bytes::new(), Some("x"), now),
            Some(Store::Duplicate(Persisted {
                sequence: 1,
                duplicate: true
            }))
        ));
    }

    #[test]
    fn planned_floors_match_what_the_stream_keeps() {
        let now = start();
        let mut streams = Streams::default();
        let mut config = stream("s", &["a"]);
        config.max_messages = Some(3);
        config.duplicate_window = Duration::from_secs(10);
        ensure(&mut streams, config, now).expect("ensure");
        let mut at = now;
        for i in 1..=8u64 {
            at = later(at, Duration::from_secs(4));
            let dedup = format!("id-{i}");
            let plan = streams
                .plan_store("a", &Headers::new(), &Bytes::new(), Some(&dedup), at)
                .expect("captured");
            let Store::Append(append) = &plan else {
                panic!("not a duplicate")
            };
            let planned = append.floors;
            streams.apply_store(plan, at);
            let kept = streams.by_name["s"].floors();
            assert_eq!(planned, kept, "after message {i}");
            assert_eq!(
                kept.messages,
                i.saturating_sub(2).max(1),
                "the last 3 messages"
            );
            // Ids 4 s apart with a 10 s window: the last three are remembered.
            assert_eq!(kept.dedup_ids, i.saturating_sub(2).max(1), "the last 3 ids");
        }
    }

    #[test]
    fn the_ack_floor_covers_what_was_acked_and_skipped() {
        let now = start();
        let mut streams = Streams::default();
        ensure(&mut streams, stream("s", &["a", "b"]), now).expect("ensure");
        consumer(&mut streams, "c", "a");
        for subject in ["a", "b", "b", "a", "b"] {
            store(&mut streams, subject, None, now);
        }
        assert_eq!(delivered(streams.next("s", "c", now)), (1, 1));
        assert_eq!(ack(&mut streams, 1), Some(1));
        assert_eq!(ack(&mut streams, 1), None, "acked twice");
        assert_eq!(delivered(streams.next("s", "c", now)), (4, 1));
        assert_eq!(
            streams
                .plan_consumer("s", "c", "a", Duration::from_secs(5))
                .expect("plan")
                .state
                .ack_floor,
            3,
            "the delivery in flight is not acked"
        );
        assert_eq!(ack(&mut streams, 4), Some(4));
    }

    #[test]
    fn a_restored_consumer_resumes_above_its_ack_floor() {
        let now = start();
        let mut streams = Streams::default();
        ensure(&mut streams, stream("s", &["a.*"]), now).expect("ensure");
        let plan = consumer(&mut streams, "c", "a.*");
        for subject in ["a.1", "a.2", "a.3"] {
            store(&mut streams, subject, Some(subject), now);
        }
        assert_eq!(delivered(streams.next("s", "c", now)), (1, 1));
        let floor = ack(&mut streams, 1).expect("in flight");
        assert_eq!(delivered(streams.next("s", "c", now)), (2, 1));

        let old = &streams.by_name["s"];
        let restored = Restored {
            config: old.config.clone(),
            last_sequence: old.last_sequence,
            messages: old.messages.iter().cloned().collect(),
            dedup_ids: old
                .dedup_order
                .iter()
                .map(|(at, id, s)| (*s, *at, id.clone()))
                .collect(),
            consumers: vec![(
                "c".to_owned(),
                ConsumerState {
                    ack_floor: floor,
                    ..plan.state
                },
            )],
        };
        let mut streams = Streams::default();
        let floors = streams
            .restore(restored, later(now, Duration::from_secs(1)))
            .expect("restore");
        assert_eq!(
            floors,
            Floors {
                messages: 1,
                dedup_ids: 1
            }
        );
        assert_eq!(
            delivered(streams.next("s", "c", now)),
            (2, 1),
            "unacked, counted anew"
        );
        assert_eq!(ack(&mut streams, 2), Some(2));
        assert_eq!(delivered(streams.next("s", "c", now)), (3, 1));
        assert!(store(&mut streams, "a.x", Some("a.1"), now).duplicate);
        assert_eq!(store(&mut streams, "a.4", None, now).sequence, 4);
    }

    #[test]
    fn a_restore_prunes_by_age_and_refuses_gaps() {
        let now = start();
        let message = |sequence: u64, at: SystemTime| Stored {
            sequence,
            subject: "a".to_owned(),
            headers: Headers::new(),
            payload: Bytes::new(),
            at,
        };
        let restored = |sequences: &[u64], last_sequence: u64| Restored {
            config: stream("s", &["a"]),
            last_sequence,
            messages: sequences
                .iter()
                .map(|s| message(*s, now.wall - Duration::from_secs(100 - *s)))
                .collect(),
            dedup_ids: Vec::new(),
            consumers: Vec::new(),
        };
        let mut streams = Streams::default();
        assert!(streams.restore(restored(&[3, 5], 5), now).is_err(), "a gap");
        assert!(
            streams.restore(restored(&[3, 4], 3), now).is_err(),
            "past the last"
        );
        assert!(
            streams.by_name.is_empty(),
            "a failed restore changes nothing"
        );
        // Messages 40 and older are 60 s or more old: past max_age.
        let floors = streams
            .restore(restored(&[38, 39, 40, 41], 43), now)
            .expect("restore");
        assert_eq!(
            floors,
            Floors {
                messages: 41,
                dedup_ids: 44
            }
        );
        assert_eq!(store(&mut streams, "a", None, now).sequence, 44);
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
