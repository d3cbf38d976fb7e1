//! [`LeaseStore`]: who holds each partition of each scope. Each call is one
//! write transaction, so checking a lease and changing it cannot race.

use std::time::Duration;

use async_trait::async_trait;
use natter_core::Timestamp;
use natter_store::{Lease, LeaseStore, Result};
use redb::{ReadableTable, TableDefinition, TableHandle, WriteTransaction};

use crate::record::LeaseRecord;
use crate::tables::LEASES;
use crate::{EmbeddedStore, TxResult};

type LeaseKey = (&'static str, u32);

/// Lets every lease lapse, when the file is opened: one process at a time
/// holds the file, so whoever held leases in it before is gone, and the
/// partitions are free at once rather than when the leases would lapse.
/// Epochs stay, so the next holders' are higher.
pub(crate) fn lapse_all(db: &redb::Database) -> TxResult<()> {
    let txn = db.begin_write()?;
    {
        let mut leases = txn.open_table(LEASES)?;
        let held: Vec<((String, u32), LeaseRecord)> = leases
            .iter()?
            .map(|entry| {
                let (key, value) = entry?;
                let (scope, partition) = key.value();
                let record = LeaseRecord::decode(value.value())?;
                Ok(((scope.to_owned(), partition), record))
            })
            .collect::<TxResult<_>>()?;
        for ((scope, partition), record) in held {
            let lapsed = LeaseRecord {
                until: Timestamp::from_millis(0),
                ..record
            };
            leases.insert((scope.as_str(), partition), lapsed.encode().as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// The scope format 1's leases belong to: they were keyed by partition
/// alone, and only the storage service's sequencers held any.
const FORMAT_1_SCOPE: &str = "storage";

/// Moves a format 1 file's leases, keyed by partition alone, into
/// [`LEASES`] under [`FORMAT_1_SCOPE`], epochs and all, so the next holders'
/// epochs are still higher. Part of the transaction that upgrades the file.
pub(crate) fn rescope(txn: &WriteTransaction) -> TxResult<()> {
    const UNSCOPED: TableDefinition<u32, &[u8]> = TableDefinition::new("leases");
    let exists = txn.list_tables()?.any(|table| table.name() == "leases");
    if !exists {
        return Ok(());
    }
    let held: Vec<(u32, Vec<u8>)> = txn
        .open_table(UNSCOPED)?
        .iter()?
        .map(|entry| {
            let (partition, value) = entry?;
            Ok((partition.value(), value.value().to_vec()))
        })
        .collect::<TxResult<_>>()?;
    txn.delete_table(UNSCOPED)?;
    let mut leases = txn.open_table(LEASES)?;
    for (partition, record) in held {
        leases.insert((FORMAT_1_SCOPE, partition), record.as_slice())?;
    }
    Ok(())
}

/// `now + ttl`, saturating.
fn until(now: Timestamp, ttl: Duration) -> Timestamp {
    let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    Timestamp::from_millis(now.as_millis().saturating_add(ttl))
}

/// The lease on a `(scope, partition)` as stored, if it was ever taken.
fn stored(
    table: &impl ReadableTable<LeaseKey, &'static [u8]>,
    key: (&str, u32),
) -> TxResult<Option<LeaseRecord>> {
    Ok(table
        .get(key)?
        .map(|value| LeaseRecord::decode(value.value()))
        .transpose()?)
}

fn lease((scope, partition): (&str, u32), record: LeaseRecord) -> Lease {
    Lease {
        scope: scope.to_owned(),
        partition,
        owner: record.owner,
        epoch: record.epoch,
        until: record.until,
    }
}

#[async_trait]
impl LeaseStore for EmbeddedStore {
    async fn acquire_lease(
        &self,
        scope: &str,
        partition: u32,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        let (scope, owner) = (scope.to_owned(), owner.to_owned());
        self.write(move |txn| {
            let mut leases = txn.open_table(LEASES)?;
            let key = (scope.as_str(), partition);
            let held = stored(&leases, key)?;
            // Still held, even by `owner` itself: refused. A lapsed or
            // released lease goes to whoever asks, its last owner included,
            // always with a new epoch, so writes made under the old one are
            // fenced whoever takes over.
            if held.as_ref().is_some_and(|held| held.until > now) {
                return Ok(None);
            }
            let record = LeaseRecord {
                owner: owner.clone(),
                epoch: held.map_or(1, |held| held.epoch.saturating_add(1)),
                until: until(now, ttl),
            };
            leases.insert(key, record.encode().as_slice())?;
            Ok(Some(lease(key, record)))
        })
        .await
    }

    async fn renew_lease(
        &self,
        lease: &Lease,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        let lease = lease.clone();
        // Unflushed: every lease lapses when the file is opened again
        // (`lapse_all`), so a renewal lost in a crash costs nothing, and
        // waiting for a flush would hold every partition's renewal, every
        // two seconds, in front of the writes that carry messages.
        self.write_unflushed(move |txn| {
            let mut leases = txn.open_table(LEASES)?;
            let key = (lease.scope.as_str(), lease.partition);
            match stored(&leases, key)? {
                Some(held) if held.owner == lease.owner && held.epoch == lease.epoch => {
                    let record = LeaseRecord {
                        until: until(now, ttl),
                        ..held
                    };
                    leases.insert(key, record.encode().as_slice())?;
                    Ok(Some(self::lease(key, record)))
                }
                _ => Ok(None),
            }
        })
        .await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let lease = lease.clone();
        self.write(move |txn| {
            let mut leases = txn.open_table(LEASES)?;
            let key = (lease.scope.as_str(), lease.partition);
            if let Some(held) = stored(&leases, key)?
                && held.owner == lease.owner
                && held.epoch == lease.epoch
            {
                // The epoch stays, so the next holder's is higher.
                let released = LeaseRecord {
                    until: Timestamp::from_millis(0),
                    ..held
                };
                leases.insert(key, released.encode().as_slice())?;
            }
            Ok(())
        })
        .await
    }

    /// A file of this process: reachable while the process runs.
    async fn reachable(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use natter_core::Limits;
    use redb::{Database, ReadableDatabase};

    use super::*;
    use crate::tables::{FORMAT_KEY, FORMAT_VERSION, META};
    use crate::{DATABASE_FILE, EmbeddedStore};

    /// A file of format 1 keyed leases by partition alone; opening it moves
    /// them under storage's scope, epochs and all.
    #[tokio::test]
    async fn format_1_leases_become_storage_leases() {
        const UNSCOPED: TableDefinition<u32, &[u8]> = TableDefinition::new("leases");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(DATABASE_FILE);
        let held = LeaseRecord {
            owner: "old".into(),
            epoch: 7,
            until: Timestamp::from_millis(i64::MAX),
        };
        {
            let db = Database::create(&file).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert(FORMAT_KEY, 1).unwrap();
            let mut leases = txn.open_table(UNSCOPED).unwrap();
            leases.insert(3, held.encode().as_slice()).unwrap();
            drop(leases);
            txn.commit().unwrap();
        }

        let store = EmbeddedStore::open(dir.path(), Limits::default()).unwrap();
        let now = Timestamp::from_millis(1_000);
        let ttl = Duration::from_secs(10);
        let storage = store.acquire_lease("storage", 3, "new", now, ttl).await;
        let storage = storage.unwrap().expect("lapsed when the file opened");
        assert_eq!(storage.epoch, 8, "above the format 1 holder's");
        let sync = store.acquire_lease("sync", 3, "new", now, ttl).await;
        assert_eq!(sync.unwrap().expect("never taken").epoch, 1);
        drop(store);

        let db = Database::create(&file).unwrap();
        let txn = db.begin_read().unwrap();
        let format = txn.open_table(META).unwrap().get(FORMAT_KEY).unwrap();
        assert_eq!(format.map(|v| v.value()), Some(FORMAT_VERSION));
    }
}
