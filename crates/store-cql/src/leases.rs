//! [`LeaseStore`] on CQL: one `leases` row per partition of each scope,
//! changed only by LWT, so two processes never both take it. This is the
//! one consensus round the message and update-log paths have, and it is
//! paid when a partition changes hands or its lease is renewed, never per
//! message.

use std::time::Duration;

use async_trait::async_trait;
use natter_core::{Invalid, Timestamp};
use natter_store::{Lease, LeaseStore, Result};
use scylla::errors::ExecutionError;
use scylla::value::CqlTimestamp;

use crate::CqlStore;
use crate::db::{Lwt, corrupt, driver_error};
use crate::layout::partition_key;

/// An epoch as CQL `bigint`.
fn epoch_value(epoch: u64) -> Result<i64> {
    i64::try_from(epoch).map_err(|_| {
        Invalid::new(
            "epoch",
            format!("must be at most {}, got {epoch}", i64::MAX),
        )
        .into()
    })
}

/// `now + ttl`, saturating.
fn until(now: Timestamp, ttl: Duration) -> Timestamp {
    let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    Timestamp::from_millis(now.as_millis().saturating_add(ttl))
}

/// A `leases` row, read linearizably.
#[derive(Debug)]
struct Held {
    owner: String,
    epoch: u64,
    until: Timestamp,
}

impl CqlStore {
    async fn held(&self, scope: &str, partition: u32) -> Result<Option<Held>> {
        type Row = (Option<String>, Option<i64>, Option<CqlTimestamp>);
        let row: Option<Row> = self
            .db()
            .row(
                "read lease",
                &self.statements.lease_get_serial,
                (scope, partition_key(partition)),
            )
            .await?;
        row.map(|(owner, epoch, until)| {
            let what = format!("lease of {scope} partition {partition}");
            Ok(Held {
                owner: owner.unwrap_or_default(),
                epoch: u64::try_from(epoch.unwrap_or(0))
                    .map_err(|_| corrupt(&what, "negative epoch"))?,
                until: Timestamp::from_millis(until.map_or(0, |t| t.0)),
            })
        })
        .transpose()
    }

    /// The outcome of an LWT that changes a lease to `wanted`: applied,
    /// not applied, or unknown (a timeout), which a linearizable read of
    /// the row settles. `None` if another holds the lease.
    async fn settle(
        &self,
        attempt: std::result::Result<Result<Lwt>, ExecutionError>,
        wanted: Lease,
    ) -> Result<Option<Lease>> {
        let error = match attempt {
            Ok(outcome) => return Ok(outcome?.applied.then_some(wanted)),
            Err(e) => e,
        };
        tracing::warn!(error = %error, scope = %wanted.scope, partition = wanted.partition, "lease change has an unknown outcome");
        match self.held(&wanted.scope, wanted.partition).await? {
            Some(held) if held.owner == wanted.owner && held.epoch == wanted.epoch => {
                if held.until == wanted.until {
                    Ok(Some(wanted))
                } else {
                    // Ours, but not extended: the caller may try again.
                    Err(driver_error("change lease", error))
                }
            }
            _ => Ok(None),
        }
    }
}

#[async_trait]
impl LeaseStore for CqlStore {
    async fn acquire_lease(
        &self,
        scope: &str,
        partition: u32,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        let held = self.held(scope, partition).await?;
        // Still held, even by `owner` itself: refused. A lapsed or released
        // lease goes to whoever asks, its last owner included, always with
        // a new epoch.
        if held.as_ref().is_some_and(|held| held.until > now) {
            return Ok(None);
        }
        let wanted = Lease {
            scope: scope.to_owned(),
            partition,
            owner: owner.to_owned(),
            epoch: held.as_ref().map_or(1, |held| held.epoch.saturating_add(1)),
            until: until(now, ttl),
        };
        let db = self.db();
        let attempt = match held {
            None => {
                db.try_lwt(
                    &self.statements.lease_insert,
                    (
                        scope,
                        partition_key(partition),
                        owner,
                        CqlTimestamp(wanted.until.as_millis()),
                    ),
                )
                .await
            }
            // Compare-and-set on what was read: another taker raises the
            // epoch, and a renewal by the holder moves `until` past `now`.
            Some(held) => {
                db.try_lwt(
                    &self.statements.lease_take_over,
                    (
                        owner,
                        epoch_value(wanted.epoch)?,
                        CqlTimestamp(wanted.until.as_millis()),
                        scope,
                        partition_key(partition),
                        epoch_value(held.epoch)?,
                        CqlTimestamp(now.as_millis()),
                    ),
                )
                .await
            }
        };
        self.settle(attempt, wanted).await
    }

    async fn renew_lease(
        &self,
        lease: &Lease,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        let wanted = Lease {
            until: until(now, ttl),
            ..lease.clone()
        };
        let attempt = self
            .db()
            .try_lwt(
                &self.statements.lease_set_until,
                (
                    CqlTimestamp(wanted.until.as_millis()),
                    lease.scope.as_str(),
                    partition_key(lease.partition),
                    lease.owner.as_str(),
                    epoch_value(lease.epoch)?,
                ),
            )
            .await;
        self.settle(attempt, wanted).await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        // The epoch stays, so the next holder's is higher.
        self.db()
            .lwt(
                "release lease",
                &self.statements.lease_set_until,
                (
                    CqlTimestamp(0),
                    lease.scope.as_str(),
                    partition_key(lease.partition),
                    lease.owner.as_str(),
                    epoch_value(lease.epoch)?,
                ),
            )
            .await?;
        Ok(())
    }

    async fn reachable(&self) -> Result<()> {
        self.session
            .query_unpaged("SELECT release_version FROM system.local", ())
            .await
            .map(drop)
            .map_err(|e| crate::db::driver_error("reachability check", e))
    }
}
