//! Logging, tracing and metrics for every Natter binary: JSON lines on
//! stdout, spans bridged to OpenTelemetry so trace context can cross NATS
//! in W3C `traceparent` headers, and metrics in Prometheus' text format
//! (see [`metrics`]). Exporting spans to a collector comes with the
//! observability work; until then spans live in-process only.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
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

/// Histogram buckets of every `*_seconds` metric: from a millisecond to
/// half a minute, finer where a message's latency should be.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process's metrics, recorded through the `metrics` crate's macros
/// and rendered for Prometheus by the handle. The first call installs the
/// recorder: make it before a service starts, so that the handles it takes
/// record; without it they are no-ops that cost nothing. Histograms keep
/// their samples until [`PrometheusHandle::run_upkeep`] folds them in, so
/// whoever installs it must run that now and then. Names follow Prometheus' conventions (`natter_`
/// prefix, `_total` counters, `_seconds` histograms) and no label carries
/// a user or conversation id.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        // Fails only for an empty bucket list, which this is not.
        let builder = builder
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed; then that one records.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// A counter, described for Prometheus' `# HELP` line.
pub fn counter(name: &'static str, help: &'static str) -> metrics::Counter {
    metrics::describe_counter!(name, help);
    metrics::counter!(name)
}

/// A gauge, described for Prometheus' `# HELP` line.
pub fn gauge(name: &'static str, help: &'static str) -> metrics::Gauge {
    metrics::describe_gauge!(name, help);
    metrics::gauge!(name)
}

/// A histogram of durations in seconds (`name` ends in `_seconds`),
/// described for Prometheus' `# HELP` line.
pub fn seconds(name: &'static str, help: &'static str) -> metrics::Histogram {
    metrics::describe_histogram!(name, metrics::Unit::Seconds, help);
    metrics::histogram!(name)
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
