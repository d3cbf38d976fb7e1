//! Logging and tracing for every Natter binary: JSON lines on stdout, and
//! spans bridged to OpenTelemetry so trace context can cross NATS in W3C
//! `traceparent` headers. Exporting spans to a collector comes with the
//! observability work; until then spans live in-process only.

use opentelemetry::global;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

/// The target of spans that last as long as a connection or a process,
/// such as a device session (`#[tracing::instrument(target =
/// "natter::scope", ...)]`). They label the log lines inside them but are
/// not bridged to OpenTelemetry: a trace should be one request, not hours
/// of a connection, and a bridged span's state would cost every idle
/// connection about 1.3 KiB.
pub const SCOPE_TARGET: &str = "natter::scope";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    #[default]
    Json,
    /// Human-readable lines, for a terminal.
    Pretty,
}

/// Installs the global subscriber and the W3C trace-context propagator.
/// `RUST_LOG` (or `default_filter`) selects what is logged. Call once, first
/// thing in `main`; a second call is a no-op so tests may call it freely.
pub fn init(service: &'static str, format: LogFormat, default_filter: &str) {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder().build();
    let tracer = provider.tracer(service);
    global::set_tracer_provider(provider);

    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(filter_fn(|meta| meta.target() != SCOPE_TARGET));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    // `try_init` fails only when a subscriber is already set.
    let _ = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer()).try_init(),
    };
    tracing::debug!(service, "telemetry initialised");
}
