//! Every statement the store runs, prepared once at connect. Each reads or
//! writes a single partition, and every read carries a LIMIT.

use natter_store::{Result, StoreError};
use scylla::client::session::Session;
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;

const MESSAGE_COLUMNS: &str = "seq, message_id, sender_id, client_message_id, sent_at, content";
const MEMBER_COLUMNS: &str = "role, joined_at, read_seq";
const DEVICE_COLUMNS: &str = "label, sync_cursor, last_seen, revoked";

#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) conversation_insert: PreparedStatement,
    pub(crate) conversation_get: PreparedStatement,
    pub(crate) conversation_set_count: PreparedStatement,
    pub(crate) conversation_set_hint: PreparedStatement,
    /// Only ever run in a logged batch with its activity message.
    pub(crate) lifecycle_write: PreparedStatement,
    pub(crate) lifecycle_get: PreparedStatement,

    /// Only ever run in a batch whose timestamp is the write's version.
    pub(crate) message_write: PreparedStatement,
    pub(crate) message_tail: PreparedStatement,
    pub(crate) messages_after: PreparedStatement,
    pub(crate) messages_through_desc: PreparedStatement,

    pub(crate) announcement_keep: PreparedStatement,
    pub(crate) announcements_after: PreparedStatement,
    pub(crate) announcements_forget: PreparedStatement,

    pub(crate) lease_get_serial: PreparedStatement,
    pub(crate) lease_insert: PreparedStatement,
    pub(crate) lease_take_over: PreparedStatement,
    pub(crate) lease_set_until: PreparedStatement,

    pub(crate) member_insert: PreparedStatement,
    pub(crate) member_get: PreparedStatement,
    pub(crate) member_delete: PreparedStatement,
    pub(crate) members_after: PreparedStatement,
    pub(crate) member_mark_read: PreparedStatement,

    pub(crate) user_conversation_put: PreparedStatement,
    pub(crate) user_conversation_delete: PreparedStatement,
    pub(crate) user_conversations_first: PreparedStatement,
    pub(crate) user_conversations_before: PreparedStatement,
    pub(crate) user_bucket_put: PreparedStatement,
    pub(crate) user_buckets_through: PreparedStatement,

    /// Only ever run in a batch whose timestamp is the write's version.
    pub(crate) log_write: PreparedStatement,
    pub(crate) log_tail: PreparedStatement,
    pub(crate) log_after: PreparedStatement,
    pub(crate) log_drop_bucket: PreparedStatement,
    pub(crate) log_meta_get: PreparedStatement,
    pub(crate) log_meta_set_head: PreparedStatement,
    pub(crate) log_meta_trim: PreparedStatement,
    pub(crate) log_meta_set_swept: PreparedStatement,

    pub(crate) device_get: PreparedStatement,
    pub(crate) devices_after: PreparedStatement,
    pub(crate) device_insert: PreparedStatement,
    pub(crate) device_touch: PreparedStatement,
    pub(crate) device_revoke: PreparedStatement,
    pub(crate) device_cursor_get: PreparedStatement,
    pub(crate) device_cursors_between: PreparedStatement,
    /// Its timestamp is the cursor: the higher cursor stands.
    pub(crate) device_cursor_save: PreparedStatement,

    /// This and `desk_record_delete` take their timestamp from
    /// `desk::next_timestamp`, so a call's writes stand in their order.
    pub(crate) desk_record_put: PreparedStatement,
    pub(crate) desk_record_delete: PreparedStatement,
    pub(crate) desk_record_get: PreparedStatement,
    pub(crate) desk_records_after: PreparedStatement,
}

