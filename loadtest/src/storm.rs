//! `reconnect-storm`: N devices open, all drop at once, and all come back
//! with their cursors, as after a network blip or a gateway restart.
//! Measures the time until every one is back (steady state), each
//! device's time from the drop to its new welcome, and the retries.
//!
//! On Centrifugo a device is back once connected and subscribed to a
//! channel of its own, the counterpart of the update log a Natter session
//! follows; it has no cursor, so nothing is caught up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures::StreamExt as _;
use natter_core::Role;
use natter_proto::v1::{Hello, Watch};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cli::StormArgs;
use crate::gateway::{Connector, Ended, Gateway, Pacer, Session};
use crate::report::{self, Run, Table, mib};
use crate::setup::Minter;
use crate::slo::Observed;
use crate::stats::{Latencies, Summary, Tally};
use crate::system::{Probe, Usage};

/// Retry backoff of a reconnect: first wait, and the most it doubles to.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The results of a `reconnect-storm` run.
#[derive(Debug, Serialize)]
pub(crate) struct StormReport {
    pub(crate) run: Run,
    pub(crate) devices: u32,
    /// Opened before the drop, and how long opening them took.
    pub(crate) opened: u64,
    pub(crate) open_s: f64,
    /// Sessions the server had ended by the time of the drop.
    pub(crate) lost_before_drop: u64,
    /// Dropped at once, then back with their cursors, or not back by the
    /// storm timeout.
    pub(crate) dropped: u64,
    pub(crate) back: u64,
    pub(crate) never_back: u64,
    /// Reconnect attempts that failed (and were retried), by reason.
    pub(crate) retries: u64,
    pub(crate) retry_reasons: BTreeMap<String, u64>,
    /// From the drop until the last device was back: the time to steady
    /// state.
    pub(crate) storm_s: f64,
    pub(crate) back_per_s: f64,
    /// From the drop to each device's welcome.
    pub(crate) reconnect_latency: Summary,
    /// What the server used from the drop to steady state.
    pub(crate) server: Option<Usage>,
    pub(crate) client: Option<Usage>,
}

impl StormReport {
    pub(crate) fn observed(&self) -> Observed {
        Observed {
            p50_ms: Some(self.reconnect_latency.p50_ms),
            p99_ms: Some(self.reconnect_latency.p99_ms),
            errors: Some(self.never_back + (u64::from(self.devices) - self.opened)),
            throughput: Some(self.back_per_s),
            time_s: Some(self.storm_s),
            ..Observed::default()
        }
    }

    pub(crate) fn table(&self) -> String {
        let mut t = Table::default();
        t.title(&format!(
            "natter-load reconnect-storm: {} devices on {}",
            self.devices, self.run.target
        ));
        t.row("opened", format!("{} in {:.2} s", self.opened, self.open_s));
        t.row("ended before the drop", self.lost_before_drop);
        t.row("dropped at once", self.dropped);
        t.row("back with their cursors", self.back);
        t.row("never back", self.never_back);
        t.row("failed attempts (retried)", self.retries);
        for (reason, count) in &self.retry_reasons {
            t.row(&format!("  {reason}"), count);
        }
        t.row(
            "to steady state",
            format!("{:.2} s ({:.0} devices/s)", self.storm_s, self.back_per_s),
        );
        for (who, usage) in [("server", &self.server), ("load generator", &self.client)] {
            if let Some(u) = usage {
                t.row(
                    &format!("{who} during the storm"),
                    format!("{:.2} cores, {} resident", u.cores, mib(u.rss_bytes)),
                );
            }
        }
        t.latency("drop → welcome", &self.reconnect_latency);
        t.finish()
    }
}

/// `base` with ±50 % jitter, different per `seed`, so devices that failed
/// together do not all retry together.
pub(crate) fn jittered(base: Duration, seed: u64) -> Duration {
    // splitmix64: a fixed, well-spread mix of the seed.
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let fraction = (z >> 11) as f64 / (1u64 << 53) as f64;
    base.mul_f64(0.5 + fraction)
}

