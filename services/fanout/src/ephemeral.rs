//! Typing, presence and the desk's news: relayed to a conversation's other
//! members through the sync holders of their partitions, which know their
//! gateways; never stored, dropped when stale.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use natter_bus::{Bus, Incoming, Subscription};
use natter_contract::{Backoff, Holders, decode, subjects};
use natter_core::{ConversationId, Invalid, Role, TenantId, Timestamp, UserId};
use natter_proto::bus::v1::{EphemeralSignal, ephemeral_signal};
use natter_proto::convert::{actor_from_wire, parse_id, required, timestamp_from_wire};
use natter_proto::status::{permission_denied, reason};
use natter_proto::v1;
use prost::Message as _;
use prost::bytes::Bytes;
use thiserror::Error;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::directory::{Directory, LookupError};
use crate::stats::Stats;
use natter_server::clock::now;

/// Signals from the bus handled at once; more are dropped, since a typing
/// signal that waits is worthless anyway.
const CONCURRENCY: usize = 256;

/// What a signal says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SignalKind {
    Typing {
        active: bool,
    },
    Presence {
        online: bool,
    },
    /// The desk's news about the conversation, sent with the service role.
    Desk(v1::DeskSignal),
}

/// A signal of `user` in `conversation`: typing, presence, or the desk's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signal {
    pub(crate) tenant: TenantId,
    pub(crate) conversation: ConversationId,
    pub(crate) user: UserId,
    pub(crate) kind: SignalKind,
    pub(crate) at: Timestamp,
}

impl Signal {
    /// A signal from the bus, with the role of whoever sent it.
    fn from_bus(signal: EphemeralSignal) -> Result<(Self, Role), Invalid> {
        let sender = actor_from_wire(signal.actor)?;
        let kind = match required("signal", signal.signal)? {
            ephemeral_signal::Signal::Typing(active) => SignalKind::Typing { active },
            ephemeral_signal::Signal::Online(online) => SignalKind::Presence { online },
            ephemeral_signal::Signal::Desk(desk) => SignalKind::Desk(desk),
        };
        let signal = Signal {
            tenant: sender.tenant,
            conversation: parse_id("conversation_id", &signal.conversation_id)?,
            user: sender.user,
            kind,
            at: timestamp_from_wire("at", signal.at)?,
        };
        Ok((signal, sender.role))
    }

    /// Older than `ttl` at `now`.
    pub(crate) fn is_stale(&self, now: Timestamp, ttl: Duration) -> bool {
        let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        now.as_millis().saturating_sub(self.at.as_millis()) > ttl
    }

    /// The frame the other members' devices get.
    fn frame(&self) -> v1::ServerFrame {
        use v1::server_frame::Frame;
        let (conversation_id, user_id) = (self.conversation.to_string(), self.user.to_string());
        let frame = match &self.kind {
            SignalKind::Typing { active } => Frame::Typing(v1::TypingSignal {
                conversation_id,
                user_id,
                active: *active,
            }),
            SignalKind::Presence { online } => Frame::Presence(v1::PresenceSignal {
                conversation_id,
                user_id,
                online: *online,
            }),
            SignalKind::Desk(desk) => Frame::DeskSignal(desk.clone()),
        };
        v1::ServerFrame { frame: Some(frame) }
    }
}

#[derive(Debug, Error)]
pub(crate) enum RelayError {
    #[error("{user} is not a member of the conversation")]
    NotAMember { user: UserId },
    #[error(transparent)]
    Lookup(#[from] LookupError),
}

impl RelayError {
    pub(crate) fn into_status(self) -> tonic::Status {
        match self {
            RelayError::NotAMember { .. } => {
                permission_denied(reason::NOT_A_MEMBER, "not a member of the conversation")
            }
            RelayError::Lookup(e) => e.into_status(),
        }
    }
}

/// Relays signals to the other members of their conversation.
#[derive(Debug)]
pub(crate) struct Relay {
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) holders: Holders,
    pub(crate) directory: Arc<Directory>,
    pub(crate) stats: Arc<Stats>,
    /// Signals older than this are dropped.
    pub(crate) ttl: Duration,
}

