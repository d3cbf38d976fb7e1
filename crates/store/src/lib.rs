//! What Natter needs from durable storage, as two traits split by owner:
//! [`ConversationStore`] belongs to the storage service (conversations,
//! members, messages) and [`SyncStore`] to the sync service (per-user update
//! logs and devices). Implementations: `natter-store-cql` (ScyllaDB or
//! Cassandra) and `natter-store-embedded` (one local file).
//!
//! Every method is tenant-scoped: a record of another tenant is reported as
//! not found, never as forbidden, so tenants cannot probe each other.

use async_trait::async_trait;
use natter_core::{
    Conversation, ConversationId, Cursor, Device, DeviceId, Event, Invalid, Member,
    MembershipChange, Message, NewConversation, NewMessage, ReadMarker, Role, Seq, TenantId,
    Timestamp, Update, UserId,
};
use thiserror::Error;

#[cfg(feature = "conformance")]
pub mod conformance;

#[derive(Debug, Clone, Error)]
pub enum StoreError {
    /// The input breaks a domain rule; nothing was written.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// No such record in this tenant.
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    /// The record exists already, or a conditional write lost a race.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A bound such as the member limit would be exceeded.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The operation needs state the record is not in (a revoked device, a
    /// read marker beyond the last message).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The backend could not be reached or timed out; safe to retry.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn not_found(kind: &'static str, id: impl ToString) -> Self {
        StoreError::NotFound {
            kind,
            id: id.to_string(),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One page of a list, and where the next page starts if there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T, K> {
    pub items: Vec<T>,
    pub next: Option<K>,
}

/// Asks for up to `size` items strictly after `after` in the list's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest<K> {
    pub after: Option<K>,
    pub size: u32,
}

/// Which messages of a conversation to read, in ascending seq order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageRange {
    /// Up to `limit` messages with seq greater than `after`.
    After { after: Seq, limit: u32 },
    /// The `limit` newest messages with seq less than `before`, or the
    /// newest messages of all when `before` is `None`.
    Before { before: Option<Seq>, limit: u32 },
}

/// The outcome of an append: the stored message, and whether it was stored
/// by an earlier attempt with the same idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub message: Message,
    pub duplicate: bool,
}

/// What a device gets when it asks for the updates after its cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateBatch {
    /// The updates after the cursor, in order, without gaps (possibly none).
    Updates(Vec<Update>),
    /// The cursor is older than what is retained; the device must refetch
    /// conversations and history, then continue from `head`.
    ResyncRequired { head: Cursor },
}

/// Conversations, their members and their messages.
#[async_trait]
pub trait ConversationStore: Send + Sync + 'static {
    /// Creates a conversation with its first members. Fails with `Conflict`
    /// if the id is taken, `LimitExceeded` past the member limit.
    async fn create_conversation(&self, new: &NewConversation) -> Result<Conversation>;

    async fn conversation(&self, tenant: &TenantId, id: ConversationId) -> Result<Conversation>;

    /// The conversations `user` is a member of, newest first.
    async fn list_conversations(
        &self,
        tenant: &TenantId,
        user: &UserId,
        page: PageRequest<ConversationId>,
    ) -> Result<Page<Conversation, ConversationId>>;

    /// Adds members; returns one change per user who was not yet a member.
    async fn add_members(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        members: &[(UserId, Role)],
        at: Timestamp,
    ) -> Result<Vec<MembershipChange>>;

    /// Removes members; returns one change per user who was a member.
    async fn remove_members(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        users: &[UserId],
        at: Timestamp,
    ) -> Result<Vec<MembershipChange>>;

    async fn member(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        user: &UserId,
    ) -> Result<Option<Member>>;

    /// Members, each exactly once, in an order that is stable across pages
    /// (user id order within an implementation-defined grouping: the CQL
    /// store shards big rooms by user).
    async fn list_members(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        page: PageRequest<UserId>,
    ) -> Result<Page<Member, UserId>>;

    /// Stores a message at the conversation's next seq. Idempotent on
    /// (conversation, sender, client_message_id): a repeat returns the
    /// first stored message with `duplicate` set. Seqs stay gap-free under
    /// concurrent writers.
    async fn append_message(&self, tenant: &TenantId, message: NewMessage) -> Result<Appended>;

    async fn list_messages(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        range: MessageRange,
    ) -> Result<Vec<Message>>;

    /// Raises `user`'s read watermark to `seq`. Returns the new marker, or
    /// `None` if the watermark was already at or past `seq`.
    async fn mark_read(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        user: &UserId,
        seq: Seq,
    ) -> Result<Option<ReadMarker>>;
}

/// Per-user update logs and the devices that sync them.
#[async_trait]
pub trait SyncStore: Send + Sync + 'static {
    /// The position of the newest update in `user`'s log (`Cursor::ZERO`
    /// for an empty log).
    async fn log_head(&self, tenant: &TenantId, user: &UserId) -> Result<Cursor>;

    /// Writes `event` at position `at`, which must be the head plus one.
    /// Fails with `Conflict` if that position is taken, so one writer per
    /// user keeps the log gap-free and a replayed write is detected.
    async fn append_update(
        &self,
        tenant: &TenantId,
        user: &UserId,
        at: Cursor,
        event: &Event,
    ) -> Result<()>;

    /// Up to `limit` updates after `after`, in order.
    async fn read_updates(
        &self,
        tenant: &TenantId,
        user: &UserId,
        after: Cursor,
        limit: u32,
    ) -> Result<UpdateBatch>;

    /// Forgets updates at or before `through`: from then on a read after a
    /// cursor below `through` is `ResyncRequired`, whether or not the bytes
    /// are gone yet (implementations may reclaim space in coarser steps).
    async fn trim_updates(&self, tenant: &TenantId, user: &UserId, through: Cursor) -> Result<()>;

    /// Registers a device or refreshes its label and last-seen time; the
    /// cursor is left as it was. Fails with `FailedPrecondition` for a
    /// revoked device.
    async fn touch_device(&self, device: &Device) -> Result<Device>;

    async fn device(
        &self,
        tenant: &TenantId,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<Option<Device>>;

    /// Devices in device id order.
    async fn list_devices(
        &self,
        tenant: &TenantId,
        user: &UserId,
        page: PageRequest<DeviceId>,
    ) -> Result<Page<Device, DeviceId>>;

    /// Moves a device's cursor forward; a lower cursor is ignored.
    async fn save_cursor(
        &self,
        tenant: &TenantId,
        user: &UserId,
        device: &DeviceId,
        cursor: Cursor,
    ) -> Result<()>;

    /// Marks a device revoked; it can no longer connect.
    async fn revoke_device(
        &self,
        tenant: &TenantId,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<()>;
}
