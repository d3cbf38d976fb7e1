//! What Natter needs from durable storage, as three traits split by owner:
//! [`ConversationStore`] belongs to the storage service (conversations,
//! members, messages), [`SyncStore`] to the sync service (per-user update
//! logs and devices) and [`DeskStore`] to the desk service (teams, agents,
//! routed conversations). All extend [`LeaseStore`], through which a
//! process of any service holds its partitions (of conversations, of users,
//! of tenants).
//! Implementations: `natter-store-cql` (ScyllaDB or Cassandra) and
//! `natter-store-embedded` (one local file).
//!
//! Every method is tenant-scoped: a record of another tenant is reported as
//! not found, never as forbidden, so tenants cannot probe each other.

use async_trait::async_trait;
use natter_core::{
    Conversation, ConversationId, Cursor, Device, DeviceId, Event, Invalid, Lifecycle, Limits,
    Member, MembershipChange, Message, NewConversation, ReadMarker, Role, Seq, TenantId, Timestamp,
    Update, UserId,
};
use thiserror::Error;

/// The traits' page and range types; they live in the domain so that the
/// wire edge (`natter_proto::page`) can build them without knowing the
/// stores.
pub use natter_core::{MessageRange, Page, PageRequest};

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

/// A hold on one partition of a scope: while it lasts, its owner is the
/// only one to number and write what the partition holds (a storage
/// sequencer the messages of its conversations, a sync process the log
/// entries of its users).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Whose partitions these are, such as `"storage"` or `"sync"`: each
    /// scope numbers its partitions on its own, so partition 3 of one is
    /// not partition 3 of another.
    pub scope: String,
    pub partition: u32,
    /// Who holds it: a process's instance id.
    pub owner: String,
    /// Higher for every new holder than for any before; a renewal keeps it.
    pub epoch: u64,
    /// When it lapses unless renewed, by the clocks of the processes that
    /// compete for it, which must agree to well within the lease's length.
    pub until: Timestamp,
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

/// What one sequencer write told fanout (its encoded `ConversationEvents`),
/// kept in the store with the write's messages where the bus keeps no
/// streams of its own (`natter dev`), so that a crash between the write
/// and fanout taking the announcement loses no event: the partition's next
/// holder announces what is still kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The storage partition (sequencer) that wrote it.
    pub partition: u32,
    /// The write's version: rises with each write of the partition.
    pub version: u64,
    /// The announced events, encoded.
    pub events: Vec<u8>,
}

/// The most bytes of events one [`Announcement`] may carry. Each store
/// keeps an announcement as one value (a redb value, a CQL cell), and
/// Cassandra and ScyllaDB refuse a mutation above 16 MiB by default (half
/// a commit log segment); this is a quarter of that, the size of the CQL
/// store's largest message batch. A sequencer write whose events are
/// larger must be split into several writes.
pub const MAX_ANNOUNCEMENT_BYTES: usize = 4 * 1024 * 1024;

/// Conversations, their members and their messages, and the leases of
/// the sequencers that number the messages.
#[async_trait]
pub trait ConversationStore: LeaseStore {
    /// Creates a conversation with its first members. Fails with `Conflict`
    /// if the id is taken, `LimitExceeded` past the member limit.
    async fn create_conversation(&self, new: &NewConversation) -> Result<Conversation>;

    async fn conversation(&self, tenant: &TenantId, id: ConversationId) -> Result<Conversation>;

    /// The lifecycle a conversation's newest activity left: what a
    /// sequencer loads with the newest messages, without reading the rest
    /// of the conversation again. The default for a conversation without
    /// activities, or one this tenant does not have.
    async fn lifecycle(&self, tenant: &TenantId, id: ConversationId) -> Result<Lifecycle>;

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

