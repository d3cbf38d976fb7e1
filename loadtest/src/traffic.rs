//! `traffic`: conversations of a [`Topology`], one device per member.
//! Members take turns sending text open-loop on the [`Plan`]; every
//! message carries its number and its due time, so each receiving device
//! measures send-to-deliver latency from when the message was due, not
//! from when a possibly delayed sender got round to it.
//!
//! Each device is two tasks: a writer (sends, periodic acks) and a reader
//! (acks, errors, updates or watched messages), so a write blocked by a
//! slow server never delays reading. A session the server ends is reopened
//! by the reader with the device's cursor (and the last seq it has, when
//! watching), and the writer continues on the new one. Each task keeps its
//! own marks (sent, acked, errored, delivered: one bit per message) and
//! hands them back at the end, when loss is counted exactly: acked but
//! never delivered to a member.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use natter_core::Role;
use natter_proto::v1::server_frame::Frame as ServerKind;
use natter_proto::v1::{
    self, Ack, Hello, MessageContent, Watch, client_frame, event, message_content,
};
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cli::TrafficArgs;
use crate::clock::Clock;
use crate::costs::{Cost, Meters};
use crate::gateway::{Connector, Ended, FrameSink, FrameStream, Gateway, Pacer, Session, frame};
use crate::plan::Plan;
use crate::report::{self, Run, Table, mib};
use crate::setup::{self, Minter};
use crate::slo::Observed;
use crate::stats::{Latencies, Marks, Summary, Tally, lock};
use crate::system::{Probe, Usage};
use crate::topology::{self, Topology};

/// Time between the last device connecting and the first message being
/// due, so every task is waiting when the run starts.
const LEAD: Duration = Duration::from_millis(200);

/// How often the drain checks whether everything came back.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// The longest a ticker sleeps before looking at the stop signal.
const TICKER_SLEEP_MAX: Duration = Duration::from_millis(50);

/// Before the first message, each conversation's first member sends a
/// probe and every member's device waits for it: it queues behind whatever
/// the set-up left the server to do (membership updates fanned out to every
/// member's log), so the run starts on a server that has finished, instead
/// of measuring the set-up's backlog. At most this long.
const SETTLE_MAX: Duration = Duration::from_secs(300);

/// The probe's text and `client_message_id` (a number, so Centrifugo's
/// command ids can carry it, and far above any run's message numbers).
const PROBE_TEXT: &str = "natter-load-probe";
const PROBE_ID: &str = "4000000000";

/// Reconnect backoff: first wait, and the most it doubles to.
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// What the text of every message starts with.
const PAYLOAD_TAG: &str = "natter-load";

/// The results of a `traffic` run. Message counts are over the messages
/// due in the measured window, delivery counts over their recipients.
#[derive(Debug, Serialize)]
pub(crate) struct TrafficReport {
    pub(crate) run: Run,
    pub(crate) topology: String,
    pub(crate) conversations: u64,
    pub(crate) devices: u64,
    /// The offered load: messages due per second once ramped up.
    pub(crate) rate_per_s: f64,
    pub(crate) ramp_s: f64,
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
    /// Deliveries the planned messages make: one per member but the sender.
    pub(crate) deliveries_planned: u64,
    /// Deliveries that arrived.
    pub(crate) delivered: u64,
    /// Deliveries of acked messages that never arrived by the end of the
    /// drain.
    pub(crate) lost: u64,
    /// Lost among the ramp's and the warmup's messages.
    pub(crate) warmup_lost: u64,
    /// The first lost deliveries, measured or not, to tell where they were
    /// lost: all of one message's (before fanout), all of one recipient's
    /// (its log or its session), or scattered.
    pub(crate) lost_sample: Vec<Missing>,
    /// Deliveries of a message a device had already received (whole run).
    pub(crate) duplicates: u64,
    /// Deliveries that arrived during the measured window, per second of
    /// it: the throughput.
    pub(crate) delivered_per_s: f64,
    /// Messages acked during the measured window, per second of it.
    pub(crate) acked_per_s: f64,
    /// Due time to arrival at a receiving device, every delivery.
    pub(crate) deliver_latency: Summary,
    /// Due time to the `send_ack` at the sender's device.
    pub(crate) ack_latency: Summary,
    /// Due time to the moment the load generator wrote the message: its
    /// own lateness, included in the latencies above.
    pub(crate) send_lag: Summary,
    /// How long the probes took to reach every device before the run (the
    /// set-up's backlog).
    pub(crate) settle_s: f64,
    /// How long the drain took.
    pub(crate) drain_s: f64,
    /// Sessions that ended before the run did.
    pub(crate) disconnects: u64,
    pub(crate) disconnect_reasons: BTreeMap<String, u64>,
    /// Sessions reopened after a disconnect, and attempts that failed.
    pub(crate) reconnects: u64,
    pub(crate) reconnect_failures: u64,
    /// Error frames by reason (sends and other frames).
    pub(crate) error_reasons: BTreeMap<String, u64>,
    /// What the server used during the measured window, with --server-pid.
    pub(crate) server: Option<Usage>,
    /// What the load generator used during the measured window.
    pub(crate) client: Option<Usage>,
    /// With --count: each counter's increase over the measured window and
    /// that per message acked in it (`null`: it could not be read).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) costs: BTreeMap<String, Option<Cost>>,
}

