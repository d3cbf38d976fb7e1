//! [`SyncStore`] on CQL: per-user update logs in buckets of 1024 positions,
//! written as messages are (`sequences.rs`) and trimmed by whole-partition
//! deletes, and the user's devices.

use std::collections::HashMap;

use async_trait::async_trait;
use natter_core::{Cursor, Device, DeviceId, TenantId, Timestamp, Update, UserId};
use natter_proto::codec::{decode_event, encode_event};
use natter_store::{
    Page, PageRequest, Result, StoreError, SyncStore, UpdateBatch, validate_update_write,
};
use scylla::value::CqlTimestamp;

use crate::conversations::{ROWS_PER_READ, position};
use crate::db::corrupt;
use crate::layout::{bucket_last, bucket_of, find_head, to_bigint};
use crate::sequences::{Sequence, each_sequence, timestamp};
use crate::{CqlStore, MAX_DEVICES_PER_USER, now_millis, page};

/// Compare-and-set rounds on a log's trim floor before giving up.
const MAX_TRIM_ROUNDS: usize = 8;

/// Partitions one `trim_updates` call deletes at most; the next call goes
/// on where it stopped (what is trimmed is already unreadable).
const MAX_SWEEP_PER_CALL: i64 = 256;

/// Rounds of `touch_device` against concurrent registration or revocation.
const MAX_TOUCH_ROUNDS: usize = 3;

/// The `user_log_meta` row of one user.
#[derive(Debug, Default)]
struct LogMeta {
    head_hint: u64,
    /// Updates at or before this are forgotten.
    trimmed_through: u64,
    /// The stored column as read, for compare-and-set.
    trimmed_raw: Option<i64>,
    /// Buckets below this are deleted.
    swept_bucket: i64,
}

type DeviceColumns = (
    Option<String>,
    Option<i64>,
    Option<CqlTimestamp>,
    Option<bool>,
);

/// A device from its `devices` row and its `device_cursors.acked`; a
/// cursor recorded before `device_cursors` existed is in the row.
fn decode_device(
    tenant: &TenantId,
    user: &UserId,
    device_id: DeviceId,
    (label, recorded, last_seen, revoked): DeviceColumns,
    acked: Option<i64>,
) -> Result<Device> {
    let cursor = recorded.max(acked).unwrap_or(0);
    Ok(Device {
        tenant_id: tenant.clone(),
        user_id: user.clone(),
        label: label.unwrap_or_default(),
        cursor: Cursor::new(position(&format!("device {device_id}"), cursor)?),
        last_seen: Timestamp::from_millis(last_seen.map_or(0, |t| t.0)),
        revoked: revoked.unwrap_or(false),
        device_id,
    })
}

fn revoked(device: &DeviceId) -> StoreError {
    StoreError::FailedPrecondition(format!("device {device} is revoked"))
}

impl CqlStore {
    async fn log_meta(&self, tenant: &TenantId, user: &UserId) -> Result<LogMeta> {
        let row: Option<(Option<i64>, Option<i64>, Option<i64>)> = self
            .db()
            .row(
                "read update log meta",
                &self.statements.log_meta_get,
                (tenant.as_str(), user.as_str()),
            )
            .await?;
        let Some((head, trimmed, swept)) = row else {
            return Ok(LogMeta::default());
        };
        let what = format!("update log meta of {user}");
        Ok(LogMeta {
            head_hint: position(&what, head.unwrap_or(0))?,
            trimmed_through: position(&what, trimmed.unwrap_or(0))?,
            trimmed_raw: trimmed,
            swept_bucket: swept.unwrap_or(0).max(0),
        })
    }