    /// Writes messages that their partition's sequencer numbered, as they
    /// are: no idempotency check and no read of the head, and a message of
    /// a seq that is stored already replaces it. Each conversation's
    /// messages land in seq order, so after a failure what landed of each
    /// is a prefix of its part of `messages` (in seq order). Of two writes
    /// of one seq the one with the higher `version` stands, whatever order
    /// they land in. Owners take versions from the clock, in microseconds
    /// since 1970, raised above their own previous one; a successor starts
    /// only after its predecessor's lease lapsed, and a holder stops
    /// writing well before, so a deposed owner's late write never replaces
    /// its successor's. Each call needs a version of its own,
    /// above the owner's earlier ones: two writes of one seq with the same
    /// version may be merged column by column (CQL breaks timestamp ties
    /// by value). One write costs one durable write per conversation
    /// bucket (CQL) or a share of one transaction (embedded), not one per
    /// message.
    ///
    /// Content beyond the limits, a seq of 0 or past `i64::MAX`, or a
    /// version past `i64::MAX` is `Invalid`, and nothing is written. The
    /// embedded store refuses a conversation it does not have with
    /// `NotFound` and writes none of the call; the CQL store does not look
    /// (that read would double the cost of a write), so callers write only
    /// to conversations they know exist, as the storage service does when
    /// it checks the sender's membership.
    ///
    /// With an `announcement`, the store keeps it beside the messages until
    /// [`forget_announcements`](Self::forget_announcements): in the same
    /// transaction (embedded), or once the messages have landed (CQL), so
    /// a kept announcement never names a message that is not stored. A
    /// failed write may have kept it or not. It is keyed by its partition
    /// and version, so its version must be the write's `version` (above 0:
    /// reads start above a version) and its events at most
    /// [`MAX_ANNOUNCEMENT_BYTES`]; otherwise the call is `Invalid` and
    /// nothing is written.
    async fn write_messages(
        &self,
        messages: &[(TenantId, Message)],
        announcement: Option<&Announcement>,
        version: u64,
    ) -> Result<()>;

    /// The kept announcements of `partition` whose versions are above
    /// `after`, oldest first, at most `limit`. Fewer than `limit` means
    /// there are no more, so a caller can read them all page by page.
    async fn announcements(
        &self,
        partition: u32,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Announcement>>;

    /// Forgets the announcements of `partition` up to and including
    /// version `through`. A forget lost in a crash only has them announced
    /// once more, so it may answer before it is durable.
    async fn forget_announcements(&self, partition: u32, through: u64) -> Result<()>;

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

/// Leases on partitions, for the processes that each write a share of
/// the data alone: the storage service's sequencers (partitions of
/// conversations) and the sync service's log writers (partitions of
/// users). A lease is named by its scope and partition; scopes share
/// nothing, so services may lease the same partition numbers in one store.
/// Taking one over is the rare event that may cost a consensus round (an
/// LWT on CQL); renewing is one too, every few seconds per partition,
/// never per message.
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Takes `partition` of `scope` for `owner` until `now + ttl` if nobody
    /// holds it at `now` (never taken, released, or lapsed: `until <=
    /// now`), with an epoch above every earlier holder's, even when `owner`
    /// held it last. `None` if it is held, by `owner` too (that is what
    /// renewing is for), or if another caller took it at the same time.
    async fn acquire_lease(
        &self,
        scope: &str,
        partition: u32,
        owner: &str,
        now: Timestamp,
        ttl: std::time::Duration,
    ) -> Result<Option<Lease>>;

    /// Extends `lease` to `now + ttl` if nobody has taken it since, that is
    /// if its scope's partition's owner and epoch are still the lease's (it
    /// may have lapsed meanwhile); `None` if it was lost.
    async fn renew_lease(
        &self,
        lease: &Lease,
        now: Timestamp,
        ttl: std::time::Duration,
    ) -> Result<Option<Lease>>;

    /// Gives `lease` up so another may take it at once, with a higher
    /// epoch; nothing if it was lost already.
    async fn release_lease(&self, lease: &Lease) -> Result<()>;

    /// Answers `Ok` once the store can be reached, with the cheapest read
    /// it has: services report NOT_SERVING while it cannot. Every store's
    /// traits build on this one, so every service holding a store can ask.
    async fn reachable(&self) -> Result<()>;
}

/// Checks a [`write_messages`](ConversationStore::write_messages) call as
/// every store does before writing any of it: content within `limits`,
/// seqs from 1 to `i64::MAX`, a version up to `i64::MAX` (CQL's `bigint`
/// and timestamp are signed), and an announcement of that version with
/// events within [`MAX_ANNOUNCEMENT_BYTES`].
pub fn validate_write(
    messages: &[(TenantId, Message)],
    announcement: Option<&Announcement>,
    version: u64,
    limits: &Limits,
) -> Result<()> {
    validate_version(version)?;
    if let Some(announcement) = announcement {
        validate_announcement(announcement, version)?;
    }
    for (_, message) in messages {
        message.content.validate(limits)?;
        validate_position("seq", message.seq.get())?;
    }
    Ok(())
}

/// Checks a [`write_updates`](SyncStore::write_updates) call as every store
/// does before writing any of it: message events' content within `limits`,
/// cursors from 1 to `i64::MAX` and a version up to `i64::MAX`.
pub fn validate_update_write(
    updates: &[(TenantId, UserId, Update)],
    version: u64,
    limits: &Limits,
) -> Result<()> {
    validate_version(version)?;
    for (_, _, update) in updates {
        if let Event::Message(message) = &update.event {
            message.content.validate(limits)?;
        }
        validate_position("cursor", update.cursor.get())?;
    }
    Ok(())
}

/// A version is a CQL timestamp, which is signed.
fn validate_version(version: u64) -> Result<()> {
    if i64::try_from(version).is_err() {
        let reason = format!("must be at most {}, got {version}", i64::MAX);
        return Err(Invalid::new("version", reason).into());
    }
    Ok(())
}

/// An announcement is keyed by the write's version, and one of version 0
/// could never be read back: reads are of versions above a given one.
fn validate_announcement(announcement: &Announcement, version: u64) -> Result<()> {
    let field = "announcement.version";
    if announcement.version != version {
        let reason = format!(
            "must be the write's version {version}, got {}",
            announcement.version
        );
        return Err(Invalid::new(field, reason).into());
    }
    if version == 0 {
        return Err(Invalid::new(field, "must be above 0").into());
    }
    let size = announcement.events.len();
    if size > MAX_ANNOUNCEMENT_BYTES {
        let reason = format!("must be at most {MAX_ANNOUNCEMENT_BYTES} bytes, got {size}");
        return Err(Invalid::new("announcement.events", reason).into());
    }
    Ok(())
}

/// A seq or cursor is stored as a CQL `bigint`, and 0 means "none yet".
fn validate_position(field: &'static str, position: u64) -> Result<()> {
    if position == 0 || i64::try_from(position).is_err() {
        let reason = format!("must be from 1 to {}, got {position}", i64::MAX);
        return Err(Invalid::new(field, reason).into());
    }
    Ok(())
}

/// Per-user update logs and the devices that sync them, and the leases of
/// the sync processes that write the logs.
#[async_trait]
pub trait SyncStore: LeaseStore {
    /// The position of the newest update in `user`'s log (`Cursor::ZERO`
    /// for an empty log).
    async fn log_head(&self, tenant: &TenantId, user: &UserId) -> Result<Cursor>;

