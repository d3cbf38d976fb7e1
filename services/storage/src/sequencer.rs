//! The sequencers: storage holds partitions of conversations through
//! leases, and for each partition it holds, a task runs a
//! [`natter_core::sequencer::Sequencer`] behind the partition's request
//! subject. A send is a request; the task checks the sender, numbers the
//! message in memory, writes it with the others that arrived meanwhile
//! (one store write per batch), publishes the batch's events on EVENTS in
//! one durable batch, and only then answers each sender.
//!
//! Partitions are held through leases (`natter_server::partitions`), so
//! two processes never number one partition at once; a deposed holder's
//! write that lands late anyway loses to its successor's, whose version
//! (the clock, later) is higher. A write that ends after the holder
//! stopped trusting its lease is not acknowledged: its senders retry, and
//! the successor's window recognises what landed.

use std::hash::RandomState;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use natter_bus::Incoming;
use natter_contract::{encode, subjects};
use natter_core::sequencer::{
    ConversationKey, NewChange, Refusal, Sequencer, SequencerConfig, Step, Stored, Submission,
};
use natter_core::{
    ClientMessageId, ConversationId, Event, Lifecycle, LifecycleChange, Message, MessageId,
    NewMessage, Role, Seq, TenantId,
};
use natter_proto::bus::v1::{SendCommand, SendOutcome, send_outcome};
use natter_proto::convert::{actor_from_wire, content_from_wire, parse_id, timestamp_from_wire};
use natter_proto::status::{self, reason, to_failure};
use natter_server::clock::Versions;
use natter_server::partitions::{self, trusted};
use natter_server::store_status;
use natter_store::{Announcement, Lease, LeaseStore, MessageRange, StoreError};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::storage::{Announced, Storage, invalid, unavailable};
use crate::{kept, policy};

/// Sends whose sender is being checked at once, per partition.
const CHECKS_IN_FLIGHT: usize = 256;
/// Batches waiting to be announced, per partition.
const ANNOUNCE_QUEUE: usize = 64;

/// What a sender is told when its message may or may not be stored.
const RETRY_SEND: &str = "the message may not be stored yet; retry with the same client_message_id";
/// What a sender is told when its message is stored but not announced.
const RETRY_UNANNOUNCED: &str =
    "the message is stored but could not be announced; retry with the same client_message_id";

/// The scope of storage's leases.
const SCOPE: &str = "storage";

/// Holds what partitions it can and serves them until `shutdown`; then
/// lets every partition's work settle and gives the leases up.
pub(crate) async fn run(storage: Arc<Storage>, owner: String, shutdown: CancellationToken) {
    let leases: Arc<dyn LeaseStore> = storage.store.clone();
    let count = storage.topology.partitions.get();
    partitions::hold(leases, SCOPE, owner, count, shutdown, |lease, stop| {
        serve(storage.clone(), lease, stop)
    })
    .await;
}

/// A sender to answer: the reply subject of its request.
type Reply = String;

/// A send checked and ready to number, or refused.
type Checked = Result<(TenantId, Submission, Reply), (Reply, Status)>;

/// What the partition's helpers report back to its loop.
enum Done {
    /// A conversation's newest messages and its lifecycle.
    Loaded(
        ConversationKey,
        Result<(Vec<Message>, Lifecycle), StoreError>,
    ),
    Written(Result<(), StoreError>),
}

/// What the announcer does, in the order the loop asked.
enum Announce {
    /// A write's messages, and its EVENTS message made when it was written.
    Stored(Vec<Stored<Reply>>, Option<Announced>),
    Duplicate {
        key: ConversationKey,
        seq: Seq,
        reply: Reply,
    },
}

