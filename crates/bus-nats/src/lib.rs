//! The NATS implementation of [`natter_bus::Bus`]: core NATS for
//! publish/subscribe and request/reply, JetStream for durable streams.
//!
//! - Subjects become `<prefix>.<subject>`, stream names `<prefix>-<name>`.
//!   Reply inboxes live under `<prefix>._INBOX`, so a responder replies
//!   with an ordinary [`Bus::publish`] to [`Incoming::reply`].
//! - Streams use file storage (memory storage if their config asks for
//!   it), limits retention (discarding the oldest) and
//!   [`NatsConfig::replicas`] replicas.
//! - A durable consumer is a pull consumer with explicit acks and
//!   `max_ack_pending = 1`, the basis of the ordering and
//!   one-processor-per-partition guarantees described in `natter_bus`.
//!   One pull asks for [`PULL_BATCH`] messages, which the server hands
//!   out one at a time as each is acknowledged, so a busy partition costs
//!   an ack per message and a pull per batch, not a pull per message
//!   (servers before 2.11, which the project no longer supports, refused
//!   such a pull).
//! - Acks and naks wait for the server's confirmation.
//! - [`Bus::ack_floor`] reads the consumer's info: its ack floor's stream
//!   sequence. Streams live on the servers, so they outlive every process
//!   ([`Bus::keeps_streams`]).
//! - `async-nats` reconnects on its own; connection events are logged.
//!   Headers NATS sets itself (`Nats-*`) are not passed on.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::{
    ConsumerInfoErrorKind, CreateStreamErrorKind, GetStreamErrorKind, PublishError,
    PublishErrorKind,
};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{
    ConsumerErrorKind, DiscardPolicy, RetentionPolicy, StorageType,
};
use async_nats::jetstream::{self, AckKind, ErrorCode};
use async_nats::{ConnectOptions, Event, RequestErrorKind};

use async_trait::async_trait;
use futures::StreamExt;
use natter_bus::{
    Acknowledge, Bus, BusError, ConsumerConfig, DEFAULT_SUBSCRIPTION_CAPACITY, Deliveries,
    Delivery, DurableMessage, Headers, Incoming, Outgoing, Persisted, Prefix, Result, Storage,
    StreamConfig, Subscription, check_name, overlaps,
};

/// How long one pull request of a consumer waits at the server. A pull
/// that the server stops serving without a word (seen under CPU starvation:
/// no message, no heartbeat, no timeout) stalls its partition until the
/// client notices that idle heartbeats stopped, after two of them, and the
/// consumer is reopened; so heartbeats come often, and pulls are renewed
/// well before that matters. Idle, that is a heartbeat every two seconds
/// and a pull every ten per partition.
const PULL_EXPIRES: Duration = Duration::from_secs(10);
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);

/// Messages one pull request asks for. The client renews the pull when
/// half of it is used.
const PULL_BATCH: usize = 128;

/// Where and how to connect.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// One or more server URLs, comma-separated (`nats://host:4222`). A
    /// user and password, or a token, may be in them; they are never
    /// printed (see [`redacted`]).
    pub url: String,
    /// See [`natter_bus::Prefix`].
    pub prefix: String,
    /// Copies of each stream: 1 on a single server, 3 in a cluster.
    pub replicas: usize,
    /// Messages a subscription buffers before it is a slow consumer.
    pub subscription_capacity: usize,
    /// The name the server shows for this connection.
    pub connection_name: Option<String>,
    /// A NATS credentials file (a user JWT and its nkey seed), or none.
    pub credentials_file: Option<PathBuf>,
    /// Trust servers whose certificate this CA (PEM) signed, and require
    /// TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// Present this certificate and key (PEM) to servers that ask for one.
    pub tls_client: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &redacted(&self.url))
            .field("prefix", &self.prefix)
            .field("replicas", &self.replicas)
            .field("subscription_capacity", &self.subscription_capacity)
            .field("connection_name", &self.connection_name)
            .field("credentials_file", &self.credentials_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_client", &self.tls_client)
            .finish()
    }
}

