//! Live frames for this gateway's sessions: one bus subscription per
//! process (`gateway.<id>`), on which the sync holders of users'
//! partitions publish the frames of the users with sessions here, and a
//! directory from user to sessions, instead of a subscription per session.
//!
//! A session registers ([`Live::listen`]) before its device hello, which
//! the holder of the user's partition answers after putting this gateway
//! in its directory, so nothing published after the hello misses the
//! session, and its first fetch starts after. The holders keep their
//! directories in memory: a new holder announces itself (`PartitionHeld`),
//! and this gateway then attaches all its users of that partition again
//! and tells their sessions to fetch what they may have missed meanwhile
//! ([`Feed::Recheck`]); it does the same every
//! [`ATTACH_EVERY`](natter_contract::ATTACH_EVERY), which also covers a
//! lost announcement, and whenever a hello is answered by a holder it did
//! not know. When the last session of a user ends, the holder is told to
//! stop sending.
//!
//! The directory also tells the desk which agents have sessions here
//! (`AgentSessions` on `desk.sessions`): when an agent's first session
//! opens or their last closes, in full every `ATTACH_EVERY`, and in full
//! at once when a new holder of the desk asks (`desk.held`). Only the
//! serving task publishes them, so they leave in the order they happened.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::StreamExt;
use natter_auth::Identity;
use natter_bus::{Bus, BusError, Subscription};
use natter_contract::{ATTACH_EVERY, Backoff, Holders, decode, encode, subjects};
use natter_core::{Role, TenantId, UserId};
use natter_proto::bus::v1::{AgentSessions, Attach, Attached, LiveFrames, LiveUser, PartitionHeld};
use natter_proto::convert::{live_user, live_user_from_wire};
use prost::bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Users attached in one request.
const ATTACH_CHUNK: usize = 1024;

/// Frames queued for one session, as a bus subscription of its own would
/// buffer: a session that falls further behind is told to fetch instead
/// (a live session whose device reads too slowly is cut off earlier, by
/// its outbound queue).
const QUEUED_FRAMES: usize = natter_bus::DEFAULT_SUBSCRIPTION_CAPACITY;

type UserKey = (TenantId, UserId);

/// The live side of one gateway process.
#[derive(Debug)]
pub(crate) struct Live {
    /// This gateway's name in the holders' directories.
    id: String,
    bus: Arc<dyn Bus>,
    holders: Holders,
    peer_timeout: std::time::Duration,
    state: Mutex<State>,
    /// Wakes the serving task to tell the desk of `State::agents_changed`.
    agents_changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    users: HashMap<UserKey, Listeners>,
    /// Per user partition, the lease epoch of the holder this gateway's
    /// users of it are attached to.
    epochs: HashMap<u32, u64>,
    /// Agents whose first session opened or last closed since the desk
    /// was last told.
    agents_changed: HashSet<UserKey>,
    next_id: u64,
}

#[derive(Debug)]
struct Listeners {
    partition: u32,
    inboxes: Vec<(u64, Arc<Inbox>)>,
    /// How many of the sessions have the agent role.
    agents: usize,
}

/// What a session's feed yields.
#[derive(Debug)]
pub(crate) enum Feed {
    /// An encoded `natter.v1.ServerFrame`.
    Frame(Bytes),
    /// Frames may have been lost: fetch what follows the last delivered.
    Recheck,
}

/// One session's queue of frames. Nothing is allocated until a frame
/// waits, so an idle session costs a few words.
#[derive(Debug, Default)]
struct Inbox {
    frames: Mutex<VecDeque<Bytes>>,
    recheck: AtomicBool,
    ready: Notify,
}

impl Inbox {
    fn push(&self, frame: Bytes) {
        let mut frames = lock(&self.frames);
        if frames.len() < QUEUED_FRAMES {
            frames.push_back(frame);
        } else {
            // The session is behind; the frame is in the log already.
            self.recheck.store(true, Ordering::Relaxed);
        }
        drop(frames);
        self.ready.notify_one();
    }

