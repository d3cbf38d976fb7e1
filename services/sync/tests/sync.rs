//! Component tests: the real sync service on the in-process bus and a
//! temporary embedded store, driven through fanout's append requests, its
//! bus subjects and its gRPC API. Storage's MARK_READ responder is played
//! by a test double that answers on the real bus.

// The helpers are test code too: a failed unwrap is a failed test
// (`allow-unwrap-in-tests` only covers the `#[test]` functions themselves).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use natter_bus::{Bus, BusError};
use natter_bus_local::LocalBus;
use natter_contract::{ContractError, encode, subjects};
use natter_core::{Cursor, DeviceId, Event, Role, UserId};
use natter_proto::bus::v1::{
    Actor, AppendOutcome, CursorAck, DeviceHello, DeviceRevoked, DeviceWelcome, LiveFrames,
    MarkReadCommand, MarkReadOutcome, PartitionHeld, UpdatesPage, UpdatesQuery, UserEvent,
    UserEvents,
};
use natter_proto::status::{permission_denied, reason as reasons, to_failure};
use natter_proto::v1::{
    GetUpdatesRequest, ListDevicesRequest, MarkReadRequest, ResyncRequired, RevokeDeviceRequest,
};
use natter_store::SyncStore;
use natter_store_embedded::EmbeddedStore;
use prost::Message as _;
use support::*;
use tonic::Code;

const ASK: Duration = Duration::from_secs(5);

fn cursors(updates: &[natter_core::Update]) -> Vec<u64> {
    updates.iter().map(|u| u.cursor.get()).collect()
}

