//! What only the CQL store has: migrations, bucket boundaries, contention
//! on one conversation, and recovery from sends cut short.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt, stream};
use natter_core::{
    ClientMessageId, Content, Conversation, ConversationId, Cursor, Device, DeviceId, Event,
    Limits, MessageId, NewConversation, NewMessage, ReadMarker, Role, Seq, TenantId, Timestamp,
    UserId,
};
use natter_proto::codec::{encode_content, encode_event};
use natter_store::{
    Appended, ConversationStore, MessageRange, PageRequest, StoreError, SyncStore, UpdateBatch,
};
use natter_store_cql::{CqlStore, MAX_DEVICES_PER_USER};
use scylla::value::CqlTimestamp;
use uuid::Uuid;

use common::{config, drop_keyspace, shared_keyspace};

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

fn text(conversation: ConversationId, key: &str) -> NewMessage {
    NewMessage {
        id: MessageId::generate(),
        conversation_id: conversation,
        sender_id: user("alice"),
        client_message_id: ClientMessageId::new(key).expect("client message id"),
        sent_at: Timestamp::from_millis(now()),
        content: Content::Text(format!("message {key}")),
    }
}

/// Sends like a client: retries while the store says to.
async fn send(store: &CqlStore, tenant: &TenantId, message: NewMessage) -> Appended {
    let deadline = Instant::now() + Duration::from_secs(60);
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

async fn all_seqs(store: &CqlStore, tenant: &TenantId, id: ConversationId) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        let after = Seq::new(seqs.last().copied().unwrap_or(0));
        let page = store
            .list_messages(tenant, id, MessageRange::After { after, limit: 1000 })
            .await
            .expect("list messages");
        if page.is_empty() {
            return seqs;
        }
        seqs.extend(page.iter().map(|m| m.seq.get()));
    }
}

fn seqs_of(range: Vec<natter_core::Message>) -> Vec<u64> {
    range.iter().map(|m| m.seq.get()).collect()
}

