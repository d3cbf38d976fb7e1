//! One conversation's facts: what the analytics remember of it, applied a
//! message at a time in seq order, and what it contributes to the rollups.
//!
//! # Definitions
//!
//! Durations are whole seconds, rounded down, never negative. Each figure
//! is counted in the hour it happened in, for the team and agent it
//! happened with:
//!
//! - **Opened**: at the conversation's first customer message or first
//!   activity, whichever comes first (a conversation of only business
//!   messages was never opened). Counted once, for the first team and the
//!   first agent the conversation is ever given (none until it has one),
//!   so each conversation counts once per team and per agent.
//! - **First response**: the first message of an agent (a person, not a
//!   bot or a service) after the customer's first message; its time is
//!   from that customer message. Counted for the answering agent and the
//!   team at that moment. **Missed SLA**: a first response slower than the
//!   target of that team ([`SlaTargets`]), as it was when the response
//!   came; the target is kept with the response.
//! - **Resolution**: an activity that takes the status from open or
//!   pending to resolved or closed; its time runs from the opening, or
//!   from the latest reopening. **Reopened**: an activity that takes it
//!   from resolved or closed back to open or pending. Both are counted for
//!   the team and assignee the activity leaves, or those before it when it
//!   clears them.
//! - **Queue wait**: a conversation waits for a person while it is open,
//!   unassigned and either the inbox owns it or control was asked for (as
//!   the desk queues it). A wait ended by an assignment is counted, in the
//!   hour of the assignment, for the assigned agent and the team; a wait
//!   ended otherwise (resolved unassigned, handed back to the bot) is not.
//! - **Messages by side**: every message but activities and CSAT answers,
//!   for the team at the time and the agent who sent it (an agent's), the
//!   assignee (a customer's), or none (a bot's or a service's).
//! - **CSAT**: the customer's latest score; a later answer replaces an
//!   earlier one. Counted in the hour of the answer for the team and
//!   assignee at that moment.

use std::collections::BTreeMap;

use natter_core::{
    ConversationId, Lifecycle, Owner, Seq, Status, TeamId, TenantId, Timestamp, UserId,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::observe::{Observed, Signal, classify};
use crate::rollup::{Delta, HourKey, Rollup, hour_of};
use crate::serde_ids::{millis, opt_millis, opt_text, text};

/// First response targets, in seconds, per team.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlaTargets {
    /// For conversations without a team, and teams without a target.
    pub default_s: Option<u32>,
    pub by_team: BTreeMap<TeamId, u32>,
}

impl SlaTargets {
    pub fn target_for(&self, team: Option<&TeamId>) -> Option<u32> {
        team.and_then(|t| self.by_team.get(t).copied())
            .or(self.default_s)
    }
}

/// What applying a message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The facts had applied it already: nothing changed, nothing to write.
    Replay,
    /// The facts moved on to this message (write them) and the rollups
    /// change by this delta (possibly empty), in the same write.
    Advanced(Delta),
}

/// Something that happened at a moment, with whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    #[serde(with = "millis")]
    pub at: Timestamp,
    #[serde(with = "opt_text")]
    pub team: Option<TeamId>,
    #[serde(with = "opt_text")]
    pub agent: Option<UserId>,
}

/// Something that ended at a moment after lasting a while.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timed {
    pub mark: Mark,
    pub seconds: u32,
}

/// The conversation's first response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstResponse {
    #[serde(with = "millis")]
    pub at: Timestamp,
    pub seconds: u32,
    #[serde(with = "text")]
    pub agent: UserId,
    #[serde(with = "opt_text")]
    pub team: Option<TeamId>,
    /// The team's target when the response came.
    pub target_s: Option<u32>,
}

impl FirstResponse {
    pub fn missed_sla(&self) -> bool {
        self.target_s.is_some_and(|target| self.seconds > target)
    }
}

/// The customer's satisfaction score.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Csat {
    pub mark: Mark,
    /// 1 to 5.
    pub score: u8,
    pub comment: Option<String>,
}

/// Messages by side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageCounts {
    pub customer: u64,
    pub agent: u64,
    pub bot: u64,
    pub service: u64,
}

impl MessageCounts {
    fn add(&mut self, other: &MessageCounts) {
        self.customer += other.customer;
        self.agent += other.agent;
        self.bot += other.bot;
        self.service += other.service;
    }

    /// What these messages add to a rollup.
    fn rollup(&self) -> Rollup {
        Rollup {
            messages_customer: self.customer,
            messages_agent: self.agent,
            messages_bot: self.bot,
            messages_service: self.service,
            ..Rollup::default()
        }
    }
}

