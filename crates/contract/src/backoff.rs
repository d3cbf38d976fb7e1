//! The one retry policy of the services: exponential backoff, capped, with
//! jitter so that many retrying processes do not move in lockstep.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Delays that double from `first` up to `max`, each stretched by a random
/// fraction of up to half of itself.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    /// The delay before attempt number `attempt` (1 for the first retry),
    /// for callers that count attempts rather than keep a `Backoff`, such
    /// as consumers that see a delivery count.
    pub fn nth(first: Duration, max: Duration, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        jittered(first.saturating_mul(1 << doublings).min(max))
    }

    /// The next delay; each call doubles the one after it.
    pub fn next_delay(&mut self) -> Duration {
        let delay = jittered(self.next);
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps the next delay, or less if `shutdown` comes first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) {
        let delay = self.next_delay();
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// `delay` plus a random part of up to half of it.
fn jittered(delay: Duration) -> Duration {
    // A fresh RandomState has fresh random keys: a random number without a
    // dependency for it.
    let random = RandomState::new().hash_one(0u8);
    let spread = delay.as_micros() as u64 / 2 + 1;
    delay + Duration::from_micros(random % spread)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_to_the_cap_with_at_most_half_again_of_jitter() {
        let mut backoff = Backoff::new(10 * MS, 100 * MS);
        for base in [10, 20, 40, 80, 100, 100] {
            let delay = backoff.next_delay();
            assert!(
                delay >= base * MS && delay <= base * MS * 3 / 2 + MS,
                "{delay:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() < 16 * MS);
        for (attempt, base) in [(0, 10), (1, 10), (2, 20), (5, 100), (u32::MAX, 100)] {
            let delay = Backoff::nth(10 * MS, 100 * MS, attempt);
            assert!(
                delay >= base * MS && delay <= base * MS * 3 / 2 + MS,
                "{delay:?}"
            );
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let delays: std::collections::HashSet<Duration> =
            (0..20).map(|_| jittered(100 * MS)).collect();
        assert!(delays.len() > 10, "{delays:?}");
    }
}