/// Serves one partition until `stop` or until its lease can no longer be
/// trusted.
async fn serve(storage: Arc<Storage>, lease: watch::Receiver<Lease>, stop: CancellationToken) {
    let partition = lease.borrow().partition;
    // Where the bus keeps no streams, what the previous holder kept goes
    // out before any new send, and what this holder keeps is forgotten
    // as fanout takes it.
    if let Err(e) = kept::announce_kept(&storage, partition).await {
        tracing::error!(partition, error = %e, "cannot announce what was kept");
        return;
    }
    let forgetting = stop.child_token();
    tokio::spawn(kept::forget_consumed(
        storage.clone(),
        partition,
        forgetting.clone(),
    ));
    let _forgetting = forgetting.drop_guard();
    let mut requests = match storage
        .bus
        .subscribe(&subjects::sequencer(partition), None)
        .await
    {
        Ok(requests) => requests,
        Err(e) => {
            tracing::error!(partition, error = %e, "cannot take requests");
            return;
        }
    };
    let config = SequencerConfig::default();
    let mut sequencer: Sequencer<Reply, RandomState> =
        Sequencer::new(config, storage.limits.clone(), RandomState::new());
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let (announce, announcements) = mpsc::channel(ANNOUNCE_QUEUE);
    let announcer = tokio::spawn(announce_in_order(storage.clone(), announcements));
    let mut shell = Shell {
        storage: &storage,
        done: done_tx,
        announce,
        window: config.window,
        versions: Versions::default(),
        writing: None,
        meters: Meters::new(),
    };
    let mut checks: FuturesOrdered<BoxFuture<'static, Checked>> = FuturesOrdered::new();
    let mut trust = tokio::time::interval(Duration::from_millis(250));
    loop {
        let steps = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = trust.tick() => {
                if trusted(&lease.borrow()) { continue }
                tracing::warn!(partition, "lease about to lapse; stepping down");
                break;
            }
            Some(done) = done.recv() => match done {
                Done::Loaded(key, Ok((newest, lifecycle))) => {
                    sequencer.loaded(&key, &newest, lifecycle)
                }
                Done::Loaded(key, Err(e)) => {
                    tracing::warn!(error = %e, "cannot load a conversation's newest messages");
                    sequencer.load_failed(&key)
                }
                Done::Written(result) => {
                    let ok = match result {
                        Ok(()) => trusted(&lease.borrow()),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot write messages");
                            false
                        }
                    };
                    if !ok {
                        shell.write_failed();
                    }
                    sequencer.written(ok)
                }
            },
            Some(checked) = checks.next(), if !checks.is_empty() => match checked {
                Ok((tenant, new, reply)) => sequencer.submit(tenant, new, reply),
                Err((reply, status)) => {
                    answer(&storage, &reply, failure(&status)).await;
                    continue;
                }
            },
            incoming = requests.next(), if checks.len() < CHECKS_IN_FLIGHT => {
                let Some(incoming) = incoming else { break };
                let Some(reply) = incoming.reply.clone() else {
                    tracing::warn!("send without a reply subject dropped");
                    continue;
                };
                checks.push_back(check(storage.clone(), incoming, reply).boxed());
                continue;
            }
        };
        shell.carry_out(steps).await;
    }
    // Stop taking sends and give back what is not being written; the
    // write under way is answered (or given back) and announced before
    // the partition can change hands.
    drop(requests);
    let abandoned = sequencer.abandon();
    shell.carry_out(abandoned).await;
    while sequencer.writing() {
        match done.recv().await {
            Some(Done::Written(result)) => {
                let ok = result.is_ok() && trusted(&lease.borrow());
                if !ok {
                    shell.write_failed();
                }
                let settled = sequencer.written(ok);
                shell.carry_out(settled).await;
            }
            Some(Done::Loaded(..)) => {}
            None => break,
        }
    }
    drop(shell);
    if let Err(e) = announcer.await {
        tracing::error!(partition, error = %e, "the announcer failed");
    }
}

/// The loop's side of the I/O the sequencer asks for.
struct Shell<'a> {
    storage: &'a Arc<Storage>,
    done: mpsc::UnboundedSender<Done>,
    announce: mpsc::Sender<Announce>,
    window: usize,
    /// Versions of the writes, where nothing is kept (else the ledger's).
    versions: Versions,
    /// The EVENTS message of the write under way.
    writing: Option<Announced>,
    meters: Meters,
}

/// Taken once per partition: recording is then an atomic operation.
struct Meters {
    /// Messages (activities included) written and announced.
    stored: metrics::Counter,
    /// How long each batch's write to the store took.
    write_seconds: metrics::Histogram,
}

impl Meters {
    fn new() -> Self {
        Self {
            stored: natter_telemetry::counter(
                "natter_storage_messages_stored_total",
                "Messages, activities included, written to the store and announced.",
            ),
            write_seconds: natter_telemetry::seconds(
                "natter_storage_write_seconds",
                "How long one batch of messages took to write to the store.",
            ),
        }
    }
}

