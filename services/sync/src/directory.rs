//! Which gateways hold sessions of which users, for one held partition, so
//! that live frames go to the gateways that want them: one publish per
//! gateway (`gateway.<id>`) carries every frame of a batch for its users,
//! and a gateway needs one subscription, not one per session.
//!
//! A gateway is added for a user by the device hello it sends this holder,
//! or by an `Attach` (after a takeover, and every
//! [`ATTACH_EVERY`](natter_contract::ATTACH_EVERY) while it lives), and
//! removed by an `Attach` that detaches the user, or when it has not been
//! heard of for three of those periods: a gateway that died.
//!
//! The directory lives in this process's memory only. A new holder starts
//! empty and announces itself (`PartitionHeld`); the gateways then attach
//! their users and fetch what their sessions may have missed meanwhile,
//! which is in the log before it goes live.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use natter_bus::{Bus, Outgoing, Subscription};
use natter_contract::{ATTACH_EVERY, decode, encode, subjects};
use natter_core::{TenantId, UserId};
use natter_proto::bus::v1::{Attach, Attached, LiveFrame, LiveFrames, LiveUser};
use natter_proto::convert::{live_user, live_user_from_wire};
use prost::Message;
use prost::bytes::Bytes;
use tokio::time::Instant;

/// A user, by tenant and id.
pub(crate) type UserKey = (TenantId, UserId);

/// How long a gateway stays in the directory without being heard of.
const FORGET_AFTER: Duration = ATTACH_EVERY.saturating_mul(3);

#[derive(Debug, Default)]
pub(crate) struct Directory {
    /// Per user, the gateways with sessions of theirs and when each was
    /// last heard of.
    users: Mutex<HashMap<UserKey, HashMap<String, Instant>>>,
}

impl Directory {
    /// `gateway` holds sessions of `users`, as of `now`.
    pub(crate) fn attach(&self, gateway: &str, users: impl IntoIterator<Item = UserKey>) {
        let now = Instant::now();
        let mut directory = self.lock();
        for user in users {
            directory
                .entry(user)
                .or_default()
                .insert(gateway.to_owned(), now);
        }
    }

    /// The last sessions of `users` on `gateway` ended.
    pub(crate) fn detach(&self, gateway: &str, users: impl IntoIterator<Item = UserKey>) {
        let mut directory = self.lock();
        for user in users {
            if let Some(gateways) = directory.get_mut(&user) {
                gateways.remove(gateway);
                if gateways.is_empty() {
                    directory.remove(&user);
                }
            }
        }
    }

    /// Drops the gateways not heard of for [`FORGET_AFTER`].
    pub(crate) fn forget_stale(&self) {
        let Some(horizon) = Instant::now().checked_sub(FORGET_AFTER) else {
            return;
        };
        self.lock().retain(|_, gateways| {
            gateways.retain(|_, seen| *seen >= horizon);
            !gateways.is_empty()
        });
    }

    /// Publishes each frame to the gateways of its user: one message per
    /// gateway. A frame of a user no gateway wants goes nowhere. Core
    /// NATS, at most once: a device that misses a frame sees the gap at
    /// the next update and fetches it, or catches up on reconnect.
    pub(crate) async fn publish(&self, bus: &dyn Bus, frames: Vec<(UserKey, Bytes)>) {
        for (gateway, frames) in self.route(frames) {
            let payload = LiveFrames { frames }.encode_to_vec();
            if let Err(e) = bus
                .publish(&subjects::gateway(&gateway), Outgoing::new(payload))
                .await
            {
                tracing::warn!(%gateway, error = %e, "cannot publish live frames");
            }
        }
    }

    /// The frames each gateway gets.
    fn route(&self, frames: Vec<(UserKey, Bytes)>) -> HashMap<String, Vec<LiveFrame>> {
        let directory = self.lock();
        let mut routes: HashMap<String, Vec<LiveFrame>> = HashMap::new();
        for ((tenant, user), frame) in frames {
            let Some(gateways) = directory.get(&(tenant.clone(), user.clone())) else {
                continue;
            };
            for gateway in gateways.keys() {
                routes.entry(gateway.clone()).or_default().push(LiveFrame {
                    user: Some(live_user(&tenant, &user)),
                    frame: frame.clone(),
                });
            }
        }
        routes
    }

