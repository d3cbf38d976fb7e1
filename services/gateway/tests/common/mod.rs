//! What every gateway test needs: the gateway on 127.0.0.1:0 over an
//! in-process bus, stand-ins for its peers at the real bus boundary, and
//! device clients for each transport.
//!
//! The peers are test doubles that answer on the same subjects and streams
//! as the real services: sync (sync.hello.<n>, sync.attach.<n>,
//! sync.updates.<n>, CURSOR_ACK, and live frames on `gateway.<id>`, as the
//! holder of every partition), storage (the sequencers
//! and MARK_READ) and fanout (EPHEMERAL). They serve fixed rules from
//! memory, so each test can steer them.

// Each test binary uses part of this; helpers panic on the unexpected.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use natter_auth::{Identity, Signer, Verifier};
use natter_bus::{Bus, Outgoing};
use natter_bus_local::LocalBus;
use natter_contract::{Holders, subjects};
use natter_core::{ConversationId, Role, TenantId, UserId};
use natter_gateway::Deps;
use natter_proto::bus::v1::{
    Attach, Attached, CursorAck, DeviceHello, DeviceRevoked, DeviceWelcome, EphemeralSignal,
    Failure, LiveFrame, LiveFrames, LiveUser, MarkReadCommand, MarkReadOutcome, MessagesPage,
    MessagesQuery, PartitionHeld, SendCommand, SendOutcome, Stored, UpdatesPage, UpdatesQuery,
    send_outcome,
};
use natter_proto::status::reason;
use natter_proto::v1::gateway_service_client::GatewayServiceClient;
use natter_proto::v1::{self, ClientFrame, Hello, ServerFrame, client_frame, server_frame::Frame};
use natter_server::Settings;
use prost::Message as _;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tonic_types::StatusExt;

pub const SECRET: &[u8] = b"a test secret of at least thirty-two bytes";
pub const TENANT: &str = "acme";

/// How long a test waits for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn settings() -> Settings {
    let mut settings = Settings::default();
    settings.auth.hs256_secret = String::from_utf8_lossy(SECRET).into_owned().into();
    settings.grace_period_seconds = 5;
    settings.bus.partitions = 4;
    settings
}

pub fn identity(user: &str) -> Identity {
    Identity {
        tenant: TenantId::new(TENANT).unwrap(),
        user: UserId::new(user).unwrap(),
        role: Role::Customer,
    }
}

pub fn token(user: &str) -> String {
    token_of(&identity(user))
}

pub fn token_of(who: &Identity) -> String {
    Signer::hs256(SECRET).token(who, 600).unwrap()
}

pub fn hello(user: &str, device: &str, cursor: u64) -> ClientFrame {
    hello_as(&identity(user), device, cursor)
}

pub fn hello_as(who: &Identity, device: &str, cursor: u64) -> ClientFrame {
    ClientFrame {
        frame: Some(client_frame::Frame::Hello(Hello {
            token: token_of(who),
            device_id: device.into(),
            cursor,
            device_label: "test".into(),
        })),
    }
}

pub fn frame(frame: client_frame::Frame) -> ClientFrame {
    ClientFrame { frame: Some(frame) }
}

pub fn text_send(conversation: ConversationId, client_message_id: &str, text: &str) -> ClientFrame {
    frame(client_frame::Frame::Send(v1::Send {
        conversation_id: conversation.to_string(),
        client_message_id: client_message_id.into(),
        content: Some(v1::MessageContent {
            kind: Some(v1::message_content::Kind::Text(text.into())),
        }),
    }))
}

pub fn ping(nonce: u64) -> ClientFrame {
    frame(client_frame::Frame::Ping(v1::Ping { nonce }))
}

/// A read marker event, the smallest update to put in a log.
pub fn read_event(conversation: ConversationId, user: &str, seq: u64) -> v1::Event {
    v1::Event {
        kind: Some(v1::event::Kind::ReadMarker(v1::ReadMarker {
            conversation_id: conversation.to_string(),
            user_id: user.into(),
            seq,
        })),
    }
}

