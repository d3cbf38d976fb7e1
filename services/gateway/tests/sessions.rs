//! Sessions end to end through the gateway's real gRPC and WebSocket
//! endpoints, each scenario over every transport: gRPC, WebSocket with
//! JSON, WebSocket with protobuf. Sync, storage and fanout are the test
//! doubles of `common`, answering on the real bus subjects.

// Helpers outside #[test] functions panic on the unexpected too.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use natter_auth::Signer;
use natter_core::ConversationId;
use natter_proto::v1::{self, ClientFrame, client_frame, server_frame::Frame};
use tonic::Code;

fn conversation() -> ConversationId {
    ConversationId::generate()
}

fn cursors(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .map(|frame| match frame {
            Frame::Update(update) => update.cursor,
            other => panic!("expected an update, got {other:?}"),
        })
        .collect()
}

async fn updates(device: &mut Device, count: usize) -> Vec<u64> {
    let mut frames = Vec::with_capacity(count);
    for _ in 0..count {
        frames.push(device.frame().await);
    }
    cursors(&frames)
}

#[tokio::test]
async fn hello_opens_a_session_that_answers_pings() {
    let harness = Harness::start().await;
    for (i, transport) in ALL.into_iter().enumerate() {
        let mut device = harness.open(transport, "alice", &format!("d{i}"), 0).await;
        device.round_trip(7).await;
        device.round_trip(u64::MAX).await;
    }
    let hellos = harness.sync.hellos.lock().unwrap().clone();
    assert_eq!(hellos.len(), 3);
    let actor = hellos[0].actor.clone().unwrap();
    assert_eq!(
        (actor.tenant_id.as_str(), actor.user_id.as_str()),
        (TENANT, "alice")
    );
    assert_eq!(hellos[0].label, "test");
    harness.stop().await;
}

#[tokio::test]
async fn bad_expired_and_wrongly_signed_tokens_end_the_session() {
    let harness = Harness::start().await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = Signer::hs256(SECRET)
        .token_expiring_at(&identity("alice"), now - 3600)
        .unwrap();
    let other_key = Signer::hs256(b"another installation's secret, 32+ bytes")
        .token(&identity("alice"), 600)
        .unwrap();
    // Well signed, but naming no valid tenant.
    let bad_tenant = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "alice", "tid": "two words", "role": "customer", "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    for transport in ALL {
        for (token, what) in [
            ("not a jwt".to_owned(), "garbage"),
            (expired.clone(), "expired"),
            (other_key.clone(), "wrong key"),
            (bad_tenant.clone(), "bad tenant"),
            (String::new(), "missing"),
        ] {
            let mut device = harness.device(transport).await;
            let mut frame = hello("alice", "d1", 0);
            if let Some(client_frame::Frame::Hello(hello)) = &mut frame.frame {
                hello.token = token;
            }
            device.send(frame).await;
            let ended = device.ended().await;
            ended.assert(Code::Unauthenticated, 1008, "TOKEN_INVALID");
            match what {
                "expired" => assert!(ended.message().contains("expired"), "{ended:?}"),
                "bad tenant" => assert!(ended.message().contains("tid"), "{ended:?}"),
                _ => {}
            }
        }
    }
    assert!(
        harness.sync.hellos.lock().unwrap().is_empty(),
        "sync never asked"
    );
    harness.stop().await;
}

#[tokio::test]
async fn a_session_ends_when_its_token_expires() {
    let harness = Harness::start().await;
    for (i, transport) in ALL.into_iter().enumerate() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let short = Signer::hs256(SECRET)
            .token_expiring_at(&identity("alice"), now + 3)
            .unwrap();
        let mut device = harness.device(transport).await;
        let mut frame = hello("alice", &format!("d{i}"), 0);
        if let Some(client_frame::Frame::Hello(hello)) = &mut frame.frame {
            hello.token = short;
        }
        device.send(frame).await;
        assert!(matches!(device.frame().await, Frame::Welcome(_)));
        device.round_trip(1).await;
        let ended = device.ended().await;
        ended.assert(Code::Unauthenticated, 1008, "TOKEN_INVALID");
        assert!(ended.message().contains("token expired"), "{ended:?}");
    }
    harness.stop().await;
}

