//! One device session, whatever the transport: a stream of decoded client
//! frames in, a bounded queue of server frames out.
//!
//! The session opens with `hello` (token, device, cursor), then runs one
//! loop that reacts to whichever comes first: a client frame, a live frame
//! from the user's subject, a catch-up page, the answer to an earlier
//! request, a revocation, or shutdown. The loop itself never waits on the
//! network: requests to other services run as futures beside it, at most
//! [`MAX_IN_FLIGHT`] at a time, and their answers go out in the order the
//! frames that caused them came in. Sends are also submitted in that
//! order, so one device's messages keep their order: a send's future hands
//! its request to the bus when first polled, pending futures are first
//! polled in the order they were added, both bus implementations deliver
//! one process's requests to a subject in the order they are made, and
//! the sequencer numbers its partition's sends in the order they arrive.
//! (While the partition changes hands a send is asked again after a
//! pause, and may then land after a later one.)

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesOrdered;
use futures::{Stream, StreamExt};
use natter_auth::Identity;
use natter_bus::MAX_PAYLOAD_BYTES;
use natter_core::handoff::{Handoff, Step};
use natter_core::{
    ClientMessageId, ConversationId, Cursor, DeviceId, Event, Invalid, LifecycleChange,
    MembershipKind, Seq, Update,
};
use natter_proto::bus::v1::{
    CursorAck, DeskCommand, EphemeralSignal, MarkReadCommand, SendCommand, UpdatesPage,
    UpdatesQuery, ephemeral_signal,
};
use natter_proto::convert::{content_from_wire, parse_id, required, timestamp_to_wire};
use natter_proto::status::{self, reason};
use natter_proto::v1::{
    self, ClientFrame, Hello, Pong, ResyncRequired, Welcome, client_frame, server_frame::Frame,
};
use natter_server::clock::now;
use prost::Message as _;
use tonic::Status;
use tracing::field::Empty;

use crate::Shared;
use crate::live::{Feed, Listener};
use crate::outbound::{Outbound, Refused};
use crate::peers;
use crate::revoke::Watch;
use crate::stop::{Stop, device_revoked, shutting_down, token_expired, too_many_watches};
use crate::typing::TypingLimiter;
use crate::watches::{self, Watches};

/// Requests to other services one session may have in flight; past it the
/// session reads no more client frames until one answers.
pub(crate) const MAX_IN_FLIGHT: usize = 32;

/// At most one typing signal per conversation per this interval.
const TYPING_INTERVAL: Duration = Duration::from_secs(1);

/// Upper bound on `hello.device_label`.
const MAX_LABEL_BYTES: usize = 256;

/// Room left in a bus message for what travels with a request: headers
/// (trace context) and the reply subject.
const SEND_ENVELOPE_BYTES: usize = 1024;

/// A client frame the transport could not decode. The framing around it
/// was intact, so the next frame may be fine.
#[derive(Debug)]
pub(crate) struct Undecodable(pub(crate) String);

/// What a transport feeds the session.
pub(crate) type Inbound = Result<ClientFrame, Undecodable>;

type Flow = Result<(), Stop>;
type Reply = Pin<Box<dyn Future<Output = Option<Frame>> + Send>>;
type Fetch = Pin<Box<dyn Future<Output = Result<UpdatesPage, Stop>> + Send>>;

fn invalid(invalid: Invalid) -> Stop {
    Stop::Fail(status::invalid_argument(invalid))
}

/// Runs one session to its end: `Ok` when the device went away, else the
/// status that ended it, for the transport to report.
///
/// `fallback_token` is the transport's token (gRPC metadata, WebSocket
/// query or header), used when `hello.token` is empty.
#[tracing::instrument(target = "natter::scope", name = "session", skip_all, fields(transport = transport, tenant = Empty, user = Empty, device = Empty))]
pub(crate) async fn run<S>(
    shared: Arc<Shared>,
    transport: &'static str,
    mut inbound: S,
    outbound: Outbound,
    fallback_token: Option<String>,
) -> Result<(), Status>
where
    S: Stream<Item = Inbound> + Unpin + Send,
{
    let _open = shared.meters.session();
    let result = open_and_serve(&shared, &mut inbound, outbound, fallback_token).await;
    match result {
        Ok(()) | Err(Stop::Gone) => {
            tracing::debug!("session closed by the device");
            Ok(())
        }
        Err(Stop::Fail(status)) => {
            tracing::info!(code = ?status.code(), message = status.message(), "session ended");
            Err(status)
        }
    }
}

