//! When each message of a `pairs` run is due: a plain schedule, computed
//! up front, with no clock of its own.
//!
//! The load is open-loop: message k of the run is due at `k / rate`
//! seconds after the start whatever happened to the messages before it,
//! and its latency is measured from that due time. A sender held up by a
//! slow server therefore sends late and the lateness counts against the
//! server, instead of silently lowering the offered rate (coordinated
//! omission). Arrivals are evenly spaced; Poisson arrivals would replace
//! [`Plan::due`] and nothing else.

use std::time::Duration;

/// The most messages one run may plan, so the per-message bookkeeping
/// (a few bits each) stays bounded.
pub(crate) const MAX_MESSAGES: u64 = 100_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Plan {
    rate: f64,
    pairs: u64,
    warmup: Duration,
    duration: Duration,
    total: u64,
}

impl Plan {
    pub(crate) fn new(
        rate: f64,
        pairs: u32,
        warmup: Duration,
        duration: Duration,
    ) -> Result<Plan, String> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!("--rate must be above 0, not {rate}"));
        }
        if duration.is_zero() {
            return Err("--duration must be above 0".into());
        }
        let span = (warmup + duration).as_secs_f64();
        let total = (span * rate).ceil();
        if total > MAX_MESSAGES as f64 {
            return Err(format!(
                "--rate × (--warmup + --duration) plans {total} messages; at most {MAX_MESSAGES} fit"
            ));
        }
        Ok(Plan {
            rate,
            pairs: u64::from(pairs),
            warmup,
            duration,
            // In range by the check above.
            total: total as u64,
        })
    }

    pub(crate) fn rate(&self) -> f64 {
        self.rate
    }

    /// Messages planned over the whole run, warmup included.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// How many messages pair `pair` sends.
    pub(crate) fn count(&self, pair: u64) -> u64 {
        if pair >= self.total {
            0
        } else {
            (self.total - pair).div_ceil(self.pairs)
        }
    }

    /// When the `n`th message of `pair` is due, from the start of the run.
    pub(crate) fn due(&self, pair: u64, n: u64) -> Duration {
        let k = n * self.pairs + pair;
        Duration::from_secs_f64(k as f64 / self.rate)
    }

    /// Whether a message due at `due` is in the measured window.
    pub(crate) fn measured(&self, due: Duration) -> bool {
        due >= self.warmup && due < self.warmup + self.duration
    }

    /// Where the measured window starts, from the start of the run.
    pub(crate) fn window_start(&self) -> Duration {
        self.warmup
    }

    /// Where the measured window (and the sending) ends.
    pub(crate) fn end(&self) -> Duration {
        self.warmup + self.duration
    }

    pub(crate) fn duration(&self) -> Duration {
        self.duration
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rate: f64, pairs: u32, warmup: u64, duration: u64) -> Plan {
        Plan::new(
            rate,
            pairs,
            Duration::from_secs(warmup),
            Duration::from_secs(duration),
        )
        .unwrap()
    }

    #[test]
    fn messages_are_spread_evenly_over_pairs_and_time() {
        let plan = plan(100.0, 3, 1, 2);
        assert_eq!(plan.total(), 300);
        let counts: Vec<u64> = (0..3).map(|p| plan.count(p)).collect();
        assert_eq!(counts, [100, 100, 100]);
        // Message k of the run is due at k / rate.
        assert_eq!(plan.due(0, 0), Duration::ZERO);
        assert_eq!(plan.due(1, 0), Duration::from_millis(10));
        assert_eq!(plan.due(0, 1), Duration::from_millis(30));
        // The last message is due before the end.
        assert!(plan.due(2, 99) < plan.end());
    }

    #[test]
    fn counts_add_up_when_pairs_do_not_divide_the_total() {
        let plan = plan(10.0, 4, 0, 1);
        assert_eq!(plan.total(), 10);
        let counts: Vec<u64> = (0..4).map(|p| plan.count(p)).collect();
        assert_eq!(counts, [3, 3, 2, 2]);
        // More pairs than messages: the extra pairs send nothing.
        let sparse = self::plan(2.0, 5, 0, 1);
        assert_eq!((0..5).map(|p| sparse.count(p)).sum::<u64>(), 2);
        assert_eq!(sparse.count(4), 0);
    }

    #[test]
    fn every_planned_message_is_due_once_before_the_end() {
        let plan = plan(37.0, 7, 1, 3);
        let mut dues: Vec<Duration> = (0..7)
            .flat_map(|p| (0..plan.count(p)).map(move |n| plan.due(p, n)))
            .collect();
        assert_eq!(dues.len() as u64, plan.total());
        dues.sort();
        dues.dedup();
        assert_eq!(dues.len() as u64, plan.total());
        assert!(dues.iter().all(|d| *d < plan.end()));
    }

    #[test]
    fn the_warmup_is_not_measured() {
        let plan = plan(10.0, 1, 2, 3);
        assert!(!plan.measured(Duration::from_millis(1999)));
        assert!(plan.measured(Duration::from_secs(2)));
        assert!(plan.measured(Duration::from_millis(4999)));
        assert!(!plan.measured(Duration::from_secs(5)));
    }

    #[test]
    fn bad_plans_are_refused() {
        let s = Duration::from_secs(1);
        assert!(Plan::new(0.0, 1, s, s).is_err());
        assert!(Plan::new(f64::NAN, 1, s, s).is_err());
        assert!(Plan::new(1.0, 1, s, Duration::ZERO).is_err());
        assert!(Plan::new(1e9, 1, s, Duration::from_secs(3600)).is_err());
    }
}
