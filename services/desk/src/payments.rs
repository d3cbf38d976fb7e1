//! Payments in the conversation: an agent or a service asks the customer
//! for a payment (`RequestPayment`), the desk opens a checkout page at the
//! payment provider and sends a `payment_request` message with its link;
//! the provider's signed webhook settles it (paid, failed or expired), and
//! the desk sends a `payment_update` message, which the event log turns
//! into a `payment.updated` event.
//!
//! The provider is behind [`PaymentProvider`] (Stripe in `stripe.rs`).
//! Creating a checkout page is a call to the provider, so it runs beside
//! the holder's loop, never in it; the loop only reads and writes the
//! payment's record (`DeskKind::Payment`, by `<conversation> <payment>`),
//! so the reports of one payment are applied one at a time. A payment
//! settles once: later reports, and replays of the one that settled it,
//! change nothing. The update message is sent before the provider is told
//! the report arrived, and marked sent in the record afterwards; a report
//! that comes again before that sends it again under the same idempotency
//! key, which the sequencer recognises.
//!
//! What a crash does not repair: a checkout page created for a request
//! whose record was never written stays at the provider unused (it
//! expires there); a request whose message could not be sent is answered
//! with an error and its record stays pending, shown nowhere.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use natter_auth::Identity;
use natter_core::{
    Content, ConversationId, Invalid, LineItem, Page, PageRequest, PaymentId, PaymentRequest,
    PaymentStatus, PaymentUpdate, Role, TenantId, Timestamp, currency_code,
};
use natter_proto::bus::v1::{DeskPayment, PaymentReport};
use natter_proto::convert::{parse_id, payment_status_from_wire, timestamp_to_wire};
use natter_proto::status::{self, reason};
use natter_proto::v1;
use natter_store::{DeskKind, DeskStore, DeskWrite, StoreError};
use prost::Message as _;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::act::Acts;
use crate::records;

/// What the provider is asked to open a checkout page for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Order {
    pub(crate) tenant: TenantId,
    pub(crate) conversation: ConversationId,
    pub(crate) payment: PaymentId,
    pub(crate) amount_minor: u64,
    pub(crate) currency: String,
    pub(crate) description: String,
    pub(crate) line_items: Vec<LineItem>,
}

/// A checkout page the provider opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checkout {
    /// The provider's id for it (a Checkout Session id).
    pub(crate) reference: String,
    pub(crate) url: String,
}

/// What a provider's verified webhook says about a payment of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    pub(crate) event_id: String,
    pub(crate) tenant: TenantId,
    pub(crate) conversation: ConversationId,
    pub(crate) payment: PaymentId,
    pub(crate) status: PaymentStatus,
    pub(crate) reference: String,
}

#[derive(Debug, Error)]
pub(crate) enum ProviderError {
    /// The provider refused the request: it will refuse it again.
    #[error("the payment provider refused: {0}")]
    Refused(String),
    /// The provider could not be reached or failed: try again later.
    #[error("the payment provider is unavailable: {0}")]
    Unavailable(String),
}

