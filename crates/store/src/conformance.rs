//! The conformance suite every store implementation must pass, so the
//! embedded default and the CQL store behave the same to the services.
//!
//! Each check takes a factory that opens a store with the given limits.
//! Stores may be shared between checks: every check works in a tenant and
//! conversations of its own. Instantiate all checks with
//! [`store_conformance!`](crate::store_conformance).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_core::{
    Attachment, Button, ButtonAction, ClientMessageId, Content, Conversation, ConversationId,
    Cursor, Device, DeviceId, Event, Limits, MembershipChange, MembershipKind, Message, MessageId,
    NewConversation, NewMessage, Postback, QuickReplies, QuickReply, ReadMarker, Role, Seq,
    Template, TenantId, Timestamp, UserId,
};

use crate::{
    Appended, ConversationStore, MessageRange, PageRequest, StoreError, SyncStore, UpdateBatch,
};

/// A store under test: both halves of the storage boundary.
pub trait Store: ConversationStore + SyncStore {}
impl<T: ConversationStore + SyncStore> Store for T {}

/// Expands to one `#[tokio::test]` per conformance check. `$factory` is an
/// `async fn(Limits) -> impl Store` in the calling crate.
#[macro_export]
macro_rules! store_conformance {
    ($factory:path) => {
        $crate::store_conformance!(@each $factory;
            create_and_get,
            tenants_may_reuse_a_conversation_id,
            create_rejects_bad_input,
            append_assigns_gap_free_seqs,
            append_is_idempotent,
            append_rejects_bad_input_and_writes_nothing,
            concurrent_appenders_stay_gap_free,
            concurrent_retries_store_once,
            message_pages_meet_at_their_boundaries,
            content_round_trips,
            members_are_added_and_removed_once,
            member_limit_is_all_or_nothing,
            conversations_list_newest_first,
            read_marker_only_rises,
            update_log_is_gap_free,
            trimmed_log_requires_resync,
            devices_keep_their_cursor,
        );
    };
    (@each $factory:path; $($check:ident,)*) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                $crate::conformance::$check(async |limits| $factory(limits).await).await;
            }
        )*
    };
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", ConversationId::generate().as_uuid().simple())
}

fn tenant() -> TenantId {
    TenantId::new(unique("t")).expect("valid tenant id")
}

fn user(name: &str) -> UserId {
    UserId::new(name).expect("valid user id")
}

fn at(millis: i64) -> Timestamp {
    Timestamp::from_millis(1_800_000_000_000 + millis)
}

fn conversation(tenant: &TenantId, members: &[(&str, Role)]) -> NewConversation {
    NewConversation {
        id: ConversationId::generate(),
        tenant_id: tenant.clone(),
        subject: "Order #1234".into(),
        created_by: user(members.first().map_or("creator", |(name, _)| *name)),
        created_at: at(0),
        members: members
            .iter()
            .map(|(name, role)| (user(name), *role))
            .collect(),
    }
}

fn text(conversation: ConversationId, sender: &str, key: &str, body: &str) -> NewMessage {
    with_content(conversation, sender, key, Content::Text(body.into()))
}

fn with_content(
    conversation: ConversationId,
    sender: &str,
    key: &str,
    content: Content,
) -> NewMessage {
    NewMessage {
        id: MessageId::generate(),
        conversation_id: conversation,
        sender_id: user(sender),
        client_message_id: ClientMessageId::new(key).expect("valid client message id"),
        sent_at: at(1),
        content,
    }
}

async fn created<S: Store>(store: &S, tenant: &TenantId, members: &[(&str, Role)]) -> Conversation {
    store
        .create_conversation(&conversation(tenant, members))
        .await
        .expect("create conversation")
}

async fn append_texts<S: Store>(store: &S, tenant: &TenantId, id: ConversationId, count: u64) {
    for i in 1..=count {
        let appended = store
            .append_message(
                tenant,
                text(id, "alice", &format!("m{i}"), &format!("hi {i}")),
            )
            .await
            .expect("append");
        assert_eq!(appended.message.seq, Seq::new(i));
    }
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq.get()).collect()
}

