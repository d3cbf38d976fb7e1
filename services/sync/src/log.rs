//! The appender of one partition of users: takes fanout's `UserEvents`
//! requests (`sync.append.<n>`), gives each event the next cursor of its
//! user's log, writes every request that arrived meanwhile in one store
//! write, then publishes the entries live to the gateways that hold
//! sessions of their users (`directory.rs`) and answers each request.
//!
//! This process holds the partition through a lease, so it is the only
//! writer of these users' logs and can number them from memory: a bounded
//! cache keeps, per recently seen user, the head and fingerprints (hashed
//! keys) of the newest entries. Nothing goes live before its write has
//! landed, so every cursor a device sees is in the log, whatever crashes
//! or fails afterwards. A failed write answers with a failure and keeps
//! nothing cached: fanout asks again, each user's head is read from the
//! store (where any prefix of the failed write may have landed), and what
//! landed keeps its cursor. An event already in the log (a request asked
//! again after a timeout, a takeover, or an EVENTS redelivery) is found by
//! its [`Event::key`] among the user's newest entries and keeps its
//! cursor. A fingerprint only rules an event *out*: on a match the newest
//! entries are read from the store and their keys compared, so a hash
//! collision costs a read, never an event.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::{FutureExt, StreamExt, TryStreamExt};
use natter_bus::{Bus, BusError, Subscription};
use natter_contract::{decode, encode, serve, subjects};
use natter_core::{Cursor, Event, Invalid, TenantId, Update, UserId};
use natter_proto::bus::v1::{AppendOutcome, DeviceHello, PartitionHeld, UserEvent, UserEvents};
use natter_proto::convert::{actor_from_wire, parse_id, required};
use natter_proto::status::{self, reason, to_failure};
use natter_proto::v1;
use natter_server::clock::Versions;
use natter_server::partitions::trusted;
use natter_server::store_status;
use natter_store::{Lease, StoreError, SyncStore, UpdateBatch};
use prost::Message;
use prost::bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::directory::{Directory, UserKey};
use crate::responders::Responders;

/// How many of a user's newest entries a repeated event is looked for in.
const RECENT: u64 = 64;
/// Users whose log head the cache keeps, per partition.
const CACHED_USERS: usize = 4096;
/// The log is trimmed each time its head reaches a multiple of this.
const TRIM_EVERY: u64 = 1024;
/// Catch-up reads answered at once, per partition.
const READS_IN_FLIGHT: usize = 256;
/// Append requests numbered and written together, at most.
const APPENDS_PER_WRITE: usize = 64;
/// Logs read from the store at once while numbering a batch.
const LOADS_IN_FLIGHT: usize = 32;

