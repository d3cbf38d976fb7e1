//! What only the CQL store has: migrations, bucket boundaries and the
//! `last_seq` hint, versions deciding between writes of one seq (and
//! between announcements and their forgetting), batch sizes, and paging
//! across partitions.

mod common;

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt, stream};
use natter_core::{
    ClientMessageId, Content, Conversation, ConversationId, Cursor, Device, DeviceId, Event,
    Limits, Message, MessageId, NewConversation, NewMessage, ReadMarker, Role, Seq, TenantId,
    Timestamp, Update, UserId,
};
use natter_proto::codec::encode_event;
use natter_store::{
    Announcement, ConversationStore, LeaseStore, MessageRange, PageRequest, StoreError, SyncStore,
    UpdateBatch,
};
use natter_store_cql::{CqlStore, MAX_DEVICES_PER_USER};
use scylla::serialize::row::SerializeRow;
use scylla::value::CqlTimestamp;
use uuid::Uuid;

use common::{config, drop_keyspace, shared_keyspace};

/// The schema migrations the store ships.
const MIGRATIONS: i32 = 5;

/// The version of a first lease holder's (epoch 1) first write.
const VERSION: u64 = 1 << 40;

fn tenant() -> TenantId {
    TenantId::new(natter_testkit::unique_name("tenant")).expect("tenant id")
}

