use std::collections::{BTreeMap, HashMap};

use natter_core::{
    Content, ConversationId, FormReply, Lifecycle, Owner, Seq, Status, TeamId, TenantId, Timestamp,
    UserId,
};
use proptest::prelude::{any, prop_assert_eq, proptest};

use crate::simulate::{self, Numbered, Rng, Traffic, csat_reply};
use crate::*;

const T0: i64 = simulate::DAY_START_MS;

fn tenant() -> TenantId {
    TenantId::new("acme").unwrap()
}
fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}
fn team(name: &str) -> TeamId {
    TeamId::new(name).unwrap()
}
fn convo(n: u128) -> ConversationId {
    format!("00000000-0000-7000-8000-{n:012x}").parse().unwrap()
}

/// Builds one conversation's stream by hand, numbering as it goes.
struct Script {
    conversation: ConversationId,
    seq: u64,
    life: Lifecycle,
    events: Vec<Numbered>,
}

impl Script {
    fn new(n: u128) -> Self {
        Script {
            conversation: convo(n),
            seq: 0,
            life: Lifecycle::default(),
            events: Vec::new(),
        }
    }
    fn push(&mut self, at_s: i64, side: Side, content: Content) -> &mut Self {
        self.seq += 1;
        self.events.push(Numbered {
            tenant: tenant(),
            conversation: self.conversation,
            seq: Seq::new(self.seq),
            at: Timestamp::from_millis(T0 + at_s * 1000),
            side,
            content,
        });
        self
    }
    fn customer(&mut self, at_s: i64) -> &mut Self {
        self.push(at_s, Side::Customer, Content::Text("hi".into()))
    }
    fn agent(&mut self, at_s: i64, who: &str) -> &mut Self {
        self.push(at_s, Side::Agent(user(who)), Content::Text("yes".into()))
    }
    fn life(&mut self, at_s: i64, f: impl FnOnce(&mut Lifecycle)) -> &mut Self {
        f(&mut self.life);
        let content = Content::Activity(self.life.clone());
        self.push(at_s, Side::Service, content)
    }
}

fn run(events: &[Numbered], targets: &SlaTargets) -> (ConversationFacts, Rollups) {
    let first = &events[0];
    let mut facts = ConversationFacts::new(first.tenant.clone(), first.conversation);
    let mut rollups = Rollups::default();
    for e in events {
        match facts.apply(&e.observed(), targets).unwrap() {
            Applied::Advanced(delta) => rollups.apply(&delta).unwrap(),
            Applied::Replay => panic!("replay of seq {}", e.seq),
        }
    }
    assert_eq!(rebuild([&facts]), rollups);
    (facts, rollups)
}

fn total(rollups: &Rollups) -> Row {
    let q = Query {
        tenant: None,
        from_hour: i64::MIN,
        to_hour: i64::MAX,
        group: Group::Tenant,
        period: Period::Total,
        team: None,
        agent: None,
    };
    let mut rows = query(rollups.iter(), &q);
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows.remove(0)
}

#[test]
fn percentiles_are_by_nearest_rank() {
    let mut s = Samples::default();
    assert_eq!(s.percentile(50), None);
    s.insert(7);
    assert_eq!((s.percentile(50), s.percentile(90)), (Some(7), Some(7)));
    let mut s = Samples::default();
    for v in (1..=10).rev() {
        s.insert(v);
    }
    assert_eq!(s.percentile(50), Some(5));
    assert_eq!(s.percentile(90), Some(9));
    assert_eq!(s.percentile(91), Some(10));
    assert_eq!(s.percentile(100), Some(10));
    assert_eq!(s.percentile(0), Some(1));
    // An even count's median is the lower middle value, never a mean.
    let mut two = Samples::default();
    two.insert(10);
    two.insert(20);
    assert_eq!(two.percentile(50), Some(10));
    // Repeats count as many times as they occur.
    let mut rep = Samples::default();
    for v in [3, 3, 3, 100] {
        rep.insert(v);
    }
    assert_eq!(
        (rep.len(), rep.percentile(50), rep.percentile(90)),
        (4, Some(3), Some(100))
    );
}

