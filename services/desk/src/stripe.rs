//! Stripe as the payment provider: a Checkout Session per payment
//! (`POST /v1/checkout/sessions`, form-encoded), and its webhook events,
//! checked with Stripe's signature scheme (`Stripe-Signature: t=<unix
//! seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, one `v1` per signing
//! secret the endpoint has).
//!
//! Sessions carry the payment's id as `client_reference_id` and its
//! tenant, conversation and id as metadata, and events are matched by
//! those, never by the session id alone (a mock gives every session the
//! same one). Events for sessions without them are someone else's and
//! are acknowledged and ignored.

use std::time::Duration;

use hmac::{Hmac, Mac};
use natter_core::{ConversationId, PaymentId, PaymentStatus, TenantId, Timestamp};
use natter_proto::convert::parse_id;
use serde_json::Value;
use sha2::Sha256;

use crate::payments::{
    BoxFuture, Checkout, Order, PaymentProvider, ProviderError, Report, WebhookError,
};

/// How long a call to Stripe may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) struct Stripe {
    http: reqwest::Client,
    settings: natter_server::Stripe,
}

impl std::fmt::Debug for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stripe")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Stripe {
    pub(crate) fn new(settings: natter_server::Stripe) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(CALL_TIMEOUT)
                .build()
                .unwrap_or_default(),
            settings,
        }
    }
}

/// The form of a Checkout Session for `order`.
fn session_form(order: &Order, success_url: &str, cancel_url: &str) -> Vec<(String, String)> {
    let mut form: Vec<(String, String)> = vec![
        ("mode".into(), "payment".into()),
        ("success_url".into(), success_url.into()),
        ("cancel_url".into(), cancel_url.into()),
        ("client_reference_id".into(), order.payment.to_string()),
        ("metadata[natter_payment]".into(), order.payment.to_string()),
        ("metadata[natter_tenant]".into(), order.tenant.to_string()),
        (
            "metadata[natter_conversation]".into(),
            order.conversation.to_string(),
        ),
    ];
    let mut line = |i: usize, name: &str, quantity: u64, unit: u64| {
        let key = |k: &str| format!("line_items[{i}]{k}");
        form.extend([
            (key("[price_data][currency]"), order.currency.clone()),
            (key("[price_data][unit_amount]"), unit.to_string()),
            (key("[price_data][product_data][name]"), name.to_owned()),
            (key("[quantity]"), quantity.to_string()),
        ]);
    };
    if order.line_items.is_empty() {
        line(0, &order.description, 1, order.amount_minor);
    } else {
        for (i, item) in order.line_items.iter().enumerate() {
            line(i, &item.name, item.quantity, item.unit_amount_minor);
        }
    }
    form
}

impl PaymentProvider for Stripe {
    fn name(&self) -> &'static str {
        "stripe"
    }

    fn checkout<'a>(&'a self, order: &'a Order) -> BoxFuture<'a, Result<Checkout, ProviderError>> {
        Box::pin(async move {
            let form = session_form(order, &self.settings.success_url, &self.settings.cancel_url);
            let response = self
                .http
                .post(format!("{}/v1/checkout/sessions", self.settings.api_base))
                .bearer_auth(&self.settings.api_key)
                // A retry of the same payment opens no second session.
                .header("Idempotency-Key", format!("natter-{}", order.payment))
                .form(&form)
                .send()
                .await
                .map_err(|e| ProviderError::Unavailable(e.without_url().to_string()))?;
            let code = response.status();
            let body = response
                .bytes()
                .await
                .map_err(|e| ProviderError::Unavailable(format!("unreadable answer: {e}")))?;
            let body: Value = serde_json::from_slice(&body)
                .map_err(|e| ProviderError::Unavailable(format!("unreadable answer: {e}")))?;
            if !code.is_success() {
                let why = body
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
                    .to_owned();
                return Err(if code.is_server_error() || code.as_u16() == 429 {
                    ProviderError::Unavailable(format!("{code}: {why}"))
                } else {
                    ProviderError::Refused(format!("{code}: {why}"))
                });
            }
            let field = |name: &str| {
                body.get(name)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| ProviderError::Unavailable(format!("the session has no {name}")))
            };
            Ok(Checkout {
                reference: field("id")?,
                url: field("url")?,
            })
        })
    }

    fn report(
        &self,
        signature: Option<&str>,
        body: &[u8],
        now: Timestamp,
    ) -> Result<Option<Report>, WebhookError> {
        verify(
            &self.settings.webhook_secrets,
            self.settings.tolerance,
            signature,
            body,
            now,
        )?;
        read_event(body)
    }
}

