//! Tenants, users, devices, conversations, messages, and the durable events
//! a user's devices sync.

use crate::content::Content;
use crate::error::{Invalid, Result};
use crate::ids::{
    ClientMessageId, ConversationId, Cursor, DeviceId, MessageId, Seq, TenantId, Timestamp, UserId,
};
use crate::lifecycle::Lifecycle;
use crate::limits::Limits;

/// What a user is to the business. Carried in the user's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A visitor or customer of the business.
    Customer,
    /// A human answering for the business.
    Agent,
    /// An automated participant answering for the business.
    Bot,
    /// A backend acting for the tenant (CRM, agent console); may act in any
    /// conversation of its tenant without being a member.
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Agent => "agent",
            Role::Bot => "bot",
            Role::Service => "service",
        }
    }

    pub fn parse(value: &str) -> Result<Self> {
        match value {
            "customer" => Ok(Role::Customer),
            "agent" => Ok(Role::Agent),
            "bot" => Ok(Role::Bot),
            "service" => Ok(Role::Service),
            other => Err(Invalid::new(
                "role",
                format!("unknown role {other:?}; expected customer, agent, bot or service"),
            )),
        }
    }
}

/// A device a user has connected from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub device_id: DeviceId,
    /// Free-form client description ("web", "ios 18", a user agent).
    pub label: String,
    /// How far this device has synced its user's update log.
    pub cursor: Cursor,
    pub last_seen: Timestamp,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user_id: UserId,
    pub role: Role,
    pub joined_at: Timestamp,
    /// Highest seq this member has read; a watermark, not a set.
    pub read_seq: Seq,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub id: ConversationId,
    pub tenant_id: TenantId,
    pub subject: String,
    pub created_by: UserId,
    pub created_at: Timestamp,
    /// Seq of the newest stored message; `Seq::ZERO` when empty.
    pub last_seq: Seq,
    pub member_count: u64,
    /// Where it stands as a support case: as its newest activity message
    /// left it.
    pub lifecycle: Lifecycle,
}

/// A request to create a conversation, already holding its minted id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConversation {
    pub id: ConversationId,
    pub tenant_id: TenantId,
    pub subject: String,
    pub created_by: UserId,
    pub created_at: Timestamp,
    pub members: Vec<(UserId, Role)>,
}

impl NewConversation {
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        let chars = self.subject.chars().count();
        if chars > limits.max_subject_chars {
            return Err(Invalid::new(
                "subject",
                format!(
                    "must be at most {} characters, got {chars}",
                    limits.max_subject_chars
                ),
            ));
        }
        validate_member_list(self.members.iter().map(|(user, _)| user), limits)
    }
}

/// Checks a list of users named in one request: bounded and without repeats.
pub fn validate_member_list<'a>(
    users: impl ExactSizeIterator<Item = &'a UserId>,
    limits: &Limits,
) -> Result<()> {
    let len = users.len();
    if len > limits.max_members_per_request {
        return Err(Invalid::new(
            "members",
            format!(
                "at most {} members per request, got {len}",
                limits.max_members_per_request
            ),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(len);
    for user in users {
        if !seen.insert(user) {
            return Err(Invalid::new("members", format!("{user} is listed twice")));
        }
    }
    Ok(())
}

/// A stored message. `seq` orders it within its conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub seq: Seq,
    pub sender_id: UserId,
    pub client_message_id: ClientMessageId,
    pub sent_at: Timestamp,
    pub content: Content,
}

/// A message to store. The store assigns its seq; `id` is minted by the
/// caller so a retried request can be told apart from a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub client_message_id: ClientMessageId,
    pub sent_at: Timestamp,
    pub content: Content,
}

impl NewMessage {
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        self.content.validate(limits)
    }

    pub fn at(self, seq: Seq) -> Message {
        Message {
            id: self.id,
            conversation_id: self.conversation_id,
            seq,
            sender_id: self.sender_id,
            client_message_id: self.client_message_id,
            sent_at: self.sent_at,
            content: self.content,
        }
    }
}