/// `urls` (comma-separated) with each one's password, or token, masked:
/// `nats://ann:pw@host` prints as `nats://ann:<redacted>@host`.
pub fn redacted(urls: &str) -> String {
    let masked: Vec<String> = urls
        .split(',')
        .map(|url| {
            let Some((scheme, rest)) = url.split_once("://") else {
                return url.to_owned();
            };
            let Some((user_info, host)) = rest.rsplit_once('@') else {
                return url.to_owned();
            };
            match user_info.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
                None => format!("{scheme}://<redacted>@{host}"),
            }
        })
        .collect();
    masked.join(",")
}

impl NatsConfig {
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: prefix.into(),
            replicas: 1,
            subscription_capacity: DEFAULT_SUBSCRIPTION_CAPACITY,
            connection_name: None,
            credentials_file: None,
            tls_ca_file: None,
            tls_client: None,
        }
    }
}

/// A [`Bus`] over one NATS connection. Cheap to clone; clones share the
/// connection.
#[derive(Debug, Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    prefix: Prefix,
    replicas: usize,
}

impl NatsBus {
    /// Connects with the defaults of [`NatsConfig::new`].
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        Self::connect_with(NatsConfig::new(url, prefix)).await
    }

    /// Connects; fails if no server answers now. Once connected, lost
    /// connections are re-established in the background.
    pub async fn connect_with(config: NatsConfig) -> Result<Self> {
        let prefix = Prefix::new(&config.prefix)?;
        if config.replicas == 0 || config.subscription_capacity == 0 {
            return Err(BusError::Invalid {
                what: "nats config",
                value: format!("{config:?}"),
                reason: "replicas and subscription_capacity must be positive",
            });
        }
        let mut options = ConnectOptions::new()
            .custom_inbox_prefix(format!("{prefix}._INBOX"))
            .subscription_capacity(config.subscription_capacity)
            .event_callback({
                let url = redacted(&config.url);
                move |event| {
                    let url = url.clone();
                    async move { log_event(&url, event) }
                }
            });
        if let Some(name) = &config.connection_name {
            options = options.name(name);
        }
        if let Some(path) = &config.credentials_file {
            options = options.credentials_file(path).await.map_err(|err| {
                BusError::Unavailable(format!(
                    "cannot read the NATS credentials file {}: {err}",
                    path.display()
                ))
            })?;
        }
        if let Some(ca) = &config.tls_ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &config.tls_client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let client = options.connect(config.url.as_str()).await.map_err(|err| {
            BusError::Unavailable(format!(
                "cannot connect to NATS at {}: {err}",
                redacted(&config.url)
            ))
        })?;
        Ok(Self {
            jetstream: jetstream::new(client.clone()),
            client,
            prefix,
            replicas: config.replicas,
        })
    }
}

/// How often a consumer's backlog is measured.
const LAG_EVERY: Duration = Duration::from_secs(10);

/// Reports how many of the stream's messages the consumer has not yet
/// had acknowledged (`natter_bus_consumer_pending`), every [`LAG_EVERY`].
/// Labels name the stream and the consumer, which are few and fixed.
async fn report_lag(
    mut consumer: jetstream::consumer::Consumer<pull::Config>,
    stream: String,
    name: String,
) {
    metrics::describe_gauge!(
        "natter_bus_consumer_pending",
        "Messages of a durable stream its consumer has not yet had acknowledged."
    );
    let pending =
        metrics::gauge!("natter_bus_consumer_pending", "stream" => stream, "consumer" => name);
    let mut every = tokio::time::interval(LAG_EVERY);
    loop {
        every.tick().await;
        if let Ok(info) = consumer.info().await {
            pending.set((info.num_pending + info.num_ack_pending as u64) as f64);
        }
    }
}

