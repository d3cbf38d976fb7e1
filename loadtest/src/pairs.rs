//! `pairs`: conversations of one customer and one agent, one device each.
//! Customers send text open-loop on the [`Plan`]; every message carries
//! its number and its due time, so the agent's device measures
//! send-to-deliver latency from when the message was due, not from when a
//! possibly delayed sender got round to it.
//!
//! Each device is two tasks: a writer (sends, periodic acks) and a reader
//! (acks, errors, updates), so a write blocked by a slow server never
//! delays reading. Each task keeps its own marks (sent, acked, errored,
//! delivered: one bit per planned message) and hands them back at the end,
//! when loss is counted exactly: acked but never delivered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use natter_core::Role;
use natter_proto::v1::server_frame::Frame as ServerKind;
use natter_proto::v1::{self, Ack, Hello, MessageContent, client_frame, event, message_content};
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cli::PairsArgs;
use crate::clock::Clock;
use crate::gateway::{Connector, FrameSink, FrameStream, Gateway, Pacer, Session, frame};
use crate::plan::Plan;
use crate::report::{self, Run, Table, mib};
use crate::setup::{self, Minter, Pair};
use crate::stats::{Latencies, Marks, Summary, Tally, lock};
use crate::system::{Probe, Usage};

/// Time between the last device connecting and the first message being
/// due, so every task is waiting when the run starts.
const LEAD: Duration = Duration::from_millis(200);

/// How long a device may take to say goodbye at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often the drain checks whether everything came back.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// The longest a ticker sleeps before looking at the stop signal.
const TICKER_SLEEP_MAX: Duration = Duration::from_millis(50);

/// What the text of every message starts with.
const PAYLOAD_TAG: &str = "natter-load";

/// The results of a `pairs` run. Counts are over the messages due in the
/// measured window unless named otherwise.
#[derive(Debug, Serialize)]
pub(crate) struct PairsReport {
    pub(crate) run: Run,
    pub(crate) pairs: u32,
    /// The offered load: messages due per second.
    pub(crate) rate_per_s: f64,
    pub(crate) warmup_s: f64,
    pub(crate) duration_s: f64,
    pub(crate) message_bytes: u32,
    /// Messages due in the measured window.
    pub(crate) planned: u64,
    /// Written to the connection.
    pub(crate) sent: u64,
    /// Planned but never written: the sender's session ended, or the drain
    /// timed out while it was still behind.
    pub(crate) unsent: u64,
    /// Answered with `send_ack`.
    pub(crate) acked: u64,
    /// Answered with an `error` frame.
    pub(crate) send_errors: u64,
    /// Sent, but neither acked nor refused before the drain ended.
    pub(crate) unanswered: u64,
    /// Arrived at the agent's device.
    pub(crate) delivered: u64,
    /// Acked but not delivered by the end of the drain.
    pub(crate) lost: u64,
    /// Lost among the warmup's messages.
    pub(crate) warmup_lost: u64,
    /// Deliveries of a message a device had already received (whole run).
    pub(crate) duplicates: u64,
    /// Deliveries that arrived during the measured window, per second of
    /// it: the throughput.
    pub(crate) delivered_per_s: f64,
    /// Due time to arrival at the agent's device.
    pub(crate) deliver_latency: Summary,
    /// Due time to the `send_ack` at the customer's device.
    pub(crate) ack_latency: Summary,
    /// Due time to the moment the load generator wrote the message: its
    /// own lateness, included in the latencies above.
    pub(crate) send_lag: Summary,
    /// How long the drain took.
    pub(crate) drain_s: f64,
    /// Sessions that ended before the run did.
    pub(crate) disconnects: u64,
    pub(crate) disconnect_reasons: BTreeMap<String, u64>,
    /// Error frames by reason (sends and other frames).
    pub(crate) error_reasons: BTreeMap<String, u64>,
    /// What the server used during the measured window, with --server-pid.
    pub(crate) server: Option<Usage>,
    /// What the load generator used during the measured window.
    pub(crate) client: Option<Usage>,
}

