//! What the conformance suite cannot see: data surviving a restart,
//! concurrent writes sharing transactions, writes to unknown conversations
//! refused whole (their announcements too), files from before a table
//! existed, the data directory's exclusivity, and damaged files reported
//! as errors.

mod common;

use std::sync::Arc;

use common::{VERSION, at, attachment, conversation, numbered, tenant, user};
use natter_core::{
    Conversation, ConversationId, Cursor, Device, DeviceId, Event, Limits, Member,
    MembershipChange, MembershipKind, Message, ReadMarker, Role, Seq, TenantId, Update, UserId,
};
use natter_store::{
    Announcement, ConversationStore, LeaseStore, MessageRange, PageRequest, StoreError, SyncStore,
    UpdateBatch,
};
use natter_store_embedded::{DATABASE_FILE, EmbeddedStore, MAX_DEVICES_PER_USER};
use redb::{Database, ReadableDatabase, TableDefinition};

fn open(dir: &tempfile::TempDir) -> EmbeddedStore {
    EmbeddedStore::open(dir.path(), Limits::default()).expect("open store")
}

/// `event` at `cursor` of `who`'s log, as a write names it.
fn update(
    tenant: &TenantId,
    who: &UserId,
    cursor: u64,
    event: &Event,
) -> (TenantId, UserId, Update) {
    let update = Update {
        cursor: Cursor::new(cursor),
        event: event.clone(),
    };
    (tenant.clone(), who.clone(), update)
}

/// What a write of storage partition `partition` at `version` announced.
fn announcement(partition: u32, version: u64) -> Announcement {
    Announcement {
        partition,
        version,
        events: format!("events of {version}").into_bytes(),
    }
}

