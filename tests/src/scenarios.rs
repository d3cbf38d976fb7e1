//! The scenarios every deployment mode must pass, written once and run
//! against each mode and transport by the test files.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_core::Role;
use natter_proto::status;
use natter_proto::v1::client_frame::Frame as ClientKind;
use natter_proto::v1::server_frame::Frame as ServerKind;
use natter_proto::v1::{
    AddMembersRequest, ClientFrame, ConversationStatus, CreateConversationRequest,
    GetConversationRequest, GetStatsRequest, Lifecycle, LifecycleChange, ListMessagesRequest,
    MessageContent, NewMember, Read, SendMessageRequest, ThreadOwner, UpdateLifecycleRequest,
    event, list_messages_request, message_content,
};
use tokio::sync::Mutex;

use crate::cluster::{Cluster, Mode, Service, authed};
use crate::device::{Device, Outbound, Transport, event_kind, text_of};

const INVALID_ARGUMENT: i32 = 3;
const NOT_FOUND: i32 = 5;
const PERMISSION_DENIED: i32 = 7;
const UNAVAILABLE: i32 = 14;
const UNAUTHENTICATED: i32 = 16;

fn role_wire(role: Role) -> i32 {
    natter_proto::v1::Role::from(role) as i32
}

/// `members` as a create request lists them.
fn new_members(members: &[(&str, Role)]) -> Vec<NewMember> {
    members
        .iter()
        .map(|(user, role)| NewMember {
            user_id: (*user).into(),
            role: role_wire(*role),
        })
        .collect()
}

/// Creates a conversation of `members` through the public API, acting as
/// the tenant's backend.
pub async fn conversation(cluster: &Cluster, members: &[(&str, Role)]) -> String {
    let admin = cluster.token("crm", Role::Service);
    let request = CreateConversationRequest {
        conversation_id: String::new(),
        subject: "Order #1234".into(),
        members: new_members(members),
    };
    cluster
        .conversations()
        .await
        .create_conversation(authed(&admin, request))
        .await
        .expect("create a conversation")
        .into_inner()
        .conversation
        .expect("the created conversation")
        .conversation_id
}

async fn device(
    cluster: &Cluster,
    transport: Transport,
    user: &str,
    role: Role,
    id: &str,
) -> Device {
    device_at(cluster, transport, user, role, id, 0).await
}

async fn device_at(
    cluster: &Cluster,
    transport: Transport,
    user: &str,
    role: Role,
    id: &str,
    cursor: u64,
) -> Device {
    Device::connect(cluster, transport, &cluster.token(user, role), id, cursor)
        .await
        .unwrap_or_else(|closed| panic!("{user}/{id} could not connect: {closed:?}"))
}

/// A customer on web and phone and an agent: each message reaches every
/// member's devices, the sender's other device included, in order.
pub async fn two_devices_and_an_agent(mode: Mode, transport: Transport) {
    let cluster = Cluster::start(mode).await;
    let conv = conversation(&cluster, &[("alice", Role::Customer), ("bob", Role::Agent)]).await;
    let mut web = device(&cluster, transport, "alice", Role::Customer, "web").await;
    let mut phone = device(&cluster, Transport::Grpc, "alice", Role::Customer, "phone").await;
    let mut agent = device(&cluster, transport, "bob", Role::Agent, "console").await;

    for (i, text) in ["hello", "my order is late", "order 1234"]
        .iter()
        .enumerate()
    {
        let ack = web
            .send_text(&conv, &format!("w{i}"), text)
            .await
            .expect("the send is acknowledged");
        assert_eq!(ack.seq, i as u64 + 1);
    }
    for receiver in [&mut phone, &mut agent, &mut web] {
        let got = receiver.messages(&conv, 3).await;
        assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(text_of(&got[1]), "my order is late");
        assert!(got.iter().all(|m| m.sender_id == "alice"));
    }

    let reply = agent
        .send_text(&conv, "r0", "sorry, checking now")
        .await
        .expect("the reply is acknowledged");
    assert_eq!(reply.seq, 4);
    for receiver in [&mut web, &mut phone] {
        let got = receiver.messages(&conv, 1).await;
        assert_eq!(got[0].seq, 4);
        assert_eq!(got[0].sender_id, "bob");
        assert_eq!(text_of(&got[0]), "sorry, checking now");
    }

    // The operators' probe says each service is serving.
    let addrs = &cluster.addrs;
    for addr in [
        addrs.gateway_grpc,
        addrs.storage,
        addrs.sync,
        addrs.fanout,
        addrs.desk,
    ] {
        let probe = std::process::Command::new(natter_testkit::binary("natter"))
            .args(["health", &addr.to_string()])
            .output()
            .expect("run natter health");
        let said = String::from_utf8_lossy(&probe.stdout);
        assert!(probe.status.success(), "{addr}: {said} {probe:?}");
        assert_eq!(said.trim(), "SERVING");
    }
}

