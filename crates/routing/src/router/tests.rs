use proptest::prelude::{Just, any, prop_assert, prop_assert_eq, prop_oneof, proptest};
use proptest::sample::Index;
use proptest::strategy::Strategy as _;
use proptest::test_runner::TestCaseResult;

use super::*;

const TIMEOUT: u64 = 30_000;

fn conv(n: u128) -> ConversationId {
    ConversationId::from_uuid(uuid::Uuid::from_u128(n)).unwrap()
}

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

fn team_id(name: &str) -> TeamId {
    TeamId::new(name).unwrap()
}

fn ms(millis: i64) -> Timestamp {
    Timestamp::from_millis(millis)
}

fn agent(name: &str, teams: &[&str], skills: &[&str], capacity: u32) -> Agent {
    Agent {
        id: user(name),
        teams: teams.iter().map(|t| team_id(t)).collect(),
        skills: skills.iter().map(|s| s.to_string()).collect(),
        capacity,
    }
}

/// A conversation for "support" at normal priority, needing no skill.
fn request(n: u128, since: i64) -> Request {
    Request {
        conversation: conv(n),
        team: team_id("support"),
        priority: Priority::Normal,
        skills: BTreeSet::new(),
        since: ms(since),
    }
}

/// A "support" team and online agents with these capacities.
fn desk(strategy: Strategy, agents: &[(&str, u32)]) -> Router {
    let mut r = Router::new();
    r.set_team(Team {
        id: team_id("support"),
        strategy,
        offer_timeout_ms: TIMEOUT,
    });
    for (name, capacity) in agents {
        r.set_agent(agent(name, &["support"], &[], *capacity), ms(0))
            .unwrap();
        r.set_presence(&user(name), Presence::Online, ms(0))
            .unwrap();
    }
    r
}

fn offer(n: u128, agent: &str, now: i64) -> Step {
    Step::Offer {
        conversation: conv(n),
        agent: user(agent),
        until: plus_ms(ms(now), TIMEOUT),
    }
}

fn withdraw(n: u128, agent: &str) -> Step {
    Step::Withdraw {
        conversation: conv(n),
        agent: user(agent),
    }
}

fn assign(n: u128, agent: &str) -> Step {
    Step::Assign {
        conversation: conv(n),
        agent: user(agent),
    }
}

fn requeue(n: u128, team: &str) -> Step {
    Step::Requeue {
        conversation: conv(n),
        team: team_id(team),
    }
}

/// Positions of conversations, as (conversation, ahead, estimated wait).
fn positions(changed: &[(u128, u32, u64)]) -> Step {
    Step::Positions(
        changed
            .iter()
            .map(|&(n, ahead, estimated_wait_ms)| {
                let position = Position {
                    ahead,
                    estimated_wait_ms,
                };
                (conv(n), position)
            })
            .collect(),
    )
}

/// The default handle time, in whole rounds.
const ROUND: u64 = DEFAULT_HANDLE_MS;

#[test]
fn the_third_customer_waits_and_is_offered_the_first_free_agent() {
    let mut r = desk(Strategy::LeastBusy, &[("a", 1), ("b", 1)]);
    assert_eq!(r.enqueue(request(1, 0), ms(0)).unwrap(), [offer(1, "a", 0)]);
    assert_eq!(r.enqueue(request(2, 1), ms(1)).unwrap(), [offer(2, "b", 1)]);
    // Nobody ahead, two slots: served in the first round.
    assert_eq!(
        r.enqueue(request(3, 2), ms(2)).unwrap(),
        [positions(&[(3, 0, ROUND)])]
    );
    assert_eq!(
        r.accept(conv(1), &user("a"), ms(3)).unwrap(),
        [assign(1, "a")]
    );
    assert_eq!(
        r.accept(conv(2), &user("b"), ms(4)).unwrap(),
        [assign(2, "b")]
    );
    assert_eq!(r.resolve(conv(1), ms(60_000)), [offer(3, "a", 60_000)]);
}

