//! The support desk's routing rules: which agent is offered which waiting
//! conversation, and when.
//!
//! A tenant's desk has teams, each with a queue and a [`Strategy`], and
//! agents who belong to teams and have skills, a capacity and a
//! [`Presence`]. A customer's conversation waits in its team's queue,
//! most urgent first and oldest first within a priority, and is offered to
//! one eligible agent at a time, who accepts it, declines it or lets the
//! offer time out. [`Schedule`] holds the business hours that decide whether
//! the desk takes conversations at all.
//!
//! This is a plain state machine, like `natter_core::handoff`: the service
//! feeds a [`Router`] what happens, with the time it happened, and carries
//! out the [`Step`]s it returns. It reads no clock and does no I/O, so every
//! rule is tested by driving it directly, and a property test drives it
//! through random days at the desk.

mod hours;
mod router;

use std::collections::BTreeSet;

use natter_core::{ConversationId, Timestamp, UserId};
use natter_core::{Priority, TeamId};
use thiserror::Error;

pub use hours::{Date, Opening, Schedule};
pub use router::{AgentView, Router, Step};

/// Whether an agent takes conversations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Presence {
    /// Gets offers, up to their capacity.
    Online,
    /// Keeps their conversations but gets no offers.
    Away,
    /// Holds nothing: their conversations go back to the queue.
    Offline,
}

/// How a team picks among the agents eligible for a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// The agent holding the fewest conversations (assigned and offered);
    /// ties go round-robin.
    LeastBusy,
    /// The next agent, in id order, after the one the team last offered a
    /// conversation to.
    RoundRobin,
}

/// A team's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Team {
    pub id: TeamId,
    pub strategy: Strategy,
    /// How long an agent has to accept an offer before it goes to the next.
    pub offer_timeout_ms: u64,
}

/// An agent's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub id: UserId,
    pub teams: BTreeSet<TeamId>,
    pub skills: BTreeSet<String>,
    /// The most conversations they hold at once, counting outstanding
    /// offers.
    pub capacity: u32,
}

/// What a conversation asks of the desk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub conversation: ConversationId,
    pub team: TeamId,
    pub priority: Priority,
    /// An agent needs every one of these.
    pub skills: BTreeSet<String>,
    /// When it first asked: its place in the queue, kept when it goes back
    /// to the queue so it is not overtaken by later arrivals.
    pub since: Timestamp,
}

/// Where a waiting conversation stands in its team's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// Conversations of the same team to be served before it.
    pub ahead: u32,
    /// See [`Router`] for the estimate.
    pub estimated_wait_ms: u64,
}

/// A call the router's state does not allow; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RoutingError {
    #[error("unknown team {0}")]
    UnknownTeam(TeamId),
    #[error("unknown agent {0}")]
    UnknownAgent(UserId),
    #[error("unknown conversation {0}")]
    UnknownConversation(ConversationId),
    #[error("conversation {0} is routed already")]
    AlreadyRouted(ConversationId),
    #[error("conversation {conversation} is not offered to agent {agent}")]
    NotOffered {
        conversation: ConversationId,
        agent: UserId,
    },
    #[error("agent {0} is not online with room for another conversation")]
    Unavailable(UserId),
}

pub type Result<T, E = RoutingError> = std::result::Result<T, E>;
