//! What the gRPC API, the sequencers and the bus responders share: the
//! store, the bus, the limits, and the two things all of them do, checking
//! access to a conversation and announcing its events on EVENTS.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use natter_auth::Identity;
use natter_bus::{Bus, BusError, DurableMessage};
use natter_contract::{Backoff, EVENTS, Topology, encode, subjects};
use natter_core::{
    ConversationId, Event, Invalid, Limits, Member, MembershipChange, MembershipKind, Message,
    Role, TenantId, Timestamp, UserId,
};
use natter_proto::bus::v1::{ConversationEvent, Failure};
use natter_proto::status::{self, reason};
use natter_store::{ConversationStore, StoreError};
use tonic::{Code, Status};

use crate::policy::{self, Check};

/// Durable publishes in flight at once for one request's events.
const PUBLISH_CONCURRENCY: usize = 32;
/// Attempts of one durable publish before a request gives up on it.
const PUBLISH_ATTEMPTS: u32 = 3;
/// Store lookups in flight at once for one request.
const LOOKUP_CONCURRENCY: usize = 16;

pub(crate) struct Storage {
    pub(crate) store: Arc<dyn ConversationStore>,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) topology: Topology,
    pub(crate) limits: Limits,
}

impl Storage {
    /// Enforces `check` for `who` on conversation `id`.
    pub(crate) async fn enforce(
        &self,
        check: Check,
        who: &Identity,
        id: ConversationId,
    ) -> Result<(), Status> {
        match check {
            Check::Allowed => Ok(()),
            Check::Denied(why) => Err(policy::role_not_allowed(why)),
            // Both stores answer `member` with NotFound when the
            // conversation is not in the tenant, so one read settles both
            // questions.
            Check::Member => match self.store.member(&who.tenant, id, &who.user).await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(policy::not_a_member()),
                Err(e) => Err(store_status(e)),
            },
        }
    }

    /// Publishes `event` of a conversation of `tenant` durably on EVENTS,
    /// with the event's key as the dedup id, so publishing it again (a
    /// retry, a redelivered command) stores it once within the stream's
    /// duplicate window, and consumers downstream deduplicate by the same
    /// key after that.
    pub(crate) async fn publish(&self, tenant: &TenantId, event: Event) -> Result<(), BusError> {
        let DurableMessage {
            subject,
            message,
            dedup_id,
        } = self.durable(tenant, event);
        self.bus
            .publish_durable(&subject, message, dedup_id.as_deref())
            .await
            .map(drop)
    }

    /// `event` as published on EVENTS: on its conversation's partition,
    /// with its key as the dedup id.
    fn durable(&self, tenant: &TenantId, event: Event) -> DurableMessage {
        let key = event.key();
        let subject = EVENTS.subject(
            &self.topology,
            &subjects::conversation_key(event.conversation_id()),
        );
        let message = encode(&ConversationEvent {
            tenant_id: tenant.to_string(),
            event: Some(event.into()),
        });
        DurableMessage {
            subject,
            message,
            dedup_id: Some(key),
        }
    }

    /// Publishes the message events of one write as one durable batch,
    /// retrying it briefly. The messages are stored already, so failing
    /// here answers UNAVAILABLE: their senders retry, and the retry's
    /// duplicate is announced again.
    pub(crate) async fn announce_messages(
        &self,
        messages: Vec<(TenantId, Message)>,
    ) -> Result<(), Status> {
        let batch: Vec<DurableMessage> = messages
            .into_iter()
            .map(|(tenant, message)| self.durable(&tenant, Event::Message(message)))
            .collect();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        for attempt in 1..=PUBLISH_ATTEMPTS {
            match self.bus.publish_durable_batch(batch.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "cannot announce stored messages");
                    if attempt < PUBLISH_ATTEMPTS {
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        }
        Err(unavailable(
            "the message is stored but could not be announced; retry with the same client_message_id",
        ))
    }

    /// Publishes the events of one request, a few at a time, retrying each
    /// briefly. The change they announce is already stored, so failing
    /// here answers UNAVAILABLE: see the crate docs for what a retry
    /// repairs.
    pub(crate) async fn announce(
        &self,
        tenant: &TenantId,
        events: Vec<Event>,
    ) -> Result<(), Status> {
        // Made up front (they are lazy) so that no closure is held across
        // an await, which would trip the higher-ranked `Send` check of the
        // gRPC handlers.
        let publishes: Vec<_> = events
            .into_iter()
            .map(|event| self.publish_with_retries(tenant, event))
            .collect();
        futures::stream::iter(publishes)
            .buffer_unordered(PUBLISH_CONCURRENCY)
            .try_collect()
            .await
    }

    async fn publish_with_retries(&self, tenant: &TenantId, event: Event) -> Result<(), Status> {
        let mut delay = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            match self.publish(tenant, event.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < PUBLISH_ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, key = %event.key(), "cannot publish an event; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                    attempt += 1;
                }
                Err(e) => {
                    tracing::error!(error = %e, key = %event.key(), "cannot publish an event; giving up");
                    return Err(unavailable(
                        "the change is stored but could not be announced; retry the call",
                    ));
                }
            }
        }
    }

    /// The members of `id` among `users`, looked up a few at a time, in
    /// the order given; `None` for users who are not members.
    pub(crate) async fn members_among(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        users: &[&UserId],
    ) -> Result<Vec<Option<Member>>, Status> {
        let lookups: Vec<_> = users
            .iter()
            .map(|user| self.store.member(tenant, id, user))
            .collect();
        futures::stream::iter(lookups)
            .buffered(LOOKUP_CONCURRENCY)
            .map_err(store_status)
            .try_collect()
            .await
    }

    /// Whether an event that happened `at` may still be a duplicate the
    /// EVENTS stream would recognise: then publishing it again is free if it
    /// was published, and repairs the loss if it was not.
    pub(crate) fn within_dedup_window(&self, at: Timestamp) -> bool {
        recent(at, now(), EVENTS.config(&self.topology).duplicate_window)
    }
}