#[test]
fn the_estimated_wait_follows_the_observed_handle_time() {
    let mut r = desk(Strategy::LeastBusy, &[("a", 1)]);
    r.enqueue(request(1, 0), ms(0)).unwrap();
    r.accept(conv(1), &user("a"), ms(0)).unwrap();
    r.enqueue(request(2, 1), ms(1)).unwrap();
    assert_eq!(
        r.enqueue(request(3, 2), ms(2)).unwrap(),
        [positions(&[(3, 1, 2 * ROUND)])]
    );
    // One observed handle time of two minutes replaces the default.
    assert_eq!(
        r.resolve(conv(1), ms(120_000)),
        [offer(2, "a", 120_000), positions(&[(3, 0, 120_000)])]
    );
    r.accept(conv(2), &user("a"), ms(120_000)).unwrap();
    // Then a moving average: (7 × 120 s + 40 s) / 8 = 110 s.
    assert_eq!(r.resolve(conv(2), ms(160_000)), [offer(3, "a", 160_000)]);
    assert_eq!(r.teams[&team_id("support")].handle_ms, Some(110_000));
}

#[test]
fn an_offer_that_times_out_goes_to_the_next_agent() {
    let mut r = desk(Strategy::LeastBusy, &[("a", 1), ("b", 1)]);
    assert_eq!(r.enqueue(request(1, 0), ms(0)).unwrap(), [offer(1, "a", 0)]);
    assert_eq!(r.next_timeout(), Some(ms(30_000)));
    assert!(r.tick(ms(29_999)).is_empty());
    assert_eq!(
        r.tick(ms(30_000)),
        [withdraw(1, "a"), offer(1, "b", 30_000)]
    );
    // Both let it lapse: with nobody else eligible, it goes round again.
    assert_eq!(
        r.tick(ms(60_000)),
        [withdraw(1, "b"), offer(1, "a", 60_000)]
    );
    assert_eq!(r.next_timeout(), Some(ms(90_000)));
}

#[test]
fn a_declined_offer_goes_to_another_agent_or_back_to_the_only_one() {
    let mut r = desk(Strategy::LeastBusy, &[("a", 1), ("b", 1)]);
    r.enqueue(request(1, 0), ms(0)).unwrap();
    assert_eq!(
        r.decline(conv(1), &user("a"), ms(5)).unwrap(),
        [offer(1, "b", 5)]
    );
    let not_offered = RoutingError::NotOffered {
        conversation: conv(1),
        agent: user("a"),
    };
    assert_eq!(
        r.accept(conv(1), &user("a"), ms(6)),
        Err(not_offered.clone())
    );
    assert_eq!(r.decline(conv(1), &user("a"), ms(6)), Err(not_offered));

    let mut alone = desk(Strategy::RoundRobin, &[("a", 1)]);
    alone.enqueue(request(1, 0), ms(0)).unwrap();
    assert_eq!(
        alone.decline(conv(1), &user("a"), ms(5)).unwrap(),
        [offer(1, "a", 5)]
    );
}

#[test]
fn away_agents_keep_their_conversations_but_get_no_offers() {
    let mut r = desk(Strategy::LeastBusy, &[("a", 1), ("b", 1)]);
    r.enqueue(request(1, 0), ms(0)).unwrap();
    r.accept(conv(1), &user("a"), ms(0)).unwrap();
    assert!(
        r.set_presence(&user("b"), Presence::Away, ms(1))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        r.enqueue(request(2, 2), ms(2)).unwrap(),
        [positions(&[(2, 0, ROUND)])]
    );
    // a keeps conversation 1.
    assert!(
        r.set_presence(&user("a"), Presence::Away, ms(3))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        r.set_presence(&user("b"), Presence::Online, ms(4)).unwrap(),
        [offer(2, "b", 4)]
    );
    // Going away withdraws what is on offer.
    assert_eq!(
        r.set_presence(&user("b"), Presence::Away, ms(5)).unwrap(),
        [withdraw(2, "b"), positions(&[(2, 0, ROUND)])]
    );
    // a is away too: resolving frees nobody to offer, and 6 ms is the
    // first handle time observed.
    assert_eq!(r.resolve(conv(1), ms(6)), [positions(&[(2, 0, 6)])]);
}

