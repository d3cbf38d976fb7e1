//! Metrics every service shares: the `/metrics` endpoint Prometheus
//! scrapes, and rate, errors and duration of every gRPC call.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    metrics::describe_counter!(
        "natter_grpc_server_handled_total",
        "gRPC calls answered, by method and status code."
    );
    metrics::describe_histogram!(
        "natter_grpc_server_handling_seconds",
        metrics::Unit::Seconds,
        "Time to a gRPC call's response headers: a unary call's whole work, a stream's opening."
    );
    let app = Router::new().route(
        "/metrics",
        get(|| async {
            (
                [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                natter_telemetry::metrics().render(),
            )
        }),
    );
    let upkeep = tokio::spawn(fold_samples(shutdown.clone()));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    upkeep.abort();
    if let Err(e) = served {
        tracing::error!(error = %e, "the metrics endpoint failed");
    }
}

/// Folds histograms' samples into their buckets every few seconds, so
/// that they take no more memory however rarely Prometheus scrapes.
async fn fold_samples(shutdown: CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
    while shutdown.run_until_cancelled(every.tick()).await.is_some() {
        natter_telemetry::metrics().run_upkeep();
    }
}

/// Counts each gRPC call by method and status code
/// (`natter_grpc_server_handled_total`) and times it to its response's
/// headers (`natter_grpc_server_handling_seconds`: a unary call's whole
/// work, a stream's opening).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetrics;

impl<S> tower::Layer<S> for GrpcMetrics {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Measured<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for Measured<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let started = Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            // An error in the headers is a trailers-only answer; a call
            // that got as far as a body succeeded at its start.
            let code = match &answer {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|code| code.to_str().ok())
                    .and_then(|code| code.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from),
                Err(_) => tonic::Code::Unknown,
            };
            // Callers choose the path: one they cannot call is not a label.
            let method = if code == tonic::Code::Unimplemented {
                "unknown".to_owned()
            } else {
                method
            };
            metrics::histogram!("natter_grpc_server_handling_seconds", "grpc_method" => method.clone())
                .record(started.elapsed());
            metrics::counter!(
                "natter_grpc_server_handled_total",
                "grpc_method" => method,
                "grpc_code" => code_name(code),
            )
            .increment(1);
            answer
        })
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