/// Works one held partition of users until `stop`: appends what fanout
/// asks at `sync.append.<n>` with `appender`; answers its users' device
/// hellos (`sync.hello.<n>`), putting their gateways in the partition's
/// directory, and catch-up reads (`sync.updates.<n>`) from the store,
/// which has every entry that went live; keeps the directory from the
/// gateways' attaches and passes fanout's signals on through it.
pub(crate) async fn serve_partition(
    appender: Appender,
    responders: Arc<Responders>,
    stop: CancellationToken,
) {
    let (partition, epoch) = {
        let lease = appender.lease.borrow();
        (lease.partition, lease.epoch)
    };
    let bus = appender.bus.clone();
    let subscribed = async {
        Ok::<_, BusError>((
            bus.subscribe(&subjects::append(partition), None).await?,
            bus.subscribe(&subjects::updates(partition), None).await?,
            bus.subscribe(&subjects::hello(partition), None).await?,
            bus.subscribe(&subjects::attach(partition), None).await?,
            bus.subscribe(&subjects::signals(partition), None).await?,
        ))
    };
    let (appends, reads, hellos, attaches, signals) = match subscribed.await {
        Ok(subscriptions) => subscriptions,
        Err(e) => {
            tracing::error!(partition, error = %e, "cannot take the partition's requests");
            return;
        }
    };
    // The directory starts empty: gateways that hold sessions of these
    // users attach them, and catch their sessions up, once they hear this.
    let held = PartitionHeld {
        partition,
        holder_epoch: epoch,
    };
    if let Err(e) = bus.publish(&subjects::held(partition), encode(&held)).await {
        tracing::warn!(partition, error = %e, "cannot announce the partition's new holder");
    }
    let directory = appender.directory.clone();
    let reading = serve(bus.clone(), reads, READS_IN_FLIGHT, {
        let responders = responders.clone();
        move |query| {
            let responders = responders.clone();
            async move { responders.updates(query).await }
        }
    });
    let greeting = serve(bus.clone(), hellos, READS_IN_FLIGHT, {
        let directory = directory.clone();
        move |hello: DeviceHello| {
            let (responders, directory) = (responders.clone(), directory.clone());
            async move {
                let gateway = hello.gateway.clone();
                let user = actor_from_wire(hello.actor.clone())
                    .ok()
                    .map(|who| (who.tenant, who.user));
                let mut welcome = responders.hello(hello).await;
                if welcome.failure.is_none()
                    && !gateway.is_empty()
                    && let Some(user) = user
                {
                    directory.attach(&gateway, [user]);
                    welcome.holder_epoch = epoch;
                }
                welcome
            }
        }
    });
    // Appending ends on `stop`, once the batch under way is answered; the
    // rest ends with it.
    tokio::select! {
        () = appender.serve(appends, &stop) => {}
        () = reading => tracing::error!(partition, "catch-up reads ended"),
        () = greeting => tracing::error!(partition, "device hellos ended"),
        () = directory.serve_attaches(bus.as_ref(), attaches, epoch) => {
            tracing::error!(partition, "attaches ended");
        }
        () = directory.serve_signals(bus.as_ref(), signals) => {
            tracing::error!(partition, "signals ended");
        }
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
    /// The gateways of this partition's users.
    directory: Arc<Directory>,
}

/// One event of a request, numbered.
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
            directory: Arc::default(),
        }
    }

    /// Takes append requests one batch at a time until `stop`: the first,
    /// and every other that has arrived meanwhile, in one numbering and
    /// one write, then answers each. A request that cannot be read is
    /// dropped; its sender times out and asks again.
    async fn serve(&self, mut requests: Subscription, stop: &CancellationToken) {
        loop {
            let first = tokio::select! {
                () = stop.cancelled() => return,
                next = requests.next() => next,
            };
            let Some(first) = first else {
                tracing::error!("append requests ended");
                return;
            };
            let mut batch = vec![first];
            while batch.len() < APPENDS_PER_WRITE {
                match requests.next().now_or_never() {
                    Some(Some(next)) => batch.push(next),
                    _ => break,
                }
            }
            let mut events = Vec::new();
            let mut replies = Vec::with_capacity(batch.len());
            for request in batch {
                match decode::<UserEvents>(&request.payload) {
                    Ok(asked) => {
                        events.extend(asked.events);
                        replies.extend(request.reply);
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable append request dropped"),
                }
            }
            let outcome = self.append(events).await;
            for reply in replies {
                if let Err(e) = self.bus.publish(&reply, encode(&outcome)).await {
                    tracing::warn!(error = %e, "cannot answer an append request");
                }
            }
        }
    }

    /// Numbers `events` in order, writes the new ones in one store write,
    /// then publishes every one live.
    pub(crate) async fn append(&self, events: Vec<UserEvent>) -> AppendOutcome {
        let events: Vec<(TenantId, UserId, Event)> = events
            .into_iter()
            .filter_map(|event| {
                parse(event)
                    .inspect_err(|e| tracing::error!(error = %e, "malformed user event dropped"))
                    .ok()
            })
            .collect();
        let (numbered, logs) = match self.number(events).await {
            Ok(numbered) => numbered,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read update logs");
                return failed(&store_status(e));
            }
        };
        if !trusted(&self.lease.borrow()) {
            tracing::warn!("lease about to lapse; refusing the append");
            return failed(&status::unavailable(
                reason::SERVICE_UNAVAILABLE,
                "the partition is changing hands; retry",
            ));
        }
        let writes: Vec<(TenantId, UserId, Update)> = numbered
            .iter()
            .filter(|n| n.new)
            .map(|n| (n.tenant.clone(), n.user.clone(), n.update.clone()))
            .collect();
        if !writes.is_empty() {
            match self
                .store
                .write_updates(&writes, self.versions.next())
                .await
            {
                Ok(()) => {}
                // What landed is read back next time; nothing is cached.
                Err(e @ StoreError::Unavailable(_)) => {
                    tracing::warn!(error = %e, "cannot write update logs");
                    return failed(&store_status(e));
                }
                Err(e) => {
                    // Asking again cannot help (an event the store
                    // refuses), and would hold up every user on the
                    // partition.
                    tracing::error!(error = %e, "user events dropped");
                    return AppendOutcome::default();
                }
            }
        }
        let heads: Vec<(UserKey, Cursor)> = logs
            .iter()
            .map(|(key, log)| (key.clone(), log.head))
            .collect();
        self.cache().put_all(logs);
        let frames = numbered
            .iter()
            .map(|n| {
                let frame = v1::ServerFrame {
                    frame: Some(v1::server_frame::Frame::Update(n.update.clone().into())),
                };
                (
                    (n.tenant.clone(), n.user.clone()),
                    Bytes::from(frame.encode_to_vec()),
                )
            })
            .collect();
        self.directory.publish(self.bus.as_ref(), frames).await;
        for ((tenant, user), head) in heads {
            self.trim(&tenant, &user, head).await;
        }
        AppendOutcome {
            failure: None,
            written: u32::try_from(writes.len()).unwrap_or(u32::MAX),
        }
    }

    /// Gives each event its cursor: the one it has if it is in its user's
    /// log (or earlier in this delivery), else the next. Returns the events
    /// and the users' logs as they will be once the new ones are written.
    async fn number(
        &self,
        events: Vec<(TenantId, UserId, Event)>,
    ) -> Result<(Vec<Numbered>, HashMap<UserKey, UserLog>), StoreError> {
        // Only what this holder wrote is cached: a log it has not written
        // since taking the partition, or whose write failed, is read from
        // the store, many at once, since a batch may name hundreds of
        // users this holder has not seen (the members of a new room).
        let mut logs: HashMap<UserKey, UserLog> = HashMap::new();
        let mut uncached: HashSet<UserKey> = HashSet::new();
        {
            let mut cache = self.cache();
            for (tenant, user, _) in &events {
                let key = (tenant.clone(), user.clone());
                if !logs.contains_key(&key) && !uncached.contains(&key) {
                    match cache.take(&key) {
                        Some(log) => {
                            logs.insert(key, log);
                        }
                        None => {
                            uncached.insert(key);
                        }
                    }
                }
            }
        }
        let mut newest: HashMap<UserKey, Vec<Update>> = HashMap::new();
        let mut loads = futures::stream::iter(uncached)
            .map(|key| async move {
                let (log, updates) = self.load(&key.0, &key.1).await?;
                Ok::<_, StoreError>((key, log, updates))
            })
            .buffer_unordered(LOADS_IN_FLIGHT);
        while let Some((key, log, updates)) = loads.try_next().await? {
            logs.insert(key.clone(), log);
            newest.insert(key, updates);
        }
        drop(loads);
        let mut pending: HashMap<(UserKey, String), Cursor> = HashMap::new();
        let mut numbered = Vec::with_capacity(events.len());
        for (tenant, user, event) in events {
            let key = (tenant.clone(), user.clone());
            let event_key = event.key();
            let fingerprint = fingerprint(&event_key);
            let log = match logs.entry(key.clone()) {
                Entry::Occupied(log) => log.into_mut(),
                Entry::Vacant(slot) => slot.insert(self.load(&tenant, &user).await?.0),
            };
            let earlier = match pending.get(&(key.clone(), event_key.clone())) {
                Some(&cursor) => Some(cursor),
                None if log.may_hold(fingerprint) => {
                    let stored = match newest.get(&key) {
                        Some(stored) => stored.clone(),
                        None => self.load(&tenant, &user).await?.1,
                    };
                    stored
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

    fn cache(&self) -> MutexGuard<'_, LogCache> {
        // Never held across an await; a panic inside cannot leave it torn.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The answer to requests whose events are not known to be written.
fn failed(why: &tonic::Status) -> AppendOutcome {
    AppendOutcome {
        failure: Some(to_failure(why)),
        written: 0,
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
