//! A tenant's event log: the business events (`natter.v1.TenantEvent`)
//! webhooks deliver and `Subscribe` streams, numbered by the holder from
//! EVENTS and kept in the `DeskStore` by seq. Only tenants with a webhook
//! keep one, so a tenant that does not use them pays nothing per message.
//!
//! EVENTS delivers at least once, in order per conversation: a message is
//! logged unless its conversation's log already holds it or a later one,
//! which the log remembers for the conversations it has seen, and reads
//! back from its tail when it loads.

use std::collections::HashMap;

use natter_core::{ConversationId, TenantId, Timestamp};
use natter_proto::convert::{parse_id, timestamp_to_wire};
use natter_proto::v1::{self, tenant_event::Data};
use natter_store::{DeskKind, DeskRecord, DeskStore, DeskWrite, PageRequest, StoreError};
use prost::Message as _;

/// How far back from its head a loading log looks for what it holds.
const TAIL: u64 = 1000;
const HEAD_ID: &str = "head";

pub(crate) const MESSAGE_CREATED: &str = "message.created";
pub(crate) const CONVERSATION_UPDATED: &str = "conversation.updated";
pub(crate) const LEAD_CAPTURED: &str = "lead.captured";
pub(crate) const PAYMENT_UPDATED: &str = "payment.updated";

/// What a message brought about besides itself, logged right after it.
#[derive(Debug, Clone)]
pub(crate) enum Also {
    /// A lead form's answers landed on this contact.
    Lead(v1::Contact),
    /// A payment was requested or settled: as it stands after.
    Payment(v1::Payment),
}

/// The id of the record of event `seq`: sorts as the number does.
pub(crate) fn record_id(seq: u64) -> String {
    format!("{seq:020}")
}

/// Where a Subscribe or a webhook is told the log grew:
/// `desk.logged.<tenant>` (core, no payload).
pub(crate) fn logged_subject(tenant: &TenantId) -> String {
    format!(
        "desk.logged.{}",
        natter_contract::subjects::token(tenant.as_str())
    )
}

#[derive(Debug, Default)]
pub(crate) struct EventLog {
    head: u64,
    /// The newest message seq logged, per conversation seen.
    logged: HashMap<ConversationId, u64>,
}

impl EventLog {
    pub(crate) async fn load(store: &dyn DeskStore, tenant: &TenantId) -> Result<Self, StoreError> {
        let mut head = store
            .desk_record(tenant, DeskKind::EventHead, HEAD_ID)
            .await?
            .and_then(|r| r.body.try_into().ok())
            .map_or(0, u64::from_be_bytes);
        // The head is written after its events; a crash between leaves it
        // behind them.
        loop {
            let ahead = read(store, tenant, head, 100).await?;
            match ahead.last() {
                Some(last) => head = last.seq,
                None => break,
            }
        }
        let mut log = EventLog {
            head,
            logged: HashMap::new(),
        };
        let mut after = head.saturating_sub(TAIL);
        loop {
            let tail = read(store, tenant, after, 500).await?;
            let Some(last) = tail.last() else { break };
            after = last.seq;
            for event in &tail {
                if let (Ok(conversation), Some(Data::Message(m))) = (
                    parse_id("conversation_id", &event.conversation_id),
                    &event.data,
                ) {
                    log.saw(conversation, m.seq);
                }
            }
        }
        Ok(log)
    }

    fn saw(&mut self, conversation: ConversationId, seq: u64) {
        let newest = self.logged.entry(conversation).or_insert(0);
        *newest = (*newest).max(seq);
    }

    /// Whether `message` is not in the log yet.
    pub(crate) fn is_new(&self, message: &v1::Message) -> bool {
        parse_id::<ConversationId>("conversation_id", &message.conversation_id)
            .is_ok_and(|c| self.logged.get(&c).is_none_or(|seq| message.seq > *seq))
    }

    /// Logs `message` (and what it brought about, if anything), adding
    /// the writes to `writes`; the head is the caller's to write last
    /// ([`EventLog::head_write`]).
    pub(crate) fn append(
        &mut self,
        message: &v1::Message,
        also: Option<Also>,
        now: Timestamp,
        writes: &mut Vec<DeskWrite>,
    ) {
        let Ok(conversation) = parse_id("conversation_id", &message.conversation_id) else {
            return;
        };
        let activity = matches!(
            message.content.as_ref().and_then(|c| c.kind.as_ref()),
            Some(v1::message_content::Kind::Activity(_))
        );
        let id = format!("{}:{}", message.conversation_id, message.seq);
        let mut events = vec![(
            if activity {
                CONVERSATION_UPDATED
            } else {
                MESSAGE_CREATED
            },
            id.clone(),
            Data::Message(message.clone()),
        )];
        match also {
            Some(Also::Lead(contact)) => {
                events.push((LEAD_CAPTURED, format!("{id}:lead"), Data::Contact(contact)));
            }
            Some(Also::Payment(payment)) => {
                events.push((
                    PAYMENT_UPDATED,
                    format!("{id}:payment"),
                    Data::Payment(payment),
                ));
            }
            None => {}
        }
        for (kind, event_id, data) in events {
            self.head += 1;
            let event = v1::TenantEvent {
                seq: self.head,
                event_id,
                r#type: kind.to_owned(),
                occurred_at: Some(timestamp_to_wire(now)),
                conversation_id: message.conversation_id.clone(),
                data: Some(data),
            };
            writes.push(DeskWrite::Put {
                kind: DeskKind::Event,
                id: record_id(self.head),
                body: event.encode_to_vec(),
            });
        }
        self.saw(conversation, message.seq);
    }

    /// The seq the next event will have.
    pub(crate) fn next_seq(&self) -> u64 {
        self.head + 1
    }

    pub(crate) fn head_write(&self) -> DeskWrite {
        DeskWrite::Put {
            kind: DeskKind::EventHead,
            id: HEAD_ID.to_owned(),
            body: self.head.to_be_bytes().to_vec(),
        }
    }
}

/// Up to `limit` events after `after`, in order.
pub(crate) async fn read(
    store: &dyn DeskStore,
    tenant: &TenantId,
    after: u64,
    limit: u32,
) -> Result<Vec<v1::TenantEvent>, StoreError> {
    let page = store
        .desk_records(
            tenant,
            DeskKind::Event,
            PageRequest {
                after: Some(record_id(after)),
                size: limit,
            },
        )
        .await?;
    Ok(page.items.iter().filter_map(decode).collect())
}

fn decode(record: &DeskRecord) -> Option<v1::TenantEvent> {
    v1::TenantEvent::decode(record.body.as_slice())
        .inspect_err(|e| tracing::error!(id = record.id, error = %e, "unreadable event skipped"))
        .ok()
}

/// Whether an event of `kind` is among `types` (empty: all).
pub(crate) fn wanted(types: &[String], kind: &str) -> bool {
    types.is_empty() || types.iter().any(|t| t == kind)
}
