//! The sequencer: the one place a conversation's messages get their seq.
//!
//! A storage process owns a partition of conversations (through a lease)
//! and runs one `Sequencer` for it. For every conversation it has touched
//! it keeps the last seq and the fingerprints of the newest messages'
//! idempotency keys (sender, client message id) in memory, so a send costs
//! no store read. New messages are queued and written in batches: while
//! one batch is being written the next one fills, so a busy partition
//! shares one durable write among many messages and an idle one writes
//! each message at once, without waiting on a timer.
//!
//! What is durable is the truth. A conversation is loaded from its newest
//! stored messages the first time it is touched, and again after a write
//! that failed (the write may have landed in part; the store says which
//! part). The store's write of one conversation's messages lands as a
//! prefix in seq order, so a failure leaves no gap. A crashed or replaced
//! owner simply starts a new `Sequencer`.
//!
//! A conversation's lifecycle (`lifecycle.rs`) is known here too, loaded
//! with its newest messages: a lifecycle change is numbered as an activity
//! message holding the lifecycle after it; a customer's message that
//! changes the lifecycle by itself (it reopens the conversation, or asks
//! for a person) is followed by that activity, in the same write; and a
//! bot's message is refused while people have control.
//!
//! Idempotency holds within a window: a retried send is recognised while
//! its first attempt is among the conversation's newest `window` messages
//! (the fingerprints rebuilt from them on load), or still being written.
//!
//! This is a plain state machine: the storage service feeds it what
//! arrives and carries out the [`Step`]s it returns.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;

use crate::content::Content;
use crate::error::Invalid;
use crate::ids::{ClientMessageId, ConversationId, MessageId, Seq, TenantId, Timestamp, UserId};
use crate::lifecycle::{Lifecycle, LifecycleChange};
use crate::limits::Limits;
use crate::model::{Message, NewMessage, Role};

/// A conversation, across tenants.
pub type ConversationKey = (TenantId, ConversationId);

/// What the sequencer is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequencerConfig {
    /// Newest messages per conversation whose keys are remembered.
    pub window: usize,
    /// Most messages in one write.
    pub max_batch: usize,
    /// Most content bytes in one write, beyond its first message: a write
    /// and the announcement of its events stay well inside what one store
    /// write takes (`natter_store::MAX_ANNOUNCEMENT_BYTES`).
    pub max_batch_bytes: usize,
    /// Idle conversations kept in memory; beyond it the least recently
    /// used idle ones are forgotten (and loaded again when next touched).
    pub max_conversations: usize,
}

impl Default for SequencerConfig {
    fn default() -> Self {
        Self {
            window: 512,
            max_batch: 1024,
            max_batch_bytes: 2 << 20,
            max_conversations: 10_000,
        }
    }
}

/// What a sender asks to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submission {
    /// A message, from someone of `role` in the conversation.
    Message { new: NewMessage, role: Role },
    /// A lifecycle change, stored as an activity message.
    Change(NewChange),
}

/// A lifecycle change to store, with what a message carries besides its
/// content: its id, sender and idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChange {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub client_message_id: ClientMessageId,
    pub sent_at: Timestamp,
    pub change: LifecycleChange,
}

impl Submission {
    fn conversation_id(&self) -> ConversationId {
        match self {
            Submission::Message { new, .. } => new.conversation_id,
            Submission::Change(change) => change.conversation_id,
        }
    }

    fn key(&self) -> (&UserId, &ClientMessageId) {
        match self {
            Submission::Message { new, .. } => (&new.sender_id, &new.client_message_id),
            Submission::Change(c) => (&c.sender_id, &c.client_message_id),
        }
    }
}

/// What the owner must do next. `W` is how it answers a sender.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<W> {
    /// Read the conversation's newest `window` messages and hand them to
    /// [`Sequencer::loaded`] (or report [`Sequencer::load_failed`]).
    Load(ConversationKey),
    /// Write these messages durably, each conversation's in seq order, and
    /// report with [`Sequencer::written`]. At most one write is asked for
    /// at a time.
    Write(Vec<(TenantId, Message)>),
    /// Stored by this write: tell the members, then the senders.
    Stored(Vec<Stored<W>>),
    /// The key was stored before, at `seq`: tell the sender that message.
    Duplicate {
        key: ConversationKey,
        seq: Seq,
        waiter: W,
    },
    /// Not stored, and it may or may not be: the senders should retry with
    /// the same client message id.
    Retry(Vec<W>),
    /// A change that changes nothing: nothing is stored; tell the sender
    /// the conversation's lifecycle.
    Unchanged { lifecycle: Lifecycle, waiter: W },
    /// Not stored, and asking again will not change that: tell the sender
    /// why.
    Refused { why: Refusal, waiter: W },
}

/// Why a submission is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A change the conversation cannot take (too many tags).
    Invalid(Invalid),
    /// A bot's message while people have control.
    InboxOwns,
}

/// A message the last write stored, and who waits for it.
#[derive(Debug, PartialEq, Eq)]
pub struct Stored<W> {
    pub tenant: TenantId,
    pub message: Message,
    pub waiters: Vec<W>,
}

#[derive(Debug)]
struct Queued<W> {
    key: ConversationKey,
    message: Message,
    waiters: Vec<W>,
    /// Customers who sent again a message stored at the seq given, and
    /// wait for this activity after it to be stored: then they are
    /// answered with their message, as a duplicate.
    duplicates: Vec<(W, Seq)>,
}

