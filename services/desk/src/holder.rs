//! The holder of the desk: the one process that routes. One task owns the
//! [`Desk`] and takes, one at a time, the calls (`desk.call`), the
//! lifecycle changes from EVENTS, the agents' sessions (`desk.sessions`)
//! and the offers' timeouts; what they decide goes to [`Acts`] in order.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use natter_auth::Identity;
use natter_bus::{Bus, Outgoing};
use natter_contract::{
    DESK_CONSUMER, EVENTS, Handled, Holders, Topology, consume_partitions, decode, serve, subjects,
};
use natter_core::{Content, ConversationId, Event, Limits, PaymentId, TenantId};
use natter_proto::bus::v1::{
    AgentSessions, ConversationEvents, DeskCommand, DeskOutcome, DeskPayment, PaymentReport,
    PaymentReportOutcome,
};
use natter_proto::convert::{actor_from_wire, parse_id, required};
use natter_proto::status::{self, reason, to_failure};
use natter_proto::v1::desk_answer::Answer;
use natter_proto::v1::desk_call::Call;
use natter_proto::v1::{DeskAnswer, DeskCall, QueryResponse, RequestPaymentResponse, event};
use natter_server::clock::now;
use natter_store::{DeskStore, Lease};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::act::Acts;
use crate::contacts::Contacts;
use crate::desk::{Desk, DeskError, Effect, Logged};
use crate::events::Also;
use crate::payments::{self, Payments, Settle};
use crate::presence::Sessions;
use crate::webhooks::Webhooks;

/// How long a new holder listens for the gateways' sessions before it
/// routes, so agents with sessions are not taken for offline.
const SETTLE: Duration = Duration::from_secs(1);
/// How often silent gateways are looked for.
const EXPIRE_EVERY: Duration = Duration::from_secs(5);
/// Calls and event batches waiting for the loop.
const INPUT_CAPACITY: usize = 1024;
/// Decisions waiting to be carried out.
const EFFECT_CAPACITY: usize = 65_536;
/// Calls answered at once; each waits for the loop.
const CALL_CONCURRENCY: usize = 256;
/// How long an event batch waits before it is tried again after the store
/// failed.
const RETRY_EVENTS: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) store: Arc<dyn DeskStore>,
    pub(crate) topology: Topology,
    pub(crate) limits: Limits,
    pub(crate) peer_timeout: Duration,
    pub(crate) payments: Payments,
}

enum Input {
    Call(Box<DeskCommand>, oneshot::Sender<DeskOutcome>),
    Events(ConversationEvents, oneshot::Sender<Handled>),
    Payment(PaymentInput, oneshot::Sender<Result<Settle, tonic::Status>>),
}

/// What the loop does to a payment's record.
enum PaymentInput {
    /// Keep a new payment's record.
    Keep(Box<DeskPayment>),
    /// Apply a provider's report.
    Report(PaymentReport),
    /// The update a report settled is in the conversation.
    Announced(TenantId, ConversationId, PaymentId),
}

