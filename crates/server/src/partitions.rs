//! Holding partitions through leases: every process of a service tries to
//! take every partition nobody holds and renews what it holds every
//! [`RENEW_EVERY`]; for each partition it holds it runs one task. A holder
//! stops trusting its lease [`MARGIN`] before it would lapse, and a
//! successor takes it only once it has lapsed, so with clocks that agree
//! to within the margin two processes never work one partition at once.
//! Storage numbers conversations' messages this way, sync writes users'
//! logs this way.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use natter_store::{Lease, LeaseStore};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::now;

/// How long a lease lasts unless renewed.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often leases are renewed, and free partitions looked for.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How long before its lease lapses a holder stops trusting it.
pub const MARGIN: Duration = Duration::from_secs(3);

/// Holds what partitions `0..count` of `scope` it can for `owner` and runs
/// `serve(lease, stop)` for each one it holds, until `shutdown`; then stops
/// every task, waits for it, and gives the leases up so others may take
/// them at once. `lease` follows renewals; `stop` is cancelled when the
/// partition is lost or on shutdown. A task that ends by itself gives its
/// partition up at the next renewal.
pub async fn hold<F, Fut>(
    store: Arc<dyn LeaseStore>,
    scope: &'static str,
    owner: String,
    count: u32,
    shutdown: CancellationToken,
    serve: F,
) where
    F: Fn(watch::Receiver<Lease>, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut held: HashMap<u32, Held> = HashMap::new();
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        for partition in 0..count {
            match held.remove(&partition) {
                Some(holding) if holding.task.is_finished() => {
                    holding.give_up(store.as_ref()).await;
                }
                Some(mut holding) => {
                    if holding.renew(store.as_ref()).await {
                        held.insert(partition, holding);
                    } else {
                        holding.stop().await;
                    }
                }
                None => {
                    let taken = store
                        .acquire_lease(scope, partition, &owner, now(), LEASE_TTL)
                        .await;
                    match taken {
                        Ok(Some(lease)) => {
                            tracing::info!(
                                scope,
                                partition,
                                epoch = lease.epoch,
                                "holding partition"
                            );
                            let (lease, watched) = watch::channel(lease);
                            let stop = CancellationToken::new();
                            let task = tokio::spawn(serve(watched, stop.clone()));
                            held.insert(partition, Held { lease, stop, task });
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(scope, partition, error = %e, "cannot take a lease")
                        }
                    }
                }
            }
        }
    }
    for (_, holding) in held {
        holding.give_up(store.as_ref()).await;
    }
}

/// Whether `lease` may still be trusted now.
pub fn trusted(lease: &Lease) -> bool {
    let margin = i64::try_from(MARGIN.as_millis()).unwrap_or(i64::MAX);
    now().as_millis() < lease.until.as_millis().saturating_sub(margin)
}

/// A partition this process holds, and the task working it.
struct Held {
    lease: watch::Sender<Lease>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Held {
    /// Renews the lease; `false` if it was lost.
    async fn renew(&mut self, store: &dyn LeaseStore) -> bool {
        let lease = self.lease.borrow().clone();
        match store.renew_lease(&lease, now(), LEASE_TTL).await {
            Ok(Some(renewed)) => {
                self.lease.send_replace(renewed);
                true
            }
            Ok(None) => {
                tracing::warn!(scope = %lease.scope, partition = lease.partition, "lease lost");
                false
            }
            // The task stops trusting the lease by itself as it runs out.
            Err(e) => {
                tracing::warn!(scope = %lease.scope, partition = lease.partition, error = %e, "cannot renew a lease");
                true
            }
        }
    }

    async fn stop(self) -> Lease {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "a partition's task failed");
        }
        self.lease.borrow().clone()
    }

    /// Stops the task and releases the lease, so another may take the
    /// partition at once.
    async fn give_up(self, store: &dyn LeaseStore) {
        let lease = self.stop().await;
        if let Err(e) = store.release_lease(&lease).await {
            tracing::warn!(scope = %lease.scope, partition = lease.partition, error = %e, "cannot release a lease; it lapses on its own");
        }
    }
}
