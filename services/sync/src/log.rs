//! The USERS consumer of one partition of users: gives each user event
//! the next cursor of its user's log, publishes it live, then writes the
//! delivery's entries in one store write.
//!
//! This process holds the partition through a lease, so it is the only
//! writer of these users' logs and can number them from memory: a bounded
//! cache keeps, per recently seen user, the head and fingerprints (hashed
//! keys) of the newest entries. The numbering is deterministic: after a
//! crash, a failed write or a takeover, the delivery comes again, each
//! user's head is read from the store (where any prefix of the failed
//! write may have landed), and the events get the same cursors they were
//! published live with, so a device never sees a gap or one event at two
//! cursors. An event already in the log (a redelivery, or fanout
//! publishing it twice outside the stream's dedup window) is found by its
//! [`Event::key`] among the user's newest entries and keeps its cursor. A
//! fingerprint only rules an event *out*: on a match the newest entries are
//! read from the store and their keys compared, so a hash collision costs a
//! read, never an event.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use natter_bus::Bus;
use natter_contract::{Backoff, Handled, USERS, consume_partition, encode, serve, subjects};
use natter_core::{Cursor, Event, Invalid, TenantId, Update, UserId};
use natter_proto::bus::v1::{UserEvent, UserEvents};
use natter_proto::convert::{parse_id, required};
use natter_proto::v1;
use natter_server::clock::Versions;
use natter_server::partitions::trusted;
use natter_store::{Lease, StoreError, SyncStore, UpdateBatch};
use tokio::sync::{RwLock, watch};
use tokio_util::sync::CancellationToken;

use crate::CONSUMER;
use crate::responders::Responders;

/// How many of a user's newest entries a repeated event is looked for in.
const RECENT: u64 = 64;
/// Users whose log head the cache keeps, per partition.
const CACHED_USERS: usize = 4096;
/// The log is trimmed each time its head reaches a multiple of this.
const TRIM_EVERY: u64 = 1024;
/// Catch-up reads answered at once, per partition.
const READS_IN_FLIGHT: usize = 256;
/// The first and the longest delay before a failed delivery is retried.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

type UserKey = (TenantId, UserId);

/// Works one held partition of users until `stop`: consumes its USERS
/// partition with `appender`, and answers catch-up reads for its users
/// (`sync.updates.<n>`). A read waits while a delivery is between its live
/// publish and its write, so a page that reaches the head leaves out
/// nothing a device may have missed live.
pub(crate) async fn serve_partition(
    appender: Appender,
    responders: Arc<Responders>,
    stop: CancellationToken,
) {
    let partition = appender.lease.borrow().partition;
    let bus = appender.bus.clone();
    let reads = match bus.subscribe(&subjects::updates(partition), None).await {
        Ok(reads) => reads,
        Err(e) => {
            tracing::error!(partition, error = %e, "cannot take catch-up reads");
            return;
        }
    };
    let gate = appender.gate.clone();
    let serving = serve(bus.clone(), reads, READS_IN_FLIGHT, move |query| {
        let (responders, gate) = (responders.clone(), gate.clone());
        async move {
            let _written = gate.read().await;
            responders.updates(query).await
        }
    });
    let appender = Arc::new(appender);
    let consuming = consume_partition(
        bus,
        USERS,
        CONSUMER.to_owned(),
        partition,
        stop,
        Arc::new(move |events, delivered| {
            let appender = appender.clone();
            async move { appender.handle(events, delivered).await }
        }),
    );
    // Consuming ends on `stop`; the reads end with it.
    tokio::select! {
        () = consuming => {}
        () = serving => tracing::error!(partition, "catch-up reads ended"),
    }
}