impl Shell<'_> {
    async fn carry_out(&mut self, steps: Vec<Step<Reply>>) {
        for step in steps {
            match step {
                Step::Load(key) => {
                    let (storage, done) = (self.storage.clone(), self.done.clone());
                    let limit = u32::try_from(self.window).unwrap_or(u32::MAX);
                    tokio::spawn(async move {
                        let store = &storage.store;
                        let newest = MessageRange::Before {
                            before: None,
                            limit,
                        };
                        let loaded = futures::try_join!(
                            store.list_messages(&key.0, key.1, newest),
                            store.lifecycle(&key.0, key.1),
                        );
                        let _ = done.send(Done::Loaded(key, loaded));
                    });
                }
                Step::Write(batch) => {
                    let (version, announcement) = self.announcement(&batch);
                    let (storage, done) = (self.storage.clone(), self.done.clone());
                    let write_seconds = self.meters.write_seconds.clone();
                    tokio::spawn(async move {
                        let started = std::time::Instant::now();
                        let written = storage
                            .store
                            .write_messages(&batch, announcement.as_ref(), version)
                            .await;
                        write_seconds.record(started.elapsed());
                        let _ = done.send(Done::Written(written));
                    });
                }
                Step::Stored(stored) => {
                    self.meters.stored.increment(stored.len() as u64);
                    let announced = self.writing.take();
                    let _ = self
                        .announce
                        .send(Announce::Stored(stored, announced))
                        .await;
                }
                Step::Duplicate { key, seq, waiter } => {
                    let duplicate = Announce::Duplicate {
                        key,
                        seq,
                        reply: waiter,
                    };
                    let _ = self.announce.send(duplicate).await;
                }
                Step::Retry(replies) => {
                    let retry = failure(&unavailable(RETRY_SEND));
                    for reply in replies {
                        answer(self.storage, &reply, retry.clone()).await;
                    }
                }
                Step::Unchanged { lifecycle, waiter } => {
                    let unchanged = send_outcome::Result::Unchanged(lifecycle.into());
                    answer(self.storage, &waiter, unchanged).await;
                }
                Step::Refused { why, waiter } => {
                    let status = match why {
                        Refusal::Invalid(why) => invalid(why),
                        Refusal::InboxOwns => status::failed_precondition(
                            reason::INBOX_HAS_CONTROL,
                            "people of the inbox have control of the conversation; \
                             a bot may send once control is passed back",
                        ),
                    };
                    answer(self.storage, &waiter, failure(&status)).await;
                }
            }
        }
    }
}

impl Shell<'_> {
    /// The version of a write of `batch`, and its EVENTS message, kept
    /// with it where the bus keeps no streams.
    fn announcement(&mut self, batch: &[(TenantId, Message)]) -> (u64, Option<Announcement>) {
        let events = batch
            .iter()
            .map(|(tenant, m)| (tenant.clone(), Event::Message(m.clone())))
            .collect();
        // One partition's conversations: one message.
        let Some((partition, message)) = self.storage.by_partition(events).pop() else {
            return (self.versions.next(), None);
        };
        let (version, announcement) = match &self.storage.kept {
            Some(kept) => {
                let version = kept.track(partition);
                let events = message.message.payload.to_vec();
                let announcement = Announcement {
                    partition,
                    version,
                    events,
                };
                (version, Some(announcement))
            }
            None => (self.versions.next(), None),
        };
        self.writing = Some(Announced {
            partition,
            message,
            kept: announcement.as_ref().map(|a| a.version),
        });
        (version, announcement)
    }

    /// The write under way failed or is not trusted: its senders retry,
    /// and its announcement will not be published.
    fn write_failed(&mut self) {
        if let (Some(kept), Some(writing)) = (&self.storage.kept, self.writing.take())
            && let Some(version) = writing.kept
        {
            kept.abandoned(writing.partition, version);
        }
    }
}

/// Announces stored messages on EVENTS and answers their senders, in the
/// order the partition stored them, so a conversation's events keep
/// their order on the stream.
async fn announce_in_order(storage: Arc<Storage>, mut queue: mpsc::Receiver<Announce>) {
    while let Some(next) = queue.recv().await {
        match next {
            Announce::Stored(stored, announced) => {
                let announced = match announced {
                    Some(announced) => storage.publish(vec![announced], RETRY_UNANNOUNCED).await,
                    None => {
                        let events = stored
                            .iter()
                            .map(|s| (s.tenant.clone(), Event::Message(s.message.clone())))
                            .collect();
                        storage.announce(events, RETRY_UNANNOUNCED).await
                    }
                };
                for s in stored {
                    let outcome = match &announced {
                        Ok(()) => stored_outcome(s.message, false),
                        Err(status) => failure(status),
                    };
                    for reply in s.waiters {
                        answer(&storage, &reply, outcome.clone()).await;
                    }
                }
            }
            Announce::Duplicate { key, seq, reply } => {
                let outcome = match duplicate(&storage, &key, seq).await {
                    Ok(message) => stored_outcome(message, true),
                    Err(status) => failure(&status),
                };
                answer(&storage, &reply, outcome).await;
            }
        }
    }
}