/// A member's read watermark moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadMarker {
    pub conversation_id: ConversationId,
    pub user_id: UserId,
    pub seq: Seq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipKind {
    Joined,
    Left,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipChange {
    pub conversation_id: ConversationId,
    pub user_id: UserId,
    pub role: Role,
    pub kind: MembershipKind,
    pub at: Timestamp,
}

/// A durable event in a user's update log: what their devices sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Message(Message),
    Read(ReadMarker),
    Membership(MembershipChange),
}

impl Event {
    pub fn conversation_id(&self) -> ConversationId {
        match self {
            Event::Message(m) => m.conversation_id,
            Event::Read(r) => r.conversation_id,
            Event::Membership(m) => m.conversation_id,
        }
    }

    /// Names this event uniquely and the same way every time it is seen,
    /// for deduplication across redeliveries: the message id for a
    /// message, `read/<conversation>/<user>/<seq>` for a read marker, and
    /// `member/<conversation>/<user>/<joined|left>/<at millis>` for a
    /// membership change.
    pub fn key(&self) -> String {
        match self {
            Event::Message(m) => m.id.to_string(),
            Event::Read(r) => format!("read/{}/{}/{}", r.conversation_id, r.user_id, r.seq),
            Event::Membership(m) => {
                let kind = match m.kind {
                    MembershipKind::Joined => "joined",
                    MembershipKind::Left => "left",
                };
                format!(
                    "member/{}/{}/{kind}/{}",
                    m.conversation_id,
                    m.user_id,
                    m.at.as_millis()
                )
            }
        }
    }
}

/// An event at its position in one user's update log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub cursor: Cursor,
    pub event: Event,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in [Role::Customer, Role::Agent, Role::Bot, Role::Service] {
            assert_eq!(Role::parse(role.as_str()).unwrap(), role);
        }
        assert_eq!(Role::parse("admin").unwrap_err().field, "role");
    }

    #[test]
    fn event_keys_name_each_event_stably_and_distinctly() {
        use crate::content::Content;

        let conversation = ConversationId::generate();
        let alice = UserId::new("alice").unwrap();
        let message = Message {
            id: MessageId::generate(),
            conversation_id: conversation,
            seq: Seq::new(3),
            sender_id: alice.clone(),
            client_message_id: ClientMessageId::new("c-1").unwrap(),
            sent_at: Timestamp::from_millis(1_700_000_000_000),
            content: Content::Text("hi".into()),
        };
        let read = Event::Read(ReadMarker {
            conversation_id: conversation,
            user_id: alice.clone(),
            seq: Seq::new(3),
        });
        let change = |kind| {
            Event::Membership(MembershipChange {
                conversation_id: conversation,
                user_id: alice.clone(),
                role: Role::Agent,
                kind,
                at: Timestamp::from_millis(1_700_000_000_123),
            })
        };

        assert_eq!(
            Event::Message(message.clone()).key(),
            message.id.to_string()
        );
        assert_eq!(read.key(), format!("read/{conversation}/alice/3"));
        assert_eq!(
            change(MembershipKind::Left).key(),
            format!("member/{conversation}/alice/left/1700000000123")
        );
        assert_eq!(read.key(), read.clone().key());
        assert_ne!(
            change(MembershipKind::Joined).key(),
            change(MembershipKind::Left).key()
        );
    }

    #[test]
    fn member_lists_reject_repeats_and_excess() {
        let a = UserId::new("a").unwrap();
        let limits = Limits::default();
        assert!(validate_member_list([a.clone(), a.clone()].iter(), &limits).is_err());
        let many: Vec<UserId> = (0..=limits.max_members_per_request)
            .map(|i| UserId::new(format!("u{i}")).unwrap())
            .collect();
        assert!(validate_member_list(many.iter(), &limits).is_err());
    }
}