/// Numbers, publishes and writes the user events of one partition.
pub(crate) struct Appender {
    store: Arc<dyn SyncStore>,
    bus: Arc<dyn Bus>,
    lease: watch::Receiver<Lease>,
    /// Updates kept per user (`sync.retained_updates`).
    retained: u64,
    /// How many newest entries are compared: never more than are retained,
    /// so the window is never trimmed away.
    window: u64,
    cache: Mutex<LogCache>,
    versions: Versions,
    /// Held for writing from numbering a delivery until its write ends;
    /// catch-up reads of the partition hold it for reading.
    gate: Arc<RwLock<()>>,
}

/// One event of a delivery, numbered.
struct Numbered {
    tenant: TenantId,
    user: UserId,
    update: Update,
    /// Not in the log yet: to be written.
    new: bool,
}

impl Appender {
    pub(crate) fn new(
        store: Arc<dyn SyncStore>,
        bus: Arc<dyn Bus>,
        lease: watch::Receiver<Lease>,
        retained: u64,
    ) -> Self {
        let retained = retained.max(1);
        Self {
            store,
            bus,
            lease,
            retained,
            window: RECENT.min(retained),
            cache: Mutex::new(LogCache::new(CACHED_USERS)),
            versions: Versions::default(),
            gate: Arc::default(),
        }
    }

    /// Handles one delivery of the USERS stream: its events in order.
    pub(crate) async fn handle(&self, batch: UserEvents, delivered: u32) -> Handled {
        let events: Vec<(TenantId, UserId, Event)> = batch
            .events
            .into_iter()
            .filter_map(|event| {
                parse(event)
                    .inspect_err(|e| tracing::error!(error = %e, "malformed user event dropped"))
                    .ok()
            })
            .collect();
        let retry = || Handled::Retry(Backoff::nth(RETRY_FIRST, RETRY_MAX, delivered));
        let _numbering = self.gate.write().await;
        let (numbered, logs) = match self.number(events, delivered).await {
            Ok(numbered) => numbered,
            Err(e) => {
                tracing::warn!(delivered, error = %e, "cannot read update logs; retrying");
                return retry();
            }
        };
        // Live first: devices need not wait for the write, and a failed
        // write numbers the same events the same way when it is retried.
        if !trusted(&self.lease.borrow()) {
            tracing::warn!("lease about to lapse; handing the delivery back");
            return retry();
        }
        for n in &numbered {
            self.publish_live(&n.tenant, &n.user, &n.update).await;
        }
        let writes: Vec<(TenantId, UserId, Update)> = numbered
            .into_iter()
            .filter(|n| n.new)
            .map(|n| (n.tenant, n.user, n.update))
            .collect();
        if writes.is_empty() {
            self.cache().put_all(logs);
            return Handled::Done;
        }
        match self
            .store
            .write_updates(&writes, self.versions.next())
            .await
        {
            Ok(()) => {
                let heads: Vec<(UserKey, Cursor)> = logs
                    .iter()
                    .map(|(key, log)| (key.clone(), log.head))
                    .collect();
                self.cache().put_all(logs);
                for ((tenant, user), head) in heads {
                    self.trim(&tenant, &user, head).await;
                }
                Handled::Done
            }
            // What landed is read back next time; nothing is cached.
            Err(e @ StoreError::Unavailable(_)) => {
                tracing::warn!(delivered, error = %e, "cannot write update logs; retrying");
                retry()
            }
            Err(e) => {
                // Retrying cannot help (an event the store refuses), and
                // would hold up every user on the partition.
                tracing::error!(error = %e, "user events dropped");
                Handled::Done
            }
        }
    }

