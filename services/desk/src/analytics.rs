//! The analytics consumer: `natter-analytics`' facts and rollups kept up to
//! date from EVENTS, and the satisfaction survey sent when a conversation
//! is resolved.
//!
//! It runs while this process holds the desk, beside the desk's loop and
//! not through it, as durable consumers of its own (`analytics-<p>`), so
//! nothing waits for it on the message path and the desk's routing does
//! not wait for it either. Each partition's consumer takes one delivery at
//! a time and is the only writer of its partition's rollup records (one
//! per hour, team and agent: `<hour> <partition> <team> <agent>`) and of
//! its conversations' facts, so their read-modify-write is safe, and it
//! keeps what it wrote in memory ([`Kept`]) for the rest of its term
//! instead of reading it back; a query sums every partition's records over
//! the hours it reads.
//!
//! Per delivery, per tenant: take each conversation's facts record (the
//! facts and the roles of its members, learnt from membership events,
//! since a message names only its sender), apply each message (a replay
//! changes nothing), then write the facts and the rollup records their
//! deltas touched in one [`DeskStore::write_desk_together`] call, and
//! only then acknowledge and keep them. A crash before the write loses
//! both and the delivery comes again; after it, the redelivered messages
//! are replays. So a `kill -9` anywhere changes no figure.
//!
//! What a crash does not repair: where the bus keeps no streams (`natter
//! dev`), EVENTS messages published but not yet consumed here are gone
//! with the process unless fanout had not consumed them either (storage
//! keeps what fanout has not acknowledged); a conversation whose later
//! message arrives skips the gap ([`ConversationFacts::skip_to`]) and its
//! figures miss what the lost messages would have changed.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use natter_analytics::{
    Applied, CSAT_FORM_ID, ConversationFacts, Error as AnalyticsError, HourKey, Observed, Rollup,
    Side, SlaTargets,
};
use natter_contract::{
    ANALYTICS_CONSUMER, DESK_USER, EVENTS, Handled, Topology, consume_partition,
};
use natter_core::{
    Content, ConversationId, Event, FieldKind, Form, FormField, MembershipKind, Message,
    PageRequest, Role, Seq, Status, TeamId, TenantId, UserId,
};
use natter_proto::bus::v1::ConversationEvents;
use natter_proto::convert::{parse_id, required};
use natter_proto::v1;
use natter_store::{DeskKind, DeskStore, DeskWrite, StoreError};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::act::Acts;

/// How long a tenant's team settings (targets, CSAT) are used before they
/// are read again.
const TEAMS_FRESH: Duration = Duration::from_secs(30);
/// How long a delivery waits before it is tried again after the store
/// failed.
const RETRY: Duration = Duration::from_secs(1);
/// Members whose roles a conversation's facts remember; a sender beyond
/// them counts as a service.
const MAX_ROLES: usize = 1000;
/// Team records read at once.
const TEAM_PAGE: u32 = 500;
/// Conversations' facts, and tenants' hours of rollups, a partition's
/// consumer keeps in memory at most.
const KEPT_FACTS: usize = 4096;
const KEPT_HOURS: usize = 256;
/// Rollup records read at once.
const ROLLUP_PAGE: u32 = 500;

/// What the store keeps of one conversation (`DeskKind::AnalyticsFacts`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct FactsRecord {
    /// `None` until its first message.
    pub(crate) facts: Option<ConversationFacts>,
    /// Members' roles by user id, as joined.
    #[serde(default)]
    pub(crate) roles: BTreeMap<String, String>,
}

impl FactsRecord {
    fn side(&self, sender: &UserId) -> Side {
        if sender.as_str() == DESK_USER {
            return Side::Service;
        }
        match self.roles.get(sender.as_str()).map(|r| Role::parse(r)) {
            Some(Ok(Role::Customer)) => Side::Customer,
            Some(Ok(Role::Agent)) => Side::Agent(sender.clone()),
            Some(Ok(Role::Bot)) => Side::Bot(sender.clone()),
            _ => Side::Service,
        }
    }
}