fn log_event(url: &str, event: Event) {
    match event {
        Event::Connected => tracing::info!(url, "nats connection established"),
        Event::Disconnected => tracing::warn!(url, "nats connection lost; reconnecting"),
        Event::LameDuckMode => tracing::warn!(url, "nats server entered lame duck mode"),
        Event::Draining => tracing::info!(url, "nats connection draining"),
        Event::Closed => tracing::info!(url, "nats connection closed"),
        Event::SlowConsumer(sid) => {
            tracing::warn!(
                url,
                subscription = sid,
                "slow nats subscriber: messages dropped"
            );
        }
        Event::ServerError(err) => tracing::error!(url, %err, "nats server error"),
        Event::ClientError(err) => tracing::error!(url, %err, "nats client error"),
    }
}

fn unavailable(context: &str, err: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("{context}: {err}"))
}

/// Our headers as NATS headers. They were checked by `Outgoing::prepare`;
/// a failure here would be a gap in that check, reported rather than
/// panicked on.
fn header_map(headers: &Headers) -> Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, value) in headers.iter() {
        let invalid = || BusError::Invalid {
            what: "header",
            value: name.to_owned(),
            reason: "not representable in NATS",
        };
        let name = HeaderName::from_str(name).map_err(|_| invalid())?;
        let value = HeaderValue::from_str(value).map_err(|_| invalid())?;
        map.insert(name, value);
    }
    Ok(map)
}

/// NATS headers as ours, without the ones NATS sets (`Nats-*`).
fn headers(map: Option<&HeaderMap>) -> Headers {
    map.into_iter()
        .flat_map(HeaderMap::iter)
        .filter(|(name, _)| {
            let name: &str = name.as_ref();
            !name
                .get(..5)
                .is_some_and(|s| s.eq_ignore_ascii_case("nats-"))
        })
        .filter_map(|(name, values)| {
            let value: &str = values.first()?.as_ref();
            Some((name.to_string(), value.to_owned()))
        })
        .collect()
}

fn incoming(prefix: &Prefix, message: &async_nats::Message) -> Incoming {
    Incoming {
        subject: prefix
            .strip(&message.subject)
            .unwrap_or(&message.subject)
            .to_owned(),
        reply: message
            .reply
            .as_deref()
            .and_then(|r| prefix.strip(r))
            .map(str::to_owned),
        headers: headers(message.headers.as_ref()),
        payload: message.payload.clone(),
    }
}

fn too_large(payload: usize) -> BusError {
    BusError::Invalid {
        what: "payload",
        value: format!("{payload} bytes"),
        reason: "exceeds the server's max_payload",
    }
}

fn durable_publish_error(subject: &str, payload: usize, err: PublishError) -> BusError {
    match err.kind() {
        PublishErrorKind::StreamNotFound => BusError::NoStream {
            subject: subject.to_owned(),
        },
        PublishErrorKind::MaxPayloadExceeded => too_large(payload),
        _ => unavailable("durable publish", err),
    }
}

fn is_jetstream_error(error: &jetstream::Error, code: ErrorCode) -> bool {
    error.error_code() == code
}

#[async_trait]
impl Bus for NatsBus {
    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    async fn publish(&self, subject: &str, message: Outgoing) -> Result<()> {
        let full = self.prefix.subject(subject)?;
        let message = message.prepare()?;
        let size = message.payload.len();
        let result = if message.headers.is_empty() {
            self.client.publish(full, message.payload).await
        } else {
            let headers = header_map(&message.headers)?;
            self.client
                .publish_with_headers(full, headers, message.payload)
                .await
        };
        result.map_err(|err| match err.kind() {
            async_nats::client::PublishErrorKind::MaxPayloadExceeded => too_large(size),
            _ => unavailable("publish", err),
        })
    }

    async fn subscribe(&self, subject: &str, queue_group: Option<&str>) -> Result<Subscription> {
        let filter = self.prefix.filter(subject)?;
        let subscriber = match queue_group {
            Some(group) => {
                check_name("queue group", group)?;
                self.client.queue_subscribe(filter, group.to_owned()).await
            }
            None => self.client.subscribe(filter).await,
        }
        .map_err(|err| unavailable("subscribe", err))?;
        // Get the subscription to the server before returning.
        self.client
            .flush()
            .await
            .map_err(|err| unavailable("subscribe", err))?;
        let prefix = self.prefix.clone();
        Ok(Subscription::new(
            subscriber.map(move |message| incoming(&prefix, &message)),
        ))
    }

