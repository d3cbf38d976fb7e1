//! Payments in the conversation: an agent asks for a payment, the desk
//! opens a Checkout Session at Stripe (the test stripe-mock) and sends the
//! request with its link to the customer; the test then acts as Stripe and
//! posts signed webhook events to the desk's endpoint: the one that pays
//! reaches customer and agent as an update, replays and later events
//! change nothing, and deliveries that are not Stripe's are refused.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use hmac::{Hmac, Mac};
use natter_core::Role;
use natter_proto::v1::{
    GetPaymentRequest, ListPaymentsRequest, Message, MessageContent, Payment, PaymentLineItem,
    PaymentStatus, PaymentUpdate, PutWebhookRequest, RequestPaymentRequest, SubscribeRequest,
    Webhook, message_content, tenant_event,
};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::{Cluster, Mode, STRIPE_WEBHOOK_SECRET, authed};
use crate::device::{Device, Transport, WAIT};

pub async fn pay(mode: Mode) {
    let cluster = Cluster::start_paying(mode).await;
    let service = cluster.token("crm", Role::Service);
    // A webhook makes the tenant keep an event log, which Subscribe reads.
    cluster
        .events()
        .await
        .put_webhook(authed(
            &service,
            PutWebhookRequest {
                webhook: Some(Webhook {
                    webhook_id: "crm".into(),
                    url: "http://127.0.0.1:9/hook".into(),
                    secrets: vec!["a-secret-of-16-bytes".into()],
                    ..Webhook::default()
                }),
            },
        ))
        .await
        .expect("a service adds a webhook");
    let conversation =
        crate::scenarios::conversation(&cluster, &[("cus", Role::Customer), ("ann", Role::Agent)])
            .await;
    let mut web = connect(&cluster, Transport::WsJson, "cus", Role::Customer).await;
    let mut ann = connect(&cluster, Transport::Grpc, "ann", Role::Agent).await;
    let mut desk = cluster.desk().await;
    let agent = cluster.token("ann", Role::Agent);
    let items = vec![
        PaymentLineItem {
            name: "Trail tent".into(),
            quantity: 2,
            unit_amount: 1500,
        },
        PaymentLineItem {
            name: "Shipping".into(),
            quantity: 1,
            unit_amount: 500,
        },
    ];
    let request = |amount: u64| RequestPaymentRequest {
        conversation_id: conversation.clone(),
        amount,
        currency: "EUR".into(),
        line_items: items.clone(),
        description: "Order 1042".into(),
    };

    // What does not add up, and who may not ask, are refused before
    // Stripe is called.
    let wrong = desk
        .request_payment(authed(&agent, request(3000)))
        .await
        .expect_err("the items add up to 3500");
    assert_eq!(wrong.code(), tonic::Code::InvalidArgument, "{wrong:?}");
    let customer = cluster.token("cus", Role::Customer);
    let denied = desk
        .request_payment(authed(&customer, request(3500)))
        .await
        .expect_err("a customer asks nobody for money");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");

    let payment = desk
        .request_payment(authed(&agent, request(3500)))
        .await
        .expect("the agent asks for a payment")
        .into_inner()
        .payment
        .expect("the payment");
    assert_eq!(
        (
            payment.status(),
            payment.currency.as_str(),
            payment.amount,
            payment.provider.as_str(),
        ),
        (PaymentStatus::Pending, "eur", 3500, "stripe")
    );
    assert!(payment.provider_reference.starts_with("cs_"), "{payment:?}");
    assert!(payment.checkout_url.starts_with("https://"), "{payment:?}");

    // The request reaches the customer and the agent, with the link.
    for device in [&mut web, &mut ann] {
        let got = payment_message(device, &conversation).await;
        let Some(message_content::Kind::PaymentRequest(asked)) = kind(&got) else {
            panic!("a payment request: {got:?}");
        };
        assert_eq!(asked.payment_id, payment.payment_id);
        assert_eq!(asked.checkout_url, payment.checkout_url);
        assert_eq!((asked.amount, asked.line_items.len()), (3500, 2));
        assert_eq!(asked.status(), PaymentStatus::Pending);
    }
    // Nobody but the desk writes one.
    let forged = web
        .send_content(
            &conversation,
            "forged",
            MessageContent {
                kind: Some(message_content::Kind::PaymentUpdate(PaymentUpdate {
                    payment_id: payment.payment_id.clone(),
                    status: PaymentStatus::Paid.into(),
                })),
            },
        )
        .await
        .expect_err("a customer cannot mark a payment paid");
    assert_eq!(forged.code, tonic::Code::InvalidArgument as i32);

    // Stripe says it is paid: the update reaches both.
    let stripe = Stripe {
        endpoint: cluster.addrs.desk_http,
    };
    let paid = stripe.event(&cluster, &payment, "evt_paid", "checkout.session.completed");
    assert_eq!(stripe.post(&paid, STRIPE_WEBHOOK_SECRET, 0).await, 200);
    let mut update_seq = 0;
    for device in [&mut web, &mut ann] {
        let got = payment_message(device, &conversation).await;
        let Some(message_content::Kind::PaymentUpdate(update)) = kind(&got) else {
            panic!("a payment update: {got:?}");
        };
        assert_eq!(
            (update.payment_id.as_str(), update.status()),
            (payment.payment_id.as_str(), PaymentStatus::Paid)
        );
        update_seq = got.seq;
    }

    // A replay is taken and changes nothing; what Stripe did not sign, or
    // signed too long ago, is refused; a later event changes nothing.
    assert_eq!(stripe.post(&paid, STRIPE_WEBHOOK_SECRET, 0).await, 200);
    assert_eq!(
        stripe
            .post(&paid, "whsec_not_the_endpoints_secret", 0)
            .await,
        400
    );
    assert_eq!(stripe.post(&paid, STRIPE_WEBHOOK_SECRET, -600).await, 400);
    let mut tampered = paid.clone();
    tampered.push(b' ');
    assert_eq!(stripe.post_signed_as(&paid, &tampered).await, 400);
    let expired = stripe.event(
        &cluster,
        &payment,
        "evt_expired",
        "checkout.session.expired",
    );
    assert_eq!(stripe.post(&expired, STRIPE_WEBHOOK_SECRET, 0).await, 200);
    // Nothing came in between: the next message is the customer's.
    web.send_text(&conversation, "thanks", "Thanks!")
        .await
        .expect("the customer writes");
    let next = web.messages(&conversation, 1).await;
    assert_eq!(next[0].seq, update_seq + 1, "{next:?}");

    let got = desk
        .get_payment(authed(
            &agent,
            GetPaymentRequest {
                conversation_id: conversation.clone(),
                payment_id: payment.payment_id.clone(),
            },
        ))
        .await
        .expect("the agent reads the payment")
        .into_inner()
        .payment
        .expect("the payment");
    assert_eq!(got.status(), PaymentStatus::Paid);
    let listed = desk
        .list_payments(authed(
            &agent,
            ListPaymentsRequest {
                conversation_id: conversation.clone(),
                ..ListPaymentsRequest::default()
            },
        ))
        .await
        .expect("the agent lists the conversation's payments")
        .into_inner();
    assert_eq!(listed.payments.len(), 1);

    // The business's systems hear of it: pending, then paid.
    let mut events = cluster
        .events()
        .await
        .subscribe(authed(
            &service,
            SubscribeRequest {
                after_seq: 0,
                event_types: vec!["payment.updated".into()],
            },
        ))
        .await
        .expect("a service subscribes")
        .into_inner();
    let mut statuses = Vec::new();
    while statuses.len() < 2 {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("a payment event in time")
            .expect("the stream goes on")
            .expect("an event")
            .event
            .expect("the event");
        let Some(tenant_event::Data::Payment(p)) = event.data else {
            panic!("payment.updated carries the payment: {event:?}");
        };
        assert_eq!(
            (p.payment_id.as_str(), p.amount),
            (payment.payment_id.as_str(), 3500)
        );
        statuses.push(p.status());
    }
    assert_eq!(statuses, [PaymentStatus::Pending, PaymentStatus::Paid]);
}

