//! The value encodings of the tables: fields in a fixed order, integers
//! big-endian and fixed-width, strings as a `u32` byte length then UTF-8.
//! What a key already says (tenant, ids, seq) is not repeated in the value.
//! Protobuf content, when a record has it, comes last and runs to the end.
//!
//! A value that does not decode is reported as [`StoreError::Corrupt`].

use crate::fields::{Damaged, Reader, Writer, read};
use natter_core::{
    ClientMessageId, ConversationId, Cursor, Device, DeviceId, Lifecycle, Member, Message,
    MessageId, Role, Seq, TenantId, Timestamp, UserId,
};
use natter_proto::codec;
use natter_store::{Result, StoreError};
use uuid::Uuid;

/// A damaged value is a corrupt record to the store.
fn corrupt(damaged: Damaged) -> StoreError {
    StoreError::Corrupt(damaged.to_string())
}

/// A domain value parsed from a string field; a stored value that no
/// longer parses is corruption, not invalid input.
fn parse<'a, T>(
    r: &mut Reader<'a>,
    parse: impl FnOnce(&'a str) -> natter_core::Result<T>,
) -> Result<T, Damaged> {
    let raw = r.str()?;
    parse(raw).map_err(|e| r.damaged(e))
}

/// A conversation id from its key. Ids are never nil, so one that is was
/// not written by this store.
pub(crate) fn conversation_id(raw: u128) -> Result<ConversationId> {
    ConversationId::from_uuid(Uuid::from_u128(raw))
        .map_err(|e| StoreError::Corrupt(format!("conversation key: {e}")))
}

pub(crate) fn uuid_key(id: ConversationId) -> u128 {
    id.as_uuid().as_u128()
}

/// Everything of a [`natter_core::Conversation`] but its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConversationRecord {
    pub(crate) subject: String,
    pub(crate) created_by: UserId,
    pub(crate) created_at: Timestamp,
    pub(crate) last_seq: Seq,
    pub(crate) member_count: u64,
    pub(crate) lifecycle: Lifecycle,
}

impl ConversationRecord {
    /// The lifecycle last, as protobuf; a record written before
    /// lifecycles existed ends without one and reads as the default.
    pub(crate) fn encode(&self) -> Vec<u8> {
        Writer::default()
            .str(&self.subject)
            .str(self.created_by.as_str())
            .i64(self.created_at.as_millis())
            .u64(self.last_seq.get())
            .u64(self.member_count)
            .rest(&codec::encode_lifecycle(&self.lifecycle))
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        read("conversation", bytes, |r| {
            Ok(Self {
                subject: r.str()?.to_owned(),
                created_by: parse(r, UserId::new)?,
                created_at: Timestamp::from_millis(r.i64()?),
                last_seq: Seq::new(r.u64()?),
                member_count: r.u64()?,
                lifecycle: match r.rest() {
                    [] => Lifecycle::default(),
                    rest => codec::decode_lifecycle(rest)
                        .map_err(|e| r.damaged(format!("lifecycle: {e}")))?,
                },
            })
        })
        .map_err(corrupt)
    }

    pub(crate) fn into_conversation(
        self,
        tenant: &TenantId,
        id: ConversationId,
    ) -> natter_core::Conversation {
        natter_core::Conversation {
            id,
            tenant_id: tenant.clone(),
            subject: self.subject,
            created_by: self.created_by,
            created_at: self.created_at,
            last_seq: self.last_seq,
            member_count: self.member_count,
            lifecycle: self.lifecycle,
        }
    }
}

fn role_code(role: Role) -> u8 {
    match role {
        Role::Customer => 1,
        Role::Agent => 2,
        Role::Bot => 3,
        Role::Service => 4,
    }
}

fn role_from_code(r: &Reader<'_>, code: u8) -> Result<Role, Damaged> {
    match code {
        1 => Ok(Role::Customer),
        2 => Ok(Role::Agent),
        3 => Ok(Role::Bot),
        4 => Ok(Role::Service),
        other => Err(r.damaged(format!("has unknown role code {other}"))),
    }
}

