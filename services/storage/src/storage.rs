//! What the gRPC API, the sequencers and the bus responders share: the
//! store, the bus, the limits, and the two things all of them do, checking
//! access to a conversation and announcing its events on EVENTS; and
//! adding members, which both the gRPC API and a bus responder do.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use natter_auth::Identity;
use natter_bus::{Bus, DurableMessage};
use natter_contract::{Backoff, EVENTS, Topology, encode, subjects};
use natter_core::{
    ConversationId, Event, Invalid, Limits, Member, MembershipChange, MembershipKind, Role,
    TenantId, Timestamp, UserId, validate_member_list,
};
use natter_proto::bus::v1::{ConversationEvent, ConversationEvents};
use natter_proto::status::{self, reason};
use natter_server::clock::now;
use natter_server::store_status;
use natter_store::{Announcement, ConversationStore};
use tonic::Status;

use crate::kept::Kept;
use crate::policy::{self, Check};

/// What a caller is told when its change is stored but not announced.
pub(crate) const RETRY_CALL: &str =
    "the change is stored but could not be announced; retry the call";

/// Attempts of one durable publish before a request gives up on it.
const PUBLISH_ATTEMPTS: u32 = 3;
/// Store lookups in flight at once for one request.
const LOOKUP_CONCURRENCY: usize = 16;

pub(crate) struct Storage {
    pub(crate) store: Arc<dyn ConversationStore>,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) topology: Topology,
    pub(crate) limits: Limits,
    /// Where announcements are kept in the store: when the bus keeps no
    /// streams (`kept.rs`).
    pub(crate) kept: Option<Kept>,
}

/// One EVENTS message about to be published: its partition, the message,
/// and the version it is kept under, if it is.
pub(crate) struct Announced {
    pub(crate) partition: u32,
    pub(crate) message: DurableMessage,
    pub(crate) kept: Option<u64>,
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

    /// Adds `members` to conversation `id` for `who` and announces the
    /// changes: `AddMembers`, over gRPC and over the bus alike. Users who
    /// were members already make no change.
    pub(crate) async fn add_members(
        &self,
        who: &Identity,
        id: ConversationId,
        members: Vec<(UserId, Role)>,
    ) -> Result<Vec<MembershipChange>, Status> {
        validate_member_list(members.iter().map(|(user, _)| user), &self.limits)
            .map_err(invalid)?;
        self.enforce(policy::add_members(who.role, &members), who, id)
            .await?;
        let changes = self
            .store
            .add_members(&who.tenant, id, &members, now())
            .await
            .map_err(store_status)?;

        // Users already members may have joined through an earlier attempt
        // of this very call whose events were lost; publish their Joined
        // events again while EVENTS still deduplicates them.
        let changed: HashSet<&UserId> = changes.iter().map(|c| &c.user_id).collect();
        let unchanged: Vec<&UserId> = members
            .iter()
            .map(|(user, _)| user)
            .filter(|user| !changed.contains(user))
            .collect();
        let earlier = self.members_among(&who.tenant, id, &unchanged).await?;
        let events: Vec<Event> = changes
            .iter()
            .cloned()
            .map(Event::Membership)
            .chain(
                earlier
                    .iter()
                    .flatten()
                    .filter(|m| self.within_dedup_window(m.joined_at))
                    .map(|m| joined(id, &m.user_id, m.role, m.joined_at)),
            )
            .collect();
        self.announce(with_tenant(&who.tenant, events), RETRY_CALL)
            .await?;
        Ok(changes)
    }

    /// Publishes `events` durably on EVENTS, in order, as one message per
    /// partition they fall in (all of one conversation, or all of one
    /// sequencer's write, fall in one), kept in the store first where the
    /// bus keeps no streams, retrying briefly. The change they announce is
    /// stored already, so failing here answers UNAVAILABLE with `retry`:
    /// see the crate docs for what a retry repairs.
    ///
    /// Each message's dedup id comes from its events' keys, so publishing
    /// the same events again (a retry of the call) stores them once within
    /// the stream's duplicate window, and consumers downstream deduplicate
    /// by the events' keys after that.
    pub(crate) async fn announce(
        &self,
        events: Vec<(TenantId, Event)>,
        retry: &str,
    ) -> Result<(), Status> {
        let mut announced = Vec::new();
        for (partition, message) in self.by_partition(events) {
            let kept = match &self.kept {
                Some(kept) => {
                    let version = kept.track(partition);
                    let announcement = Announcement {
                        partition,
                        version,
                        events: message.message.payload.to_vec(),
                    };
                    let written = self.store.write_messages(&[], Some(&announcement), version);
                    if let Err(e) = written.await {
                        kept.abandoned(partition, version);
                        tracing::warn!(error = %e, "cannot keep an announcement");
                        return Err(unavailable(retry));
                    }
                    Some(version)
                }
                None => None,
            };
            announced.push(Announced {
                partition,
                message,
                kept,
            });
        }
        self.publish(announced, retry).await
    }

