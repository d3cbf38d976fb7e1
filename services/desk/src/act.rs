//! Carrying out the desk's decisions through the message path: an
//! assignment makes the agent a member (`storage.members.add`) and then
//! changes the conversation's lifecycle at its sequencer, so every member's
//! devices see it as an activity; offers and queue positions go to
//! sessions as `desk_signal` frames, never stored.
//!
//! Assignments and requeues are carried out one after another, in the
//! order decided, each retried with backoff while storage is unreachable:
//! a later decision about a conversation never lands before an earlier
//! one. Each is idempotent, so one carried out twice (after a retry, or by
//! a new holder) changes nothing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use natter_bus::Bus;
use natter_contract::{Backoff, Holders, encode, request, subjects};
use natter_core::{ConversationId, LifecycleChange, Owner, Role, Status, TenantId, UserId};
use natter_proto::bus::v1::{
    Actor, AddMembersCommand, AddMembersOutcome, EphemeralSignal, SendCommand, ephemeral_signal,
    send_outcome,
};
use natter_proto::convert::timestamp_to_wire;
use natter_proto::status;
use natter_proto::v1;
use natter_server::clock::now;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::desk::Effect;

/// The user the desk acts as, with the service role: the sender of the
/// activities it causes.
pub(crate) const DESK_USER: &str = natter_contract::DESK_USER;

/// How many times an assignment is tried before it is given up (and
/// carried out again when the tenant next loads).
const ATTEMPTS: u32 = 8;

#[derive(Debug, Clone)]
pub(crate) struct Acts {
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) holders: Holders,
    pub(crate) peer_timeout: Duration,
}

impl Acts {
    /// Carries out effects in order until `stop`.
    pub(crate) async fn run(self, mut effects: mpsc::Receiver<Effect>, stop: CancellationToken) {
        loop {
            let effect = tokio::select! {
                () = stop.cancelled() => return,
                effect = effects.recv() => match effect {
                    Some(effect) => effect,
                    None => return,
                },
            };
            self.carry_out(effect, &stop).await;
        }
    }

    async fn carry_out(&self, effect: Effect, stop: &CancellationToken) {
        match effect {
            Effect::Tell {
                tenant,
                users,
                signal,
            } => {
                let frame = v1::ServerFrame {
                    frame: Some(v1::server_frame::Frame::DeskSignal(v1::DeskSignal {
                        signal: Some(signal),
                    })),
                };
                let frame = Bytes::from(frame.encode_to_vec());
                self.holders.publish_frames(&tenant, &users, frame).await;
            }
            Effect::TellConversation {
                tenant,
                conversation,
                signal,
            } => {
                let signal = EphemeralSignal {
                    actor: Some(actor(&tenant)),
                    conversation_id: conversation.to_string(),
                    at: Some(timestamp_to_wire(now())),
                    signal: Some(ephemeral_signal::Signal::Desk(v1::DeskSignal {
                        signal: Some(signal),
                    })),
                };
                if let Err(e) = self.bus.publish(subjects::EPHEMERAL, encode(&signal)).await {
                    tracing::warn!(error = %e, "cannot publish a queue position");
                }
            }
            Effect::Reply {
                tenant,
                conversation,
                key,
                text,
            } => {
                let content = v1::MessageContent {
                    kind: Some(v1::message_content::Kind::Text(text)),
                };
                let done = self
                    .post(&tenant, conversation, key, content, stop)
                    .await
                    .is_ok();
                if !done {
                    tracing::error!(tenant = %tenant, %conversation, "automatic reply not sent");
                }
            }
            Effect::Assign {
                tenant,
                conversation,
                agent,
                team,
            } => {
                let change = LifecycleChange {
                    assignee: Some(Some(agent.clone())),
                    team: Some(Some(team)),
                    owner: Some(Owner::Inbox),
                    ..LifecycleChange::default()
                };
                let done = self
                    .retried(stop, || self.assign(&tenant, conversation, &agent, &change))
                    .await
                    .is_ok();
                if !done {
                    tracing::error!(tenant = %tenant, %conversation, %agent, "assignment not carried out");
                }
            }
            Effect::Close {
                tenant,
                conversation,
            } => {
                let change = LifecycleChange {
                    status: Some(Status::Closed),
                    ..LifecycleChange::default()
                };
                let done = self
                    .retried(stop, || self.change(&tenant, conversation, &change))
                    .await
                    .is_ok();
                if !done {
                    tracing::error!(tenant = %tenant, %conversation, "auto-close not carried out");
                }
            }
            Effect::Requeue {
                tenant,
                conversation,
                team,
            } => {
                let change = LifecycleChange {
                    assignee: Some(None),
                    team: Some(Some(team)),
                    ..LifecycleChange::default()
                };
                let done = self
                    .retried(stop, || self.change(&tenant, conversation, &change))
                    .await
                    .is_ok();
                if !done {
                    tracing::error!(tenant = %tenant, %conversation, "requeue not carried out");
                }
            }
        }
    }