impl PairsReport {
    pub(crate) fn table(&self) -> String {
        let mut t = Table::default();
        t.title(&format!(
            "natter-load pairs: {} pairs on {}, {} msgs/s offered for {} s after {} s of warmup, {} B messages",
            self.pairs,
            self.run.target,
            self.rate_per_s,
            self.duration_s,
            self.warmup_s,
            self.message_bytes
        ));
        t.row("planned", self.planned);
        t.row("sent", self.sent);
        t.row("unsent", self.unsent);
        t.row("acked", self.acked);
        t.row("send errors", self.send_errors);
        t.row("unanswered", self.unanswered);
        t.row("delivered", self.delivered);
        t.row(
            "lost (acked, not delivered)",
            format!("{} (warmup: {})", self.lost, self.warmup_lost),
        );
        t.row("duplicates", self.duplicates);
        t.row(
            "throughput",
            format!("{:.1} delivered/s", self.delivered_per_s),
        );
        t.row("disconnects", self.disconnects);
        for (reason, count) in &self.disconnect_reasons {
            t.row(&format!("  {reason}"), count);
        }
        for (reason, count) in &self.error_reasons {
            t.row(&format!("error {reason}"), count);
        }
        t.row("drain", format!("{:.2} s", self.drain_s));
        for (who, usage) in [("server", &self.server), ("load generator", &self.client)] {
            if let Some(u) = usage {
                t.row(
                    &format!("{who} while measured"),
                    format!("{:.2} cores, {} resident", u.cores, mib(u.rss_bytes)),
                );
            }
        }
        t.latency("send → deliver, from due time", &self.deliver_latency);
        t.latency("send → send_ack, from due time", &self.ack_latency);
        t.latency("send lag of the load generator", &self.send_lag);
        t.finish()
    }
}

/// What every task of the run shares; counters are for progress, the
/// exact figures come from the marks at the end.
#[derive(Debug)]
struct Shared {
    plan: Plan,
    pairs: u64,
    clock: Clock,
    stop: CancellationToken,
    ack_interval: Duration,
    message_bytes: usize,
    counters: Counters,
    latencies: Mutex<Histograms>,
    errors: Tally,
    disconnects: Tally,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    delivered: AtomicU64,
    delivered_in_window: AtomicU64,
    duplicates: AtomicU64,
    disconnects: AtomicU64,
    /// Customer writers that have sent all they will.
    writers_done: AtomicU64,
}

#[derive(Debug)]
struct Histograms {
    deliver: Latencies,
    /// Since the last progress line.
    deliver_recent: Latencies,
    ack: Latencies,
    lag: Latencies,
}

