//! Generated support traffic and the figures it must give, computed
//! independently of the facts and rollups (feature `simulate`).
//!
//! [`day_of_traffic`] plans a day at two businesses: customers who write,
//! a bot that answers first, customers who ask for a person, a desk that
//! assigns agents `a`, `b` and `c` of teams `sales` and `support`, agents
//! who reply, resolve and get requeued, reopenings, closings and CSAT
//! answers, at times spread over the day. A plan is a list of [`Step`]s,
//! what each participant does, so an end-to-end test can carry it out
//! against the running system (send as the actor, or change the
//! lifecycle), and [`Traffic::numbered`] is the message stream the
//! sequencer makes of it (activities included), so this crate's tests can
//! feed it to the facts directly.
//!
//! [`expected`] answers a [`Query`] from the plan alone: it walks each
//! conversation with `natter-core`'s lifecycle rules, writes down every
//! figure as one record, and groups the records by brute force, with its
//! own percentile. It shares no code with the facts or the rollups.

use std::collections::{BTreeMap, HashMap};

use natter_core::{
    Content, ConversationId, FormReply, Lifecycle, LifecycleChange, Limits, Owner, Role, Seq,
    Status, TeamId, TenantId, Timestamp, UserId,
};

use crate::facts::SlaTargets;
use crate::observe::{CSAT_FORM_ID, Observed, Side};
use crate::query::{Group, Period, PeriodKey, Query, Row};

/// Who acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Customer(UserId),
    Agent(UserId),
    Bot(UserId),
    /// The business's backend or the desk, acting for the tenant.
    Service,
}

/// What they do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a text message.
    Say(String),
    /// Change the lifecycle (`UpdateLifecycle`).
    Change(LifecycleChange),
    /// Answer the CSAT form.
    Csat { score: u8, comment: Option<String> },
}

/// One thing one participant does in one conversation, at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub tenant: TenantId,
    pub conversation: ConversationId,
    pub at: Timestamp,
    pub actor: Actor,
    pub action: Action,
}

impl Step {
    /// The content the actor sends; `None` for a lifecycle change.
    pub fn content(&self) -> Option<Content> {
        match &self.action {
            Action::Say(text) => Some(Content::Text(text.clone())),
            Action::Change(_) => None,
            Action::Csat { score, comment } => Some(csat_reply(*score, comment.as_deref())),
        }
    }
}

/// The customer's answer to the CSAT form.
pub fn csat_reply(score: u8, comment: Option<&str>) -> Content {
    let mut values = BTreeMap::from([("score".to_owned(), score.to_string())]);
    if let Some(comment) = comment {
        values.insert("comment".to_owned(), comment.to_owned());
    }
    Content::FormReply(FormReply {
        form_id: CSAT_FORM_ID.to_owned(),
        values,
    })
}

/// A message of the stream, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbered {
    pub tenant: TenantId,
    pub conversation: ConversationId,
    pub seq: Seq,
    pub at: Timestamp,
    pub side: Side,
    pub content: Content,
}

impl Numbered {
    pub fn observed(&self) -> Observed<'_> {
        Observed {
            tenant: &self.tenant,
            conversation: self.conversation,
            seq: self.seq,
            at: self.at,
            side: &self.side,
            content: &self.content,
        }
    }
}

/// A plan and the settings it runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traffic {
    /// In time order.
    pub steps: Vec<Step>,
    pub targets: SlaTargets,
    /// The first Unix hour of the day and the hour after the plan's last
    /// step: a query range that holds everything.
    pub from_hour: i64,
    pub to_hour: i64,
}

fn role(actor: &Actor) -> Role {
    match actor {
        Actor::Customer(_) => Role::Customer,
        Actor::Agent(_) => Role::Agent,
        Actor::Bot(_) => Role::Bot,
        Actor::Service => Role::Service,
    }
}

fn side(actor: &Actor) -> Side {
    match actor {
        Actor::Customer(_) => Side::Customer,
        Actor::Agent(u) => Side::Agent(u.clone()),
        Actor::Bot(u) => Side::Bot(u.clone()),
        Actor::Service => Side::Service,
    }
}