#[test]
fn an_offline_agents_conversations_go_back_to_the_front_of_the_queue() {
    let mut r = desk(Strategy::LeastBusy, &[("a", 1), ("b", 1)]);
    r.enqueue(request(1, 0), ms(0)).unwrap();
    r.accept(conv(1), &user("a"), ms(0)).unwrap();
    r.enqueue(request(2, 10), ms(10)).unwrap();
    r.accept(conv(2), &user("b"), ms(10)).unwrap();
    r.enqueue(request(3, 20), ms(20)).unwrap();
    let urgent = Request {
        priority: Priority::Urgent,
        ..request(4, 30)
    };
    assert_eq!(
        r.enqueue(urgent, ms(30)).unwrap(),
        [positions(&[(4, 0, ROUND), (3, 1, ROUND)])]
    );
    // 1 waited longest, so it goes ahead of 3; 4 is more urgent still. b
    // alone is left to serve them, one slot.
    assert_eq!(
        r.set_presence(&user("a"), Presence::Offline, ms(40))
            .unwrap(),
        [
            requeue(1, "support"),
            positions(&[(1, 1, 2 * ROUND), (3, 2, 3 * ROUND)])
        ]
    );
    assert_eq!(
        r.resolve(conv(2), ms(50)),
        [offer(4, "b", 50), positions(&[(1, 0, 40), (3, 1, 80)])]
    );
}

#[test]
fn a_reopened_conversation_goes_back_to_its_agent_if_they_have_room() {
    let mut r = desk(Strategy::LeastBusy, &[("a", 1), ("b", 1)]);
    assert_eq!(
        r.reopen(request(1, 0), Some(&user("b")), ms(0)).unwrap(),
        [assign(1, "b")]
    );
    // b is full now: to the queue, and from there to a.
    assert_eq!(
        r.reopen(request(2, 5), Some(&user("b")), ms(5)).unwrap(),
        [offer(2, "a", 5)]
    );
    assert_eq!(
        r.reopen(request(2, 5), None, ms(6)),
        Err(RoutingError::AlreadyRouted(conv(2)))
    );
}

#[test]
fn transfers_offer_to_an_agent_or_move_to_a_team() {
    let mut r = desk(Strategy::LeastBusy, &[("a", 1), ("b", 1)]);
    r.set_team(Team {
        id: team_id("billing"),
        strategy: Strategy::RoundRobin,
        offer_timeout_ms: TIMEOUT,
    });
    r.set_agent(agent("c", &["billing"], &[], 1), ms(0))
        .unwrap();
    r.enqueue(request(1, 0), ms(0)).unwrap();
    r.accept(conv(1), &user("a"), ms(0)).unwrap();
    assert_eq!(
        r.transfer_to_agent(conv(1), &user("b"), ms(1)).unwrap(),
        [requeue(1, "support"), offer(1, "b", 1)]
    );
    // b declines: back to the team, where a is free again.
    assert_eq!(
        r.decline(conv(1), &user("b"), ms(2)).unwrap(),
        [offer(1, "a", 2)]
    );
    assert_eq!(
        r.transfer_to_agent(conv(1), &user("c"), ms(3)),
        Err(RoutingError::Unavailable(user("c")))
    );
    assert!(
        r.transfer_to_agent(conv(1), &user("a"), ms(3))
            .unwrap()
            .is_empty()
    );
    r.accept(conv(1), &user("a"), ms(4)).unwrap();
    assert_eq!(
        r.transfer_to_team(conv(1), &team_id("billing"), ms(5))
            .unwrap(),
        [requeue(1, "billing"), positions(&[(1, 0, ROUND)])]
    );
    assert_eq!(
        r.set_presence(&user("c"), Presence::Online, ms(6)).unwrap(),
        [offer(1, "c", 6)]
    );
    assert_eq!(
        r.transfer_to_team(conv(9), &team_id("billing"), ms(7)),
        Err(RoutingError::UnknownConversation(conv(9)))
    );
    assert_eq!(
        r.transfer_to_team(conv(1), &team_id("sales"), ms(7)),
        Err(RoutingError::UnknownTeam(team_id("sales")))
    );
}

#[test]
fn round_robin_rotates_through_the_team() {
    let mut r = desk(Strategy::RoundRobin, &[("a", 5), ("b", 5), ("c", 5)]);
    let offered: Vec<Step> = (1..=4)
        .flat_map(|n| r.enqueue(request(n, 0), ms(0)).unwrap())
        .collect();
    assert_eq!(
        offered,
        [
            offer(1, "a", 0),
            offer(2, "b", 0),
            offer(3, "c", 0),
            offer(4, "a", 0)
        ]
    );
}