/// Why a webhook delivery was not taken (answered 400).
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum WebhookError {
    #[error("bad signature: {0}")]
    Signature(&'static str),
    #[error("unreadable event: {0}")]
    Unreadable(String),
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A payment provider: opens checkout pages and reads its webhooks.
pub(crate) trait PaymentProvider: Send + Sync + std::fmt::Debug {
    /// The provider's name, as `Payment.provider` shows it.
    fn name(&self) -> &'static str;

    /// Opens a checkout page for `order`.
    fn checkout<'a>(&'a self, order: &'a Order) -> BoxFuture<'a, Result<Checkout, ProviderError>>;

    /// Checks a webhook delivery's signature (`signature`, the header's
    /// value) against `body` at `now`, and reads it: `None` for an event
    /// that concerns no payment of ours.
    fn report(
        &self,
        signature: Option<&str>,
        body: &[u8],
        now: Timestamp,
    ) -> Result<Option<Report>, WebhookError>;
}

/// The payment side of the desk, shared by the holder's call handlers and
/// the HTTP endpoint.
#[derive(Debug, Clone)]
pub(crate) struct Payments {
    pub(crate) provider: Option<Arc<dyn PaymentProvider>>,
}

/// The idempotency key of the message that says a payment became
/// `status`.
pub(crate) fn message_key(payment: PaymentId, status: PaymentStatus) -> String {
    format!("payment-{payment}-{}", status.as_str())
}

/// The record id of a payment: its conversation's payments are one range.
fn record_id(conversation: ConversationId, payment: PaymentId) -> String {
    records::by_conversation(conversation, payment)
}

impl Payments {
    /// Carries out `RequestPayment` for `actor`: checks the request,
    /// opens the checkout page, has the holder's loop keep the record
    /// (`keep`), and sends the request into the conversation.
    pub(crate) async fn request<K, Fut>(
        &self,
        actor: &Identity,
        request: v1::RequestPaymentRequest,
        acts: &Acts,
        keep: K,
        now: Timestamp,
        stop: &CancellationToken,
    ) -> Result<v1::Payment, tonic::Status>
    where
        K: FnOnce(DeskPayment) -> Fut,
        Fut: Future<Output = Result<(), tonic::Status>>,
    {
        if !matches!(actor.role, Role::Agent | Role::Service) {
            return Err(status::permission_denied(
                reason::ROLE_NOT_ALLOWED,
                "payments are asked for by the business's agents and services",
            ));
        }
        let order = order(&actor.tenant, request).map_err(status::invalid_argument)?;
        let Some(provider) = &self.provider else {
            return Err(status::failed_precondition(
                reason::FAILED_PRECONDITION,
                "no payment provider is configured: set desk.stripe.api_key",
            ));
        };
        let checkout = provider.checkout(&order).await.map_err(|e| match e {
            ProviderError::Refused(_) => {
                status::failed_precondition(reason::FAILED_PRECONDITION, e.to_string())
            }
            ProviderError::Unavailable(_) => {
                status::unavailable(reason::SERVICE_UNAVAILABLE, e.to_string())
            }
        })?;
        let content = PaymentRequest {
            payment_id: order.payment,
            amount_minor: order.amount_minor,
            currency: order.currency.clone(),
            description: order.description.clone(),
            line_items: order.line_items.clone(),
            checkout_url: checkout.url.clone(),
            status: PaymentStatus::Pending,
        };
        // The provider's link is checked like any content's.
        content
            .validate()
            .map_err(|e| status::unavailable(reason::SERVICE_UNAVAILABLE, e.to_string()))?;
        let at = Some(timestamp_to_wire(now));
        let payment = v1::Payment {
            payment_id: order.payment.to_string(),
            conversation_id: order.conversation.to_string(),
            amount: order.amount_minor,
            currency: order.currency,
            description: order.description,
            line_items: order.line_items.into_iter().map(Into::into).collect(),
            checkout_url: checkout.url,
            status: v1::PaymentStatus::Pending.into(),
            requested_by: actor.user.to_string(),
            created_at: at,
            updated_at: at,
            provider: provider.name().to_owned(),
            provider_reference: checkout.reference,
        };
        keep(DeskPayment {
            payment: Some(payment.clone()),
            tenant_id: actor.tenant.to_string(),
            settled_by: String::new(),
            announced: false,
        })
        .await?;
        acts.post(
            &actor.tenant,
            order.conversation,
            message_key(order.payment, PaymentStatus::Pending),
            Content::PaymentRequest(content).into(),
            stop,
        )
        .await
        .map_err(|why| {
            status::unavailable(
                reason::SERVICE_UNAVAILABLE,
                format!("the payment request was not sent: {why}"),
            )
        })?;
        Ok(payment)
    }
}

/// The order a `RequestPaymentRequest` asks for, checked.
fn order(tenant: &TenantId, request: v1::RequestPaymentRequest) -> Result<Order, Invalid> {
    let conversation = parse_id("conversation_id", &request.conversation_id)?;
    let currency = currency_code(&request.currency)?;
    let order = Order {
        tenant: tenant.clone(),
        conversation,
        payment: PaymentId::generate(),
        amount_minor: request.amount,
        currency,
        description: request.description.trim().to_owned(),
        line_items: request
            .line_items
            .into_iter()
            .map(|item| LineItem {
                name: item.name.trim().to_owned(),
                ..LineItem::from(item)
            })
            .collect(),
    };
    // Checked as the message will be, with a stand-in for the link the
    // provider has not given yet.
    PaymentRequest {
        payment_id: order.payment,
        amount_minor: order.amount_minor,
        currency: order.currency.clone(),
        description: order.description.clone(),
        line_items: order.line_items.clone(),
        checkout_url: "https://checkout.invalid/".into(),
        status: PaymentStatus::Pending,
    }
    .validate()
    .map_err(|e| Invalid {
        field: e
            .field
            .strip_prefix("content.payment_request.")
            .unwrap_or(e.field),
        reason: e.reason,
    })?;
    Ok(order)
}

/// The write that keeps `record`.
pub(crate) fn keep(record: &DeskPayment) -> Result<DeskWrite, Invalid> {
    let payment = record
        .payment
        .as_ref()
        .ok_or_else(|| Invalid::new("payment", "is required"))?;
    let conversation = parse_id("conversation_id", &payment.conversation_id)?;
    let id = parse_id("payment_id", &payment.payment_id)?;
    Ok(DeskWrite::Put {
        kind: DeskKind::Payment,
        id: record_id(conversation, id),
        body: record.encode_to_vec(),
    })
}

/// A payment's record, if the tenant has it.
pub(crate) async fn record(
    store: &dyn DeskStore,
    tenant: &TenantId,
    conversation: ConversationId,
    payment: PaymentId,
) -> Result<Option<DeskPayment>, StoreError> {
    let Some(record) = store
        .desk_record(tenant, DeskKind::Payment, &record_id(conversation, payment))
        .await?
    else {
        return Ok(None);
    };
    DeskPayment::decode(record.body.as_slice())
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("payment {}: {e}", record.id)))
}