    /// Writes log entries that their partition's writer numbered, each
    /// user's continuing from its log's head (head + 1, + 2, ...), as they
    /// are: no read and no condition, and an entry at a cursor that is
    /// stored already replaces it. A log's head rises to the highest
    /// cursor written to it. Each user's entries land in cursor order, so
    /// after a failure what landed of each user is a prefix of their part
    /// of `updates` (in cursor order).
    ///
    /// Of two writes of one cursor the one with the higher `version`
    /// stands, whatever order they land in. Versions work as in
    /// [`write_messages`](ConversationStore::write_messages): the owner's
    /// clock in microseconds, raised above its own previous one, under a
    /// lease that leaves one owner per partition of users, so a deposed
    /// owner's late write never replaces its successor's. Each call needs
    /// a version of its own and names each cursor of a user at most once.
    /// One write costs one durable write per user bucket (CQL) or a share
    /// of one transaction (embedded), not one per entry. An entry at or
    /// below a log's trim point is forgotten as soon as it is written: no
    /// read returns it.
    ///
    /// A message event's content beyond the limits, a cursor of 0 or past
    /// `i64::MAX`, or a version past `i64::MAX` is `Invalid`, and nothing
    /// is written.
    async fn write_updates(
        &self,
        updates: &[(TenantId, UserId, Update)],
        version: u64,
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

/// What kind of record of a tenant's support desk a [`DeskStore`] keeps.
/// The desk service encodes the records; the store keeps them as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeskKind {
    /// A team and its queue's settings, by team id.
    Team,
    /// An agent's settings, by user id.
    Agent,
    /// A conversation the desk routes (waiting or assigned), by
    /// conversation id.
    Route,
    /// A customer's contact, by user id.
    Contact,
    /// An index of contacts by email: `<email> <user id>`, no body.
    ContactEmail,
    /// An index of contacts by phone number: `<phone> <user id>`, no body.
    ContactPhone,
    /// A webhook endpoint's settings, by webhook id.
    Webhook,
    /// Where a webhook's delivery stands, by webhook id: written by its
    /// deliverer alone.
    WebhookState,
    /// The tenant's event log, by seq as 20 decimal digits (so ids sort as
    /// numbers).
    Event,
    /// The event log's head: one record, `head`.
    EventHead,
    /// A routing rule, by rule id.
    Rule,
    /// An internal note: `<conversation id> <note id>`, so a
    /// conversation's notes are one range, oldest first.
    Note,
    /// A user whose contact was merged into another's, by user id; the
    /// body is the other's user id.
    ContactMerged,
    /// An entry of the tenant's FAQ, by entry id.
    FaqEntry,
    /// A payment asked of a customer: `<conversation id> <payment id>`, so
    /// a conversation's payments are one range, oldest first.
    Payment,
    /// What the analytics know of a conversation (`natter-analytics`'
    /// facts and its members' roles), by conversation id.
    AnalyticsFacts,
    /// Hourly analytics rollups: `<Unix hour as 20 digits> <EVENTS
    /// partition as 3 digits>`, so an hour range is one id range; each is
    /// written by that partition's consumer alone.
    AnalyticsRollup,
}

impl DeskKind {
    pub const ALL: [DeskKind; 17] = [
        DeskKind::Team,
        DeskKind::Agent,
        DeskKind::Route,
        DeskKind::Contact,
        DeskKind::ContactEmail,
        DeskKind::ContactPhone,
        DeskKind::Webhook,
        DeskKind::WebhookState,
        DeskKind::Event,
        DeskKind::EventHead,
        DeskKind::Rule,
        DeskKind::Note,
        DeskKind::ContactMerged,
        DeskKind::FaqEntry,
        DeskKind::Payment,
        DeskKind::AnalyticsFacts,
        DeskKind::AnalyticsRollup,
    ];

