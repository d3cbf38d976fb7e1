//! The bot's session: one task owns the gateway stream, reconnects it, and
//! matches the server's answers to the calls waiting for them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use natter_proto::v1::client_frame::Frame as Out;
use natter_proto::v1::gateway_service_client::GatewayServiceClient;
use natter_proto::v1::server_frame::Frame as In;
use natter_proto::v1::{self, desk_answer, desk_call, event, message_content};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::{Config, Error, Inbox, Incoming, Result};

/// Updates between acks: the gateway replays what was not acked.
const ACK_EVERY: u64 = 20;
/// Messages handed over and not yet taken by [`Bot::next`].
const INBOX: usize = 256;
/// Conversations whose owner and members' roles the bot remembers.
const REMEMBERED: usize = 10_000;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A bot connected to the gateway; see the crate's docs.
#[derive(Debug)]
pub struct Bot {
    calls: mpsc::Sender<Call>,
    inbox: Inbox,
    timeout: Duration,
    /// Numbers desk calls, whose keys only match answers to calls.
    calls_made: AtomicU64,
}

/// A frame to send and who waits for its answer.
#[derive(Debug)]
struct Call {
    key: String,
    frame: Out,
    answer: oneshot::Sender<Result<In>>,
}

impl Bot {
    /// Connects and says hello; fails if the gateway cannot be reached or
    /// refuses the token. Later drops are repaired in the background.
    pub async fn connect(config: Config) -> Result<Bot> {
        let (stream, out, me) = open(&config).await?;
        let (calls, requests) = mpsc::channel(64);
        let (deliver, inbox) = mpsc::channel(INBOX);
        let timeout = config.timeout;
        let session = Session {
            config,
            requests,
            deliver,
            waiting: HashMap::new(),
            known: HashMap::new(),
            unacked: 0,
            me,
        };
        tokio::spawn(session.run(stream, out));
        Ok(Bot {
            calls,
            inbox,
            timeout,
            calls_made: AtomicU64::new(0),
        })
    }

    /// The next message someone else wrote in one of the bot's
    /// conversations; `None` once the bot has stopped.
    pub async fn next(&mut self) -> Option<Incoming> {
        self.inbox.recv().await
    }

    /// Sends `content` to the conversation. `key` is the idempotency key:
    /// sending again with the same key stores the message once.
    pub async fn send(
        &self,
        conversation_id: &str,
        key: &str,
        content: v1::MessageContent,
    ) -> Result<v1::SendAck> {
        let frame = Out::Send(v1::Send {
            conversation_id: conversation_id.into(),
            client_message_id: key.into(),
            content: Some(content),
        });
        match self.call(key, frame).await? {
            In::SendAck(ack) => Ok(ack),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends a text.
    pub async fn say(&self, conversation_id: &str, key: &str, text: &str) -> Result<v1::SendAck> {
        let content = v1::MessageContent {
            kind: Some(message_content::Kind::Text(text.into())),
        };
        self.send(conversation_id, key, content).await
    }

    /// Passes control to the business's people (`pass_thread_control`):
    /// from then on the bot gets the messages but may not answer.
    pub async fn pass_to_people(&self, conversation_id: &str, key: &str) -> Result<v1::Lifecycle> {
        self.owner(conversation_id, key, v1::ThreadOwner::Inbox)
            .await
    }

    /// Takes control back (`take_thread_control`), where the server allows.
    pub async fn take_control(&self, conversation_id: &str, key: &str) -> Result<v1::Lifecycle> {
        self.owner(conversation_id, key, v1::ThreadOwner::Bot).await
    }

    /// Calls the support desk over the session, as `DeskService` does; a
    /// bot may read the tenant's FAQ ([`Bot::faq`]).
    pub async fn desk(&self, call: desk_call::Call) -> Result<desk_answer::Answer> {
        let key = format!(
            "natter-bot-desk-{}",
            self.calls_made.fetch_add(1, Ordering::Relaxed)
        );
        let frame = Out::Desk(v1::DeskCall {
            client_call_id: key.clone(),
            call: Some(call),
        });
        match self.call(&key, frame).await? {
            In::DeskAnswer(v1::DeskAnswer {
                answer: Some(answer),
                ..
            }) => Ok(answer),
            other => Err(unexpected(&other)),
        }
    }

    /// The tenant's whole FAQ, page by page.
    pub async fn faq(&self) -> Result<Vec<v1::FaqEntry>> {
        let mut entries = Vec::new();
        let mut page_token = String::new();
        loop {
            let call = desk_call::Call::ListFaqEntries(v1::ListFaqEntriesRequest {
                page_size: 0,
                page_token,
            });
            let desk_answer::Answer::ListFaqEntries(page) = self.desk(call).await? else {
                return Err(unexpected(&In::DeskAnswer(v1::DeskAnswer::default())));
            };
            entries.extend(page.entries);
            if page.next_page_token.is_empty() {
                return Ok(entries);
            }
            page_token = page.next_page_token;
        }
    }

    async fn owner(
        &self,
        conversation_id: &str,
        key: &str,
        owner: v1::ThreadOwner,
    ) -> Result<v1::Lifecycle> {
        let frame = Out::UpdateLifecycle(v1::UpdateLifecycleRequest {
            conversation_id: conversation_id.into(),
            client_change_id: key.into(),
            change: Some(v1::LifecycleChange {
                owner: owner.into(),
                ..v1::LifecycleChange::default()
            }),
        });
        match self.call(key, frame).await? {
            In::LifecycleUpdated(updated) => updated
                .result
                .and_then(|r| r.lifecycle)
                .ok_or_else(|| unexpected(&In::LifecycleUpdated(v1::LifecycleUpdated::default()))),
            other => Err(unexpected(&other)),
        }
    }

    async fn call(&self, key: &str, frame: Out) -> Result<In> {
        let (answer, answered) = oneshot::channel();
        let call = Call {
            key: key.into(),
            frame,
            answer,
        };
        self.calls.send(call).await.map_err(|_| Error::Stopped)?;
        match tokio::time::timeout(self.timeout, answered).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout(self.timeout)),
        }
    }
}

