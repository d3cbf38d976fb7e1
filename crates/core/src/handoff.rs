//! The hand-off between catch-up and live delivery.
//!
//! A device connects with the cursor of the last update it saw. The gateway
//! registers for the user's live updates first, then pages through the
//! missed ones; live updates that arrive meanwhile, or that arrive out of
//! order later, are held until the gap before them is filled. The device
//! therefore sees every update after its cursor exactly once, in order.
//! A watched conversation meets its live messages the same way, by seq.
//!
//! Everything goes live only once it is readable (sync writes an update
//! before publishing it, fanout publishes a message after storage wrote
//! it), so what arrives live while the hold is full is left to the
//! fetches: the session holds a bounded number and never falls over
//! because writes outpace its catch-up.
//!
//! This is a plain state machine: the gateway feeds it what arrives and
//! carries out the [`Step`]s it returns.

use std::collections::BTreeMap;

use crate::ids::{Cursor, Seq};
use crate::model::{Message, Update};

/// A gap-free position: 1, 2, 3, … after a start.
pub trait Position: Copy + Ord + std::fmt::Debug {
    fn next(self) -> Self;
    fn previous(self) -> Self;
}

impl Position for Cursor {
    fn next(self) -> Self {
        Cursor::next(self)
    }
    fn previous(self) -> Self {
        Cursor::new(self.get().saturating_sub(1))
    }
}

impl Position for Seq {
    fn next(self) -> Self {
        Seq::next(self)
    }
    fn previous(self) -> Self {
        Seq::new(self.get().saturating_sub(1))
    }
}

/// What is delivered in order: an update at its cursor, a message at its
/// seq.
pub trait Sequenced {
    type Position: Position;
    fn position(&self) -> Self::Position;
}

impl Sequenced for Update {
    type Position = Cursor;
    fn position(&self) -> Cursor {
        self.cursor
    }
}

impl Sequenced for Message {
    type Position = Seq;
    fn position(&self) -> Seq {
        self.seq
    }
}

/// What the session must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<T: Sequenced = Update> {
    /// Send these to the device, in this order.
    Deliver(Vec<T>),
    /// Ask for what follows `after`.
    Fetch { after: T::Position },
}

#[derive(Debug)]
pub struct Handoff<T: Sequenced = Update> {
    /// The last position handed to the device.
    delivered: T::Position,
    /// Live items past a gap, by position.
    held: BTreeMap<T::Position, T>,
    /// A fetch is outstanding; do not ask again until it answers.
    fetching: bool,
    max_held: usize,
    /// The newest live item left out because the hold was full: fetching
    /// goes on until it is delivered.
    left_out: Option<T::Position>,
    /// Live items may have been missed (see [`Handoff::recheck`]): fetch
    /// once more, after any fetch under way.
    again: bool,
}

impl<T: Sequenced> Handoff<T> {
    /// Starts delivery to a device whose last seen item is at `from`. The
    /// first step is always a fetch of what it missed.
    pub fn start(from: T::Position, max_held: usize) -> (Self, Step<T>) {
        let handoff = Self {
            delivered: from,
            held: BTreeMap::new(),
            fetching: true,
            max_held,
            left_out: None,
            again: false,
        };
        (handoff, Step::Fetch { after: from })
    }

    /// The last position handed to the device.
    pub fn delivered(&self) -> T::Position {
        self.delivered
    }

    /// Whether the session is caught up and delivering live.
    pub fn is_live(&self) -> bool {
        !self.fetching && self.held.is_empty() && self.left_out.is_none() && !self.again
    }

    /// A live item arrived.
    pub fn on_live(&mut self, item: T) -> Vec<Step<T>> {
        let position = item.position();
        if position <= self.delivered {
            return Vec::new();
        }
        self.held.insert(position, item);
        if self.held.len() > self.max_held
            && let Some((newest, _)) = self.held.pop_last()
        {
            // A fetch brings it: it was readable before it went live.
            self.left_out = self.left_out.max(Some(newest));
        }
        self.advance()
    }

    /// The session could not pass on what it was handed from `first`
    /// through `through` (its device reads more slowly than they come):
    /// they are in the log, so a fetch brings them again.
    pub fn rewind(&mut self, first: T::Position, through: T::Position) -> Vec<Step<T>> {
        self.delivered = self.delivered.min(first.previous());
        self.left_out = self.left_out.max(Some(through));
        self.advance()
    }

    /// Live items may have been lost on the way (live delivery was routed
    /// anew, or could not be queued): fetch what follows the last item
    /// delivered. A fetch under way may have read before the lost items
    /// were readable, so one more follows it.
    pub fn recheck(&mut self) -> Vec<Step<T>> {
        self.again = true;
        self.advance()
    }

