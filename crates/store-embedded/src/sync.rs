//! [`SyncStore`]: per-user update logs and devices.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ops::Bound;

use async_trait::async_trait;
use natter_core::{Cursor, Device, DeviceId, TenantId, Update, UserId};
use natter_proto::codec;
use natter_store::{
    Page, PageRequest, Result, StoreError, SyncStore, UpdateBatch, validate_update_write,
};
use redb::{ReadableTable, Table};

use crate::record::{LogHead, decode_device, encode_device};
use crate::tables::{DEVICES, LOG_HEADS, UPDATES};
use crate::{EmbeddedStore, MAX_DEVICES_PER_USER, TxResult, into_page};

type UserKey = (&'static str, &'static str);
type DeviceKey = (&'static str, &'static str, &'static str);

fn load_head(
    table: &impl ReadableTable<UserKey, &'static [u8]>,
    tenant: &TenantId,
    user: &UserId,
) -> TxResult<LogHead> {
    table
        .get((tenant.as_str(), user.as_str()))?
        .map_or(Ok(LogHead::default()), |value| {
            Ok(LogHead::decode(value.value())?)
        })
}

fn load_device(
    table: &impl ReadableTable<DeviceKey, &'static [u8]>,
    tenant: &TenantId,
    user: &UserId,
    device: &DeviceId,
) -> TxResult<Option<Device>> {
    let value = table.get((tenant.as_str(), user.as_str(), device.as_str()))?;
    Ok(value
        .map(|value| decode_device(tenant, user, device.clone(), value.value()))
        .transpose()?)
}

/// Reads a device for a change: it must exist and not be revoked.
fn live_device(
    table: &impl ReadableTable<DeviceKey, &'static [u8]>,
    tenant: &TenantId,
    user: &UserId,
    device: &DeviceId,
) -> TxResult<Device> {
    match load_device(table, tenant, user, device)? {
        None => Err(StoreError::not_found("device", device).into()),
        Some(found) if found.revoked => Err(revoked(device).into()),
        Some(found) => Ok(found),
    }
}

fn revoked(device: &DeviceId) -> StoreError {
    StoreError::FailedPrecondition(format!("device {device} is revoked"))
}

fn save_device(table: &mut Table<'_, DeviceKey, &'static [u8]>, device: &Device) -> TxResult<()> {
    let key = (
        device.tenant_id.as_str(),
        device.user_id.as_str(),
        device.device_id.as_str(),
    );
    table.insert(key, encode_device(device).as_slice())?;
    Ok(())
}

/// Up to `limit` devices of one user, in device id order, after `after`.
fn scan_devices(
    table: &impl ReadableTable<DeviceKey, &'static [u8]>,
    tenant: &TenantId,
    user: &UserId,
    after: Option<&DeviceId>,
    limit: usize,
) -> TxResult<Vec<Device>> {
    let (t, u) = (tenant.as_str(), user.as_str());
    let lower = match after {
        Some(after) => Bound::Excluded((t, u, after.as_str())),
        None => Bound::Included((t, u, "")),
    };
    let mut devices = Vec::new();
    for entry in table.range((lower, Bound::Unbounded))? {
        let (key, value) = entry?;
        let (kt, ku, device) = key.value();
        if (kt, ku) != (t, u) || devices.len() == limit {
            break;
        }
        let device = DeviceId::new(device)
            .map_err(|e| StoreError::Corrupt(format!("device key of user {user}: {e}")))?;
        devices.push(decode_device(tenant, user, device, value.value())?);
    }
    Ok(devices)
}

#[async_trait]
impl SyncStore for EmbeddedStore {
    async fn log_head(&self, tenant: &TenantId, user: &UserId) -> Result<Cursor> {
        let (tenant, user) = (tenant.clone(), user.clone());
        self.read(move |txn| {
            let heads = txn.open_table(LOG_HEADS)?;
            Ok(load_head(&heads, &tenant, &user)?.head)
        })
        .await
    }

    async fn write_updates(
        &self,
        updates: &[(TenantId, UserId, Update)],
        version: u64,
    ) -> Result<()> {
        validate_update_write(updates, version, &self.limits)?;
        // Beyond that, `version` is not used: it orders writes of one
        // cursor that race, and here none do. One process holds the file,
        // and the sync service runs a partition's writes one at a time, so
        // the later write of a cursor is always the newer one and simply
        // replaces it.
        if updates.is_empty() {
            return Ok(());
        }
        // Encoded here, once: the transaction's work may run more than once.
        let entries: Vec<(TenantId, UserId, Cursor, Vec<u8>)> = updates
            .iter()
            .map(|(tenant, user, update)| {
                let bytes = codec::encode_event(&update.event);
                (tenant.clone(), user.clone(), update.cursor, bytes)
            })
            .collect();
        // One write: all of it lands or none, every user's log and head.
        self.write(move |txn| {
            let mut heads = txn.open_table(LOG_HEADS)?;
            let mut table = txn.open_table(UPDATES)?;
            let mut logs: HashMap<(&TenantId, &UserId), LogHead> = HashMap::new();
            for (tenant, user, cursor, bytes) in &entries {
                let log = match logs.entry((tenant, user)) {
                    Entry::Occupied(log) => log.into_mut(),
                    Entry::Vacant(log) => log.insert(load_head(&heads, tenant, user)?),
                };
                // At or below the trim point it is forgotten already: kept,
                // it would never be read, nor deleted by a later trim.
                if *cursor <= log.floor {
                    continue;
                }
                let key = (tenant.as_str(), user.as_str(), cursor.get());
                table.insert(key, bytes.as_slice())?;
                log.head = log.head.max(*cursor);
            }
            for ((tenant, user), log) in logs {
                heads.insert((tenant.as_str(), user.as_str()), log.encode().as_slice())?;
            }
            Ok(())
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
        let limit = self.page_size(limit);
        let (tenant, user) = (tenant.clone(), user.clone());
        self.read(move |txn| {
            let heads = txn.open_table(LOG_HEADS)?;
            let log = load_head(&heads, &tenant, &user)?;
            // Below the floor the next update is gone. Beyond the head the
            // device claims updates this log never had (it was restored from
            // an older backup, say): either way it must start over.
            if after < log.floor || after > log.head {
                return Ok(UpdateBatch::ResyncRequired { head: log.head });
            }
            let (t, u) = (tenant.as_str(), user.as_str());
            let updates = txn.open_table(UPDATES)?;
            let mut batch = Vec::new();
            let mut expected = after.next();
            for entry in updates
                .range((t, u, expected.get())..=(t, u, log.head.get()))?
                .take(limit)
            {
                let (key, value) = entry?;
                let cursor = Cursor::new(key.value().2);
                if cursor != expected {
                    return Err(StoreError::Corrupt(format!(
                        "update log of {user} has no update {expected}"
                    ))
                    .into());
                }
                let event = codec::decode_event(value.value())
                    .map_err(|e| StoreError::Corrupt(format!("update {cursor} of {user}: {e}")))?;
                batch.push(Update { cursor, event });
                expected = cursor.next();
            }
            if batch.len() < limit && expected <= log.head {
                return Err(StoreError::Corrupt(format!(
                    "update log of {user} has no update {expected}"
                ))
                .into());
            }
            Ok(UpdateBatch::Updates(batch))
        })
        .await
    }

    async fn trim_updates(&self, tenant: &TenantId, user: &UserId, through: Cursor) -> Result<()> {
        let (tenant, user) = (tenant.clone(), user.clone());
        self.write(move |txn| {
            let mut heads = txn.open_table(LOG_HEADS)?;
            let mut log = load_head(&heads, &tenant, &user)?;
            // Past the head there is nothing to forget, and a floor above it
            // would send devices to resync for updates not yet written.
            let through = through.min(log.head);
            if through <= log.floor {
                return Ok(());
            }
            let (t, u) = (tenant.as_str(), user.as_str());
            let mut updates = txn.open_table(UPDATES)?;
            updates.retain_in(
                (t, u, log.floor.next().get())..=(t, u, through.get()),
                |_, _| false,
            )?;
            log.floor = through;
            heads.insert((t, u), log.encode().as_slice())?;
            Ok(())
        })
        .await
    }

    async fn touch_device(&self, device: &Device) -> Result<Device> {
        let device = device.clone();
        self.write(move |txn| {
            let mut devices = txn.open_table(DEVICES)?;
            let (tenant, user) = (&device.tenant_id, &device.user_id);
            let stored = match load_device(&devices, tenant, user, &device.device_id)? {
                Some(known) if known.revoked => return Err(revoked(&device.device_id).into()),
                Some(known) => Device {
                    label: device.label.clone(),
                    last_seen: device.last_seen,
                    ..known
                },
                None => {
                    let registered =
                        scan_devices(&devices, tenant, user, None, MAX_DEVICES_PER_USER)?;
                    if registered.len() >= MAX_DEVICES_PER_USER {
                        return Err(StoreError::LimitExceeded(format!(
                            "user {user} has {MAX_DEVICES_PER_USER} devices, the limit"
                        ))
                        .into());
                    }
                    // A new device has seen nothing of the log yet.
                    Device {
                        cursor: Cursor::ZERO,
                        revoked: false,
                        ..device.clone()
                    }
                }
            };
            save_device(&mut devices, &stored)?;
            Ok(stored)
        })
        .await
    }

    async fn device(
        &self,
        tenant: &TenantId,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<Option<Device>> {
        let (tenant, user, device) = (tenant.clone(), user.clone(), device.clone());
        self.read(move |txn| {
            let devices = txn.open_table(DEVICES)?;
            load_device(&devices, &tenant, &user, &device)
        })
        .await
    }

    async fn list_devices(
        &self,
        tenant: &TenantId,
        user: &UserId,
        page: PageRequest<DeviceId>,
    ) -> Result<Page<Device, DeviceId>> {
        let size = self.page_size(page.size);
        let (tenant, user) = (tenant.clone(), user.clone());
        self.read(move |txn| {
            let devices = txn.open_table(DEVICES)?;
            let found = scan_devices(&devices, &tenant, &user, page.after.as_ref(), size + 1)?;
            Ok(into_page(found, size, |d: &Device| d.device_id.clone()))
        })
        .await
    }

    async fn save_cursor(
        &self,
        tenant: &TenantId,
        user: &UserId,
        device: &DeviceId,
        cursor: Cursor,
    ) -> Result<()> {
        let (tenant, user, device) = (tenant.clone(), user.clone(), device.clone());
        // A cursor lost in a crash only replays updates the device dedupes
        // by cursor, so it need not cost an fsync of its own.
        self.write_unflushed(move |txn| {
            let mut devices = txn.open_table(DEVICES)?;
            let mut stored = live_device(&devices, &tenant, &user, &device)?;
            if cursor > stored.cursor {
                stored.cursor = cursor;
                save_device(&mut devices, &stored)?;
            }
            Ok(())
        })
        .await
    }

    async fn revoke_device(
        &self,
        tenant: &TenantId,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<()> {
        let (tenant, user, device) = (tenant.clone(), user.clone(), device.clone());
        self.write(move |txn| {
            let mut devices = txn.open_table(DEVICES)?;
            let mut stored = load_device(&devices, &tenant, &user, &device)?
                .ok_or_else(|| StoreError::not_found("device", &device))?;
            if !stored.revoked {
                stored.revoked = true;
                save_device(&mut devices, &stored)?;
            }
            Ok(())
        })
        .await
    }
}