#[test]
fn rollups_subtract_exactly_what_was_added() {
    let mut a = Rollup {
        opened: 2,
        csat: [0, 0, 0, 0, 1],
        ..Rollup::default()
    };
    a.first_responses.insert(5);
    a.first_responses.insert(9);
    let mut b = Rollup {
        opened: 1,
        csat: [2, 0, 0, 0, 0],
        messages_bot: 3,
        ..Rollup::default()
    };
    b.first_responses.insert(9);
    let mut sum = a.clone();
    sum.merge(&b);
    assert_eq!(sum.csat_sum(), 5 + 2);
    sum.subtract(&b).unwrap();
    assert_eq!(sum, a);
    // Taking away what is not there fails and changes nothing.
    let before = sum.clone();
    assert!(matches!(sum.subtract(&b), Err(Error::Underflow { .. })));
    assert_eq!(sum, before);
    let mut other = Rollup::default();
    other.first_responses.insert(6);
    assert_eq!(
        sum.subtract(&other),
        Err(Error::Underflow {
            what: "first_responses"
        })
    );
    assert_eq!(sum, before);
}

#[test]
fn first_response_is_the_first_agent_message_after_the_customers_first() {
    let targets = SlaTargets {
        default_s: Some(1_000),
        by_team: BTreeMap::from([(team("sales"), 60)]),
    };
    let mut s = Script::new(1);
    s.agent(0, "a") // before the customer wrote: not a response
        .push(5, Side::Bot(user("bot")), Content::Text("hello".into()))
        .customer(10)
        .push(20, Side::Bot(user("bot")), Content::Text("bot".into()))
        .life(30, |l| {
            l.team = Some(team("sales"));
            l.assignee = Some(user("b"));
        })
        .customer(40)
        .agent(3_610, "b")
        .agent(3_700, "c");
    let (facts, rollups) = run(&s.events, &targets);
    let fr = facts.first_response().unwrap();
    assert_eq!(
        (fr.seconds, fr.agent.as_str(), fr.target_s),
        (3_600, "b", Some(60))
    );
    assert!(fr.missed_sla());
    // Counted in the hour of the response, for the agent and team.
    let key = HourKey {
        tenant: tenant(),
        hour: hour_of(Timestamp::from_millis(T0)) + 1,
        team: Some(team("sales")),
        agent: Some(user("b")),
    };
    let r = rollups.get(&key).unwrap();
    assert_eq!(
        (r.first_responses.percentile(50), r.sla_missed),
        (Some(3_600), 1)
    );
    // Opened at the customer's first message, for the first team and agent.
    let opened = HourKey {
        hour: hour_of(Timestamp::from_millis(T0)),
        ..key.clone()
    };
    assert_eq!(rollups.get(&opened).unwrap().opened, 1);
    assert_eq!(facts.opened_at(), Some(Timestamp::from_millis(T0 + 10_000)));
    let row = total(&rollups);
    assert_eq!(
        (row.messages_customer, row.messages_agent, row.messages_bot),
        (2, 3, 2)
    );
    // Under a looser target the same response is in time.
    let (facts, _) = run(&s.events, &SlaTargets::default());
    assert!(!facts.first_response().unwrap().missed_sla());
}

#[test]
fn resolutions_run_from_the_opening_or_the_latest_reopening() {
    let mut s = Script::new(2);
    s.customer(0)
        .life(10, |l| l.assignee = Some(user("a")))
        .agent(20, "a")
        .life(100, |l| l.status = Status::Resolved)
        .life(150, |l| l.status = Status::Closed) // not a second resolution
        .customer(1_000)
        .life(1_000, |l| l.status = Status::Open)
        .life(1_300, |l| l.status = Status::Pending) // still unresolved
        .life(1_500, |l| l.status = Status::Resolved);
    let (facts, rollups) = run(&s.events, &SlaTargets::default());
    let seconds: Vec<u32> = facts.resolutions().iter().map(|t| t.seconds).collect();
    assert_eq!(seconds, [100, 500]);
    assert_eq!(facts.reopens().len(), 1);
    let row = total(&rollups);
    assert_eq!((row.resolutions, row.reopened), (2, 1));
    assert_eq!(row.reopen_rate, Some(0.5));
    assert_eq!(
        (row.resolution_median_s, row.resolution_p90_s),
        (Some(100), Some(500))
    );
    // Counted for the assignee.
    assert!(
        facts
            .resolutions()
            .iter()
            .all(|t| t.mark.agent == Some(user("a")))
    );
}