/// What every rollup record id of `hour` written by `partition`'s consumer
/// starts with; the prefix sorts just before them.
fn rollup_prefix(hour: i64, partition: u32) -> String {
    format!("{hour:020} {partition:03}")
}

/// The id of the rollup record of `hour`, the team and the agent written by
/// `partition`'s consumer. Ids hold no whitespace, so the fields (empty for
/// none) cannot run into each other.
pub(crate) fn rollup_id(
    hour: i64,
    partition: u32,
    team: Option<&TeamId>,
    agent: Option<&UserId>,
) -> String {
    format!(
        "{} {} {}",
        rollup_prefix(hour, partition),
        team.map_or("", TeamId::as_str),
        agent.map_or("", UserId::as_str)
    )
}

/// The hour a rollup record's id names.
pub(crate) fn rollup_hour(id: &str) -> Option<i64> {
    id.get(..20)?.parse().ok()
}

/// One rollup record: the rollup of an hour, team and agent.
pub(crate) type RollupRow = (HourKey, Rollup);

/// The rollup records of `tenant` in id order from just after `after`, as
/// long as `within` holds for their ids.
pub(crate) async fn rollups_from(
    store: &dyn DeskStore,
    tenant: &TenantId,
    after: String,
    within: impl Fn(&str) -> Result<bool, StoreError>,
) -> Result<Vec<RollupRow>, StoreError> {
    let mut out = Vec::new();
    let mut after = Some(after);
    loop {
        let page = store
            .desk_records(
                tenant,
                DeskKind::AnalyticsRollup,
                PageRequest {
                    after,
                    size: ROLLUP_PAGE,
                },
            )
            .await?;
        for record in &page.items {
            if !within(&record.id)? {
                return Ok(out);
            }
            out.push(decode_rollup(&record.body)?);
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(out),
        }
    }
}

pub(crate) fn decode_facts(body: &[u8]) -> Result<FactsRecord, StoreError> {
    serde_json::from_slice(body).map_err(|e| StoreError::Corrupt(format!("analytics facts: {e}")))
}

pub(crate) fn decode_rollup(body: &[u8]) -> Result<RollupRow, StoreError> {
    serde_json::from_slice(body).map_err(|e| StoreError::Corrupt(format!("analytics rollup: {e}")))
}

/// A tenant's team settings the analytics use.
#[derive(Debug, Default)]
struct TeamSettings {
    targets: SlaTargets,
    csat: BTreeSet<TeamId>,
}

#[derive(Clone)]
pub(crate) struct Analytics {
    pub(crate) store: Arc<dyn DeskStore>,
    pub(crate) acts: Acts,
    teams: Arc<Mutex<TeamCache>>,
}

/// Each tenant's team settings and when they were read.
type TeamCache = HashMap<TenantId, (Instant, Arc<TeamSettings>)>;
/// An hour's rollups by team and agent.
type HourRows = BTreeMap<(Option<TeamId>, Option<UserId>), Rollup>;

/// What one delivery changes of one tenant, written in one call.
#[derive(Default)]
struct Pending {
    facts: BTreeMap<ConversationId, (FactsRecord, bool)>,
    /// Rollups by hour, then team and agent, as read and changed.
    rollups: BTreeMap<i64, HourRows>,
    /// The rollup rows changed: hour, team and agent.
    touched: BTreeSet<(i64, Option<TeamId>, Option<UserId>)>,
}

/// The records a partition's consumer alone writes, as it last wrote them
/// or read them this term, so that most deliveries read nothing. A
/// delivery takes what it needs out and gives it back only once written,
/// so what is kept is always what the store holds. Bounded: past its
/// limits it starts again empty, and a miss costs one read.
#[derive(Default)]
pub(crate) struct Kept {
    facts: HashMap<(TenantId, ConversationId), FactsRecord>,
    rollups: HashMap<(TenantId, i64), HourRows>,
}