/// A message event carrying `text`, for updates of a chosen size.
pub fn message_event(conversation: ConversationId, seq: u64, text: String) -> v1::Event {
    v1::Event {
        kind: Some(v1::event::Kind::Message(v1::Message {
            message_id: uuid::Uuid::now_v7().to_string(),
            conversation_id: conversation.to_string(),
            seq,
            sender_id: "agent".into(),
            client_message_id: format!("m{seq}"),
            sent_at: Some(natter_proto::convert::timestamp_to_wire(
                natter_core::Timestamp::from_millis(1_700_000_000_000),
            )),
            content: Some(v1::MessageContent {
                kind: Some(v1::message_content::Kind::Text(text)),
            }),
        })),
    }
}

/// Polls `check` until it holds, failing the test after [`PATIENCE`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------
// The gateway and its peers.

pub struct Harness {
    pub bus: Arc<dyn Bus>,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub sync: Arc<FakeSync>,
    pub storage: Arc<FakeStorage>,
    pub fanout: Arc<FakeFanout>,
    pub server: JoinHandle<Result<(), natter_server::StartError>>,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = settings();
        configure(&mut settings);
        let bus: Arc<dyn Bus> = Arc::new(LocalBus::new("test").unwrap());
        natter_contract::ensure_streams(bus.as_ref(), &settings.topology())
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let sync = FakeSync::start(bus.clone(), settings.topology().partitions.get()).await;
        let storage = FakeStorage::start(bus.clone(), &settings, shutdown.clone()).await;
        let fanout = FakeFanout::start(bus.clone()).await;

        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
        let deps = Deps {
            bus: bus.clone(),
            verifier: Arc::new(Verifier::hs256(SECRET).unwrap()),
            instance: "gateway-test".into(),
        };
        let token = shutdown.clone();
        let server =
            tokio::spawn(
                async move { natter_gateway::run(&settings, deps, grpc, http, token).await },
            );
        Self {
            bus,
            grpc_addr,
            http_addr,
            shutdown,
            sync,
            storage,
            fanout,
            server,
        }
    }

    pub async fn device(&self, transport: Transport) -> Device {
        Device::connect(self, transport, None).await
    }

    /// Opens a session and reads its welcome.
    pub async fn open(
        &self,
        transport: Transport,
        user: &str,
        device: &str,
        cursor: u64,
    ) -> Device {
        self.open_as(transport, &identity(user), device, cursor)
            .await
    }

    /// Opens a session of `who` and reads its welcome.
    pub async fn open_as(
        &self,
        transport: Transport,
        who: &Identity,
        device: &str,
        cursor: u64,
    ) -> Device {
        let mut client = self.device(transport).await;
        client.send(hello_as(who, device, cursor)).await;
        match client.frame().await {
            Frame::Welcome(welcome) => {
                assert_eq!(welcome.user_id, who.user.as_str());
                assert_eq!(welcome.device_id, device);
                assert_eq!(welcome.cursor, cursor);
            }
            other => panic!("{transport:?}: expected welcome, got {other:?}"),
        }
        client
    }

    /// Whether the gateway wants live frames for `user`: it has a session
    /// of the user. Pauses first, so that the gateway has run.
    pub async fn has_live_session(&self, user: &str) -> bool {
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.sync.is_attached(user)
    }

    /// Waits until the gateway has detached `user`: its last session ended.
    pub async fn wait_until_gone(&self, user: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.has_live_session(user).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the session of {user} did not end"
            );
        }
    }

    pub async fn revoke(&self, user: &str, device: &str) {
        let tenant = TenantId::new(TENANT).unwrap();
        let revoked = DeviceRevoked {
            tenant_id: TENANT.into(),
            user_id: user.into(),
            device_id: device.into(),
        };
        self.sync
            .revoked
            .lock()
            .unwrap()
            .insert((user.to_owned(), device.to_owned()));
        self.bus
            .publish(
                &subjects::revoked(&tenant, &UserId::new(user).unwrap()),
                natter_contract::encode(&revoked),
            )
            .await
            .unwrap();
    }

    /// Stops the gateway and waits for `run` to return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.server)
            .await
            .expect("run returns within its grace period")
            .unwrap()
            .unwrap();
    }
}

