//! The in-process bus, for single-process mode and tests: tokio channels
//! for core traffic and a state machine in memory for streams (`durable`),
//! bounded by each stream's `max_age` and `max_messages`.
//!
//! Streams live in the process's memory only, whatever their
//! [`Storage`](natter_bus::Storage): a crash or restart loses their messages
//! and their consumers' positions, and [`Bus::keeps_streams`] says so. A
//! publisher whose messages must survive a crash keeps them itself until
//! their consumers have taken them, as the storage service does in
//! single-process mode: it keeps each write's announcement in its store
//! until fanout's consumer has acked it ([`Bus::ack_floor`]), and
//! announces again, after a crash, what it kept.

mod durable;

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use tokio::sync::{mpsc, watch};

use natter_bus::{
    Acknowledge, Bus, BusError, ConsumerConfig, DEFAULT_SUBSCRIPTION_CAPACITY, Deliveries,
    Delivery, DurableMessage, INBOX, Incoming, Outgoing, Persisted, Prefix, Result, StreamConfig,
    Subscription, check_name, matches,
};

use self::durable::{Next, Now, Stored, Streams};

/// The in-process [`Bus`], with its streams in memory. Clones share one bus;
/// [`with_prefix`](Self::with_prefix) opens the same bus under another
/// prefix, as a second NATS connection would.
#[derive(Clone)]
pub struct LocalBus {
    prefix: Prefix,
    hub: Arc<Hub>,
}

struct Hub {
    capacity: usize,
    next_id: AtomicU64,
    /// Rotates which queue group member is offered a message first.
    turn: AtomicUsize,
    subscribers: Mutex<Subscribers>,
    streams: Mutex<Streams>,
}

struct Subscriber {
    id: u64,
    /// Prefixed, as are all subjects inside the hub.
    filter: Arc<str>,
    queue_group: Option<String>,
    prefix: Prefix,
    /// Boxed: a channel allocates its first block of 32 slots up front, so
    /// a slot of one pointer instead of a whole `Incoming` keeps an idle
    /// subscription (one per device session on a gateway) about 3 KiB
    /// smaller.
    sender: mpsc::Sender<Box<Incoming>>,
}

/// Locks a mutex that is never held across an await. Poisoning is ignored:
/// no critical section can panic halfway short of a bug, and one failed
/// caller should not take the whole bus down with it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LocalBus {
    /// A new, empty bus whose subscriptions buffer
    /// [`DEFAULT_SUBSCRIPTION_CAPACITY`] messages each.
    pub fn new(prefix: &str) -> Result<Self> {
        Self::with_capacity(prefix, DEFAULT_SUBSCRIPTION_CAPACITY)
    }

    /// A new, empty bus whose subscriptions buffer `capacity` messages each.
    pub fn with_capacity(prefix: &str, capacity: usize) -> Result<Self> {
        Ok(Self {
            prefix: Prefix::new(prefix)?,
            hub: Arc::new(Hub {
                capacity: capacity.max(1),
                next_id: AtomicU64::new(1),
                turn: AtomicUsize::new(0),
                subscribers: Mutex::new(Subscribers::default()),
                streams: Mutex::new(Streams::default()),
            }),
        })
    }

    /// This bus under another prefix.
    pub fn with_prefix(&self, prefix: &str) -> Result<Self> {
        Ok(Self {
            prefix: Prefix::new(prefix)?,
            hub: Arc::clone(&self.hub),
        })
    }

    fn subscribe_prefixed(
        &self,
        filter: String,
        queue_group: Option<String>,
        capacity: usize,
    ) -> LocalSubscription {
        let (sender, receiver) = mpsc::channel(capacity);
        let id = self.hub.next_id.fetch_add(1, Ordering::Relaxed);
        let filter: Arc<str> = filter.into();
        lock(&self.hub.subscribers).add(Subscriber {
            id,
            filter: filter.clone(),
            queue_group,
            prefix: self.prefix.clone(),
            sender,
        });
        LocalSubscription {
            receiver,
            hub: Arc::downgrade(&self.hub),
            id,
            filter,
        }
    }
}