fn events(updates: &[natter_core::Update]) -> Vec<Event> {
    updates.iter().map(|u| u.event.clone()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn events_are_appended_in_order_per_user_and_published_live() {
    let h = Harness::start().await;
    let (alice, bob) = (h.user("alice"), h.user("bob"));
    let mut alice_live = h.live(&alice).await;
    let mut bob_live = h.live(&bob).await;
    let c = conversation();
    let sent: Vec<Event> = (1..=6).map(|seq| message(c, seq)).collect();
    for (i, event) in sent.iter().enumerate() {
        assert_eq!(h.append(&alice, event).await.written, 1);
        if i % 2 == 0 {
            assert_eq!(h.append(&bob, event).await.written, 1);
        }
    }

    for (i, event) in sent.iter().enumerate() {
        let update = next_update(&mut alice_live).await;
        assert_eq!(update.cursor, Cursor::new(i as u64 + 1));
        assert_eq!(&update.event, event);
    }
    for (i, event) in sent.iter().step_by(2).enumerate() {
        let update = next_update(&mut bob_live).await;
        assert_eq!(update.cursor, Cursor::new(i as u64 + 1));
        assert_eq!(&update.event, event);
    }
    // An append is answered once written.
    let log = h.log(&alice).await;
    assert_eq!(cursors(&log), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(events(&log), sent);
    assert_eq!(cursors(&h.log(&bob).await), vec![1, 2, 3]);
    h.stop().await;
}

/// Fanout asks again whenever it does not know an append landed: its
/// answer was late, or EVENTS delivered the message again.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_asked_twice_is_appended_once() {
    let h = Harness::start().await;
    let alice = h.user("alice");
    let mut live = h.live(&alice).await;
    let c = conversation();
    let (first, second) = (message(c, 1), read(c, "bob", 1));
    assert_eq!(h.append(&alice, &first).await.written, 1);
    assert_eq!(h.append(&alice, &first).await.written, 0, "in the log");
    assert_eq!(h.append(&alice, &second).await.written, 1);

    // The repeat is announced again at its cursor: at least once on the
    // wire, and a gateway drops what it has delivered.
    for (cursor, event) in [(1, &first), (1, &first), (2, &second)] {
        let update = next_update(&mut live).await;
        assert_eq!((update.cursor.get(), &update.event), (cursor, event));
    }
    assert_eq!(events(&h.log(&alice).await), vec![first, second]);
    h.stop().await;
}

/// A slow write makes fanout time out and ask again while the holder is
/// still writing: the second request waits behind the first and finds
/// its events in the log.
#[tokio::test(flavor = "multi_thread")]
async fn an_append_asked_again_while_its_write_is_under_way_keeps_its_cursor() {
    let h = Arc::new(Harness::with_failing_writes().await);
    let alice = h.user("alice");
    let partition = h.partition(&alice);
    let mut live = h.live(&alice).await;
    // Sees every request the holder gets. Subscribed once the partition is
    // held, or a request could find this subscriber alone.
    h.held(partition).await;
    let mut asked = h
        .bus
        .subscribe(&subjects::append(partition), None)
        .await
        .unwrap();
    let first = message(conversation(), 1);
    let request = h.user_events(&[(alice.clone(), first.clone())]);

    h.hold_writes(true);
    let late = h
        .ask_append_encoded(partition, request.clone(), Duration::from_millis(100))
        .await;
    assert!(
        matches!(late, Err(ContractError::Bus(BusError::Timeout { .. }))),
        "{late:?}"
    );
    h.write_held().await;
    next_request(&mut asked).await;
    let again = tokio::spawn({
        let h = h.clone();
        async move { h.ask_append_encoded(partition, request, WAIT).await }
    });
    next_request(&mut asked).await;
    h.hold_writes(false);

    let outcome = again.await.unwrap().unwrap();
    assert_eq!(outcome, AppendOutcome::default(), "answered, nothing new");
    // Once for the request that timed out, once for the one asked again.
    for _ in 0..2 {
        let update = next_update(&mut live).await;
        assert_eq!((update.cursor, &update.event), (Cursor::new(1), &first));
    }
    assert_eq!(events(&h.log(&alice).await), vec![first]);
    Arc::into_inner(h).expect("the only harness").stop().await;
}

/// The holder before this one wrote an append and died before answering:
/// fanout asks the new holder, which finds the events in the log at the
/// cursors they were written with.
#[tokio::test(flavor = "multi_thread")]
async fn an_append_asked_again_after_its_holder_died_is_not_appended_again() {
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::new("test").unwrap());
    let store = Arc::new(EmbeddedStore::temporary(Default::default()).unwrap());
    let tenant = natter_core::TenantId::new("acme").unwrap();
    let alice = UserId::new("alice").unwrap();
    let c = conversation();
    let (first, second) = (message(c, 1), message(c, 2));
    seed(&store, &tenant, &alice, 1, &first).await;

    let h = Harness::on(bus, store, |_| {}).await;
    let mut live = h.live(&alice).await;
    assert_eq!(h.append(&alice, &first).await.written, 0);
    let update = next_update(&mut live).await;
    assert_eq!((update.cursor, &update.event), (Cursor::new(1), &first));
    assert_eq!(h.append(&alice, &second).await.written, 1);
    let update = next_update(&mut live).await;
    assert_eq!((update.cursor, &update.event), (Cursor::new(2), &second));
    assert_eq!(events(&h.log(&alice).await), vec![first, second]);
    h.stop().await;
}

/// A partition that changes hands is numbered from the store: what the
/// last holder wrote is neither overwritten nor written twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_holder_numbers_from_the_store() {
    let h = Harness::start().await;
    let alice = h.user("alice");
    let c = conversation();
    let (first, theirs, third) = (message(c, 1), message(c, 2), message(c, 3));
    let mut live = h.live(&alice).await;
    h.append(&alice, &first).await;
    assert_eq!(next_update(&mut live).await.cursor, Cursor::new(1));
    let (bus, store, tenant) = (h.bus.clone(), h.store.clone(), h.tenant.clone());
    h.stop().await;

    // Another process held the partition for a while and wrote.
    seed(&store, &tenant, &alice, 2, &theirs).await;
    let h = Harness::on(bus, store, |_| {}).await;
    // The gateway hears of the new holder and attaches its user again.
    h.attach(&live, true).await;
    assert_eq!(h.append(&alice, &third).await.written, 1);
    let update = next_update(&mut live).await;
    assert_eq!((update.cursor, &update.event), (Cursor::new(3), &third));
    // And what it wrote is recognised when it comes round again.
    assert_eq!(h.append(&alice, &theirs).await.written, 0);
    let update = next_update(&mut live).await;
    assert_eq!((update.cursor, &update.event), (Cursor::new(2), &theirs));
    assert_eq!(events(&h.log(&alice).await), vec![first, theirs, third]);
    h.stop().await;
}

