//! Identifier newtypes. Each constructor validates, so a value of these
//! types is always well formed.
//!
//! Conversation and message ids are UUIDv7 (RFC 9562): 48 bits of Unix
//! milliseconds then 74 random bits. They sort by creation time, need no
//! coordination to mint, map onto CQL's native `uuid` type, and are the
//! standard shape other systems already parse.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use crate::error::{Invalid, Result};

/// Checks an opaque textual id: non-empty, bounded, printable, no spaces.
fn check_text_id(field: &'static str, value: &str, max_bytes: usize) -> Result<()> {
    if value.is_empty() {
        return Err(Invalid::new(field, "must not be empty"));
    }
    if value.len() > max_bytes {
        return Err(Invalid::new(
            field,
            format!("must be at most {max_bytes} bytes, got {}", value.len()),
        ));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Invalid::new(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub const MAX_BYTES: usize = $max;

            pub fn new(value: impl Into<String>) -> Result<Self> {
                let value = value.into();
                check_text_id($field, &value, Self::MAX_BYTES)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = Invalid;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }
    };
}

text_id!(
    /// One business. Every other record lives inside exactly one tenant.
    TenantId, "tenant_id", 64
);
text_id!(
    /// A user within a tenant, as named by the tenant's identity provider.
    UserId, "user_id", 128
);
text_id!(
    /// One of a user's devices (a browser, a phone, a tablet).
    DeviceId, "device_id", 128
);
text_id!(
    /// The sender's own id for a message; the idempotency key of a send.
    ClientMessageId, "client_message_id", 128
);
text_id!(
    /// A team (a queue of conversations) within a tenant, named by the
    /// business.
    TeamId, "team_id", 64
);
text_id!(
    /// A label on a conversation, such as "billing" or "vip".
    Tag, "tag", 64
);

/// The user the desk acts as, with the service role: the sender of what it
/// writes into conversations. The sequencer takes content only the desk
/// writes (payment requests and updates) from this sender alone, and no
/// token may name it, so only the desk's own commands on the bus do.
pub const DESK_USER: &str = "desk";

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh UUIDv7 from the clock and the OS random source.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            /// Accepts any UUID a client proposes except the nil one.
            pub fn from_uuid(uuid: Uuid) -> Result<Self> {
                if uuid.is_nil() {
                    return Err(Invalid::new($field, "must not be the nil uuid"));
                }
                Ok(Self(uuid))
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = Invalid;
            fn from_str(s: &str) -> Result<Self> {
                let uuid = Uuid::parse_str(s)
                    .map_err(|e| Invalid::new($field, format!("not a uuid: {e}")))?;
                Self::from_uuid(uuid)
            }
        }
    };
}

uuid_id!(
    /// A conversation; UUIDv7, so ids sort by creation time.
    ConversationId, "conversation_id"
);
uuid_id!(
    /// A stored message; UUIDv7, so ids sort by the time the store accepted it.
    MessageId, "message_id"
);
uuid_id!(
    /// An agent's internal note on a conversation; UUIDv7, so a
    /// conversation's notes sort by when they were written.
    NoteId, "note_id"
);
uuid_id!(
    /// A payment the desk asked a customer for; UUIDv7, so a
    /// conversation's payments sort by when they were requested.
    PaymentId, "payment_id"
);

/// A message's position in its conversation: 1, 2, 3, … with no gaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(u64);

impl Seq {
    /// Before the first message; a read marker at `ZERO` has read nothing.
    pub const ZERO: Seq = Seq(0);

    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    pub const fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A position in one user's update log: the number of updates a device has
/// seen. Positions are 1, 2, 3, … with no gaps; `ZERO` is the beginning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cursor(u64);

impl Cursor {
    pub const ZERO: Cursor = Cursor(0);

    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    pub const fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Milliseconds since the Unix epoch, UTC. Passed in by the caller: the
/// domain never reads the clock itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_ids_reject_empty_long_and_spaced_values() {
        assert_eq!(UserId::new("").unwrap_err().field, "user_id");
        assert!(UserId::new("a".repeat(129)).is_err());
        assert!(UserId::new("a b").is_err());
        assert!(TenantId::new("acme").is_ok());
    }

    #[test]
    fn uuid_ids_are_time_sortable_and_reject_nil() {
        let a = MessageId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = MessageId::generate();
        assert!(a < b);
        assert!(MessageId::from_uuid(Uuid::nil()).is_err());
        assert_eq!(a.to_string().parse::<MessageId>().unwrap(), a);
    }
}
