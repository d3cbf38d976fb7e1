//! Storage's bus responders, asked the way sync, the gateway and fanout ask
//! them: `natter_contract::request` on the real in-process bus.

mod common;

use std::time::Duration;

use common::{Harness, assert_status, next_event, who};
use natter_contract::{request, subjects};
use natter_core::{ConversationId, Event, MembershipKind, Role};
use natter_proto::bus::v1::{
    Actor, AddMembersCommand, AddMembersOutcome, MarkReadCommand, MarkReadOutcome, MembersPage,
    MembersQuery,
};
use natter_proto::status::from_failure;
use natter_proto::v1::NewMember;
use tonic::Code;

const TIMEOUT: Duration = Duration::from_secs(10);

fn actor(tenant: &str, user: &str, role: natter_proto::v1::Role) -> Option<Actor> {
    Some(Actor {
        tenant_id: tenant.into(),
        user_id: user.into(),
        role: role.into(),
    })
}

async fn mark_read(h: &Harness, command: MarkReadCommand) -> MarkReadOutcome {
    request(h.bus.as_ref(), subjects::MARK_READ, &command, TIMEOUT)
        .await
        .expect("an answer from storage")
}

async fn add_members(h: &Harness, command: AddMembersCommand) -> AddMembersOutcome {
    request(h.bus.as_ref(), subjects::ADD_MEMBERS, &command, TIMEOUT)
        .await
        .expect("an answer from storage")
}