/// Routes while this process holds the desk's lease, until `stop`.
pub(crate) async fn serve_desk(
    config: Config,
    lease: watch::Receiver<Lease>,
    stop: CancellationToken,
) {
    let epoch = lease.borrow().epoch;
    tracing::info!(epoch, "holding the desk");
    let bus = config.bus.clone();
    let Ok(mut sessions_in) = bus.subscribe(subjects::DESK_SESSIONS, None).await else {
        tracing::warn!("cannot subscribe to agents' sessions; giving the desk up");
        return;
    };
    if let Err(e) = bus
        .publish(subjects::DESK_HELD, Outgoing::new(Vec::new()))
        .await
    {
        tracing::warn!(error = %e, "cannot ask the gateways for their sessions");
    }
    let mut sessions = Sessions::default();
    let settled = tokio::time::sleep(SETTLE);
    tokio::pin!(settled);
    loop {
        tokio::select! {
            () = &mut settled => break,
            () = stop.cancelled() => return,
            Some(report) = sessions_in.next() => {
                if let Ok(report) = decode::<AgentSessions>(&report.payload) {
                    sessions.apply(&report, Instant::now());
                }
            }
        }
    }

    let (inputs, mut input) = mpsc::channel(INPUT_CAPACITY);
    let (effects, effects_in) = mpsc::channel(EFFECT_CAPACITY);
    let mut tasks = tokio::task::JoinSet::new();
    let acts = Acts {
        bus: bus.clone(),
        holders: Holders::new(bus.clone(), config.topology),
        peer_timeout: config.peer_timeout,
    };
    let payment_acts = acts.clone();
    // Analytics consume EVENTS on their own, beside the loop.
    let analytics = crate::analytics::Analytics::new(config.store.clone(), acts.clone());
    tasks.spawn(analytics.run(config.topology, stop.clone()));
    tasks.spawn(acts.run(effects_in, stop.clone()));
    match bus.subscribe(subjects::DESK_CALL, Some("desk")).await {
        Ok(calls) => {
            let inputs = inputs.clone();
            let (payments, acts, stopping, store) = (
                config.payments.clone(),
                payment_acts.clone(),
                stop.clone(),
                config.store.clone(),
            );
            let answering = serve(
                bus.clone(),
                calls,
                CALL_CONCURRENCY,
                move |command: DeskCommand| {
                    let inputs = inputs.clone();
                    let (payments, acts, stopping, store) = (
                        payments.clone(),
                        acts.clone(),
                        stopping.clone(),
                        store.clone(),
                    );
                    async move {
                        // It waits for the payment provider: beside the loop.
                        if let Some(DeskCall {
                            call: Some(Call::RequestPayment(_)),
                            ..
                        }) = &command.call
                        {
                            return request_payment(command, &payments, &acts, &inputs, &stopping)
                                .await;
                        }
                        // It may read many records: beside the loop too.
                        if let Some(DeskCall {
                            call: Some(Call::QueryAnalytics(_)),
                            ..
                        }) = &command.call
                        {
                            return query_analytics(command, &*store).await;
                        }
                        let (reply, answer) = oneshot::channel();
                        if inputs
                            .send(Input::Call(Box::new(command), reply))
                            .await
                            .is_err()
                        {
                            return giving_up();
                        }
                        answer.await.unwrap_or_else(|_| giving_up())
                    }
                },
            );
            // The subscription does not end with the holding: stop
            // answering when it does.
            tasks.spawn(until(stop.clone(), answering));
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot take desk calls; giving the desk up");
            return;
        }
    }
    match bus.subscribe(subjects::DESK_PAYMENT, Some("desk")).await {
        Ok(reports) => {
            let inputs = inputs.clone();
            let stopping = stop.clone();
            let answering = serve(
                bus.clone(),
                reports,
                CALL_CONCURRENCY,
                move |report: PaymentReport| {
                    let (inputs, acts, stopping) =
                        (inputs.clone(), payment_acts.clone(), stopping.clone());
                    async move { reported(report, &acts, &inputs, &stopping).await }
                },
            );
            tasks.spawn(until(stop.clone(), answering));
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot take payment reports; giving the desk up");
            return;
        }
    }
    let events_inputs = inputs.clone();
    tasks.spawn(consume_partitions(
        bus.clone(),
        EVENTS,
        DESK_CONSUMER,
        config.topology,
        stop.clone(),
        move |batch: ConversationEvents, _delivered| {
            let inputs = events_inputs.clone();
            async move {
                let (reply, handled) = oneshot::channel();
                if inputs.send(Input::Events(batch, reply)).await.is_err() {
                    return Handled::Retry(RETRY_EVENTS);
                }
                handled.await.unwrap_or(Handled::Retry(RETRY_EVENTS))
            }
        },
    ));
    drop(inputs);

    let contacts = Contacts {
        store: config.store.clone(),
        limits: config.limits.clone(),
    };
    let webhooks = Webhooks::new(config.store.clone(), stop.clone());
    let mut desk = Desk::new(contacts, webhooks, bus.clone(), sessions);
    let mut expire = tokio::time::interval(EXPIRE_EVERY);
    loop {
        let mut out = Vec::new();
        let timeout = desk.next_timeout();
        tokio::select! {
            () = stop.cancelled() => break,
            Some(next) = input.recv() => match next {
                Input::Call(command, reply) => {
                    let outcome = call(&mut desk, *command, &mut out).await;
                    let _ = reply.send(outcome);
                }
                Input::Events(batch, reply) => {
                    let _ = reply.send(events(&mut desk, batch, &mut out).await);
                }
                Input::Payment(input, reply) => {
                    let _ = reply.send(payment(&*config.store, input).await);
                }
            },
            Some(report) = sessions_in.next() => {
                if let Ok(report) = decode::<AgentSessions>(&report.payload) {
                    let touched = desk.sessions.apply(&report, Instant::now());
                    if let Err(e) = desk.connected(touched, now(), &mut out).await {
                        tracing::warn!(error = %e, "cannot apply agents' sessions");
                    }
                }
            }
            () = sleep_until(timeout) => {
                if let Err(e) = desk.tick(now(), &mut out).await {
                    tracing::warn!(error = %e, "cannot withdraw timed-out offers");
                }
            }
            _ = expire.tick() => {
                let gone = desk.sessions.expire(Instant::now());
                if let Err(e) = desk.connected(gone, now(), &mut out).await {
                    tracing::warn!(error = %e, "cannot apply silent gateways");
                }
            }
        }
        for effect in out {
            if effects.send(effect).await.is_err() {
                break;
            }
        }
    }
    // What waits in the channel would never be answered, and its
    // consumer never stop: dropping it answers each with a retry.
    drop(input);
    drop(effects);
    desk.stop_webhooks().await;
    while tasks.join_next().await.is_some() {}
    tracing::info!(epoch, "desk given up");
}