    fn recheck(&self) {
        self.recheck.store(true, Ordering::Relaxed);
        self.ready.notify_one();
    }
}

/// A session's registration: yields its user's live frames, and
/// unregisters when dropped.
#[derive(Debug)]
pub(crate) struct Listener {
    live: Arc<Live>,
    user: UserKey,
    id: u64,
    inbox: Arc<Inbox>,
    agent: bool,
}

impl Listener {
    /// The next frame, or a call to recheck. Cancel-safe: a frame stays
    /// queued until a call returns it.
    pub(crate) async fn next(&self) -> Feed {
        loop {
            if self.inbox.recheck.swap(false, Ordering::Relaxed) {
                return Feed::Recheck;
            }
            if let Some(frame) = lock(&self.inbox.frames).pop_front() {
                return Feed::Frame(frame);
            }
            self.inbox.ready.notified().await;
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let last = {
            let mut state = self.live.state();
            let state = &mut *state;
            let Some(listeners) = state.users.get_mut(&self.user) else {
                return;
            };
            listeners.inboxes.retain(|(id, _)| *id != self.id);
            if self.agent {
                listeners.agents -= 1;
                if listeners.agents == 0 {
                    state.agents_changed.insert(self.user.clone());
                    self.live.agents_changed.notify_one();
                }
            }
            if listeners.inboxes.is_empty() {
                state.users.remove(&self.user).map(|l| l.partition)
            } else {
                None
            }
        };
        if let Some(partition) = last
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let (live, user) = (self.live.clone(), self.user.clone());
            runtime.spawn(async move { live.detach(partition, user).await });
        }
    }
}

