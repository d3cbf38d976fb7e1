//! What the core is told about each message, and what it makes of it.

use natter_core::{Content, ConversationId, Lifecycle, Seq, TenantId, Timestamp, UserId};

/// The `form_id` of the satisfaction survey a customer answers when their
/// conversation is resolved: a [`natter_core::FormReply`] with a `score`
/// of 1 to 5 and an optional `comment`.
pub const CSAT_FORM_ID: &str = natter_core::CSAT_FORM_ID;

/// Who sent a message, as the caller knows from the sender's role.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Side {
    Customer,
    /// A person answering for the business.
    Agent(UserId),
    Bot(UserId),
    /// A backend acting for the tenant; its messages count under their own
    /// side and are never a first response.
    Service,
}

/// One message of the durable stream, as the analytics core sees it.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub tenant: &'a TenantId,
    pub conversation: ConversationId,
    pub seq: Seq,
    /// When the message was sent (its `sent_at`).
    pub at: Timestamp,
    pub side: &'a Side,
    pub content: &'a Content,
}

/// What a message means to the figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal<'a> {
    /// A message from the customer (any content but a CSAT answer).
    Customer,
    /// A message from a person of the business.
    Agent(&'a UserId),
    Bot(&'a UserId),
    Service,
    /// The conversation's lifecycle after a change.
    Activity(&'a Lifecycle),
    /// The customer's satisfaction score, 1 to 5, and comment.
    Csat {
        score: u8,
        comment: Option<&'a str>,
    },
}

/// Classifies a message. An activity is one whoever sent it; a CSAT answer
/// is one only from the customer and with a score of 1 to 5 (anything else
/// counts as the sender's message); a blank comment is no comment.
pub fn classify<'a>(side: &'a Side, content: &'a Content) -> Signal<'a> {
    if let Content::Activity(lifecycle) = content {
        return Signal::Activity(lifecycle);
    }
    match side {
        Side::Customer => csat(content).unwrap_or(Signal::Customer),
        Side::Agent(user) => Signal::Agent(user),
        Side::Bot(user) => Signal::Bot(user),
        Side::Service => Signal::Service,
    }
}

fn csat(content: &Content) -> Option<Signal<'_>> {
    let Content::FormReply(reply) = content else {
        return None;
    };
    if reply.form_id != CSAT_FORM_ID {
        return None;
    }
    let score: u8 = reply.values.get("score")?.trim().parse().ok()?;
    if !(1..=5).contains(&score) {
        return None;
    }
    let comment = reply
        .values
        .get("comment")
        .map(|c| c.trim())
        .filter(|c| !c.is_empty());
    Some(Signal::Csat { score, comment })
}