/// Has the loop do `input` to a payment's record.
async fn ask(inputs: &mpsc::Sender<Input>, input: PaymentInput) -> Result<Settle, tonic::Status> {
    let (reply, answer) = oneshot::channel();
    let gone = || {
        status::unavailable(
            reason::SERVICE_UNAVAILABLE,
            "the desk is changing hands; retry",
        )
    };
    inputs
        .send(Input::Payment(input, reply))
        .await
        .map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?
}

/// A payment's record, read and written in the loop, so the reports of one
/// payment apply one at a time.
async fn payment(store: &dyn DeskStore, input: PaymentInput) -> Result<Settle, tonic::Status> {
    let invalid = |e: natter_core::Invalid| status::invalid_argument(e);
    let (tenant, writes, settle): (TenantId, _, _) = match input {
        PaymentInput::Keep(record) => (
            parse_id("tenant_id", &record.tenant_id).map_err(invalid)?,
            vec![payments::keep(&record).map_err(invalid)?],
            Settle::Nothing,
        ),
        PaymentInput::Report(report) => {
            let tenant = parse_id("tenant_id", &report.tenant_id).map_err(invalid)?;
            let (writes, settle) = payments::settle(store, &report, now())
                .await
                .map_err(|e| e.into_status())?;
            (tenant, writes, settle)
        }
        PaymentInput::Announced(tenant, conversation, payment) => {
            let writes = payments::announced(store, &tenant, conversation, payment)
                .await
                .map_err(|e| e.into_status())?;
            (tenant, writes, Settle::Nothing)
        }
    };
    if !writes.is_empty() {
        store
            .write_desk(&tenant, &writes)
            .await
            .map_err(natter_server::store_status)?;
    }
    Ok(settle)
}