impl Traffic {
    /// The messages the sequencer makes of the plan, in time order: each
    /// send a message (a bot's refused while the inbox has control), a
    /// customer's followed by the activity of what it changes by itself,
    /// and each change that changes something an activity. A CSAT answer
    /// changes nothing by itself: the sequencer must not take it for the
    /// customer coming back.
    pub fn numbered(&self) -> Vec<Numbered> {
        let limits = Limits::default();
        let mut state: HashMap<ConversationId, (Lifecycle, u64)> = HashMap::new();
        let mut out = Vec::new();
        for step in &self.steps {
            let (lifecycle, seq) = state.entry(step.conversation).or_default();
            let mut push = |side: Side, content: Content| {
                *seq += 1;
                out.push(Numbered {
                    tenant: step.tenant.clone(),
                    conversation: step.conversation,
                    seq: Seq::new(*seq),
                    at: step.at,
                    side,
                    content,
                });
            };
            let change = match &step.action {
                Action::Change(change) => Some(change.clone()),
                Action::Say(_) | Action::Csat { .. } => {
                    let Some(content) = step.content() else {
                        continue;
                    };
                    if !lifecycle.may_send(role(&step.actor)) {
                        continue;
                    }
                    let follow = match step.action {
                        Action::Say(_) => Some(lifecycle.follow_up(role(&step.actor), &content)),
                        _ => None,
                    };
                    push(side(&step.actor), content);
                    follow
                }
            };
            if let Some(change) = change
                && change != LifecycleChange::default()
                && let Ok(Some(next)) = lifecycle.apply(&change, &limits)
            {
                push(side(&step.actor), Content::Activity(next.clone()));
                *lifecycle = next;
            }
        }
        out
    }
}

/// A small deterministic generator (SplitMix64), so a plan is a function of
/// its seed on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let len = u64::try_from(items.len()).unwrap_or(u64::MAX);
        &items[usize::try_from(self.below(len)).unwrap_or(0)]
    }
}

fn id<T: std::str::FromStr>(text: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    match text.parse() {
        Ok(id) => id,
        Err(e) => unreachable!("generated id {text:?} is valid: {e:?}"),
    }
}

/// 2024-05-06 00:00 UTC, a Monday.
pub const DAY_START_MS: i64 = 1_714_953_600_000;

/// A day of traffic: about 160 conversations at two tenants.
pub fn day_of_traffic(seed: u64) -> Traffic {
    traffic(seed, 160)
}

