//! What writing messages and writing update logs share. Both are gap-free
//! sequences in buckets of 1024 positions (a conversation's seqs, a user's
//! cursors), numbered by the one process that holds their partition's
//! lease, and the store writes what it is given: no read and no LWT. Per
//! sequence, in position order, one unlogged batch per partition (bucket)
//! of at most [`MAX_BATCH`] statements, each with the write's version as
//! its timestamp; up to [`FAN_OUT`] sequences at once; then, if the write
//! entered a new bucket, the sequence's head hint. SCHEMA.md has the why.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::hash::Hash;

use futures::{StreamExt, TryStreamExt, stream};
use natter_store::Result;
use scylla::serialize::SerializationError;
use scylla::serialize::row::{RowSerializationContext, SerializeRow};
use scylla::serialize::writers::RowWriter;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use crate::CqlStore;
use crate::conversations::FAN_OUT;
use crate::layout::{BUCKET_SPAN, bucket_of, to_bigint};

/// Statements in one batch at most. A batch of one partition is one
/// mutation, which Cassandra and ScyllaDB exempt from their batch size
/// thresholds, so this is what bounds a request: 64 messages of at most
/// 64 KiB content, about 4 MiB (a log entry is at most a message event).
const MAX_BATCH: usize = 64;

/// The timestamp of a write's batches: its version, which the write's
/// validation has checked fits.
pub(crate) fn timestamp(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

/// Groups `rows` by the sequence they belong to and writes each group
/// with `write`, up to [`FAN_OUT`] at once.
pub(crate) async fn each_sequence<K, R, F, Fut>(
    rows: impl IntoIterator<Item = (K, R)>,
    mut write: F,
) -> Result<()>
where
    K: Eq + Hash,
    F: FnMut(K, Vec<R>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut sequences: HashMap<K, Vec<R>> = HashMap::new();
    for (key, row) in rows {
        sequences.entry(key).or_default().push(row);
    }
    let writes: Vec<Fut> = sequences
        .into_iter()
        .map(|(key, rows)| write(key, rows))
        .collect();
    stream::iter(writes)
        .buffer_unordered(FAN_OUT)
        .try_collect()
        .await
}

/// Where one sequence is written.
#[derive(Clone, Copy)]
pub(crate) struct Sequence<'a> {
    /// Names it in logs: a conversation id, a user id.
    pub(crate) name: &'a (dyn Display + Sync),
    /// What a failed batch is reported as ("write messages").
    pub(crate) what: &'static str,
    /// Inserts one row; run only in batches.
    pub(crate) insert: &'a PreparedStatement,
    /// Sets the head hint.
    pub(crate) set_hint: &'a PreparedStatement,
}

/// A statement that must land with a sequence's last row, and its values:
/// the row and it go in one logged batch, so both land or neither does.
pub(crate) type Closing<'a, C> = (&'a PreparedStatement, C);

impl CqlStore {
    /// Writes one sequence's `rows`, each its position and its values for
    /// the insert, in position order, batch after batch, so a failure
    /// leaves a prefix of them stored; then, if they reached a new bucket,
    /// the head hint, with the values `hint` gives for the head.
    pub(crate) async fn write_sequence<V, H>(
        &self,
        sequence: Sequence<'_>,
        rows: Vec<(u64, V)>,
        hint: impl FnOnce(i64) -> H,
        timestamp: i64,
    ) -> Result<()>
    where
        V: SerializeRow,
        H: SerializeRow,
    {
        self.write_sequence_closed(sequence, rows, None::<Closing<'_, ()>>, hint, timestamp)
            .await
    }

    /// [`write_sequence`](Self::write_sequence), with `closing` in the
    /// last row's batch, which is then logged: a logged batch lands whole
    /// even though it spans partitions.
    pub(crate) async fn write_sequence_closed<V, C, H>(
        &self,
        sequence: Sequence<'_>,
        mut rows: Vec<(u64, V)>,
        closing: Option<Closing<'_, C>>,
        hint: impl FnOnce(i64) -> H,
        timestamp: i64,
    ) -> Result<()>
    where
        V: SerializeRow,
        C: SerializeRow,
        H: SerializeRow,
    {
        rows.sort_by_key(|(position, _)| *position);
        let (Some((first, _)), Some((last, _))) = (rows.first(), rows.last()) else {
            return Ok(());
        };
        let (first, last) = (*first, *last);
        let db = self.db();
        let same_bucket = |(a, _): &(u64, V), (b, _): &(u64, V)| bucket_of(*a) == bucket_of(*b);
        let mut closing = closing;
        for partition in rows.chunk_by(same_bucket) {
            for part in partition.chunks(MAX_BATCH) {
                let closes = part.last().is_some_and(|(p, _)| *p == last);
                let closing = closing.take_if(|_| closes);
                let kind = match closing {
                    Some(_) => BatchType::Logged,
                    None => BatchType::Unlogged,
                };
                let mut batch = Batch::new(kind);
                // Every statement's timestamp: of two writes of one
                // position, the higher version stands whatever order they
                // land in. The same write again changes nothing, so a
                // retry is safe.
                batch.set_timestamp(Some(timestamp));
                batch.set_is_idempotent(true);
                let mut values = Vec::with_capacity(part.len() + 1);
                for (_, row) in part {
                    batch.append_statement(sequence.insert.clone());
                    values.push(Either::Left(row));
                }
                if let Some((statement, row)) = &closing {
                    batch.append_statement((*statement).clone());
                    values.push(Either::Right(row));
                }
                db.batch(sequence.what, &batch, values).await?;
            }
        }
        // Readers find the head by probing from the hint, one read per
        // bucket, so it need only move when a bucket begins: written once
        // per 1024 positions, after them, so it is never ahead of them.
        if bucket_of(last) > bucket_of(first) || first.is_multiple_of(BUCKET_SPAN) {
            let written = db
                .write(
                    "advance head hint",
                    sequence.set_hint,
                    hint(to_bigint(last)),
                )
                .await;
            // The rows are stored: failing the write now would have them
            // sent again. A stale hint costs readers a read a bucket.
            if let Err(e) = written {
                tracing::warn!(error = %e, write = sequence.what, sequence = %sequence.name, head = last, "rows stored; head hint not advanced");
            }
        }
        Ok(())
    }
}

/// A row of a batch that mixes two statements' values.
pub(crate) enum Either<L, R> {
    Left(L),
    Right(R),
}

impl<L: SerializeRow, R: SerializeRow> SerializeRow for Either<L, R> {
    fn serialize(
        &self,
        ctx: &RowSerializationContext<'_>,
        writer: &mut RowWriter,
    ) -> std::result::Result<(), SerializationError> {
        match self {
            Either::Left(row) => row.serialize(ctx, writer),
            Either::Right(row) => row.serialize(ctx, writer),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Either::Left(row) => row.is_empty(),
            Either::Right(row) => row.is_empty(),
        }
    }
}