/// `RequestPayment`: the checkout page, then the record (in the loop),
/// then the message.
async fn request_payment(
    command: DeskCommand,
    payments: &Payments,
    acts: &Acts,
    inputs: &mpsc::Sender<Input>,
    stop: &CancellationToken,
) -> DeskOutcome {
    let (actor, client_call_id, call) = match unpacked(command) {
        Ok(unpacked) => unpacked,
        Err(e) => return failed(e),
    };
    let Call::RequestPayment(request) = call else {
        return failed(natter_core::Invalid::new("call", "is not request_payment").into());
    };
    let keep = |record: DeskPayment| async move {
        ask(inputs, PaymentInput::Keep(Box::new(record)))
            .await
            .map(drop)
    };
    match payments
        .request(&actor, request, acts, keep, now(), stop)
        .await
    {
        Ok(payment) => answered(
            client_call_id,
            Answer::RequestPayment(RequestPaymentResponse {
                payment: Some(payment),
            }),
        ),
        Err(status) => refused(&status),
    }
}

/// A console's analytics query, for the caller's tenant.
async fn query_analytics(command: DeskCommand, store: &dyn DeskStore) -> DeskOutcome {
    let (actor, client_call_id, call) = match unpacked(command) {
        Ok(unpacked) => unpacked,
        Err(e) => return failed(e),
    };
    if let Err(e) = crate::desk::allowed(&actor, &call) {
        return failed(e);
    }
    let Call::QueryAnalytics(request) = call else {
        return failed(natter_core::Invalid::new("call", "is not query_analytics").into());
    };
    match crate::analytics_api::rows(store, actor.tenant, request.query).await {
        Ok(rows) => answered(
            client_call_id,
            Answer::QueryAnalytics(QueryResponse {
                rows: rows.iter().map(crate::analytics_api::row_to_wire).collect(),
            }),
        ),
        Err(status) => refused(&status),
    }
}

/// A provider's report: applied in the loop, then its update sent into
/// the conversation, then marked sent.
async fn reported(
    report: PaymentReport,
    acts: &Acts,
    inputs: &mpsc::Sender<Input>,
    stop: &CancellationToken,
) -> PaymentReportOutcome {
    let refused = |status: tonic::Status| PaymentReportOutcome {
        failure: Some(to_failure(&status)),
        changed: false,
    };
    let (tenant, conversation, update, changed) =
        match ask(inputs, PaymentInput::Report(report)).await {
            Err(status) => return refused(status),
            Ok(Settle::Nothing) => {
                return PaymentReportOutcome {
                    failure: None,
                    changed: false,
                };
            }
            Ok(Settle::Announce {
                tenant,
                conversation,
                update,
                changed,
            }) => (tenant, conversation, update, changed),
        };
    let key = payments::message_key(update.payment_id, update.status);
    let payment = update.payment_id;
    let content = Content::PaymentUpdate(update).into();
    if let Err(why) = acts.post(&tenant, conversation, key, content, stop).await {
        return refused(status::unavailable(
            reason::SERVICE_UNAVAILABLE,
            format!("the payment's update was not sent: {why}"),
        ));
    }
    if let Err(status) = ask(
        inputs,
        PaymentInput::Announced(tenant, conversation, payment),
    )
    .await
    {
        // Sent, but not marked: a replay sends it again, recognised.
        tracing::warn!(status = %status.message(), "payment update not marked as sent");
    }
    PaymentReportOutcome {
        failure: None,
        changed,
    }
}

/// Runs `work` until `stop`.
async fn until(stop: CancellationToken, work: impl Future<Output = ()>) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = work => {}
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<natter_core::Timestamp>) {
    match at {
        Some(at) => {
            let wait = at.as_millis().saturating_sub(now().as_millis());
            tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))).await;
        }
        None => std::future::pending().await,
    }
}

