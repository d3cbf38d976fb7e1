//! The business's own systems: a webhook endpoint that is down for part of
//! the run still gets every event once it is back, signed and in order,
//! and a subscriber reads the same log from a cursor.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use natter_core::Role;
use natter_proto::v1::{
    ConversationStatus, LifecycleChange, ListWebhooksRequest, MessageContent, PutWebhookRequest,
    SendMessageRequest, SubscribeRequest, TenantEvent, UpdateLifecycleRequest, Webhook,
    WebhookState, message_content, tenant_event,
};
use sha2::Sha256;

use crate::cluster::{Cluster, Mode, authed};
use crate::device::WAIT;

const SECRETS: [&str; 2] = ["old-secret-0123456789", "new-secret-0123456789"];

/// A POST the receiver got, and whether it took it.
#[derive(Debug, Clone)]
struct Delivery {
    headers: HeaderMap,
    body: Bytes,
    taken: bool,
}

/// An HTTP endpoint of the business: answers 204 while up, 503 while down,
/// and keeps every POST.
#[derive(Debug, Clone, Default)]
struct Receiver {
    down: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    async fn start(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("the receiver's address");
        let this = self.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let this = this.clone();
                async move {
                    let taken = !this.down.load(Ordering::SeqCst);
                    this.got.lock().expect("not poisoned").push(Delivery {
                        headers,
                        body,
                        taken,
                    });
                    if taken {
                        StatusCode::NO_CONTENT
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().expect("not poisoned").clone()
    }

    /// The events taken, in the order they were taken.
    fn taken(&self) -> Vec<TenantEvent> {
        self.deliveries()
            .iter()
            .filter(|d| d.taken)
            .map(|d| serde_json::from_slice(&d.body).expect("an event as JSON"))
            .collect()
    }
}

pub async fn webhooks(mode: Mode) {
    let cluster = Cluster::start(mode).await;
    let service = cluster.token("crm", Role::Service);
    let receiver = Receiver::default();
    let addr = receiver.start().await;
    let mut events = cluster.events().await;
    events
        .put_webhook(authed(
            &service,
            PutWebhookRequest {
                webhook: Some(Webhook {
                    webhook_id: "crm".into(),
                    url: format!("http://{addr}/hook"),
                    secrets: SECRETS.map(String::from).to_vec(),
                    ..Webhook::default()
                }),
            },
        ))
        .await
        .expect("a service adds a webhook");

    let conversations = [
        crate::scenarios::conversation(&cluster, &[("ann", Role::Customer), ("bob", Role::Agent)])
            .await,
        crate::scenarios::conversation(&cluster, &[("cid", Role::Customer), ("bob", Role::Agent)])
            .await,
    ];
    let mut api = cluster.conversations().await;
    let send = |n: usize| {
        let conversation = conversations[n % 2].clone();
        SendMessageRequest {
            conversation_id: conversation,
            client_message_id: format!("m{n}"),
            content: Some(MessageContent {
                kind: Some(message_content::Kind::Text(format!("message {n}"))),
            }),
        }
    };
    for n in 0..4 {
        api.send_message(authed(&service, send(n)))
            .await
            .expect("stored");
    }
    wait_for(&receiver, 4, "the first events").await;

    // The endpoint goes down; the business goes on.
    receiver.down.store(true, Ordering::SeqCst);
    for n in 4..8 {
        api.send_message(authed(&service, send(n)))
            .await
            .expect("stored");
    }
    api.update_lifecycle(authed(
        &service,
        UpdateLifecycleRequest {
            conversation_id: conversations[0].clone(),
            client_change_id: "resolve".into(),
            change: Some(LifecycleChange {
                status: ConversationStatus::Resolved.into(),
                ..LifecycleChange::default()
            }),
        },
    ))
    .await
    .expect("resolved");
    let deadline = Instant::now() + WAIT;
    while receiver.deliveries().iter().filter(|d| !d.taken).count() < 2 {
        assert!(Instant::now() < deadline, "no retries while down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    receiver.down.store(false, Ordering::SeqCst);
    let taken = wait_for(&receiver, 9, "every event after the outage").await;

    // Each once, in log order, conversations' messages in their order.
    let seqs: Vec<u64> = taken.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (seqs[0]..seqs[0] + 9).collect::<Vec<_>>(),
        "{taken:?}"
    );
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for event in &taken {
        let Some(tenant_event::Data::Message(message)) = &event.data else {
            panic!("a message event: {event:?}");
        };
        let before = last.insert(event.conversation_id.clone(), message.seq);
        assert!(before < Some(message.seq), "in order per conversation");
    }
    assert_eq!(taken[8].r#type, "conversation.updated");
    for delivery in receiver.deliveries() {
        assert_signed(&delivery);
    }

    // A subscriber reads the same log from a cursor.
    let mut stream = events
        .subscribe(authed(
            &service,
            SubscribeRequest {
                after_seq: seqs[0],
                event_types: vec!["message.created".into()],
            },
        ))
        .await
        .expect("subscribed")
        .into_inner();
    let mut read = Vec::new();
    while read.len() < 7 {
        let next = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("events in time")
            .expect("the stream goes on")
            .expect("an event");
        read.push(next.event.expect("the event"));
    }
    let expected: Vec<&TenantEvent> = taken[1..8].iter().collect();
    assert_eq!(read.iter().collect::<Vec<_>>(), expected);

    let listed = events
        .list_webhooks(authed(&service, ListWebhooksRequest {}))
        .await
        .expect("listed")
        .into_inner()
        .webhooks;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state(), WebhookState::Active);
    assert_eq!((listed[0].failures, listed[0].next_seq), (0, seqs[8] + 1));
    assert!(listed[0].secrets.is_empty(), "secrets are never shown");
}

/// Waits until the receiver has taken `n` events.
async fn wait_for(receiver: &Receiver, n: usize, what: &str) -> Vec<TenantEvent> {
    let deadline = Instant::now() + WAIT;
    loop {
        let taken = receiver.taken();
        if taken.len() >= n {
            return taken;
        }
        assert!(Instant::now() < deadline, "never got {what}: {taken:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks the delivery's signature against each secret, as a receiver
/// would.
fn assert_signed(delivery: &Delivery) {
    let header = delivery.headers["natter-signature"]
        .to_str()
        .expect("ascii");
    let mut parts = header.split(',');
    let t = parts
        .next()
        .and_then(|p| p.strip_prefix("t="))
        .expect("a timestamp");
    let signatures: Vec<&str> = parts.filter_map(|p| p.strip_prefix("v1=")).collect();
    assert_eq!(signatures.len(), SECRETS.len());
    for (secret, signature) in SECRETS.iter().zip(signatures) {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("a key");
        mac.update(format!("{t}.").as_bytes());
        mac.update(&delivery.body);
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(signature, expected, "signed with {secret}");
    }
    let event: TenantEvent = serde_json::from_slice(&delivery.body).expect("json");
    assert_eq!(delivery.headers["natter-event-id"], event.event_id.as_str());
}
