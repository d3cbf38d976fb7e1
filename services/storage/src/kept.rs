//! Announcements kept in the store, where the bus keeps no streams of its
//! own (the in-process bus of `natter dev`): there an EVENTS message lives
//! only in memory, and a crash between a write and fanout taking its
//! events would leave stored messages that never reach an update log.
//!
//! So each sequencer write keeps its announcement (the EVENTS message it
//! is about to publish) in the same store write as its messages, and other
//! changes keep theirs before publishing. The holder of the partition
//! forgets them once fanout's consumer and the desk's analytics consumer
//! have both acknowledged them
//! ([`forget_consumed`]), and a new holder first publishes again whatever
//! is still kept ([`announce_kept`]): fanout and sync recognise events they
//! have by their keys. On NATS, EVENTS itself is durable and nothing is
//! kept.
//!
//! The store forgets by version ranges, so the ledger of a partition hands
//! out the versions of everything it keeps, in order, and forgets up to
//! the oldest announcement that may not be consumed yet, never past it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use natter_bus::Outgoing;
use natter_contract::EVENTS;
use natter_core::{Event, TenantId};
use natter_proto::bus::v1::ConversationEvents;
use natter_server::clock::Versions;
use natter_store::{Announcement, Result};
use tokio_util::sync::CancellationToken;

use crate::storage::{Storage, dedup_id};

/// How often a holder asks how far fanout has come.
const FORGET_EVERY: Duration = Duration::from_secs(1);
/// Kept announcements read per page when a holder starts.
const PAGE: u32 = 256;

/// The ledgers of the partitions this process holds.
#[derive(Debug, Default)]
pub(crate) struct Kept {
    ledgers: Mutex<HashMap<u32, Ledger>>,
}

/// A partition's kept announcements, in version order.
#[derive(Debug, Default)]
struct Ledger {
    versions: Versions,
    entries: VecDeque<Entry>,
}

#[derive(Debug)]
struct Entry {
    version: u64,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Kept, or being kept, and not published yet.
    Pending,
    /// Published at this stream sequence.
    Published(u64),
    /// Nothing more to wait for: consumed, or its write or publish failed
    /// and its callers were told to retry.
    Done,
}

impl Kept {
    /// A version for something the partition is about to keep: the
    /// partition's next write version (`natter_server::clock::Versions`),
    /// so kept announcements and the writes they go with share one order.
    pub(crate) fn track(&self, partition: u32) -> u64 {
        let mut ledgers = self.lock();
        let ledger = ledgers.entry(partition).or_default();
        let version = ledger.versions.next();
        ledger.entries.push_back(Entry {
            version,
            state: State::Pending,
        });
        version
    }

    pub(crate) fn published(&self, partition: u32, version: u64, sequence: u64) {
        self.set(partition, version, State::Published(sequence));
    }

    /// The announcement of `version` will not be published: its callers
    /// were told to retry, which keeps and publishes it anew.
    pub(crate) fn abandoned(&self, partition: u32, version: u64) {
        self.set(partition, version, State::Done);
    }

    /// Marks what fanout has acknowledged (`floor`) and returns the version
    /// through which the store may forget, if it moved.
    fn consumed(&self, partition: u32, floor: u64) -> Option<u64> {
        let mut ledgers = self.lock();
        let ledger = ledgers.get_mut(&partition)?;
        let mut through = None;
        while let Some(first) = ledger.entries.front() {
            match first.state {
                State::Published(sequence) if sequence <= floor => {}
                State::Done => {}
                State::Pending | State::Published(_) => break,
            }
            through = ledger.entries.pop_front().map(|e| e.version);
        }
        through
    }

    /// Adds `kept` to the ledger of a partition taken over: what the
    /// predecessor left (its lease lapsed before, so its versions are
    /// below this holder's), and what this process kept meanwhile, whose
    /// changes need not wait for the partition, all about to be
    /// published again.
    fn start(&self, partition: u32, kept: &[Announcement]) {
        let mut ledgers = self.lock();
        let ledger = ledgers.entry(partition).or_default();
        for announcement in kept {
            let version = announcement.version;
            match ledger.entries.iter_mut().find(|e| e.version == version) {
                Some(entry) => entry.state = State::Pending,
                None => ledger.entries.push_back(Entry {
                    version,
                    state: State::Pending,
                }),
            }
        }
        ledger.entries.make_contiguous().sort_by_key(|e| e.version);
    }