fn assert_not_found<T: std::fmt::Debug>(result: Result<T, StoreError>) {
    assert!(
        matches!(result, Err(StoreError::NotFound { .. })),
        "expected NotFound, got {result:?}"
    );
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T, StoreError>, field: &str) {
    match result {
        Err(StoreError::Invalid(invalid)) => assert_eq!(invalid.field, field),
        other => panic!("expected Invalid({field}), got {other:?}"),
    }
}

/// Retries an append the way a client does while the store reports a
/// concurrent attempt in progress.
async fn append_retrying<S: Store>(store: &S, tenant: &TenantId, message: NewMessage) -> Appended {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.append_message(tenant, message.clone()).await {
            Ok(appended) => return appended,
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("append failed: {e}"),
        }
    }
}

pub async fn create_and_get<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let new = conversation(&tenant, &[("alice", Role::Customer), ("bob", Role::Agent)]);
    let created = store.create_conversation(&new).await.expect("create");
    assert_eq!(created.id, new.id);
    assert_eq!(created.member_count, 2);
    assert_eq!(created.last_seq, Seq::ZERO);

    let got = store.conversation(&tenant, new.id).await.expect("get");
    assert_eq!(got, created);
    assert_eq!(got.subject, "Order #1234");

    assert_not_found(store.conversation(&self::tenant(), new.id).await);
    assert_not_found(
        store
            .conversation(&tenant, ConversationId::generate())
            .await,
    );
    assert!(matches!(
        store.create_conversation(&new).await,
        Err(StoreError::Conflict(_))
    ));
    let bob = store
        .member(&tenant, new.id, &user("bob"))
        .await
        .expect("member")
        .expect("bob is a member");
    assert_eq!(bob.role, Role::Agent);
    assert_eq!(bob.read_seq, Seq::ZERO);
}

/// Conversation ids are unique within a tenant only: another tenant may
/// hold the same id, and neither learns anything of the other's.
pub async fn tenants_may_reuse_a_conversation_id<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let (first, second) = (tenant(), tenant());
    // Bob is in both: the same user id in the same conversation id, told
    // apart by the tenant alone.
    let ours = conversation(&first, &[("alice", Role::Customer), ("bob", Role::Agent)]);
    let theirs = NewConversation {
        id: ours.id,
        subject: "Invoice 77".into(),
        ..conversation(&second, &[("carol", Role::Customer), ("bob", Role::Bot)])
    };
    let id = ours.id;
    let ours_created = store.create_conversation(&ours).await.expect("create");
    let theirs_created = store
        .create_conversation(&theirs)
        .await
        .expect("another tenant's id is no conflict");
    assert_eq!(theirs_created.tenant_id, second);
    assert_eq!(theirs_created.member_count, 2);

    let ours_sent = store
        .append_message(&first, text(id, "bob", "hello", "ours"))
        .await
        .expect("append");
    let theirs_sent = store
        .append_message(&second, text(id, "bob", "hello", "theirs"))
        .await
        .expect("append");
    for (tenant, created, sent, subject, content, members) in [
        (
            &first,
            ours_created,
            ours_sent,
            "Order #1234",
            "ours",
            [("alice", Role::Customer), ("bob", Role::Agent)],
        ),
        (
            &second,
            theirs_created,
            theirs_sent,
            "Invoice 77",
            "theirs",
            [("bob", Role::Bot), ("carol", Role::Customer)],
        ),
    ] {
        assert!(
            !sent.duplicate,
            "{tenant}: the idempotency key is per tenant"
        );
        assert_eq!(sent.message.seq, Seq::new(1), "{tenant}");
        assert_eq!(sent.message.content, Content::Text(content.into()));

        let got = store.conversation(tenant, id).await.expect("get");
        assert_eq!(got.subject, subject);
        assert_eq!(
            got,
            Conversation {
                last_seq: Seq::new(1),
                ..created
            }
        );

        let listed = store
            .list_members(
                tenant,
                id,
                PageRequest {
                    after: None,
                    size: 10,
                },
            )
            .await
            .expect("list members");
        let mut listed: Vec<_> = listed
            .items
            .into_iter()
            .map(|m| (m.user_id.as_str().to_owned(), m.role))
            .collect();
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        let members: Vec<_> = members
            .iter()
            .map(|(name, role)| ((*name).to_owned(), *role))
            .collect();
        assert_eq!(listed, members, "{tenant}");

        let messages = store
            .list_messages(
                tenant,
                id,
                MessageRange::After {
                    after: Seq::ZERO,
                    limit: 10,
                },
            )
            .await
            .expect("list messages");
        assert_eq!(messages, vec![sent.message], "{tenant}");
    }
    assert!(
        store
            .member(&first, id, &user("carol"))
            .await
            .expect("member")
            .is_none()
    );
    assert!(
        store
            .member(&second, id, &user("alice"))
            .await
            .expect("member")
            .is_none()
    );

    for (tenant, name, subjects) in [
        (&first, "alice", vec!["Order #1234"]),
        (&first, "bob", vec!["Order #1234"]),
        (&first, "carol", vec![]),
        (&second, "alice", vec![]),
        (&second, "bob", vec!["Invoice 77"]),
        (&second, "carol", vec!["Invoice 77"]),
    ] {
        let page = store
            .list_conversations(
                tenant,
                &user(name),
                PageRequest {
                    after: None,
                    size: 10,
                },
            )
            .await
            .expect("list conversations");
        assert!(
            page.items
                .iter()
                .all(|c| c.id == id && &c.tenant_id == tenant)
        );
        assert_eq!(
            page.items
                .iter()
                .map(|c| c.subject.as_str())
                .collect::<Vec<_>>(),
            subjects,
            "{name} in {tenant}"
        );
    }

    let again = store.create_conversation(&ours).await;
    assert!(
        matches!(again, Err(StoreError::Conflict(_))),
        "got {again:?}"
    );
    let unchanged = store.conversation(&first, id).await.expect("get");
    assert_eq!(unchanged.subject, "Order #1234");
    assert_eq!(unchanged.member_count, 2);
}

