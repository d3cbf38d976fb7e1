//! Conversions between the wire types of [`crate::v1`] and the domain types
//! of `natter_core`, both ways, and between a verified caller
//! ([`Identity`]) and the [`Actor`] that carries it on the bus.
//!
//! Domain to wire is infallible ([`From`]). Wire to domain is fallible
//! ([`TryFrom`], error [`Invalid`]): it checks structure only (required
//! fields and oneofs present, ids well formed, enums known) and names the
//! offending field as the API spells it. Rules that need [`Limits`] such as
//! content size are left to `Content::validate` and friends.
//!
//! Where both sides are foreign types (ids, timestamps) plain functions do
//! the work.
//!
//! [`Limits`]: natter_core::Limits

use std::str::FromStr;

use natter_auth::Identity;
use natter_core::{
    Attachment, Button, ButtonAction, Content, Conversation, Cursor, Device, Event, FieldKind,
    Form, FormField, FormReply, Invalid, Lifecycle, LifecycleChange, LineItem, Member,
    MembershipChange, MembershipKind, Message, Owner, PaymentRequest, PaymentStatus, PaymentUpdate,
    Postback, Priority, QuickReplies, QuickReply, ReadMarker, Reply, Result, Role, Seq, Status,
    Template, TenantId, Timestamp, Update, UserId,
};

use crate::bus::v1::{Actor, LiveUser};
use crate::v1;

const MILLIS_PER_SECOND: i64 = 1_000;
const NANOS_PER_MILLI: i32 = 1_000_000;

/// Parses an id sent as `field`, reporting a bad one under that name.
///
/// Works for every id newtype: `parse_id::<ConversationId>("conversation_id", s)`.
pub fn parse_id<T: FromStr<Err = Invalid>>(field: &'static str, value: &str) -> Result<T> {
    value.parse().map_err(|err: Invalid| Invalid {
        field,
        reason: err.reason,
    })
}

/// Unwraps a message field or oneof that the API requires.
pub fn required<T>(field: &'static str, value: Option<T>) -> Result<T> {
    value.ok_or_else(|| Invalid::new(field, "is required"))
}

/// A domain timestamp on the wire.
pub fn timestamp_to_wire(at: Timestamp) -> pbjson_types::Timestamp {
    let millis = at.as_millis();
    let sub_second_millis = millis.rem_euclid(MILLIS_PER_SECOND);
    pbjson_types::Timestamp {
        seconds: millis.div_euclid(MILLIS_PER_SECOND),
        // Below 1000, so the cast cannot truncate.
        nanos: sub_second_millis as i32 * NANOS_PER_MILLI,
    }
}

/// A required wire timestamp in the domain; precision below a millisecond
/// is dropped.
pub fn timestamp_from_wire(
    field: &'static str,
    at: Option<pbjson_types::Timestamp>,
) -> Result<Timestamp> {
    let at = required(field, at)?;
    if !(0..1_000_000_000).contains(&at.nanos) {
        return Err(Invalid::new(field, "nanos must be within 0 to 999999999"));
    }
    at.seconds
        .checked_mul(MILLIS_PER_SECOND)
        .and_then(|millis| millis.checked_add(i64::from(at.nanos / NANOS_PER_MILLI)))
        .map(Timestamp::from_millis)
        .ok_or_else(|| Invalid::new(field, "is out of range"))
}

/// A wire role (a prost enum field holds an `i32`) in the domain.
pub fn role_from_wire(field: &'static str, role: i32) -> Result<Role> {
    match v1::Role::try_from(role) {
        Ok(v1::Role::Unspecified) => Err(Invalid::new(field, "is required")),
        Ok(v1::Role::Customer) => Ok(Role::Customer),
        Ok(v1::Role::Agent) => Ok(Role::Agent),
        Ok(v1::Role::Bot) => Ok(Role::Bot),
        Ok(v1::Role::Service) => Ok(Role::Service),
        Err(_) => Err(Invalid::new(field, format!("unknown role {role}"))),
    }
}

impl From<Role> for v1::Role {
    fn from(role: Role) -> Self {
        match role {
            Role::Customer => v1::Role::Customer,
            Role::Agent => v1::Role::Agent,
            Role::Bot => v1::Role::Bot,
            Role::Service => v1::Role::Service,
        }
    }
}

impl TryFrom<v1::Role> for Role {
    type Error = Invalid;

    fn try_from(role: v1::Role) -> Result<Self> {
        role_from_wire("role", role.into())
    }
}

// Content.