#[tokio::test]
async fn mark_read_raises_the_watermark_and_announces_it() {
    let h = Harness::start().await;
    let alice = who("acme", "alice", Role::Agent);
    let id = h.create(&alice, &[("bob", Role::Customer)]).await;
    for n in 1..=3 {
        h.send(&alice, id, &format!("c-{n}"), "hi").await.unwrap();
    }
    use natter_proto::v1::Role::{Agent, Customer, Service};
    let read = |actor, seq| MarkReadCommand {
        actor,
        conversation_id: id.to_string(),
        seq,
    };

    let outcome = mark_read(&h, read(actor("acme", "bob", Customer), 2)).await;
    assert_eq!((outcome.failure, outcome.seq), (None, 2));
    // Lower or equal: nothing moves, and the answer says where it is.
    let outcome = mark_read(&h, read(actor("acme", "bob", Customer), 1)).await;
    assert_eq!((outcome.failure, outcome.seq), (None, 2));
    let outcome = mark_read(&h, read(actor("acme", "bob", Customer), 3)).await;
    assert_eq!((outcome.failure, outcome.seq), (None, 3));

    let failures = [
        (
            read(actor("acme", "bob", Customer), 4),
            Code::FailedPrecondition,
            "FAILED_PRECONDITION",
        ),
        (
            read(actor("acme", "frank", Customer), 1),
            Code::PermissionDenied,
            "NOT_A_MEMBER",
        ),
        // A service has no read marker of its own.
        (
            read(actor("acme", "crm", Service), 1),
            Code::PermissionDenied,
            "NOT_A_MEMBER",
        ),
        (
            read(actor("globex", "bob", Customer), 1),
            Code::NotFound,
            "CONVERSATION_NOT_FOUND",
        ),
        (
            MarkReadCommand {
                conversation_id: ConversationId::generate().to_string(),
                ..read(actor("acme", "alice", Agent), 1)
            },
            Code::NotFound,
            "CONVERSATION_NOT_FOUND",
        ),
        (
            MarkReadCommand {
                conversation_id: "nope".into(),
                ..read(actor("acme", "alice", Agent), 1)
            },
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (read(None, 1), Code::InvalidArgument, "INVALID_FIELD"),
    ];
    for (command, code, reason) in failures {
        let outcome = mark_read(&h, command).await;
        assert_status(
            &from_failure(outcome.failure.expect("a failure")),
            code,
            reason,
        );
    }

    // Two raises, two read events, after the joins and the messages.
    let mut events = h.events("test").await;
    let mut reads = Vec::new();
    for _ in 0..7 {
        if let Event::Read(marker) = next_event(&mut events).await.1 {
            reads.push((marker.user_id.to_string(), marker.seq.get()));
        }
    }
    assert_eq!(reads, [("bob".to_owned(), 2), ("bob".to_owned(), 3)]);
    h.stop().await;
}

#[tokio::test]
async fn members_come_in_pages() {
    let h = Harness::start().await;
    let crm = who("acme", "crm", Role::Service);
    let id = h
        .create(
            &crm,
            &[
                ("u1", Role::Customer),
                ("u2", Role::Customer),
                ("u3", Role::Agent),
                ("u4", Role::Bot),
                ("u5", Role::Agent),
            ],
        )
        .await;
    let query = |tenant: &str, after: &str| MembersQuery {
        tenant_id: tenant.into(),
        conversation_id: id.to_string(),
        after_user_id: after.into(),
        page_size: 2,
    };

    let mut all = Vec::new();
    let mut after = String::new();
    loop {
        let page: MembersPage = request(
            h.bus.as_ref(),
            subjects::MEMBERS,
            &query("acme", &after),
            TIMEOUT,
        )
        .await
        .unwrap();
        assert!(page.failure.is_none(), "{page:?}");
        assert!(page.user_ids.len() <= 2);
        all.extend(page.user_ids);
        if page.next_after_user_id.is_empty() {
            break;
        }
        after = page.next_after_user_id;
    }
    assert_eq!(all, ["u1", "u2", "u3", "u4", "u5"]);

    for (query, code, reason) in [
        (
            query("globex", ""),
            Code::NotFound,
            "CONVERSATION_NOT_FOUND",
        ),
        (
            MembersQuery {
                conversation_id: ConversationId::generate().to_string(),
                ..query("acme", "")
            },
            Code::NotFound,
            "CONVERSATION_NOT_FOUND",
        ),
        (query("", ""), Code::InvalidArgument, "INVALID_FIELD"),
        (
            query("acme", "has space"),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
    ] {
        let page: MembersPage = request(h.bus.as_ref(), subjects::MEMBERS, &query, TIMEOUT)
            .await
            .unwrap();
        assert_status(
            &from_failure(page.failure.expect("a failure")),
            code,
            reason,
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn add_members_follows_the_rules_of_the_grpc_call_and_announces_once() {
    let h = Harness::start().await;
    let alice = who("acme", "alice", Role::Agent);
    let id = h.create(&alice, &[("bob", Role::Customer)]).await;
    use natter_proto::v1::Role::{Agent, Customer, Service};
    let add = |actor, user: &str, role: natter_proto::v1::Role| AddMembersCommand {
        actor,
        conversation_id: id.to_string(),
        members: vec![NewMember {
            user_id: user.into(),
            role: role.into(),
        }],
    };

    // The desk, a service, makes an agent a member; asking again is a no-op.
    for _ in 0..2 {
        let outcome = add_members(&h, add(actor("acme", "desk", Service), "dave", Agent)).await;
        assert_eq!(outcome.failure, None);
    }
    let failures = [
        (
            add(actor("acme", "bob", Customer), "carol", Customer),
            Code::PermissionDenied,
            "ROLE_NOT_ALLOWED",
        ),
        (
            add(actor("acme", "erin", Agent), "carol", Customer),
            Code::PermissionDenied,
            "NOT_A_MEMBER",
        ),
        (
            add(actor("acme", "alice", Agent), "crm", Service),
            Code::PermissionDenied,
            "ROLE_NOT_ALLOWED",
        ),
        (
            add(actor("globex", "desk", Service), "carol", Customer),
            Code::NotFound,
            "CONVERSATION_NOT_FOUND",
        ),
        (
            AddMembersCommand {
                conversation_id: "nope".into(),
                ..add(actor("acme", "desk", Service), "carol", Customer)
            },
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            add(actor("acme", "desk", Service), "has space", Customer),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            add(None, "carol", Customer),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
    ];
    for (command, code, reason) in failures {
        let outcome = add_members(&h, command).await;
        assert_status(
            &from_failure(outcome.failure.expect("a failure")),
            code,
            reason,
        );
    }

    // After the two joins of the create, dave joined once: the repeated
    // add was published again within the dedup window and dropped.
    let mut events = h.events("test").await;
    for _ in 0..2 {
        next_event(&mut events).await;
    }
    let Event::Membership(change) = next_event(&mut events).await.1 else {
        panic!("expected a membership change");
    };
    assert_eq!(
        (change.user_id.as_str(), change.kind, change.role),
        ("dave", MembershipKind::Joined, Role::Agent)
    );
    h.stop().await;
}