impl fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalBus")
            .field("prefix", &self.prefix.as_str())
            .field("capacity", &self.hub.capacity)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// Offers a message to every matching subscriber outside queue groups
    /// and to one member of each matching queue group. Returns how many
    /// subscribers matched, whether or not they had room.
    fn deliver(&self, subject: &str, reply: Option<&str>, message: &Outgoing) -> usize {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let subscribers = lock(&self.subscribers);
        let mut matched = 0;
        let mut groups: Vec<(&str, Vec<&Subscriber>)> = Vec::new();
        for subscriber in subscribers.matching(subject) {
            matched += 1;
            match subscriber.queue_group.as_deref() {
                None => {
                    offer(subscriber, subject, reply, message);
                }
                Some(group) => match groups.iter_mut().find(|(g, _)| *g == group) {
                    Some((_, members)) => members.push(subscriber),
                    None => groups.push((group, vec![subscriber])),
                },
            }
        }
        for (_, members) in groups {
            let count = members.len();
            (0..count)
                .map(|k| members[(turn + k) % count])
                .any(|member| offer(member, subject, reply, message));
        }
        matched
    }
}

/// The first subject of a batch that no stream captures, as its publisher
/// named it.
fn uncaptured(streams: &Streams, batch: &[(String, DurableMessage)]) -> String {
    batch
        .iter()
        .find(|(full, _)| !streams.captures(full))
        .map(|(_, m)| m.subject.clone())
        .unwrap_or_default()
}

/// Hands a message to one subscriber without waiting; a full subscriber
/// loses it, as a slow consumer does on NATS.
fn offer(subscriber: &Subscriber, subject: &str, reply: Option<&str>, message: &Outgoing) -> bool {
    let incoming = Box::new(Incoming {
        subject: subscriber
            .prefix
            .strip(subject)
            .unwrap_or(subject)
            .to_owned(),
        reply: reply
            .and_then(|r| subscriber.prefix.strip(r))
            .map(str::to_owned),
        headers: message.headers.clone(),
        payload: message.payload.clone(),
    });
    match subscriber.sender.try_send(incoming) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(
                subject,
                subscription = subscriber.id,
                "slow subscriber: message dropped"
            );
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// A subscription's receiving end; dropping it unsubscribes.
struct LocalSubscription {
    receiver: mpsc::Receiver<Box<Incoming>>,
    hub: Weak<Hub>,
    id: u64,
    filter: Arc<str>,
}

impl Stream for LocalSubscription {
    type Item = Incoming;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        self.receiver
            .poll_recv(cx)
            .map(|next| next.map(|incoming| *incoming))
    }
}

impl Drop for LocalSubscription {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            lock(&hub.subscribers).remove(&self.filter, self.id);
        }
    }
}

/// A hub's subscriptions. Those to one literal subject are found by that
/// subject, so a publish looks at its own subscribers and the wildcard
/// ones only, not at every device session's live subscription: with a
/// scan of all, each publish cost time in proportion to the sessions open.
#[derive(Default)]
struct Subscribers {
    exact: HashMap<Arc<str>, Vec<Subscriber>>,
    wildcard: Vec<Subscriber>,
}

impl Subscribers {
    fn add(&mut self, subscriber: Subscriber) {
        if is_literal(&subscriber.filter) {
            // Most subjects have one subscriber (a gateway's live subject);
            // a list grown by the default doubling would hold room for four.
            self.exact
                .entry(subscriber.filter.clone())
                .or_insert_with(|| Vec::with_capacity(1))
                .push(subscriber);
        } else {
            self.wildcard.push(subscriber);
        }
    }

