//! The SEND consumer: stores each `SendCommand`, announces the stored
//! message on EVENTS, then tells the sender.
//!
//! One command at a time per partition, and a conversation's commands all
//! land on one partition, so a conversation's messages are stored in the
//! order their commands were published. The store's append is idempotent
//! on (conversation, sender, client message id), so a redelivered command
//! or a client's retry stores nothing new; it still publishes the event
//! again (deduplicated by its key), because the first attempt may have died
//! between the store write and the publish. The outcome goes to the
//! sender only after the event is durable, so an acknowledged message is
//! both stored and on its way to every member.

use std::sync::Arc;
use std::time::Duration;

use natter_auth::Identity;
use natter_contract::{Handled, SEND, consume_partitions, encode};
use natter_core::{ClientMessageId, ConversationId, Event, MessageId, NewMessage};
use natter_proto::bus::v1::{Actor, SendCommand, SendOutcome, Stored, send_outcome};
use natter_proto::convert::{content_from_wire, parse_id, role_from_wire, timestamp_from_wire};
use natter_proto::status::to_failure;
use natter_store::{Appended, StoreError};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::policy;
use crate::storage::{Storage, invalid, store_status};

/// The durable consumer name, shared by every storage process.
pub(crate) const CONSUMER: &str = "storage";

/// Consumes SEND until `shutdown`.
pub(crate) async fn consume(storage: Arc<Storage>, shutdown: CancellationToken) {
    let bus = storage.bus.clone();
    let topology = storage.topology;
    consume_partitions::<SendCommand, _, _>(
        bus,
        SEND,
        CONSUMER,
        topology,
        shutdown,
        move |command, delivered| handle(storage.clone(), command, delivered),
    )
    .await;
}

/// Why a command was not stored.
enum NotStored {
    /// For good: the sender is told.
    Failed(Status),
    /// For now (the store or the bus is down): the command comes back.
    Later,
}

impl From<Status> for NotStored {
    fn from(status: Status) -> Self {
        NotStored::Failed(status)
    }
}

impl From<StoreError> for NotStored {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %err, "store unavailable; the command will be retried");
                NotStored::Later
            }
            err => NotStored::Failed(store_status(err)),
        }
    }
}

#[tracing::instrument(skip_all, fields(conversation = %command.conversation_id, delivered = delivered))]
async fn handle(storage: Arc<Storage>, command: SendCommand, delivered: u32) -> Handled {
    let reply_subject = command.reply_subject.clone();
    let correlation_id = command.correlation_id;
    let result = match store(&storage, command).await {
        Ok(appended) => send_outcome::Result::Stored(Stored {
            duplicate: appended.duplicate,
            message: Some(appended.message.into()),
        }),
        Err(NotStored::Failed(status)) => send_outcome::Result::Failure(to_failure(&status)),
        Err(NotStored::Later) => return Handled::Retry(retry_delay(delivered)),
    };
    if !reply_subject.is_empty() {
        let outcome = SendOutcome {
            correlation_id,
            result: Some(result),
        };
        // Best effort: a sender that misses it times out and retries with
        // the same client message id, which finds the stored message.
        if let Err(e) = storage.bus.publish(&reply_subject, encode(&outcome)).await {
            tracing::warn!(error = %e, "cannot publish a send outcome");
        }
    }
    Handled::Done
}

async fn store(storage: &Storage, command: SendCommand) -> Result<Appended, NotStored> {
    let sender = actor_from_wire(command.actor).map_err(invalid)?;
    let conversation_id: ConversationId =
        parse_id("conversation_id", &command.conversation_id).map_err(invalid)?;
    let client_message_id: ClientMessageId =
        parse_id("client_message_id", &command.client_message_id).map_err(invalid)?;
    let content = content_from_wire(command.content).map_err(invalid)?;
    content.validate(&storage.limits).map_err(invalid)?;
    let sent_at = timestamp_from_wire("sent_at", command.sent_at).map_err(invalid)?;

    // Not `Storage::enforce`: a store outage here means "later", not a
    // failure to report.
    if policy::read_or_send(sender.role) == policy::Check::Member
        && storage
            .store
            .member(&sender.tenant, conversation_id, &sender.user)
            .await?
            .is_none()
    {
        return Err(policy::not_a_member().into());
    }

    let appended = storage
        .store
        .append_message(
            &sender.tenant,
            NewMessage {
                id: MessageId::generate(),
                conversation_id,
                sender_id: sender.user,
                client_message_id,
                sent_at,
                content,
            },
        )
        .await?;
    let event = Event::Message(appended.message.clone());
    if let Err(e) = storage.publish(&sender.tenant, event).await {
        tracing::warn!(error = %e, "cannot publish a stored message; the command will be retried");
        return Err(NotStored::Later);
    }
    Ok(appended)
}

/// The sender of a command, as the sending service established it.
pub(crate) fn actor_from_wire(actor: Option<Actor>) -> natter_core::Result<Identity> {
    let actor = natter_proto::convert::required("actor", actor)?;
    Ok(Identity {
        tenant: parse_id("actor.tenant_id", &actor.tenant_id)?,
        user: parse_id("actor.user_id", &actor.user_id)?,
        role: role_from_wire("actor.role", actor.role)?,
    })
}

/// How long a command waits before its next attempt: doubling from 100 ms
/// to at most 5 s.
fn retry_delay(delivered: u32) -> Duration {
    let doublings = delivered.saturating_sub(1).min(6);
    (Duration::from_millis(100) * 2u32.pow(doublings)).min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_a_cap() {
        assert_eq!(retry_delay(0), Duration::from_millis(100));
        assert_eq!(retry_delay(1), Duration::from_millis(100));
        assert_eq!(retry_delay(2), Duration::from_millis(200));
        assert_eq!(retry_delay(6), Duration::from_millis(3200));
        assert_eq!(retry_delay(7), Duration::from_secs(5));
        assert_eq!(retry_delay(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn actors_name_their_bad_field() {
        assert_eq!(actor_from_wire(None).unwrap_err().field, "actor");
        let actor = Actor {
            tenant_id: "acme".into(),
            user_id: "has space".into(),
            role: natter_proto::v1::Role::Agent.into(),
        };
        assert_eq!(
            actor_from_wire(Some(actor)).unwrap_err().field,
            "actor.user_id"
        );
    }
}
