//! What the conformance suite cannot see: data surviving a restart, one
//! writer at a time under load, the data directory's exclusivity, and
//! damaged files reported as errors.

mod common;

use std::sync::Arc;

use common::{at, attachment, conversation, tenant, text, user};
use natter_core::{
    Conversation, ConversationId, Cursor, Device, DeviceId, Event, Limits, Member,
    MembershipChange, MembershipKind, Message, ReadMarker, Role, Seq, TenantId, UserId,
};
use natter_store::{
    ConversationStore, MessageRange, PageRequest, StoreError, SyncStore, UpdateBatch,
};
use natter_store_embedded::{DATABASE_FILE, EmbeddedStore, MAX_DEVICES_PER_USER};
use redb::{Database, ReadableDatabase, TableDefinition};

fn open(dir: &tempfile::TempDir) -> EmbeddedStore {
    EmbeddedStore::open(dir.path(), Limits::default()).expect("open store")
}

fn all_messages() -> MessageRange {
    MessageRange::After {
        after: Seq::ZERO,
        limit: 1000,
    }
}

fn device(tenant: &TenantId, user: &UserId, id: &str, label: &str) -> Device {
    Device {
        tenant_id: tenant.clone(),
        user_id: user.clone(),
        device_id: DeviceId::new(id).expect("valid device id"),
        label: label.into(),
        cursor: Cursor::ZERO,
        last_seen: at(10),
        revoked: false,
    }
}

/// Everything the store holds for the restart test's tenant, read through
/// the public API.
#[derive(Debug, PartialEq)]
struct Snapshot {
    conversations: Vec<(Conversation, Vec<Member>, Vec<Message>)>,
    listed: Vec<(UserId, Vec<ConversationId>)>,
    heads: Vec<Cursor>,
    updates: Vec<UpdateBatch>,
    devices: Vec<Device>,
}