/// Every service's `/metrics` counts what devices sent and received:
/// messages accepted and delivered at the gateway, stored by storage,
/// fanned out, open sessions and gRPC calls by method and code.
pub async fn metrics_count_the_traffic(mode: Mode) {
    let cluster = Cluster::start(mode).await;
    let conv = conversation(&cluster, &[("alice", Role::Customer), ("bob", Role::Agent)]).await;
    let mut web = device(&cluster, Transport::WsJson, "alice", Role::Customer, "web").await;
    let mut agent = device(&cluster, Transport::Grpc, "bob", Role::Agent, "console").await;
    const SENT: u64 = 5;
    for i in 0..SENT {
        web.send_text(&conv, &format!("m{i}"), "hello")
            .await
            .expect("the send is acknowledged");
    }
    for receiver in [&mut web, &mut agent] {
        assert_eq!(
            receiver.messages(&conv, SENT as usize).await.len(),
            SENT as usize
        );
    }

    let of = |service: Service| match mode {
        Mode::Separate => service,
        Mode::Single => Service::All,
    };
    let gateway = cluster.scrape(of(Service::Gateway)).await;
    assert_eq!(
        sample(&gateway, "natter_gateway_messages_accepted_total"),
        SENT as f64
    );
    assert_eq!(
        sample(&gateway, "natter_gateway_messages_delivered_total"),
        2.0 * SENT as f64,
        "each of the two devices got each message once"
    );
    assert_eq!(sample(&gateway, "natter_gateway_sessions"), 2.0);
    assert_eq!(
        sample(&gateway, "natter_gateway_send_ack_seconds_count"),
        SENT as f64
    );
    assert_eq!(
        sample(&gateway, "natter_gateway_send_deliver_seconds_count"),
        2.0 * SENT as f64
    );
    let storage = cluster.scrape(of(Service::Storage)).await;
    assert_eq!(
        sample(&storage, "natter_storage_messages_stored_total"),
        SENT as f64
    );
    assert!(
        sample(&storage, "natter_storage_write_seconds_count") >= 1.0,
        "{storage}"
    );
    assert_eq!(
        sample(
            &storage,
            "natter_grpc_server_handled_total{grpc_method=\"/natter.v1.ConversationService/CreateConversation\",grpc_code=\"OK\"}"
        ),
        1.0,
        "{storage}"
    );
    let fanout = cluster.scrape(of(Service::Fanout)).await;
    assert!(
        sample(&fanout, "natter_fanout_events_total") >= SENT as f64,
        "{fanout}"
    );
    assert!(
        sample(&fanout, "natter_fanout_updates_written_total") >= 2.0 * SENT as f64,
        "{fanout}"
    );

    // Nothing names a user or a conversation.
    for text in [&gateway, &storage, &fanout] {
        for id in ["alice", "bob", conv.as_str()] {
            assert!(!text.contains(id), "{id} in the metrics");
        }
    }

    // On NATS, each durable consumer's backlog; and every metric the
    // Grafana dashboard charts is served.
    if mode == Mode::Separate {
        assert!(
            fanout.contains("natter_bus_consumer_pending{stream="),
            "{fanout}"
        );
        let pages = [gateway, storage, fanout].concat();
        let dashboard = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/natter.json"),
        )
        .expect("the dashboard");
        let mut charted: Vec<&str> = dashboard
            .match_indices("natter_")
            .map(|(at, _)| {
                let name = &dashboard[at..];
                let end = name
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(name.len());
                name[..end].trim_end_matches("_bucket")
            })
            .filter(|name| name.len() > "natter_".len() && !name.starts_with("natter_overview"))
            .collect();
        charted.sort_unstable();
        charted.dedup();
        assert!(charted.len() >= 10, "{charted:?}");
        for name in charted {
            assert!(
                pages.contains(&format!("\n{name}")),
                "the dashboard charts {name}, which no service serves"
            );
        }
    }
}

/// The sum of every series named `series` (a name, or a name and its
/// labels in the order they are printed) in a Prometheus text page.
fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(series)?;
            let rest = if series.ends_with('}') {
                rest
            } else if let Some(labels) = rest.strip_prefix('{') {
                labels.split_once('}')?.1
            } else {
                rest
            };
            rest.strip_prefix(' ')?.trim().parse::<f64>().ok()
        })
        .sum()
}

/// A device that was away gets exactly what it missed, in order, then
/// continues live without a gap or a repeat at the hand-off.
pub async fn offline_device_catches_up(mode: Mode, transport: Transport) {
    let cluster = Cluster::start(mode).await;
    let conv = conversation(&cluster, &[("alice", Role::Customer), ("bob", Role::Agent)]).await;
    let mut phone = device(&cluster, transport, "alice", Role::Customer, "phone").await;
    let mut agent = device(&cluster, Transport::Grpc, "bob", Role::Agent, "console").await;

    agent.send_text(&conv, "hi", "hi").await.expect("ack");
    phone.messages(&conv, 1).await;
    phone.ack().await;
    let cursor = phone.cursor;
    drop(phone);

    for i in 0..200 {
        agent
            .send_text(&conv, &format!("away-{i}"), &format!("away {i}"))
            .await
            .expect("ack");
    }
    let mut phone = device_at(
        &cluster,
        transport,
        "alice",
        Role::Customer,
        "phone",
        cursor,
    )
    .await;
    let missed = phone.messages(&conv, 200).await;
    assert_eq!(
        missed.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (2..=201).collect::<Vec<_>>(),
        "exactly the missed messages, in order"
    );
    assert_eq!(text_of(&missed[199]), "away 199");

    for i in 0..5 {
        agent
            .send_text(&conv, &format!("live-{i}"), "live")
            .await
            .expect("ack");
    }
    // `updates` checks every cursor is the previous plus one.
    let live = phone.messages(&conv, 5).await;
    assert_eq!(
        live.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (202..=206).collect::<Vec<_>>()
    );
}

/// A retried send is stored once; reading on one device shows on the
/// user's other devices and to the other members.
pub async fn retries_and_read_markers(mode: Mode, transport: Transport) {
    let cluster = Cluster::start(mode).await;
    let conv = conversation(&cluster, &[("alice", Role::Customer), ("bob", Role::Agent)]).await;
    let mut web = device(&cluster, transport, "alice", Role::Customer, "web").await;
    let mut phone = device(&cluster, transport, "alice", Role::Customer, "phone").await;
    let mut agent = device(&cluster, transport, "bob", Role::Agent, "console").await;

    let first = web.send_text(&conv, "same", "once").await.expect("ack");
    let retry = web.send_text(&conv, "same", "once").await.expect("ack");
    assert_eq!(
        (retry.message_id.as_str(), retry.seq),
        (first.message_id.as_str(), first.seq)
    );
    let next = web.send_text(&conv, "after", "after").await.expect("ack");
    assert_eq!(next.seq, first.seq + 1, "the retry took no seq");

    // Through the backend API too.
    let backend = cluster.token("crm", Role::Service);
    let send = || SendMessageRequest {
        conversation_id: conv.clone(),
        client_message_id: "api-1".into(),
        content: Some(MessageContent {
            kind: Some(message_content::Kind::Text("from the crm".into())),
        }),
    };
    let mut api = cluster.conversations().await;
    let a = api
        .send_message(authed(&backend, send()))
        .await
        .expect("send")
        .into_inner();
    let b = api
        .send_message(authed(&backend, send()))
        .await
        .expect("resend")
        .into_inner();
    assert_eq!(a.message, b.message);
    assert!(b.duplicate);

    let got = phone.messages(&conv, 3).await;
    assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3]);

    web.send(ClientKind::Read(Read {
        conversation_id: conv.clone(),
        seq: 2,
    }))
    .await;
    for receiver in [&mut phone, &mut agent] {
        let marker = receiver
            .expect(|frame| {
                let Some(natter_proto::v1::server_frame::Frame::Update(update)) = &frame.frame
                else {
                    return None;
                };
                match event_kind(update) {
                    Some(event::Kind::ReadMarker(marker)) => Some(marker.clone()),
                    _ => None,
                }
            })
            .await;
        assert_eq!((marker.user_id.as_str(), marker.seq), ("alice", 2));
    }
}