impl From<Content> for v1::MessageContent {
    fn from(content: Content) -> Self {
        use v1::message_content::Kind;
        let kind = match content {
            Content::Text(text) => Kind::Text(text),
            Content::Attachment(a) => Kind::Attachment(v1::Attachment {
                url: a.url,
                mime_type: a.mime_type,
                size_bytes: a.size_bytes,
                file_name: a.file_name,
                thumbnail: a.thumbnail,
            }),
            Content::QuickReplies(q) => Kind::QuickReplies(v1::QuickReplies {
                text: q.text,
                replies: q
                    .replies
                    .into_iter()
                    .map(|r| v1::QuickReply {
                        title: r.title,
                        payload: r.payload,
                    })
                    .collect(),
            }),
            Content::Template(t) => Kind::Template(v1::Template {
                text: t.text,
                buttons: t.buttons.into_iter().map(button_to_wire).collect(),
            }),
            Content::Postback(p) => Kind::Postback(v1::Postback {
                title: p.title,
                payload: p.payload,
            }),
            Content::Activity(lifecycle) => Kind::Activity(lifecycle.into()),
            Content::Form(f) => Kind::Form(v1::Form {
                form_id: f.form_id,
                text: f.text,
                fields: f
                    .fields
                    .into_iter()
                    .map(|field| v1::FormField {
                        name: field.name,
                        label: field.label,
                        kind: v1::FormFieldKind::from(field.kind).into(),
                        required: field.required,
                    })
                    .collect(),
            }),
            Content::FormReply(r) => Kind::FormReply(v1::FormReply {
                form_id: r.form_id,
                values: r.values.into_iter().collect(),
            }),
            Content::Reply(r) => Kind::Reply(v1::Reply {
                to_seq: r.to.get(),
                text: r.text,
            }),
            Content::PaymentRequest(p) => Kind::PaymentRequest(v1::PaymentRequest {
                payment_id: p.payment_id.to_string(),
                amount: p.amount_minor,
                currency: p.currency,
                description: p.description,
                line_items: p.line_items.into_iter().map(Into::into).collect(),
                checkout_url: p.checkout_url,
                status: v1::PaymentStatus::from(p.status).into(),
            }),
            Content::PaymentUpdate(u) => Kind::PaymentUpdate(v1::PaymentUpdate {
                payment_id: u.payment_id.to_string(),
                status: v1::PaymentStatus::from(u.status).into(),
            }),
        };
        v1::MessageContent { kind: Some(kind) }
    }
}

fn button_to_wire(button: Button) -> v1::Button {
    use v1::button::Action;
    let action = match button.action {
        ButtonAction::Postback { payload } => Action::Postback(v1::PostbackAction { payload }),
        ButtonAction::OpenUrl { url } => Action::OpenUrl(v1::OpenUrlAction { url }),
    };
    v1::Button {
        title: button.title,
        action: Some(action),
    }
}

impl TryFrom<v1::MessageContent> for Content {
    type Error = Invalid;

    fn try_from(content: v1::MessageContent) -> Result<Self> {
        use v1::message_content::Kind;
        Ok(match required("content", content.kind)? {
            Kind::Text(text) => Content::Text(text),
            Kind::Attachment(a) => Content::Attachment(Attachment {
                url: a.url,
                mime_type: a.mime_type,
                size_bytes: a.size_bytes,
                file_name: a.file_name,
                thumbnail: a.thumbnail,
            }),
            Kind::QuickReplies(q) => Content::QuickReplies(QuickReplies {
                text: q.text,
                replies: q
                    .replies
                    .into_iter()
                    .map(|r| QuickReply {
                        title: r.title,
                        payload: r.payload,
                    })
                    .collect(),
            }),
            Kind::Template(t) => Content::Template(Template {
                text: t.text,
                buttons: t
                    .buttons
                    .into_iter()
                    .map(button_from_wire)
                    .collect::<Result<_>>()?,
            }),
            Kind::Postback(p) => Content::Postback(Postback {
                title: p.title,
                payload: p.payload,
            }),
            Kind::Activity(lifecycle) => {
                Content::Activity(lifecycle_from_wire("content.activity", lifecycle)?)
            }
            Kind::Form(f) => Content::Form(Form {
                form_id: f.form_id,
                text: f.text,
                fields: f
                    .fields
                    .into_iter()
                    .map(|field| {
                        Ok(FormField {
                            kind: field_kind_from_wire(field.kind)?,
                            name: field.name,
                            label: field.label,
                            required: field.required,
                        })
                    })
                    .collect::<Result<_>>()?,
            }),
            Kind::FormReply(r) => Content::FormReply(FormReply {
                form_id: r.form_id,
                values: r.values.into_iter().collect(),
            }),
            Kind::Reply(r) => Content::Reply(Reply {
                text: r.text,
                to: Seq::new(r.to_seq),
            }),
            Kind::PaymentRequest(p) => Content::PaymentRequest(PaymentRequest {
                payment_id: parse_id("content.payment_request.payment_id", &p.payment_id)?,
                amount_minor: p.amount,
                currency: p.currency,
                description: p.description,
                line_items: p.line_items.into_iter().map(LineItem::from).collect(),
                checkout_url: p.checkout_url,
                status: payment_status_from_wire("content.payment_request.status", p.status)?,
            }),
            Kind::PaymentUpdate(u) => Content::PaymentUpdate(PaymentUpdate {
                payment_id: parse_id("content.payment_update.payment_id", &u.payment_id)?,
                status: payment_status_from_wire("content.payment_update.status", u.status)?,
            }),
        })
    }
}

