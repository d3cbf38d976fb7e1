//! The conformance suite every store implementation must pass, so the
//! embedded default and the CQL store behave the same to the services.
//!
//! Each check takes a factory that opens a store with the given limits.
//! Stores may be shared between checks: every check works in a tenant and
//! conversations of its own. Instantiate all checks with
//! [`store_conformance!`](crate::store_conformance).

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use natter_core::{
    Attachment, Button, ButtonAction, ClientMessageId, Content, Conversation, ConversationId,
    Cursor, Device, DeviceId, Event, FieldKind, Form, FormField, FormReply, Lifecycle, Limits,
    MembershipChange, MembershipKind, Message, MessageId, NewConversation, NewMessage, Owner,
    Postback, Priority, QuickReplies, QuickReply, ReadMarker, Role, Seq, Status, Tag, TeamId,
    Template, TenantId, Timestamp, Update, UserId,
};

use crate::{
    Announcement, ConversationStore, DeskKind, DeskRecord, DeskStore, DeskWrite, Lease,
    MAX_ANNOUNCEMENT_BYTES, MAX_DESK_RECORD_BYTES, MessageRange, Page, PageRequest, StoreError,
    SyncStore, UpdateBatch,
};

/// A store under test: every trait of the storage boundary.
pub trait Store: ConversationStore + SyncStore + DeskStore {}
impl<T: ConversationStore + SyncStore + DeskStore> Store for T {}

/// Expands to one `#[tokio::test]` per conformance check. `$factory` is an
/// `async fn(Limits) -> impl Store` in the calling crate.
#[macro_export]
macro_rules! store_conformance {
    ($factory:path) => {
        $crate::store_conformance!(@each $factory;
            create_and_get,
            tenants_may_reuse_a_conversation_id,
            create_rejects_bad_input,
            written_messages_read_back_in_order,
            a_write_spans_conversations_and_tenants,
            writes_cross_a_bucket_boundary,
            a_rewritten_seq_is_replaced,
            an_activity_sets_the_conversation_lifecycle,
            write_rejects_bad_input_and_writes_nothing,
            announcements_are_kept_until_forgotten,
            a_bad_announcement_is_refused_with_its_write,
            message_pages_meet_at_their_boundaries,
            content_round_trips,
            members_are_added_and_removed_once,
            member_limit_is_all_or_nothing,
            conversations_list_newest_first,
            read_marker_only_rises,
            written_updates_read_back_in_order,
            an_update_write_spans_users_and_tenants,
            update_writes_cross_a_bucket_boundary,
            a_rewritten_cursor_is_replaced,
            update_write_rejects_bad_input_and_writes_nothing,
            trimmed_log_requires_resync,
            devices_keep_their_cursor,
            leases_pass_from_owner_to_owner,
            scopes_lease_their_partitions_apart,
            one_of_racing_acquirers_wins,
            desk_records_round_trip_and_are_replaced,
            desk_records_are_deleted,
            desk_kinds_and_tenants_are_apart,
            desk_pages_meet_at_their_boundaries,
            desk_write_rejects_bad_input_and_writes_nothing,
            desk_writes_together_land_together,
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

/// The version the checks write with: a clock reading, in microseconds.
const VERSION: u64 = 1_764_633_600_000_000;

/// Text message `seq` of a conversation, numbered as a sequencer would.
fn numbered(conversation: ConversationId, seq: u64) -> Message {
    text(
        conversation,
        "alice",
        &format!("m{seq}"),
        &format!("hi {seq}"),
    )
    .at(Seq::new(seq))
}

fn of(tenant: &TenantId, messages: &[Message]) -> Vec<(TenantId, Message)> {
    messages
        .iter()
        .map(|m| (tenant.clone(), m.clone()))
        .collect()
}

/// Writes `messages` of `tenant` in one call.
async fn write<S: Store>(store: &S, tenant: &TenantId, messages: &[Message]) {
    store
        .write_messages(&of(tenant, messages), None, VERSION)
        .await
        .expect("write messages");
}

/// Writes text messages `seqs` in one call and returns them.
async fn write_texts<S: Store>(
    store: &S,
    tenant: &TenantId,
    id: ConversationId,
    seqs: RangeInclusive<u64>,
) -> Vec<Message> {
    let messages: Vec<Message> = seqs.map(|seq| numbered(id, seq)).collect();
    write(store, tenant, &messages).await;
    messages
}

/// Every message of a conversation, page by page.
async fn all_messages<S: Store>(store: &S, tenant: &TenantId, id: ConversationId) -> Vec<Message> {
    let mut all: Vec<Message> = Vec::new();
    loop {
        let after = all.last().map_or(Seq::ZERO, |m| m.seq);
        let page = store
            .list_messages(tenant, id, MessageRange::After { after, limit: 1000 })
            .await
            .expect("list messages");
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

async fn last_seq<S: Store>(store: &S, tenant: &TenantId, id: ConversationId) -> u64 {
    store
        .conversation(tenant, id)
        .await
        .expect("get conversation")
        .last_seq
        .get()
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

    let ours_sent = text(id, "bob", "hello", "ours").at(Seq::new(1));
    let theirs_sent = text(id, "bob", "hello", "theirs").at(Seq::new(1));
    write(&store, &first, std::slice::from_ref(&ours_sent)).await;
    write(&store, &second, std::slice::from_ref(&theirs_sent)).await;
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
        assert_eq!(sent.content, Content::Text(content.into()));

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
        assert_eq!(messages, vec![sent], "{tenant}");
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

pub async fn written_messages_read_back_in_order<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let conv = created(&store, &tenant, &[("alice", Role::Customer)]).await;
    store
        .write_messages(&[], None, VERSION)
        .await
        .expect("an empty write");

    let mut written = write_texts(&store, &tenant, conv.id, 1..=1).await;
    assert_eq!(last_seq(&store, &tenant, conv.id).await, 1);
    written.extend(write_texts(&store, &tenant, conv.id, 2..=5).await);
    written.extend(write_texts(&store, &tenant, conv.id, 6..=30).await);

    let all = all_messages(&store, &tenant, conv.id).await;
    assert_eq!(all, written, "stored as written, in seq order");
    let ids: BTreeSet<_> = all.iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), 30, "message ids are unique");
    assert_eq!(last_seq(&store, &tenant, conv.id).await, 30);
}

/// One write carries the messages of many conversations, of many tenants
/// (as a sequencer's partition does), and each lands where it belongs.
pub async fn a_write_spans_conversations_and_tenants<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let (first, second) = (tenant(), tenant());
    let ours = created(&store, &first, &[("alice", Role::Customer)])
        .await
        .id;
    let other = created(&store, &first, &[("alice", Role::Customer)])
        .await
        .id;
    // The second tenant holds a conversation of the same id.
    store
        .create_conversation(&NewConversation {
            id: ours,
            ..conversation(&second, &[("alice", Role::Customer)])
        })
        .await
        .expect("create");

    let batch: Vec<(TenantId, Message)> = [
        (&first, ours, 1),
        (&second, ours, 1),
        (&first, other, 1),
        (&first, ours, 2),
        (&second, ours, 2),
        (&first, ours, 3),
        (&first, other, 2),
        (&second, ours, 3),
        (&first, ours, 4),
    ]
    .into_iter()
    .map(|(tenant, id, seq)| (tenant.clone(), numbered(id, seq)))
    .collect();
    store
        .write_messages(&batch, None, VERSION)
        .await
        .expect("write");

    for (tenant, id, count) in [(&first, ours, 4), (&first, other, 2), (&second, ours, 3)] {
        let expected: Vec<Message> = batch
            .iter()
            .filter(|(t, m)| t == tenant && m.conversation_id == id)
            .map(|(_, m)| m.clone())
            .collect();
        assert_eq!(expected.len(), count);
        assert_eq!(
            all_messages(&store, tenant, id).await,
            expected,
            "{tenant} {id}"
        );
        assert_eq!(last_seq(&store, tenant, id).await, count as u64);
    }
}

/// The CQL store keeps 1,024 seqs to a partition; a write that crosses
/// from one to the next, and every read around the boundary, must look as
/// if there were none.
pub async fn writes_cross_a_bucket_boundary<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let conv = created(&store, &tenant, &[("alice", Role::Customer)]).await;
    let mut written = write_texts(&store, &tenant, conv.id, 1..=1000).await;
    written.extend(write_texts(&store, &tenant, conv.id, 1001..=1019).await);
    assert_eq!(last_seq(&store, &tenant, conv.id).await, 1019);
    written.extend(write_texts(&store, &tenant, conv.id, 1020..=1030).await);
    assert_eq!(last_seq(&store, &tenant, conv.id).await, 1030);
    assert_eq!(all_messages(&store, &tenant, conv.id).await, written);

    let page = async |range| {
        seqs(
            &store
                .list_messages(&tenant, conv.id, range)
                .await
                .expect("list"),
        )
    };
    for (range, expected) in [
        (
            MessageRange::After {
                after: Seq::new(1015),
                limit: 100,
            },
            (1016..=1030).collect::<Vec<_>>(),
        ),
        (
            MessageRange::After {
                after: Seq::new(1022),
                limit: 3,
            },
            vec![1023, 1024, 1025],
        ),
        (
            MessageRange::After {
                after: Seq::new(1023),
                limit: 1,
            },
            vec![1024],
        ),
        (
            MessageRange::Before {
                before: Some(Seq::new(1026)),
                limit: 3,
            },
            vec![1023, 1024, 1025],
        ),
        (
            MessageRange::Before {
                before: Some(Seq::new(1024)),
                limit: 2,
            },
            vec![1022, 1023],
        ),
        (
            MessageRange::Before {
                before: None,
                limit: 12,
            },
            (1019..=1030).collect(),
        ),
        (
            MessageRange::Before {
                before: Some(Seq::new(5000)),
                limit: 300,
            },
            (731..=1030).collect(),
        ),
    ] {
        assert_eq!(page(range).await, expected, "{range:?}");
    }

    let marked = store
        .mark_read(&tenant, conv.id, &user("alice"), Seq::new(1030))
        .await
        .expect("mark read");
    assert_eq!(marked.map(|m| m.seq), Some(Seq::new(1030)));
    let beyond = store
        .mark_read(&tenant, conv.id, &user("alice"), Seq::new(1031))
        .await;
    assert!(
        matches!(beyond, Err(StoreError::FailedPrecondition(_))),
        "got {beyond:?}"
    );
    write_texts(&store, &tenant, conv.id, 1031..=1031).await;
    assert_eq!(last_seq(&store, &tenant, conv.id).await, 1031);
}

/// A new owner numbers from what is stored, so it may write seqs a deposed
/// owner wrote too; its write, with a higher version, replaces theirs.
pub async fn a_rewritten_seq_is_replaced<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let conv = created(&store, &tenant, &[("alice", Role::Customer)]).await;
    let first = write_texts(&store, &tenant, conv.id, 1..=3).await;
    let again: Vec<Message> = (2..=4)
        .map(|seq| text(conv.id, "alice", &format!("r{seq}"), "again").at(Seq::new(seq)))
        .collect();
    store
        .write_messages(&of(&tenant, &again), None, VERSION + 1)
        .await
        .expect("write again");
    let mut expected = vec![first[0].clone()];
    expected.extend(again);
    assert_eq!(all_messages(&store, &tenant, conv.id).await, expected);
    assert_eq!(last_seq(&store, &tenant, conv.id).await, 4);
}