#[test]
fn least_busy_picks_the_agent_holding_the_fewest() {
    let mut r = desk(Strategy::LeastBusy, &[("a", 3), ("b", 3), ("c", 3)]);
    r.reopen(request(1, 0), Some(&user("a")), ms(0)).unwrap();
    r.reopen(request(2, 0), Some(&user("a")), ms(0)).unwrap();
    r.reopen(request(3, 0), Some(&user("b")), ms(0)).unwrap();
    assert_eq!(r.enqueue(request(4, 0), ms(0)).unwrap(), [offer(4, "c", 0)]);
    // b and c hold one each: the rotation goes on from c, to b.
    assert_eq!(r.enqueue(request(5, 0), ms(0)).unwrap(), [offer(5, "b", 0)]);
    assert_eq!(r.enqueue(request(6, 0), ms(0)).unwrap(), [offer(6, "c", 0)]);
}

#[test]
fn a_conversation_nobody_can_take_does_not_hold_up_the_queue() {
    let mut r = desk(Strategy::LeastBusy, &[("a", 1)]);
    let german = Request {
        skills: ["de".to_string()].into(),
        ..request(1, 0)
    };
    assert_eq!(
        r.enqueue(german, ms(0)).unwrap(),
        [positions(&[(1, 0, ROUND)])]
    );
    assert_eq!(r.enqueue(request(2, 1), ms(1)).unwrap(), [offer(2, "a", 1)]);
    r.set_agent(agent("g", &["support"], &["de"], 1), ms(2))
        .unwrap();
    assert_eq!(
        r.set_presence(&user("g"), Presence::Online, ms(3)).unwrap(),
        [offer(1, "g", 3)]
    );
}

#[test]
fn restore_rebuilds_assignments_and_the_queue() {
    let mut r = desk(Strategy::LeastBusy, &[("a", 1), ("b", 1)]);
    r.set_agent(agent("c", &["support"], &[], 1), ms(0))
        .unwrap();
    let assigned = vec![(request(1, 0), user("a")), (request(4, 5), user("c"))];
    let waiting = vec![request(3, 30), request(2, 20)];
    let duplicate = vec![request(2, 20), request(2, 20)];
    assert_eq!(
        r.restore(assigned.clone(), duplicate, ms(100)),
        Err(RoutingError::AlreadyRouted(conv(2)))
    );
    // a is full with 1; c is offline, so 4 waits, first in line.
    assert_eq!(
        r.restore(assigned, waiting, ms(100)).unwrap(),
        [
            requeue(4, "support"),
            offer(4, "b", 100),
            positions(&[(2, 0, ROUND), (3, 1, ROUND)])
        ]
    );
}

#[test]
fn calls_that_do_not_fit_the_state_are_errors() {
    let mut r = desk(Strategy::LeastBusy, &[("a", 1)]);
    let stranger = user("z");
    assert_eq!(
        r.set_presence(&stranger, Presence::Online, ms(0)),
        Err(RoutingError::UnknownAgent(stranger.clone()))
    );
    assert_eq!(
        r.remove_agent(&stranger, ms(0)),
        Err(RoutingError::UnknownAgent(stranger))
    );
    let elsewhere = Request {
        team: team_id("sales"),
        ..request(1, 0)
    };
    assert_eq!(
        r.enqueue(elsewhere, ms(0)),
        Err(RoutingError::UnknownTeam(team_id("sales")))
    );
    assert_eq!(
        r.set_agent(agent("b", &["sales"], &[], 1), ms(0)),
        Err(RoutingError::UnknownTeam(team_id("sales")))
    );
    r.enqueue(request(1, 0), ms(0)).unwrap();
    assert_eq!(
        r.enqueue(request(1, 0), ms(0)),
        Err(RoutingError::AlreadyRouted(conv(1)))
    );
    assert!(
        r.resolve(conv(7), ms(0)).is_empty(),
        "resolving twice is harmless"
    );
}

// The property test: a few agents and teams through random days at the
// desk, checked after every call against a model kept from the steps.

const AGENTS: [&str; 3] = ["a", "b", "c"];
const TEAMS: [&str; 2] = ["t0", "t1"];
const SKILLS: [&str; 2] = ["x", "y"];