    /// Sends `content` into the conversation as the desk, under the
    /// idempotency key `key`, retried while storage is unreachable; what
    /// stopped it if it was not stored.
    pub(crate) async fn post(
        &self,
        tenant: &TenantId,
        conversation: ConversationId,
        key: String,
        content: v1::MessageContent,
        stop: &CancellationToken,
    ) -> Result<(), String> {
        let command = SendCommand {
            actor: Some(actor(tenant)),
            conversation_id: conversation.to_string(),
            client_message_id: key,
            content: Some(content),
            sent_at: Some(timestamp_to_wire(now())),
            ..SendCommand::default()
        };
        self.retried(stop, || self.sequence(conversation, command.clone()))
            .await
    }

    /// Tries `attempt` until it succeeds, fails for good, or runs out of
    /// tries; why it did not succeed.
    async fn retried<F, Fut>(&self, stop: &CancellationToken, attempt: F) -> Result<(), String>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), Failed>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut last = String::from("not tried");
        for _ in 0..ATTEMPTS {
            match attempt().await {
                Ok(()) => return Ok(()),
                Err(Failed::ForGood(why)) => {
                    tracing::warn!(%why, "desk action refused");
                    return Err(why);
                }
                Err(Failed::Retry(why)) => {
                    tracing::info!(%why, "desk action failed; retrying");
                    last = why;
                    if stop.is_cancelled() {
                        break;
                    }
                    backoff.wait(stop).await;
                }
            }
        }
        Err(last)
    }

    async fn assign(
        &self,
        tenant: &TenantId,
        conversation: ConversationId,
        agent: &UserId,
        change: &LifecycleChange,
    ) -> Result<(), Failed> {
        let command = AddMembersCommand {
            actor: Some(actor(tenant)),
            conversation_id: conversation.to_string(),
            members: vec![(agent.clone(), Role::Agent).into()],
        };
        let outcome: AddMembersOutcome = request(
            &*self.bus,
            subjects::ADD_MEMBERS,
            &command,
            self.peer_timeout,
        )
        .await
        .map_err(|e| Failed::Retry(e.to_string()))?;
        if let Some(failure) = outcome.failure {
            return Err(Failed::from(status::from_failure(failure)));
        }
        self.change(tenant, conversation, change).await
    }

    async fn change(
        &self,
        tenant: &TenantId,
        conversation: ConversationId,
        change: &LifecycleChange,
    ) -> Result<(), Failed> {
        let command = SendCommand {
            actor: Some(actor(tenant)),
            conversation_id: conversation.to_string(),
            client_message_id: uuid::Uuid::new_v4().to_string(),
            sent_at: Some(timestamp_to_wire(now())),
            change: Some(change.clone().into()),
            ..SendCommand::default()
        };
        self.sequence(conversation, command).await
    }

    /// Hands a send or a change to the conversation's sequencer.
    async fn sequence(
        &self,
        conversation: ConversationId,
        command: SendCommand,
    ) -> Result<(), Failed> {
        let outcome = self
            .holders
            .send(conversation, command, self.peer_timeout)
            .await
            .map_err(|e| Failed::Retry(e.to_string()))?;
        match outcome.result {
            Some(send_outcome::Result::Failure(failure)) => {
                Err(Failed::from(status::from_failure(failure)))
            }
            Some(_) => Ok(()),
            None => Err(Failed::ForGood("storage answered nothing".into())),
        }
    }
}

/// Why an action did not go through.
#[derive(Debug)]
enum Failed {
    Retry(String),
    ForGood(String),
}

impl From<tonic::Status> for Failed {
    fn from(status: tonic::Status) -> Self {
        let why = format!("{:?}: {}", status.code(), status.message());
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => Failed::Retry(why),
            _ => Failed::ForGood(why),
        }
    }
}

fn actor(tenant: &TenantId) -> Actor {
    Actor {
        tenant_id: tenant.to_string(),
        user_id: DESK_USER.to_owned(),
        role: v1::Role::Service.into(),
    }
}
