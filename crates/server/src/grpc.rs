use std::future::Future;
use std::time::Duration;

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
}

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

    /// The reporter, so a service can report NOT_SERVING while a dependency
    /// (NATS, the database) is down.
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
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
        for name in &self.names {
            self.health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        self.health
            .set_service_status("", ServingStatus::Serving)
            .await;

        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = Server::builder()
            .add_routes(self.routes)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            });
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => return result,
            () = shutdown => {}
        }

        for name in self.names.iter().copied().chain([""]) {
            self.health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
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