/// Sync, as the gateway sees it: device hellos, update logs, cursor acks.
#[derive(Default)]
pub struct FakeSync {
    bus: Option<Arc<dyn Bus>>,
    /// Each user's log, the update at cursor `n` at index `n - 1`.
    pub logs: Mutex<HashMap<String, Vec<v1::Update>>>,
    /// Cursors below this are no longer kept, per user.
    pub floors: Mutex<HashMap<String, u64>>,
    /// Revoked devices, as (user, device).
    pub revoked: Mutex<HashSet<(String, String)>>,
    pub hellos: Mutex<Vec<DeviceHello>>,
    /// Per user, the gateways that want its live frames.
    pub attached: Mutex<HashMap<String, HashSet<String>>>,
    /// The lease epoch this holder answers with.
    pub epoch: AtomicU64,
    pub queries: Mutex<Vec<UpdatesQuery>>,
    pub acks: Mutex<Vec<CursorAck>>,
    /// While true, catch-up queries wait.
    pub hold_pages: watch::Sender<bool>,
}

impl FakeSync {
    async fn start(bus: Arc<dyn Bus>, partitions: u32) -> Arc<Self> {
        let sync = Arc::new(Self {
            bus: Some(bus.clone()),
            hold_pages: watch::channel(false).0,
            epoch: AtomicU64::new(1),
            ..Self::default()
        });
        // One process holding every partition of users.
        for partition in 0..partitions {
            let hellos = bus
                .subscribe(&subjects::hello(partition), None)
                .await
                .unwrap();
            let me = sync.clone();
            tokio::spawn(natter_contract::serve(
                bus.clone(),
                hellos,
                16,
                move |hello: DeviceHello| {
                    let me = me.clone();
                    async move { me.hello(hello) }
                },
            ));
            let mut attaches = bus
                .subscribe(&subjects::attach(partition), None)
                .await
                .unwrap();
            let me = sync.clone();
            tokio::spawn(async move {
                while let Some(incoming) = attaches.next().await {
                    let attach: Attach = natter_contract::decode(&incoming.payload).unwrap();
                    {
                        let mut attached = me.attached.lock().unwrap();
                        for user in attach.users {
                            attached
                                .entry(user.user_id)
                                .or_default()
                                .insert(attach.gateway.clone());
                        }
                        for user in attach.detached {
                            if let Some(gateways) = attached.get_mut(&user.user_id) {
                                gateways.remove(&attach.gateway);
                            }
                        }
                    }
                    if let Some(reply) = incoming.reply {
                        let answer = Attached {
                            holder_epoch: me.epoch.load(Ordering::SeqCst),
                        };
                        let bus = me.bus.as_ref().unwrap();
                        bus.publish(&reply, natter_contract::encode(&answer))
                            .await
                            .unwrap();
                    }
                }
            });
            let updates = bus
                .subscribe(&subjects::updates(partition), None)
                .await
                .unwrap();
            let me = sync.clone();
            tokio::spawn(natter_contract::serve(
                bus.clone(),
                updates,
                16,
                move |query: UpdatesQuery| {
                    let me = me.clone();
                    async move {
                        let mut held = me.hold_pages.subscribe();
                        let _ = held.wait_for(|held| !*held).await;
                        me.queries.lock().unwrap().push(query.clone());
                        me.page(&query)
                    }
                },
            ));
        }
        let mut acks = bus
            .subscribe(subjects::CURSOR_ACK, Some("sync"))
            .await
            .unwrap();
        let me = sync.clone();
        tokio::spawn(async move {
            while let Some(incoming) = acks.next().await {
                let ack: CursorAck = natter_contract::decode(&incoming.payload).unwrap();
                me.acks.lock().unwrap().push(ack);
            }
        });
        sync
    }

