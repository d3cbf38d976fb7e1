//! What a session asks of the other services over the bus, and what it
//! makes of their answers and failures (statuses from `stop.rs`).

use std::sync::Arc;

use natter_auth::Identity;
use natter_contract::subjects;
use natter_core::{ClientMessageId, ConversationId, DeviceId};
use natter_proto::bus::v1::{
    CursorAck, DeskCommand, DeskOutcome, DeviceHello, DeviceWelcome, EphemeralSignal,
    MarkReadCommand, MarkReadOutcome, SendCommand, UpdatesPage, UpdatesQuery, send_outcome,
};
use natter_proto::v1::{LifecycleUpdated, SendAck, server_frame::Frame};
use natter_proto::{convert, status};
use tonic::{Code, Status};

use crate::Shared;
use crate::outbound::Outbound;
use crate::stop::{Stop, device_revoked, unavailable, unreadable};

/// The domain values of a page a peer sent; one that cannot be read ends
/// the session, since skipping it would leave a gap.
pub(crate) fn readable<W, T>(page: Vec<W>, what: &str) -> Result<Vec<T>, Stop>
where
    T: TryFrom<W>,
    T::Error: std::fmt::Display,
{
    page.into_iter()
        .map(T::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            tracing::error!(error = %e, "a peer sent {what} that cannot be read");
            Stop::Fail(unreadable(format!("{what} could not be read; reconnect")))
        })
}

/// Registers the device with sync and learns whether it may connect; the
/// holder of the user's partition starts sending the user's live frames
/// here. Returns the lease epoch of that holder (0: none answered).
#[tracing::instrument(skip_all)]
pub(crate) async fn device_hello(
    shared: &Shared,
    identity: &Identity,
    device: &DeviceId,
    label: String,
) -> Result<u64, Status> {
    let hello = DeviceHello {
        actor: Some(identity.into()),
        device_id: device.to_string(),
        label,
        gateway: shared.live.id().to_owned(),
    };
    let welcome: DeviceWelcome = shared
        .holders
        .hello(
            &identity.tenant,
            &identity.user,
            hello,
            shared.config.peer_timeout,
        )
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "device hello to sync failed");
            unavailable("sync did not answer; reconnect later")
        })?;
    match welcome.failure {
        None => Ok(welcome.holder_epoch),
        // Sync reports a revoked device as a failed precondition of the
        // device record; to the device it means it may not connect.
        Some(failure)
            if failure.code == i32::from(Code::FailedPrecondition)
                || failure.code == i32::from(Code::PermissionDenied) =>
        {
            tracing::info!(reason = %failure.reason, message = %failure.message, "device may not connect");
            Err(device_revoked())
        }
        Some(failure) => {
            let status = status::from_failure(failure);
            tracing::warn!(code = ?status.code(), message = status.message(), "device hello refused");
            Err(status)
        }
    }
}

/// Fetches one catch-up page, once the outbound queue has room for it.
#[tracing::instrument(skip_all, fields(after = query.after))]
pub(crate) async fn fetch(
    shared: Arc<Shared>,
    outbound: Outbound,
    who: Identity,
    query: UpdatesQuery,
) -> Result<UpdatesPage, Stop> {
    outbound.room_for(query.limit as usize).await?;
    shared
        .holders
        .updates(&who.tenant, &who.user, query, shared.config.peer_timeout)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "catch-up request to sync failed");
            Stop::Fail(unavailable("sync did not answer; reconnect to catch up"))
        })
}

/// Stores a message through its sequencer; answers `send_ack` or `error`.
#[tracing::instrument(skip_all, fields(conversation = %conversation, client_message_id = %client_message_id))]
pub(crate) async fn send(
    shared: Arc<Shared>,
    conversation: ConversationId,
    client_message_id: ClientMessageId,
    command: SendCommand,
) -> Option<Frame> {
    let key = (&client_message_id, "client_message_id");
    let arrived = std::time::Instant::now();
    let outcome = match sequence(&shared, conversation, command, key).await {
        Ok(outcome) => outcome,
        Err(frame) => return Some(frame),
    };
    match outcome {
        send_outcome::Result::Stored(stored) => {
            if !stored.duplicate {
                shared.meters.accepted(arrived.elapsed());
            }
            let message = stored.message.unwrap_or_default();
            Some(Frame::SendAck(SendAck {
                client_message_id: client_message_id.to_string(),
                message_id: message.message_id,
                seq: message.seq,
                conversation_id: message.conversation_id,
                duplicate: stored.duplicate,
            }))
        }
        outcome => Some(unexpected(&outcome, &client_message_id)),
    }
}

/// Changes a conversation's lifecycle through its sequencer; answers
/// `lifecycle_updated` or `error`.
#[tracing::instrument(skip_all, fields(conversation = %conversation, client_change_id = %client_change_id))]
pub(crate) async fn update_lifecycle(
    shared: Arc<Shared>,
    conversation: ConversationId,
    client_change_id: ClientMessageId,
    command: SendCommand,
) -> Option<Frame> {
    let key = (&client_change_id, "client_change_id");
    let outcome = match sequence(&shared, conversation, command, key).await {
        Ok(outcome) => outcome,
        Err(frame) => return Some(frame),
    };
    match convert::lifecycle_response(outcome.clone()) {
        Some(result) => Some(Frame::LifecycleUpdated(LifecycleUpdated {
            client_change_id: client_change_id.to_string(),
            result: Some(result),
        })),
        None => Some(unexpected(&outcome, &client_change_id)),
    }
}

