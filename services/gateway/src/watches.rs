//! The conversations a session watches (`watch` frames).
//!
//! Watching a conversation is to its messages what the session is to the
//! user's update log: the gateway subscribes to the conversation's room
//! subject first, then pages through the messages after the device's seq
//! (storage checks membership on every page), and a `Handoff` by seq joins
//! the two, so the device gets every message once, in order, then live.
//! In big rooms this is the only way new messages reach devices.
//!
//! Pages are fetched one at a time for all of a session's watches, each
//! once the outbound queue has room for it, so catching up several
//! conversations never crowds out the session's other frames.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::StreamExt;
use natter_auth::Identity;
use natter_bus::{Incoming, Subscription};
use natter_contract::subjects;
use natter_core::handoff::{Handoff, Step};
use natter_core::{ConversationId, Message, Seq};
use natter_proto::bus::v1::{MessagesPage, MessagesQuery};
use natter_proto::status;
use natter_proto::v1::{self, Watching, server_frame::Frame};
use prost::Message as _;
use tokio_stream::StreamMap;
use tonic::Status;

use crate::Shared;
use crate::outbound::Outbound;
use crate::peers;
use crate::stop::{Stop, unavailable};

/// What a fetch brings back: the page, and for a watch's first fetch the
/// subscription to its live messages, made before the page was asked for.
type Fetched = (Option<Subscription>, Result<MessagesPage, Status>);

/// One fetch in flight.
struct Pending {
    conversation: ConversationId,
    generation: u64,
    future: Pin<Box<dyn Future<Output = Result<Fetched, Stop>> + Send>>,
}

/// One watched conversation.
struct Room {
    /// Which `watch` this is: a page asked for by an earlier watch of the
    /// same conversation is dropped.
    generation: u64,
    handoff: Handoff<Message>,
    /// The backlog was replayed and `watching` sent.
    caught_up: bool,
}

/// A session's watches. Allocated on the first `watch`.
pub(crate) struct Watches {
    shared: Arc<Shared>,
    out: Outbound,
    identity: Identity,
    rooms: HashMap<ConversationId, Room>,
    live: StreamMap<ConversationId, Subscription>,
    /// Watches waiting to fetch their next page, oldest first.
    queue: VecDeque<(ConversationId, u64)>,
    fetch: Option<Pending>,
    generations: u64,
}

/// What the session must send for a watch event: frames, or the end of the
/// session.
pub(crate) type Frames = Result<Vec<Frame>, Stop>;

/// What happened to a watch.
pub(crate) enum Event {
    Fetched(ConversationId, u64, Result<Fetched, Stop>),
    Live(ConversationId, Incoming),
}

impl Watches {
    pub(crate) fn new(shared: Arc<Shared>, out: Outbound, identity: Identity) -> Self {
        Self {
            shared,
            out,
            identity,
            rooms: HashMap::new(),
            live: StreamMap::new(),
            queue: VecDeque::new(),
            fetch: None,
            generations: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.rooms.len()
    }

    pub(crate) fn contains(&self, conversation: ConversationId) -> bool {
        self.rooms.contains_key(&conversation)
    }

    /// Starts (or restarts) watching `conversation` after `after`.
    pub(crate) fn watch(&mut self, conversation: ConversationId, after: Seq, max_held: usize) {
        self.unwatch(conversation);
        self.generations += 1;
        // The first step is always a fetch of the backlog.
        let (handoff, _) = Handoff::start(after, max_held);
        self.rooms.insert(
            conversation,
            Room {
                generation: self.generations,
                handoff,
                caught_up: false,
            },
        );
        self.queue.push_back((conversation, self.generations));
        self.start_fetch();
    }

    /// Stops watching `conversation`; a page in flight for it is dropped
    /// when it comes.
    pub(crate) fn unwatch(&mut self, conversation: ConversationId) {
        if self.rooms.remove(&conversation).is_some() {
            self.live.remove(&conversation);
            self.queue.retain(|(c, _)| *c != conversation);
        }
    }

    /// Starts the next queued fetch if none is in flight.
    fn start_fetch(&mut self) {
        if self.fetch.is_some() {
            return;
        }
        while let Some((conversation, generation)) = self.queue.pop_front() {
            let Some(room) = self.rooms.get(&conversation) else {
                continue;
            };
            if room.generation != generation {
                continue;
            }
            let query = MessagesQuery {
                actor: Some((&self.identity).into()),
                conversation_id: conversation.to_string(),
                after_seq: room.handoff.delivered().get(),
                limit: u32::try_from(self.shared.config.watch_page_size()).unwrap_or(u32::MAX),
            };
            // The first fetch subscribes; its page brings the subscription.
            let subscribe = (!self.live.contains_key(&conversation))
                .then(|| subjects::room(&self.identity.tenant, conversation));
            self.fetch = Some(Pending {
                conversation,
                generation,
                future: Box::pin(fetch(
                    self.shared.clone(),
                    self.out.clone(),
                    subscribe,
                    query,
                )),
            });
            return;
        }
    }

    /// The next answer to a fetch or live message; pending while nothing
    /// is watched. A poll function rather than an `async fn`, so waiting
    /// on it adds nothing to the size of every session's task.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if let Some(pending) = self.fetch.as_mut()
            && let Poll::Ready(fetched) = pending.future.as_mut().poll(cx)
        {
            let answered = Event::Fetched(pending.conversation, pending.generation, fetched);
            self.fetch = None;
            return Poll::Ready(answered);
        }
        if !self.live.is_empty()
            && let Poll::Ready(Some((conversation, incoming))) = self.live.poll_next_unpin(cx)
        {
            return Poll::Ready(Event::Live(conversation, incoming));
        }
        Poll::Pending
    }

