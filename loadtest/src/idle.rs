//! `idle`: many device sessions that say hello and then wait, as the
//! phones in pockets and the tabs in the background of a real install do.
//! Measures how fast they open and what each costs the server in resident
//! memory.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use natter_core::Role;
use natter_proto::v1::Hello;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cli::IdleArgs;
use crate::gateway::{Connector, Gateway, Pacer, Session};
use crate::report::{self, Run, Table, mib};
use crate::setup::Minter;
use crate::stats::{Latencies, Summary, Tally, lock};
use crate::system::rss_bytes;

/// How often memory is sampled while holding.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The results of an `idle` run.
#[derive(Debug, Serialize)]
pub(crate) struct IdleReport {
    pub(crate) run: Run,
    /// Sessions asked for.
    pub(crate) connections: u32,
    /// Sessions that got their welcome.
    pub(crate) opened: u64,
    pub(crate) failed: u64,
    pub(crate) failure_reasons: BTreeMap<String, u64>,
    /// How long opening them all took, and the rate achieved.
    pub(crate) open_s: f64,
    pub(crate) opened_per_s: f64,
    /// From starting to connect to the welcome, per session.
    pub(crate) open_latency: Summary,
    pub(crate) hold_s: f64,
    /// Sessions the server ended while they were held.
    pub(crate) dropped: u64,
    pub(crate) dropped_reasons: BTreeMap<String, u64>,
    /// Sessions open at the end of the hold.
    pub(crate) held: u64,
    /// The server's resident memory, with --server-pid.
    pub(crate) server: Option<Memory>,
    /// The load generator's own resident memory.
    pub(crate) client: Option<Memory>,
    /// The server's memory at each --checkpoints count, with --server-pid.
    pub(crate) checkpoints: Vec<Checkpoint>,
}

/// The server's resident memory once `open` sessions were open and had
/// settled.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Checkpoint {
    pub(crate) open: u64,
    pub(crate) rss_bytes: u64,
    /// (rss − before) / open.
    pub(crate) per_connection_bytes: f64,
}

/// Resident memory before connecting and at the end of the hold.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Memory {
    pub(crate) pid: Option<u32>,
    pub(crate) rss_before_bytes: u64,
    pub(crate) rss_holding_bytes: u64,
    /// The most seen at any sample while holding.
    pub(crate) rss_peak_bytes: u64,
    /// (holding − before) / sessions held.
    pub(crate) per_connection_bytes: f64,
}

impl IdleReport {
    pub(crate) fn observed(&self) -> crate::slo::Observed {
        crate::slo::Observed {
            p50_ms: Some(self.open_latency.p50_ms),
            p99_ms: Some(self.open_latency.p99_ms),
            errors: Some(self.failed + self.dropped),
            throughput: Some(self.opened_per_s),
            time_s: Some(self.open_s),
            ..crate::slo::Observed::default()
        }
    }

    pub(crate) fn table(&self) -> String {
        let mut t = Table::default();
        t.title(&format!(
            "natter-load idle: {} sessions on {}, held {} s",
            self.connections, self.run.target, self.hold_s
        ));
        t.row("opened", self.opened);
        t.row("failed", self.failed);
        for (reason, count) in &self.failure_reasons {
            t.row(&format!("  {reason}"), count);
        }
        t.row(
            "open time",
            format!("{:.2} s ({:.0} sessions/s)", self.open_s, self.opened_per_s),
        );
        t.row("dropped while held", self.dropped);
        for (reason, count) in &self.dropped_reasons {
            t.row(&format!("  {reason}"), count);
        }
        t.row("held at the end", self.held);
        for (who, memory) in [("server", &self.server), ("load generator", &self.client)] {
            let Some(m) = memory else { continue };
            let pid = m.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
            t.title(&format!("  {who} resident memory{pid}"));
            t.row("  before", mib(m.rss_before_bytes));
            t.row("  holding", mib(m.rss_holding_bytes));
            t.row("  peak while holding", mib(m.rss_peak_bytes));
            t.row(
                "  per connection",
                format!("{:.0} bytes", m.per_connection_bytes),
            );
        }
        for c in &self.checkpoints {
            t.row(
                &format!("server at {} open", c.open),
                format!(
                    "{} resident, {:.0} bytes per connection",
                    mib(c.rss_bytes),
                    c.per_connection_bytes
                ),
            );
        }
        t.latency("open: connect → welcome", &self.open_latency);
        t.finish()
    }
}