#[derive(Debug, Clone)]
enum Op {
    Enqueue {
        team: usize,
        priority: Priority,
        skills: u8,
    },
    /// Answers one of the outstanding offers.
    Answer {
        offer: Index,
        accept: bool,
    },
    /// Answers for any agent and any conversation, offered or not.
    Stray {
        conversation: Index,
        agent: usize,
        accept: bool,
    },
    Resolve(Index),
    Reopen {
        resolved: Index,
        last_agent: Option<usize>,
    },
    TransferToAgent(Index, usize),
    TransferToTeam(Index, usize),
    SetPresence(usize, Presence),
    SetAgent {
        agent: usize,
        teams: u8,
        skills: u8,
    },
    RemoveAgent(usize),
    Tick,
    /// A new router rebuilt from what the store would hold.
    Restart,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    let priority = prop_oneof![
        Just(Priority::Low),
        Just(Priority::Normal),
        Just(Priority::High),
        Just(Priority::Urgent)
    ];
    let presence = prop_oneof![
        2 => Just(Presence::Online),
        1 => Just(Presence::Away),
        1 => Just(Presence::Offline)
    ];
    prop_oneof![
        5 => (0..TEAMS.len(), priority, 0..4u8)
            .prop_map(|(team, priority, skills)| Op::Enqueue { team, priority, skills }),
        5 => (any::<Index>(), any::<bool>())
            .prop_map(|(offer, accept)| Op::Answer { offer, accept }),
        1 => (any::<Index>(), 0..AGENTS.len(), any::<bool>())
            .prop_map(|(conversation, agent, accept)| Op::Stray { conversation, agent, accept }),
        3 => any::<Index>().prop_map(Op::Resolve),
        1 => (any::<Index>(), proptest::option::of(0..AGENTS.len()))
            .prop_map(|(resolved, last_agent)| Op::Reopen { resolved, last_agent }),
        1 => (any::<Index>(), 0..AGENTS.len()).prop_map(|(c, a)| Op::TransferToAgent(c, a)),
        1 => (any::<Index>(), 0..TEAMS.len()).prop_map(|(c, t)| Op::TransferToTeam(c, t)),
        3 => (0..AGENTS.len(), presence).prop_map(|(a, p)| Op::SetPresence(a, p)),
        1 => (0..AGENTS.len(), 0..4u8, 0..4u8)
            .prop_map(|(agent, teams, skills)| Op::SetAgent { agent, teams, skills }),
        1 => (0..AGENTS.len()).prop_map(Op::RemoveAgent),
        3 => Just(Op::Tick),
        1 => Just(Op::Restart),
    ]
}

fn chosen<'a>(all: &[&'a str], bits: u8) -> impl Iterator<Item = &'a str> {
    all.iter()
        .enumerate()
        .filter(move |&(i, _)| (bits >> i) & 1 == 1)
        .map(|(_, name)| *name)
}

/// Where the model has a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Holder {
    Queue,
    Offer(UserId),
    Agent(UserId),
}

struct Sim {
    router: Router,
    now: i64,
    teams: Vec<Team>,
    capacities: Vec<u32>,
    agents: BTreeMap<UserId, (Agent, Presence)>,
    open: BTreeMap<ConversationId, (Request, Holder)>,
    resolved: Vec<Request>,
    /// The `ahead` last reported for each waiting conversation.
    reported: BTreeMap<ConversationId, u32>,
    minted: u128,
}

impl Sim {
    fn new(round_robin: [bool; 2], capacities: Vec<u32>) -> Self {
        let mut router = Router::new();
        let teams: Vec<Team> = TEAMS
            .iter()
            .zip(round_robin)
            .zip([10_000, 25_000])
            .map(|((name, rr), offer_timeout_ms)| Team {
                id: team_id(name),
                strategy: if rr {
                    Strategy::RoundRobin
                } else {
                    Strategy::LeastBusy
                },
                offer_timeout_ms,
            })
            .collect();
        for team in &teams {
            router.set_team(team.clone());
        }
        let mut agents = BTreeMap::new();
        for (name, capacity) in AGENTS.iter().zip(&capacities) {
            let a = agent(name, &TEAMS, &[], *capacity);
            router.set_agent(a.clone(), ms(0)).unwrap();
            router.set_presence(&a.id, Presence::Online, ms(0)).unwrap();
            agents.insert(a.id.clone(), (a, Presence::Online));
        }
        Self {
            router,
            now: 0,
            teams,
            capacities,
            agents,
            open: BTreeMap::new(),
            resolved: Vec::new(),
            reported: BTreeMap::new(),
            minted: 0,
        }
    }

    fn load(&self, agent: &UserId) -> u32 {
        let held = self.open.values().filter(|(_, h)| match h {
            Holder::Offer(a) | Holder::Agent(a) => a == agent,
            Holder::Queue => false,
        });
        held.count() as u32
    }