/// The session from hello to its end. The open session's state is built
/// in place and the loop borrows it, so the task holding the session keeps
/// it once, not a moved copy beside it.
async fn open_and_serve<S>(
    shared: &Arc<Shared>,
    inbound: &mut S,
    outbound: Outbound,
    fallback_token: Option<String>,
) -> Flow
where
    S: Stream<Item = Inbound> + Unpin,
{
    // Boxed: opening needs more state than an open session, and the
    // session's task stays the size of its largest state for its life.
    let opening = Box::pin(async {
        let hello = wait_hello(shared, inbound).await?;
        Session::open(shared.clone(), hello, fallback_token, outbound).await
    });
    let (mut session, mut live, mut watch) = tokio::select! {
        () = shared.shutdown.cancelled() => return Err(Stop::Fail(shutting_down())),
        opened = opening => opened?,
    };
    session.serve(inbound, &mut live, &mut watch).await
}

async fn wait_hello<S>(shared: &Shared, inbound: &mut S) -> Result<Hello, Stop>
where
    S: Stream<Item = Inbound> + Unpin,
{
    let timeout = shared.config.hello_timeout;
    let first = match tokio::time::timeout(timeout, inbound.next()).await {
        Err(_) => {
            return Err(invalid(Invalid::new(
                "hello",
                format!("is required within {} s of connecting", timeout.as_secs()),
            )));
        }
        Ok(None) => return Err(Stop::Gone),
        Ok(Some(first)) => first,
    };
    match first {
        Ok(ClientFrame {
            frame: Some(client_frame::Frame::Hello(hello)),
        }) => Ok(hello),
        Ok(_) => Err(invalid(Invalid::new(
            "hello",
            "the first frame must be hello",
        ))),
        Err(Undecodable(reason)) => Err(invalid(Invalid::new(
            "hello",
            format!("the first frame must be hello, and it could not be decoded: {reason}"),
        ))),
    }
}

/// The page being fetched, if any; never resolves without one.
async fn next_page(fetch: &mut Option<Fetch>) -> Result<UpdatesPage, Stop> {
    match fetch {
        Some(fetch) => fetch.await,
        None => std::future::pending().await,
    }
}

/// The next event of the session's watches; never resolves without any.
fn next_watch_event(
    watches: &mut Option<Box<Watches>>,
) -> impl Future<Output = watches::Event> + '_ {
    std::future::poll_fn(move |cx| match watches {
        Some(watches) => watches.poll_next(cx),
        None => std::task::Poll::Pending,
    })
}

/// Requests in flight, answered in the order they were made. Allocated
/// only while any are.
#[derive(Default)]
struct Pipeline(Option<FuturesOrdered<Reply>>);

impl Pipeline {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesOrdered::len)
    }

    fn push(&mut self, reply: Reply) {
        self.0
            .get_or_insert_with(FuturesOrdered::new)
            .push_back(reply);
    }

    /// The next answer (`None` for a request that needs none); never
    /// resolves while nothing is in flight.
    async fn next(&mut self) -> Option<Frame> {
        let Some(replies) = self.0.as_mut() else {
            return std::future::pending().await;
        };
        let answer = replies.next().await.flatten();
        if replies.is_empty() {
            self.0 = None;
        }
        answer
    }
}

/// An open session's state. Small while idle: nothing here allocates
/// before it is used.
struct Session {
    shared: Arc<Shared>,
    identity: Identity,
    device: DeviceId,
    out: Outbound,
    handoff: Handoff,
    /// The catch-up page being fetched; the handoff asks for one at a time.
    fetch: Option<Fetch>,
    replies: Pipeline,
    typing: TypingLimiter,
    /// The highest cursor acknowledged to sync by this session.
    acked: u64,
    /// The conversations watched; boxed and only once one is, so sessions
    /// that watch nothing stay small.
    watches: Option<Box<Watches>>,
    /// When its token expires, and the session ends.
    expires: tokio::time::Instant,
}