#[test]
fn a_queue_wait_ends_with_an_assignment() {
    let mut s = Script::new(3);
    s.customer(0)
        .life(10, |l| l.control_requested = true) // asks for a person
        .life(70, |l| {
            l.owner = Owner::Inbox;
            l.control_requested = false;
            l.team = Some(team("support"));
            l.assignee = Some(user("c"));
        })
        .life(100, |l| l.assignee = None) // requeued
        .life(400, |l| l.assignee = Some(user("a")))
        .life(500, |l| l.assignee = None) // requeued again, then resolved unassigned
        .life(900, |l| l.status = Status::Resolved);
    let (facts, rollups) = run(&s.events, &SlaTargets::default());
    let waits: Vec<(u32, Option<&str>)> = facts
        .queue_waits()
        .iter()
        .map(|t| (t.seconds, t.mark.agent.as_ref().map(UserId::as_str)))
        .collect();
    assert_eq!(waits, [(60, Some("c")), (300, Some("a"))]);
    assert_eq!(facts.waiting_since(), None);
    let row = total(&rollups);
    assert_eq!((row.queue_waits, row.queue_wait_median_s), (2, Some(60)));
    // A bot that keeps control never queues.
    let mut bot = Script::new(4);
    bot.customer(0)
        .life(5, |l| l.priority = natter_core::Priority::High);
    let (facts, _) = run(&bot.events, &SlaTargets::default());
    assert!(facts.queue_waits().is_empty() && facts.waiting_since().is_none());
}

#[test]
fn csat_lands_on_the_conversation_and_in_the_rollups() {
    let mut s = Script::new(5);
    s.customer(0)
        .life(10, |l| l.assignee = Some(user("a")))
        .life(20, |l| l.status = Status::Resolved)
        .push(30, Side::Customer, csat_reply(2, None))
        .push(40, Side::Customer, csat_reply(9, None)) // out of range: a message
        .push(50, Side::Agent(user("a")), csat_reply(5, None)) // not the customer's
        .push(60, Side::Customer, csat_reply(4, Some("  much better  ")));
    let (facts, rollups) = run(&s.events, &SlaTargets::default());
    let csat = facts.csat().unwrap();
    assert_eq!(
        (csat.score, csat.comment.as_deref()),
        (4, Some("much better"))
    );
    assert_eq!(csat.mark.agent, Some(user("a")));
    let row = total(&rollups);
    assert_eq!((row.csat_count, row.csat_average), (1, Some(4.0)));
    assert_eq!((row.messages_customer, row.messages_agent), (2, 1));
    // Another form is a plain message.
    let other = Content::FormReply(FormReply {
        form_id: "lead".into(),
        values: BTreeMap::from([("score".into(), "5".into())]),
    });
    assert_eq!(classify(&Side::Customer, &other), Signal::Customer);
    let blank = csat_reply(3, Some(" "));
    assert_eq!(
        classify(&Side::Customer, &blank),
        Signal::Csat {
            score: 3,
            comment: None
        }
    );
}

#[test]
fn replays_change_nothing_and_gaps_and_strangers_are_refused() {
    let mut s = Script::new(6);
    s.customer(0).agent(10, "a").customer(20);
    let targets = SlaTargets::default();
    let mut facts = ConversationFacts::new(tenant(), s.conversation);
    let gap = facts.apply(&s.events[1].observed(), &targets).unwrap_err();
    assert_eq!(
        gap,
        Error::Gap {
            conversation: s.conversation,
            expected: Seq::new(1),
            got: Seq::new(2)
        }
    );
    assert!(matches!(
        facts.apply(&s.events[0].observed(), &targets),
        Ok(Applied::Advanced(d)) if !d.is_empty()
    ));
    let after_one = facts.clone();
    assert_eq!(
        facts.apply(&s.events[0].observed(), &targets),
        Ok(Applied::Replay)
    );
    assert_eq!(facts, after_one);
    let mut foreign = s.events[1].clone();
    foreign.conversation = convo(99);
    assert!(matches!(
        facts.apply(&foreign.observed(), &targets),
        Err(Error::Foreign { .. })
    ));
    assert_eq!(facts, after_one);
    assert_eq!(facts.last_seq(), Seq::new(1));
}

