//! Writing the messages the storage service's sequencer numbered: per
//! conversation, in seq order, one unlogged batch per `messages` partition
//! (a bucket), each with the write's version as its timestamp, then the
//! write's announcement, if it has one. An activity message (a lifecycle
//! change, rare) goes alone in a small logged batch with the
//! conversation's new lifecycle, so the two land together. No read and no LWT: the lease
//! makes one process the only writer of a partition of conversations, and
//! versions fence a deposed one. SCHEMA.md has the why; `sequences.rs` the
//! part update logs share.

use natter_core::{Content, Lifecycle, Message, TenantId};
use natter_proto::codec::{decode_lifecycle, encode_content, encode_lifecycle};
use natter_store::{Announcement, Result, validate_write};
use scylla::value::CqlTimestamp;

use crate::CqlStore;
use crate::layout::{bucket_of, to_bigint};
use crate::sequences::{Sequence, each_sequence, timestamp};

/// A `conversation_lifecycles.lifecycle` cell: the activity's seq, 8 bytes
/// big-endian, then the lifecycle. Two activities of one write carry the
/// same timestamp, and on a tie CQL keeps the greater value: the seq first
/// makes that the newer activity's.
pub(crate) fn lifecycle_cell(seq: u64, lifecycle: &Lifecycle) -> Vec<u8> {
    let mut cell = seq.to_be_bytes().to_vec();
    cell.extend(encode_lifecycle(lifecycle));
    cell
}

/// The lifecycle of a `conversation_lifecycles.lifecycle` cell.
pub(crate) fn lifecycle_of_cell(cell: &[u8]) -> natter_core::Result<Lifecycle> {
    match cell.split_at_checked(8) {
        Some((_, lifecycle)) => decode_lifecycle(lifecycle),
        None => Err(natter_core::Invalid::new(
            "lifecycle",
            "shorter than its seq",
        )),
    }
}

impl CqlStore {
    /// [`ConversationStore::write_messages`](natter_store::ConversationStore::write_messages):
    /// conversations concurrently, each one's batches one after another,
    /// and the announcement only once they have all landed, so a kept
    /// announcement never names a message that is not stored.
    pub(crate) async fn write_sequenced(
        &self,
        messages: &[(TenantId, Message)],
        announcement: Option<&Announcement>,
        version: u64,
    ) -> Result<()> {
        validate_write(messages, announcement, version, &self.limits)?;
        let timestamp = timestamp(version);
        let rows = messages.iter().map(|(tenant, message)| {
            let seq = message.seq.get();
            let values = (
                tenant.as_str(),
                message.conversation_id.as_uuid(),
                bucket_of(seq),
                to_bigint(seq),
                message.id.as_uuid(),
                message.sender_id.as_str(),
                message.client_message_id.as_str(),
                CqlTimestamp(message.sent_at.as_millis()),
                encode_content(&message.content),
            );
            let lifecycle = match &message.content {
                Content::Activity(lifecycle) => Some(lifecycle_cell(seq, lifecycle)),
                _ => None,
            };
            ((tenant, message.conversation_id), (seq, values, lifecycle))
        });
        each_sequence(rows, |(tenant, id), mut rows| async move {
            let conversation = Sequence {
                name: &id,
                what: "write messages",
                insert: &self.statements.message_write,
                set_hint: &self.statements.conversation_set_hint,
            };
            let hint = |head| (head, tenant.as_str(), id.as_uuid());
            rows.sort_by_key(|(seq, _, _)| *seq);
            // Runs of plain messages, each activity alone after its run.
            let mut plain = Vec::new();
            for (seq, values, lifecycle) in rows {
                let Some(lifecycle) = lifecycle else {
                    plain.push((seq, values));
                    continue;
                };
                let run = std::mem::take(&mut plain);
                self.write_sequence(conversation, run, hint, timestamp)
                    .await?;
                let closing = (
                    &self.statements.lifecycle_write,
                    (lifecycle, tenant.as_str(), id.as_uuid()),
                );
                self.write_sequence_closed(
                    conversation,
                    vec![(seq, values)],
                    Some(closing),
                    hint,
                    timestamp,
                )
                .await?;
            }
            self.write_sequence(conversation, plain, hint, timestamp)
                .await
        })
        .await?;
        match announcement {
            Some(announcement) => self.keep_announcement(announcement).await,
            None => Ok(()),
        }
    }
}
