//! Domain values covering every variant, shared by the unit tests.

use natter_core::{
    Attachment, Button, ButtonAction, ClientMessageId, Content, ConversationId, Event, FieldKind,
    Form, FormField, FormReply, Lifecycle, MembershipChange, MembershipKind, Message, MessageId,
    Postback, Priority, QuickReplies, QuickReply, ReadMarker, Role, Seq, Status, Tag, TeamId,
    Template, Timestamp, UserId,
};
use prost::bytes::Bytes;

pub(crate) fn contents() -> Vec<Content> {
    let attachment = Attachment {
        url: "https://cdn.example/a.png".into(),
        mime_type: "image/png".into(),
        size_bytes: 12_345,
        file_name: "a.png".into(),
        thumbnail: Some(Bytes::from_static(&[0x89, b'P', b'N', b'G'])),
    };
    vec![
        Content::Text("hello".into()),
        Content::Attachment(attachment.clone()),
        Content::Attachment(Attachment {
            thumbnail: None,
            ..attachment.clone()
        }),
        // An empty thumbnail stays distinct from none.
        Content::Attachment(Attachment {
            thumbnail: Some(Bytes::new()),
            ..attachment
        }),
        Content::QuickReplies(QuickReplies {
            text: "Which size?".into(),
            replies: vec![
                QuickReply {
                    title: "Small".into(),
                    payload: "SIZE_S".into(),
                },
                QuickReply {
                    title: "Large".into(),
                    payload: "SIZE_L".into(),
                },
            ],
        }),
        Content::Template(Template {
            text: "Your order shipped".into(),
            buttons: vec![
                Button {
                    title: "Track".into(),
                    action: ButtonAction::OpenUrl {
                        url: "https://track.example/42".into(),
                    },
                },
                Button {
                    title: "Cancel".into(),
                    action: ButtonAction::Postback {
                        payload: "CANCEL_42".into(),
                    },
                },
            ],
        }),
        Content::Postback(Postback {
            title: "Small".into(),
            payload: "SIZE_S".into(),
        }),
        Content::Activity(Lifecycle::default()),
        Content::Activity(lifecycle()),
        Content::Form(Form {
            form_id: "lead".into(),
            text: "How can we reach you?".into(),
            fields: vec![
                FormField {
                    name: "email".into(),
                    label: "Email".into(),
                    kind: FieldKind::Email,
                    required: true,
                },
                FormField {
                    name: "phone".into(),
                    label: "Phone".into(),
                    kind: FieldKind::Phone,
                    required: false,
                },
            ],
        }),
        Content::FormReply(FormReply {
            form_id: "lead".into(),
            values: [("email".to_owned(), "ann@example.com".to_owned())].into(),
        }),
        Content::Reply(natter_core::Reply {
            text: "Yes, it ships today.".into(),
            to: natter_core::Seq::new(3),
        }),
        Content::PaymentRequest(natter_core::PaymentRequest {
            payment_id: natter_core::PaymentId::generate(),
            amount_minor: 3000,
            currency: "eur".into(),
            description: "Order 1042".into(),
            line_items: vec![natter_core::LineItem {
                name: "Trail tent".into(),
                quantity: 2,
                unit_amount_minor: 1500,
            }],
            checkout_url: "https://checkout.stripe.com/c/pay/cs_test_1".into(),
            status: natter_core::PaymentStatus::Pending,
        }),
        Content::PaymentUpdate(natter_core::PaymentUpdate {
            payment_id: natter_core::PaymentId::generate(),
            status: natter_core::PaymentStatus::Paid,
        }),
    ]
}

/// A lifecycle with every field set.
pub(crate) fn lifecycle() -> Lifecycle {
    Lifecycle {
        status: Status::Resolved,
        priority: Priority::Urgent,
        tags: ["refund", "vip"].map(|t| Tag::new(t).unwrap()).into(),
        assignee: Some(UserId::new("ann").unwrap()),
        team: Some(TeamId::new("billing").unwrap()),
        owner: natter_core::Owner::Inbox,
        control_requested: true,
    }
}

pub(crate) fn message() -> Message {
    Message {
        id: MessageId::generate(),
        conversation_id: ConversationId::generate(),
        seq: Seq::new(3),
        sender_id: UserId::new("alice").unwrap(),
        client_message_id: ClientMessageId::new("c-1").unwrap(),
        sent_at: Timestamp::from_millis(1_700_000_000_123),
        content: Content::Text("hello".into()),
    }
}

pub(crate) fn events() -> Vec<Event> {
    let message = message();
    let mut events: Vec<Event> = contents()
        .into_iter()
        .map(|content| {
            Event::Message(Message {
                content,
                ..message.clone()
            })
        })
        .collect();
    events.push(Event::Read(ReadMarker {
        conversation_id: message.conversation_id,
        user_id: UserId::new("bob").unwrap(),
        seq: Seq::new(3),
    }));
    for kind in [MembershipKind::Joined, MembershipKind::Left] {
        events.push(Event::Membership(MembershipChange {
            conversation_id: message.conversation_id,
            user_id: UserId::new("bot-1").unwrap(),
            role: Role::Bot,
            kind,
            at: Timestamp::from_millis(-5),
        }));
    }
    events
}