async fn snapshot(
    store: &EmbeddedStore,
    tenant: &TenantId,
    ids: &[ConversationId],
    users: &[UserId],
) -> Snapshot {
    let mut conversations = Vec::new();
    for &id in ids {
        let members = store
            .list_members(
                tenant,
                id,
                PageRequest {
                    after: None,
                    size: 100,
                },
            )
            .await
            .expect("read back");
        assert!(members.next.is_none());
        conversations.push((
            store.conversation(tenant, id).await.expect("read back"),
            members.items,
            store
                .list_messages(tenant, id, all_messages())
                .await
                .expect("read back"),
        ));
    }
    let (mut listed, mut heads, mut updates, mut devices) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for user in users {
        let page = PageRequest {
            after: None,
            size: 100,
        };
        let mine = store
            .list_conversations(tenant, user, page)
            .await
            .expect("read back");
        listed.push((user.clone(), mine.items.iter().map(|c| c.id).collect()));
        heads.push(store.log_head(tenant, user).await.expect("read back"));
        for after in [0, 2, 4] {
            updates.push(
                store
                    .read_updates(tenant, user, Cursor::new(after), 100)
                    .await
                    .expect("read back"),
            );
        }
        let page = PageRequest {
            after: None,
            size: 100,
        };
        devices.extend(
            store
                .list_devices(tenant, user, page)
                .await
                .expect("read back")
                .items,
        );
    }
    Snapshot {
        conversations,
        listed,
        heads,
        updates,
        devices,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let acme = tenant("acme");
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let users = [alice.clone(), bob.clone(), carol.clone()];

    let store = open(&dir);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let new = conversation(&acme, &[("alice", Role::Customer), ("bob", Role::Agent)]);
        ids.push(store.create_conversation(&new).await.unwrap().id);
    }
    store
        .add_members(&acme, ids[0], &[(carol.clone(), Role::Bot)], at(2))
        .await
        .unwrap();
    store
        .remove_members(&acme, ids[1], std::slice::from_ref(&bob), at(3))
        .await
        .unwrap();
    let mut first = None;
    for i in 0..5 {
        let appended = store
            .append_message(&acme, text(ids[0], "alice", &format!("a{i}"), "hello"))
            .await
            .unwrap();
        first.get_or_insert(appended.message);
    }
    store
        .append_message(&acme, attachment(ids[2], "bob", "file"))
        .await
        .unwrap();
    store
        .mark_read(&acme, ids[0], &bob, Seq::new(4))
        .await
        .unwrap();

    let events = [
        Event::Message(first.clone().unwrap()),
        Event::Read(ReadMarker {
            conversation_id: ids[0],
            user_id: bob.clone(),
            seq: Seq::new(4),
        }),
        Event::Membership(MembershipChange {
            conversation_id: ids[1],
            user_id: bob.clone(),
            role: Role::Agent,
            kind: MembershipKind::Left,
            at: at(3),
        }),
    ];
    for (i, event) in events.iter().cycle().take(6).enumerate() {
        store
            .append_update(&acme, &bob, Cursor::new(i as u64 + 1), event)
            .await
            .unwrap();
    }
    store
        .trim_updates(&acme, &bob, Cursor::new(2))
        .await
        .unwrap();
    for name in ["phone", "web"] {
        store
            .touch_device(&device(&acme, &bob, name, name))
            .await
            .unwrap();
    }
    let phone = DeviceId::new("phone").unwrap();
    let web = DeviceId::new("web").unwrap();
    store
        .save_cursor(&acme, &bob, &phone, Cursor::new(5))
        .await
        .unwrap();
    store.revoke_device(&acme, &bob, &web).await.unwrap();

    let before = snapshot(&store, &acme, &ids, &users).await;
    assert_eq!(
        before.conversations[0].2.len(),
        5,
        "the snapshot saw the data"
    );
    assert_eq!(before.heads[1], Cursor::new(6));
    drop(store);

    let store = open(&dir);
    let after = snapshot(&store, &acme, &ids, &users).await;
    assert_eq!(after, before);

    // Writes continue where they left off.
    let next = store
        .append_message(&acme, text(ids[0], "bob", "after-restart", "back"))
        .await
        .unwrap();
    assert_eq!(next.message.seq, Seq::new(6));
    assert!(!next.duplicate);
    let retry = store
        .append_message(&acme, text(ids[0], "alice", "a0", "hello"))
        .await
        .unwrap();
    assert!(retry.duplicate, "idempotency keys survive a restart");
    assert_eq!(Some(retry.message), first);
    assert!(matches!(
        store
            .append_update(&acme, &bob, Cursor::new(6), &events[0])
            .await,
        Err(StoreError::Conflict(_))
    ));
    store
        .append_update(&acme, &bob, Cursor::new(7), &events[0])
        .await
        .unwrap();
    let touched = store
        .touch_device(&device(&acme, &bob, "phone", "ios 18"))
        .await
        .unwrap();
    assert_eq!(touched.cursor, Cursor::new(5));
    assert!(matches!(
        store.touch_device(&device(&acme, &bob, "web", "web")).await,
        Err(StoreError::FailedPrecondition(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_every_seq_once() {
    const TASKS: u64 = 8;
    const EACH: u64 = 50;
    let store = Arc::new(EmbeddedStore::temporary(Limits::default()).unwrap());
    let acme = tenant("acme");
    let new = conversation(&acme, &[("alice", Role::Customer), ("bob", Role::Agent)]);
    let id = store.create_conversation(&new).await.unwrap().id;

    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (store, acme) = (store.clone(), acme.clone());
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..EACH {
                    let sender = if task % 2 == 0 { "alice" } else { "bob" };
                    let message = text(id, sender, &format!("t{task}-{i}"), "hi");
                    let appended = store.append_message(&acme, message).await.unwrap();
                    assert!(!appended.duplicate);
                    seqs.push(appended.message.seq.get());
                }
                seqs
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for task in tasks {
        let mine = task.await.unwrap();
        assert!(mine.is_sorted(), "one task's appends are ordered");
        seqs.extend(mine);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=TASKS * EACH).collect::<Vec<_>>());

    let stored = store
        .list_messages(&acme, id, all_messages())
        .await
        .unwrap();
    assert_eq!(
        stored.iter().map(|m| m.seq.get()).collect::<Vec<_>>(),
        (1..=TASKS * EACH).collect::<Vec<_>>()
    );
    let conversation = store.conversation(&acme, id).await.unwrap();
    assert_eq!(conversation.last_seq, Seq::new(TASKS * EACH));
}

/// Concurrent writes share transactions; one that fails is refused alone
/// and undoes nobody else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_undoes_no_other() {
    const TASKS: u64 = 8;
    const EACH: u64 = 40;
    let store = Arc::new(EmbeddedStore::temporary(Limits::default()).unwrap());
    let acme = tenant("acme");
    let new = conversation(&acme, &[("alice", Role::Customer)]);
    let id = store.create_conversation(&new).await.unwrap().id;
    let missing = ConversationId::generate();

    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (store, acme) = (store.clone(), acme.clone());
            tokio::spawn(async move {
                for i in 0..EACH {
                    let key = format!("t{task}-{i}");
                    let target = if (task + i) % 3 == 0 { missing } else { id };
                    let result = store
                        .append_message(&acme, text(target, "alice", &key, "hi"))
                        .await;
                    match result {
                        Ok(appended) => assert!(target == id && !appended.duplicate),
                        Err(StoreError::NotFound { .. }) => assert_eq!(target, missing),
                        Err(other) => panic!("unexpected {other:?}"),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let expected: u64 = (0..TASKS)
        .map(|task| (0..EACH).filter(|i| (task + i) % 3 != 0).count() as u64)
        .sum();
    let stored = store
        .list_messages(&acme, id, all_messages())
        .await
        .unwrap();
    assert_eq!(
        stored.iter().map(|m| m.seq.get()).collect::<Vec<_>>(),
        (1..=expected).collect::<Vec<_>>(),
        "every accepted message once, gap-free"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_returns_the_first_message_even_with_other_content() {
    let store = EmbeddedStore::temporary(Limits::default()).unwrap();
    let acme = tenant("acme");
    let new = conversation(&acme, &[("alice", Role::Customer)]);
    let id = store.create_conversation(&new).await.unwrap().id;

    let first = store
        .append_message(&acme, text(id, "alice", "k", "hello"))
        .await
        .unwrap();
    let edited = store
        .append_message(&acme, text(id, "alice", "k", "hello, edited"))
        .await
        .unwrap();
    assert!(edited.duplicate);
    assert_eq!(edited.message, first.message);
    let stored = store
        .list_messages(&acme, id, all_messages())
        .await
        .unwrap();
    assert_eq!(stored, vec![first.message]);

    // The key is per conversation too.
    let other = conversation(&acme, &[("alice", Role::Customer)]);
    let other = store.create_conversation(&other).await.unwrap().id;
    let elsewhere = store
        .append_message(&acme, text(other, "alice", "k", "hello"))
        .await
        .unwrap();
    assert!(!elsewhere.duplicate);
    assert_eq!(elsewhere.message.seq, Seq::new(1));
}

#[tokio::test]
async fn a_data_directory_is_open_in_one_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert_eq!(store.path(), dir.path().join(DATABASE_FILE));
    let second = EmbeddedStore::open(dir.path(), Limits::default());
    assert!(
        matches!(second, Err(StoreError::Unavailable(_))),
        "got {second:?}"
    );
    drop(store);
    open(&dir);
}

#[tokio::test]
async fn a_store_opens_in_a_directory_it_creates() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("var").join("natter");
    let store = EmbeddedStore::open(&nested, Limits::default()).unwrap();
    assert!(nested.join(DATABASE_FILE).is_file());
    drop(store);
}

#[tokio::test]
async fn a_temporary_store_removes_its_directory() {
    let store = EmbeddedStore::temporary(Limits::default()).unwrap();
    let dir = store.path().parent().unwrap().to_owned();
    assert!(dir.is_dir());
    drop(store);
    assert!(!dir.exists());
}

/// The format marker, as the store writes it.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The conversations table, as the store writes it.
const CONVERSATIONS: TableDefinition<(&str, u128), &[u8]> = TableDefinition::new("conversations");

#[tokio::test]
async fn a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&dir));
    let db = Database::create(dir.path().join(DATABASE_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(META)
        .unwrap()
        .insert("format_version", 2)
        .unwrap();
    txn.commit().unwrap();
    drop(db);

    let reopened = EmbeddedStore::open(dir.path(), Limits::default());
    assert!(
        matches!(reopened, Err(StoreError::FailedPrecondition(_))),
        "got {reopened:?}"
    );
}

#[tokio::test]
async fn a_damaged_record_is_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let acme = tenant("acme");
    let store = open(&dir);
    let new = conversation(&acme, &[("alice", Role::Customer)]);
    store.create_conversation(&new).await.unwrap();
    drop(store);

    let db = Database::create(dir.path().join(DATABASE_FILE)).unwrap();
    {
        let read = db.begin_read().unwrap();
        let table = read.open_table(CONVERSATIONS).unwrap();
        let key = ("acme", new.id.as_uuid().as_u128());
        assert!(
            table.get(key).unwrap().is_some(),
            "the key layout is as expected"
        );
    }
    let txn = db.begin_write().unwrap();
    txn.open_table(CONVERSATIONS)
        .unwrap()
        .insert(
            ("acme", new.id.as_uuid().as_u128()),
            [0xde, 0xad].as_slice(),
        )
        .unwrap();
    txn.commit().unwrap();
    drop(db);

    let store = open(&dir);
    let got = store.conversation(&acme, new.id).await;
    assert!(matches!(got, Err(StoreError::Corrupt(_))), "got {got:?}");
}

#[tokio::test]
async fn a_page_that_ends_the_list_has_no_next() {
    let store = EmbeddedStore::temporary(Limits::default()).unwrap();
    let acme = tenant("acme");
    let new = conversation(
        &acme,
        &[
            ("a", Role::Customer),
            ("b", Role::Agent),
            ("c", Role::Bot),
            ("d", Role::Bot),
        ],
    );
    let id = store.create_conversation(&new).await.unwrap().id;
    let page = |after: Option<&str>| PageRequest {
        after: after.map(user),
        size: 2,
    };
    let first = store.list_members(&acme, id, page(None)).await.unwrap();
    assert_eq!(first.next, Some(user("b")));
    let second = store
        .list_members(&acme, id, page(Some("b")))
        .await
        .unwrap();
    let names: Vec<_> = second.items.iter().map(|m| m.user_id.to_string()).collect();
    assert_eq!(names, ["c", "d"]);
    assert_eq!(second.next, None, "exactly full and nothing follows");

    // A size of zero asks for the default page.
    let default = store
        .list_members(
            &acme,
            id,
            PageRequest {
                after: None,
                size: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(default.items.len(), 4);
    assert_eq!(default.next, None);
}

#[tokio::test]
async fn trimming_past_the_head_keeps_the_log_writable() {
    let store = EmbeddedStore::temporary(Limits::default()).unwrap();
    let (acme, alice) = (tenant("acme"), user("alice"));
    let event = Event::Read(ReadMarker {
        conversation_id: ConversationId::generate(),
        user_id: alice.clone(),
        seq: Seq::new(1),
    });
    for i in 1..=3 {
        store
            .append_update(&acme, &alice, Cursor::new(i), &event)
            .await
            .unwrap();
    }
    store
        .trim_updates(&acme, &alice, Cursor::new(99))
        .await
        .unwrap();
    assert_eq!(store.log_head(&acme, &alice).await.unwrap(), Cursor::new(3));
    let read = |after| store.read_updates(&acme, &alice, Cursor::new(after), 10);
    assert_eq!(read(3).await.unwrap(), UpdateBatch::Updates(vec![]));
    assert_eq!(
        read(2).await.unwrap(),
        UpdateBatch::ResyncRequired {
            head: Cursor::new(3)
        }
    );
    store
        .append_update(&acme, &alice, Cursor::new(4), &event)
        .await
        .unwrap();
    let UpdateBatch::Updates(fresh) = read(3).await.unwrap() else {
        panic!("a device at the trim point keeps syncing")
    };
    assert_eq!(fresh.len(), 1);
    // A trim below the floor changes nothing.
    store
        .trim_updates(&acme, &alice, Cursor::new(1))
        .await
        .unwrap();
    assert_eq!(read(3).await.unwrap(), UpdateBatch::Updates(fresh));
}

#[tokio::test]
async fn a_cursor_beyond_the_head_must_resync() {
    let store = EmbeddedStore::temporary(Limits::default()).unwrap();
    let (acme, alice) = (tenant("acme"), user("alice"));
    let batch = store
        .read_updates(&acme, &alice, Cursor::new(5), 10)
        .await
        .unwrap();
    assert_eq!(batch, UpdateBatch::ResyncRequired { head: Cursor::ZERO });
}

#[tokio::test]
async fn devices_per_user_are_bounded() {
    let store = EmbeddedStore::temporary(Limits::default()).unwrap();
    let (acme, alice) = (tenant("acme"), user("alice"));
    for i in 0..MAX_DEVICES_PER_USER {
        store
            .touch_device(&device(&acme, &alice, &format!("d{i:03}"), "x"))
            .await
            .unwrap();
    }
    let one_more = store
        .touch_device(&device(&acme, &alice, "extra", "x"))
        .await;
    assert!(
        matches!(one_more, Err(StoreError::LimitExceeded(_))),
        "got {one_more:?}"
    );
    // Known devices still refresh, and other users are unaffected.
    store
        .touch_device(&device(&acme, &alice, "d000", "y"))
        .await
        .unwrap();
    store
        .touch_device(&device(&acme, &user("bob"), "d000", "y"))
        .await
        .unwrap();
}

#[tokio::test]
async fn cursors_of_unknown_or_revoked_devices_are_refused() {
    let store = EmbeddedStore::temporary(Limits::default()).unwrap();
    let (acme, alice) = (tenant("acme"), user("alice"));
    let phone = DeviceId::new("phone").unwrap();
    let unknown = store
        .save_cursor(&acme, &alice, &phone, Cursor::new(1))
        .await;
    assert!(
        matches!(unknown, Err(StoreError::NotFound { .. })),
        "got {unknown:?}"
    );
    assert!(matches!(
        store.revoke_device(&acme, &alice, &phone).await,
        Err(StoreError::NotFound { .. })
    ));

    store
        .touch_device(&device(&acme, &alice, "phone", "ios"))
        .await
        .unwrap();
    store.revoke_device(&acme, &alice, &phone).await.unwrap();
    store.revoke_device(&acme, &alice, &phone).await.unwrap();
    let revoked = store
        .save_cursor(&acme, &alice, &phone, Cursor::new(1))
        .await;
    assert!(
        matches!(revoked, Err(StoreError::FailedPrecondition(_))),
        "got {revoked:?}"
    );
}
