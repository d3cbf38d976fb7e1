//! Natter's bot SDK: what an internal service needs to answer customers as
//! a bot, over the public API only. A [`Bot`] holds one gateway session
//! (`GatewayService.Connect`) with a `bot` token: it receives the messages
//! of the bot's conversations as they are stored, replies, and passes
//! control to the business's people through the handover protocol.
//!
//! The session is kept up in the background: when it drops, the bot
//! reconnects with backoff and resumes from the last update it took, so a
//! message is never missed. Replies carry the caller's idempotency key, so
//! one sent again after a lost answer is stored once.
//!
//! While people have control of a conversation the server refuses the
//! bot's replies ([`Error::PeopleHaveControl`]); [`Incoming::bot_answers`]
//! says so before the bot tries, from the lifecycle changes it has seen.

mod session;

use std::time::Duration;

use natter_proto::v1;
use tokio::sync::mpsc;

pub use session::Bot;

/// Where and as whom the bot connects.
#[derive(Debug, Clone)]
pub struct Config {
    /// The gateway's gRPC endpoint, such as `http://127.0.0.1:7000`.
    pub gateway: String,
    /// A JWT with the `bot` role, minted by the business.
    pub token: String,
    /// The bot's device id: stable across restarts, so the gateway keeps
    /// its place in the update log.
    pub device_id: String,
    /// The update the bot last took (0: everything the log still holds).
    pub cursor: u64,
    /// How long a reply or a handover waits for the server's answer.
    pub timeout: Duration,
}

impl Config {
    pub fn new(gateway: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            gateway: gateway.into(),
            token: token.into(),
            device_id: "bot".into(),
            cursor: 0,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A message someone else wrote in one of the bot's conversations.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub message: v1::Message,
    /// The sender's role, if the bot has seen them join.
    pub role: Option<v1::Role>,
    /// Whether the bot has control of the conversation (the bot owns it),
    /// as far as the lifecycle changes the bot has seen tell.
    pub bot_answers: bool,
    /// The update's cursor: where to resume from ([`Config::cursor`]).
    pub cursor: u64,
}

impl Incoming {
    pub fn conversation_id(&self) -> &str {
        &self.message.conversation_id
    }

    /// The words of a text, a reply or a tapped quick reply.
    pub fn text(&self) -> Option<&str> {
        use v1::message_content::Kind;
        match self.message.content.as_ref()?.kind.as_ref()? {
            Kind::Text(text) => Some(text),
            Kind::Reply(reply) => Some(&reply.text),
            Kind::Postback(postback) => Some(&postback.title),
            _ => None,
        }
    }

    /// Whether a customer wrote it.
    pub fn from_customer(&self) -> bool {
        self.role == Some(v1::Role::Customer)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the gateway: {0}")]
    Connect(String),
    #[error("the gateway refused the bot's session: {0}")]
    Refused(String),
    #[error("people of the inbox have control of the conversation")]
    PeopleHaveControl,
    #[error("the server refused ({code}, {reason}): {message}")]
    Server {
        code: i32,
        reason: String,
        message: String,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the bot has stopped")]
    Stopped,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<v1::ErrorFrame> for Error {
    fn from(e: v1::ErrorFrame) -> Self {
        if e.reason == "INBOX_HAS_CONTROL" {
            return Error::PeopleHaveControl;
        }
        Error::Server {
            code: e.code,
            reason: e.reason,
            message: e.message,
        }
    }
}

/// The receiving end of a bot's messages.
type Inbox = mpsc::Receiver<Incoming>;