/// A member without its user id, which is in the key.
pub(crate) fn encode_member(member: &Member) -> Vec<u8> {
    Writer::default()
        .u8(role_code(member.role))
        .i64(member.joined_at.as_millis())
        .u64(member.read_seq.get())
        .finish()
}

pub(crate) fn decode_member(user_id: UserId, bytes: &[u8]) -> Result<Member> {
    read("member", bytes, |r| {
        let code = r.u8()?;
        Ok(Member {
            user_id,
            role: role_from_code(r, code)?,
            joined_at: Timestamp::from_millis(r.i64()?),
            read_seq: Seq::new(r.u64()?),
        })
    })
    .map_err(corrupt)
}

/// A message without its conversation and seq, which are in the key; the
/// content last, as protobuf.
pub(crate) fn encode_message(message: &Message) -> Vec<u8> {
    Writer::default()
        .u128(message.id.as_uuid().as_u128())
        .str(message.sender_id.as_str())
        .str(message.client_message_id.as_str())
        .i64(message.sent_at.as_millis())
        .rest(&codec::encode_content(&message.content))
}

pub(crate) fn decode_message(
    conversation_id: ConversationId,
    seq: Seq,
    bytes: &[u8],
) -> Result<Message> {
    read("message", bytes, |r| {
        let id = MessageId::from_uuid(Uuid::from_u128(r.u128()?)).map_err(|e| r.damaged(e))?;
        let sender_id = parse(r, UserId::new)?;
        let client_message_id = parse(r, ClientMessageId::new)?;
        let sent_at = Timestamp::from_millis(r.i64()?);
        let content =
            codec::decode_content(r.rest()).map_err(|e| r.damaged(format!("content: {e}")))?;
        Ok(Message {
            id,
            conversation_id,
            seq,
            sender_id,
            client_message_id,
            sent_at,
            content,
        })
    })
    .map_err(corrupt)
}

/// A device without tenant, user and device id, which are in the key.
pub(crate) fn encode_device(device: &Device) -> Vec<u8> {
    Writer::default()
        .str(&device.label)
        .u64(device.cursor.get())
        .i64(device.last_seen.as_millis())
        .u8(u8::from(device.revoked))
        .finish()
}

pub(crate) fn decode_device(
    tenant_id: &TenantId,
    user_id: &UserId,
    device_id: DeviceId,
    bytes: &[u8],
) -> Result<Device> {
    read("device", bytes, |r| {
        let label = r.str()?.to_owned();
        let cursor = Cursor::new(r.u64()?);
        let last_seen = Timestamp::from_millis(r.i64()?);
        let revoked = match r.u8()? {
            0 => false,
            1 => true,
            other => return Err(r.damaged(format!("has revoked flag {other}"))),
        };
        Ok(Device {
            tenant_id: tenant_id.clone(),
            user_id: user_id.clone(),
            device_id,
            label,
            cursor,
            last_seen,
            revoked,
        })
    })
    .map_err(corrupt)
}

/// A lease on a partition, without the scope and partition, which are the
/// key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseRecord {
    pub(crate) owner: String,
    pub(crate) epoch: u64,
    pub(crate) until: Timestamp,
}

impl LeaseRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        Writer::default()
            .str(&self.owner)
            .u64(self.epoch)
            .i64(self.until.as_millis())
            .finish()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        read("lease", bytes, |r| {
            Ok(Self {
                owner: r.str()?.to_owned(),
                epoch: r.u64()?,
                until: Timestamp::from_millis(r.i64()?),
            })
        })
        .map_err(corrupt)
    }
}

/// Where a user's update log stands: updates `floor + 1 ..= head` are
/// retained; everything up to `floor` has been trimmed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LogHead {
    pub(crate) head: Cursor,
    pub(crate) floor: Cursor,
}

impl LogHead {
    pub(crate) fn encode(self) -> Vec<u8> {
        Writer::default()
            .u64(self.head.get())
            .u64(self.floor.get())
            .finish()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        read("log head", bytes, |r| {
            let head = Self {
                head: Cursor::new(r.u64()?),
                floor: Cursor::new(r.u64()?),
            };
            if head.floor > head.head {
                return Err(r.damaged(format!("has floor {} above head {}", head.floor, head.head)));
            }
            Ok(head)
        })
        .map_err(corrupt)
    }
}

