//! What Natter's services need from the message bus, as one object-safe
//! trait, [`Bus`], that services hold as `Arc<dyn Bus>`, and the
//! conformance suite (feature `conformance`) both implementations pass:
//! `natter-bus-local` (tokio channels and streams in memory, for
//! single-process mode) and `natter-bus-nats` (NATS core plus JetStream).
//!
//! Two kinds of traffic:
//!
//! - **Core** ([`Bus::publish`], [`Bus::subscribe`], [`Bus::request`]):
//!   at most once, for what may be lost (typing signals, live delivery to
//!   gateways, request/reply between services). A subscriber that falls
//!   behind by the bus's capacity loses messages.
//! - **Durable** ([`Bus::ensure_stream`], [`Bus::publish_durable`],
//!   [`Bus::consume`]): for what must not be lost. A durable publish returns
//!   once the stream stored the message. A consumer receives the
//!   messages matching its filter **at least once, in stream order**:
//!   each delivery is acked or nakked, an unsettled one comes back after
//!   the consumer's ack wait (also when the consumer is re-created, as after
//!   a restart), and a redelivered message comes before any later one, so
//!   a handler may see a message again but never out of order. Handlers
//!   must therefore be idempotent.
//!
//! # What outlives a crash
//!
//! On NATS the streams live on the servers and outlive any process. The
//! in-process bus keeps them in its memory, so they die with the process
//! ([`Bus::keeps_streams`] tells the two apart): a publisher whose
//! messages must survive a crash keeps them itself until their consumer
//! has acked them, which [`Bus::ack_floor`] tells it, and publishes again,
//! after a crash, what it kept.
//!
//! # One processor per partition
//!
//! A consumer has at most **one unacknowledged delivery at a time**
//! (`max_ack_pending = 1` on NATS). Every process consuming the same
//! durable consumer shares that one slot, so whichever process holds a
//! delivery is the partition's only active processor until it settles it;
//! if the process dies, the slot frees after the ack wait and another
//! process takes over. That gives single-active-processor and strict order
//! on any JetStream server, with no partition
//! assignment to configure. Parallelism comes from partitions: a service
//! runs one consumer per partition (filter `<base>.<n>`, see
//! [`partition_subject`]). NATS 2.11 priority groups (`PinnedClient`)
//! would add process affinity, but still need the one-in-flight limit for
//! order after a nak, and nothing in Natter relies on affinity: where one
//! writer matters (storage's sequencers, sync's update logs), a lease in
//! the store names it (`natter_server::partitions`). The one-slot rule has
//! one gap: a handler that runs past the ack wait loses its slot while
//! still running, so size the ack wait well above the slowest expected
//! handling.
//!
//! # Prefixes
//!
//! Every bus instance is created with a [`Prefix`] that is put in front of
//! every subject (`<prefix>.<subject>`) and stream name
//! (`<prefix>-<name>`); callers never see it. Tests use a unique prefix
//! each, so they run in parallel on one NATS server.
//!
//! # Trace context
//!
//! Every publish injects the current `opentelemetry::Context` as W3C
//! `traceparent`/`tracestate` headers through the global propagator,
//! unless the caller set `traceparent` itself; [`Incoming::trace_context`]
//! extracts it on the other side. With the tracing bridge that
//! `natter-telemetry` installs, the current context is that of the entered
//! `tracing` span, so an `#[instrument]`ed handler propagates its span.

mod message;
mod partition;
mod subject;

#[cfg(feature = "conformance")]
pub mod conformance;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use thiserror::Error;

pub use message::{
    Acknowledge, Deliveries, Delivery, DurableMessage, Headers, Incoming, MAX_PAYLOAD_BYTES,
    Outgoing, Persisted, Subscription, TRACEPARENT,
};
pub use partition::{partition, partition_subject};
pub use subject::{
    INBOX, MAX_NAME_BYTES, MAX_SUBJECT_BYTES, Prefix, check_name, check_subject, matches, overlaps,
};

/// How many messages a subscription buffers before it is a slow consumer,
/// unless an implementation is configured otherwise.
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 8192;

