//! The append protocol: gap-free seqs under concurrent writers, and one
//! stored message per idempotency key under retries and crashes. SCHEMA.md
//! walks through it step by step; the step numbers below refer to it.

use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use natter_core::{ConversationId, Message, MessageId, NewMessage, TenantId};
use natter_proto::codec::encode_content;
use natter_store::{Appended, Result, StoreError};
use scylla::value::CqlTimestamp;
use uuid::Uuid;

use crate::conversations::{MessageColumns, decode_message, position};
use crate::db::{corrupt, driver_error};
use crate::layout::{bucket_last, bucket_of, to_bigint};
use crate::{CqlStore, now_millis};

/// Seqs one append tries before reporting the conversation busy.
const MAX_SEQ_ATTEMPTS: u32 = 64;

/// Times the key is claimed afresh after it vanished or changed hands.
const MAX_CLAIM_ROUNDS: u32 = 4;

/// Rows per page when looking for an unsequenced message.
const SCAN_PAGE: i32 = 256;

/// The idempotency key of a send: tenant, conversation, sender and the
/// client's message id.
struct Key<'a> {
    tenant: &'a TenantId,
    conversation: ConversationId,
    sender: &'a str,
    client_id: &'a str,
}

impl Key<'_> {
    fn values(&self) -> (&str, Uuid, &str, &str) {
        (
            self.tenant.as_str(),
            self.conversation.as_uuid(),
            self.sender,
            self.client_id,
        )
    }
}

/// A `message_keys` row as another attempt left it.
#[derive(Debug)]
struct KeyRow {
    message_id: Option<Uuid>,
    seq: Option<i64>,
    base_seq: Option<i64>,
    claim_id: Option<Uuid>,
    claimed_at: Option<CqlTimestamp>,
}

/// This attempt's hold on the key.
struct Claim {
    id: Uuid,
    since: Instant,
}

enum Claimed {
    Ours,
    Held(KeyRow),
    Vacant,
}

enum Insert {
    Stored,
    Taken,
    /// Failed, and a linearizable read found the seq still free.
    Absent(StoreError),
}

enum Settled {
    Duplicate(Box<Message>),
    TakenOver,
    Changed,
}

impl CqlStore {
    pub(crate) async fn append(&self, tenant: &TenantId, new: NewMessage) -> Result<Appended> {
        new.validate(&self.limits)?;
        let row = self.conversation_row(tenant, new.conversation_id).await?;
        let key = Key {
            tenant,
            conversation: new.conversation_id,
            sender: new.sender_id.as_str(),
            client_id: new.client_message_id.as_str(),
        };
        let mut head = self
            .message_head(tenant, new.conversation_id, row.last_seq_hint)
            .await?;
        let mut claim = Claim {
            id: Uuid::now_v7(),
            since: Instant::now(),
        };
        // (1) Claim the key, or settle what an earlier attempt left.
        let mut rounds = 0;
        loop {
            let existing = match self.claim(&key, &claim, new.id, head).await? {
                Claimed::Ours => break,
                Claimed::Held(existing) => existing,
                Claimed::Vacant => {
                    rounds += 1;
                    too_many_rounds(&key, rounds)?;
                    continue;
                }
            };
            match self
                .settle(&key, existing, &mut claim, new.id, &mut head)
                .await?
            {
                Settled::Duplicate(message) => {
                    return Ok(Appended {
                        message: *message,
                        duplicate: true,
                    });
                }
                Settled::TakenOver => break,
                Settled::Changed => {
                    rounds += 1;
                    too_many_rounds(&key, rounds)?;
                }
            }
        }
        // (2) and (3): the next free seq.
        let seq = self.sequence(&key, &claim, &new, head).await?;
        // (4) and (5): a failure here loses nothing. A retry finds the
        // message by scanning; readers find the head by probing.
        let db = self.db();
        let (key_set, hint_set) = futures::join!(
            db.write(
                "record message seq",
                &self.statements.key_set_seq,
                (
                    to_bigint(seq),
                    tenant.as_str(),
                    key.conversation.as_uuid(),
                    key.sender,
                    key.client_id
                ),
            ),
            db.write(
                "advance last_seq hint",
                &self.statements.conversation_set_hint,
                (to_bigint(seq), tenant.as_str(), key.conversation.as_uuid()),
            ),
        );
        for result in [key_set, hint_set] {
            if let Err(e) = result {
                tracing::warn!(error = %e, conversation = %key.conversation, seq, "message stored; bookkeeping write failed");
            }
        }
        Ok(Appended {
            message: new.at(natter_core::Seq::new(seq)),
            duplicate: false,
        })
    }