pub(crate) async fn run(args: PairsArgs) -> anyhow::Result<PairsReport> {
    let plan =
        Plan::new(args.rate, args.pairs, args.warmup, args.duration).map_err(anyhow::Error::msg)?;
    let quiet = args.output.quiet;
    let pairs = u64::from(args.pairs);
    let probe = Probe::new(args.target.server_pid)?;
    crate::system::raise_fd_limit(2 * pairs)?;
    let gateway = Gateway::resolve(&args.target).await?;
    let connector = Connector::new(gateway, &args.target)?;
    let ttl = plan.end() + args.drain_timeout + Duration::from_secs(3600);
    let minter = Minter::new(&args.target.secret, &args.target.tenant, ttl)?;
    let run = Run::new(connector.gateway(), &args.target);

    // Fresh users every run, so devices start at cursor 0 with no backlog.
    let users: Vec<Pair> = (0..pairs)
        .map(|i| Pair {
            customer: format!("lc-{}-{i}", run.id),
            agent: format!("la-{}-{i}", run.id),
        })
        .collect();
    report::note(quiet, &format!("creating {pairs} conversations"));
    let conversations = setup::create_conversations(&args.storage, &minter, &users).await?;
    report::note(quiet, &format!("connecting {} devices", 2 * pairs));
    let sessions = connect(&connector, &minter, &users, &args).await?;

    let shared = Arc::new(Shared {
        plan,
        pairs,
        clock: Clock::starting_in(LEAD),
        stop: CancellationToken::new(),
        ack_interval: args.ack_interval,
        message_bytes: args.message_bytes as usize,
        counters: Counters::default(),
        latencies: Mutex::new(Histograms {
            deliver: Latencies::new(),
            deliver_recent: Latencies::new(),
            ack: Latencies::new(),
            lag: Latencies::new(),
        }),
        errors: Tally::default(),
        disconnects: Tally::default(),
    });
    let mut tasks = Vec::with_capacity(sessions.len());
    let mut writers = Vec::with_capacity(sessions.len());
    for (pair, ((customer, agent), conversation)) in
        (0u64..).zip(sessions.into_iter().zip(conversations))
    {
        let due_now = Arc::new(Notify::new());
        writers.push(due_now.clone());
        tasks.push(spawn_pair(
            &shared,
            pair,
            conversation,
            customer,
            agent,
            due_now,
        ));
    }
    let ticker = spawn_ticker(shared.clone(), writers)?;
    let stop_progress = CancellationToken::new();
    let progress = report::progress(quiet, stop_progress.clone(), {
        let shared = shared.clone();
        let mut last = [0u64; 3];
        move |_| progress_line(&shared, &mut last)
    });

    tokio::time::sleep_until(shared.clock.at(plan.window_start())).await;
    let first = probe.take();
    tokio::time::sleep_until(shared.clock.at(plan.end())).await;
    let (server, client) = probe.between(first, probe.take());
    let drain_started = tokio::time::Instant::now();
    let deadline = drain_started + args.drain_timeout;
    while tokio::time::Instant::now() < deadline && !drained(&shared) {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let drain = drain_started.elapsed();
    shared.stop.cancel();
    // Off the runtime: the ticker may take a tick to notice the stop.
    match tokio::task::spawn_blocking(move || ticker.join()).await {
        Ok(Ok(())) => {}
        _ => anyhow::bail!("the ticker thread failed"),
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.join().await?);
    }
    stop_progress.cancel();
    let _ = progress.await;

    Ok(PairsReport {
        server,
        client,
        ..tally(&shared, &args, run, &outcomes, drain)
    })
}

/// Opens every device, customers and agents alternating, at the connect
/// rate; all must open.
async fn connect(
    connector: &Connector,
    minter: &Minter,
    users: &[Pair],
    args: &PairsArgs,
) -> anyhow::Result<Vec<(Session, Session)>> {
    let pacer = Pacer::new(args.target.connect_rate)?;
    let devices: Vec<(String, Role)> = users
        .iter()
        .flat_map(|p| {
            [
                (p.customer.clone(), Role::Customer),
                (p.agent.clone(), Role::Agent),
            ]
        })
        .collect();
    let sessions: Vec<Session> = futures::stream::iter((0u64..).zip(devices))
        .map(|(i, (user, role))| async move {
            pacer.wait(i).await;
            let hello = Hello {
                token: minter.token(&user, role)?,
                device_id: "load-device".into(),
                cursor: 0,
                device_label: "natter-load".into(),
            };
            connector
                .open(i, hello)
                .await
                .with_context(|| format!("device of {user} could not connect"))
        })
        .buffered(args.target.connect_concurrency.max(1))
        .try_collect()
        .await?;
    let mut pairs = Vec::with_capacity(users.len());
    let mut sessions = sessions.into_iter();
    while let (Some(customer), Some(agent)) = (sessions.next(), sessions.next()) {
        pairs.push((customer, agent));
    }
    Ok(pairs)
}

/// The tasks of one pair.
#[derive(Debug)]
struct PairTasks {
    pair: u64,
    sender: JoinHandle<Marks>,
    customer: JoinHandle<(Marks, Marks)>,
    agent_writer: JoinHandle<()>,
    agent: JoinHandle<Marks>,
}

/// What a pair's tasks hand back: one bit per planned message each.
#[derive(Debug)]
struct PairOutcome {
    pair: u64,
    sent: Marks,
    acked: Marks,
    errored: Marks,
    delivered: Marks,
}