impl TrafficReport {
    pub(crate) fn observed(&self) -> Observed {
        Observed {
            p50_ms: Some(self.deliver_latency.p50_ms),
            p99_ms: Some(self.deliver_latency.p99_ms),
            lost: Some(self.lost),
            errors: Some(self.send_errors + self.unanswered + self.unsent),
            throughput: Some(self.delivered_per_s),
            time_s: None,
        }
    }

    pub(crate) fn table(&self) -> String {
        let mut t = Table::default();
        t.title(&format!(
            "natter-load traffic: {} × {} ({} devices) on {}, {} msgs/s offered for {} s after {} s of ramp and {} s of warmup, {} B messages",
            self.conversations,
            self.topology,
            self.devices,
            self.run.target,
            self.rate_per_s,
            self.duration_s,
            self.ramp_s,
            self.warmup_s,
            self.message_bytes
        ));
        t.row("messages planned", self.planned);
        t.row("sent", self.sent);
        t.row("unsent", self.unsent);
        t.row("acked", self.acked);
        t.row("send errors", self.send_errors);
        t.row("unanswered", self.unanswered);
        t.row("deliveries planned", self.deliveries_planned);
        t.row("delivered", self.delivered);
        t.row(
            "lost (acked, not delivered)",
            format!("{} (ramp and warmup: {})", self.lost, self.warmup_lost),
        );
        t.row("duplicates", self.duplicates);
        t.row(
            "throughput",
            format!(
                "{:.1} delivered/s, {:.1} acked/s",
                self.delivered_per_s, self.acked_per_s
            ),
        );
        t.row("disconnects", self.disconnects);
        for (reason, count) in &self.disconnect_reasons {
            t.row(&format!("  {reason}"), count);
        }
        t.row(
            "reconnects",
            format!(
                "{} ({} failed attempts)",
                self.reconnects, self.reconnect_failures
            ),
        );
        for (reason, count) in &self.error_reasons {
            t.row(&format!("error {reason}"), count);
        }
        t.row("settle before the run", format!("{:.2} s", self.settle_s));
        t.row("drain", format!("{:.2} s", self.drain_s));
        for (who, usage) in [("server", &self.server), ("load generator", &self.client)] {
            if let Some(u) = usage {
                t.row(
                    &format!("{who} while measured"),
                    format!("{:.2} cores, {} resident", u.cores, mib(u.rss_bytes)),
                );
            }
        }
        for (name, cost) in &self.costs {
            let shown = match cost {
                Some(Cost {
                    increase,
                    per_message: Some(per),
                }) => format!("{per:.2} per message acked ({increase:.0} in the window)"),
                Some(Cost { increase, .. }) => {
                    format!("{increase:.0} in the window, no message acked")
                }
                None => "could not be read".into(),
            };
            t.row(name, shown);
        }
        t.latency("send → deliver, from due time", &self.deliver_latency);
        t.latency("send → send_ack, from due time", &self.ack_latency);
        t.latency("send lag of the load generator", &self.send_lag);
        t.finish()
    }
}

/// One member's device.
#[derive(Debug, Clone)]
struct Device {
    /// Its conversation's number in the run, and its conversation's id.
    conversation: u64,
    conversation_id: String,
    /// Its place among the conversation's members.
    member: u32,
    members: u32,
    /// Its number among the run's devices.
    index: u64,
    user: String,
    role: Role,
}

impl Device {
    fn hello(&self, minter: &Minter, cursor: u64) -> anyhow::Result<Hello> {
        Ok(Hello {
            token: minter.token(&self.user, self.role)?,
            device_id: "load-device".into(),
            cursor,
            device_label: "natter-load".into(),
        })
    }
}

