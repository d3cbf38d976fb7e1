//! Runs the fan-out service over the in-process bus and hands back what a
//! test needs. Storage's members responder is either played by a bus
//! responder in the test that answers from an embedded store, or is the
//! real storage service on the same bus and store.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use natter_auth::{Identity, Signer, Verifier};
use natter_bus::{Bus, Incoming, LocalBus, Outgoing, Subscription};
use natter_contract::{EVENTS, subjects};
use natter_core::{
    ConversationId, Event, Limits, NewConversation, Role, TenantId, Timestamp, UserId,
};
use natter_fanout::{Deps, run};
use natter_proto::bus::v1::{
    ConversationEvent, ConversationEvents, Failure, MembersPage, MembersQuery, UserEvent,
    UserEvents,
};
use natter_proto::status::{reason, to_failure};
use natter_proto::v1::conversation_service_client::ConversationServiceClient;
use natter_proto::v1::fanout_service_client::FanoutServiceClient;
use natter_proto::v1::{self, GetStatsRequest, GetStatsResponse};
use natter_server::Settings;
use natter_server::store_status;
use natter_store::{ConversationStore, PageRequest};
use natter_store_embedded::EmbeddedStore;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub(crate) const SECRET: &str = "a test secret that is long enough for hs256";
pub(crate) const TENANT: &str = "acme";

/// How long any wait in a test may take before it fails.
pub(crate) const DEADLINE: Duration = Duration::from_secs(60);

/// Who answers fanout's members queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    /// A responder in the test, which can be told to fail.
    Double,
    /// The storage service itself, with its gRPC API.
    Storage,
}

pub(crate) struct Harness {
    /// The in-process bus, as the test sees it.
    pub(crate) bus: LocalBus,
    pub(crate) store: Arc<EmbeddedStore>,
    pub(crate) settings: Settings,
    pub(crate) client: FanoutServiceClient<Channel>,
    /// The storage service's API, with [`Peer::Storage`].
    pub(crate) storage: Option<ConversationServiceClient<Channel>>,
    /// Members queries to answer with UNAVAILABLE before answering again.
    pub(crate) failing_queries: Arc<AtomicU32>,
    signer: Signer,
    shutdown: CancellationToken,
    server: Option<JoinHandle<Result<(), natter_server::StartError>>>,
}

impl Harness {
    pub(crate) async fn start() -> Self {
        let bus = test_bus();
        Self::start_with(bus.clone(), Arc::new(bus), Peer::Double).await
    }

    /// Runs fanout on `service_bus`, which must wrap `bus`.
    pub(crate) async fn start_with(bus: LocalBus, service_bus: Arc<dyn Bus>, peer: Peer) -> Self {
        let mut settings = Settings::default();
        settings.auth.hs256_secret = SECRET.into();
        settings.grace_period_seconds = 1;
        natter_contract::ensure_streams(&bus, &settings.topology())
            .await
            .unwrap();

        let store = Arc::new(EmbeddedStore::temporary(Limits::default()).unwrap());
        let failing_queries = Arc::new(AtomicU32::new(0));
        let shutdown = CancellationToken::new();
        let storage = match peer {
            Peer::Double => {
                serve_members(&bus, store.clone(), failing_queries.clone()).await;
                None
            }
            Peer::Storage => {
                Some(start_storage(&settings, &bus, store.clone(), shutdown.clone()).await)
            }
        };

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let deps = Deps {
            bus: service_bus,
            verifier: Arc::new(Verifier::hs256(SECRET.as_bytes()).unwrap()),
            instance: "fanout-test".into(),
        };
        let server = {
            let (settings, shutdown) = (settings.clone(), shutdown.clone());
            tokio::spawn(async move { run(&settings, deps, listener, shutdown).await })
        };
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let harness = Self {
            bus,
            store,
            settings,
            client: FanoutServiceClient::new(channel),
            storage,
            failing_queries,
            signer: Signer::hs256(SECRET.as_bytes()),
            shutdown,
            server: Some(server),
        };
        // Answering means the service has subscribed to signals too.
        harness.stats().await;
        harness
    }

