//! The gateway: holds device sessions and delivers to them live.
//!
//! A device connects over gRPC (`natter.v1.GatewayService/Connect`) or over
//! WebSocket (`GET /v1/connect` on the HTTP address, subprotocol
//! `natter.v1.json` or `natter.v1.proto`). Both transports only decode and
//! encode frames; one session core (`session.rs`) does the rest:
//!
//! ```text
//! hello ─▶ verify token ─▶ watch revocations ─▶ listen for the user's live frames
//!       ─▶ DeviceHello (the holder of the user's log) ─▶ welcome ─▶ catch-up ⇄ live
//! ```
//!
//! Catch-up and live delivery meet in `natter_core::handoff::Handoff`, so a
//! device sees every update after its cursor once, in order. A device may
//! also watch conversations (`watches.rs`): their messages after a seq,
//! then live from the conversation's room subject, joined the same way.
//! Sends go to the sequencers and catch-up reads to the holders of users'
//! logs through one `Holders` per process; read markers, acks, typing and
//! desk calls go to storage, sync, fanout and the desk over the bus. The
//! desk also learns from the gateway which agents have sessions on it
//! (`live.rs`).
//!
//! # Bounds
//!
//! Everything a session holds is bounded: the outbound queue
//! (`gateway.outbound_queue` frames; a device that falls behind it is
//! disconnected and catches up on reconnect), the live updates held during
//! catch-up (`gateway.max_held_updates`; later ones are fetched from the log
//! instead, where they are before they go live), requests in flight per session
//! (`session::MAX_IN_FLIGHT`), and frame sizes (`gateway.max_frame_bytes`).
//! Catch-up pages are only fetched when the outbound queue has room for a
//! whole page, so replaying a long backlog goes at the device's pace
//! instead of overflowing its queue.
//!
//! # Memory per connection
//!
//! An idle session is one task holding the socket, the session state and
//! an empty inbox in the process's live directory (`live.rs`): live frames
//! come on one bus subscription per process, not one per session (on NATS
//! a subscription's channel alone is about 6 KB). WebSocket buffers are
//! kept small (see `ws.rs`), the outbound queue, the request pipeline and
//! the watches hold nothing while unused, and the state needed only while
//! a session opens is dropped once it is open. The session's span carries
//! log fields only (`natter_telemetry::SCOPE_TARGET`), not OpenTelemetry
//! state. `natter-load idle` measures the whole server: about 5.0 KiB per
//! idle WebSocket session on a gateway of its own on NATS, and 6.5 KiB on
//! `natter dev`, whose sync keeps the user's entry in its directory (see
//! `loadtest/README.md`); of that the task is about 2.2 KB and the
//! socket's read buffer 0.5 KB.
//!
//! Revocations arrive on one subscription per process (`revoked.*.*`) and
//! are routed to sessions through `revoke.rs`, instead of one subscription
//! per session: revocations are rare, so every gateway hearing all of
//! them costs little, while a subscription per session would cost another
//! channel per connection.
//!
//! # Typing and presence
//!
//! Typing signals from a device go to fanout at most once per conversation
//! per second (a change between started and stopped always goes). Typing
//! and presence frames among the live frames are forwarded as they come:
//! fanout has dropped stale ones already, and the frames carry no time of
//! their own for the gateway to judge.

mod grpc;
mod live;
mod meters;
mod outbound;
mod peers;
mod revoke;
mod session;
mod stop;
mod typing;
mod watches;
mod web;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use natter_auth::Verifier;
use natter_bus::Bus;
use natter_contract::Holders;
use natter_core::Limits;
use natter_server::{GrpcServer, Settings, StartError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::grpc::{ConnectStream, GatewayGrpc};
use crate::live::Live;
use crate::revoke::Revocations;
pub use crate::ws::{JSON_PROTOCOL, PROTO_PROTOCOL};

/// What the gateway needs from its process.
#[derive(Debug)]
pub struct Deps {
    pub bus: Arc<dyn Bus>,
    pub verifier: Arc<Verifier>,
    /// Unique per process: names this gateway in the sync holders'
    /// directories (its live frames come on `gateway.<instance>`).
    pub instance: String,
}

/// The session settings, taken from `gateway.*` once at start.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) outbound_queue: usize,
    pub(crate) max_held_updates: usize,
    pub(crate) max_watches: usize,
    pub(crate) max_frame_bytes: usize,
    pub(crate) hello_timeout: Duration,
    /// How long a request to a peer service (a send, a read, a catch-up
    /// page, a device hello) may take.
    pub(crate) peer_timeout: Duration,
    pub(crate) limits: Limits,
}

impl Config {
    fn from_settings(settings: &Settings) -> Self {
        let gateway = &settings.gateway;
        Self {
            outbound_queue: gateway.outbound_queue.max(1),
            max_held_updates: gateway.max_held_updates,
            max_watches: gateway.max_watches,
            max_frame_bytes: gateway.max_frame_bytes,
            hello_timeout: Duration::from_secs(gateway.hello_timeout_seconds),
            peer_timeout: Duration::from_secs(gateway.send_timeout_seconds),
            limits: settings.limits(),
        }
    }