#[test]
fn facts_survive_a_serde_round_trip() {
    let mut s = Script::new(7);
    s.customer(0)
        .life(10, |l| {
            l.owner = Owner::Inbox;
            l.team = Some(team("sales"));
        })
        .life(20, |l| l.assignee = Some(user("a")))
        .agent(30, "a")
        .life(40, |l| l.status = Status::Resolved)
        .push(50, Side::Customer, csat_reply(5, Some("great, \"really\"")));
    let (facts, rollups) = run(&s.events, &SlaTargets::default());
    let json = serde_json::to_string(&facts).unwrap();
    let back: ConversationFacts = serde_json::from_str(&json).unwrap();
    assert_eq!(back, facts);
    for (key, rollup) in rollups.iter() {
        let k: HourKey = serde_json::from_str(&serde_json::to_string(key).unwrap()).unwrap();
        let r: Rollup = serde_json::from_str(&serde_json::to_string(rollup).unwrap()).unwrap();
        assert_eq!((&k, &r), (key, rollup));
    }
}

#[test]
fn queries_group_filter_and_write_csv() {
    let mut s = Script::new(8);
    s.customer(0)
        .life(10, |l| {
            l.team = Some(team("a,b"));
            l.assignee = Some(user("a"));
        })
        .agent(20, "a")
        .agent(3_700, "a")
        .customer(90_000); // the next day
    let (_, rollups) = run(&s.events, &SlaTargets::default());
    let h0 = hour_of(Timestamp::from_millis(T0));
    let mut q = Query {
        tenant: Some(tenant()),
        from_hour: h0,
        to_hour: h0 + 48,
        group: Group::Team,
        period: Period::Day,
        team: None,
        agent: None,
    };
    let rows = query(rollups.iter(), &q);
    // The first message came before the conversation had a team.
    let days: Vec<(Option<&str>, PeriodKey, u64)> = rows
        .iter()
        .map(|r| (r.team.as_ref().map(TeamId::as_str), r.period, r.messages()))
        .collect();
    let (d0, d1) = (PeriodKey::Day(h0 / 24), PeriodKey::Day(h0 / 24 + 1));
    assert_eq!(
        days,
        [(None, d0, 1), (Some("a,b"), d0, 2), (Some("a,b"), d1, 1)]
    );
    q.to_hour = h0 + 1;
    q.period = Period::Hour;
    q.team = Some(team("a,b"));
    let rows = query(rollups.iter(), &q);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].opened, rows[0].first_response_median_s),
        (1, Some(20))
    );
    q.team = Some(team("other"));
    assert!(query(rollups.iter(), &q).is_empty());
    q.team = None;
    q.agent = Some(user("a"));
    q.group = Group::Agent;
    q.to_hour = h0 + 48;
    q.period = Period::HourOfDay;
    let mut rows = query(rollups.iter(), &q);
    sort_busiest(&mut rows);
    let busiest: Vec<PeriodKey> = rows.iter().map(|r| r.period).collect();
    // 01:00 holds two messages (one the next day), 00:00 one and the opening.
    assert_eq!(busiest, [PeriodKey::HourOfDay(1), PeriodKey::HourOfDay(0)]);
    let csv = to_csv(&rows).unwrap();
    let mut lines = csv.split("\r\n");
    let header = lines.next().unwrap();
    assert!(header.starts_with("tenant,team,agent,period,start,opened,first_responses,"));
    assert_eq!(
        lines.next().unwrap(),
        "acme,,a,hour_of_day,1,0,0,,,0,0,,,0,,1,1,0,0,0,,,0,,2"
    );
    q.group = Group::Team;
    q.period = Period::Total;
    q.agent = None;
    let csv = to_csv(&query(rollups.iter(), &q)).unwrap();
    assert!(csv.contains("\r\nacme,\"a,b\",,total,,1,"), "{csv}");
    let by_hour = to_csv(&query(
        rollups.iter(),
        &Query {
            period: Period::Hour,
            ..q.clone()
        },
    ))
    .unwrap();
    assert!(by_hour.contains(",hour,2024-05-06T00:00:00Z,"), "{by_hour}");
    assert!(by_hour.contains(",hour,2024-05-07T01:00:00Z,"), "{by_hour}");
}

#[test]
fn iso_hours_follow_the_calendar() {
    use crate::query::iso_hour;
    assert_eq!(iso_hour(0), "1970-01-01T00:00:00Z");
    assert_eq!(iso_hour(-1), "1969-12-31T23:00:00Z");
    // 2024-02-29 12:00 UTC.
    assert_eq!(iso_hour(1_709_208_000 / 3600), "2024-02-29T12:00:00Z");
    assert_eq!(iso_hour(T0 / 3_600_000), "2024-05-06T00:00:00Z");
}