impl<W> Queued<W> {
    fn everyone(self) -> impl Iterator<Item = W> {
        self.waiters
            .into_iter()
            .chain(self.duplicates.into_iter().map(|(w, _)| w))
    }
}

#[derive(Debug)]
enum Slot<W> {
    /// Its tail is being read; sends wait here in arrival order.
    Loading(Vec<(Submission, W)>),
    Ready(Known),
}

#[derive(Debug)]
struct Known {
    /// The highest seq assigned, stored or not.
    last: Seq,
    /// The highest seq known to be stored.
    stored: Seq,
    /// Fingerprints of the newest keys and their seqs, oldest first.
    recent: VecDeque<(u64, Seq)>,
    /// The lifecycle after the highest seq assigned.
    lifecycle: Lifecycle,
    /// The seq of the newest activity (lifecycle change) known; zero if
    /// none is among the messages loaded.
    changed: Seq,
    /// Messages of this conversation queued or being written.
    unsettled: usize,
    /// When it was last touched, for eviction.
    used: u64,
}

/// The sequencer of one partition. See the module docs.
#[derive(Debug)]
pub struct Sequencer<W, S> {
    config: SequencerConfig,
    limits: Limits,
    hasher: S,
    slots: HashMap<ConversationKey, Slot<W>>,
    queue: Vec<Queued<W>>,
    writing: Option<Vec<Queued<W>>>,
    clock: u64,
}

impl<W, S: BuildHasher> Sequencer<W, S> {
    /// A sequencer that knows nothing yet. `hasher` fingerprints keys; it
    /// should be seeded at random so nobody can craft a collision.
    pub fn new(config: SequencerConfig, limits: Limits, hasher: S) -> Self {
        Self {
            config,
            limits,
            hasher,
            slots: HashMap::new(),
            queue: Vec::new(),
            writing: None,
            clock: 0,
        }
    }

    /// A send or a change arrived. The owner has checked that the sender
    /// may make it.
    pub fn submit(&mut self, tenant: TenantId, new: Submission, waiter: W) -> Vec<Step<W>> {
        let key = (tenant, new.conversation_id());
        let mut steps = Vec::new();
        match self.slots.get_mut(&key) {
            None => {
                self.slots
                    .insert(key.clone(), Slot::Loading(vec![(new, waiter)]));
                steps.push(Step::Load(key));
            }
            Some(Slot::Loading(waiting)) => waiting.push((new, waiter)),
            Some(Slot::Ready(_)) => {
                self.sequence(key, new, waiter, &mut steps);
                self.start_write(&mut steps);
            }
        }
        steps
    }

    /// The newest stored messages of a conversation being loaded (up to
    /// `window` of them, in seq order; none if it has none), and its
    /// stored lifecycle.
    pub fn loaded(
        &mut self,
        key: &ConversationKey,
        newest: &[Message],
        lifecycle: Lifecycle,
    ) -> Vec<Step<W>> {
        let Some(Slot::Loading(_)) = self.slots.get(key) else {
            return Vec::new();
        };
        let last = newest.last().map_or(Seq::ZERO, |m| m.seq);
        let skip = newest.len().saturating_sub(self.config.window);
        let recent = newest[skip..]
            .iter()
            .map(|m| (self.fingerprint(&m.sender_id, &m.client_message_id), m.seq))
            .collect();
        let known = Slot::Ready(Known {
            last,
            stored: last,
            recent,
            lifecycle,
            changed: newest
                .iter()
                .rev()
                .find(|m| matches!(m.content, Content::Activity(_)))
                .map_or(Seq::ZERO, |m| m.seq),
            unsettled: 0,
            used: self.tick(),
        });
        let Some(Slot::Loading(waiting)) = self.slots.insert(key.clone(), known) else {
            unreachable!("checked above");
        };
        let mut steps = Vec::new();
        for (new, waiter) in waiting {
            self.sequence(key.clone(), new, waiter, &mut steps);
        }
        self.start_write(&mut steps);
        steps
    }

