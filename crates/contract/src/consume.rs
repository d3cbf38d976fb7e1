//! Durable, in-order consumption of a partitioned stream.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use natter_bus::{Bus, ConsumerConfig};
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::Backoff;
use crate::request::decode;
use crate::{Stream, Topology};

/// What became of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Done (or permanently failed and reported): acknowledge it.
    Done,
    /// Failed for a reason that may pass (a backend down): deliver it again
    /// after the delay, before anything later on the partition.
    Retry(Duration),
}

/// Runs `handler` over every message of every partition of `stream`, one
/// message at a time per partition, so each partition is handled in order.
/// Consumers are durable and named `<consumer>-<partition>`: after a
/// restart, processing resumes after the last acknowledged message, and a
/// message whose handling was interrupted is handled again (at least once).
///
/// The handler gets the message and how many times it has been delivered
/// (1 the first time). Returns when `shutdown` is cancelled, after the
/// messages being handled are settled.
pub async fn consume_partitions<M, F, Fut>(
    bus: Arc<dyn Bus>,
    stream: Stream,
    consumer: &str,
    topology: Topology,
    shutdown: CancellationToken,
    handler: F,
) where
    M: Message + Default + 'static,
    F: Fn(M, u32) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Handled> + Send + 'static,
{
    let handler = Arc::new(handler);
    let mut tasks = tokio::task::JoinSet::new();
    for partition in 0..topology.partitions.get() {
        tasks.spawn(consume_partition(
            bus.clone(),
            stream,
            consumer.to_owned(),
            partition,
            shutdown.clone(),
            handler.clone(),
        ));
    }
    while tasks.join_next().await.is_some() {}
}

/// [`consume_partitions`] for one partition: for a process that holds the
/// partition and works it alone.
pub async fn consume_partition<M, F, Fut>(
    bus: Arc<dyn Bus>,
    stream: Stream,
    consumer: String,
    partition: u32,
    shutdown: CancellationToken,
    handler: Arc<F>,
) where
    M: Message + Default + 'static,
    F: Fn(M, u32) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Handled> + Send + 'static,
{
    let config = ConsumerConfig::new(
        stream.name,
        stream.consumer(&consumer, partition),
        stream.subject_of(partition),
    );
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    while !shutdown.is_cancelled() {
        let mut deliveries = match bus.consume(&config).await {
            Ok(deliveries) => deliveries,
            Err(e) => {
                tracing::warn!(consumer = %config.name, error = %e, "cannot open consumer; retrying");
                backoff.wait(&shutdown).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = deliveries.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => {
                    tracing::warn!(consumer = %config.name, error = %e, "consumer failed; reopening");
                    break;
                }
                None => break,
            };
            backoff.reset();
            let handled = match decode::<M>(&delivery.message.payload) {
                Ok(message) => handler(message, delivery.delivered).await,
                Err(e) => {
                    tracing::error!(
                        consumer = %config.name,
                        sequence = delivery.sequence,
                        error = %e,
                        "undecodable message dropped"
                    );
                    Handled::Done
                }
            };
            let settled = match handled {
                Handled::Done => delivery.ack().await,
                Handled::Retry(delay) => delivery.nak(delay).await,
            };
            if let Err(e) = settled {
                // Unsettled means redelivered after the ack wait; handlers
                // are idempotent, so that is safe.
                tracing::warn!(consumer = %config.name, error = %e, "cannot settle a delivery");
            }
        }
        backoff.wait(&shutdown).await;
    }
}