/// Feeds a stream to the facts in the order given, as a shell would: the
/// facts and the rollup rows of each delta change together.
fn feed<'a>(
    order: impl IntoIterator<Item = &'a Numbered>,
    targets: &SlaTargets,
    facts: &mut HashMap<ConversationId, ConversationFacts>,
    rollups: &mut Rollups,
) {
    for e in order {
        let f = facts
            .entry(e.conversation)
            .or_insert_with(|| ConversationFacts::new(e.tenant.clone(), e.conversation));
        match f.apply(&e.observed(), targets) {
            Ok(Applied::Advanced(delta)) => rollups.apply(&delta).unwrap(),
            Ok(Applied::Replay) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

/// The stream interleaved across conversations at random, each
/// conversation's messages in order, with earlier messages delivered again
/// now and then (a redelivery after a lost ack).
fn shuffled(events: &[Numbered], rng: &mut Rng) -> Vec<Numbered> {
    let mut queues: BTreeMap<ConversationId, Vec<&Numbered>> = BTreeMap::new();
    for e in events {
        queues.entry(e.conversation).or_default().push(e);
    }
    let mut next: Vec<(Vec<&Numbered>, usize)> = queues.into_values().map(|q| (q, 0)).collect();
    let mut out = Vec::new();
    while !next.is_empty() {
        let i = rng.below(next.len() as u64) as usize;
        let (queue, at) = &mut next[i];
        out.push(queue[*at].clone());
        if *at > 0 && rng.chance(20) {
            let back = rng.below(*at as u64 + 1) as usize;
            out.extend(queue[back..=*at].iter().map(|e| (*e).clone()));
        }
        *at += 1;
        if *at == queue.len() {
            next.swap_remove(i);
        }
    }
    out
}

fn queries(traffic: &Traffic, rng: &mut Rng) -> Vec<Query> {
    let mut out = Vec::new();
    for group in [Group::Tenant, Group::Team, Group::Agent] {
        for period in [Period::Hour, Period::Day, Period::HourOfDay, Period::Total] {
            out.push(Query {
                tenant: None,
                from_hour: traffic.from_hour,
                to_hour: traffic.to_hour,
                group,
                period,
                team: None,
                agent: None,
            });
        }
    }
    // A random window, tenant, team and agent filter.
    let from = traffic.from_hour + rng.below(24) as i64;
    out.push(Query {
        tenant: Some(
            rng.pick(&[tenant(), TenantId::new("globex").unwrap()])
                .clone(),
        ),
        from_hour: from,
        to_hour: from + 1 + rng.below(12) as i64,
        group: *rng.pick(&[Group::Tenant, Group::Team, Group::Agent]),
        period: *rng.pick(&[Period::Hour, Period::Total]),
        team: rng
            .chance(50)
            .then(|| rng.pick(&[team("sales"), team("support")]).clone()),
        agent: rng
            .chance(50)
            .then(|| rng.pick(&[user("a"), user("b"), user("c")]).clone()),
    });
    out
}

#[test]
fn a_day_of_traffic_gives_the_expected_figures() {
    let traffic = simulate::day_of_traffic(7);
    assert_eq!(traffic, simulate::day_of_traffic(7), "a plan is its seed's");
    let events = traffic.numbered();
    let (mut facts, mut rollups) = (HashMap::new(), Rollups::default());
    feed(&events, &traffic.targets, &mut facts, &mut rollups);
    let q = Query {
        tenant: None,
        from_hour: traffic.from_hour,
        to_hour: traffic.to_hour,
        group: Group::Tenant,
        period: Period::Total,
        team: None,
        agent: None,
    };
    let rows = query(rollups.iter(), &q);
    assert_eq!(rows, simulate::expected(&traffic, &q));
    // A run in which nothing happened proves nothing.
    let all = rows.iter().fold(Rollup::default(), |mut r, row| {
        r.opened += row.opened;
        r.reopened += row.reopened;
        r.sla_missed += row.sla_missed;
        r.messages_bot += row.messages_bot;
        r.csat[0] += row.csat_count;
        r.messages_agent += row.queue_waits;
        r.messages_customer += row.resolutions;
        r
    });
    assert!(
        all.opened > 100 && all.reopened > 5 && all.sla_missed > 5,
        "{rows:?}"
    );
    assert!(all.messages_bot > 10 && all.csat[0] > 20, "{rows:?}");
    assert!(
        all.messages_agent > 50 && all.messages_customer > 100,
        "{rows:?}"
    );
    assert_eq!(rows.len(), 2);
}

#[test]
fn applying_everything_twice_or_again_from_an_old_snapshot_changes_nothing() {
    let traffic = simulate::traffic(11, 60);
    let events = traffic.numbered();
    let targets = &traffic.targets;
    let (mut once, mut once_rollups) = (HashMap::new(), Rollups::default());
    feed(&events, targets, &mut once, &mut once_rollups);

    // Every message twice in a row.
    let (mut twice, mut twice_rollups) = (HashMap::new(), Rollups::default());
    feed(
        events.iter().flat_map(|e| [e, e]),
        targets,
        &mut twice,
        &mut twice_rollups,
    );
    assert_eq!(twice_rollups, once_rollups);
    assert_eq!(twice, once);

    // A crash after a third of the stream: the store holds what its last
    // write left (facts and rollups together); the stream is delivered
    // again from the start.
    let third = events.len() / 3;
    let (mut stored, mut stored_rollups) = (HashMap::new(), Rollups::default());
    feed(&events[..third], targets, &mut stored, &mut stored_rollups);
    feed(&events, targets, &mut stored, &mut stored_rollups);
    assert_eq!(stored_rollups, once_rollups);

    // Facts restored from an older snapshot than the rollups (the two
    // written apart, which the shell must not do): applying again and
    // rebuilding the rollups from the facts gives the same figures.
    let (mut old, mut ignored) = (HashMap::new(), Rollups::default());
    feed(&events[..third], targets, &mut old, &mut ignored);
    feed(&events, targets, &mut old, &mut ignored);
    assert_eq!(rebuild(old.values()), once_rollups);
    assert_eq!(rebuild(once.values()), once_rollups);
}

proptest! {
    /// However conversations interleave and messages are redelivered, the
    /// figures are those computed independently from the plan.
    #[test]
    fn figures_match_an_independent_count(seed in any::<u64>(), conversations in 1usize..40) {
        let traffic = simulate::traffic(seed, conversations);
        let events = traffic.numbered();
        let mut rng = Rng::new(seed ^ 0x5eed);
        let order = shuffled(&events, &mut rng);
        let (mut facts, mut rollups) = (HashMap::new(), Rollups::default());
        feed(&order, &traffic.targets, &mut facts, &mut rollups);
        prop_assert_eq!(&rebuild(facts.values()), &rollups);
        for q in queries(&traffic, &mut rng) {
            prop_assert_eq!(query(rollups.iter(), &q), simulate::expected(&traffic, &q), "{:?}", q);
        }
    }
}

#[test]
fn facts_first_seen_mid_way_start_there() {
    let tenant = tenant();
    let conversation = ConversationId::generate();
    let mut facts =
        crate::ConversationFacts::starting_after(tenant.clone(), conversation, Seq::new(6));
    let side = crate::Side::Customer;
    let content = Content::Text("hello".into());
    let at = |seq: u64| crate::Observed {
        tenant: &tenant,
        conversation,
        seq: Seq::new(seq),
        at: Timestamp::from_millis(3_600_000),
        side: &side,
        content: &content,
    };
    let targets = crate::SlaTargets::default();
    assert_eq!(facts.apply(&at(6), &targets), Ok(crate::Applied::Replay));
    assert!(matches!(
        facts.apply(&at(7), &targets),
        Ok(crate::Applied::Advanced(_))
    ));
    assert_eq!(facts.messages().customer, 1);
    assert!(facts.apply(&at(9), &targets).is_err());
    facts.skip_to(Seq::new(8));
    assert!(matches!(
        facts.apply(&at(9), &targets),
        Ok(crate::Applied::Advanced(_))
    ));
    assert_eq!(facts.last_seq(), Seq::new(9));
}

#[test]
fn the_stream_walk_agrees_with_the_plan_walk() {
    // Two independent walks of one day: the plan's, replaying the
    // lifecycle rules, and the stored stream's, reading each activity.
    let traffic = simulate::day_of_traffic(7);
    let stream = traffic.numbered();
    for (group, period) in [
        (Group::Agent, Period::Hour),
        (Group::Team, Period::Total),
        (Group::Tenant, Period::HourOfDay),
    ] {
        let q = Query {
            tenant: None,
            from_hour: traffic.from_hour,
            to_hour: traffic.to_hour,
            group,
            period,
            team: None,
            agent: None,
        };
        let from_stream = simulate::expected_from_stream(&stream, &traffic.targets, &q);
        assert!(!from_stream.is_empty());
        assert_eq!(from_stream, simulate::expected(&traffic, &q));
    }
}