/// An agent resolves a conversation through the API: the change is an
/// activity message every member's devices get, live and after a
/// reconnect; a retry is recognised, a change that changes nothing stores
/// nothing, customers may not change it, and a customer's next message
/// opens it again.
pub async fn lifecycle_changes(mode: Mode, transport: Transport) {
    let cluster = Cluster::start(mode).await;
    let conv = conversation(&cluster, &[("alice", Role::Customer), ("bob", Role::Agent)]).await;
    let mut web = device(&cluster, transport, "alice", Role::Customer, "web").await;
    let mut console = device(&cluster, transport, "bob", Role::Agent, "console").await;
    web.send_text(&conv, "m1", "where is my refund?")
        .await
        .expect("ack");

    let agent = cluster.token("bob", Role::Agent);
    let mut api = cluster.conversations().await;
    let resolve = |id: &str| UpdateLifecycleRequest {
        conversation_id: conv.clone(),
        client_change_id: id.into(),
        change: Some(LifecycleChange {
            status: ConversationStatus::Resolved.into(),
            add_tags: vec!["refund".into()],
            assignee_id: Some("bob".into()),
            team_id: Some("billing".into()),
            ..LifecycleChange::default()
        }),
    };
    let first = api
        .update_lifecycle(authed(&agent, resolve("c1")))
        .await
        .expect("resolve")
        .into_inner();
    let resolved = first.lifecycle.clone().expect("the lifecycle");
    assert_eq!(
        (
            resolved.status(),
            resolved.tags.as_slice(),
            resolved.assignee_id.as_str()
        ),
        (
            ConversationStatus::Resolved,
            ["refund".to_owned()].as_slice(),
            "bob"
        )
    );
    let activity = first.activity.clone().expect("an activity message");
    assert_eq!((activity.seq, activity.sender_id.as_str()), (2, "bob"));
    let again = api
        .update_lifecycle(authed(&agent, resolve("c1")))
        .await
        .expect("retry")
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(again.activity, first.activity);
    let same = api
        .update_lifecycle(authed(&agent, resolve("c2")))
        .await
        .expect("the same change")
        .into_inner();
    assert_eq!(
        (same.activity, same.lifecycle),
        (None, Some(resolved.clone()))
    );
    let denied = api
        .update_lifecycle(authed(
            &cluster.token("alice", Role::Customer),
            resolve("c3"),
        ))
        .await
        .expect_err("customers may not");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    // Both members' devices get the activity, in order after the message.
    for receiver in [&mut web, &mut console] {
        let got = receiver.messages(&conv, 2).await;
        assert_eq!(got[1].content, activity.content);
    }
    // A customer may not send an activity as content.
    let forged = web
        .send_content(
            &conv,
            "forged",
            MessageContent {
                kind: Some(message_content::Kind::Activity(Lifecycle::default())),
            },
        )
        .await
        .expect_err("refused");
    assert_eq!(forged.code, INVALID_ARGUMENT);

    // The customer writes again: the conversation opens, in the same write.
    web.send_text(&conv, "m2", "it has not arrived")
        .await
        .expect("ack");
    let reopened = console.messages(&conv, 2).await;
    assert_eq!(text_of(&reopened[0]), "it has not arrived");
    let Some(message_content::Kind::Activity(after)) =
        reopened[1].content.as_ref().and_then(|c| c.kind.clone())
    else {
        panic!("expected the reopening activity, got {:?}", reopened[1]);
    };
    assert_eq!(
        (
            after.status(),
            reopened[1].sender_id.as_str(),
            reopened[1].seq
        ),
        (ConversationStatus::Open, "alice", 4)
    );
    assert_eq!(after.tags, resolved.tags, "reopening keeps the rest");
    let stored = api
        .get_conversation(authed(
            &agent,
            GetConversationRequest {
                conversation_id: conv.clone(),
            },
        ))
        .await
        .expect("get")
        .into_inner()
        .conversation
        .expect("the conversation");
    assert_eq!(stored.lifecycle, Some(after));

    // A device that was away catches up on the same events.
    let mut phone = device(&cluster, transport, "alice", Role::Customer, "phone").await;
    let caught_up = phone.messages(&conv, 4).await;
    assert_eq!(caught_up[1].content, activity.content);
    assert_eq!(caught_up[3].seq, 4);

    // The agent's console changes it over its session, as a device; the
    // customer's device may not.
    let pending = |id: &str| {
        ClientKind::UpdateLifecycle(UpdateLifecycleRequest {
            conversation_id: conv.clone(),
            client_change_id: id.into(),
            change: Some(LifecycleChange {
                status: ConversationStatus::Pending.into(),
                ..LifecycleChange::default()
            }),
        })
    };
    console.send(pending("w1")).await;
    let updated = console
        .expect(|frame| match &frame.frame {
            Some(ServerKind::LifecycleUpdated(updated)) => Some(updated.clone()),
            _ => None,
        })
        .await;
    let result = updated.result.expect("the result");
    assert_eq!(updated.client_change_id, "w1");
    assert_eq!(
        (
            result.lifecycle.expect("lifecycle").status(),
            result.activity.map(|a| a.seq)
        ),
        (ConversationStatus::Pending, Some(5))
    );
    phone.send(pending("w2")).await;
    let refused = phone.error().await;
    assert_eq!(
        (refused.code, refused.client_message_id.as_str()),
        (PERMISSION_DENIED, "w2")
    );
}