/// Live frames go to the gateways that hold sessions of their users: a
/// gateway is named by its device's hello to the holder, or attaches its
/// users; it stops getting them once it detaches them. A new holder knows
/// no gateway and announces itself, so that they attach again.
#[tokio::test(flavor = "multi_thread")]
async fn live_frames_go_to_the_gateways_of_their_users_and_a_new_holder_says_so() {
    let h = Harness::start().await;
    let (alice, bob) = (h.user("alice"), h.user("bob"));
    let partition = h.partition(&alice);
    h.held(partition).await;
    let c = conversation();

    let mut by_hello = h
        .bus
        .subscribe(&subjects::gateway("by-hello"), None)
        .await
        .unwrap();
    let hello = DeviceHello {
        actor: Some(actor(&h, "alice")),
        device_id: "phone".into(),
        label: "web".into(),
        gateway: "by-hello".into(),
    };
    let welcome: DeviceWelcome =
        natter_contract::request(h.bus.as_ref(), &subjects::hello(partition), &hello, ASK)
            .await
            .unwrap();
    assert!(welcome.failure.is_none(), "{welcome:?}");
    assert!(welcome.holder_epoch > 0, "answered by the holder");
    let mut bobs = h.live(&bob).await;

    assert_eq!(h.append(&alice, &message(c, 1)).await.written, 1);
    assert_eq!(h.append(&bob, &message(c, 1)).await.written, 1);
    let frames: LiveFrames =
        natter_contract::decode(&by_hello.next().await.unwrap().payload).unwrap();
    let users: Vec<&str> = frames
        .frames
        .iter()
        .map(|f| f.user.as_ref().unwrap().user_id.as_str())
        .collect();
    assert_eq!(users, ["alice"], "only the users of this gateway");
    assert_eq!(next_update(&mut bobs).await.cursor, Cursor::new(1));

    h.attach(&bobs, false).await;
    assert_eq!(h.append(&bob, &message(c, 2)).await.written, 1);
    assert!(nothing_live(&mut bobs), "detached");

    let mut held = h.bus.subscribe(subjects::ALL_HELD, None).await.unwrap();
    let (bus, store) = (h.bus.clone(), h.store.clone());
    h.stop().await;
    let h = Harness::on(bus, store, |_| {}).await;
    let announced: PartitionHeld = loop {
        let incoming = tokio::time::timeout(ASK, held.next())
            .await
            .unwrap()
            .unwrap();
        let announced: PartitionHeld = natter_contract::decode(&incoming.payload).unwrap();
        if announced.partition == partition {
            break announced;
        }
    };
    assert!(announced.holder_epoch > welcome.holder_epoch);
    assert_eq!(h.append(&alice, &message(c, 2)).await.written, 1);
    assert!(
        by_hello.next().now_or_never().is_none(),
        "the new holder does not know the gateway yet"
    );
    h.stop().await;
}

/// A write that fails tells fanout to ask again and devices nothing. Part
/// of a failed write may have landed; asking again numbers what did not
/// after it, so a device sees every event once, in order, with no gap.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_that_fails_publishes_nothing_live_and_asking_again_leaves_no_gap() {
    let h = Harness::with_failing_writes().await;
    let alice = h.user("alice");
    let bob = h.user_beside(&alice, "bob");
    let c = conversation();
    let mut alices = h.live(&alice).await;
    let mut bobs = h.live(&bob).await;
    h.append(&alice, &message(c, 1)).await;
    assert_eq!(next_update(&mut alices).await.cursor, Cursor::new(1));

    // One request carries events for both users; its write fails, first
    // with nothing landed, then with alice's first event landed.
    let second = message(c, 2);
    let batch = [
        (alice.clone(), second.clone()),
        (bob.clone(), second.clone()),
        (alice.clone(), read(c, "bob", 2)),
    ];
    for landing in [0, 1] {
        h.fail_writes(1);
        h.land_before_failing(landing);
        let refused = h.ask_append(&batch).await;
        let failure = refused.failure.expect("a failure");
        assert_eq!(
            (failure.code, refused.written),
            (Code::Unavailable as i32, 0)
        );
        assert!(nothing_live(&mut alices) && nothing_live(&mut bobs));
    }
    assert_eq!(h.failed_writes(), 2, "both writes did fail");
    assert_eq!(cursors(&h.log(&alice).await), [1, 2], "a prefix landed");

    // Asked again: the landed event keeps its cursor, the others follow.
    assert_eq!(h.append_batch(&batch).await.written, 2);
    h.append(&alice, &message(c, 3)).await;
    let alice_saw: Vec<u64> = [
        next_update(&mut alices).await,
        next_update(&mut alices).await,
        next_update(&mut alices).await,
    ]
    .iter()
    .map(|u| u.cursor.get())
    .collect();
    assert_eq!(alice_saw, [2, 3, 4], "once each, in order, no gap");
    assert_eq!(next_update(&mut bobs).await.cursor, Cursor::new(1));
    let log = h.log(&alice).await;
    assert_eq!(cursors(&log), [1, 2, 3, 4]);
    assert_eq!(
        events(&log[1..3]),
        vec![batch[0].1.clone(), batch[2].1.clone()]
    );
    assert_eq!(events(&h.log(&bob).await), vec![second]);
    h.stop().await;
}

