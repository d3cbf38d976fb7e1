//! Rate-limits one session's typing signals: at most one per conversation
//! per interval, except that a change (started ↔ stopped) always goes out
//! so the others never see a stale "typing". Sans-I/O: callers pass `now`.

use std::time::Duration;

use natter_core::ConversationId;
use tokio::time::Instant;

/// The conversations remembered; a session typing in more at once forgets
/// the one it typed in least recently.
const REMEMBERED: usize = 8;

#[derive(Debug)]
pub(crate) struct TypingLimiter {
    interval: Duration,
    /// Allocated on the first signal.
    last: Vec<(ConversationId, Instant, bool)>,
}

impl TypingLimiter {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Vec::new(),
        }
    }

    /// Whether to pass on a signal that typing in `conversation` is
    /// `active`.
    pub(crate) fn allow(
        &mut self,
        conversation: ConversationId,
        active: bool,
        now: Instant,
    ) -> bool {
        if let Some(entry) = self.last.iter_mut().find(|(c, ..)| *c == conversation) {
            let (_, at, was_active) = *entry;
            if was_active == active && now.saturating_duration_since(at) < self.interval {
                return false;
            }
            *entry = (conversation, now, active);
            return true;
        }
        if self.last.len() == REMEMBERED
            && let Some(oldest) = self
                .last
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, at, _))| *at)
                .map(|(i, _)| i)
        {
            self.last.swap_remove(oldest);
        }
        self.last.push((conversation, now, active));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation(n: u128) -> ConversationId {
        ConversationId::from_uuid(uuid::Uuid::from_u128(n)).unwrap()
    }

    #[test]
    fn repeats_within_the_interval_are_dropped_but_changes_pass() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut limiter = TypingLimiter::new(second);
        let a = conversation(1);
        assert!(limiter.allow(a, true, start));
        assert!(!limiter.allow(a, true, start + second / 2));
        assert!(
            limiter.allow(a, false, start + second / 2),
            "a stop always passes"
        );
        assert!(
            limiter.allow(a, true, start + second / 2),
            "so does a restart"
        );
        assert!(limiter.allow(a, true, start + second * 2));
        assert!(
            limiter.allow(conversation(2), true, start),
            "conversations are apart"
        );
    }

    #[test]
    fn memory_is_bounded() {
        let start = Instant::now();
        let mut limiter = TypingLimiter::new(Duration::from_secs(1));
        for n in 1..=100 {
            assert!(limiter.allow(
                conversation(n),
                true,
                start + Duration::from_millis(n as u64)
            ));
        }
        assert_eq!(limiter.last.len(), REMEMBERED);
    }
}