pub async fn create_rejects_bad_input<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let mut long = conversation(&tenant, &[("alice", Role::Customer)]);
    long.subject = "x".repeat(Limits::default().max_subject_chars + 1);
    assert_invalid(store.create_conversation(&long).await, "subject");
    assert_not_found(store.conversation(&tenant, long.id).await);

    let twice = conversation(
        &tenant,
        &[("alice", Role::Customer), ("alice", Role::Agent)],
    );
    assert_invalid(store.create_conversation(&twice).await, "members");
    assert_not_found(store.conversation(&tenant, twice.id).await);
}

pub async fn append_assigns_gap_free_seqs<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let conv = created(&store, &tenant, &[("alice", Role::Customer)]).await;
    append_texts(&store, &tenant, conv.id, 30).await;

    let all = store
        .list_messages(
            &tenant,
            conv.id,
            MessageRange::After {
                after: Seq::ZERO,
                limit: 100,
            },
        )
        .await
        .expect("list");
    assert_eq!(seqs(&all), (1..=30).collect::<Vec<_>>());
    let ids: BTreeSet<_> = all.iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), 30, "message ids are unique");
    let stored = store.conversation(&tenant, conv.id).await.expect("get");
    assert_eq!(stored.last_seq, Seq::new(30));
}

pub async fn append_is_idempotent<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let conv = created(
        &store,
        &tenant,
        &[("alice", Role::Customer), ("bob", Role::Agent)],
    )
    .await;

    let first = store
        .append_message(&tenant, text(conv.id, "alice", "k1", "hello"))
        .await
        .expect("first");
    assert!(!first.duplicate);
    // A retry mints a new id; the store must answer with the first one.
    let retry = store
        .append_message(&tenant, text(conv.id, "alice", "k1", "hello"))
        .await
        .expect("retry");
    assert!(retry.duplicate);
    assert_eq!(retry.message, first.message);

    // The key is per sender: bob may reuse alice's client id.
    let bobs = store
        .append_message(&tenant, text(conv.id, "bob", "k1", "hi"))
        .await
        .expect("bob");
    assert!(!bobs.duplicate);
    assert_eq!(bobs.message.seq, Seq::new(2));

    let all = store
        .list_messages(
            &tenant,
            conv.id,
            MessageRange::After {
                after: Seq::ZERO,
                limit: 10,
            },
        )
        .await
        .expect("list");
    assert_eq!(seqs(&all), vec![1, 2]);
}

