//! A sync service on an in-process bus and a temporary embedded store, on
//! a loopback port, with the helpers the tests share.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use natter_auth::{Identity, Signer, Verifier};
use natter_bus::{Bus, Subscription};
use natter_bus_local::LocalBus;
use natter_contract::{Holders, Topology, request, subjects};
use natter_core::{
    ClientMessageId, Content, ConversationId, Cursor, Device, DeviceId, Event, Message, MessageId,
    ReadMarker, Role, Seq, TenantId, Timestamp, Update, UserId,
};
use natter_proto::bus::v1::{
    AppendOutcome, Attach, Attached, LiveFrames, LiveUser, UpdatesPage, UpdatesQuery, UserEvent,
    UserEvents,
};
use natter_proto::v1;
use natter_proto::v1::sync_service_client::SyncServiceClient;
use natter_server::{Settings, StartError};
use natter_store::{
    Lease, LeaseStore, Page, PageRequest, Result as StoreResult, StoreError, SyncStore, UpdateBatch,
};
use natter_store_embedded::EmbeddedStore;
use prost::Message as _;
use prost::bytes::Bytes;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub(crate) const SECRET: &str = "a test secret that is long enough for hs256";
pub(crate) const WAIT: Duration = Duration::from_secs(10);
/// User partitions in the tests: few, so users share them.
pub(crate) const PARTITIONS: u32 = 4;

pub(crate) struct Harness {
    pub(crate) bus: Arc<dyn Bus>,
    /// Asks partition holders, as fanout does.
    holders: Holders,
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
            landing: AtomicUsize::new(0),
            failed: AtomicU32::new(0),
            held: tokio::sync::watch::channel(false).0,
            holding: AtomicU32::new(0),
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
            holders: Holders::new(bus.clone(), settings.topology()),
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

    /// The user partition `user` belongs to: its holder appends to its log.
    pub(crate) fn partition(&self, user: &UserId) -> u32 {
        self.holders.user_partition(&self.tenant, user)
    }

    /// Waits until a sync process holds `partition`, so that a request
    /// there reaches it rather than finding no responders. The holder takes
    /// appends before catch-up reads, so a read answered there is proof.
    pub(crate) async fn held(&self, partition: u32) {
        eventually("the partition to be held", || async {
            let subject = subjects::updates(partition);
            let query = UpdatesQuery::default();
            request::<_, UpdatesPage>(self.bus.as_ref(), &subject, &query, WAIT)
                .await
                .ok()
        })
        .await;
    }

    /// Appends `event` to the log of `user` as fanout does, and checks the
    /// holder reports it written or already there.
    pub(crate) async fn append(&self, user: &UserId, event: &Event) -> AppendOutcome {
        self.append_batch(&[(user.clone(), event.clone())]).await
    }

    /// [`ask_append`](Self::ask_append), checking the holder reports the
    /// events written or already there.
    pub(crate) async fn append_batch(&self, events: &[(UserId, Event)]) -> AppendOutcome {
        let outcome = self.ask_append(events).await;
        assert_eq!(outcome.failure, None, "the append is refused");
        outcome
    }

    /// Asks the holder to append the user events of one EVENTS message as
    /// fanout does: in one request, so the users must share a partition.
    pub(crate) async fn ask_append(&self, events: &[(UserId, Event)]) -> AppendOutcome {
        let partition = self.partition(&events[0].0);
        assert!(
            events.iter().all(|(u, _)| self.partition(u) == partition),
            "users of one partition"
        );
        self.ask_append_encoded(partition, self.user_events(events), WAIT)
            .await
            .unwrap()
    }

