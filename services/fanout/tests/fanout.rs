//! Component tests of the fan-out service: its gRPC API and its bus side
//! over the in-process bus. Storage's `MembersQuery` responder is played by
//! a responder in the test (see `harness`) answering from an embedded
//! store, which can be made to fail; one test runs the real storage service
//! instead, to hold the two to the same contract. Sync's appenders are
//! played by a holder in the test that keeps each user's log as sync does
//! and can be made to refuse a request or leave it unanswered.

// A test failing loudly on the first unexpected error is the point; the
// harness's helpers are outside `#[test]` functions, where clippy's
// test exemption does not reach.
#![allow(clippy::unwrap_used)]

mod harness;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::{
    Append, Fault, Harness, Peer, TENANT, per_user, ready, ready_appends, ready_signals, take,
    written,
};
use natter_bus::{Bus, Incoming, Outgoing, Subscription};
use natter_contract::subjects;
use natter_core::{
    ClientMessageId, Content, ConversationId, Event, Limits, MembershipChange, MembershipKind,
    Message, MessageId, Role, Seq, Timestamp, UserId,
};
use natter_proto::bus::v1::{Actor, EphemeralSignal, ephemeral_signal};
use natter_proto::convert::timestamp_to_wire;
use natter_proto::v1::{self, PublishEphemeralRequest, TypingSignal, publish_ephemeral_request};
use natter_store::ConversationStore;
use prost::Message as _;
use tonic::Code;
use tonic_types::StatusExt;

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

fn now() -> Timestamp {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    Timestamp::from_millis(i64::try_from(millis).unwrap())
}

fn message(conversation: ConversationId, seq: u64, sender: &str) -> Event {
    Event::Message(Message {
        id: MessageId::generate(),
        conversation_id: conversation,
        seq: Seq::new(seq),
        sender_id: user(sender),
        client_message_id: ClientMessageId::new(format!("c-{seq}")).unwrap(),
        sent_at: now(),
        content: Content::Text(format!("message {seq}")),
    })
}

/// The users `appends` wrote user events for, sorted.
fn users_of(appends: &[Append]) -> Vec<String> {
    let mut users: Vec<String> = written(appends).map(|e| e.user_id.clone()).collect();
    users.sort();
    users
}

/// The seq of the message a user event carries.
fn seq_of(user_event: &natter_proto::bus::v1::UserEvent) -> u64 {
    match Event::try_from(user_event.event.clone().unwrap()).unwrap() {
        Event::Message(message) => message.seq.get(),
        other => panic!("expected a message, got {other:?}"),
    }
}

fn typing(conversation: ConversationId, from: &str, at: Timestamp) -> Outgoing {
    let signal = EphemeralSignal {
        actor: Some(Actor {
            tenant_id: TENANT.into(),
            user_id: from.into(),
            role: v1::Role::Customer as i32,
        }),
        conversation_id: conversation.to_string(),
        at: Some(timestamp_to_wire(at)),
        signal: Some(ephemeral_signal::Signal::Typing(true)),
    };
    Outgoing::new(signal.encode_to_vec())
}

fn typing_frame(frame: &[u8]) -> TypingSignal {
    match v1::ServerFrame::decode(frame).unwrap().frame {
        Some(v1::server_frame::Frame::Typing(typing)) => typing,
        other => panic!("expected a typing frame, got {other:?}"),
    }
}