impl PairTasks {
    async fn join(self) -> anyhow::Result<PairOutcome> {
        let failed = |e| anyhow::anyhow!("a task of pair {} failed: {e}", self.pair);
        let sent = self.sender.await.map_err(failed)?;
        let (acked, errored) = self.customer.await.map_err(failed)?;
        self.agent_writer.await.map_err(failed)?;
        let delivered = self.agent.await.map_err(failed)?;
        Ok(PairOutcome {
            pair: self.pair,
            sent,
            acked,
            errored,
            delivered,
        })
    }
}

fn spawn_pair(
    shared: &Arc<Shared>,
    pair: u64,
    conversation: String,
    customer: Session,
    agent: Session,
    due_now: Arc<Notify>,
) -> PairTasks {
    let count = shared.plan.count(pair);
    let (every, devices) = (shared.ack_interval, 2 * shared.pairs);
    let customer_cursor = Arc::new(AtomicU64::new(customer.welcome.cursor));
    let agent_cursor = Arc::new(AtomicU64::new(agent.welcome.cursor));
    PairTasks {
        pair,
        sender: tokio::spawn(send_loop(
            shared.clone(),
            pair,
            conversation,
            customer.sink,
            Acker::new(customer_cursor.clone(), every, 2 * pair, devices),
            due_now,
        )),
        customer: tokio::spawn(customer_reader(
            shared.clone(),
            pair,
            count,
            customer.stream,
            customer_cursor,
        )),
        agent_writer: tokio::spawn(ack_loop(
            shared.clone(),
            agent.sink,
            Acker::new(agent_cursor.clone(), every, 2 * pair + 1, devices),
        )),
        agent: tokio::spawn(agent_reader(
            shared.clone(),
            count,
            agent.stream,
            agent_cursor,
        )),
    }
}

/// Acks a device's cursor every ack interval, when it moved.
#[derive(Debug)]
struct Acker {
    cursor: Arc<AtomicU64>,
    acked: u64,
    tick: tokio::time::Interval,
}

impl Acker {
    /// Device `device` of `devices` acks at its own phase of the interval,
    /// so the run's acks are spread over it rather than all arriving at
    /// once, every interval, as a burst no real population of devices
    /// would send.
    fn new(cursor: Arc<AtomicU64>, every: Duration, device: u64, devices: u64) -> Acker {
        let every = every.max(Duration::from_millis(1));
        let phase = every.mul_f64(device as f64 / devices.max(1) as f64);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let acked = cursor.load(Relaxed);
        Acker {
            cursor,
            acked,
            tick,
        }
    }

    async fn ack(&mut self, shared: &Shared, sink: &mut FrameSink) -> Option<()> {
        let cursor = self.cursor.load(Relaxed);
        if cursor > self.acked {
            write(shared, sink, client_frame::Frame::Ack(Ack { cursor })).await?;
            self.acked = cursor;
        }
        Some(())
    }
}

/// Sends `frame` unless the run stops first; `None` when the run stopped
/// or the session ended (the reader counts that).
async fn write(shared: &Shared, sink: &mut FrameSink, kind: client_frame::Frame) -> Option<()> {
    tokio::select! {
        _ = shared.stop.cancelled() => None,
        sent = sink.send(frame(kind)) => sent.ok(),
    }
}

/// The customer's writer: sends each message when the ticker says it is
/// due (all overdue ones at once when a blocked write held it back), acks
/// in between, then acks alone until the run stops.
async fn send_loop(
    shared: Arc<Shared>,
    pair: u64,
    conversation: String,
    mut sink: FrameSink,
    mut acker: Acker,
    due_now: Arc<Notify>,
) -> Marks {
    let plan = shared.plan;
    let count = plan.count(pair);
    let mut sent = Marks::new(count);
    let mut n = 0;
    let mut alive = true;
    while alive && n < count {
        tokio::select! {
            biased;
            _ = shared.stop.cancelled() => alive = false,
            _ = due_now.notified() => {
                while alive && n < count && plan.due(pair, n) <= shared.clock.elapsed() {
                    alive = send_message(&shared, pair, n, &conversation, &mut sink).await;
                    if alive {
                        sent.set(n);
                        n += 1;
                    }
                }
            }
            _ = acker.tick.tick() => alive = acker.ack(&shared, &mut sink).await.is_some(),
        }
    }
    shared.counters.writers_done.fetch_add(1, Relaxed);
    if alive {
        ack_loop(shared, sink, acker).await;
    }
    sent
}

