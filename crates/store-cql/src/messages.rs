//! Writing the messages the storage service's sequencer numbered: per
//! conversation, in seq order, one unlogged batch per `messages` partition
//! (a bucket), each with the write's version as its timestamp. No read and
//! no LWT: the lease makes one process the only writer of a partition of
//! conversations, and versions fence a deposed one. SCHEMA.md has the why.

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt, stream};
use natter_core::{ConversationId, Message, TenantId};
use natter_proto::codec::encode_content;
use natter_store::{Result, validate_write};
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::CqlTimestamp;

use crate::CqlStore;
use crate::conversations::FAN_OUT;
use crate::layout::{BUCKET_SPAN, bucket_of, to_bigint};

/// Statements in one batch at most. A batch of one partition is one
/// mutation, which Cassandra and ScyllaDB exempt from their batch size
/// thresholds, so this is what bounds a request: 64 messages of at most
/// 64 KiB content, about 4 MiB.
const MAX_BATCH: usize = 64;

impl CqlStore {
    /// [`ConversationStore::write_messages`](natter_store::ConversationStore::write_messages):
    /// conversations concurrently, each one's batches one after another.
    pub(crate) async fn write_sequenced(
        &self,
        messages: &[(TenantId, Message)],
        version: u64,
    ) -> Result<()> {
        validate_write(messages, version, &self.limits)?;
        // The batches' timestamp; validated to fit.
        let timestamp = i64::try_from(version).unwrap_or(i64::MAX);
        let mut conversations: HashMap<(&TenantId, ConversationId), Vec<&Message>> = HashMap::new();
        for (tenant, message) in messages {
            conversations
                .entry((tenant, message.conversation_id))
                .or_default()
                .push(message);
        }
        let writes: Vec<_> = conversations
            .into_iter()
            .map(|((tenant, id), messages)| {
                self.write_conversation(tenant, id, messages, timestamp)
            })
            .collect();
        stream::iter(writes)
            .buffer_unordered(FAN_OUT)
            .try_collect()
            .await
    }

    /// Writes one conversation's messages in seq order, batch after batch,
    /// so a failure leaves a prefix of them stored; then, if they reached a
    /// new bucket, the `last_seq` hint.
    async fn write_conversation(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        mut messages: Vec<&Message>,
        timestamp: i64,
    ) -> Result<()> {
        messages.sort_by_key(|message| message.seq);
        let (Some(first), Some(last)) = (messages.first(), messages.last()) else {
            return Ok(());
        };
        let (first, last) = (first.seq.get(), last.seq.get());
        let db = self.db();
        let same_bucket =
            |a: &&Message, b: &&Message| bucket_of(a.seq.get()) == bucket_of(b.seq.get());
        for partition in messages.chunk_by(same_bucket) {
            for part in partition.chunks(MAX_BATCH) {
                let mut batch = Batch::new(BatchType::Unlogged);
                // Every statement's timestamp: of two writes of one seq, the
                // higher version stands whatever order they land in. The
                // same write again changes nothing, so a retry is safe.
                batch.set_timestamp(Some(timestamp));
                batch.set_is_idempotent(true);
                let mut values = Vec::with_capacity(part.len());
                for message in part {
                    batch.append_statement(self.statements.message_write.clone());
                    let seq = message.seq.get();
                    values.push((
                        tenant.as_str(),
                        id.as_uuid(),
                        bucket_of(seq),
                        to_bigint(seq),
                        message.id.as_uuid(),
                        message.sender_id.as_str(),
                        message.client_message_id.as_str(),
                        CqlTimestamp(message.sent_at.as_millis()),
                        encode_content(&message.content),
                    ));
                }
                db.batch("write messages", &batch, values).await?;
            }
        }
        // Readers find the head by probing from the hint, one read per
        // bucket, so it need only move when a bucket begins: written once
        // per 1024 messages, after them, so it is never ahead of them.
        if bucket_of(last) > bucket_of(first) || first.is_multiple_of(BUCKET_SPAN) {
            let hint = db
                .write(
                    "advance last_seq hint",
                    &self.statements.conversation_set_hint,
                    (to_bigint(last), tenant.as_str(), id.as_uuid()),
                )
                .await;
            // The messages are stored: failing the write now would have
            // them sent again. A stale hint costs readers a read a bucket.
            if let Err(e) = hint {
                tracing::warn!(error = %e, conversation = %id, seq = last, "messages stored; last_seq hint not advanced");
            }
        }
        Ok(())
    }
}
