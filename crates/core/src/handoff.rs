//! The hand-off between catch-up and live delivery.
//!
//! A device connects with the cursor of the last update it saw. The gateway
//! subscribes to the user's live updates first, then pages through the
//! missed ones; live updates that arrive meanwhile, or that arrive out of
//! order later, are held until the gap before them is filled. The device
//! therefore sees every update after its cursor exactly once, in order.
//! A watched conversation meets its live messages the same way, by seq.
//!
//! This is a plain state machine: the gateway feeds it what arrives and
//! carries out the [`Step`]s it returns.

use std::collections::BTreeMap;

use crate::ids::{Cursor, Seq};
use crate::model::{Message, Update};

/// A gap-free position: 1, 2, 3, … after a start.
pub trait Position: Copy + Ord + std::fmt::Debug {
    fn next(self) -> Self;
}

impl Position for Cursor {
    fn next(self) -> Self {
        Cursor::next(self)
    }
}

impl Position for Seq {
    fn next(self) -> Self {
        Seq::next(self)
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
    /// More live items are waiting than the session may hold: close the
    /// session (or the watch); the device catches up on reconnect.
    Overflow,
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
        };
        (handoff, Step::Fetch { after: from })
    }

    /// The last position handed to the device.
    pub fn delivered(&self) -> T::Position {
        self.delivered
    }

    /// Whether the session is caught up and delivering live.
    pub fn is_live(&self) -> bool {
        !self.fetching && self.held.is_empty()
    }

    /// A live item arrived.
    pub fn on_live(&mut self, item: T) -> Vec<Step<T>> {
        let position = item.position();
        if position <= self.delivered {
            return Vec::new();
        }
        self.held.insert(position, item);
        if self.held.len() > self.max_held {
            return vec![Step::Overflow];
        }
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
    /// missing if a gap remains.
    fn advance(&mut self) -> Vec<Step<T>> {
        let mut run = Vec::new();
        while let Some(item) = self.held.remove(&self.delivered.next()) {
            self.delivered = item.position();
            run.push(item);
        }
        let mut steps = Vec::new();
        if !run.is_empty() {
            steps.push(Step::Deliver(run));
        }
        if !self.held.is_empty() && !self.fetching {
            self.fetching = true;
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
    fn too_many_held_updates_overflow() {
        let (mut h, _) = Handoff::start(Cursor::ZERO, 2);
        h.on_live(update(5));
        h.on_live(update(6));
        assert_eq!(h.on_live(update(7)), vec![Step::Overflow]);
    }

    proptest! {
        /// However catch-up pages and live updates interleave, the device
        /// sees each update after its cursor exactly once, in order.
        #[test]
        fn every_interleaving_delivers_each_update_once_in_order(
            from in 0u64..5,
            total in 1u64..60,
            page in 1usize..8,
            live_order in proptest::collection::vec(any::<prop::sample::Index>(), 0..80),
            choices in proptest::collection::vec(any::<bool>(), 0..200),
        ) {
            let (mut h, first) = Handoff::start(Cursor::new(from), 1_000);
            let mut pending_fetch = match first { Step::Fetch { after } => Some(after), _ => None };
            // Live updates from `from + 1` on arrive in a shuffled order.
            let mut live: Vec<u64> = (from + 1..=from + total).collect();
            let len = live.len();
            for (i, idx) in live_order.iter().enumerate() {
                live.swap(i % len, idx.index(len));
            }
            let head = from + total;
            let mut seen = Vec::new();
            let mut choices = choices.into_iter();
            let mut live = live.into_iter().peekable();
            loop {
                let prefer_live = choices.next().unwrap_or(true);
                let steps = match (live.peek().copied(), pending_fetch) {
                    (Some(c), fetch) if prefer_live || fetch.is_none() => {
                        live.next();
                        h.on_live(update(c))
                    }
                    (_, Some(after)) => {
                        pending_fetch = None;
                        let end = (after.get() + page as u64).min(head);
                        let updates = (after.get() + 1..=end).map(update).collect();
                        h.on_page(updates, end == head)
                    }
                    (_, None) => break,
                };
                for step in steps {
                    match step {
                        Step::Deliver(us) => seen.extend(us.iter().map(|u| u.cursor.get())),
                        Step::Fetch { after } => pending_fetch = Some(after),
                        Step::Overflow => prop_assert!(false, "unexpected overflow"),
                    }
                }
            }
            prop_assert_eq!(seen, (from + 1..=head).collect::<Vec<_>>());
        }
    }
}
