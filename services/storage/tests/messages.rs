//! Sending and reading messages: gRPC `SendMessage` and `ListMessages`, and
//! the sequencers behind them.

mod common;

use std::time::Duration;

use common::{Harness, assert_invalid, assert_status, next_event, text_content, who};
use natter_contract::{ANALYTICS_CONSUMER, EVENTS, EVENTS_CONSUMER, Holders, subjects};
use natter_core::Timestamp;
use natter_core::{ConversationId, Event, Role};
use natter_proto::bus::v1::{Actor, SendCommand, send_outcome};
use natter_proto::convert::timestamp_to_wire;
use natter_proto::status::from_failure;
use natter_proto::v1::{
    ListMessagesRequest, MessageContent, SendMessageRequest, list_messages_request,
};
use natter_store::ConversationStore as _;
use tonic::Code;

#[tokio::test]
async fn sends_are_stored_in_order_and_a_retry_returns_the_first() {
    let h = Harness::start().await;
    let alice = who("acme", "alice", Role::Agent);
    let bob = who("acme", "bob", Role::Customer);
    let id = h.create(&alice, &[("bob", Role::Customer)]).await;

    let mut stored = Vec::new();
    for n in 1..=5 {
        let sender = if n % 2 == 0 { &bob } else { &alice };
        let sent = h
            .send(sender, id, &format!("c-{n}"), &format!("message {n}"))
            .await
            .unwrap();
        assert!(!sent.duplicate);
        let message = sent.message.unwrap();
        assert_eq!(message.seq, n);
        assert_eq!(message.sender_id, sender.user.as_str());
        stored.push(message);
    }

    let retry = h.send(&alice, id, "c-3", "message 3").await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.message.as_ref(), Some(&stored[2]));
    // The key is per sender: bob's c-3 is another message.
    let bobs = h.send(&bob, id, "c-3", "bob's own c-3").await.unwrap();
    assert!(!bobs.duplicate);
    assert_eq!(bobs.message.unwrap().seq, 6);

    let mut client = h.client();
    let newest = client
        .list_messages(h.req(
            &bob,
            ListMessagesRequest {
                conversation_id: id.to_string(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let seqs: Vec<u64> = newest.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    assert_eq!(newest.messages[..5], stored[..]);
    h.stop().await;
}

#[tokio::test]
async fn message_pages_walk_both_ways() {
    let h = Harness::start().await;
    let alice = who("acme", "alice", Role::Agent);
    let id = h.create(&alice, &[]).await;
    for n in 1..=5 {
        h.send(&alice, id, &format!("c-{n}"), "hi").await.unwrap();
    }
    let mut client = h.client();
    let mut read = async |start, page_token: String| {
        let page = client
            .list_messages(h.req(
                &alice,
                ListMessagesRequest {
                    conversation_id: id.to_string(),
                    page_size: 2,
                    page_token,
                    start,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        (
            page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            page.next_page_token,
        )
    };

    let forward = Some(list_messages_request::Start::AfterSeq(0));
    let (seqs, token) = read(forward, String::new()).await;
    assert_eq!(seqs, [1, 2]);
    let (seqs, token) = read(None, token).await;
    assert_eq!(seqs, [3, 4]);
    let (seqs, token) = read(None, token).await;
    assert_eq!(seqs, [5]);
    assert!(token.is_empty(), "caught up");

    let (seqs, token) = read(None, String::new()).await;
    assert_eq!(seqs, [4, 5]);
    let (seqs, token) = read(None, token).await;
    assert_eq!(seqs, [2, 3]);
    let (seqs, token) = read(None, token).await;
    assert_eq!(seqs, [1]);
    assert!(token.is_empty(), "reached the first message");
    h.stop().await;
}

#[tokio::test]
async fn bad_sends_and_reads_get_the_right_codes() {
    let h = Harness::start().await;
    let alice = who("acme", "alice", Role::Agent);
    let id = h.create(&alice, &[]).await;
    let mut client = h.client();
    let send = |content: Option<MessageContent>, client_message_id: &str| SendMessageRequest {
        conversation_id: id.to_string(),
        client_message_id: client_message_id.to_owned(),
        content,
    };

    let cases = [
        (send(Some(text_content("")), "c-1"), "content.text"),
        (send(Some(text_content("   ")), "c-1"), "content.text"),
        (
            send(Some(text_content(&"x".repeat(64 * 1024 + 1))), "c-1"),
            "content",
        ),
        (send(None, "c-1"), "content"),
        (send(Some(MessageContent { kind: None }), "c-1"), "content"),
        (send(Some(text_content("hi")), ""), "client_message_id"),
        (
            send(Some(text_content("hi")), "has space"),
            "client_message_id",
        ),
        (
            SendMessageRequest {
                conversation_id: "nope".into(),
                ..send(Some(text_content("hi")), "c-1")
            },
            "conversation_id",
        ),
    ];
    for (request, field) in cases {
        let status = client
            .send_message(h.req(&alice, request))
            .await
            .unwrap_err();
        assert_invalid(&status, field);
    }

    let unknown = ConversationId::generate();
    let status = h.send(&alice, unknown, "c-1", "hi").await.unwrap_err();
    assert_status(&status, Code::NotFound, "CONVERSATION_NOT_FOUND");

    for token in ["garbage", "after_seq:x", "after:alice"] {
        let status = client
            .list_messages(h.req(
                &alice,
                ListMessagesRequest {
                    conversation_id: id.to_string(),
                    page_token: token.into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_invalid(&status, "page_token");
    }
    let status = client
        .list_messages(h.req(
            &alice,
            ListMessagesRequest {
                conversation_id: unknown.to_string(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "CONVERSATION_NOT_FOUND");

    // Nothing was stored, and the service still serves.
    let sent = h.send(&alice, id, "c-1", "finally").await.unwrap();
    assert_eq!(sent.message.unwrap().seq, 1);
    h.stop().await;
}

#[tokio::test]
async fn concurrent_senders_get_gap_free_seqs() {
    let h = Harness::start().await;
    let alice = who("acme", "alice", Role::Agent);
    let id = h.create(&alice, &[]).await;
    let sends = (0..40).map(|n| {
        let h = &h;
        let alice = &alice;
        async move { h.send(alice, id, &format!("c-{n}"), "hi").await }
    });
    let results = futures::future::join_all(sends).await;
    let mut seqs: Vec<u64> = results
        .into_iter()
        .map(|r| r.unwrap().message.unwrap().seq)
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    h.stop().await;
}

#[tokio::test]
async fn stored_messages_are_announced_once() {
    let h = Harness::start().await;
    let alice = who("acme", "alice", Role::Agent);
    let id = h.create(&alice, &[]).await;
    let mut events = h.events("test").await;
    // The creator's Joined event comes first.
    assert!(matches!(
        next_event(&mut events).await.1,
        Event::Membership(_)
    ));

    let first = h.send(&alice, id, "c-1", "one").await.unwrap();
    let retry = h.send(&alice, id, "c-1", "one").await.unwrap();
    assert!(retry.duplicate);
    let second = h.send(&alice, id, "c-2", "two").await.unwrap();

    let (tenant, event) = next_event(&mut events).await;
    assert_eq!(tenant.as_str(), "acme");
    let Event::Message(message) = event else {
        panic!("expected a message, got {event:?}");
    };
    assert_eq!(message.id.to_string(), first.message.unwrap().message_id);
    // The retry re-published under the same key and the stream dropped it:
    // the next event is the second message.
    let Event::Message(message) = next_event(&mut events).await.1 else {
        panic!("expected a message");
    };
    assert_eq!(message.id.to_string(), second.message.unwrap().message_id);
    h.stop().await;
}

#[tokio::test]
async fn an_event_lost_after_the_store_write_is_published_by_the_retry() {
    let h = Harness::start().await;
    let alice = who("acme", "alice", Role::Agent);
    let id = h.create(&alice, &[]).await;
    let first = h.send(&alice, id, "c-1", "one").await.unwrap();

    // Lose everything EVENTS held, as if the process had died between
    // storing the message and publishing its event.
    h.bus.delete_stream(EVENTS.name).await.unwrap();
    h.bus
        .ensure_stream(&EVENTS.config(&h.topology))
        .await
        .unwrap();

    let retry = h.send(&alice, id, "c-1", "one").await.unwrap();
    assert!(retry.duplicate);
    let mut events = h.events("after-loss").await;
    let Event::Message(message) = next_event(&mut events).await.1 else {
        panic!("expected the message");
    };
    assert_eq!(message.id.to_string(), first.message.unwrap().message_id);
    h.stop().await;
}

/// The in-process bus keeps EVENTS in memory only, so storage keeps each
/// announcement in the store until fanout's consumer (and the desk's
/// analytics consumer) has acknowledged it,
/// and after a restart the partition's next holder announces what is still
/// kept, and nothing fanout had taken.
#[tokio::test]
async fn a_new_holder_announces_what_fanout_had_not_taken() {
    let h = Harness::start().await;
    let alice = who("acme", "alice", Role::Agent);
    let id = h.create(&alice, &[]).await;
    let partition = natter_bus::partition(&subjects::conversation_key(id), h.topology.partitions);
    let fanout_name = EVENTS.consumer(EVENTS_CONSUMER, partition);
    let mut fanout = h.consume(&fanout_name, &EVENTS.subject_of(partition)).await;
    h.send(&alice, id, "c-1", "one").await.unwrap();
    assert!(matches!(
        next_event(&mut fanout).await.1,
        Event::Membership(_)
    ));
    assert!(matches!(next_event(&mut fanout).await.1, Event::Message(_)));
    // The desk's analytics must have it too before it is forgotten.
    let analytics_name = EVENTS.consumer(ANALYTICS_CONSUMER, partition);
    let mut analytics = h
        .consume(&analytics_name, &EVENTS.subject_of(partition))
        .await;
    assert!(matches!(
        next_event(&mut analytics).await.1,
        Event::Membership(_)
    ));
    assert!(matches!(
        next_event(&mut analytics).await.1,
        Event::Message(_)
    ));
    // Acknowledged, so forgotten within a round of the holder's checks.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !kept(&h, partition).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never forgotten");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let second = h.send(&alice, id, "c-2", "two").await.unwrap();
    assert_eq!(
        kept(&h, partition).await.len(),
        1,
        "kept until fanout has it"
    );
    let store = h.store.clone();
    h.stop().await;

    let h = Harness::start_on(store).await;
    let mut events = h.events("after-restart").await;
    let Event::Message(message) = next_event(&mut events).await.1 else {
        panic!("expected the message fanout had not taken");
    };
    assert_eq!(message.id.to_string(), second.message.unwrap().message_id);
    h.stop().await;
}

async fn kept(h: &Harness, partition: u32) -> Vec<natter_store::Announcement> {
    h.store
        .announcements(partition, 0, 100)
        .await
        .expect("the kept announcements")
}

/// Commands straight to the sequencer, as a gateway sends them, bypassing
/// the gRPC checks: the sequencer must make the same decisions itself.
#[tokio::test]
async fn the_sequencer_reports_failures_to_the_sender() {
    let h = Harness::start().await;
    let alice = who("acme", "alice", Role::Agent);
    let id = h.create(&alice, &[]).await;
    let gateway = Holders::new(h.bus.clone(), h.topology);
    let actor = |tenant: &str, user: &str, role: natter_proto::v1::Role| {
        Some(Actor {
            tenant_id: tenant.into(),
            user_id: user.into(),
            role: role.into(),
        })
    };
    let command = |actor, text: &str| SendCommand {
        actor,
        conversation_id: id.to_string(),
        client_message_id: "g-1".into(),
        content: Some(text_content(text)),
        sent_at: Some(timestamp_to_wire(Timestamp::from_millis(1_700_000_000_000))),
        change: None,
    };
    use natter_proto::v1::Role::{Agent, Customer, Service};
    let cases = [
        (
            command(actor("acme", "alice", Agent), ""),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (command(None, "hi"), Code::InvalidArgument, "INVALID_FIELD"),
        (
            command(
                actor("acme", "alice", natter_proto::v1::Role::Unspecified),
                "hi",
            ),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            SendCommand {
                sent_at: None,
                ..command(actor("acme", "alice", Agent), "hi")
            },
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            command(actor("acme", "mallory", Customer), "hi"),
            Code::PermissionDenied,
            "NOT_A_MEMBER",
        ),
        (
            command(actor("globex", "alice", Agent), "hi"),
            Code::NotFound,
            "CONVERSATION_NOT_FOUND",
        ),
    ];
    for (command, code, reason) in cases {
        let outcome = gateway
            .send(id, command, Duration::from_secs(10))
            .await
            .unwrap();
        let Some(send_outcome::Result::Failure(failure)) = outcome.result else {
            panic!("expected a failure, got {outcome:?}");
        };
        assert_status(&from_failure(failure), code, reason);
    }

    // A service stores without membership, at the sender's time.
    let outcome = gateway
        .send(
            id,
            command(actor("acme", "crm", Service), "hi"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let Some(send_outcome::Result::Stored(stored)) = outcome.result else {
        panic!("expected a stored message, got {outcome:?}");
    };
    let message = stored.message.unwrap();
    assert_eq!((message.seq, message.sender_id.as_str()), (1, "crm"));
    assert_eq!(message.sent_at.unwrap().seconds, 1_700_000_000);
    h.stop().await;
}
