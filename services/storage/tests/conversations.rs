//! Conversations and membership through the real gRPC API.

mod common;

use common::{Harness, assert_invalid, assert_status, next_event, who};
use natter_contract::EVENTS;
use natter_core::{ConversationId, Event, MembershipKind, Role};
use natter_proto::v1::{
    AddMembersRequest, CreateConversationRequest, GetConversationRequest, ListConversationsRequest,
    ListMembersRequest, ListMessagesRequest, NewMember, RemoveMembersRequest,
};
use tonic::{Code, Request};

fn new_member(user: &str, role: Role) -> NewMember {
    NewMember {
        user_id: user.to_owned(),
        role: natter_proto::v1::Role::from(role).into(),
    }
}

#[tokio::test]
async fn create_get_and_list() {
    let h = Harness::start().await;
    let alice = who("acme", "alice", Role::Agent);
    let bob = who("acme", "bob", Role::Customer);
    let mut client = h.client();

    let created = client
        .create_conversation(h.req(
            &alice,
            CreateConversationRequest {
                subject: "Order 42".into(),
                members: vec![new_member("bob", Role::Customer)],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(created.tenant_id, "acme");
    assert_eq!(created.subject, "Order 42");
    assert_eq!(created.created_by, "alice");
    assert_eq!(created.member_count, 2, "the caller joins");
    assert_eq!(created.last_seq, 0);

    let got = client
        .get_conversation(h.req(
            &bob,
            GetConversationRequest {
                conversation_id: created.conversation_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(got, created);

    let members = client
        .list_members(h.req(
            &bob,
            ListMembersRequest {
                conversation_id: created.conversation_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let listed: Vec<(String, i32)> = members
        .members
        .iter()
        .map(|m| (m.user_id.clone(), m.role))
        .collect();
    assert_eq!(
        listed,
        [
            ("alice".to_owned(), natter_proto::v1::Role::Agent as i32),
            ("bob".to_owned(), natter_proto::v1::Role::Customer as i32)
        ]
    );
    assert!(members.next_page_token.is_empty());

    // Newest first, one page at a time.
    let newer = h.create(&alice, &[]).await;
    let first = client
        .list_conversations(h.req(
            &alice,
            ListConversationsRequest {
                page_size: 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.conversations.len(), 1);
    assert_eq!(first.conversations[0].conversation_id, newer.to_string());
    assert!(!first.next_page_token.is_empty());
    let second = client
        .list_conversations(h.req(
            &alice,
            ListConversationsRequest {
                page_size: 1,
                page_token: first.next_page_token,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.conversations, [created]);

    // Bob sees only the one he is in.
    let bobs = client
        .list_conversations(h.req(&bob, ListConversationsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bobs.conversations.len(), 1);
    assert!(bobs.next_page_token.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn services_act_without_joining_and_list_for_any_user() {
    let h = Harness::start().await;
    let crm = who("acme", "crm", Role::Service);
    let bob = who("acme", "bob", Role::Customer);
    let mut client = h.client();

    let id = h.create(&crm, &[("bob", Role::Customer)]).await;
    let conversation = client
        .get_conversation(h.req(
            &crm,
            GetConversationRequest {
                conversation_id: id.to_string(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(conversation.member_count, 1, "a service does not join");
    assert_eq!(conversation.created_by, "crm");

    let for_bob = client
        .list_conversations(h.req(
            &crm,
            ListConversationsRequest {
                user_id: "bob".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(for_bob.conversations[0].conversation_id, id.to_string());

    let denied = client
        .list_conversations(h.req(
            &bob,
            ListConversationsRequest {
                user_id: "carol".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_status(&denied, Code::PermissionDenied, "ROLE_NOT_ALLOWED");

    let bad = client
        .list_conversations(h.req(
            &crm,
            ListConversationsRequest {
                page_token: "garbage".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_invalid(&bad, "page_token");
    h.stop().await;
}

#[tokio::test]
async fn create_rejects_bad_input() {
    let h = Harness::start().await;
    let alice = who("acme", "alice", Role::Agent);
    let mut client = h.client();
    let cases = [
        (
            CreateConversationRequest {
                conversation_id: "not-a-uuid".into(),
                ..Default::default()
            },
            "conversation_id",
        ),
        (
            CreateConversationRequest {
                subject: "x".repeat(201),
                ..Default::default()
            },
            "subject",
        ),
        (
            CreateConversationRequest {
                members: vec![new_member("has space", Role::Customer)],
                ..Default::default()
            },
            "members.user_id",
        ),
        (
            CreateConversationRequest {
                members: vec![NewMember {
                    user_id: "bob".into(),
                    role: 0,
                }],
                ..Default::default()
            },
            "members.role",
        ),
        (
            CreateConversationRequest {
                members: vec![
                    new_member("bob", Role::Customer),
                    new_member("bob", Role::Agent),
                ],
                ..Default::default()
            },
            "members",
        ),
        (
            // The caller joins with the role its token gives it.
            CreateConversationRequest {
                members: vec![new_member("alice", Role::Service)],
                ..Default::default()
            },
            "members.role",
        ),
    ];
    for (request, field) in cases {
        let status = client
            .create_conversation(h.req(&alice, request))
            .await
            .unwrap_err();
        assert_invalid(&status, field);
    }
    // Nothing half-written.
    let listed = client
        .list_conversations(h.req(&alice, ListConversationsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.conversations.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_retried_create_returns_the_conversation_and_others_conflict() {
    let h = Harness::start().await;
    let alice = who("acme", "alice", Role::Agent);
    let mut client = h.client();
    let id = ConversationId::generate().to_string();
    let request = CreateConversationRequest {
        conversation_id: id.clone(),
        subject: "Refund".into(),
        members: vec![new_member("bob", Role::Customer)],
    };

    let first = client
        .create_conversation(h.req(&alice, request.clone()))
        .await
        .unwrap()
        .into_inner();
    let again = client
        .create_conversation(h.req(&alice, request.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    assert_eq!(first.conversation.unwrap().conversation_id, id);

    let other_subject = CreateConversationRequest {
        subject: "Something else".into(),
        ..request.clone()
    };
    let other_members = CreateConversationRequest {
        members: vec![new_member("carol", Role::Customer)],
        ..request.clone()
    };
    for (caller, request) in [
        (&alice, other_subject),
        (&alice, other_members),
        (&who("acme", "dave", Role::Agent), request.clone()),
    ] {
        let status = client
            .create_conversation(h.req(caller, request))
            .await
            .unwrap_err();
        assert_status(&status, Code::AlreadyExists, "CONFLICT");
    }

    // The same id in another tenant is another conversation.
    let elsewhere = client
        .create_conversation(h.req(&who("globex", "alice", Role::Agent), request))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(elsewhere.conversation.unwrap().tenant_id, "globex");

    // The retry published nothing twice: two Joined events, then the
    // other tenant's.
    let mut events = h.events("test").await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (tenant, event) = next_event(&mut events).await;
        seen.push((tenant.to_string(), event.key()));
    }
    assert_eq!(seen.iter().filter(|(t, _)| t == "acme").count(), 2);
    assert_eq!(seen[2].0, "globex");
    h.stop().await;
}

#[tokio::test]
async fn membership_follows_the_role_rules() {
    let h = Harness::start().await;
    let alice = who("acme", "alice", Role::Agent);
    let bob = who("acme", "bob", Role::Customer);
    let dave = who("acme", "dave", Role::Agent);
    let crm = who("acme", "crm", Role::Service);
    let mut client = h.client();
    let id = h.create(&alice, &[("bob", Role::Customer)]).await;
    let add = |users: &[&str]| AddMembersRequest {
        conversation_id: id.to_string(),
        members: users
            .iter()
            .map(|user| new_member(user, Role::Customer))
            .collect(),
    };
    let remove = |users: &[&str]| RemoveMembersRequest {
        conversation_id: id.to_string(),
        user_ids: users.iter().map(|user| (*user).to_owned()).collect(),
    };

    // A customer may neither add nor remove others.
    let status = client
        .add_members(h.req(&bob, add(&["carol"])))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "ROLE_NOT_ALLOWED");
    let status = client
        .remove_members(h.req(&bob, remove(&["alice"])))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "ROLE_NOT_ALLOWED");

    // An agent must be a member; a service need not be.
    let status = client
        .add_members(h.req(&dave, add(&["carol"])))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "NOT_A_MEMBER");
    let added = client
        .add_members(h.req(&alice, add(&["carol"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.changes.len(), 1);
    assert_eq!(added.changes[0].user_id, "carol");
    let again = client
        .add_members(h.req(&alice, add(&["carol"])))
        .await
        .unwrap()
        .into_inner();
    assert!(again.changes.is_empty(), "already a member");
    let by_service = client
        .add_members(h.req(&crm, add(&["erin"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_service.changes.len(), 1);
    let removed = client
        .remove_members(h.req(&alice, remove(&["erin"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.changes.len(), 1);

    // A customer may leave, and leaving again changes nothing.
    let left = client
        .remove_members(h.req(&bob, remove(&["bob"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(left.changes.len(), 1);
    assert_eq!(
        left.changes[0].kind,
        natter_proto::v1::MembershipChangeKind::Left as i32
    );
    let again = client
        .remove_members(h.req(&bob, remove(&["bob"])))
        .await
        .unwrap()
        .into_inner();
    assert!(again.changes.is_empty());
    let status = client
        .get_conversation(h.req(
            &bob,
            GetConversationRequest {
                conversation_id: id.to_string(),
            },
        ))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "NOT_A_MEMBER");

    // Each change was announced once, in order. The second add of carol
    // was re-published within the dedup window and dropped by the stream.
    let mut events = h.events("test").await;
    let mut changes = Vec::new();
    for _ in 0..6 {
        match next_event(&mut events).await.1 {
            Event::Membership(change) => {
                changes.push((change.user_id.to_string(), change.kind));
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    use MembershipKind::{Joined, Left};
    let expected = [
        ("bob", Joined),
        ("alice", Joined),
        ("carol", Joined),
        ("erin", Joined),
        ("erin", Left),
        ("bob", Left),
    ];
    let (created, rest) = changes.split_at(2);
    let mut created = created.to_vec();
    created.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        created,
        [("alice".to_owned(), Joined), ("bob".to_owned(), Joined)]
    );
    let rest: Vec<(&str, MembershipKind)> = rest.iter().map(|(u, k)| (u.as_str(), *k)).collect();
    assert_eq!(rest, expected[2..]);
    h.stop().await;
}

#[tokio::test]
async fn outsiders_are_denied_and_other_tenants_see_nothing() {
    let h = Harness::start().await;
    let alice = who("acme", "alice", Role::Agent);
    let id = h.create(&alice, &[]).await;
    let mut client = h.client();
    let get = || GetConversationRequest {
        conversation_id: id.to_string(),
    };
    let messages = || ListMessagesRequest {
        conversation_id: id.to_string(),
        ..Default::default()
    };
    let members = || ListMembersRequest {
        conversation_id: id.to_string(),
        ..Default::default()
    };

    let frank = who("acme", "frank", Role::Customer);
    let status = client
        .get_conversation(h.req(&frank, get()))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "NOT_A_MEMBER");
    let status = client
        .list_messages(h.req(&frank, messages()))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "NOT_A_MEMBER");
    let status = client
        .list_members(h.req(&frank, members()))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "NOT_A_MEMBER");
    let status = h.send(&frank, id, "c-1", "hello").await.unwrap_err();
    assert_status(&status, Code::PermissionDenied, "NOT_A_MEMBER");

    // Another tenant, even its service, is told the conversation does not
    // exist, never that it is forbidden.
    for outsider in [
        who("globex", "alice", Role::Agent),
        who("globex", "crm", Role::Service),
    ] {
        let status = client
            .get_conversation(h.req(&outsider, get()))
            .await
            .unwrap_err();
        assert_status(&status, Code::NotFound, "CONVERSATION_NOT_FOUND");
        let status = client
            .list_messages(h.req(&outsider, messages()))
            .await
            .unwrap_err();
        assert_status(&status, Code::NotFound, "CONVERSATION_NOT_FOUND");
        let status = client
            .list_members(h.req(&outsider, members()))
            .await
            .unwrap_err();
        assert_status(&status, Code::NotFound, "CONVERSATION_NOT_FOUND");
        let status = h.send(&outsider, id, "c-1", "hello").await.unwrap_err();
        assert_status(&status, Code::NotFound, "CONVERSATION_NOT_FOUND");
    }
    let crm = who("globex", "crm", Role::Service);
    let status = client
        .add_members(h.req(
            &crm,
            AddMembersRequest {
                conversation_id: id.to_string(),
                members: vec![new_member("mallory", Role::Agent)],
            },
        ))
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "CONVERSATION_NOT_FOUND");
    h.stop().await;
}

#[tokio::test]
async fn calls_without_a_valid_token_are_unauthenticated() {
    let h = Harness::start().await;
    let mut client = h.client();
    let status = client
        .list_conversations(Request::new(ListConversationsRequest::default()))
        .await
        .unwrap_err();
    assert_status(&status, Code::Unauthenticated, "TOKEN_INVALID");

    let mut forged = Request::new(ListConversationsRequest::default());
    forged
        .metadata_mut()
        .insert("authorization", "Bearer not.a.jwt".parse().unwrap());
    let status = client.list_conversations(forged).await.unwrap_err();
    assert_status(&status, Code::Unauthenticated, "TOKEN_INVALID");
    h.stop().await;
}

/// As if the process had died after the store write and before the
/// publish: the EVENTS stream loses what it held, and the caller retries.
#[tokio::test]
async fn retries_publish_membership_events_lost_after_the_store_write() {
    let h = Harness::start().await;
    let alice = who("acme", "alice", Role::Agent);
    let mut client = h.client();
    let create = CreateConversationRequest {
        conversation_id: ConversationId::generate().to_string(),
        subject: "Lost".into(),
        members: vec![new_member("bob", Role::Customer)],
    };
    let add = AddMembersRequest {
        conversation_id: create.conversation_id.clone(),
        members: vec![new_member("carol", Role::Customer)],
    };
    client
        .create_conversation(h.req(&alice, create.clone()))
        .await
        .unwrap();
    client
        .add_members(h.req(&alice, add.clone()))
        .await
        .unwrap();

    h.bus.delete_stream(EVENTS.name).await.unwrap();
    h.bus
        .ensure_stream(&EVENTS.config(&h.topology))
        .await
        .unwrap();

    client
        .create_conversation(h.req(&alice, create))
        .await
        .unwrap();
    let again = client.add_members(h.req(&alice, add)).await.unwrap();
    assert!(again.into_inner().changes.is_empty());

    let mut events = h.events("after-loss").await;
    let mut joined = Vec::new();
    for _ in 0..3 {
        let Event::Membership(change) = next_event(&mut events).await.1 else {
            panic!("expected a membership change");
        };
        assert_eq!(change.kind, MembershipKind::Joined);
        joined.push(change.user_id.to_string());
    }
    joined.sort();
    assert_eq!(joined, ["alice", "bob", "carol"]);
    h.stop().await;
}
