use natter_core::{ConversationId, Seq};
use thiserror::Error;

/// What the analytics core refuses.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// The message is further on than the next one the facts expect: the
    /// shell must read the ones in between first.
    #[error("gap in conversation {conversation}: expected seq {expected}, got {got}")]
    Gap {
        conversation: ConversationId,
        expected: Seq,
        got: Seq,
    },
    /// The message belongs to another conversation than the facts.
    #[error("message of conversation {got} applied to the facts of {facts}")]
    Foreign {
        facts: ConversationId,
        got: ConversationId,
    },
    /// A rollup would go below zero: what is subtracted was never added,
    /// so the rollups and the facts disagree (see [`crate::rebuild`]).
    #[error("rollup underflow: {what} subtracted more than was added")]
    Underflow { what: &'static str },
    /// Writing CSV failed.
    #[error("csv: {0}")]
    Csv(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