    /// Registers the device, and sends its user's live frames to its
    /// gateway from now on, as the holder of the user's partition does.
    fn hello(&self, hello: DeviceHello) -> DeviceWelcome {
        let user = hello.actor.clone().unwrap_or_default().user_id;
        let revoked = self
            .revoked
            .lock()
            .unwrap()
            .contains(&(user.clone(), hello.device_id.clone()));
        if !revoked {
            self.attached
                .lock()
                .unwrap()
                .entry(user)
                .or_default()
                .insert(hello.gateway.clone());
        }
        self.hellos.lock().unwrap().push(hello);
        DeviceWelcome {
            failure: revoked.then(|| Failure {
                code: Code::FailedPrecondition.into(),
                reason: reason::FAILED_PRECONDITION.into(),
                message: "device revoked".into(),
                field: String::new(),
            }),
            cursor: 0,
            holder_epoch: self.epoch.load(Ordering::SeqCst),
        }
    }

    /// Takes the partition of `user` over as a new holder would: knowing
    /// no gateway, with a higher epoch, announced.
    pub async fn take_over(&self, user: &str) {
        let bus = self.bus.as_ref().unwrap();
        let partition = Holders::new(bus.clone(), settings().topology())
            .user_partition(&TenantId::new(TENANT).unwrap(), &UserId::new(user).unwrap());
        self.attached.lock().unwrap().clear();
        let held = PartitionHeld {
            partition,
            holder_epoch: self.epoch.fetch_add(1, Ordering::SeqCst) + 1,
        };
        bus.publish(&subjects::held(partition), natter_contract::encode(&held))
            .await
            .unwrap();
    }

    /// Whether a gateway wants `user`'s live frames.
    pub fn is_attached(&self, user: &str) -> bool {
        self.attached
            .lock()
            .unwrap()
            .get(user)
            .is_some_and(|gateways| !gateways.is_empty())
    }

