//! The USERS consumer: appends each user event to its user's log exactly
//! once, then publishes it live.
//!
//! The log is appended at head + 1 only (`SyncStore::append_update` refuses
//! any other position with `Conflict`), so the log stays gap-free whoever
//! appends. The consumer delivers at least once, and fanout may publish an
//! event twice outside the stream's dedup window, so before appending the
//! event is looked for, by its [`Event::key`], among the user's newest
//! entries.
//!
//! To skip a store read per event, a bounded cache keeps, per recently seen
//! user, the head and fingerprints (hashed keys) of the newest entries. A
//! fingerprint only rules an event *out*: on a match, a cache miss, a
//! redelivery or a conflict, the newest entries are read from the store and
//! their keys compared, so a hash collision costs a read, never an event.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use natter_bus::Bus;
use natter_contract::{Handled, encode, subjects};
use natter_core::{Cursor, Event, Invalid, TenantId, Update, UserId};
use natter_proto::bus::v1::UserEvent;
use natter_proto::convert::{parse_id, required};
use natter_proto::v1;
use natter_store::{StoreError, SyncStore, UpdateBatch};

/// How many of a user's newest entries a repeated event is looked for in.
const RECENT: u64 = 64;
/// Users whose log head the cache keeps.
const CACHED_USERS: usize = 4096;
/// The log is trimmed each time its head reaches a multiple of this.
const TRIM_EVERY: u64 = 1024;
/// Lost races in a row before the event is handed back for a later retry.
const MAX_CONFLICTS: usize = 8;
/// The first and the longest delay before a failed event is retried.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

type UserKey = (TenantId, UserId);

/// Appends user events to their logs and publishes them live.
pub(crate) struct Appender {
    store: Arc<dyn SyncStore>,
    bus: Arc<dyn Bus>,
    /// Updates kept per user (`sync.retained_updates`).
    retained: u64,
    /// How many newest entries are compared: never more than are retained,
    /// so the window is never trimmed away.
    window: u64,
    cache: Mutex<LogCache>,
}

impl Appender {
    pub(crate) fn new(store: Arc<dyn SyncStore>, bus: Arc<dyn Bus>, retained: u64) -> Self {
        let retained = retained.max(1);
        Self {
            store,
            bus,
            retained,
            window: RECENT.min(retained),
            cache: Mutex::new(LogCache::new(CACHED_USERS)),
        }
    }

    /// Handles one delivery of the USERS stream.
    pub(crate) async fn handle(&self, event: UserEvent, delivered: u32) -> Handled {
        let (tenant, user, event) = match parse(event) {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::error!(error = %e, "malformed user event dropped");
                return Handled::Done;
            }
        };
        match self.append(&tenant, &user, &event, delivered).await {
            Ok(cursor) => {
                self.publish_live(&tenant, &user, cursor, event).await;
                Handled::Done
            }
            Err(e @ (StoreError::Unavailable(_) | StoreError::Conflict(_))) => {
                let delay = retry_delay(delivered);
                tracing::warn!(
                    %tenant, %user, delivered, error = %e, retry_ms = delay.as_millis() as u64,
                    "cannot append to the update log; retrying"
                );
                Handled::Retry(delay)
            }
            Err(e) => {
                // Retrying cannot help (a corrupt log, an event the store
                // refuses), and would hold up every user on the partition.
                tracing::error!(%tenant, %user, error = %e, "user event dropped");
                Handled::Done
            }
        }
    }

    /// Appends `event` to the log of `user` unless it is among the newest
    /// entries already; either way returns its cursor.
    #[tracing::instrument(skip_all, fields(%tenant, %user, delivered))]
    async fn append(
        &self,
        tenant: &TenantId,
        user: &UserId,
        event: &Event,
        delivered: u32,
    ) -> Result<Cursor, StoreError> {
        let event_key = event.key();
        let fingerprint = fingerprint(&event_key);
        let key = (tenant.clone(), user.clone());
        // A redelivery may follow a crash between appending and acking, in
        // this process or another: trust the store, not the cache.
        let mut cached = self.cache().take(&key).filter(|_| delivered <= 1);
        for _ in 0..MAX_CONFLICTS {
            let mut log = match cached.take() {
                Some(log) if !log.may_hold(fingerprint) => log,
                _ => {
                    let (log, newest) = self.load(tenant, user).await?;
                    let logged = newest.iter().find(|u| u.event.key() == event_key);
                    if let Some(logged) = logged {
                        let cursor = logged.cursor;
                        tracing::debug!(%cursor, "event is in the log already");
                        self.cache().put(key, log);
                        return Ok(cursor);
                    }
                    log
                }
            };
            let at = log.head.next();
            match self.store.append_update(tenant, user, at, event).await {
                Ok(()) => {
                    log.push(at, fingerprint, self.window);
                    self.cache().put(key, log);
                    self.trim(tenant, user, at).await;
                    return Ok(at);
                }
                // Another writer moved the log (a partition that changed
                // hands, a stale cache): reload, and look again.
                Err(StoreError::Conflict(reason)) => {
                    tracing::debug!(%at, %reason, "update log moved; reloading");
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict(format!(
            "lost {MAX_CONFLICTS} races in a row to append to the update log of {user}"
        )))
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
    async fn publish_live(&self, tenant: &TenantId, user: &UserId, cursor: Cursor, event: Event) {
        let frame = v1::ServerFrame {
            frame: Some(v1::server_frame::Frame::Update(
                Update { cursor, event }.into(),
            )),
        };
        if let Err(e) = self
            .bus
            .publish(&subjects::live(tenant, user), encode(&frame))
            .await
        {
            tracing::warn!(%tenant, %user, %cursor, error = %e, "cannot publish a live update");
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

/// Exponential in the number of deliveries, capped.
fn retry_delay(delivered: u32) -> Duration {
    let doublings = delivered.saturating_sub(1).min(10);
    (RETRY_FIRST * 2u32.pow(doublings)).min(RETRY_MAX)
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

    #[test]
    fn retries_back_off_up_to_a_cap() {
        assert_eq!(retry_delay(1), RETRY_FIRST);
        assert_eq!(retry_delay(2), RETRY_FIRST * 2);
        assert_eq!(retry_delay(40), RETRY_MAX);
    }
}
