//! What sync answers on the bus, for the gateways: the updates after a
//! cursor, device hellos, and cursor acks.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use natter_bus::{Bus, BusError, Subscription};
use natter_contract::{decode, serve, subjects};
use natter_core::{Cursor, Device, DeviceId, Invalid, Limits, TenantId, UserId};
use natter_proto::bus::v1::{
    CursorAck, DeviceHello, DeviceWelcome, Failure, UpdatesPage, UpdatesQuery,
};
use natter_proto::convert::{actor_from_wire, parse_id};
use natter_proto::status::{invalid_argument, to_failure};
use natter_server::store_status;
use natter_store::{StoreError, SyncStore, UpdateBatch};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use natter_server::clock::now;

use crate::{CONSUMER, RESPONDER_CONCURRENCY};

/// Longest device label kept; longer ones (whole user agents) are cut.
const MAX_LABEL_BYTES: usize = 256;

/// How stale a device's recorded last-seen time may grow before a hello
/// writes it again.
const LAST_SEEN_EVERY: Duration = Duration::from_secs(60);

pub(crate) struct Responders {
    store: Arc<dyn SyncStore>,
    limits: Limits,
}

impl Responders {
    pub(crate) fn new(store: Arc<dyn SyncStore>, limits: Limits) -> Self {
        Self { store, limits }
    }

    /// Subscribes to hellos, cursor acks and catch-up reads of partitions
    /// nobody holds (queue group `sync`) and spawns their loops on `tasks`;
    /// they stop on `stop`. Returns once every subscription is in place.
    /// The holder of a partition answers its catch-up reads itself
    /// (`log::serve_partition`).
    pub(crate) async fn start(
        self: Arc<Self>,
        bus: Arc<dyn Bus>,
        stop: &CancellationToken,
        tasks: &mut JoinSet<()>,
    ) -> Result<(), BusError> {
        let unheld = bus.subscribe(subjects::UPDATES, Some(CONSUMER)).await?;
        let hellos = bus
            .subscribe(subjects::DEVICE_HELLO, Some(CONSUMER))
            .await?;
        let acks = bus.subscribe(subjects::CURSOR_ACK, Some(CONSUMER)).await?;
        let this = self;
        let responder = this.clone();
        tasks.spawn(until(
            stop.clone(),
            serve(bus.clone(), unheld, RESPONDER_CONCURRENCY, move |query| {
                let responder = responder.clone();
                async move { responder.updates(query).await }
            }),
        ));
        let responder = this.clone();
        tasks.spawn(until(
            stop.clone(),
            serve(bus, hellos, RESPONDER_CONCURRENCY, move |hello| {
                let responder = responder.clone();
                async move { responder.hello(hello).await }
            }),
        ));
        tasks.spawn(until(stop.clone(), this.record_acks(acks)));
        Ok(())
    }

    /// `sync.updates[.<n>]`: a page of the log after a cursor. `complete` is
    /// set when the page reaches the head as it was when the query
    /// arrived, so anything later reaches the asking gateway live (it
    /// subscribed before asking).
    #[tracing::instrument(skip_all, fields(tenant = %query.tenant_id, user = %query.user_id, after = query.after))]
    pub(crate) async fn updates(&self, query: UpdatesQuery) -> UpdatesPage {
        let (tenant, user) = match ids(&query.tenant_id, &query.user_id) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "malformed updates query");
                return UpdatesPage {
                    failure: Some(to_failure(&invalid_argument(e))),
                    ..UpdatesPage::default()
                };
            }
        };
        let after = Cursor::new(query.after);
        let limit = self.limits.page_size(query.limit);
        let read = async {
            let head = self.store.log_head(&tenant, &user).await?;
            let batch = self
                .store
                .read_updates(&tenant, &user, after, limit)
                .await?;
            Ok::<_, StoreError>((head, batch))
        };
        match read.await {
            Ok((head, UpdateBatch::Updates(updates))) => {
                let last = updates.last().map_or(after, |update| update.cursor);
                UpdatesPage {
                    complete: last >= head,
                    head: head.max(last).get(),
                    updates: updates.into_iter().map(Into::into).collect(),
                    ..UpdatesPage::default()
                }
            }
            Ok((_, UpdateBatch::ResyncRequired { head })) => UpdatesPage {
                resync_required: true,
                head: head.get(),
                ..UpdatesPage::default()
            },
            Err(e) => UpdatesPage {
                failure: store_failure(e),
                ..UpdatesPage::default()
            },
        }
    }

    /// `DEVICE_HELLO`: registers or refreshes the device and tells the
    /// gateway its recorded cursor; a revoked device fails
    /// (FAILED_PRECONDITION). A known device seen lately, under the same
    /// label, costs a read and no write, so a reconnect storm writes
    /// nothing.
    #[tracing::instrument(skip_all, fields(device = %hello.device_id))]
    pub(crate) async fn hello(&self, hello: DeviceHello) -> DeviceWelcome {
        let device = match device_of(hello) {
            Ok(device) => device,
            Err(e) => {
                tracing::warn!(error = %e, "malformed device hello");
                return DeviceWelcome {
                    failure: Some(to_failure(&invalid_argument(e))),
                    ..DeviceWelcome::default()
                };
            }
        };
        match self.recorded_or_touched(&device).await {
            Ok(device) => DeviceWelcome {
                cursor: device.cursor.get(),
                ..DeviceWelcome::default()
            },
            Err(e) => DeviceWelcome {
                failure: store_failure(e),
                ..DeviceWelcome::default()
            },
        }
    }

    /// The device as recorded, when there is nothing new to record of it;
    /// else as recorded now (registered, or its label and last-seen time
    /// refreshed, or refused as revoked).
    async fn recorded_or_touched(&self, device: &Device) -> Result<Device, StoreError> {
        let recorded = self
            .store
            .device(&device.tenant_id, &device.user_id, &device.device_id)
            .await?;
        match recorded {
            Some(known) if !known.revoked && !needs_touch(&known, device) => Ok(known),
            _ => self.store.touch_device(device).await,
        }
    }

    /// `CURSOR_ACK`: records devices' cursors. Nobody waits for an answer,
    /// and a lost ack is made good by the next, so failures are only
    /// logged.
    async fn record_acks(self: Arc<Self>, mut acks: Subscription) {
        let permits = Arc::new(Semaphore::new(RESPONDER_CONCURRENCY));
        while let Some(incoming) = acks.next().await {
            let ack: CursorAck = match decode(&incoming.payload) {
                Ok(ack) => ack,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable cursor ack dropped");
                    continue;
                }
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let this = self.clone();
            tokio::spawn(async move {
                this.record_ack(ack).await;
                drop(permit);
            });
        }
    }

    #[tracing::instrument(skip_all, fields(device = %ack.device_id, cursor = ack.cursor))]
    async fn record_ack(&self, ack: CursorAck) {
        let parsed = actor_from_wire(ack.actor).and_then(|who| {
            Ok((
                who.tenant,
                who.user,
                parse_id::<DeviceId>("device_id", &ack.device_id)?,
            ))
        });
        let (tenant, user, device) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::warn!(error = %e, "malformed cursor ack dropped");
                return;
            }
        };
        let cursor = Cursor::new(ack.cursor);
        if let Err(e) = self
            .store
            .save_cursor(&tenant, &user, &device, cursor)
            .await
        {
            tracing::warn!(%tenant, %user, error = %e, "cannot record a cursor ack");
        }
    }
}