    fn page(&self, query: &UpdatesQuery) -> UpdatesPage {
        let logs = self.logs.lock().unwrap();
        let log = logs
            .get(&query.user_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let head = log.len() as u64;
        let floor = self
            .floors
            .lock()
            .unwrap()
            .get(&query.user_id)
            .copied()
            .unwrap_or(0);
        if query.after < floor {
            return UpdatesPage {
                resync_required: true,
                head,
                ..UpdatesPage::default()
            };
        }
        let updates: Vec<v1::Update> = log
            .iter()
            .skip(query.after as usize)
            .take(query.limit as usize)
            .cloned()
            .collect();
        let last = query.after + updates.len() as u64;
        UpdatesPage {
            failure: None,
            updates,
            complete: last >= head,
            resync_required: false,
            head,
        }
    }

    /// Appends to `user`'s log without telling anyone, as if the live
    /// publication was lost.
    pub fn append_quietly(&self, user: &str, event: v1::Event) -> v1::Update {
        let mut logs = self.logs.lock().unwrap();
        let log = logs.entry(user.to_owned()).or_default();
        let update = v1::Update {
            cursor: log.len() as u64 + 1,
            event: Some(event),
        };
        log.push(update.clone());
        update
    }

    /// Appends to `user`'s log and publishes the update live, as sync does.
    pub async fn append(&self, user: &str, event: v1::Event) -> v1::Update {
        let update = self.append_quietly(user, event);
        self.publish_live(user, Frame::Update(update.clone())).await;
        update
    }

    /// Sends `frame` to the gateways that want `user`'s live frames.
    pub async fn publish_live(&self, user: &str, frame: Frame) {
        let frames = LiveFrames {
            frames: vec![LiveFrame {
                user: Some(LiveUser {
                    tenant_id: TENANT.into(),
                    user_id: user.into(),
                }),
                frame: ServerFrame { frame: Some(frame) }.encode_to_vec().into(),
            }],
        };
        let gateways: Vec<String> = self
            .attached
            .lock()
            .unwrap()
            .get(user)
            .map(|gateways| gateways.iter().cloned().collect())
            .unwrap_or_default();
        for gateway in gateways {
            self.bus
                .as_ref()
                .unwrap()
                .publish(
                    &subjects::gateway(&gateway),
                    natter_contract::encode(&frames),
                )
                .await
                .unwrap();
        }
    }
}

/// Storage, as the gateway sees it: the sequencers, MARK_READ and
/// MESSAGES, and the room subjects fanout publishes to.
#[derive(Default)]
pub struct FakeStorage {
    /// Conversations whose members may send; others answer NOT_A_MEMBER.
    pub open: Mutex<HashSet<ConversationId>>,
    /// Stored messages by (conversation, sender, client message id).
    stored: Mutex<HashMap<(String, String, String), v1::Message>>,
    last_seq: Mutex<HashMap<String, u64>>,
    pub commands: Mutex<Vec<SendCommand>>,
    pub reads: Mutex<Vec<MarkReadCommand>>,
    pub message_queries: Mutex<Vec<MessagesQuery>>,
    bus: Mutex<Option<Arc<dyn Bus>>>,
    /// While true, sends are consumed but never answered.
    pub silent: std::sync::atomic::AtomicBool,
}

impl FakeStorage {
    async fn start(
        bus: Arc<dyn Bus>,
        settings: &Settings,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let storage = Arc::new(Self::default());
        *storage.bus.lock().unwrap() = Some(bus.clone());
        for partition in 0..settings.topology().partitions.get() {
            let mut sends = bus
                .subscribe(&subjects::sequencer(partition), None)
                .await
                .unwrap();
            let (me, bus, shutdown) = (storage.clone(), bus.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    let incoming = tokio::select! {
                        () = shutdown.cancelled() => return,
                        incoming = sends.next() => incoming,
                    };
                    let Some(incoming) = incoming else { return };
                    let command: SendCommand = natter_contract::decode(&incoming.payload).unwrap();
                    let outcome = me.store_command(command);
                    if !me.silent.load(std::sync::atomic::Ordering::SeqCst) {
                        let reply = incoming.reply.unwrap();
                        bus.publish(&reply, natter_contract::encode(&outcome))
                            .await
                            .unwrap();
                    }
                }
            });
        }
        let queries = bus
            .subscribe(subjects::MESSAGES, Some("storage"))
            .await
            .unwrap();
        let me = storage.clone();
        tokio::spawn(natter_contract::serve(
            bus.clone(),
            queries,
            16,
            move |query: MessagesQuery| {
                let me = me.clone();
                async move { me.page(query) }
            },
        ));
        let reads = bus
            .subscribe(subjects::MARK_READ, Some("storage"))
            .await
            .unwrap();
        let me = storage.clone();
        tokio::spawn(natter_contract::serve(
            bus,
            reads,
            16,
            move |read: MarkReadCommand| {
                let me = me.clone();
                async move {
                    let conversation: ConversationId = read.conversation_id.parse().unwrap();
                    let member = me.open.lock().unwrap().contains(&conversation);
                    let seq = read.seq;
                    me.reads.lock().unwrap().push(read);
                    MarkReadOutcome {
                        failure: (!member).then(not_a_member),
                        seq,
                        raised: member,
                    }
                }
            },
        ));
        storage
    }

    fn page(&self, query: MessagesQuery) -> MessagesPage {
        self.message_queries.lock().unwrap().push(query.clone());
        let conversation: ConversationId = query.conversation_id.parse().unwrap();
        if !self.open.lock().unwrap().contains(&conversation) {
            return MessagesPage {
                failure: Some(not_a_member()),
                ..MessagesPage::default()
            };
        }
        let mut messages: Vec<v1::Message> = self
            .stored
            .lock()
            .unwrap()
            .values()
            .filter(|m| m.conversation_id == query.conversation_id && m.seq > query.after_seq)
            .cloned()
            .collect();
        messages.sort_by_key(|m| m.seq);
        let complete = messages.len() <= query.limit as usize;
        messages.truncate(query.limit as usize);
        MessagesPage {
            failure: None,
            messages,
            complete,
        }
    }

    /// Stores a text message from `sender` without telling anyone, as if
    /// its publication to the room was lost.
    pub fn store_quietly(
        &self,
        conversation: ConversationId,
        sender: &str,
        text: &str,
    ) -> v1::Message {
        let command = SendCommand {
            actor: Some(natter_proto::bus::v1::Actor {
                tenant_id: TENANT.into(),
                user_id: sender.into(),
                role: v1::Role::Customer.into(),
            }),
            conversation_id: conversation.to_string(),
            client_message_id: uuid::Uuid::now_v7().to_string(),
            content: Some(v1::MessageContent {
                kind: Some(v1::message_content::Kind::Text(text.into())),
            }),
            sent_at: Some(natter_proto::convert::timestamp_to_wire(
                natter_core::Timestamp::from_millis(1_700_000_000_000),
            )),
            change: None,
        };
        match self.store_command(command).result {
            Some(send_outcome::Result::Stored(stored)) => stored.message.unwrap(),
            other => panic!("not stored: {other:?}"),
        }
    }

    /// Stores a message and publishes it to the room, as fanout does.
    pub async fn store(
        &self,
        conversation: ConversationId,
        sender: &str,
        text: &str,
    ) -> v1::Message {
        let message = self.store_quietly(conversation, sender, text);
        self.publish_room(conversation, message.clone()).await;
        message
    }

    pub async fn publish_room(&self, conversation: ConversationId, message: v1::Message) {
        let subject = subjects::room(&TenantId::new(TENANT).unwrap(), conversation);
        let payload = ServerFrame {
            frame: Some(Frame::Message(message)),
        }
        .encode_to_vec();
        let bus = self.bus.lock().unwrap().clone().unwrap();
        bus.publish(&subject, Outgoing::new(payload)).await.unwrap();
    }

    fn store_command(&self, command: SendCommand) -> SendOutcome {
        self.commands.lock().unwrap().push(command.clone());
        let conversation: ConversationId = command.conversation_id.parse().unwrap();
        let result = if !self.open.lock().unwrap().contains(&conversation) {
            send_outcome::Result::Failure(not_a_member())
        } else {
            let actor = command.actor.clone().unwrap_or_default();
            let key = (
                command.conversation_id.clone(),
                actor.user_id.clone(),
                command.client_message_id.clone(),
            );
            let mut stored = self.stored.lock().unwrap();
            match stored.get(&key) {
                Some(message) => send_outcome::Result::Stored(Stored {
                    message: Some(message.clone()),
                    duplicate: true,
                }),
                None => {
                    let mut seqs = self.last_seq.lock().unwrap();
                    let seq = seqs.entry(command.conversation_id.clone()).or_default();
                    *seq += 1;
                    let message = v1::Message {
                        message_id: uuid::Uuid::now_v7().to_string(),
                        conversation_id: command.conversation_id.clone(),
                        seq: *seq,
                        sender_id: actor.user_id,
                        client_message_id: command.client_message_id.clone(),
                        sent_at: command.sent_at,
                        content: command.content.clone(),
                    };
                    stored.insert(key, message.clone());
                    send_outcome::Result::Stored(Stored {
                        message: Some(message),
                        duplicate: false,
                    })
                }
            }
        };
        SendOutcome {
            result: Some(result),
        }
    }
}