/// The message stored at `seq` under a retried key, announced again: the
/// first attempt may have died between the write and the announcement.
async fn duplicate(storage: &Storage, key: &ConversationKey, seq: Seq) -> Result<Message, Status> {
    let found = storage
        .store
        .list_messages(
            &key.0,
            key.1,
            MessageRange::After {
                after: Seq::new(seq.get() - 1),
                limit: 1,
            },
        )
        .await
        .map_err(store_status)?;
    let message = found
        .into_iter()
        .next()
        .filter(|m| m.seq == seq)
        .ok_or_else(|| unavailable(RETRY_SEND))?;
    let again = vec![(key.0.clone(), Event::Message(message.clone()))];
    storage.announce(again, RETRY_UNANNOUNCED).await?;
    Ok(message)
}

/// Checks a send before it is numbered: well-formed, and from someone who
/// may send to the conversation.
async fn check(storage: Arc<Storage>, incoming: Incoming, reply: Reply) -> Checked {
    match checked(&storage, &incoming.payload).await {
        Ok((tenant, new)) => Ok((tenant, new, reply)),
        Err(status) => Err((reply, status)),
    }
}

async fn checked(storage: &Storage, payload: &[u8]) -> Result<(TenantId, Submission), Status> {
    let command: SendCommand = natter_contract::decode(payload).map_err(|e| {
        tracing::error!(error = %e, "unreadable send command");
        status::internal(
            reason::SERVICE_MESSAGE_UNREADABLE,
            "storage could not read the send command",
        )
    })?;
    let sender = actor_from_wire(command.actor).map_err(invalid)?;
    let conversation_id: ConversationId =
        parse_id("conversation_id", &command.conversation_id).map_err(invalid)?;
    let client_message_id: ClientMessageId =
        parse_id("client_message_id", &command.client_message_id).map_err(invalid)?;
    let sent_at = timestamp_from_wire("sent_at", command.sent_at).map_err(invalid)?;
    let id = MessageId::generate();
    let sender_id = sender.user.clone();
    let (check, submission) = match command.change {
        Some(change) => {
            let change = LifecycleChange::try_from(change).map_err(invalid)?;
            change.validate(&storage.limits).map_err(invalid)?;
            let change = NewChange {
                id,
                conversation_id,
                sender_id,
                client_message_id,
                sent_at,
                change,
            };
            (
                policy::change_lifecycle(sender.role, &change.change),
                Submission::Change(change),
            )
        }
        None => {
            let content = content_from_wire(command.content).map_err(invalid)?;
            content.validate(&storage.limits).map_err(invalid)?;
            // What only the desk writes (payments) is taken from the desk
            // alone: no token may name its user (`natter_auth`), so a
            // client's session or SendMessage never sends as it.
            let from_desk =
                sender.role == Role::Service && sender.user.as_str() == natter_contract::DESK_USER;
            if !(from_desk && content.desk_writes()) {
                content.sendable().map_err(invalid)?;
            }
            let new = NewMessage {
                id,
                conversation_id,
                sender_id,
                client_message_id,
                sent_at,
                content,
            };
            let role = sender.role;
            (
                policy::read_or_send(role),
                Submission::Message { new, role },
            )
        }
    };
    let allowed = match check {
        policy::Check::Member => storage
            .store
            .member(&sender.tenant, conversation_id, &sender.user)
            .await
            .map_err(|e| match e {
                StoreError::Unavailable(_) => unavailable(RETRY_SEND),
                e => store_status(e),
            })?
            .is_some(),
        policy::Check::Allowed => {
            // A service need not be a member, but the conversation must be
            // its tenant's.
            storage
                .store
                .conversation(&sender.tenant, conversation_id)
                .await
                .map_err(store_status)?;
            true
        }
        policy::Check::Denied(why) => return Err(policy::role_not_allowed(why)),
    };
    if !allowed {
        return Err(policy::not_a_member());
    }
    Ok((sender.tenant, submission))
}

fn stored_outcome(message: Message, duplicate: bool) -> send_outcome::Result {
    send_outcome::Result::Stored(natter_proto::bus::v1::Stored {
        duplicate,
        message: Some(message.into()),
    })
}

fn failure(status: &Status) -> send_outcome::Result {
    send_outcome::Result::Failure(to_failure(status))
}

/// Best effort: a sender that misses its answer times out and retries
/// with the same client message id, which finds the stored message.
async fn answer(storage: &Storage, reply: &str, result: send_outcome::Result) {
    let outcome = SendOutcome {
        result: Some(result),
    };
    if let Err(e) = storage.bus.publish(reply, encode(&outcome)).await {
        tracing::warn!(error = %e, "cannot answer a send");
    }
}
