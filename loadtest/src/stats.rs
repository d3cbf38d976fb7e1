//! What a run counts and how its figures are summarised: latency
//! histograms, per-message marks, and tallies of failure reasons. All of
//! it is bounded: histograms have a fixed range, marks a fixed length and
//! tallies a fixed number of distinct reasons.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The largest latency a histogram tells apart; longer ones are recorded
/// as this.
const MAX_MICROS: u64 = 10 * 60 * 1_000_000;

/// Distinct reasons a tally keeps; more are counted under [`OTHER`].
const MAX_REASONS: usize = 32;
const OTHER: &str = "other";

/// Latencies in microseconds, 3 significant digits, 1 µs to 10 minutes.
#[derive(Debug, Clone)]
pub(crate) struct Latencies(Histogram<u64>);

impl Latencies {
    pub(crate) fn new() -> Latencies {
        // Fixed, valid bounds: 1 ≤ low, 2 × low ≤ high, sigfig ≤ 5.
        match Histogram::new_with_bounds(1, MAX_MICROS, 3) {
            Ok(histogram) => Latencies(histogram),
            Err(e) => unreachable!("fixed histogram bounds are valid: {e}"),
        }
    }

    pub(crate) fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(MAX_MICROS);
        self.0.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    pub(crate) fn reset(&mut self) {
        self.0.reset();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.0.len()
    }

    pub(crate) fn summary(&self) -> Summary {
        let ms = |micros: u64| micros as f64 / 1000.0;
        let empty = self.0.is_empty();
        let at = |q: f64| {
            if empty {
                0.0
            } else {
                ms(self.0.value_at_quantile(q))
            }
        };
        Summary {
            count: self.0.len(),
            mean_ms: if empty { 0.0 } else { self.0.mean() / 1000.0 },
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: if empty { 0.0 } else { ms(self.0.max()) },
        }
    }
}

/// A latency distribution in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Summary {
    pub(crate) count: u64,
    pub(crate) mean_ms: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

/// One bit per planned message: sent, acked, delivered, ...
#[derive(Debug, Clone)]
pub(crate) struct Marks {
    words: Vec<u64>,
    len: u64,
}

impl Marks {
    pub(crate) fn new(len: u64) -> Marks {
        Marks {
            words: vec![0; len.div_ceil(64) as usize],
            len,
        }
    }

    /// Marks `i`; true if it was not marked before. Out of range is
    /// ignored (false): a number no message of the plan has.
    pub(crate) fn set(&mut self, i: u64) -> bool {
        if i >= self.len {
            return false;
        }
        let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        let fresh = self.words[word] & bit == 0;
        self.words[word] |= bit;
        fresh
    }

    pub(crate) fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1u64 << (i % 64)) != 0
    }
}

/// Counts by reason, for failures ("NOT_A_MEMBER", "close 1013", ...).
#[derive(Debug, Default)]
pub(crate) struct Tally(Mutex<BTreeMap<String, u64>>);

impl Tally {
    pub(crate) fn add(&self, reason: &str) {
        let mut counts = lock(&self.0);
        let key = if counts.contains_key(reason) || counts.len() < MAX_REASONS {
            reason
        } else {
            OTHER
        };
        *counts.entry(key.to_owned()).or_default() += 1;
    }

    pub(crate) fn counts(&self) -> BTreeMap<String, u64> {
        lock(&self.0).clone()
    }
}

/// Locks a mutex whose data stays valid even if a holder panicked (plain
/// counters and histograms).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_count_each_number_once() {
        let mut marks = Marks::new(130);
        assert!(marks.set(0));
        assert!(marks.set(129));
        assert!(!marks.set(129));
        assert!(!marks.set(130), "out of range");
        assert!(marks.get(0) && marks.get(129));
        assert!(!marks.get(64) && !marks.get(500));
    }

    #[test]
    fn latencies_summarise_in_milliseconds() {
        let mut latencies = Latencies::new();
        for ms in 1..=100 {
            latencies.record(Duration::from_millis(ms));
        }
        let summary = latencies.summary();
        assert_eq!(summary.count, 100);
        assert!((summary.p50_ms - 50.0).abs() < 0.1, "{summary:?}");
        assert!((summary.p99_ms - 99.0).abs() < 0.1, "{summary:?}");
        assert!((summary.max_ms - 100.0).abs() < 0.1, "{summary:?}");
        // Out of range is saturated, not lost.
        latencies.record(Duration::from_secs(3600));
        assert_eq!(latencies.len(), 101);
        assert_eq!(Latencies::new().summary().p99_ms, 0.0);
    }

    #[test]
    fn tallies_are_bounded() {
        let tally = Tally::default();
        for i in 0..100 {
            tally.add(&format!("reason {i}"));
        }
        tally.add("reason 0");
        let counts = tally.counts();
        assert_eq!(counts.len(), MAX_REASONS + 1);
        assert_eq!(counts["reason 0"], 2);
        assert_eq!(counts[OTHER], 100 - MAX_REASONS as u64);
    }
}
