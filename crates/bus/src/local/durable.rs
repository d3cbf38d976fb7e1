//! The in-memory streams and consumers behind [`LocalBus`]: a plain state
//! machine that is handed `now` and never waits, so the async shell around
//! it stays thin.
//!
//! It follows JetStream where the services can observe the difference:
//! sequences start at 1 and have no gaps, limits discard the oldest
//! messages, a dedup id is remembered for the duplicate window, streams may
//! not overlap, and a consumer has at most one unacknowledged delivery.
//!
//! [`LocalBus`]: super::LocalBus

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{BusError, Headers, Persisted, Result, StreamConfig, matches, overlaps};

/// A stored message. Subjects here carry the bus prefix.
#[derive(Debug, Clone)]
pub(super) struct Stored {
    pub(super) sequence: u64,
    pub(super) subject: String,
    pub(super) headers: Headers,
    pub(super) payload: Bytes,
    at: Instant,
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

/// How a delivery was settled.
#[derive(Debug, Clone, Copy)]
pub(super) enum Settle {
    Ack,
    Nak(Duration),
}

#[derive(Debug, Default)]
pub(super) struct Streams {
    by_name: HashMap<String, Stream>,
}

#[derive(Debug)]
struct Stream {
    config: StreamConfig,
    messages: VecDeque<Stored>,
    last_sequence: u64,
    dedup: HashMap<String, u64>,
    dedup_order: VecDeque<(Instant, String, u64)>,
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

impl Streams {
    /// Creates or updates a stream; `config` carries prefixed names.
    pub(super) fn ensure(&mut self, config: StreamConfig, now: Instant) -> Result<()> {
        for (name, other) in &self.by_name {
            if *name == config.name {
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
                stream.prune(now);
            }
            Entry::Vacant(entry) => {
                entry.insert(Stream {
                    config,
                    messages: VecDeque::new(),
                    last_sequence: 0,
                    dedup: HashMap::new(),
                    dedup_order: VecDeque::new(),
                    consumers: HashMap::new(),
                });
            }
        }
        Ok(())
    }

    pub(super) fn delete(&mut self, name: &str) {
        self.by_name.remove(name);
    }

    /// Stores a message in the stream capturing `subject`; `None` if no
    /// stream does.
    pub(super) fn store(
        &mut self,
        subject: &str,
        headers: &Headers,
        payload: &Bytes,
        dedup_id: Option<&str>,
        now: Instant,
    ) -> Option<Persisted> {
        let stream = self
            .by_name
            .values_mut()
            .find(|s| s.config.subjects.iter().any(|f| matches(f, subject)))?;
        stream.prune(now);
        if let Some(&sequence) = dedup_id.and_then(|id| stream.dedup.get(id)) {
            return Some(Persisted {
                sequence,
                duplicate: true,
            });
        }
        stream.last_sequence += 1;
        let sequence = stream.last_sequence;
        stream.messages.push_back(Stored {
            sequence,
            subject: subject.to_owned(),
            headers: headers.clone(),
            payload: payload.clone(),
            at: now,
        });
        if let Some(id) = dedup_id {
            stream.dedup.insert(id.to_owned(), sequence);
            stream.dedup_order.push_back((now, id.to_owned(), sequence));
        }
        stream.prune(now);
        for consumer in stream.consumers.values() {
            if matches(&consumer.filter, subject) {
                consumer.changed.send_replace(());
            }
        }
        Some(Persisted {
            sequence,
            duplicate: false,
        })
    }

    /// Creates or updates a durable consumer and returns what wakes its
    /// readers.
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
            .or_insert_with(|| Consumer {
                filter: filter.to_owned(),
                ack_wait,
                next: 1,
                in_flight: None,
                changed: watch::channel(()).0,
            });
        consumer.filter = filter.to_owned();
        consumer.ack_wait = ack_wait;
        consumer.changed.send_replace(());
        Ok(consumer.changed.subscribe())
    }