fn user(name: &str) -> UserId {
    UserId::new(name).expect("user id")
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

async fn conversation_with(
    store: &CqlStore,
    tenant: &TenantId,
    id: ConversationId,
) -> Conversation {
    store
        .create_conversation(&NewConversation {
            id,
            tenant_id: tenant.clone(),
            subject: "boundaries".into(),
            created_by: user("alice"),
            created_at: Timestamp::from_millis(now()),
            members: vec![(user("alice"), Role::Customer)],
        })
        .await
        .expect("create conversation")
}

async fn conversation(store: &CqlStore, tenant: &TenantId) -> Conversation {
    conversation_with(store, tenant, ConversationId::generate()).await
}

/// Message `seq` of a conversation with `body`, as the sequencer numbers it.
fn message(conversation: ConversationId, seq: u64, body: &str) -> Message {
    NewMessage {
        id: MessageId::generate(),
        conversation_id: conversation,
        sender_id: user("alice"),
        client_message_id: ClientMessageId::new(format!("m{seq}")).expect("client message id"),
        sent_at: Timestamp::from_millis(now()),
        content: Content::Text(body.into()),
    }
    .at(Seq::new(seq))
}

/// Writes `messages` of `tenant` in one call at `version`.
async fn write(store: &CqlStore, tenant: &TenantId, messages: &[Message], version: u64) {
    let batch: Vec<_> = messages
        .iter()
        .map(|m| (tenant.clone(), m.clone()))
        .collect();
    store
        .write_messages(&batch, None, version)
        .await
        .expect("write messages");
}

/// Writes messages `seqs` in one call.
async fn write_range(
    store: &CqlStore,
    tenant: &TenantId,
    id: ConversationId,
    seqs: RangeInclusive<u64>,
) {
    let messages: Vec<Message> = seqs
        .map(|seq| message(id, seq, &format!("message {seq}")))
        .collect();
    write(store, tenant, &messages, VERSION).await;
}

async fn all_messages(store: &CqlStore, tenant: &TenantId, id: ConversationId) -> Vec<Message> {
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

fn seqs_of(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq.get()).collect()
}

/// Runs `cql` on the shared keyspace (`{ks}`) and returns its first row's
/// only column, a `bigint` (`None` if there is no row or it is null).
async fn bigint_of(store: &CqlStore, cql: &str, values: impl SerializeRow) -> Option<i64> {
    store
        .session()
        .query_unpaged(cql.replace("{ks}", shared_keyspace()), values)
        .await
        .expect("read hint")
        .into_rows_result()
        .expect("rows")
        .maybe_first_row::<(Option<i64>,)>()
        .expect("row")
        .and_then(|(hint,)| hint)
}

/// Runs `cql` on the shared keyspace (`{ks}`) for its effect.
async fn run(store: &CqlStore, cql: &str, values: impl SerializeRow) {
    store
        .session()
        .query_unpaged(cql.replace("{ks}", shared_keyspace()), values)
        .await
        .expect(cql);
}

/// The `last_seq` hint as stored (`None` if never written).
async fn last_seq_hint(store: &CqlStore, tenant: &TenantId, id: ConversationId) -> Option<i64> {
    let cql = "SELECT last_seq FROM {ks}.conversations WHERE tenant_id = ? AND conversation_id = ?";
    bigint_of(store, cql, (tenant.as_str(), id.as_uuid())).await
}

async fn set_last_seq_hint(store: &CqlStore, tenant: &TenantId, id: ConversationId, hint: i64) {
    let cql =
        "UPDATE {ks}.conversations SET last_seq = ? WHERE tenant_id = ? AND conversation_id = ?";
    run(store, cql, (hint, tenant.as_str(), id.as_uuid())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_safe_to_run_concurrently() {
    let keyspace = common::unique_keyspace();
    let config = config(&keyspace, Limits::default());

    // Four processes start at once on an empty cluster.
    let started = Instant::now();
    let runs = futures::future::join_all((0..4).map(|_| CqlStore::migrate(&config))).await;
    eprintln!(
        "creating a keyspace with its tables took {:?}",
        started.elapsed()
    );
    let applied: Vec<i32> = runs
        .into_iter()
        .flat_map(|run| run.expect("migrate"))
        .collect();
    assert_eq!(
        applied,
        (1..=MIGRATIONS).collect::<Vec<_>>(),
        "each migration applied exactly once"
    );
    assert!(
        CqlStore::migrate(&config)
            .await
            .expect("migrate again")
            .is_empty(),
        "a migrated keyspace has nothing pending"
    );

    let store = CqlStore::connect(config.clone()).await.expect("connect");
    let session = store.session();
    let rows = session
        .query_unpaged(
            format!(
                "SELECT version, checksum, applied_at, lock_owner FROM {keyspace}.schema_migrations \
                 WHERE scope = 'natter'"
            ),
            (),
        )
        .await
        .expect("read schema_migrations")
        .into_rows_result()
        .expect("rows")
        .rows::<(Option<i32>, Option<String>, Option<CqlTimestamp>, Option<Uuid>)>()
        .expect("typed rows")
        .collect::<Result<Vec<_>, _>>()
        .expect("decode");
    assert_eq!(rows.len(), MIGRATIONS as usize, "{rows:?}");
    for (row, expected) in rows.iter().zip(1..) {
        let (version, checksum, applied_at, lock_owner) = row;
        assert_eq!(*version, Some(expected));
        assert_eq!(checksum.as_deref().map(str::len), Some(16));
        assert!(applied_at.is_some());
        assert_eq!(*lock_owner, None, "the lock is released");
    }

    // A run that died holding the lock and before recording its version:
    // the next run waits out the lease, then redoes the idempotent DDL.
    session
        .query_unpaged(
            format!(
                "UPDATE {keyspace}.schema_migrations SET lock_owner = ?, lock_until = ? \
                 WHERE scope = 'natter'"
            ),
            (Uuid::now_v7(), CqlTimestamp(now() + 1_500)),
        )
        .await
        .expect("plant a stale lock");
    session
        .query_unpaged(
            format!(
                "DELETE FROM {keyspace}.schema_migrations WHERE scope = 'natter' AND version = 1"
            ),
            (),
        )
        .await
        .expect("forget version 1");
    let started = Instant::now();
    assert_eq!(
        CqlStore::migrate(&config)
            .await
            .expect("migrate after crash"),
        vec![1]
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1_000),
        "waited for the lease"
    );

    // A migration edited after it was applied is refused.
    session
        .query_unpaged(
            format!(
                "UPDATE {keyspace}.schema_migrations SET checksum = 'edited' \
                 WHERE scope = 'natter' AND version = 1"
            ),
            (),
        )
        .await
        .expect("tamper");
    let refused = CqlStore::connect(config).await;
    assert!(
        matches!(refused, Err(StoreError::FailedPrecondition(_))),
        "got {refused:?}"
    );

    drop_keyspace(session, &keyspace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hint_moves_with_new_buckets_and_the_head_is_exact_from_any_hint() {
    let store = common::store(Limits::default()).await;
    let tenant = tenant();
    let id = conversation(&store, &tenant).await.id;
    let head = async || store.conversation(&tenant, id).await.expect("get").last_seq;

    write_range(&store, &tenant, id, 1..=1020).await;
    assert_eq!(
        last_seq_hint(&store, &tenant, id).await,
        None,
        "no bucket began"
    );
    assert_eq!(head().await, Seq::new(1020));
    write_range(&store, &tenant, id, 1021..=1030).await;
    assert_eq!(last_seq_hint(&store, &tenant, id).await, Some(1030));
    write_range(&store, &tenant, id, 1031..=1031).await;
    assert_eq!(
        last_seq_hint(&store, &tenant, id).await,
        Some(1030),
        "moved once a bucket, not once a write"
    );
    assert_eq!(head().await, Seq::new(1031));

    // The hint is only a starting point: stale, or a bucket ahead (as a
    // hint from another datacenter can be), the head is still exact.
    for hint in [0, 5, 1023, 1024, 1031, 2047] {
        set_last_seq_hint(&store, &tenant, id, hint).await;
        assert_eq!(head().await, Seq::new(1031), "hint {hint}");
        let newest = store
            .list_messages(
                &tenant,
                id,
                MessageRange::Before {
                    before: None,
                    limit: 3,
                },
            )
            .await
            .expect("list");
        assert_eq!(seqs_of(&newest), vec![1029, 1030, 1031], "hint {hint}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_ending_on_a_full_bucket_continues_in_the_next() {
    let store = common::store(Limits::default()).await;
    let tenant = tenant();
    let id = conversation(&store, &tenant).await.id;
    write_range(&store, &tenant, id, 1..=1023).await;
    let got = store.conversation(&tenant, id).await.expect("get");
    assert_eq!(got.last_seq, Seq::new(1023));
    assert_eq!(last_seq_hint(&store, &tenant, id).await, None);

    // A write that begins a bucket moves the hint, though it crosses none.
    write_range(&store, &tenant, id, 1024..=1024).await;
    assert_eq!(last_seq_hint(&store, &tenant, id).await, Some(1024));
    let marker = store
        .mark_read(&tenant, id, &user("alice"), Seq::new(1024))
        .await
        .expect("mark read");
    assert_eq!(
        marker,
        Some(ReadMarker {
            conversation_id: id,
            user_id: user("alice"),
            seq: Seq::new(1024)
        })
    );
}

/// Row timestamps are the writers' versions, so of two writes of a seq the
/// higher version stands, in whichever order they land: a deposed owner's
/// late write cannot replace its successor's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_version_stands_whatever_order_writes_land_in() {
    let store = common::store(Limits::default()).await;
    let tenant = tenant();
    let id = conversation(&store, &tenant).await.id;

    let ten = message(id, 1, "version 10");
    write(&store, &tenant, std::slice::from_ref(&ten), 10).await;
    let five = Message {
        sender_id: user("bob"),
        client_message_id: ClientMessageId::new("late").expect("client message id"),
        sent_at: Timestamp::from_millis(1),
        ..message(id, 1, "version 5")
    };
    write(&store, &tenant, &[five], 5).await;
    assert_eq!(
        all_messages(&store, &tenant, id).await,
        vec![ten],
        "the older version changes no column"
    );

    let twenty = message(id, 1, "version 20");
    write(&store, &tenant, std::slice::from_ref(&twenty), 20).await;
    assert_eq!(
        all_messages(&store, &tenant, id).await,
        vec![twenty.clone()]
    );

    // Within one write too, each seq is decided on its own.
    let fifteen = [message(id, 1, "version 15"), message(id, 2, "version 15")];
    write(&store, &tenant, &fifteen, 15).await;
    assert_eq!(
        all_messages(&store, &tenant, id).await,
        vec![twenty, fifteen[1].clone()]
    );
}

/// Update log entries are written as messages are: of two writes of a
/// cursor the higher version stands, in whichever order they land, so a
/// deposed sync writer's late write cannot replace its successor's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_version_stands_in_update_logs_too() {
    let store = common::store(Limits::default()).await;
    let tenant = tenant();
    let alice = user("alice");
    let marker = |seq| read_marker(&alice, seq);
    let read = async || match store
        .read_updates(&tenant, &alice, Cursor::ZERO, 10)
        .await
        .expect("read")
    {
        UpdateBatch::Updates(updates) => updates.into_iter().map(|u| u.event).collect::<Vec<_>>(),
        other => panic!("expected updates, got {other:?}"),
    };

    let ten = marker(10);
    write_updates(&store, &tenant, &alice, 1..=1, &ten, 10).await;
    write_updates(&store, &tenant, &alice, 1..=1, &marker(5), 5).await;
    assert_eq!(read().await, vec![ten], "the older version changes nothing");

    let twenty = marker(20);
    write_updates(&store, &tenant, &alice, 1..=1, &twenty, 20).await;
    assert_eq!(read().await, vec![twenty.clone()]);

    // Within one write too, each cursor is decided on its own.
    let fifteen = marker(15);
    write_updates(&store, &tenant, &alice, 1..=2, &fifteen, 15).await;
    assert_eq!(read().await, vec![twenty, fifteen]);
    assert_eq!(
        store.log_head(&tenant, &alice).await.expect("head"),
        Cursor::new(2)
    );
}

/// The `head_hint` of a user's log as stored (`None` if never written).
async fn head_hint(store: &CqlStore, tenant: &TenantId, who: &UserId) -> Option<i64> {
    let cql = "SELECT head_hint FROM {ks}.user_log_meta WHERE tenant_id = ? AND user_id = ?";
    bigint_of(store, cql, (tenant.as_str(), who.as_str())).await
}

async fn set_head_hint(store: &CqlStore, tenant: &TenantId, who: &UserId, hint: i64) {
    let cql = "UPDATE {ks}.user_log_meta SET head_hint = ? WHERE tenant_id = ? AND user_id = ?";
    run(store, cql, (hint, tenant.as_str(), who.as_str())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_head_hint_moves_with_new_buckets_and_the_head_is_exact_from_any_hint() {
    let store = common::store(Limits::default()).await;
    let tenant = tenant();
    let alice = user("alice");
    let event = read_marker(&alice, 1);
    let head = async || store.log_head(&tenant, &alice).await.expect("head");

    write_updates(&store, &tenant, &alice, 1..=1020, &event, VERSION).await;
    assert_eq!(
        head_hint(&store, &tenant, &alice).await,
        None,
        "no bucket began"
    );
    assert_eq!(head().await, Cursor::new(1020));
    write_updates(&store, &tenant, &alice, 1021..=1030, &event, VERSION).await;
    assert_eq!(head_hint(&store, &tenant, &alice).await, Some(1030));
    write_updates(&store, &tenant, &alice, 1031..=1031, &event, VERSION).await;
    assert_eq!(
        head_hint(&store, &tenant, &alice).await,
        Some(1030),
        "moved once a bucket, not once a write"
    );
    assert_eq!(head().await, Cursor::new(1031));

    // The hint is only a starting point: however stale, the head is still
    // exact. (Never ahead: the trim check reads a head below the hint as
    // a trim racing the read, so log writes move it only after their rows.)
    for hint in [0, 5, 1023, 1024, 1031] {
        set_head_hint(&store, &tenant, &alice, hint).await;
        assert_eq!(head().await, Cursor::new(1031), "hint {hint}");
        let newest = store
            .read_updates(&tenant, &alice, Cursor::new(1028), 10)
            .await
            .expect("read");
        let UpdateBatch::Updates(newest) = newest else {
            panic!("hint {hint}: expected updates, got {newest:?}")
        };
        let cursors: Vec<u64> = newest.iter().map(|u| u.cursor.get()).collect();
        assert_eq!(cursors, vec![1029, 1030, 1031], "hint {hint}");
    }

    // A write that begins a bucket moves the hint, though it crosses none.
    let bob = user("bob");
    write_updates(&store, &tenant, &bob, 1..=1023, &event, VERSION).await;
    write_updates(&store, &tenant, &bob, 1024..=1024, &event, VERSION).await;
    assert_eq!(head_hint(&store, &tenant, &bob).await, Some(1024));
    assert_eq!(
        store.log_head(&tenant, &bob).await.expect("head"),
        Cursor::new(1024)
    );
}

/// A batch of one partition is one mutation, which the server does not hold
/// to its batch size thresholds: full batches of the largest messages
/// (64 of 64 KiB, about 4 MiB) are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_batches_of_the_largest_messages_are_accepted() {
    let limits = Limits::default();
    let store = common::store(limits.clone()).await;
    let tenant = tenant();
    let id = conversation(&store, &tenant).await.id;
    let body = "x".repeat(limits.max_message_bytes);
    let messages: Vec<Message> = (1..=130).map(|seq| message(id, seq, &body)).collect();
    let started = Instant::now();
    write(&store, &tenant, &messages, VERSION).await;
    eprintln!(
        "writing 130 messages of {} bytes took {:?}",
        body.len(),
        started.elapsed()
    );
    assert_eq!(all_messages(&store, &tenant, id).await, messages);
}

/// One write with more conversations than it writes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_of_many_conversations_lands_in_each() {
    const CONVERSATIONS: usize = 40;
    let store = common::store(Limits::default()).await;
    let tenant = tenant();
    let mut ids = Vec::new();
    for _ in 0..CONVERSATIONS {
        ids.push(conversation(&store, &tenant).await.id);
    }
    let batch: Vec<(TenantId, Message)> = (1..=3)
        .flat_map(|seq| ids.iter().map(move |&id| (seq, id)))
        .map(|(seq, id)| (tenant.clone(), message(id, seq, "hi")))
        .collect();
    store
        .write_messages(&batch, None, VERSION)
        .await
        .expect("write messages");
    for id in ids {
        let expected: Vec<Message> = batch
            .iter()
            .filter(|(_, m)| m.conversation_id == id)
            .map(|(_, m)| m.clone())
            .collect();
        assert_eq!(all_messages(&store, &tenant, id).await, expected);
    }
}

/// Partitions are `int` keys holding all 32 bits: the highest `u32`s are
/// rows of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lease_partition_has_a_row_of_its_own() {
    let store = common::store(Limits::default()).await;
    let at = Timestamp::from_millis(now());
    let ttl = Duration::from_secs(60);
    let partitions = [i32::MAX as u32, i32::MAX as u32 + 1, u32::MAX];
    for partition in partitions {
        let lease = store
            .acquire_lease("storage", partition, "first", at, ttl)
            .await
            .expect("acquire")
            .expect("a free partition is taken");
        assert_eq!(lease.partition, partition);
    }
    for partition in partitions {
        let held = store
            .acquire_lease("storage", partition, "second", at, ttl)
            .await
            .expect("acquire");
        assert_eq!(held, None, "partition {partition} is held");
    }
}

/// Wall-clock microseconds, as versions are.
fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

/// An announcement is written at its version and forgotten by a range
/// tombstone at the forget's bound, so which rows a forget removes depends
/// on no clock: a late write of a forgotten version stays forgotten, and a
/// later version is kept. A bound past the clock is lowered to it, so
/// forgetting everything spares what is written after. Partitions past
/// `i32::MAX` keep theirs apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_are_timestamped_by_their_versions() {
    let store = common::store(Limits::default()).await;
    let tenant = tenant();
    let id = conversation(&store, &tenant).await.id;
    let keep = async |partition: u32, version: u64, seq: u64| {
        let announcement = Announcement {
            partition,
            version,
            events: format!("up to {seq}").into_bytes(),
        };
        let batch = [(tenant.clone(), message(id, seq, "hi"))];
        store
            .write_messages(&batch, Some(&announcement), version)
            .await
            .expect("write with an announcement");
        announcement
    };
    let kept = async |partition: u32| {
        store
            .announcements(partition, 0, 100)
            .await
            .expect("read announcements")
    };
    // The two ends of the negative ints.
    let (high, low) = (u32::MAX, i32::MAX as u32 + 1);
    let past = now_micros() - 60_000_000;
    keep(high, past, 1).await;
    let other = keep(low, past, 2).await;
    let writetime = bigint_of(
        &store,
        "SELECT WRITETIME(events) FROM {ks}.announcements WHERE partition = ? AND version = ?",
        (-1_i32, past as i64),
    )
    .await;
    assert_eq!(writetime, Some(past as i64), "written at its version");

    store
        .forget_announcements(high, past)
        .await
        .expect("forget");
    assert_eq!(kept(high).await, []);
    assert_eq!(
        kept(low).await,
        std::slice::from_ref(&other),
        "another partition's stay"
    );
    keep(high, past - 1, 3).await;
    assert_eq!(
        kept(high).await,
        [],
        "a late write of a forgotten version stays forgotten"
    );
    let next = keep(high, past + 1, 4).await;
    assert_eq!(kept(high).await, [next]);

    store
        .forget_announcements(high, u64::MAX)
        .await
        .expect("forget everything");
    assert_eq!(kept(high).await, []);
    let later = keep(high, now_micros() + 1_000_000, 5).await;
    assert_eq!(
        kept(high).await,
        [later],
        "a write after forgetting everything is kept"
    );
    assert_eq!(kept(low).await, [other]);
    assert_eq!(
        seqs_of(&all_messages(&store, &tenant, id).await),
        [1, 2, 3, 4, 5]
    );
}

/// A UUIDv7 minted at `millis`, as a conversation created then has.
fn id_at(millis: i64) -> ConversationId {
    let mut bytes = *Uuid::now_v7().as_bytes();
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    ConversationId::from_uuid(Uuid::from_bytes(bytes)).expect("id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_lists_page_across_buckets_newest_first() {
    let store = common::store(Limits::default()).await;
    let tenant = tenant();
    const DAY: i64 = 86_400_000;
    let base = now() - 400 * DAY;
    // Two in one hour, one in each of three other buckets, and one whose
    // id has no timestamp: it is listed last.
    let mut ids: Vec<ConversationId> = [0, 1, 40 * DAY, 120 * DAY, 121 * DAY + 5, 300 * DAY]
        .iter()
        .map(|offset| id_at(base + offset))
        .collect();
    let undated =
        ConversationId::from_uuid(Uuid::from_u128(0x1234_5678_9abc_4def_8123_4567_89ab_cdef))
            .expect("id");
    for id in ids.iter().chain([&undated]) {
        conversation_with(&store, &tenant, *id).await;
    }
    // One the user left must not show up.
    store
        .remove_members(
            &tenant,
            ids[3],
            &[user("alice")],
            Timestamp::from_millis(now()),
        )
        .await
        .expect("leave");
    let left = ids.remove(3);

    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_conversations(&tenant, &user("alice"), PageRequest { after, size: 2 })
            .await
            .expect("list");
        assert!(page.items.len() <= 2);
        listed.extend(page.items.iter().map(|c| c.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let mut expected: Vec<ConversationId> = ids.clone();
    expected.sort();
    expected.reverse();
    expected.push(undated);
    assert_eq!(listed, expected);
    assert!(!listed.contains(&left));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_page_through_every_shard() {
    let store = common::store(Limits::default()).await;
    let tenant = tenant();
    let conv = conversation(&store, &tenant).await;
    let users: Vec<(UserId, Role)> = (0..120)
        .map(|i| (user(&format!("u{i:03}")), Role::Bot))
        .collect();
    let added = store
        .add_members(&tenant, conv.id, &users, Timestamp::from_millis(now()))
        .await
        .expect("add");
    assert_eq!(added.len(), 120);
    let got = store.conversation(&tenant, conv.id).await.expect("get");
    assert_eq!(got.member_count, 121);

    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_members(&tenant, conv.id, PageRequest { after, size: 7 })
            .await
            .expect("list");
        listed.extend(page.items.iter().map(|m| m.user_id.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let unique: BTreeSet<_> = listed.iter().cloned().collect();
    assert_eq!(listed.len(), 121);
    assert_eq!(unique.len(), 121);
}

/// A read marker of `who` at `seq`: a small event for update logs.
fn read_marker(who: &UserId, seq: u64) -> Event {
    Event::Read(ReadMarker {
        conversation_id: ConversationId::generate(),
        user_id: who.clone(),
        seq: Seq::new(seq),
    })
}

async fn seed_updates(
    store: &CqlStore,
    tenant: &TenantId,
    who: &UserId,
    event: &Event,
    count: u64,
) {
    let insert = store
        .session()
        .prepare(format!(
            "INSERT INTO {}.user_logs (tenant_id, user_id, bucket, position, event, written_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
            shared_keyspace()
        ))
        .await
        .expect("prepare");
    let bytes = encode_event(event);
    let (insert, bytes) = (&insert, &bytes);
    stream::iter(1..=count)
        .map(|at| async move {
            store
                .session()
                .execute_unpaged(
                    insert,
                    (
                        tenant.as_str(),
                        who.as_str(),
                        (at / 1024) as i64,
                        at as i64,
                        bytes.as_slice(),
                        CqlTimestamp(now()),
                    ),
                )
                .await
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .expect("seed updates");
}

/// Writes `event` at `cursors` of `who`'s log in one call at `version`.
async fn write_updates(
    store: &CqlStore,
    tenant: &TenantId,
    who: &UserId,
    cursors: RangeInclusive<u64>,
    event: &Event,
    version: u64,
) {
    let updates: Vec<_> = cursors
        .map(|cursor| {
            let update = Update {
                cursor: Cursor::new(cursor),
                event: event.clone(),
            };
            (tenant.clone(), who.clone(), update)
        })
        .collect();
    store
        .write_updates(&updates, version)
        .await
        .expect("write updates");
}

async fn bucket_rows(store: &CqlStore, tenant: &TenantId, who: &UserId, bucket: i64) -> usize {
    store
        .session()
        .query_unpaged(
            format!(
                "SELECT position FROM {}.user_logs WHERE tenant_id = ? AND user_id = ? AND bucket = ? LIMIT 2000",
                shared_keyspace()
            ),
            (tenant.as_str(), who.as_str(), bucket),
        )
        .await
        .expect("read bucket")
        .into_rows_result()
        .expect("rows")
        .rows_num()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_logs_cross_buckets_and_trim_whole_partitions() {
    let store = common::store(Limits::default()).await;
    let tenant = tenant();
    let alice = user("alice");
    let event = read_marker(&alice, 1);
    // No head hint at all: the probe starts from the beginning.
    seed_updates(&store, &tenant, &alice, &event, 1020).await;
    assert_eq!(
        store.log_head(&tenant, &alice).await.expect("head"),
        Cursor::new(1020)
    );
    write_updates(&store, &tenant, &alice, 1021..=1030, &event, VERSION).await;
    assert_eq!(
        store.log_head(&tenant, &alice).await.expect("head"),
        Cursor::new(1030)
    );

    let cursors = |batch: UpdateBatch| match batch {
        UpdateBatch::Updates(updates) => updates.iter().map(|u| u.cursor.get()).collect::<Vec<_>>(),
        other => panic!("expected updates, got {other:?}"),
    };
    let read = async |after: u64, limit: u32| {
        store
            .read_updates(&tenant, &alice, Cursor::new(after), limit)
            .await
            .expect("read")
    };
    assert_eq!(
        cursors(read(1000, 100).await),
        (1001..=1030).collect::<Vec<_>>()
    );
    assert_eq!(
        cursors(read(600, 500).await),
        (601..=1030).collect::<Vec<_>>()
    );
    assert_eq!(cursors(read(1022, 3).await), vec![1023, 1024, 1025]);

    // Trimming inside a bucket forgets logically and deletes nothing.
    store
        .trim_updates(&tenant, &alice, Cursor::new(1000))
        .await
        .expect("trim");
    assert_eq!(bucket_rows(&store, &tenant, &alice, 0).await, 1023);
    assert_eq!(
        read(999, 10).await,
        UpdateBatch::ResyncRequired {
            head: Cursor::new(1030)
        }
    );
    assert_eq!(cursors(read(1000, 2).await), vec![1001, 1002]);

    // Trimming through a bucket's end deletes the whole partition.
    store
        .trim_updates(&tenant, &alice, Cursor::new(1023))
        .await
        .expect("trim");
    assert_eq!(bucket_rows(&store, &tenant, &alice, 0).await, 0);
    assert_eq!(bucket_rows(&store, &tenant, &alice, 1).await, 7);
    assert_eq!(
        read(1022, 10).await,
        UpdateBatch::ResyncRequired {
            head: Cursor::new(1030)
        }
    );
    assert_eq!(
        cursors(read(1023, 10).await),
        (1024..=1030).collect::<Vec<_>>()
    );

    // Trimming past the head keeps the head's partition: the log goes on.
    store
        .trim_updates(&tenant, &alice, Cursor::new(5000))
        .await
        .expect("trim");
    assert_eq!(bucket_rows(&store, &tenant, &alice, 1).await, 7);
    assert_eq!(
        store.log_head(&tenant, &alice).await.expect("head"),
        Cursor::new(1030)
    );
    assert_eq!(cursors(read(1030, 10).await), Vec::<u64>::new());
    assert_eq!(
        read(1029, 10).await,
        UpdateBatch::ResyncRequired {
            head: Cursor::new(1030)
        }
    );
    write_updates(&store, &tenant, &alice, 1031..=1031, &event, VERSION).await;
    assert_eq!(cursors(read(1030, 10).await), vec![1031]);

    // A log whose meta row was never written (every hint write failed)
    // still trims: the first compare-and-set creates the row.
    let bob = user("bob");
    seed_updates(&store, &tenant, &bob, &event, 10).await;
    store
        .trim_updates(&tenant, &bob, Cursor::new(5))
        .await
        .expect("trim");
    assert_eq!(
        store
            .read_updates(&tenant, &bob, Cursor::new(4), 10)
            .await
            .expect("read"),
        UpdateBatch::ResyncRequired {
            head: Cursor::new(10)
        }
    );
    assert_eq!(
        cursors(
            store
                .read_updates(&tenant, &bob, Cursor::new(5), 10)
                .await
                .expect("read")
        ),
        (6..=10).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_bounded_per_user() {
    let store = common::store(Limits::default()).await;
    let tenant = tenant();
    let alice = user("alice");
    let device = |i: usize| Device {
        tenant_id: tenant.clone(),
        user_id: alice.clone(),
        device_id: DeviceId::new(format!("d{i:03}")).expect("device id"),
        label: "web".into(),
        cursor: Cursor::ZERO,
        last_seen: Timestamp::from_millis(now()),
        revoked: false,
    };
    let touches: Vec<_> = (0..MAX_DEVICES_PER_USER).map(&device).collect();
    stream::iter(&touches)
        .map(|d| store.touch_device(d))
        .buffer_unordered(4)
        .try_collect::<Vec<_>>()
        .await
        .expect("register");
    let over = store.touch_device(&device(MAX_DEVICES_PER_USER)).await;
    assert!(
        matches!(over, Err(StoreError::LimitExceeded(_))),
        "got {over:?}"
    );
    // A known device still refreshes.
    store.touch_device(&device(7)).await.expect("refresh");

    let unknown = DeviceId::new("nope").expect("device id");
    let missing = store
        .save_cursor(&tenant, &alice, &unknown, Cursor::new(1))
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "got {missing:?}"
    );
    let missing = store.revoke_device(&tenant, &alice, &unknown).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "got {missing:?}"
    );
    let seven = device(7).device_id;
    store
        .revoke_device(&tenant, &alice, &seven)
        .await
        .expect("revoke");
    let stale = store
        .save_cursor(&tenant, &alice, &seven, Cursor::new(9))
        .await;
    assert!(
        matches!(stale, Err(StoreError::FailedPrecondition(_))),
        "got {stale:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_highest_cursor_ack_stands_and_cursors_recorded_in_devices_still_count() {
    let store = common::store(Limits::default()).await;
    let tenant = tenant();
    let alice = user("alice");
    let phone = DeviceId::new("phone").expect("device id");
    let registered = store
        .touch_device(&Device {
            tenant_id: tenant.clone(),
            user_id: alice.clone(),
            device_id: phone.clone(),
            label: "ios".into(),
            cursor: Cursor::ZERO,
            last_seen: Timestamp::from_millis(now()),
            revoked: false,
        })
        .await
        .expect("register");
    assert_eq!(registered.cursor, Cursor::ZERO);
    let cursor = async || {
        store
            .device(&tenant, &alice, &phone)
            .await
            .expect("read")
            .expect("known")
            .cursor
    };

    // Acks land in any order; a wall-clock timestamp would let the last
    // one win, the cursor as timestamp lets the highest.
    stream::iter([4, 9, 2, 7])
        .for_each_concurrent(None, |at| {
            let (store, tenant, alice, phone) = (&store, &tenant, &alice, &phone);
            async move {
                store
                    .save_cursor(tenant, alice, phone, Cursor::new(at))
                    .await
                    .expect("save");
            }
        })
        .await;
    assert_eq!(cursor().await, Cursor::new(9));
    store
        .save_cursor(&tenant, &alice, &phone, Cursor::new(3))
        .await
        .expect("save lower");
    assert_eq!(cursor().await, Cursor::new(9));

    // A cursor recorded in `devices` by a release before migration 3.
    let legacy = "UPDATE {ks}.devices SET sync_cursor = ? \
                  WHERE tenant_id = ? AND user_id = ? AND device_id = ?";
    run(
        &store,
        legacy,
        (12_i64, tenant.as_str(), alice.as_str(), phone.as_str()),
    )
    .await;
    assert_eq!(cursor().await, Cursor::new(12));
    store
        .save_cursor(&tenant, &alice, &phone, Cursor::new(15))
        .await
        .expect("save past the legacy cursor");
    assert_eq!(cursor().await, Cursor::new(15));
    let listed = store
        .list_devices(
            &tenant,
            &alice,
            PageRequest {
                after: None,
                size: 10,
            },
        )
        .await
        .expect("list");
    assert_eq!(
        listed.items.iter().map(|d| d.cursor).collect::<Vec<_>>(),
        [Cursor::new(15)]
    );
}