    /// The log's meta row and its exact head. The head is probed from the
    /// hint or from just past the trim point, whichever is later: buckets
    /// below that may be deleted. A trim that lands between reading the
    /// meta row and probing shows as a head below what the row promised;
    /// then both are read once more.
    async fn log_state(&self, tenant: &TenantId, user: &UserId) -> Result<(LogMeta, u64)> {
        let mut meta = self.log_meta(tenant, user).await?;
        for _ in 0..2 {
            let floor = meta.head_hint.max(meta.trimmed_through);
            let start = meta.head_hint.max(meta.trimmed_through.saturating_add(1));
            let db = self.db();
            let statement = &self.statements.log_tail;
            let head = find_head(start, |bucket| async move {
                let last: Option<(i64,)> = db
                    .row(
                        "read update log tail",
                        statement,
                        (tenant.as_str(), user.as_str(), bucket),
                    )
                    .await?;
                last.map(|(p,)| position("update position", p)).transpose()
            })
            .await?;
            if let Some(head) = head.filter(|head| *head >= floor) {
                return Ok((meta, head));
            }
            meta = self.log_meta(tenant, user).await?;
        }
        Err(corrupt(
            &format!("update log of {user}"),
            format!(
                "no updates near its head hint {} and trim point {}",
                meta.head_hint, meta.trimmed_through
            ),
        ))
    }

    /// Deletes the partitions wholly at or before `through` and below the
    /// head's bucket, from where the last sweep stopped.
    async fn sweep(
        &self,
        tenant: &TenantId,
        user: &UserId,
        meta: &LogMeta,
        through: u64,
        head: u64,
    ) -> Result<()> {
        let last = (bucket_of(through.saturating_add(1)) - 1).min(bucket_of(head) - 1);
        let last = last.min(meta.swept_bucket + MAX_SWEEP_PER_CALL - 1);
        if last < meta.swept_bucket {
            return Ok(());
        }
        for bucket in meta.swept_bucket..=last {
            self.db()
                .write(
                    "delete update bucket",
                    &self.statements.log_drop_bucket,
                    (tenant.as_str(), user.as_str(), bucket),
                )
                .await?;
        }
        self.db()
            .write(
                "record update log sweep",
                &self.statements.log_meta_set_swept,
                (last + 1, tenant.as_str(), user.as_str()),
            )
            .await
    }
}

#[async_trait]
impl SyncStore for CqlStore {
    async fn log_head(&self, tenant: &TenantId, user: &UserId) -> Result<Cursor> {
        let (_, head) = self.log_state(tenant, user).await?;
        Ok(Cursor::new(head))
    }

    async fn write_updates(
        &self,
        updates: &[(TenantId, UserId, Update)],
        version: u64,
    ) -> Result<()> {
        validate_update_write(updates, version, &self.limits)?;
        let timestamp = timestamp(version);
        // Informational only: nothing reads it back.
        let written_at = CqlTimestamp(now_millis());
        let rows = updates.iter().map(|(tenant, user, update)| {
            let cursor = update.cursor.get();
            let values = (
                tenant.as_str(),
                user.as_str(),
                bucket_of(cursor),
                to_bigint(cursor),
                encode_event(&update.event),
                written_at,
            );
            ((tenant, user), (cursor, values))
        });
        each_sequence(rows, |(tenant, user), rows| async move {
            let log = Sequence {
                name: user,
                what: "write updates",
                insert: &self.statements.log_write,
                set_hint: &self.statements.log_meta_set_head,
            };
            let hint = |head| (head, tenant.as_str(), user.as_str());
            self.write_sequence(log, rows, hint, timestamp).await
        })
        .await
    }

