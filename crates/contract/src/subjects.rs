//! Core NATS subjects (not durable). Ids become subject tokens through
//! [`token`], so any id is safe in a subject.

use natter_core::{ConversationId, TenantId, UserId};

/// Storage answers `MarkReadCommand` here (queue group `storage`).
pub const MARK_READ: &str = "storage.read";
/// Storage answers `MembersQuery` here (queue group `storage`).
pub const MEMBERS: &str = "storage.members";
/// Storage answers `MessagesQuery` here (queue group `storage`).
pub const MESSAGES: &str = "storage.messages";
/// Any sync process answers `DeviceHello` here (queue group `sync`), for
/// partitions nobody holds at the moment.
pub const DEVICE_HELLO: &str = "sync.hello";
/// Sync records `CursorAck`s published here (queue group `sync`).
pub const CURSOR_ACK: &str = "sync.cursor";
/// Fanout expands `EphemeralSignal`s published here (queue group `fanout`).
pub const EPHEMERAL: &str = "fanout.ephemeral";

/// Storage answers `AddMembersCommand` here (queue group `storage`).
pub const ADD_MEMBERS: &str = "storage.members.add";

/// The desk's holder answers `DeskCommand` here; only the holder
/// subscribes, so nobody answers while the desk changes hands.
pub const DESK_CALL: &str = "desk.call";

/// Gateways publish `AgentSessions` here for the desk's holder.
pub const DESK_SESSIONS: &str = "desk.sessions";

/// A new holder of the desk publishes here (empty payload); every gateway
/// answers by publishing its full `AgentSessions` at once.
pub const DESK_HELD: &str = "desk.held";

/// A payment provider's verified word about a payment, from the desk
/// process whose HTTP endpoint received it to the holder: a
/// `PaymentReport` request (queue group `desk`), answered with a
/// `PaymentReportOutcome`.
pub const DESK_PAYMENT: &str = "desk.payment";

/// Where gateway `id` gets `LiveFrames` for its sessions' users from the
/// holders of their partitions: one subscription per gateway.
pub fn gateway(id: &str) -> String {
    format!("gateway.{}", token(id))
}

/// Where the holder of user partition `partition` answers `DeviceHello`
/// and starts sending the user's live frames to the device's gateway.
pub fn hello(partition: u32) -> String {
    format!("sync.hello.{partition}")
}

/// Where the holder of user partition `partition` takes `Attach`es.
pub fn attach(partition: u32) -> String {
    format!("sync.attach.{partition}")
}

/// Where the holder of user partition `partition` takes `LiveFrames` of
/// signals (typing, presence) to pass on to its users' gateways.
pub fn signals(partition: u32) -> String {
    format!("sync.signals.{partition}")
}

/// Where a new holder of user partition `partition` announces itself
/// (`PartitionHeld`).
pub fn held(partition: u32) -> String {
    format!("sync.held.{partition}")
}

/// Every subject [`held`] makes.
pub const ALL_HELD: &str = "sync.held.*";

/// Where fanout publishes each new message of a conversation as a
/// `ServerFrame`, for the gateways whose devices watch it.
pub fn room(tenant: &TenantId, conversation: ConversationId) -> String {
    format!("room.{}.{}", token(tenant.as_str()), conversation)
}

/// Where sync announces a revoked device of the user (`DeviceRevoked`).
pub fn revoked(tenant: &TenantId, user: &UserId) -> String {
    format!(
        "revoked.{}.{}",
        token(tenant.as_str()),
        token(user.as_str())
    )
}

/// Where the sequencer of conversation partition `partition` takes
/// `SendCommand` requests; only the holder of its lease subscribes.
pub fn sequencer(partition: u32) -> String {
    format!("storage.seq.{partition}")
}

/// Where the holder of user partition `partition` takes `UserEvents`
/// requests: the one process that numbers those users' logs.
pub fn append(partition: u32) -> String {
    format!("sync.append.{partition}")
}

/// Where any sync process answers `UpdatesQuery` from the store (queue
/// group `sync`), for partitions nobody holds at the moment.
pub const UPDATES: &str = "sync.updates";

/// Where the holder of user partition `partition` answers `UpdatesQuery`:
/// the one process that numbers those users' logs, so a page that says it
/// reaches the head leaves nothing out that was published live.
pub fn updates(partition: u32) -> String {
    format!("sync.updates.{partition}")
}

/// The partition key of a conversation: its sequencer and its EVENTS
/// partition.
pub fn conversation_key(id: ConversationId) -> [u8; 16] {
    id.as_uuid().into_bytes()
}

/// The partition key of a user: the holder of its log.
pub fn user_key(tenant: &TenantId, user: &UserId) -> Vec<u8> {
    let mut key = Vec::with_capacity(tenant.as_str().len() + user.as_str().len() + 1);
    key.extend_from_slice(tenant.as_str().as_bytes());
    key.push(0);
    key.extend_from_slice(user.as_str().as_bytes());
    key
}

/// An id as one subject token: ASCII letters, digits, `-` and `_` stay,
/// every other byte becomes `~XX`. Injective, so two ids never share a
/// subject, and free of `.`, `*`, `>` and whitespace.
pub fn token(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("~{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_escape_subject_syntax_and_stay_distinct() {
        assert_eq!(token("alice"), "alice");
        assert_eq!(token("a.b"), "a~2Eb");
        assert_eq!(token("a b*>"), "a~20b~2A~3E");
        assert_ne!(token("a~2Eb"), token("a.b"));
        assert_eq!(token("ü"), "~C3~BC");
    }

    #[test]
    fn user_subjects_keep_users_apart() {
        let t = TenantId::new("acme").unwrap();
        let dotted = UserId::new("a.b").unwrap();
        let nested = UserId::new("a").unwrap();
        assert_eq!(revoked(&t, &dotted), "revoked.acme.a~2Eb");
        assert_ne!(revoked(&t, &dotted), revoked(&t, &nested));
        natter_bus::check_subject(&revoked(&t, &dotted), false).unwrap();
        natter_bus::check_subject(&gateway("gw 1.x"), false).unwrap();
    }
}