impl Statements {
    pub(crate) async fn prepare(
        session: &Session,
        keyspace: &str,
        serial: Consistency,
    ) -> Result<Self> {
        let p = Preparer {
            session,
            keyspace,
            serial,
        };
        Ok(Self {
            conversation_insert: p
                .lwt(
                    "INSERT INTO {ks}.conversations \
                     (tenant_id, conversation_id, subject, created_by, created_at, member_count) \
                     VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS",
                )
                .await?,
            conversation_get: p
                .read(
                    "SELECT subject, created_by, created_at, member_count, last_seq \
                     FROM {ks}.conversations WHERE tenant_id = ? AND conversation_id = ?",
                )
                .await?,
            conversation_set_count: p
                .lwt(
                    "UPDATE {ks}.conversations SET member_count = ? \
                     WHERE tenant_id = ? AND conversation_id = ? IF member_count = ?",
                )
                .await?,
            conversation_set_hint: p
                .write(
                    "UPDATE {ks}.conversations SET last_seq = ? \
                     WHERE tenant_id = ? AND conversation_id = ?",
                )
                .await?,
            lifecycle_write: p
                .write(
                    "UPDATE {ks}.conversation_lifecycles SET lifecycle = ? \
                     WHERE tenant_id = ? AND conversation_id = ?",
                )
                .await?,
            lifecycle_get: p
                .read(
                    "SELECT lifecycle FROM {ks}.conversation_lifecycles \
                     WHERE tenant_id = ? AND conversation_id = ?",
                )
                .await?,

            message_write: p
                .write(
                    "INSERT INTO {ks}.messages (tenant_id, conversation_id, bucket, seq, \
                     message_id, sender_id, client_message_id, sent_at, content) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .await?,
            message_tail: p
                .read(
                    "SELECT seq FROM {ks}.messages \
                     WHERE tenant_id = ? AND conversation_id = ? AND bucket = ? \
                     ORDER BY seq DESC LIMIT 1",
                )
                .await?,
            messages_after: p
                .read(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM {{ks}}.messages \
                     WHERE tenant_id = ? AND conversation_id = ? AND bucket = ? AND seq > ? \
                     LIMIT ?"
                ))
                .await?,
            messages_through_desc: p
                .read(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM {{ks}}.messages \
                     WHERE tenant_id = ? AND conversation_id = ? AND bucket = ? AND seq <= ? \
                     ORDER BY seq DESC LIMIT ?"
                ))
                .await?,
            // Timestamps bound, not left to a clock: see `announcements.rs`.
            announcement_keep: p
                .write(
                    "INSERT INTO {ks}.announcements (partition, version, events) \
                     VALUES (?, ?, ?) USING TIMESTAMP ?",
                )
                .await?,
            announcements_after: p
                .read(
                    "SELECT version, events FROM {ks}.announcements \
                     WHERE partition = ? AND version > ? LIMIT ?",
                )
                .await?,
            announcements_forget: p
                .write(
                    "DELETE FROM {ks}.announcements USING TIMESTAMP ? \
                     WHERE partition = ? AND version <= ?",
                )
                .await?,

            lease_get_serial: p
                .serial_read(
                    "SELECT owner, epoch, until FROM {ks}.leases WHERE scope = ? AND partition = ?",
                )
                .await?,
            lease_insert: p
                .lwt(
                    "INSERT INTO {ks}.leases (scope, partition, owner, epoch, until) \
                     VALUES (?, ?, ?, 1, ?) IF NOT EXISTS",
                )
                .await?,
            lease_take_over: p
                .lwt(
                    "UPDATE {ks}.leases SET owner = ?, epoch = ?, until = ? \
                     WHERE scope = ? AND partition = ? IF epoch = ? AND until <= ?",
                )
                .await?,
            lease_set_until: p
                .lwt(
                    "UPDATE {ks}.leases SET until = ? \
                     WHERE scope = ? AND partition = ? IF owner = ? AND epoch = ?",
                )
                .await?,

            member_insert: p
                .lwt(
                    "INSERT INTO {ks}.members \
                     (tenant_id, conversation_id, shard, user_id, role, joined_at, read_seq) \
                     VALUES (?, ?, ?, ?, ?, ?, 0) IF NOT EXISTS",
                )
                .await?,
            member_get: p
                .read(&format!(
                    "SELECT {MEMBER_COLUMNS} FROM {{ks}}.members \
                     WHERE tenant_id = ? AND conversation_id = ? AND shard = ? AND user_id = ?"
                ))
                .await?,
            member_delete: p
                .lwt(
                    "DELETE FROM {ks}.members \
                     WHERE tenant_id = ? AND conversation_id = ? AND shard = ? AND user_id = ? \
                     IF EXISTS",
                )
                .await?,
            members_after: p
                .read(&format!(
                    "SELECT user_id, {MEMBER_COLUMNS} FROM {{ks}}.members \
                     WHERE tenant_id = ? AND conversation_id = ? AND shard = ? AND user_id > ? \
                     LIMIT ?"
                ))
                .await?,
            member_mark_read: p
                .lwt(
                    "UPDATE {ks}.members SET read_seq = ? \
                     WHERE tenant_id = ? AND conversation_id = ? AND shard = ? AND user_id = ? \
                     IF read_seq < ?",
                )
                .await?,

            user_conversation_put: p
                .write(
                    "INSERT INTO {ks}.user_conversations \
                     (tenant_id, user_id, bucket, conversation_id) VALUES (?, ?, ?, ?)",
                )
                .await?,
            user_conversation_delete: p
                .write(
                    "DELETE FROM {ks}.user_conversations WHERE tenant_id = ? AND user_id = ? \
                     AND bucket = ? AND conversation_id = ?",
                )
                .await?,
            user_conversations_first: p
                .read(
                    "SELECT conversation_id FROM {ks}.user_conversations \
                     WHERE tenant_id = ? AND user_id = ? AND bucket = ? LIMIT ?",
                )
                .await?,
            user_conversations_before: p
                .read(
                    "SELECT conversation_id FROM {ks}.user_conversations \
                     WHERE tenant_id = ? AND user_id = ? AND bucket = ? \
                     AND conversation_id < ? LIMIT ?",
                )
                .await?,
            user_bucket_put: p
                .write(
                    "INSERT INTO {ks}.user_conversation_buckets (tenant_id, user_id, bucket) \
                     VALUES (?, ?, ?)",
                )
                .await?,
            user_buckets_through: p
                .read(
                    "SELECT bucket FROM {ks}.user_conversation_buckets \
                     WHERE tenant_id = ? AND user_id = ? AND bucket <= ? LIMIT ?",
                )
                .await?,

            log_write: p
                .write(
                    "INSERT INTO {ks}.user_logs \
                     (tenant_id, user_id, bucket, position, event, written_at) \
                     VALUES (?, ?, ?, ?, ?, ?)",
                )
                .await?,
            log_tail: p
                .read(
                    "SELECT position FROM {ks}.user_logs \
                     WHERE tenant_id = ? AND user_id = ? AND bucket = ? \
                     ORDER BY position DESC LIMIT 1",
                )
                .await?,
            log_after: p
                .read(
                    "SELECT position, event FROM {ks}.user_logs \
                     WHERE tenant_id = ? AND user_id = ? AND bucket = ? AND position > ? LIMIT ?",
                )
                .await?,
            log_drop_bucket: p
                .write(
                    "DELETE FROM {ks}.user_logs WHERE tenant_id = ? AND user_id = ? AND bucket = ?",
                )
                .await?,
            log_meta_get: p
                .read(
                    "SELECT head_hint, trimmed_through, swept_bucket FROM {ks}.user_log_meta \
                     WHERE tenant_id = ? AND user_id = ?",
                )
                .await?,
            log_meta_set_head: p
                .write(
                    "UPDATE {ks}.user_log_meta SET head_hint = ? \
                     WHERE tenant_id = ? AND user_id = ?",
                )
                .await?,
            log_meta_trim: p
                .lwt(
                    "UPDATE {ks}.user_log_meta SET trimmed_through = ? \
                     WHERE tenant_id = ? AND user_id = ? IF trimmed_through = ?",
                )
                .await?,
            log_meta_set_swept: p
                .write(
                    "UPDATE {ks}.user_log_meta SET swept_bucket = ? \
                     WHERE tenant_id = ? AND user_id = ?",
                )
                .await?,

            device_get: p
                .read(&format!(
                    "SELECT {DEVICE_COLUMNS} FROM {{ks}}.devices \
                     WHERE tenant_id = ? AND user_id = ? AND device_id = ?"
                ))
                .await?,
            devices_after: p
                .read(&format!(
                    "SELECT device_id, {DEVICE_COLUMNS} FROM {{ks}}.devices \
                     WHERE tenant_id = ? AND user_id = ? AND device_id > ? LIMIT ?"
                ))
                .await?,
            device_insert: p
                .lwt(
                    "INSERT INTO {ks}.devices (tenant_id, user_id, device_id, label, last_seen, \
                     revoked) VALUES (?, ?, ?, ?, ?, false) IF NOT EXISTS",
                )
                .await?,
            device_touch: p
                .lwt(
                    "UPDATE {ks}.devices SET label = ?, last_seen = ? \
                     WHERE tenant_id = ? AND user_id = ? AND device_id = ? IF revoked = false",
                )
                .await?,
            device_revoke: p
                .lwt(
                    "UPDATE {ks}.devices SET revoked = true \
                     WHERE tenant_id = ? AND user_id = ? AND device_id = ? IF EXISTS",
                )
                .await?,
            device_cursor_get: p
                .read(
                    "SELECT acked FROM {ks}.device_cursors \
                     WHERE tenant_id = ? AND user_id = ? AND device_id = ?",
                )
                .await?,
            device_cursors_between: p
                .read(
                    "SELECT device_id, acked FROM {ks}.device_cursors \
                     WHERE tenant_id = ? AND user_id = ? AND device_id > ? AND device_id <= ? \
                     LIMIT ?",
                )
                .await?,
            device_cursor_save: p
                .write(
                    "UPDATE {ks}.device_cursors USING TIMESTAMP ? SET acked = ? \
                     WHERE tenant_id = ? AND user_id = ? AND device_id = ?",
                )
                .await?,

            desk_record_put: p
                .write(
                    "INSERT INTO {ks}.desk_records (tenant_id, kind, id, body) VALUES (?, ?, ?, ?) \
                     USING TIMESTAMP ?",
                )
                .await?,
            desk_record_delete: p
                .write(
                    "DELETE FROM {ks}.desk_records USING TIMESTAMP ? \
                     WHERE tenant_id = ? AND kind = ? AND id = ?",
                )
                .await?,
            desk_record_get: p
                .read("SELECT body FROM {ks}.desk_records WHERE tenant_id = ? AND kind = ? AND id = ?")
                .await?,
            desk_records_after: p
                .read(
                    "SELECT id, body FROM {ks}.desk_records \
                     WHERE tenant_id = ? AND kind = ? AND id > ? LIMIT ?",
                )
                .await?,
        })
    }
}