    /// `events` as the EVENTS messages that announce them, one per
    /// partition, in order.
    pub(crate) fn by_partition(
        &self,
        events: Vec<(TenantId, Event)>,
    ) -> Vec<(u32, DurableMessage)> {
        let mut by_partition: Vec<(u32, Vec<(TenantId, Event)>)> = Vec::new();
        for (tenant, event) in events {
            let key = subjects::conversation_key(event.conversation_id());
            let partition = natter_bus::partition(&key, self.topology.partitions);
            match by_partition.iter_mut().find(|(p, _)| *p == partition) {
                Some((_, same)) => same.push((tenant, event)),
                None => by_partition.push((partition, vec![(tenant, event)])),
            }
        }
        by_partition
            .into_iter()
            .filter_map(|(partition, events)| {
                let dedup_id = dedup_id(&events)?;
                let message = encode(&ConversationEvents {
                    events: events
                        .into_iter()
                        .map(|(tenant, event)| ConversationEvent {
                            tenant_id: tenant.to_string(),
                            event: Some(event.into()),
                        })
                        .collect(),
                });
                let message = DurableMessage {
                    subject: EVENTS.subject_of(partition),
                    message,
                    dedup_id: Some(dedup_id),
                };
                Some((partition, message))
            })
            .collect()
    }

    /// Publishes `announced` in one durable batch, retrying briefly, and
    /// tells the ledger of what is kept where each landed.
    pub(crate) async fn publish(
        &self,
        announced: Vec<Announced>,
        retry: &str,
    ) -> Result<(), Status> {
        if announced.is_empty() {
            return Ok(());
        }
        let batch: Vec<DurableMessage> = announced.iter().map(|a| a.message.clone()).collect();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        for attempt in 1..=PUBLISH_ATTEMPTS {
            match self.bus.publish_durable_batch(batch.clone()).await {
                Ok(persisted) => {
                    if let Some(kept) = &self.kept {
                        for (a, p) in announced.iter().zip(&persisted) {
                            if let Some(version) = a.kept {
                                kept.published(a.partition, version, p.sequence);
                            }
                        }
                    }
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "cannot announce stored changes");
                    if attempt < PUBLISH_ATTEMPTS {
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        }
        tracing::error!("cannot announce stored changes; giving up");
        if let Some(kept) = &self.kept {
            for a in &announced {
                if let Some(version) = a.kept {
                    kept.abandoned(a.partition, version);
                }
            }
        }
        Err(unavailable(retry))
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

/// `events` of conversations of `tenant`, as `announce` takes them.
pub(crate) fn with_tenant(tenant: &TenantId, events: Vec<Event>) -> Vec<(TenantId, Event)> {
    events.into_iter().map(|e| (tenant.clone(), e)).collect()
}

/// The dedup id of a message of `events`: the first event's key, and their
/// number when there are more; `None` for no events.
pub(crate) fn dedup_id(events: &[(TenantId, Event)]) -> Option<String> {
    let (_, first) = events.first()?;
    let key = first.key();
    Some(match events.len() {
        1 => key,
        n => format!("{key}+{n}"),
    })
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

/// INVALID_ARGUMENT for bad input, logged at debug.
pub(crate) fn invalid(err: Invalid) -> Status {
    tracing::debug!(error = %err, "invalid input");
    status::invalid_argument(err)
}

/// UNAVAILABLE with the documented reason, for a call that could not be
/// completed now and is safe to retry.
pub(crate) fn unavailable(message: &str) -> Status {
    status::unavailable(reason::STORE_UNAVAILABLE, message)
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
}
