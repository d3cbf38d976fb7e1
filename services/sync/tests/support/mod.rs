//! A sync service on an in-process bus and a temporary embedded store, on
//! a loopback port, with the helpers the tests share.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use natter_auth::{Identity, Signer, Verifier};
use natter_bus::{Bus, LocalBus, Subscription};
use natter_contract::{Topology, USERS, encode, subjects};
use natter_core::{
    ClientMessageId, Content, ConversationId, Cursor, Device, DeviceId, Event, Message, MessageId,
    ReadMarker, Role, Seq, TenantId, Timestamp, Update, UserId,
};
use natter_proto::bus::v1::{UserEvent, UserEvents};
use natter_proto::v1;
use natter_proto::v1::sync_service_client::SyncServiceClient;
use natter_server::{Settings, StartError};
use natter_store::{
    Lease, LeaseStore, Page, PageRequest, Result as StoreResult, StoreError, SyncStore, UpdateBatch,
};
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
    /// The store sync writes through, when a test makes its writes fail.
    flaky: Option<Arc<FlakyStore>>,
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

    /// Starts sync on a store whose log writes fail or wait on demand
    /// ([`fail_writes`](Self::fail_writes), [`hold_writes`](Self::hold_writes)).
    pub(crate) async fn with_failing_writes() -> Self {
        let bus: Arc<dyn Bus> = Arc::new(LocalBus::new("test").unwrap());
        let store = Arc::new(EmbeddedStore::temporary(Default::default()).unwrap());
        let flaky = Arc::new(FlakyStore {
            inner: store.clone(),
            to_fail: AtomicU32::new(0),
            failed: AtomicU32::new(0),
            held: tokio::sync::watch::channel(false).0,
        });
        Self::start_on(bus, store, Some(flaky), |_| {}).await
    }

    /// Starts sync on an existing bus and store, as a restarted process.
    pub(crate) async fn on(
        bus: Arc<dyn Bus>,
        store: Arc<EmbeddedStore>,
        configure: impl FnOnce(&mut Settings),
    ) -> Self {
        Self::start_on(bus, store, None, configure).await
    }

    async fn start_on(
        bus: Arc<dyn Bus>,
        store: Arc<EmbeddedStore>,
        flaky: Option<Arc<FlakyStore>>,
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
            store: match &flaky {
                Some(flaky) => flaky.clone(),
                None => store.clone(),
            },
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
            flaky,
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
        self.publish_batch(&[(user.clone(), event.clone())], dedup_id)
            .await;
    }

    /// Publishes the user events of one EVENTS message as fanout does: in
    /// one USERS message, so the users must share a partition.
    pub(crate) async fn publish_batch(&self, events: &[(UserId, Event)], dedup_id: &str) {
        let subject = self.users_subject(&events[0].0);
        assert!(
            events.iter().all(|(u, _)| self.users_subject(u) == subject),
            "users of one partition"
        );
        let message = UserEvents {
            events: events
                .iter()
                .map(|(user, event)| UserEvent {
                    tenant_id: self.tenant.to_string(),
                    user_id: user.to_string(),
                    event: Some(event.clone().into()),
                })
                .collect(),
        };
        self.bus
            .publish_durable(&subject, encode(&message), Some(dedup_id))
            .await
            .unwrap();
    }

    /// Makes the next `n` log writes fail as an unreachable store would.
    pub(crate) fn fail_writes(&self, n: u32) {
        let flaky = self.flaky.as_ref().expect("started with_failing_writes");
        flaky.to_fail.store(n, Ordering::SeqCst);
    }

    /// While `held`, log writes wait.
    pub(crate) fn hold_writes(&self, held: bool) {
        let flaky = self.flaky.as_ref().expect("started with_failing_writes");
        flaky.held.send_replace(held);
    }

    /// How many log writes failed on purpose.
    pub(crate) fn failed_writes(&self) -> u32 {
        let flaky = self.flaky.as_ref().expect("started with_failing_writes");
        flaky.failed.load(Ordering::SeqCst)
    }

    pub(crate) async fn live(&self, user: &UserId) -> Subscription {
        self.bus
            .subscribe(&subjects::live(&self.tenant, user), None)
            .await
            .unwrap()
    }

    /// Waits until the log of `user` reaches `cursor`: sync publishes live
    /// before it writes.
    pub(crate) async fn written(&self, user: &UserId, cursor: u64) {
        eventually("the log write", || async {
            let head = self.store.log_head(&self.tenant, user).await.ok()?;
            (head.get() >= cursor).then_some(())
        })
        .await;
    }

    /// A user named `<prefix><n>` whose USERS partition is `other`'s.
    pub(crate) fn user_beside(&self, other: &UserId, prefix: &str) -> UserId {
        (0..)
            .map(|n| self.user(&format!("{prefix}{n}")))
            .find(|u| self.users_subject(u) == self.users_subject(other))
            .expect("some name shares the partition")
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

/// Writes `event` at `at` in the log of `user`, as another holder of the
/// partition would have.
pub(crate) async fn seed(
    store: &EmbeddedStore,
    tenant: &TenantId,
    user: &UserId,
    at: u64,
    event: &Event,
) {
    let update = Update {
        cursor: Cursor::new(at),
        event: event.clone(),
    };
    store
        .write_updates(&[(tenant.clone(), user.clone(), update)], at)
        .await
        .unwrap();
}

/// The embedded store, with log writes that fail or wait on demand: what
/// a sync process meets between publishing live and writing.
pub(crate) struct FlakyStore {
    inner: Arc<EmbeddedStore>,
    to_fail: AtomicU32,
    failed: AtomicU32,
    held: tokio::sync::watch::Sender<bool>,
}

#[async_trait]
impl SyncStore for FlakyStore {
    async fn log_head(&self, tenant: &TenantId, user: &UserId) -> StoreResult<Cursor> {
        self.inner.log_head(tenant, user).await
    }

    async fn write_updates(
        &self,
        updates: &[(TenantId, UserId, Update)],
        version: u64,
    ) -> StoreResult<()> {
        let failing = self
            .to_fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Unavailable("failed on purpose".into()));
        }
        let _ = self.held.subscribe().wait_for(|held| !*held).await;
        self.inner.write_updates(updates, version).await
    }

    async fn read_updates(
        &self,
        tenant: &TenantId,
        user: &UserId,
        after: Cursor,
        limit: u32,
    ) -> StoreResult<UpdateBatch> {
        self.inner.read_updates(tenant, user, after, limit).await
    }

    async fn trim_updates(
        &self,
        tenant: &TenantId,
        user: &UserId,
        through: Cursor,
    ) -> StoreResult<()> {
        self.inner.trim_updates(tenant, user, through).await
    }

    async fn touch_device(&self, device: &Device) -> StoreResult<Device> {
        self.inner.touch_device(device).await
    }

    async fn device(
        &self,
        tenant: &TenantId,
        user: &UserId,
        device: &DeviceId,
    ) -> StoreResult<Option<Device>> {
        self.inner.device(tenant, user, device).await
    }

    async fn list_devices(
        &self,
        tenant: &TenantId,
        user: &UserId,
        page: PageRequest<DeviceId>,
    ) -> StoreResult<Page<Device, DeviceId>> {
        self.inner.list_devices(tenant, user, page).await
    }

    async fn save_cursor(
        &self,
        tenant: &TenantId,
        user: &UserId,
        device: &DeviceId,
        cursor: Cursor,
    ) -> StoreResult<()> {
        self.inner.save_cursor(tenant, user, device, cursor).await
    }

    async fn revoke_device(
        &self,
        tenant: &TenantId,
        user: &UserId,
        device: &DeviceId,
    ) -> StoreResult<()> {
        self.inner.revoke_device(tenant, user, device).await
    }
}

#[async_trait]
impl LeaseStore for FlakyStore {
    async fn acquire_lease(
        &self,
        scope: &str,
        partition: u32,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> StoreResult<Option<Lease>> {
        self.inner
            .acquire_lease(scope, partition, owner, now, ttl)
            .await
    }

    async fn renew_lease(
        &self,
        lease: &Lease,
        now: Timestamp,
        ttl: Duration,
    ) -> StoreResult<Option<Lease>> {
        self.inner.renew_lease(lease, now, ttl).await
    }

    async fn release_lease(&self, lease: &Lease) -> StoreResult<()> {
        self.inner.release_lease(lease).await
    }
}