#[tokio::test]
async fn the_first_frame_must_be_a_valid_hello() {
    let harness = Harness::start().await;
    for transport in ALL {
        let mut device = harness.device(transport).await;
        device.send(ping(1)).await;
        let ended = device.ended().await;
        ended.assert(Code::InvalidArgument, 1008, "INVALID_FIELD");
        assert!(
            ended.message().contains("first frame must be hello"),
            "{ended:?}"
        );

        let mut device = harness.device(transport).await;
        device.send(hello("alice", "has space", 0)).await;
        let ended = device.ended().await;
        ended.assert(Code::InvalidArgument, 1008, "INVALID_FIELD");
        assert!(ended.message().contains("device_id"), "{ended:?}");
    }
    harness.stop().await;
}

#[tokio::test]
async fn a_device_that_says_nothing_is_let_go() {
    let harness = Harness::start_with(|s| s.gateway.hello_timeout_seconds = 1).await;
    for transport in ALL {
        let mut device = harness.device(transport).await;
        let ended = device.ended().await;
        ended.assert(Code::InvalidArgument, 1008, "INVALID_FIELD");
        assert!(ended.message().contains("hello"), "{ended:?}");
    }
    harness.stop().await;
}

#[tokio::test]
async fn sends_are_acknowledged_in_order_and_retries_return_the_first_message() {
    let harness = Harness::start().await;
    let room = conversation();
    harness.storage.open.lock().unwrap().insert(room);
    let mut expected_seq = 0;
    for (t, transport) in ALL.into_iter().enumerate() {
        let mut device = harness.open(transport, "alice", "d1", 0).await;
        // Sent back to back: acknowledged in the order sent, seqs in order.
        for i in 0..5 {
            device
                .send(text_send(room, &format!("c{t}-{i}"), "hello"))
                .await;
        }
        let mut first = None;
        for i in 0..5 {
            match device.frame().await {
                Frame::SendAck(ack) => {
                    expected_seq += 1;
                    assert_eq!(ack.client_message_id, format!("c{t}-{i}"));
                    assert_eq!(ack.seq, expected_seq);
                    assert_eq!(ack.conversation_id, room.to_string());
                    assert!(!ack.duplicate);
                    first.get_or_insert(ack);
                }
                other => panic!("{transport:?}: expected send_ack, got {other:?}"),
            }
        }
        let first = first.unwrap();
        device
            .send(text_send(room, &first.client_message_id, "hello"))
            .await;
        match device.frame().await {
            Frame::SendAck(again) => {
                assert!(again.duplicate);
                assert_eq!((again.message_id, again.seq), (first.message_id, first.seq));
            }
            other => panic!("{transport:?}: expected send_ack, got {other:?}"),
        }
    }
    let commands = harness.storage.commands.lock().unwrap().clone();
    let actor = commands[0].actor.clone().unwrap();
    assert_eq!(
        (actor.tenant_id.as_str(), actor.user_id.as_str()),
        (TENANT, "alice")
    );
    assert_eq!(actor.role, v1::Role::Customer as i32);
    assert!(commands[0].sent_at.is_some());
    harness.stop().await;
}

#[tokio::test]
async fn a_refused_send_reports_the_reason_and_the_session_goes_on() {
    let harness = Harness::start().await;
    for transport in ALL {
        let mut device = harness.open(transport, "alice", "d1", 0).await;
        device.send(text_send(conversation(), "c-1", "hi")).await;
        let error = device.error().await;
        assert_eq!(error.code, Code::PermissionDenied as i32);
        assert_eq!(error.reason, "NOT_A_MEMBER");
        assert_eq!(error.client_message_id, "c-1");
        device.round_trip(1).await;
    }
    harness.stop().await;
}

#[tokio::test]
async fn an_unconfirmed_send_asks_for_a_retry_with_the_same_id() {
    let harness = Harness::start_with(|s| s.gateway.send_timeout_seconds = 1).await;
    let room = conversation();
    harness.storage.open.lock().unwrap().insert(room);
    harness.storage.silent.store(true, Ordering::SeqCst);
    for transport in ALL {
        let mut device = harness.open(transport, "alice", "d1", 0).await;
        device.send(text_send(room, "c-1", "hi")).await;
        let error = device.error().await;
        assert_eq!(error.code, Code::Unavailable as i32);
        assert_eq!(error.reason, "SERVICE_UNAVAILABLE");
        assert_eq!(error.client_message_id, "c-1");
        assert!(
            error.message.contains("same client_message_id"),
            "{error:?}"
        );
        device.round_trip(1).await;
    }
    harness.stop().await;
}