impl From<LineItem> for v1::PaymentLineItem {
    fn from(item: LineItem) -> Self {
        v1::PaymentLineItem {
            name: item.name,
            quantity: item.quantity,
            unit_amount: item.unit_amount_minor,
        }
    }
}

impl From<v1::PaymentLineItem> for LineItem {
    fn from(item: v1::PaymentLineItem) -> Self {
        LineItem {
            name: item.name,
            quantity: item.quantity,
            unit_amount_minor: item.unit_amount,
        }
    }
}

impl From<PaymentStatus> for v1::PaymentStatus {
    fn from(status: PaymentStatus) -> Self {
        match status {
            PaymentStatus::Pending => v1::PaymentStatus::Pending,
            PaymentStatus::Paid => v1::PaymentStatus::Paid,
            PaymentStatus::Failed => v1::PaymentStatus::Failed,
            PaymentStatus::Expired => v1::PaymentStatus::Expired,
        }
    }
}

/// A wire payment status (a prost enum field holds an `i32`) in the domain.
pub fn payment_status_from_wire(field: &'static str, status: i32) -> Result<PaymentStatus> {
    match v1::PaymentStatus::try_from(status) {
        Ok(v1::PaymentStatus::Unspecified) => Err(Invalid::new(field, "is required")),
        Ok(v1::PaymentStatus::Pending) => Ok(PaymentStatus::Pending),
        Ok(v1::PaymentStatus::Paid) => Ok(PaymentStatus::Paid),
        Ok(v1::PaymentStatus::Failed) => Ok(PaymentStatus::Failed),
        Ok(v1::PaymentStatus::Expired) => Ok(PaymentStatus::Expired),
        Err(_) => Err(Invalid::new(field, format!("unknown status {status}"))),
    }
}

impl From<FieldKind> for v1::FormFieldKind {
    fn from(kind: FieldKind) -> Self {
        match kind {
            FieldKind::Text => v1::FormFieldKind::Text,
            FieldKind::Email => v1::FormFieldKind::Email,
            FieldKind::Phone => v1::FormFieldKind::Phone,
            FieldKind::Rating => v1::FormFieldKind::Rating,
        }
    }
}

fn field_kind_from_wire(kind: i32) -> Result<FieldKind> {
    const FIELD: &str = "content.form.fields.kind";
    match v1::FormFieldKind::try_from(kind) {
        Ok(v1::FormFieldKind::Unspecified) => Err(Invalid::new(FIELD, "is required")),
        Ok(v1::FormFieldKind::Text) => Ok(FieldKind::Text),
        Ok(v1::FormFieldKind::Email) => Ok(FieldKind::Email),
        Ok(v1::FormFieldKind::Phone) => Ok(FieldKind::Phone),
        Ok(v1::FormFieldKind::Rating) => Ok(FieldKind::Rating),
        Err(_) => Err(Invalid::new(FIELD, format!("unknown kind {kind}"))),
    }
}

fn button_from_wire(button: v1::Button) -> Result<Button> {
    use v1::button::Action;
    let action = match required("content.template.buttons.action", button.action)? {
        Action::Postback(p) => ButtonAction::Postback { payload: p.payload },
        Action::OpenUrl(o) => ButtonAction::OpenUrl { url: o.url },
    };
    Ok(Button {
        title: button.title,
        action,
    })
}

/// A message's content as sent in a request (`content` of `Send` or
/// `SendMessageRequest`), where leaving it out is an error.
pub fn content_from_wire(content: Option<v1::MessageContent>) -> Result<Content> {
    required("content", content)?.try_into()
}

// Messages and conversations.

impl From<Message> for v1::Message {
    fn from(m: Message) -> Self {
        v1::Message {
            message_id: m.id.to_string(),
            conversation_id: m.conversation_id.to_string(),
            seq: m.seq.get(),
            sender_id: m.sender_id.to_string(),
            client_message_id: m.client_message_id.to_string(),
            sent_at: Some(timestamp_to_wire(m.sent_at)),
            content: Some(m.content.into()),
        }
    }
}

impl TryFrom<v1::Message> for Message {
    type Error = Invalid;

    fn try_from(m: v1::Message) -> Result<Self> {
        Ok(Message {
            id: parse_id("message_id", &m.message_id)?,
            conversation_id: parse_id("conversation_id", &m.conversation_id)?,
            seq: Seq::new(m.seq),
            sender_id: parse_id("sender_id", &m.sender_id)?,
            client_message_id: parse_id("client_message_id", &m.client_message_id)?,
            sent_at: timestamp_from_wire("sent_at", m.sent_at)?,
            content: content_from_wire(m.content)?,
        })
    }
}