/// Messages of one hour, team and agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Bucket {
    hour: i64,
    #[serde(with = "opt_text")]
    team: Option<TeamId>,
    #[serde(with = "opt_text")]
    agent: Option<UserId>,
    counts: MessageCounts,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
enum SeenStatus {
    #[default]
    Open,
    Pending,
    Resolved,
    Closed,
}

impl SeenStatus {
    fn done(self) -> bool {
        matches!(self, SeenStatus::Resolved | SeenStatus::Closed)
    }
}

/// What the analytics keep of the lifecycle the newest activity left.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    status: SeenStatus,
    inbox: bool,
    control_requested: bool,
    #[serde(with = "opt_text")]
    assignee: Option<UserId>,
    #[serde(with = "opt_text")]
    team: Option<TeamId>,
}

impl From<&Lifecycle> for Seen {
    fn from(l: &Lifecycle) -> Self {
        Seen {
            status: match l.status {
                Status::Open => SeenStatus::Open,
                Status::Pending => SeenStatus::Pending,
                Status::Resolved => SeenStatus::Resolved,
                Status::Closed => SeenStatus::Closed,
            },
            inbox: l.owner == Owner::Inbox,
            control_requested: l.control_requested,
            assignee: l.assignee.clone(),
            team: l.team.clone(),
        }
    }
}

impl Seen {
    /// Whether the conversation waits for a person, as the desk queues it.
    fn waiting(&self) -> bool {
        self.status == SeenStatus::Open
            && self.assignee.is_none()
            && (self.inbox || self.control_requested)
    }
}

/// Everything the analytics remember of one conversation: one record, the
/// unit the shell stores (serde). Its size grows with the conversation's
/// resolutions, reopenings and waits (a handful each) and with the hours,
/// teams and agents its messages came in (one small entry each), never
/// with the number of messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationFacts {
    #[serde(with = "text")]
    tenant: TenantId,
    #[serde(with = "text")]
    conversation: ConversationId,
    /// The last seq applied; 0 before the first.
    last_seq: u64,
    lifecycle: Seen,
    #[serde(with = "opt_millis")]
    opened_at: Option<Timestamp>,
    #[serde(with = "opt_text")]
    first_team: Option<TeamId>,
    #[serde(with = "opt_text")]
    first_agent: Option<UserId>,
    #[serde(with = "opt_millis")]
    first_customer_at: Option<Timestamp>,
    first_response: Option<FirstResponse>,
    /// The opening or the latest reopening: where a resolution's time runs
    /// from.
    #[serde(with = "opt_millis")]
    episode_start: Option<Timestamp>,
    resolutions: Vec<Timed>,
    reopens: Vec<Mark>,
    #[serde(with = "opt_millis")]
    waiting_since: Option<Timestamp>,
    queue_waits: Vec<Timed>,
    /// Sorted by hour, team and agent.
    messages: Vec<Bucket>,
    csat: Option<Csat>,
}

fn seconds(from: Timestamp, to: Timestamp) -> u32 {
    let ms = to.as_millis().saturating_sub(from.as_millis()).max(0);
    u32::try_from(ms / 1000).unwrap_or(u32::MAX)
}

impl ConversationFacts {
    /// The facts of a conversation nothing is known of yet: the next
    /// message they take is seq 1.
    pub fn new(tenant: TenantId, conversation: ConversationId) -> Self {
        ConversationFacts {
            tenant,
            conversation,
            last_seq: 0,
            lifecycle: Seen::default(),
            opened_at: None,
            first_team: None,
            first_agent: None,
            first_customer_at: None,
            first_response: None,
            episode_start: None,
            resolutions: Vec::new(),
            reopens: Vec::new(),
            waiting_since: None,
            queue_waits: Vec::new(),
            messages: Vec::new(),
            csat: None,
        }
    }

    /// The facts of a conversation whose messages up to `last_seq` were
    /// never seen (it is older than the analytics): the next message they
    /// take is `last_seq + 1`, and what came before counts nowhere, so a
    /// conversation first seen mid-way starts its figures there instead of
    /// waiting forever for seqs nobody will deliver again.
    pub fn starting_after(tenant: TenantId, conversation: ConversationId, last_seq: Seq) -> Self {
        let mut facts = ConversationFacts::new(tenant, conversation);
        facts.last_seq = last_seq.get();
        facts
    }

    /// Skips the facts forward past messages that will never be seen (lost
    /// from the stream): the next message they take is `last_seq + 1`.
    /// What the skipped messages would have changed is missing from the
    /// figures; nothing counted is undone. Earlier than where they stand,
    /// it changes nothing.
    pub fn skip_to(&mut self, last_seq: Seq) {
        self.last_seq = self.last_seq.max(last_seq.get());
    }