    /// (1) `INSERT ... IF NOT EXISTS` on the key. An LWT that fails has an
    /// unknown outcome; a linearizable read of the row settles it.
    async fn claim(
        &self,
        key: &Key<'_>,
        claim: &Claim,
        message_id: MessageId,
        head: u64,
    ) -> Result<Claimed> {
        let (tenant, conversation, sender, client_id) = key.values();
        let attempt = self
            .db()
            .try_lwt(
                &self.statements.key_claim,
                (
                    tenant,
                    conversation,
                    sender,
                    client_id,
                    message_id.as_uuid(),
                    to_bigint(head),
                    claim.id,
                    CqlTimestamp(now_millis()),
                ),
            )
            .await;
        match attempt {
            Ok(outcome) => {
                if outcome?.applied {
                    return Ok(Claimed::Ours);
                }
            }
            Err(e) => tracing::warn!(error = %e, "claim of idempotency key has an unknown outcome"),
        }
        Ok(match self.read_key(key).await? {
            Some(row) if row.claim_id == Some(claim.id) => Claimed::Ours,
            Some(row) => Claimed::Held(row),
            None => Claimed::Vacant,
        })
    }

    async fn read_key(&self, key: &Key<'_>) -> Result<Option<KeyRow>> {
        type Row = (
            Option<Uuid>,
            Option<i64>,
            Option<i64>,
            Option<Uuid>,
            Option<CqlTimestamp>,
        );
        let row: Option<Row> = self
            .db()
            .row(
                "read idempotency key",
                &self.statements.key_get_serial,
                key.values(),
            )
            .await?;
        Ok(
            row.map(|(message_id, seq, base_seq, claim_id, claimed_at)| KeyRow {
                message_id,
                seq,
                base_seq,
                claim_id,
                claimed_at,
            }),
        )
    }