/// A conversation's lifecycle is its newest activity's, written with it:
/// messages around an activity leave it be, a later activity replaces it,
/// and each conversation of a write keeps its own.
pub async fn an_activity_sets_the_conversation_lifecycle<S: Store>(
    make: impl AsyncFn(Limits) -> S,
) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let conv = created(&store, &tenant, &[("alice", Role::Customer)]).await;
    let other = created(&store, &tenant, &[("bob", Role::Customer)]).await;
    assert_eq!(conv.lifecycle, Lifecycle::default());
    let lifecycle = |status, tag: &str| Lifecycle {
        status,
        priority: Priority::High,
        tags: [Tag::new(tag).expect("valid tag")].into(),
        assignee: Some(user("ann")),
        team: Some(TeamId::new("billing").expect("valid team")),
        owner: Owner::Inbox,
        control_requested: false,
    };
    let activity =
        |id, key: &str, lifecycle| with_content(id, "ann", key, Content::Activity(lifecycle));
    let resolved = lifecycle(Status::Resolved, "refund");
    let pending = lifecycle(Status::Pending, "vip");
    let write = vec![
        text(conv.id, "alice", "m1", "hi").at(Seq::new(1)),
        activity(conv.id, "a1", resolved.clone()).at(Seq::new(2)),
        text(conv.id, "ann", "m2", "bye").at(Seq::new(3)),
        activity(other.id, "a2", pending.clone()).at(Seq::new(1)),
    ];
    store
        .write_messages(&of(&tenant, &write), None, VERSION)
        .await
        .expect("write with activities");
    let read = |id| store.conversation(&tenant, id);
    assert_eq!(read(conv.id).await.expect("read").lifecycle, resolved);
    assert_eq!(read(other.id).await.expect("read").lifecycle, pending);
    assert_eq!(read(conv.id).await.expect("read").last_seq, Seq::new(3));
    assert_eq!(all_messages(&store, &tenant, conv.id).await[1], write[1]);
    // A later write's activity replaces it; two in one write, the newest.
    let open = Lifecycle::default();
    let later = vec![
        activity(conv.id, "a3", pending.clone()).at(Seq::new(4)),
        activity(conv.id, "a4", open.clone()).at(Seq::new(5)),
    ];
    store
        .write_messages(&of(&tenant, &later), None, VERSION + 1)
        .await
        .expect("write again");
    assert_eq!(read(conv.id).await.expect("read").lifecycle, open);
    assert_eq!(
        store.lifecycle(&tenant, conv.id).await.expect("lifecycle"),
        open
    );
    let unknown = ConversationId::generate();
    assert_eq!(
        store.lifecycle(&tenant, unknown).await.expect("lifecycle"),
        Lifecycle::default()
    );
    let listed = store
        .list_conversations(
            &tenant,
            &user("bob"),
            PageRequest {
                after: None,
                size: 10,
            },
        )
        .await
        .expect("list");
    assert_eq!(listed.items[0].lifecycle, pending);
}