/// Writes message `n` of `pair`, stamped with its due time; false when
/// the run stopped or the session ended.
async fn send_message(
    shared: &Shared,
    pair: u64,
    n: u64,
    conversation: &str,
    sink: &mut FrameSink,
) -> bool {
    let due = shared.plan.due(pair, n);
    let lag = shared.clock.elapsed().saturating_sub(due);
    let text = payload(n, shared.clock.unix_ns(due), shared.message_bytes);
    let message = v1::Send {
        conversation_id: conversation.to_owned(),
        client_message_id: n.to_string(),
        content: Some(MessageContent {
            kind: Some(message_content::Kind::Text(text)),
        }),
    };
    if write(shared, sink, client_frame::Frame::Send(message))
        .await
        .is_none()
    {
        return false;
    }
    shared.counters.sent.fetch_add(1, Relaxed);
    if shared.plan.measured(due) {
        lock(&shared.latencies).lag.record(lag);
    }
    true
}

/// Wakes each pair's writer when its next message is due, from a thread of
/// its own: the runtime's timers have millisecond resolution and would add
/// up to two milliseconds of the load generator's own lateness to every
/// latency, while a sleeping thread wakes within tens of microseconds.
fn spawn_ticker(
    shared: Arc<Shared>,
    writers: Vec<Arc<Notify>>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("natter-load-ticker".into())
        .spawn(move || {
            let plan = shared.plan;
            let pairs = writers.len() as u64;
            for k in 0..plan.total() {
                let (pair, n) = (k % pairs, k / pairs);
                let at = shared.clock.at(plan.due(pair, n)).into_std();
                loop {
                    if shared.stop.is_cancelled() {
                        return;
                    }
                    let now = std::time::Instant::now();
                    if now >= at {
                        break;
                    }
                    // Bounded, so a stop is noticed within a tick.
                    std::thread::sleep((at - now).min(TICKER_SLEEP_MAX));
                }
                writers[pair as usize].notify_one();
            }
        })
        .context("cannot start the ticker thread")
}

/// A device's writer once it has nothing else to send: acks its cursor
/// every ack interval until the run stops, then closes the session.
async fn ack_loop(shared: Arc<Shared>, mut sink: FrameSink, mut acker: Acker) {
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            _ = acker.tick.tick() => if acker.ack(&shared, &mut sink).await.is_none() { break },
        }
    }
    if shared.stop.is_cancelled() {
        // A last ack, so the server keeps where the device got to, then
        // goodbye.
        let cursor = acker.cursor.load(Relaxed);
        if cursor > acker.acked {
            let ack = frame(client_frame::Frame::Ack(Ack { cursor }));
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(ack)).await;
        }
        sink.close(CLOSE_TIMEOUT).await;
    }
}

/// The customer's reader: send acks and errors, and the cursor of the
/// updates (its own messages come back to it too).
async fn customer_reader(
    shared: Arc<Shared>,
    pair: u64,
    count: u64,
    mut stream: FrameStream,
    cursor: Arc<AtomicU64>,
) -> (Marks, Marks) {
    let plan = shared.plan;
    let mut acked = Marks::new(count);
    let mut errored = Marks::new(count);
    while let Some(frame) = next_frame(&shared, &mut stream).await {
        match frame {
            ServerKind::SendAck(ack) => {
                let Ok(n) = ack.client_message_id.parse::<u64>() else {
                    shared.errors.add("send_ack for an unknown message");
                    continue;
                };
                if acked.set(n) {
                    shared.counters.acked.fetch_add(1, Relaxed);
                    let due = plan.due(pair, n);
                    if plan.measured(due) {
                        let latency = shared.clock.elapsed().saturating_sub(due);
                        lock(&shared.latencies).ack.record(latency);
                    }
                }
            }
            ServerKind::Error(error) => {
                let reason = if error.reason.is_empty() {
                    format!("code {}", error.code)
                } else {
                    error.reason
                };
                match error.client_message_id.parse::<u64>() {
                    Ok(n) if errored.set(n) => {
                        shared.counters.errors.fetch_add(1, Relaxed);
                        shared.errors.add(&reason);
                    }
                    _ => shared.errors.add(&format!("{reason} (not a send)")),
                }
            }
            ServerKind::Update(update) => {
                cursor.fetch_max(update.cursor, Relaxed);
            }
            ServerKind::ResyncRequired(_) => shared.errors.add("resync_required"),
            _ => {}
        }
    }
    (acked, errored)
}