    /// Applies the next message of the conversation: seq `last_seq + 1`.
    /// An earlier seq is a replay and changes nothing; a later one is a
    /// gap, and so is an error, as is another conversation's message.
    /// `targets` are read only when the message is the first response.
    pub fn apply(&mut self, event: &Observed<'_>, targets: &SlaTargets) -> Result<Applied> {
        if event.conversation != self.conversation || *event.tenant != self.tenant {
            return Err(Error::Foreign {
                facts: self.conversation,
                got: event.conversation,
            });
        }
        let seq = event.seq.get();
        if seq <= self.last_seq {
            return Ok(Applied::Replay);
        }
        if seq != self.last_seq + 1 {
            return Err(Error::Gap {
                conversation: self.conversation,
                expected: Seq::new(self.last_seq + 1),
                got: event.seq,
            });
        }
        let signal = classify(event.side, event.content);
        // Most messages only add one to their bucket: their delta is that
        // count, with no need to compare every contribution around them.
        let only_counted = match signal {
            Signal::Customer => self.opened_at.is_some(),
            Signal::Agent(_) => self.first_customer_at.is_none() || self.first_response.is_some(),
            Signal::Bot(_) | Signal::Service => true,
            Signal::Activity(_) | Signal::Csat { .. } => false,
        };
        let before = (!only_counted).then(|| self.contributions());
        self.last_seq = seq;
        let at = event.at;
        let one = |side: fn(&mut MessageCounts)| {
            let mut counts = MessageCounts::default();
            side(&mut counts);
            counts
        };
        let counted = match signal {
            Signal::Customer => {
                self.open(at);
                self.first_customer_at.get_or_insert(at);
                let agent = self.lifecycle.assignee.clone();
                Some(self.count(at, agent, one(|c| c.customer = 1)))
            }
            Signal::Agent(user) => {
                if let (Some(asked), None) = (self.first_customer_at, &self.first_response) {
                    let team = self.lifecycle.team.clone();
                    self.first_response = Some(FirstResponse {
                        at,
                        seconds: seconds(asked, at),
                        agent: user.clone(),
                        target_s: targets.target_for(team.as_ref()),
                        team,
                    });
                }
                Some(self.count(at, Some(user.clone()), one(|c| c.agent = 1)))
            }
            Signal::Bot(_) => Some(self.count(at, None, one(|c| c.bot = 1))),
            Signal::Service => Some(self.count(at, None, one(|c| c.service = 1))),
            Signal::Activity(lifecycle) => {
                self.activity(at, Seen::from(lifecycle));
                None
            }
            Signal::Csat { score, comment } => {
                self.csat = Some(Csat {
                    mark: Mark {
                        at,
                        team: self.lifecycle.team.clone(),
                        agent: self.lifecycle.assignee.clone(),
                    },
                    score,
                    comment: comment.map(str::to_owned),
                });
                None
            }
        };
        Ok(Applied::Advanced(match (before, counted) {
            (Some(before), _) => Delta::between(before, self.contributions()),
            (None, Some((key, added))) => Delta::added(key, added),
            (None, None) => Delta::default(),
        }))
    }

    fn open(&mut self, at: Timestamp) {
        if self.opened_at.is_none() {
            self.opened_at = Some(at);
            self.episode_start = Some(at);
        }
    }

    /// Adds `added` to the bucket of `at`, the team and `agent`; returns
    /// where that counts in the rollups, and what it adds there.
    fn count(
        &mut self,
        at: Timestamp,
        agent: Option<UserId>,
        added: MessageCounts,
    ) -> (HourKey, Rollup) {
        let hour = hour_of(at);
        let team = self.lifecycle.team.clone();
        let found = self
            .messages
            .binary_search_by(|b| (b.hour, &b.team, &b.agent).cmp(&(hour, &team, &agent)));
        let key = HourKey {
            tenant: self.tenant.clone(),
            hour,
            team: team.clone(),
            agent: agent.clone(),
        };
        match found {
            Ok(index) => self.messages[index].counts.add(&added),
            Err(index) => self.messages.insert(
                index,
                Bucket {
                    hour,
                    team,
                    agent,
                    counts: added,
                },
            ),
        }
        (key, added.rollup())
    }