pub async fn write_rejects_bad_input_and_writes_nothing<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let conv = created(&store, &tenant, &[("alice", Role::Customer)]).await;
    let good = numbered(conv.id, 1);
    let oversized = "x".repeat(Limits::default().max_message_bytes + 1);
    for (bad, field) in [
        (
            Message {
                content: Content::Text("   ".into()),
                ..numbered(conv.id, 2)
            },
            "content.text",
        ),
        (
            Message {
                content: Content::Text(oversized),
                ..numbered(conv.id, 2)
            },
            "content",
        ),
        (numbered(conv.id, 0), "seq"),
        (numbered(conv.id, u64::MAX), "seq"),
    ] {
        let batch = of(&tenant, &[good.clone(), bad]);
        assert_invalid(store.write_messages(&batch, None, VERSION).await, field);
    }
    // A CQL timestamp is signed.
    assert_invalid(
        store
            .write_messages(&of(&tenant, std::slice::from_ref(&good)), None, u64::MAX)
            .await,
        "version",
    );
    assert!(
        all_messages(&store, &tenant, conv.id).await.is_empty(),
        "a refused write stores nothing, not even its valid messages"
    );
    assert_eq!(last_seq(&store, &tenant, conv.id).await, 0);
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
    write(&store, &tenant, std::slice::from_ref(&good)).await;
    assert_eq!(all_messages(&store, &tenant, conv.id).await, vec![good]);
}

/// What a write of `partition` at `version` told fanout.
fn announcement(partition: u32, version: u64, events: &[u8]) -> Announcement {
    Announcement {
        partition,
        version,
        events: events.to_vec(),
    }
}

/// Writes `messages` of `tenant` with `announcement`, at its version.
async fn write_announced<S: Store>(
    store: &S,
    tenant: &TenantId,
    messages: &[Message],
    announcement: &Announcement,
) {
    store
        .write_messages(
            &of(tenant, messages),
            Some(announcement),
            announcement.version,
        )
        .await
        .expect("write messages with an announcement");
}

async fn kept<S: Store>(store: &S, partition: u32, after: u64, limit: u32) -> Vec<Announcement> {
    store
        .announcements(partition, after, limit)
        .await
        .expect("read announcements")
}

/// A sequencer write keeps what it announced beside its messages until
/// fanout has taken it, and the partition's next holder reads what is
/// kept, page by page. A write of no messages keeps its announcement too:
/// that is how changes other than messages keep theirs.
pub async fn announcements_are_kept_until_forgotten<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let id = created(&store, &tenant, &[("alice", Role::Customer)])
        .await
        .id;
    let none: Vec<Announcement> = Vec::new();
    let (p, q) = (partition(), partition());
    let every_byte: Vec<u8> = (0..=255).collect();
    let one = announcement(p, VERSION, &every_byte);
    let two = announcement(p, VERSION + 1, b"two");
    let three = announcement(p, VERSION + 3, b"");
    let elsewhere = announcement(q, VERSION + 4, b"elsewhere");
    write_announced(&store, &tenant, &[numbered(id, 1), numbered(id, 2)], &one).await;
    write_announced(&store, &tenant, &[numbered(id, 3)], &two).await;
    store
        .write_messages(&of(&tenant, &[numbered(id, 4)]), None, VERSION + 2)
        .await
        .expect("write messages without an announcement");
    write_announced(&store, &tenant, &[], &three).await;
    write_announced(&store, &tenant, &[numbered(id, 5)], &elsewhere).await;
    assert_eq!(
        seqs(&all_messages(&store, &tenant, id).await),
        (1..=5).collect::<Vec<_>>()
    );

    assert_eq!(
        kept(&store, p, 0, 10).await,
        [one.clone(), two.clone(), three.clone()],
        "oldest first, and none of the write without one"
    );
    assert_eq!(
        kept(&store, p, VERSION, 10).await,
        [two.clone(), three.clone()],
        "above `after` only"
    );
    assert_eq!(kept(&store, p, VERSION + 3, 10).await, none);
    assert_eq!(kept(&store, p, u64::MAX, 10).await, none);
    assert_eq!(kept(&store, p, 0, 2).await, [one.clone(), two.clone()]);
    assert_eq!(
        kept(&store, p, VERSION + 1, 1).await,
        std::slice::from_ref(&three)
    );
    assert_eq!(kept(&store, p, 0, 0).await, none);
    assert_eq!(
        kept(&store, q, 0, 10).await,
        std::slice::from_ref(&elsewhere),
        "each partition keeps its own"
    );
    assert_eq!(kept(&store, partition(), 0, 10).await, none);

    store
        .forget_announcements(p, VERSION + 1)
        .await
        .expect("forget");
    assert_eq!(
        kept(&store, p, 0, 10).await,
        std::slice::from_ref(&three),
        "forgotten up to and including `through`"
    );
    assert_eq!(
        kept(&store, q, 0, 10).await,
        std::slice::from_ref(&elsewhere)
    );
    for through in [VERSION + 1, VERSION + 2] {
        store
            .forget_announcements(p, through)
            .await
            .expect("forget what is forgotten already");
    }
    assert_eq!(kept(&store, p, 0, 10).await, std::slice::from_ref(&three));
    let four = announcement(p, VERSION + 5, b"four");
    write_announced(&store, &tenant, &[numbered(id, 6)], &four).await;
    assert_eq!(
        kept(&store, p, 0, 10).await,
        [three, four],
        "a write after a forget is kept"
    );
    store
        .forget_announcements(p, u64::MAX)
        .await
        .expect("forget the rest");
    assert_eq!(kept(&store, p, 0, 10).await, none);
    store
        .forget_announcements(partition(), VERSION)
        .await
        .expect("forget where none are kept");
    assert_eq!(last_seq(&store, &tenant, id).await, 6, "messages stay");
}