/// Traffic of `conversations` conversations starting over one day (they
/// may run into the next).
pub fn traffic(seed: u64, conversations: usize) -> Traffic {
    let mut rng = Rng::new(seed);
    let tenants: [TenantId; 2] = [id("acme"), id("globex")];
    let agents: [UserId; 3] = [id("a"), id("b"), id("c")];
    let teams: [TeamId; 2] = [id("sales"), id("support")];
    let bot: UserId = id("bot");
    let mut steps = Vec::new();
    for n in 0..conversations {
        let tenant = rng.pick(&tenants).clone();
        let start = DAY_START_MS + i64::try_from(rng.below(86_400_000)).unwrap_or(0);
        // A UUIDv7 shape: the start's milliseconds, version 7, a counter.
        let conversation: ConversationId = id(&format!(
            "{:08x}-{:04x}-7000-8000-{:012x}",
            start >> 16,
            start & 0xffff,
            n + 1
        ));
        let customer: UserId = id(&format!("customer-{}", n + 1));
        let mut plan = Plan {
            steps: &mut steps,
            tenant,
            conversation,
            at: start,
        };
        let say = |actor: Actor, text: &str| (actor, Action::Say(text.to_owned()));
        let change = |actor: Actor, change: LifecycleChange| (actor, Action::Change(change));
        let me = Actor::Customer(customer.clone());
        plan.go(0, say(me.clone(), "hello, my order is late"));
        if rng.chance(60) {
            plan.go(
                rng.below(20),
                say(Actor::Bot(bot.clone()), "I can help with orders"),
            );
        }
        if rng.chance(10) {
            // Some leave before anyone answers.
            continue;
        }
        // Waiting for a person: the customer asks, or the bot hands over.
        if rng.chance(50) {
            plan.go(rng.below(120), say(me.clone(), "can I talk to a person?"));
        } else {
            let hand_over = LifecycleChange {
                owner: Some(Owner::Inbox),
                ..LifecycleChange::default()
            };
            plan.go(rng.below(120), change(Actor::Service, hand_over));
        }
        let team = rng.pick(&teams).clone();
        let mut agent = rng.pick(&agents).clone();
        let assign = |agent: &UserId, team: &TeamId| LifecycleChange {
            assignee: Some(Some(agent.clone())),
            team: Some(Some(team.clone())),
            owner: Some(Owner::Inbox),
            ..LifecycleChange::default()
        };
        plan.go(
            rng.below(900),
            change(Actor::Service, assign(&agent, &team)),
        );
        if rng.chance(15) {
            // Requeued: back to the team's queue, then someone else.
            let requeue = LifecycleChange {
                assignee: Some(None),
                ..LifecycleChange::default()
            };
            plan.go(rng.below(600), change(Actor::Service, requeue));
            agent = rng.pick(&agents).clone();
            plan.go(
                rng.below(900),
                change(Actor::Service, assign(&agent, &team)),
            );
        }
        let rounds = 1 + rng.below(3);
        for round in 0..rounds {
            for _ in 0..1 + rng.below(3) {
                plan.go(
                    rng.below(1_200),
                    say(Actor::Agent(agent.clone()), "let me check"),
                );
                if rng.chance(70) {
                    plan.go(rng.below(300), say(me.clone(), "thanks"));
                }
            }
            if rng.chance(10) {
                let pending = LifecycleChange {
                    status: Some(Status::Pending),
                    ..LifecycleChange::default()
                };
                plan.go(rng.below(60), change(Actor::Agent(agent.clone()), pending));
            }
            let resolve = LifecycleChange {
                status: Some(Status::Resolved),
                ..LifecycleChange::default()
            };
            plan.go(rng.below(600), change(Actor::Agent(agent.clone()), resolve));
            if rng.chance(60) {
                let score = u8::try_from(1 + rng.below(5)).unwrap_or(5);
                let comment = rng.chance(40).then(|| "quick, thanks".to_owned());
                plan.go(
                    rng.below(300),
                    (me.clone(), Action::Csat { score, comment }),
                );
            }
            if round + 1 < rounds {
                // The customer comes back: their message reopens it.
                plan.go(rng.below(7_200), say(me.clone(), "it happened again"));
            }
        }
        if rng.chance(50) {
            let close = LifecycleChange {
                status: Some(Status::Closed),
                ..LifecycleChange::default()
            };
            plan.go(rng.below(3_600), change(Actor::Service, close));
        }
    }
    steps.sort_by_key(|s| s.at);
    let to_hour = steps
        .last()
        .map_or(0, |s| s.at.as_millis().div_euclid(3_600_000))
        + 1;
    Traffic {
        steps,
        targets: SlaTargets {
            default_s: Some(600),
            by_team: BTreeMap::from([(teams[0].clone(), 300), (teams[1].clone(), 900)]),
        },
        from_hour: DAY_START_MS / 3_600_000,
        to_hour,
    }
}

/// Writes one conversation's steps, each some seconds after the last.
struct Plan<'a> {
    steps: &'a mut Vec<Step>,
    tenant: TenantId,
    conversation: ConversationId,
    at: i64,
}

impl Plan<'_> {
    fn go(&mut self, after_s: u64, (actor, action): (Actor, Action)) {
        self.at += i64::try_from(after_s).unwrap_or(0) * 1000 + 1;
        self.steps.push(Step {
            tenant: self.tenant.clone(),
            conversation: self.conversation,
            at: Timestamp::from_millis(self.at),
            actor,
            action,
        });
    }
}

/// A figure as the plan implies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Figure {
    Opened,
    FirstResponse { seconds: u32, missed: bool },
    Resolution(u32),
    Reopened,
    Message(Role),
    QueueWait(u32),
    Csat(u8),
}