    /// The consumer's next step: redeliver the message in flight once it is
    /// due, else deliver the next matching message, else wait.
    pub(super) fn next(&mut self, stream: &str, consumer: &str, now: Instant) -> Next {
        let Some(stream_state) = self.by_name.get_mut(stream) else {
            return Next::Gone(BusError::StreamNotFound {
                name: stream.to_owned(),
            });
        };
        stream_state.prune(now);
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

    /// Settles the delivery of `sequence`; a delivery no longer in flight
    /// (redelivered meanwhile, or discarded) is ignored.
    pub(super) fn settle(
        &mut self,
        stream: &str,
        consumer: &str,
        sequence: u64,
        how: Settle,
        now: Instant,
    ) {
        let Some(consumer) = self
            .by_name
            .get_mut(stream)
            .and_then(|s| s.consumers.get_mut(consumer))
        else {
            return;
        };
        match (&mut consumer.in_flight, how) {
            (Some(in_flight), Settle::Ack) if in_flight.sequence == sequence => {
                consumer.in_flight = None;
            }
            (Some(in_flight), Settle::Nak(delay)) if in_flight.sequence == sequence => {
                in_flight.due = after(now, delay);
            }
            _ => return,
        }
        consumer.changed.send_replace(());
    }
}

impl Stream {
    /// Applies the age and count limits and forgets expired dedup ids.
    fn prune(&mut self, now: Instant) {
        let max_age = self.config.max_age;
        while self
            .messages
            .front()
            .is_some_and(|m| now.saturating_duration_since(m.at) >= max_age)
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
            if now.saturating_duration_since(*at) < window {
                break;
            }
            if self.dedup.get(id) == Some(sequence) {
                self.dedup.remove(id);
            }
            self.dedup_order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(name: &str, subjects: &[&str]) -> StreamConfig {
        StreamConfig::new(name, subjects, Duration::from_secs(60))
    }

    fn store(streams: &mut Streams, subject: &str, dedup: Option<&str>, now: Instant) -> Persisted {
        streams
            .store(subject, &Headers::new(), &Bytes::new(), dedup, now)
            .expect("a stream captures the subject")
    }

    fn delivered(next: Next) -> (u64, u32) {
        match next {
            Next::Deliver { message, delivered } => (message.sequence, delivered),
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    #[test]
    fn one_in_flight_then_redelivery_after_ack_wait() {
        let now = Instant::now();
        let mut streams = Streams::default();
        streams.ensure(stream("s", &["a.*"]), now).expect("ensure");
        streams
            .consumer("s", "c", "a.*", Duration::from_secs(5))
            .expect("consumer");
        store(&mut streams, "a.1", None, now);
        store(&mut streams, "a.2", None, now);

        assert_eq!(delivered(streams.next("s", "c", now)), (1, 1));
        let due = now + Duration::from_secs(5);
        assert!(matches!(streams.next("s", "c", now), Next::Wait(Some(d)) if d == due));
        assert_eq!(delivered(streams.next("s", "c", due)), (1, 2));
        streams.settle("s", "c", 1, Settle::Ack, due);
        assert_eq!(delivered(streams.next("s", "c", due)), (2, 1));
        streams.settle("s", "c", 2, Settle::Nak(Duration::ZERO), due);
        assert_eq!(delivered(streams.next("s", "c", due)), (2, 2));
        streams.settle("s", "c", 2, Settle::Ack, due);
        assert!(matches!(streams.next("s", "c", due), Next::Wait(None)));
    }

    #[test]
    fn limits_discard_the_oldest_and_skip_the_consumer_past_them() {
        let now = Instant::now();
        let mut streams = Streams::default();
        let mut config = stream("s", &["a"]);
        config.max_messages = Some(2);
        streams.ensure(config, now).expect("ensure");
        streams
            .consumer("s", "c", "a", Duration::from_secs(5))
            .expect("consumer");
        for _ in 0..3 {
            store(&mut streams, "a", None, now);
        }
        assert_eq!(delivered(streams.next("s", "c", now)), (2, 1));
        let later = now + Duration::from_secs(61);
        assert!(matches!(streams.next("s", "c", later), Next::Wait(None)));
    }

    #[test]
    fn dedup_ids_expire_with_the_window() {
        let now = Instant::now();
        let mut streams = Streams::default();
        let mut config = stream("s", &["a"]);
        config.duplicate_window = Duration::from_secs(2);
        streams.ensure(config, now).expect("ensure");
        assert_eq!(store(&mut streams, "a", Some("x"), now).sequence, 1);
        let again = store(&mut streams, "a", Some("x"), now + Duration::from_secs(1));
        assert_eq!((again.sequence, again.duplicate), (1, true));
        let after_window = store(&mut streams, "a", Some("x"), now + Duration::from_secs(2));
        assert_eq!((after_window.sequence, after_window.duplicate), (2, false));
    }

    #[test]
    fn overlapping_streams_conflict() {
        let now = Instant::now();
        let mut streams = Streams::default();
        streams.ensure(stream("s", &["a.*"]), now).expect("ensure");
        streams
            .ensure(stream("s", &["a.*", "b"]), now)
            .expect("a stream may update itself");
        assert!(matches!(
            streams.ensure(stream("t", &["a.b"]), now),
            Err(BusError::Conflict(_))
        ));
        streams
            .ensure(stream("t", &["c.>"]), now)
            .expect("disjoint");
    }
}
