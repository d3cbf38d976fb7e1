//! How a run speaks: one progress line a second on stderr while it runs,
//! and its results on stdout at the end, as a table for people or as one
//! JSON document for scripts. Every scenario's results share the header
//! and the JSON shape (`{"scenario": ..., "run": ..., ...}`).

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cli::TargetArgs;
use crate::gateway::Gateway;
use crate::slo::Observed;
use crate::stats::Summary;

/// What every report starts with.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Run {
    /// Names this run's users apart from other runs' on the same server.
    pub(crate) id: String,
    /// The load generator's version.
    pub(crate) version: &'static str,
    /// The gateway driven: a ws:// URL or grpc://host:port.
    pub(crate) target: String,
    /// When the run started, in seconds since the UNIX epoch.
    pub(crate) started_unix_s: u64,
    pub(crate) tenant: String,
    /// Loopback source addresses the connections were spread over (1: the
    /// operating system chose).
    pub(crate) source_addrs: u8,
}

/// The results of a run, by scenario.
#[derive(Debug, Serialize)]
#[serde(tag = "scenario", rename_all = "snake_case")]
pub(crate) enum Report {
    Traffic(Box<crate::traffic::TrafficReport>),
    Idle(crate::idle::IdleReport),
    ReconnectStorm(crate::storm::StormReport),
    CatchUp(crate::catchup::CatchUpReport),
}

impl Run {
    pub(crate) fn new(gateway: &Gateway, target: &TargetArgs) -> Run {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Run {
            // Distinct for runs started at least a microsecond apart.
            id: format!("{:x}", since_epoch.as_micros()),
            version: env!("CARGO_PKG_VERSION"),
            target: gateway.to_string(),
            started_unix_s: since_epoch.as_secs(),
            tenant: target.tenant.clone(),
            source_addrs: target.source_addrs,
        }
    }
}

impl Report {
    /// The figures objectives are checked against.
    pub(crate) fn observed(&self) -> Observed {
        match self {
            Report::Traffic(report) => report.observed(),
            Report::Idle(report) => report.observed(),
            Report::ReconnectStorm(report) => report.observed(),
            Report::CatchUp(report) => report.observed(),
        }
    }

    pub(crate) fn print(&self, json: bool) -> anyhow::Result<()> {
        let text = if json {
            let mut text = serde_json::to_string_pretty(self)?;
            text.push('\n');
            text
        } else {
            match self {
                Report::Traffic(report) => report.table(),
                Report::Idle(report) => report.table(),
                Report::ReconnectStorm(report) => report.table(),
                Report::CatchUp(report) => report.table(),
            }
        };
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes())?;
        stdout.flush()?;
        Ok(())
    }
}

/// A table of labelled rows, aligned.
#[derive(Debug, Default)]
pub(crate) struct Table(String);

impl Table {
    pub(crate) fn title(&mut self, title: &str) {
        let _ = writeln!(self.0, "{title}");
    }

    pub(crate) fn row(&mut self, label: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.0, "  {label:<32} {value}");
    }

    /// Rows for a latency distribution.
    pub(crate) fn latency(&mut self, label: &str, summary: &Summary) {
        self.title(&format!("  {label} ({} samples)", summary.count));
        for (name, value) in [
            ("p50", summary.p50_ms),
            ("p90", summary.p90_ms),
            ("p99", summary.p99_ms),
            ("p99.9", summary.p999_ms),
            ("max", summary.max_ms),
            ("mean", summary.mean_ms),
        ] {
            self.row(&format!("  {name}"), format!("{value:>10.3} ms"));
        }
    }

    pub(crate) fn finish(self) -> String {
        self.0
    }
}

/// Prints `line(elapsed)` on stderr once a second until `stop` is
/// cancelled: in place on a terminal, one line each otherwise.
pub(crate) fn progress(
    quiet: bool,
    stop: CancellationToken,
    mut line: impl FnMut(Duration) -> String + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if quiet {
            return;
        }
        let terminal = std::io::stderr().is_terminal();
        let start = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    let text = line(start.elapsed());
                    if terminal {
                        eprint!("\r{text}\x1b[K");
                    } else {
                        eprintln!("{text}");
                    }
                }
            }
        }
        if terminal {
            eprintln!();
        }
    })
}

/// A note on stderr about what the run is doing, unless quiet.
pub(crate) fn note(quiet: bool, text: &str) {
    if !quiet {
        eprintln!("natter-load: {text}");
    }
}

/// Bytes as MiB with one decimal.
pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
