//! The member lists fanout delivers to, cached per conversation.
//!
//! A plain data structure that is handed `now` and never waits; the
//! lookups that fill it are in [`crate::directory`]. What consistency the
//! cached lists give is described in the crate docs.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use natter_core::{ConversationId, MembershipChange, MembershipKind, TenantId, UserId};

/// A conversation, with the tenant it was asked for in: a list loaded for
/// one tenant is never used to answer another.
pub(crate) type Key = (TenantId, ConversationId);

/// The members of one conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Members {
    users: HashSet<UserId>,
}

impl Members {
    pub(crate) fn contains(&self, user: &UserId) -> bool {
        self.users.contains(user)
    }

    pub(crate) fn len(&self) -> usize {
        self.users.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &UserId> {
        self.users.iter()
    }

    fn apply(&mut self, change: &MembershipChange) {
        match change.kind {
            MembershipKind::Joined => {
                self.users.insert(change.user_id.clone());
            }
            MembershipKind::Left => {
                self.users.remove(&change.user_id);
            }
        }
    }
}

impl FromIterator<UserId> for Members {
    fn from_iter<I: IntoIterator<Item = UserId>>(iter: I) -> Self {
        Self {
            users: iter.into_iter().collect(),
        }
    }
}

/// How much the cache holds and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CacheLimits {
    /// A list older than this is loaded again.
    pub(crate) ttl: Duration,
    /// Conversations held at most.
    pub(crate) max_conversations: usize,
    /// Members held at most, over all conversations; bounds memory when
    /// many large rooms are active.
    pub(crate) max_users: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(5),
            max_conversations: 10_000,
            max_users: 1_000_000,
        }
    }
}

/// How many change counters guard loads against racing membership changes.
/// Conversations share them by hash; a shared counter only costs a
/// skipped insert, never a stale one.
const VERSION_SLOTS: usize = 256;

/// Cached member lists, bounded in conversations and members, least
/// recently used evicted first.
#[derive(Debug)]
pub(crate) struct MemberCache {
    limits: CacheLimits,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    entries: HashMap<Key, Entry>,
    /// Members over all entries.
    users: usize,
    /// Counts lookups; an entry's `used` is the count at its last use.
    clock: u64,
    /// Bumped by every membership change applied, per slot of conversations.
    versions: Vec<u64>,
    hasher: RandomState,
}

#[derive(Debug)]
struct Entry {
    members: Arc<Members>,
    loaded_at: Instant,
    used: u64,
}

/// Taken before a list is loaded; [`MemberCache::insert`] keeps the list
/// only if no membership change of the conversation was applied since, so
/// a slow load never overwrites a newer change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    slot: usize,
    version: u64,
}

impl MemberCache {
    pub(crate) fn new(limits: CacheLimits) -> Self {
        Self {
            limits,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                users: 0,
                clock: 0,
                versions: vec![0; VERSION_SLOTS],
                hasher: RandomState::new(),
            }),
        }
    }

    /// Never held across an await, and no critical section can panic
    /// halfway short of a bug, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached list, if it is younger than the ttl.
    pub(crate) fn get(&self, key: &Key, now: Instant) -> Option<Arc<Members>> {
        let mut inner = self.lock();
        inner.clock += 1;
        let clock = inner.clock;
        let entry = inner.entries.get_mut(key)?;
        if self.expired(entry, now) {
            inner.remove(key);
            return None;
        }
        entry.used = clock;
        Some(entry.members.clone())
    }

    pub(crate) fn ticket(&self, key: &Key) -> Ticket {
        let inner = self.lock();
        let slot = inner.slot(key);
        Ticket {
            slot,
            version: inner.versions[slot],
        }
    }

    /// Caches a freshly loaded list unless a change overtook the load or the
    /// list alone exceeds the cache, and returns it either way.
    pub(crate) fn insert(
        &self,
        key: Key,
        members: Members,
        ticket: Ticket,
        now: Instant,
    ) -> Arc<Members> {
        let members = Arc::new(members);
        let size = members.len();
        let mut inner = self.lock();
        if inner.versions[ticket.slot] != ticket.version || size > self.limits.max_users {
            return members;
        }
        inner.remove(&key);
        if inner.entries.len() >= self.limits.max_conversations
            || inner.users + size > self.limits.max_users
        {
            self.evict(&mut inner, size, now);
        }
        inner.clock += 1;
        let used = inner.clock;
        inner.users += size;
        inner.entries.insert(
            key,
            Entry {
                members: members.clone(),
                loaded_at: now,
                used,
            },
        );
        members
    }

    /// Applies a membership change in place. Changes arrive in stream order,
    /// so a cached list stays in step with the events fanout handles.
    pub(crate) fn apply(&self, tenant: &TenantId, change: &MembershipChange, now: Instant) {
        let key = (tenant.clone(), change.conversation_id);
        let mut inner = self.lock();
        let slot = inner.slot(&key);
        inner.versions[slot] = inner.versions[slot].wrapping_add(1);
        let Some(entry) = inner.entries.get_mut(&key) else {
            return;
        };
        if self.expired(entry, now) {
            inner.remove(&key);
            return;
        }
        let before = entry.members.len();
        // Copies the list only while a fan-out still holds the old one.
        Arc::make_mut(&mut entry.members).apply(change);
        let after = entry.members.len();
        inner.users = inner.users + after - before;
    }

    /// Conversations cached, expired ones included until they are noticed.
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    fn expired(&self, entry: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(entry.loaded_at) >= self.limits.ttl
    }

    /// Makes room for one more list of `size` members: expired lists go
    /// first, then the least recently used.
    fn evict(&self, inner: &mut Inner, size: usize, now: Instant) {
        let ttl = self.limits.ttl;
        inner
            .entries
            .retain(|_, entry| now.saturating_duration_since(entry.loaded_at) < ttl);
        inner.users = inner.entries.values().map(|e| e.members.len()).sum();
        let fits = |inner: &Inner| {
            inner.entries.len() < self.limits.max_conversations
                && inner.users + size <= self.limits.max_users
        };
        if fits(inner) {
            return;
        }
        let mut by_use: Vec<(u64, Key)> = inner
            .entries
            .iter()
            .map(|(key, entry)| (entry.used, key.clone()))
            .collect();
        by_use.sort_unstable_by_key(|(used, _)| *used);
        for (_, key) in by_use {
            if fits(inner) {
                break;
            }
            inner.remove(&key);
        }
    }
}