#[tokio::test]
async fn bad_frames_get_an_error_naming_the_field_and_the_session_stays_open() {
    let harness = Harness::start().await;
    let room = conversation();
    harness.storage.open.lock().unwrap().insert(room);
    let text = |text: String| {
        Some(v1::MessageContent {
            kind: Some(v1::message_content::Kind::Text(text)),
        })
    };
    let send = |conversation: String, id: &str, content| {
        frame(client_frame::Frame::Send(v1::Send {
            conversation_id: conversation,
            client_message_id: id.into(),
            content,
        }))
    };
    let cases = [
        (ClientFrame { frame: None }, "frame", ""),
        (
            send(room.to_string(), "c-1", text("  ".into())),
            "content.text",
            "c-1",
        ),
        (
            send(room.to_string(), "c-2", text("x".repeat(64 * 1024 + 1))),
            "content",
            "c-2",
        ),
        (send(room.to_string(), "c-3", None), "content", "c-3"),
        (
            send("not-a-uuid".into(), "c-4", text("hi".into())),
            "conversation_id",
            "c-4",
        ),
        (
            send(room.to_string(), "has space", text("hi".into())),
            "client_message_id",
            "has space",
        ),
        (
            frame(client_frame::Frame::Read(v1::Read {
                conversation_id: "nope".into(),
                seq: 1,
            })),
            "conversation_id",
            "",
        ),
        (
            frame(client_frame::Frame::Typing(v1::Typing {
                conversation_id: String::new(),
                active: true,
            })),
            "conversation_id",
            "",
        ),
        (hello("alice", "d1", 0), "hello", ""),
    ];
    for transport in ALL {
        let mut device = harness.open(transport, "alice", "d1", 0).await;
        for (frame, field, id) in cases.clone() {
            device.send(frame).await;
            let error = device.error().await;
            assert_eq!(
                error.code,
                Code::InvalidArgument as i32,
                "{transport:?} {error:?}"
            );
            assert_eq!(error.reason, "INVALID_FIELD");
            assert_eq!(error.field, field, "{transport:?} {error:?}");
            assert_eq!(error.client_message_id, id);
        }
        device.round_trip(1).await;
    }
    assert!(harness.storage.commands.lock().unwrap().is_empty());
    harness.stop().await;
}

#[tokio::test]
async fn catch_up_pages_then_live_updates_arrive_once_in_order() {
    // A queue of 8 makes pages of 4, so the catch-up takes several.
    let harness = Harness::start_with(|s| s.gateway.outbound_queue = 8).await;
    let room = conversation();
    for (t, transport) in ALL.into_iter().enumerate() {
        let user = format!("u{t}");
        for seq in 1..=30 {
            harness
                .sync
                .append_quietly(&user, read_event(room, &user, seq));
        }
        // Live updates arrive while the first page is still being fetched.
        harness.sync.hold_pages.send_replace(true);
        let mut device = harness.open(transport, &user, "d1", 5).await;
        assert!(harness.has_live_session(&user).await);
        harness
            .sync
            .append(&user, read_event(room, &user, 31))
            .await;
        harness
            .sync
            .append(&user, read_event(room, &user, 32))
            .await;
        harness.sync.hold_pages.send_replace(false);
        assert_eq!(updates(&mut device, 27).await, (6..=32).collect::<Vec<_>>());

        // Live from here on; a lost live publication is fetched from the log.
        harness
            .sync
            .append(&user, read_event(room, &user, 33))
            .await;
        assert_eq!(updates(&mut device, 1).await, vec![33]);
        harness
            .sync
            .append_quietly(&user, read_event(room, &user, 34));
        harness
            .sync
            .append(&user, read_event(room, &user, 35))
            .await;
        assert_eq!(updates(&mut device, 2).await, vec![34, 35]);
        // A repeated live publication is not delivered twice.
        let old = harness.sync.logs.lock().unwrap()[&user][34].clone();
        harness.sync.publish_live(&user, Frame::Update(old)).await;
        harness
            .sync
            .append(&user, read_event(room, &user, 36))
            .await;
        assert_eq!(updates(&mut device, 1).await, vec![36]);
        device.round_trip(1).await;

        let queries = harness.sync.queries.lock().unwrap().clone();
        assert!(queries.iter().all(|q| q.limit == 4), "{queries:?}");
        harness.sync.queries.lock().unwrap().clear();
    }
    harness.stop().await;
}

