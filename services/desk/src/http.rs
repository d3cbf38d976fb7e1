//! The desk's HTTP endpoint, for what payment providers post:
//! `POST /v1/payments/stripe`, Stripe's webhook. Every desk process
//! listens (`desk.http_addr`), so an ingress may send a delivery to any;
//! the process checks its signature and age, then hands the report to the
//! holder (`desk.payment`), which applies it. The answer tells the
//! provider whether to deliver again: 400 for a delivery that is not
//! Stripe's (bad signature, too old) or cannot be read, 503 when the desk
//! could not apply it (the provider retries), 200 otherwise, a replay
//! included.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use natter_bus::{Bus, BusError};
use natter_contract::{Backoff, ContractError, request, subjects};
use natter_proto::bus::v1::PaymentReportOutcome;
use natter_server::clock::now;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::payments::{self, PaymentProvider};

/// The largest delivery read; Stripe's events are a few KiB.
const MAX_BODY_BYTES: usize = 256 * 1024;

#[derive(Clone)]
struct Endpoint {
    bus: Arc<dyn Bus>,
    provider: Option<Arc<dyn PaymentProvider>>,
    timeout: Duration,
}

/// Serves the endpoint on `listener` until `stop`.
pub(crate) async fn serve(
    listener: TcpListener,
    bus: Arc<dyn Bus>,
    provider: Option<Arc<dyn PaymentProvider>>,
    timeout: Duration,
    stop: CancellationToken,
) {
    let endpoint = Endpoint {
        bus,
        provider,
        timeout,
    };
    let router = Router::new()
        .route("/v1/payments/stripe", post(stripe))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(endpoint);
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "the desk's HTTP endpoint stopped");
    }
}

#[tracing::instrument(skip_all)]
async fn stripe(
    State(endpoint): State<Endpoint>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let Some(provider) = &endpoint.provider else {
        return (
            StatusCode::NOT_FOUND,
            "no payment provider is configured\n".into(),
        );
    };
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let report = match provider.report(signature, &body, now()) {
        Ok(Some(report)) => report,
        Ok(None) => return (StatusCode::OK, "ignored\n".into()),
        Err(e) => {
            tracing::warn!(error = %e, "payment webhook refused");
            return (StatusCode::BAD_REQUEST, format!("{e}\n"));
        }
    };
    let wire = payments::to_wire(&report);
    // Nobody answers for the second or so a holder takes to start.
    let deadline = Instant::now() + endpoint.timeout;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
    let outcome: Result<PaymentReportOutcome, _> = loop {
        match request(
            &*endpoint.bus,
            subjects::DESK_PAYMENT,
            &wire,
            endpoint.timeout,
        )
        .await
        {
            Err(ContractError::Bus(BusError::NoResponders { .. })) if Instant::now() < deadline => {
                backoff.wait(&CancellationToken::new()).await;
            }
            answered => break answered,
        }
    };
    match outcome {
        Ok(PaymentReportOutcome {
            failure: None,
            changed,
        }) => {
            tracing::info!(event = %report.event_id, payment = %report.payment, status = report.status.as_str(), changed, "payment webhook applied");
            (
                StatusCode::OK,
                if changed { "applied\n" } else { "unchanged\n" }.into(),
            )
        }
        Ok(PaymentReportOutcome {
            failure: Some(failure),
            ..
        }) => {
            let status = natter_proto::status::from_failure(failure);
            match status.code() {
                // Not a payment of this install's: delivering it again
                // would not help.
                tonic::Code::NotFound | tonic::Code::InvalidArgument => {
                    tracing::warn!(event = %report.event_id, payment = %report.payment, message = status.message(), "payment webhook for no payment of ours");
                    (StatusCode::OK, "unknown payment\n".into())
                }
                _ => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{}\n", status.message()),
                ),
            }
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the desk did not answer: {e}\n"),
        ),
    }
}
