//! Sending a message the durable way, from any service: the command goes
//! to the SEND stream, storage stores it and publishes the outcome to this
//! process's reply subject, where it is matched by correlation id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use natter_bus::{Bus, BusError};
use natter_core::ConversationId;
use natter_proto::bus::v1::{SendCommand, SendOutcome};
use tokio::sync::oneshot;

use crate::request::{decode, encode};
use crate::{Result, SEND, Topology, subjects};

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<SendOutcome>>>>;

/// Sends `SendCommand`s and waits for their outcomes. One per process.
#[derive(Debug)]
pub struct SendClient {
    bus: Arc<dyn Bus>,
    topology: Topology,
    reply_subject: String,
    pending: Pending,
    next_id: AtomicU64,
}

impl SendClient {
    /// Subscribes to this process's reply subject; `instance` must be
    /// unique among the processes of one install.
    pub async fn start(bus: Arc<dyn Bus>, topology: Topology, instance: &str) -> Result<Self> {
        let reply_subject = subjects::replies(instance);
        let mut replies = bus.subscribe(&reply_subject, None).await?;
        let pending: Pending = Arc::default();
        let routes = pending.clone();
        tokio::spawn(async move {
            while let Some(incoming) = replies.next().await {
                let outcome: SendOutcome = match decode(&incoming.payload) {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable send outcome dropped");
                        continue;
                    }
                };
                let waiter = routes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&outcome.correlation_id);
                // No waiter: it gave up (timed out); the client retries.
                if let Some(waiter) = waiter {
                    let _ = waiter.send(outcome);
                }
            }
        });
        Ok(Self {
            bus,
            topology,
            reply_subject,
            pending,
            next_id: AtomicU64::new(1),
        })
    }

    /// Publishes `command` durably and waits up to `timeout` for storage's
    /// outcome. A timeout does not mean the message was lost: retrying with
    /// the same client message id returns it if it was stored.
    pub async fn send(
        &self,
        conversation: ConversationId,
        mut command: SendCommand,
        timeout: Duration,
    ) -> Result<SendOutcome> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        command.reply_subject = self.reply_subject.clone();
        command.correlation_id = id;
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        let guard = Forget {
            pending: &self.pending,
            id,
        };

        let subject = SEND.subject(&self.topology, &subjects::conversation_key(conversation));
        self.bus
            .publish_durable(&subject, encode(&command), None)
            .await?;
        let outcome = tokio::time::timeout(timeout, rx).await;
        drop(guard);
        match outcome {
            Ok(Ok(outcome)) => Ok(outcome),
            _ => Err(BusError::Timeout {
                subject: SEND.base.to_owned(),
                timeout,
            }
            .into()),
        }
    }
}

/// Removes a waiter however the wait ends, so the map stays bounded by the
/// sends in flight.
struct Forget<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}