pub async fn append_rejects_bad_input_and_writes_nothing<S: Store>(
    make: impl AsyncFn(Limits) -> S,
) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let conv = created(&store, &tenant, &[("alice", Role::Customer)]).await;

    assert_invalid(
        store
            .append_message(&tenant, text(conv.id, "alice", "e", "   "))
            .await,
        "content.text",
    );
    let oversized = "x".repeat(Limits::default().max_message_bytes + 1);
    assert_invalid(
        store
            .append_message(&tenant, text(conv.id, "alice", "o", &oversized))
            .await,
        "content",
    );
    assert_not_found(
        store
            .append_message(
                &tenant,
                text(ConversationId::generate(), "alice", "u", "hi"),
            )
            .await,
    );
    assert_not_found(
        store
            .append_message(&self::tenant(), text(conv.id, "alice", "x", "hi"))
            .await,
    );
    assert_not_found(
        store
            .list_messages(
                &tenant,
                ConversationId::generate(),
                MessageRange::After {
                    after: Seq::ZERO,
                    limit: 10,
                },
            )
            .await,
    );

    let all = store
        .list_messages(
            &tenant,
            conv.id,
            MessageRange::After {
                after: Seq::ZERO,
                limit: 10,
            },
        )
        .await
        .expect("list");
    assert!(all.is_empty(), "rejected sends stored nothing: {all:?}");
    // The rejected keys are not burnt: a valid send with one goes through.
    let ok = store
        .append_message(&tenant, text(conv.id, "alice", "e", "fixed"))
        .await
        .expect("append");
    assert_eq!(ok.message.seq, Seq::new(1));
}

pub async fn concurrent_appenders_stay_gap_free<S: Store>(make: impl AsyncFn(Limits) -> S) {
    const WRITERS: u64 = 8;
    const EACH: u64 = 25;
    let store = Arc::new(make(Limits::default()).await);
    let tenant = tenant();
    let conv = created(&*store, &tenant, &[("alice", Role::Customer)]).await;

    let writers = (0..WRITERS).map(|w| {
        let (store, tenant) = (store.clone(), tenant.clone());
        tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..EACH {
                let message = text(conv.id, "alice", &format!("w{w}-{i}"), "hi");
                mine.push(append_retrying(&*store, &tenant, message).await.message.seq);
            }
            mine
        })
    });
    for mine in futures::future::join_all(writers).await {
        let mine = mine.expect("writer task");
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "a writer's own sends stay in order"
        );
    }

    let all = store
        .list_messages(
            &tenant,
            conv.id,
            MessageRange::After {
                after: Seq::ZERO,
                limit: 1000,
            },
        )
        .await
        .expect("list");
    assert_eq!(seqs(&all), (1..=WRITERS * EACH).collect::<Vec<_>>());
}

pub async fn concurrent_retries_store_once<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = Arc::new(make(Limits::default()).await);
    let tenant = tenant();
    let conv = created(&*store, &tenant, &[("alice", Role::Customer)]).await;

    let attempts = (0..8).map(|_| {
        let (store, tenant) = (store.clone(), tenant.clone());
        tokio::spawn(async move {
            append_retrying(&*store, &tenant, text(conv.id, "alice", "same", "once")).await
        })
    });
    let results: Vec<Appended> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.expect("attempt task"))
        .collect();
    assert_eq!(results.iter().filter(|a| !a.duplicate).count(), 1);
    assert!(results.iter().all(|a| a.message == results[0].message));

    let all = store
        .list_messages(
            &tenant,
            conv.id,
            MessageRange::After {
                after: Seq::ZERO,
                limit: 10,
            },
        )
        .await
        .expect("list");
    assert_eq!(seqs(&all), vec![1]);
}