impl From<Conversation> for v1::Conversation {
    fn from(c: Conversation) -> Self {
        v1::Conversation {
            conversation_id: c.id.to_string(),
            tenant_id: c.tenant_id.to_string(),
            subject: c.subject,
            created_by: c.created_by.to_string(),
            created_at: Some(timestamp_to_wire(c.created_at)),
            last_seq: c.last_seq.get(),
            member_count: c.member_count,
            lifecycle: Some(c.lifecycle.into()),
        }
    }
}

impl TryFrom<v1::Conversation> for Conversation {
    type Error = Invalid;

    fn try_from(c: v1::Conversation) -> Result<Self> {
        Ok(Conversation {
            id: parse_id("conversation_id", &c.conversation_id)?,
            tenant_id: parse_id("tenant_id", &c.tenant_id)?,
            subject: c.subject,
            created_by: parse_id("created_by", &c.created_by)?,
            created_at: timestamp_from_wire("created_at", c.created_at)?,
            last_seq: Seq::new(c.last_seq),
            member_count: c.member_count,
            lifecycle: match c.lifecycle {
                Some(lifecycle) => lifecycle_from_wire("lifecycle", lifecycle)?,
                None => Lifecycle::default(),
            },
        })
    }
}

// Lifecycles.

impl From<Status> for v1::ConversationStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Open => v1::ConversationStatus::Open,
            Status::Pending => v1::ConversationStatus::Pending,
            Status::Resolved => v1::ConversationStatus::Resolved,
            Status::Closed => v1::ConversationStatus::Closed,
        }
    }
}

/// A wire status in the domain; `None` for unspecified.
fn status_from_wire(field: &'static str, status: i32) -> Result<Option<Status>> {
    match v1::ConversationStatus::try_from(status) {
        Ok(v1::ConversationStatus::Unspecified) => Ok(None),
        Ok(v1::ConversationStatus::Open) => Ok(Some(Status::Open)),
        Ok(v1::ConversationStatus::Pending) => Ok(Some(Status::Pending)),
        Ok(v1::ConversationStatus::Resolved) => Ok(Some(Status::Resolved)),
        Ok(v1::ConversationStatus::Closed) => Ok(Some(Status::Closed)),
        Err(_) => Err(Invalid::new(field, format!("unknown status {status}"))),
    }
}

impl From<Priority> for v1::Priority {
    fn from(priority: Priority) -> Self {
        match priority {
            Priority::Low => v1::Priority::Low,
            Priority::Normal => v1::Priority::Normal,
            Priority::High => v1::Priority::High,
            Priority::Urgent => v1::Priority::Urgent,
        }
    }
}

/// A wire priority in the domain; `None` for unspecified.
pub fn priority_from_wire(field: &'static str, priority: i32) -> Result<Option<Priority>> {
    match v1::Priority::try_from(priority) {
        Ok(v1::Priority::Unspecified) => Ok(None),
        Ok(v1::Priority::Low) => Ok(Some(Priority::Low)),
        Ok(v1::Priority::Normal) => Ok(Some(Priority::Normal)),
        Ok(v1::Priority::High) => Ok(Some(Priority::High)),
        Ok(v1::Priority::Urgent) => Ok(Some(Priority::Urgent)),
        Err(_) => Err(Invalid::new(field, format!("unknown priority {priority}"))),
    }
}

impl From<Owner> for v1::ThreadOwner {
    fn from(owner: Owner) -> Self {
        match owner {
            Owner::Bot => v1::ThreadOwner::Bot,
            Owner::Inbox => v1::ThreadOwner::Inbox,
        }
    }
}

/// A wire thread owner in the domain; `None` for unspecified.
fn owner_from_wire(field: &'static str, owner: i32) -> Result<Option<Owner>> {
    match v1::ThreadOwner::try_from(owner) {
        Ok(v1::ThreadOwner::Unspecified) => Ok(None),
        Ok(v1::ThreadOwner::Bot) => Ok(Some(Owner::Bot)),
        Ok(v1::ThreadOwner::Inbox) => Ok(Some(Owner::Inbox)),
        Err(_) => Err(Invalid::new(field, format!("unknown thread owner {owner}"))),
    }
}

impl From<Lifecycle> for v1::Lifecycle {
    fn from(l: Lifecycle) -> Self {
        v1::Lifecycle {
            owner: v1::ThreadOwner::from(l.owner).into(),
            control_requested: l.control_requested,
            status: v1::ConversationStatus::from(l.status).into(),
            priority: v1::Priority::from(l.priority).into(),
            tags: l.tags.into_iter().map(|t| t.to_string()).collect(),
            assignee_id: l.assignee.map(|a| a.to_string()).unwrap_or_default(),
            team_id: l.team.map(|t| t.to_string()).unwrap_or_default(),
        }
    }
}