/// The handover protocol: a customer asking for a person asks the bot for
/// control; the bot passes it to the inbox and may not send until an
/// agent passes it back, nor take it back itself.
pub async fn handover(mode: Mode) {
    let cluster = Cluster::start(mode).await;
    let conv = conversation(
        &cluster,
        &[
            ("alice", Role::Customer),
            ("shopbot", Role::Bot),
            ("bob", Role::Agent),
        ],
    )
    .await;
    let mut web = device(&cluster, Transport::WsJson, "alice", Role::Customer, "web").await;
    let mut console = device(&cluster, Transport::WsJson, "bob", Role::Agent, "console").await;
    let (bot, agent) = (
        cluster.token("shopbot", Role::Bot),
        cluster.token("bob", Role::Agent),
    );
    let mut api = cluster.conversations().await;
    let text = |id: &str, body: &str| SendMessageRequest {
        conversation_id: conv.clone(),
        client_message_id: id.into(),
        content: Some(MessageContent {
            kind: Some(message_content::Kind::Text(body.into())),
        }),
    };
    let owner = |id: &str, owner: ThreadOwner| UpdateLifecycleRequest {
        conversation_id: conv.clone(),
        client_change_id: id.into(),
        change: Some(LifecycleChange {
            owner: owner.into(),
            ..LifecycleChange::default()
        }),
    };
    api.send_message(authed(&bot, text("b1", "Hi! I am the shop's bot.")))
        .await
        .expect("the bot answers");

    web.send_text(&conv, "c1", "Can I talk to a human?")
        .await
        .expect("ack");
    let asked = console.messages(&conv, 3).await;
    let Some(message_content::Kind::Activity(request)) =
        asked[2].content.as_ref().and_then(|c| c.kind.clone())
    else {
        panic!("expected a request for control, got {:?}", asked[2]);
    };
    assert!(request.control_requested);
    assert_eq!(request.owner(), ThreadOwner::Bot);

    let passed = api
        .update_lifecycle(authed(&bot, owner("p1", ThreadOwner::Inbox)))
        .await
        .expect("the bot passes control")
        .into_inner()
        .lifecycle
        .expect("the lifecycle");
    assert_eq!(
        (passed.owner(), passed.control_requested),
        (ThreadOwner::Inbox, false)
    );
    let silenced = api
        .send_message(authed(&bot, text("b2", "Still here!")))
        .await
        .expect_err("the bot is silent while people have control");
    assert_eq!(
        (silenced.code(), status::reason_of(&silenced).as_str()),
        (tonic::Code::FailedPrecondition, "INBOX_HAS_CONTROL")
    );
    let grab = api
        .update_lifecycle(authed(&bot, owner("t1", ThreadOwner::Bot)))
        .await
        .expect_err("a bot may not take control back");
    assert_eq!(grab.code(), tonic::Code::PermissionDenied);

    api.send_message(authed(&agent, text("a1", "Bob here, how can I help?")))
        .await
        .expect("people answer");
    api.update_lifecycle(authed(&agent, owner("p2", ThreadOwner::Bot)))
        .await
        .expect("the agent passes control back");
    api.send_message(authed(&bot, text("b3", "Anything else?")))
        .await
        .expect("the bot answers again");

    // The customer saw it all in order: the request, the hand-over and the
    // hand-back as activities between the messages, and nothing the bot
    // was refused.
    let seen: Vec<String> = web
        .messages(&conv, 7)
        .await
        .iter()
        .map(|m| match m.content.as_ref().and_then(|c| c.kind.clone()) {
            Some(message_content::Kind::Text(text)) => text,
            Some(message_content::Kind::Activity(l)) => format!("{:?}", l.owner()),
            other => panic!("unexpected content {other:?}"),
        })
        .collect();
    assert_eq!(
        seen,
        [
            "Hi! I am the shop's bot.",
            "Can I talk to a human?",
            "Bot",
            "Inbox",
            "Bob here, how can I help?",
            "Bot",
            "Anything else?",
        ]
    );
}