    /// Its name in storage; never changes once released.
    pub fn as_str(self) -> &'static str {
        match self {
            DeskKind::Team => "team",
            DeskKind::Agent => "agent",
            DeskKind::Route => "route",
            DeskKind::Contact => "contact",
            DeskKind::ContactEmail => "contact-email",
            DeskKind::ContactPhone => "contact-phone",
            DeskKind::Webhook => "webhook",
            DeskKind::WebhookState => "webhook-state",
            DeskKind::Event => "event",
            DeskKind::EventHead => "event-head",
            DeskKind::Rule => "rule",
            DeskKind::Note => "note",
            DeskKind::ContactMerged => "contact-merged",
            DeskKind::FaqEntry => "faq-entry",
            DeskKind::Payment => "payment",
            DeskKind::AnalyticsFacts => "analytics-facts",
            DeskKind::AnalyticsRollup => "analytics-rollup",
        }
    }
}

/// One change of a [`DeskStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeskWrite {
    /// Stores `body` as the record `id` of `kind`, replacing any.
    Put {
        kind: DeskKind,
        id: String,
        body: Vec<u8>,
    },
    /// Forgets the record `id` of `kind`; nothing if there is none.
    Delete { kind: DeskKind, id: String },
}

/// A stored record of a [`DeskStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeskRecord {
    pub id: String,
    pub body: Vec<u8>,
}

/// The largest body of a desk record, in bytes.
pub const MAX_DESK_RECORD_BYTES: usize = 64 * 1024;

/// The support desk's records per tenant, and the leases of the desk
/// processes that route tenants' conversations. Records are small and
/// written off the message path, by the one process that holds the
/// tenant's partition.
#[async_trait]
pub trait DeskStore: LeaseStore {
    /// Applies `writes` in order. Each write is idempotent, so a call that
    /// failed may be repeated; what landed of a failed call is a prefix of
    /// `writes`. An id that is empty or longer than 255 bytes, or a body
    /// over [`MAX_DESK_RECORD_BYTES`], is `Invalid`, and nothing is written.
    async fn write_desk(&self, tenant: &TenantId, writes: &[DeskWrite]) -> Result<()>;

    /// Applies `writes` all together or not at all: what a failed call
    /// leaves is nothing or everything, never a part (one transaction
    /// embedded, one logged batch on CQL). For a few small records that
    /// must agree (a conversation's analytics facts and the rollups they
    /// changed): a CQL batch has a size limit (`batch_size_fail_threshold`,
    /// 1 MiB on ScyllaDB and the test node). Validated like `write_desk`.
    async fn write_desk_together(&self, tenant: &TenantId, writes: &[DeskWrite]) -> Result<()>;

    /// The record `id` of `kind`, if there is one.
    async fn desk_record(
        &self,
        tenant: &TenantId,
        kind: DeskKind,
        id: &str,
    ) -> Result<Option<DeskRecord>>;

    /// Records of `kind` in id order (by bytes).
    async fn desk_records(
        &self,
        tenant: &TenantId,
        kind: DeskKind,
        page: PageRequest<String>,
    ) -> Result<Page<DeskRecord, String>>;
}

/// Checks a [`DeskStore::write_desk`] call as every store does before
/// writing any of it.
pub fn validate_desk_writes(writes: &[DeskWrite]) -> Result<()> {
    for write in writes {
        let (DeskWrite::Put { id, .. } | DeskWrite::Delete { id, .. }) = write;
        if id.is_empty() || id.len() > 255 {
            return Err(Invalid::new("id", "must be 1 to 255 bytes").into());
        }
        if let DeskWrite::Put { body, .. } = write
            && body.len() > MAX_DESK_RECORD_BYTES
        {
            let reason = format!("must be at most {MAX_DESK_RECORD_BYTES} bytes");
            return Err(Invalid::new("body", reason).into());
        }
    }
    Ok(())
}
