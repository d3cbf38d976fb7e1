//! The pure core of support analytics.
//!
//! Every figure is computed from the durable stream of conversation
//! messages (lifecycle changes arrive there too, as activity messages),
//! never by scanning message tables. A service feeds each message, in seq
//! order per conversation, to that conversation's [`ConversationFacts`]
//! (one small record per conversation, the unit of persistence), which
//! answers with the [`Delta`] the message makes to the hourly [`Rollup`]s.
//! [`query`] reads the rollups over a time range, grouped by tenant, team
//! or agent and by hour, day, hour of the day or the whole range, and
//! [`to_csv`] writes the rows out.
//!
//! Like `natter_core::handoff` and `natter_routing`, this is plain code:
//! no I/O, no clock, no async. The caller says who sent each message
//! ([`Side`]) and when ([`Observed::at`]).
//!
//! # Exact after a crash
//!
//! Two invariants make the figures exact however often the stream is
//! replayed:
//!
//! 1. **Facts apply each seq once.** Facts hold the last seq they applied;
//!    a message at or below it is a replay and changes nothing
//!    ([`Applied::Replay`]), one past it is applied, and one further on is
//!    a gap ([`Error::Gap`]): the shell reads the missing messages first.
//! 2. **Rollups are a function of the facts.** The rollup of an hour key is
//!    the sum, over every conversation, of [`ConversationFacts::contributions`]
//!    for that key. A [`Delta`] is exactly the difference between a
//!    conversation's contributions after and before a message (computed
//!    directly when the message only adds to a count), and
//!    [`Rollup::subtract`] is exact (durations are kept as multisets, not
//!    as summaries), so the sum can be kept up to date incrementally.
//!
//! The shell keeps the second invariant by writing a conversation's facts
//! and the rollup rows its delta touches in **one** store write. A crash
//! before that write loses both, and the redelivered message is applied
//! again; a crash after it leaves both, and the redelivery is a replay.
//! Should the two ever disagree (a store restored from separate backups),
//! [`rebuild`] recomputes every rollup from the stored facts.
//!
//! # What the shell does with each message
//!
//! 1. Read the conversation's facts (or [`ConversationFacts::new`]).
//! 2. [`ConversationFacts::apply`] it, with the sender's [`Side`] and the
//!    tenant's [`SlaTargets`]. [`Applied::Replay`]: write nothing, ack.
//!    [`Error::Gap`]: read the missing messages from the conversation and
//!    apply them first.
//! 3. [`Applied::Advanced`]: read the rollup rows of [`Delta::keys`], turn
//!    each into [`Change::apply_to`]'s result (`None`: delete the row), and
//!    write them with the facts in one write; then ack.
//!
//! Rollup rows are shared by conversations, so their read-modify-write
//! needs one writer at a time per tenant (a lease holder, as the desk
//! routes, or one consumer per stream partition writing rows of its own):
//! two writers could each add to the row they read. Facts are built from
//! seq 1; a conversation older than the analytics is either filled in by
//! reading its messages from the start or, as the desk does, counted from
//! the first message seen ([`ConversationFacts::starting_after`]).

mod error;
mod facts;
mod observe;
mod query;
mod rollup;
mod serde_ids;
#[cfg(any(test, feature = "simulate"))]
pub mod simulate;
#[cfg(test)]
mod tests;

pub use error::{Error, Result};
pub use facts::{
    Applied, ConversationFacts, Csat, FirstResponse, Mark, MessageCounts, SlaTargets, Timed,
};
pub use observe::{CSAT_FORM_ID, Observed, Side, Signal, classify};
pub use query::{Group, Period, PeriodKey, Query, Row, query, sort_busiest, to_csv};
pub use rollup::{Change, Delta, HourKey, Rollup, Rollups, Samples, hour_of, rebuild};
