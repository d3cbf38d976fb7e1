use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use natter_bus::Bus;
use natter_store::LeaseStore;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// A gRPC server that always serves `grpc.health.v1.Health` and server
/// reflection beside the services added to it.
#[derive(Debug)]
pub struct GrpcServer {
    routes: Routes,
    health: HealthReporter,
    names: Vec<&'static str>,
    needs: Needs,
    max_connection_age: Option<Duration>,
}

/// What the service cannot serve without.
#[derive(Clone, Default)]
struct Needs {
    bus: Option<Arc<dyn Bus>>,
    store: Option<Arc<dyn LeaseStore>>,
}

impl std::fmt::Debug for Needs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Needs")
            .field("bus", &self.bus.is_some())
            .field("store", &self.store.is_some())
            .finish()
    }
}

/// How often readiness looks at the bus and the store again.
const READINESS_EVERY: Duration = Duration::from_millis(500);
/// How long the store may take to answer before it counts as lost.
const STORE_ANSWERS_WITHIN: Duration = Duration::from_secs(2);

impl GrpcServer {
    /// `file_descriptor_set` describes the added services for reflection.
    pub fn new(file_descriptor_set: &[u8]) -> Result<Self, tonic_reflection::server::Error> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(file_descriptor_set)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // The error details every error carries (`google.rpc.ErrorInfo`,
            // `BadRequest`), so that grpcurl and other reflection clients
            // decode them instead of printing bytes.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        Ok(Self {
            routes: Routes::new(health_service).add_service(reflection),
            health,
            names: Vec::new(),
            needs: Needs::default(),
            max_connection_age: None,
        })
    }

    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes = self.routes.add_service(service);
        self
    }

    /// Serving only while `bus` is connected: NOT_SERVING while NATS is
    /// lost, so that load balancers and Kubernetes send callers elsewhere.
    #[must_use]
    pub fn ready_while_connected(mut self, bus: Arc<dyn Bus>) -> Self {
        self.needs.bus = Some(bus);
        self
    }

    /// Closes each client connection after `age` (a GOAWAY; its calls get
    /// the grace period to end), so that long-lived streams and pooled
    /// channels spread over the replicas that scaling adds. `None`: never.
    #[must_use]
    pub fn max_connection_age(mut self, age: Option<Duration>) -> Self {
        self.max_connection_age = age;
        self
    }

    /// Serving only while `store` answers: NOT_SERVING while the database
    /// cannot be reached.
    #[must_use]
    pub fn ready_while_reachable(mut self, store: Arc<dyn LeaseStore>) -> Self {
        self.needs.store = Some(store);
        self
    }

    /// [`serve`](Self::serve) until `shutdown`, then cancels `stop`, which the
    /// service's bus-side `work` watches, and waits for that work to settle:
    /// also when serving failed, so the work never outlives the server.
    pub async fn serve_with_work(
        self,
        listener: TcpListener,
        shutdown: &CancellationToken,
        grace: Duration,
        stop: CancellationToken,
        mut work: JoinSet<()>,
    ) -> Result<(), tonic::transport::Error> {
        let served = self
            .serve(listener, shutdown.clone().cancelled_owned(), grace)
            .await;
        stop.cancel();
        while work.join_next().await.is_some() {}
        served
    }

    /// Serves until `shutdown` resolves; then reports NOT_SERVING, stops
    /// accepting, and waits up to `grace` for open calls and streams to end.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) -> Result<(), tonic::transport::Error> {
        set_status(&self.health, &self.names, ServingStatus::Serving).await;
        let watching = CancellationToken::new();
        let needs = self.needs.clone();
        let watcher = (needs.bus.is_some() || needs.store.is_some()).then(|| {
            tokio::spawn(watch_readiness(
                needs,
                self.health.clone(),
                self.names.clone(),
                watching.clone(),
            ))
        });

        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut builder = Server::builder();
        if let Some(age) = self.max_connection_age {
            builder = builder
                .max_connection_age(age)
                .max_connection_age_grace(grace);
        }
        let server = builder
            .layer(crate::metrics::GrpcMetrics)
            .add_routes(self.routes)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            });
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => return result,
            () = shutdown => {}
        }

        // Stopped first, so that it cannot turn the status back.
        watching.cancel();
        if let Some(watcher) = watcher {
            let _ = watcher.await;
        }
        set_status(&self.health, &self.names, ServingStatus::NotServing).await;
        let _ = stop.send(());
        match tokio::time::timeout(grace, server).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    grace_ms = grace.as_millis() as u64,
                    "grace period elapsed with calls still open; closing them"
                );
                Ok(())
            }
        }
    }
}

/// Every service of the server, and the server as a whole ("").
async fn set_status(health: &HealthReporter, names: &[&'static str], status: ServingStatus) {
    for name in names.iter().copied().chain([""]) {
        health.set_service_status(name, status).await;
    }
}

/// Follows what the service needs into the health status until `stop`.
async fn watch_readiness(
    needs: Needs,
    health: HealthReporter,
    names: Vec<&'static str>,
    stop: CancellationToken,
) {
    let mut ready = true;
    let mut every = tokio::time::interval(READINESS_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let lost = needs.lost().await;
        if lost.is_none() == ready {
            continue;
        }
        ready = lost.is_none();
        match lost {
            None => {
                tracing::info!("the bus and the store are back: serving");
                set_status(&health, &names, ServingStatus::Serving).await;
            }
            Some(what) => {
                tracing::warn!(lost = what, "not serving until it is back");
                set_status(&health, &names, ServingStatus::NotServing).await;
            }
        }
    }
}

impl Needs {
    /// What is lost now, if anything.
    async fn lost(&self) -> Option<&'static str> {
        if let Some(bus) = &self.bus
            && !bus.connected()
        {
            return Some("bus");
        }
        if let Some(store) = &self.store {
            let answered = tokio::time::timeout(STORE_ANSWERS_WITHIN, store.reachable()).await;
            if !matches!(answered, Ok(Ok(()))) {
                return Some("store");
            }
        }
        None
    }
}