impl Kept {
    fn keep(&mut self, tenant: &TenantId, pending: Pending) {
        if self.facts.len() + pending.facts.len() > KEPT_FACTS {
            self.facts.clear();
        }
        if self.rollups.len() + pending.rollups.len() > KEPT_HOURS {
            self.rollups.clear();
        }
        for (conversation, (record, _)) in pending.facts {
            self.facts.insert((tenant.clone(), conversation), record);
        }
        for (hour, rows) in pending.rollups {
            self.rollups.insert((tenant.clone(), hour), rows);
        }
    }
}

impl Analytics {
    pub(crate) fn new(store: Arc<dyn DeskStore>, acts: Acts) -> Self {
        Analytics {
            store,
            acts,
            teams: Arc::default(),
        }
    }

    /// Consumes EVENTS until `stop`.
    pub(crate) async fn run(self, topology: Topology, stop: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        for partition in 0..topology.partitions.get() {
            let this = self.clone();
            let stopping = stop.clone();
            let kept = Arc::new(tokio::sync::Mutex::new(Kept::default()));
            let handler = Arc::new(move |batch: ConversationEvents, _delivered: u32| {
                let (this, stopping, kept) = (this.clone(), stopping.clone(), kept.clone());
                async move {
                    // One delivery at a time: never contended.
                    let mut kept = kept.lock().await;
                    this.handle(partition, batch, &mut kept, &stopping).await
                }
            });
            tasks.spawn(consume_partition(
                self.acts.bus.clone(),
                EVENTS,
                ANALYTICS_CONSUMER.to_owned(),
                partition,
                stop.clone(),
                handler,
            ));
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Applies one delivery of `partition`.
    pub(crate) async fn handle(
        &self,
        partition: u32,
        batch: ConversationEvents,
        kept: &mut Kept,
        stop: &CancellationToken,
    ) -> Handled {
        match self.apply(partition, batch, kept, stop).await {
            Ok(()) => Handled::Done,
            Err(StoreError::Invalid(e)) => {
                // Too big to store, say: retrying cannot help.
                tracing::error!(error = %e, "analytics of a delivery cannot be stored; skipped");
                Handled::Done
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot update the analytics; retrying");
                Handled::Retry(RETRY)
            }
        }
    }

    async fn apply(
        &self,
        partition: u32,
        batch: ConversationEvents,
        kept: &mut Kept,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        let mut tenants: BTreeMap<TenantId, Pending> = BTreeMap::new();
        for wire in batch.events {
            let parsed = (|| {
                let tenant: TenantId = parse_id("tenant_id", &wire.tenant_id)?;
                let event = Event::try_from(required("event", wire.event)?)?;
                Ok::<_, natter_core::Invalid>((tenant, event))
            })();
            let (tenant, event) = match parsed {
                Ok(parsed) => parsed,
                Err(e) => {
                    tracing::error!(error = %e, "invalid conversation event skipped");
                    continue;
                }
            };
            let pending = tenants.entry(tenant.clone()).or_default();
            match event {
                Event::Membership(change) if change.kind == MembershipKind::Joined => {
                    let (record, dirty) = self
                        .facts(&tenant, change.conversation_id, pending, kept)
                        .await?;
                    let user = change.user_id.as_str();
                    if record.roles.get(user).map(String::as_str) != Some(change.role.as_str())
                        && (record.roles.len() < MAX_ROLES || record.roles.contains_key(user))
                    {
                        record
                            .roles
                            .insert(user.to_owned(), change.role.as_str().to_owned());
                        *dirty = true;
                    }
                }
                Event::Message(message) => {
                    self.message(&tenant, partition, message, pending, kept, stop)
                        .await?;
                }
                _ => {}
            }
        }
        for (tenant, pending) in &tenants {
            let writes = pending.writes(partition, tenant)?;
            self.store.write_desk_together(tenant, &writes).await?;
        }
        for (tenant, pending) in tenants {
            kept.keep(&tenant, pending);
        }
        Ok(())
    }

    /// The conversation's facts record, taken from what is kept or read,
    /// once per delivery.
    async fn facts<'a>(
        &self,
        tenant: &TenantId,
        conversation: ConversationId,
        pending: &'a mut Pending,
        kept: &mut Kept,
    ) -> Result<&'a mut (FactsRecord, bool), StoreError> {
        let vacant = match pending.facts.entry(conversation) {
            Entry::Occupied(known) => return Ok(known.into_mut()),
            Entry::Vacant(vacant) => vacant,
        };
        if let Some(record) = kept.facts.remove(&(tenant.clone(), conversation)) {
            return Ok(vacant.insert((record, false)));
        }
        let stored = self
            .store
            .desk_record(tenant, DeskKind::AnalyticsFacts, &conversation.to_string())
            .await?;
        let record = match stored {
            Some(record) => decode_facts(&record.body)?,
            None => FactsRecord::default(),
        };
        Ok(vacant.insert((record, false)))
    }