/// One figure, where it counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub tenant: TenantId,
    pub hour: i64,
    pub team: Option<TeamId>,
    pub agent: Option<UserId>,
    pub figure: Figure,
}

fn secs(from: i64, to: i64) -> u32 {
    u32::try_from((to - from).max(0) / 1000).unwrap_or(u32::MAX)
}

/// A conversation as the independent walks see it.
#[derive(Default)]
struct Convo {
    tenant: Option<TenantId>,
    life: Lifecycle,
    opened: Option<i64>,
    first_team: Option<TeamId>,
    first_agent: Option<UserId>,
    asked: Option<i64>,
    answered: bool,
    since: i64,
    waiting: Option<i64>,
    csat: Option<Record>,
}

fn waits(l: &Lifecycle) -> bool {
    l.status == Status::Open
        && l.assignee.is_none()
        && (l.owner == Owner::Inbox || l.control_requested)
}

fn done(s: Status) -> bool {
    matches!(s, Status::Resolved | Status::Closed)
}

impl Convo {
    fn open(&mut self, at: i64) {
        if self.opened.is_none() {
            self.opened = Some(at);
            self.since = at;
        }
    }

    /// The customer wrote at `at`.
    fn asked(&mut self, at: i64) {
        self.open(at);
        self.asked.get_or_insert(at);
    }

    /// An agent wrote at `at`: the first response, if it is one.
    fn answer(&mut self, at: i64, target: Option<u32>) -> Option<Figure> {
        let (Some(asked), false) = (self.asked, self.answered) else {
            return None;
        };
        self.answered = true;
        let seconds = secs(asked, at);
        let missed = target.is_some_and(|t| seconds > t);
        Some(Figure::FirstResponse { seconds, missed })
    }

    /// The lifecycle became `next` at `at`.
    fn changed(
        &mut self,
        next: Lifecycle,
        at: i64,
        record: &dyn Fn(Option<TeamId>, Option<UserId>, Figure) -> Record,
        out: &mut Vec<Record>,
    ) {
        let prev = std::mem::replace(&mut self.life, next.clone());
        self.open(at);
        if self.first_team.is_none() {
            self.first_team.clone_from(&next.team);
        }
        if self.first_agent.is_none() {
            self.first_agent.clone_from(&next.assignee);
        }
        let team = next.team.clone().or(prev.team.clone());
        let agent = next.assignee.clone().or(prev.assignee.clone());
        if !done(prev.status) && done(next.status) {
            out.push(record(
                team,
                agent,
                Figure::Resolution(secs(self.since, at)),
            ));
        } else if done(prev.status) && !done(next.status) {
            out.push(record(team, agent, Figure::Reopened));
            self.since = at;
        }
        if !waits(&prev) && waits(&next) {
            self.waiting = Some(at);
        } else if waits(&prev) && !waits(&next) {
            if let (Some(since), Some(who)) = (self.waiting, &next.assignee) {
                out.push(record(
                    next.team.clone(),
                    Some(who.clone()),
                    Figure::QueueWait(secs(since, at)),
                ));
            }
            self.waiting = None;
        }
    }

    /// Its opening and its CSAT, once the walk is over.
    fn finish(self, out: &mut Vec<Record>) {
        if let (Some(opened), Some(tenant)) = (self.opened, self.tenant) {
            out.push(Record {
                tenant,
                hour: opened.div_euclid(3_600_000),
                team: self.first_team,
                agent: self.first_agent,
                figure: Figure::Opened,
            });
        }
        out.extend(self.csat);
    }
}

