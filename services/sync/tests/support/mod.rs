//! A sync service on an in-process bus and a temporary embedded store, on
//! a loopback port, with the helpers the tests share.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use natter_auth::{Identity, Signer, Verifier};
use natter_bus::{Bus, LocalBus, Subscription};
use natter_contract::{Topology, USERS, encode, subjects};
use natter_core::{
    ClientMessageId, Content, ConversationId, Cursor, Event, Message, MessageId, ReadMarker, Role,
    Seq, TenantId, Timestamp, Update, UserId,
};
use natter_proto::bus::v1::UserEvent;
use natter_proto::v1;
use natter_proto::v1::sync_service_client::SyncServiceClient;
use natter_server::{Settings, StartError};
use natter_store::{SyncStore, UpdateBatch};
use natter_store_embedded::EmbeddedStore;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub(crate) const SECRET: &str = "a test secret that is long enough for hs256";
pub(crate) const WAIT: Duration = Duration::from_secs(10);
/// Partitions of each stream in the tests: few, so users share them.
pub(crate) const PARTITIONS: u32 = 4;

pub(crate) struct Harness {
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) store: Arc<EmbeddedStore>,
    pub(crate) settings: Settings,
    pub(crate) addr: SocketAddr,
    pub(crate) tenant: TenantId,
    signer: Signer,
    shutdown: CancellationToken,
    running: Option<JoinHandle<Result<(), StartError>>>,
}

impl Harness {
    pub(crate) async fn start() -> Self {
        Self::with(|_| {}).await
    }

    /// Starts sync with settings changed by `configure`.
    pub(crate) async fn with(configure: impl FnOnce(&mut Settings)) -> Self {
        let bus: Arc<dyn Bus> = Arc::new(LocalBus::new("test").unwrap());
        let store = Arc::new(EmbeddedStore::temporary(Default::default()).unwrap());
        Self::on(bus, store, configure).await
    }

    /// Starts sync on an existing bus and store, as a restarted process.
    pub(crate) async fn on(
        bus: Arc<dyn Bus>,
        store: Arc<EmbeddedStore>,
        configure: impl FnOnce(&mut Settings),
    ) -> Self {
        let mut settings = Settings::default();
        settings.auth.hs256_secret = SECRET.into();
        settings.bus.partitions = PARTITIONS;
        settings.grace_period_seconds = 2;
        configure(&mut settings);
        natter_contract::ensure_streams(bus.as_ref(), &settings.topology())
            .await
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let deps = natter_sync::Deps {
            bus: bus.clone(),
            verifier: Arc::new(Verifier::hs256(SECRET.as_bytes()).unwrap()),
            store: store.clone(),
            instance: "sync-test".into(),
        };
        let shutdown = CancellationToken::new();
        let running = {
            let (settings, shutdown) = (settings.clone(), shutdown.clone());
            tokio::spawn(async move { natter_sync::run(&settings, deps, listener, shutdown).await })
        };
        let harness = Self {
            bus,
            store,
            settings,
            addr,
            tenant: TenantId::new("acme").unwrap(),
            signer: Signer::hs256(SECRET.as_bytes()),
            shutdown,
            running: Some(running),
        };
        harness.ready().await;
        harness
    }

    /// Waits until the service reports serving, which it does once its bus
    /// side is in place.
    async fn ready(&self) {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::health_client::HealthClient;

        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr)).unwrap();
        eventually("sync to report serving", || {
            let endpoint = endpoint.clone();
            async move {
                let mut health = HealthClient::new(endpoint.connect().await.ok()?);
                let request = HealthCheckRequest {
                    service: "natter.v1.SyncService".into(),
                };
                let status = health.check(request).await.ok()?.into_inner().status();
                (status == ServingStatus::Serving).then_some(())
            }
        })
        .await;
    }

    pub(crate) fn topology(&self) -> Topology {
        self.settings.topology()
    }

    /// Shuts the service down and checks it stopped cleanly, in time.
    pub(crate) async fn stop(mut self) {
        self.shutdown.cancel();
        let running = self.running.take().expect("running");
        tokio::time::timeout(WAIT, running)
            .await
            .expect("sync stops within its grace period")
            .unwrap()
            .unwrap();
    }

    pub(crate) fn user(&self, name: &str) -> UserId {
        UserId::new(name).unwrap()
    }

    pub(crate) fn token(&self, user: &str, role: Role) -> String {
        let identity = Identity {
            tenant: self.tenant.clone(),
            user: self.user(user),
            role,
        };
        self.signer.token(&identity, 3600).unwrap()
    }

    pub(crate) async fn client(&self) -> SyncServiceClient<Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        SyncServiceClient::new(channel)
    }

    /// The subject of the USERS partition `user` belongs to.
    pub(crate) fn users_subject(&self, user: &UserId) -> String {
        USERS.subject(&self.topology(), &subjects::user_key(&self.tenant, user))
    }

    /// Publishes `event` for `user` on USERS, durably, as fanout does.
    pub(crate) async fn publish(&self, user: &UserId, event: &Event, dedup_id: &str) {
        let message = UserEvent {
            tenant_id: self.tenant.to_string(),
            user_id: user.to_string(),
            event: Some(event.clone().into()),
        };
        self.bus
            .publish_durable(&self.users_subject(user), encode(&message), Some(dedup_id))
            .await
            .unwrap();
    }

    pub(crate) async fn live(&self, user: &UserId) -> Subscription {
        self.bus
            .subscribe(&subjects::live(&self.tenant, user), None)
            .await
            .unwrap()
    }

    /// The whole retained log of `user`.
    pub(crate) async fn log(&self, user: &UserId) -> Vec<Update> {
        match self
            .store
            .read_updates(&self.tenant, user, Cursor::ZERO, 1000)
            .await
            .unwrap()
        {
            UpdateBatch::Updates(updates) => updates,
            UpdateBatch::ResyncRequired { head } => panic!("log trimmed, head {head}"),
        }
    }
}

/// The next live update on `live`, within [`WAIT`].
pub(crate) async fn next_update(live: &mut Subscription) -> Update {
    let incoming = tokio::time::timeout(WAIT, live.next())
        .await
        .expect("a live frame in time")
        .expect("the live subscription is open");
    let frame: v1::ServerFrame = natter_contract::decode(&incoming.payload).unwrap();
    match frame.frame {
        Some(v1::server_frame::Frame::Update(update)) => update.try_into().unwrap(),
        other => panic!("expected an update frame, got {other:?}"),
    }
}

/// Polls `check` until it yields a value or [`WAIT`] passes.
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) fn conversation() -> ConversationId {
    ConversationId::generate()
}

/// A text message at `seq` of `conversation`.
pub(crate) fn message(conversation: ConversationId, seq: u64) -> Event {
    Event::Message(Message {
        id: MessageId::generate(),
        conversation_id: conversation,
        seq: Seq::new(seq),
        sender_id: UserId::new("bob").unwrap(),
        client_message_id: ClientMessageId::new(format!("c-{seq}")).unwrap(),
        sent_at: Timestamp::from_millis(1_700_000_000_000 + seq as i64),
        content: Content::Text(format!("message {seq}")),
    })
}

pub(crate) fn read(conversation: ConversationId, user: &str, seq: u64) -> Event {
    Event::Read(ReadMarker {
        conversation_id: conversation,
        user_id: UserId::new(user).unwrap(),
        seq: Seq::new(seq),
    })
}

/// Adds `authorization: Bearer <token>` to a request.
pub(crate) fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// The ErrorInfo reason of a status.
pub(crate) fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}