pub async fn a_bad_announcement_is_refused_with_its_write<S: Store>(
    make: impl AsyncFn(Limits) -> S,
) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let id = created(&store, &tenant, &[("alice", Role::Customer)])
        .await
        .id;
    let p = partition();
    let messages = of(&tenant, &[numbered(id, 1)]);
    let too_large = vec![7; MAX_ANNOUNCEMENT_BYTES + 1];
    for (bad, version, field) in [
        // Keyed by the write's version, so it must be that.
        (
            announcement(p, VERSION + 1, b"x"),
            VERSION,
            "announcement.version",
        ),
        // Reads start above a version: one of 0 would never be read.
        (announcement(p, 0, b"x"), 0, "announcement.version"),
        (
            announcement(p, VERSION, &too_large),
            VERSION,
            "announcement.events",
        ),
        (announcement(p, u64::MAX, b"x"), u64::MAX, "version"),
    ] {
        assert_invalid(
            store.write_messages(&messages, Some(&bad), version).await,
            field,
        );
    }
    assert!(
        all_messages(&store, &tenant, id).await.is_empty(),
        "a refused write stores none of its messages"
    );
    assert!(
        kept(&store, p, 0, 10).await.is_empty(),
        "nor its announcement"
    );

    let largest = announcement(p, VERSION, &too_large[1..]);
    write_announced(&store, &tenant, &[numbered(id, 1)], &largest).await;
    assert_eq!(kept(&store, p, 0, 10).await, [largest], "kept whole");
}

pub async fn message_pages_meet_at_their_boundaries<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let conv = created(&store, &tenant, &[("alice", Role::Customer)]).await;
    write_texts(&store, &tenant, conv.id, 1..=25).await;
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
        Content::Form(Form {
            form_id: "lead".into(),
            text: "How can we reach you?".into(),
            fields: vec![FormField {
                name: "email".into(),
                label: "Email".into(),
                kind: FieldKind::Email,
                required: true,
            }],
        }),
        Content::FormReply(FormReply {
            form_id: "lead".into(),
            values: [("email".to_owned(), "ann@example.com".to_owned())].into(),
        }),
    ]
}

pub async fn content_round_trips<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let conv = created(&store, &tenant, &[("alice", Role::Customer)]).await;
    let sent: Vec<Message> = every_content()
        .into_iter()
        .enumerate()
        .map(|(i, content)| {
            with_content(conv.id, "alice", &format!("c{i}"), content).at(Seq::new(i as u64 + 1))
        })
        .collect();
    write(&store, &tenant, &sent).await;
    assert_eq!(all_messages(&store, &tenant, conv.id).await, sent);
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
    write_texts(&store, &tenant, conv.id, 1..=5).await;

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

/// `event` at `cursor` of `who`'s log in `tenant`, as a write names it.
fn entry(tenant: &TenantId, who: &UserId, cursor: u64, event: Event) -> (TenantId, UserId, Update) {
    let cursor = Cursor::new(cursor);
    (tenant.clone(), who.clone(), Update { cursor, event })
}

/// A read marker of `who` at `seq`: a small event, distinct per seq.
fn marker(who: &UserId, seq: u64) -> Event {
    Event::Read(ReadMarker {
        conversation_id: ConversationId::generate(),
        user_id: who.clone(),
        seq: Seq::new(seq),
    })
}

/// Writes markers at `cursors` of `who`'s log in one call, and returns
/// them as updates.
async fn write_markers<S: Store>(
    store: &S,
    tenant: &TenantId,
    who: &UserId,
    cursors: RangeInclusive<u64>,
    version: u64,
) -> Vec<Update> {
    let written: Vec<_> = cursors
        .map(|cursor| entry(tenant, who, cursor, marker(who, cursor)))
        .collect();
    store
        .write_updates(&written, version)
        .await
        .expect("write updates");
    written.into_iter().map(|(_, _, update)| update).collect()
}

/// Every update of a log, page by page.
async fn all_updates<S: Store>(store: &S, tenant: &TenantId, who: &UserId) -> Vec<Update> {
    let mut all: Vec<Update> = Vec::new();
    loop {
        let after = all.last().map_or(0, |u| u.cursor.get());
        match updates_after(store, tenant, who, after, 1000).await {
            UpdateBatch::Updates(page) if page.is_empty() => return all,
            UpdateBatch::Updates(page) => all.extend(page),
            resync => panic!("after {after}: {resync:?}"),
        }
    }
}

async fn head<S: Store>(store: &S, tenant: &TenantId, who: &UserId) -> u64 {
    store.log_head(tenant, who).await.expect("log head").get()
}

fn cursors(updates: &[Update]) -> Vec<u64> {
    updates.iter().map(|u| u.cursor.get()).collect()
}

pub async fn written_updates_read_back_in_order<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let alice = user("alice");
    assert_eq!(head(&store, &tenant, &alice).await, 0);
    assert_eq!(
        updates_after(&store, &tenant, &alice, 0, 10).await,
        UpdateBatch::Updates(vec![])
    );
    store
        .write_updates(&[], VERSION)
        .await
        .expect("an empty write");

    // Every event kind, over three writes of one entry, a few, and the rest.
    let events = events(ConversationId::generate());
    let written: Vec<_> = events
        .iter()
        .enumerate()
        .map(|(i, event)| entry(&tenant, &alice, i as u64 + 1, event.clone()))
        .collect();
    for (version, part) in [&written[..1], &written[1..4], &written[4..]]
        .into_iter()
        .enumerate()
    {
        store
            .write_updates(part, VERSION + version as u64)
            .await
            .expect("write updates");
        let last = part.last().expect("a part").2.cursor.get();
        assert_eq!(head(&store, &tenant, &alice).await, last);
    }
    let n = events.len() as u64;

    let UpdateBatch::Updates(first) = updates_after(&store, &tenant, &alice, 0, 3).await else {
        panic!("expected updates")
    };
    assert_eq!(cursors(&first), vec![1, 2, 3]);
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
    assert_eq!(head(&store, &tenant, &user("bob")).await, 0);
    assert_eq!(head(&store, &self::tenant(), &alice).await, 0);
}

