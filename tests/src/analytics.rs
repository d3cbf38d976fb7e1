//! Support analytics end to end: a seeded day of support traffic carried
//! out through the public APIs (customers, agents and a bot sending,
//! lifecycle changes, CSAT answers), and `AnalyticsService` answering
//! exactly the figures computed independently from what the server
//! stored, also after the analytics consumer was killed mid-stream.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use natter_analytics::simulate::{self, Action, Actor, Numbered, Traffic};
use natter_analytics::{Group, Period, PeriodKey, Query, Row, Side, SlaTargets};
use natter_core::{ConversationId, Message, Role, TeamId, TenantId, UserId};
use natter_proto::status::reason_of;
use natter_proto::v1::analytics_service_client::AnalyticsServiceClient;
use natter_proto::v1::{
    AnalyticsGroup, AnalyticsPeriod, AnalyticsQuery, AnalyticsRow, CreateConversationRequest,
    ExportCsvRequest, GetConversationAnalyticsRequest, ListMessagesRequest, NewMember,
    PutTeamRequest, QueryRequest, SendMessageRequest, Team, UpdateLifecycleRequest,
    list_messages_request,
};
use tonic::transport::Channel;

use crate::cluster::{Cluster, Mode, Service, authed, channel};

/// The seed of the day; any seed must pass.
const SEED: u64 = 20_240_506;
/// Conversations of the day: enough for every kind of figure, few enough
/// for two cores.
const CONVERSATIONS: usize = 48;
/// How long the figures may take to catch up with the traffic, a desk
/// restart (its lease lapsing) included.
const CATCH_UP: Duration = Duration::from_secs(120);
/// Who changes lifecycles for the business.
const BACKEND: &str = "crm";