fn not_a_member() -> Failure {
    Failure {
        code: Code::PermissionDenied.into(),
        reason: reason::NOT_A_MEMBER.into(),
        message: "not a member of the conversation".into(),
        field: String::new(),
    }
}

/// Fanout, as the gateway sees it: the typing signals it is handed.
#[derive(Default)]
pub struct FakeFanout {
    pub signals: Mutex<Vec<EphemeralSignal>>,
}

impl FakeFanout {
    async fn start(bus: Arc<dyn Bus>) -> Arc<Self> {
        let fanout = Arc::new(Self::default());
        let mut signals = bus
            .subscribe(subjects::EPHEMERAL, Some("fanout"))
            .await
            .unwrap();
        let me = fanout.clone();
        tokio::spawn(async move {
            while let Some(incoming) = signals.next().await {
                let signal: EphemeralSignal = natter_contract::decode(&incoming.payload).unwrap();
                me.signals.lock().unwrap().push(signal);
            }
        });
        fanout
    }
}

// ---------------------------------------------------------------------
// Devices.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    WsJson,
    WsProto,
}

pub const ALL: [Transport; 3] = [Transport::Grpc, Transport::WsJson, Transport::WsProto];

/// How the server ended a session, as each transport tells it.
#[derive(Debug)]
pub enum Ended {
    Status(Status),
    Close(Option<CloseFrame>),
    /// The connection dropped without a status or close frame.
    Dropped(String),
}

