//! Counters since start, for `FanoutService.GetStats` and, as they are
//! (instance-wide and free of ids), for Prometheus as `natter_fanout_*`.

use std::sync::atomic::{AtomicU64, Ordering};

use natter_core::Timestamp;
use natter_proto::convert::timestamp_to_wire;
use natter_proto::v1::GetStatsResponse;

#[derive(Debug)]
pub(crate) struct Stats {
    started_at: Timestamp,
    /// Deliveries of durable events handled, redeliveries included.
    pub(crate) events_received: Count,
    /// User events sync appended as new (not already in their logs).
    pub(crate) updates_written: Count,
    /// Events being handled right now.
    events_pending: AtomicU64,
    pending_gauge: metrics::Gauge,
    /// Ephemeral signals relayed to the other members.
    pub(crate) ephemeral_published: Count,
    /// Ephemeral signals not relayed: stale, from a non-member, malformed,
    /// or over the concurrency bound.
    pub(crate) ephemeral_dropped: Count,
}

/// A counter read by `GetStats` and exported as a metric.
#[derive(Debug)]
pub(crate) struct Count {
    value: AtomicU64,
    metric: metrics::Counter,
}

impl Count {
    fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            value: AtomicU64::new(0),
            metric: natter_telemetry::counter(name, help),
        }
    }

    pub(crate) fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
        self.metric.increment(n);
    }

    fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

impl Stats {
    pub(crate) fn new(started_at: Timestamp) -> Self {
        Self {
            started_at,
            events_received: Count::new(
                "natter_fanout_events_total",
                "Durable events handled, redeliveries included.",
            ),
            updates_written: Count::new(
                "natter_fanout_updates_written_total",
                "Events appended to members' update logs as new.",
            ),
            events_pending: AtomicU64::new(0),
            pending_gauge: natter_telemetry::gauge(
                "natter_fanout_events_pending",
                "Events being handled now.",
            ),
            ephemeral_published: Count::new(
                "natter_fanout_ephemeral_published_total",
                "Typing and presence signals relayed.",
            ),
            ephemeral_dropped: Count::new(
                "natter_fanout_ephemeral_dropped_total",
                "Typing and presence signals dropped: stale, from a non-member, or over the bound.",
            ),
        }
    }

    /// Counts an event in; it counts as pending until the guard drops.
    pub(crate) fn event_received(&self) -> PendingGuard<'_> {
        self.events_received.add(1);
        self.events_pending.fetch_add(1, Ordering::Relaxed);
        self.pending_gauge.increment(1);
        PendingGuard(self)
    }

    pub(crate) fn snapshot(&self) -> GetStatsResponse {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        GetStatsResponse {
            started_at: Some(timestamp_to_wire(self.started_at)),
            events_received: self.events_received.get(),
            updates_written: self.updates_written.get(),
            events_pending: load(&self.events_pending),
            ephemeral_published: self.ephemeral_published.get(),
            ephemeral_dropped: self.ephemeral_dropped.get(),
        }
    }
}

/// Keeps one event counted as pending while it is handled.
#[derive(Debug)]
pub(crate) struct PendingGuard<'a>(&'a Stats);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.events_pending.fetch_sub(1, Ordering::Relaxed);
        self.0.pending_gauge.decrement(1);
    }
}