/// Nobody reads or sends outside their conversations or their tenant; bad
/// input gets a precise error and the gateway keeps serving.
pub async fn access_and_bad_input(mode: Mode, transport: Transport) {
    let cluster = Cluster::start(mode).await;
    let conv = conversation(&cluster, &[("alice", Role::Customer), ("bob", Role::Agent)]).await;
    let mut alice = device(&cluster, transport, "alice", Role::Customer, "web").await;
    let mut eve = device(&cluster, transport, "eve", Role::Customer, "web").await;

    let denied = eve
        .send_text(&conv, "e1", "let me in")
        .await
        .expect_err("denied");
    assert_eq!(
        (denied.code, denied.reason.as_str()),
        (PERMISSION_DENIED, "NOT_A_MEMBER")
    );
    let listing = cluster
        .conversations()
        .await
        .list_messages(authed(
            &cluster.token("eve", Role::Customer),
            ListMessagesRequest {
                conversation_id: conv.clone(),
                start: Some(list_messages_request::Start::AfterSeq(0)),
                ..Default::default()
            },
        ))
        .await
        .expect_err("eve may not read");
    assert_eq!(listing.code(), tonic::Code::PermissionDenied);

    // Another tenant's user with a valid token does not even see it.
    let other = natter_core::TenantId::new(natter_testkit::unique_name("other")).expect("tenant");
    let mut mallory = Device::connect(
        &cluster,
        transport,
        &cluster.token_in(&other, "alice", Role::Customer),
        "web",
        0,
    )
    .await
    .expect("a valid token of another tenant connects");
    let foreign = mallory
        .send_text(&conv, "m1", "hello?")
        .await
        .expect_err("denied");
    assert_eq!(foreign.code, NOT_FOUND);

    // Each kind of bad input, on one session that stays open.
    let empty = alice
        .send_text(&conv, "b1", "   ")
        .await
        .expect_err("empty");
    assert_eq!(
        (empty.code, empty.field.as_str()),
        (INVALID_ARGUMENT, "content.text")
    );
    let oversized = alice
        .send_text(&conv, "b2", &"x".repeat(64 * 1024 + 1))
        .await
        .expect_err("oversized");
    assert_eq!(oversized.code, INVALID_ARGUMENT);
    let unknown = alice
        .send_text(&conv_unknown(), "b3", "anyone?")
        .await
        .expect_err("unknown conversation");
    assert_eq!(unknown.code, NOT_FOUND);
    let malformed = alice
        .send_text("not-a-uuid", "b4", "hi")
        .await
        .expect_err("bad id");
    assert_eq!(
        (malformed.code, malformed.field.as_str()),
        (INVALID_ARGUMENT, "conversation_id")
    );
    alice
        .send_raw(Outbound::Frame(ClientFrame { frame: None }))
        .await;
    assert_eq!(alice.error().await.code, INVALID_ARGUMENT);
    if transport == Transport::WsJson {
        alice
            .send_raw(Outbound::Raw(
                tokio_tungstenite::tungstenite::Message::Text("{\"send\": 42".into()),
            ))
            .await;
        assert_eq!(alice.error().await.code, INVALID_ARGUMENT);
        alice
            .send_raw(Outbound::Raw(
                tokio_tungstenite::tungstenite::Message::Text("{\"teleport\": {}}".into()),
            ))
            .await;
        assert_eq!(alice.error().await.code, INVALID_ARGUMENT);
    }
    let ok = alice
        .send_text(&conv, "b5", "still here")
        .await
        .expect("served");
    assert_eq!(ok.seq, 1, "nothing was half-written by the rejected sends");

    // Bad tokens end the session before anything else.
    let garbage = Device::connect(&cluster, transport, "garbage", "web", 0)
        .await
        .expect_err("garbage token");
    assert_unauthenticated(transport, &garbage);
    let expired = natter_auth::Signer::hs256(b"end-to-end-test-secret-of-at-least-32-bytes")
        .token_expiring_at(
            &natter_auth::Identity {
                tenant: cluster.tenant().clone(),
                user: natter_core::UserId::new("alice").expect("user"),
                role: Role::Customer,
            },
            1_000,
        )
        .expect("token");
    let expired = Device::connect(&cluster, transport, &expired, "web", 0)
        .await
        .expect_err("expired token");
    assert_unauthenticated(transport, &expired);

    // And the gateway still serves everyone else.
    let mut bob = device(&cluster, transport, "bob", Role::Agent, "console").await;
    assert_eq!(bob.messages(&conv, 1).await[0].seq, 1);
}

/// Who may create a conversation with whom, over gRPC, for every caller
/// role and every role it tries to give another member; and a proposed id
/// that another tenant holds is free in this one, so its answer tells
/// nothing of the other tenant.
pub async fn who_may_create_conversations(mode: Mode) {
    let cluster = Cluster::start(mode).await;
    let mut client = cluster.conversations().await;
    let create = |members: &[(&str, Role)], id: &str| CreateConversationRequest {
        conversation_id: id.to_owned(),
        subject: "Who may".into(),
        members: new_members(members),
    };
    let refusal = |status: tonic::Status| {
        let frame = natter_proto::status::error_frame(&status, None);
        (frame.code, frame.reason)
    };
    let denied = (PERMISSION_DENIED, "ROLE_NOT_ALLOWED".to_owned());

    // The two requests of the report: a customer pulling a victim in as an
    // agent, and a conversation between two customers.
    let mallory = cluster.token("mallory", Role::Customer);
    for members in [
        [("mallory", Role::Customer), ("victim", Role::Agent)],
        [("mallory", Role::Customer), ("victim", Role::Customer)],
    ] {
        let status = client
            .create_conversation(authed(&mallory, create(&members, "")))
            .await
            .expect_err("refused");
        assert_eq!(refusal(status), denied, "{members:?}");
    }

    let roles = [Role::Customer, Role::Bot, Role::Agent, Role::Service];
    let rank = |role: Role| roles.iter().position(|r| *r == role);
    for caller in roles {
        let token = cluster.token("caller", caller);
        client
            .create_conversation(authed(&token, create(&[], "")))
            .await
            .unwrap_or_else(|e| panic!("a {caller:?} alone: {e:?}"));
        for granted in roles {
            let allowed = match caller {
                Role::Service => true,
                Role::Customer => false,
                Role::Agent | Role::Bot => rank(granted) <= rank(caller),
            };
            let answer = client
                .create_conversation(authed(&token, create(&[("other", granted)], "")))
                .await;
            match answer {
                Ok(_) => assert!(allowed, "a {caller:?} made a {granted:?}"),
                Err(status) => {
                    assert!(!allowed, "a {caller:?} adding a {granted:?}: {status:?}");
                    assert_eq!(refusal(status), denied);
                }
            }
        }
    }

    // A proposed id held by another tenant: created here as if fresh.
    let id = conv_unknown();
    let other = natter_core::TenantId::new(natter_testkit::unique_name("other")).expect("tenant");
    let theirs = cluster.token_in(&other, "crm", Role::Service);
    let ours = cluster.token("crm", Role::Service);
    for token in [&theirs, &ours] {
        let created = client
            .create_conversation(authed(token, create(&[("alice", Role::Customer)], &id)))
            .await
            .expect("the id is free in each tenant")
            .into_inner()
            .conversation
            .expect("the conversation");
        assert_eq!(created.conversation_id, id);
    }
    let got = client
        .get_conversation(authed(
            &ours,
            GetConversationRequest {
                conversation_id: id.clone(),
            },
        ))
        .await
        .expect("ours")
        .into_inner()
        .conversation
        .expect("the conversation");
    assert_eq!(&got.tenant_id, cluster.tenant().as_str());
    let taken = client
        .create_conversation(authed(&ours, create(&[("bob", Role::Customer)], &id)))
        .await
        .expect_err("taken in our own tenant");
    assert_eq!(taken.code(), tonic::Code::AlreadyExists);
}

