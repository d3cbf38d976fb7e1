//! Counters since start, for `FanoutService.GetStats`. Instance-wide and
//! free of ids, so they are safe to export as metrics as they are.

use std::sync::atomic::{AtomicU64, Ordering};

use natter_core::Timestamp;
use natter_proto::convert::timestamp_to_wire;
use natter_proto::v1::GetStatsResponse;

#[derive(Debug)]
pub(crate) struct Stats {
    started_at: Timestamp,
    /// Deliveries of durable events handled, redeliveries included.
    pub(crate) events_received: AtomicU64,
    /// User events sync appended as new (not already in their logs).
    pub(crate) updates_written: AtomicU64,
    /// Events being handled right now.
    events_pending: AtomicU64,
    /// Ephemeral signals relayed to the other members.
    pub(crate) ephemeral_published: AtomicU64,
    /// Ephemeral signals not relayed: stale, from a non-member, malformed,
    /// or over the concurrency bound.
    pub(crate) ephemeral_dropped: AtomicU64,
}

impl Stats {
    pub(crate) fn new(started_at: Timestamp) -> Self {
        Self {
            started_at,
            events_received: AtomicU64::new(0),
            updates_written: AtomicU64::new(0),
            events_pending: AtomicU64::new(0),
            ephemeral_published: AtomicU64::new(0),
            ephemeral_dropped: AtomicU64::new(0),
        }
    }

    /// Counts an event in; it counts as pending until the guard drops.
    pub(crate) fn event_received(&self) -> PendingGuard<'_> {
        self.events_received.fetch_add(1, Ordering::Relaxed);
        self.events_pending.fetch_add(1, Ordering::Relaxed);
        PendingGuard(&self.events_pending)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> GetStatsResponse {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        GetStatsResponse {
            started_at: Some(timestamp_to_wire(self.started_at)),
            events_received: load(&self.events_received),
            updates_written: load(&self.updates_written),
            events_pending: load(&self.events_pending),
            ephemeral_published: load(&self.ephemeral_published),
            ephemeral_dropped: load(&self.ephemeral_dropped),
        }
    }
}

/// Keeps one event counted as pending while it is handled.
#[derive(Debug)]
pub(crate) struct PendingGuard<'a>(&'a AtomicU64);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