/// Nothing goes live before its write has landed, so whatever a device
/// gets live it finds in the log when it asks for what follows a cursor:
/// a catch-up read never waits, and never ends short of what went live.
#[tokio::test(flavor = "multi_thread")]
async fn what_a_device_gets_live_is_already_in_the_log() {
    let h = Arc::new(Harness::with_failing_writes().await);
    let alice = h.user("alice");
    let mut live = h.live(&alice).await;
    let c = conversation();
    let sent: Vec<(UserId, Event)> = (1..=3)
        .map(|seq| (alice.clone(), message(c, seq)))
        .collect();
    h.hold_writes(true);
    let appending = tokio::spawn({
        let h = h.clone();
        async move { h.append_batch(&sent).await }
    });
    h.write_held().await;
    assert!(
        nothing_live(&mut live),
        "nothing goes live before the write"
    );
    let page = ask_updates(&h, "alice", 0, 10).await;
    assert_eq!(
        (page_cursors(&page), page.complete, page.head),
        (vec![], true, 0)
    );

    h.hold_writes(false);
    for cursor in 1..=3 {
        let update = next_update(&mut live).await;
        assert_eq!(update.cursor, Cursor::new(cursor));
        let page = ask_updates(&h, "alice", cursor - 1, 1).await;
        assert_eq!(page.updates, vec![update.into()]);
    }
    assert_eq!(appending.await.unwrap().written, 3);
    Arc::into_inner(h).expect("the only harness").stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_appends_are_dropped_and_the_partition_goes_on() {
    let h = Harness::start().await;
    let alice = h.user("alice");
    let partition = h.partition(&alice);
    let mut live = h.live(&alice).await;
    let c = conversation();
    let (first, second) = (message(c, 1), message(c, 2));
    h.append(&alice, &first).await;
    assert_eq!(next_update(&mut live).await.cursor, Cursor::new(1));

    // A request that cannot be read is not answered: its sender times out.
    let unreadable = h
        .ask_append_encoded(partition, vec![0xff, 0xff], Duration::from_millis(100))
        .await;
    assert!(
        matches!(
            unreadable,
            Err(ContractError::Bus(BusError::Timeout { .. }))
        ),
        "{unreadable:?}"
    );
    // An event that cannot be read is dropped from its request.
    let event = |user: &str, event: Option<&Event>| UserEvent {
        tenant_id: h.tenant.to_string(),
        user_id: user.into(),
        event: event.map(|e| e.clone().into()),
    };
    let request = UserEvents {
        events: vec![
            event("alice", None),
            event("a b", Some(&second)),
            event("alice", Some(&second)),
        ],
    };
    let outcome = h
        .ask_append_encoded(partition, request.encode_to_vec(), WAIT)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        AppendOutcome {
            failure: None,
            written: 1
        }
    );
    let update = next_update(&mut live).await;
    assert_eq!((update.cursor, &update.event), (Cursor::new(2), &second));
    assert!(nothing_live(&mut live));
    assert_eq!(events(&h.log(&alice).await), vec![first, second]);
    h.stop().await;
}

/// True if nothing has been published on `live`. The holder publishes
/// before it answers, and the local bus delivers as it publishes, so once
/// an append is answered or its write is held this is certain.
fn nothing_live(live: &mut Live) -> bool {
    live.is_quiet()
}