    fn activity(&mut self, at: Timestamp, next: Seen) {
        self.open(at);
        let prev = std::mem::replace(&mut self.lifecycle, next);
        let next = &self.lifecycle;
        if self.first_team.is_none() {
            self.first_team.clone_from(&next.team);
        }
        if self.first_agent.is_none() {
            self.first_agent.clone_from(&next.assignee);
        }
        let mark = Mark {
            at,
            team: next.team.clone().or_else(|| prev.team.clone()),
            agent: next.assignee.clone().or_else(|| prev.assignee.clone()),
        };
        if !prev.status.done() && next.status.done() {
            let from = self.episode_start.unwrap_or(at);
            self.resolutions.push(Timed {
                mark: mark.clone(),
                seconds: seconds(from, at),
            });
        } else if prev.status.done() && !next.status.done() {
            self.reopens.push(mark);
            self.episode_start = Some(at);
        }
        match (prev.waiting(), next.waiting()) {
            (false, true) => self.waiting_since = Some(at),
            (true, false) => {
                if let (Some(since), Some(agent)) = (self.waiting_since, &next.assignee) {
                    self.queue_waits.push(Timed {
                        mark: Mark {
                            at,
                            team: next.team.clone(),
                            agent: Some(agent.clone()),
                        },
                        seconds: seconds(since, at),
                    });
                }
                self.waiting_since = None;
            }
            _ => {}
        }
    }

    /// What this conversation adds to each hour key's rollup. The rollups
    /// are, by definition, the sum of these over all conversations.
    pub fn contributions(&self) -> BTreeMap<HourKey, Rollup> {
        let mut out: BTreeMap<HourKey, Rollup> = BTreeMap::new();
        let mut add = |when: Timestamp,
                       team: &Option<TeamId>,
                       agent: &Option<UserId>,
                       f: &mut dyn FnMut(&mut Rollup)| {
            let key = HourKey {
                tenant: self.tenant.clone(),
                hour: hour_of(when),
                team: team.clone(),
                agent: agent.clone(),
            };
            f(out.entry(key).or_default());
        };
        if let Some(opened) = self.opened_at {
            add(opened, &self.first_team, &self.first_agent, &mut |r| {
                r.opened += 1;
            });
        }
        if let Some(fr) = &self.first_response {
            add(fr.at, &fr.team, &Some(fr.agent.clone()), &mut |r| {
                r.first_responses.insert(fr.seconds);
                r.sla_missed += u64::from(fr.missed_sla());
            });
        }
        for t in &self.resolutions {
            add(t.mark.at, &t.mark.team, &t.mark.agent, &mut |r| {
                r.resolutions.insert(t.seconds);
            });
        }
        for m in &self.reopens {
            add(m.at, &m.team, &m.agent, &mut |r| r.reopened += 1);
        }
        for t in &self.queue_waits {
            add(t.mark.at, &t.mark.team, &t.mark.agent, &mut |r| {
                r.queue_waits.insert(t.seconds);
            });
        }
        for b in &self.messages {
            let when = Timestamp::from_millis(b.hour * 3_600_000);
            add(when, &b.team, &b.agent, &mut |r| {
                r.merge(&b.counts.rollup())
            });
        }
        if let Some(c) = &self.csat {
            add(c.mark.at, &c.mark.team, &c.mark.agent, &mut |r| {
                r.csat[usize::from(c.score - 1)] += 1;
            });
        }
        out
    }

    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    pub fn conversation(&self) -> ConversationId {
        self.conversation
    }

    /// The last seq applied; `Seq::ZERO` before the first.
    pub fn last_seq(&self) -> Seq {
        Seq::new(self.last_seq)
    }

    pub fn opened_at(&self) -> Option<Timestamp> {
        self.opened_at
    }

    pub fn first_response(&self) -> Option<&FirstResponse> {
        self.first_response.as_ref()
    }

    pub fn resolutions(&self) -> &[Timed] {
        &self.resolutions
    }

    pub fn reopens(&self) -> &[Mark] {
        &self.reopens
    }

    pub fn queue_waits(&self) -> &[Timed] {
        &self.queue_waits
    }

    /// Since when the conversation waits for a person, if it does.
    pub fn waiting_since(&self) -> Option<Timestamp> {
        self.waiting_since
    }

    /// The customer's score and comment, shown on the conversation.
    pub fn csat(&self) -> Option<&Csat> {
        self.csat.as_ref()
    }

    /// All its messages by side.
    pub fn messages(&self) -> MessageCounts {
        self.messages
            .iter()
            .fold(MessageCounts::default(), |mut all, b| {
                all.customer += b.counts.customer;
                all.agent += b.counts.agent;
                all.bot += b.counts.bot;
                all.service += b.counts.service;
                all
            })
    }
}