/// What the holder does with a provider's report.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Settle {
    /// Nothing: a replay whose message went out, or a report after the
    /// payment was settled.
    Nothing,
    /// Send this update into the conversation (the record says so
    /// already), then mark it sent.
    Announce {
        tenant: TenantId,
        conversation: ConversationId,
        update: PaymentUpdate,
        changed: bool,
    },
}

/// Applies a report to the payment's record in the holder's loop: the
/// writes that keep the change, and what to announce.
pub(crate) async fn settle(
    store: &dyn DeskStore,
    report: &PaymentReport,
    now: Timestamp,
) -> Result<(Vec<DeskWrite>, Settle), SettleError> {
    let tenant: TenantId = parse_id("tenant_id", &report.tenant_id)?;
    let conversation = parse_id("conversation_id", &report.conversation_id)?;
    let payment = parse_id("payment_id", &report.payment_id)?;
    let status = payment_status_from_wire("status", report.status)?;
    let Some(mut record) = record(store, &tenant, conversation, payment).await? else {
        return Err(SettleError::Unknown);
    };
    let wire = record.payment.as_mut().ok_or(SettleError::Unknown)?;
    let now_status = payment_status_from_wire("status", wire.status)?;
    let announce = |changed| Settle::Announce {
        tenant: tenant.clone(),
        conversation,
        update: PaymentUpdate {
            payment_id: payment,
            status,
        },
        changed,
    };
    if now_status.may_become(status) {
        wire.status = v1::PaymentStatus::from(status).into();
        wire.updated_at = Some(timestamp_to_wire(now));
        if !report.provider_reference.is_empty() {
            wire.provider_reference
                .clone_from(&report.provider_reference);
        }
        record.settled_by.clone_from(&report.event_id);
        record.announced = false;
        return Ok((vec![keep(&record)?], announce(true)));
    }
    if record.settled_by == report.event_id && now_status == status && !record.announced {
        return Ok((Vec::new(), announce(false)));
    }
    Ok((Vec::new(), Settle::Nothing))
}