impl Live {
    /// Subscribes to this gateway's frames and to holders' announcements,
    /// and keeps attaching its users every `ATTACH_EVERY`, until
    /// `shutdown`.
    pub(crate) async fn start(
        id: String,
        bus: Arc<dyn Bus>,
        holders: Holders,
        peer_timeout: std::time::Duration,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, BusError> {
        let live = Arc::new(Self {
            id,
            bus,
            holders,
            peer_timeout,
            state: Mutex::default(),
            agents_changed: Notify::new(),
        });
        let frames = live
            .bus
            .subscribe(&subjects::gateway(&live.id), None)
            .await?;
        let held = live.bus.subscribe(subjects::ALL_HELD, None).await?;
        let desk_held = live.bus.subscribe(subjects::DESK_HELD, None).await?;
        tokio::spawn(live.clone().serve(frames, held, desk_held, shutdown));
        Ok(live)
    }

    /// This gateway's name, for its device hellos.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Registers a session of `identity`'s user for its live frames.
    pub(crate) fn listen(self: &Arc<Self>, identity: &Identity) -> Listener {
        let (tenant, user) = (&identity.tenant, &identity.user);
        let key = (tenant.clone(), user.clone());
        let inbox = Arc::new(Inbox::default());
        let partition = self.holders.user_partition(tenant, user);
        let agent = identity.role == Role::Agent;
        let mut state = self.state();
        let state = &mut *state;
        state.next_id += 1;
        let id = state.next_id;
        let listeners = state.users.entry(key.clone()).or_insert_with(|| Listeners {
            partition,
            inboxes: Vec::new(),
            agents: 0,
        });
        listeners.inboxes.push((id, inbox.clone()));
        if agent {
            listeners.agents += 1;
            if listeners.agents == 1 {
                state.agents_changed.insert(key.clone());
                self.agents_changed.notify_one();
            }
        }
        Listener {
            live: self.clone(),
            user: key,
            id,
            inbox,
            agent,
        }
    }

    /// A device hello of `user` was answered by the holder of lease
    /// `epoch` (0: by no holder). A holder this gateway has not attached
    /// its other users of the partition to does not know them yet.
    pub(crate) fn welcomed(self: &Arc<Self>, tenant: &TenantId, user: &UserId, epoch: u64) {
        if epoch == 0 {
            return;
        }
        let partition = self.holders.user_partition(tenant, user);
        let mut state = self.state();
        if state
            .epochs
            .get(&partition)
            .is_some_and(|known| *known >= epoch)
        {
            return;
        }
        let others = state
            .users
            .iter()
            .any(|((t, u), l)| l.partition == partition && (t != tenant || u != user));
        if others {
            drop(state);
            let live = self.clone();
            tokio::spawn(async move { live.attach(partition).await });
        } else {
            state.epochs.insert(partition, epoch);
        }
    }

    async fn serve(
        self: Arc<Self>,
        mut frames: Subscription,
        mut held: Subscription,
        mut desk_held: Subscription,
        shutdown: CancellationToken,
    ) {
        let mut refresh = tokio::time::interval(ATTACH_EVERY);
        refresh.tick().await;
        let mut backoff = Backoff::new(
            std::time::Duration::from_millis(50),
            std::time::Duration::from_secs(5),
        );
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                next = frames.next() => match next {
                    Some(incoming) => self.route(&incoming.payload),
                    None => {
                        tracing::warn!("live subscription ended; subscribing again");
                        backoff.wait(&shutdown).await;
                        match self.bus.subscribe(&subjects::gateway(&self.id), None).await {
                            Ok(again) => {
                                frames = again;
                                backoff.reset();
                                // Whatever came meanwhile is in the logs.
                                self.recheck_all();
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot subscribe to live frames"),
                        }
                    }
                },
                next = held.next() => match next {
                    Some(incoming) => self.on_held(&incoming.payload),
                    None => {
                        let subject = subjects::ALL_HELD;
                        self.subscribe_again(subject, &mut held, &mut backoff, &shutdown).await;
                    }
                },
                next = desk_held.next() => match next {
                    Some(_) => self.tell_desk(true).await,
                    None => {
                        let subject = subjects::DESK_HELD;
                        self.subscribe_again(subject, &mut desk_held, &mut backoff, &shutdown).await;
                    }
                },
                () = self.agents_changed.notified() => self.tell_desk(false).await,
                _ = refresh.tick() => {
                    let partitions: Vec<u32> = {
                        let state = self.state();
                        let mut partitions: Vec<u32> =
                            state.users.values().map(|l| l.partition).collect();
                        partitions.sort_unstable();
                        partitions.dedup();
                        partitions
                    };
                    for partition in partitions {
                        let live = self.clone();
                        tokio::spawn(async move { live.attach(partition).await });
                    }
                    self.tell_desk(true).await;
                }
            }
        }
    }

    /// Replaces `subscription`, which ended, with a new one to `subject`;
    /// after a pause if that fails.
    async fn subscribe_again(
        &self,
        subject: &str,
        subscription: &mut Subscription,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) {
        match self.bus.subscribe(subject, None).await {
            Ok(again) => *subscription = again,
            Err(e) => {
                tracing::warn!(subject, error = %e, "cannot subscribe again");
                backoff.wait(shutdown).await;
            }
        }
    }

    /// Tells the desk which agents have sessions here: every one
    /// (`full`), or those whose first session opened or last closed since
    /// it was last told. A lost message is made good by the next full one.
    async fn tell_desk(&self, full: bool) {
        let Some(sessions) = self.agent_sessions(full) else {
            return;
        };
        if let Err(e) = self
            .bus
            .publish(subjects::DESK_SESSIONS, encode(&sessions))
            .await
        {
            tracing::debug!(error = %e, "cannot tell the desk of agents' sessions");
        }
    }

