//! Requests to whichever process holds a partition: a conversation's
//! sequencer in storage (sends), a user's log in sync (appends, catch-up).
//! Only the holder subscribes to the partition's subject, so during a
//! takeover nobody answers for a moment: a send or an append is asked
//! again, a catch-up read goes to any sync process. Live frames for users
//! (signals) go to the holders of their partitions too, which know the
//! users' gateways.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use natter_bus::{Bus, BusError, Outgoing};
use natter_core::{ConversationId, TenantId, UserId};
use natter_proto::bus::v1::{
    AppendOutcome, DeviceHello, DeviceWelcome, LiveFrame, LiveFrames, SendCommand, SendOutcome,
    UpdatesPage, UpdatesQuery,
};
use natter_proto::convert::live_user;
use prost::Message;
use prost::bytes::Bytes;
use tokio::time::Instant;

use crate::request::request_encoded;
use crate::{Backoff, ContractError, Result, Topology, encode, request, subjects};

/// How long to wait before asking again when nobody holds the partition:
/// doubling up to the cap.
const NO_HOLDER_FIRST: Duration = Duration::from_millis(20);
const NO_HOLDER_MAX: Duration = Duration::from_millis(500);

/// Publishes in flight for one [`Holders::publish_frames`], one per user
/// partition.
const PUBLISH_CONCURRENCY: usize = 64;

/// Asks partition holders. One per process.
#[derive(Debug, Clone)]
pub struct Holders {
    bus: Arc<dyn Bus>,
    topology: Topology,
}

impl Holders {
    pub fn new(bus: Arc<dyn Bus>, topology: Topology) -> Self {
        Self { bus, topology }
    }

    /// Sends `command` to the sequencer of `conversation` and waits up to
    /// `timeout` for its outcome. A timeout does not mean the message was
    /// lost: retrying with the same client message id returns it if it
    /// was stored.
    pub async fn send(
        &self,
        conversation: ConversationId,
        command: SendCommand,
        timeout: Duration,
    ) -> Result<SendOutcome> {
        let key = subjects::conversation_key(conversation);
        let subject = subjects::sequencer(self.partition(&key));
        self.ask(subject, encode(&command), timeout).await
    }

    /// Asks the holder of user partition `partition` to append `events`,
    /// an encoded `UserEvents` of that partition's users, and waits up to
    /// `timeout` for the outcome. Asking again is safe: an event already
    /// in its user's log keeps its cursor.
    pub async fn append(
        &self,
        partition: u32,
        events: Vec<u8>,
        timeout: Duration,
    ) -> Result<AppendOutcome> {
        let subject = subjects::append(partition);
        self.ask(subject, Outgoing::new(events), timeout).await
    }

    /// The user partition of `user`, whose holder numbers its log.
    pub fn user_partition(&self, tenant: &TenantId, user: &UserId) -> u32 {
        self.partition(&subjects::user_key(tenant, user))
    }

    /// Asks the holder of `user`'s log for the page `query` names. While
    /// nobody holds the partition nobody publishes its updates live
    /// either, so then any sync process answers from the store
    /// ([`subjects::UPDATES`]): a takeover costs catch-up nothing.
    pub async fn updates(
        &self,
        tenant: &TenantId,
        user: &UserId,
        query: UpdatesQuery,
        timeout: Duration,
    ) -> Result<UpdatesPage> {
        let subject = subjects::updates(self.user_partition(tenant, user));
        self.ask_sync(&subject, subjects::UPDATES, &query, timeout)
            .await
    }

    /// Says `hello` to the holder of the device's user's log, which
    /// registers the device and starts sending the user's live frames to
    /// `hello.gateway`. While nobody holds the partition any sync process
    /// registers the device ([`subjects::DEVICE_HELLO`]), and the welcome's
    /// `holder_epoch` is 0: the holder to come announces itself, and the
    /// gateway attaches the user then.
    pub async fn hello(
        &self,
        tenant: &TenantId,
        user: &UserId,
        hello: DeviceHello,
        timeout: Duration,
    ) -> Result<DeviceWelcome> {
        let subject = subjects::hello(self.user_partition(tenant, user));
        self.ask_sync(&subject, subjects::DEVICE_HELLO, &hello, timeout)
            .await
    }

    /// Sends `frame`, an encoded `natter.v1.ServerFrame`, to the live
    /// sessions of `users` of `tenant`: one `LiveFrames` to the holder of
    /// each user partition they fall in ([`subjects::signals`]), which
    /// passes it on to their gateways. Returns how many users it went out
    /// to. Best effort: a failed publish is logged and the others go on.
    pub async fn publish_frames<'a>(
        &self,
        tenant: &TenantId,
        users: impl IntoIterator<Item = &'a UserId>,
        frame: Bytes,
    ) -> usize {
        let mut partitions: BTreeMap<u32, Vec<LiveFrame>> = BTreeMap::new();
        for user in users {
            partitions
                .entry(self.user_partition(tenant, user))
                .or_default()
                .push(LiveFrame {
                    user: Some(live_user(tenant, user)),
                    frame: frame.clone(),
                });
        }
        let mut sent = 0;
        let mut in_flight = FuturesUnordered::new();
        for (partition, frames) in partitions {
            if in_flight.len() >= PUBLISH_CONCURRENCY {
                sent += in_flight.next().await.unwrap_or(0);
            }
            in_flight.push(self.publish_partition(partition, frames));
        }
        while let Some(n) = in_flight.next().await {
            sent += n;
        }
        sent
    }

    /// Publishes the frames of one partition's users to its holder; how
    /// many users they are if it went out.
    async fn publish_partition(&self, partition: u32, frames: Vec<LiveFrame>) -> usize {
        let users = frames.len();
        let subject = subjects::signals(partition);
        match self
            .bus
            .publish(&subject, encode(&LiveFrames { frames }))
            .await
        {
            Ok(()) => users,
            Err(e) => {
                tracing::warn!(partition, error = %e, "cannot publish live frames");
                0
            }
        }
    }

    /// Asks the holder of a user partition at `subject`, or any sync
    /// process at `unheld` while nobody holds it.
    async fn ask_sync<Q: Message, A: Message + Default>(
        &self,
        subject: &str,
        unheld: &str,
        query: &Q,
        timeout: Duration,
    ) -> Result<A> {
        match request(self.bus.as_ref(), subject, query, timeout).await {
            Err(ContractError::Bus(BusError::NoResponders { .. })) => {
                request(self.bus.as_ref(), unheld, query, timeout).await
            }
            done => done,
        }
    }

    fn partition(&self, key: &[u8]) -> u32 {
        natter_bus::partition(key, self.topology.partitions)
    }

    /// Asks the holder subscribed to `subject`, again while nobody holds
    /// it, up to `timeout`.
    async fn ask<A: Message + Default>(
        &self,
        subject: String,
        query: Outgoing,
        timeout: Duration,
    ) -> Result<A> {
        let deadline = Instant::now() + timeout;
        let mut backoff = Backoff::new(NO_HOLDER_FIRST, NO_HOLDER_MAX);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match request_encoded(self.bus.as_ref(), &subject, query.clone(), left).await {
                Err(ContractError::Bus(BusError::NoResponders { .. })) => {
                    let pause = backoff.next_delay();
                    if Instant::now() + pause >= deadline {
                        return Err(BusError::Timeout { subject, timeout }.into());
                    }
                    tokio::time::sleep(pause).await;
                }
                done => return done,
            }
        }
    }
}