pub async fn message_pages_meet_at_their_boundaries<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let conv = created(&store, &tenant, &[("alice", Role::Customer)]).await;
    append_texts(&store, &tenant, conv.id, 25).await;
    let page = async |range| {
        seqs(
            &store
                .list_messages(&tenant, conv.id, range)
                .await
                .expect("list"),
        )
    };

    assert_eq!(
        page(MessageRange::After {
            after: Seq::ZERO,
            limit: 10
        })
        .await,
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        page(MessageRange::After {
            after: Seq::new(10),
            limit: 10
        })
        .await,
        (11..=20).collect::<Vec<_>>()
    );
    assert_eq!(
        page(MessageRange::After {
            after: Seq::new(20),
            limit: 10
        })
        .await,
        (21..=25).collect::<Vec<_>>()
    );
    assert!(
        page(MessageRange::After {
            after: Seq::new(25),
            limit: 10
        })
        .await
        .is_empty()
    );
    assert!(
        page(MessageRange::After {
            after: Seq::new(99),
            limit: 10
        })
        .await
        .is_empty()
    );

    assert_eq!(
        page(MessageRange::Before {
            before: None,
            limit: 10
        })
        .await,
        (16..=25).collect::<Vec<_>>()
    );
    assert_eq!(
        page(MessageRange::Before {
            before: Some(Seq::new(16)),
            limit: 10
        })
        .await,
        (6..=15).collect::<Vec<_>>()
    );
    assert_eq!(
        page(MessageRange::Before {
            before: Some(Seq::new(6)),
            limit: 10
        })
        .await,
        (1..=5).collect::<Vec<_>>()
    );
    assert!(
        page(MessageRange::Before {
            before: Some(Seq::new(1)),
            limit: 10
        })
        .await
        .is_empty()
    );
    assert_eq!(
        page(MessageRange::Before {
            before: Some(Seq::new(99)),
            limit: 3
        })
        .await,
        vec![23, 24, 25]
    );
}

fn every_content() -> Vec<Content> {
    vec![
        Content::Text("héllo wörld ✓".into()),
        Content::Attachment(Attachment {
            url: "https://cdn.example/invoice.pdf".into(),
            mime_type: "application/pdf".into(),
            size_bytes: 48_213,
            file_name: "invoice.pdf".into(),
            thumbnail: Some(vec![0xff, 0x00, 0x7f].into()),
        }),
        Content::Attachment(Attachment {
            url: "https://cdn.example/a.png".into(),
            mime_type: "image/png".into(),
            size_bytes: 1,
            file_name: String::new(),
            thumbnail: None,
        }),
        Content::QuickReplies(QuickReplies {
            text: "How can we help?".into(),
            replies: vec![
                QuickReply {
                    title: "Billing".into(),
                    payload: "BILLING".into(),
                },
                QuickReply {
                    title: "Shipping".into(),
                    payload: "SHIPPING".into(),
                },
            ],
        }),
        Content::Template(Template {
            text: "Your order shipped".into(),
            buttons: vec![
                Button {
                    title: "Track".into(),
                    action: ButtonAction::OpenUrl {
                        url: "https://shop.example/track/1".into(),
                    },
                },
                Button {
                    title: "Return".into(),
                    action: ButtonAction::Postback {
                        payload: "RETURN_1".into(),
                    },
                },
            ],
        }),
        Content::Postback(Postback {
            title: "Billing".into(),
            payload: "BILLING".into(),
        }),
    ]
}

pub async fn content_round_trips<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let conv = created(&store, &tenant, &[("alice", Role::Customer)]).await;
    let mut sent = Vec::new();
    for (i, content) in every_content().into_iter().enumerate() {
        let message = with_content(conv.id, "alice", &format!("c{i}"), content);
        sent.push(
            store
                .append_message(&tenant, message)
                .await
                .expect("append")
                .message,
        );
    }
    let read = store
        .list_messages(
            &tenant,
            conv.id,
            MessageRange::After {
                after: Seq::ZERO,
                limit: 100,
            },
        )
        .await
        .expect("list");
    assert_eq!(read, sent);
}