    async fn message(
        &self,
        tenant: &TenantId,
        partition: u32,
        message: Message,
        pending: &mut Pending,
        kept: &mut Kept,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        let settings = self.settings(tenant).await?;
        let conversation = message.conversation_id;
        let (record, dirty) = self.facts(tenant, conversation, pending, kept).await?;
        let side = record.side(&message.sender_id);
        let facts = record.facts.get_or_insert_with(|| {
            // A conversation older than the analytics starts here.
            let before = Seq::new(message.seq.get().saturating_sub(1));
            ConversationFacts::starting_after(tenant.clone(), conversation, before)
        });
        let resolved_before = facts.resolutions().len();
        let observed = Observed {
            tenant,
            conversation,
            seq: message.seq,
            at: message.sent_at,
            side: &side,
            content: &message.content,
        };
        let applied = match facts.apply(&observed, &settings.targets) {
            Err(AnalyticsError::Gap { expected, got, .. }) => {
                tracing::warn!(
                    %conversation,
                    %expected,
                    %got,
                    "messages missing from the stream; the analytics skip them"
                );
                facts.skip_to(Seq::new(got.get().saturating_sub(1)));
                facts.apply(&observed, &settings.targets)
            }
            other => other,
        };
        let delta = match applied {
            Ok(Applied::Replay) => return Ok(()),
            Ok(Applied::Advanced(delta)) => delta,
            Err(e) => {
                tracing::error!(%conversation, error = %e, "message not applied to the analytics");
                return Ok(());
            }
        };
        *dirty = true;
        let survey = match &message.content {
            Content::Activity(lifecycle)
                if lifecycle.status == Status::Resolved
                    && facts.resolutions().len() > resolved_before
                    && lifecycle
                        .team
                        .as_ref()
                        .is_some_and(|t| settings.csat.contains(t)) =>
            {
                Some(message.seq)
            }
            _ => None,
        };
        for (key, change) in delta.changes {
            let rows = pending
                .rollup(&*self.store, tenant, key.hour, partition, kept)
                .await?;
            // In place: a row's duration samples grow with the hour's
            // conversations, and this runs for every message.
            let at = (key.team, key.agent);
            let row = rows.entry(at.clone()).or_default();
            if let Err(e) = change.apply_in(row) {
                tracing::error!(
                    hour = key.hour,
                    error = %e,
                    "analytics rollup disagrees with the facts; left as it was"
                );
            }
            if row.is_empty() {
                rows.remove(&at);
            }
            pending.touched.insert((key.hour, at.0, at.1));
        }
        if let Some(seq) = survey {
            self.survey(tenant, conversation, seq, stop).await;
        }
        Ok(())
    }

    /// Sends the satisfaction survey into a conversation just resolved (at
    /// `seq`); a repeat (a redelivery) is recognised by its key.
    async fn survey(
        &self,
        tenant: &TenantId,
        conversation: ConversationId,
        seq: Seq,
        stop: &CancellationToken,
    ) {
        let content = Content::Form(csat_form());
        if let Err(why) = self
            .acts
            .post(
                tenant,
                conversation,
                format!("csat-{seq}"),
                content.into(),
                stop,
            )
            .await
        {
            tracing::warn!(%conversation, %why, "satisfaction survey not sent");
        }
    }