/// What every task of the run shares; counters are for progress, the
/// exact figures come from the marks at the end.
#[derive(Debug)]
struct Shared {
    plan: Plan,
    sizes: Vec<u32>,
    clock: Clock,
    stop: CancellationToken,
    ack_interval: Duration,
    message_bytes: usize,
    /// Devices read messages from watches (a room, or Centrifugo's
    /// channels) rather than from their update logs.
    watch: bool,
    devices: u64,
    /// For reopening sessions; `None` with --no-reconnect.
    reopen: Option<(Connector, Minter)>,
    counters: Counters,
    latencies: Mutex<Histograms>,
    errors: Tally,
    disconnects: Tally,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    acked_in_window: AtomicU64,
    errors: AtomicU64,
    /// Deliveries the acked messages owe: members but the sender.
    expected: AtomicU64,
    delivered: AtomicU64,
    delivered_in_window: AtomicU64,
    duplicates: AtomicU64,
    disconnects: AtomicU64,
    reconnects: AtomicU64,
    reconnect_failures: AtomicU64,
    /// Writers that have sent all they will.
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

pub(crate) async fn run(args: TrafficArgs) -> anyhow::Result<TrafficReport> {
    let sizes = args.topology.sizes(args.conversations);
    let conversations = sizes.len() as u64;
    let devices: u64 = sizes.iter().map(|&s| u64::from(s)).sum();
    let plan = Plan::new(
        args.rate,
        u32::try_from(conversations)?,
        args.ramp,
        args.warmup,
        args.duration,
    )
    .map_err(anyhow::Error::msg)?;
    let quiet = args.output.quiet;
    let probe = Probe::new(args.target.server_pid)?;
    crate::system::raise_fd_limit(devices)?;
    let gateway = Gateway::resolve(&args.target).await?;
    let centrifugo = gateway.is_centrifugo();
    let connector = Connector::new(gateway, &args.target)?;
    let ttl = plan.end() + args.drain_timeout + Duration::from_secs(3600);
    let minter = Minter::new(&args.target.secret, &args.target.tenant, ttl)?;
    let run = Run::new(connector.gateway(), &args.target);
    let meters = Meters::new(args.counts.clone());
    meters.check().await?;

    // Fresh users every run, so devices start at cursor 0 with no backlog.
    let members: Vec<Vec<(String, Role)>> = (0..conversations)
        .map(|c| {
            (0..sizes[c as usize])
                .map(|m| {
                    let role = if m == 0 { Role::Customer } else { Role::Agent };
                    (format!("l-{}-{c}-{m}", run.id), role)
                })
                .collect()
        })
        .collect();
    let conversation_ids = if centrifugo {
        (0..conversations)
            .map(|c| format!("{}-{c}", run.id))
            .collect()
    } else {
        let storage = args
            .storage
            .as_deref()
            .context("--storage is needed to create the conversations on Natter")?;
        report::note(quiet, &format!("creating {conversations} conversations"));
        setup::create_conversations(storage, &minter, &members).await?
    };
    let offsets = topology::offsets(&sizes);
    let all: Vec<Device> = members
        .iter()
        .enumerate()
        .flat_map(|(c, users)| {
            let conversation_id = &conversation_ids[c];
            let (offset, members) = (offsets[c], sizes[c]);
            (0u32..).zip(users).map(move |(m, (user, role))| Device {
                conversation: c as u64,
                conversation_id: conversation_id.clone(),
                member: m,
                members,
                index: offset + u64::from(m),
                user: user.clone(),
                role: *role,
            })
        })
        .collect();
    let watch = reads_by_watching(args.topology, centrifugo);
    report::note(quiet, &format!("connecting {devices} devices"));
    let sessions = connect(&connector, &minter, &all, watch, &args).await?;
    report::note(
        quiet,
        "waiting for a probe per conversation to reach every device",
    );
    let settling = tokio::time::Instant::now();
    let sessions = settle(&all, sessions).await;
    let settle = settling.elapsed();

    let shared = Arc::new(Shared {
        plan,
        sizes,
        clock: Clock::starting_in(LEAD),
        stop: CancellationToken::new(),
        ack_interval: args.ack_interval,
        message_bytes: args.message_bytes as usize,
        watch,
        devices,
        reopen: (!args.no_reconnect).then_some((connector, minter)),
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
    let mut tasks = Vec::with_capacity(all.len());
    let mut writers = Vec::with_capacity(all.len());
    for (device, session) in all.into_iter().zip(sessions) {
        let due_now = Arc::new(Notify::new());
        writers.push(due_now.clone());
        tasks.push(spawn_device(&shared, device, session, due_now));
    }
    let ticker = spawn_ticker(shared.clone(), offsets, writers)?;
    let stop_progress = CancellationToken::new();
    let progress = report::progress(quiet, stop_progress.clone(), {
        let shared = shared.clone();
        let mut last = [0u64; 3];
        move |_| progress_line(&shared, &mut last)
    });

    tokio::time::sleep_until(shared.clock.at(plan.window_start())).await;
    let first = probe.take();
    let counted = meters.read().await;
    tokio::time::sleep_until(shared.clock.at(plan.end())).await;
    let (server, client) = probe.between(first, probe.take());
    let costs = meters.costs(
        &counted,
        &meters.read().await,
        shared.counters.acked_in_window.load(Relaxed),
    );
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

    Ok(TrafficReport {
        server,
        client,
        costs,
        settle_s: settle.as_secs_f64(),
        ..tally(&shared, &args, run, &outcomes, drain)
    })
}

/// Sends each conversation's probe and reads every session until it has
/// the probe (or, for the sender, its `send_ack`), keeping the cursor of
/// the updates read; at most [`SETTLE_MAX`]. A session that ends meanwhile
/// is handed on as it is: its reader reopens it.
async fn settle(devices: &[Device], sessions: Vec<Session>) -> Vec<Session> {
    let deadline = tokio::time::Instant::now() + SETTLE_MAX;
    futures::stream::iter(devices.iter().zip(sessions))
        .map(|(device, mut session)| async move {
            let settling = async {
                if device.member == 0 {
                    let probe = v1::Send {
                        conversation_id: device.conversation_id.clone(),
                        client_message_id: PROBE_ID.into(),
                        content: Some(MessageContent {
                            kind: Some(message_content::Kind::Text(PROBE_TEXT.into())),
                        }),
                    };
                    session
                        .sink
                        .send(frame(client_frame::Frame::Send(probe)))
                        .await?;
                }
                loop {
                    let message = match session.stream.next().await?.frame {
                        Some(ServerKind::SendAck(ack)) if ack.client_message_id == PROBE_ID => {
                            return Ok(());
                        }
                        Some(ServerKind::Update(update)) => {
                            session.welcome.cursor = session.welcome.cursor.max(update.cursor);
                            match update.event.and_then(|e| e.kind) {
                                Some(event::Kind::Message(message)) => message,
                                _ => continue,
                            }
                        }
                        Some(ServerKind::Message(message)) => message,
                        _ => continue,
                    };
                    if device.member != 0 && is_probe(&message) {
                        return Ok::<(), Ended>(());
                    }
                }
            };
            let _ = tokio::time::timeout_at(deadline, settling).await;
            session
        })
        .buffered(usize::MAX)
        .collect()
        .await
}

fn is_probe(message: &v1::Message) -> bool {
    matches!(
        message.content.as_ref().and_then(|c| c.kind.as_ref()),
        Some(message_content::Kind::Text(text)) if text == PROBE_TEXT
    )
}

/// Opens every device at the connect rate; all must open.
async fn connect(
    connector: &Connector,
    minter: &Minter,
    devices: &[Device],
    watch: bool,
    args: &TrafficArgs,
) -> anyhow::Result<Vec<Session>> {
    let pacer = Pacer::new(args.target.connect_rate)?;
    futures::stream::iter(devices)
        .map(|device| async move {
            pacer.wait(device.index).await;
            connector
                .open(
                    device.index,
                    device.hello(minter, 0)?,
                    &watches(device, watch, 0),
                )
                .await
                .with_context(|| format!("device of {} could not connect", device.user))
        })
        .buffered(args.target.connect_concurrency.max(1))
        .try_collect()
        .await
}

/// What a device watches: its conversation, from `after_seq`, when
/// messages come by watching.
fn watches(device: &Device, watch: bool, after_seq: u64) -> Vec<Watch> {
    if watch {
        vec![Watch {
            conversation_id: device.conversation_id.clone(),
            after_seq,
        }]
    } else {
        Vec::new()
    }
}

/// The sending half of a device's session, which the reader replaces
/// when it reconnects.
#[derive(Debug, Default)]
struct Slot {
    sink: tokio::sync::Mutex<Option<FrameSink>>,
    replaced: Notify,
}

/// The tasks of one device.
#[derive(Debug)]
struct DeviceTasks {
    device: Device,
    writer: JoinHandle<Marks>,
    reader: JoinHandle<ReaderMarks>,
}

/// What a reader hands back: its own messages' answers (one bit per
/// message it sent), and deliveries (one bit per message of its
/// conversation).
#[derive(Debug)]
struct ReaderMarks {
    acked: Marks,
    errored: Marks,
    delivered: Marks,
}

/// What a device's tasks hand back.
#[derive(Debug)]
struct DeviceOutcome {
    device: Device,
    sent: Marks,
    reader: ReaderMarks,
}

impl DeviceTasks {
    async fn join(self) -> anyhow::Result<DeviceOutcome> {
        let failed = |e| anyhow::anyhow!("a task of device {} failed: {e}", self.device.index);
        let sent = self.writer.await.map_err(failed)?;
        let reader = self.reader.await.map_err(failed)?;
        Ok(DeviceOutcome {
            device: self.device,
            sent,
            reader,
        })
    }
}

fn spawn_device(
    shared: &Arc<Shared>,
    device: Device,
    session: Session,
    due_now: Arc<Notify>,
) -> DeviceTasks {
    let cursor = Arc::new(AtomicU64::new(session.welcome.cursor));
    let slot = Arc::new(Slot {
        sink: tokio::sync::Mutex::new(Some(session.sink)),
        replaced: Notify::new(),
    });
    let acker = Acker::new(
        cursor.clone(),
        shared.ack_interval,
        device.index,
        shared.devices,
    );
    DeviceTasks {
        writer: tokio::spawn(send_loop(
            shared.clone(),
            device.clone(),
            slot.clone(),
            acker,
            due_now,
        )),
        reader: tokio::spawn(reader(
            shared.clone(),
            device.clone(),
            session.stream,
            slot,
            cursor,
        )),
        device,
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

    async fn ack(&mut self, shared: &Shared, slot: &Slot) -> Option<()> {
        let cursor = self.cursor.load(Relaxed);
        if cursor > self.acked {
            write(shared, slot, client_frame::Frame::Ack(Ack { cursor })).await?;
            self.acked = cursor;
        }
        Some(())
    }
}

/// Sends `kind` unless the run stops first. When the session is gone it
/// waits for the reader to reopen it (the write is late, and its lateness
/// counts); `None` when the run stopped, or the session ended and is not
/// reopened.
async fn write(shared: &Shared, slot: &Slot, kind: client_frame::Frame) -> Option<()> {
    loop {
        let mut sink = tokio::select! {
            _ = shared.stop.cancelled() => return None,
            sink = slot.sink.lock() => sink,
        };
        if let Some(open) = sink.as_mut() {
            tokio::select! {
                _ = shared.stop.cancelled() => return None,
                sent = open.send(frame(kind.clone())) => match sent {
                    Ok(()) => return Some(()),
                    Err(_) => *sink = None,
                },
            }
        }
        drop(sink);
        shared.reopen.as_ref()?;
        tokio::select! {
            _ = shared.stop.cancelled() => return None,
            _ = slot.replaced.notified() => {}
        }
    }
}

/// A device's writer: sends each of its messages when the ticker says it
/// is due (all overdue ones at once when a blocked write held it back),
/// acks in between, then acks alone until the run stops.
async fn send_loop(
    shared: Arc<Shared>,
    device: Device,
    slot: Arc<Slot>,
    mut acker: Acker,
    due_now: Arc<Notify>,
) -> Marks {
    let plan = shared.plan;
    let own = topology::sent_by(
        device.member,
        device.members,
        plan.count(device.conversation),
    );
    let mut sent = Marks::new(own);
    let mut j = 0;
    let mut alive = true;
    let number = |j: u64| j * u64::from(device.members) + u64::from(device.member);
    while alive && j < own {
        tokio::select! {
            biased;
            _ = shared.stop.cancelled() => alive = false,
            _ = due_now.notified() => {
                while alive && j < own
                    && plan.due(device.conversation, number(j)) <= shared.clock.elapsed()
                {
                    alive = send_message(&shared, &device, number(j), &slot).await;
                    if alive {
                        sent.set(j);
                        j += 1;
                    }
                }
            }
            _ = acker.tick.tick() => alive = acker.ack(&shared, &slot).await.is_some(),
        }
    }
    shared.counters.writers_done.fetch_add(1, Relaxed);
    if alive {
        ack_loop(&shared, &slot, acker).await;
    }
    sent
}

/// Writes message `n` of the device's conversation, stamped with its due
/// time; false when the run stopped or the session ended for good.
async fn send_message(shared: &Shared, device: &Device, n: u64, slot: &Slot) -> bool {
    let due = shared.plan.due(device.conversation, n);
    let text = payload(n, shared.clock.unix_ns(due), shared.message_bytes);
    let message = v1::Send {
        conversation_id: device.conversation_id.clone(),
        client_message_id: n.to_string(),
        content: Some(MessageContent {
            kind: Some(message_content::Kind::Text(text)),
        }),
    };
    if write(shared, slot, client_frame::Frame::Send(message))
        .await
        .is_none()
    {
        return false;
    }
    let lag = shared.clock.elapsed().saturating_sub(due);
    shared.counters.sent.fetch_add(1, Relaxed);
    if shared.plan.measured(due) {
        lock(&shared.latencies).lag.record(lag);
    }
    true
}

/// Wakes each message's sender when it is due, from a thread of its own:
/// the runtime's timers have millisecond resolution and would add up to two
/// milliseconds of the load generator's own lateness to every latency,
/// while a sleeping thread wakes within tens of microseconds.
fn spawn_ticker(
    shared: Arc<Shared>,
    offsets: Vec<u64>,
    writers: Vec<Arc<Notify>>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("natter-load-ticker".into())
        .spawn(move || {
            let plan = shared.plan;
            let conversations = shared.sizes.len() as u64;
            for k in 0..plan.total() {
                let (c, n) = (k % conversations, k / conversations);
                let (member, _) = topology::sender(n, shared.sizes[c as usize]);
                let at = shared.clock.at(plan.offset(k)).into_std();
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
                writers[(offsets[c as usize] + u64::from(member)) as usize].notify_one();
            }
        })
        .context("cannot start the ticker thread")
}

/// A device's writer once it has nothing else to send: acks its cursor
/// every ack interval until the run stops, then closes the session.
async fn ack_loop(shared: &Shared, slot: &Slot, mut acker: Acker) {
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            _ = acker.tick.tick() => if acker.ack(shared, slot).await.is_none() { break },
        }
    }
    if shared.stop.is_cancelled() {
        let Some(mut sink) = slot.sink.lock().await.take() else {
            return;
        };
        // A last ack, so the server keeps where the device got to, then
        // goodbye.
        let cursor = acker.cursor.load(Relaxed);
        if cursor > acker.acked {
            let ack = frame(client_frame::Frame::Ack(Ack { cursor }));
            let _ = tokio::time::timeout(crate::gateway::CLOSE_TIMEOUT, sink.send(ack)).await;
        }
        sink.close().await;
    }
}

/// A device's reader: answers to its own sends, and every other member's
/// message with its latency from its due time. Reopens the session when
/// the server ends it.
async fn reader(
    shared: Arc<Shared>,
    device: Device,
    mut stream: FrameStream,
    slot: Arc<Slot>,
    cursor: Arc<AtomicU64>,
) -> ReaderMarks {
    let plan = shared.plan;
    let count = plan.count(device.conversation);
    let own = topology::sent_by(device.member, device.members, count);
    let mut marks = ReaderMarks {
        acked: Marks::new(own),
        errored: Marks::new(own),
        delivered: Marks::new(count),
    };
    let mut last_seq = 0;
    loop {
        let read = tokio::select! {
            _ = shared.stop.cancelled() => break,
            read = stream.next() => read,
        };
        let kind = match read {
            Ok(frame) => frame.frame,
            Err(ended) => {
                if shared.stop.is_cancelled() {
                    break;
                }
                shared.counters.disconnects.fetch_add(1, Relaxed);
                shared.disconnects.add(&ended.0);
                slot.sink.lock().await.take();
                match reconnect(&shared, &device, &slot, cursor.load(Relaxed), last_seq).await {
                    Some(reopened) => {
                        stream = reopened;
                        continue;
                    }
                    None => break,
                }
            }
        };
        match kind {
            Some(ServerKind::SendAck(ack)) => {
                let Some((n, j)) = own_number(&device, &ack.client_message_id) else {
                    shared.errors.add("send_ack for an unknown message");
                    continue;
                };
                if marks.acked.set(j) {
                    let now = shared.clock.elapsed();
                    let c = &shared.counters;
                    c.acked.fetch_add(1, Relaxed);
                    if now >= plan.window_start() && now < plan.end() {
                        c.acked_in_window.fetch_add(1, Relaxed);
                    }
                    c.expected.fetch_add(u64::from(device.members - 1), Relaxed);
                    let due = plan.due(device.conversation, n);
                    if plan.measured(due) {
                        lock(&shared.latencies).ack.record(now.saturating_sub(due));
                    }
                }
            }
            Some(ServerKind::Error(error)) => {
                let reason = if error.reason.is_empty() {
                    format!("code {}", error.code)
                } else {
                    error.reason
                };
                match own_number(&device, &error.client_message_id) {
                    Some((_, j)) if marks.errored.set(j) => {
                        shared.counters.errors.fetch_add(1, Relaxed);
                        shared.errors.add(&reason);
                    }
                    _ => shared.errors.add(&format!("{reason} (not a send)")),
                }
            }
            Some(ServerKind::Update(update)) => {
                cursor.fetch_max(update.cursor, Relaxed);
                if shared.watch {
                    continue;
                }
                if let Some(event::Kind::Message(message)) = update.event.and_then(|e| e.kind) {
                    deliver(&shared, &device, &mut marks.delivered, message);
                }
            }
            Some(ServerKind::Message(message)) => {
                last_seq = last_seq.max(message.seq);
                deliver(&shared, &device, &mut marks.delivered, message);
            }
            Some(ServerKind::ResyncRequired(_)) => shared.errors.add("resync_required"),
            _ => {}
        }
    }
    marks
}

/// The number of one of the device's own messages, and which of its own
/// it is, from a `client_message_id`.
fn own_number(device: &Device, client_message_id: &str) -> Option<(u64, u64)> {
    let n = client_message_id.parse::<u64>().ok()?;
    let (member, j) = topology::sender(n, device.members);
    (member == device.member).then_some((n, j))
}

/// Counts a message arriving at `device`: its latency from its due time,
/// unless the device sent it itself.
fn deliver(shared: &Shared, device: &Device, delivered: &mut Marks, message: v1::Message) {
    if is_probe(&message) {
        // Again, after a reconnect that re-watched from the start.
        return;
    }
    let Some(message_content::Kind::Text(text)) = message.content.and_then(|c| c.kind) else {
        return;
    };
    let Some((n, due_ns)) = parse_payload(&text) else {
        shared.errors.add("a message not sent by natter-load");
        return;
    };
    if topology::sender(n, device.members).0 == device.member {
        return;
    }
    let (plan, clock, c) = (shared.plan, shared.clock, &shared.counters);
    let now = clock.elapsed();
    if !delivered.set(n) {
        c.duplicates.fetch_add(1, Relaxed);
        return;
    }
    c.delivered.fetch_add(1, Relaxed);
    if now >= plan.window_start() && now < plan.end() {
        c.delivered_in_window.fetch_add(1, Relaxed);
    }
    let due = clock.offset_of(due_ns);
    if plan.measured(due) {
        let latency = now.saturating_sub(due);
        let mut latencies = lock(&shared.latencies);
        latencies.deliver.record(latency);
        latencies.deliver_recent.record(latency);
    }
}

/// Reopens a device's session with its cursor (and its watch from the
/// last seq it has), retrying with backoff and jitter until the run
/// stops; hands the new sending half to the writer.
async fn reconnect(
    shared: &Shared,
    device: &Device,
    slot: &Slot,
    cursor: u64,
    last_seq: u64,
) -> Option<FrameStream> {
    let (connector, minter) = shared.reopen.as_ref()?;
    let mut backoff = RECONNECT_FIRST;
    loop {
        let opened = match device.hello(minter, cursor) {
            Ok(hello) => {
                connector
                    .open(
                        device.index,
                        hello,
                        &watches(device, shared.watch, last_seq),
                    )
                    .await
            }
            Err(e) => Err(Ended(format!("{e:#}"))),
        };
        match opened {
            Ok(session) => {
                *slot.sink.lock().await = Some(session.sink);
                slot.replaced.notify_one();
                shared.counters.reconnects.fetch_add(1, Relaxed);
                return Some(session.stream);
            }
            Err(ended) => {
                shared.counters.reconnect_failures.fetch_add(1, Relaxed);
                shared.errors.add(&format!("reconnect: {ended}"));
            }
        }
        let wait = crate::storm::jittered(backoff, device.index);
        tokio::select! {
            _ = shared.stop.cancelled() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// The text of message `n`: its number and due time, padded to `bytes`.
pub(crate) fn payload(n: u64, due_unix_ns: u64, bytes: usize) -> String {
    let mut text = format!("{PAYLOAD_TAG} {n} {due_unix_ns} ");
    let pad = bytes.saturating_sub(text.len());
    text.extend(std::iter::repeat_n('.', pad));
    text
}

pub(crate) fn parse_payload(text: &str) -> Option<(u64, u64)> {
    let mut words = text.split_ascii_whitespace();
    (words.next()? == PAYLOAD_TAG).then_some(())?;
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}

/// How many lost deliveries the report names.
const LOST_SAMPLE: usize = 20;

/// A delivery of an acked message that never arrived.
#[derive(Debug, Serialize)]
pub(crate) struct Missing {
    pub(crate) conversation_id: String,
    /// The message's number in its conversation.
    pub(crate) message: u64,
    pub(crate) sender: String,
    pub(crate) recipient: String,
}

/// Whether everything sent has come back: every writer done, every send
/// answered, and every acked message delivered to every other member.
fn drained(shared: &Shared) -> bool {
    let c = &shared.counters;
    let sent = c.sent.load(Relaxed);
    c.writers_done.load(Relaxed) >= shared.devices
        && c.acked.load(Relaxed) + c.errors.load(Relaxed) >= sent
        && c.delivered.load(Relaxed) >= c.expected.load(Relaxed)
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
        "{:>6.1}s {phase} sent {:>6}/s acked {:>6}/s delivered {:>7}/s | deliver p50 {:.2} p99 {:.2} max {:.2} ms | errors {} disconnects {} reconnects {}",
        elapsed.as_secs_f64(),
        rates[0],
        rates[1],
        rates[2],
        recent.p50_ms,
        recent.p99_ms,
        recent.max_ms,
        c.errors.load(Relaxed),
        c.disconnects.load(Relaxed),
        c.reconnects.load(Relaxed),
    )
}

fn tally(
    shared: &Shared,
    args: &TrafficArgs,
    run: Run,
    outcomes: &[DeviceOutcome],
    drain: Duration,
) -> TrafficReport {
    let plan = shared.plan;
    let mut counts = BTreeMap::<&str, u64>::new();
    let mut lost_sample = Vec::new();
    let mut first = 0usize;
    for (c, &members) in shared.sizes.iter().enumerate() {
        let devices = &outcomes[first..first + members as usize];
        first += members as usize;
        for n in 0..plan.count(c as u64) {
            let (m, j) = topology::sender(n, members);
            let sender = &devices[m as usize];
            let measured = plan.measured(plan.due(c as u64, n));
            let acked = sender.reader.acked.get(j);
            let mut add = |key, yes: bool| *counts.entry(key).or_default() += u64::from(yes);
            for (r, recipient) in devices.iter().enumerate() {
                if r == m as usize {
                    continue;
                }
                let delivered = recipient.reader.delivered.get(n);
                if acked && !delivered && lost_sample.len() < LOST_SAMPLE {
                    lost_sample.push(Missing {
                        conversation_id: sender.device.conversation_id.clone(),
                        message: n,
                        sender: sender.device.user.clone(),
                        recipient: recipient.device.user.clone(),
                    });
                }
                if measured {
                    add("deliveries_planned", true);
                    add("delivered", delivered);
                    add("lost", acked && !delivered);
                } else {
                    add("warmup_lost", acked && !delivered);
                }
            }
            if !measured {
                continue;
            }
            let sent = sender.sent.get(j);
            let errored = sender.reader.errored.get(j);
            for (key, yes) in [
                ("planned", true),
                ("sent", sent),
                ("unsent", !sent),
                ("acked", acked),
                ("errors", errored),
                ("unanswered", sent && !acked && !errored),
            ] {
                add(key, yes);
            }
        }
    }
    let count = |key: &str| counts.get(key).copied().unwrap_or(0);
    let latencies = lock(&shared.latencies);
    let c = &shared.counters;
    let window = plan.duration().as_secs_f64();
    TrafficReport {
        run,
        topology: args.topology.to_string(),
        conversations: shared.sizes.len() as u64,
        devices: shared.devices,
        rate_per_s: plan.rate(),
        ramp_s: args.ramp.as_secs_f64(),
        warmup_s: args.warmup.as_secs_f64(),
        duration_s: window,
        message_bytes: args.message_bytes,
        planned: count("planned"),
        sent: count("sent"),
        unsent: count("unsent"),
        acked: count("acked"),
        send_errors: count("errors"),
        unanswered: count("unanswered"),
        deliveries_planned: count("deliveries_planned"),
        delivered: count("delivered"),
        lost: count("lost"),
        warmup_lost: count("warmup_lost"),
        lost_sample,
        duplicates: c.duplicates.load(Relaxed),
        delivered_per_s: c.delivered_in_window.load(Relaxed) as f64 / window,
        acked_per_s: c.acked_in_window.load(Relaxed) as f64 / window,
        deliver_latency: latencies.deliver.summary(),
        ack_latency: latencies.ack.summary(),
        send_lag: latencies.lag.summary(),
        settle_s: 0.0,
        drain_s: drain.as_secs_f64(),
        disconnects: c.disconnects.load(Relaxed),
        disconnect_reasons: shared.disconnects.counts(),
        reconnects: c.reconnects.load(Relaxed),
        reconnect_failures: c.reconnect_failures.load(Relaxed),
        error_reasons: shared.errors.counts(),
        server: None,
        client: None,
        costs: BTreeMap::new(),
    }
}

/// Whether a run of `topology` reads its messages by watching: rooms, and
/// every Centrifugo run (its channels are what a device follows).
fn reads_by_watching(topology: Topology, centrifugo: bool) -> bool {
    centrifugo || topology.watches()
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

    #[test]
    fn only_rooms_and_centrifugo_read_by_watching() {
        assert!(reads_by_watching(Topology::Room(5000), false));
        assert!(reads_by_watching(Topology::Pairs, true));
        assert!(!reads_by_watching(Topology::Mix(10), false));
    }

    #[test]
    fn a_device_knows_its_own_messages() {
        let device = Device {
            conversation: 0,
            conversation_id: "c".into(),
            member: 1,
            members: 3,
            index: 1,
            user: "u".into(),
            role: Role::Agent,
        };
        assert_eq!(own_number(&device, "4"), Some((4, 1)));
        assert_eq!(own_number(&device, "3"), None);
        assert_eq!(own_number(&device, "x"), None);
    }
}