    /// What to do about a key another attempt holds: answer with its
    /// message, wait for it, or take the key over once its lease is out.
    async fn settle(
        &self,
        key: &Key<'_>,
        existing: KeyRow,
        claim: &mut Claim,
        message_id: MessageId,
        head: &mut u64,
    ) -> Result<Settled> {
        let (tenant, conversation) = (key.tenant, key.conversation);
        if let Some(seq) = existing.seq {
            let seq = position("message_keys seq", seq)?;
            return self
                .stored_message(tenant, conversation, seq)
                .await?
                .map(|message| Settled::Duplicate(Box::new(message)))
                .ok_or_else(|| {
                    corrupt(
                        &format!("message {seq} of {conversation}"),
                        "its idempotency key points at it, but it is missing",
                    )
                });
        }
        let age = now_millis() - existing.claimed_at.map_or(0, |t| t.0);
        let lease = i64::try_from(self.send_lease.as_millis()).unwrap_or(i64::MAX);
        let abandoned = age >= lease;
        // Sequenced but not recorded (a crash between (3) and (4))? Before
        // a take-over the scan must be linearizable; while the attempt may
        // be alive, a quorum read will do and spares its inserts the Paxos
        // contention.
        if let Some(earlier) = existing.message_id {
            let base = position("message_keys base_seq", existing.base_seq.unwrap_or(0))?;
            if let Some(seq) = self
                .find_message(tenant, conversation, earlier, base, abandoned)
                .await?
            {
                let (tenant_id, conversation_uuid, sender, client_id) = key.values();
                self.db()
                    .write(
                        "record message seq",
                        &self.statements.key_set_seq,
                        (
                            to_bigint(seq),
                            tenant_id,
                            conversation_uuid,
                            sender,
                            client_id,
                        ),
                    )
                    .await?;
                if let Some(message) = self.stored_message(tenant, conversation, seq).await? {
                    return Ok(Settled::Duplicate(Box::new(message)));
                }
            }
        }
        if !abandoned {
            return Err(StoreError::Unavailable(format!(
                "an earlier send of {} by {} to {conversation} is in progress; retry",
                key.client_id, key.sender
            )));
        }
        // The earlier attempt is dead: it stored nothing (the scan above
        // was linearizable) and, past its lease, it stores nothing more.
        tracing::warn!(
            %conversation,
            client_message_id = key.client_id,
            age_ms = age,
            "taking over an abandoned send"
        );
        *head = self.message_head(tenant, conversation, *head).await?;
        *claim = Claim {
            id: Uuid::now_v7(),
            since: Instant::now(),
        };
        let (tenant_id, conversation_uuid, sender, client_id) = key.values();
        let attempt = self
            .db()
            .try_lwt(
                &self.statements.key_take_over,
                (
                    message_id.as_uuid(),
                    to_bigint(*head),
                    claim.id,
                    CqlTimestamp(now_millis()),
                    tenant_id,
                    conversation_uuid,
                    sender,
                    client_id,
                    existing.claim_id,
                ),
            )
            .await;
        match attempt {
            Ok(outcome) => {
                return Ok(if outcome?.applied {
                    Settled::TakenOver
                } else {
                    Settled::Changed
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "take-over of idempotency key has an unknown outcome")
            }
        }
        Ok(match self.read_key(key).await? {
            Some(row) if row.claim_id == Some(claim.id) => Settled::TakenOver,
            _ => Settled::Changed,
        })
    }

    /// The first seq after `base` holding `message_id`, page by page up to
    /// the head. `linearizable` reads also finish any insert left half-done,
    /// so what they do not find cannot appear later.
    async fn find_message(
        &self,
        tenant: &TenantId,
        conversation: ConversationId,
        message_id: Uuid,
        base: u64,
        linearizable: bool,
    ) -> Result<Option<u64>> {
        let statement = if linearizable {
            &self.statements.message_ids_after_serial
        } else {
            &self.statements.message_ids_after
        };
        let mut after = base;
        loop {
            let bucket = bucket_of(after.saturating_add(1));
            let rows: Vec<(i64, Option<Uuid>)> = self
                .db()
                .rows(
                    "scan for unsequenced message",
                    statement,
                    (
                        tenant.as_str(),
                        conversation.as_uuid(),
                        bucket,
                        to_bigint(after),
                        SCAN_PAGE,
                    ),
                )
                .await?;
            let got = rows.len();
            for (seq, id) in rows {
                let seq = position("message seq", seq)?;
                if id == Some(message_id) {
                    return Ok(Some(seq));
                }
                after = seq;
            }
            if got < SCAN_PAGE as usize && after != bucket_last(bucket) {
                return Ok(None);
            }
        }
    }

    async fn stored_message(
        &self,
        tenant: &TenantId,
        conversation: ConversationId,
        seq: u64,
    ) -> Result<Option<Message>> {
        let row: Option<MessageColumns> = self
            .db()
            .row(
                "read message",
                &self.statements.message_get,
                (
                    tenant.as_str(),
                    conversation.as_uuid(),
                    bucket_of(seq),
                    to_bigint(seq),
                ),
            )
            .await?;
        row.map(|row| decode_message(conversation, row)).transpose()
    }

    /// (2) and (3): `INSERT ... IF NOT EXISTS` at head + 1; on losing the
    /// seq to another writer, find the new head and try the next one.
    async fn sequence(
        &self,
        key: &Key<'_>,
        claim: &Claim,
        new: &NewMessage,
        head: u64,
    ) -> Result<u64> {
        let (tenant, conversation) = (key.tenant, key.conversation);
        let content = encode_content(&new.content);
        let mut seq = head + 1;
        let mut attempts = 0;
        loop {
            // Past this point a retry may take the key over; stop first.
            if claim.since.elapsed() + self.request_timeout >= self.send_lease {
                self.release(key, claim).await;
                return Err(StoreError::Unavailable(format!(
                    "send of {} to {conversation} outlived its lease; retry",
                    key.client_id
                )));
            }
            let attempt = self
                .db()
                .try_lwt(
                    &self.statements.message_insert,
                    (
                        tenant.as_str(),
                        conversation.as_uuid(),
                        bucket_of(seq),
                        to_bigint(seq),
                        new.id.as_uuid(),
                        key.sender,
                        key.client_id,
                        CqlTimestamp(new.sent_at.as_millis()),
                        content.as_slice(),
                    ),
                )
                .await;
            attempts += 1;
            let outcome = match attempt {
                Ok(outcome) => {
                    if outcome?.applied {
                        Insert::Stored
                    } else {
                        Insert::Taken
                    }
                }
                Err(e) => {
                    // Unknown outcome: settle it at this seq before moving
                    // on, so the message cannot land at two seqs. A read
                    // that fails leaves it unknown: keep the claim, and a
                    // retry settles it.
                    tracing::warn!(error = %e, %conversation, seq, "message insert has an unknown outcome");
                    match self.message_id_at(tenant, conversation, seq).await? {
                        Some(id) if id == new.id.as_uuid() => Insert::Stored,
                        Some(_) => Insert::Taken,
                        None => Insert::Absent(driver_error("insert message", e)),
                    }
                }
            };
            if let Insert::Stored = outcome {
                return Ok(seq);
            }
            if attempts >= MAX_SEQ_ATTEMPTS {
                // Every attempt is settled: nothing of ours is stored.
                self.release(key, claim).await;
                return Err(match outcome {
                    Insert::Absent(e) => e,
                    _ => StoreError::Unavailable(format!(
                        "conversation {conversation} is too busy to sequence a message; retry"
                    )),
                });
            }
            tokio::time::sleep(backoff(attempts)).await;
            if let Insert::Taken = outcome {
                seq = self.message_head(tenant, conversation, seq).await? + 1;
            }
        }
    }

    /// The id of the message at `seq`, read linearizably.
    async fn message_id_at(
        &self,
        tenant: &TenantId,
        conversation: ConversationId,
        seq: u64,
    ) -> Result<Option<Uuid>> {
        let row: Option<MessageColumns> = self
            .db()
            .row(
                "read message",
                &self.statements.message_get_serial,
                (
                    tenant.as_str(),
                    conversation.as_uuid(),
                    bucket_of(seq),
                    to_bigint(seq),
                ),
            )
            .await?;
        Ok(row.and_then(|(_, id, ..)| id))
    }

    /// Gives the key back after an attempt that certainly stored nothing,
    /// so a retry need not wait out the lease.
    async fn release(&self, key: &Key<'_>, claim: &Claim) {
        let (tenant, conversation, sender, client_id) = key.values();
        let released = self
            .db()
            .lwt(
                "release idempotency key",
                &self.statements.key_release,
                (tenant, conversation, sender, client_id, claim.id),
            )
            .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "idempotency key not released; its lease runs out instead");
        }
    }
}

fn too_many_rounds(key: &Key<'_>, rounds: u32) -> Result<()> {
    if rounds >= MAX_CLAIM_ROUNDS {
        return Err(StoreError::Unavailable(format!(
            "idempotency key {} of {} in conversation {} keeps changing hands; retry",
            key.client_id, key.sender, key.conversation
        )));
    }
    Ok(())
}

/// A short random pause that grows with the attempts: 1 ms up to 2^n ms,
/// at most 50 ms, so contending writers spread out.
fn backoff(attempt: u32) -> Duration {
    let ceiling = 1u64 << attempt.min(6);
    let random = RandomState::new().hash_one(Instant::now());
    Duration::from_millis(1 + random % ceiling.min(50))
}
