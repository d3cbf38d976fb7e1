//! The support desk through the gateway, over every transport: desk calls
//! answered by the desk's holder, desk signals among the live frames, and
//! agents' sessions reported to the desk. The desk is a test double
//! answering on the real bus subjects; sync, storage and fanout are those
//! of `common`.

// Helpers outside #[test] functions panic on the unexpected too.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use futures::StreamExt;
use natter_auth::Identity;
use natter_bus::{Bus, Outgoing};
use natter_contract::subjects;
use natter_core::{ConversationId, Role, Timestamp};
use natter_proto::bus::v1::{AgentSessions, DeskCommand, DeskOutcome, Failure, LiveUser};
use natter_proto::convert::timestamp_to_wire;
use natter_proto::status::reason;
use natter_proto::v1::{
    self, ClientFrame, client_frame, desk_answer, desk_call, server_frame::Frame,
};
use tonic::Code;

/// The desk's holder, as the gateway sees it: answers `GetDesk` with an
/// empty desk and an empty `client_call_id` (the gateway names the call),
/// refuses every other call, and keeps what it is asked and told.
#[derive(Default)]
struct FakeDesk {
    calls: Mutex<Vec<DeskCommand>>,
    sessions: Mutex<Vec<AgentSessions>>,
}

impl FakeDesk {
    async fn start(bus: Arc<dyn Bus>) -> Arc<Self> {
        let desk = Arc::new(Self::default());
        let calls = bus.subscribe(subjects::DESK_CALL, None).await.unwrap();
        let me = desk.clone();
        tokio::spawn(natter_contract::serve(
            bus.clone(),
            calls,
            16,
            move |command: DeskCommand| {
                let me = me.clone();
                async move { me.answer(command) }
            },
        ));
        let mut sessions = bus.subscribe(subjects::DESK_SESSIONS, None).await.unwrap();
        let me = desk.clone();
        tokio::spawn(async move {
            while let Some(incoming) = sessions.next().await {
                let told: AgentSessions = natter_contract::decode(&incoming.payload).unwrap();
                me.sessions.lock().unwrap().push(told);
            }
        });
        desk
    }

    fn answer(&self, command: DeskCommand) -> DeskOutcome {
        let call = command.call.clone().unwrap().call;
        self.calls.lock().unwrap().push(command);
        match call {
            Some(desk_call::Call::GetDesk(_)) => DeskOutcome {
                failure: None,
                answer: Some(v1::DeskAnswer {
                    client_call_id: String::new(),
                    answer: Some(desk_answer::Answer::GetDesk(v1::GetDeskResponse::default())),
                }),
            },
            _ => DeskOutcome {
                failure: Some(Failure {
                    code: Code::FailedPrecondition.into(),
                    reason: reason::FAILED_PRECONDITION.into(),
                    message: "nothing is offered to you".into(),
                    field: String::new(),
                }),
                answer: None,
            },
        }
    }

    /// What the gateway told the desk of agents' sessions, waiting until
    /// it has told `count` things.
    async fn told(&self, count: usize) -> Vec<AgentSessions> {
        eventually(&format!("{count} agent sessions messages"), || {
            self.sessions.lock().unwrap().len() >= count
        })
        .await;
        self.sessions.lock().unwrap().clone()
    }
}

fn agent(user: &str) -> Identity {
    Identity {
        role: Role::Agent,
        ..identity(user)
    }
}

fn desk(client_call_id: &str, call: Option<desk_call::Call>) -> ClientFrame {
    frame(client_frame::Frame::Desk(v1::DeskCall {
        client_call_id: client_call_id.into(),
        call,
    }))
}

fn get_desk(client_call_id: &str) -> ClientFrame {
    desk(
        client_call_id,
        Some(desk_call::Call::GetDesk(v1::GetDeskRequest {})),
    )
}

fn live_users(users: &[&str]) -> Vec<LiveUser> {
    users
        .iter()
        .map(|user| LiveUser {
            tenant_id: TENANT.into(),
            user_id: (*user).into(),
        })
        .collect()
}