/// One write carries the entries of many users, of many tenants (as a
/// sync process's partition of users does), in any order, and each lands
/// in its log, in cursor order.
pub async fn an_update_write_spans_users_and_tenants<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let (first, second) = (tenant(), tenant());
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    // Bob's log in the first tenant goes on from an earlier write.
    write_markers(&store, &first, &bob, 1..=2, VERSION).await;

    let logs = [
        (&first, &alice, 1..=3),
        (&first, &bob, 3..=5),
        (&first, &carol, 1..=1),
        (&second, &alice, 1..=4),
    ];
    let mut batch: Vec<(TenantId, UserId, Update)> = Vec::new();
    // Interleaved across logs, and each log's entries newest first.
    for step in 0..4 {
        for (tenant, who, cursors) in &logs {
            if let Some(cursor) = cursors.clone().rev().nth(step) {
                batch.push(entry(tenant, who, cursor, marker(who, cursor)));
            }
        }
    }
    store
        .write_updates(&batch, VERSION + 1)
        .await
        .expect("write updates");

    for (tenant, who, cursors) in logs {
        let all = all_updates(&store, tenant, who).await;
        let mut expected: Vec<Update> = batch
            .iter()
            .filter(|(t, u, _)| t == tenant && u == who)
            .map(|(_, _, update)| update.clone())
            .collect();
        expected.sort_by_key(|u| u.cursor);
        assert_eq!(
            all[all.len() - expected.len()..],
            expected,
            "{tenant} {who}"
        );
        assert_eq!(all.len() as u64, *cursors.end(), "{tenant} {who}");
        assert_eq!(head(&store, tenant, who).await, *cursors.end());
    }
    assert_eq!(head(&store, &second, &bob).await, 0);
    assert_eq!(head(&store, &second, &carol).await, 0);
}

/// The CQL store keeps 1,024 cursors to a partition; a write that crosses
/// from one to the next, and every read around the boundary, must look as
/// if there were none.
pub async fn update_writes_cross_a_bucket_boundary<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let alice = user("alice");
    let mut written = write_markers(&store, &tenant, &alice, 1..=1019, VERSION).await;
    assert_eq!(head(&store, &tenant, &alice).await, 1019);
    written.extend(write_markers(&store, &tenant, &alice, 1020..=1030, VERSION + 1).await);
    assert_eq!(head(&store, &tenant, &alice).await, 1030);
    assert_eq!(all_updates(&store, &tenant, &alice).await, written);

    for (after, limit, expected) in [
        (1015, 100, (1016..=1030).collect::<Vec<_>>()),
        (1022, 3, vec![1023, 1024, 1025]),
        (1023, 1, vec![1024]),
        (1024, 2, vec![1025, 1026]),
        (600, 500, (601..=1030).collect()),
    ] {
        let UpdateBatch::Updates(read) = updates_after(&store, &tenant, &alice, after, limit).await
        else {
            panic!("after {after}: expected updates")
        };
        assert_eq!(cursors(&read), expected, "after {after}, limit {limit}");
    }

    written.extend(write_markers(&store, &tenant, &alice, 1031..=1031, VERSION + 2).await);
    assert_eq!(head(&store, &tenant, &alice).await, 1031);
    assert_eq!(all_updates(&store, &tenant, &alice).await, written);
}

/// A new owner numbers from what is stored, so it may write cursors a
/// deposed owner wrote too; its write, with a higher version, replaces
/// theirs.
pub async fn a_rewritten_cursor_is_replaced<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let alice = user("alice");
    let first = write_markers(&store, &tenant, &alice, 1..=3, VERSION).await;
    let again = write_markers(&store, &tenant, &alice, 2..=4, VERSION + 1).await;
    assert_ne!(first[1], again[0], "the rewrite differs");
    let mut expected = vec![first[0].clone()];
    expected.extend(again);
    assert_eq!(all_updates(&store, &tenant, &alice).await, expected);
    assert_eq!(head(&store, &tenant, &alice).await, 4);

    // Rewriting older cursors leaves the head where it is.
    let older = write_markers(&store, &tenant, &alice, 1..=1, VERSION + 2).await;
    assert_eq!(head(&store, &tenant, &alice).await, 4);
    expected[0] = older[0].clone();
    assert_eq!(all_updates(&store, &tenant, &alice).await, expected);
}

pub async fn update_write_rejects_bad_input_and_writes_nothing<S: Store>(
    make: impl AsyncFn(Limits) -> S,
) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let alice = user("alice");
    let good = entry(&tenant, &alice, 1, marker(&alice, 1));
    let conversation = ConversationId::generate();
    let oversized = "x".repeat(Limits::default().max_message_bytes + 1);
    let message =
        |content| Event::Message(with_content(conversation, "bob", "k", content).at(Seq::new(1)));
    for (bad, field) in [
        (
            entry(&tenant, &alice, 2, message(Content::Text(oversized))),
            "content",
        ),
        (
            entry(&tenant, &alice, 2, message(Content::Text("  ".into()))),
            "content.text",
        ),
        (entry(&tenant, &alice, 0, marker(&alice, 2)), "cursor"),
        (
            entry(&tenant, &alice, u64::MAX, marker(&alice, 2)),
            "cursor",
        ),
    ] {
        assert_invalid(
            store.write_updates(&[good.clone(), bad], VERSION).await,
            field,
        );
    }
    // A CQL timestamp is signed.
    assert_invalid(
        store
            .write_updates(std::slice::from_ref(&good), u64::MAX)
            .await,
        "version",
    );
    assert_eq!(head(&store, &tenant, &alice).await, 0);
    assert_eq!(
        updates_after(&store, &tenant, &alice, 0, 10).await,
        UpdateBatch::Updates(vec![]),
        "a refused write stores nothing, not even its valid entries"
    );
}

pub async fn trimmed_log_requires_resync<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let alice = user("alice");
    write_markers(&store, &tenant, &alice, 1..=10, VERSION).await;
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
    assert_eq!(cursors(&kept), (6..=10).collect::<Vec<_>>());

    // Rewriting forgotten entries brings none of them back.
    write_markers(&store, &tenant, &alice, 4..=11, VERSION + 1).await;
    assert_eq!(
        updates_after(&store, &tenant, &alice, 4, 10).await,
        UpdateBatch::ResyncRequired {
            head: Cursor::new(11)
        }
    );
    let UpdateBatch::Updates(kept) = updates_after(&store, &tenant, &alice, 5, 10).await else {
        panic!("updates after the trim point are kept")
    };
    assert_eq!(cursors(&kept), (6..=11).collect::<Vec<_>>());
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