/// The versions of every announcement `partition` keeps.
async fn kept(store: &EmbeddedStore, partition: u32) -> Vec<u64> {
    let kept = store.announcements(partition, 0, 1000).await;
    let kept = kept.expect("read announcements");
    kept.iter().map(|a| a.version).collect()
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
    let written: Vec<_> = (1..=5)
        .map(|seq| (acme.clone(), numbered(ids[0], "alice", seq)))
        .chain([(
            acme.clone(),
            attachment(ids[2], "bob", "file").at(Seq::new(1)),
        )])
        .collect();
    let announced = announcement(7, VERSION);
    store
        .write_messages(&written, Some(&announced), VERSION)
        .await
        .unwrap();
    let first = written[0].1.clone();
    store
        .mark_read(&acme, ids[0], &bob, Seq::new(4))
        .await
        .unwrap();

    let events = [
        Event::Message(first.clone()),
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
    let logged: Vec<_> = events
        .iter()
        .cycle()
        .take(6)
        .enumerate()
        .map(|(i, event)| update(&acme, &bob, i as u64 + 1, event))
        .collect();
    store.write_updates(&logged, VERSION).await.unwrap();
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
    let conversation = store.conversation(&acme, ids[0]).await.unwrap();
    assert_eq!(conversation.last_seq, Seq::new(5));
    let kept_before = store.announcements(7, 0, 10).await.unwrap();
    assert_eq!(kept_before, [announced]);
    let next = numbered(ids[0], "bob", 6);
    store
        .write_messages(
            &[(acme.clone(), next.clone())],
            Some(&announcement(7, VERSION + 1)),
            VERSION + 1,
        )
        .await
        .unwrap();
    store.forget_announcements(7, VERSION).await.unwrap();
    assert_eq!(kept(&store, 7).await, [VERSION + 1]);
    let stored = store
        .list_messages(&acme, ids[0], all_messages())
        .await
        .unwrap();
    assert_eq!(stored.first(), Some(&first));
    assert_eq!(stored.last(), Some(&next));
    assert_eq!(store.log_head(&acme, &bob).await.unwrap(), Cursor::new(6));
    store
        .write_updates(&[update(&acme, &bob, 7, &events[0])], VERSION + 1)
        .await
        .unwrap();
    assert_eq!(store.log_head(&acme, &bob).await.unwrap(), Cursor::new(7));
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

/// Writers of different conversations at once share transactions, and
/// every message lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_of_many_conversations_all_land() {
    const TASKS: usize = 8;
    const CALLS: u64 = 10;
    const EACH: u64 = 5;
    let store = Arc::new(EmbeddedStore::temporary(Limits::default()).unwrap());
    let acme = tenant("acme");
    let mut ids = Vec::new();
    for _ in 0..TASKS {
        let new = conversation(&acme, &[("alice", Role::Customer)]);
        ids.push(store.create_conversation(&new).await.unwrap().id);
    }

    let tasks: Vec<_> = ids
        .iter()
        .map(|&id| {
            let (store, acme) = (store.clone(), acme.clone());
            tokio::spawn(async move {
                let mut written = Vec::new();
                for call in 0..CALLS {
                    let batch: Vec<_> = (call * EACH + 1..=(call + 1) * EACH)
                        .map(|seq| (acme.clone(), numbered(id, "alice", seq)))
                        .collect();
                    store.write_messages(&batch, None, VERSION).await.unwrap();
                    written.extend(batch.into_iter().map(|(_, m)| m));
                }
                written
            })
        })
        .collect();
    for (task, id) in tasks.into_iter().zip(ids) {
        let written = task.await.unwrap();
        let stored = store
            .list_messages(&acme, id, all_messages())
            .await
            .unwrap();
        assert_eq!(stored, written);
        let conversation = store.conversation(&acme, id).await.unwrap();
        assert_eq!(conversation.last_seq, Seq::new(CALLS * EACH));
    }
}

/// Unlike the CQL store, this one checks that every conversation of a
/// write exists; if one does not, nothing of the write is stored, nor its
/// announcement.
#[tokio::test]
async fn a_write_to_an_unknown_conversation_stores_nothing() {
    let store = EmbeddedStore::temporary(Limits::default()).unwrap();
    let acme = tenant("acme");
    let new = conversation(&acme, &[("alice", Role::Customer)]);
    let id = store.create_conversation(&new).await.unwrap().id;
    let ours = |seq| (acme.clone(), numbered(id, "alice", seq));
    for stranger in [
        (
            acme.clone(),
            numbered(ConversationId::generate(), "alice", 1),
        ),
        (tenant("globex"), numbered(id, "alice", 1)),
    ] {
        let batch = [ours(1), ours(2), stranger, ours(3)];
        let result = store
            .write_messages(&batch, Some(&announcement(7, VERSION)), VERSION)
            .await;
        assert!(
            matches!(result, Err(StoreError::NotFound { .. })),
            "got {result:?}"
        );
    }
    let stored = store
        .list_messages(&acme, id, all_messages())
        .await
        .unwrap();
    assert_eq!(stored, vec![]);
    assert_eq!(
        store.conversation(&acme, id).await.unwrap().last_seq,
        Seq::ZERO
    );
    assert!(kept(&store, 7).await.is_empty());
}

/// Concurrent writes share transactions; one that fails is refused whole,
/// its announcement too, and undoes nobody else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_undoes_no_other() {
    const TASKS: u64 = 8;
    const EACH: u64 = 40;
    let store = Arc::new(EmbeddedStore::temporary(Limits::default()).unwrap());
    let acme = tenant("acme");
    let missing = ConversationId::generate();
    let mut ids = Vec::new();
    for _ in 0..TASKS {
        let new = conversation(&acme, &[("alice", Role::Customer)]);
        ids.push(store.create_conversation(&new).await.unwrap().id);
    }

    let tasks: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(task, &id)| {
            let (store, acme) = (store.clone(), acme.clone());
            // Each task writes as the sequencer of a partition of its own.
            let partition = task as u32;
            tokio::spawn(async move {
                let mut refused = 0;
                for seq in 1..=EACH {
                    let message = (acme.clone(), numbered(id, "alice", seq));
                    let version = VERSION + 2 * seq;
                    if (task as u64 + seq).is_multiple_of(3) {
                        // Together with a message of a missing conversation
                        // the write is refused, and this message not stored.
                        let stranger = (acme.clone(), numbered(missing, "alice", seq));
                        let announced = announcement(partition, version - 1);
                        let result = store
                            .write_messages(
                                &[message.clone(), stranger],
                                Some(&announced),
                                version - 1,
                            )
                            .await;
                        assert!(
                            matches!(result, Err(StoreError::NotFound { .. })),
                            "got {result:?}"
                        );
                        let stored = store.conversation(&acme, id).await.unwrap().last_seq;
                        assert_eq!(stored, Seq::new(seq - 1), "nothing of it landed");
                        refused += 1;
                    }
                    let announced = announcement(partition, version);
                    store
                        .write_messages(&[message], Some(&announced), version)
                        .await
                        .unwrap();
                }
                refused
            })
        })
        .collect();
    let mut refused = 0;
    for task in tasks {
        refused += task.await.unwrap();
    }
    assert!(refused > 0);
    for (partition, id) in ids.into_iter().enumerate() {
        let stored = store
            .list_messages(&acme, id, all_messages())
            .await
            .unwrap();
        assert_eq!(
            stored.iter().map(|m| m.seq.get()).collect::<Vec<_>>(),
            (1..=EACH).collect::<Vec<_>>(),
            "every message once, gap-free"
        );
        assert_eq!(
            kept(&store, partition as u32).await,
            (1..=EACH).map(|seq| VERSION + 2 * seq).collect::<Vec<_>>(),
            "the announcements of the writes that landed, and only those"
        );
    }
}

