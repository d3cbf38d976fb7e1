//! The tables of the database file and what their keys mean.
//!
//! Keys are redb tuples, which compare element by element (strings by
//! bytes, integers by value), so a range over a key prefix is one tenant's,
//! one conversation's or one user's records in order. Every key of a
//! tenant's records starts with the tenant id, so a record of another
//! tenant is simply not found; only the services' own bookkeeping
//! ([`LEASES`], [`ANNOUNCEMENTS`]) is keyed across tenants. UUIDs
//! are keyed as `u128` (`Uuid::as_u128` reads their bytes big-endian), so
//! they sort as their bytes do: for UUIDv7 ids, in creation order.
//!
//! Values are a single integer, nothing, or bytes in the encodings of
//! [`crate::record`]. Message content and update-log events are protobuf,
//! through `natter_proto::codec`.

use redb::TableDefinition;

/// The on-disk format this build reads and writes, stored under
/// [`FORMAT_KEY`] in [`META`]. Bump it with any change to a table's key or
/// value encoding, together with a migration. A new table is not such a
/// change: `init` creates it in older files, and older builds never open
/// it.
///
/// - 1: the first.
/// - 2: [`LEASES`] keyed by scope and partition, not partition alone
///   (`leases::rescope` moves format 1's leases).
pub(crate) const FORMAT_VERSION: u64 = 2;
pub(crate) const FORMAT_KEY: &str = "format_version";

/// Store-wide settings: `name → u64`.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// `(tenant, conversation) → ConversationRecord`.
pub(crate) const CONVERSATIONS: TableDefinition<(&str, u128), &[u8]> =
    TableDefinition::new("conversations");

/// `(tenant, conversation, user) → MemberRecord`, so members list in user
/// id order.
pub(crate) const MEMBERS: TableDefinition<(&str, u128, &str), &[u8]> =
    TableDefinition::new("members");

/// `(tenant, user, conversation) → ()`: the conversations a user is in,
/// kept with [`MEMBERS`] in the same transactions. Scanned backwards it
/// lists them newest first.
pub(crate) const MEMBERSHIPS: TableDefinition<(&str, &str, u128), ()> =
    TableDefinition::new("memberships");

/// `(tenant, conversation, seq) → MessageRecord`.
pub(crate) const MESSAGES: TableDefinition<(&str, u128, u64), &[u8]> =
    TableDefinition::new("messages");

/// `(scope, partition) → LeaseRecord`: who holds each partition of each
/// scope (`"storage"`'s of conversations, `"sync"`'s of users; see
/// `natter_store::LeaseStore`). Not per tenant: partitions span them.
pub(crate) const LEASES: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("leases");

/// `(partition, version) → events`: what each write of a storage
/// partition's sequencer announced (`natter_store::Announcement`), kept
/// until fanout has taken it. Not per tenant: a partition spans them.
/// Newer than the first files of format 2.
pub(crate) const ANNOUNCEMENTS: TableDefinition<(u32, u64), &[u8]> =
    TableDefinition::new("announcements");

/// `(tenant, user) → LogHead`: the head of a user's update log and the
/// cursor it has been trimmed through. Kept apart from the entries so the
/// head survives trimming everything.
pub(crate) const LOG_HEADS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("log_heads");

/// `(tenant, user, cursor) → Event` (protobuf).
pub(crate) const UPDATES: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("updates");

/// `(tenant, user, device) → DeviceRecord`, so devices list in device id
/// order.
pub(crate) const DEVICES: TableDefinition<(&str, &str, &str), &[u8]> =
    TableDefinition::new("devices");

/// `(tenant, kind, id) → body`: the support desk's records
/// (`natter_store::DeskStore`), as the desk service encoded them, so each
/// kind lists in id order. Newer than the first files of format 2.
pub(crate) const DESK_RECORDS: TableDefinition<(&str, &str, &str), &[u8]> =
    TableDefinition::new("desk_records");