    /// The tenant's team settings, read from its team records at most
    /// every [`TEAMS_FRESH`].
    async fn settings(&self, tenant: &TenantId) -> Result<Arc<TeamSettings>, StoreError> {
        if let Some((read, settings)) = self.lock().get(tenant)
            && read.elapsed() < TEAMS_FRESH
        {
            return Ok(settings.clone());
        }
        let mut settings = TeamSettings::default();
        let mut after = None;
        loop {
            let page = self
                .store
                .desk_records(
                    tenant,
                    DeskKind::Team,
                    PageRequest {
                        after,
                        size: TEAM_PAGE,
                    },
                )
                .await?;
            for record in &page.items {
                let Ok(team) = v1::Team::decode(record.body.as_slice()) else {
                    continue;
                };
                let Ok(id) = TeamId::new(team.team_id) else {
                    continue;
                };
                if team.first_response_target_seconds > 0 {
                    settings
                        .targets
                        .by_team
                        .insert(id.clone(), team.first_response_target_seconds);
                }
                if team.csat {
                    settings.csat.insert(id);
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let settings = Arc::new(settings);
        self.lock()
            .insert(tenant.clone(), (Instant::now(), settings.clone()));
        Ok(settings)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TeamCache> {
        self.teams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Pending {
    /// The rollups of `hour` this partition writes, taken from what is kept
    /// or read, once per delivery.
    async fn rollup(
        &mut self,
        store: &dyn DeskStore,
        tenant: &TenantId,
        hour: i64,
        partition: u32,
        kept: &mut Kept,
    ) -> Result<&mut HourRows, StoreError> {
        let vacant = match self.rollups.entry(hour) {
            Entry::Occupied(known) => return Ok(known.into_mut()),
            Entry::Vacant(vacant) => vacant,
        };
        if let Some(rows) = kept.rollups.remove(&(tenant.clone(), hour)) {
            return Ok(vacant.insert(rows));
        }
        let prefix = rollup_prefix(hour, partition);
        let within = format!("{prefix} ");
        let rows = rollups_from(store, tenant, prefix, |id| Ok(id.starts_with(&within)))
            .await?
            .into_iter()
            .map(|(key, rollup)| ((key.team, key.agent), rollup))
            .collect();
        Ok(vacant.insert(rows))
    }

    /// The facts and rollup records this delivery changed.
    fn writes(&self, partition: u32, tenant: &TenantId) -> Result<Vec<DeskWrite>, StoreError> {
        let encode = |e: serde_json::Error| StoreError::Corrupt(format!("analytics: {e}"));
        let mut writes = Vec::new();
        for (conversation, (record, dirty)) in &self.facts {
            if *dirty {
                writes.push(DeskWrite::Put {
                    kind: DeskKind::AnalyticsFacts,
                    id: conversation.to_string(),
                    body: serde_json::to_vec(record).map_err(encode)?,
                });
            }
        }
        for (hour, team, agent) in &self.touched {
            let id = rollup_id(*hour, partition, team.as_ref(), agent.as_ref());
            let at = (team.clone(), agent.clone());
            let row = self.rollups.get(hour).and_then(|rows| rows.get(&at));
            writes.push(match row {
                None => DeskWrite::Delete {
                    kind: DeskKind::AnalyticsRollup,
                    id,
                },
                Some(rollup) => {
                    let key = HourKey {
                        tenant: tenant.clone(),
                        hour: *hour,
                        team: team.clone(),
                        agent: agent.clone(),
                    };
                    DeskWrite::Put {
                        kind: DeskKind::AnalyticsRollup,
                        id,
                        body: serde_json::to_vec(&(key, rollup)).map_err(encode)?,
                    }
                }
            });
        }
        Ok(writes)
    }
}

/// The satisfaction survey: a 1 to 5 score and an optional comment.
pub(crate) fn csat_form() -> Form {
    Form {
        form_id: CSAT_FORM_ID.to_owned(),
        text: "How did we do?".to_owned(),
        fields: vec![
            FormField {
                name: "score".to_owned(),
                label: "Your rating".to_owned(),
                kind: FieldKind::Rating,
                required: true,
            },
            FormField {
                name: "comment".to_owned(),
                label: "Anything to add? (optional)".to_owned(),
                kind: FieldKind::Text,
                required: false,
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use natter_analytics::{Group, Period, Query};
    use natter_contract::Holders;
    use natter_core::{
        ClientMessageId, Lifecycle, Limits, MembershipChange, MessageId, Owner, Timestamp,
    };
    use natter_proto::bus::v1::ConversationEvent;
    use natter_store_embedded::EmbeddedStore;

    use super::*;
    use crate::analytics_api::read_rollups;

    const T0: i64 = 1_714_953_600_000;

    fn id<T: std::str::FromStr>(text: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        text.parse().expect("a valid id")
    }

    struct Fixture {
        analytics: Analytics,
        tenant: TenantId,
        conversation: ConversationId,
        seq: u64,
        stop: CancellationToken,
        /// What the consumer keeps between deliveries.
        kept: Kept,
    }

    impl Fixture {
        fn new() -> Fixture {
            let store: Arc<dyn DeskStore> =
                Arc::new(EmbeddedStore::temporary(Limits::default()).expect("a store"));
            let bus: Arc<dyn natter_bus::Bus> =
                Arc::new(natter_bus_local::LocalBus::new("test").expect("a bus"));
            let topology = Topology {
                partitions: NonZeroU32::MIN,
                retention: Duration::from_secs(60),
            };
            let acts = Acts {
                bus: bus.clone(),
                holders: Holders::new(bus, topology),
                peer_timeout: Duration::from_secs(1),
            };
            Fixture {
                analytics: Analytics::new(store, acts),
                tenant: id("acme"),
                conversation: ConversationId::generate(),
                seq: 0,
                stop: CancellationToken::new(),
                kept: Kept::default(),
            }
        }

        fn joined(&self, user: &str, role: Role) -> Event {
            Event::Membership(MembershipChange {
                conversation_id: self.conversation,
                user_id: id(user),
                role,
                kind: MembershipKind::Joined,
                at: Timestamp::from_millis(T0),
            })
        }

        fn message(&mut self, sender: &str, after_s: i64, content: Content) -> Event {
            self.seq += 1;
            Event::Message(Message {
                id: MessageId::generate(),
                conversation_id: self.conversation,
                seq: Seq::new(self.seq),
                sender_id: id(sender),
                client_message_id: ClientMessageId::new(format!("m{}", self.seq))
                    .expect("a message id"),
                sent_at: Timestamp::from_millis(T0 + after_s * 1000),
                content,
            })
        }

        async fn deliver(&mut self, events: &[Event]) {
            let batch = ConversationEvents {
                events: events
                    .iter()
                    .map(|e| ConversationEvent {
                        tenant_id: self.tenant.to_string(),
                        event: Some(e.clone().into()),
                    })
                    .collect(),
            };
            let handled = self
                .analytics
                .handle(0, batch, &mut self.kept, &self.stop)
                .await;
            assert_eq!(handled, Handled::Done);
        }

        async fn total(&self, group: Group) -> Vec<natter_analytics::Row> {
            let hour = T0 / 3_600_000;
            let q = Query {
                tenant: Some(self.tenant.clone()),
                from_hour: hour,
                to_hour: hour + 24,
                group,
                period: Period::Total,
                team: None,
                agent: None,
            };
            let store = &*self.analytics.store;
            let rollups = read_rollups(store, &self.tenant, q.from_hour, q.to_hour)
                .await
                .expect("rollups read");
            natter_analytics::query(rollups, &q)
        }
    }

    #[tokio::test]
    async fn facts_and_rollups_round_trip_and_a_redelivery_counts_once() {
        let mut f = Fixture::new();
        let assigned = Lifecycle {
            owner: Owner::Inbox,
            assignee: Some(id("ann")),
            team: Some(id("support")),
            ..Lifecycle::default()
        };
        let resolved = Lifecycle {
            status: Status::Resolved,
            ..assigned.clone()
        };
        let first = vec![
            f.joined("carol", Role::Customer),
            f.joined("ann", Role::Agent),
            f.message("carol", 0, Content::Text("hello".into())),
            f.message("crm", 10, Content::Activity(assigned)),
        ];
        let second = vec![
            f.message("ann", 70, Content::Text("hi, how can I help?".into())),
            f.message("ann", 3_700, Content::Activity(resolved)),
            f.message(
                "carol",
                3_760,
                Content::FormReply(natter_core::FormReply {
                    form_id: CSAT_FORM_ID.to_owned(),
                    values: [
                        ("score".to_owned(), "4".to_owned()),
                        ("comment".to_owned(), "quick".to_owned()),
                    ]
                    .into(),
                }),
            ),
        ];
        f.deliver(&first).await;
        f.deliver(&second).await;
        let once = f.total(Group::Agent).await;
        // Delivered again, as after a crash before the ack: replays, both
        // to a consumer that kept the records and to one that starts cold
        // (another term) and reads them.
        f.deliver(&first).await;
        f.deliver(&second).await;
        assert_eq!(f.total(Group::Agent).await, once);
        f.kept = Kept::default();
        f.deliver(&first).await;
        f.deliver(&second).await;
        assert_eq!(f.total(Group::Agent).await, once);

        let [nobody, ann] = &once[..] else {
            panic!("rows for nobody and for ann: {once:?}");
        };
        assert_eq!((nobody.agent.as_ref(), nobody.messages_customer), (None, 1));
        assert_eq!(ann.agent, Some(id("ann")));
        assert_eq!(ann.opened, 1);
        assert_eq!(ann.first_response_median_s, Some(70));
        assert_eq!(ann.resolution_median_s, Some(3_700));
        assert_eq!((ann.messages_agent, ann.messages_customer), (1, 0));
        assert_eq!((ann.csat_count, ann.csat_average), (1, Some(4.0)));
        assert_eq!(ann.queue_waits, 0, "assigned at once, it never waited");

        // A cold consumer reads the hour's rows before it adds to them.
        f.kept = Kept::default();
        let later = vec![f.message("carol", 3_800, Content::Text("thanks".into()))];
        f.deliver(&later).await;
        let now = f.total(Group::Agent).await;
        assert_eq!((now[1].messages_customer, now[1].opened), (1, 1));
        assert_eq!(now[0], once[0]);

        // A record per hour, team and agent, all of partition 0.
        let records = f
            .analytics
            .store
            .desk_records(
                &f.tenant,
                DeskKind::AnalyticsRollup,
                PageRequest {
                    after: None,
                    size: 10,
                },
            )
            .await
            .expect("records");
        let ids: Vec<_> = records.items.iter().map(|r| r.id.clone()).collect();
        let hour = T0 / 3_600_000;
        let (support, ann) = (Some(id("support")), Some(id("ann")));
        assert_eq!(
            ids,
            [
                rollup_id(hour, 0, None, None),
                rollup_id(hour, 0, support.as_ref(), ann.as_ref()),
                rollup_id(hour + 1, 0, support.as_ref(), ann.as_ref()),
            ]
        );

        let stored = f
            .analytics
            .store
            .desk_record(
                &f.tenant,
                DeskKind::AnalyticsFacts,
                &f.conversation.to_string(),
            )
            .await
            .expect("read")
            .expect("the facts are stored");
        let record = decode_facts(&stored.body).expect("readable");
        let facts = record.facts.expect("facts");
        assert_eq!(facts.last_seq(), Seq::new(6));
        assert_eq!(facts.csat().map(|c| c.score), Some(4));
        assert_eq!(
            record.roles.get("carol").map(String::as_str),
            Some("customer")
        );
    }

    #[tokio::test]
    async fn a_conversation_first_seen_mid_way_counts_from_there() {
        let mut f = Fixture::new();
        f.seq = 41;
        let late = vec![f.message("somebody", 0, Content::Text("hi".into()))];
        f.deliver(&late).await;
        let rows = f.total(Group::Tenant).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].messages_service, 1,
            "an unknown sender is a service"
        );
    }
}