#[tokio::test]
async fn a_cursor_older_than_the_log_gets_resync_required_then_the_rest() {
    let harness = Harness::start().await;
    let room = conversation();
    for (t, transport) in ALL.into_iter().enumerate() {
        let user = format!("u{t}");
        for seq in 1..=15 {
            harness
                .sync
                .append_quietly(&user, read_event(room, &user, seq));
        }
        harness.sync.floors.lock().unwrap().insert(user.clone(), 10);
        let mut device = harness.open(transport, &user, "d1", 3).await;
        match device.frame().await {
            Frame::ResyncRequired(resync) => assert_eq!(resync.cursor, 15),
            other => panic!("expected resync_required, got {other:?}"),
        }
        harness
            .sync
            .append(&user, read_event(room, &user, 16))
            .await;
        assert_eq!(updates(&mut device, 1).await, vec![16]);
    }
    harness.stop().await;
}

/// A new holder of the user's partition knows no gateway: the gateway
/// attaches the user to it, and the session fetches what went live while
/// nobody sent it there.
#[tokio::test]
async fn after_a_new_holder_takes_the_partition_sessions_catch_up_and_stay_live() {
    let harness = Harness::start().await;
    let room = conversation();
    for (t, transport) in ALL.into_iter().enumerate() {
        let user = format!("u{t}");
        let mut device = harness.open(transport, &user, "d1", 0).await;
        harness.sync.append(&user, read_event(room, &user, 1)).await;
        assert_eq!(updates(&mut device, 1).await, vec![1]);

        // Written, and never sent to this gateway, around the change of
        // holder.
        harness
            .sync
            .append_quietly(&user, read_event(room, &user, 2));
        harness.sync.take_over(&user).await;
        assert_eq!(updates(&mut device, 1).await, vec![2]);
        assert!(harness.has_live_session(&user).await, "attached again");
        harness.sync.append(&user, read_event(room, &user, 3)).await;
        assert_eq!(updates(&mut device, 1).await, vec![3]);
    }
    harness.stop().await;
}

#[tokio::test]
async fn a_device_that_reads_too_slowly_is_disconnected() {
    let harness = Harness::start_with(|s| s.gateway.outbound_queue = 4).await;
    let room = conversation();
    // 60 KiB updates: the socket's and HTTP/2's buffers fill after a few
    // dozen, then the queue of 4.
    let big = "x".repeat(60 * 1024);
    for (t, transport) in ALL.into_iter().enumerate() {
        let user = format!("u{t}");
        let mut device = harness.open(transport, &user, "d1", 0).await;
        let mut sent = 0;
        while harness.has_live_session(&user).await {
            assert!(sent < 10_000, "{transport:?}: never found too slow");
            sent += 1;
            harness
                .sync
                .append(&user, message_event(room, sent, big.clone()))
                .await;
        }
        let (frames, ended) = device.drain().await;
        assert!(
            frames.len() < sent as usize,
            "{transport:?}: got all {sent}"
        );
        assert_eq!(
            cursors(&frames),
            (1..=frames.len() as u64).collect::<Vec<_>>()
        );
        ended.assert(Code::ResourceExhausted, 1013, "SLOW_CONSUMER");
        assert!(ended.message().contains("too slow"), "{ended:?}");
    }
    harness.stop().await;
}

