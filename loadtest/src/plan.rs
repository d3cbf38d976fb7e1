//! When each message of a `traffic` run is due: a plain schedule, computed
//! up front, with no clock of its own.
//!
//! The load is open-loop: message k of the run is due at a fixed offset
//! from the start whatever happened to the messages before it, and its
//! latency is measured from that due time. A sender held up by a slow
//! server therefore sends late and the lateness counts against the server,
//! instead of silently lowering the offered rate (coordinated omission).
//!
//! The offered rate climbs linearly from 0 to `rate` over the ramp, then
//! stays there; arrivals are evenly spaced at every moment. A run is
//! `ramp`, then `warmup`, then the measured `duration`; only messages due
//! in the last are measured. Message k goes to conversation `k mod C` as
//! that conversation's message `k div C`.

use std::time::Duration;

/// The most messages one run may plan, so the per-message bookkeeping
/// (a few bits each) stays bounded.
pub(crate) const MAX_MESSAGES: u64 = 100_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Plan {
    rate: f64,
    conversations: u64,
    ramp: Duration,
    warmup: Duration,
    duration: Duration,
    total: u64,
}

impl Plan {
    pub(crate) fn new(
        rate: f64,
        conversations: u32,
        ramp: Duration,
        warmup: Duration,
        duration: Duration,
    ) -> Result<Plan, String> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!("--rate must be above 0, not {rate}"));
        }
        if duration.is_zero() {
            return Err("--duration must be above 0".into());
        }
        if conversations == 0 {
            return Err("a run needs at least one conversation".into());
        }
        let expected = rate * (ramp.as_secs_f64() / 2.0 + (warmup + duration).as_secs_f64());
        if expected.ceil() > MAX_MESSAGES as f64 {
            return Err(format!(
                "--rate over the run plans {} messages; at most {MAX_MESSAGES} fit",
                expected.ceil()
            ));
        }
        let mut plan = Plan {
            rate,
            conversations: u64::from(conversations),
            ramp,
            warmup,
            duration,
            // In range by the check above.
            total: expected.ceil() as u64 + 1,
        };
        // Exactly the messages due before the end, whatever the rounding.
        while plan.total > 0 && plan.offset(plan.total - 1) >= plan.end() {
            plan.total -= 1;
        }
        Ok(plan)
    }

    pub(crate) fn rate(&self) -> f64 {
        self.rate
    }

    /// Messages planned over the whole run, ramp and warmup included.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// How many messages conversation `c` gets.
    pub(crate) fn count(&self, c: u64) -> u64 {
        if c >= self.total {
            0
        } else {
            (self.total - c).div_ceil(self.conversations)
        }
    }

    /// When message `k` of the run is due, from the start of the run.
    pub(crate) fn offset(&self, k: u64) -> Duration {
        let ramp = self.ramp.as_secs_f64();
        let in_ramp = self.rate * ramp / 2.0;
        let k = k as f64;
        let seconds = if k < in_ramp {
            // k(t) = rate·t²/(2·ramp) during the ramp.
            (2.0 * ramp * k / self.rate).sqrt()
        } else {
            ramp + (k - in_ramp) / self.rate
        };
        Duration::from_secs_f64(seconds)
    }

    /// When the `n`th message of conversation `c` is due.
    pub(crate) fn due(&self, c: u64, n: u64) -> Duration {
        self.offset(n * self.conversations + c)
    }

    /// Whether a message due at `due` is in the measured window.
    pub(crate) fn measured(&self, due: Duration) -> bool {
        due >= self.window_start() && due < self.end()
    }

    /// Where the measured window starts, from the start of the run.
    pub(crate) fn window_start(&self) -> Duration {
        self.ramp + self.warmup
    }

    /// Where the measured window (and the sending) ends.
    pub(crate) fn end(&self) -> Duration {
        self.window_start() + self.duration
    }

    pub(crate) fn duration(&self) -> Duration {
        self.duration
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rate: f64, conversations: u32, warmup: u64, duration: u64) -> Plan {
        Plan::new(
            rate,
            conversations,
            Duration::ZERO,
            Duration::from_secs(warmup),
            Duration::from_secs(duration),
        )
        .unwrap()
    }

    #[test]
    fn messages_are_spread_evenly_over_conversations_and_time() {
        let plan = plan(100.0, 3, 1, 2);
        assert_eq!(plan.total(), 300);
        let counts: Vec<u64> = (0..3).map(|c| plan.count(c)).collect();
        assert_eq!(counts, [100, 100, 100]);
        // Message k of the run is due at k / rate.
        assert_eq!(plan.due(0, 0), Duration::ZERO);
        assert_eq!(plan.due(1, 0), Duration::from_millis(10));
        assert_eq!(plan.due(0, 1), Duration::from_millis(30));
        // The last message is due before the end.
        assert!(plan.due(2, 99) < plan.end());
    }

    #[test]
    fn counts_add_up_when_conversations_do_not_divide_the_total() {
        let plan = plan(10.0, 4, 0, 1);
        assert_eq!(plan.total(), 10);
        let counts: Vec<u64> = (0..4).map(|c| plan.count(c)).collect();
        assert_eq!(counts, [3, 3, 2, 2]);
        // More conversations than messages: the extra ones get nothing.
        let sparse = self::plan(2.0, 5, 0, 1);
        assert_eq!((0..5).map(|c| sparse.count(c)).sum::<u64>(), 2);
        assert_eq!(sparse.count(4), 0);
    }

    #[test]
    fn every_planned_message_is_due_once_before_the_end() {
        let plan = plan(37.0, 7, 1, 3);
        let mut dues: Vec<Duration> = (0..7)
            .flat_map(|c| (0..plan.count(c)).map(move |n| plan.due(c, n)))
            .collect();
        assert_eq!(dues.len() as u64, plan.total());
        dues.sort();
        dues.dedup();
        assert_eq!(dues.len() as u64, plan.total());
        assert!(dues.iter().all(|d| *d < plan.end()));
    }

    #[test]
    fn the_ramp_climbs_linearly_to_the_rate() {
        let s = Duration::from_secs;
        let plan = Plan::new(100.0, 1, s(10), s(0), s(10)).unwrap();
        // Half the rate on average over the ramp, then the full rate.
        assert_eq!(plan.total(), 500 + 1000);
        let in_first_half = (0..plan.total()).filter(|&k| plan.offset(k) < s(5)).count();
        // rate·t²/(2·ramp) = 100·25/20
        assert_eq!(in_first_half, 125);
        let in_ramp = (0..plan.total())
            .filter(|&k| plan.offset(k) < s(10))
            .count();
        assert_eq!(in_ramp, 500);
        // After the ramp, one message every 10 ms.
        assert_eq!(
            plan.offset(600) - plan.offset(599),
            Duration::from_millis(10)
        );
        assert!(plan.offset(plan.total() - 1) < plan.end());
        // Offsets never go backwards across the end of the ramp.
        assert!((1..plan.total()).all(|k| plan.offset(k) > plan.offset(k - 1)));
    }

    #[test]
    fn the_ramp_and_warmup_are_not_measured() {
        let s = Duration::from_secs;
        let plan = Plan::new(10.0, 1, s(1), s(2), s(3)).unwrap();
        assert_eq!(plan.window_start(), s(3));
        assert!(!plan.measured(Duration::from_millis(2999)));
        assert!(plan.measured(s(3)));
        assert!(plan.measured(Duration::from_millis(5999)));
        assert!(!plan.measured(s(6)));
    }

    #[test]
    fn bad_plans_are_refused() {
        let s = Duration::from_secs(1);
        let z = Duration::ZERO;
        assert!(Plan::new(0.0, 1, z, s, s).is_err());
        assert!(Plan::new(f64::NAN, 1, z, s, s).is_err());
        assert!(Plan::new(1.0, 1, z, s, Duration::ZERO).is_err());
        assert!(Plan::new(1.0, 0, z, s, s).is_err());
        assert!(Plan::new(1e9, 1, z, s, Duration::from_secs(3600)).is_err());
    }
}
