//! [`LeaseStore`]: who holds each partition of conversations. Each call is
//! one write transaction, so checking a lease and changing it cannot race.

use std::time::Duration;

use async_trait::async_trait;
use natter_core::Timestamp;
use natter_store::{Lease, LeaseStore, Result};
use redb::ReadableTable;

use crate::record::LeaseRecord;
use crate::tables::LEASES;
use crate::{EmbeddedStore, TxResult};

/// Lets every lease lapse, when the file is opened: one process at a time
/// holds the file, so whoever held leases in it before is gone, and the
/// partitions are free at once rather than when the leases would lapse.
/// Epochs stay, so the next holders' are higher.
pub(crate) fn lapse_all(db: &redb::Database) -> TxResult<()> {
    let txn = db.begin_write()?;
    {
        let mut leases = txn.open_table(LEASES)?;
        let held: Vec<(u32, LeaseRecord)> = leases
            .iter()?
            .map(|entry| {
                let (partition, value) = entry?;
                Ok((partition.value(), LeaseRecord::decode(value.value())?))
            })
            .collect::<TxResult<_>>()?;
        for (partition, record) in held {
            let lapsed = LeaseRecord {
                until: Timestamp::from_millis(0),
                ..record
            };
            leases.insert(partition, lapsed.encode().as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// `now + ttl`, saturating.
fn until(now: Timestamp, ttl: Duration) -> Timestamp {
    let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    Timestamp::from_millis(now.as_millis().saturating_add(ttl))
}

/// The lease on `partition` as stored, if it was ever taken.
fn stored(
    table: &impl ReadableTable<u32, &'static [u8]>,
    partition: u32,
) -> TxResult<Option<LeaseRecord>> {
    Ok(table
        .get(partition)?
        .map(|value| LeaseRecord::decode(value.value()))
        .transpose()?)
}

fn lease(partition: u32, record: LeaseRecord) -> Lease {
    Lease {
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
        partition: u32,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        let owner = owner.to_owned();
        self.write(move |txn| {
            let mut leases = txn.open_table(LEASES)?;
            let held = stored(&leases, partition)?;
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
            leases.insert(partition, record.encode().as_slice())?;
            Ok(Some(lease(partition, record)))
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
        self.write(move |txn| {
            let mut leases = txn.open_table(LEASES)?;
            let held = stored(&leases, lease.partition)?;
            match held {
                Some(held) if held.owner == lease.owner && held.epoch == lease.epoch => {
                    let record = LeaseRecord {
                        until: until(now, ttl),
                        ..held
                    };
                    leases.insert(lease.partition, record.encode().as_slice())?;
                    Ok(Some(self::lease(lease.partition, record)))
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
            let held = stored(&leases, lease.partition)?;
            if let Some(held) = held
                && held.owner == lease.owner
                && held.epoch == lease.epoch
            {
                // The epoch stays, so the next holder's is higher.
                let released = LeaseRecord {
                    until: Timestamp::from_millis(0),
                    ..held
                };
                leases.insert(lease.partition, released.encode().as_slice())?;
            }
            Ok(())
        })
        .await
    }
}