/// Every figure the plan implies, by the definitions in the crate's docs,
/// walked step by step.
pub fn records(traffic: &Traffic) -> Vec<Record> {
    let limits = Limits::default();
    let mut convos: BTreeMap<ConversationId, Convo> = BTreeMap::new();
    let mut out = Vec::new();
    for step in &traffic.steps {
        let c = convos.entry(step.conversation).or_default();
        c.tenant = Some(step.tenant.clone());
        let at = step.at.as_millis();
        let record = |team: Option<TeamId>, agent: Option<UserId>, figure| Record {
            tenant: step.tenant.clone(),
            hour: at.div_euclid(3_600_000),
            team,
            agent,
            figure,
        };
        let role = role(&step.actor);
        let change = match &step.action {
            Action::Csat { score, .. } => {
                if c.life.may_send(role) {
                    let (team, agent) = (c.life.team.clone(), c.life.assignee.clone());
                    c.csat = Some(record(team, agent, Figure::Csat(*score)));
                }
                None
            }
            Action::Say(text) => {
                if !c.life.may_send(role) {
                    continue;
                }
                let team = c.life.team.clone();
                let agent = match &step.actor {
                    Actor::Customer(_) => c.life.assignee.clone(),
                    Actor::Agent(user) => Some(user.clone()),
                    Actor::Bot(_) | Actor::Service => None,
                };
                out.push(record(team.clone(), agent.clone(), Figure::Message(role)));
                match &step.actor {
                    Actor::Customer(_) => {
                        c.asked(at);
                    }
                    Actor::Agent(_) => {
                        let target = traffic.targets.target_for(team.as_ref());
                        if let Some(first) = c.answer(at, target) {
                            out.push(record(team, agent, first));
                        }
                    }
                    _ => {}
                }
                Some(c.life.follow_up(role, &Content::Text(text.clone())))
            }
            Action::Change(change) => Some(change.clone()),
        };
        let Some(change) = change else { continue };
        let Ok(Some(next)) = c.life.apply(&change, &limits) else {
            continue;
        };
        c.changed(next, at, &record, &mut out);
    }
    for c in convos.into_values() {
        c.finish(&mut out);
    }
    out
}

fn nearest_rank(values: &mut [u32], p: usize) -> Option<u32> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = (p * values.len()).div_ceil(100).max(1);
    Some(values[rank - 1])
}

/// Every figure a stream of stored messages implies, by the definitions in
/// the crate's docs, walked message by message: for a test that carried a
/// plan out against a running system, whose clock stamped the messages
/// (so the plan's times are not theirs) and which may have added messages
/// of its own (the desk's survey, its assignments). `stream` holds each
/// conversation's messages in seq order (conversations may interleave);
/// each activity holds the lifecycle after it, so nothing is recomputed.
/// Like [`records`], it shares no code with the facts or the rollups.
pub fn stream_records(stream: &[Numbered], targets: &SlaTargets) -> Vec<Record> {
    let mut convos: BTreeMap<ConversationId, Convo> = BTreeMap::new();
    let mut out = Vec::new();
    for m in stream {
        let c = convos.entry(m.conversation).or_default();
        c.tenant = Some(m.tenant.clone());
        let at = m.at.as_millis();
        let record = |team: Option<TeamId>, agent: Option<UserId>, figure| Record {
            tenant: m.tenant.clone(),
            hour: at.div_euclid(3_600_000),
            team,
            agent,
            figure,
        };
        if let Content::Activity(next) = &m.content {
            c.changed(next.clone(), at, &record, &mut out);
            continue;
        }
        let team = c.life.team.clone();
        match &m.side {
            Side::Customer => {
                if let Content::FormReply(reply) = &m.content
                    && reply.form_id == CSAT_FORM_ID
                    && let Some(score) = reply
                        .values
                        .get("score")
                        .and_then(|s| s.trim().parse::<u8>().ok())
                        .filter(|s| (1..=5).contains(s))
                {
                    let agent = c.life.assignee.clone();
                    c.csat = Some(record(team, agent, Figure::Csat(score)));
                    continue;
                }
                let agent = c.life.assignee.clone();
                out.push(record(team, agent, Figure::Message(Role::Customer)));
                c.asked(at);
            }
            Side::Agent(user) => {
                let agent = Some(user.clone());
                out.push(record(
                    team.clone(),
                    agent.clone(),
                    Figure::Message(Role::Agent),
                ));
                if let Some(first) = c.answer(at, targets.target_for(team.as_ref())) {
                    out.push(record(team, agent, first));
                }
            }
            Side::Bot(_) => out.push(record(team, None, Figure::Message(Role::Bot))),
            Side::Service => out.push(record(team, None, Figure::Message(Role::Service))),
        }
    }
    for c in convos.into_values() {
        c.finish(&mut out);
    }
    out
}