    /// `events` as the encoded `UserEvents` of an append request.
    pub(crate) fn user_events(&self, events: &[(UserId, Event)]) -> Vec<u8> {
        UserEvents {
            events: events
                .iter()
                .map(|(user, event)| UserEvent {
                    tenant_id: self.tenant.to_string(),
                    user_id: user.to_string(),
                    event: Some(event.clone().into()),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    /// Sends `request` as it is to the holder of `partition`, as fanout's
    /// `Holders::append` does.
    pub(crate) async fn ask_append_encoded(
        &self,
        partition: u32,
        request: Vec<u8>,
        timeout: Duration,
    ) -> natter_contract::Result<AppendOutcome> {
        self.holders.append(partition, request, timeout).await
    }

    /// Makes the next `n` log writes fail as an unreachable store would.
    pub(crate) fn fail_writes(&self, n: u32) {
        self.flaky().to_fail.store(n, Ordering::SeqCst);
    }

    /// Lets the first `n` updates of each write that fails land before it
    /// fails, as a write that times out half done.
    pub(crate) fn land_before_failing(&self, n: usize) {
        self.flaky().landing.store(n, Ordering::SeqCst);
    }

    /// While `held`, log writes wait.
    pub(crate) fn hold_writes(&self, held: bool) {
        self.flaky().held.send_replace(held);
    }

    /// Waits until a log write is waiting on [`hold_writes`](Self::hold_writes).
    pub(crate) async fn write_held(&self) {
        eventually("a held log write", || async {
            (self.flaky().holding.load(Ordering::SeqCst) > 0).then_some(())
        })
        .await;
    }

    /// How many log writes failed on purpose.
    pub(crate) fn failed_writes(&self) -> u32 {
        self.flaky().failed.load(Ordering::SeqCst)
    }

    fn flaky(&self) -> &FlakyStore {
        self.flaky.as_ref().expect("started with_failing_writes")
    }

    /// Attaches `user` as a gateway of its own would, once the user's
    /// partition is held, and hands back what that gateway gets.
    pub(crate) async fn live(&self, user: &UserId) -> Live {
        static GATEWAYS: AtomicUsize = AtomicUsize::new(0);
        let gateway = format!("gw{}", GATEWAYS.fetch_add(1, Ordering::Relaxed));
        let subscription = self
            .bus
            .subscribe(&subjects::gateway(&gateway), None)
            .await
            .unwrap();
        let live = Live {
            subscription,
            frames: VecDeque::new(),
            gateway,
            user: user.clone(),
        };
        self.attach(&live, true).await;
        live
    }

    /// Attaches (or detaches) the user of `live` at the holder of its
    /// partition, as its gateway does, once the partition is held.
    /// Returns the holder's lease epoch.
    pub(crate) async fn attach(&self, live: &Live, attach: bool) -> u64 {
        let partition = self.partition(&live.user);
        self.held(partition).await;
        let user = vec![LiveUser {
            tenant_id: self.tenant.to_string(),
            user_id: live.user.to_string(),
        }];
        let (users, detached) = if attach {
            (user, Vec::new())
        } else {
            (Vec::new(), user)
        };
        let attach = Attach {
            gateway: live.gateway.clone(),
            users,
            detached,
        };
        request::<_, Attached>(
            self.bus.as_ref(),
            &subjects::attach(partition),
            &attach,
            WAIT,
        )
        .await
        .unwrap()
        .holder_epoch
    }

    /// A user named `<prefix><n>` whose partition is `other`'s.
    pub(crate) fn user_beside(&self, other: &UserId, prefix: &str) -> UserId {
        (0..)
            .map(|n| self.user(&format!("{prefix}{n}")))
            .find(|u| self.partition(u) == self.partition(other))
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

/// What one gateway gets from the holders: `LiveFrames`, each with one
/// or more frames.
pub(crate) struct Live {
    subscription: Subscription,
    frames: VecDeque<Bytes>,
    gateway: String,
    user: UserId,
}

impl Live {
    /// True if no frame has arrived.
    pub(crate) fn is_quiet(&mut self) -> bool {
        self.frames.is_empty() && self.subscription.next().now_or_never().is_none()
    }

    async fn next_frame(&mut self) -> Bytes {
        loop {
            if let Some(frame) = self.frames.pop_front() {
                return frame;
            }
            let incoming = tokio::time::timeout(WAIT, self.subscription.next())
                .await
                .expect("a live frame in time")
                .expect("the live subscription is open");
            let frames: LiveFrames = natter_contract::decode(&incoming.payload).unwrap();
            self.frames
                .extend(frames.frames.into_iter().map(|f| f.frame));
        }
    }
}

/// The next live update on `live`, within [`WAIT`].
pub(crate) async fn next_update(live: &mut Live) -> Update {
    let frame: v1::ServerFrame = natter_contract::decode(&live.next_frame().await).unwrap();
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

/// The embedded store, with log writes that fail (after landing part of
/// what they carry) or wait on demand: what a sync process meets when the
/// store is slow or unreachable.
pub(crate) struct FlakyStore {
    inner: Arc<EmbeddedStore>,
    to_fail: AtomicU32,
    /// Updates of a failing write that land before it fails.
    landing: AtomicUsize,
    failed: AtomicU32,
    held: tokio::sync::watch::Sender<bool>,
    /// Writes waiting while held.
    holding: AtomicU32,
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
            let landing = self.landing.load(Ordering::SeqCst).min(updates.len());
            if landing > 0 {
                self.inner
                    .write_updates(&updates[..landing], version)
                    .await?;
            }
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Unavailable("failed on purpose".into()));
        }
        let mut held = self.held.subscribe();
        if *held.borrow_and_update() {
            self.holding.fetch_add(1, Ordering::SeqCst);
            let _ = held.wait_for(|held| !*held).await;
            self.holding.fetch_sub(1, Ordering::SeqCst);
        }
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

    async fn reachable(&self) -> StoreResult<()> {
        self.inner.reachable().await
    }
}