    async fn read_updates(
        &self,
        tenant: &TenantId,
        user: &UserId,
        after: Cursor,
        limit: u32,
    ) -> Result<UpdateBatch> {
        let limit = u64::from(self.page_size(limit));
        let (meta, head) = self.log_state(tenant, user).await?;
        let after = after.get();
        // Below the trim point the next update is gone; past the head the
        // device claims updates this log never had. Either way: resync.
        if after < meta.trimmed_through || after > head {
            return Ok(UpdateBatch::ResyncRequired {
                head: Cursor::new(head),
            });
        }
        let through = head.min(after.saturating_add(limit));
        let mut updates = Vec::new();
        let mut next = after + 1;
        'read: while next <= through {
            let bucket = bucket_of(next);
            let want = (through.min(bucket_last(bucket)) - next + 1).min(u64::from(ROWS_PER_READ));
            let rows: Vec<(i64, Option<Vec<u8>>)> = self
                .db()
                .rows(
                    "read updates",
                    &self.statements.log_after,
                    (
                        tenant.as_str(),
                        user.as_str(),
                        bucket,
                        to_bigint(next - 1),
                        want as i32,
                    ),
                )
                .await?;
            let got = rows.len() as u64;
            for (at, event) in rows {
                if position("update position", at)? != next {
                    break 'read;
                }
                let event = decode_event(&event.unwrap_or_default())
                    .map_err(|e| corrupt(&format!("update {next} of {user}"), e))?;
                updates.push(Update {
                    cursor: Cursor::new(next),
                    event,
                });
                next += 1;
            }
            if got < want {
                break;
            }
        }
        if next <= through {
            // A hole: a trim raced this read, or the log is damaged.
            if after < self.log_meta(tenant, user).await?.trimmed_through {
                return Ok(UpdateBatch::ResyncRequired {
                    head: Cursor::new(head),
                });
            }
            return Err(corrupt(
                &format!("update log of {user}"),
                format!("update {next} is missing below the head {head}"),
            ));
        }
        Ok(UpdateBatch::Updates(updates))
    }

    async fn trim_updates(&self, tenant: &TenantId, user: &UserId, through: Cursor) -> Result<()> {
        let (meta, head) = self.log_state(tenant, user).await?;
        // A trim point past the head would send devices to resync for
        // updates not yet written.
        let through = through.get().min(head);
        if through > meta.trimmed_through {
            let mut observed = meta.trimmed_raw;
            let mut rounds = 0;
            loop {
                let raised = self
                    .db()
                    .lwt(
                        "raise update log trim point",
                        &self.statements.log_meta_trim,
                        (to_bigint(through), tenant.as_str(), user.as_str(), observed),
                    )
                    .await?;
                if raised.applied {
                    break;
                }
                observed = raised.bigint("trimmed_through");
                if observed.is_some_and(|now| now >= to_bigint(through)) {
                    break;
                }
                rounds += 1;
                if rounds >= MAX_TRIM_ROUNDS {
                    return Err(StoreError::Unavailable(format!(
                        "trim of the update log of {user} is contended; retry"
                    )));
                }
            }
        }
        // Physical deletion trails the trim point, and resumes here after
        // an interrupted call.
        self.sweep(tenant, user, &meta, through.max(meta.trimmed_through), head)
            .await
    }

    async fn touch_device(&self, device: &Device) -> Result<Device> {
        let (tenant, user, id) = (&device.tenant_id, &device.user_id, &device.device_id);
        for _ in 0..MAX_TOUCH_ROUNDS {
            match self.device(tenant, user, id).await? {
                Some(known) if known.revoked => return Err(revoked(id)),
                Some(known) => {
                    let touched = self
                        .db()
                        .lwt(
                            "touch device",
                            &self.statements.device_touch,
                            (
                                device.label.as_str(),
                                CqlTimestamp(device.last_seen.as_millis()),
                                tenant.as_str(),
                                user.as_str(),
                                id.as_str(),
                            ),
                        )
                        .await?;
                    if touched.applied {
                        return Ok(Device {
                            label: device.label.clone(),
                            last_seen: device.last_seen,
                            ..known
                        });
                    }
                    if touched.boolean("revoked") == Some(true) {
                        return Err(revoked(id));
                    }
                }
                None => {
                    let registered = self
                        .list_devices(
                            tenant,
                            user,
                            PageRequest {
                                after: None,
                                size: MAX_DEVICES_PER_USER as u32,
                            },
                        )
                        .await?;
                    if registered.items.len() >= MAX_DEVICES_PER_USER {
                        return Err(StoreError::LimitExceeded(format!(
                            "user {user} has {MAX_DEVICES_PER_USER} devices, the limit"
                        )));
                    }
                    let inserted = self
                        .db()
                        .lwt(
                            "register device",
                            &self.statements.device_insert,
                            (
                                tenant.as_str(),
                                user.as_str(),
                                id.as_str(),
                                device.label.as_str(),
                                CqlTimestamp(device.last_seen.as_millis()),
                            ),
                        )
                        .await?;
                    if inserted.applied {
                        // A new device has seen nothing of the log yet.
                        return Ok(Device {
                            cursor: Cursor::ZERO,
                            revoked: false,
                            ..device.clone()
                        });
                    }
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "device {id} of {user} is changing concurrently; retry"
        )))
    }

    async fn device(
        &self,
        tenant: &TenantId,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<Option<Device>> {
        let key = (tenant.as_str(), user.as_str(), device.as_str());
        let db = self.db();
        let (row, acked) = futures::try_join!(
            db.row::<DeviceColumns>("read device", &self.statements.device_get, key),
            db.row::<(Option<i64>,)>(
                "read device cursor",
                &self.statements.device_cursor_get,
                key
            ),
        )?;
        row.map(|row| decode_device(tenant, user, device.clone(), row, acked.and_then(|a| a.0)))
            .transpose()
    }

    async fn list_devices(
        &self,
        tenant: &TenantId,
        user: &UserId,
        request: PageRequest<DeviceId>,
    ) -> Result<Page<Device, DeviceId>> {
        let size = self.page_size(request.size);
        type Row = (
            String,
            Option<String>,
            Option<i64>,
            Option<CqlTimestamp>,
            Option<bool>,
        );
        let rows: Vec<Row> = self
            .db()
            .rows(
                "list devices",
                &self.statements.devices_after,
                (
                    tenant.as_str(),
                    user.as_str(),
                    request.after.as_ref().map_or("", DeviceId::as_str),
                    i32::try_from(size + 1).unwrap_or(i32::MAX),
                ),
            )
            .await?;
        let acked = match rows.last() {
            None => HashMap::new(),
            Some((last, ..)) => self
                .db()
                .rows::<(String, Option<i64>)>(
                    "list device cursors",
                    &self.statements.device_cursors_between,
                    (
                        tenant.as_str(),
                        user.as_str(),
                        request.after.as_ref().map_or("", DeviceId::as_str),
                        last.as_str(),
                        i32::try_from(rows.len()).unwrap_or(i32::MAX),
                    ),
                )
                .await?
                .into_iter()
                .collect(),
        };
        let devices = rows
            .into_iter()
            .map(|(id, label, cursor, last_seen, revoked)| {
                let acked = acked.get(&id).copied().flatten();
                let id = DeviceId::new(id).map_err(|e| corrupt("device id", e))?;
                decode_device(tenant, user, id, (label, cursor, last_seen, revoked), acked)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(page(devices, size, |d| d.device_id.clone()))
    }

    async fn save_cursor(
        &self,
        tenant: &TenantId,
        user: &UserId,
        device: &DeviceId,
        cursor: Cursor,
    ) -> Result<()> {
        let key = (tenant.as_str(), user.as_str(), device.as_str());
        let known: Option<DeviceColumns> = self
            .db()
            .row("read device", &self.statements.device_get, key)
            .await?;
        match known {
            None => Err(StoreError::not_found("device", device)),
            Some((.., Some(true))) => Err(revoked(device)),
            // No LWT: the cursor is the write's timestamp, so a lower
            // cursor landing later loses. A revocation racing this write
            // leaves a cursor nobody can use.
            Some(_) => {
                let at = to_bigint(cursor.get());
                self.db()
                    .write(
                        "save device cursor",
                        &self.statements.device_cursor_save,
                        (at, at, key.0, key.1, key.2),
                    )
                    .await
            }
        }
    }

    async fn revoke_device(
        &self,
        tenant: &TenantId,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<()> {
        let revoked = self
            .db()
            .lwt(
                "revoke device",
                &self.statements.device_revoke,
                (tenant.as_str(), user.as_str(), device.as_str()),
            )
            .await?;
        if !revoked.applied {
            return Err(StoreError::not_found("device", device));
        }
        Ok(())
    }
}