/// The scope the lease checks lease in, but for the check of scopes.
const SCOPE: &str = "storage";

/// A partition no other check uses: leases are not per tenant, and checks
/// may share a store.
fn partition() -> u32 {
    // The low bits of a UUIDv7 are random.
    (ConversationId::generate().as_uuid().as_u128() & u128::from(u32::MAX)) as u32
}

/// `secs` seconds into a check's lease timeline.
fn second(secs: i64) -> Timestamp {
    at(secs * 1000)
}

const TTL: Duration = Duration::from_secs(10);

/// Takes partition `p` of `scope` for `owner`, `secs` into the timeline.
async fn acquire_at<S: Store>(
    store: &S,
    scope: &str,
    p: u32,
    owner: &str,
    secs: i64,
) -> Option<Lease> {
    store
        .acquire_lease(scope, p, owner, second(secs), TTL)
        .await
        .expect("acquire lease")
}

/// Renews `lease`, `secs` into the timeline.
async fn renew_at<S: Store>(store: &S, lease: &Lease, secs: i64) -> Option<Lease> {
    store
        .renew_lease(lease, second(secs), TTL)
        .await
        .expect("renew lease")
}

pub async fn leases_pass_from_owner_to_owner<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let p = partition();
    let acquire = async |owner: &str, secs: i64| acquire_at(&store, SCOPE, p, owner, secs).await;
    let renew = async |lease: &Lease, secs: i64| renew_at(&store, lease, secs).await;

    let a = acquire("a", 0).await.expect("a free partition is taken");
    assert_eq!(
        (a.scope.as_str(), a.partition, a.owner.as_str()),
        (SCOPE, p, "a")
    );
    assert_eq!(a.until, second(10));
    assert!(a.epoch >= 1);
    // Held: refused to anyone until it ends, its holder included.
    for (owner, secs) in [("b", 1), ("a", 1), ("b", 9)] {
        assert_eq!(acquire(owner, secs).await, None, "{owner} at {secs} s");
    }

    // A renewal moves the end and keeps the epoch.
    let a = renew(&a, 5).await.expect("a still holds it");
    assert_eq!(a.until, second(15));
    assert_eq!(acquire("b", 14).await, None);

    // Lapsed: the next holder gets a higher epoch.
    let b = acquire("b", 15).await.expect("a lapsed lease is taken");
    assert_eq!((b.owner.as_str(), b.until), ("b", second(25)));
    assert!(b.epoch > a.epoch, "{} after {}", b.epoch, a.epoch);
    // a lost it: renewing fails, and releasing leaves b's lease alone.
    assert_eq!(renew(&a, 16).await, None);
    store.release_lease(&a).await.expect("release a lost lease");
    assert_eq!(acquire("c", 16).await, None);
    let b = renew(&b, 16).await.expect("b still holds it");
    assert_eq!(b.until, second(26));

    // Its last holder taking a lapsed lease back gets a new epoch too, and
    // the old one is fenced.
    let b2 = acquire("b", 26).await.expect("b takes it back");
    assert!(b2.epoch > b.epoch);
    assert_eq!(renew(&b, 27).await, None);

    // Released: free at once, with a higher epoch again.
    store.release_lease(&b2).await.expect("release");
    let c = acquire("c", 27).await.expect("a released lease is free");
    assert!(c.epoch > b2.epoch);
    assert_eq!(c.until, second(37));

    // Partitions are independent.
    let elsewhere = store
        .acquire_lease(SCOPE, partition(), "b", second(27), TTL)
        .await
        .expect("acquire lease");
    assert!(elsewhere.is_some());
}

/// Storage and sync both lease partitions, numbered from 0, in one store:
/// a partition of one scope has nothing to do with the same number in
/// another.
pub async fn scopes_lease_their_partitions_apart<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let p = partition();
    let acquire =
        async |scope: &str, owner: &str, secs: i64| acquire_at(&store, scope, p, owner, secs).await;
    let renew = async |lease: &Lease, secs: i64| renew_at(&store, lease, secs).await;
    // One owner in both: the leases differ in their scope alone.
    let storage = acquire("storage", "a", 0).await.expect("storage's is free");
    let sync = acquire("sync", "a", 0)
        .await
        .expect("sync's is free while storage's is held");
    assert_eq!((sync.scope.as_str(), sync.partition), ("sync", p));
    assert_eq!((storage.scope.as_str(), storage.partition), ("storage", p));
    assert_eq!(sync.until, second(10));
    assert_eq!(acquire("storage", "b", 1).await, None);
    assert_eq!(acquire("sync", "b", 1).await, None);

    // Renewing and releasing one leaves the other as it was.
    let storage = renew(&storage, 5).await.expect("storage's is held");
    assert_eq!(storage.until, second(15));
    store.release_lease(&storage).await.expect("release");
    assert_eq!(acquire("sync", "b", 6).await, None, "sync's is still held");
    let renewed = renew(&sync, 6).await.expect("sync's is held");
    assert_eq!(renewed.until, second(16));
    let taken = acquire("storage", "b", 6)
        .await
        .expect("storage's was released");
    assert!(taken.epoch > storage.epoch);

    // And the other way round.
    store.release_lease(&renewed).await.expect("release");
    let sync = acquire("sync", "c", 7).await.expect("sync's was released");
    assert!(sync.epoch > renewed.epoch);
    assert_eq!(acquire("storage", "c", 7).await, None, "storage's is b's");
}

/// Processes racing for a free partition, then for a lapsed one: one gets
/// it each time.
pub async fn one_of_racing_acquirers_wins<S: Store>(make: impl AsyncFn(Limits) -> S) {
    const RACERS: usize = 8;
    let store = Arc::new(make(Limits::default()).await);
    let p = partition();
    let mut last_epoch = 0;
    for (round, secs) in [(0, 0), (1, 10)] {
        let racers = (0..RACERS).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let owner = format!("racer-{round}-{i}");
                store
                    .acquire_lease(SCOPE, p, &owner, second(secs), TTL)
                    .await
            })
        });
        let mut won = Vec::new();
        let mut failed = Vec::new();
        for outcome in futures::future::join_all(racers).await {
            match outcome.expect("racer task") {
                Ok(Some(lease)) => won.push(lease),
                Ok(None) => {}
                // Contention may time a racer out; it has not won then.
                Err(e) => failed.push(e),
            }
        }
        assert!(won.len() <= 1, "round {round}: {won:?}");
        assert!(
            won.len() == 1 || !failed.is_empty(),
            "round {round}: nobody won and nobody failed"
        );
        assert_eq!(
            store
                .acquire_lease(SCOPE, p, "late", second(secs), TTL)
                .await
                .expect("acquire lease"),
            None,
            "round {round}: the partition is held"
        );
        if let Some(lease) = won.pop() {
            assert!(lease.epoch > last_epoch);
            last_epoch = lease.epoch;
        }
    }
}