/// Writes messages `1..=count` straight into the table, as if sent long
/// ago, so a test starts near a bucket boundary without a thousand sends.
async fn seed_messages(store: &CqlStore, tenant: &TenantId, id: ConversationId, count: u64) {
    let insert = store
        .session()
        .prepare(format!(
            "INSERT INTO {}.messages (tenant_id, conversation_id, bucket, seq, message_id, \
             sender_id, client_message_id, sent_at, content) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            shared_keyspace()
        ))
        .await
        .expect("prepare seed insert");
    let content = encode_content(&Content::Text("seeded".into()));
    let insert = &insert;
    let content = &content;
    stream::iter(1..=count)
        .map(|seq| async move {
            store
                .session()
                .execute_unpaged(
                    insert,
                    (
                        tenant.as_str(),
                        id.as_uuid(),
                        (seq / 1024) as i64,
                        seq as i64,
                        MessageId::generate().as_uuid(),
                        "alice",
                        format!("seed-{seq}"),
                        CqlTimestamp(now()),
                        content.as_slice(),
                    ),
                )
                .await
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .expect("seed messages");
}

async fn set_last_seq_hint(store: &CqlStore, tenant: &TenantId, id: ConversationId, hint: i64) {
    store
        .session()
        .query_unpaged(
            format!(
                "UPDATE {}.conversations SET last_seq = ? \
                 WHERE tenant_id = ? AND conversation_id = ?",
                shared_keyspace()
            ),
            (hint, tenant.as_str(), id.as_uuid()),
        )
        .await
        .expect("set hint");
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
    assert_eq!(applied, vec![1], "each migration applied exactly once");
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
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (version, checksum, applied_at, lock_owner) = &rows[0];
    assert_eq!(*version, Some(1));
    assert_eq!(checksum.as_deref().map(str::len), Some(16));
    assert!(applied_at.is_some());
    assert_eq!(*lock_owner, None, "the lock is released");

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
async fn messages_cross_bucket_boundaries() {
    let store = common::store(Limits::default()).await;
    let tenant = tenant();
    let conv = conversation(&store, &tenant).await;
    seed_messages(&store, &tenant, conv.id, 1020).await;
    set_last_seq_hint(&store, &tenant, conv.id, 1000).await;

    // Sends 1021..=1030 find the head across the boundary at 1023/1024.
    for i in 1021..=1030 {
        let appended = send(&store, &tenant, text(conv.id, &format!("b{i}"))).await;
        assert_eq!(appended.message.seq, Seq::new(i));
    }
    let range = async |range| {
        seqs_of(
            store
                .list_messages(&tenant, conv.id, range)
                .await
                .expect("list"),
        )
    };
    assert_eq!(
        range(MessageRange::After {
            after: Seq::new(1015),
            limit: 100
        })
        .await,
        (1016..=1030).collect::<Vec<_>>()
    );
    assert_eq!(
        range(MessageRange::After {
            after: Seq::new(1022),
            limit: 3
        })
        .await,
        vec![1023, 1024, 1025]
    );
    assert_eq!(
        range(MessageRange::After {
            after: Seq::new(1023),
            limit: 1
        })
        .await,
        vec![1024]
    );
    assert_eq!(
        range(MessageRange::Before {
            before: Some(Seq::new(1026)),
            limit: 3
        })
        .await,
        vec![1023, 1024, 1025]
    );
    assert_eq!(
        range(MessageRange::Before {
            before: Some(Seq::new(1024)),
            limit: 2
        })
        .await,
        vec![1022, 1023]
    );
    assert_eq!(
        range(MessageRange::Before {
            before: None,
            limit: 12
        })
        .await,
        (1019..=1030).collect::<Vec<_>>()
    );
    // Pages larger than one request's rows, across the boundary.
    assert_eq!(
        range(MessageRange::Before {
            before: Some(Seq::new(5000)),
            limit: 300
        })
        .await,
        (731..=1030).collect::<Vec<_>>()
    );
    assert_eq!(
        all_seqs(&store, &tenant, conv.id).await,
        (1..=1030).collect::<Vec<_>>()
    );

    // The hint is only a starting point: stale, or a bucket ahead (as a
    // hint from another datacenter can be), the head is still exact.
    for hint in [0, 5, 1023, 1024, 1030, 2047] {
        set_last_seq_hint(&store, &tenant, conv.id, hint).await;
        let got = store.conversation(&tenant, conv.id).await.expect("get");
        assert_eq!(got.last_seq, Seq::new(1030), "hint {hint}");
    }
    set_last_seq_hint(&store, &tenant, conv.id, 3).await;
    let next = send(&store, &tenant, text(conv.id, "after-stale-hint")).await;
    assert_eq!(next.message.seq, Seq::new(1031));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_ending_on_a_full_bucket_continues_in_the_next() {
    let store = common::store(Limits::default()).await;
    let tenant = tenant();
    let conv = conversation(&store, &tenant).await;
    seed_messages(&store, &tenant, conv.id, 1023).await;
    let got = store.conversation(&tenant, conv.id).await.expect("get");
    assert_eq!(got.last_seq, Seq::new(1023));
    assert_eq!(
        send(&store, &tenant, text(conv.id, "first-of-bucket-1"))
            .await
            .message
            .seq,
        Seq::new(1024)
    );
    let marker = store
        .mark_read(&tenant, conv.id, &user("alice"), Seq::new(1024))
        .await
        .expect("mark read");
    assert_eq!(
        marker,
        Some(ReadMarker {
            conversation_id: conv.id,
            user_id: user("alice"),
            seq: Seq::new(1024)
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_get_exactly_one_seq_each() {
    const WRITERS: u64 = 8;
    const EACH: u64 = 50;
    let store = Arc::new(common::store(Limits::default()).await);
    let tenant = tenant();
    let conv = conversation(&store, &tenant).await;
    let started = Instant::now();
    let writers = (0..WRITERS).map(|w| {
        let (store, tenant) = (store.clone(), tenant.clone());
        tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..EACH {
                let appended = send(&store, &tenant, text(conv.id, &format!("w{w}-{i}"))).await;
                assert!(!appended.duplicate);
                mine.push((appended.message.seq, appended.message.id));
            }
            mine
        })
    });
    let mut ids = BTreeSet::new();
    for mine in futures::future::join_all(writers).await {
        let mine = mine.expect("writer");
        assert!(
            mine.windows(2).all(|w| w[0].0 < w[1].0),
            "a writer's sends stay in order"
        );
        ids.extend(mine.into_iter().map(|(_, id)| id));
    }
    eprintln!(
        "{} appends by {WRITERS} writers took {:?}",
        WRITERS * EACH,
        started.elapsed()
    );
    assert_eq!(ids.len() as u64, WRITERS * EACH, "no message stored twice");
    assert_eq!(
        all_seqs(&store, &tenant, conv.id).await,
        (1..=WRITERS * EACH).collect::<Vec<_>>()
    );
    let got = store.conversation(&tenant, conv.id).await.expect("get");
    assert_eq!(got.last_seq, Seq::new(WRITERS * EACH));
}

/// Raw access to `message_keys`, to leave it as a crashed send would.
async fn plant_key(
    store: &CqlStore,
    tenant: &TenantId,
    id: ConversationId,
    key: &str,
    message_id: MessageId,
    claim_id: Option<Uuid>,
    claimed_at: i64,
) {
    store
        .session()
        .query_unpaged(
            format!(
                "INSERT INTO {}.message_keys (tenant_id, conversation_id, sender_id, \
                 client_message_id, message_id, base_seq, claim_id, claimed_at) \
                 VALUES (?, ?, 'alice', ?, ?, 0, ?, ?)",
                shared_keyspace()
            ),
            (
                tenant.as_str(),
                id.as_uuid(),
                key,
                message_id.as_uuid(),
                claim_id,
                CqlTimestamp(claimed_at),
            ),
        )
        .await
        .expect("plant message key");
}

async fn key_seq(
    store: &CqlStore,
    tenant: &TenantId,
    id: ConversationId,
    key: &str,
) -> Option<i64> {
    store
        .session()
        .query_unpaged(
            format!(
                "SELECT seq FROM {}.message_keys WHERE tenant_id = ? AND conversation_id = ? \
                 AND sender_id = 'alice' AND client_message_id = ?",
                shared_keyspace()
            ),
            (tenant.as_str(), id.as_uuid(), key),
        )
        .await
        .expect("read key")
        .into_rows_result()
        .expect("rows")
        .maybe_first_row::<(Option<i64>,)>()
        .expect("row")
        .and_then(|(seq,)| seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_crashed_before_storing_is_taken_over_after_its_lease() {
    let store = common::store(Limits::default()).await;
    let tenant = tenant();
    let conv = conversation(&store, &tenant).await;

    // Claimed a moment ago, nothing stored: the attempt may be alive.
    plant_key(
        &store,
        &tenant,
        conv.id,
        "young",
        MessageId::generate(),
        Some(Uuid::now_v7()),
        now(),
    )
    .await;
    let busy = store.append_message(&tenant, text(conv.id, "young")).await;
    assert!(
        matches!(busy, Err(StoreError::Unavailable(_))),
        "got {busy:?}"
    );

    // Claimed an hour ago, nothing stored: the attempt is dead.
    plant_key(
        &store,
        &tenant,
        conv.id,
        "stale",
        MessageId::generate(),
        Some(Uuid::now_v7()),
        now() - 3_600_000,
    )
    .await;
    let retry = text(conv.id, "stale");
    let taken = store
        .append_message(&tenant, retry.clone())
        .await
        .expect("take over");
    assert!(!taken.duplicate);
    assert_eq!(taken.message.seq, Seq::new(1));
    assert_eq!(taken.message.id, retry.id);
    assert_eq!(key_seq(&store, &tenant, conv.id, "stale").await, Some(1));
    let again = store
        .append_message(&tenant, text(conv.id, "stale"))
        .await
        .expect("repeat");
    assert!(again.duplicate);
    assert_eq!(again.message, taken.message);

    // A claim written without a claim id (by hand, say) is taken over too.
    plant_key(
        &store,
        &tenant,
        conv.id,
        "no-claim-id",
        MessageId::generate(),
        None,
        now() - 3_600_000,
    )
    .await;
    let taken = store
        .append_message(&tenant, text(conv.id, "no-claim-id"))
        .await
        .expect("take over");
    assert_eq!(taken.message.seq, Seq::new(2));
    assert_eq!(all_seqs(&store, &tenant, conv.id).await, vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_crashed_after_storing_is_answered_as_a_duplicate() {
    let store = common::store(Limits::default()).await;
    let tenant = tenant();
    let conv = conversation(&store, &tenant).await;
    send(&store, &tenant, text(conv.id, "before")).await;

    // The crashed attempt stored its message at seq 2 but never recorded
    // the seq in its key; one claim is young, one stale.
    for (key, claimed_at) in [("young", now()), ("stale", now() - 3_600_000)] {
        let original = text(conv.id, key);
        let seq = all_seqs(&store, &tenant, conv.id).await.len() as i64 + 1;
        store
            .session()
            .query_unpaged(
                format!(
                    "INSERT INTO {}.messages (tenant_id, conversation_id, bucket, seq, \
                     message_id, sender_id, client_message_id, sent_at, content) \
                     VALUES (?, ?, 0, ?, ?, 'alice', ?, ?, ?)",
                    shared_keyspace()
                ),
                (
                    tenant.as_str(),
                    conv.id.as_uuid(),
                    seq,
                    original.id.as_uuid(),
                    key,
                    CqlTimestamp(original.sent_at.as_millis()),
                    encode_content(&original.content),
                ),
            )
            .await
            .expect("plant message");
        plant_key(
            &store,
            &tenant,
            conv.id,
            key,
            original.id,
            Some(Uuid::now_v7()),
            claimed_at,
        )
        .await;

        let retry = store
            .append_message(&tenant, text(conv.id, key))
            .await
            .expect("retry");
        assert!(retry.duplicate, "{key}");
        assert_eq!(retry.message, original.at(Seq::new(seq as u64)), "{key}");
        assert_eq!(
            key_seq(&store, &tenant, conv.id, key).await,
            Some(seq),
            "{key}: seq recorded"
        );
    }
    let next = send(&store, &tenant, text(conv.id, "after")).await;
    assert_eq!(next.message.seq, Seq::new(4));
    assert_eq!(all_seqs(&store, &tenant, conv.id).await, vec![1, 2, 3, 4]);
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
    let event = Event::Read(ReadMarker {
        conversation_id: ConversationId::generate(),
        user_id: alice.clone(),
        seq: Seq::new(1),
    });
    // No head hint at all: the probe starts from the beginning.
    seed_updates(&store, &tenant, &alice, &event, 1020).await;
    assert_eq!(
        store.log_head(&tenant, &alice).await.expect("head"),
        Cursor::new(1020)
    );
    for at in 1021..=1030 {
        store
            .append_update(&tenant, &alice, Cursor::new(at), &event)
            .await
            .expect("append");
    }
    let gap = store
        .append_update(&tenant, &alice, Cursor::new(1032), &event)
        .await;
    assert!(matches!(gap, Err(StoreError::Conflict(_))), "got {gap:?}");

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
    store
        .append_update(&tenant, &alice, Cursor::new(1031), &event)
        .await
        .expect("append after trim");
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