    /// The tail of a conversation could not be read: its senders retry.
    pub fn load_failed(&mut self, key: &ConversationKey) -> Vec<Step<W>> {
        match self.slots.remove(key) {
            Some(Slot::Loading(waiting)) => {
                vec![Step::Retry(waiting.into_iter().map(|(_, w)| w).collect())]
            }
            Some(ready) => {
                self.slots.insert(key.clone(), ready);
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    /// The write asked for last ended: `true` if every message is stored.
    /// On failure any prefix of each conversation's messages may be
    /// stored, so those conversations are forgotten (and loaded again),
    /// and every message of theirs not known to be stored is given back to
    /// its senders to retry.
    pub fn written(&mut self, ok: bool) -> Vec<Step<W>> {
        let Some(batch) = self.writing.take() else {
            return Vec::new();
        };
        let mut steps = Vec::new();
        if ok {
            let mut stored = Vec::with_capacity(batch.len());
            for mut queued in batch {
                if let Some(Slot::Ready(known)) = self.slots.get_mut(&queued.key) {
                    known.stored = known.stored.max(queued.message.seq);
                    known.unsettled -= 1;
                }
                // Answered before the write's messages are announced, so
                // the message they sent goes out again ahead of what
                // follows it.
                for (waiter, seq) in queued.duplicates.drain(..) {
                    let key = queued.key.clone();
                    steps.push(Step::Duplicate { key, seq, waiter });
                }
                stored.push(Stored {
                    tenant: queued.key.0,
                    message: queued.message,
                    waiters: queued.waiters,
                });
            }
            steps.push(Step::Stored(stored));
        } else {
            let lost: HashSet<ConversationKey> = batch.iter().map(|q| q.key.clone()).collect();
            let mut retry: Vec<W> = batch.into_iter().flat_map(Queued::everyone).collect();
            let (gone, kept) = std::mem::take(&mut self.queue)
                .into_iter()
                .partition(|q| lost.contains(&q.key));
            self.queue = kept;
            retry.extend(gone.into_iter().flat_map(Queued::everyone));
            for key in &lost {
                self.slots.remove(key);
            }
            steps.push(Step::Retry(retry));
        }
        self.start_write(&mut steps);
        self.evict();
        steps
    }

    /// Stops numbering: every send not yet handed to a write goes back to
    /// its sender, and nothing new is asked for. The write under way, if
    /// any, is still reported with [`written`](Self::written), which then
    /// settles just its own messages.
    pub fn abandon(&mut self) -> Vec<Step<W>> {
        let mut retry: Vec<W> = self.queue.drain(..).flat_map(Queued::everyone).collect();
        for slot in std::mem::take(&mut self.slots).into_values() {
            if let Slot::Loading(waiting) = slot {
                retry.extend(waiting.into_iter().map(|(_, w)| w));
            }
        }
        if retry.is_empty() {
            Vec::new()
        } else {
            vec![Step::Retry(retry)]
        }
    }

    /// Whether a write is under way: asked for and not yet reported.
    pub fn writing(&self) -> bool {
        self.writing.is_some()
    }

    /// Conversations in memory, loading or known.
    pub fn conversations(&self) -> usize {
        self.slots.len()
    }

    fn sequence(
        &mut self,
        key: ConversationKey,
        new: Submission,
        waiter: W,
        steps: &mut Vec<Step<W>>,
    ) {
        let (sender, client) = new.key();
        let fingerprint = self.fingerprint(sender, client);
        let used = self.tick();
        let Some(Slot::Ready(known)) = self.slots.get_mut(&key) else {
            unreachable!("sequence is called for known conversations only");
        };
        known.used = used;
        if let Some(&(_, seq)) = known.recent.iter().rev().find(|(f, _)| *f == fingerprint) {
            // A customer's message is acknowledged only once what comes of
            // it is stored too: the activity that follows it (its first
            // write may have stored the message alone), or a later change
            // still being written.
            let waits_for = match &new {
                Submission::Message {
                    new,
                    role: Role::Customer,
                } => {
                    if seq > known.changed {
                        follow_up(known, &self.limits, Role::Customer, new).map(|message| {
                            self.queue.push(Queued {
                                key: key.clone(),
                                message,
                                waiters: Vec::new(),
                                duplicates: Vec::new(),
                            });
                            known.changed
                        })
                    } else {
                        (known.changed > known.stored).then_some(known.changed)
                    }
                }
                _ => None,
            };
            let unsettled = waits_for.unwrap_or(seq);
            let queued = self
                .queue
                .iter_mut()
                .chain(self.writing.iter_mut().flatten())
                .find(|q| q.key == key && q.message.seq == unsettled);
            match (queued, waits_for) {
                (Some(queued), Some(_)) => queued.duplicates.push((waiter, seq)),
                // Still queued or being written: answer with the first.
                (Some(queued), None) => queued.waiters.push(waiter),
                (None, _) => {
                    assert!(
                        seq <= known.stored,
                        "an unsettled seq is queued or being written"
                    );
                    steps.push(Step::Duplicate { key, seq, waiter });
                }
            }
            return;
        }
        let (message, role) = match new {
            Submission::Message { role, .. } if !known.lifecycle.may_send(role) => {
                let why = Refusal::InboxOwns;
                steps.push(Step::Refused { why, waiter });
                return;
            }
            Submission::Message { new, .. } if matches!(&new.content, Content::Reply(r) if r.to > known.last) =>
            {
                let why = Refusal::Invalid(Invalid::new(
                    "content.reply.to_seq",
                    format!("quotes a message after the newest, {}", known.last),
                ));
                steps.push(Step::Refused { why, waiter });
                return;
            }
            Submission::Message { new, role } => (new, Some(role)),
            Submission::Change(new) => match known.lifecycle.apply(&new.change, &self.limits) {
                Ok(Some(next)) => {
                    known.lifecycle = next.clone();
                    known.changed = known.last.next();
                    let activity = NewMessage {
                        id: new.id,
                        conversation_id: new.conversation_id,
                        sender_id: new.sender_id,
                        client_message_id: new.client_message_id,
                        sent_at: new.sent_at,
                        content: Content::Activity(next),
                    };
                    (activity, None)
                }
                Ok(None) => {
                    let lifecycle = known.lifecycle.clone();
                    steps.push(Step::Unchanged { lifecycle, waiter });
                    return;
                }
                Err(why) => {
                    let why = Refusal::Invalid(why);
                    steps.push(Step::Refused { why, waiter });
                    return;
                }
            },
        };
        let seq = known.last.next();
        known.last = seq;
        known.unsettled += 1;
        known.recent.push_back((fingerprint, seq));
        if known.recent.len() > self.config.window {
            known.recent.pop_front();
        }
        let following = role.and_then(|role| follow_up(known, &self.limits, role, &message));
        self.queue.push(Queued {
            key: key.clone(),
            message: message.at(seq),
            waiters: vec![waiter],
            duplicates: Vec::new(),
        });
        if let Some(message) = following {
            self.queue.push(Queued {
                key,
                message,
                waiters: Vec::new(),
                duplicates: Vec::new(),
            });
        }
    }

    fn start_write(&mut self, steps: &mut Vec<Step<W>>) {
        if self.writing.is_some() || self.queue.is_empty() {
            return;
        }
        let mut bytes = 0;
        let take = self
            .queue
            .iter()
            .take(self.config.max_batch.max(1))
            .take_while(|q| {
                let first = bytes == 0;
                bytes += q.message.content.size_bytes().max(1);
                first || bytes <= self.config.max_batch_bytes
            })
            .count();
        // A following activity is written with the message it follows:
        // once that message is acknowledged, nobody would ask again.
        let take = take
            + self.queue[take..]
                .iter()
                .take_while(|q| q.waiters.is_empty() && q.duplicates.is_empty())
                .count();
        let batch: Vec<Queued<W>> = self.queue.drain(..take).collect();
        steps.push(Step::Write(
            batch
                .iter()
                .map(|q| (q.key.0.clone(), q.message.clone()))
                .collect(),
        ));
        self.writing = Some(batch);
    }

    /// Forgets the least recently used idle conversations beyond the cap.
    fn evict(&mut self) {
        let cap = self.config.max_conversations;
        if self.slots.len() <= cap {
            return;
        }
        let mut idle: Vec<(u64, ConversationKey)> = self
            .slots
            .iter()
            .filter_map(|(key, slot)| match slot {
                Slot::Ready(known) if known.unsettled == 0 => Some((known.used, key.clone())),
                _ => None,
            })
            .collect();
        // Down to 90 % of the cap, so eviction runs once per many writes.
        let excess = self.slots.len() - cap * 9 / 10;
        idle.sort_unstable_by_key(|(used, _)| *used);
        for (_, key) in idle.into_iter().take(excess) {
            if let MapEntry::Occupied(slot) = self.slots.entry(key) {
                slot.remove();
            }
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The idempotency key's fingerprint. 64 bits of a keyed hash: with a
    /// window of 512 a collision is a 1 in 3.6·10^16 chance per send.
    fn fingerprint(&self, sender: &UserId, client_message_id: &ClientMessageId) -> u64 {
        self.hasher
            .hash_one((sender.as_str(), client_message_id.as_str()))
    }
}

/// The activity that follows `message` from someone of `role` in
/// `known`'s conversation, numbered next, if the message changes the
/// lifecycle by itself (`Lifecycle::follow_up`). It is the sender's, and
/// its idempotency key derives from the message's id, so it is never
/// taken for one of theirs.
fn follow_up(
    known: &mut Known,
    limits: &Limits,
    role: Role,
    message: &NewMessage,
) -> Option<Message> {
    let change = known.lifecycle.follow_up(role, &message.content);
    let next = known.lifecycle.apply(&change, limits).ok().flatten()?;
    known.lifecycle = next.clone();
    known.last = known.last.next();
    known.changed = known.last;
    known.unsettled += 1;
    let client_message_id = ClientMessageId::new(format!("after/{}", message.id))
        .expect("a uuid with a short prefix is a valid client message id");
    let activity = NewMessage {
        id: MessageId::generate(),
        conversation_id: message.conversation_id,
        sender_id: message.sender_id.clone(),
        client_message_id,
        sent_at: message.sent_at,
        content: Content::Activity(next),
    };
    Some(activity.at(known.last))
}

#[cfg(test)]
mod tests {
    //! A seeded simulation: the real sequencer against a store that fails,
    //! lands writes in part, and an owner that crashes and starts over,
    //! with senders that retry. Every step checks the guarantees.

    use std::collections::BTreeMap;
    use std::hash::BuildHasherDefault;

    use super::*;
    use crate::lifecycle::Status;

    type Fixed = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

    /// xorshift64*: deterministic, good enough to pick actions.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
    }

    const WINDOW: usize = 16;

    /// What a send is: sender 0 is the customer, whose messages reopen;
    /// sender 1 an agent, who also changes the status (to resolved for
    /// `Some(0)`, to pending for `Some(1)`).
    #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
    struct SendKey {
        conversation: usize,
        sender: usize,
        change: Option<u8>,
        client: u64,
    }

    #[derive(Default)]
    struct Tally {
        unchanged: usize,
        followed: usize,
        stored: usize,
        duplicates: usize,
        retries: usize,
        failed_writes: usize,
        crashes: usize,
    }

    struct World {
        rng: Rng,
        conversations: Vec<ConversationKey>,
        /// The durable truth: each conversation's messages by seq.
        store: Vec<Vec<Message>>,
        sequencer: Sequencer<u64, Fixed>,
        loading: Vec<ConversationKey>,
        writing: Option<Vec<(TenantId, Message)>>,
        /// Waiter id -> what it sent.
        waiting: BTreeMap<u64, SendKey>,
        next_waiter: u64,
        /// Recent sends per conversation, which senders may retry.
        sent: Vec<VecDeque<SendKey>>,
        /// What each acknowledged send was stored at.
        acked: BTreeMap<SendKey, Seq>,
        tally: Tally,
    }

    impl World {
        fn new(seed: u64) -> Self {
            let conversations: Vec<ConversationKey> = (0..3)
                .map(|i| {
                    let tenant = TenantId::new(if i == 2 { "globex" } else { "acme" }).unwrap();
                    (tenant, ConversationId::generate())
                })
                .collect();
            Self {
                rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
                store: vec![Vec::new(); conversations.len()],
                sent: vec![VecDeque::new(); conversations.len()],
                conversations,
                sequencer: Self::sequencer(),
                loading: Vec::new(),
                writing: None,
                waiting: BTreeMap::new(),
                next_waiter: 0,
                acked: BTreeMap::new(),
                tally: Tally::default(),
            }
        }

        fn sequencer() -> Sequencer<u64, Fixed> {
            Sequencer::new(
                SequencerConfig {
                    window: WINDOW,
                    max_batch: 5,
                    // About three of the simulation's messages.
                    max_batch_bytes: 120,
                    max_conversations: 2,
                },
                Limits::default(),
                Fixed::default(),
            )
        }

        fn index(&self, key: &ConversationKey) -> usize {
            self.conversations.iter().position(|k| k == key).unwrap()
        }

        fn send(&mut self, key: SendKey) {
            let (tenant, id) = self.conversations[key.conversation].clone();
            let waiter = self.next_waiter;
            self.next_waiter += 1;
            self.waiting.insert(waiter, key.clone());
            let sender_id = UserId::new(format!("user{}", key.sender)).unwrap();
            let client_message_id = ClientMessageId::new(format!("c{}", key.client)).unwrap();
            let new = match key.change {
                Some(to) => Submission::Change(NewChange {
                    id: MessageId::generate(),
                    conversation_id: id,
                    sender_id,
                    client_message_id,
                    sent_at: Timestamp::from_millis(1),
                    change: LifecycleChange {
                        status: Some([Status::Resolved, Status::Pending][usize::from(to)]),
                        ..LifecycleChange::default()
                    },
                }),
                None => Submission::Message {
                    new: NewMessage {
                        id: MessageId::generate(),
                        conversation_id: id,
                        sender_id,
                        client_message_id,
                        sent_at: Timestamp::from_millis(1),
                        // Now and then the customer asks for a person.
                        content: Content::Text(match key.client % 7 {
                            0 => format!("{key:?}: a human, please"),
                            _ => format!("{key:?}"),
                        }),
                    },
                    role: if key.sender == 0 {
                        Role::Customer
                    } else {
                        Role::Agent
                    },
                },
            };
            let steps = self.sequencer.submit(tenant, new, waiter);
            self.carry_out(steps);
        }

        fn step(&mut self, client: &mut u64) {
            match self.rng.below(100) {
                0..=34 => {
                    let conversation = self.rng.below(self.conversations.len());
                    *client += 1;
                    let sender = self.rng.below(2);
                    let change =
                        (sender == 1 && self.rng.chance(30)).then(|| u8::from(self.rng.chance(50)));
                    let key = SendKey {
                        conversation,
                        sender,
                        change,
                        client: *client,
                    };
                    let recent = &mut self.sent[conversation];
                    recent.push_back(key.clone());
                    // Retries stay within the window: each send stores at
                    // most one message, so these are among the newest.
                    if recent.len() > WINDOW / 2 {
                        recent.pop_front();
                    }
                    self.send(key);
                }
                35..=49 => {
                    let conversation = self.rng.below(self.conversations.len());
                    let recent = &self.sent[conversation];
                    if !recent.is_empty() {
                        let key = recent[self.rng.below(recent.len())].clone();
                        self.send(key);
                    }
                }
                50..=69 if !self.loading.is_empty() => {
                    let key = self.loading.remove(self.rng.below(self.loading.len()));
                    let steps = if self.rng.chance(15) {
                        self.sequencer.load_failed(&key)
                    } else {
                        let stored = &self.store[self.index(&key)];
                        let newest = &stored[stored.len().saturating_sub(WINDOW)..];
                        // The store keeps the newest activity's lifecycle.
                        let lifecycle = stored
                            .iter()
                            .rev()
                            .find_map(|m| match &m.content {
                                Content::Activity(lifecycle) => Some(lifecycle.clone()),
                                _ => None,
                            })
                            .unwrap_or_default();
                        self.sequencer.loaded(&key, newest, lifecycle)
                    };
                    self.carry_out(steps);
                }
                70..=94 if self.writing.is_some() => {
                    let batch = self.writing.take().unwrap();
                    let ok = !self.rng.chance(15);
                    self.land(&batch, ok);
                    if !ok {
                        self.tally.failed_writes += 1;
                    }
                    let steps = self.sequencer.written(ok);
                    self.carry_out(steps);
                }
                95..=96 => {
                    // The owner dies: a write in flight lands in part or
                    // not at all, nobody is answered, a new owner starts.
                    if let Some(batch) = self.writing.take() {
                        self.land(&batch, false);
                    }
                    self.loading.clear();
                    self.waiting.clear();
                    self.sequencer = Self::sequencer();
                    self.tally.crashes += 1;
                }
                _ => {}
            }
        }

        /// Applies a write to the store: all of it, or (failed) any prefix
        /// of each conversation's part.
        fn land(&mut self, batch: &[(TenantId, Message)], ok: bool) {
            let mut cut: BTreeMap<usize, bool> = BTreeMap::new();
            for (tenant, message) in batch {
                let i = self.index(&(tenant.clone(), message.conversation_id));
                let stop = cut.entry(i).or_insert(false);
                if !ok && (*stop || self.rng.chance(40)) {
                    *stop = true;
                    continue;
                }
                let stored = &mut self.store[i];
                assert_eq!(
                    message.seq.get(),
                    stored.len() as u64 + 1,
                    "a write leaves no gap and overwrites nothing"
                );
                stored.push(message.clone());
            }
        }

        fn carry_out(&mut self, steps: Vec<Step<u64>>) {
            for step in steps {
                match step {
                    Step::Load(key) => {
                        assert!(!self.loading.contains(&key), "one load at a time");
                        self.loading.push(key);
                    }
                    Step::Write(batch) => {
                        assert!(self.writing.is_none(), "one write at a time");
                        // At most five, and the reopening that follows
                        // the fifth.
                        assert!(!batch.is_empty() && batch.len() <= 6);
                        self.writing = Some(batch);
                    }
                    Step::Stored(stored) => {
                        for s in stored {
                            let i = self.index(&(s.tenant.clone(), s.message.conversation_id));
                            assert_eq!(
                                self.store[i].get(s.message.seq.get() as usize - 1),
                                Some(&s.message),
                                "stored means durable"
                            );
                            for waiter in s.waiters {
                                self.ack(waiter, s.message.seq);
                                self.tally.stored += 1;
                            }
                        }
                    }
                    Step::Duplicate { key, seq, waiter } => {
                        let i = self.index(&key);
                        let message = &self.store[i][seq.get() as usize - 1];
                        if let Some(sent) = self.waiting.get(&waiter) {
                            assert_eq!(
                                message.client_message_id.as_str(),
                                format!("c{}", sent.client),
                                "a duplicate answers with the first message"
                            );
                        }
                        self.ack(waiter, seq);
                        self.tally.duplicates += 1;
                    }
                    Step::Retry(waiters) => {
                        for waiter in waiters {
                            self.waiting.remove(&waiter);
                            self.tally.retries += 1;
                        }
                    }
                    Step::Unchanged { waiter, .. } => {
                        let sent = self.waiting.remove(&waiter);
                        assert!(
                            sent.is_some_and(|s| s.change.is_some()),
                            "only changes are unchanged"
                        );
                        self.tally.unchanged += 1;
                    }
                    Step::Refused { why, .. } => panic!("a status change refused: {why:?}"),
                }
            }
        }

        fn ack(&mut self, waiter: u64, seq: Seq) {
            let Some(key) = self.waiting.remove(&waiter) else {
                return;
            };
            if let Some(first) = self.acked.insert(key.clone(), seq) {
                assert_eq!(first, seq, "{key:?} acknowledged at two seqs");
            }
        }

        fn check(&self) {
            for (i, stored) in self.store.iter().enumerate() {
                let mut keys = HashSet::new();
                for (n, message) in stored.iter().enumerate() {
                    assert_eq!(message.seq.get(), n as u64 + 1, "gap-free");
                    assert!(
                        keys.insert((message.sender_id.clone(), message.client_message_id.clone())),
                        "conversation {i} stored {:?} twice",
                        message.client_message_id
                    );
                }
            }
            for (key, seq) in &self.acked {
                let message = &self.store[key.conversation][seq.get() as usize - 1];
                assert_eq!(
                    message.client_message_id.as_str(),
                    format!("c{}", key.client)
                );
                assert_eq!(
                    matches!(message.content, Content::Activity(_)),
                    key.change.is_some()
                );
            }
            for (i, stored) in self.store.iter().enumerate() {
                let mut lifecycle = Lifecycle::default();
                let mut changed_at = Vec::new();
                for message in stored {
                    if let Content::Activity(next) = &message.content {
                        assert_ne!(
                            *next, lifecycle,
                            "conversation {i}: an activity that changes nothing"
                        );
                        lifecycle = next.clone();
                        changed_at.push((message.seq, lifecycle.status));
                    }
                }
                // An acknowledged customer message left the conversation
                // open, unless a change came after it.
                for (key, seq) in &self.acked {
                    if key.conversation != i || key.sender != 0 || key.change.is_some() {
                        continue;
                    }
                    let before = changed_at
                        .iter()
                        .rev()
                        .find(|(at, _)| at < seq)
                        .map_or(Status::Open, |(_, status)| *status);
                    let later = changed_at.iter().any(|(at, _)| at > seq);
                    assert!(
                        before == Status::Open || later,
                        "conversation {i}: the customer's message at {seq} left it {before:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn crashes_failures_and_retries_lose_nothing_acknowledged_and_store_nothing_twice() {
        // Also: lifecycle changes store only what changes something, and
        // every acknowledged customer message leaves its conversation open.
        let mut total = Tally::default();
        for seed in 0..300 {
            let mut world = World::new(seed);
            let mut client = 0;
            for _ in 0..600 {
                world.step(&mut client);
                world.check();
            }
            total.stored += world.tally.stored;
            total.duplicates += world.tally.duplicates;
            total.retries += world.tally.retries;
            total.failed_writes += world.tally.failed_writes;
            total.crashes += world.tally.crashes;
            total.unchanged += world.tally.unchanged;
            total.followed += world
                .store
                .iter()
                .flatten()
                .filter(|m| m.client_message_id.as_str().starts_with("after/"))
                .count();
        }
        // A run in which nothing happened proves nothing.
        assert!(total.stored > 10_000, "stored {}", total.stored);
        assert!(total.duplicates > 1_000, "duplicates {}", total.duplicates);
        assert!(total.retries > 1_000, "retries {}", total.retries);
        assert!(
            total.failed_writes > 1_000,
            "failed writes {}",
            total.failed_writes
        );
        assert!(total.crashes > 100, "crashes {}", total.crashes);
        assert!(total.unchanged > 100, "unchanged {}", total.unchanged);
        assert!(total.followed > 1_000, "followed {}", total.followed);
    }

    #[test]
    fn a_busy_partition_shares_one_write_and_an_idle_one_writes_at_once() {
        let mut sequencer: Sequencer<u32, Fixed> = Sequencer::new(
            SequencerConfig::default(),
            Limits::default(),
            Fixed::default(),
        );
        let key = (TenantId::new("acme").unwrap(), ConversationId::generate());
        let new = |client: &str| Submission::Message {
            new: text(key.1, "alice", client, "hi"),
            role: Role::Agent,
        };
        assert_eq!(
            sequencer.submit(key.0.clone(), new("a"), 1),
            vec![Step::Load(key.clone())]
        );
        let steps = sequencer.loaded(&key, &[], Lifecycle::default());
        assert!(matches!(&steps[..], [Step::Write(batch)] if batch.len() == 1));
        // While that write is out, three more queue up behind it.
        for (i, client) in ["b", "c", "d"].into_iter().enumerate() {
            assert!(
                sequencer
                    .submit(key.0.clone(), new(client), i as u32 + 2)
                    .is_empty()
            );
        }
        let steps = sequencer.written(true);
        assert!(matches!(&steps[..], [Step::Stored(s), Step::Write(next)]
            if s.len() == 1 && next.iter().map(|(_, m)| m.seq.get()).eq(2..=4)));

        // Stepping down: what is queued goes back, the write under way
        // still settles, and nothing more is asked for.
        assert!(sequencer.submit(key.0.clone(), new("e"), 5).is_empty());
        assert_eq!(sequencer.abandon(), vec![Step::Retry(vec![5])]);
        let steps = sequencer.written(true);
        assert!(matches!(&steps[..], [Step::Stored(s)] if s.len() == 3));
    }

    #[test]
    fn a_write_stops_at_its_byte_cap_but_always_takes_one() {
        let config = SequencerConfig {
            max_batch_bytes: 10,
            ..SequencerConfig::default()
        };
        let mut sequencer: Sequencer<u32, Fixed> =
            Sequencer::new(config, Limits::default(), Fixed::default());
        let key = (TenantId::new("acme").unwrap(), ConversationId::generate());
        let new = |client: u32, body: &str| Submission::Message {
            new: text(key.1, "alice", &format!("c{client}"), body),
            role: Role::Agent,
        };
        sequencer.submit(key.0.clone(), new(0, "first"), 0);
        sequencer.loaded(&key, &[], Lifecycle::default());
        // Queued behind the first write: 4 + 4 bytes fit, 12 more do not,
        // and 12 alone is over the cap but still written.
        for (client, text) in [(1, "abcd"), (2, "efgh"), (3, "0123456789ab"), (4, "z")] {
            assert!(
                sequencer
                    .submit(key.0.clone(), new(client, text), client)
                    .is_empty()
            );
        }
        let batch_len = |steps: Vec<Step<u32>>| match &steps[..] {
            [Step::Stored(_), Step::Write(batch)] => batch.len(),
            other => panic!("expected a write, got {other:?}"),
        };
        assert_eq!(batch_len(sequencer.written(true)), 2);
        assert_eq!(batch_len(sequencer.written(true)), 1);
        assert_eq!(batch_len(sequencer.written(true)), 1);
    }

    fn text(id: ConversationId, sender: &str, client: &str, body: &str) -> NewMessage {
        NewMessage {
            id: MessageId::generate(),
            conversation_id: id,
            sender_id: UserId::new(sender).unwrap(),
            client_message_id: ClientMessageId::new(client).unwrap(),
            sent_at: Timestamp::from_millis(1),
            content: Content::Text(body.into()),
        }
    }

    fn change(id: ConversationId, client: &str, change: LifecycleChange) -> Submission {
        Submission::Change(NewChange {
            id: MessageId::generate(),
            conversation_id: id,
            sender_id: UserId::new("agent").unwrap(),
            client_message_id: ClientMessageId::new(client).unwrap(),
            sent_at: Timestamp::from_millis(1),
            change,
        })
    }

    /// The lifecycles of the activities in a step list's writes.
    fn activities(steps: &[Step<u32>]) -> Vec<(u64, Status)> {
        steps
            .iter()
            .flat_map(|step| match step {
                Step::Write(batch) => batch.clone(),
                _ => Vec::new(),
            })
            .filter_map(|(_, m)| match m.content {
                Content::Activity(l) => Some((m.seq.get(), l.status)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn changes_are_activities_and_a_customer_reopens_what_is_not_open() {
        let mut sequencer: Sequencer<u32, Fixed> = Sequencer::new(
            SequencerConfig::default(),
            Limits::default(),
            Fixed::default(),
        );
        let key = (TenantId::new("acme").unwrap(), ConversationId::generate());
        let resolve = LifecycleChange {
            status: Some(Status::Resolved),
            ..LifecycleChange::default()
        };
        sequencer.submit(key.0.clone(), change(key.1, "r1", resolve.clone()), 1);
        let steps = sequencer.loaded(&key, &[], Lifecycle::default());
        assert_eq!(activities(&steps), vec![(1, Status::Resolved)]);
        sequencer.written(true);
        // Resolving again stores nothing.
        let steps = sequencer.submit(key.0.clone(), change(key.1, "r2", resolve), 2);
        assert!(
            matches!(&steps[..], [Step::Unchanged { lifecycle, waiter: 2 }]
            if lifecycle.status == Status::Resolved)
        );
        // An agent's message leaves it resolved; a customer's reopens it,
        // in the same write.
        let agent = Submission::Message {
            new: text(key.1, "agent", "m1", "anything else?"),
            role: Role::Agent,
        };
        assert_eq!(
            activities(&sequencer.submit(key.0.clone(), agent, 3)),
            vec![]
        );
        sequencer.written(true);
        let customer = |client| Submission::Message {
            new: text(key.1, "cus", client, "yes, one more thing"),
            role: Role::Customer,
        };
        let steps = sequencer.submit(key.0.clone(), customer("m2"), 4);
        assert_eq!(activities(&steps), vec![(4, Status::Open)]);
        // That write fails after the message landed but not the activity:
        // loaded again, the customer's retry reopens it.
        sequencer.written(false);
        let resolved = Lifecycle {
            status: Status::Resolved,
            ..Lifecycle::default()
        };
        let landed: Vec<Message> = (1..=3)
            .map(|seq| text(key.1, "cus", "m2", "x").at(Seq::new(seq)))
            .collect();
        assert_eq!(
            sequencer.submit(key.0.clone(), customer("m2"), 5),
            vec![Step::Load(key.clone())]
        );
        let steps = sequencer.loaded(&key, &landed, resolved);
        assert_eq!(activities(&steps), vec![(4, Status::Open)]);
        // The retry is answered with its message once the activity is
        // stored, and before the activity is announced.
        let steps = sequencer.written(true);
        assert!(
            matches!(&steps[..], [Step::Duplicate { seq, waiter: 5, .. }, Step::Stored(s)]
            if seq.get() == 3 && s[0].waiters.is_empty())
        );
        // Too many tags is refused, and nothing is numbered.
        let tags = (0..=Limits::default().max_tags)
            .map(|i| crate::ids::Tag::new(format!("t{i}")).unwrap())
            .collect::<Vec<_>>();
        let (first, rest) = tags.split_at(10);
        let add = |tags: &[crate::ids::Tag]| LifecycleChange {
            add_tags: tags.iter().cloned().collect(),
            ..LifecycleChange::default()
        };
        sequencer.submit(key.0.clone(), change(key.1, "t1", add(first)), 6);
        sequencer.written(true);
        let steps = sequencer.submit(key.0.clone(), change(key.1, "t2", add(rest)), 7);
        assert!(
            matches!(&steps[..], [Step::Refused { why: Refusal::Invalid(why), waiter: 7 }] if why.field == "add_tags")
        );
    }

    #[test]
    fn a_bot_is_refused_while_people_have_control_and_a_customer_asks_for_them() {
        let mut sequencer: Sequencer<u32, Fixed> = Sequencer::new(
            SequencerConfig::default(),
            Limits::default(),
            Fixed::default(),
        );
        let key = (TenantId::new("acme").unwrap(), ConversationId::generate());
        let from = |role, sender, client, body| Submission::Message {
            new: text(key.1, sender, client, body),
            role,
        };
        sequencer.submit(
            key.0.clone(),
            from(Role::Bot, "bot", "b1", "Hi! How can I help?"),
            1,
        );
        assert!(activities(&sequencer.loaded(&key, &[], Lifecycle::default())).is_empty());
        sequencer.written(true);
        // The customer asks for a person: a request follows, in one write.
        let steps = sequencer.submit(
            key.0.clone(),
            from(Role::Customer, "cus", "c1", "Agent!"),
            2,
        );
        let write = match &steps[..] {
            [Step::Write(batch)] => batch.clone(),
            other => panic!("expected one write, got {other:?}"),
        };
        assert!(matches!(&write[1].1.content, Content::Activity(l) if l.control_requested));
        sequencer.written(true);
        // The bot passes control; then it may not send, and people may.
        let pass = LifecycleChange {
            owner: Some(crate::lifecycle::Owner::Inbox),
            ..LifecycleChange::default()
        };
        sequencer.submit(key.0.clone(), change(key.1, "p1", pass), 3);
        sequencer.written(true);
        let steps = sequencer.submit(key.0.clone(), from(Role::Bot, "bot", "b2", "Still me"), 4);
        assert_eq!(
            steps,
            vec![Step::Refused {
                why: Refusal::InboxOwns,
                waiter: 4
            }]
        );
        let steps = sequencer.submit(key.0.clone(), from(Role::Agent, "ann", "a1", "Ann here"), 5);
        assert!(matches!(&steps[..], [Step::Write(batch)] if batch.len() == 1));
    }

    #[test]
    fn a_reply_quotes_only_what_is_already_in_the_conversation() {
        let mut sequencer: Sequencer<u32, Fixed> = Sequencer::new(
            SequencerConfig::default(),
            Limits::default(),
            Fixed::default(),
        );
        let key = (TenantId::new("acme").unwrap(), ConversationId::generate());
        let reply = |client, to| Submission::Message {
            new: NewMessage {
                content: Content::Reply(crate::Reply {
                    text: "About that:".into(),
                    to: Seq::new(to),
                }),
                ..text(key.1, "ann", client, "")
            },
            role: Role::Agent,
        };
        sequencer.submit(key.0.clone(), reply("r0", 1), 1);
        let steps = sequencer.loaded(&key, &[], Lifecycle::default());
        assert!(
            matches!(&steps[..], [Step::Refused { why: Refusal::Invalid(why), waiter: 1 }] if why.field == "content.reply.to_seq"),
            "{steps:?}"
        );
        let question = Submission::Message {
            new: text(key.1, "cus", "c1", "Does it ship today?"),
            role: Role::Customer,
        };
        sequencer.submit(key.0.clone(), question, 2);
        sequencer.written(true);
        let steps = sequencer.submit(key.0.clone(), reply("r1", 1), 3);
        assert!(matches!(&steps[..], [Step::Write(batch)] if batch[0].1.seq == Seq::new(2)));
    }
}