#[derive(Debug)]
struct Shared {
    stop: CancellationToken,
    opened: AtomicU64,
    open: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    failures: Tally,
    drops: Tally,
    open_latency: Mutex<Latencies>,
}

pub(crate) async fn run(args: IdleArgs) -> anyhow::Result<IdleReport> {
    let quiet = args.output.quiet;
    let connections = u64::from(args.connections);
    crate::system::raise_fd_limit(connections)?;
    let gateway = Gateway::resolve(&args.target).await?;
    let connector = Arc::new(Connector::new(gateway, &args.target)?);
    let minter = Minter::new(
        &args.target.secret,
        &args.target.tenant,
        args.hold + Duration::from_secs(24 * 3600),
    )?;
    let run = Run::new(connector.gateway(), &args.target);
    let server_pid = args.target.server_pid.map(|pid| pid.to_string());
    let server_before = server_pid
        .as_deref()
        .map(rss_bytes)
        .transpose()
        .context("--server-pid: cannot read the server's memory")?;
    let client_before = rss_bytes("self").ok();

    let shared = Arc::new(Shared {
        stop: CancellationToken::new(),
        opened: AtomicU64::new(0),
        open: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        failures: Tally::default(),
        drops: Tally::default(),
        open_latency: Mutex::new(Latencies::new()),
    });
    let stop_progress = CancellationToken::new();
    let progress = report::progress(quiet, stop_progress.clone(), {
        let shared = shared.clone();
        let pid = server_pid.clone();
        let mut last = 0;
        move |elapsed| {
            let opened = shared.opened.load(Relaxed);
            let rss = pid
                .as_deref()
                .and_then(|pid| rss_bytes(pid).ok())
                .map(|b| format!(" | server rss {}", mib(b)))
                .unwrap_or_default();
            let line = format!(
                "{:>6.1}s open {}/{connections} (+{}/s) failed {} dropped {}{rss}",
                elapsed.as_secs_f64(),
                shared.open.load(Relaxed),
                opened - last,
                shared.failed.load(Relaxed),
                shared.dropped.load(Relaxed),
            );
            last = opened;
            line
        }
    });

    report::note(quiet, &format!("opening {connections} sessions"));
    let concurrency = args
        .target
        .connect_concurrency
        .clamp(1, Semaphore::MAX_PERMITS);
    let opening = Arc::new(Semaphore::new(concurrency));
    let pacer = Pacer::new(args.target.connect_rate)?;
    let started = Instant::now();
    let mut sessions = JoinSet::new();
    let mut checkpoints = Vec::new();
    let mut next_checkpoints = args
        .checkpoints
        .iter()
        .copied()
        .filter(|&c| c < connections);
    let mut next_checkpoint = next_checkpoints.next();
    for i in 0..connections {
        if next_checkpoint == Some(i) {
            next_checkpoint = next_checkpoints.next();
            // Every opening so far has finished once all permits are back.
            drop(opening.acquire_many(u32::try_from(concurrency)?).await?);
            if let (Some(pid), Some(before)) = (&server_pid, server_before) {
                tokio::time::sleep(args.settle).await;
                if let Ok(rss) = rss_bytes(pid) {
                    checkpoints.push(checkpoint(shared.open.load(Relaxed), before, rss));
                }
            }
        }
        pacer.wait(i).await;
        let permit = opening.clone().acquire_owned().await?;
        let hello = Hello {
            token: minter.token(&format!("li-{}-{i}", run.id), Role::Customer)?,
            device_id: "load-device".into(),
            cursor: 0,
            device_label: "natter-load idle".into(),
        };
        sessions.spawn(hold_one(
            shared.clone(),
            connector.clone(),
            i,
            hello,
            permit,
        ));
    }
    // Every opening has finished once all permits are back.
    drop(opening.acquire_many(u32::try_from(concurrency)?).await?);
    let open_s = started.elapsed().as_secs_f64();
    if let (Some(pid), Some(before)) = (&server_pid, server_before)
        && !args.checkpoints.is_empty()
    {
        tokio::time::sleep(args.settle).await;
        if let Ok(rss) = rss_bytes(pid) {
            checkpoints.push(checkpoint(shared.open.load(Relaxed), before, rss));
        }
    }

    report::note(
        quiet,
        &format!(
            "{} sessions open; holding for {:?}",
            shared.open.load(Relaxed),
            args.hold
        ),
    );
    let mut server = server_before.map(|before| Sampler::new(before, args.target.server_pid));
    let mut client = client_before.map(|before| Sampler::new(before, None));
    let hold_end = Instant::now() + args.hold;
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(hold_end) => break,
            _ = tick.tick() => {
                if let (Some(sampler), Some(pid)) = (&mut server, &server_pid) {
                    sampler.sample(pid);
                }
                if let Some(sampler) = &mut client {
                    sampler.sample("self");
                }
            }
        }
    }
    let held = shared.open.load(Relaxed);
    if let (Some(sampler), Some(pid)) = (&mut server, &server_pid) {
        sampler.sample(pid);
    }
    if let Some(sampler) = &mut client {
        sampler.sample("self");
    }

    shared.stop.cancel();
    while sessions.join_next().await.is_some() {}
    stop_progress.cancel();
    let _ = progress.await;

    let opened = shared.opened.load(Relaxed);
    Ok(IdleReport {
        run,
        connections: args.connections,
        opened,
        failed: shared.failed.load(Relaxed),
        failure_reasons: shared.failures.counts(),
        open_s,
        opened_per_s: if open_s > 0.0 {
            opened as f64 / open_s
        } else {
            0.0
        },
        open_latency: lock(&shared.open_latency).summary(),
        hold_s: args.hold.as_secs_f64(),
        dropped: shared.dropped.load(Relaxed),
        dropped_reasons: shared.drops.counts(),
        held,
        server: server.map(|s| s.memory(held)),
        client: client.map(|s| s.memory(held)),
        checkpoints,
    })
}