    /// Handles what [`Self::poll_next`] returned: the frames to send.
    pub(crate) fn on_event(&mut self, event: Event) -> Frames {
        let frames = match event {
            Event::Fetched(conversation, generation, fetched) => {
                self.on_fetched(conversation, generation, fetched?)
            }
            Event::Live(conversation, incoming) => self.on_live(conversation, incoming),
        };
        self.start_fetch();
        frames
    }

    /// A fetched page (or its failure) for `conversation`.
    fn on_fetched(
        &mut self,
        conversation: ConversationId,
        generation: u64,
        fetched: Fetched,
    ) -> Frames {
        let Some(room) = self
            .rooms
            .get_mut(&conversation)
            .filter(|room| room.generation == generation)
        else {
            return Ok(Vec::new());
        };
        let (subscription, page) = fetched;
        let page = match page.and_then(|page| match page.failure {
            Some(failure) => Err(status::from_failure(failure)),
            None => Ok(page),
        }) {
            Ok(page) => page,
            Err(status) => {
                tracing::info!(%conversation, code = ?status.code(), message = status.message(), "watch refused");
                self.unwatch(conversation);
                return Ok(vec![refused(&status, conversation)]);
            }
        };
        if let Some(subscription) = subscription {
            self.live.insert(conversation, subscription);
        }
        let messages = peers::readable(page.messages, "a message")?;
        let steps = room.handoff.on_page(messages, page.complete);
        self.steps(conversation, steps)
    }

    /// A live frame on a room subject.
    fn on_live(&mut self, conversation: ConversationId, incoming: Incoming) -> Frames {
        let message = match v1::ServerFrame::decode(incoming.payload) {
            Ok(v1::ServerFrame {
                frame: Some(Frame::Message(message)),
            }) => Message::try_from(message),
            other => {
                tracing::warn!(frame = ?other, "unexpected room frame dropped");
                return Ok(Vec::new());
            }
        };
        let Some(room) = self.rooms.get_mut(&conversation) else {
            return Ok(Vec::new());
        };
        match message {
            Ok(message) => {
                let steps = room.handoff.on_live(message);
                self.steps(conversation, steps)
            }
            // Dropping it leaves a gap the next page fills.
            Err(e) => {
                tracing::warn!(error = %e, "unreadable room message dropped");
                Ok(Vec::new())
            }
        }
    }

    /// Turns what a watch's handoff asks for into frames and fetches.
    fn steps(&mut self, conversation: ConversationId, steps: Vec<Step<Message>>) -> Frames {
        let Some(room) = self.rooms.get_mut(&conversation) else {
            return Ok(Vec::new());
        };
        let mut frames = Vec::new();
        for step in steps {
            match step {
                Step::Deliver(messages) => {
                    frames.extend(messages.into_iter().map(|m| Frame::Message(m.into())));
                }
                Step::Fetch { .. } => self.queue.push_back((conversation, room.generation)),
            }
        }
        if !room.caught_up && room.handoff.is_live() {
            room.caught_up = true;
            frames.push(Frame::Watching(Watching {
                conversation_id: conversation.to_string(),
                last_seq: room.handoff.delivered().get(),
            }));
        }
        Ok(frames)
    }
}

/// The `error` frame of a watch that failed: it names the conversation.
pub(crate) fn refused(status: &Status, conversation: ConversationId) -> Frame {
    let mut frame = status::error_frame(status, None);
    frame.conversation_id = conversation.to_string();
    Frame::Error(frame)
}

/// Subscribes to the room subject if asked, then fetches one page once the
/// outbound queue has room for it.
async fn fetch(
    shared: Arc<Shared>,
    out: Outbound,
    subscribe: Option<String>,
    query: MessagesQuery,
) -> Result<Fetched, Stop> {
    let subscription = match subscribe {
        Some(subject) => Some(shared.bus.subscribe(&subject, None).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot subscribe to a room");
            Stop::Fail(unavailable(
                "cannot subscribe to the conversation; reconnect",
            ))
        })?),
        None => None,
    };
    out.room_for(query.limit as usize).await?;
    let page = natter_contract::request(
        shared.bus.as_ref(),
        subjects::MESSAGES,
        &query,
        shared.config.peer_timeout,
    )
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, "message page request to storage failed");
        unavailable("storage did not answer; watch again")
    });
    Ok((subscription, page))
}