    /// What [`Live::tell_desk`] publishes; `None` if nothing changed.
    fn agent_sessions(&self, full: bool) -> Option<AgentSessions> {
        let mut state = self.state();
        // A full account says all the changes would.
        let changed = std::mem::take(&mut state.agents_changed);
        let mut sessions = AgentSessions {
            gateway: self.id.clone(),
            full,
            ..AgentSessions::default()
        };
        if full {
            sessions.online = state
                .users
                .iter()
                .filter(|(_, l)| l.agents > 0)
                .map(|((tenant, user), _)| live_user(tenant, user))
                .collect();
            return Some(sessions);
        }
        if changed.is_empty() {
            return None;
        }
        for key in changed {
            let online = state.users.get(&key).is_some_and(|l| l.agents > 0);
            let to = if online {
                &mut sessions.online
            } else {
                &mut sessions.offline
            };
            to.push(live_user(&key.0, &key.1));
        }
        Some(sessions)
    }

    /// Hands each frame to the sessions of its user.
    fn route(&self, payload: &[u8]) {
        let frames: LiveFrames = match decode(payload) {
            Ok(frames) => frames,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable live frames dropped");
                return;
            }
        };
        let state = self.state();
        for frame in frames.frames {
            let Some(user) = frame.user.and_then(|u| live_user_from_wire(&u).ok()) else {
                continue;
            };
            if let Some(listeners) = state.users.get(&user) {
                for (_, inbox) in &listeners.inboxes {
                    inbox.push(frame.frame.clone());
                }
            }
        }
    }

    fn on_held(self: &Arc<Self>, payload: &[u8]) {
        let held: PartitionHeld = match decode(payload) {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable holder announcement dropped");
                return;
            }
        };
        let state = self.state();
        let known = state.epochs.get(&held.partition).copied().unwrap_or(0);
        let has_users = state.users.values().any(|l| l.partition == held.partition);
        drop(state);
        if known < held.holder_epoch && has_users {
            let live = self.clone();
            tokio::spawn(async move { live.attach(held.partition).await });
        }
    }

    /// Attaches every user of `partition` with sessions here to its
    /// holder; if that holder is not the one they were attached to, their
    /// sessions fetch what they may have missed. A failure is left to the
    /// next round.
    async fn attach(&self, partition: u32) {
        let users: Vec<LiveUser> = {
            let state = self.state();
            state
                .users
                .iter()
                .filter(|(_, l)| l.partition == partition)
                .map(|((tenant, user), _)| live_user(tenant, user))
                .collect()
        };
        let mut epoch = None;
        for chunk in users.chunks(ATTACH_CHUNK) {
            let attach = Attach {
                gateway: self.id.clone(),
                users: chunk.to_vec(),
                detached: Vec::new(),
            };
            match natter_contract::request::<_, Attached>(
                self.bus.as_ref(),
                &subjects::attach(partition),
                &attach,
                self.peer_timeout,
            )
            .await
            {
                Ok(attached) => epoch = Some(attached.holder_epoch),
                Err(e) => {
                    tracing::warn!(partition, error = %e, "cannot attach users to their holder");
                    return;
                }
            }
        }
        let Some(epoch) = epoch else { return };
        let mut state = self.state();
        let known = state.epochs.insert(partition, epoch);
        if known != Some(epoch) {
            for listeners in state.users.values().filter(|l| l.partition == partition) {
                for (_, inbox) in &listeners.inboxes {
                    inbox.recheck();
                }
            }
        }
    }

    /// Tells the holder of `partition` that `user` has no session here
    /// any more. Lost, it costs the holder publishes to this gateway
    /// until it forgets it.
    async fn detach(&self, partition: u32, (tenant, user): UserKey) {
        let detach = Attach {
            gateway: self.id.clone(),
            users: Vec::new(),
            detached: vec![live_user(&tenant, &user)],
        };
        if let Err(e) = self
            .bus
            .publish(&subjects::attach(partition), encode(&detach))
            .await
        {
            tracing::debug!(partition, error = %e, "cannot detach a user from its holder");
        }
    }

    fn recheck_all(&self) {
        for listeners in self.state().users.values() {
            for (_, inbox) in &listeners.inboxes {
                inbox.recheck();
            }
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// Never held across an await; a panic inside cannot leave it torn.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