fn conv_unknown() -> String {
    natter_core::ConversationId::generate().to_string()
}

fn assert_unauthenticated(transport: Transport, closed: &crate::device::Closed) {
    match transport {
        Transport::Grpc => assert_eq!(closed.code, UNAUTHENTICATED, "{closed:?}"),
        // 1008: policy violation, the close code for a refused credential.
        Transport::WsJson | Transport::WsProto => assert_eq!(closed.code, 1008, "{closed:?}"),
    }
    assert!(!closed.reason.is_empty(), "the close says why");
}

/// Kills each process in turn with SIGKILL while messages flow and starts
/// it again: no acknowledged message is lost or stored twice, and every
/// device converges on the same history.
pub async fn survives_kill_9(mode: Mode) {
    let mut cluster = Cluster::start(mode).await;
    let conv = conversation(&cluster, &[("alice", Role::Customer), ("bob", Role::Agent)]).await;
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let victims = cluster.services();

    for (round, victim) in victims.into_iter().enumerate() {
        let sender = tokio::spawn(send_until_stopped(
            cluster.token("bob", Role::Agent),
            cluster.addrs.storage,
            conv.clone(),
            format!("round{round}"),
            acked.clone(),
            Duration::from_secs(3),
        ));
        tokio::time::sleep(Duration::from_millis(800)).await;
        cluster.kill(victim);
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.restart(victim).await;
        sender.await.expect("sender task");
    }

    let acked = acked.lock().await.clone();
    assert_converged(&cluster, &conv, &acked).await;
}

/// A second storage process takes the partitions over while sends are in
/// flight: first from a holder that stops (it gives its leases up), then
/// from one killed with SIGKILL (its leases must lapse first). Sends go
/// through the other process's gRPC API, so they reach whichever process
/// holds the partition; no acknowledged message is lost, stored twice or
/// renumbered.
pub async fn sequencer_takeover(mode: Mode) {
    assert_eq!(
        mode,
        Mode::Separate,
        "one process cannot hand over to another"
    );
    let mut cluster = Cluster::start(mode).await;
    let conv = conversation(&cluster, &[("alice", Role::Customer), ("bob", Role::Agent)]).await;
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    cluster.start_service(Service::StandbyStorage).await;

    let token = cluster.token("bob", Role::Agent);
    let (standby, first) = (cluster.addrs.standby_storage, cluster.addrs.storage);
    let sending = |through, round: &str| {
        tokio::spawn(send_until_stopped(
            token.clone(),
            through,
            conv.clone(),
            round.to_owned(),
            acked.clone(),
            Duration::from_secs(4),
        ))
    };

    // The first storage process holds every partition; it stops.
    let sender = sending(standby, "graceful");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let stopped = cluster.terminate(Service::Storage, Duration::from_secs(10));
    assert!(
        stopped.is_some_and(|s| s.success()),
        "storage stopped cleanly"
    );
    sender.await.expect("sender task");
    cluster.start_service(Service::Storage).await;

    // Now the standby holds them all; it dies without a word.
    let sender = sending(first, "killed");
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.kill(Service::StandbyStorage);
    sender.await.expect("sender task");

    let acked = acked.lock().await.clone();
    for round in ["graceful", "killed"] {
        assert!(
            acked.keys().filter(|k| k.starts_with(round)).count() >= 3,
            "sends went through in the {round} round: {acked:?}"
        );
    }
    assert_converged(&cluster, &conv, &acked).await;
}

/// Kills the gateway holding 1,000 device sessions while messages flow
/// and starts it again: every device reconnects with its cursor and gets
/// what it missed and what follows, each update once, in order, without a
/// gap (`Device::updates` checks every cursor).
pub async fn gateway_crash_with_many_sessions(mode: Mode) {
    // Rooms over 100 members, so each member's log holds only their own
    // join besides the messages.
    const ROOMS: usize = 8;
    const MEMBERS: usize = 125;
    let mut cluster = Cluster::start(mode).await;
    let mut rooms = Vec::with_capacity(ROOMS);
    for room in 0..ROOMS {
        let users: Vec<String> = (0..MEMBERS).map(|i| format!("r{room}u{i}")).collect();
        let members: Vec<(&str, Role)> =
            users.iter().map(|u| (u.as_str(), Role::Customer)).collect();
        rooms.push((conversation(&cluster, &members).await, users));
    }
    let connect_all = async |cluster: &Cluster, cursors: &[(String, String, u64)]| {
        let mut devices = Vec::with_capacity(cursors.len());
        for chunk in cursors.chunks(100) {
            let connecting = chunk.iter().map(|(user, _, cursor)| {
                device_at(
                    cluster,
                    Transport::WsProto,
                    user,
                    Role::Customer,
                    "phone",
                    *cursor,
                )
            });
            devices.extend(futures::future::join_all(connecting).await);
        }
        devices
    };
    let mut sessions: Vec<(String, String, u64)> = rooms
        .iter()
        .flat_map(|(conv, users)| users.iter().map(|u| (u.clone(), conv.clone(), 0)))
        .collect();
    let mut devices = connect_all(&cluster, &sessions).await;
    assert_eq!(devices.len(), ROOMS * MEMBERS);
    for device in &mut devices {
        device.updates(1).await; // their join
    }
    let send_round = async |cluster: &Cluster, round: u32| {
        for (conv, _) in &rooms {
            let request = SendMessageRequest {
                conversation_id: conv.clone(),
                client_message_id: format!("round-{round}"),
                content: Some(MessageContent {
                    kind: Some(message_content::Kind::Text(format!("round {round}"))),
                }),
            };
            let sent = cluster
                .conversations()
                .await
                .send_message(authed(&cluster.token("crm", Role::Service), request))
                .await;
            sent.unwrap_or_else(|e| panic!("round {round} to {conv}: {e:?}"));
        }
    };
    let expect =
        async |devices: &mut Vec<Device>, sessions: &[(String, String, u64)], rounds: &[u32]| {
            for (device, (_, conv, _)) in devices.iter_mut().zip(sessions) {
                let got = device.messages(conv, rounds.len()).await;
                let texts: Vec<&str> = got.iter().map(text_of).collect();
                let wanted: Vec<String> = rounds.iter().map(|r| format!("round {r}")).collect();
                assert_eq!(texts, wanted);
            }
        };
    send_round(&cluster, 1).await;
    expect(&mut devices, &sessions, &[1]).await;

    for (session, device) in sessions.iter_mut().zip(&devices) {
        session.2 = device.cursor;
    }
    drop(devices);
    let victim = match mode {
        Mode::Separate => Service::Gateway,
        Mode::Single => Service::All,
    };
    cluster.kill(victim);
    if mode == Mode::Separate {
        // Messages go on while no gateway runs.
        send_round(&cluster, 2).await;
    }
    cluster.restart(victim).await;
    if mode == Mode::Single {
        send_round(&cluster, 2).await;
    }
    let mut devices = connect_all(&cluster, &sessions).await;
    send_round(&cluster, 3).await;
    expect(&mut devices, &sessions, &[2, 3]).await;
}

