//! Requests to whichever process holds a partition: a conversation's
//! sequencer in storage (sends), a user's log in sync (appends, catch-up).
//! Only the holder subscribes to the partition's subject, so during a
//! takeover nobody answers for a moment: a send or an append is asked
//! again, a catch-up read goes to any sync process.

use std::sync::Arc;
use std::time::Duration;

use natter_bus::{Bus, BusError, Outgoing};
use natter_core::{ConversationId, TenantId, UserId};
use natter_proto::bus::v1::{
    AppendOutcome, DeviceHello, DeviceWelcome, SendCommand, SendOutcome, UpdatesPage, UpdatesQuery,
};
use prost::Message;
use tokio::time::Instant;

use crate::request::request_encoded;
use crate::{Backoff, ContractError, Result, Topology, encode, request, subjects};

/// How long to wait before asking again when nobody holds the partition:
/// doubling up to the cap.
const NO_HOLDER_FIRST: Duration = Duration::from_millis(20);
const NO_HOLDER_MAX: Duration = Duration::from_millis(500);

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
