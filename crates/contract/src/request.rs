//! Typed request/reply over the bus, and the serving loop for it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use natter_bus::{Bus, Outgoing, Subscription};
use prost::Message;
use tokio::sync::Semaphore;

use crate::{ContractError, Result};

/// Sends `query` to `subject` and decodes the answer.
pub async fn request<Q, A>(bus: &dyn Bus, subject: &str, query: &Q, timeout: Duration) -> Result<A>
where
    Q: Message,
    A: Message + Default,
{
    request_encoded(bus, subject, encode(query), timeout).await
}

/// [`request`] with the query encoded already.
pub(crate) async fn request_encoded<A: Message + Default>(
    bus: &dyn Bus,
    subject: &str,
    query: Outgoing,
    timeout: Duration,
) -> Result<A> {
    let reply = bus.request(subject, query, timeout).await?;
    decode(&reply.payload)
}

/// Decodes a bus payload.
pub fn decode<M: Message + Default>(payload: &[u8]) -> Result<M> {
    M::decode(payload).map_err(|e| ContractError::Decode {
        what: std::any::type_name::<M>(),
        reason: e.to_string(),
    })
}

/// Encodes a message as a bus payload.
pub fn encode<M: Message>(message: &M) -> Outgoing {
    Outgoing::new(message.encode_to_vec())
}

/// Answers every request on `requests` with `handler`, up to `concurrency`
/// at a time, until the subscription ends. Undecodable requests are logged
/// and dropped: their sender times out, as it would with a lost message.
pub async fn serve<Q, A, F, Fut>(
    bus: Arc<dyn Bus>,
    mut requests: Subscription,
    concurrency: usize,
    handler: F,
) where
    Q: Message + Default + 'static,
    A: Message + 'static,
    F: Fn(Q) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = A> + Send + 'static,
{
    let handler = Arc::new(handler);
    let permits = Arc::new(Semaphore::new(concurrency));
    while let Some(incoming) = requests.next().await {
        let Some(reply_to) = incoming.reply.clone() else {
            tracing::warn!(subject = %incoming.subject, "request without a reply subject dropped");
            continue;
        };
        let query: Q = match decode(&incoming.payload) {
            Ok(query) => query,
            Err(e) => {
                tracing::warn!(subject = %incoming.subject, error = %e, "undecodable request dropped");
                continue;
            }
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (bus, handler) = (bus.clone(), handler.clone());
        tokio::spawn(async move {
            let answer = handler(query).await;
            if let Err(e) = bus.publish(&reply_to, encode(&answer)).await {
                tracing::warn!(error = %e, "cannot publish a reply");
            }
            drop(permit);
        });
    }
}