/// Checks a `Stripe-Signature` header against `body`: a `t` within
/// `tolerance` of `now`, and a `v1` that is the HMAC-SHA256 of
/// "<t>.<body>" under one of `secrets`, compared in constant time.
pub(crate) fn verify(
    secrets: &[String],
    tolerance: Duration,
    header: Option<&str>,
    body: &[u8],
    now: Timestamp,
) -> Result<(), WebhookError> {
    let header = header.ok_or(WebhookError::Signature("no Stripe-Signature header"))?;
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => signatures.extend(hex(value)),
            _ => {}
        }
    }
    let t = t.ok_or(WebhookError::Signature("no timestamp"))?;
    if signatures.is_empty() {
        return Err(WebhookError::Signature("no v1 signature"));
    }
    let age = now.as_millis().div_euclid(1000).abs_diff(t);
    if age > tolerance.as_secs() {
        return Err(WebhookError::Signature("timestamp outside the tolerance"));
    }
    for secret in secrets {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            continue;
        };
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        // `verify_slice` compares in constant time, and only a tag of the
        // full length.
        if signatures
            .iter()
            .any(|signature| mac.clone().verify_slice(signature).is_ok())
        {
            return Ok(());
        }
    }
    Err(WebhookError::Signature("no signature matches"))
}