/// Opens a session of `user` whose catch-up is held up, and appends
/// updates 1 to `through`: the first without its live publication, so the
/// later ones wait behind the catch-up. Catch-up is still held up after.
async fn stuck_in_catch_up(
    harness: &Harness,
    transport: Transport,
    user: &str,
    room: ConversationId,
    through: u64,
) -> Device {
    harness.sync.hold_pages.send_replace(true);
    let device = harness.open(transport, user, "d1", 0).await;
    harness.sync.append_quietly(user, read_event(room, user, 1));
    for seq in 2..=through {
        harness.sync.append(user, read_event(room, user, seq)).await;
    }
    device
}

/// Updates are in the log before they go live, so a session whose hold
/// is full during catch-up leaves the rest to its fetches and stays open.
#[tokio::test]
async fn live_updates_beyond_the_hold_during_catch_up_come_from_the_log() {
    let harness = Harness::start_with(|s| s.gateway.max_held_updates = 2).await;
    let room = conversation();
    for (t, transport) in ALL.into_iter().enumerate() {
        let user = format!("u{t}");
        // Two are held, the rest left out.
        let mut device = stuck_in_catch_up(&harness, transport, &user, room, 6).await;
        harness.sync.hold_pages.send_replace(false);
        assert_eq!(updates(&mut device, 6).await, (1..=6).collect::<Vec<_>>());
        // Caught up: the next update comes live.
        harness.sync.append(&user, read_event(room, &user, 7)).await;
        assert_eq!(updates(&mut device, 1).await, vec![7]);
    }
    harness.stop().await;
}

/// A burst during catch-up, far beyond the hold and the queue of a device
/// that reads nothing meanwhile, reaches it once it reads: every update
/// once, in order, and the session stays open.
#[tokio::test]
async fn a_device_catching_up_behind_a_burst_gets_every_update_once() {
    let harness = Harness::start_with(|s| {
        s.gateway.outbound_queue = 4;
        s.gateway.max_held_updates = 2;
    })
    .await;
    let room = conversation();
    for (t, transport) in ALL.into_iter().enumerate() {
        let user = format!("u{t}");
        let mut device = stuck_in_catch_up(&harness, transport, &user, room, 3).await;
        // Catch-up resumes while the burst goes on and the device reads
        // nothing: its queue of 4 fills long before the burst ends.
        harness.sync.hold_pages.send_replace(false);
        for seq in 4..=40 {
            harness
                .sync
                .append(&user, read_event(room, &user, seq))
                .await;
        }
        assert_eq!(updates(&mut device, 40).await, (1..=40).collect::<Vec<_>>());
        device.round_trip(1).await;
    }
    harness.stop().await;
}

#[tokio::test]
async fn revoking_a_device_ends_its_sessions_and_keeps_it_out() {
    let harness = Harness::start().await;
    for (t, transport) in ALL.into_iter().enumerate() {
        let user = format!("u{t}");
        let mut phone = harness.open(transport, &user, "phone", 0).await;
        let mut laptop = harness.open(transport, &user, "laptop", 0).await;
        harness.revoke(&user, "phone").await;
        phone
            .ended()
            .await
            .assert(Code::PermissionDenied, 1008, "DEVICE_REVOKED");
        laptop.round_trip(1).await;

        let mut again = harness.device(transport).await;
        again.send(hello(&user, "phone", 0)).await;
        again
            .ended()
            .await
            .assert(Code::PermissionDenied, 1008, "DEVICE_REVOKED");
    }
    harness.stop().await;
}

#[tokio::test]
async fn acks_reach_sync_and_cannot_run_ahead_of_what_was_sent() {
    let harness = Harness::start().await;
    let room = conversation();
    for (t, transport) in ALL.into_iter().enumerate() {
        let user = format!("u{t}");
        for seq in 1..=3 {
            harness
                .sync
                .append_quietly(&user, read_event(room, &user, seq));
        }
        let mut device = harness.open(transport, &user, "d1", 0).await;
        assert_eq!(updates(&mut device, 3).await, vec![1, 2, 3]);
        device
            .send(frame(client_frame::Frame::Ack(v1::Ack { cursor: 4 })))
            .await;
        let error = device.error().await;
        assert_eq!(
            (error.code, error.field.as_str()),
            (Code::InvalidArgument as i32, "cursor")
        );
        device
            .send(frame(client_frame::Frame::Ack(v1::Ack { cursor: 3 })))
            .await;
        device.round_trip(1).await;
        eventually("the ack at sync", || {
            harness.sync.acks.lock().unwrap().iter().any(|ack| {
                ack.cursor == 3
                    && ack.device_id == "d1"
                    && ack.actor.as_ref().is_some_and(|a| a.user_id == user)
            })
        })
        .await;
    }
    harness.stop().await;
}