/// A desk with no payment provider says so.
pub async fn no_provider(mode: Mode) {
    let cluster = Cluster::start(mode).await;
    let conversation =
        crate::scenarios::conversation(&cluster, &[("cus", Role::Customer), ("ann", Role::Agent)])
            .await;
    let refused = cluster
        .desk()
        .await
        .request_payment(authed(
            &cluster.token("ann", Role::Agent),
            RequestPaymentRequest {
                conversation_id: conversation,
                amount: 500,
                currency: "usd".into(),
                line_items: Vec::new(),
                description: "Deposit".into(),
            },
        ))
        .await
        .expect_err("no provider is configured");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("desk.stripe.api_key"),
        "{refused:?}"
    );
}

async fn connect(cluster: &Cluster, transport: Transport, user: &str, role: Role) -> Device {
    let token = cluster.token(user, role);
    Device::connect(cluster, transport, &token, "console", 0)
        .await
        .unwrap_or_else(|closed| panic!("{user} could not connect: {closed:?}"))
}

fn kind(message: &Message) -> Option<&message_content::Kind> {
    message.content.as_ref()?.kind.as_ref()
}

/// The next payment message of the conversation a device gets.
async fn payment_message(device: &mut Device, conversation: &str) -> Message {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no payment message in time");
        let message = device.messages(conversation, 1).await.remove(0);
        if matches!(
            kind(&message),
            Some(
                message_content::Kind::PaymentRequest(_) | message_content::Kind::PaymentUpdate(_)
            )
        ) {
            return message;
        }
    }
}