/// Lowercase or uppercase hex as bytes; `None` if it is not hex.
fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The payment a verified event settles, if it settles one of ours.
fn read_event(body: &[u8]) -> Result<Option<Report>, WebhookError> {
    let event: Value =
        serde_json::from_slice(body).map_err(|e| WebhookError::Unreadable(e.to_string()))?;
    let text = |v: &Value, path: &str| v.pointer(path).and_then(Value::as_str).map(str::to_owned);
    let event_id = text(&event, "/id")
        .ok_or_else(|| WebhookError::Unreadable("the event has no id".into()))?;
    let kind = text(&event, "/type").unwrap_or_default();
    let Some(session) = event.pointer("/data/object") else {
        return Err(WebhookError::Unreadable(
            "the event has no data.object".into(),
        ));
    };
    let status = match kind.as_str() {
        "checkout.session.completed" => match text(session, "/payment_status").as_deref() {
            Some("paid" | "no_payment_required") => PaymentStatus::Paid,
            // Paid later (a bank transfer): the async events settle it.
            _ => return Ok(None),
        },
        "checkout.session.async_payment_succeeded" => PaymentStatus::Paid,
        "checkout.session.async_payment_failed" => PaymentStatus::Failed,
        "checkout.session.expired" => PaymentStatus::Expired,
        _ => return Ok(None),
    };
    let (Some(tenant), Some(conversation), Some(payment)) = (
        text(session, "/metadata/natter_tenant"),
        text(session, "/metadata/natter_conversation"),
        text(session, "/metadata/natter_payment").or_else(|| text(session, "/client_reference_id")),
    ) else {
        // A session the business opened without Natter.
        return Ok(None);
    };
    let unreadable = |e: natter_core::Invalid| WebhookError::Unreadable(e.to_string());
    let tenant: TenantId = parse_id("metadata.natter_tenant", &tenant).map_err(unreadable)?;
    let conversation: ConversationId =
        parse_id("metadata.natter_conversation", &conversation).map_err(unreadable)?;
    let payment: PaymentId = parse_id("metadata.natter_payment", &payment).map_err(unreadable)?;
    if let Some(reference) = text(session, "/client_reference_id")
        && reference != payment.to_string()
    {
        return Err(WebhookError::Unreadable(
            "client_reference_id and metadata.natter_payment disagree".into(),
        ));
    }
    Ok(Some(Report {
        event_id,
        tenant,
        conversation,
        payment,
        status,
        reference: text(session, "/id").unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret_of_some_length";
    const OTHER: &str = "whsec_other_secret_of_some_length";
    const NOW: i64 = 1_700_000_000;

    /// Stripe signs as Natter's own webhooks do.
    fn sign(secret: &str, t: i64, body: &[u8]) -> String {
        crate::webhooks::signature(&[secret.to_owned()], t, body)
    }

    fn check(secrets: &[&str], header: &str, body: &[u8]) -> Result<(), WebhookError> {
        let secrets: Vec<String> = secrets.iter().map(|s| (*s).to_owned()).collect();
        verify(
            &secrets,
            Duration::from_secs(300),
            Some(header),
            body,
            Timestamp::from_millis(NOW * 1000),
        )
    }

    #[test]
    fn a_signature_holds_for_its_body_secret_and_time_only() {
        let body = br#"{"id":"evt_1"}"#;
        assert_eq!(check(&[SECRET], &sign(SECRET, NOW, body), body), Ok(()));
        // Any secret of the rotation list will do.
        assert_eq!(
            check(&[OTHER, SECRET], &sign(SECRET, NOW, body), body),
            Ok(())
        );
        // As will any of several signatures (Stripe signs with each of the
        // endpoint's secrets while one is being rolled).
        let ours = sign(SECRET, NOW, body);
        let (_, ours) = ours.split_once(",v1=").unwrap();
        let both = format!("{},v1={ours}", sign(OTHER, NOW, body));
        assert_eq!(check(&[SECRET], &both, body), Ok(()));
        assert_eq!(
            check(&[OTHER], &sign(SECRET, NOW, body), body),
            Err(WebhookError::Signature("no signature matches"))
        );
        assert_eq!(
            check(&[SECRET], &sign(SECRET, NOW, body), br#"{"id":"evt_2"}"#),
            Err(WebhookError::Signature("no signature matches"))
        );
        for stale in [NOW - 301, NOW + 301] {
            assert_eq!(
                check(&[SECRET], &sign(SECRET, stale, body), body),
                Err(WebhookError::Signature("timestamp outside the tolerance"))
            );
        }
        assert_eq!(
            check(&[SECRET], &sign(SECRET, NOW - 299, body), body),
            Ok(())
        );
        for bad in [
            "",
            "t=x,v1=00",
            &format!("t={NOW}"),
            &format!("t={NOW},v1=zz"),
        ] {
            assert!(check(&[SECRET], bad, body).is_err(), "{bad:?}");
        }
        let secrets = [SECRET.to_owned()];
        assert_eq!(
            verify(
                &secrets,
                Duration::from_secs(300),
                None,
                body,
                Timestamp::from_millis(NOW * 1000)
            ),
            Err(WebhookError::Signature("no Stripe-Signature header"))
        );
    }

    fn event(kind: &str, payment_status: &str, payment: &str) -> Vec<u8> {
        serde_json::json!({
            "id": "evt_1", "type": kind,
            "data": {"object": {
                "id": "cs_test_1", "object": "checkout.session",
                "client_reference_id": payment, "payment_status": payment_status,
                "metadata": {
                    "natter_payment": payment, "natter_tenant": "acme",
                    "natter_conversation": "0193a3c0-0000-7000-8000-000000000001",
                },
            }},
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn events_settle_our_sessions_only() {
        let payment = PaymentId::generate().to_string();
        let status = |kind, paid| {
            read_event(&event(kind, paid, &payment))
                .unwrap()
                .map(|r| r.status)
        };
        assert_eq!(
            status("checkout.session.completed", "paid"),
            Some(PaymentStatus::Paid)
        );
        assert_eq!(status("checkout.session.completed", "unpaid"), None);
        assert_eq!(
            status("checkout.session.async_payment_succeeded", "paid"),
            Some(PaymentStatus::Paid)
        );
        assert_eq!(
            status("checkout.session.async_payment_failed", "unpaid"),
            Some(PaymentStatus::Failed)
        );
        assert_eq!(
            status("checkout.session.expired", "unpaid"),
            Some(PaymentStatus::Expired)
        );
        assert_eq!(status("invoice.paid", "paid"), None);
        let report = read_event(&event("checkout.session.completed", "paid", &payment))
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                report.event_id.as_str(),
                report.tenant.as_str(),
                report.reference.as_str()
            ),
            ("evt_1", "acme", "cs_test_1")
        );
        let foreign = serde_json::json!({"id": "evt_2", "type": "checkout.session.completed",
            "data": {"object": {"id": "cs_2", "payment_status": "paid", "metadata": {}}}});
        assert_eq!(read_event(foreign.to_string().as_bytes()), Ok(None));
        assert!(read_event(b"not json").is_err());
    }

    #[test]
    fn a_session_lists_the_items_or_one_line() {
        let order = Order {
            tenant: TenantId::new("acme").unwrap(),
            conversation: ConversationId::generate(),
            payment: PaymentId::generate(),
            amount_minor: 4200,
            currency: "eur".into(),
            description: "Order 1042".into(),
            line_items: Vec::new(),
        };
        let form = session_form(&order, "https://shop.example/ok", "https://shop.example/no");
        let get = |k: &str| {
            form.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("line_items[0][price_data][unit_amount]"), Some("4200"));
        assert_eq!(
            get("line_items[0][price_data][product_data][name]"),
            Some("Order 1042")
        );
        assert_eq!(
            get("client_reference_id"),
            Some(order.payment.to_string().as_str())
        );
        assert_eq!(get("metadata[natter_tenant]"), Some("acme"));
        assert_eq!(get("mode"), Some("payment"));
    }
}