#[derive(Debug, Error)]
pub enum BusError {
    /// A subject, name, header, payload or configuration breaks a rule;
    /// nothing was sent or changed.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    /// Nothing subscribes to the subject of a request.
    #[error("no responders for {subject}")]
    NoResponders { subject: String },
    /// A request got no reply in time.
    #[error("request to {subject} timed out after {timeout:?}")]
    Timeout { subject: String, timeout: Duration },
    /// No stream captures the subject of a durable publish.
    #[error("no stream captures subject {subject}")]
    NoStream { subject: String },
    /// The named stream does not exist.
    #[error("stream {name} not found")]
    StreamNotFound { name: String },
    /// The configuration conflicts with what exists, such as a stream whose
    /// subjects overlap another stream's.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The bus could not be reached or failed; safe to retry. A durable
    /// publish that fails this way may still have been stored, so retry it
    /// with the same dedup id.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T, E = BusError> = std::result::Result<T, E>;

/// Where a stream keeps its messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Storage {
    /// On disk: a publish is answered once the message is there, and the
    /// stream survives a restart of the NATS server. The in-process bus
    /// keeps every stream in memory (see [`Bus::keeps_streams`]).
    #[default]
    Disk,
    /// In memory only: no disk write per publish, and gone, with its
    /// consumers' positions, when the bus restarts. For messages whose
    /// loss promises nobody anything, such as commands whose senders have
    /// not been answered and will retry.
    Memory,
}

/// A durable stream: which subjects it captures and how long it keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// ASCII letters, digits, `-` and `_`.
    pub name: String,
    /// Subjects captured, wildcards allowed; no two streams may overlap.
    pub subjects: Vec<String>,
    /// Messages older than this are discarded, consumed or not.
    pub max_age: Duration,
    /// The stream keeps at most this many messages, discarding the oldest.
    pub max_messages: Option<u64>,
    /// How long a dedup id is remembered; at most `max_age`.
    pub duplicate_window: Duration,
    /// Can only be chosen when the stream is created: NATS refuses to
    /// change it later (`Conflict`).
    pub storage: Storage,
}

impl StreamConfig {
    /// NATS's default duplicate window.
    pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

    pub fn new(name: impl Into<String>, subjects: &[&str], max_age: Duration) -> Self {
        Self {
            name: name.into(),
            subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
            max_age,
            max_messages: None,
            duplicate_window: Self::DEFAULT_DUPLICATE_WINDOW.min(max_age),
            storage: Storage::Disk,
        }
    }

    /// Checks what both implementations require.
    pub fn check(&self) -> Result<()> {
        check_name("stream name", &self.name)?;
        let invalid = |reason| BusError::Invalid {
            what: "stream config",
            value: self.name.clone(),
            reason,
        };
        if self.subjects.is_empty() {
            return Err(invalid("needs at least one subject"));
        }
        for subject in &self.subjects {
            check_subject(subject, true)?;
        }
        if self.max_age.is_zero() {
            return Err(invalid("max_age must be positive"));
        }
        if self.duplicate_window.is_zero() || self.duplicate_window > self.max_age {
            return Err(invalid(
                "duplicate_window must be positive and at most max_age",
            ));
        }
        if self.max_messages == Some(0) || self.max_messages > Some(i64::MAX as u64) {
            return Err(invalid("max_messages must be positive"));
        }
        Ok(())
    }
}

/// A durable consumer: a named position in a stream, shared by every
/// process that consumes under the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    pub stream: String,
    /// The durable name; ASCII letters, digits, `-` and `_`.
    pub name: String,
    /// Which of the stream's subjects to receive, wildcards allowed.
    pub filter_subject: String,
    /// How long a delivery may stay unsettled before it is redelivered.
    pub ack_wait: Duration,
}

impl ConsumerConfig {
    /// NATS's default ack wait.
    pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

    pub fn new(
        stream: impl Into<String>,
        name: impl Into<String>,
        filter_subject: impl Into<String>,
    ) -> Self {
        Self {
            stream: stream.into(),
            name: name.into(),
            filter_subject: filter_subject.into(),
            ack_wait: Self::DEFAULT_ACK_WAIT,
        }
    }

    pub fn check(&self) -> Result<()> {
        check_name("stream name", &self.stream)?;
        check_name("consumer name", &self.name)?;
        check_subject(&self.filter_subject, true)?;
        if self.ack_wait.is_zero() {
            return Err(BusError::Invalid {
                what: "consumer config",
                value: self.name.clone(),
                reason: "ack_wait must be positive",
            });
        }
        Ok(())
    }
}