/// Runs `work` until it ends or `stop` is cancelled.
async fn until(stop: CancellationToken, work: impl Future<Output = ()>) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = work => {}
    }
}

fn ids(tenant: &str, user: &str) -> Result<(TenantId, UserId), Invalid> {
    Ok((parse_id("tenant_id", tenant)?, parse_id("user_id", user)?))
}

/// The device a hello describes, as the store should record it now.
fn device_of(hello: DeviceHello) -> Result<Device, Invalid> {
    let who = actor_from_wire(hello.actor)?;
    Ok(Device {
        tenant_id: who.tenant,
        user_id: who.user,
        device_id: parse_id("device_id", &hello.device_id)?,
        label: bounded_label(hello.label),
        // The store keeps the recorded cursor; a new device starts at zero.
        cursor: Cursor::ZERO,
        last_seen: now(),
        revoked: false,
    })
}

/// Whether a hello of `known` brings something worth a write: another
/// label, or a last-seen time [`LAST_SEEN_EVERY`] past the recorded one.
fn needs_touch(known: &Device, hello: &Device) -> bool {
    let every = i64::try_from(LAST_SEEN_EVERY.as_millis()).unwrap_or(i64::MAX);
    known.label != hello.label || hello.last_seen.as_millis() - known.last_seen.as_millis() >= every
}

/// The label cut to [`MAX_LABEL_BYTES`] on a character boundary: a label
/// is a description, not worth refusing a connection over.
fn bounded_label(mut label: String) -> String {
    if label.len() > MAX_LABEL_BYTES {
        let mut end = MAX_LABEL_BYTES;
        while !label.is_char_boundary(end) {
            end -= 1;
        }
        label.truncate(end);
    }
    label
}

/// A store failure as the answer's `failure`, logged.
fn store_failure(e: StoreError) -> Option<Failure> {
    Some(to_failure(&store_status(e)))
}

#[cfg(test)]
mod tests {
    use natter_core::Timestamp;

    use super::*;

    #[test]
    fn a_known_device_is_written_again_only_for_news() {
        let hello = |label: &str, seen: i64| Device {
            tenant_id: TenantId::new("acme").unwrap(),
            user_id: UserId::new("alice").unwrap(),
            device_id: DeviceId::new("phone").unwrap(),
            label: label.into(),
            cursor: Cursor::ZERO,
            last_seen: Timestamp::from_millis(seen),
            revoked: false,
        };
        let known = hello("web", 1_000);
        assert!(!needs_touch(&known, &hello("web", 1_000)));
        assert!(!needs_touch(&known, &hello("web", 60_999)));
        assert!(needs_touch(&known, &hello("web", 61_000)));
        assert!(needs_touch(&known, &hello("phone app", 1_001)));
    }

    #[test]
    fn long_labels_are_cut_on_a_character_boundary() {
        assert_eq!(bounded_label("web".into()), "web");
        let long = "é".repeat(MAX_LABEL_BYTES);
        let cut = bounded_label(long);
        assert!(cut.len() <= MAX_LABEL_BYTES && cut.len() >= MAX_LABEL_BYTES - 1);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