pub async fn members_are_added_and_removed_once<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let conv = created(&store, &tenant, &[("alice", Role::Customer)]).await;

    let added = store
        .add_members(
            &tenant,
            conv.id,
            &[(user("bob"), Role::Agent), (user("alice"), Role::Customer)],
            at(5),
        )
        .await
        .expect("add");
    assert_eq!(
        added,
        vec![MembershipChange {
            conversation_id: conv.id,
            user_id: user("bob"),
            role: Role::Agent,
            kind: MembershipKind::Joined,
            at: at(5),
        }]
    );
    let bots: Vec<_> = (0..25)
        .map(|i| (user(&format!("bot{i:02}")), Role::Bot))
        .collect();
    assert_eq!(
        store
            .add_members(&tenant, conv.id, &bots, at(6))
            .await
            .expect("add")
            .len(),
        25
    );
    assert_eq!(
        store
            .conversation(&tenant, conv.id)
            .await
            .expect("get")
            .member_count,
        27
    );

    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_members(
                &tenant,
                conv.id,
                PageRequest {
                    after: after.clone(),
                    size: 10,
                },
            )
            .await
            .expect("list members");
        assert!(page.items.len() <= 10);
        listed.extend(page.items.iter().map(|m| m.user_id.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let unique: BTreeSet<_> = listed.iter().cloned().collect();
    assert_eq!(listed.len(), 27, "each member listed exactly once");
    assert_eq!(unique.len(), 27);

    let removed = store
        .remove_members(&tenant, conv.id, &[user("bob"), user("nobody")], at(7))
        .await
        .expect("remove");
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].kind, MembershipKind::Left);
    assert_eq!(removed[0].user_id, user("bob"));
    assert!(
        store
            .member(&tenant, conv.id, &user("bob"))
            .await
            .expect("member")
            .is_none()
    );
    assert_eq!(
        store
            .conversation(&tenant, conv.id)
            .await
            .expect("get")
            .member_count,
        26
    );

    assert_not_found(
        store
            .add_members(&tenant, ConversationId::generate(), &bots, at(8))
            .await,
    );
    assert_not_found(
        store
            .add_members(&self::tenant(), conv.id, &bots, at(8))
            .await,
    );
}

pub async fn member_limit_is_all_or_nothing<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits {
        max_members: 3,
        ..Limits::default()
    })
    .await;
    let tenant = tenant();
    let conv = created(
        &store,
        &tenant,
        &[("alice", Role::Customer), ("bob", Role::Agent)],
    )
    .await;
    let result = store
        .add_members(
            &tenant,
            conv.id,
            &[(user("c1"), Role::Bot), (user("c2"), Role::Bot)],
            at(1),
        )
        .await;
    assert!(
        matches!(result, Err(StoreError::LimitExceeded(_))),
        "got {result:?}"
    );
    assert!(
        store
            .member(&tenant, conv.id, &user("c1"))
            .await
            .expect("member")
            .is_none()
    );
    assert_eq!(
        store
            .conversation(&tenant, conv.id)
            .await
            .expect("get")
            .member_count,
        2
    );

    let too_big = conversation(
        &tenant,
        &[
            ("a", Role::Customer),
            ("b", Role::Agent),
            ("c", Role::Bot),
            ("d", Role::Bot),
        ],
    );
    let result = store.create_conversation(&too_big).await;
    assert!(
        matches!(result, Err(StoreError::LimitExceeded(_))),
        "got {result:?}"
    );
    assert_not_found(store.conversation(&tenant, too_big.id).await);
}

pub async fn conversations_list_newest_first<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            created(
                &store,
                &tenant,
                &[("carol", Role::Customer), ("dave", Role::Agent)],
            )
            .await
            .id,
        );
    }
    let page = store
        .list_conversations(
            &tenant,
            &user("carol"),
            PageRequest {
                after: None,
                size: 2,
            },
        )
        .await
        .expect("list");
    assert_eq!(
        page.items.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1]]
    );
    let next = page.next.expect("a second page");
    let rest = store
        .list_conversations(
            &tenant,
            &user("carol"),
            PageRequest {
                after: Some(next),
                size: 2,
            },
        )
        .await
        .expect("list");
    assert_eq!(
        rest.items.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    assert!(rest.next.is_none());

    let other_tenant = store
        .list_conversations(
            &self::tenant(),
            &user("carol"),
            PageRequest {
                after: None,
                size: 10,
            },
        )
        .await
        .expect("list");
    assert!(other_tenant.items.is_empty());

    store
        .remove_members(&tenant, ids[1], &[user("carol")], at(1))
        .await
        .expect("remove");
    let after_leaving = store
        .list_conversations(
            &tenant,
            &user("carol"),
            PageRequest {
                after: None,
                size: 10,
            },
        )
        .await
        .expect("list");
    assert_eq!(
        after_leaving.items.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![ids[2], ids[0]]
    );
}