/// A lifecycle the server wrote (a conversation's, an activity's), sent
/// as `field`; its status and priority are always set.
pub fn lifecycle_from_wire(field: &'static str, l: v1::Lifecycle) -> Result<Lifecycle> {
    let unset = || Invalid::new(field, "status and priority are required");
    Ok(Lifecycle {
        status: status_from_wire(field, l.status)?.ok_or_else(unset)?,
        priority: priority_from_wire(field, l.priority)?.ok_or_else(unset)?,
        tags: l
            .tags
            .iter()
            .map(|t| parse_id("tags", t))
            .collect::<Result<_>>()?,
        assignee: optional_id("assignee_id", &l.assignee_id)?,
        team: optional_id("team_id", &l.team_id)?,
        owner: owner_from_wire(field, l.owner)?.unwrap_or_default(),
        control_requested: l.control_requested,
    })
}

/// An id field where empty means none.
fn optional_id<T: FromStr<Err = Invalid>>(field: &'static str, value: &str) -> Result<Option<T>> {
    (!value.is_empty())
        .then(|| parse_id(field, value))
        .transpose()
}

/// What `UpdateLifecycle` answers for the outcome of its change at the
/// sequencer: the activity stored, or the lifecycle a change that changed
/// nothing left. `None` for an outcome a change cannot have (a failure is
/// the caller's to turn into a status first).
pub fn lifecycle_response(
    outcome: crate::bus::v1::send_outcome::Result,
) -> Option<v1::UpdateLifecycleResponse> {
    use crate::bus::v1::send_outcome::Result as Outcome;
    match outcome {
        Outcome::Stored(stored) => {
            let message = stored.message?;
            let lifecycle = match message.content.as_ref()?.kind.as_ref()? {
                v1::message_content::Kind::Activity(lifecycle) => lifecycle.clone(),
                _ => return None,
            };
            Some(v1::UpdateLifecycleResponse {
                lifecycle: Some(lifecycle),
                activity: Some(message),
                duplicate: stored.duplicate,
            })
        }
        Outcome::Unchanged(lifecycle) => Some(v1::UpdateLifecycleResponse {
            lifecycle: Some(lifecycle),
            activity: None,
            duplicate: false,
        }),
        Outcome::Failure(_) => None,
    }
}

impl From<LifecycleChange> for v1::LifecycleChange {
    fn from(c: LifecycleChange) -> Self {
        let unset_or = |id: Option<String>| id.unwrap_or_default();
        v1::LifecycleChange {
            status: c
                .status
                .map_or(0, |s| v1::ConversationStatus::from(s).into()),
            priority: c.priority.map_or(0, |p| v1::Priority::from(p).into()),
            add_tags: c.add_tags.into_iter().map(|t| t.to_string()).collect(),
            remove_tags: c.remove_tags.into_iter().map(|t| t.to_string()).collect(),
            assignee_id: c.assignee.map(|a| unset_or(a.map(|a| a.to_string()))),
            team_id: c.team.map(|t| unset_or(t.map(|t| t.to_string()))),
            owner: c.owner.map_or(0, |o| v1::ThreadOwner::from(o).into()),
            request_control: c.request_control,
        }
    }
}

impl TryFrom<v1::LifecycleChange> for LifecycleChange {
    type Error = Invalid;

    fn try_from(c: v1::LifecycleChange) -> Result<Self> {
        let tags = |field, tags: Vec<String>| {
            tags.iter()
                .map(|t| parse_id(field, t))
                .collect::<Result<_>>()
        };
        Ok(LifecycleChange {
            status: status_from_wire("change.status", c.status)?,
            priority: priority_from_wire("change.priority", c.priority)?,
            add_tags: tags("change.add_tags", c.add_tags)?,
            remove_tags: tags("change.remove_tags", c.remove_tags)?,
            assignee: c
                .assignee_id
                .map(|a| optional_id("change.assignee_id", &a))
                .transpose()?,
            team: c
                .team_id
                .map(|t| optional_id("change.team_id", &t))
                .transpose()?,
            owner: owner_from_wire("change.owner", c.owner)?,
            request_control: c.request_control,
        })
    }
}

/// The members a `CreateConversationRequest` names, as `NewConversation`
/// holds them. The request's other fields need the caller's identity and
/// the clock, so the service assembles the rest.
pub fn new_members_from_wire(members: Vec<v1::NewMember>) -> Result<Vec<(UserId, Role)>> {
    members.into_iter().map(TryInto::try_into).collect()
}

impl From<(UserId, Role)> for v1::NewMember {
    fn from((user, role): (UserId, Role)) -> Self {
        v1::NewMember {
            user_id: user.to_string(),
            role: v1::Role::from(role).into(),
        }
    }
}

impl TryFrom<v1::NewMember> for (UserId, Role) {
    type Error = Invalid;