/// Whether `at` lies less than half of `window` before `now`: half, to
/// leave room for clock skew between storage processes.
fn recent(at: Timestamp, now: Timestamp, window: Duration) -> bool {
    let age = now.as_millis().saturating_sub(at.as_millis()).max(0);
    u128::try_from(age).is_ok_and(|age| age < window.as_millis() / 2)
}

/// The Joined event of `user`, who joined conversation `id` as `role` at
/// `at`; the same event, with the same key, however often it is rebuilt.
pub(crate) fn joined(id: ConversationId, user: &UserId, role: Role, at: Timestamp) -> Event {
    Event::Membership(MembershipChange {
        conversation_id: id,
        user_id: user.clone(),
        role,
        kind: MembershipKind::Joined,
        at,
    })
}

/// The wall clock as the domain counts time.
pub(crate) fn now() -> Timestamp {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Timestamp::from_millis(millis)
}

/// The status for a store failure, logged first: backend trouble loudly,
/// the caller's mistakes (not found, invalid, conflict) quietly.
pub(crate) fn store_status(err: StoreError) -> Status {
    match &err {
        StoreError::Unavailable(_) | StoreError::Corrupt(_) => {
            tracing::error!(error = %err, "store call failed");
        }
        _ => tracing::debug!(error = %err, "store refused the call"),
    }
    status::store_error(err)
}

/// INVALID_ARGUMENT for bad input, logged at debug.
pub(crate) fn invalid(err: Invalid) -> Status {
    tracing::debug!(error = %err, "invalid input");
    status::invalid_argument(err)
}

/// UNAVAILABLE with the documented reason, for a call that could not be
/// completed now and is safe to retry.
pub(crate) fn unavailable(message: &str) -> Status {
    status::from_failure(Failure {
        code: Code::Unavailable as i32,
        reason: reason::STORE_UNAVAILABLE.to_owned(),
        message: message.to_owned(),
        field: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_means_well_inside_the_dedup_window() {
        let window = Duration::from_secs(120);
        let at = Timestamp::from_millis(1_000_000);
        let later = |millis: i64| Timestamp::from_millis(1_000_000 + millis);
        assert!(recent(at, at, window));
        assert!(recent(at, later(59_999), window));
        assert!(!recent(at, later(60_000), window));
        // A clock behind the event's writer still counts it as recent.
        assert!(recent(at, Timestamp::from_millis(999_000), window));
    }

    #[test]
    fn unavailable_carries_the_documented_reason() {
        use tonic_types::StatusExt as _;
        let status = unavailable("retry");
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            reason::STORE_UNAVAILABLE
        );
    }
}