/// Storage holds every acknowledged message exactly once, gap-free, at
/// the seq it was acknowledged with, and every member's fresh device
/// converges on that history.
async fn assert_converged(cluster: &Cluster, conv: &str, acked: &BTreeMap<String, u64>) {
    assert!(
        acked.len() >= 8,
        "traffic flowed: {} acknowledged",
        acked.len()
    );

    // Storage holds every acknowledged message exactly once, gap-free.
    let history = list_all(cluster, conv).await;
    let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=history.len() as u64).collect::<Vec<_>>(),
        "gap-free"
    );
    let by_key: BTreeMap<&str, u64> = history
        .iter()
        .map(|m| (m.client_message_id.as_str(), m.seq))
        .collect();
    assert_eq!(by_key.len(), history.len(), "no message stored twice");
    for (key, seq) in acked {
        assert_eq!(
            by_key.get(key.as_str()),
            Some(seq),
            "acknowledged {key} kept its seq"
        );
    }

    // Every member's fresh device converges on that history.
    for (user, role) in [("alice", Role::Customer), ("bob", Role::Agent)] {
        let mut fresh = Device::connect(
            cluster,
            Transport::Grpc,
            &cluster.token(user, role),
            "fresh",
            0,
        )
        .await
        .expect("connect");
        let got = fresh.messages(conv, history.len()).await;
        let ids: BTreeSet<&str> = got.iter().map(|m| m.message_id.as_str()).collect();
        assert_eq!(ids.len(), history.len(), "{user} sees each message once");
        assert_eq!(
            got.iter().map(|m| m.seq).collect::<Vec<_>>(),
            seqs,
            "{user} in order"
        );
    }
}

/// Sends for `duration` like a well-behaved client: every send is retried
/// with its client message id until acknowledged, reconnecting as needed.
async fn send_until_stopped(
    token: String,
    storage: std::net::SocketAddr,
    conv: String,
    round: String,
    acked: Arc<Mutex<BTreeMap<String, u64>>>,
    duration: Duration,
) {
    let stop = Instant::now() + duration;
    let mut i = 0;
    while Instant::now() < stop {
        let key = format!("{round}-{i}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "{key} never acknowledged");
            match try_send(&token, storage, &conv, &key).await {
                Some(seq) => {
                    acked.lock().await.insert(key.clone(), seq);
                    break;
                }
                None => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        i += 1;
    }
}

async fn try_send(
    token: &str,
    storage: std::net::SocketAddr,
    conv: &str,
    key: &str,
) -> Option<u64> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{storage}"))
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(15))
        .connect()
        .await
        .ok()?;
    let mut api =
        natter_proto::v1::conversation_service_client::ConversationServiceClient::new(channel);
    let response = api
        .send_message(authed(
            token,
            SendMessageRequest {
                conversation_id: conv.into(),
                client_message_id: key.into(),
                content: Some(MessageContent {
                    kind: Some(message_content::Kind::Text(key.into())),
                }),
            },
        ))
        .await
        .ok()?;
    response.into_inner().message.map(|m| m.seq)
}