    /// Gives each event its cursor: the one it has if it is in its user's
    /// log (or earlier in this delivery), else the next. Returns the events
    /// and the users' logs as they will be once the new ones are written.
    async fn number(
        &self,
        events: Vec<(TenantId, UserId, Event)>,
        delivered: u32,
    ) -> Result<(Vec<Numbered>, HashMap<UserKey, UserLog>), StoreError> {
        let mut logs: HashMap<UserKey, UserLog> = HashMap::new();
        let mut pending: HashMap<(UserKey, String), Cursor> = HashMap::new();
        let mut numbered = Vec::with_capacity(events.len());
        for (tenant, user, event) in events {
            let key = (tenant.clone(), user.clone());
            let event_key = event.key();
            let fingerprint = fingerprint(&event_key);
            let log = match logs.entry(key.clone()) {
                Entry::Occupied(log) => log.into_mut(),
                Entry::Vacant(slot) => {
                    // A redelivery may follow a crash between writing and
                    // acking, here or in another process: trust the store.
                    let cached = self.cache().take(&key).filter(|_| delivered <= 1);
                    match cached {
                        Some(log) => slot.insert(log),
                        None => slot.insert(self.load(&tenant, &user).await?.0),
                    }
                }
            };
            let earlier = match pending.get(&(key.clone(), event_key.clone())) {
                Some(&cursor) => Some(cursor),
                None if log.may_hold(fingerprint) => {
                    let (_, newest) = self.load(&tenant, &user).await?;
                    newest
                        .into_iter()
                        .find(|u| u.event.key() == event_key)
                        .map(|u| u.cursor)
                }
                None => None,
            };
            let (cursor, new) = match earlier {
                Some(cursor) => (cursor, false),
                None => {
                    let cursor = log.head.next();
                    log.push(cursor, fingerprint, self.window);
                    pending.insert((key, event_key), cursor);
                    (cursor, true)
                }
            };
            numbered.push(Numbered {
                tenant,
                user,
                update: Update { cursor, event },
                new,
            });
        }
        Ok((numbered, logs))
    }

    /// Reads the head of the log and its newest entries.
    async fn load(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<(UserLog, Vec<Update>), StoreError> {
        let head = self.store.log_head(tenant, user).await?;
        let mut after = Cursor::new(head.get().saturating_sub(self.window));
        let mut newest = Vec::new();
        // The store may answer in smaller pages than asked for.
        while after < head {
            let limit = u32::try_from(head.get() - after.get()).unwrap_or(u32::MAX);
            match self.store.read_updates(tenant, user, after, limit).await? {
                UpdateBatch::Updates(page) => {
                    let Some(last) = page.last() else { break };
                    after = last.cursor;
                    newest.extend(page);
                }
                // Trimmed past the window (retention was lowered): nothing
                // left to compare with.
                UpdateBatch::ResyncRequired { .. } => break,
            }
        }
        let mut log = UserLog {
            head,
            recent: VecDeque::new(),
        };
        for update in &newest {
            log.push(update.cursor, fingerprint(&update.event.key()), self.window);
        }
        // The pages may reach past the head read first, never short of it.
        log.head = log.head.max(head);
        Ok((log, newest))
    }

    /// Forgets what is past retention each time the head reaches a
    /// multiple of [`TRIM_EVERY`]. A failed trim is caught up by the next.
    async fn trim(&self, tenant: &TenantId, user: &UserId, head: Cursor) {
        if !head.get().is_multiple_of(TRIM_EVERY) || head.get() <= self.retained {
            return;
        }
        let through = Cursor::new(head.get() - self.retained);
        if let Err(e) = self.store.trim_updates(tenant, user, through).await {
            tracing::warn!(%tenant, %user, %through, error = %e, "cannot trim the update log");
        }
    }

    /// Tells the gateways holding sessions of `user`. Core NATS, at most
    /// once: a device that misses it sees the gap at the next update and
    /// fetches it, or catches up on reconnect.
    async fn publish_live(&self, tenant: &TenantId, user: &UserId, update: &Update) {
        let frame = v1::ServerFrame {
            frame: Some(v1::server_frame::Frame::Update(update.clone().into())),
        };
        if let Err(e) = self
            .bus
            .publish(&subjects::live(tenant, user), encode(&frame))
            .await
        {
            tracing::warn!(%tenant, %user, cursor = %update.cursor, error = %e, "cannot publish a live update");
        }
    }

    fn cache(&self) -> MutexGuard<'_, LogCache> {
        // Never held across an await; a panic inside cannot leave it torn.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn parse(event: UserEvent) -> Result<(TenantId, UserId, Event), Invalid> {
    Ok((
        parse_id("tenant_id", &event.tenant_id)?,
        parse_id("user_id", &event.user_id)?,
        required("event", event.event)?.try_into()?,
    ))
}

/// A hash of an event key: the same event has the same fingerprint.
fn fingerprint(event_key: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    event_key.hash(&mut hasher);
    hasher.finish()
}

/// What the cache knows of one user's log.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UserLog {
    head: Cursor,
    /// Fingerprints of the newest entries, oldest first.
    recent: VecDeque<u64>,
}