/// Hands `command` to the sequencer of `conversation`: what became of it,
/// or the `error` frame to answer, naming the request's own id and the
/// field it came in.
async fn sequence(
    shared: &Shared,
    conversation: ConversationId,
    command: SendCommand,
    (key, field): (&ClientMessageId, &str),
) -> Result<send_outcome::Result, Frame> {
    let error = |status: Status| Frame::Error(status::error_frame(&status, Some(key)));
    let outcome = shared
        .holders
        .send(conversation, command, shared.config.peer_timeout)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "send not confirmed");
            error(unavailable(format!(
                "storage did not confirm the request in time; retry with the same {field}"
            )))
        })?;
    match outcome.result {
        Some(send_outcome::Result::Failure(failure)) => {
            let status = status::from_failure(failure);
            tracing::info!(code = ?status.code(), message = status.message(), "request refused");
            Err(error(status))
        }
        Some(result) => Ok(result),
        None => Err(unexpected_frame(key)),
    }
}

/// The `error` frame for an outcome the request cannot have had.
fn unexpected(outcome: &send_outcome::Result, key: &ClientMessageId) -> Frame {
    tracing::error!(
        ?outcome,
        "storage answered with an outcome the request cannot have"
    );
    unexpected_frame(key)
}

fn unexpected_frame(key: &ClientMessageId) -> Frame {
    Frame::Error(status::error_frame(
        &unreadable("storage answered with an unreadable outcome"),
        Some(key),
    ))
}

/// Marks a conversation read; answers only on failure (the new watermark
/// arrives as an update).
#[tracing::instrument(skip_all, fields(conversation = %command.conversation_id, seq = command.seq))]
pub(crate) async fn mark_read(shared: Arc<Shared>, command: MarkReadCommand) -> Option<Frame> {
    let outcome: MarkReadOutcome = match natter_contract::request(
        shared.bus.as_ref(),
        subjects::MARK_READ,
        &command,
        shared.config.peer_timeout,
    )
    .await
    {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::warn!(error = %e, "read not confirmed");
            let status = unavailable("storage did not confirm the read in time; retry");
            return Some(Frame::Error(status::error_frame(&status, None)));
        }
    };
    let failure = outcome.failure?;
    let status = status::from_failure(failure);
    tracing::info!(code = ?status.code(), message = status.message(), "read refused");
    Some(Frame::Error(status::error_frame(&status, None)))
}

/// Carries out a desk call at the desk's holder; answers `desk_answer` or
/// `error`, each naming the call's `client_call_id`.
#[tracing::instrument(skip_all, fields(client_call_id = %client_call_id))]
pub(crate) async fn desk(
    shared: Arc<Shared>,
    client_call_id: String,
    command: DeskCommand,
) -> Option<Frame> {
    let error = |status: &Status| {
        let mut frame = status::error_frame(status, None);
        frame.client_message_id.clone_from(&client_call_id);
        Frame::Error(frame)
    };
    let outcome: DeskOutcome = match natter_contract::request(
        shared.bus.as_ref(),
        subjects::DESK_CALL,
        &command,
        shared.config.peer_timeout,
    )
    .await
    {
        Ok(outcome) => outcome,
        // Nobody answers while the desk changes hands: the client retries.
        Err(e) => return Some(error(&e.into_status("the desk"))),
    };
    match outcome {
        DeskOutcome {
            failure: Some(failure),
            ..
        } => {
            let status = status::from_failure(failure);
            tracing::info!(code = ?status.code(), message = status.message(), "desk call refused");
            Some(error(&status))
        }
        DeskOutcome {
            answer: Some(mut answer),
            ..
        } => {
            answer.client_call_id.clone_from(&client_call_id);
            Some(Frame::DeskAnswer(answer))
        }
        DeskOutcome { answer: None, .. } => {
            tracing::error!("the desk answered with neither an answer nor a failure");
            Some(error(&unreadable(
                "the desk answered with an unreadable outcome",
            )))
        }
    }
}

/// Tells sync how far the device got. Lost acks only delay the news, so
/// failures are logged, not reported.
pub(crate) async fn ack(shared: Arc<Shared>, ack: CursorAck) -> Option<Frame> {
    if let Err(e) = shared
        .bus
        .publish(subjects::CURSOR_ACK, natter_contract::encode(&ack))
        .await
    {
        tracing::warn!(error = %e, cursor = ack.cursor, "cannot publish a cursor ack");
    }
    None
}

/// Passes a typing signal to fanout, which checks membership and tells
/// the other members. Never answered.
pub(crate) async fn typing(shared: Arc<Shared>, signal: EphemeralSignal) -> Option<Frame> {
    if let Err(e) = shared
        .bus
        .publish(subjects::EPHEMERAL, natter_contract::encode(&signal))
        .await
    {
        tracing::debug!(error = %e, "cannot publish a typing signal");
    }
    None
}
