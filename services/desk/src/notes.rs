//! Internal notes: what the business's people write on a conversation for
//! each other. Notes are the desk's records, kept by conversation, never
//! messages: they take no seq, so no read, watch or sync path of a
//! customer's device can carry one.

use natter_core::{
    ConversationId, Invalid, NoteId, Page, PageRequest, TenantId, Timestamp, UserId,
};
use natter_proto::convert::timestamp_to_wire;
use natter_proto::v1;
use natter_store::{DeskKind, DeskStore, DeskWrite, StoreError};
use prost::Message as _;

use crate::records;

/// The most a note may say.
const MAX_NOTE_BYTES: usize = 4096;

/// A new note by `author`, and the write that keeps it.
pub(crate) fn write(
    conversation: ConversationId,
    author: &UserId,
    text: &str,
    now: Timestamp,
) -> Result<(v1::Note, DeskWrite), Invalid> {
    let text = text.trim();
    if text.is_empty() || text.len() > MAX_NOTE_BYTES {
        return Err(Invalid::new(
            "text",
            format!("must be 1 to {MAX_NOTE_BYTES} bytes and not blank"),
        ));
    }
    let id = NoteId::generate();
    let note = v1::Note {
        note_id: id.to_string(),
        conversation_id: conversation.to_string(),
        author_id: author.to_string(),
        text: text.to_owned(),
        created_at: Some(timestamp_to_wire(now)),
    };
    let write = DeskWrite::Put {
        kind: DeskKind::Note,
        id: record_id(conversation, id),
        body: note.encode_to_vec(),
    };
    Ok((note, write))
}

/// A page of the conversation's notes, oldest first.
pub(crate) async fn page(
    store: &dyn DeskStore,
    tenant: &TenantId,
    conversation: ConversationId,
    page: PageRequest<NoteId>,
) -> Result<Page<v1::Note, NoteId>, StoreError> {
    records::conversation_page(
        store,
        tenant,
        DeskKind::Note,
        conversation,
        page,
        |id, body| {
            v1::Note::decode(body).map_err(|e| StoreError::Corrupt(format!("note {id}: {e}")))
        },
    )
    .await
}

fn record_id(conversation: ConversationId, note: NoteId) -> String {
    records::by_conversation(conversation, note)
}