/// The write that marks a settled payment's update as sent.
pub(crate) async fn announced(
    store: &dyn DeskStore,
    tenant: &TenantId,
    conversation: ConversationId,
    payment: PaymentId,
) -> Result<Vec<DeskWrite>, SettleError> {
    let Some(mut record) = record(store, tenant, conversation, payment).await? else {
        return Err(SettleError::Unknown);
    };
    record.announced = true;
    Ok(vec![keep(&record)?])
}

#[derive(Debug, Error)]
pub(crate) enum SettleError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no such payment")]
    Unknown,
}

impl SettleError {
    pub(crate) fn into_status(self) -> tonic::Status {
        match self {
            SettleError::Invalid(e) => status::invalid_argument(e),
            SettleError::Store(e) => natter_server::store_status(e),
            SettleError::Unknown => status::not_found("payment", ""),
        }
    }
}

/// The report a provider's verified event makes, for the holder.
pub(crate) fn to_wire(report: &Report) -> PaymentReport {
    PaymentReport {
        tenant_id: report.tenant.to_string(),
        conversation_id: report.conversation.to_string(),
        payment_id: report.payment.to_string(),
        status: v1::PaymentStatus::from(report.status).into(),
        event_id: report.event_id.clone(),
        provider_reference: report.reference.clone(),
    }
}

/// A page of the conversation's payments, oldest first.
pub(crate) async fn page(
    store: &dyn DeskStore,
    tenant: &TenantId,
    conversation: ConversationId,
    page: PageRequest<PaymentId>,
) -> Result<Page<v1::Payment, PaymentId>, StoreError> {
    let page = records::conversation_page(
        store,
        tenant,
        DeskKind::Payment,
        conversation,
        page,
        |id, body| {
            DeskPayment::decode(body)
                .map(|kept| kept.payment)
                .map_err(|e| StoreError::Corrupt(format!("payment {id}: {e}")))
        },
    )
    .await?;
    Ok(Page {
        items: page.items.into_iter().flatten().collect(),
        next: page.next,
    })
}

/// The payment a payment message of the event log concerns, as it stood
/// when the message was written: for `payment.updated`.
pub(crate) async fn logged(
    store: &dyn DeskStore,
    tenant: &TenantId,
    message: &natter_core::Message,
) -> Result<Option<v1::Payment>, StoreError> {
    let (payment, status) = match &message.content {
        Content::PaymentRequest(p) => (p.payment_id, p.status),
        Content::PaymentUpdate(u) => (u.payment_id, u.status),
        _ => return Ok(None),
    };
    let Some(record) = record(store, tenant, message.conversation_id, payment).await? else {
        return Ok(None);
    };
    Ok(record.payment.map(|mut p| {
        p.status = v1::PaymentStatus::from(status).into();
        p.updated_at = Some(timestamp_to_wire(message.sent_at));
        p
    }))
}

/// Answers a `GetPayment` call.
pub(crate) async fn get(
    store: &dyn DeskStore,
    tenant: &TenantId,
    request: &v1::GetPaymentRequest,
) -> Result<Option<v1::Payment>, crate::desk::DeskError> {
    let conversation = parse_id("conversation_id", &request.conversation_id)?;
    let payment = parse_id("payment_id", &request.payment_id)?;
    Ok(record(store, tenant, conversation, payment)
        .await?
        .and_then(|r| r.payment))
}