fn unexpected(frame: &In) -> Error {
    Error::Server {
        code: tonic::Code::Internal as i32,
        reason: "UNEXPECTED_ANSWER".into(),
        message: format!("the gateway answered with {frame:?}"),
    }
}

/// What the bot knows of a conversation from its updates.
#[derive(Debug, Default)]
struct Known {
    bot_answers: bool,
    roles: HashMap<String, v1::Role>,
}

struct Session {
    config: Config,
    requests: mpsc::Receiver<Call>,
    deliver: mpsc::Sender<Incoming>,
    /// Calls sent on the current connection, by key.
    waiting: HashMap<String, oneshot::Sender<Result<In>>>,
    known: HashMap<String, Known>,
    unacked: u64,
    /// The bot's own user id, from the welcome.
    me: String,
}

type Outbox = mpsc::Sender<v1::ClientFrame>;

/// Connects, says hello from `config.cursor`, and waits for the welcome;
/// returns the session and the user the token names.
async fn open(config: &Config) -> Result<(Streaming<v1::ServerFrame>, Outbox, String)> {
    let channel = tonic::transport::Endpoint::from_shared(config.gateway.clone())
        .map_err(|e| Error::Connect(format!("{:?}: {e}", config.gateway)))?
        .connect()
        .await
        .map_err(|e| Error::Connect(e.to_string()))?;
    let mut client = GatewayServiceClient::new(channel);
    let (out, frames) = mpsc::channel(64);
    let hello = Out::Hello(v1::Hello {
        token: config.token.clone(),
        device_id: config.device_id.clone(),
        cursor: config.cursor,
        device_label: "natter-bot".into(),
    });
    out.send(v1::ClientFrame { frame: Some(hello) })
        .await
        .map_err(|_| Error::Connect("the session closed".into()))?;
    let mut stream = client
        .connect(ReceiverStream::new(frames))
        .await
        .map_err(|status| Error::Refused(status.message().to_owned()))?
        .into_inner();
    match stream.next().await {
        Some(Ok(v1::ServerFrame {
            frame: Some(In::Welcome(welcome)),
        })) => Ok((stream, out, welcome.user_id)),
        Some(Ok(v1::ServerFrame {
            frame: Some(In::Error(e)),
        })) => Err(Error::Refused(e.message)),
        Some(Ok(other)) => Err(Error::Refused(format!("no welcome: {other:?}"))),
        Some(Err(status)) => Err(Error::Refused(status.message().to_owned())),
        None => Err(Error::Refused(
            "the session closed before the welcome".into(),
        )),
    }
}

