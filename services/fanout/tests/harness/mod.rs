//! Runs the fan-out service over the in-process bus and hands back what a
//! test needs. Storage's members responder is either played by a bus
//! responder in the test that answers from an embedded store, or is the
//! real storage service on the same bus and store. Sync is played by a
//! holder of every user partition in the test ([`Append`]), which keeps
//! each user's log as sync does, once per event key, and can be told to
//! fail a request.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use natter_auth::{Identity, Signer, Verifier};
use natter_bus::{Bus, Incoming, Outgoing, Subscription};
use natter_bus_local::LocalBus;
use natter_contract::{EVENTS, Holders, encode, subjects};
use natter_core::{
    ConversationId, Event, Limits, NewConversation, Role, TenantId, Timestamp, UserId,
};
use natter_fanout::{Deps, run};
use natter_proto::bus::v1::{
    AppendOutcome, ConversationEvent, ConversationEvents, Failure, LiveFrames, MembersPage,
    MembersQuery, UserEvent, UserEvents,
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
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::TryRecvError;
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

/// What the holder in the test does with one append request instead of
/// answering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Answers UNAVAILABLE and appends nothing, as sync does when its
    /// store write fails.
    Refuse,
    /// Appends but never answers, as when the answer is lost or comes
    /// after the asker has stopped waiting.
    Silent,
}

/// One append request the holder in the test took, as it took it.
#[derive(Debug, Clone)]
pub(crate) struct Append {
    /// The user partition it was asked on.
    pub(crate) partition: u32,
    /// Every user event asked for, in order.
    pub(crate) asked: Vec<UserEvent>,
    /// Those it appended, in order: the ones not in their users' logs yet.
    pub(crate) written: Vec<UserEvent>,
    /// What it did instead of answering, if anything.
    pub(crate) fault: Option<Fault>,
}

/// The append requests the holder in the test takes from now on.
pub(crate) type Appends = broadcast::Receiver<Append>;

/// Append requests recorded and not yet read, at most: a delivery asks at
/// most one per partition, however many members it reaches.
const RECORDED: usize = 4096;

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
    /// Faults the holder in the test meets the next request of a
    /// partition with.
    faults: Arc<Mutex<HashMap<u32, Fault>>>,
    appends: broadcast::Sender<Append>,
    signer: Signer,
    shutdown: CancellationToken,
    server: Option<JoinHandle<Result<(), natter_server::StartError>>>,
}

impl Harness {
    pub(crate) async fn start() -> Self {
        Self::start_with(Peer::Double).await
    }

    pub(crate) async fn start_with(peer: Peer) -> Self {
        let bus = test_bus();
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
        let faults = Arc::new(Mutex::new(HashMap::new()));
        let (appends, _) = broadcast::channel(RECORDED);
        hold_user_partitions(&bus, &settings, faults.clone(), appends.clone()).await;

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let deps = Deps {
            bus: Arc::new(bus.clone()),
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
            faults,
            appends,
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
        self.publish_events(std::slice::from_ref(event), dedup_id)
            .await;
    }

    /// Publishes `events` of one conversation as one EVENTS message, as
    /// storage does for a write of many messages, under `dedup_id`.
    pub(crate) async fn publish_events(&self, events: &[Event], dedup_id: Option<&str>) {
        let subject = EVENTS.subject(
            &self.settings.topology(),
            &subjects::conversation_key(events[0].conversation_id()),
        );
        let message = ConversationEvents {
            events: events
                .iter()
                .map(|event| ConversationEvent {
                    tenant_id: TENANT.into(),
                    event: Some(v1::Event::from(event.clone())),
                })
                .collect(),
        };
        self.bus
            .publish_durable(&subject, Outgoing::new(message.encode_to_vec()), dedup_id)
            .await
            .unwrap();
    }

    /// Every append request the holder in the test takes from now on.
    pub(crate) fn appends(&self) -> Appends {
        self.appends.subscribe()
    }

    /// Has the holder in the test meet the next append request of
    /// `partition` with `fault`.
    pub(crate) fn fail_next_append(&self, partition: u32, fault: Fault) {
        self.faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(partition, fault);
    }

    /// The user partition of `user`, as the contract computes it for
    /// every service.
    pub(crate) fn partition(&self, user: &str) -> u32 {
        Holders::new(Arc::new(self.bus.clone()), self.settings.topology())
            .user_partition(&self.tenant(), &UserId::new(user).unwrap())
    }

    /// The signals fanout passes on for `user` from now on, as the sync
    /// holder of the user's partition gets them.
    pub(crate) async fn signals(&self, user: &str) -> Signals {
        let subject = subjects::signals(self.partition(user));
        Signals {
            subscription: self.bus.subscribe(&subject, None).await.unwrap(),
            user: user.to_owned(),
        }
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
                        failure: Some(unavailable()),
                        ..MembersPage::default()
                    };
                }
                members_page(&*store, query).await
            }
        },
    ));
}

