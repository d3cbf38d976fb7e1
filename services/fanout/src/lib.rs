//! The fan-out service: stateless, it expands each durable conversation
//! event to the users it concerns, tells watching devices of new messages,
//! and relays typing and presence.
//!
//! - **Durable events.** One consumer per partition of the EVENTS stream
//!   (durable name `fanout`) takes each delivery, the `ConversationEvents`
//!   of one write or change, in order (`events.rs`), and finds each
//!   event's recipients: for a message every current member, unless the
//!   room has more than `limits.big_room_members` members (then nobody);
//!   for a membership change or a read marker every member of a room of
//!   at most 100, and always the user it is about. Their `UserEvent`s go
//!   to sync as one `UserEvents` request per user partition they fall in
//!   (`sync.append.<n>`, to the holder of the partition), all at once. The
//!   delivery is acknowledged only once every holder has answered that
//!   its events are in their logs; any failure naks it to come back after
//!   a backoff, and the next attempt asks again: sync recognises events
//!   it has appended by their keys, so each log keeps one copy.
//! - **Watched conversations.** Every new message is also published once,
//!   at most once, on the conversation's room subject
//!   (`room.<tenant>.<conversation>`), for devices that watch it. In big
//!   rooms that is the only way new messages reach devices. See
//!   ARCHITECTURE.md, "Big rooms".
//! - **Ephemeral signals.** `EphemeralSignal`s (typing, presence, the
//!   desk's queue positions) on `fanout.ephemeral` (queue group `fanout`)
//!   and `FanoutService.PublishEphemeral` calls go to every other member
//!   as `ServerFrame`s, through the sync holder of each member partition
//!   (`sync.signals.<n>`), which knows the members' gateways. Stale ones
//!   (older than `fanout.typing_ttl_seconds`) and ones from non-members
//!   are dropped; nothing is stored.
//!
//! # Member lists and their consistency
//!
//! Members come from storage (`MembersQuery`, paged) and are cached per
//! conversation: at most 10,000 conversations and 1,000,000 members in all,
//! least recently used evicted first, each list reloaded after 5 seconds.
//! Membership events are applied to a cached list in place, before the
//! event itself is fanned out. What that gives:
//!
//! - A list is loaded as storage has it *now*, not as it was at the event
//!   being handled. When fanout is caught up the two agree. When it lags,
//!   a message may reach a user who joined after it was sent (who could
//!   read it in the history anyway), and miss one who left after it was
//!   sent. The lag, not the cache, decides how often that happens.
//! - Once loaded, a list moves in step with the events: membership
//!   changes travel on the same partition as the conversation's messages,
//!   in order, so every later event of this instance sees them applied.
//! - A partition can move to another fanout instance (its one delivery
//!   slot frees when a process dies or stalls). Changes the other instance
//!   handled are not in this instance's copy until the copy expires, so
//!   for up to 5 seconds after such a move a list can be that stale. The
//!   ephemeral path shares the cache and the same bound.
//! - A load that races a change (a typing signal loading the list while
//!   the consumer applies a change) is used but not cached, so the cache
//!   never goes back to the list from before the change.
//! - The user a membership change is about always gets it, even if the
//!   list has moved on (joined and already left again).
//!
//! # Cost per message
//!
//! A write of many messages to a conversation arrives as one EVENTS
//! delivery, and fanning it out costs one append request per partition its
//! recipients fall in (at most the topology's partition count), not one
//! per recipient and message, plus one core publish per message on the
//! room subject. The member list comes from the cache, and each event's
//! `UserEvent` is encoded once, with only the user id added per
//! recipient. Sync then appends one log entry per recipient and message:
//! the price of each device reading one ordered stream of everything
//! that concerns its user. That price grows with the room, so rooms over
//! `limits.big_room_members` members get messages only on the room
//! subject, and membership changes and read markers in rooms over 100
//! members reach only the user they are about: a message in a
//! 10,000-member room costs one publish, and filling the room one log
//! entry per member, once
//! (`a_ten_thousand_member_room_publishes_each_message_once_for_watchers`
//! in `tests/fanout.rs`).