    fn set(&self, partition: u32, version: u64, state: State) {
        let mut ledgers = self.lock();
        if let Some(entry) = ledgers
            .get_mut(&partition)
            .and_then(|l| l.entries.iter_mut().find(|e| e.version == version))
        {
            entry.state = state;
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u32, Ledger>> {
        // Never held across an await, and nothing inside can panic halfway.
        self.ledgers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Publishes again, in order, what the partition's previous holder kept,
/// where anything is kept: called before the partition takes sends, so a
/// conversation's events keep their order.
pub(crate) async fn announce_kept(storage: &Storage, partition: u32) -> Result<()> {
    let Some(kept) = &storage.kept else {
        return Ok(());
    };
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = storage.store.announcements(partition, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.version;
        let full = page.len() == PAGE as usize;
        all.extend(page);
        if !full {
            break;
        }
    }
    kept.start(partition, &all);
    if !all.is_empty() {
        tracing::info!(partition, kept = all.len(), "announcing what was kept");
    }
    let subject = EVENTS.subject_of(partition);
    for announcement in all {
        // Under the dedup id it was first published with, so what was
        // published already is dropped by the stream's duplicate window.
        let dedup_id = replay_dedup_id(&announcement.events);
        let message = Outgoing::new(announcement.events);
        let published = storage
            .bus
            .publish_durable(&subject, message, dedup_id.as_deref())
            .await;
        match published {
            Ok(persisted) => kept.published(partition, announcement.version, persisted.sequence),
            Err(e) => {
                tracing::warn!(partition, error = %e, "cannot announce a kept announcement");
                return Err(natter_store::StoreError::Unavailable(e.to_string()));
            }
        }
    }
    Ok(())
}

/// The dedup id of a kept EVENTS message: the one `Storage::by_partition`
/// gave it. `None` for one that does not decode (never written so), which
/// then relies on downstream recognising its events by their keys.
fn replay_dedup_id(payload: &[u8]) -> Option<String> {
    let message: ConversationEvents = natter_contract::decode(payload).ok()?;
    let events: Vec<(TenantId, Event)> = message
        .events
        .into_iter()
        .map(|e| {
            let tenant = TenantId::new(e.tenant_id).ok()?;
            let event = Event::try_from(e.event?).ok()?;
            Some((tenant, event))
        })
        .collect::<Option<_>>()?;
    dedup_id(&events)
}

/// Until `stop`: forgets what fanout has acknowledged on the partition,
/// where anything is kept.
pub(crate) async fn forget_consumed(
    storage: Arc<Storage>,
    partition: u32,
    stop: CancellationToken,
) {
    let Some(kept) = &storage.kept else {
        return;
    };
    let (bus, store) = (&storage.bus, &storage.store);
    // Fanout's, and the desk's analytics, whose figures would miss what
    // a crash took from the in-process stream before they consumed it.
    let consumers = [
        EVENTS.consumer(natter_contract::EVENTS_CONSUMER, partition),
        EVENTS.consumer(natter_contract::ANALYTICS_CONSUMER, partition),
    ];
    let mut every = tokio::time::interval(FORGET_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let mut floor = Some(u64::MAX);
        for consumer in &consumers {
            match bus.ack_floor(EVENTS.name, consumer).await {
                Ok(reached) => floor = floor.map(|f| f.min(reached)),
                Err(e) => {
                    tracing::warn!(partition, consumer, error = %e, "cannot read how far a consumer has come");
                    floor = None;
                }
            }
        }
        let Some(floor) = floor else { continue };
        if let Some(through) = kept.consumed(partition, floor)
            && let Err(e) = store.forget_announcements(partition, through).await
        {
            // The next round forgets through a later version, this one
            // included.
            tracing::warn!(partition, error = %e, "cannot forget consumed announcements");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_rise_and_forgetting_stops_at_the_oldest_unconsumed() {
        let kept = Kept::default();
        let (a, b, c) = (kept.track(1), kept.track(1), kept.track(1));
        assert!(a < b && b < c);
        kept.published(1, b, 10);
        kept.published(1, a, 11);
        kept.published(1, c, 12);
        // b is consumed but a, before it, is not: nothing may be forgotten.
        assert_eq!(kept.consumed(1, 10), None);
        assert_eq!(kept.consumed(1, 11), Some(b));
        assert_eq!(kept.consumed(1, 11), None);
        assert_eq!(kept.consumed(1, 12), Some(c));
    }

    #[test]
    fn an_abandoned_announcement_holds_nothing_up() {
        let kept = Kept::default();
        let (a, b) = (kept.track(2), kept.track(2));
        kept.abandoned(2, a);
        kept.published(2, b, 3);
        assert_eq!(kept.consumed(2, 3), Some(b));
        assert_eq!(kept.consumed(7, 3), None, "a partition never kept");
    }

    #[test]
    fn what_a_new_holder_found_is_forgotten_once_consumed() {
        let kept = Kept::default();
        let found = Announcement {
            partition: 4,
            version: 7,
            events: Vec::new(),
        };
        kept.start(4, std::slice::from_ref(&found));
        let own = kept.track(4);
        assert!(own > found.version);
        assert_eq!(kept.consumed(4, u64::MAX), None, "found, not yet published");
        kept.published(4, found.version, 1);
        assert_eq!(kept.consumed(4, 1), Some(found.version));
    }
}