    fn remove(&mut self, filter: &str, id: u64) {
        if !is_literal(filter) {
            self.wildcard.retain(|s| s.id != id);
        } else if let Some(list) = self.exact.get_mut(filter) {
            list.retain(|s| s.id != id);
            if list.is_empty() {
                self.exact.remove(filter);
            }
        }
    }

    fn matching<'a>(&'a self, subject: &'a str) -> impl Iterator<Item = &'a Subscriber> {
        self.exact
            .get(subject)
            .into_iter()
            .flatten()
            .chain(self.wildcard.iter().filter(|s| matches(&s.filter, subject)))
    }
}

/// A filter without wildcards: it matches exactly one subject, itself.
fn is_literal(filter: &str) -> bool {
    !filter.split('.').any(|token| token == "*" || token == ">")
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, subject: &str, message: Outgoing) -> Result<()> {
        let subject = self.prefix.subject(subject)?;
        let message = message.prepare()?;
        self.hub.deliver(&subject, None, &message);
        // As on NATS, a stream captures core publishes too, and the
        // publisher learns nothing of how that went.
        lock(&self.hub.streams).store(
            &[(&subject, &message.headers, &message.payload, None)],
            Now::current(),
        );
        Ok(())
    }

    async fn subscribe(&self, subject: &str, queue_group: Option<&str>) -> Result<Subscription> {
        let filter = self.prefix.filter(subject)?;
        if let Some(group) = queue_group {
            check_name("queue group", group)?;
        }
        let subscription =
            self.subscribe_prefixed(filter, queue_group.map(str::to_owned), self.hub.capacity);
        Ok(Subscription::new(subscription))
    }

    async fn request(
        &self,
        subject: &str,
        message: Outgoing,
        timeout: Duration,
    ) -> Result<Incoming> {
        let full = self.prefix.subject(subject)?;
        let message = message.prepare()?;
        let id = self.hub.next_id.fetch_add(1, Ordering::Relaxed);
        let inbox = self.prefix.subject(&format!("{INBOX}.{id}"))?;
        let mut replies = self.subscribe_prefixed(inbox.clone(), None, 1);
        if self.hub.deliver(&full, Some(&inbox), &message) == 0 {
            return Err(BusError::NoResponders {
                subject: subject.to_owned(),
            });
        }
        match tokio::time::timeout(timeout, replies.receiver.recv()).await {
            Ok(Some(reply)) => Ok(*reply),
            Ok(None) => Err(BusError::Unavailable("reply inbox closed".to_owned())),
            Err(_) => Err(BusError::Timeout {
                subject: subject.to_owned(),
                timeout,
            }),
        }
    }

    async fn ensure_stream(&self, config: &StreamConfig) -> Result<()> {
        config.check()?;
        let prefixed = StreamConfig {
            name: self.prefix.stream(&config.name)?,
            subjects: config
                .subjects
                .iter()
                .map(|s| self.prefix.filter(s))
                .collect::<Result<_>>()?,
            ..config.clone()
        };
        lock(&self.hub.streams).ensure(prefixed, Now::current())
    }

    async fn delete_stream(&self, name: &str) -> Result<()> {
        let name = self.prefix.stream(name)?;
        lock(&self.hub.streams).delete(&name);
        Ok(())
    }

    async fn publish_durable_batch(&self, messages: Vec<DurableMessage>) -> Result<Vec<Persisted>> {
        let prepared = messages
            .into_iter()
            .map(|m| m.prepare(&self.prefix))
            .collect::<Result<Vec<_>>>()?;
        let batch: Vec<_> = prepared
            .iter()
            .map(|(full, m)| {
                (
                    full.as_str(),
                    &m.message.headers,
                    &m.message.payload,
                    m.dedup_id.as_deref(),
                )
            })
            .collect();
        let persisted = {
            let mut streams = lock(&self.hub.streams);
            streams
                .store(&batch, Now::current())
                .ok_or_else(|| BusError::NoStream {
                    subject: uncaptured(&streams, &prepared),
                })?
        };
        for ((full, m), persisted) in prepared.iter().zip(&persisted) {
            if !persisted.duplicate {
                self.hub.deliver(full, None, &m.message);
            }
        }
        Ok(persisted)
    }

    async fn consume(&self, config: &ConsumerConfig) -> Result<Deliveries> {
        config.check()?;
        let stream = self.prefix.stream(&config.stream)?;
        let filter = self.prefix.filter(&config.filter_subject)?;
        let changed =
            lock(&self.hub.streams).consumer(&stream, &config.name, &filter, config.ack_wait)?;
        let reader = Reader {
            bus: self.clone(),
            stream,
            consumer: config.name.clone(),
            changed,
        };
        Ok(Deliveries::new(futures::stream::unfold(
            Some(reader),
            |reader| async move {
                let mut reader = reader?;
                match reader.next().await {
                    Ok(delivery) => Some((Ok(delivery), Some(reader))),
                    Err(err) => Some((Err(err), None)),
                }
            },
        )))
    }

    async fn ack_floor(&self, stream: &str, consumer: &str) -> Result<u64> {
        check_name("consumer name", consumer)?;
        let prefixed = self.prefix.stream(stream)?;
        lock(&self.hub.streams)
            .ack_floor(&prefixed, consumer)
            .ok_or_else(|| BusError::StreamNotFound {
                name: stream.to_owned(),
            })
    }

    fn keeps_streams(&self) -> bool {
        false
    }
}

