//! `catch-up`: a device misses M messages while away, then comes back with
//! its cursor. First measures how fast the M messages are stored (a window
//! of sends in flight, each answered by `send_ack` only once durable), then
//! the time from the device starting to reconnect until it has all M.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use natter_core::Role;
use natter_proto::v1::server_frame::Frame as ServerKind;
use natter_proto::v1::{self, Hello, MessageContent, client_frame, event, message_content};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::cli::CatchUpArgs;
use crate::clock::Clock;
use crate::gateway::{Connector, FrameSink, Gateway, Session, frame};
use crate::report::{self, Run, Table, mib};
use crate::setup::{self, Minter};
use crate::slo::Observed;
use crate::stats::{Latencies, Marks, Summary, lock};
use crate::system::{Probe, Usage};
use crate::traffic::{parse_payload, payload};

/// The results of a `catch-up` run.
#[derive(Debug, Serialize)]
pub(crate) struct CatchUpReport {
    pub(crate) run: Run,
    pub(crate) messages: u32,
    pub(crate) window: u32,
    pub(crate) message_bytes: u32,
    /// Acked (durably stored) and refused sends.
    pub(crate) stored: u64,
    pub(crate) send_errors: u64,
    /// From the first send to the last `send_ack`.
    pub(crate) store_s: f64,
    pub(crate) stored_per_s: f64,
    /// Each send to its `send_ack` (closed loop: includes waiting behind
    /// the window's other sends at the server).
    pub(crate) ack_latency: Summary,
    /// What the server used while storing, with --server-pid.
    pub(crate) server_storing: Option<Usage>,
    /// The returning device: its messages received, missing and received
    /// twice.
    pub(crate) caught_up: u64,
    pub(crate) missing: u64,
    pub(crate) duplicates: u64,
    /// From starting to reconnect to the welcome, and to the last missed
    /// message.
    pub(crate) welcome_ms: f64,
    pub(crate) catch_up_s: f64,
    pub(crate) catch_up_per_s: f64,
    pub(crate) server_catching_up: Option<Usage>,
}

impl CatchUpReport {
    pub(crate) fn observed(&self) -> Observed {
        Observed {
            p50_ms: Some(self.ack_latency.p50_ms),
            p99_ms: Some(self.ack_latency.p99_ms),
            lost: Some(self.missing),
            errors: Some(self.send_errors),
            throughput: Some(self.stored_per_s),
            time_s: Some(self.catch_up_s),
        }
    }

    pub(crate) fn table(&self) -> String {
        let mut t = Table::default();
        t.title(&format!(
            "natter-load catch-up: {} missed messages of {} B on {}, {} sends in flight",
            self.messages, self.message_bytes, self.run.target, self.window
        ));
        t.row("stored (acked)", self.stored);
        t.row("send errors", self.send_errors);
        t.row(
            "storing",
            format!("{:.2} s ({:.0} msgs/s)", self.store_s, self.stored_per_s),
        );
        t.row("caught up", self.caught_up);
        t.row("missing", self.missing);
        t.row("duplicates", self.duplicates);
        t.row("reconnect → welcome", format!("{:.1} ms", self.welcome_ms));
        t.row(
            "reconnect → last missed message",
            format!(
                "{:.3} s ({:.0} msgs/s)",
                self.catch_up_s, self.catch_up_per_s
            ),
        );
        for (what, usage) in [
            ("server while storing", &self.server_storing),
            ("server while catching up", &self.server_catching_up),
        ] {
            if let Some(u) = usage {
                t.row(
                    what,
                    format!("{:.2} cores, {} resident", u.cores, mib(u.rss_bytes)),
                );
            }
        }
        t.latency("send → send_ack", &self.ack_latency);
        t.finish()
    }
}