impl Ended {
    /// Checks the end against the gRPC code and reason, or the WebSocket
    /// close code with the reason at the front of its text.
    #[track_caller]
    pub fn assert(&self, code: Code, close_code: u16, reason: &str) {
        match self {
            Ended::Status(status) => {
                assert_eq!(status.code(), code, "{status:?}");
                let info = status.get_details_error_info().expect("an ErrorInfo");
                assert_eq!(info.reason, reason, "{status:?}");
            }
            Ended::Close(Some(close)) => {
                assert_eq!(u16::from(close.code), close_code, "{close:?}");
                assert!(close.reason.as_str().starts_with(reason), "{close:?}");
            }
            other => panic!("expected an end with {code:?}/{close_code}, got {other:?}"),
        }
    }

    pub fn message(&self) -> String {
        match self {
            Ended::Status(status) => status.message().to_owned(),
            Ended::Close(Some(close)) => close.reason.as_str().to_owned(),
            other => format!("{other:?}"),
        }
    }
}

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub enum Device {
    Grpc {
        frames: mpsc::Sender<ClientFrame>,
        responses: tonic::Streaming<ServerFrame>,
    },
    Ws {
        socket: Socket,
        proto: bool,
    },
}

impl Device {
    /// Connects without sending anything. `token` goes where the transport
    /// carries one outside `hello`: gRPC metadata or the WebSocket query.
    pub async fn connect(harness: &Harness, transport: Transport, token: Option<&str>) -> Device {
        match transport {
            Transport::Grpc => {
                let channel = tonic::transport::Endpoint::from_shared(format!(
                    "http://{}",
                    harness.grpc_addr
                ))
                .unwrap()
                .connect()
                .await
                .unwrap();
                let mut client = GatewayServiceClient::new(channel);
                let (frames, rx) = mpsc::channel(64);
                let mut request = tonic::Request::new(ReceiverStream::new(rx));
                if let Some(token) = token {
                    request
                        .metadata_mut()
                        .insert("authorization", format!("Bearer {token}").parse().unwrap());
                }
                let responses = client.connect(request).await.unwrap().into_inner();
                Device::Grpc { frames, responses }
            }
            Transport::WsJson | Transport::WsProto => {
                let proto = transport == Transport::WsProto;
                let query = token
                    .map(|t| format!("?access_token={t}"))
                    .unwrap_or_default();
                let url = format!("ws://{}/v1/connect{query}", harness.http_addr);
                let protocol = if proto {
                    "natter.v1.proto"
                } else {
                    "natter.v1.json"
                };
                let socket = ws_connect(&url, Some(protocol), None).await.unwrap();
                Device::Ws { socket, proto }
            }
        }
    }