pub(crate) async fn run(args: StormArgs) -> anyhow::Result<StormReport> {
    let quiet = args.output.quiet;
    let devices = u64::from(args.devices);
    crate::system::raise_fd_limit(devices)?;
    let probe = Probe::new(args.target.server_pid)?;
    let gateway = Gateway::resolve(&args.target).await?;
    let centrifugo = gateway.is_centrifugo();
    let connector = Connector::new(gateway, &args.target)?;
    let minter = Minter::new(
        &args.target.secret,
        &args.target.tenant,
        args.hold + args.storm_timeout + Duration::from_secs(3600),
    )?;
    let run = Run::new(connector.gateway(), &args.target);
    let user = |i: u64| format!("ls-{}-{i}", run.id);
    let hello = |i: u64, cursor: u64| -> anyhow::Result<Hello> {
        Ok(Hello {
            token: minter.token(&user(i), Role::Customer)?,
            device_id: "load-device".into(),
            cursor,
            device_label: "natter-load storm".into(),
        })
    };
    // A Natter session follows its user's log from the hello alone; on
    // Centrifugo the device subscribes to its own channel.
    let watches = |i: u64| -> Vec<Watch> {
        if centrifugo {
            vec![Watch {
                conversation_id: user(i),
                after_seq: 0,
            }]
        } else {
            Vec::new()
        }
    };
    let concurrency = args.target.connect_concurrency.max(1);
    let retries = Tally::default();
    let retried = AtomicU64::new(0);

    report::note(quiet, &format!("opening {devices} sessions"));
    let pacer = Pacer::new(args.target.connect_rate)?;
    let started = Instant::now();
    let opened: Vec<(u64, Session)> = futures::stream::iter(0..devices)
        .map(|i| {
            let (connector, hello, watches) = (&connector, &hello, &watches);
            async move {
                pacer.wait(i).await;
                let session = connector.open(i, hello(i, 0).ok()?, &watches(i)).await;
                session.ok().map(|s| (i, s))
            }
        })
        .buffer_unordered(concurrency)
        .filter_map(|opened| async move { opened })
        .collect()
        .await;
    let open_s = started.elapsed().as_secs_f64();
    let opened_count = opened.len() as u64;
    anyhow::ensure!(opened_count > 0, "no session opened");

    // Hold, noticing sessions the server ends, then drop them all at once:
    // the sockets close without a goodbye, as when a network goes away.
    report::note(
        quiet,
        &format!("{opened_count} open; holding {:?}", args.hold),
    );
    let hold_end = Instant::now() + args.hold;
    let lost = Arc::new(AtomicU64::new(0));
    let stop_hold = CancellationToken::new();
    let mut holders = Vec::with_capacity(opened.len());
    for (i, mut session) in opened {
        let (lost, stop) = (lost.clone(), stop_hold.clone());
        holders.push(tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                // Read until the server ends the session.
                () = async { while session.stream.next().await.is_ok() {} } => {
                    lost.fetch_add(1, Relaxed);
                }
            }
            (i, session.welcome.cursor, session)
        }));
    }
    tokio::time::sleep_until(hold_end).await;
    stop_hold.cancel();
    let mut cursors = Vec::with_capacity(holders.len());
    for holder in holders {
        let (i, cursor, session) = holder.await?;
        drop(session);
        cursors.push((i, cursor));
    }
    let before = probe.take();
    let dropped_at = Instant::now();
    report::note(quiet, &format!("dropped {}; reconnecting", cursors.len()));

    let storm = Pacer::new(args.storm_rate)?;
    let deadline = dropped_at + args.storm_timeout;
    let back_sessions: Vec<Option<(Duration, Session)>> = futures::stream::iter(cursors.iter())
        .enumerate()
        .map(|(k, &(i, cursor))| {
            let (connector, hello, watches) = (&connector, &hello, &watches);
            let (retries, retried) = (&retries, &retried);
            async move {
                storm.wait(k as u64).await;
                let mut backoff = RETRY_FIRST;
                loop {
                    let opened = match hello(i, cursor) {
                        Ok(hello) => connector.open(i, hello, &watches(i)).await,
                        Err(e) => Err(Ended(format!("{e:#}"))),
                    };
                    match opened {
                        Ok(session) => return Some((dropped_at.elapsed(), session)),
                        Err(ended) => {
                            retried.fetch_add(1, Relaxed);
                            retries.add(&ended.0);
                        }
                    }
                    let wait = jittered(backoff, i);
                    if Instant::now() + wait >= deadline {
                        return None;
                    }
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let after = probe.take();
    let (server, client) = probe.between(before, after);
    let mut latencies = Latencies::new();
    let mut back = Vec::with_capacity(back_sessions.len());
    let mut storm_s: f64 = 0.0;
    for (latency, session) in back_sessions.into_iter().flatten() {
        latencies.record(latency);
        storm_s = storm_s.max(latency.as_secs_f64());
        back.push(session);
    }
    let back_count = back.len() as u64;
    futures::stream::iter(back)
        .for_each_concurrent(concurrency, |session| session.sink.close())
        .await;

    let dropped = cursors.len() as u64;
    Ok(StormReport {
        run,
        devices: args.devices,
        opened: opened_count,
        open_s,
        lost_before_drop: lost.load(Relaxed),
        dropped,
        back: back_count,
        never_back: dropped - back_count,
        retries: retried.load(Relaxed),
        retry_reasons: retries.counts(),
        storm_s,
        back_per_s: if storm_s > 0.0 {
            back_count as f64 / storm_s
        } else {
            0.0
        },
        reconnect_latency: latencies.summary(),
        server,
        client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_either_side_and_spreads() {
        let base = Duration::from_millis(100);
        let waits: Vec<Duration> = (0..1000).map(|seed| jittered(base, seed)).collect();
        assert!(waits.iter().all(|w| *w >= base / 2 && *w < base * 3 / 2));
        let mut distinct = waits.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 900, "seeds should spread the waits");
        assert_eq!(jittered(base, 7), jittered(base, 7));
    }
}
