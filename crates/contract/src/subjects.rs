//! Core NATS subjects (not durable). Ids become subject tokens through
//! [`token`], so any id is safe in a subject.

use natter_core::{ConversationId, TenantId, UserId};

/// Storage answers `MarkReadCommand` here (queue group `storage`).
pub const MARK_READ: &str = "storage.read";
/// Storage answers `MembersQuery` here (queue group `storage`).
pub const MEMBERS: &str = "storage.members";
/// Storage answers `MessagesQuery` here (queue group `storage`).
pub const MESSAGES: &str = "storage.messages";
/// Sync answers `DeviceHello` here (queue group `sync`).
pub const DEVICE_HELLO: &str = "sync.hello";
/// Sync records `CursorAck`s published here (queue group `sync`).
pub const CURSOR_ACK: &str = "sync.cursor";
/// Fanout expands `EphemeralSignal`s published here (queue group `fanout`).
pub const EPHEMERAL: &str = "fanout.ephemeral";

/// Where a user's devices get live `ServerFrame`s: updates, typing,
/// presence. Every gateway holding a session of the user subscribes.
pub fn live(tenant: &TenantId, user: &UserId) -> String {
    format!("live.{}.{}", token(tenant.as_str()), token(user.as_str()))
}

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
    fn live_subjects_keep_users_apart() {
        let t = TenantId::new("acme").unwrap();
        let dotted = UserId::new("a.b").unwrap();
        let nested = UserId::new("a").unwrap();
        assert_eq!(live(&t, &dotted), "live.acme.a~2Eb");
        assert_ne!(live(&t, &dotted), live(&t, &nested));
        natter_bus::check_subject(&live(&t, &dotted), false).unwrap();
    }
}