#[tokio::test]
async fn reads_go_to_storage_and_refusals_come_back() {
    let harness = Harness::start().await;
    let room = conversation();
    harness.storage.open.lock().unwrap().insert(room);
    for transport in ALL {
        let mut device = harness.open(transport, "alice", "d1", 0).await;
        let read = |conversation: ConversationId| {
            frame(client_frame::Frame::Read(v1::Read {
                conversation_id: conversation.to_string(),
                seq: 9,
            }))
        };
        device.send(read(room)).await;
        device.send(read(conversation())).await;
        let error = device.error().await;
        assert_eq!(
            (error.code, error.reason.as_str()),
            (Code::PermissionDenied as i32, "NOT_A_MEMBER")
        );
        device.round_trip(1).await;
    }
    let reads = harness.storage.reads.lock().unwrap().clone();
    assert_eq!(reads.len(), 6);
    assert_eq!(
        (reads[0].conversation_id.as_str(), reads[0].seq),
        (room.to_string().as_str(), 9)
    );
    assert_eq!(reads[0].actor.as_ref().unwrap().user_id, "alice");
    harness.stop().await;
}

#[tokio::test]
async fn typing_goes_to_fanout_at_a_bounded_rate_and_others_typing_comes_back() {
    let harness = Harness::start().await;
    let room = conversation();
    for (t, transport) in ALL.into_iter().enumerate() {
        let user = format!("u{t}");
        let mut device = harness.open(transport, &user, "d1", 0).await;
        let typing = |active| {
            frame(client_frame::Frame::Typing(v1::Typing {
                conversation_id: room.to_string(),
                active,
            }))
        };
        // Started, repeated (dropped: within a second), stopped.
        for active in [true, true, false] {
            device.send(typing(active)).await;
        }
        device.round_trip(1).await;
        eventually("two signals at fanout", || {
            harness
                .fanout
                .signals
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.actor.as_ref().is_some_and(|a| a.user_id == user))
                .count()
                == 2
        })
        .await;

        let signal = v1::TypingSignal {
            conversation_id: room.to_string(),
            user_id: "agent".into(),
            active: true,
        };
        harness
            .sync
            .publish_live(&user, Frame::Typing(signal.clone()))
            .await;
        match device.frame().await {
            Frame::Typing(got) => assert_eq!(got, signal),
            other => panic!("expected typing, got {other:?}"),
        }
    }
    let signals = harness.fanout.signals.lock().unwrap().clone();
    use natter_proto::bus::v1::ephemeral_signal::Signal;
    assert_eq!(signals[0].signal, Some(Signal::Typing(true)));
    assert_eq!(signals[1].signal, Some(Signal::Typing(false)));
    assert!(signals[0].at.is_some());
    harness.stop().await;
}

#[tokio::test]
async fn shutdown_ends_every_session_so_devices_reconnect_elsewhere() {
    let harness = Harness::start().await;
    let mut devices = Vec::new();
    for (t, transport) in ALL.into_iter().enumerate() {
        devices.push(harness.open(transport, &format!("u{t}"), "d1", 0).await);
    }
    // A device that has not said hello yet is let go too.
    devices.push(harness.device(Transport::WsJson).await);
    harness.shutdown.cancel();
    for device in &mut devices {
        device
            .ended()
            .await
            .assert(Code::Unavailable, 1001, "SHUTTING_DOWN");
    }
    tokio::time::timeout(Duration::from_secs(5), harness.server)
        .await
        .expect("run returns within the grace period")
        .unwrap()
        .unwrap();
}

fn watch(conversation: ConversationId, after_seq: u64) -> ClientFrame {
    frame(client_frame::Frame::Watch(v1::Watch {
        conversation_id: conversation.to_string(),
        after_seq,
    }))
}

