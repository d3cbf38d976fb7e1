//! What travels over the bus: headers, outgoing and incoming messages, and
//! durable deliveries with their acknowledgement.

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use futures::stream::BoxStream;
use opentelemetry::global;
use opentelemetry::propagation::{Extractor, Injector};

use crate::{BusError, Prefix, Result, check_dedup_id};

/// The largest payload accepted, NATS's default `max_payload`. Enforced by
/// both implementations so a message that works in one process also works
/// over NATS.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// The W3C trace-context header carrying the sender's span.
pub const TRACEPARENT: &str = "traceparent";

/// Message headers: single-valued, names case-sensitive as in NATS. Names
/// starting with `Nats-` belong to NATS and are refused on publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(BTreeMap<String, String>);

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value`, returning the value it replaces.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) -> Option<String> {
        self.0.insert(name.into(), value.into())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn remove(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks every header against what NATS can carry.
    pub fn check(&self) -> Result<()> {
        for (name, value) in self.iter() {
            check_header(name, value)?;
        }
        Ok(())
    }
}

/// A header name is printable ASCII without `:`; a value has no line breaks.
fn check_header(name: &str, value: &str) -> Result<()> {
    let invalid = |reason| BusError::Invalid {
        what: "header",
        value: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("name must not be empty"));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(invalid("name must be printable ASCII without `:`"));
    }
    if name
        .get(..5)
        .is_some_and(|start| start.eq_ignore_ascii_case("nats-"))
    {
        return Err(invalid("names starting with `Nats-` are reserved"));
    }
    if value.contains(['\r', '\n']) {
        return Err(invalid("value must not contain line breaks"));
    }
    Ok(())
}

impl Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        self.insert(key, value);
    }
}

impl Extractor for Headers {
    fn get(&self, key: &str) -> Option<&str> {
        Headers::get(self, key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// A message to publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outgoing {
    pub headers: Headers,
    pub payload: Bytes,
}

impl Outgoing {
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self {
            headers: Headers::new(),
            payload: payload.into(),
        }
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// What every implementation does before sending: checks headers and
    /// payload size, then, unless the caller set `traceparent` itself,
    /// injects the current OpenTelemetry context through the global
    /// propagator (a no-op until one is installed).
    pub fn prepare(mut self) -> Result<Self> {
        self.headers.check()?;
        if self.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(BusError::Invalid {
                what: "payload",
                value: format!("{} bytes", self.payload.len()),
                reason: "exceeds the maximum payload size",
            });
        }
        if !self.headers.contains(TRACEPARENT) {
            let cx = opentelemetry::Context::current();
            global::get_text_map_propagator(|p| p.inject_context(&cx, &mut self.headers));
        }
        Ok(self)
    }
}

/// A message received from a subscription, a request or a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The subject it was published to, without the bus prefix.
    pub subject: String,
    /// Where a responder publishes its reply (see [`Bus::request`]). `None`
    /// when no reply is expected, for durable deliveries, and for requests
    /// from outside this bus's prefix.
    ///
    /// [`Bus::request`]: crate::Bus::request
    pub reply: Option<String>,
    pub headers: Headers,
    pub payload: Bytes,
}

impl Incoming {
    /// The sender's trace context, extracted from `traceparent` and
    /// `tracestate` through the global propagator; use it as the parent of
    /// the span that handles this message.
    pub fn trace_context(&self) -> opentelemetry::Context {
        global::get_text_map_propagator(|p| p.extract(&self.headers))
    }
}

/// One message of a durable publish: where it goes, and the dedup id that
/// makes a retry store it once.
#[derive(Debug, Clone)]
pub struct DurableMessage {
    pub subject: String,
    pub message: Outgoing,
    pub dedup_id: Option<String>,
}

impl DurableMessage {
    /// Checks what every implementation requires and prepares the message
    /// ([`Outgoing::prepare`]); returns the subject with `prefix` in front,
    /// and the message.
    pub fn prepare(self, prefix: &Prefix) -> Result<(String, Self)> {
        let full = prefix.subject(&self.subject)?;
        if let Some(id) = &self.dedup_id {
            check_dedup_id(id)?;
        }
        Ok((
            full,
            Self {
                message: self.message.prepare()?,
                ..self
            },
        ))
    }
}

/// What a durable publish got back once the stream persisted the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Persisted {
    /// The message's sequence in its stream; for a duplicate, the sequence
    /// of the message stored first.
    pub sequence: u64,
    /// The stream already held a message with this dedup id inside its
    /// duplicate window; nothing new was stored.
    pub duplicate: bool,
}

/// How an implementation settles one delivery. Implementations provide it;
/// services use [`Delivery::ack`] and [`Delivery::nak`].
#[async_trait]
pub trait Acknowledge: Send + Sync + fmt::Debug {
    async fn ack(self: Box<Self>) -> Result<()>;
    async fn nak(self: Box<Self>, delay: Duration) -> Result<()>;
}

/// One message from a durable consumer. Settle it with [`ack`](Self::ack)
/// or [`nak`](Self::nak); a delivery dropped unsettled comes back after
/// the consumer's ack wait.
#[derive(Debug)]
pub struct Delivery {
    pub message: Incoming,
    /// The message's sequence in its stream.
    pub sequence: u64,
    /// How many times this message has been delivered, 1 the first time.
    pub delivered: u32,
    acker: Box<dyn Acknowledge>,
}

impl Delivery {
    pub fn new(
        message: Incoming,
        sequence: u64,
        delivered: u32,
        acker: Box<dyn Acknowledge>,
    ) -> Self {
        Self {
            message,
            sequence,
            delivered,
            acker,
        }
    }

    /// Marks the message done. Returns once the bus recorded it, so an
    /// acknowledged message is not delivered to this consumer again.
    pub async fn ack(self) -> Result<()> {
        self.acker.ack().await
    }

    /// Gives the message back: it is delivered again after `delay`, before
    /// any later message of this consumer.
    pub async fn nak(self, delay: Duration) -> Result<()> {
        self.acker.nak(delay).await
    }
}

/// Incoming messages of one subscription. Bounded: a subscriber that falls
/// behind by the bus's capacity loses messages (NATS calls it a slow
/// consumer). Dropping it unsubscribes.
pub struct Subscription(BoxStream<'static, Incoming>);

impl Subscription {
    pub fn new(stream: impl Stream<Item = Incoming> + Send + 'static) -> Self {
        Self(Box::pin(stream))
    }
}

impl Stream for Subscription {
    type Item = Incoming;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        self.0.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

/// Deliveries of one durable consumer, in stream order. An error item
/// reports a transient failure and the stream goes on; it ends only when
/// the consumer or its stream is gone.
pub struct Deliveries(BoxStream<'static, Result<Delivery>>);

impl Deliveries {
    pub fn new(stream: impl Stream<Item = Result<Delivery>> + Send + 'static) -> Self {
        Self(Box::pin(stream))
    }
}

impl Stream for Deliveries {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deliveries").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_rules() {
        for (name, value) in [("a", "b"), ("X-Tenant", "acme"), ("traceparent", "00-1")] {
            assert!(check_header(name, value).is_ok(), "{name}");
        }
        for (name, value) in [
            ("", "v"),
            ("a b", "v"),
            ("a:b", "v"),
            ("é", "v"),
            ("Nats-Msg-Id", "v"),
            ("nats-expected-stream", "v"),
            ("a", "v\r\nx"),
        ] {
            assert!(check_header(name, value).is_err(), "{name:?}: {value:?}");
        }
    }

    #[test]
    fn oversized_payloads_are_refused() {
        let big = Outgoing::new(vec![0u8; MAX_PAYLOAD_BYTES + 1]);
        assert!(matches!(
            big.prepare(),
            Err(BusError::Invalid {
                what: "payload",
                ..
            })
        ));
        assert!(
            Outgoing::new(vec![0u8; MAX_PAYLOAD_BYTES])
                .prepare()
                .is_ok()
        );
    }
}