fn put(kind: DeskKind, id: &str, body: &[u8]) -> DeskWrite {
    DeskWrite::Put {
        kind,
        id: id.into(),
        body: body.to_vec(),
    }
}

fn delete(kind: DeskKind, id: &str) -> DeskWrite {
    DeskWrite::Delete {
        kind,
        id: id.into(),
    }
}

async fn write_desk<S: Store>(store: &S, tenant: &TenantId, writes: &[DeskWrite]) {
    store.write_desk(tenant, writes).await.expect("write desk");
}

/// The body of the record, if there is one.
async fn desk_body<S: Store>(
    store: &S,
    tenant: &TenantId,
    kind: DeskKind,
    id: &str,
) -> Option<Vec<u8>> {
    let record = store
        .desk_record(tenant, kind, id)
        .await
        .expect("desk record");
    record.map(|record| {
        assert_eq!(record.id, id);
        record.body
    })
}

async fn desk_page<S: Store>(
    store: &S,
    tenant: &TenantId,
    kind: DeskKind,
    after: Option<&str>,
    size: u32,
) -> Page<DeskRecord, String> {
    let request = PageRequest {
        after: after.map(str::to_owned),
        size,
    };
    store
        .desk_records(tenant, kind, request)
        .await
        .expect("desk records")
}

/// The ids of the first page of `kind`'s records, which the checks keep
/// to fewer than a page.
async fn desk_ids<S: Store>(store: &S, tenant: &TenantId, kind: DeskKind) -> Vec<String> {
    let page = desk_page(store, tenant, kind, None, 0).await;
    assert_eq!(page.next, None);
    page.items.into_iter().map(|record| record.id).collect()
}

pub async fn desk_records_round_trip_and_are_replaced<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let largest = vec![7; MAX_DESK_RECORD_BYTES];
    let longest = "i".repeat(255);
    write_desk(
        &store,
        &tenant,
        &[
            put(DeskKind::Team, "billing", b"team"),
            put(DeskKind::Agent, "bob", b""),
            put(DeskKind::Route, &longest, &largest),
        ],
    )
    .await;
    let body = async |kind, id| desk_body(&store, &tenant, kind, id).await;
    assert_eq!(
        body(DeskKind::Team, "billing").await,
        Some(b"team".to_vec())
    );
    assert_eq!(
        body(DeskKind::Agent, "bob").await,
        Some(Vec::new()),
        "an empty body is a record"
    );
    assert_eq!(body(DeskKind::Route, &longest).await, Some(largest));
    assert_eq!(body(DeskKind::Team, "sales").await, None);

    write_desk(&store, &tenant, &[put(DeskKind::Team, "billing", b"v2")]).await;
    assert_eq!(body(DeskKind::Team, "billing").await, Some(b"v2".to_vec()));
    // Writes of one record in one call stand in their order.
    write_desk(
        &store,
        &tenant,
        &[
            put(DeskKind::Team, "billing", b"v3"),
            put(DeskKind::Team, "billing", b"v4"),
            put(DeskKind::Team, "sales", b"z"),
            put(DeskKind::Team, "sales", b"a"),
        ],
    )
    .await;
    assert_eq!(body(DeskKind::Team, "billing").await, Some(b"v4".to_vec()));
    assert_eq!(body(DeskKind::Team, "sales").await, Some(b"a".to_vec()));
    assert_eq!(
        desk_ids(&store, &tenant, DeskKind::Team).await,
        ["billing", "sales"],
        "replaced, not added"
    );
    write_desk(&store, &tenant, &[]).await;
    assert_eq!(body(DeskKind::Team, "sales").await, Some(b"a".to_vec()));
}

pub async fn desk_records_are_deleted<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let kind = DeskKind::Route;
    write_desk(
        &store,
        &tenant,
        &[put(kind, "a", b"1"), put(kind, "b", b"2")],
    )
    .await;
    write_desk(&store, &tenant, &[delete(kind, "a")]).await;
    assert_eq!(desk_body(&store, &tenant, kind, "a").await, None);
    assert_eq!(desk_ids(&store, &tenant, kind).await, ["b"]);
    // Deleting what is not there is nothing.
    write_desk(&store, &tenant, &[delete(kind, "a"), delete(kind, "never")]).await;
    assert_eq!(desk_ids(&store, &tenant, kind).await, ["b"]);

    // In one call, the later write of a record stands.
    write_desk(&store, &tenant, &[put(kind, "c", b"3"), delete(kind, "c")]).await;
    assert_eq!(desk_body(&store, &tenant, kind, "c").await, None);
    write_desk(&store, &tenant, &[delete(kind, "b"), put(kind, "b", b"4")]).await;
    assert_eq!(
        desk_body(&store, &tenant, kind, "b").await,
        Some(b"4".to_vec())
    );
    // A deleted record may be stored again.
    write_desk(&store, &tenant, &[put(kind, "a", b"5")]).await;
    assert_eq!(desk_ids(&store, &tenant, kind).await, ["a", "b"]);
}

pub async fn desk_kinds_and_tenants_are_apart<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let (acme, globex) = (tenant(), tenant());
    write_desk(&store, &acme, &[put(DeskKind::Team, "x", b"team")]).await;
    for kind in [DeskKind::Agent, DeskKind::Route] {
        assert_eq!(desk_body(&store, &acme, kind, "x").await, None, "{kind:?}");
        assert!(desk_ids(&store, &acme, kind).await.is_empty(), "{kind:?}");
    }
    for kind in DeskKind::ALL {
        assert_eq!(
            desk_body(&store, &globex, kind, "x").await,
            None,
            "{kind:?}"
        );
        assert!(desk_ids(&store, &globex, kind).await.is_empty(), "{kind:?}");
    }

    write_desk(&store, &acme, &[put(DeskKind::Agent, "x", b"agent")]).await;
    write_desk(&store, &globex, &[put(DeskKind::Team, "x", b"other")]).await;
    assert_eq!(
        desk_body(&store, &acme, DeskKind::Team, "x").await,
        Some(b"team".to_vec())
    );
    write_desk(&store, &acme, &[delete(DeskKind::Team, "x")]).await;
    assert_eq!(
        desk_body(&store, &acme, DeskKind::Agent, "x").await,
        Some(b"agent".to_vec())
    );
    assert_eq!(
        desk_body(&store, &globex, DeskKind::Team, "x").await,
        Some(b"other".to_vec())
    );
}