/// The agent's reader: every message's latency from its due time.
async fn agent_reader(
    shared: Arc<Shared>,
    count: u64,
    mut stream: FrameStream,
    cursor: Arc<AtomicU64>,
) -> Marks {
    let plan = shared.plan;
    let clock = shared.clock;
    let mut delivered = Marks::new(count);
    while let Some(frame) = next_frame(&shared, &mut stream).await {
        match frame {
            ServerKind::Update(update) => {
                cursor.fetch_max(update.cursor, Relaxed);
                let text = match update.event.and_then(|e| e.kind) {
                    Some(event::Kind::Message(message)) => {
                        match message.content.and_then(|c| c.kind) {
                            Some(message_content::Kind::Text(text)) => text,
                            _ => continue,
                        }
                    }
                    _ => continue,
                };
                let Some((n, due_ns)) = parse_payload(&text) else {
                    shared.errors.add("a message not sent by natter-load");
                    continue;
                };
                let now = clock.elapsed();
                if delivered.set(n) {
                    shared.counters.delivered.fetch_add(1, Relaxed);
                    if now >= plan.window_start() && now < plan.end() {
                        shared.counters.delivered_in_window.fetch_add(1, Relaxed);
                    }
                    let due = clock.offset_of(due_ns);
                    if plan.measured(due) {
                        let latency = now.saturating_sub(due);
                        let mut latencies = lock(&shared.latencies);
                        latencies.deliver.record(latency);
                        latencies.deliver_recent.record(latency);
                    }
                } else {
                    shared.counters.duplicates.fetch_add(1, Relaxed);
                }
            }
            ServerKind::Error(error) => shared.errors.add(&format!("{} (agent)", error.reason)),
            ServerKind::ResyncRequired(_) => shared.errors.add("resync_required"),
            _ => {}
        }
    }
    delivered
}

/// The next frame worth looking at, or `None` when the run stopped or the
/// session ended.
async fn next_frame(shared: &Shared, stream: &mut FrameStream) -> Option<ServerKind> {
    let read = tokio::select! {
        _ = shared.stop.cancelled() => return None,
        read = stream.next() => read,
    };
    match read {
        Ok(frame) => Some(frame.frame.unwrap_or(ServerKind::Pong(Default::default()))),
        Err(ended) => {
            if !shared.stop.is_cancelled() {
                shared.counters.disconnects.fetch_add(1, Relaxed);
                shared.disconnects.add(&ended.0);
            }
            None
        }
    }
}

/// The text of message `n`: its number and due time, padded to `bytes`.
fn payload(n: u64, due_unix_ns: u64, bytes: usize) -> String {
    let mut text = format!("{PAYLOAD_TAG} {n} {due_unix_ns} ");
    let pad = bytes.saturating_sub(text.len());
    text.extend(std::iter::repeat_n('.', pad));
    text
}

fn parse_payload(text: &str) -> Option<(u64, u64)> {
    let mut words = text.split_ascii_whitespace();
    (words.next()? == PAYLOAD_TAG).then_some(())?;
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}

/// Whether everything sent has come back: every writer done, every send
/// answered, and at least as many deliveries as acks.
fn drained(shared: &Shared) -> bool {
    let c = &shared.counters;
    let sent = c.sent.load(Relaxed);
    c.writers_done.load(Relaxed) >= shared.pairs
        && c.acked.load(Relaxed) + c.errors.load(Relaxed) >= sent
        && c.delivered.load(Relaxed) >= c.acked.load(Relaxed)
}