    /// Whether `agent` could take `request` (`room`: counting capacity).
    fn fits(&self, agent: &UserId, request: &Request, room: bool) -> bool {
        self.agents.get(agent).is_some_and(|(a, presence)| {
            *presence == Presence::Online
                && a.teams.contains(&request.team)
                && request.skills.is_subset(&a.skills)
                && (!room || self.load(agent) < a.capacity)
        })
    }

    fn waiting(&self) -> Vec<&Request> {
        let mut waiting: Vec<&Request> = self
            .open
            .values()
            .filter(|(_, h)| *h == Holder::Queue)
            .map(|(r, _)| r)
            .collect();
        waiting.sort_by_key(|r| queue_key(r));
        waiting
    }

    fn pick_open(&self, index: &Index) -> ConversationId {
        let ids: Vec<ConversationId> = self.open.keys().copied().collect();
        if ids.is_empty() {
            conv(u128::MAX)
        } else {
            *index.get(&ids)
        }
    }

    fn holder(&self, conversation: ConversationId) -> Option<&Holder> {
        self.open.get(&conversation).map(|(_, h)| h)
    }

    fn run(&mut self, op: Op, advance: u16) -> TestCaseResult {
        self.now += i64::from(advance);
        let now = ms(self.now);
        // The transfer's own offer, made to whom the caller chose.
        let mut directed = None;
        let mut reopened = false;
        let (expected, result) = match op {
            Op::Enqueue {
                team,
                priority,
                skills,
            } => {
                self.minted += 1;
                let request = Request {
                    conversation: conv(self.minted),
                    team: team_id(TEAMS[team]),
                    priority,
                    skills: chosen(&SKILLS, skills).map(String::from).collect(),
                    since: now,
                };
                self.open
                    .insert(request.conversation, (request.clone(), Holder::Queue));
                (true, self.router.enqueue(request, now))
            }
            Op::Answer { offer, accept } => {
                let offers: Vec<(ConversationId, UserId)> = self
                    .open
                    .iter()
                    .filter_map(|(c, (_, h))| match h {
                        Holder::Offer(a) => Some((*c, a.clone())),
                        _ => None,
                    })
                    .collect();
                if offers.is_empty() {
                    return Ok(());
                }
                let (conversation, agent) = offer.get(&offers).clone();
                self.answer(conversation, &agent, accept, now)
            }
            Op::Stray {
                conversation,
                agent,
                accept,
            } => {
                let conversation = self.pick_open(&conversation);
                self.answer(conversation, &user(AGENTS[agent]), accept, now)
            }
            Op::Resolve(index) => {
                // The model lets it go first: nothing after may mention it.
                let conversation = self.pick_open(&index);
                let gone = self.open.remove(&conversation);
                self.reported.remove(&conversation);
                let mut steps = self.router.resolve(conversation, now);
                if let Some((request, holder)) = gone {
                    if let Holder::Offer(agent) = holder {
                        let withdrawn = Step::Withdraw {
                            conversation,
                            agent,
                        };
                        prop_assert_eq!(steps.first(), Some(&withdrawn));
                        steps.remove(0);
                    }
                    self.resolved.push(request);
                }
                (true, Ok(steps))
            }
            Op::Reopen {
                resolved,
                last_agent,
            } => {
                if self.resolved.is_empty() {
                    return Ok(());
                }
                let at = resolved.index(self.resolved.len());
                let request = Request {
                    since: now,
                    ..self.resolved.swap_remove(at)
                };
                self.open
                    .insert(request.conversation, (request.clone(), Holder::Queue));
                reopened = true;
                let last = last_agent.map(|a| user(AGENTS[a]));
                (true, self.router.reopen(request, last.as_ref(), now))
            }
            Op::TransferToAgent(index, agent) => {
                let conversation = self.pick_open(&index);
                let agent = user(AGENTS[agent]);
                let holds = matches!(
                    self.holder(conversation),
                    Some(Holder::Offer(a) | Holder::Agent(a)) if *a == agent
                );
                let free = self
                    .agents
                    .get(&agent)
                    .is_some_and(|(a, p)| *p == Presence::Online && self.load(&agent) < a.capacity);
                let expected = self.open.contains_key(&conversation)
                    && self.agents.contains_key(&agent)
                    && (holds || free);
                directed = Some(conversation);
                (
                    expected,
                    self.router.transfer_to_agent(conversation, &agent, now),
                )
            }
            Op::TransferToTeam(index, team) => {
                let conversation = self.pick_open(&index);
                let expected = self.open.contains_key(&conversation);
                (
                    expected,
                    self.router
                        .transfer_to_team(conversation, &team_id(TEAMS[team]), now),
                )
            }
            Op::SetPresence(agent, presence) => {
                let agent = user(AGENTS[agent]);
                let result = self.router.set_presence(&agent, presence, now);
                if let Some((_, p)) = self.agents.get_mut(&agent) {
                    *p = presence;
                }
                (self.agents.contains_key(&agent), result)
            }
            Op::SetAgent {
                agent: i,
                teams,
                skills,
            } => {
                let teams: Vec<&str> = chosen(&TEAMS, teams).collect();
                let skills: Vec<&str> = chosen(&SKILLS, skills).collect();
                let changed = agent(AGENTS[i], &teams, &skills, self.capacities[i]);
                let presence = self
                    .agents
                    .get(&changed.id)
                    .map_or(Presence::Offline, |(_, p)| *p);
                self.agents
                    .insert(changed.id.clone(), (changed.clone(), presence));
                (true, self.router.set_agent(changed, now))
            }
            Op::RemoveAgent(agent) => {
                let agent = user(AGENTS[agent]);
                let result = self.router.remove_agent(&agent, now);
                prop_assert_eq!(result.is_ok(), self.agents.contains_key(&agent));
                self.absorb(result.unwrap_or_default(), None, false)?;
                self.agents.remove(&agent);
                return self.check();
            }
            Op::Tick => (true, Ok(self.router.tick(now))),
            Op::Restart => (true, self.restart(now)),
        };
        prop_assert_eq!(result.is_ok(), expected, "{:?}", result);
        self.absorb(result.unwrap_or_default(), directed, reopened)?;
        self.check()
    }

