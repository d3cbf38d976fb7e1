//! The wall clock, read at the services' edge: the domain never reads it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use natter_core::Timestamp;

/// The wall clock as the domain counts time.
pub fn now() -> Timestamp {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Timestamp::from_millis(millis)
}

/// Versions of one partition holder's writes: the clock in microseconds,
/// each above the last. A successor takes a partition only once its
/// predecessor's lease lapsed, so its versions are higher than any of the
/// predecessor's, and of two writes of one row the newer holder's stands
/// (`natter_store::ConversationStore::write_messages`).
#[derive(Debug, Default)]
pub struct Versions {
    last: AtomicU64,
}

impl Versions {
    pub fn next(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let previous = self
            .last
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or(0);
        now.max(previous + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_rise_even_within_one_microsecond() {
        let versions = Versions::default();
        let mut last = 0;
        for _ in 0..1_000 {
            let next = versions.next();
            assert!(next > last);
            last = next;
        }
    }
}
