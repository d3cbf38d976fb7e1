//! The router: one per tenant, holding its teams, agents and open desk
//! conversations in memory.
//!
//! The rules:
//!
//! - An agent is *eligible* for a waiting conversation when they belong to
//!   its team, have every skill it needs, are [`Presence::Online`], and hold
//!   fewer conversations than their capacity, counting outstanding offers.
//!   So no offer ever takes an agent past their capacity.
//! - After every call the router settles: it walks the waiting
//!   conversations of all teams in queue order (most urgent first, then
//!   oldest [`Request::since`], then conversation id) and offers each to an
//!   eligible agent, chosen by its team's [`Strategy`]. A conversation no
//!   agent is eligible for keeps its place and does not hold up those
//!   behind it. When a call returns, no eligible agent is left idle while a
//!   conversation waits for them.
//! - An agent who declined a conversation or let its offer time out is not
//!   offered it again while another agent is eligible for it.
//! - An agent going [`Presence::Away`] loses their outstanding offers and
//!   keeps their conversations; going [`Presence::Offline`] (or being
//!   removed) also sends their conversations back to the queue, where their
//!   original `since` puts them ahead of later arrivals.
//! - A transfer to an agent offers the conversation to that agent alone;
//!   if they decline or let it time out it waits in its team's queue. A
//!   transfer to a team moves it to that team's queue, in the place its
//!   `since` earns there.
//! - A reopened conversation goes straight back to its last agent when they
//!   are online with room, and to its team's queue otherwise.
//!
//! The estimated wait of a conversation with `ahead` conversations in front
//! of it is `ceil((ahead + 1) / max(1, slots)) × handle`: `slots` is the
//! summed capacity of the team's online agents, each slot frees up once per
//! `handle`, the team's average handle time (assignment to resolution), so
//! the conversation is served in round `ceil((ahead + 1) / slots)`.
//! `handle` is a moving average, `(7 × old + sample) / 8` (the smoothing of
//! TCP's round-trip time), starting from the first observed handle time and
//! assumed to be five minutes before any. Agents in several teams count in
//! each, so the estimate is optimistic when teams share agents.
//!
//! What is durable is the conversation store: which conversations wait for
//! which team and which are assigned to whom; the service records each
//! [`Step::Assign`] and [`Step::Requeue`] there. Offers are not durable. A
//! restarted service builds a fresh router, configures it, reports every
//! agent's presence and hands it the stored state with [`Router::restore`]:
//! offers are made anew. A crash forgets who declined what and the observed
//! handle times.
//!
//! The router keeps one entry per agent and per open desk conversation, so
//! its size is bounded by the tenant's open conversations. Every call makes
//! one pass over the waiting conversations, to settle and to report
//! positions, scanning the agents for each conversation while any has room.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use natter_core::{ConversationId, Timestamp, UserId};

use crate::{
    Agent, Position, Presence, Priority, Request, Result, RoutingError, Strategy, Team, TeamId,
};

/// The handle time a team is assumed to have until one is observed.
const DEFAULT_HANDLE_MS: u64 = 5 * 60 * 1000;

/// What the service must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Offer `conversation` to `agent`. The offer stands until `until`,
    /// when [`Router::tick`] withdraws it (see [`Router::next_timeout`]).
    Offer {
        conversation: ConversationId,
        agent: UserId,
        until: Timestamp,
    },
    /// The offer is off: it timed out, the agent left or was changed, or
    /// the conversation was transferred or resolved.
    Withdraw {
        conversation: ConversationId,
        agent: UserId,
    },
    /// `agent` handles `conversation` now: record it.
    Assign {
        conversation: ConversationId,
        agent: UserId,
    },
    /// `conversation` is unassigned and waits for `team`: record it. Sent
    /// when its agent goes offline or is removed, and on a transfer.
    Requeue {
        conversation: ConversationId,
        team: TeamId,
    },
    /// Waiting conversations whose position or estimated wait changed: tell
    /// their customers. Always the last step of a call.
    Positions(Vec<(ConversationId, Position)>),
}

/// Queue order: most urgent, then oldest, then lowest id.
type QueueKey = (Reverse<Priority>, Timestamp, ConversationId);

fn queue_key(request: &Request) -> QueueKey {
    (
        Reverse(request.priority),
        request.since,
        request.conversation,
    )
}