async fn call(desk: &mut Desk, command: DeskCommand, out: &mut Vec<Effect>) -> DeskOutcome {
    let (actor, client_call_id, call) = match unpacked(command) {
        Ok(unpacked) => unpacked,
        Err(e) => return failed(e),
    };
    match desk.call(&actor, call, now(), out).await {
        Ok(answer) => answered(client_call_id, answer),
        Err(e) => failed(e),
    }
}

/// A command's caller, call id and call.
fn unpacked(command: DeskCommand) -> Result<(Identity, String, Call), DeskError> {
    let actor = actor_from_wire(command.actor)?;
    let DeskCall {
        client_call_id,
        call,
    } = command.call.unwrap_or_default();
    let call = call.ok_or_else(|| natter_core::Invalid::new("call", "is required"))?;
    Ok((actor, client_call_id, call))
}

fn answered(client_call_id: String, answer: Answer) -> DeskOutcome {
    DeskOutcome {
        failure: None,
        answer: Some(DeskAnswer {
            client_call_id,
            answer: Some(answer),
        }),
    }
}

fn failed(error: DeskError) -> DeskOutcome {
    refused(&error.into_status())
}

/// The answer to a call that came in as this holder stopped.
fn giving_up() -> DeskOutcome {
    refused(&status::unavailable(
        reason::SERVICE_UNAVAILABLE,
        "the desk is changing hands; retry",
    ))
}

fn refused(status: &tonic::Status) -> DeskOutcome {
    DeskOutcome {
        failure: Some(to_failure(status)),
        answer: None,
    }
}

/// Hands one EVENTS delivery to the desk: lifecycle changes to the
/// routers, lead forms to the contacts, and every message to the event
/// log of a tenant that keeps one.
async fn events(desk: &mut Desk, batch: ConversationEvents, out: &mut Vec<Effect>) -> Handled {
    let mut logged = Logged::default();
    for wire in batch.events {
        let parsed = (|| {
            let tenant: TenantId = parse_id("tenant_id", &wire.tenant_id)?;
            let wire = required("event", wire.event)?;
            let event = Event::try_from(wire.clone())?;
            Ok::<_, natter_core::Invalid>((tenant, wire, event))
        })();
        let (tenant, wire, event) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::error!(error = %e, "invalid conversation event skipped");
                continue;
            }
        };
        let now = now();
        if let Err(e) = desk.note(&tenant, &event, now, out).await {
            tracing::warn!(error = %e, "cannot take a conversation event; retrying");
            return Handled::Retry(RETRY_EVENTS);
        }
        let (Event::Message(message), Some(event::Kind::Message(wire))) = (event, wire.kind) else {
            continue;
        };
        let applied = match &message.content {
            Content::Activity(lifecycle) => desk
                .lifecycle(
                    &tenant,
                    message.conversation_id,
                    lifecycle,
                    message.sent_at,
                    now,
                    out,
                )
                .await
                .map(|()| None),
            // A satisfaction survey's answer goes to the analytics, not
            // onto the contact as lead data.
            Content::FormReply(reply) if reply.form_id != natter_core::CSAT_FORM_ID => desk
                .lead(&tenant, &message.sender_id, &reply.values, now)
                .await
                .map(|lead| lead.map(Also::Lead)),
            Content::PaymentRequest(_) | Content::PaymentUpdate(_) => {
                desk.logged_payment(&tenant, &message).await
            }
            _ => Ok(None),
        };
        let logged_now = match applied {
            Ok(lead) => desk.log(&tenant, &wire, lead, now, &mut logged).await,
            Err(e) => Err(e),
        };
        if let Err(e) = logged_now {
            tracing::warn!(error = %e, "cannot take a conversation event; retrying");
            return Handled::Retry(RETRY_EVENTS);
        }
    }
    out.append(&mut logged.1);
    match desk.write_log(logged).await {
        Ok(()) => Handled::Done,
        Err(e) => {
            tracing::warn!(error = %e, "cannot write the event log; retrying");
            Handled::Retry(RETRY_EVENTS)
        }
    }
}
