//! Ends the sessions of revoked devices.
//!
//! Sync announces a revoked device with `DeviceRevoked` on
//! `revoked.<tenant>.<user>`. The gateway listens to all of them on one
//! subscription per process and routes each to the sessions of that device
//! through [`Revocations`], where a session registers before it asks sync
//! whether its device may connect: a revocation is either already visible
//! to that question or announced after the registration, so none slips
//! between the two.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use natter_bus::{Bus, BusError};
use natter_contract::{Backoff, subjects};
use natter_core::{DeviceId, TenantId, UserId};
use natter_proto::bus::v1::DeviceRevoked;
use natter_proto::convert::parse_id;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Every subject `subjects::revoked` makes: ids are single tokens.
pub(crate) const ALL_REVOKED: &str = "revoked.*.*";

/// The sessions waiting to hear that their device was revoked, by user.
#[derive(Debug, Default)]
pub(crate) struct Revocations {
    next_id: AtomicU64,
    by_user: Mutex<HashMap<String, Vec<Watcher>>>,
}

#[derive(Debug)]
struct Watcher {
    id: u64,
    device: DeviceId,
    revoked: oneshot::Sender<()>,
}

/// A session's registration; resolves when its device is revoked and
/// unregisters when dropped.
#[derive(Debug)]
pub(crate) struct Watch {
    revocations: Arc<Revocations>,
    key: String,
    id: u64,
    revoked: oneshot::Receiver<()>,
    fired: bool,
}

impl Watch {
    /// Resolves once the device is revoked; never if it is not.
    pub(crate) async fn revoked(&mut self) {
        if self.fired || (&mut self.revoked).await.is_ok() {
            self.fired = true;
            return;
        }
        // The sender is only dropped unsent if the registry is dropped,
        // which outlives every session; wait forever rather than end one.
        std::future::pending::<()>().await;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut by_user = self.revocations.lock();
        if let Some(watchers) = by_user.get_mut(&self.key) {
            watchers.retain(|w| w.id != self.id);
            if watchers.is_empty() {
                by_user.remove(&self.key);
            }
        }
    }
}

fn key(tenant: &TenantId, user: &UserId) -> String {
    subjects::revoked(tenant, user)
}

impl Revocations {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Watcher>>> {
        self.by_user.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a session of `device`.
    pub(crate) fn watch(
        self: &Arc<Self>,
        tenant: &TenantId,
        user: &UserId,
        device: &DeviceId,
    ) -> Watch {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let key = key(tenant, user);
        let (tx, rx) = oneshot::channel();
        self.lock().entry(key.clone()).or_default().push(Watcher {
            id,
            device: device.clone(),
            revoked: tx,
        });
        Watch {
            revocations: self.clone(),
            key,
            id,
            revoked: rx,
            fired: false,
        }
    }

    /// Tells every session of `device` that it was revoked; returns how many
    /// there were.
    pub(crate) fn revoke(&self, tenant: &TenantId, user: &UserId, device: &DeviceId) -> usize {
        let key = key(tenant, user);
        let revoked: Vec<Watcher> = {
            let mut by_user = self.lock();
            let Some(watchers) = by_user.get_mut(&key) else {
                return 0;
            };
            let (revoked, kept) = std::mem::take(watchers)
                .into_iter()
                .partition(|w| w.device == *device);
            *watchers = kept;
            if watchers.is_empty() {
                by_user.remove(&key);
            }
            revoked
        };
        let told = revoked.len();
        for watcher in revoked {
            let _ = watcher.revoked.send(());
        }
        told
    }
}

/// Subscribes to every revocation before returning, then routes them until
/// `shutdown`; a lost subscription is re-established with backoff.
pub(crate) async fn listen(
    bus: Arc<dyn Bus>,
    revocations: Arc<Revocations>,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    let mut subscription = bus.subscribe(ALL_REVOKED, None).await?;
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = subscription.next() => next,
            };
            match next {
                Some(incoming) => route(&revocations, &incoming.payload),
                None => loop {
                    tracing::warn!("revocation subscription ended; resubscribing");
                    backoff.wait(&shutdown).await;
                    if shutdown.is_cancelled() {
                        return;
                    }
                    match bus.subscribe(ALL_REVOKED, None).await {
                        Ok(again) => {
                            subscription = again;
                            backoff.reset();
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot resubscribe to revocations");
                        }
                    }
                },
            }
        }
    });
    Ok(())
}

fn route(revocations: &Revocations, payload: &[u8]) {
    let revoked: DeviceRevoked = match natter_contract::decode(payload) {
        Ok(revoked) => revoked,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable device revocation dropped");
            return;
        }
    };
    let ids = (|| {
        Ok::<_, natter_core::Invalid>((
            parse_id::<TenantId>("tenant_id", &revoked.tenant_id)?,
            parse_id::<UserId>("user_id", &revoked.user_id)?,
            parse_id::<DeviceId>("device_id", &revoked.device_id)?,
        ))
    })();
    match ids {
        Ok((tenant, user, device)) => {
            let sessions = revocations.revoke(&tenant, &user, &device);
            tracing::info!(%tenant, %user, %device, sessions, "device revoked");
        }
        Err(e) => tracing::warn!(error = %e, "device revocation with bad ids dropped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(user: &str, device: &str) -> (TenantId, UserId, DeviceId) {
        (
            TenantId::new("acme").unwrap(),
            UserId::new(user).unwrap(),
            DeviceId::new(device).unwrap(),
        )
    }

    #[test]
    fn the_wildcard_matches_every_revocation_subject() {
        for user in ["alice", "a.b", "x*>y", "ü"] {
            let (tenant, user, _) = ids(user, "d");
            let subject = subjects::revoked(&tenant, &user);
            assert!(natter_bus::matches(ALL_REVOKED, &subject), "{subject}");
        }
        assert!(!natter_bus::matches(ALL_REVOKED, "live.acme.alice"));
    }

    #[tokio::test]
    async fn only_the_revoked_devices_sessions_hear_it_and_watches_unregister() {
        let revocations = Arc::new(Revocations::default());
        let (tenant, alice, phone) = ids("alice", "phone");
        let (_, _, laptop) = ids("alice", "laptop");
        let mut first = revocations.watch(&tenant, &alice, &phone);
        let mut second = revocations.watch(&tenant, &alice, &phone);
        let mut other = revocations.watch(&tenant, &alice, &laptop);

        assert_eq!(revocations.revoke(&tenant, &alice, &phone), 2);
        first.revoked().await;
        second.revoked().await;
        let pending = tokio::time::timeout(Duration::from_millis(20), other.revoked()).await;
        assert!(pending.is_err(), "the laptop was not revoked");

        drop((first, second, other));
        assert!(revocations.lock().is_empty());
        assert_eq!(revocations.revoke(&tenant, &alice, &phone), 0);
    }
}