/// The seqs of the next `count` frames, which must be messages of `room`.
async fn messages(device: &mut Device, room: ConversationId, count: usize) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(count);
    for _ in 0..count {
        match device.frame().await {
            Frame::Message(m) if m.conversation_id == room.to_string() => seqs.push(m.seq),
            other => panic!("expected a message of {room}, got {other:?}"),
        }
    }
    seqs
}

#[tokio::test]
async fn a_watch_replays_the_backlog_in_pages_then_delivers_live_once_in_order() {
    // A queue of 8 makes watch pages of 2.
    let harness = Harness::start_with(|s| s.gateway.outbound_queue = 8).await;
    for transport in ALL {
        let room = conversation();
        harness.storage.open.lock().unwrap().insert(room);
        for i in 1..=9 {
            harness.storage.store_quietly(room, "bob", &format!("m{i}"));
        }
        let mut device = harness.open(transport, "alice", "d1", 0).await;
        device.send(watch(room, 3)).await;
        assert_eq!(
            messages(&mut device, room, 6).await,
            (4..=9).collect::<Vec<_>>()
        );
        match device.frame().await {
            Frame::Watching(w) => {
                assert_eq!((w.conversation_id, w.last_seq), (room.to_string(), 9));
            }
            other => panic!("expected watching, got {other:?}"),
        }
        let queries = harness.storage.message_queries.lock().unwrap().clone();
        assert!(queries.iter().all(|q| q.limit == 2), "{queries:?}");
        assert_eq!(queries[0].actor.as_ref().unwrap().user_id, "alice");

        // Live; a message whose publication was lost is fetched at the
        // next one, and a repeated publication is not delivered twice.
        harness.storage.store(room, "bob", "m10").await;
        assert_eq!(messages(&mut device, room, 1).await, vec![10]);
        let lost = harness.storage.store_quietly(room, "bob", "m11");
        harness.storage.store(room, "bob", "m12").await;
        assert_eq!(messages(&mut device, room, 2).await, vec![11, 12]);
        harness.storage.publish_room(room, lost).await;
        harness.storage.store(room, "bob", "m13").await;
        assert_eq!(messages(&mut device, room, 1).await, vec![13]);

        // After unwatch nothing more comes.
        device
            .send(frame(client_frame::Frame::Unwatch(v1::Unwatch {
                conversation_id: room.to_string(),
            })))
            .await;
        device.round_trip(1).await;
        harness.storage.store(room, "bob", "m14").await;
        device.round_trip(2).await;
        harness.storage.message_queries.lock().unwrap().clear();
    }
    harness.stop().await;
}

#[tokio::test]
async fn watches_are_for_members_and_bounded_per_session() {
    let harness = Harness::start_with(|s| s.gateway.max_watches = 2).await;
    let (a, b, c) = (conversation(), conversation(), conversation());
    harness.storage.open.lock().unwrap().extend([a, b, c]);
    for transport in ALL {
        let mut device = harness.open(transport, "alice", "d1", 0).await;
        let stranger = conversation();
        device.send(watch(stranger, 0)).await;
        let error = device.error().await;
        assert_eq!(
            (error.code, error.reason.as_str(), error.conversation_id),
            (
                Code::PermissionDenied as i32,
                "NOT_A_MEMBER",
                stranger.to_string()
            )
        );
        for room in [a, b] {
            device.send(watch(room, 0)).await;
            assert!(matches!(device.frame().await, Frame::Watching(_)));
        }
        device.send(watch(c, 0)).await;
        let error = device.error().await;
        assert_eq!(
            (error.code, error.reason.as_str(), error.conversation_id),
            (
                Code::ResourceExhausted as i32,
                "LIMIT_EXCEEDED",
                c.to_string()
            )
        );
        // Watching one again restarts it; it does not count twice.
        device.send(watch(a, 0)).await;
        assert!(matches!(device.frame().await, Frame::Watching(_)));
        // A refused watch holds no slot.
        device
            .send(frame(client_frame::Frame::Unwatch(v1::Unwatch {
                conversation_id: b.to_string(),
            })))
            .await;
        device.send(watch(stranger, 9)).await;
        assert_eq!(device.error().await.reason, "NOT_A_MEMBER");
        device.send(watch(c, 0)).await;
        assert!(matches!(device.frame().await, Frame::Watching(_)));
        device.round_trip(1).await;
    }
    harness.stop().await;
}