    fn try_from(m: v1::NewMember) -> Result<Self> {
        Ok((
            parse_id("members.user_id", &m.user_id)?,
            role_from_wire("members.role", m.role)?,
        ))
    }
}

impl From<Member> for v1::Member {
    fn from(m: Member) -> Self {
        v1::Member {
            user_id: m.user_id.to_string(),
            role: v1::Role::from(m.role).into(),
            joined_at: Some(timestamp_to_wire(m.joined_at)),
            read_seq: m.read_seq.get(),
        }
    }
}

impl TryFrom<v1::Member> for Member {
    type Error = Invalid;

    fn try_from(m: v1::Member) -> Result<Self> {
        Ok(Member {
            user_id: parse_id("user_id", &m.user_id)?,
            role: role_from_wire("role", m.role)?,
            joined_at: timestamp_from_wire("joined_at", m.joined_at)?,
            read_seq: Seq::new(m.read_seq),
        })
    }
}

impl From<Device> for v1::Device {
    fn from(d: Device) -> Self {
        v1::Device {
            tenant_id: d.tenant_id.to_string(),
            user_id: d.user_id.to_string(),
            device_id: d.device_id.to_string(),
            label: d.label,
            cursor: d.cursor.get(),
            last_seen: Some(timestamp_to_wire(d.last_seen)),
            revoked: d.revoked,
        }
    }
}

impl TryFrom<v1::Device> for Device {
    type Error = Invalid;

    fn try_from(d: v1::Device) -> Result<Self> {
        Ok(Device {
            tenant_id: parse_id("tenant_id", &d.tenant_id)?,
            user_id: parse_id("user_id", &d.user_id)?,
            device_id: parse_id("device_id", &d.device_id)?,
            label: d.label,
            cursor: Cursor::new(d.cursor),
            last_seen: timestamp_from_wire("last_seen", d.last_seen)?,
            revoked: d.revoked,
        })
    }
}

// Events.

impl From<ReadMarker> for v1::ReadMarker {
    fn from(r: ReadMarker) -> Self {
        v1::ReadMarker {
            conversation_id: r.conversation_id.to_string(),
            user_id: r.user_id.to_string(),
            seq: r.seq.get(),
        }
    }
}

impl TryFrom<v1::ReadMarker> for ReadMarker {
    type Error = Invalid;

    fn try_from(r: v1::ReadMarker) -> Result<Self> {
        Ok(ReadMarker {
            conversation_id: parse_id("conversation_id", &r.conversation_id)?,
            user_id: parse_id("user_id", &r.user_id)?,
            seq: Seq::new(r.seq),
        })
    }
}

impl From<MembershipKind> for v1::MembershipChangeKind {
    fn from(kind: MembershipKind) -> Self {
        match kind {
            MembershipKind::Joined => v1::MembershipChangeKind::Joined,
            MembershipKind::Left => v1::MembershipChangeKind::Left,
        }
    }
}

impl TryFrom<v1::MembershipChangeKind> for MembershipKind {
    type Error = Invalid;

    fn try_from(kind: v1::MembershipChangeKind) -> Result<Self> {
        match kind {
            v1::MembershipChangeKind::Unspecified => Err(Invalid::new("kind", "is required")),
            v1::MembershipChangeKind::Joined => Ok(MembershipKind::Joined),
            v1::MembershipChangeKind::Left => Ok(MembershipKind::Left),
        }
    }
}

impl From<MembershipChange> for v1::MembershipChange {
    fn from(c: MembershipChange) -> Self {
        v1::MembershipChange {
            conversation_id: c.conversation_id.to_string(),
            user_id: c.user_id.to_string(),
            role: v1::Role::from(c.role).into(),
            kind: v1::MembershipChangeKind::from(c.kind).into(),
            changed_at: Some(timestamp_to_wire(c.at)),
        }
    }
}

impl TryFrom<v1::MembershipChange> for MembershipChange {
    type Error = Invalid;

    fn try_from(c: v1::MembershipChange) -> Result<Self> {
        let kind = v1::MembershipChangeKind::try_from(c.kind)
            .map_err(|_| Invalid::new("kind", format!("unknown membership kind {}", c.kind)))?;
        Ok(MembershipChange {
            conversation_id: parse_id("conversation_id", &c.conversation_id)?,
            user_id: parse_id("user_id", &c.user_id)?,
            role: role_from_wire("role", c.role)?,
            kind: kind.try_into()?,
            at: timestamp_from_wire("changed_at", c.changed_at)?,
        })
    }
}

impl From<Event> for v1::Event {
    fn from(event: Event) -> Self {
        use v1::event::Kind;
        let kind = match event {
            Event::Message(m) => Kind::Message(m.into()),
            Event::Read(r) => Kind::ReadMarker(r.into()),
            Event::Membership(c) => Kind::MembershipChange(c.into()),
        };
        v1::Event { kind: Some(kind) }
    }
}