/// The failure a backend answers with while its store is down.
fn unavailable() -> Failure {
    Failure {
        code: tonic::Code::Unavailable as i32,
        reason: reason::STORE_UNAVAILABLE.into(),
        message: "the store is unavailable, retry later".into(),
        field: String::new(),
    }
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

/// Plays sync: holds every user partition, answering each append request
/// with what it wrote, appending each event once per user and event key
/// as sync does, unless a fault is set for the partition. Every request
/// is recorded on `appends` before it is answered, so once fanout has an
/// answer, the request it answers is there to read.
async fn hold_user_partitions(
    bus: &LocalBus,
    settings: &Settings,
    faults: Arc<Mutex<HashMap<u32, Fault>>>,
    appends: broadcast::Sender<Append>,
) {
    let mut partitions = Vec::new();
    for partition in 0..settings.topology().partitions.get() {
        let requests = bus
            .subscribe(&subjects::append(partition), None)
            .await
            .unwrap();
        partitions.push(requests.map(move |incoming| (partition, incoming)));
    }
    let mut requests = futures::stream::select_all(partitions);
    let bus = bus.clone();
    tokio::spawn(async move {
        // Each user's log, as the keys of its events.
        let mut logs: HashMap<(String, String), HashSet<String>> = HashMap::new();
        while let Some((partition, incoming)) = requests.next().await {
            let asked = UserEvents::decode(incoming.payload.as_ref())
                .expect("fanout asks with a UserEvents")
                .events;
            let fault = faults
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&partition);
            let mut written = Vec::new();
            if fault != Some(Fault::Refuse) {
                for user_event in &asked {
                    let event = Event::try_from(user_event.event.clone().unwrap()).unwrap();
                    let log = (user_event.tenant_id.clone(), user_event.user_id.clone());
                    if logs.entry(log).or_default().insert(event.key()) {
                        written.push(user_event.clone());
                    }
                }
            }
            let outcome = match fault {
                Some(Fault::Refuse) => AppendOutcome {
                    failure: Some(unavailable()),
                    written: 0,
                },
                _ => AppendOutcome {
                    failure: None,
                    written: u32::try_from(written.len()).unwrap(),
                },
            };
            // Nobody reading is fine: the test did not ask.
            let _ = appends.send(Append {
                partition,
                asked,
                written,
                fault,
            });
            if fault == Some(Fault::Silent) {
                continue;
            }
            let reply = incoming.reply.expect("an append is a request");
            bus.publish(&reply, encode(&outcome))
                .await
                .expect("the in-process bus takes any reply");
        }
    });
}

/// Reads append requests from `appends` until they have written `count`
/// user events, failing past the deadline or on more than `count`.
pub(crate) async fn take(appends: &mut Appends, count: usize) -> Vec<Append> {
    let mut out = Vec::new();
    let mut written = 0;
    while written < count {
        let append = tokio::time::timeout(DEADLINE, appends.recv())
            .await
            .unwrap_or_else(|_| panic!("only {written} of {count} user events were written"))
            .expect("every append request recorded");
        written += append.written.len();
        out.push(append);
    }
    assert_eq!(written, count, "more user events written than expected");
    out
}

/// The user events `appends` wrote, in the order they were written.
pub(crate) fn written(appends: &[Append]) -> impl Iterator<Item = &UserEvent> {
    appends.iter().flat_map(|append| &append.written)
}

/// How many user events each user got.
pub(crate) fn per_user(appends: &[Append]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for event in written(appends) {
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

/// What fanout sends the holder of one user's partition, for that user.
pub(crate) struct Signals {
    subscription: Subscription,
    user: String,
}

/// The frames (encoded `ServerFrame`s) for the user of `signals` that
/// arrived and were not yet handed out, without waiting.
pub(crate) fn ready_signals(signals: &mut Signals) -> Vec<Vec<u8>> {
    ready(&mut signals.subscription)
        .iter()
        .flat_map(|incoming| {
            LiveFrames::decode(incoming.payload.as_ref())
                .unwrap()
                .frames
        })
        .filter(|frame| {
            frame
                .user
                .as_ref()
                .is_some_and(|u| u.user_id == signals.user)
        })
        .map(|frame| frame.frame.to_vec())
        .collect()
}

/// The append requests `appends` has recorded and not yet handed out,
/// without waiting.
pub(crate) fn ready_appends(appends: &mut Appends) -> Vec<Append> {
    let mut out = Vec::new();
    loop {
        match appends.try_recv() {
            Ok(append) => out.push(append),
            Err(TryRecvError::Empty) => return out,
            Err(e) => panic!("append requests went unrecorded: {e}"),
        }
    }
}