    async fn request(
        &self,
        subject: &str,
        message: Outgoing,
        timeout: Duration,
    ) -> Result<Incoming> {
        let full = self.prefix.subject(subject)?;
        let message = message.prepare()?;
        let size = message.payload.len();
        let request = async_nats::Request::new()
            .headers(header_map(&message.headers)?)
            .payload(message.payload)
            .timeout(Some(timeout));
        match self.client.send_request(full, request).await {
            Ok(reply) => Ok(incoming(&self.prefix, &reply)),
            Err(err) => Err(match err.kind() {
                RequestErrorKind::NoResponders => BusError::NoResponders {
                    subject: subject.to_owned(),
                },
                RequestErrorKind::TimedOut => BusError::Timeout {
                    subject: subject.to_owned(),
                    timeout,
                },
                RequestErrorKind::MaxPayloadExceeded => too_large(size),
                _ => unavailable("request", err),
            }),
        }
    }

    async fn ensure_stream(&self, config: &StreamConfig) -> Result<()> {
        config.check()?;
        let name = self.prefix.stream(&config.name)?;
        let stream = jetstream::stream::Config {
            name: name.clone(),
            subjects: config
                .subjects
                .iter()
                .map(|s| self.prefix.filter(s))
                .collect::<Result<_>>()?,
            max_age: config.max_age,
            max_messages: config
                .max_messages
                .map_or(-1, |max| i64::try_from(max).unwrap_or(i64::MAX)),
            duplicate_window: config.duplicate_window,
            num_replicas: self.replicas,
            storage: match config.storage {
                Storage::Disk => StorageType::File,
                Storage::Memory => StorageType::Memory,
            },
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            ..Default::default()
        };
        match self.jetstream.create_or_update_stream(stream).await {
            Ok(_) => Ok(()),
            Err(err) => Err(match err.kind() {
                CreateStreamErrorKind::JetStream(error)
                    if is_jetstream_error(&error, ErrorCode::STREAM_SUBJECT_OVERLAP) =>
                {
                    BusError::Conflict(format!(
                        "subjects of stream {name} overlap another stream's"
                    ))
                }
                CreateStreamErrorKind::JetStream(error) => {
                    BusError::Conflict(format!("stream {name} refused: {error}"))
                }
                _ => unavailable("ensure stream", err),
            }),
        }
    }

    async fn delete_stream(&self, name: &str) -> Result<()> {
        let name = self.prefix.stream(name)?;
        match self.jetstream.delete_stream(&name).await {
            Ok(_) => Ok(()),
            Err(err) => match err.kind() {
                GetStreamErrorKind::JetStream(error)
                    if is_jetstream_error(&error, ErrorCode::STREAM_NOT_FOUND) =>
                {
                    Ok(())
                }
                _ => Err(unavailable("delete stream", err)),
            },
        }
    }

    async fn publish_durable_batch(&self, messages: Vec<DurableMessage>) -> Result<Vec<Persisted>> {
        let mut prepared = Vec::with_capacity(messages.len());
        for message in messages {
            let (full, m) = message.prepare(&self.prefix)?;
            let size = m.message.payload.len();
            let mut publish = PublishMessage::build()
                .payload(m.message.payload)
                .headers(header_map(&m.message.headers)?);
            if let Some(id) = &m.dedup_id {
                publish = publish.message_id(id);
            }
            prepared.push((full, m.subject, size, publish));
        }
        // All in flight before the first ack is awaited: one round trip
        // for the batch rather than one each.
        let mut acks = Vec::with_capacity(prepared.len());
        for (full, subject, size, publish) in prepared {
            let ack = self
                .jetstream
                .send_publish(full, publish)
                .await
                .map_err(|err| durable_publish_error(&subject, size, err))?;
            acks.push((subject, size, ack));
        }
        let mut persisted = Vec::with_capacity(acks.len());
        for (subject, size, ack) in acks {
            let ack = ack
                .await
                .map_err(|err| durable_publish_error(&subject, size, err))?;
            persisted.push(Persisted {
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            });
        }
        Ok(persisted)
    }