impl Relay {
    /// Publishes `signal` for every member but its user, who must be a
    /// member unless `role` is the service role: one message to the sync
    /// holder of each user partition they fall in. Returns how many
    /// members it went to. Best effort: a failed publish is logged and
    /// the others go on.
    pub(crate) async fn relay(&self, signal: &Signal, role: Role) -> Result<usize, RelayError> {
        let members = self
            .directory
            .members(&signal.tenant, signal.conversation)
            .await?;
        if role != Role::Service && !members.contains(&signal.user) {
            return Err(RelayError::NotAMember {
                user: signal.user.clone(),
            });
        }
        // Encoded once; every member's frame shares the bytes.
        let frame = Bytes::from(signal.frame().encode_to_vec());
        let others = members.iter().filter(|member| **member != signal.user);
        let sent = self
            .holders
            .publish_frames(&signal.tenant, others, frame)
            .await;
        self.stats.ephemeral_published.add(1);
        Ok(sent)
    }

    /// Relays the signals published on the bus until `shutdown`,
    /// resubscribing if the subscription ends.
    pub(crate) async fn serve(
        self: Arc<Self>,
        mut signals: Subscription,
        shutdown: CancellationToken,
    ) {
        let permits = Arc::new(Semaphore::new(CONCURRENCY));
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = signals.next() => next,
            };
            let Some(incoming) = next else {
                tracing::warn!("ephemeral subscription ended; subscribing again");
                backoff.wait(&shutdown).await;
                if shutdown.is_cancelled() {
                    return;
                }
                match self
                    .bus
                    .subscribe(subjects::EPHEMERAL, Some(crate::CONSUMER))
                    .await
                {
                    Ok(subscription) => signals = subscription,
                    Err(e) => tracing::warn!(error = %e, "cannot subscribe to ephemeral signals"),
                }
                continue;
            };
            backoff.reset();
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                self.stats.ephemeral_dropped.add(1);
                tracing::debug!("ephemeral signal dropped: too many in flight");
                continue;
            };
            let relay = self.clone();
            tokio::spawn(async move {
                relay.relay_incoming(incoming).await;
                drop(permit);
            });
        }
    }

    #[tracing::instrument(skip_all)]
    async fn relay_incoming(&self, incoming: Incoming) {
        let dropped = |why: &str| {
            self.stats.ephemeral_dropped.add(1);
            tracing::debug!(why, "ephemeral signal dropped");
        };
        let parsed = decode::<EphemeralSignal>(&incoming.payload)
            .map_err(|e| e.to_string())
            .and_then(|signal| Signal::from_bus(signal).map_err(|e| e.to_string()));
        let (signal, role) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::warn!(error = %e, "malformed ephemeral signal");
                return dropped("malformed");
            }
        };
        if signal.is_stale(now(), self.ttl) {
            return dropped("stale");
        }
        match self.relay(&signal, role).await {
            Ok(_) => {}
            Err(RelayError::NotAMember { .. }) => dropped("not a member"),
            Err(RelayError::Lookup(e)) => {
                tracing::warn!(error = %e, "cannot list members for an ephemeral signal");
                dropped("no member list");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(at: i64) -> Signal {
        Signal {
            tenant: TenantId::new("acme").unwrap(),
            conversation: ConversationId::generate(),
            user: UserId::new("alice").unwrap(),
            kind: SignalKind::Typing { active: true },
            at: Timestamp::from_millis(at),
        }
    }

    #[test]
    fn signals_past_the_ttl_are_stale() {
        let ttl = Duration::from_secs(10);
        let now = Timestamp::from_millis(100_000);
        assert!(!signal(90_000).is_stale(now, ttl));
        assert!(signal(89_999).is_stale(now, ttl));
        assert!(
            !signal(200_000).is_stale(now, ttl),
            "clock skew is tolerated"
        );
    }

    #[test]
    fn frames_carry_the_signal() {
        let s = signal(1);
        let Some(v1::server_frame::Frame::Typing(typing)) = s.frame().frame else {
            panic!("a typing frame");
        };
        assert_eq!(typing.user_id, "alice");
        assert!(typing.active);
    }
}
