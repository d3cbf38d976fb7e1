//! The in-process bus, for single-process mode and tests: tokio channels
//! for core traffic, a state machine in memory for streams (`durable`),
//! and optionally a journal file that keeps the streams across restarts
//! (`journal`, with its encodings in `record`).
//!
//! [`LocalBus::new`] keeps streams in memory only; a crash loses them. That
//! suits tests and tools, not the single-process default: there the
//! storage service answers a sender once a message is stored, and what
//! tells devices about it still rides on durable streams (the stored event
//! to fanout, the per-user events to sync). Lost from memory, those events
//! never reach the devices, and they never converge.
//!
//! [`LocalBus::open`] writes every change to a stream or a consumer's ack
//! floor to its journal before applying it, so it survives `kill -9`: when
//! the bus is opened again, every message whose durable publish returned
//! `Ok` and that a consumer had not acked is delivered to that consumer
//! again, in order, and the streams' sequences and dedup ids carry on.
//! Either way the streams are served from memory, bounded by each stream's
//! `max_age` and `max_messages`.

mod durable;
mod journal;
mod record;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use tokio::sync::{mpsc, watch};

use self::durable::{Next, Now, Stored, Streams};
pub use self::journal::LOCAL_BUS_FILE;
use self::journal::{Journal, Journaled};
use crate::subject::INBOX;
use crate::{
    Acknowledge, Bus, BusError, ConsumerConfig, DEFAULT_SUBSCRIPTION_CAPACITY, Deliveries,
    Delivery, DurableMessage, Incoming, Outgoing, Persisted, Prefix, Result, StreamConfig,
    Subscription, check_name, matches,
};