#[tokio::test]
async fn desk_calls_get_the_desks_answer_or_refusal_under_the_calls_id() {
    let harness = Harness::start().await;
    let fake = FakeDesk::start(harness.bus.clone()).await;
    for (i, transport) in ALL.into_iter().enumerate() {
        let mut device = harness
            .open_as(transport, &agent("ann"), &format!("d{i}"), 0)
            .await;
        device.send(get_desk("c1")).await;
        let accept = desk_call::Call::AcceptOffer(v1::AcceptOfferRequest {
            conversation_id: ConversationId::generate().to_string(),
        });
        device.send(desk("c2", Some(accept))).await;
        match device.frame().await {
            Frame::DeskAnswer(answer) => {
                assert_eq!(answer.client_call_id, "c1", "{transport:?}");
                assert!(matches!(
                    answer.answer,
                    Some(desk_answer::Answer::GetDesk(_))
                ));
            }
            other => panic!("{transport:?}: expected a desk answer, got {other:?}"),
        }
        let refused = device.error().await;
        assert_eq!(
            (
                refused.code,
                refused.reason.as_str(),
                refused.client_message_id.as_str()
            ),
            (Code::FailedPrecondition as i32, "FAILED_PRECONDITION", "c2")
        );

        // A call without a call never reaches the desk.
        device.send(desk("c3", None)).await;
        let invalid = device.error().await;
        assert_eq!(
            (
                invalid.code,
                invalid.field.as_str(),
                invalid.client_message_id.as_str()
            ),
            (Code::InvalidArgument as i32, "call", "c3")
        );
        device.round_trip(1).await;
    }
    let calls = fake.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 6);
    let actor = calls[0].actor.clone().unwrap();
    assert_eq!(
        (actor.tenant_id.as_str(), actor.user_id.as_str(), actor.role),
        (TENANT, "ann", v1::Role::Agent as i32)
    );
    assert_eq!(calls[0].call.as_ref().unwrap().client_call_id, "c1");
    harness.stop().await;
}

#[tokio::test]
async fn without_a_desk_calls_are_unavailable_and_the_session_goes_on() {
    let harness = Harness::start().await;
    let mut device = harness.open(Transport::WsJson, "ann", "d1", 0).await;
    device.send(get_desk("c1")).await;
    let error = device.error().await;
    assert_eq!(
        (
            error.code,
            error.reason.as_str(),
            error.client_message_id.as_str()
        ),
        (Code::Unavailable as i32, "SERVICE_UNAVAILABLE", "c1")
    );
    device.round_trip(1).await;
    harness.stop().await;
}

#[tokio::test]
async fn desk_signals_reach_the_users_sessions_on_every_transport() {
    let harness = Harness::start().await;
    for (i, transport) in ALL.into_iter().enumerate() {
        let mut device = harness
            .open_as(transport, &agent("ann"), &format!("d{i}"), 0)
            .await;
        let signal = v1::DeskSignal {
            signal: Some(v1::desk_signal::Signal::Offered(v1::Offered {
                conversation_id: ConversationId::generate().to_string(),
                until: Some(timestamp_to_wire(Timestamp::from_millis(1_700_000_030_000))),
            })),
        };
        harness
            .sync
            .publish_live("ann", Frame::DeskSignal(signal.clone()))
            .await;
        match device.frame().await {
            Frame::DeskSignal(got) => assert_eq!(got, signal, "{transport:?}"),
            other => panic!("{transport:?}: expected a desk signal, got {other:?}"),
        }
    }
    harness.stop().await;
}

#[tokio::test]
async fn the_desk_hears_of_agents_first_and_last_sessions_and_of_all_when_it_asks() {
    let harness = Harness::start().await;
    let fake = FakeDesk::start(harness.bus.clone()).await;
    let ask = || async {
        harness
            .bus
            .publish(subjects::DESK_HELD, Outgoing::new(Vec::new()))
            .await
            .unwrap();
    };
    let told = |online: &[&str], offline: &[&str], full| AgentSessions {
        gateway: "gateway-test".into(),
        online: live_users(online),
        offline: live_users(offline),
        full,
    };

    // Only the first of ann's sessions counts; a customer is no agent.
    let first = harness
        .open_as(Transport::Grpc, &agent("ann"), "d1", 0)
        .await;
    let mut second = harness
        .open_as(Transport::WsJson, &agent("ann"), "d2", 0)
        .await;
    let mut customer = harness.open(Transport::WsProto, "carl", "d1", 0).await;
    second.round_trip(1).await;
    customer.round_trip(1).await;
    assert_eq!(fake.told(1).await, [told(&["ann"], &[], false)]);

    // Only the last of them does.
    drop(first);
    drop(second);
    assert_eq!(fake.told(2).await[1], told(&[], &["ann"], false));

    // A new holder hears of every agent here, of none too.
    ask().await;
    assert_eq!(fake.told(3).await[2], told(&[], &[], true));
    let _ann = harness
        .open_as(Transport::Grpc, &agent("ann"), "d1", 0)
        .await;
    let _bob = harness
        .open_as(Transport::WsJson, &agent("bob"), "d1", 0)
        .await;
    // Told at once or one by one.
    eventually("ann and bob online", || {
        let mut online: Vec<String> = fake.sessions.lock().unwrap()[3..]
            .iter()
            .flat_map(|told| told.online.iter().map(|u| u.user_id.clone()))
            .collect();
        online.sort();
        online == ["ann", "bob"]
    })
    .await;
    let before = fake.sessions.lock().unwrap().len();
    ask().await;
    let mut all = fake.told(before + 1).await.pop().unwrap();
    all.online.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    assert_eq!(all, told(&["ann", "bob"], &[], true));
    harness.stop().await;
}