impl TryFrom<v1::Event> for Event {
    type Error = Invalid;

    fn try_from(event: v1::Event) -> Result<Self> {
        use v1::event::Kind;
        Ok(match required("event", event.kind)? {
            Kind::Message(m) => Event::Message(m.try_into()?),
            Kind::ReadMarker(r) => Event::Read(r.try_into()?),
            Kind::MembershipChange(c) => Event::Membership(c.try_into()?),
        })
    }
}

impl From<Update> for v1::Update {
    fn from(u: Update) -> Self {
        v1::Update {
            cursor: u.cursor.get(),
            event: Some(u.event.into()),
        }
    }
}

impl TryFrom<v1::Update> for Update {
    type Error = Invalid;

    fn try_from(u: v1::Update) -> Result<Self> {
        Ok(Update {
            cursor: Cursor::new(u.cursor),
            event: required("event", u.event)?.try_into()?,
        })
    }
}

// Callers on the bus.

/// A caller as the service that verified it names it to the others.
impl From<&Identity> for Actor {
    fn from(identity: &Identity) -> Self {
        Actor {
            tenant_id: identity.tenant.to_string(),
            user_id: identity.user.to_string(),
            role: v1::Role::from(identity.role).into(),
        }
    }
}

/// The caller a command names, as the service that sent it verified it.
impl TryFrom<Actor> for Identity {
    type Error = Invalid;

    fn try_from(actor: Actor) -> Result<Self> {
        Ok(Identity {
            tenant: parse_id("actor.tenant_id", &actor.tenant_id)?,
            user: parse_id("actor.user_id", &actor.user_id)?,
            role: role_from_wire("actor.role", actor.role)?,
        })
    }
}

/// A user as a bus message names it (`LiveUser`).
pub fn live_user(tenant: &TenantId, user: &UserId) -> LiveUser {
    LiveUser {
        tenant_id: tenant.to_string(),
        user_id: user.to_string(),
    }
}

/// The user a `LiveUser` names.
pub fn live_user_from_wire(wire: &LiveUser) -> Result<(TenantId, UserId)> {
    Ok((
        parse_id("tenant_id", &wire.tenant_id)?,
        parse_id("user_id", &wire.user_id)?,
    ))
}

/// The caller of a bus command, whose `actor` field is required.
pub fn actor_from_wire(actor: Option<Actor>) -> Result<Identity> {
    required("actor", actor)?.try_into()
}

#[cfg(test)]
mod tests {
    use natter_core::{ClientMessageId, ConversationId, DeviceId, MessageId, TenantId};

    use super::*;
    use crate::testdata;

    fn round_trip<D, W>(domain: D)
    where
        D: Clone + PartialEq + std::fmt::Debug + TryFrom<W, Error = Invalid>,
        W: From<D>,
    {
        let back = D::try_from(W::from(domain.clone())).unwrap();
        assert_eq!(back, domain);
    }

    #[test]
    fn every_content_variant_round_trips() {
        for content in testdata::contents() {
            round_trip::<Content, v1::MessageContent>(content);
        }
    }

    #[test]
    fn every_event_variant_round_trips() {
        for event in testdata::events() {
            round_trip::<Event, v1::Event>(event.clone());
            round_trip::<Update, v1::Update>(Update {
                cursor: Cursor::new(7),
                event,
            });
        }
    }

    #[test]
    fn actors_round_trip_and_name_their_bad_field() {
        let identity = Identity {
            tenant: TenantId::new("acme").unwrap(),
            user: UserId::new("alice").unwrap(),
            role: Role::Agent,
        };
        let actor = Actor::from(&identity);
        assert_eq!(actor_from_wire(Some(actor.clone())).unwrap(), identity);

        assert_eq!(actor_from_wire(None).unwrap_err().field, "actor");
        for (bad, field) in [
            (
                Actor {
                    user_id: "has space".into(),
                    ..actor.clone()
                },
                "actor.user_id",
            ),
            (
                Actor {
                    tenant_id: String::new(),
                    ..actor.clone()
                },
                "actor.tenant_id",
            ),
            (
                Actor {
                    role: v1::Role::Unspecified.into(),
                    ..actor
                },
                "actor.role",
            ),
        ] {
            assert_eq!(Identity::try_from(bad).unwrap_err().field, field);
        }
    }