pub async fn desk_pages_meet_at_their_boundaries<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits {
        default_page_size: 4,
        max_page_size: 10,
        ..Limits::default()
    })
    .await;
    let tenant = tenant();
    let kind = DeskKind::Agent;
    // Written out of order, and beside records of another kind.
    let ids = |range: RangeInclusive<usize>| -> Vec<String> {
        range.map(|i| format!("a{i:02}")).collect()
    };
    let writes: Vec<DeskWrite> = ids(0..=24)
        .iter()
        .rev()
        .map(|id| put(kind, id, id.as_bytes()))
        .chain([put(DeskKind::Team, "a05", b"team")])
        .collect();
    write_desk(&store, &tenant, &writes).await;
    let ids_after = async |after, size| {
        let page = desk_page(&store, &tenant, kind, after, size).await;
        let ids: Vec<String> = page.items.iter().map(|r| r.id.clone()).collect();
        (ids, page.next)
    };

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = desk_page(&store, &tenant, kind, after.as_deref(), 10).await;
        for record in &page.items {
            assert_eq!(record.body, record.id.as_bytes());
        }
        seen.extend(page.items.into_iter().map(|r| r.id));
        match page.next {
            Some(next) => {
                assert_eq!(
                    Some(&next),
                    seen.last(),
                    "the next page starts after this one"
                );
                after = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(seen, ids(0..=24), "every record once, in id order");

    assert_eq!(ids_after(None, 10).await, (ids(0..=9), Some("a09".into())));
    assert_eq!(ids_after(Some("a19"), 10).await, (ids(20..=24), None));
    assert_eq!(
        ids_after(Some("a14"), 10).await,
        (ids(15..=24), None),
        "a page that ends with the records has no next"
    );
    assert_eq!(
        ids_after(Some("a055"), 3).await,
        (ids(6..=8), Some("a08".into())),
        "after an id that is not stored"
    );
    assert_eq!(ids_after(Some("a24"), 10).await, (Vec::new(), None));
    assert_eq!(ids_after(Some("b"), 10).await, (Vec::new(), None));
    assert_eq!(
        ids_after(None, 0).await,
        (ids(0..=3), Some("a03".into())),
        "the default page size"
    );
    assert_eq!(
        ids_after(None, 1000).await,
        (ids(0..=9), Some("a09".into())),
        "no more than the largest page"
    );

    // Pages larger than a store may read at once, of the largest records.
    let (store, tenant) = (make(Limits::default()).await, self::tenant());
    let all: Vec<String> = (0..300).map(|i| format!("b{i:03}")).collect();
    let largest = vec![0; MAX_DESK_RECORD_BYTES];
    let writes: Vec<DeskWrite> = all.iter().map(|id| put(kind, id, &largest)).collect();
    write_desk(&store, &tenant, &writes).await;
    let first = desk_page(&store, &tenant, kind, None, 299).await;
    let second = desk_page(&store, &tenant, kind, first.next.as_deref(), 299).await;
    let listed: Vec<String> = first
        .items
        .iter()
        .chain(&second.items)
        .map(|r| r.id.clone())
        .collect();
    assert_eq!(listed, all);
    assert_eq!((first.next.as_deref(), second.next), (Some("b298"), None));

    // In byte order, not by letter.
    let kind = DeskKind::Route;
    let writes: Vec<DeskWrite> = ["é", "a", "B", "aa"]
        .into_iter()
        .map(|id| put(kind, id, b""))
        .collect();
    write_desk(&store, &tenant, &writes).await;
    assert_eq!(desk_ids(&store, &tenant, kind).await, ["B", "a", "aa", "é"]);
}

pub async fn desk_write_rejects_bad_input_and_writes_nothing<S: Store>(
    make: impl AsyncFn(Limits) -> S,
) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let kind = DeskKind::Team;
    let good = put(kind, "good", b"body");
    let long = "x".repeat(256);
    for (bad, field) in [
        (put(kind, "", b"body"), "id"),
        (put(kind, &long, b"body"), "id"),
        (delete(kind, ""), "id"),
        (delete(kind, &long), "id"),
        (
            put(kind, "big", &vec![0; MAX_DESK_RECORD_BYTES + 1]),
            "body",
        ),
    ] {
        let writes = [good.clone(), bad];
        assert_invalid(store.write_desk(&tenant, &writes).await, field);
    }
    assert_eq!(
        desk_body(&store, &tenant, kind, "good").await,
        None,
        "a refused write stores nothing, not even its valid writes"
    );
    assert!(desk_ids(&store, &tenant, kind).await.is_empty());
    assert_eq!(desk_body(&store, &tenant, kind, "").await, None);

    write_desk(&store, &tenant, &[good]).await;
    assert_eq!(desk_ids(&store, &tenant, kind).await, ["good"]);
}

pub async fn desk_writes_together_land_together<S: Store>(make: impl AsyncFn(Limits) -> S) {
    let store = make(Limits::default()).await;
    let tenant = tenant();
    let (facts, rollups) = (DeskKind::AnalyticsFacts, DeskKind::AnalyticsRollup);
    let together = async |writes: &[DeskWrite]| {
        store
            .write_desk_together(&tenant, writes)
            .await
            .expect("write desk records together");
    };
    together(&[
        put(facts, "c1", b"facts v1"),
        put(rollups, "00000000000000476376 001", b"rollup"),
        put(rollups, "00000000000000476377 001", b"gone soon"),
    ])
    .await;
    together(&[
        put(facts, "c1", b"facts v2"),
        delete(rollups, "00000000000000476377 001"),
        put(rollups, "00000000000000476376 001", b"rollup v2"),
    ])
    .await;
    assert_eq!(
        desk_body(&store, &tenant, facts, "c1").await,
        Some(b"facts v2".to_vec())
    );
    assert_eq!(
        desk_ids(&store, &tenant, rollups).await,
        ["00000000000000476376 001"]
    );
    assert_eq!(
        desk_body(&store, &tenant, rollups, "00000000000000476376 001").await,
        Some(b"rollup v2".to_vec())
    );
    together(&[]).await;
    let bad = [put(facts, "c2", b"facts"), put(rollups, "", b"no id")];
    assert_invalid(store.write_desk_together(&tenant, &bad).await, "id");
    assert_eq!(
        desk_body(&store, &tenant, facts, "c2").await,
        None,
        "a refused write stores nothing"
    );
}
