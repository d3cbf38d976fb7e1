//! Durable, in-order consumption of a partitioned stream.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use natter_bus::{Bus, ConsumerConfig};
use prost::Message;
use tokio_util::sync::CancellationToken;

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
        let config = ConsumerConfig::new(
            stream.name,
            format!("{consumer}-{partition}"),
            format!("{}.{partition}", stream.base),
        );
        tasks.spawn(consume_one(
            bus.clone(),
            config,
            shutdown.clone(),
            handler.clone(),
        ));
    }
    while tasks.join_next().await.is_some() {}
}

async fn consume_one<M, F, Fut>(
    bus: Arc<dyn Bus>,
    config: ConsumerConfig,
    shutdown: CancellationToken,
    handler: Arc<F>,
) where
    M: Message + Default + 'static,
    F: Fn(M, u32) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Handled> + Send + 'static,
{
    let mut backoff = Backoff::default();
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

/// Exponential backoff with jitter, capped, for reconnect loops.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(50),
        }
    }
}

impl Backoff {
    const MAX: Duration = Duration::from_secs(5);

    fn reset(&mut self) {
        *self = Self::default();
    }

    async fn wait(&mut self, shutdown: &CancellationToken) {
        // Jitter from the clock's sub-millisecond noise: good enough to keep
        // many consumers from reconnecting in lockstep.
        let jitter = u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_micros()),
        ) % (self.next.as_millis() as u64 / 2 + 1);
        let delay = self.next + Duration::from_millis(jitter);
        self.next = (self.next * 2).min(Self::MAX);
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
}