    pub async fn send(&mut self, frame: ClientFrame) {
        match self {
            Device::Grpc { frames, .. } => frames.send(frame).await.unwrap(),
            Device::Ws { socket, proto } => {
                let message = if *proto {
                    Message::Binary(frame.encode_to_vec().into())
                } else {
                    Message::Text(serde_json::to_string(&frame).unwrap().into())
                };
                socket.send(message).await.unwrap();
            }
        }
    }

    /// Sends a raw WebSocket message.
    pub async fn send_raw(&mut self, message: Message) {
        match self {
            Device::Ws { socket, .. } => socket.send(message).await.unwrap(),
            Device::Grpc { .. } => panic!("raw messages are for WebSocket devices"),
        }
    }

    /// The next frame, or how the session ended.
    pub async fn next(&mut self) -> Result<Frame, Ended> {
        tokio::time::timeout(PATIENCE, self.next_unbounded())
            .await
            .expect("the server answers in time")
    }

    async fn next_unbounded(&mut self) -> Result<Frame, Ended> {
        match self {
            Device::Grpc { responses, .. } => match responses.message().await {
                Ok(Some(frame)) => Ok(frame.frame.expect("frames are always set")),
                Ok(None) => Err(Ended::Dropped("stream ended with OK".into())),
                Err(status) => Err(Ended::Status(status)),
            },
            Device::Ws { socket, proto } => loop {
                let message = match socket.next().await {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => return Err(Ended::Dropped(e.to_string())),
                    None => return Err(Ended::Dropped("connection closed".into())),
                };
                let frame = match message {
                    Message::Text(text) => {
                        assert!(!*proto, "text on natter.v1.proto");
                        serde_json::from_str::<ServerFrame>(text.as_str()).unwrap()
                    }
                    Message::Binary(bytes) => {
                        assert!(*proto, "binary on natter.v1.json");
                        ServerFrame::decode(bytes).unwrap()
                    }
                    Message::Close(close) => return Err(Ended::Close(close)),
                    _ => continue,
                };
                return Ok(frame.frame.expect("frames are always set"));
            },
        }
    }

    /// The next frame; fails the test if the session ended.
    pub async fn frame(&mut self) -> Frame {
        match self.next().await {
            Ok(frame) => frame,
            Err(ended) => panic!("session ended: {ended:?}"),
        }
    }

    /// How the session ends; fails the test on a frame.
    pub async fn ended(&mut self) -> Ended {
        match self.next().await {
            Ok(frame) => panic!("expected the session to end, got {frame:?}"),
            Err(ended) => ended,
        }
    }

    /// Reads frames until the session ends, returning them and the end.
    pub async fn drain(&mut self) -> (Vec<Frame>, Ended) {
        let mut frames = Vec::new();
        loop {
            match self.next().await {
                Ok(frame) => frames.push(frame),
                Err(ended) => return (frames, ended),
            }
        }
    }

    /// Pings and waits for the pong: the session is open and has handled
    /// every earlier frame.
    pub async fn round_trip(&mut self, nonce: u64) {
        self.send(ping(nonce)).await;
        match self.frame().await {
            Frame::Pong(pong) => assert_eq!(pong.nonce, nonce),
            other => panic!("expected pong {nonce}, got {other:?}"),
        }
    }

    /// The next frame, which must be an `error`.
    pub async fn error(&mut self) -> v1::ErrorFrame {
        match self.frame().await {
            Frame::Error(error) => error,
            other => panic!("expected an error frame, got {other:?}"),
        }
    }
}

/// Opens a WebSocket offering `protocol`, with an optional
/// `Authorization: Bearer` header.
pub async fn ws_connect(
    url: &str,
    protocol: Option<&str>,
    bearer: Option<&str>,
) -> Result<Socket, tungstenite::Error> {
    let mut request = url.into_client_request().unwrap();
    if let Some(protocol) = protocol {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocol.parse().unwrap());
    }
    if let Some(token) = bearer {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let (socket, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(socket)
}