/// Files of format 2 from before announcements have no table for them;
/// opening one adds it, and the format stays.
#[tokio::test]
async fn a_file_from_before_announcements_keeps_them_once_opened() {
    const ANNOUNCEMENTS: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("announcements");
    let dir = tempfile::tempdir().unwrap();
    let acme = tenant("acme");
    let store = open(&dir);
    let new = conversation(&acme, &[("alice", Role::Customer)]);
    let id = store.create_conversation(&new).await.unwrap().id;
    drop(store);
    let db = Database::create(dir.path().join(DATABASE_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    assert!(
        txn.delete_table(ANNOUNCEMENTS).unwrap(),
        "the table was there"
    );
    txn.commit().unwrap();
    drop(db);

    let store = open(&dir);
    assert!(kept(&store, 7).await.is_empty());
    let message = (acme.clone(), numbered(id, "alice", 1));
    store
        .write_messages(&[message], Some(&announcement(7, VERSION)), VERSION)
        .await
        .unwrap();
    assert_eq!(kept(&store, 7).await, [VERSION]);
    drop(store);

    let db = Database::create(dir.path().join(DATABASE_FILE)).unwrap();
    let txn = db.begin_read().unwrap();
    let format = txn.open_table(META).unwrap().get("format_version").unwrap();
    assert_eq!(format.map(|v| v.value()), Some(2));
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

/// Dropping the store closes its file, even while a write whose caller
/// stopped waiting is still being committed, so a reopen never finds the
/// file open.
#[tokio::test]
async fn a_dropped_store_closes_its_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ttl = std::time::Duration::from_secs(60);
    for round in 0..50 {
        let store = EmbeddedStore::open(dir.path(), Limits::default())
            .unwrap_or_else(|e| panic!("reopen {round}: {e}"));
        let lease = store.acquire_lease("storage", 3, "owner", at(1_000), ttl);
        lease.await.unwrap().expect("free after every reopen");
        // Polled once, so queued, then abandoned.
        let abandoned = store.acquire_lease("storage", 4, "owner", at(1_000), ttl);
        let _ = tokio::time::timeout(std::time::Duration::ZERO, abandoned).await;
        drop(store);
    }
}

/// Whoever held leases in the file before is gone when it opens again, so
/// a restarted process need not wait for its old leases to lapse.
#[tokio::test]
async fn leases_of_a_closed_store_are_free_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let ttl = std::time::Duration::from_secs(60);
    let held = store.acquire_lease("storage", 3, "old", at(1_000), ttl);
    let held = held.await.unwrap();
    let held = held.expect("a free partition");
    drop(store);
    let store = open(&dir);
    let taken = store.acquire_lease("storage", 3, "new", at(2_000), ttl);
    let taken = taken.await.unwrap();
    let taken = taken.expect("free after the reopen, long before it would lapse");
    assert!(taken.epoch > held.epoch);
    assert!(
        store
            .renew_lease(&held, at(2_000), ttl)
            .await
            .unwrap()
            .is_none()
    );
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
        .insert("format_version", 3)
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
    let logged: Vec<_> = (1..=3).map(|i| update(&acme, &alice, i, &event)).collect();
    store.write_updates(&logged, VERSION).await.unwrap();
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
        .write_updates(&[update(&acme, &alice, 4, &event)], VERSION + 1)
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