#[cfg(test)]
mod tests {
    use natter_core::Content;

    use super::*;

    #[test]
    fn records_round_trip() {
        let conversation = ConversationRecord {
            subject: "Order ✓".into(),
            created_by: UserId::new("alice").unwrap(),
            created_at: Timestamp::from_millis(-5),
            last_seq: Seq::new(7),
            member_count: 2,
            lifecycle: Lifecycle {
                status: natter_core::Status::Pending,
                ..Lifecycle::default()
            },
        };
        assert_eq!(
            ConversationRecord::decode(&conversation.encode()).unwrap(),
            conversation
        );
        // Written before lifecycles: the default.
        let older = Writer::default()
            .str("Order")
            .str("alice")
            .i64(1)
            .u64(0)
            .u64(1)
            .finish();
        assert_eq!(
            ConversationRecord::decode(&older).unwrap().lifecycle,
            Lifecycle::default()
        );

        let member = Member {
            user_id: UserId::new("bob").unwrap(),
            role: Role::Service,
            joined_at: Timestamp::from_millis(3),
            read_seq: Seq::new(u64::MAX),
        };
        assert_eq!(
            decode_member(member.user_id.clone(), &encode_member(&member)).unwrap(),
            member
        );

        let message = Message {
            id: MessageId::generate(),
            conversation_id: ConversationId::generate(),
            seq: Seq::new(1),
            sender_id: UserId::new("alice").unwrap(),
            client_message_id: ClientMessageId::new("k1").unwrap(),
            sent_at: Timestamp::from_millis(9),
            content: Content::Text("hi".into()),
        };
        assert_eq!(
            decode_message(
                message.conversation_id,
                message.seq,
                &encode_message(&message)
            )
            .unwrap(),
            message
        );

        let lease = LeaseRecord {
            owner: "storage-1".into(),
            epoch: 3,
            until: Timestamp::from_millis(12),
        };
        assert_eq!(LeaseRecord::decode(&lease.encode()).unwrap(), lease);

        let device = Device {
            tenant_id: TenantId::new("acme").unwrap(),
            user_id: UserId::new("alice").unwrap(),
            device_id: DeviceId::new("phone").unwrap(),
            label: String::new(),
            cursor: Cursor::new(4),
            last_seen: Timestamp::from_millis(8),
            revoked: true,
        };
        assert_eq!(
            decode_device(
                &device.tenant_id,
                &device.user_id,
                device.device_id.clone(),
                &encode_device(&device)
            )
            .unwrap(),
            device
        );
    }

    #[test]
    fn damaged_records_are_corrupt_not_panics() {
        let member = encode_member(&Member {
            user_id: UserId::new("bob").unwrap(),
            role: Role::Agent,
            joined_at: Timestamp::from_millis(3),
            read_seq: Seq::ZERO,
        });
        let bob = || UserId::new("bob").unwrap();
        for len in 0..member.len() {
            assert!(matches!(
                decode_member(bob(), &member[..len]),
                Err(StoreError::Corrupt(_))
            ));
        }
        let mut longer = member.clone();
        longer.push(0);
        assert!(matches!(
            decode_member(bob(), &longer),
            Err(StoreError::Corrupt(_))
        ));
        let mut bad_role = member;
        bad_role[0] = 9;
        assert!(matches!(
            decode_member(bob(), &bad_role),
            Err(StoreError::Corrupt(_))
        ));
        // A string whose length runs past the end of the record.
        assert!(matches!(
            ConversationRecord::decode(&[0, 0, 0, 9, b'x']),
            Err(StoreError::Corrupt(_))
        ));
        let inverted = LogHead {
            head: Cursor::new(1),
            floor: Cursor::new(2),
        };
        assert!(matches!(
            LogHead::decode(&inverted.encode()),
            Err(StoreError::Corrupt(_))
        ));
    }
}