    /// Takes the gateways' `Attach`es until the subscription ends,
    /// answering those that ask with this holder's lease epoch, and forgets
    /// silent gateways as it goes.
    pub(crate) async fn serve_attaches(
        &self,
        bus: &dyn Bus,
        mut attaches: Subscription,
        epoch: u64,
    ) {
        let mut forget = tokio::time::interval(ATTACH_EVERY);
        loop {
            let incoming = tokio::select! {
                _ = forget.tick() => {
                    self.forget_stale();
                    continue;
                }
                next = attaches.next() => match next {
                    Some(incoming) => incoming,
                    None => return,
                },
            };
            let attach: Attach = match decode(&incoming.payload) {
                Ok(attach) => attach,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable attach dropped");
                    continue;
                }
            };
            self.attach(&attach.gateway, users(attach.users));
            self.detach(&attach.gateway, users(attach.detached));
            if let Some(reply) = incoming.reply {
                let attached = Attached {
                    holder_epoch: epoch,
                };
                if let Err(e) = bus.publish(&reply, encode(&attached)).await {
                    tracing::warn!(error = %e, "cannot answer an attach");
                }
            }
        }
    }

    /// Passes the signals fanout publishes for this partition's users
    /// (typing, presence) on to their gateways, until the subscription
    /// ends.
    pub(crate) async fn serve_signals(&self, bus: &dyn Bus, mut signals: Subscription) {
        while let Some(incoming) = signals.next().await {
            match decode::<LiveFrames>(&incoming.payload) {
                Ok(signals) => {
                    let frames = signals
                        .frames
                        .into_iter()
                        .filter_map(|f| Some((live_user_from_wire(&f.user?).ok()?, f.frame)))
                        .collect();
                    self.publish(bus, frames).await;
                }
                Err(e) => tracing::warn!(error = %e, "unreadable signals dropped"),
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<UserKey, HashMap<String, Instant>>> {
        // Never held across an await; a panic inside cannot leave it torn.
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The users named on the wire; a malformed one is left out, as nobody
/// could have a session of it.
fn users(wire: Vec<LiveUser>) -> impl Iterator<Item = UserKey> {
    wire.into_iter()
        .filter_map(|u| live_user_from_wire(&u).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserKey {
        (TenantId::new("acme").unwrap(), UserId::new(name).unwrap())
    }

    fn routed(directory: &Directory, name: &str) -> Vec<String> {
        let mut gateways: Vec<String> = directory
            .route(vec![(user(name), Bytes::from_static(b"f"))])
            .into_keys()
            .collect();
        gateways.sort();
        gateways
    }

    #[tokio::test(start_paused = true)]
    async fn frames_go_to_the_gateways_of_their_user_until_detached_or_stale() {
        let directory = Directory::default();
        directory.attach("g1", [user("ann"), user("bob")]);
        directory.attach("g2", [user("bob")]);
        assert_eq!(routed(&directory, "ann"), ["g1"]);
        assert_eq!(routed(&directory, "bob"), ["g1", "g2"]);
        assert!(routed(&directory, "cy").is_empty());

        let both = directory.route(vec![
            (user("ann"), Bytes::from_static(b"1")),
            (user("bob"), Bytes::from_static(b"2")),
        ]);
        assert_eq!(both["g1"].len(), 2, "one message per gateway per batch");
        assert_eq!(both["g2"].len(), 1);

        directory.detach("g1", [user("bob")]);
        assert_eq!(routed(&directory, "bob"), ["g2"]);

        tokio::time::advance(FORGET_AFTER / 2).await;
        directory.attach("g2", [user("bob")]);
        tokio::time::advance(FORGET_AFTER / 2 + Duration::from_secs(1)).await;
        directory.forget_stale();
        assert!(routed(&directory, "ann").is_empty(), "g1 went silent");
        assert_eq!(routed(&directory, "bob"), ["g2"], "g2 attached again");
    }
}