fn reason_of(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

#[tokio::test]
async fn a_message_reaches_each_members_partition_once() {
    let h = Harness::start().await;
    let members = ["alice", "bob", "carol"];
    let conversation = h.conversation(&members).await;
    let mut appends = h.appends();
    let event = message(conversation, 1, "alice");
    h.publish_event(&event, Some(&event.key())).await;

    let got = take(&mut appends, 3).await;
    assert_eq!(users_of(&got), members);
    for append in &got {
        for user_event in &append.asked {
            assert_eq!(user_event.tenant_id, TENANT);
            assert_eq!(
                Event::try_from(user_event.event.clone().unwrap()).unwrap(),
                event
            );
            assert_eq!(
                append.partition,
                h.partition(&user_event.user_id),
                "{} asked of another partition's holder",
                user_event.user_id
            );
        }
    }
    let partitions: HashSet<u32> = members.iter().map(|m| h.partition(m)).collect();
    assert_eq!(got.len(), partitions.len(), "one request per partition");
    let stats = h.stats_until(|s| s.updates_written >= 3).await;
    assert_eq!((stats.events_received, stats.updates_written), (1, 3));
    assert!(ready_appends(&mut appends).is_empty());
    h.stop().await;
}

#[tokio::test]
async fn an_event_handled_twice_is_asked_for_again_and_counted_once() {
    let h = Harness::start().await;
    let conversation = h.conversation(&["alice", "bob", "carol"]).await;
    let mut appends = h.appends();
    let event = message(conversation, 1, "alice");
    // No dedup id on EVENTS: fanout gets the event twice, as after a
    // redelivery.
    h.publish_event(&event, None).await;
    h.publish_event(&event, None).await;
    // Handled only once the repeat is settled: the conversation's EVENTS
    // partition is handled one message at a time.
    let later = message(conversation, 2, "bob");
    h.publish_event(&later, Some(&later.key())).await;

    let got = take(&mut appends, 6).await;
    let mut asked: Vec<&str> = got
        .iter()
        .flat_map(|append| &append.asked)
        .filter(|e| seq_of(e) == 1)
        .map(|e| e.user_id.as_str())
        .collect();
    asked.sort_unstable();
    assert_eq!(
        asked,
        ["alice", "alice", "bob", "bob", "carol", "carol"],
        "fanout cannot know the first attempt landed, so it asks again"
    );
    let stats = h.stats_until(|s| s.updates_written >= 6).await;
    assert_eq!(stats.events_received, 3);
    assert_eq!(
        stats.updates_written, 6,
        "only what the holder wrote counts, not what it was asked"
    );
    assert!(ready_appends(&mut appends).is_empty());
    h.stop().await;
}

/// Publishes a write of two messages to five members, one EVENTS
/// delivery, while the holder of `m0`'s partition meets its first request
/// with `fault`, and checks that fanout asks again until every member's
/// log holds each message once, in order, and counts what the holder
/// reported written. Returns every append request, the fenced-off later
/// message's included, and the partition of the fault.
async fn a_write_through_a_faulty_holder(fault: Fault) -> (Harness, Vec<Append>, u32) {
    let h = Harness::start().await;
    let members: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
    let names: Vec<&str> = members.iter().map(String::as_str).collect();
    let conversation = h.conversation(&names).await;
    let faulty = h.partition("m0");
    assert!(
        members.iter().any(|m| h.partition(m) != faulty),
        "the members span partitions"
    );
    h.fail_next_append(faulty, fault);
    let mut appends = h.appends();
    let write = [
        message(conversation, 1, "m0"),
        message(conversation, 2, "m1"),
    ];
    h.publish_events(&write, Some(&write[0].key())).await;
    // Handled only once the write is settled: the conversation's EVENTS
    // partition is handled one message at a time.
    let later = message(conversation, 3, "m2");
    h.publish_event(&later, Some(&later.key())).await;

    let got = take(&mut appends, 3 * members.len()).await;
    for member in &members {
        let seqs: Vec<u64> = written(&got)
            .filter(|e| e.user_id == *member)
            .map(seq_of)
            .collect();
        assert_eq!(seqs, [1, 2, 3], "{member}'s log");
    }
    // One request per partition and attempt, in the order members reach
    // them: every member of the partition for the first message, then
    // every one for the second.
    let partition_members = |p: u32| -> HashSet<&str> {
        names
            .iter()
            .copied()
            .filter(|m| h.partition(m) == p)
            .collect()
    };
    let mut asked_for_the_write = HashMap::<u32, usize>::new();
    for append in got.iter().filter(|a| a.asked.iter().any(|e| seq_of(e) < 3)) {
        *asked_for_the_write.entry(append.partition).or_default() += 1;
        let seqs: Vec<u64> = append.asked.iter().map(seq_of).collect();
        assert!(
            seqs.is_sorted(),
            "in order on {}: {seqs:?}",
            append.partition
        );
        for seq in [1, 2] {
            let users: HashSet<&str> = append
                .asked
                .iter()
                .filter(|e| seq_of(e) == seq)
                .map(|e| e.user_id.as_str())
                .collect();
            assert_eq!(users, partition_members(append.partition), "message {seq}");
        }
    }
    assert_eq!(
        asked_for_the_write[&faulty], 2,
        "the faulty partition asked again"
    );
    let reported: usize = got
        .iter()
        .filter(|a| a.fault != Some(Fault::Silent))
        .map(|a| a.written.len())
        .sum();
    let stats = h
        .stats_until(|s| s.updates_written >= reported as u64)
        .await;
    assert_eq!(
        stats.updates_written as usize, reported,
        "fanout counts what the holder reports written"
    );
    assert_eq!(
        stats.events_received, 5,
        "the write twice, then the later one"
    );
    assert!(ready_appends(&mut appends).is_empty());
    (h, got, faulty)
}

#[tokio::test]
async fn a_refused_append_is_asked_again_until_every_member_has_the_write() {
    let (h, got, faulty) = a_write_through_a_faulty_holder(Fault::Refuse).await;
    let refused = got
        .iter()
        .find(|a| a.fault.is_some())
        .expect("the fault was met");
    assert_eq!(refused.partition, faulty);
    assert!(refused.written.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn an_unanswered_append_is_asked_again_and_what_landed_stays_once() {
    let (h, got, faulty) = a_write_through_a_faulty_holder(Fault::Silent).await;
    let unanswered = got
        .iter()
        .position(|a| a.fault.is_some())
        .expect("the fault was met");
    assert_eq!(got[unanswered].partition, faulty);
    assert!(!got[unanswered].written.is_empty(), "it landed");
    let again = got[unanswered + 1..]
        .iter()
        .find(|a| a.partition == faulty)
        .unwrap();
    assert!(again.written.is_empty(), "nothing twice: {again:?}");
    h.stop().await;
}

#[tokio::test]
async fn storage_down_delays_delivery_but_loses_nothing() {
    let h = Harness::start().await;
    let conversation = h.conversation(&["alice", "bob"]).await;
    h.failing_queries.store(2, Ordering::SeqCst);
    let mut appends = h.appends();
    let event = message(conversation, 1, "alice");
    h.publish_event(&event, Some(&event.key())).await;

    let got = take(&mut appends, 2).await;
    assert_eq!(users_of(&got), ["alice", "bob"]);
    assert_eq!(h.failing_queries.load(Ordering::SeqCst), 0);
    let stats = h.stats_until(|s| s.events_pending == 0).await;
    assert_eq!(stats.events_received, 3, "two retries, then delivery");
    h.stop().await;
}

#[tokio::test]
async fn membership_changes_reach_the_affected_user_and_move_the_member_list() {
    let h = Harness::start().await;
    let tenant = h.tenant();
    let conversation = h.conversation(&["alice", "bob", "carol"]).await;
    let mut appends = h.appends();

    // Loads the member list into the cache.
    let first = message(conversation, 1, "alice");
    h.publish_event(&first, Some(&first.key())).await;
    assert_eq!(
        users_of(&take(&mut appends, 3).await),
        ["alice", "bob", "carol"]
    );

    let left = h
        .store
        .remove_members(&tenant, conversation, &[user("carol")], now())
        .await
        .unwrap();
    let joined = h
        .store
        .add_members(&tenant, conversation, &[(user("dave"), Role::Agent)], now())
        .await
        .unwrap();
    let (left, joined) = (
        Event::Membership(left[0].clone()),
        Event::Membership(joined[0].clone()),
    );
    h.publish_event(&left, Some(&left.key())).await;
    let got = take(&mut appends, 3).await;
    assert_eq!(users_of(&got), ["alice", "bob", "carol"], "the leaver too");
    h.publish_event(&joined, Some(&joined.key())).await;
    assert_eq!(
        users_of(&take(&mut appends, 3).await),
        ["alice", "bob", "dave"]
    );

    // The cached list moved with the events (the cache has not expired).
    let second = message(conversation, 2, "bob");
    h.publish_event(&second, Some(&second.key())).await;
    assert_eq!(
        users_of(&take(&mut appends, 3).await),
        ["alice", "bob", "dave"]
    );
    h.stats_until(|s| s.events_pending == 0 && s.events_received == 4)
        .await;
    assert!(ready_appends(&mut appends).is_empty());
    h.stop().await;
}

#[tokio::test]
async fn typing_reaches_the_other_members_but_not_the_typist() {
    let h = Harness::start().await;
    let conversation = h.conversation(&["alice", "bob", "carol"]).await;
    let mut alice = h.signals("alice").await;
    let mut bob = h.signals("bob").await;
    let mut carol = h.signals("carol").await;

    h.bus
        .publish(subjects::EPHEMERAL, typing(conversation, "alice", now()))
        .await
        .unwrap();
    h.stats_until(|s| s.ephemeral_published == 1).await;
    for live in [&mut bob, &mut carol] {
        let frames = ready_signals(live);
        assert_eq!(frames.len(), 1);
        let frame = typing_frame(&frames[0]);
        assert_eq!(frame.user_id, "alice");
        assert_eq!(frame.conversation_id, conversation.to_string());
        assert!(frame.active);
    }
    assert!(
        ready_signals(&mut alice).is_empty(),
        "not echoed to the typist"
    );
    h.stop().await;
}

#[tokio::test]
async fn desk_signals_of_a_service_reach_every_member() {
    let h = Harness::start().await;
    let conversation = h.conversation(&["alice", "bob"]).await;
    let mut alice = h.signals("alice").await;
    let mut bob = h.signals("bob").await;

    let news = v1::DeskSignal {
        signal: Some(v1::desk_signal::Signal::Queued(v1::Queued {
            conversation_id: conversation.to_string(),
            position: Some(v1::QueuePosition {
                ahead: 2,
                estimated_wait_seconds: 90,
            }),
            opens_at: None,
        })),
    };
    let signal = EphemeralSignal {
        actor: Some(Actor {
            tenant_id: TENANT.into(),
            user_id: "desk".into(),
            role: v1::Role::Service as i32,
        }),
        conversation_id: conversation.to_string(),
        at: Some(timestamp_to_wire(now())),
        signal: Some(ephemeral_signal::Signal::Desk(news.clone())),
    };
    h.bus
        .publish(subjects::EPHEMERAL, Outgoing::new(signal.encode_to_vec()))
        .await
        .unwrap();
    h.stats_until(|s| s.ephemeral_published == 1).await;
    for live in [&mut alice, &mut bob] {
        let frames = ready_signals(live);
        assert_eq!(frames.len(), 1);
        match v1::ServerFrame::decode(frames[0].as_slice()).unwrap().frame {
            Some(v1::server_frame::Frame::DeskSignal(got)) => assert_eq!(got, news),
            other => panic!("expected a desk signal, got {other:?}"),
        }
    }
    h.stop().await;
}

#[tokio::test]
async fn stale_and_non_member_signals_are_dropped() {
    let h = Harness::start().await;
    let conversation = h.conversation(&["alice", "bob"]).await;
    let mut bob = h.signals("bob").await;

    let stale = Timestamp::from_millis(now().as_millis() - 60_000);
    h.bus
        .publish(subjects::EPHEMERAL, typing(conversation, "alice", stale))
        .await
        .unwrap();
    h.bus
        .publish(subjects::EPHEMERAL, typing(conversation, "mallory", now()))
        .await
        .unwrap();
    let stats = h.stats_until(|s| s.ephemeral_dropped == 2).await;
    assert_eq!(stats.ephemeral_published, 0);
    assert!(ready_signals(&mut bob).is_empty());
    h.stop().await;
}

#[tokio::test]
async fn publish_ephemeral_checks_membership_synchronously() {
    let h = Harness::start().await;
    let conversation = h.conversation(&["alice", "bob"]).await;
    let mut bob = h.signals("bob").await;
    let mut client = h.client.clone();
    let signal = |user_id: &str| PublishEphemeralRequest {
        signal: Some(publish_ephemeral_request::Signal::Typing(TypingSignal {
            conversation_id: conversation.to_string(),
            user_id: user_id.into(),
            active: true,
        })),
    };

    let denied = client
        .publish_ephemeral(h.request("mallory", Role::Customer, signal("")))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(reason_of(&denied), "NOT_A_MEMBER");

    let impersonating = client
        .publish_ephemeral(h.request("alice", Role::Customer, signal("bob")))
        .await
        .unwrap_err();
    assert_eq!(impersonating.code(), Code::PermissionDenied);
    assert_eq!(reason_of(&impersonating), "ROLE_NOT_ALLOWED");

    let unauthenticated = client
        .publish_ephemeral(tonic::Request::new(signal("")))
        .await
        .unwrap_err();
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);

    let bad = client
        .publish_ephemeral(h.request(
            "alice",
            Role::Customer,
            PublishEphemeralRequest {
                signal: Some(publish_ephemeral_request::Signal::Typing(TypingSignal {
                    conversation_id: "not-a-uuid".into(),
                    user_id: String::new(),
                    active: true,
                })),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let field = bad.get_details_bad_request().unwrap().field_violations[0]
        .field
        .clone();
    assert_eq!(field, "typing.conversation_id");

    let unknown = client
        .publish_ephemeral(h.request(
            "svc",
            Role::Service,
            PublishEphemeralRequest {
                signal: Some(publish_ephemeral_request::Signal::Typing(TypingSignal {
                    conversation_id: ConversationId::generate().to_string(),
                    user_id: "alice".into(),
                    active: true,
                })),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(
        ready_signals(&mut bob).is_empty(),
        "nothing relayed for refusals"
    );

    client
        .publish_ephemeral(h.request("alice", Role::Customer, signal("")))
        .await
        .unwrap();
    let frames = ready_signals(&mut bob);
    assert_eq!(frames.len(), 1);
    assert_eq!(typing_frame(&frames[0]).user_id, "alice");

    // A backend signals for a member without being one itself.
    client
        .publish_ephemeral(h.request("svc", Role::Service, signal("alice")))
        .await
        .unwrap();
    assert_eq!(ready_signals(&mut bob).len(), 1);

    let stats = client
        .get_stats(h.request("alice", Role::Customer, v1::GetStatsRequest {}))
        .await
        .unwrap_err();
    assert_eq!(stats.code(), Code::PermissionDenied);
    h.stop().await;
}

/// The room frames published for `conversation` from now on.
async fn room_stream(h: &Harness, conversation: ConversationId) -> Subscription {
    let subject = subjects::room(&h.tenant(), conversation);
    h.bus.subscribe(&subject, None).await.unwrap()
}

/// The seq of the message a room frame carries.
fn room_seq(incoming: &Incoming) -> u64 {
    match v1::ServerFrame::decode(incoming.payload.as_ref())
        .unwrap()
        .frame
    {
        Some(v1::server_frame::Frame::Message(message)) => message.seq,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn a_room_at_the_threshold_fans_each_message_out_to_every_member() {
    let members_max = Limits::default().big_room_members;
    let h = Harness::start().await;
    let members: Vec<UserId> = (0..members_max)
        .map(|i| user(&format!("u{i:05}")))
        .collect();
    let conversation = h.conversation_of(&members).await;
    let mut appends = h.appends();
    let mut room = room_stream(&h, conversation).await;

    // Cold: the member list is paged in from storage first.
    let first = message(conversation, 1, "u00000");
    let start = Instant::now();
    h.publish_event(&first, Some(&first.key())).await;
    let got = take(&mut appends, members_max).await;
    let cold = start.elapsed();
    let counts = per_user(&got);
    assert!(counts.values().all(|&n| n == 1));
    let expected: HashSet<String> = members.iter().map(ToString::to_string).collect();
    assert_eq!(counts.keys().cloned().collect::<HashSet<_>>(), expected);

    // Warm: the per-message cost.
    let second = message(conversation, 2, "u00001");
    let start = Instant::now();
    h.publish_event(&second, Some(&second.key())).await;
    let got = take(&mut appends, members_max).await;
    let warm = start.elapsed();
    assert_eq!(per_user(&got).len(), members_max);

    let stats = h
        .stats_until(|s| s.updates_written >= 2 * members_max as u64)
        .await;
    assert_eq!(stats.updates_written, 2 * members_max as u64);
    // Watching devices get each message from the room too.
    let watched: Vec<u64> = ready(&mut room).iter().map(room_seq).collect();
    assert_eq!(watched, [1, 2]);
    eprintln!(
        "fan-out of one message to {members_max} members on the in-process bus: \
         {cold:?} with the member list loaded from storage, {warm:?} with it cached"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_ten_thousand_member_room_publishes_each_message_once_for_watchers() {
    const MEMBERS: usize = 10_000;
    let h = Harness::start().await;
    let members: Vec<UserId> = (0..MEMBERS).map(|i| user(&format!("u{i:05}"))).collect();
    let conversation = h.conversation_of(&members).await;
    let mut appends = h.appends();
    let mut room = room_stream(&h, conversation).await;

    let start = Instant::now();
    for seq in 1..=100 {
        let event = message(conversation, seq, "u00000");
        h.publish_event(&event, Some(&event.key())).await;
    }
    let mut watched = Vec::new();
    while watched.len() < 100 {
        let incoming =
            tokio::time::timeout(Duration::from_secs(30), futures::StreamExt::next(&mut room))
                .await
                .expect("every message reaches the room")
                .unwrap();
        watched.push(room_seq(&incoming));
    }
    let elapsed = start.elapsed();
    assert_eq!(watched, (1..=100).collect::<Vec<_>>());

    // No member's log gets a message; a join still reaches the joiner.
    let joined = Event::Membership(MembershipChange {
        conversation_id: conversation,
        user_id: user("newcomer"),
        role: Role::Customer,
        kind: MembershipKind::Joined,
        at: now(),
    });
    h.publish_event(&joined, Some(&joined.key())).await;
    let got = take(&mut appends, 1).await;
    assert_eq!(users_of(&got), ["newcomer"]);
    let stats = h.stats_until(|s| s.updates_written >= 1).await;
    assert_eq!(stats.updates_written, 1);
    assert!(ready_appends(&mut appends).is_empty());
    eprintln!("100 messages in a {MEMBERS}-member room reached its watchers in {elapsed:?}");
    h.stop().await;
}

#[tokio::test]
async fn what_the_storage_service_announces_reaches_every_member() {
    let h = Harness::start_with(Peer::Storage).await;
    let mut storage = h.storage.clone().unwrap();
    let mut appends = h.appends();
    let member = |id: &str| v1::NewMember {
        user_id: id.into(),
        role: v1::Role::Customer as i32,
    };
    let created = storage
        .create_conversation(h.request(
            "svc",
            Role::Service,
            v1::CreateConversationRequest {
                conversation_id: String::new(),
                subject: "order 42".into(),
                members: vec![member("alice"), member("bob"), member("carol")],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    let sent = storage
        .send_message(h.request(
            "alice",
            Role::Customer,
            v1::SendMessageRequest {
                conversation_id: created.conversation_id.clone(),
                client_message_id: "c-1".into(),
                content: Some(v1::MessageContent::from(Content::Text("hello".into()))),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();

    // Three joins and the message, each to all three members, each asked
    // for once: nothing failed.
    let got = take(&mut appends, 12).await;
    let mut seen = HashSet::new();
    for user_event in got.iter().flat_map(|append| &append.asked) {
        let event = Event::try_from(user_event.event.clone().unwrap()).unwrap();
        assert_eq!(event.conversation_id().to_string(), created.conversation_id);
        assert!(
            seen.insert((user_event.user_id.clone(), event.key())),
            "{} got {} twice",
            user_event.user_id,
            event.key()
        );
    }
    for user in ["alice", "bob", "carol"] {
        assert!(
            seen.contains(&(user.to_owned(), sent.message_id.clone())),
            "{user}"
        );
    }
    h.stats_until(|s| s.events_pending == 0 && s.events_received >= 4)
        .await;
    assert!(ready_appends(&mut appends).is_empty());
    h.stop().await;
}