    #[test]
    fn records_round_trip() {
        let tenant = TenantId::new("acme").unwrap();
        let user = UserId::new("alice").unwrap();
        round_trip::<Conversation, v1::Conversation>(Conversation {
            id: ConversationId::generate(),
            tenant_id: tenant.clone(),
            subject: "Order 42".into(),
            created_by: user.clone(),
            created_at: Timestamp::from_millis(1_700_000_000_123),
            last_seq: Seq::new(9),
            member_count: 3,
            lifecycle: testdata::lifecycle(),
        });
        round_trip::<LifecycleChange, v1::LifecycleChange>(LifecycleChange {
            status: Some(Status::Pending),
            priority: Some(Priority::Low),
            add_tags: testdata::lifecycle().tags,
            remove_tags: ["old"].map(|t| natter_core::Tag::new(t).unwrap()).into(),
            assignee: Some(None),
            team: Some(Some(natter_core::TeamId::new("sales").unwrap())),
            owner: Some(Owner::Inbox),
            request_control: true,
        });
        round_trip::<LifecycleChange, v1::LifecycleChange>(LifecycleChange {
            status: Some(Status::Open),
            ..LifecycleChange::default()
        });
        round_trip::<Member, v1::Member>(Member {
            user_id: user.clone(),
            role: Role::Agent,
            joined_at: Timestamp::from_millis(5),
            read_seq: Seq::new(2),
        });
        round_trip::<Device, v1::Device>(Device {
            tenant_id: tenant,
            user_id: user.clone(),
            device_id: DeviceId::new("phone-1").unwrap(),
            label: "ios 18".into(),
            cursor: Cursor::new(11),
            last_seen: Timestamp::from_millis(6),
            revoked: true,
        });
        for role in [Role::Customer, Role::Agent, Role::Bot, Role::Service] {
            round_trip::<Role, v1::Role>(role);
            round_trip::<(UserId, Role), v1::NewMember>((user.clone(), role));
        }
    }

    #[test]
    fn timestamps_keep_millisecond_precision_before_and_after_the_epoch() {
        for millis in [0, 1, 999, 1_000, 1_700_000_000_123, -1, -999, -1_001] {
            let at = Timestamp::from_millis(millis);
            let wire = timestamp_to_wire(at);
            assert!((0..1_000_000_000).contains(&wire.nanos), "{wire:?}");
            assert_eq!(timestamp_from_wire("at", Some(wire)).unwrap(), at);
        }
        let bad = pbjson_types::Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(
            timestamp_from_wire("at", Some(bad)).unwrap_err().field,
            "at"
        );
        let huge = pbjson_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert!(timestamp_from_wire("at", Some(huge)).is_err());
        assert_eq!(
            timestamp_from_wire("sent_at", None).unwrap_err(),
            Invalid::new("sent_at", "is required")
        );
    }

    #[test]
    fn missing_oneofs_and_enums_name_their_field() {
        let err = Content::try_from(v1::MessageContent { kind: None }).unwrap_err();
        assert_eq!(err, Invalid::new("content", "is required"));

        let buttonless = v1::MessageContent {
            kind: Some(v1::message_content::Kind::Template(v1::Template {
                text: "Pick".into(),
                buttons: vec![v1::Button {
                    title: "Yes".into(),
                    action: None,
                }],
            })),
        };
        assert_eq!(
            Content::try_from(buttonless).unwrap_err().field,
            "content.template.buttons.action"
        );
        assert_eq!(content_from_wire(None).unwrap_err().field, "content");
        assert_eq!(
            Event::try_from(v1::Event { kind: None }).unwrap_err().field,
            "event"
        );

        assert_eq!(role_from_wire("role", 0).unwrap_err().reason, "is required");
        assert_eq!(
            role_from_wire("members.role", 99).unwrap_err().field,
            "members.role"
        );
        let member = v1::NewMember {
            user_id: "bob".into(),
            role: v1::Role::Unspecified.into(),
        };
        assert_eq!(
            <(UserId, Role)>::try_from(member).unwrap_err().field,
            "members.role"
        );
    }

    #[test]
    fn bad_ids_are_reported_under_the_wire_field_name() {
        let message = v1::Message::from(testdata::message());
        let bad_sender = v1::Message {
            sender_id: "has space".into(),
            ..message.clone()
        };
        assert_eq!(
            Message::try_from(bad_sender).unwrap_err().field,
            "sender_id"
        );
        let bad_id = v1::Message {
            message_id: "not-a-uuid".into(),
            ..message
        };
        assert_eq!(Message::try_from(bad_id).unwrap_err().field, "message_id");

        let id = MessageId::generate();
        assert_eq!(parse_id::<MessageId>("message_id", &id.to_string()), Ok(id));
        assert_eq!(
            parse_id::<ClientMessageId>("client_message_id", "")
                .unwrap_err()
                .field,
            "client_message_id"
        );
        assert_eq!(
            parse_id::<ConversationId>("conversation_id", "00000000-0000-0000-0000-000000000000")
                .unwrap_err()
                .field,
            "conversation_id"
        );
    }

    #[test]
    fn new_members_convert_as_a_list() {
        let members = vec![
            (UserId::new("alice").unwrap(), Role::Agent),
            (UserId::new("bob").unwrap(), Role::Customer),
        ];
        let wire = members.iter().cloned().map(v1::NewMember::from).collect();
        assert_eq!(new_members_from_wire(wire).unwrap(), members);
    }
}