/// The test acting as Stripe: events about a payment, signed and posted
/// to the desk's webhook endpoint.
struct Stripe {
    endpoint: SocketAddr,
}

impl Stripe {
    /// An event about the payment's Checkout Session, as Stripe sends it.
    fn event(&self, cluster: &Cluster, payment: &Payment, id: &str, kind: &str) -> Vec<u8> {
        serde_json::json!({
            "id": id,
            "object": "event",
            "type": kind,
            "created": unix_now(),
            "data": {"object": {
                "id": payment.provider_reference,
                "object": "checkout.session",
                "client_reference_id": payment.payment_id,
                "payment_status": if kind.ends_with("completed") { "paid" } else { "unpaid" },
                "status": if kind.ends_with("expired") { "expired" } else { "complete" },
                "metadata": {
                    "natter_payment": payment.payment_id,
                    "natter_tenant": cluster.tenant().as_str(),
                    "natter_conversation": payment.conversation_id,
                },
            }},
        })
        .to_string()
        .into_bytes()
    }

    /// Posts `body` signed with `secret`, `skew` seconds off now; the
    /// status code.
    async fn post(&self, body: &[u8], secret: &str, skew: i64) -> u16 {
        let header = signature(secret, unix_now() + skew, body);
        self.send(body, &header).await
    }

    /// Posts `body` with the signature of `signed`.
    async fn post_signed_as(&self, signed: &[u8], body: &[u8]) -> u16 {
        let header = signature(STRIPE_WEBHOOK_SECRET, unix_now(), signed);
        self.send(body, &header).await
    }

    async fn send(&self, body: &[u8], signature: &str) -> u16 {
        let mut stream = tokio::net::TcpStream::connect(self.endpoint)
            .await
            .expect("connect to the desk's HTTP endpoint");
        let head = format!(
            "POST /v1/payments/stripe HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Stripe-Signature: {signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.endpoint,
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .await
            .expect("send the head");
        stream.write_all(body).await.expect("send the body");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
            .await
            .expect("the desk answers in time")
            .expect("read the answer");
        let answer = String::from_utf8_lossy(&answer);
        answer
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("an HTTP answer: {answer}"))
    }
}

/// Stripe's `Stripe-Signature` header for `body` at `t`.
fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t},v1={hex}")
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