/// Each team's first response target and CSAT setting, as put.
fn teams() -> [(&'static str, u32); 2] {
    [("sales", 300), ("support", 900)]
}

fn targets() -> SlaTargets {
    SlaTargets {
        default_s: None,
        by_team: teams()
            .into_iter()
            .map(|(team, target)| (team.parse().expect("a team id"), target))
            .collect(),
    }
}

/// The analytics of a day of traffic equal those computed from what the
/// server stored; with `kill`, the desk (whose holder runs the analytics
/// consumer) is killed with SIGKILL half way and started again.
pub async fn day_of_traffic(mode: Mode, kill: bool) {
    let mut cluster = Cluster::start(mode).await;
    let traffic = simulate::traffic(SEED, CONVERSATIONS);
    let tenants: Vec<TenantId> = {
        let mut t: Vec<TenantId> = traffic.steps.iter().map(|s| s.tenant.clone()).collect();
        t.sort();
        t.dedup();
        t
    };
    for tenant in &tenants {
        put_teams(&cluster, tenant).await;
    }
    let conversations = create_conversations(&cluster, &traffic).await;
    let (third, two_thirds) = (traffic.steps.len() / 3, traffic.steps.len() * 2 / 3);
    let mut counted_before = 0;
    for (n, step) in traffic.steps.iter().enumerate() {
        match (kill, mode) {
            // The desk down while a third of the day goes on: a backlog,
            // which the next holder is killed in the middle of.
            (true, Mode::Separate) if n == third => {
                counted_before = counted(&cluster, &tenants).await;
                cluster.kill(Service::Desk);
            }
            (true, Mode::Separate) if n == two_thirds => {
                cluster.start_service(Service::Desk).await;
                kill_while_counting(&mut cluster, &tenants, counted_before).await;
                cluster.start_service(Service::Desk).await;
            }
            // One process: everything goes down, and comes back on the
            // same data directory.
            (true, Mode::Single) if n == two_thirds => cluster.restart(Service::All).await,
            _ => {}
        }
        let conversation = conversations[&step.conversation];
        carry_out(&cluster, step, conversation, n).await;
    }

    let service = |tenant: &TenantId| cluster.token_in(tenant, BACKEND, Role::Service);
    let mut analytics = analytics(&cluster).await;
    let deadline = Instant::now() + CATCH_UP;
    let (stream, range) = loop {
        let stream = stored(&cluster, &conversations, &traffic).await;
        let range = hours(&stream);
        let mut differs = None;
        for tenant in &tenants {
            let mine: Vec<Numbered> = stream
                .iter()
                .filter(|m| m.tenant == *tenant)
                .cloned()
                .collect();
            for (group, period) in [
                (Group::Agent, Period::Hour),
                (Group::Team, Period::Total),
                (Group::Tenant, Period::HourOfDay),
                (Group::Tenant, Period::Day),
            ] {
                let q = Query {
                    tenant: Some(tenant.clone()),
                    from_hour: range.0,
                    to_hour: range.1,
                    group,
                    period,
                    team: None,
                    agent: None,
                };
                let expected = simulate::expected_from_stream(&mine, &targets(), &q);
                let got = query(&mut analytics, &service(tenant), &q).await;
                if got != expected {
                    differs = Some((q, expected, got));
                }
            }
        }
        let Some((q, expected, got)) = differs else {
            break (stream, range);
        };
        assert!(
            Instant::now() < deadline,
            "the analytics never matched the stored traffic for {q:?}\nexpected {expected:#?}\ngot {got:#?}\ndesk log:\n{}",
            cluster.log_tail(match mode {
                Mode::Separate => Service::Desk,
                Mode::Single => Service::All,
            })
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // It cannot pass empty: the day had resolutions, reopenings, CSAT
    // answers (some after the desk's survey) and first responses.
    let mut totals = Vec::new();
    for tenant in &tenants {
        let q = Query {
            tenant: Some(tenant.clone()),
            from_hour: range.0,
            to_hour: range.1,
            group: Group::Tenant,
            period: Period::Total,
            team: None,
            agent: None,
        };
        totals.extend(query(&mut analytics, &service(tenant), &q).await);
    }
    let sum = |f: fn(&Row) -> u64| totals.iter().map(f).sum::<u64>();
    assert!(sum(|r| r.opened) >= 40, "{totals:#?}");
    assert!(sum(|r| r.first_responses) > 0, "{totals:#?}");
    assert!(sum(|r| r.resolutions) > 0, "{totals:#?}");
    assert!(sum(|r| r.reopened) > 0, "{totals:#?}");
    assert!(sum(|r| r.csat_count) > 0, "{totals:#?}");
    assert!(sum(|r| r.queue_waits) > 0, "{totals:#?}");
    assert!(sum(|r| r.messages_bot) > 0, "{totals:#?}");
    let surveys = stream
        .iter()
        .filter(|m| matches!(&m.content, natter_core::Content::Form(f) if f.form_id == "csat"))
        .count();
    assert!(surveys > 0, "the desk sent no satisfaction survey");

    // The score is on the conversation too.
    let rated = stream
        .iter()
        .rev()
        .find_map(|m| match &m.content {
            natter_core::Content::FormReply(r)
                if r.form_id == "csat" && m.side == Side::Customer =>
            {
                Some((m.tenant.clone(), m.conversation, r.values["score"].clone()))
            }
            _ => None,
        })
        .expect("a CSAT answer");
    let (tenant, conversation, score) = rated;
    let latest = stream
        .iter()
        .filter(|m| m.conversation == conversation)
        .filter_map(|m| match &m.content {
            natter_core::Content::FormReply(r) if r.form_id == "csat" => {
                Some(r.values["score"].clone())
            }
            _ => None,
        })
        .next_back()
        .unwrap_or(score);
    let summary = analytics
        .get_conversation_analytics(authed(
            &service(&tenant),
            GetConversationAnalyticsRequest {
                conversation_id: conversation.to_string(),
            },
        ))
        .await
        .expect("the conversation's analytics")
        .into_inner()
        .analytics
        .expect("analytics");
    assert_eq!(summary.csat_score.map(|s| s.to_string()), Some(latest));
    assert!(summary.opened_at.is_some() && summary.resolutions > 0);

    // The CSV export has the rows of the query, after a header.
    let tenant = &tenants[0];
    let request = ExportCsvRequest {
        query: Some(wire_query(&Query {
            tenant: None,
            from_hour: range.0,
            to_hour: range.1,
            group: Group::Agent,
            period: Period::Hour,
            team: None,
            agent: None,
        })),
    };
    let mut chunks = analytics
        .export_csv(authed(
            &cluster.token_in(tenant, "ann", Role::Agent),
            request,
        ))
        .await
        .expect("agents export")
        .into_inner();
    let mut csv = Vec::new();
    while let Some(chunk) = chunks.message().await.expect("a chunk") {
        csv.extend_from_slice(&chunk.csv);
    }
    let csv = String::from_utf8(csv).expect("utf-8");
    let q = Query {
        tenant: Some(tenant.clone()),
        from_hour: range.0,
        to_hour: range.1,
        group: Group::Agent,
        period: Period::Hour,
        team: None,
        agent: None,
    };
    let rows = query(&mut analytics, &service(tenant), &q).await;
    assert!(csv.starts_with("tenant,team,agent,period,start,opened,"));
    assert_eq!(csv.lines().count(), rows.len() + 1, "{csv}");

    // Customers and bots read no analytics.
    for role in [Role::Customer, Role::Bot] {
        let denied = analytics
            .query(authed(
                &cluster.token_in(tenant, "nosy", role),
                QueryRequest {
                    query: Some(wire_query(&q)),
                },
            ))
            .await
            .expect_err("refused");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert_eq!(reason_of(&denied), "ROLE_NOT_ALLOWED");
    }
}

/// The messages the analytics have counted so far, in every tenant.
async fn counted(cluster: &Cluster, tenants: &[TenantId]) -> u64 {
    let now_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        .cast_signed()
        / 3600;
    let mut client = analytics(cluster).await;
    let mut messages = 0;
    for tenant in tenants {
        let q = Query {
            tenant: Some(tenant.clone()),
            from_hour: now_hour - 1,
            to_hour: now_hour + 3,
            group: Group::Tenant,
            period: Period::Total,
            team: None,
            agent: None,
        };
        let token = cluster.token_in(tenant, BACKEND, Role::Service);
        let rows = query(&mut client, &token, &q).await;
        messages += rows.iter().map(Row::messages).sum::<u64>();
    }
    messages
}

/// Waits until the restarted desk's analytics consumer is taking its
/// backlog (more is counted than `before` the first kill), then kills the
/// desk with SIGKILL, as likely as not in the middle of a delivery.
async fn kill_while_counting(cluster: &mut Cluster, tenants: &[TenantId], before: u64) {
    let deadline = Instant::now() + CATCH_UP;
    while counted(cluster, tenants).await <= before {
        assert!(
            Instant::now() < deadline,
            "the restarted desk never took its backlog; log:\n{}",
            cluster.log_tail(Service::Desk)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.kill(Service::Desk);
}

async fn analytics(cluster: &Cluster) -> AnalyticsServiceClient<Channel> {
    AnalyticsServiceClient::new(channel(cluster.addrs.desk).await)
}

async fn put_teams(cluster: &Cluster, tenant: &TenantId) {
    let token = cluster.token_in(tenant, BACKEND, Role::Service);
    let mut desk = cluster.desk().await;
    for (team, target) in teams() {
        desk.put_team(authed(
            &token,
            PutTeamRequest {
                team: Some(Team {
                    team_id: team.to_owned(),
                    first_response_target_seconds: target,
                    csat: true,
                    ..Team::default()
                }),
            },
        ))
        .await
        .expect("the team is put");
    }
}

/// One conversation per planned one, with its customer, the agents and
/// the bot as members; the planned id maps to the real one.
async fn create_conversations(
    cluster: &Cluster,
    traffic: &Traffic,
) -> BTreeMap<ConversationId, ConversationId> {
    let mut conversations = BTreeMap::new();
    let mut client = cluster.conversations().await;
    for step in &traffic.steps {
        if conversations.contains_key(&step.conversation) {
            continue;
        }
        let Actor::Customer(customer) = &step.actor else {
            panic!("a conversation starts with its customer");
        };
        let member = |user: &str, role: natter_proto::v1::Role| NewMember {
            user_id: user.to_owned(),
            role: role.into(),
        };
        let mut members = vec![member(customer.as_str(), natter_proto::v1::Role::Customer)];
        for agent in ["a", "b", "c"] {
            members.push(member(agent, natter_proto::v1::Role::Agent));
        }
        members.push(member("bot", natter_proto::v1::Role::Bot));
        let created = client
            .create_conversation(authed(
                &cluster.token_in(&step.tenant, BACKEND, Role::Service),
                CreateConversationRequest {
                    conversation_id: String::new(),
                    subject: String::new(),
                    members,
                },
            ))
            .await
            .expect("the conversation is created")
            .into_inner()
            .conversation
            .expect("a conversation");
        let id = created.conversation_id.parse().expect("a conversation id");
        conversations.insert(step.conversation, id);
    }
    conversations
}

/// Does what one step of the plan says, as its actor.
async fn carry_out(
    cluster: &Cluster,
    step: &simulate::Step,
    conversation: ConversationId,
    n: usize,
) {
    let (user, role) = match &step.actor {
        Actor::Customer(u) => (u.as_str(), Role::Customer),
        Actor::Agent(u) => (u.as_str(), Role::Agent),
        Actor::Bot(u) => (u.as_str(), Role::Bot),
        Actor::Service => (BACKEND, Role::Service),
    };
    let token = cluster.token_in(&step.tenant, user, role);
    let mut client = cluster.conversations().await;
    let outcome = match &step.action {
        Action::Change(change) => client
            .update_lifecycle(authed(
                &token,
                UpdateLifecycleRequest {
                    conversation_id: conversation.to_string(),
                    client_change_id: format!("step-{n}"),
                    change: Some(change.clone().into()),
                },
            ))
            .await
            .map(drop),
        Action::Say(_) | Action::Csat { .. } => {
            let content = step.content().expect("a message's content");
            client
                .send_message(authed(
                    &token,
                    SendMessageRequest {
                        conversation_id: conversation.to_string(),
                        client_message_id: format!("step-{n}"),
                        content: Some(content.into()),
                    },
                ))
                .await
                .map(drop)
        }
    };
    match outcome {
        Ok(()) => {}
        // A bot is refused while people have control, as planned.
        Err(status) if role == Role::Bot && reason_of(&status) == "INBOX_HAS_CONTROL" => {}
        Err(status) => panic!("step {n} ({step:?}) failed: {status:?}"),
    }
}

/// Every stored message of the day's conversations, as the analytics'
/// stream: their real seqs, times and senders' sides.
async fn stored(
    cluster: &Cluster,
    conversations: &BTreeMap<ConversationId, ConversationId>,
    traffic: &Traffic,
) -> Vec<Numbered> {
    let tenant_of: BTreeMap<ConversationId, TenantId> = traffic
        .steps
        .iter()
        .map(|s| (conversations[&s.conversation], s.tenant.clone()))
        .collect();
    let mut client = cluster.conversations().await;
    let mut out = Vec::new();
    for (conversation, tenant) in &tenant_of {
        let token = cluster.token_in(tenant, BACKEND, Role::Service);
        let mut page_token = String::new();
        loop {
            let page = client
                .list_messages(authed(
                    &token,
                    ListMessagesRequest {
                        conversation_id: conversation.to_string(),
                        page_size: 100,
                        page_token: page_token.clone(),
                        start: Some(list_messages_request::Start::AfterSeq(0)),
                    },
                ))
                .await
                .expect("the messages")
                .into_inner();
            for wire in page.messages {
                let message = Message::try_from(wire).expect("a readable message");
                out.push(Numbered {
                    tenant: tenant.clone(),
                    conversation: message.conversation_id,
                    seq: message.seq,
                    at: message.sent_at,
                    side: side(&message.sender_id),
                    content: message.content,
                });
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
    }
    out
}

/// The side of a sender, by who the test made them.
fn side(user: &UserId) -> Side {
    match user.as_str() {
        "a" | "b" | "c" => Side::Agent(user.clone()),
        "bot" => Side::Bot(user.clone()),
        name if name.starts_with("customer-") => Side::Customer,
        _ => Side::Service,
    }
}

/// The hours the stream spans: the first and the one after the last.
fn hours(stream: &[Numbered]) -> (i64, i64) {
    let hour = |m: &Numbered| m.at.as_millis().div_euclid(3_600_000);
    let first = stream.iter().map(hour).min().expect("messages");
    let last = stream.iter().map(hour).max().expect("messages");
    (first, last + 1)
}

fn wire_query(q: &Query) -> AnalyticsQuery {
    let at = |hour: i64| {
        natter_proto::convert::timestamp_to_wire(natter_core::Timestamp::from_millis(
            hour * 3_600_000,
        ))
    };
    AnalyticsQuery {
        from: Some(at(q.from_hour)),
        to: Some(at(q.to_hour)),
        group_by: match q.group {
            Group::Tenant => AnalyticsGroup::Tenant,
            Group::Team => AnalyticsGroup::Team,
            Group::Agent => AnalyticsGroup::Agent,
        }
        .into(),
        period: match q.period {
            Period::Hour => AnalyticsPeriod::Hour,
            Period::Day => AnalyticsPeriod::Day,
            Period::HourOfDay => AnalyticsPeriod::HourOfDay,
            Period::Total => AnalyticsPeriod::Total,
        }
        .into(),
        team_id: q.team.as_ref().map(ToString::to_string).unwrap_or_default(),
        agent_id: q
            .agent
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        order: 0,
    }
}

/// `AnalyticsService.Query` for `q`, its rows in the core's terms.
async fn query(client: &mut AnalyticsServiceClient<Channel>, token: &str, q: &Query) -> Vec<Row> {
    let tenant = q.tenant.clone().expect("a tenant");
    let rows = client
        .query(authed(
            token,
            QueryRequest {
                query: Some(wire_query(q)),
            },
        ))
        .await
        .expect("the analytics answer")
        .into_inner()
        .rows;
    rows.into_iter()
        .map(|row| row_from_wire(&tenant, q.period, row))
        .collect()
}

fn row_from_wire(tenant: &TenantId, period: Period, row: AnalyticsRow) -> Row {
    let start_hour = || {
        let start =
            natter_proto::convert::timestamp_from_wire("start", row.start).expect("a start");
        start.as_millis().div_euclid(3_600_000)
    };
    let period = match period {
        Period::Hour => PeriodKey::Hour(start_hour()),
        Period::Day => PeriodKey::Day(start_hour().div_euclid(24)),
        Period::HourOfDay => PeriodKey::HourOfDay(u8::try_from(row.hour_of_day).expect("0 to 23")),
        Period::Total => PeriodKey::Total,
    };
    let id = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    Row {
        tenant: tenant.clone(),
        team: id(&row.team_id).map(|t| t.parse::<TeamId>().expect("a team id")),
        agent: id(&row.agent_id).map(|a| a.parse::<UserId>().expect("a user id")),
        period,
        opened: row.opened,
        first_responses: row.first_responses,
        first_response_median_s: row.first_response_median_seconds,
        first_response_p90_s: row.first_response_p90_seconds,
        sla_missed: row.sla_missed,
        resolutions: row.resolutions,
        resolution_median_s: row.resolution_median_seconds,
        resolution_p90_s: row.resolution_p90_seconds,
        reopened: row.reopened,
        reopen_rate: row.reopen_rate,
        messages_customer: row.messages_customer,
        messages_agent: row.messages_agent,
        messages_bot: row.messages_bot,
        messages_service: row.messages_service,
        queue_waits: row.queue_waits,
        queue_wait_median_s: row.queue_wait_median_seconds,
        queue_wait_p90_s: row.queue_wait_p90_seconds,
        csat_count: row.csat_count,
        csat_average: row.csat_average,
    }
}