/// The next append request on `asked`, within [`WAIT`].
async fn next_request(asked: &mut natter_bus::Subscription) {
    tokio::time::timeout(WAIT, asked.next())
        .await
        .expect("an append request in time")
        .expect("the subscription is open");
}

async fn ask_updates(h: &Harness, user: &str, after: u64, limit: u32) -> UpdatesPage {
    let query = UpdatesQuery {
        tenant_id: h.tenant.to_string(),
        user_id: user.into(),
        after,
        limit,
    };
    // The holder of the user's partition answers; the key is built from
    // the raw ids, so that malformed ones reach it too.
    let key = [h.tenant.as_str().as_bytes(), &[0], user.as_bytes()].concat();
    let partition = natter_bus::partition(&key, h.topology().partitions);
    natter_contract::request(h.bus.as_ref(), &subjects::updates(partition), &query, ASK)
        .await
        .unwrap()
}

fn page_cursors(page: &UpdatesPage) -> Vec<u64> {
    page.updates.iter().map(|u| u.cursor).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn updates_come_in_pages_that_say_when_they_reach_the_head() {
    let h = Harness::start().await;
    let alice = h.user("alice");
    let c = conversation();
    for seq in 1..=5 {
        h.append(&alice, &message(c, seq)).await;
    }

    let page = ask_updates(&h, "alice", 0, 2).await;
    // Any sync process answers the same from the store, for the moments
    // nobody holds the partition.
    let unheld: UpdatesPage = natter_contract::request(
        h.bus.as_ref(),
        subjects::UPDATES,
        &UpdatesQuery {
            tenant_id: h.tenant.to_string(),
            user_id: "alice".into(),
            after: 0,
            limit: 2,
        },
        ASK,
    )
    .await
    .unwrap();
    assert_eq!(unheld, page);
    assert_eq!(
        (page_cursors(&page), page.complete, page.head),
        (vec![1, 2], false, 5)
    );
    let page = ask_updates(&h, "alice", 2, 2).await;
    assert_eq!((page_cursors(&page), page.complete), (vec![3, 4], false));
    let page = ask_updates(&h, "alice", 4, 2).await;
    assert_eq!((page_cursors(&page), page.complete), (vec![5], true));
    let page = ask_updates(&h, "alice", 5, 2).await;
    assert_eq!((page_cursors(&page), page.complete), (vec![], true));
    // No limit: the default page size.
    let page = ask_updates(&h, "alice", 0, 0).await;
    assert_eq!(
        (page_cursors(&page), page.complete),
        (vec![1, 2, 3, 4, 5], true)
    );
    let decoded: natter_core::Update = page.updates[0].clone().try_into().unwrap();
    assert_eq!(decoded.event, message_event_at(&h, &alice, 1).await);
    // A user with no log has an empty one.
    let page = ask_updates(&h, "nobody", 0, 10).await;
    assert_eq!(
        (page_cursors(&page), page.complete, page.head),
        (vec![], true, 0)
    );
    // A cursor past the head belongs to another log: start over.
    let page = ask_updates(&h, "alice", 9, 2).await;
    assert!(page.resync_required && page.updates.is_empty());
    assert_eq!(page.head, 5);
    // Bad ids fail the query, not the responder.
    let page = ask_updates(&h, "a b", 0, 2).await;
    let failure = page.failure.expect("a failure");
    assert_eq!(failure.code, Code::InvalidArgument as i32);
    assert_eq!(failure.field, "user_id");
    assert!(ask_updates(&h, "alice", 0, 1).await.failure.is_none());
    h.stop().await;
}

async fn message_event_at(h: &Harness, user: &UserId, cursor: u64) -> Event {
    h.log(user).await[cursor as usize - 1].event.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_is_trimmed_to_retention_and_older_cursors_must_resync() {
    let h = Harness::with(|s| s.sync.retained_updates = 10).await;
    let alice = h.user("alice");
    let c = conversation();
    // Another holder filled the log to just below the first trim point.
    for at in 1..=1023 {
        seed(&h.store, &h.tenant, &alice, at, &read(c, "bob", at)).await;
    }
    let mut live = h.live(&alice).await;
    h.append(&alice, &message(c, 1)).await;
    assert_eq!(next_update(&mut live).await.cursor, Cursor::new(1024));

    // Everything through 1024 - 10 is gone: trimmed before the answer.
    let page = ask_updates(&h, "alice", 0, 5).await;
    assert!(page.resync_required);
    assert_eq!(page.head, 1024);
    assert!(ask_updates(&h, "alice", 1013, 5).await.resync_required);
    let page = ask_updates(&h, "alice", 1014, 0).await;
    assert_eq!(page_cursors(&page), (1015..=1024).collect::<Vec<_>>());
    assert!(page.complete && !page.resync_required);

    let mut client = h.client().await;
    let token = h.token("alice", Role::Customer);
    let response = client
        .get_updates(authed(GetUpdatesRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(response.updates.is_empty());
    assert_eq!(
        response.resync_required,
        Some(ResyncRequired { cursor: 1024 })
    );
    h.stop().await;
}

async fn hello(h: &Harness, user: &str, device: &str) -> DeviceWelcome {
    let hello = DeviceHello {
        actor: Some(actor(h, user)),
        device_id: device.into(),
        label: "web".into(),
        gateway: String::new(),
    };
    natter_contract::request(h.bus.as_ref(), subjects::DEVICE_HELLO, &hello, ASK)
        .await
        .unwrap()
}

fn actor(h: &Harness, user: &str) -> Actor {
    Actor {
        tenant_id: h.tenant.to_string(),
        user_id: user.into(),
        role: natter_proto::v1::Role::Customer.into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_say_hello_ack_their_cursor_and_can_be_revoked() {
    let h = Harness::start().await;
    let alice = h.user("alice");
    let phone = DeviceId::new("phone").unwrap();
    let welcome = hello(&h, "alice", "phone").await;
    assert_eq!((welcome.failure, welcome.cursor), (None, 0));

    for cursor in [3, 1] {
        let ack = CursorAck {
            actor: Some(actor(&h, "alice")),
            device_id: "phone".into(),
            cursor,
        };
        h.bus
            .publish(subjects::CURSOR_ACK, encode(&ack))
            .await
            .unwrap();
    }
    eventually("the cursor ack to be recorded", || async {
        let device = h.store.device(&h.tenant, &alice, &phone).await.unwrap()?;
        (device.cursor == Cursor::new(3)).then_some(())
    })
    .await;
    // A lower ack does not move the cursor back.
    assert_eq!(hello(&h, "alice", "phone").await.cursor, 3);

    let mut revocations = h
        .bus
        .subscribe(&subjects::revoked(&h.tenant, &alice), None)
        .await
        .unwrap();
    let mut client = h.client().await;
    let token = h.token("alice", Role::Customer);
    let revoke = RevokeDeviceRequest {
        device_id: "phone".into(),
        user_id: String::new(),
    };
    client
        .revoke_device(authed(revoke.clone(), &token))
        .await
        .unwrap();
    let announced = tokio::time::timeout(WAIT, revocations.next())
        .await
        .unwrap()
        .unwrap();
    let announced: DeviceRevoked = natter_contract::decode(&announced.payload).unwrap();
    assert_eq!(
        announced,
        DeviceRevoked {
            tenant_id: "acme".into(),
            user_id: "alice".into(),
            device_id: "phone".into(),
        }
    );
    // Revoking again is harmless and announces again.
    client.revoke_device(authed(revoke, &token)).await.unwrap();
    assert!(
        tokio::time::timeout(WAIT, revocations.next())
            .await
            .unwrap()
            .is_some()
    );

    let refused = hello(&h, "alice", "phone").await;
    let failure = refused.failure.expect("a revoked device is refused");
    assert_eq!(failure.code, Code::FailedPrecondition as i32);
    assert_eq!(failure.reason, reasons::FAILED_PRECONDITION);
    assert!(failure.message.contains("revoked"), "{}", failure.message);

    let malformed = DeviceHello {
        actor: None,
        device_id: "tablet".into(),
        label: String::new(),
        gateway: String::new(),
    };
    let welcome: DeviceWelcome =
        natter_contract::request(h.bus.as_ref(), subjects::DEVICE_HELLO, &malformed, ASK)
            .await
            .unwrap();
    let failure = welcome.failure.expect("a failure");
    assert_eq!(
        (failure.code, failure.field.as_str()),
        (Code::InvalidArgument as i32, "actor")
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_service_callers_act_on_other_users_devices() {
    let h = Harness::start().await;
    hello(&h, "alice", "laptop").await;
    let mut client = h.client().await;
    let bob = h.token("bob", Role::Agent);
    let crm = h.token("crm", Role::Service);
    let revoke = |user: &str, device: &str| RevokeDeviceRequest {
        device_id: device.into(),
        user_id: user.into(),
    };

    let denied = client
        .revoke_device(authed(revoke("alice", "laptop"), &bob))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(reason(&denied), reasons::ROLE_NOT_ALLOWED);

    let missing = client
        .revoke_device(authed(revoke("alice", "watch"), &crm))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(reason(&missing), "DEVICE_NOT_FOUND");

    let bad = client
        .revoke_device(authed(revoke("alice", ""), &crm))
        .await
        .unwrap_err();
    assert_eq!(
        (bad.code(), reason(&bad)),
        (Code::InvalidArgument, reasons::INVALID_FIELD.into())
    );

    client
        .revoke_device(authed(revoke("alice", "laptop"), &crm))
        .await
        .unwrap();
    let listed = client
        .list_devices(authed(
            ListDevicesRequest {
                user_id: "alice".into(),
                ..ListDevicesRequest::default()
            },
            &crm,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.devices.len(), 1);
    assert!(listed.devices[0].revoked);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_without_a_valid_token_are_unauthenticated() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let missing = client
        .get_updates(GetUpdatesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert_eq!(reason(&missing), reasons::TOKEN_INVALID);

    let forged = natter_auth::Signer::hs256(b"another secret that is also long enough")
        .token(
            &natter_auth::Identity {
                tenant: h.tenant.clone(),
                user: h.user("alice"),
                role: Role::Service,
            },
            3600,
        )
        .unwrap();
    for token in ["garbage", forged.as_str()] {
        let status = client
            .get_updates(authed(GetUpdatesRequest::default(), token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{token}");
        let status = client
            .list_devices(authed(ListDevicesRequest::default(), token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{token}");
    }
    let mut plain = tonic::Request::new(ListDevicesRequest::default());
    plain
        .metadata_mut()
        .insert("authorization", "Basic YWxpY2U6cHc=".parse().unwrap());
    let status = client.list_devices(plain).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn get_updates_and_list_devices_serve_the_callers_own_log_and_devices() {
    let h = Harness::start().await;
    let alice = h.user("alice");
    let c = conversation();
    for seq in 1..=3 {
        h.append(&alice, &message(c, seq)).await;
    }
    let mut client = h.client().await;
    let alice_token = h.token("alice", Role::Customer);
    let get = |cursor, page_size, user: &str| GetUpdatesRequest {
        cursor,
        page_size,
        user_id: user.into(),
    };

    let response = client
        .get_updates(authed(get(1, 0, ""), &alice_token))
        .await
        .unwrap()
        .into_inner();
    let cursors: Vec<u64> = response.updates.iter().map(|u| u.cursor).collect();
    assert_eq!((cursors, response.resync_required), (vec![2, 3], None));
    let response = client
        .get_updates(authed(get(0, 1, "alice"), &alice_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.updates.len(), 1);
    let update: natter_core::Update = response.updates[0].clone().try_into().unwrap();
    assert_eq!(update.event, message_event_at(&h, &alice, 1).await);

    // Another user's log: only for the service role.
    let bob_token = h.token("bob", Role::Agent);
    let denied = client
        .get_updates(authed(get(0, 0, "alice"), &bob_token))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(reason(&denied), reasons::ROLE_NOT_ALLOWED);
    let crm_token = h.token("crm", Role::Service);
    let response = client
        .get_updates(authed(get(0, 0, "alice"), &crm_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.updates.len(), 3);
    let bad = client
        .get_updates(authed(get(0, 0, "a b"), &crm_token))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    // Devices, in id order, a page at a time.
    for device in ["c-tablet", "a-phone", "b-laptop"] {
        assert!(hello(&h, "alice", device).await.failure.is_none());
    }
    hello(&h, "bob", "z-bobs").await;
    let list = |page_token: &str| ListDevicesRequest {
        page_size: 2,
        page_token: page_token.into(),
        user_id: String::new(),
    };
    let first = client
        .list_devices(authed(list(""), &alice_token))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = first.devices.iter().map(|d| d.device_id.as_str()).collect();
    assert_eq!(ids, ["a-phone", "b-laptop"]);
    assert!(
        first
            .devices
            .iter()
            .all(|d| d.user_id == "alice" && d.label == "web")
    );
    assert!(!first.next_page_token.is_empty());
    let second = client
        .list_devices(authed(list(&first.next_page_token), &alice_token))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = second
        .devices
        .iter()
        .map(|d| d.device_id.as_str())
        .collect();
    assert_eq!(
        (ids, second.next_page_token.as_str()),
        (vec!["c-tablet"], "")
    );
    let bad = client
        .list_devices(authed(list("not-a-token"), &alice_token))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    h.stop().await;
}

/// Plays storage's MARK_READ responder: keeps watermarks, refuses one
/// conversation as storage refuses a non-member, and records the commands.
fn serve_mark_read(
    h: &Harness,
    forbidden: String,
    requests: natter_bus::Subscription,
) -> (
    Arc<Mutex<Vec<MarkReadCommand>>>,
    tokio::task::JoinHandle<()>,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let watermarks = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
    let record = seen.clone();
    let task = tokio::spawn(natter_contract::serve(
        h.bus.clone(),
        requests,
        8,
        move |command: MarkReadCommand| {
            record.lock().unwrap().push(command.clone());
            let (forbidden, watermarks) = (forbidden.clone(), watermarks.clone());
            async move {
                if command.conversation_id == forbidden {
                    let denied = permission_denied(
                        reasons::NOT_A_MEMBER,
                        "not a member of the conversation",
                    );
                    return MarkReadOutcome {
                        failure: Some(to_failure(&denied)),
                        seq: 0,
                        raised: false,
                    };
                }
                let mut watermarks = watermarks.lock().unwrap();
                let seq = watermarks.entry(command.conversation_id).or_default();
                let raised = command.seq > *seq;
                *seq = (*seq).max(command.seq);
                MarkReadOutcome {
                    failure: None,
                    seq: *seq,
                    raised,
                }
            }
        },
    ));
    (seen, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn mark_read_is_forwarded_to_storage_and_its_answer_reported() {
    let h = Harness::start().await;
    let (c, forbidden) = (conversation(), conversation());
    let requests = h
        .bus
        .subscribe(subjects::MARK_READ, Some("storage"))
        .await
        .unwrap();
    let (seen, storage) = serve_mark_read(&h, forbidden.to_string(), requests);
    let mut client = h.client().await;
    let token = h.token("alice", Role::Customer);
    let mark = |conversation: String, seq| MarkReadRequest {
        conversation_id: conversation,
        seq,
    };

    let raised = client
        .mark_read(authed(mark(c.to_string(), 5), &token))
        .await
        .unwrap()
        .into_inner();
    let marker = raised.read_marker.expect("the watermark moved");
    assert_eq!(
        (marker.conversation_id, marker.user_id.as_str(), marker.seq),
        (c.to_string(), "alice", 5)
    );
    let command = seen.lock().unwrap()[0].clone();
    assert_eq!(command.actor, Some(actor(&h, "alice")));
    assert_eq!((command.conversation_id, command.seq), (c.to_string(), 5));

    let behind = client
        .mark_read(authed(mark(c.to_string(), 3), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(behind.read_marker, None);
    let again = client
        .mark_read(authed(mark(c.to_string(), 5), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.read_marker, None, "already at 5: nothing moved");

    let denied = client
        .mark_read(authed(mark(forbidden.to_string(), 1), &token))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(reason(&denied), reasons::NOT_A_MEMBER);

    let bad = client
        .mark_read(authed(mark("not-a-uuid".into(), 1), &token))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(
        seen.lock().unwrap().len(),
        4,
        "bad input never reaches storage"
    );

    // Storage gone: the caller is told to retry.
    storage.abort();
    let _ = storage.await;
    let unavailable = client
        .mark_read(authed(mark(c.to_string(), 9), &token))
        .await
        .unwrap_err();
    assert_eq!(unavailable.code(), Code::Unavailable);
    h.stop().await;
}
