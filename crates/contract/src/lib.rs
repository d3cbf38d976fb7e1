//! The contract between Natter's services over NATS: which subjects and
//! streams exist, what travels on each (`natter.bus.v1` messages), and the
//! typed helpers every service uses to talk and to serve.
//!
//! ```text
//! gateway ──SendCommand──▶ storage.seq.<partition> (request) ──▶ storage's sequencer
//! storage ──SendOutcome──▶ the request's reply
//! storage ──ConversationEvents──▶ EVENTS stream (by conversation) ──▶ fanout
//! fanout ──UserEvents──▶ sync.append.<partition> (request, by user) ──▶ sync's appender
//! sync ──AppendOutcome──▶ the request's reply
//! fanout ──ServerFrame(message)──▶ room.<tenant>.<conversation> ──▶ gateways
//! gateway ──DeviceHello──▶ sync.hello.<partition> (request) ──▶ the holder: registers the
//!         device, routes the user's live frames to the gateway
//! gateway ──Attach──▶ sync.attach.<partition> ──▶ the holder (after a takeover, and every 30 s)
//! fanout ──LiveFrames(typing)──▶ sync.signals.<partition> ──▶ the holder
//! sync ──LiveFrames(updates, typing)──▶ gateway.<id> ──▶ the gateway's sessions
//! sync ──PartitionHeld──▶ sync.held.<partition> ──▶ gateways attach their users again
//! EVENTS stream ──ConversationEvents──▶ desk (lifecycle changes: who waits for a person)
//! gateway, desk's gRPC API ──DeskCommand──▶ desk.call (request) ──▶ the desk's holder
//! gateway ──AgentSessions──▶ desk.sessions ──▶ the desk's holder (agents' presence)
//! desk ──AddMembersCommand──▶ storage.members.add (request) ──▶ storage
//! desk ──SendCommand(change)──▶ storage.seq.<partition>: assignments are lifecycle changes
//! desk ──LiveFrames(desk_signal)──▶ sync.signals.<partition>: offers to agents
//! desk ──EphemeralSignal(desk)──▶ fanout.ephemeral: queue positions to a conversation's members
//! ```
//!
//! Subjects here carry no prefix: the bus adds its own, so one NATS server
//! can host several installs (or tests) side by side.

mod backoff;
mod consume;
mod holders;
mod request;
pub mod subjects;

use std::num::NonZeroU32;
use std::time::Duration;

use natter_bus::{Bus, BusError, StreamConfig};
use natter_proto::status::{self, reason};
use thiserror::Error;

pub use backoff::Backoff;
pub use consume::{Handled, consume_partition, consume_partitions};
pub use holders::Holders;
pub use request::{decode, encode, request, serve};

/// How often a gateway attaches all its users to their holders again. A
/// holder forgets a gateway it has not heard of for three of these.
pub const ATTACH_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum ContractError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("cannot decode {what}: {reason}")]
    Decode { what: &'static str, reason: String },
}

impl ContractError {
    /// How a caller reports it: the peer service is unreachable
    /// (UNAVAILABLE, worth a retry) or answered nonsense (INTERNAL).
    pub fn into_status(self, peer: &str) -> tonic::Status {
        tracing::warn!(error = %self, peer, "call to peer service failed");
        match self {
            ContractError::Bus(BusError::Timeout { .. }) => status::unavailable(
                reason::SERVICE_UNAVAILABLE,
                format!("{peer} did not answer in time; retry"),
            ),
            ContractError::Bus(_) => status::unavailable(
                reason::SERVICE_UNAVAILABLE,
                format!("{peer} is unreachable; retry"),
            ),
            ContractError::Decode { .. } => status::internal(
                reason::SERVICE_MESSAGE_UNREADABLE,
                format!("{peer} answered with an unreadable message"),
            ),
        }
    }
}

pub type Result<T, E = ContractError> = std::result::Result<T, E>;

/// How the durable streams are laid out; every service of one install must
/// agree on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// Partitions of conversations (each owned by one sequencer) and of
    /// each stream. A conversation's events, and a user's log entries, each
    /// stay on one partition, in order.
    pub partitions: NonZeroU32,
    /// How long the streams keep messages nobody has consumed.
    pub retention: Duration,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            partitions: NonZeroU32::new(16).unwrap_or(NonZeroU32::MIN),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// A durable stream and the subjects it captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    pub name: &'static str,
    /// Subjects are `<base>.<partition>`.
    pub base: &'static str,
}

/// Durable conversation events, by conversation; consumed by fanout.
pub const EVENTS: Stream = Stream {
    name: "EVENTS",
    base: "events",
};

/// Fanout's durable consumers of EVENTS are `<this>-<partition>`; where
/// the bus keeps no streams, storage keeps each announcement until this
/// consumer has acknowledged it.
pub const EVENTS_CONSUMER: &str = "fanout";

/// The desk's durable consumers of EVENTS are `<this>-<partition>`. The
/// desk reads lifecycle changes only; where the bus keeps no streams, what
/// it had not consumed before a crash is not published again, and its
/// records (the desk's routes) are what it resumes from.
pub const DESK_CONSUMER: &str = "desk";

/// The desk's analytics consume EVENTS through durable consumers of their
/// own, `<this>-<partition>`, beside the desk's: one delivery at a time per
/// partition, each the only writer of its partition's rollup records.
pub const ANALYTICS_CONSUMER: &str = "analytics";

pub use natter_core::DESK_USER;

impl Stream {
    pub fn config(&self, topology: &Topology) -> StreamConfig {
        let subject = format!("{}.*", self.base);
        StreamConfig::new(self.name, &[&subject], topology.retention)
    }

    /// The subject of partition `partition`.
    pub fn subject_of(&self, partition: u32) -> String {
        format!("{}.{partition}", self.base)
    }

    /// The name of `consumer`'s durable consumer of partition `partition`.
    pub fn consumer(&self, consumer: &str, partition: u32) -> String {
        format!("{consumer}-{partition}")
    }

    /// The subject of the partition that `key` belongs to.
    pub fn subject(&self, topology: &Topology, key: &[u8]) -> String {
        natter_bus::partition_subject(self.base, key, topology.partitions)
    }
}

/// Creates the durable stream if it does not exist; safe to call from
/// every service at start-up.
pub async fn ensure_streams(bus: &dyn Bus, topology: &Topology) -> Result<()> {
    bus.ensure_stream(&EVENTS.config(topology)).await?;
    Ok(())
}
