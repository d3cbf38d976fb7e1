//! The storage service: conversations, their members and their messages.
//! It is the only writer of conversation state (`ConversationStore`).
//!
//! Three faces, all started by [`run`]:
//!
//! - gRPC `natter.v1.ConversationService`, for callers;
//! - the sequencers (`sequencer.rs`): for each partition of conversations
//!   this process holds a lease on, a task behind the partition's request
//!   subject that numbers, writes and announces every message, whether a
//!   device sent it through a gateway or a backend through `SendMessage`,
//!   so ordering and idempotency have one home;
//! - bus responders for `MARK_READ`, `MEMBERS`, `MESSAGES` and
//!   `ADD_MEMBERS` (queue group `storage`).
//!
//! Every stored change is announced as a `ConversationEvent` on the
//! durable EVENTS stream (partitioned by conversation, dedup id
//! `Event::key`), which fanout turns into entries of each member's update
//! log.
//!
//! # When an announcement is lost
//!
//! The store and the stream are separate systems, so a process can die
//! after a change is stored and before its event is published. What
//! repairs that:
//!
//! - **Messages**: a sender is answered only after the message is stored
//!   and its event published; until then it retries with the same client
//!   message id, the sequencer recognises the key (from memory, or from
//!   the conversation's newest messages after a restart or a takeover) and
//!   publishes the event again. A sender that gives up for good leaves a
//!   stored, unannounced message: its members' devices see it only when
//!   they read the conversation's history.
//! - **Creates with a proposed id**: a retry by the same caller with the
//!   same subject and members returns the stored conversation (instead of
//!   ALREADY_EXISTS) and publishes its Joined events again.
//! - **Adds**: a retry finds the users already members and publishes their
//!   Joined events again.
//!
//! Both re-publish only while the EVENTS stream still recognises the
//! event's key as a duplicate (half its duplicate window, two minutes by
//! default), so a repeated call much later adds no second "joined" entry to
//! anyone's log. A gRPC call whose events cannot be published answers
//! UNAVAILABLE although the change is stored: retrying it is safe and is
//! what publishes them.
//!
//! Not repaired: a remove whose process dies between the store write and
//! the publish (the membership row is gone, so a retry sees nothing to
//! announce), and likewise a raised read marker (a repeated mark-read is a
//! no-op). Closing those needs an outbox written in the same store
//! transaction as the change, which the `ConversationStore` trait does not
//! offer yet; the member list and the watermark themselves are correct,
//! only members' devices miss the update until they refetch.
//!
//! # Create idempotency
//!
//! `CreateConversation` with a proposed `conversation_id` that is taken
//! returns the existing conversation when the request is a retry of the
//! one that created it: same caller, same subject, and every requested
//! member (the caller included) still a member with the requested role
//! since the creation. Otherwise it is ALREADY_EXISTS with reason CONFLICT.

mod grpc;
mod kept;
mod policy;
mod responders;
mod sequencer;
mod storage;

use std::fmt;
use std::sync::Arc;

use natter_auth::Verifier;
use natter_bus::Bus;
use natter_contract::{Holders, subjects};
use natter_proto::v1::conversation_service_server::ConversationServiceServer;
use natter_server::{GrpcServer, Settings, StartError};
use natter_store::ConversationStore;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::grpc::ConversationApi;
use crate::kept::Kept;
use crate::storage::Storage;

/// The queue group of storage's bus responders.
pub const QUEUE_GROUP: &str = "storage";

/// What the storage service runs on.
pub struct Deps {
    pub bus: Arc<dyn Bus>,
    pub verifier: Arc<Verifier>,
    pub conversations: Arc<dyn ConversationStore>,
    /// Unique per process; names this process's reply subject for sends.
    pub instance: String,
}

impl fmt::Debug for Deps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deps")
            .field("bus", &self.bus)
            .field("verifier", &self.verifier)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// Runs the service on `listener` until `shutdown`: the sequencers, the
/// bus responders and the gRPC API. The responders are subscribed before
/// gRPC reports SERVING. On shutdown gRPC drains for the grace period,
/// then the bus-side work stops (each consumer after settling the command
/// in hand).
pub async fn run(
    settings: &Settings,
    deps: Deps,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let readiness = deps.bus.clone();
    let reachable: Arc<dyn natter_store::LeaseStore> = deps.conversations.clone();
    let storage = Arc::new(Storage {
        store: deps.conversations,
        bus: deps.bus.clone(),
        topology: settings.topology(),
        limits: settings.limits(),
        kept: (!deps.bus.keeps_streams()).then(Kept::default),
    });
    let sends = Holders::new(deps.bus.clone(), storage.topology);
    let mark_read = deps
        .bus
        .subscribe(subjects::MARK_READ, Some(QUEUE_GROUP))
        .await?;
    let members = deps
        .bus
        .subscribe(subjects::MEMBERS, Some(QUEUE_GROUP))
        .await?;
    let messages = deps
        .bus
        .subscribe(subjects::MESSAGES, Some(QUEUE_GROUP))
        .await?;
    let add_members = deps
        .bus
        .subscribe(subjects::ADD_MEMBERS, Some(QUEUE_GROUP))
        .await?;

    // Stops the bus-side work when the caller shuts down, or when gRPC
    // fails on its own.
    let stop = shutdown.child_token();
    let mut tasks = JoinSet::new();
    tasks.spawn(responders::respond(
        storage.clone(),
        mark_read,
        stop.clone(),
        responders::mark_read,
    ));
    tasks.spawn(responders::respond(
        storage.clone(),
        members,
        stop.clone(),
        responders::members,
    ));
    tasks.spawn(responders::respond(
        storage.clone(),
        messages,
        stop.clone(),
        responders::messages,
    ));
    tasks.spawn(responders::respond(
        storage.clone(),
        add_members,
        stop.clone(),
        responders::add_members,
    ));
    tasks.spawn(sequencer::run(storage.clone(), deps.instance, stop.clone()));

    let api = ConversationApi::new(storage, sends, deps.verifier);
    GrpcServer::new(natter_proto::FILE_DESCRIPTOR_SET)?
        .ready_while_connected(readiness)
        .max_connection_age(settings.grpc_max_connection_age())
        .ready_while_reachable(reachable)
        .add_service(ConversationServiceServer::new(api))
        .serve_with_work(listener, &shutdown, settings.grace_period(), stop, tasks)
        .await?;
    Ok(())
}

/// Starts the service from its settings: connects the bus, opens the
/// store, makes sure the streams exist, binds `storage.grpc_addr`, and runs
/// until `shutdown`.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> Result<(), StartError> {
    let infra = settings.infra("storage").await?;
    let stores = settings.open_stores().await?;
    let listener = natter_server::bind("storage", &settings.storage.grpc_addr).await?;
    let deps = Deps {
        bus: infra.bus,
        verifier: infra.verifier,
        conversations: stores.conversations,
        instance: infra.instance,
    };
    run(&settings, deps, listener, shutdown).await
}