fn plus_ms(now: Timestamp, ms: u64) -> Timestamp {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    Timestamp::from_millis(now.as_millis().saturating_add(ms))
}

#[derive(Debug)]
struct TeamState {
    config: Team,
    /// Who the team offered a conversation to last, for the rotation.
    last_offered: Option<UserId>,
    handle_ms: Option<u64>,
}

#[derive(Debug)]
struct AgentState {
    config: Agent,
    presence: Presence,
    assigned: BTreeSet<ConversationId>,
    offered: BTreeSet<ConversationId>,
}

impl AgentState {
    fn load(&self) -> usize {
        self.assigned.len() + self.offered.len()
    }

    /// Online with room for one more.
    fn has_room(&self) -> bool {
        self.presence == Presence::Online && self.load() < self.config.capacity as usize
    }

    fn is_eligible(&self, request: &Request) -> bool {
        self.has_room()
            && self.config.teams.contains(&request.team)
            && request.skills.is_subset(&self.config.skills)
    }
}

#[derive(Debug)]
struct Conversation {
    request: Request,
    /// Agents who declined it or let its offer time out.
    refused: BTreeSet<UserId>,
    state: State,
}

#[derive(Debug)]
enum State {
    /// In its team's queue; `reported` is the position last told.
    Queued {
        reported: Option<Position>,
    },
    Offered {
        agent: UserId,
        until: Timestamp,
    },
    /// `at` starts the handle time.
    Assigned {
        agent: UserId,
        at: Timestamp,
    },
}

impl State {
    fn agent(&self) -> Option<&UserId> {
        match self {
            State::Queued { .. } => None,
            State::Offered { agent, .. } | State::Assigned { agent, .. } => Some(agent),
        }
    }
}

const QUEUED: State = State::Queued { reported: None };