/// The in-process [`Bus`], with its streams in memory
/// ([`new`](Self::new)) or also in a journal file that survives a crash
/// ([`open`](Self::open)). Clones share one bus;
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
    /// Where a persistent bus writes its streams' changes ahead.
    journal: Option<Journal>,
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
        Ok(Self::build(
            Prefix::new(prefix)?,
            capacity,
            Streams::default(),
            None,
        ))
    }

    /// Opens the persistent bus kept in `dir`, creating the directory and
    /// its journal file, [`LOCAL_BUS_FILE`], if they do not exist, and
    /// restoring the streams, messages, dedup ids and consumers' ack floors
    /// it holds. Subscriptions buffer [`DEFAULT_SUBSCRIPTION_CAPACITY`]
    /// messages each.
    ///
    /// Durable publishes, stream changes, new consumers and acks return
    /// once they are on disk. What is not kept: deliveries in flight and
    /// their counts, so after a restart every message a consumer had not
    /// acked is delivered again, counted from 1.
    ///
    /// One bus has the directory open at a time: a second `open` of it
    /// fails with [`BusError::Unavailable`] until every clone of the first
    /// bus, and every delivery and consumer stream it handed out, is
    /// dropped. This blocks on file I/O, reading the whole journal: call it
    /// at start-up, before serving, or from `spawn_blocking`.
    pub fn open(prefix: &str, dir: impl AsRef<Path>) -> Result<Self> {
        let prefix = Prefix::new(prefix)?;
        let mut streams = Streams::default();
        let journal = Journal::open(dir.as_ref(), &mut streams, Now::current())?;
        Ok(Self::build(
            prefix,
            DEFAULT_SUBSCRIPTION_CAPACITY,
            streams,
            Some(journal),
        ))
    }

    fn build(prefix: Prefix, capacity: usize, streams: Streams, journal: Option<Journal>) -> Self {
        Self {
            prefix,
            hub: Arc::new(Hub {
                capacity: capacity.max(1),
                next_id: AtomicU64::new(1),
                turn: AtomicUsize::new(0),
                subscribers: Mutex::new(Subscribers::default()),
                streams: Mutex::new(streams),
                journal,
            }),
        }
    }

    /// The journal file of a persistent bus; `None` for one in memory.
    pub fn path(&self) -> Option<&Path> {
        self.hub.journal.as_ref().map(Journal::path)
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
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// Makes one change to the streams: `plan` decides it (see `durable`),
    /// a persistent bus writes the plan to its journal, and `apply` carries
    /// it out. On a persistent bus, changes are made one at a time, and a
    /// plan is applied right after it is written, on the blocking pool, so
    /// a caller that stops waiting cannot leave a written plan unapplied.
    async fn change<P, T>(
        self: &Arc<Self>,
        plan: impl FnOnce(&mut Streams) -> Result<P>,
        apply: impl FnOnce(&mut Streams, P) -> T + Send + 'static,
    ) -> Result<T>
    where
        P: Journaled + Send + 'static,
        T: Send + 'static,
    {
        let Some(journal) = &self.journal else {
            let mut streams = lock(&self.streams);
            let planned = plan(&mut streams)?;
            return Ok(apply(&mut streams, planned));
        };
        let mut writer = journal.writer().await;
        let planned = plan(&mut lock(&self.streams))?;
        let deferred = planned.deferred().inspect(|c| writer.defer(c)).is_some();
        if deferred || planned.entries().is_empty() {
            return Ok(apply(&mut lock(&self.streams), planned));
        }
        let hub = Arc::clone(self);
        blocking(move || {
            let written = writer.commit(&planned.entries())?;
            let applied = apply(&mut lock(&hub.streams), planned);
            // The next change goes ahead while this one waits for the disk.
            drop(writer);
            if let Some(journal) = &hub.journal {
                journal.flush_through(written)?;
            }
            Ok(applied)
        })
        .await
    }

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

/// Runs blocking work off the runtime threads. A panic in it is re-raised
/// in the caller, as if the work had run inline.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(BusError::Unavailable(format!(
            "bus journal task ended: {e}"
        ))),
    }
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
            // Most subjects have one subscriber (a session's live subject);
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
        // publisher learns nothing of how that went. Checked first, so core
        // traffic waits for the journal only when a stream captures it.
        if !lock(&self.hub.streams).captures(&subject) {
            return Ok(());
        }
        let stored = self
            .hub
            .change(
                |streams| {
                    Ok(streams.plan_store(
                        &subject,
                        &message.headers,
                        &message.payload,
                        None,
                        Now::current(),
                    ))
                },
                |streams, plan| plan.map(|plan| streams.apply_store(plan, Now::current())),
            )
            .await;
        if let Err(err) = stored {
            tracing::warn!(subject, error = %err, "core message not stored in its stream");
        }
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
        self.hub
            .change(
                |streams| streams.plan_ensure(prefixed),
                |streams, config| streams.apply_ensure(config, Now::current()),
            )
            .await
    }

    async fn delete_stream(&self, name: &str) -> Result<()> {
        let name = self.prefix.stream(name)?;
        self.hub
            .change(
                |streams| Ok(streams.plan_delete(&name)),
                |streams, deletion| {
                    if let Some(deletion) = deletion {
                        streams.apply_delete(deletion);
                    }
                },
            )
            .await
    }

    async fn publish_durable_batch(&self, messages: Vec<DurableMessage>) -> Result<Vec<Persisted>> {
        let prepared = messages
            .into_iter()
            .map(|m| m.prepare(&self.prefix))
            .collect::<Result<Vec<_>>>()?;
        let persisted = self
            .hub
            .change(
                |streams| {
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
                    streams
                        .plan_stores(&batch, Now::current())
                        .ok_or_else(|| BusError::NoStream {
                            subject: uncaptured(streams, &prepared),
                        })
                },
                |streams, plans| {
                    plans
                        .into_iter()
                        .map(|plan| streams.apply_store(plan, Now::current()))
                        .collect::<Vec<_>>()
                },
            )
            .await?;
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
        let changed = self
            .hub
            .change(
                |streams| streams.plan_consumer(&stream, &config.name, &filter, config.ack_wait),
                |streams, plan| streams.apply_consumer(plan),
            )
            .await?;
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
        self.hub
            .change(
                |streams| Ok(streams.plan_ack(&self.stream, &self.consumer, self.sequence)),
                |streams, ack| {
                    if let Some(ack) = ack {
                        streams.apply_ack(ack);
                    }
                },
            )
            .await
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