struct Preparer<'a> {
    session: &'a Session,
    keyspace: &'a str,
    serial: Consistency,
}

impl Preparer<'_> {
    async fn prepare(&self, cql: &str) -> Result<PreparedStatement> {
        let cql = cql.replace("{ks}", self.keyspace);
        self.session
            .prepare(cql.as_str())
            .await
            .map_err(|e| StoreError::Unavailable(format!("cql prepare {cql:?}: {e}")))
    }

    /// A read the driver may retry on another replica.
    async fn read(&self, cql: &str) -> Result<PreparedStatement> {
        let mut statement = self.prepare(cql).await?;
        statement.set_is_idempotent(true);
        Ok(statement)
    }

    /// A linearizable read: it also completes any LWT left half-done on
    /// the partition, so what it returns cannot change under the caller.
    async fn serial_read(&self, cql: &str) -> Result<PreparedStatement> {
        let mut statement = self.read(cql).await?;
        statement.set_consistency(self.serial);
        Ok(statement)
    }

    /// A plain write whose repeat is harmless.
    async fn write(&self, cql: &str) -> Result<PreparedStatement> {
        self.read(cql).await
    }

    /// A conditional write: never retried blindly by the driver.
    async fn lwt(&self, cql: &str) -> Result<PreparedStatement> {
        let mut statement = self.prepare(cql).await?;
        statement.set_is_idempotent(false);
        Ok(statement)
    }
}
