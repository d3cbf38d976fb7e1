//! Fixtures shared by the embedded store's tests.

#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use natter_core::{
    Attachment, ClientMessageId, Content, ConversationId, Message, MessageId, NewConversation,
    NewMessage, Role, Seq, TenantId, Timestamp, UserId,
};

pub fn tenant(name: &str) -> TenantId {
    TenantId::new(name).expect("valid tenant id")
}

pub fn user(name: &str) -> UserId {
    UserId::new(name).expect("valid user id")
}

pub fn at(millis: i64) -> Timestamp {
    Timestamp::from_millis(1_800_000_000_000 + millis)
}

pub fn conversation(tenant: &TenantId, members: &[(&str, Role)]) -> NewConversation {
    NewConversation {
        id: ConversationId::generate(),
        tenant_id: tenant.clone(),
        subject: "Order #1234".into(),
        created_by: user(members[0].0),
        created_at: at(0),
        members: members
            .iter()
            .map(|(name, role)| (user(name), *role))
            .collect(),
    }
}

pub fn text(conversation: ConversationId, sender: &str, key: &str, body: &str) -> NewMessage {
    with_content(conversation, sender, key, Content::Text(body.into()))
}

pub fn attachment(conversation: ConversationId, sender: &str, key: &str) -> NewMessage {
    with_content(
        conversation,
        sender,
        key,
        Content::Attachment(Attachment {
            url: "https://cdn.example/invoice.pdf".into(),
            mime_type: "application/pdf".into(),
            size_bytes: 48_213,
            file_name: "invoice.pdf".into(),
            thumbnail: Some(Bytes::from_static(&[0xff, 0x00, 0x7f])),
        }),
    )
}

/// Text message `seq`, numbered as the sequencer would.
pub fn numbered(conversation: ConversationId, sender: &str, seq: u64) -> Message {
    text(conversation, sender, &format!("m{seq}"), "hello").at(Seq::new(seq))
}

/// The version of a first lease holder's (epoch 1) first write.
pub const VERSION: u64 = 1 << 40;

pub fn with_content(
    conversation: ConversationId,
    sender: &str,
    key: &str,
    content: Content,
) -> NewMessage {
    NewMessage {
        id: MessageId::generate(),
        conversation_id: conversation,
        sender_id: user(sender),
        client_message_id: ClientMessageId::new(key).expect("valid client message id"),
        sent_at: at(1),
        content,
    }
}