    pub(crate) fn tenant(&self) -> TenantId {
        TenantId::new(TENANT).unwrap()
    }

    pub(crate) fn token(&self, user: &str, role: Role) -> String {
        let identity = Identity {
            tenant: self.tenant(),
            user: UserId::new(user).unwrap(),
            role,
        };
        self.signer.token(&identity, 600).unwrap()
    }

    /// A request carrying `user`'s token.
    pub(crate) fn request<T>(&self, user: &str, role: Role, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let value = format!("Bearer {}", self.token(user, role))
            .parse()
            .unwrap();
        request.metadata_mut().insert("authorization", value);
        request
    }

    pub(crate) async fn stats(&self) -> GetStatsResponse {
        self.client
            .clone()
            .get_stats(self.request("ops", Role::Service, GetStatsRequest {}))
            .await
            .unwrap()
            .into_inner()
    }

    /// Polls the counters until `done` holds for them.
    pub(crate) async fn stats_until(
        &self,
        done: impl Fn(&GetStatsResponse) -> bool,
    ) -> GetStatsResponse {
        let start = Instant::now();
        loop {
            let stats = self.stats().await;
            if done(&stats) {
                return stats;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "stats never got there: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A conversation of `tenant` with these members, in the store.
    pub(crate) async fn conversation(&self, members: &[&str]) -> ConversationId {
        let users: Vec<UserId> = members.iter().map(|m| UserId::new(*m).unwrap()).collect();
        self.conversation_of(&users).await
    }

    pub(crate) async fn conversation_of(&self, users: &[UserId]) -> ConversationId {
        let id = ConversationId::generate();
        let per_request = Limits::default().max_members_per_request;
        let mut batches = users.chunks(per_request);
        let first = batches.next().unwrap_or_default();
        self.store
            .create_conversation(&NewConversation {
                id,
                tenant_id: self.tenant(),
                subject: "test".into(),
                created_by: users[0].clone(),
                created_at: Timestamp::from_millis(1),
                members: first.iter().map(|u| (u.clone(), Role::Customer)).collect(),
            })
            .await
            .unwrap();
        for batch in batches {
            let batch: Vec<(UserId, Role)> =
                batch.iter().map(|u| (u.clone(), Role::Customer)).collect();
            self.store
                .add_members(&self.tenant(), id, &batch, Timestamp::from_millis(2))
                .await
                .unwrap();
        }
        id
    }

    /// Publishes `event` on EVENTS as storage does, under `dedup_id`.
    pub(crate) async fn publish_event(&self, event: &Event, dedup_id: Option<&str>) {
        let subject = EVENTS.subject(
            &self.settings.topology(),
            &subjects::conversation_key(event.conversation_id()),
        );
        let message = ConversationEvents {
            events: vec![ConversationEvent {
                tenant_id: TENANT.into(),
                event: Some(v1::Event::from(event.clone())),
            }],
        };
        self.bus
            .publish_durable(&subject, Outgoing::new(message.encode_to_vec()), dedup_id)
            .await
            .unwrap();
    }

    /// Everything stored on USERS from now on (new messages only: the
    /// stream does not pass duplicates on).
    pub(crate) async fn users_stream(&self) -> Subscription {
        self.bus.subscribe("users.>", None).await.unwrap()
    }

    /// The live frames of `user` from now on.
    pub(crate) async fn live(&self, user: &str) -> Subscription {
        let subject = subjects::live(&self.tenant(), &UserId::new(user).unwrap());
        self.bus.subscribe(&subject, None).await.unwrap()
    }

    /// Stops the service and waits for it to end.
    pub(crate) async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            tokio::time::timeout(DEADLINE, server)
                .await
                .expect("fanout stops within the deadline")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A bus whose subscriptions hold enough for a 10,000-member fan-out.
pub(crate) fn test_bus() -> LocalBus {
    LocalBus::with_capacity("fanout", 65_536).unwrap()
}

/// The storage service on `bus` and `store`, until `shutdown`.
async fn start_storage(
    settings: &Settings,
    bus: &LocalBus,
    store: Arc<EmbeddedStore>,
    shutdown: CancellationToken,
) -> ConversationServiceClient<Channel> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let deps = natter_storage::Deps {
        bus: Arc::new(bus.clone()),
        verifier: Arc::new(Verifier::hs256(SECRET.as_bytes()).unwrap()),
        conversations: store,
        instance: "storage-test".into(),
    };
    let settings = settings.clone();
    tokio::spawn(async move { natter_storage::run(&settings, deps, listener, shutdown).await });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    ConversationServiceClient::new(channel)
}

/// Storage's `MembersQuery` responder, answered from `store`.
async fn serve_members(bus: &LocalBus, store: Arc<EmbeddedStore>, failing: Arc<AtomicU32>) {
    let requests = bus
        .subscribe(subjects::MEMBERS, Some("storage"))
        .await
        .unwrap();
    let bus: Arc<dyn Bus> = Arc::new(bus.clone());
    tokio::spawn(natter_contract::serve(
        bus,
        requests,
        16,
        move |query: MembersQuery| {
            let (store, failing) = (store.clone(), failing.clone());
            async move {
                let fail = failing
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if fail {
                    return MembersPage {
                        failure: Some(Failure {
                            code: tonic::Code::Unavailable as i32,
                            reason: reason::STORE_UNAVAILABLE.into(),
                            message: "storage is unavailable, retry later".into(),
                            field: String::new(),
                        }),
                        ..MembersPage::default()
                    };
                }
                members_page(&*store, query).await
            }
        },
    ));
}

async fn members_page(store: &dyn ConversationStore, query: MembersQuery) -> MembersPage {
    let tenant = TenantId::new(query.tenant_id).unwrap();
    let conversation: ConversationId = query.conversation_id.parse().unwrap();
    let after =
        (!query.after_user_id.is_empty()).then(|| UserId::new(query.after_user_id).unwrap());
    let page = PageRequest {
        after,
        size: query.page_size,
    };
    match store.list_members(&tenant, conversation, page).await {
        Ok(page) => MembersPage {
            failure: None,
            user_ids: page
                .items
                .into_iter()
                .map(|m| m.user_id.to_string())
                .collect(),
            next_after_user_id: page.next.map(|u| u.to_string()).unwrap_or_default(),
        },
        Err(e) => MembersPage {
            failure: Some(to_failure(&store_status(e))),
            ..MembersPage::default()
        },
    }
}

/// Reads `count` user events from `stream`, each with the USERS message
/// that carried it, failing past the deadline or on more than `count`.
pub(crate) async fn take(stream: &mut Subscription, count: usize) -> Vec<(Incoming, UserEvent)> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let incoming = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} user events arrived", out.len()))
            .expect("subscription open");
        let events = UserEvents::decode(incoming.payload.as_ref())
            .unwrap()
            .events;
        out.extend(events.into_iter().map(|event| (incoming.clone(), event)));
    }
    assert_eq!(out.len(), count, "more user events than expected");
    out
}

/// How many user events each user got.
pub(crate) fn per_user(events: &[(Incoming, UserEvent)]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (_, event) in events {
        *counts.entry(event.user_id.clone()).or_default() += 1;
    }
    counts
}

/// Whatever `stream` has ready right now, without waiting.
pub(crate) fn ready(stream: &mut Subscription) -> Vec<Incoming> {
    let mut out = Vec::new();
    while let Some(Some(incoming)) = futures::FutureExt::now_or_never(stream.next()) {
        out.push(incoming);
    }
    out
}