impl UserLog {
    fn push(&mut self, at: Cursor, fingerprint: u64, window: u64) {
        self.head = at;
        self.recent.push_back(fingerprint);
        while self.recent.len() as u64 > window {
            self.recent.pop_front();
        }
    }

    /// False only if the event is certainly not among the newest entries.
    fn may_hold(&self, fingerprint: u64) -> bool {
        self.recent.contains(&fingerprint)
    }
}

/// The logs of the users seen last, least recently used evicted first.
/// An entry is taken out while its user's event is handled and put back
/// after, so a failed append leaves nothing stale behind.
#[derive(Debug)]
struct LogCache {
    capacity: usize,
    clock: u64,
    entries: HashMap<UserKey, (u64, UserLog)>,
    by_age: BTreeMap<u64, UserKey>,
}

impl LogCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            clock: 0,
            entries: HashMap::new(),
            by_age: BTreeMap::new(),
        }
    }

    fn take(&mut self, key: &UserKey) -> Option<UserLog> {
        let (stamp, log) = self.entries.remove(key)?;
        self.by_age.remove(&stamp);
        Some(log)
    }

    fn put_all(&mut self, logs: HashMap<UserKey, UserLog>) {
        for (key, log) in logs {
            self.put(key, log);
        }
    }

    fn put(&mut self, key: UserKey, log: UserLog) {
        self.take(&key);
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.clock += 1;
        self.by_age.insert(self.clock, key.clone());
        self.entries.insert(key, (self.clock, log));
    }
}

#[cfg(test)]
mod tests {
    use natter_core::{ConversationId, ReadMarker, Seq};

    use super::*;

    fn key(user: &str) -> UserKey {
        (TenantId::new("t").unwrap(), UserId::new(user).unwrap())
    }

    fn log(head: u64) -> UserLog {
        UserLog {
            head: Cursor::new(head),
            recent: VecDeque::new(),
        }
    }

    #[test]
    fn the_cache_evicts_the_least_recently_used_user() {
        let mut cache = LogCache::new(2);
        cache.put(key("a"), log(1));
        cache.put(key("b"), log(2));
        // Handling a's next event makes b the oldest.
        let a = cache.take(&key("a")).unwrap();
        cache.put(key("a"), a);
        cache.put(key("c"), log(3));
        assert!(cache.take(&key("b")).is_none());
        assert_eq!(cache.take(&key("a")), Some(log(1)));
        assert_eq!(cache.take(&key("c")), Some(log(3)));
        assert!(cache.entries.is_empty() && cache.by_age.is_empty());
    }

    #[test]
    fn a_log_remembers_only_its_window() {
        let mut l = log(0);
        for at in 1..=5 {
            l.push(Cursor::new(at), at * 10, 3);
        }
        assert_eq!(l.head, Cursor::new(5));
        assert!(!l.may_hold(20));
        assert!(l.may_hold(30) && l.may_hold(50));
    }

    #[test]
    fn the_same_event_has_the_same_fingerprint() {
        let read = |seq| {
            Event::Read(ReadMarker {
                conversation_id: ConversationId::generate(),
                user_id: UserId::new("u").unwrap(),
                seq: Seq::new(seq),
            })
        };
        let a = read(1);
        assert_eq!(fingerprint(&a.key()), fingerprint(&a.clone().key()));
        assert_ne!(fingerprint(&a.key()), fingerprint(&read(1).key()));
    }
}