/// The rows `q` must give for the plan, computed from [`records`] by brute
/// force.
pub fn expected(traffic: &Traffic, q: &Query) -> Vec<Row> {
    rows_of(records(traffic), q)
}

/// The rows `q` must give for a stream of stored messages, computed from
/// [`stream_records`] by brute force.
pub fn expected_from_stream(stream: &[Numbered], targets: &SlaTargets, q: &Query) -> Vec<Row> {
    rows_of(stream_records(stream, targets), q)
}

/// The rows `q` asks for, grouped from figures by brute force.
pub fn rows_of(records: Vec<Record>, q: &Query) -> Vec<Row> {
    type Key = (TenantId, Option<TeamId>, Option<UserId>, PeriodKey);
    let mut groups: BTreeMap<Key, Vec<Figure>> = BTreeMap::new();
    for r in records {
        if r.hour < q.from_hour
            || r.hour >= q.to_hour
            || q.tenant.as_ref().is_some_and(|t| *t != r.tenant)
            || q.team.as_ref().is_some_and(|t| r.team.as_ref() != Some(t))
            || q.agent
                .as_ref()
                .is_some_and(|a| r.agent.as_ref() != Some(a))
        {
            continue;
        }
        let period = match q.period {
            Period::Hour => PeriodKey::Hour(r.hour),
            Period::Day => PeriodKey::Day(r.hour.div_euclid(24)),
            Period::HourOfDay => {
                PeriodKey::HourOfDay(u8::try_from(r.hour.rem_euclid(24)).unwrap_or(0))
            }
            Period::Total => PeriodKey::Total,
        };
        let (team, agent) = match q.group {
            Group::Tenant => (None, None),
            Group::Team => (r.team, None),
            Group::Agent => (None, r.agent),
        };
        groups
            .entry((r.tenant, team, agent, period))
            .or_default()
            .push(r.figure);
    }
    let mut rows = Vec::new();
    for ((tenant, team, agent, period), figures) in groups {
        let count = |f: &dyn Fn(&Figure) -> bool| figures.iter().filter(|x| f(x)).count() as u64;
        let mut first: Vec<u32> = Vec::new();
        let mut resolution: Vec<u32> = Vec::new();
        let mut waits: Vec<u32> = Vec::new();
        let mut scores: Vec<u64> = Vec::new();
        for f in &figures {
            match f {
                Figure::FirstResponse { seconds, .. } => first.push(*seconds),
                Figure::Resolution(s) => resolution.push(*s),
                Figure::QueueWait(s) => waits.push(*s),
                Figure::Csat(s) => scores.push(u64::from(*s)),
                _ => {}
            }
        }
        let reopened = count(&|f| *f == Figure::Reopened);
        let resolutions = resolution.len() as u64;
        rows.push(Row {
            tenant,
            team,
            agent,
            period,
            opened: count(&|f| *f == Figure::Opened),
            first_responses: first.len() as u64,
            first_response_median_s: nearest_rank(&mut first, 50),
            first_response_p90_s: nearest_rank(&mut first, 90),
            sla_missed: count(&|f| matches!(f, Figure::FirstResponse { missed: true, .. })),
            resolutions,
            resolution_median_s: nearest_rank(&mut resolution, 50),
            resolution_p90_s: nearest_rank(&mut resolution, 90),
            reopened,
            reopen_rate: (resolutions > 0).then(|| reopened as f64 / resolutions as f64),
            messages_customer: count(&|f| *f == Figure::Message(Role::Customer)),
            messages_agent: count(&|f| *f == Figure::Message(Role::Agent)),
            messages_bot: count(&|f| *f == Figure::Message(Role::Bot)),
            messages_service: count(&|f| *f == Figure::Message(Role::Service)),
            queue_waits: waits.len() as u64,
            queue_wait_median_s: nearest_rank(&mut waits, 50),
            queue_wait_p90_s: nearest_rank(&mut waits, 90),
            csat_count: scores.len() as u64,
            csat_average: (!scores.is_empty())
                .then(|| scores.iter().sum::<u64>() as f64 / scores.len() as f64),
        });
    }
    rows
}