impl Session {
    async fn run(mut self, mut stream: Streaming<v1::ServerFrame>, mut out: Outbox) {
        loop {
            if !self.serve(&mut stream, &out).await {
                return;
            }
            // Calls on the lost connection may or may not have landed: the
            // caller retries with the same key.
            for (_, answer) in self.waiting.drain() {
                let _ = answer.send(Err(Error::Connect("the session dropped".into())));
            }
            let mut backoff = BACKOFF_MIN;
            (stream, out) = loop {
                let jitter = backoff.mul_f64(fastrand::f64() / 2.0);
                tokio::time::sleep(backoff / 2 + jitter).await;
                if self.deliver.is_closed() {
                    return;
                }
                match open(&self.config).await {
                    Ok((stream, out, _)) => break (stream, out),
                    Err(e) => {
                        tracing::warn!(error = %e, "the bot cannot reconnect yet");
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            };
        }
    }

    /// Serves one connection; false once the bot is dropped.
    async fn serve(&mut self, stream: &mut Streaming<v1::ServerFrame>, out: &Outbox) -> bool {
        loop {
            tokio::select! {
                call = self.requests.recv() => {
                    let Some(call) = call else { return false };
                    if out.send(v1::ClientFrame { frame: Some(call.frame) }).await.is_err() {
                        let _ = call.answer.send(Err(Error::Connect("the session dropped".into())));
                        return true;
                    }
                    self.waiting.insert(call.key, call.answer);
                }
                frame = stream.next() => {
                    let Some(Ok(v1::ServerFrame { frame: Some(frame) })) = frame else {
                        return true;
                    };
                    if !self.take(frame, out).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Takes one frame from the server; false once the bot is dropped.
    async fn take(&mut self, frame: In, out: &Outbox) -> bool {
        let key = match &frame {
            In::SendAck(ack) => Some(ack.client_message_id.clone()),
            In::LifecycleUpdated(updated) => Some(updated.client_change_id.clone()),
            In::DeskAnswer(answer) => Some(answer.client_call_id.clone()),
            In::Error(e) if !e.client_message_id.is_empty() => Some(e.client_message_id.clone()),
            _ => None,
        };
        if let Some(answer) = key.and_then(|k| self.waiting.remove(&k)) {
            let _ = answer.send(match frame {
                In::Error(e) => Err(e.into()),
                frame => Ok(frame),
            });
            return true;
        }
        match frame {
            In::Update(update) => {
                self.config.cursor = update.cursor;
                let Some(kind) = update.event.and_then(|e| e.kind) else {
                    return true;
                };
                if let Some(incoming) = self.learn(kind, update.cursor)
                    && self.deliver.send(incoming).await.is_err()
                {
                    return false;
                }
                self.unacked += 1;
                if self.unacked >= ACK_EVERY {
                    self.unacked = 0;
                    let ack = Out::Ack(v1::Ack {
                        cursor: self.config.cursor,
                    });
                    let _ = out.send(v1::ClientFrame { frame: Some(ack) }).await;
                }
            }
            In::ResyncRequired(resync) => {
                tracing::warn!(
                    from = self.config.cursor,
                    to = resync.cursor,
                    "the bot was too far behind: updates between were skipped"
                );
                self.config.cursor = resync.cursor;
            }
            In::Error(e) => {
                tracing::warn!(code = e.code, reason = %e.reason, message = %e.message, "the gateway reports an error")
            }
            _ => {}
        }
        true
    }

    /// Remembers what an event says of its conversation; a message of
    /// someone else's is to be handed over.
    fn learn(&mut self, kind: event::Kind, cursor: u64) -> Option<Incoming> {
        if self.known.len() >= REMEMBERED {
            // Forgetting costs a bot that answers where it may not a
            // refusal, nothing worse.
            self.known.clear();
        }
        match kind {
            event::Kind::MembershipChange(change) => {
                let role = change.role();
                let known = self
                    .known
                    .entry(change.conversation_id)
                    .or_insert_with(bot_first);
                known.roles.insert(change.user_id, role);
                None
            }
            event::Kind::Message(message) => {
                let known = self
                    .known
                    .entry(message.conversation_id.clone())
                    .or_insert_with(bot_first);
                if let Some(message_content::Kind::Activity(lifecycle)) =
                    message.content.as_ref().and_then(|c| c.kind.as_ref())
                {
                    known.bot_answers = lifecycle.owner() != v1::ThreadOwner::Inbox;
                }
                let role = known.roles.get(&message.sender_id).copied();
                (message.sender_id != self.me).then(|| Incoming {
                    bot_answers: known.bot_answers,
                    role,
                    message,
                    cursor,
                })
            }
            _ => None,
        }
    }
}

/// A conversation the bot has seen nothing of: bots answer until told not
/// to (the default owner).
fn bot_first() -> Known {
    Known {
        bot_answers: true,
        roles: HashMap::new(),
    }
}