    async fn consume(&self, config: &ConsumerConfig) -> Result<Deliveries> {
        config.check()?;
        let stream_name = self.prefix.stream(&config.stream)?;
        let filter = self.prefix.filter(&config.filter_subject)?;
        let stream = self
            .jetstream
            .get_stream(&stream_name)
            .await
            .map_err(|err| match err.kind() {
                GetStreamErrorKind::JetStream(error)
                    if is_jetstream_error(&error, ErrorCode::STREAM_NOT_FOUND) =>
                {
                    BusError::StreamNotFound {
                        name: config.stream.clone(),
                    }
                }
                _ => unavailable("consume", err),
            })?;
        if !stream
            .cached_info()
            .config
            .subjects
            .iter()
            .any(|s| overlaps(s, &filter))
        {
            return Err(BusError::Invalid {
                what: "subject filter",
                value: config.filter_subject.clone(),
                reason: "matches none of the stream's subjects",
            });
        }
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(config.name.clone()),
                filter_subject: filter,
                ack_policy: AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                max_ack_pending: 1,
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|err| match err.kind() {
                ConsumerErrorKind::JetStream(error) => {
                    BusError::Conflict(format!("consumer {} refused: {error}", config.name))
                }
                _ => unavailable("consume", err),
            })?;
        // The consumer's backlog, for as long as it is consumed.
        let lag = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(report_lag(
            consumer.clone(),
            config.stream.clone(),
            config.name.clone(),
        )));
        let messages = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .map_err(|err| unavailable("consume", err))?;
        let prefix = self.prefix.clone();
        Ok(Deliveries::new(messages.map(move |message| {
            let _lag = &lag;
            message
                .map_err(|err| unavailable("consume", err))
                .and_then(|message| delivery(&prefix, message))
        })))
    }

    async fn ack_floor(&self, stream: &str, consumer: &str) -> Result<u64> {
        check_name("consumer name", consumer)?;
        let name = self.prefix.stream(stream)?;
        // A handle without a round trip: the consumer info request alone
        // tells a missing stream from a missing consumer.
        let handle = self
            .jetstream
            .get_stream_no_info(&name)
            .await
            .map_err(|err| unavailable("ack floor", err))?;
        match handle.consumer_info(consumer).await {
            Ok(info) => Ok(info.ack_floor.stream_sequence),
            Err(err) => match err.kind() {
                ConsumerInfoErrorKind::NotFound => Ok(0),
                ConsumerInfoErrorKind::StreamNotFound => Err(BusError::StreamNotFound {
                    name: stream.to_owned(),
                }),
                _ => Err(unavailable("ack floor", err)),
            },
        }
    }

    fn keeps_streams(&self) -> bool {
        true
    }
}

fn delivery(prefix: &Prefix, message: jetstream::Message) -> Result<Delivery> {
    let info = message
        .info()
        .map_err(|err| unavailable("malformed delivery", err))?;
    let sequence = info.stream_sequence;
    let delivered = u32::try_from(info.delivered).unwrap_or(u32::MAX);
    let mut incoming = incoming(prefix, &message.message);
    // The reply subject is JetStream's ack subject, not for responders.
    incoming.reply = None;
    Ok(Delivery::new(
        incoming,
        sequence,
        delivered,
        Box::new(NatsAck(message)),
    ))
}

#[derive(Debug)]
struct NatsAck(jetstream::Message);

#[async_trait]
impl Acknowledge for NatsAck {
    async fn ack(self: Box<Self>) -> Result<()> {
        self.0
            .double_ack()
            .await
            .map_err(|err| unavailable("ack", err))
    }

    async fn nak(self: Box<Self>, delay: Duration) -> Result<()> {
        let delay = (!delay.is_zero()).then_some(delay);
        self.0
            .double_ack_with(AckKind::Nak(delay))
            .await
            .map_err(|err| unavailable("nak", err))
    }
}