pub(crate) async fn run(args: CatchUpArgs) -> anyhow::Result<CatchUpReport> {
    let quiet = args.output.quiet;
    let messages = u64::from(args.messages);
    let probe = Probe::new(args.target.server_pid)?;
    let gateway = Gateway::resolve(&args.target).await?;
    anyhow::ensure!(
        !gateway.is_centrifugo(),
        "catch-up measures Natter's update log; Centrifugo has none"
    );
    let connector = Connector::new(gateway, &args.target)?;
    let minter = Minter::new(
        &args.target.secret,
        &args.target.tenant,
        2 * args.timeout + Duration::from_secs(3600),
    )?;
    let run = Run::new(connector.gateway(), &args.target);
    let (away, sender) = (
        format!("lu-{}-away", run.id),
        format!("lu-{}-sender", run.id),
    );
    let hello = |user: &str, role, cursor| -> anyhow::Result<Hello> {
        Ok(Hello {
            token: minter.token(user, role)?,
            device_id: "load-device".into(),
            cursor,
            device_label: "natter-load catch-up".into(),
        })
    };
    let members = vec![
        (away.clone(), Role::Customer),
        (sender.clone(), Role::Agent),
    ];
    let conversation = setup::create_conversations(&args.storage, &minter, &[members])
        .await?
        .pop()
        .context("no conversation was created")?;

    // The device that will be away: open once for its cursor, then leave.
    let first = open(&connector, 0, hello(&away, Role::Customer, 0)?).await?;
    let cursor = first.welcome.cursor;
    first.sink.close().await;

    report::note(quiet, &format!("storing {messages} messages"));
    let session = open(&connector, 1, hello(&sender, Role::Agent, 0)?).await?;
    let before = probe.take();
    let stored = tokio::time::timeout(args.timeout, store(session, &conversation, messages, &args))
        .await
        .context("storing the messages timed out")??;
    let (server_storing, _) = probe.between(before, probe.take());

    report::note(quiet, "the device returns");
    let before = probe.take();
    let started = Instant::now();
    let mut returned = open(&connector, 2, hello(&away, Role::Customer, cursor)?).await?;
    let welcome_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut received = Marks::new(messages);
    let (mut caught_up, mut duplicates) = (0u64, 0u64);
    let catching_up = async {
        while caught_up < stored.acked {
            let frame = returned.stream.next().await?;
            let Some(ServerKind::Update(update)) = frame.frame else {
                continue;
            };
            let Some(event::Kind::Message(message)) = update.event.and_then(|e| e.kind) else {
                continue;
            };
            let Some(message_content::Kind::Text(text)) = message.content.and_then(|c| c.kind)
            else {
                continue;
            };
            if let Some((n, _)) = parse_payload(&text) {
                if received.set(n) {
                    caught_up += 1;
                } else {
                    duplicates += 1;
                }
            }
        }
        Ok::<_, crate::gateway::Ended>(())
    };
    let outcome = tokio::time::timeout(args.timeout, catching_up).await;
    let catch_up_s = started.elapsed().as_secs_f64();
    let (server_catching_up, _) = probe.between(before, probe.take());
    returned.sink.close().await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(ended)) => {
            report::note(quiet, &format!("the returning device was cut off: {ended}"))
        }
        Err(_) => report::note(quiet, "catching up timed out"),
    }

    Ok(CatchUpReport {
        run,
        messages: args.messages,
        window: args.window,
        message_bytes: args.message_bytes,
        stored: stored.acked,
        send_errors: stored.errors,
        store_s: stored.elapsed_s,
        stored_per_s: if stored.elapsed_s > 0.0 {
            stored.acked as f64 / stored.elapsed_s
        } else {
            0.0
        },
        ack_latency: stored.latency,
        server_storing,
        caught_up,
        missing: stored.acked.saturating_sub(caught_up),
        duplicates,
        welcome_ms,
        catch_up_s,
        catch_up_per_s: if catch_up_s > 0.0 {
            caught_up as f64 / catch_up_s
        } else {
            0.0
        },
        server_catching_up,
    })
}

async fn open(connector: &Connector, index: u64, hello: Hello) -> anyhow::Result<Session> {
    connector
        .open(index, hello, &[])
        .await
        .context("a device could not connect")
}

/// How storing went.
#[derive(Debug)]
struct Stored {
    acked: u64,
    errors: u64,
    elapsed_s: f64,
    latency: Summary,
}

/// Sends `messages` with at most `--window` unanswered at once, until each
/// is acked or refused.
async fn store(
    session: Session,
    conversation: &str,
    messages: u64,
    args: &CatchUpArgs,
) -> anyhow::Result<Stored> {
    let Session {
        mut sink,
        mut stream,
        ..
    } = session;
    let window = Arc::new(Semaphore::new(args.window as usize));
    let clock = Clock::starting_in(Duration::ZERO);
    // When each message was written, in nanoseconds from the start.
    let written: Arc<Vec<AtomicU64>> = Arc::new((0..messages).map(|_| AtomicU64::new(0)).collect());
    let latencies = Arc::new(Mutex::new(Latencies::new()));
    let started = Instant::now();
    let reader = {
        let (window, written, latencies) = (window.clone(), written.clone(), latencies.clone());
        tokio::spawn(async move {
            let (mut acked, mut errors) = (0u64, 0u64);
            let mut answered = Marks::new(messages);
            while acked + errors < messages {
                let frame = stream.next().await?;
                let (id, ok) = match frame.frame {
                    Some(ServerKind::SendAck(ack)) => (ack.client_message_id, true),
                    Some(ServerKind::Error(error)) => (error.client_message_id, false),
                    _ => continue,
                };
                let Ok(n) = id.parse::<u64>() else { continue };
                if !answered.set(n) {
                    continue;
                }
                if ok {
                    acked += 1;
                    let at = Duration::from_nanos(written[n as usize].load(Relaxed));
                    lock(&latencies).record(clock.elapsed().saturating_sub(at));
                } else {
                    errors += 1;
                }
                window.add_permits(1);
            }
            Ok::<_, crate::gateway::Ended>((acked, errors, stream))
        })
    };
    for n in 0..messages {
        window.acquire().await?.forget();
        let text = payload(
            n,
            clock.unix_ns(clock.elapsed()),
            args.message_bytes as usize,
        );
        written[n as usize].store(
            u64::try_from(clock.elapsed().as_nanos()).unwrap_or(u64::MAX),
            Relaxed,
        );
        send(&mut sink, conversation, n, text).await?;
    }
    let (acked, errors, _stream) = reader
        .await?
        .map_err(|ended| anyhow::anyhow!("the sending device was cut off: {ended}"))?;
    let elapsed_s = started.elapsed().as_secs_f64();
    sink.close().await;
    let latency = lock(&latencies).summary();
    Ok(Stored {
        acked,
        errors,
        elapsed_s,
        latency,
    })
}

async fn send(
    sink: &mut FrameSink,
    conversation: &str,
    n: u64,
    text: String,
) -> anyhow::Result<()> {
    sink.send(frame(client_frame::Frame::Send(v1::Send {
        conversation_id: conversation.to_owned(),
        client_message_id: n.to_string(),
        content: Some(MessageContent {
            kind: Some(message_content::Kind::Text(text)),
        }),
    })))
    .await
    .map_err(|ended| anyhow::anyhow!("the sending device was cut off: {ended}"))
}
