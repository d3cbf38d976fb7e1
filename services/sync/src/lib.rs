//! The sync service: the owner of every user's update log and devices.
//!
//! - It holds partitions of users through leases (scope `sync`) and, for
//!   each, takes fanout's append requests (`sync.append.<n>`): it gives
//!   each event the next cursor of its user's log, exactly once however
//!   often it is asked, writes every request that arrived meanwhile in one
//!   store write, then publishes the entries as live `ServerFrame`s to the
//!   gateways holding sessions of their users, one message per gateway,
//!   and answers (`log.rs`). Which gateways those are it learns from
//!   device hellos and the gateways' attaches (`directory.rs`).
//! - It answers the gateways over the bus: the updates after a cursor
//!   (`sync.updates.<n>`) and device hellos (`sync.hello.<n>`), both at the
//!   holder of the user's partition or at any sync process while nobody
//!   holds it, and cursor acks (`CURSOR_ACK`).
//! - It serves `natter.v1.SyncService` over gRPC to callers without a
//!   gateway connection.
//!
//! Only this service writes the `SyncStore`; it never reads conversation
//! state, and reaches storage (for `MarkRead`) only over the bus.

mod api;
mod directory;
mod log;
mod responders;

use std::sync::Arc;
use std::time::Duration;

use natter_auth::Verifier;
use natter_bus::Bus;
use natter_server::{GrpcServer, Settings, StartError, partitions};
use natter_store::{LeaseStore, SyncStore};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Sync's queue group, and the scope of its leases.
pub const CONSUMER: &str = "sync";

/// Requests a responder handles at once, per subject.
const RESPONDER_CONCURRENCY: usize = 256;

/// How long a request to a peer service may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the service runs on, built by [`start`] or by whoever composes the
/// services in one process.
pub struct Deps {
    pub bus: Arc<dyn Bus>,
    pub verifier: Arc<Verifier>,
    pub store: Arc<dyn SyncStore>,
    /// Unique per process; names this process in logs.
    pub instance: String,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps")
            .field("bus", &self.bus)
            .field("verifier", &self.verifier)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// Runs the service on `listener` until `shutdown`: the appenders of the
/// partitions it holds, the bus responders and the gRPC API. Returns once
/// the gRPC server has drained and the appenders have stopped.
#[tracing::instrument(target = "natter::scope", name = "sync", skip_all, fields(instance = %deps.instance))]
pub async fn run(
    settings: &Settings,
    deps: Deps,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let readiness = deps.bus.clone();
    let reachable: Arc<dyn natter_store::LeaseStore> = deps.store.clone();
    let limits = settings.limits();
    // Stops the bus side when the server ends for any reason, not only on
    // `shutdown`.
    let stop = shutdown.child_token();
    let mut tasks = JoinSet::new();

    // Responders first, so the gateways find them as soon as this process
    // reports serving.
    let responders = Arc::new(responders::Responders::new(
        deps.store.clone(),
        limits.clone(),
    ));
    responders
        .clone()
        .start(deps.bus.clone(), &stop, &mut tasks)
        .await?;

    let leases: Arc<dyn LeaseStore> = deps.store.clone();
    let (bus, store) = (deps.bus.clone(), deps.store.clone());
    let retained = settings.sync.retained_updates;
    tasks.spawn(partitions::hold(
        leases,
        CONSUMER,
        deps.instance.clone(),
        settings.topology().partitions.get(),
        stop.clone(),
        move |lease, stop| {
            let appender = log::Appender::new(store.clone(), bus.clone(), lease, retained);
            log::serve_partition(appender, responders.clone(), stop)
        },
    ));

    let api = api::Api::new(deps.bus, deps.verifier, deps.store, limits);
    GrpcServer::new(natter_proto::FILE_DESCRIPTOR_SET)?
        .ready_while_connected(readiness)
        .max_connection_age(settings.grpc_max_connection_age())
        .ready_while_reachable(reachable)
        .add_service(natter_proto::v1::sync_service_server::SyncServiceServer::new(api))
        .serve_with_work(listener, &shutdown, settings.grace_period(), stop, tasks)
        .await?;
    Ok(())
}

/// Connects to the bus and the store the settings name, makes sure the
/// streams exist, binds `sync.grpc_addr` and runs until `shutdown`.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> Result<(), StartError> {
    let infra = settings.infra("sync").await?;
    let stores = settings.open_stores().await?;
    let listener = natter_server::bind("sync", &settings.sync.grpc_addr).await?;
    let deps = Deps {
        bus: infra.bus,
        verifier: infra.verifier,
        store: stores.sync,
        instance: infra.instance,
    };
    run(&settings, deps, listener, shutdown).await
}