pub async fn read_marker_only_rises<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let conv = created(
        &store,
        &tenant,
        &[("alice", Role::Customer), ("bob", Role::Agent)],
    )
    .await;
    append_texts(&store, &tenant, conv.id, 5).await;

    let marker = store
        .mark_read(&tenant, conv.id, &user("bob"), Seq::new(3))
        .await
        .expect("read");
    assert_eq!(
        marker,
        Some(ReadMarker {
            conversation_id: conv.id,
            user_id: user("bob"),
            seq: Seq::new(3)
        })
    );
    assert_eq!(
        store
            .mark_read(&tenant, conv.id, &user("bob"), Seq::new(2))
            .await
            .expect("read"),
        None
    );
    assert_eq!(
        store
            .mark_read(&tenant, conv.id, &user("bob"), Seq::new(3))
            .await
            .expect("read"),
        None
    );
    let beyond = store
        .mark_read(&tenant, conv.id, &user("bob"), Seq::new(6))
        .await;
    assert!(
        matches!(beyond, Err(StoreError::FailedPrecondition(_))),
        "got {beyond:?}"
    );
    assert_not_found(
        store
            .mark_read(&tenant, conv.id, &user("eve"), Seq::new(1))
            .await,
    );
    let bob = store
        .member(&tenant, conv.id, &user("bob"))
        .await
        .expect("member")
        .expect("bob");
    assert_eq!(bob.read_seq, Seq::new(3));
}

fn events(conversation: ConversationId) -> Vec<Event> {
    let mut events: Vec<Event> = every_content()
        .into_iter()
        .enumerate()
        .map(|(i, content)| {
            let seq = Seq::new(i as u64 + 1);
            Event::Message(with_content(conversation, "alice", &format!("e{i}"), content).at(seq))
        })
        .collect();
    events.push(Event::Read(ReadMarker {
        conversation_id: conversation,
        user_id: user("bob"),
        seq: Seq::new(2),
    }));
    events.push(Event::Membership(MembershipChange {
        conversation_id: conversation,
        user_id: user("bob"),
        role: Role::Agent,
        kind: MembershipKind::Left,
        at: at(9),
    }));
    events
}

async fn updates_after<S: Store>(
    store: &S,
    tenant: &TenantId,
    who: &UserId,
    after: u64,
    limit: u32,
) -> UpdateBatch {
    store
        .read_updates(tenant, who, Cursor::new(after), limit)
        .await
        .expect("read updates")
}

pub async fn update_log_is_gap_free<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let alice = user("alice");
    assert_eq!(
        store.log_head(&tenant, &alice).await.expect("head"),
        Cursor::ZERO
    );
    assert_eq!(
        updates_after(&store, &tenant, &alice, 0, 10).await,
        UpdateBatch::Updates(vec![])
    );

    let events = events(ConversationId::generate());
    for (i, event) in events.iter().enumerate() {
        store
            .append_update(&tenant, &alice, Cursor::new(i as u64 + 1), event)
            .await
            .expect("append");
    }
    let n = events.len() as u64;
    assert_eq!(
        store.log_head(&tenant, &alice).await.expect("head"),
        Cursor::new(n)
    );

    let taken = store
        .append_update(&tenant, &alice, Cursor::new(n), &events[0])
        .await;
    assert!(
        matches!(taken, Err(StoreError::Conflict(_))),
        "got {taken:?}"
    );
    let gap = store
        .append_update(&tenant, &alice, Cursor::new(n + 2), &events[0])
        .await;
    assert!(matches!(gap, Err(StoreError::Conflict(_))), "got {gap:?}");

    let UpdateBatch::Updates(first) = updates_after(&store, &tenant, &alice, 0, 3).await else {
        panic!("expected updates")
    };
    assert_eq!(
        first.iter().map(|u| u.cursor.get()).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let UpdateBatch::Updates(rest) = updates_after(&store, &tenant, &alice, 3, 100).await else {
        panic!("expected updates")
    };
    let read: Vec<Event> = first.into_iter().chain(rest).map(|u| u.event).collect();
    assert_eq!(read, events, "every event kind round-trips in order");
    assert_eq!(
        updates_after(&store, &tenant, &alice, n, 10).await,
        UpdateBatch::Updates(vec![])
    );

    // Logs are per user and per tenant.
    assert_eq!(
        store.log_head(&tenant, &user("bob")).await.expect("head"),
        Cursor::ZERO
    );
    assert_eq!(
        store.log_head(&self::tenant(), &alice).await.expect("head"),
        Cursor::ZERO
    );
}