    /// A fetched page arrived: the items after the position the fetch
    /// named, in order. `complete` says the page reached the head.
    pub fn on_page(&mut self, items: Vec<T>, complete: bool) -> Vec<Step<T>> {
        self.fetching = false;
        for item in items {
            let position = item.position();
            if position > self.delivered {
                self.held.insert(position, item);
            }
        }
        let mut steps = self.advance();
        if !complete && !self.fetching {
            self.fetching = true;
            steps.push(Step::Fetch {
                after: self.delivered,
            });
        }
        steps
    }

    /// Delivers the contiguous run after `delivered`; asks for what is
    /// missing if a gap remains or something was left out.
    fn advance(&mut self) -> Vec<Step<T>> {
        let mut run = Vec::new();
        while let Some(item) = self.held.remove(&self.delivered.next()) {
            self.delivered = item.position();
            run.push(item);
        }
        if self
            .left_out
            .is_some_and(|left_out| left_out <= self.delivered)
        {
            self.left_out = None;
        }
        let mut steps = Vec::new();
        if !run.is_empty() {
            steps.push(Step::Deliver(run));
        }
        let behind = !self.held.is_empty() || self.left_out.is_some() || self.again;
        if behind && !self.fetching {
            self.fetching = true;
            self.again = false;
            steps.push(Step::Fetch {
                after: self.delivered,
            });
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ids::{ConversationId, Seq, UserId};
    use crate::model::{Event, ReadMarker};

    fn update(cursor: u64) -> Update {
        Update {
            cursor: Cursor::new(cursor),
            event: Event::Read(ReadMarker {
                conversation_id: ConversationId::from_uuid(uuid::Uuid::from_u128(1)).unwrap(),
                user_id: UserId::new("u").unwrap(),
                seq: Seq::new(cursor),
            }),
        }
    }

    fn delivered(steps: &[Step]) -> Vec<u64> {
        steps
            .iter()
            .flat_map(|s| match s {
                Step::Deliver(us) => us.iter().map(|u| u.cursor.get()).collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn live_updates_during_catch_up_are_held_until_the_gap_fills() {
        let (mut h, first) = Handoff::start(Cursor::new(10), 100);
        assert_eq!(
            first,
            Step::Fetch {
                after: Cursor::new(10)
            }
        );
        // Live 13 arrives while 11 and 12 are being fetched.
        assert!(h.on_live(update(13)).is_empty());
        let steps = h.on_page(vec![update(11), update(12), update(13)], true);
        assert_eq!(delivered(&steps), vec![11, 12, 13]);
        assert!(h.is_live());
        // A late duplicate of 12 is dropped; 14 flows straight through.
        assert!(h.on_live(update(12)).is_empty());
        assert_eq!(delivered(&h.on_live(update(14))), vec![14]);
    }

    #[test]
    fn a_gap_in_live_updates_triggers_one_fetch() {
        let (mut h, _) = Handoff::start(Cursor::ZERO, 100);
        h.on_page(vec![], true);
        let steps = h.on_live(update(2));
        assert_eq!(
            steps,
            vec![Step::Fetch {
                after: Cursor::ZERO
            }]
        );
        assert!(
            h.on_live(update(3)).is_empty(),
            "no second fetch while one is out"
        );
        let steps = h.on_page(vec![update(1), update(2)], true);
        assert_eq!(delivered(&steps), vec![1, 2, 3]);
    }

    #[test]
    fn an_incomplete_page_fetches_the_next() {
        let (mut h, _) = Handoff::start(Cursor::ZERO, 100);
        let steps = h.on_page(vec![update(1), update(2)], false);
        assert_eq!(delivered(&steps), vec![1, 2]);
        assert_eq!(
            steps.last(),
            Some(&Step::Fetch {
                after: Cursor::new(2)
            })
        );
    }

    #[test]
    fn what_a_full_hold_leaves_out_is_fetched() {
        let (mut h, _) = Handoff::start(Cursor::ZERO, 2);
        h.on_live(update(5));
        h.on_live(update(6));
        assert!(h.on_live(update(7)).is_empty(), "held two, 7 left out");
        // The catch-up page reaches the head as it was when read: 1 to 6.
        let page = (1..=6).map(update).collect();
        let steps = h.on_page(page, true);
        assert_eq!(delivered(&steps), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(
            steps.last(),
            Some(&Step::Fetch {
                after: Cursor::new(6)
            })
        );
        assert!(!h.is_live());
        let steps = h.on_page(vec![update(7)], true);
        assert_eq!(delivered(&steps), vec![7]);
        assert!(h.is_live());
    }

    #[test]
    fn a_recheck_during_a_fetch_fetches_once_more_after_it() {
        let (mut h, _) = Handoff::start(Cursor::ZERO, 10);
        assert!(h.recheck().is_empty(), "a fetch is out already");
        let steps = h.on_page(vec![update(1)], true);
        assert_eq!(delivered(&steps), vec![1]);
        assert_eq!(
            steps.last(),
            Some(&Step::Fetch {
                after: Cursor::new(1)
            })
        );
        assert!(!h.is_live());
        h.on_page(vec![], true);
        assert!(h.is_live());
    }

    #[test]
    fn what_the_session_could_not_pass_on_is_fetched_again() {
        let (mut h, _) = Handoff::start(Cursor::ZERO, 10);
        let steps = h.on_page((1..=5).map(update).collect(), false);
        assert_eq!(delivered(&steps), vec![1, 2, 3, 4, 5]);
        // Only 1 and 2 fit; a fetch is out already, so none is asked.
        assert!(h.rewind(Cursor::new(3), Cursor::new(5)).is_empty());
        let steps = h.on_page((3..=5).map(update).collect(), true);
        assert_eq!(delivered(&steps), vec![3, 4, 5]);
        assert!(h.is_live());
    }

    proptest! {
        /// However catch-up pages and live updates interleave, and whichever
        /// live updates are lost before a recheck, the device sees each
        /// update after its cursor exactly once, in order.
        #[test]
        fn every_interleaving_delivers_each_update_once_in_order(
            from in 0u64..5,
            total in 1u64..60,
            page in 1usize..8,
            max_held in 1usize..20,
            live_order in proptest::collection::vec(any::<prop::sample::Index>(), 0..80),
            choices in proptest::collection::vec(any::<bool>(), 0..200),
            lost in proptest::collection::vec(proptest::bool::weighted(0.2), 0..80),
        ) {
            let (mut h, first) = Handoff::start(Cursor::new(from), max_held);
            let mut pending_fetch = match first { Step::Fetch { after } => Some(after), _ => None };
            // Live updates from `from + 1` on arrive in a shuffled order.
            let mut live: Vec<u64> = (from + 1..=from + total).collect();
            let len = live.len();
            for (i, idx) in live_order.iter().enumerate() {
                live.swap(i % len, idx.index(len));
            }
            let head = from + total;
            // The log is written in cursor order and an update goes live
            // once written: a page reads up to the newest update that
            // has gone live (or was lost on its way), as `readable`.
            let mut readable = from;
            let mut seen = Vec::new();
            let mut choices = choices.into_iter();
            let mut live = live.into_iter().peekable();
            // Some live updates never arrive; the session is told to
            // recheck at some point after.
            let mut lost = lost.into_iter();
            let mut missed = false;
            loop {
                let prefer_live = choices.next().unwrap_or(true);
                let steps = match (live.peek().copied(), pending_fetch) {
                    _ if missed && choices.next().unwrap_or(false) => {
                        missed = false;
                        h.recheck()
                    }
                    (Some(c), fetch) if prefer_live || fetch.is_none() => {
                        live.next();
                        readable = readable.max(c);
                        if lost.next().unwrap_or(false) {
                            missed = true;
                            Vec::new()
                        } else {
                            h.on_live(update(c))
                        }
                    }
                    (_, Some(after)) => {
                        pending_fetch = None;
                        let end = (after.get() + page as u64).min(readable);
                        let updates = (after.get() + 1..=end).map(update).collect();
                        h.on_page(updates, end == readable)
                    }
                    (_, None) if missed => {
                        missed = false;
                        h.recheck()
                    }
                    (_, None) => break,
                };
                // A session whose device falls behind passes on a prefix
                // of a run and rewinds the rest.
                let mut steps: std::collections::VecDeque<_> = steps.into();
                while let Some(step) = steps.pop_front() {
                    match step {
                        Step::Deliver(us) => {
                            let room = if choices.next().unwrap_or(true) { us.len() } else { us.len() / 2 };
                            seen.extend(us[..room].iter().map(|u| u.cursor.get()));
                            if let (Some(first), Some(last)) = (us.get(room), us.last()) {
                                steps.extend(h.rewind(first.cursor, last.cursor));
                            }
                        }
                        Step::Fetch { after } => {
                            prop_assert!(pending_fetch.is_none(), "one fetch at a time");
                            pending_fetch = Some(after);
                        }
                    }
                }
            }
            prop_assert_eq!(seen, (from + 1..=head).collect::<Vec<_>>());
        }
    }
}