async fn list_all(cluster: &Cluster, conv: &str) -> Vec<natter_proto::v1::Message> {
    let token = cluster.token("crm", Role::Service);
    let mut api = cluster.conversations().await;
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = api
            .list_messages(authed(
                &token,
                ListMessagesRequest {
                    conversation_id: conv.into(),
                    page_size: 500,
                    page_token: page_token.clone(),
                    start: page_token
                        .is_empty()
                        .then_some(list_messages_request::Start::AfterSeq(0)),
                },
            ))
            .await
            .expect("list messages")
            .into_inner();
        all.extend(page.messages);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

/// SIGTERM: the gateway tells connected devices it is going away and every
/// process exits cleanly within its grace period (2 s in these settings),
/// also while a backend is sending, so consumers are mid-delivery.
pub async fn graceful_shutdown(mode: Mode) {
    const SENDERS: usize = 8;
    let mut cluster = Cluster::start(mode).await;
    let mut web = device(&cluster, Transport::WsJson, "alice", Role::Customer, "web").await;
    let mut phone = device(&cluster, Transport::Grpc, "alice", Role::Customer, "phone").await;
    let conv = conversation(&cluster, &[("alice", Role::Customer), ("bob", Role::Agent)]).await;
    let backend = cluster.token("crm", Role::Service);
    let (sent, mut sending) = tokio::sync::mpsc::channel::<()>(1);
    for sender in 0..SENDERS {
        let (mut api, backend, conv, sent) = (
            cluster.conversations().await,
            backend.clone(),
            conv.clone(),
            sent.clone(),
        );
        tokio::spawn(async move {
            for i in 0.. {
                let request = SendMessageRequest {
                    conversation_id: conv.clone(),
                    client_message_id: format!("busy-{sender}-{i}"),
                    content: Some(MessageContent {
                        kind: Some(message_content::Kind::Text("busy".into())),
                    }),
                };
                if api.send_message(authed(&backend, request)).await.is_err() {
                    return;
                }
                let _ = sent.try_send(());
            }
        });
    }
    drop(sent);
    for _ in 0..100 {
        sending.recv().await.expect("the backend sends");
    }
    let front = match mode {
        Mode::Separate => Service::Gateway,
        Mode::Single => Service::All,
    };
    let status = cluster
        .terminate(front, Duration::from_secs(5))
        .expect("exits within the grace period");
    assert!(status.success(), "clean exit, got {status}");
    let ws = web.closed().await;
    assert_eq!(ws.code, 1001, "going away: {ws:?}");
    let grpc = phone.closed().await;
    assert_eq!(grpc.code, UNAVAILABLE, "{grpc:?}");
    for service in cluster.services().into_iter().filter(|s| *s != front) {
        let status = cluster
            .terminate(service, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{service:?} exits within the grace period"));
        assert!(status.success(), "{service:?} exits cleanly, got {status}");
    }
}

/// A 10,000-member room: members join in requests of 1,000; devices that
/// watch it get every message once, in order, the history first for a
/// late watcher; and fan-out writes no member's log per message.
pub async fn big_room(mode: Mode) {
    const PER_REQUEST: usize = 1_000;
    const MEMBERS: usize = 10_000;
    let cluster = Cluster::start(mode).await;
    let admin = cluster.token("crm", Role::Service);
    let member = |user: String, role: Role| NewMember {
        user_id: user,
        role: role_wire(role),
    };
    let mut everyone = vec![
        member("alice".into(), Role::Customer),
        member("bob".into(), Role::Agent),
    ];
    everyone.extend((everyone.len()..MEMBERS).map(|i| member(format!("m{i:05}"), Role::Customer)));

    let started = Instant::now();
    let mut chunks = everyone.chunks(PER_REQUEST);
    let mut api = cluster.conversations().await;
    let conv = api
        .create_conversation(authed(
            &admin,
            CreateConversationRequest {
                conversation_id: String::new(),
                subject: "All hands".into(),
                members: chunks.next().expect("members").to_vec(),
            },
        ))
        .await
        .expect("create the room")
        .into_inner()
        .conversation
        .expect("the room")
        .conversation_id;
    for chunk in chunks {
        api.add_members(authed(
            &admin,
            AddMembersRequest {
                conversation_id: conv.clone(),
                members: chunk.to_vec(),
            },
        ))
        .await
        .expect("add members");
    }
    let joined = started.elapsed();
    let count = api
        .get_conversation(authed(
            &admin,
            GetConversationRequest {
                conversation_id: conv.clone(),
            },
        ))
        .await
        .expect("get the room")
        .into_inner()
        .conversation
        .expect("the room")
        .member_count;
    assert_eq!(count, MEMBERS as u64);
    // Joins reach each joiner's log (one entry per member, once): wait
    // for them, so what follows measures messages only.
    let mut written_before = fanout_updates_written(&cluster).await;
    while written_before < MEMBERS as u64 {
        assert!(
            started.elapsed() < JOINS_PATIENCE,
            "only {written_before} of {MEMBERS} joins fanned out in {JOINS_PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        written_before = fanout_updates_written(&cluster).await;
    }
    let fanned = started.elapsed();

    let mut alice = device(&cluster, Transport::WsJson, "alice", Role::Customer, "web").await;
    let mut bob = device(&cluster, Transport::Grpc, "bob", Role::Agent, "console").await;
    for watcher in [&mut alice, &mut bob] {
        watcher.watch(&conv, 0).await;
        assert_eq!(watcher.watching(&conv).await, 0);
    }
    let started = Instant::now();
    for i in 0..20 {
        let ack = alice
            .send_text(&conv, &format!("a{i}"), &format!("announcement {i}"))
            .await
            .expect("the send is acknowledged");
        assert_eq!(ack.seq, i + 1);
    }
    for watcher in [&mut bob, &mut alice] {
        let got = watcher.watched(&conv, 0, 20).await;
        assert_eq!(text_of(&got[19]), "announcement 19");
    }
    let delivered = started.elapsed();

    // A member who opens the room late gets its history, then live.
    let last = format!("m{:05}", MEMBERS - 1);
    let mut late = device(&cluster, Transport::WsProto, &last, Role::Customer, "phone").await;
    late.watch(&conv, 0).await;
    assert_eq!(late.watched(&conv, 0, 20).await.len(), 20);
    assert_eq!(late.watching(&conv).await, 20);
    bob.send_text(&conv, "b0", "welcome, everyone")
        .await
        .expect("the reply is acknowledged");
    for watcher in [&mut late, &mut alice, &mut bob] {
        assert_eq!(watcher.watched(&conv, 20, 1).await[0].sender_id, "bob");
    }
    // Messages went to the room, not into 10,000 logs each.
    let written = fanout_updates_written(&cluster).await - written_before;
    assert!(
        written < 100,
        "fan-out wrote {written} log entries for 21 messages"
    );
    eprintln!(
        "{MEMBERS}-member room ({mode:?}): members joined in {joined:?}, their joins \
         reached their logs in {fanned:?}; 20 messages sent and watched by 2 devices \
         in {delivered:?}"
    );
}

/// How long the joins of a big room may take to reach the joiners' logs:
/// each is an LWT in the joiner's log on Cassandra, and 10,000 took about
/// 160 s on a 2-core machine running everything else too.
const JOINS_PATIENCE: Duration = Duration::from_secs(480);

/// Log entries fanout has written since it started.
async fn fanout_updates_written(cluster: &Cluster) -> u64 {
    cluster
        .fanout()
        .await
        .get_stats(authed(
            &cluster.token("ops", Role::Service),
            GetStatsRequest {},
        ))
        .await
        .expect("fanout stats")
        .into_inner()
        .updates_written
}
