//! One time base for a run. Due times and delivery times are both read
//! from the monotonic clock and expressed as nanoseconds since the UNIX
//! epoch, anchored once at the start, so a wall-clock step during the run
//! cannot skew a latency, and a payload's due time still means something
//! to a receiver in another process with a synchronised clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    start: Instant,
    start_unix_ns: u64,
}

impl Clock {
    /// A clock whose run starts `lead` from now, so everything spawned
    /// before then is ready when the first message is due.
    pub(crate) fn starting_in(lead: Duration) -> Clock {
        let now = Instant::now();
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let start_unix_ns = u64::try_from(unix)
            .unwrap_or(u64::MAX)
            .saturating_add(duration_ns(lead));
        Clock {
            start: now + lead,
            start_unix_ns,
        }
    }

    /// The instant `offset` after the start.
    pub(crate) fn at(&self, offset: Duration) -> Instant {
        self.start + offset
    }

    /// `offset` after the start, in nanoseconds since the UNIX epoch.
    pub(crate) fn unix_ns(&self, offset: Duration) -> u64 {
        self.start_unix_ns.saturating_add(duration_ns(offset))
    }

    /// Time since the start; zero before it.
    pub(crate) fn elapsed(&self) -> Duration {
        Instant::now().saturating_duration_since(self.start)
    }

    /// The offset from the start of a time in nanoseconds since the UNIX
    /// epoch; zero for times before the start.
    pub(crate) fn offset_of(&self, unix_ns: u64) -> Duration {
        Duration::from_nanos(unix_ns.saturating_sub(self.start_unix_ns))
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_epoch_times_agree() {
        let clock = Clock::starting_in(Duration::from_millis(5));
        let due = clock.unix_ns(Duration::from_millis(250));
        assert_eq!(clock.offset_of(due), Duration::from_millis(250));
        assert_eq!(clock.offset_of(0), Duration::ZERO);
        assert_eq!(clock.elapsed(), Duration::ZERO, "the run has not started");
    }
}
