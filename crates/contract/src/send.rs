//! Sending a message, from any service: a request to the sequencer of the
//! conversation's partition, which answers once the message is stored and
//! announced.

use std::sync::Arc;
use std::time::Duration;

use natter_bus::{Bus, BusError};
use natter_core::ConversationId;
use natter_proto::bus::v1::{SendCommand, SendOutcome};
use tokio::time::Instant;

use crate::{Backoff, ContractError, Result, Topology, request, subjects};

/// How long to wait before asking again when no sequencer holds the
/// partition (a takeover under way): doubling up to the cap.
const NO_OWNER_FIRST: Duration = Duration::from_millis(20);
const NO_OWNER_MAX: Duration = Duration::from_millis(500);

/// Sends `SendCommand`s to the sequencers. One per process.
#[derive(Debug, Clone)]
pub struct SendClient {
    bus: Arc<dyn Bus>,
    topology: Topology,
}

impl SendClient {
    pub fn new(bus: Arc<dyn Bus>, topology: Topology) -> Self {
        Self { bus, topology }
    }

    /// Sends `command` and waits up to `timeout` for its outcome, asking
    /// again while no sequencer holds the partition. A timeout does not
    /// mean the message was lost: retrying with the same client message id
    /// returns it if it was stored.
    pub async fn send(
        &self,
        conversation: ConversationId,
        command: SendCommand,
        timeout: Duration,
    ) -> Result<SendOutcome> {
        let partition = natter_bus::partition(
            &subjects::conversation_key(conversation),
            self.topology.partitions,
        );
        let subject = subjects::sequencer(partition);
        let deadline = Instant::now() + timeout;
        let mut backoff = Backoff::new(NO_OWNER_FIRST, NO_OWNER_MAX);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match request(self.bus.as_ref(), &subject, &command, left).await {
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