fn progress_line(shared: &Shared, last: &mut [u64; 3]) -> String {
    let c = &shared.counters;
    let now = [
        c.sent.load(Relaxed),
        c.acked.load(Relaxed),
        c.delivered.load(Relaxed),
    ];
    let rates: Vec<u64> = now.iter().zip(last.iter()).map(|(n, l)| n - l).collect();
    *last = now;
    let recent = {
        let mut latencies = lock(&shared.latencies);
        let summary = latencies.deliver_recent.summary();
        latencies.deliver_recent.reset();
        summary
    };
    let elapsed = shared.clock.elapsed();
    let phase = if elapsed < shared.plan.window_start() {
        "warmup "
    } else if elapsed < shared.plan.end() {
        "measure"
    } else {
        "drain  "
    };
    format!(
        "{:>6.1}s {phase} sent {:>6}/s acked {:>6}/s delivered {:>6}/s | deliver p50 {:.2} p99 {:.2} max {:.2} ms | errors {} disconnects {}",
        elapsed.as_secs_f64(),
        rates[0],
        rates[1],
        rates[2],
        recent.p50_ms,
        recent.p99_ms,
        recent.max_ms,
        c.errors.load(Relaxed),
        c.disconnects.load(Relaxed),
    )
}

fn tally(
    shared: &Shared,
    args: &PairsArgs,
    run: Run,
    outcomes: &[PairOutcome],
    drain: Duration,
) -> PairsReport {
    let plan = shared.plan;
    let mut counts = BTreeMap::<&str, u64>::new();
    for outcome in outcomes {
        for n in 0..plan.count(outcome.pair) {
            let measured = plan.measured(plan.due(outcome.pair, n));
            let acked = outcome.acked.get(n);
            let lost = acked && !outcome.delivered.get(n);
            if !measured {
                *counts.entry("warmup_lost").or_default() += u64::from(lost);
                continue;
            }
            let sent = outcome.sent.get(n);
            let errored = outcome.errored.get(n);
            for (key, yes) in [
                ("planned", true),
                ("sent", sent),
                ("unsent", !sent),
                ("acked", acked),
                ("errors", errored),
                ("unanswered", sent && !acked && !errored),
                ("delivered", outcome.delivered.get(n)),
                ("lost", lost),
            ] {
                *counts.entry(key).or_default() += u64::from(yes);
            }
        }
    }
    let count = |key: &str| counts.get(key).copied().unwrap_or(0);
    let latencies = lock(&shared.latencies);
    let c = &shared.counters;
    PairsReport {
        run,
        pairs: args.pairs,
        rate_per_s: plan.rate(),
        warmup_s: args.warmup.as_secs_f64(),
        duration_s: plan.duration().as_secs_f64(),
        message_bytes: args.message_bytes,
        planned: count("planned"),
        sent: count("sent"),
        unsent: count("unsent"),
        acked: count("acked"),
        send_errors: count("errors"),
        unanswered: count("unanswered"),
        delivered: count("delivered"),
        lost: count("lost"),
        warmup_lost: count("warmup_lost"),
        duplicates: c.duplicates.load(Relaxed),
        delivered_per_s: c.delivered_in_window.load(Relaxed) as f64 / plan.duration().as_secs_f64(),
        deliver_latency: latencies.deliver.summary(),
        ack_latency: latencies.ack.summary(),
        send_lag: latencies.lag.summary(),
        drain_s: drain.as_secs_f64(),
        disconnects: c.disconnects.load(Relaxed),
        disconnect_reasons: shared.disconnects.counts(),
        error_reasons: shared.errors.counts(),
        server: None,
        client: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_number_and_due_time_at_the_asked_size() {
        let text = payload(42, 1_700_000_000_123_456_789, 64);
        assert_eq!(text.len(), 64);
        assert_eq!(parse_payload(&text), Some((42, 1_700_000_000_123_456_789)));
        // A size smaller than the header is not cut.
        let short = payload(7, 9, 1);
        assert_eq!(parse_payload(&short), Some((7, 9)));
        assert_eq!(parse_payload("hello there"), None);
        assert_eq!(parse_payload("natter-load x 1"), None);
    }
}
