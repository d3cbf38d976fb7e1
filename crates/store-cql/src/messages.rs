//! Writing the messages the storage service's sequencer numbered: per
//! conversation, in seq order, one unlogged batch per `messages` partition
//! (a bucket), each with the write's version as its timestamp, then the
//! write's announcement, if it has one. No read and no LWT: the lease
//! makes one process the only writer of a partition of conversations, and
//! versions fence a deposed one. SCHEMA.md has the why; `sequences.rs` the
//! part update logs share.

use natter_core::{Message, TenantId};
use natter_proto::codec::encode_content;
use natter_store::{Announcement, Result, validate_write};
use scylla::value::CqlTimestamp;

use crate::CqlStore;
use crate::layout::{bucket_of, to_bigint};
use crate::sequences::{Sequence, each_sequence, timestamp};

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
            ((tenant, message.conversation_id), (seq, values))
        });
        each_sequence(rows, |(tenant, id), rows| async move {
            let conversation = Sequence {
                name: &id,
                what: "write messages",
                insert: &self.statements.message_write,
                set_hint: &self.statements.conversation_set_hint,
            };
            let hint = |head| (head, tenant.as_str(), id.as_uuid());
            self.write_sequence(conversation, rows, hint, timestamp)
                .await
        })
        .await?;
        match announcement {
            Some(announcement) => self.keep_announcement(announcement).await,
            None => Ok(()),
        }
    }
}