    /// Updates asked for per catch-up page: at most half the outbound
    /// queue, so a page fits in the room the fetch waits for.
    pub(crate) fn page_size(&self) -> usize {
        (self.outbound_queue / 2)
            .clamp(1, 256)
            .min(self.limits.max_page_size as usize)
    }

    /// Messages asked for per page of a watched conversation: half a
    /// catch-up page, so a watch page and a catch-up page fit together.
    pub(crate) fn watch_page_size(&self) -> usize {
        (self.page_size() / 2).max(1)
    }
}

/// One gateway process: what every session shares. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) verifier: Arc<Verifier>,
    pub(crate) holders: Holders,
    pub(crate) config: Config,
    pub(crate) revocations: Arc<Revocations>,
    pub(crate) live: Arc<Live>,
    /// Cancelled when the gateway shuts down; every session then ends.
    pub(crate) shutdown: CancellationToken,
    /// Every session task, so shutdown can wait for them.
    pub(crate) sessions: TaskTracker,
    pub(crate) meters: meters::Meters,
}

impl Gateway {
    /// Starts what sessions share: the revocation listener and the live
    /// frames' subscription. Both stop with `shutdown`.
    pub async fn new(
        settings: &Settings,
        deps: Deps,
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        let holders = Holders::new(deps.bus.clone(), settings.topology());
        let revocations = Arc::new(Revocations::default());
        revoke::listen(deps.bus.clone(), revocations.clone(), shutdown.clone()).await?;
        let config = Config::from_settings(settings);
        let live = Live::start(
            deps.instance,
            deps.bus.clone(),
            holders.clone(),
            config.peer_timeout,
            shutdown.clone(),
        )
        .await?;
        Ok(Self {
            shared: Arc::new(Shared {
                bus: deps.bus,
                verifier: deps.verifier,
                holders,
                config,
                revocations,
                live,
                shutdown,
                sessions: TaskTracker::new(),
                meters: meters::Meters::new(),
            }),
        })
    }

    /// `natter.v1.GatewayService`, to add to a gRPC server.
    pub fn grpc_service(
        &self,
    ) -> natter_proto::v1::gateway_service_server::GatewayServiceServer<GatewayGrpc> {
        grpc::service(self.shared.clone())
    }

    /// The HTTP routes: `GET /v1/connect` (WebSocket), `GET /healthz` and
    /// the chat widget, `GET /widget.js`. Merge further routes into it.
    pub fn router(&self) -> axum::Router {
        ws::router(self.shared.clone()).merge(web::router())
    }

    /// Waits up to `grace` for every session to end; sessions end by
    /// themselves once `shutdown` is cancelled.
    pub async fn drain(&self, grace: Duration) {
        self.shared.sessions.close();
        if tokio::time::timeout(grace, self.shared.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = self.shared.sessions.len(),
                "grace period elapsed with sessions still open"
            );
        }
    }
}

/// Serves `GatewayService` on `grpc_listener` and WebSockets on
/// `http_listener` until `shutdown` is cancelled (or either server fails),
/// then ends every session with UNAVAILABLE (close 1001) and waits up to
/// the grace period for them.
pub async fn run(
    settings: &Settings,
    deps: Deps,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let readiness = deps.bus.clone();
    // Either server failing stops the other and every session.
    let stop = shutdown.child_token();
    let gateway = Gateway::new(settings, deps, stop.clone()).await?;
    let grace = settings.grace_period();

    let grpc = GrpcServer::new(natter_proto::FILE_DESCRIPTOR_SET)?
        .ready_while_connected(readiness)
        .max_connection_age(settings.grpc_max_connection_age())
        .add_service(gateway.grpc_service())
        .serve(grpc_listener, stop.clone().cancelled_owned(), grace);
    let grpc = async {
        let result = grpc.await;
        stop.cancel();
        result
    };
    let http = async {
        let result = ws::serve(http_listener, gateway.router(), stop.clone(), grace).await;
        stop.cancel();
        result
    };
    let (grpc, http) = tokio::join!(grpc, http);
    gateway.drain(grace).await;
    grpc?;
    http?;
    Ok(())
}

/// The binary's service: connects the bus, ensures the streams, binds both
/// addresses, and runs until `shutdown`.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> Result<(), StartError> {
    let infra = settings.infra("gateway").await?;
    let grpc = natter_server::bind("gateway grpc", &settings.gateway.grpc_addr).await?;
    let http = natter_server::bind("gateway websocket", &settings.gateway.http_addr).await?;
    let deps = Deps {
        bus: infra.bus,
        verifier: infra.verifier,
        instance: infra.instance,
    };
    run(&settings, deps, grpc, http, shutdown).await
}