pub async fn trimmed_log_requires_resync<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let alice = user("alice");
    let event = Event::Read(ReadMarker {
        conversation_id: ConversationId::generate(),
        user_id: alice.clone(),
        seq: Seq::new(1),
    });
    for i in 1..=10 {
        store
            .append_update(&tenant, &alice, Cursor::new(i), &event)
            .await
            .expect("append");
    }
    store
        .trim_updates(&tenant, &alice, Cursor::new(5))
        .await
        .expect("trim");

    let head = Cursor::new(10);
    assert_eq!(
        updates_after(&store, &tenant, &alice, 0, 10).await,
        UpdateBatch::ResyncRequired { head }
    );
    assert_eq!(
        updates_after(&store, &tenant, &alice, 4, 10).await,
        UpdateBatch::ResyncRequired { head }
    );
    let UpdateBatch::Updates(kept) = updates_after(&store, &tenant, &alice, 5, 10).await else {
        panic!("updates after the trim point are kept")
    };
    assert_eq!(
        kept.iter().map(|u| u.cursor.get()).collect::<Vec<_>>(),
        (6..=10).collect::<Vec<_>>()
    );
    store
        .append_update(&tenant, &alice, Cursor::new(11), &event)
        .await
        .expect("append after trim");
}

pub async fn devices_keep_their_cursor<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let alice = user("alice");
    let device = |id: &str, label: &str, seen: i64| Device {
        tenant_id: tenant.clone(),
        user_id: alice.clone(),
        device_id: DeviceId::new(id).expect("device id"),
        label: label.into(),
        cursor: Cursor::new(999),
        last_seen: at(seen),
        revoked: false,
    };
    let phone = store
        .touch_device(&device("phone", "ios", 1))
        .await
        .expect("touch");
    assert_eq!(
        phone.cursor,
        Cursor::ZERO,
        "a new device starts at the beginning"
    );
    let id = phone.device_id.clone();

    store
        .save_cursor(&tenant, &alice, &id, Cursor::new(5))
        .await
        .expect("save");
    store
        .save_cursor(&tenant, &alice, &id, Cursor::new(3))
        .await
        .expect("save lower");
    let again = store
        .touch_device(&device("phone", "ios 18", 2))
        .await
        .expect("touch");
    assert_eq!(again.cursor, Cursor::new(5));
    assert_eq!(again.label, "ios 18");
    assert_eq!(again.last_seen, at(2));

    for name in ["tablet", "web"] {
        store
            .touch_device(&device(name, "x", 3))
            .await
            .expect("touch");
    }
    let first = store
        .list_devices(
            &tenant,
            &alice,
            PageRequest {
                after: None,
                size: 2,
            },
        )
        .await
        .expect("list");
    let second = store
        .list_devices(
            &tenant,
            &alice,
            PageRequest {
                after: first.next.clone(),
                size: 2,
            },
        )
        .await
        .expect("list");
    let names: Vec<String> = first
        .items
        .iter()
        .chain(&second.items)
        .map(|d| d.device_id.to_string())
        .collect();
    assert_eq!(names, vec!["phone", "tablet", "web"]);
    assert!(second.next.is_none());

    store
        .revoke_device(&tenant, &alice, &id)
        .await
        .expect("revoke");
    let revoked = store
        .device(&tenant, &alice, &id)
        .await
        .expect("device")
        .expect("still listed");
    assert!(revoked.revoked);
    let touch = store.touch_device(&device("phone", "ios", 4)).await;
    assert!(
        matches!(touch, Err(StoreError::FailedPrecondition(_))),
        "got {touch:?}"
    );
    assert!(
        store
            .device(&tenant, &user("bob"), &id)
            .await
            .expect("device")
            .is_none()
    );
    assert!(
        store
            .device(&self::tenant(), &alice, &id)
            .await
            .expect("device")
            .is_none()
    );
}