fn checkpoint(open: u64, before: u64, rss: u64) -> Checkpoint {
    Checkpoint {
        open,
        rss_bytes: rss,
        per_connection_bytes: if open > 0 {
            (rss as f64 - before as f64) / open as f64
        } else {
            0.0
        },
    }
}

/// Opens session `i`, then holds it until the run stops or the server
/// ends it.
async fn hold_one(
    shared: Arc<Shared>,
    connector: Arc<Connector>,
    i: u64,
    hello: Hello,
    permit: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let opened = tokio::select! {
        _ = shared.stop.cancelled() => return,
        opened = connector.open(i, hello, &[]) => opened,
    };
    let Session {
        sink, mut stream, ..
    } = match opened {
        Ok(session) => session,
        Err(ended) => {
            shared.failed.fetch_add(1, Relaxed);
            shared.failures.add(&ended.0);
            return;
        }
    };
    lock(&shared.open_latency).record(started.elapsed());
    shared.opened.fetch_add(1, Relaxed);
    shared.open.fetch_add(1, Relaxed);
    // Counted before the permit goes back, so the count is complete once
    // every permit is back.
    drop(permit);
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => {
                sink.close().await;
                return;
            }
            read = stream.next() => if let Err(ended) = read {
                shared.open.fetch_sub(1, Relaxed);
                shared.dropped.fetch_add(1, Relaxed);
                shared.drops.add(&ended.0);
                return;
            },
        }
    }
}

/// Resident memory samples of one process.
#[derive(Debug)]
struct Sampler {
    pid: Option<u32>,
    before: u64,
    last: u64,
    peak: u64,
}

impl Sampler {
    fn new(before: u64, pid: Option<u32>) -> Sampler {
        Sampler {
            pid,
            before,
            last: before,
            peak: before,
        }
    }

    fn sample(&mut self, pid: &str) {
        if let Ok(rss) = rss_bytes(pid) {
            self.last = rss;
            self.peak = self.peak.max(rss);
        }
    }

    fn memory(&self, held: u64) -> Memory {
        let grown = self.last as f64 - self.before as f64;
        Memory {
            pid: self.pid,
            rss_before_bytes: self.before,
            rss_holding_bytes: self.last,
            rss_peak_bytes: self.peak,
            per_connection_bytes: if held > 0 { grown / held as f64 } else { 0.0 },
        }
    }
}