mod directory;
mod ephemeral;
mod events;
mod grpc;
mod members;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use natter_auth::Verifier;
use natter_bus::Bus;
use natter_contract::{EVENTS, Holders, consume_partitions, subjects};
use natter_proto::v1::fanout_service_server::FanoutServiceServer;
use natter_server::clock::now;
use natter_server::{GrpcServer, Settings, StartError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::directory::Directory;
use crate::ephemeral::Relay;
use crate::events::Expander;
use crate::grpc::FanoutApi;
use crate::members::CacheLimits;
use crate::stats::Stats;

/// The durable consumer name on EVENTS, and the queue group on
/// `fanout.ephemeral`.
pub(crate) const CONSUMER: &str = natter_contract::EVENTS_CONSUMER;

/// How often the counters are logged.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// What the fan-out service runs on.
#[derive(Debug, Clone)]
pub struct Deps {
    pub bus: Arc<dyn Bus>,
    pub verifier: Arc<Verifier>,
    /// Unique per process; names this instance in logs.
    pub instance: String,
}

/// Consumes EVENTS, relays ephemeral signals and serves
/// `natter.v1.FanoutService` on `listener` until `shutdown`. Returns once
/// the gRPC calls have drained and the event being handled is settled.
pub async fn run(
    settings: &Settings,
    deps: Deps,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let readiness = deps.bus.clone();
    let limits = settings.limits();
    let stats = Arc::new(Stats::new(now()));
    let directory = Arc::new(Directory::new(
        deps.bus.clone(),
        CacheLimits::default(),
        limits.max_page_size,
        limits.max_members,
    ));
    let expander = Arc::new(Expander {
        bus: deps.bus.clone(),
        holders: Holders::new(deps.bus.clone(), settings.topology()),
        big_room_members: limits.big_room_members,
        directory: directory.clone(),
        stats: stats.clone(),
    });
    let relay = Arc::new(Relay {
        bus: deps.bus.clone(),
        holders: Holders::new(deps.bus.clone(), settings.topology()),
        directory: directory.clone(),
        stats: stats.clone(),
        ttl: Duration::from_secs(settings.fanout.typing_ttl_seconds),
    });
    // Subscribed before serving, so once the API answers, signals on the
    // bus are relayed too.
    let signals = deps
        .bus
        .subscribe(subjects::EPHEMERAL, Some(CONSUMER))
        .await?;

    let work = shutdown.child_token();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(consume_partitions(
        deps.bus.clone(),
        EVENTS,
        CONSUMER,
        settings.topology(),
        work.clone(),
        move |event, delivered| {
            let expander = expander.clone();
            async move { expander.handle(event, delivered).await }
        },
    ));
    tasks.spawn(relay.clone().serve(signals, work.clone()));
    tasks.spawn(report(stats.clone(), directory.clone(), work.clone()));
    tracing::info!(instance = %deps.instance, "fanout consuming events and relaying signals");

    let api = FanoutApi {
        verifier: deps.verifier,
        relay,
        stats,
    };
    GrpcServer::new(natter_proto::FILE_DESCRIPTOR_SET)?
        .ready_while_connected(readiness)
        .max_connection_age(settings.grpc_max_connection_age())
        .add_service(FanoutServiceServer::new(api))
        .serve_with_work(listener, &shutdown, settings.grace_period(), work, tasks)
        .await?;
    Ok(())
}

/// Connects to the bus, makes sure the streams exist, binds
/// `fanout.grpc_addr` and runs the service until `shutdown`.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> Result<(), StartError> {
    let infra = settings.infra("fanout").await?;
    let listener = natter_server::bind("fanout", &settings.fanout.grpc_addr).await?;
    let deps = Deps {
        bus: infra.bus,
        verifier: infra.verifier,
        instance: infra.instance,
    };
    run(&settings, deps, listener, shutdown).await
}

/// Logs the counters, and the member cache's size that `GetStats` has no
/// field for, once a minute.
async fn report(stats: Arc<Stats>, directory: Arc<Directory>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(REPORT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let s = stats.snapshot();
        tracing::info!(
            events_received = s.events_received,
            updates_written = s.updates_written,
            events_pending = s.events_pending,
            ephemeral_published = s.ephemeral_published,
            ephemeral_dropped = s.ephemeral_dropped,
            cached_conversations = directory.cached_conversations(),
            "fanout stats"
        );
    }
}