impl Inner {
    fn slot(&self, key: &Key) -> usize {
        // The remainder is below VERSION_SLOTS, so it fits.
        (self.hasher.hash_one(key) % VERSION_SLOTS as u64) as usize
    }

    fn remove(&mut self, key: &Key) {
        if let Some(entry) = self.entries.remove(key) {
            self.users -= entry.members.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use natter_core::{Role, Timestamp};

    use super::*;

    fn user(name: &str) -> UserId {
        UserId::new(name).unwrap()
    }

    fn key() -> Key {
        (TenantId::new("acme").unwrap(), ConversationId::generate())
    }

    fn members(names: &[&str]) -> Members {
        names.iter().map(|n| user(n)).collect()
    }

    fn change(key: &Key, name: &str, kind: MembershipKind) -> MembershipChange {
        MembershipChange {
            conversation_id: key.1,
            user_id: user(name),
            role: Role::Customer,
            kind,
            at: Timestamp::from_millis(1),
        }
    }

    fn cache(max_conversations: usize, max_users: usize) -> MemberCache {
        MemberCache::new(CacheLimits {
            ttl: Duration::from_secs(5),
            max_conversations,
            max_users,
        })
    }

    #[test]
    fn lists_expire_after_the_ttl() {
        let cache = cache(10, 100);
        let now = Instant::now();
        let k = key();
        cache.insert(k.clone(), members(&["a"]), cache.ticket(&k), now);
        assert!(cache.get(&k, now + Duration::from_secs(4)).is_some());
        assert!(cache.get(&k, now + Duration::from_secs(5)).is_none());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn changes_are_applied_in_place() {
        let cache = cache(10, 100);
        let now = Instant::now();
        let k = key();
        cache.insert(k.clone(), members(&["a", "b"]), cache.ticket(&k), now);
        let held = cache.get(&k, now).unwrap();
        cache.apply(&k.0, &change(&k, "c", MembershipKind::Joined), now);
        cache.apply(&k.0, &change(&k, "a", MembershipKind::Left), now);
        assert_eq!(*cache.get(&k, now).unwrap(), members(&["b", "c"]));
        // A fan-out that took the list before keeps what it took.
        assert_eq!(*held, members(&["a", "b"]));
    }

    #[test]
    fn a_load_overtaken_by_a_change_is_not_cached() {
        let cache = cache(10, 100);
        let now = Instant::now();
        let k = key();
        let ticket = cache.ticket(&k);
        cache.apply(&k.0, &change(&k, "a", MembershipKind::Left), now);
        let loaded = cache.insert(k.clone(), members(&["a"]), ticket, now);
        assert_eq!(*loaded, members(&["a"]));
        assert!(cache.get(&k, now).is_none());
        // Loaded after the change, it is.
        cache.insert(k.clone(), members(&[]), cache.ticket(&k), now);
        assert!(cache.get(&k, now).is_some());
    }

    #[test]
    fn tenants_do_not_share_lists() {
        let cache = cache(10, 100);
        let now = Instant::now();
        let k = key();
        cache.insert(k.clone(), members(&["a"]), cache.ticket(&k), now);
        let other = (TenantId::new("evil").unwrap(), k.1);
        assert!(cache.get(&other, now).is_none());
    }

    #[test]
    fn the_least_recently_used_list_is_evicted_first() {
        let cache = cache(2, 100);
        let now = Instant::now();
        let (a, b, c) = (key(), key(), key());
        cache.insert(a.clone(), members(&["x"]), cache.ticket(&a), now);
        cache.insert(b.clone(), members(&["x"]), cache.ticket(&b), now);
        cache.get(&a, now);
        cache.insert(c.clone(), members(&["x"]), cache.ticket(&c), now);
        assert!(cache.get(&a, now).is_some());
        assert!(cache.get(&b, now).is_none());
        assert!(cache.get(&c, now).is_some());
    }

    #[test]
    fn members_are_bounded_over_all_lists() {
        let cache = cache(10, 5);
        let now = Instant::now();
        let (a, b, huge) = (key(), key(), key());
        cache.insert(a.clone(), members(&["1", "2", "3"]), cache.ticket(&a), now);
        cache.insert(b.clone(), members(&["1", "2"]), cache.ticket(&b), now);
        let list = cache.insert(
            huge.clone(),
            members(&["1", "2", "3", "4", "5", "6"]),
            cache.ticket(&huge),
            now,
        );
        assert_eq!(list.len(), 6);
        assert!(cache.get(&huge, now).is_none(), "larger than the cache");
        cache.insert(b.clone(), members(&["1", "2", "3"]), cache.ticket(&b), now);
        assert!(cache.get(&a, now).is_none(), "evicted to make room");
        assert_eq!(cache.get(&b, now).unwrap().len(), 3);
    }
}