/// The message bus as the services see it. Subjects and stream names are
/// given without the instance's prefix. See the crate docs for the
/// delivery guarantees.
#[async_trait]
pub trait Bus: Send + Sync + fmt::Debug + 'static {
    /// Whether the bus can carry messages now: false while the connection
    /// to NATS is lost (it reconnects by itself). Services report
    /// NOT_SERVING meanwhile.
    fn connected(&self) -> bool {
        true
    }

    /// Publishes on core NATS: fire and forget, delivered to the current
    /// subscribers (and stored if a stream captures the subject).
    async fn publish(&self, subject: &str, message: Outgoing) -> Result<()>;

    /// Subscribes to `subject`, wildcards `*` and `>` allowed. With a queue
    /// group, each message goes to one member of the group. Messages this
    /// bus instance publishes after this returns are delivered to it;
    /// other instances' messages once the subscription has reached their
    /// server, which is prompt but not awaited (NATS offers no stronger
    /// promise across a cluster).
    async fn subscribe(&self, subject: &str, queue_group: Option<&str>) -> Result<Subscription>;

    /// Publishes and waits for one reply. Responders publish their reply to
    /// the request's [`Incoming::reply`]. Fails with `NoResponders` when
    /// nothing subscribes to `subject`, `Timeout` when no reply comes in
    /// time.
    async fn request(
        &self,
        subject: &str,
        message: Outgoing,
        timeout: Duration,
    ) -> Result<Incoming>;

    /// Creates the stream, or updates it to `config`. Idempotent.
    async fn ensure_stream(&self, config: &StreamConfig) -> Result<()>;

    /// Deletes the stream with its messages and consumers; a missing stream
    /// is not an error.
    async fn delete_stream(&self, name: &str) -> Result<()>;

    /// Publishes to the stream capturing `subject` and returns once it is
    /// persisted. A `dedup_id` seen by the stream within its duplicate
    /// window is stored once: a retried publish reports `duplicate` and the
    /// first sequence.
    async fn publish_durable(
        &self,
        subject: &str,
        message: Outgoing,
        dedup_id: Option<&str>,
    ) -> Result<Persisted> {
        let mut persisted = self
            .publish_durable_batch(vec![DurableMessage {
                subject: subject.to_owned(),
                message,
                dedup_id: dedup_id.map(str::to_owned),
            }])
            .await?;
        persisted.pop().ok_or_else(|| {
            BusError::Unavailable(format!("no answer for the durable publish to {subject}"))
        })
    }

    /// Publishes several messages as [`publish_durable`](Self::publish_durable)
    /// would one after another, and returns once all are persisted, with
    /// what each got back, in order. Cheaper than a call each: the
    /// in-process bus stores the batch under one lock, NATS has it in
    /// flight at once. Nothing is sent if a subject, dedup id or message
    /// is invalid; on a failure after that, part of the batch may be
    /// stored, so retry the whole batch with the same dedup ids.
    async fn publish_durable_batch(&self, messages: Vec<DurableMessage>) -> Result<Vec<Persisted>>;

    /// Creates the durable consumer if needed, starting at the beginning of
    /// the stream, and streams its deliveries. An existing consumer keeps
    /// its position and is updated to `config` where the server allows it
    /// (NATS before 2.10 refuses a changed filter with `Conflict`).
    async fn consume(&self, config: &ConsumerConfig) -> Result<Deliveries>;

    /// The stream sequence up to which the durable consumer `consumer` of
    /// `stream` has acknowledged every message it takes: 0 before its
    /// first ack, or if the consumer does not exist yet. `StreamNotFound`
    /// when the stream does not exist.
    async fn ack_floor(&self, stream: &str, consumer: &str) -> Result<u64>;

    /// Whether the streams' messages outlive this process: true on NATS,
    /// false on the in-process bus, whose streams live in its memory. A
    /// publisher whose messages must survive a crash keeps them itself
    /// where this is false.
    fn keeps_streams(&self) -> bool;
}

/// Checks a dedup id: 1 to 256 bytes without line breaks, as it travels in
/// the `Nats-Msg-Id` header.
pub fn check_dedup_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 256 || id.contains(['\r', '\n']) {
        return Err(BusError::Invalid {
            what: "dedup id",
            value: id.to_owned(),
            reason: "must be 1 to 256 bytes without line breaks",
        });
    }
    Ok(())
}
