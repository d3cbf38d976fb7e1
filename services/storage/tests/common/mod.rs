//! Starts the storage service on 127.0.0.1:0 over an in-process bus and a
//! throwaway embedded store, and hands out what tests need to talk to it.

#![allow(dead_code, unreachable_pub)] // Each test file uses a different part.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use natter_auth::{Identity, Signer, Verifier};
use natter_bus::{Bus, ConsumerConfig, Deliveries};
use natter_bus_local::LocalBus;
use natter_contract::{EVENTS, Topology};
use natter_core::{ConversationId, Event, Role, TenantId, UserId};
use natter_proto::bus::v1::ConversationEvents;
use natter_proto::v1::conversation_service_client::ConversationServiceClient;
use natter_proto::v1::{
    CreateConversationRequest, MessageContent, NewMember, SendMessageRequest, SendMessageResponse,
    message_content,
};
use natter_server::{Settings, StartError};
use natter_storage::Deps;
use natter_store_embedded::EmbeddedStore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

pub const SECRET: &str = "storage-component-tests-secret-0123456789";
const DEADLINE: Duration = Duration::from_secs(10);

pub struct Harness {
    pub bus: Arc<dyn Bus>,
    pub store: Arc<EmbeddedStore>,
    pub topology: Topology,
    pub settings: Settings,
    channel: Channel,
    signer: Signer,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), StartError>>>,
}

impl Harness {
    pub async fn start() -> Self {
        let store = EmbeddedStore::temporary(Settings::default().limits());
        Self::start_on(Arc::new(store.expect("a temporary store"))).await
    }

    /// Starts on `store`, as a restarted process would: with a new
    /// in-process bus, which keeps nothing of the old one's streams.
    pub async fn start_on(store: Arc<EmbeddedStore>) -> Self {
        let mut settings = Settings::default();
        settings.auth.hs256_secret = SECRET.into();
        settings.bus.partitions = 4;
        settings.grace_period_seconds = 2;
        let topology = settings.topology();
        let bus: Arc<dyn Bus> = Arc::new(LocalBus::new("test").expect("a local bus"));
        natter_contract::ensure_streams(bus.as_ref(), &topology)
            .await
            .expect("the streams");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("the bound address");
        let deps = Deps {
            bus: bus.clone(),
            verifier: Arc::new(Verifier::hs256(SECRET.as_bytes()).expect("a verifier")),
            conversations: store.clone(),
            instance: "storage-test".to_owned(),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let (settings, shutdown) = (settings.clone(), shutdown.clone());
            async move { natter_storage::run(&settings, deps, listener, shutdown).await }
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("a channel")
            .connect_lazy();
        let harness = Self {
            bus,
            store,
            topology,
            settings,
            channel,
            signer: Signer::hs256(SECRET.as_bytes()),
            shutdown,
            task: Some(task),
        };
        harness.wait_until_serving().await;
        harness
    }

    /// Polls the health service until the API reports SERVING, which
    /// `run` does only after its bus responders are subscribed.
    async fn wait_until_serving(&self) {
        let mut health = HealthClient::new(self.channel.clone());
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let answer = health
                .check(HealthCheckRequest {
                    service: "natter.v1.ConversationService".into(),
                })
                .await;
            if answer.is_ok_and(|a| a.into_inner().status == ServingStatus::Serving as i32) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "storage did not start serving in time"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn client(&self) -> ConversationServiceClient<Channel> {
        ConversationServiceClient::new(self.channel.clone())
    }

    /// `message` with `who`'s bearer token.
    pub fn req<T>(&self, who: &Identity, message: T) -> Request<T> {
        let token = self.signer.token(who, 600).expect("a token");
        let mut request = Request::new(message);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii metadata"),
        );
        request
    }

    /// Creates a conversation as `who` with `members`; returns its id.
    pub async fn create(&self, who: &Identity, members: &[(&str, Role)]) -> ConversationId {
        let members = members
            .iter()
            .map(|(user, role)| NewMember {
                user_id: (*user).to_owned(),
                role: natter_proto::v1::Role::from(*role).into(),
            })
            .collect();
        let created = self
            .client()
            .create_conversation(self.req(
                who,
                CreateConversationRequest {
                    members,
                    ..Default::default()
                },
            ))
            .await
            .expect("a created conversation")
            .into_inner();
        created
            .conversation
            .expect("the conversation")
            .conversation_id
            .parse()
            .expect("a conversation id")
    }

    pub async fn send(
        &self,
        who: &Identity,
        conversation: ConversationId,
        client_message_id: &str,
        text: &str,
    ) -> Result<SendMessageResponse, Status> {
        self.client()
            .send_message(self.req(
                who,
                SendMessageRequest {
                    conversation_id: conversation.to_string(),
                    client_message_id: client_message_id.to_owned(),
                    content: Some(text_content(text)),
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    /// A fresh durable consumer of every EVENTS partition, from the start.
    pub async fn events(&self, name: &str) -> Events {
        self.consume(name, &format!("{}.*", EVENTS.base)).await
    }

    /// The durable consumer `name` of the EVENTS messages on `subject`.
    pub async fn consume(&self, name: &str, subject: &str) -> Events {
        let deliveries = self
            .bus
            .consume(&ConsumerConfig::new(EVENTS.name, name, subject))
            .await
            .expect("a consumer of EVENTS");
        Events {
            deliveries,
            pending: VecDeque::new(),
        }
    }

    /// Stops the service and checks that it stopped cleanly and in time.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let task = self.task.take().expect("running");
        let result = tokio::time::timeout(DEADLINE, task)
            .await
            .expect("storage stopped in time")
            .expect("the task did not panic");
        result.expect("storage stopped cleanly");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The events on EVENTS, one at a time, though they travel in batches.
pub struct Events {
    deliveries: Deliveries,
    pending: VecDeque<(TenantId, Event)>,
}

/// The next event on `events`, with its tenant; its batch is acknowledged.
pub async fn next_event(events: &mut Events) -> (TenantId, Event) {
    while events.pending.is_empty() {
        let delivery = tokio::time::timeout(DEADLINE, events.deliveries.next())
            .await
            .expect("an event in time")
            .expect("the consumer is open")
            .expect("a delivery");
        let batch: ConversationEvents =
            natter_contract::decode(&delivery.message.payload).expect("ConversationEvents");
        delivery.ack().await.expect("an ack");
        events.pending.extend(batch.events.into_iter().map(|event| {
            (
                TenantId::new(event.tenant_id).expect("a tenant id"),
                event
                    .event
                    .expect("an event")
                    .try_into()
                    .expect("a well-formed event"),
            )
        }));
    }
    events.pending.pop_front().expect("an event")
}

pub fn who(tenant: &str, user: &str, role: Role) -> Identity {
    Identity {
        tenant: TenantId::new(tenant).expect("a tenant id"),
        user: UserId::new(user).expect("a user id"),
        role,
    }
}

pub fn text_content(text: &str) -> MessageContent {
    MessageContent {
        kind: Some(message_content::Kind::Text(text.to_owned())),
    }
}

/// Asserts `status` has `code` and an ErrorInfo with `reason`.
#[track_caller]
pub fn assert_status(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.domain, "natter.dev");
    assert_eq!(info.reason, reason, "{status:?}");
}

/// Asserts `status` is INVALID_ARGUMENT about `field`.
#[track_caller]
pub fn assert_invalid(status: &Status, field: &str) {
    assert_status(status, Code::InvalidArgument, "INVALID_FIELD");
    let bad = status.get_details_bad_request().expect("a BadRequest");
    assert_eq!(bad.field_violations[0].field, field, "{status:?}");
}
