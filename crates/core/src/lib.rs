//! Natter's domain: the types every service speaks, their validation, and
//! the sans-I/O rules of the message path.
//!
//! Nothing here touches the network, a database or the wall clock: callers
//! pass `now` in. The one exception is [`MessageId::generate`] and
//! [`ConversationId::generate`], which read the clock and the OS random
//! source through `uuid`, because a UUIDv7 is defined by both.

mod content;
mod error;
pub mod handoff;
mod ids;
mod lifecycle;
mod limits;
mod model;
mod page;
pub mod sequencer;

pub use content::{
    Attachment, Button, ButtonAction, Content, FieldKind, Form, FormField, FormReply, LineItem,
    MAX_LINE_ITEMS, MAX_PAYMENT_MINOR, PaymentRequest, PaymentStatus, PaymentUpdate, Postback,
    QuickReplies, QuickReply, Reply, Template, currency_code,
};
pub use error::{Invalid, Result};
pub use ids::{
    ClientMessageId, ConversationId, Cursor, DESK_USER, DeviceId, MessageId, NoteId, PaymentId,
    Seq, Tag, TeamId, TenantId, Timestamp, UserId,
};
pub use lifecycle::{
    ASK_FOR_A_PERSON, CSAT_FORM_ID, Lifecycle, LifecycleChange, Owner, Priority, Status,
    asks_for_a_person,
};
pub use limits::Limits;
pub use model::{
    Conversation, Device, Event, Member, MembershipChange, MembershipKind, Message,
    NewConversation, NewMessage, ReadMarker, Role, Update, validate_member_list,
};
pub use page::{MessageRange, Page, PageRequest};