/// The routing of one tenant's desk. See the module docs.
#[derive(Debug, Default)]
pub struct Router {
    teams: BTreeMap<TeamId, TeamState>,
    agents: BTreeMap<UserId, AgentState>,
    conversations: BTreeMap<ConversationId, Conversation>,
    queue: BTreeSet<QueueKey>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a team, or changes its strategy and offer timeout (offers out
    /// already keep theirs).
    pub fn set_team(&mut self, team: Team) {
        match self.teams.get_mut(&team.id) {
            Some(state) => state.config = team,
            None => {
                let state = TeamState {
                    config: team,
                    last_offered: None,
                    handle_ms: None,
                };
                self.teams.insert(state.config.id.clone(), state);
            }
        }
    }

    /// Adds an agent, offline until [`Router::set_presence`] says
    /// otherwise, or changes their teams, skills and capacity. Their
    /// outstanding offers are withdrawn and made anew under the new
    /// settings; their conversations stay, even beyond a lowered capacity.
    pub fn set_agent(&mut self, agent: Agent, now: Timestamp) -> Result<Vec<Step>> {
        if let Some(team) = agent.teams.iter().find(|t| !self.teams.contains_key(*t)) {
            return Err(RoutingError::UnknownTeam(team.clone()));
        }
        let id = agent.id.clone();
        match self.agents.get_mut(&id) {
            Some(state) => state.config = agent,
            None => {
                let state = AgentState {
                    config: agent,
                    presence: Presence::Offline,
                    assigned: BTreeSet::new(),
                    offered: BTreeSet::new(),
                };
                self.agents.insert(id.clone(), state);
            }
        }
        let mut steps = Vec::new();
        self.send_back(&id, false, &mut steps);
        self.settle(now, &mut steps);
        Ok(steps)
    }

    /// Removes an agent; their conversations go back to the queue as if
    /// they had gone offline.
    pub fn remove_agent(&mut self, agent: &UserId, now: Timestamp) -> Result<Vec<Step>> {
        let steps = self.set_presence(agent, Presence::Offline, now)?;
        self.agents.remove(agent);
        Ok(steps)
    }

    /// An agent's presence changed (or is reported again: going offline
    /// always sends back whatever they hold).
    pub fn set_presence(
        &mut self,
        agent: &UserId,
        presence: Presence,
        now: Timestamp,
    ) -> Result<Vec<Step>> {
        let state = self
            .agents
            .get_mut(agent)
            .ok_or_else(|| RoutingError::UnknownAgent(agent.clone()))?;
        state.presence = presence;
        let mut steps = Vec::new();
        if presence != Presence::Online {
            self.send_back(agent, presence == Presence::Offline, &mut steps);
        }
        self.settle(now, &mut steps);
        Ok(steps)
    }

    /// A conversation asks for an agent.
    pub fn enqueue(&mut self, request: Request, now: Timestamp) -> Result<Vec<Step>> {
        self.check_new(&request)?;
        self.place(Conversation::new(request), QUEUED);
        Ok(self.settled(now))
    }

    /// `agent` accepts the conversation offered to them, even after its
    /// timeout if no [`Router::tick`] has withdrawn it yet.
    pub fn accept(
        &mut self,
        conversation: ConversationId,
        agent: &UserId,
        now: Timestamp,
    ) -> Result<Vec<Step>> {
        let mut taken = self.take_offer(conversation, agent)?;
        taken.refused.clear();
        let assigned = State::Assigned {
            agent: agent.clone(),
            at: now,
        };
        self.place(taken, assigned);
        let mut steps = vec![Step::Assign {
            conversation,
            agent: agent.clone(),
        }];
        self.settle(now, &mut steps);
        Ok(steps)
    }

    /// `agent` declines the conversation offered to them: it goes to
    /// another eligible agent, or back to them if there is none.
    pub fn decline(
        &mut self,
        conversation: ConversationId,
        agent: &UserId,
        now: Timestamp,
    ) -> Result<Vec<Step>> {
        let mut taken = self.take_offer(conversation, agent)?;
        taken.refused.insert(agent.clone());
        self.place(taken, QUEUED);
        Ok(self.settled(now))
    }

    /// The conversation is resolved or closed: it leaves the desk, freeing
    /// its agent. Resolving one the router does not hold does nothing, so
    /// a redelivered event is harmless.
    pub fn resolve(&mut self, conversation: ConversationId, now: Timestamp) -> Vec<Step> {
        let mut steps = Vec::new();
        if let Some(gone) = self.release(conversation, &mut steps)
            && let State::Assigned { at, .. } = gone.state
            && let Some(team) = self.teams.get_mut(&gone.request.team)
        {
            let sample = u64::try_from(now.as_millis().saturating_sub(at.as_millis())).unwrap_or(0);
            let average = match team.handle_ms {
                Some(old) => old.saturating_mul(7).saturating_add(sample) / 8,
                None => sample,
            };
            team.handle_ms = Some(average);
        }
        self.settle(now, &mut steps);
        steps
    }

    /// A resolved conversation is reopened: it goes back to `last_agent`
    /// if they are online with room, and to the queue otherwise.
    pub fn reopen(
        &mut self,
        request: Request,
        last_agent: Option<&UserId>,
        now: Timestamp,
    ) -> Result<Vec<Step>> {
        self.check_new(&request)?;
        let conversation = request.conversation;
        let back_to = last_agent.filter(|a| self.agents.get(*a).is_some_and(AgentState::has_room));
        let mut steps = Vec::new();
        match back_to {
            Some(agent) => {
                let assigned = State::Assigned {
                    agent: agent.clone(),
                    at: now,
                };
                self.place(Conversation::new(request), assigned);
                steps.push(Step::Assign {
                    conversation,
                    agent: agent.clone(),
                });
            }
            None => self.place(Conversation::new(request), QUEUED),
        }
        self.settle(now, &mut steps);
        Ok(steps)
    }

    /// Offers the conversation to `agent`, who must be online with room (in
    /// any team, with any skills: someone chose them). Transferring it to
    /// the agent who holds it does nothing.
    pub fn transfer_to_agent(
        &mut self,
        conversation: ConversationId,
        agent: &UserId,
        now: Timestamp,
    ) -> Result<Vec<Step>> {
        let held_by = self
            .conversations
            .get(&conversation)
            .ok_or(RoutingError::UnknownConversation(conversation))?
            .state
            .agent();
        let target = self
            .agents
            .get(agent)
            .ok_or_else(|| RoutingError::UnknownAgent(agent.clone()))?;
        if held_by == Some(agent) {
            return Ok(Vec::new());
        }
        if !target.has_room() {
            return Err(RoutingError::Unavailable(agent.clone()));
        }
        let mut steps = Vec::new();
        if let Some(moved) = self.release(conversation, &mut steps) {
            if let State::Assigned { .. } = moved.state {
                steps.push(Step::Requeue {
                    conversation,
                    team: moved.request.team.clone(),
                });
            }
            self.offer(moved, agent.clone(), now, &mut steps);
        }
        self.settle(now, &mut steps);
        Ok(steps)
    }

    /// Moves the conversation to `team`'s queue, ending its offer or
    /// assignment. Who refused it in its old team is forgotten.
    pub fn transfer_to_team(
        &mut self,
        conversation: ConversationId,
        team: &TeamId,
        now: Timestamp,
    ) -> Result<Vec<Step>> {
        if !self.conversations.contains_key(&conversation) {
            return Err(RoutingError::UnknownConversation(conversation));
        }
        if !self.teams.contains_key(team) {
            return Err(RoutingError::UnknownTeam(team.clone()));
        }
        let mut steps = Vec::new();
        if let Some(mut moved) = self.release(conversation, &mut steps) {
            moved.request.team = team.clone();
            moved.refused.clear();
            steps.push(Step::Requeue {
                conversation,
                team: team.clone(),
            });
            self.place(moved, QUEUED);
        }
        self.settle(now, &mut steps);
        Ok(steps)
    }

    /// Withdraws the offers whose time is up, at or before `now`.
    pub fn tick(&mut self, now: Timestamp) -> Vec<Step> {
        let expired: Vec<(ConversationId, UserId)> = self
            .conversations
            .iter()
            .filter_map(|(id, c)| match &c.state {
                State::Offered { agent, until } if *until <= now => Some((*id, agent.clone())),
                _ => None,
            })
            .collect();
        let mut steps = Vec::new();
        for (conversation, agent) in expired {
            if let Some(timed_out) = self.conversations.get_mut(&conversation) {
                timed_out.refused.insert(agent);
            }
            self.send_to_queue(conversation, &mut steps);
        }
        self.settle(now, &mut steps);
        steps
    }

    /// When the next offer times out: call [`Router::tick`] then.
    pub fn next_timeout(&self) -> Option<Timestamp> {
        self.conversations
            .values()
            .filter_map(|c| match c.state {
                State::Offered { until, .. } => Some(until),
                _ => None,
            })
            .min()
    }

    /// Rebuilds a restarted service's desk from the store: the
    /// conversations assigned to each agent (their handle time starts
    /// `now`) and those waiting. Report every agent's presence first: an
    /// agent still offline gets nothing back, their conversations wait.
    /// Assignments are taken as they are, even beyond an agent's capacity.
    pub fn restore(
        &mut self,
        assigned: Vec<(Request, UserId)>,
        waiting: Vec<Request>,
        now: Timestamp,
    ) -> Result<Vec<Step>> {
        let mut seen = BTreeSet::new();
        for request in assigned.iter().map(|(r, _)| r).chain(&waiting) {
            self.check_new(request)?;
            if !seen.insert(request.conversation) {
                return Err(RoutingError::AlreadyRouted(request.conversation));
            }
        }
        if let Some((_, agent)) = assigned.iter().find(|(_, a)| !self.agents.contains_key(a)) {
            return Err(RoutingError::UnknownAgent(agent.clone()));
        }
        let mut steps = Vec::new();
        for (request, agent) in assigned {
            let present = self.agents.get(&agent).map(|a| a.presence);
            if present == Some(Presence::Offline) {
                steps.push(Step::Requeue {
                    conversation: request.conversation,
                    team: request.team.clone(),
                });
                self.place(Conversation::new(request), QUEUED);
            } else {
                self.place(
                    Conversation::new(request),
                    State::Assigned { agent, at: now },
                );
            }
        }
        for request in waiting {
            self.place(Conversation::new(request), QUEUED);
        }
        self.settle(now, &mut steps);
        Ok(steps)
    }

    fn check_new(&self, request: &Request) -> Result<()> {
        if !self.teams.contains_key(&request.team) {
            return Err(RoutingError::UnknownTeam(request.team.clone()));
        }
        if self.conversations.contains_key(&request.conversation) {
            return Err(RoutingError::AlreadyRouted(request.conversation));
        }
        Ok(())
    }

    /// Takes out the conversation offered to `agent`, to accept or decline.
    fn take_offer(&mut self, conversation: ConversationId, agent: &UserId) -> Result<Conversation> {
        let not_offered = || RoutingError::NotOffered {
            conversation,
            agent: agent.clone(),
        };
        let offered = matches!(
            self.conversations.get(&conversation).map(|c| &c.state),
            Some(State::Offered { agent: to, .. }) if to == agent
        );
        if !offered {
            return Err(not_offered());
        }
        self.detach(conversation).ok_or_else(not_offered)
    }

    /// Sends the agent's offers back to the queue, and their assigned
    /// conversations too if `assigned`.
    fn send_back(&mut self, agent: &UserId, assigned: bool, steps: &mut Vec<Step>) {
        let Some(state) = self.agents.get(agent) else {
            return;
        };
        let mut held: Vec<ConversationId> = state.offered.iter().copied().collect();
        if assigned {
            held.extend(&state.assigned);
        }
        for conversation in held {
            self.send_to_queue(conversation, steps);
        }
    }

    /// Puts a conversation back in its team's queue, ending its offer or
    /// assignment.
    fn send_to_queue(&mut self, conversation: ConversationId, steps: &mut Vec<Step>) {
        let Some(back) = self.release(conversation, steps) else {
            return;
        };
        if let State::Assigned { .. } = back.state {
            steps.push(Step::Requeue {
                conversation,
                team: back.request.team.clone(),
            });
        }
        self.place(back, QUEUED);
    }

    /// Takes a conversation out of wherever it is, withdrawing its offer.
    fn release(
        &mut self,
        conversation: ConversationId,
        steps: &mut Vec<Step>,
    ) -> Option<Conversation> {
        let released = self.detach(conversation)?;
        if let State::Offered { agent, .. } = &released.state {
            steps.push(Step::Withdraw {
                conversation,
                agent: agent.clone(),
            });
        }
        Some(released)
    }

    /// Takes a conversation out of the queue or its agent's hands; its
    /// `state` still says where it was.
    fn detach(&mut self, conversation: ConversationId) -> Option<Conversation> {
        let detached = self.conversations.remove(&conversation)?;
        if let State::Queued { .. } = detached.state {
            self.queue.remove(&queue_key(&detached.request));
        }
        if let Some(agent) = detached.state.agent().and_then(|a| self.agents.get_mut(a)) {
            agent.offered.remove(&conversation);
            agent.assigned.remove(&conversation);
        }
        Some(detached)
    }

    /// Puts a detached conversation in `state`. An agent it names exists.
    fn place(&mut self, mut conversation: Conversation, state: State) {
        let id = conversation.request.conversation;
        match &state {
            State::Queued { .. } => {
                self.queue.insert(queue_key(&conversation.request));
            }
            State::Offered { agent, .. } => {
                if let Some(agent) = self.agents.get_mut(agent) {
                    agent.offered.insert(id);
                }
            }
            State::Assigned { agent, .. } => {
                if let Some(agent) = self.agents.get_mut(agent) {
                    agent.assigned.insert(id);
                }
            }
        }
        conversation.state = state;
        self.conversations.insert(id, conversation);
    }

    fn offer(
        &mut self,
        offered: Conversation,
        agent: UserId,
        now: Timestamp,
        steps: &mut Vec<Step>,
    ) {
        let timeout = self
            .teams
            .get(&offered.request.team)
            .map_or(0, |t| t.config.offer_timeout_ms);
        let until = plus_ms(now, timeout);
        steps.push(Step::Offer {
            conversation: offered.request.conversation,
            agent: agent.clone(),
            until,
        });
        self.place(offered, State::Offered { agent, until });
    }

    fn settled(&mut self, now: Timestamp) -> Vec<Step> {
        let mut steps = Vec::new();
        self.settle(now, &mut steps);
        steps
    }

    /// Offers what waits to whoever is eligible, then reports positions.
    fn settle(&mut self, now: Timestamp, steps: &mut Vec<Step>) {
        let waiting: Vec<ConversationId> = self.queue.iter().map(|(_, _, id)| *id).collect();
        for conversation in waiting {
            if !self.agents.values().any(AgentState::has_room) {
                break;
            }
            let Some(agent) = self.choose(conversation) else {
                continue;
            };
            let Some(offered) = self.detach(conversation) else {
                continue;
            };
            if let Some(team) = self.teams.get_mut(&offered.request.team) {
                team.last_offered = Some(agent.clone());
            }
            self.offer(offered, agent, now, steps);
        }
        self.report_positions(steps);
    }

    /// The agent a waiting conversation goes to, if anyone is eligible.
    fn choose(&self, conversation: ConversationId) -> Option<UserId> {
        let waiting = self.conversations.get(&conversation)?;
        let team = self.teams.get(&waiting.request.team)?;
        let eligible: Vec<&AgentState> = self
            .agents
            .values()
            .filter(|a| a.is_eligible(&waiting.request))
            .collect();
        let fresh: Vec<&AgentState> = eligible
            .iter()
            .copied()
            .filter(|a| !waiting.refused.contains(&a.config.id))
            .collect();
        let pool = if fresh.is_empty() { eligible } else { fresh };
        // The rotation: agents after the last one offered, then the rest,
        // each in id order.
        let last = team.last_offered.as_ref();
        let turn = |a: &AgentState| {
            (
                last.is_some_and(|last| a.config.id <= *last),
                a.config.id.clone(),
            )
        };
        let chosen = match team.config.strategy {
            Strategy::RoundRobin => pool.into_iter().min_by_key(|a| turn(a)),
            Strategy::LeastBusy => pool.into_iter().min_by_key(|a| (a.load(), turn(a))),
        };
        chosen.map(|a| a.config.id.clone())
    }

    /// Reports the waiting conversations whose position changed.
    fn report_positions(&mut self, steps: &mut Vec<Step>) {
        let mut changed = Vec::new();
        for (id, position) in self.positions() {
            if let Some(Conversation {
                state: State::Queued { reported },
                ..
            }) = self.conversations.get_mut(&id)
                && *reported != Some(position)
            {
                *reported = Some(position);
                changed.push((id, position));
            }
        }
        if !changed.is_empty() {
            steps.push(Step::Positions(changed));
        }
    }

    /// Every waiting conversation's position, in queue order.
    fn positions(&self) -> Vec<(ConversationId, Position)> {
        let rates: BTreeMap<&TeamId, (u64, u64)> = self
            .teams
            .iter()
            .map(|(id, team)| {
                let slots = self
                    .agents
                    .values()
                    .filter(|a| a.presence == Presence::Online && a.config.teams.contains(id))
                    .map(|a| u64::from(a.config.capacity))
                    .sum();
                (id, (slots, team.handle_ms.unwrap_or(DEFAULT_HANDLE_MS)))
            })
            .collect();
        let mut ahead: BTreeMap<&TeamId, u32> = BTreeMap::new();
        let mut positions = Vec::new();
        for (_, _, id) in &self.queue {
            let Some(waiting) = self.conversations.get(id) else {
                continue;
            };
            let Some((&team, &(slots, handle_ms))) = rates.get_key_value(&waiting.request.team)
            else {
                continue;
            };
            let in_front = ahead.entry(team).or_insert(0);
            positions.push((
                *id,
                Position {
                    ahead: *in_front,
                    estimated_wait_ms: (u64::from(*in_front) + 1)
                        .div_ceil(slots.max(1))
                        .saturating_mul(handle_ms),
                },
            ));
            *in_front += 1;
        }
        positions
    }

    /// The waiting conversations, in queue order, with their positions.
    pub fn waiting(&self) -> Vec<(&Request, Position)> {
        self.positions()
            .into_iter()
            .filter_map(|(id, position)| Some((&self.conversations.get(&id)?.request, position)))
            .collect()
    }

    /// Each agent as the router sees them now, in id order.
    pub fn agents(&self) -> impl Iterator<Item = AgentView<'_>> {
        self.agents.values().map(|a| AgentView {
            agent: &a.config,
            presence: a.presence,
            assigned: &a.assigned,
            offered: &a.offered,
        })
    }

    /// The agent holding (assigned or offered) `conversation`, if any.
    pub fn holder(&self, conversation: ConversationId) -> Option<&UserId> {
        self.conversations.get(&conversation)?.state.agent()
    }

    /// Whether the router holds `conversation`, waiting or not.
    pub fn routes(&self, conversation: ConversationId) -> bool {
        self.conversations.contains_key(&conversation)
    }
}

/// An agent's settings and what they hold, from [`Router::agents`].
#[derive(Debug, Clone, Copy)]
pub struct AgentView<'a> {
    pub agent: &'a Agent,
    pub presence: Presence,
    pub assigned: &'a BTreeSet<ConversationId>,
    pub offered: &'a BTreeSet<ConversationId>,
}

impl Conversation {
    fn new(request: Request) -> Self {
        Self {
            request,
            refused: BTreeSet::new(),
            state: QUEUED,
        }
    }
}

#[cfg(test)]
mod tests;