/// The monotonic instant of a token's `exp` (Unix seconds).
fn expiry_instant(exp: u64) -> tokio::time::Instant {
    let left = now().as_millis().max(0).unsigned_abs();
    let left = (exp.saturating_mul(1000)).saturating_sub(left);
    tokio::time::Instant::now() + std::time::Duration::from_millis(left)
}

impl Session {
    /// Authenticates, registers for the user's live frames and the device
    /// with sync, sends `welcome`, and starts the catch-up.
    async fn open(
        shared: Arc<Shared>,
        hello: Hello,
        fallback_token: Option<String>,
        out: Outbound,
    ) -> Result<(Self, Listener, Watch), Stop> {
        let token = match (hello.token.is_empty(), fallback_token) {
            (false, _) => hello.token,
            (true, Some(token)) => token,
            (true, None) => {
                return Err(Stop::Fail(status::unauthenticated(
                    reason::TOKEN_INVALID,
                    "no token: send it in hello.token",
                )));
            }
        };
        let (identity, expires) = shared.verifier.verify_until(&token).map_err(|e| {
            tracing::info!(error = %e, "token refused");
            Stop::Fail(status::unauthenticated(
                reason::TOKEN_INVALID,
                e.to_string(),
            ))
        })?;
        let device: DeviceId = parse_id("device_id", &hello.device_id).map_err(invalid)?;
        if hello.device_label.len() > MAX_LABEL_BYTES {
            return Err(invalid(Invalid::new(
                "device_label",
                format!("must be at most {MAX_LABEL_BYTES} bytes"),
            )));
        }
        let span = tracing::Span::current();
        span.record("tenant", identity.tenant.as_str());
        span.record("user", identity.user.as_str());
        span.record("device", device.as_str());

        // Registered before sync is asked, so no revocation slips between,
        // and no live frame the holder sends once the hello reached it.
        // The first fetch follows, so nothing falls between the catch-up
        // and live delivery.
        let watch = shared
            .revocations
            .watch(&identity.tenant, &identity.user, &device);
        let live = shared.live.listen(&identity);
        let epoch = peers::device_hello(&shared, &identity, &device, hello.device_label)
            .await
            .map_err(Stop::Fail)?;
        shared
            .live
            .welcomed(&identity.tenant, &identity.user, epoch);
        out.push(Frame::Welcome(Welcome {
            user_id: identity.user.to_string(),
            device_id: device.to_string(),
            cursor: hello.cursor,
        }))?;
        let (handoff, first) =
            Handoff::start(Cursor::new(hello.cursor), shared.config.max_held_updates);
        let mut session = Session {
            shared,
            identity,
            device,
            out,
            handoff,
            fetch: None,
            replies: Pipeline::default(),
            typing: TypingLimiter::new(TYPING_INTERVAL),
            acked: 0,
            watches: None,
            expires: expiry_instant(expires),
        };
        session.steps(vec![first])?;
        tracing::debug!(cursor = hello.cursor, "session open");
        Ok((session, live, watch))
    }

