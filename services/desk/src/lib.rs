//! The desk service: a tenant's teams and agents, and the routing of
//! customers' conversations to them.
//!
//! - **One holder.** The processes of the service share one lease (scope
//!   `desk`); the holder routes every tenant (`holder.rs`), the others
//!   stand by and serve the gRPC API, which, like a gateway session's
//!   `desk` frames, carries each call to the holder (`desk.call`).
//! - **Inputs.** The holder consumes EVENTS (durable consumer `desk`) for
//!   lifecycle changes (a conversation that waits for a person, because
//!   the inbox owns it or the customer asked for one and nobody is
//!   assigned; is resolved; or is reopened) and for customers' answers to
//!   lead forms, which land on their contacts (`contacts.rs`). Gateways report which agents
//!   have sessions (`desk.sessions`), which is what makes an agent online.
//! - **Rules.** `natter_routing::Router`, one per tenant (`desk.rs`).
//! - **Analytics.** The holder also consumes EVENTS as `analytics`
//!   (`analytics.rs`), beside the loop: per-conversation facts and hourly
//!   rollups, written together per delivery, so a crash changes no figure;
//!   and the satisfaction survey when a conversation of a team with `csat`
//!   is resolved. Every process answers `AnalyticsService` from the store
//!   (`analytics_api.rs`).
//! - **Outputs.** Through the message path only (`act.rs`): an assignment
//!   makes the agent a member and is a lifecycle change at the
//!   conversation's sequencer; offers and queue positions are signals to
//!   sessions. Nothing here is in front of any `send_ack`.
//!
//! What a crash does not repair: the `DeskStore` keeps teams, agents and
//! each routed conversation (waiting, or assigned to whom), written before
//! the decision is carried out, and a new holder carries every assignment
//! out again. Offers are not kept: after a takeover they are made anew.
//! Presence set by hand is kept in memory only: after a takeover a
//! connected agent is online until they set it again.

mod act;
mod analytics;
mod analytics_api;
mod api;
mod contacts;
mod desk;
mod events;
mod holder;
mod http;
mod notes;
mod payments;
mod presence;
mod records;
mod stripe;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use natter_auth::Verifier;
use natter_bus::Bus;
use natter_server::{GrpcServer, Settings, StartError, partitions};
use natter_store::{DeskStore, LeaseStore};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The scope of the desk's lease.
const SCOPE: &str = "desk";

/// How long a call to a peer service, or to the holder, may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the holder may take to apply a payment provider's report: it
/// sends the payment's update into the conversation first.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(20);

/// What the service runs on, built by [`start`] or by whoever composes the
/// services in one process.
pub struct Deps {
    pub bus: Arc<dyn Bus>,
    pub verifier: Arc<Verifier>,
    pub store: Arc<dyn DeskStore>,
    /// Unique per process; names this process in logs and in its lease.
    pub instance: String,
    /// Where the HTTP endpoint for payment providers' webhooks listens
    /// (`desk.http_addr`), if anywhere.
    pub http: Option<TcpListener>,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps")
            .field("bus", &self.bus)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// Runs the service on `listener` until `shutdown`: the holder, while this
/// process holds the desk, and the gRPC API.
#[tracing::instrument(target = "natter::scope", name = "desk", skip_all, fields(instance = %deps.instance))]
pub async fn run(
    settings: &Settings,
    deps: Deps,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let readiness = deps.bus.clone();
    let reachable: Arc<dyn natter_store::LeaseStore> = deps.store.clone();
    let stop = shutdown.child_token();
    let mut tasks = JoinSet::new();
    let provider: Option<Arc<dyn payments::PaymentProvider>> = settings
        .stripe()?
        .map(|stripe| Arc::new(stripe::Stripe::new(stripe)) as _);
    let payments = payments::Payments {
        provider: provider.clone(),
    };
    if let Some(listener) = deps.http {
        tasks.spawn(http::serve(
            listener,
            deps.bus.clone(),
            provider,
            WEBHOOK_TIMEOUT,
            stop.clone(),
        ));
    }
    let config = holder::Config {
        bus: deps.bus.clone(),
        store: deps.store.clone(),
        topology: settings.topology(),
        limits: settings.limits(),
        peer_timeout: PEER_TIMEOUT,
        payments,
    };
    let leases: Arc<dyn LeaseStore> = deps.store.clone();
    tasks.spawn(partitions::hold(
        leases,
        SCOPE,
        deps.instance.clone(),
        1,
        stop.clone(),
        move |lease, stop| holder::serve_desk(config.clone(), lease, stop),
    ));
    let analytics = analytics_api::AnalyticsApi {
        verifier: deps.verifier.clone(),
        store: deps.store.clone(),
    };
    let api = Arc::new(api::Api {
        bus: deps.bus,
        verifier: deps.verifier,
        contacts: contacts::Contacts {
            store: deps.store,
            limits: settings.limits(),
        },
        timeout: PEER_TIMEOUT,
    });
    GrpcServer::new(natter_proto::FILE_DESCRIPTOR_SET)?
        .ready_while_connected(readiness)
        .max_connection_age(settings.grpc_max_connection_age())
        .ready_while_reachable(reachable)
        .add_service(
            natter_proto::v1::desk_service_server::DeskServiceServer::from_arc(api.clone()),
        )
        .add_service(natter_proto::v1::event_service_server::EventServiceServer::from_arc(api))
        .add_service(
            natter_proto::v1::analytics_service_server::AnalyticsServiceServer::new(analytics),
        )
        .serve_with_work(listener, &shutdown, settings.grace_period(), stop, tasks)
        .await?;
    Ok(())
}

/// Connects to the bus and the store the settings name, makes sure the
/// streams exist, binds `desk.grpc_addr` and runs until `shutdown`.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> Result<(), StartError> {
    let infra = settings.infra("desk").await?;
    let stores = settings.open_stores().await?;
    let listener = natter_server::bind("desk", &settings.desk.grpc_addr).await?;
    let http = match settings.desk.http_addr.as_str() {
        "" => None,
        addr => Some(natter_server::bind("desk (HTTP)", addr).await?),
    };
    let deps = Deps {
        bus: infra.bus,
        verifier: infra.verifier,
        store: stores.desk,
        instance: infra.instance,
        http,
    };
    run(&settings, deps, listener, shutdown).await
}