    fn answer(
        &mut self,
        conversation: ConversationId,
        agent: &UserId,
        accept: bool,
        now: Timestamp,
    ) -> (bool, Result<Vec<Step>>) {
        let offered = self.holder(conversation) == Some(&Holder::Offer(agent.clone()));
        if accept {
            return (offered, self.router.accept(conversation, agent, now));
        }
        let result = self.router.decline(conversation, agent, now);
        if let (Ok(_), Some((_, holder))) = (&result, self.open.get_mut(&conversation)) {
            *holder = Holder::Queue;
        }
        (offered, result)
    }

    fn restart(&mut self, now: Timestamp) -> Result<Vec<Step>> {
        let mut router = Router::new();
        for team in &self.teams {
            router.set_team(team.clone());
        }
        let mut steps = Vec::new();
        for (agent, presence) in self.agents.values() {
            steps.extend(router.set_agent(agent.clone(), now)?);
            steps.extend(router.set_presence(&agent.id, *presence, now)?);
        }
        // Offers are not durable.
        for (_, holder) in self.open.values_mut() {
            if let Holder::Offer(_) = holder {
                *holder = Holder::Queue;
            }
        }
        self.reported.clear();
        let assigned = self
            .open
            .values()
            .filter_map(|(r, h)| match h {
                Holder::Agent(a) => Some((r.clone(), a.clone())),
                _ => None,
            })
            .collect();
        let waiting = self.waiting().into_iter().cloned().collect();
        steps.extend(router.restore(assigned, waiting, now)?);
        self.router = router;
        Ok(steps)
    }