    async fn serve<S>(&mut self, inbound: &mut S, live: &mut Listener, watch: &mut Watch) -> Flow
    where
        S: Stream<Item = Inbound> + Unpin,
    {
        // One timer for the session's life, not one per turn of the loop.
        let expiry = tokio::time::sleep_until(self.expires);
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                biased;
                () = self.shared.shutdown.cancelled() => return Err(Stop::Fail(shutting_down())),
                () = watch.revoked() => return Err(Stop::Fail(device_revoked())),
                () = &mut expiry => return Err(Stop::Fail(token_expired())),
                answer = self.replies.next() => {
                    if let Some(frame) = answer {
                        self.out.push(frame)?;
                    }
                }
                page = next_page(&mut self.fetch), if self.fetch.is_some() => {
                    self.fetch = None;
                    self.on_page(page?)?;
                }
                frame = inbound.next(), if self.replies.len() < MAX_IN_FLIGHT => match frame {
                    Some(frame) => self.on_client(frame)?,
                    None => return Ok(()),
                },
                feed = live.next() => self.on_live(feed)?,
                event = next_watch_event(&mut self.watches) => {
                    if let Some(watches) = self.watches.as_mut() {
                        for frame in watches.on_event(event)? {
                            self.out.push(frame)?;
                        }
                    }
                }
            }
        }
    }

    /// Carries out what the handoff asks for.
    fn steps(&mut self, steps: Vec<Step>) -> Flow {
        let mut steps = VecDeque::from(steps);
        while let Some(step) = steps.pop_front() {
            match step {
                Step::Deliver(updates) => {
                    // While catching up, updates outpacing the device are
                    // left in the log and fetched at its pace; a device
                    // that is live and still cannot keep up is cut off.
                    let catching_up = !self.handoff.is_live();
                    let Some(through) = updates.last().map(|u| u.cursor) else {
                        continue;
                    };
                    for update in updates {
                        let cursor = update.cursor;
                        self.left(&update);
                        if let Event::Message(message) = &update.event {
                            self.shared.meters.delivered(message.sent_at, !catching_up);
                        }
                        match self.out.push(Frame::Update(update.into())) {
                            Ok(()) => {}
                            Err(Refused::Full) if catching_up => {
                                steps.extend(self.handoff.rewind(cursor, through));
                                break;
                            }
                            Err(refused) => return Err(refused.into()),
                        }
                    }
                }
                Step::Fetch { after } => {
                    let query = UpdatesQuery {
                        tenant_id: self.identity.tenant.to_string(),
                        user_id: self.identity.user.to_string(),
                        after: after.get(),
                        limit: u32::try_from(self.shared.config.page_size()).unwrap_or(u32::MAX),
                    };
                    self.fetch = Some(Box::pin(peers::fetch(
                        self.shared.clone(),
                        self.out.clone(),
                        self.identity.clone(),
                        query,
                    )));
                }
            }
        }
        Ok(())
    }

    /// Stops watching a conversation the user has left: the room subject
    /// is for members.
    fn left(&mut self, update: &Update) {
        if let Event::Membership(change) = &update.event
            && change.kind == MembershipKind::Left
            && change.user_id == self.identity.user
            && let Some(watches) = self.watches.as_mut()
        {
            watches.unwatch(change.conversation_id);
        }
    }

    fn on_page(&mut self, page: UpdatesPage) -> Flow {
        if let Some(failure) = page.failure {
            let status = status::from_failure(failure);
            tracing::warn!(code = ?status.code(), message = status.message(), "catch-up refused");
            return Err(Stop::Fail(status));
        }
        if page.resync_required {
            // The device's cursor is older than the log keeps: it refetches
            // its conversations and continues from the head.
            self.out
                .push(Frame::ResyncRequired(ResyncRequired { cursor: page.head }))?;
            let (handoff, first) =
                Handoff::start(Cursor::new(page.head), self.shared.config.max_held_updates);
            self.handoff = handoff;
            return self.steps(vec![first]);
        }
        let updates = peers::readable(page.updates, "an update")?;
        let steps = self.handoff.on_page(updates, page.complete);
        self.steps(steps)
    }

    fn on_live(&mut self, feed: Feed) -> Flow {
        let payload = match feed {
            Feed::Frame(payload) => payload,
            Feed::Recheck => {
                let steps = self.handoff.recheck();
                return self.steps(steps);
            }
        };
        let frame = match v1::ServerFrame::decode(payload) {
            Ok(frame) => frame.frame,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable live frame dropped");
                return Ok(());
            }
        };
        match frame {
            Some(Frame::Update(update)) => match Update::try_from(update) {
                Ok(update) => {
                    let steps = self.handoff.on_live(update);
                    self.steps(steps)
                }
                // Dropping it leaves a gap the handoff fills from the log.
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable live update dropped");
                    Ok(())
                }
            },
            // Ephemeral: fanout (or the desk) already dropped stale ones and
            // chose who gets them; the frames carry no time of their own.
            Some(frame @ (Frame::Typing(_) | Frame::Presence(_) | Frame::DeskSignal(_))) => {
                Ok(self.out.push(frame)?)
            }
            other => {
                tracing::warn!(frame = ?other, "unexpected live frame dropped");
                Ok(())
            }
        }
    }

    fn on_client(&mut self, frame: Inbound) -> Flow {
        let frame = match frame {
            Ok(ClientFrame { frame: Some(frame) }) => frame,
            Ok(ClientFrame { frame: None }) => {
                return self.reject(
                    Invalid::new(
                        "frame",
                        "is required: one of hello, send, update_lifecycle, ack, read, typing, \
                         ping, watch, unwatch or desk",
                    ),
                    "",
                );
            }
            Err(Undecodable(reason)) => {
                return self.reject(
                    Invalid::new("frame", format!("cannot be decoded: {reason}")),
                    "",
                );
            }
        };
        match frame {
            client_frame::Frame::Hello(_) => self.reject(
                Invalid::new("hello", "the session is already open; send hello once"),
                "",
            ),
            client_frame::Frame::Send(send) => self.on_send(send),
            client_frame::Frame::UpdateLifecycle(update) => self.on_update_lifecycle(update),
            client_frame::Frame::Desk(call) => self.on_desk(call),
            client_frame::Frame::Ack(ack) => self.on_ack(ack.cursor),
            client_frame::Frame::Read(read) => self.on_read(read),
            client_frame::Frame::Typing(typing) => self.on_typing(typing),
            client_frame::Frame::Ping(ping) => {
                Ok(self.out.push(Frame::Pong(Pong { nonce: ping.nonce }))?)
            }
            client_frame::Frame::Watch(watch) => self.on_watch(watch),
            client_frame::Frame::Unwatch(unwatch) => {
                match parse_id::<ConversationId>("conversation_id", &unwatch.conversation_id) {
                    Ok(conversation) => {
                        if let Some(watches) = self.watches.as_mut() {
                            watches.unwatch(conversation);
                        }
                        Ok(())
                    }
                    Err(e) => self.reject(e, ""),
                }
            }
        }
    }

    fn on_watch(&mut self, watch: v1::Watch) -> Flow {
        let conversation: ConversationId = match parse_id("conversation_id", &watch.conversation_id)
        {
            Ok(conversation) => conversation,
            Err(e) => return self.reject(e, ""),
        };
        let config = &self.shared.config;
        let watches = self.watches.get_or_insert_with(|| {
            Box::new(Watches::new(
                self.shared.clone(),
                self.out.clone(),
                self.identity.clone(),
            ))
        });
        if watches.len() >= config.max_watches && !watches.contains(conversation) {
            let status = too_many_watches(config.max_watches);
            return Ok(self.out.push(watches::refused(&status, conversation))?);
        }
        watches.watch(
            conversation,
            Seq::new(watch.after_seq),
            config.max_held_updates,
        );
        Ok(())
    }

    /// Answers a bad frame with an INVALID_ARGUMENT `error` frame; the
    /// session goes on.
    fn reject(&mut self, invalid: Invalid, client_message_id: &str) -> Flow {
        tracing::debug!(error = %invalid, "client frame rejected");
        let mut frame = status::error_frame(&status::invalid_argument(invalid), None);
        frame.client_message_id = client_message_id.to_owned();
        Ok(self.out.push(Frame::Error(frame))?)
    }

    fn on_send(&mut self, send: v1::Send) -> Flow {
        let v1::Send {
            conversation_id,
            client_message_id,
            content,
        } = send;
        let limits = &self.shared.config.limits;
        let checked = (|| {
            let conversation: ConversationId = parse_id("conversation_id", &conversation_id)?;
            let id: ClientMessageId = parse_id("client_message_id", &client_message_id)?;
            let content = content_from_wire(content)?;
            content.validate(limits)?;
            Ok((conversation, id, content))
        })();
        let (conversation, id, content) = match checked {
            Ok(checked) => checked,
            Err(e) => return self.reject(e, &client_message_id),
        };
        let command = SendCommand {
            actor: Some((&self.identity).into()),
            conversation_id: conversation.to_string(),
            client_message_id: id.to_string(),
            content: Some(content.into()),
            sent_at: Some(timestamp_to_wire(now())),
            change: None,
        };
        if command.encoded_len() + SEND_ENVELOPE_BYTES > MAX_PAYLOAD_BYTES {
            return self.reject(
                Invalid::new("content", "is too large to send"),
                &client_message_id,
            );
        }
        self.replies.push(Box::pin(peers::send(
            self.shared.clone(),
            conversation,
            id,
            command,
        )));
        Ok(())
    }

    fn on_update_lifecycle(&mut self, update: v1::UpdateLifecycleRequest) -> Flow {
        let v1::UpdateLifecycleRequest {
            conversation_id,
            client_change_id,
            change,
        } = update;
        let limits = &self.shared.config.limits;
        let checked = (|| {
            let conversation: ConversationId = parse_id("conversation_id", &conversation_id)?;
            let id: ClientMessageId = parse_id("client_change_id", &client_change_id)?;
            let change = required("change", change)?;
            LifecycleChange::try_from(change.clone())?.validate(limits)?;
            Ok((conversation, id, change))
        })();
        let (conversation, id, change) = match checked {
            Ok(checked) => checked,
            Err(e) => return self.reject(e, &client_change_id),
        };
        let command = SendCommand {
            actor: Some((&self.identity).into()),
            conversation_id: conversation.to_string(),
            client_message_id: id.to_string(),
            sent_at: Some(timestamp_to_wire(now())),
            change: Some(change),
            ..SendCommand::default()
        };
        self.replies.push(Box::pin(peers::update_lifecycle(
            self.shared.clone(),
            conversation,
            id,
            command,
        )));
        Ok(())
    }

    /// Passes a desk call to the desk, which checks it and the caller's
    /// right to make it.
    fn on_desk(&mut self, call: v1::DeskCall) -> Flow {
        if call.call.is_none() {
            return self.reject(
                Invalid::new("call", "is required: one of the calls of a DeskCall"),
                &call.client_call_id,
            );
        }
        let client_call_id = call.client_call_id.clone();
        let command = DeskCommand {
            actor: Some((&self.identity).into()),
            call: Some(call),
        };
        self.replies.push(Box::pin(peers::desk(
            self.shared.clone(),
            client_call_id,
            command,
        )));
        Ok(())
    }

    fn on_ack(&mut self, cursor: u64) -> Flow {
        let delivered = self.handoff.delivered().get();
        if cursor > delivered {
            return self.reject(
                Invalid::new(
                    "cursor",
                    format!("is past the last update this session sent, {delivered}"),
                ),
                "",
            );
        }
        if cursor <= self.acked {
            return Ok(());
        }
        self.acked = cursor;
        let ack = CursorAck {
            actor: Some((&self.identity).into()),
            device_id: self.device.to_string(),
            cursor,
        };
        self.replies
            .push(Box::pin(peers::ack(self.shared.clone(), ack)));
        Ok(())
    }

    fn on_read(&mut self, read: v1::Read) -> Flow {
        let conversation: ConversationId = match parse_id("conversation_id", &read.conversation_id)
        {
            Ok(conversation) => conversation,
            Err(e) => return self.reject(e, ""),
        };
        let command = MarkReadCommand {
            actor: Some((&self.identity).into()),
            conversation_id: conversation.to_string(),
            seq: read.seq,
        };
        self.replies
            .push(Box::pin(peers::mark_read(self.shared.clone(), command)));
        Ok(())
    }

    fn on_typing(&mut self, typing: v1::Typing) -> Flow {
        let conversation: ConversationId =
            match parse_id("conversation_id", &typing.conversation_id) {
                Ok(conversation) => conversation,
                Err(e) => return self.reject(e, ""),
            };
        if !self
            .typing
            .allow(conversation, typing.active, tokio::time::Instant::now())
        {
            return Ok(());
        }
        let signal = EphemeralSignal {
            actor: Some((&self.identity).into()),
            conversation_id: conversation.to_string(),
            at: Some(timestamp_to_wire(now())),
            signal: Some(ephemeral_signal::Signal::Typing(typing.active)),
        };
        self.replies
            .push(Box::pin(peers::typing(self.shared.clone(), signal)));
        Ok(())
    }
}