/// One reader of a durable consumer; several may share the consumer.
struct Reader {
    bus: LocalBus,
    stream: String,
    consumer: String,
    changed: watch::Receiver<()>,
}

impl Reader {
    async fn next(&mut self) -> Result<Delivery> {
        loop {
            self.changed.borrow_and_update();
            let next =
                lock(&self.bus.hub.streams).next(&self.stream, &self.consumer, Now::current());
            let changed = match next {
                Next::Deliver { message, delivered } => {
                    return Ok(self.delivery(message, delivered));
                }
                Next::Gone(err) => return Err(err),
                Next::Wait(Some(due)) => tokio::select! {
                    changed = self.changed.changed() => changed,
                    () = tokio::time::sleep_until(due) => Ok(()),
                },
                Next::Wait(None) => self.changed.changed().await,
            };
            if changed.is_err() {
                return Err(BusError::Unavailable(format!(
                    "consumer {} was deleted",
                    self.consumer
                )));
            }
        }
    }

    fn delivery(&self, message: Stored, delivered: u32) -> Delivery {
        let sequence = message.sequence;
        let incoming = Incoming {
            subject: self
                .bus
                .prefix
                .strip(&message.subject)
                .unwrap_or(&message.subject)
                .to_owned(),
            reply: None,
            headers: message.headers,
            payload: message.payload,
        };
        let acker = LocalAck {
            hub: Arc::clone(&self.bus.hub),
            stream: self.stream.clone(),
            consumer: self.consumer.clone(),
            sequence,
        };
        Delivery::new(incoming, sequence, delivered, Box::new(acker))
    }
}

struct LocalAck {
    hub: Arc<Hub>,
    stream: String,
    consumer: String,
    sequence: u64,
}

impl fmt::Debug for LocalAck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalAck")
            .field("stream", &self.stream)
            .field("consumer", &self.consumer)
            .field("sequence", &self.sequence)
            .finish()
    }
}

#[async_trait]
impl Acknowledge for LocalAck {
    async fn ack(self: Box<Self>) -> Result<()> {
        lock(&self.hub.streams).ack(&self.stream, &self.consumer, self.sequence);
        Ok(())
    }

    async fn nak(self: Box<Self>, delay: Duration) -> Result<()> {
        lock(&self.hub.streams).nak(
            &self.stream,
            &self.consumer,
            self.sequence,
            delay,
            Now::current(),
        );
        Ok(())
    }
}