    /// Follows the steps in the model, checking each is a legal move and
    /// that no dispatched offer skipped a conversation its agent could take.
    fn absorb(
        &mut self,
        steps: Vec<Step>,
        directed: Option<ConversationId>,
        reopened: bool,
    ) -> TestCaseResult {
        let count = steps.len();
        let mut dispatched = Vec::new();
        for (i, step) in steps.into_iter().enumerate() {
            match step {
                Step::Offer {
                    conversation,
                    agent,
                    until,
                } => {
                    let (request, holder) = self.open.get_mut(&conversation).unwrap();
                    prop_assert_eq!(&*holder, &Holder::Queue, "offered while not waiting");
                    *holder = Holder::Offer(agent.clone());
                    let team = self.teams.iter().find(|t| t.id == request.team).unwrap();
                    prop_assert_eq!(until, plus_ms(ms(self.now), team.offer_timeout_ms));
                    self.reported.remove(&conversation);
                    if directed != Some(conversation) {
                        dispatched.push((conversation, agent));
                    }
                }
                Step::Withdraw {
                    conversation,
                    agent,
                } => {
                    let (_, holder) = self.open.get_mut(&conversation).unwrap();
                    prop_assert_eq!(
                        &*holder,
                        &Holder::Offer(agent),
                        "withdrew what was not offered"
                    );
                    *holder = Holder::Queue;
                }
                Step::Assign {
                    conversation,
                    agent,
                } => {
                    let (_, holder) = self.open.get_mut(&conversation).unwrap();
                    let legal = *holder == Holder::Offer(agent.clone())
                        || (reopened && *holder == Holder::Queue);
                    prop_assert!(legal, "assigned from {:?}", holder);
                    *holder = Holder::Agent(agent);
                    self.reported.remove(&conversation);
                }
                Step::Requeue { conversation, team } => {
                    let (request, holder) = self.open.get_mut(&conversation).unwrap();
                    prop_assert!(
                        !matches!(holder, Holder::Offer(_)),
                        "requeued an offer unwithdrawn"
                    );
                    *holder = Holder::Queue;
                    request.team = team;
                    self.reported.remove(&conversation);
                }
                Step::Positions(changed) => {
                    prop_assert_eq!(i + 1, count, "positions come last");
                    for (conversation, position) in changed {
                        prop_assert_eq!(self.holder(conversation), Some(&Holder::Queue));
                        self.reported.insert(conversation, position.ahead);
                    }
                }
            }
        }
        // No skipping: what the agent could take waits behind nothing they
        // could have taken instead.
        for (conversation, agent) in dispatched {
            let Some((offered, _)) = self.open.get(&conversation) else {
                continue;
            };
            for waiting in self.waiting() {
                let ahead = waiting.team == offered.team && queue_key(waiting) < queue_key(offered);
                prop_assert!(
                    !(ahead && self.fits(&agent, waiting, false)),
                    "{} was offered {} while {} waited ahead of it",
                    agent,
                    conversation,
                    waiting.conversation
                );
            }
        }
        Ok(())
    }

    /// The invariants that hold between calls.
    fn check(&self) -> TestCaseResult {
        for (conversation, (_, holder)) in &self.open {
            if let Holder::Offer(a) | Holder::Agent(a) = holder {
                prop_assert!(
                    self.agents.contains_key(a),
                    "{} held by removed agent {}",
                    conversation,
                    a
                );
            }
        }
        for (id, (agent, presence)) in &self.agents {
            let load = self.load(id);
            prop_assert!(
                load <= agent.capacity,
                "{} holds {} over capacity {}",
                id,
                load,
                agent.capacity
            );
            let offered = self
                .open
                .values()
                .filter(|(_, h)| *h == Holder::Offer(id.clone()))
                .count();
            match presence {
                Presence::Online => {}
                Presence::Away => prop_assert_eq!(offered, 0, "away {} has offers", id),
                Presence::Offline => prop_assert_eq!(load, 0, "offline {} holds conversations", id),
            }
        }
        let mut ahead: BTreeMap<&TeamId, u32> = BTreeMap::new();
        for waiting in self.waiting() {
            let in_front = ahead.entry(&waiting.team).or_insert(0);
            prop_assert_eq!(
                self.reported.get(&waiting.conversation),
                Some(&*in_front),
                "position of {}",
                waiting.conversation
            );
            *in_front += 1;
            // Work-conserving: nobody who could take it sits idle.
            for agent in self.agents.keys() {
                prop_assert!(
                    !self.fits(agent, waiting, true),
                    "{} is free while {} waits for them",
                    agent,
                    waiting.conversation
                );
            }
        }
        Ok(())
    }
}

proptest! {
    /// Whatever happens at the desk, no agent goes over capacity, no
    /// conversation is in two places, nothing waits for a free agent who
    /// could take it, nothing is skipped, and positions are up to date.
    #[test]
    fn the_desk_keeps_its_invariants_through_any_day(
        round_robin in any::<[bool; 2]>(),
        capacities in proptest::collection::vec(1u32..=3, AGENTS.len()),
        ops in proptest::collection::vec((op(), 0u16..20_000), 1..80),
    ) {
        let mut sim = Sim::new(round_robin, capacities);
        for (op, advance) in ops {
            sim.run(op, advance)?;
        }
    }
}
