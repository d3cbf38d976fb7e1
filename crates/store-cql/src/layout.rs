//! Where rows live: the pure functions that turn domain keys into partition
//! keys. No I/O here, so the arithmetic the schema depends on is tested on
//! its own.

use std::future::Future;

use uuid::Uuid;

/// Messages per `messages` partition and updates per `user_logs` partition.
/// Seq and cursor are gap-free counters, so a bucket of either holds at
/// most this many rows however hot the conversation or user.
pub(crate) const BUCKET_SPAN: u64 = 1024;

/// Partitions of one conversation's member list.
pub(crate) const MEMBER_SHARDS: i32 = 16;

/// The `user_conversations` bucket of conversations whose id carries no
/// timestamp (not UUIDv7). Listed after every dated bucket.
pub(crate) const UNDATED_BUCKET: i32 = 0;

/// The bucket of a seq or cursor.
pub(crate) fn bucket_of(position: u64) -> i64 {
    // BUCKET_SPAN > 1, so the quotient always fits.
    (position / BUCKET_SPAN) as i64
}

/// The last position a bucket can hold.
pub(crate) fn bucket_last(bucket: i64) -> u64 {
    bucket.unsigned_abs() * BUCKET_SPAN + (BUCKET_SPAN - 1)
}

/// The member shard of a user: FNV-1a of the id's bytes, a hash fixed by
/// its definition (unlike std's hashers) because rows are found by it.
pub(crate) fn member_shard(user_id: &str) -> i32 {
    let hash = fnv1a(user_id.as_bytes());
    // The remainder is below MEMBER_SHARDS, so it fits.
    (hash % MEMBER_SHARDS.unsigned_abs() as u64) as i32
}

/// The `user_conversations` bucket of a conversation: the hour (since the
/// Unix epoch, UTC) its UUIDv7 id was minted. Derived from the id alone, so
/// a page token that is just a conversation id still locates its bucket.
/// An hour keeps even a bot that joins every conversation of a busy tenant
/// to tens of thousands of rows per partition; listing skips empty hours
/// through `user_conversation_buckets`.
pub(crate) fn conversation_bucket(id: Uuid) -> i32 {
    if id.get_version_num() != 7 {
        return UNDATED_BUCKET;
    }
    // The top 48 bits of a UUIDv7 are Unix milliseconds; 2^48 ms is about
    // 78 million hours, well inside i32.
    let millis = (id.as_u128() >> 80) as u64;
    (millis / 3_600_000) as i32
}

/// FNV-1a, 64 bits: a hash fixed by its definition, for values that are
/// stored or recomputed later.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A service's partition as the `int` it is keyed by (in `leases` and
/// `announcements`): the same 32 bits, so numbers past `i32::MAX` are
/// stored as negative ints and every `u32` has a row of its own.
pub(crate) fn partition_key(partition: u32) -> i32 {
    i32::from_be_bytes(partition.to_be_bytes())
}

/// A seq or cursor as CQL `bigint`. Positions beyond `i64::MAX` cannot be
/// stored, so as query bounds they mean "everything".
pub(crate) fn to_bigint(position: u64) -> i64 {
    i64::try_from(position).unwrap_or(i64::MAX)
}

/// How far below its starting point [`find_head`] looks for the head. The
/// start is at most one bucket ahead of the head (see SCHEMA.md); more
/// means the data is not what the schema promises.
const MAX_BUCKETS_BELOW_START: u32 = 2;

/// The exact head (highest position) of a gap-free bucketed sequence,
/// probing from `start`, a position at most one bucket past the head and
/// usually at or below it. `last_in(bucket)` reads a bucket's highest
/// position (`ORDER BY ... DESC LIMIT 1`). Because positions are gap-free,
/// a bucket below the head is full, so the head is the last position of
/// the first bucket at or after `start` that is not full, or the last
/// position of the bucket before an empty one. `None` if the buckets near
/// `start` break that promise.
pub(crate) async fn find_head<F, Fut, E>(start: u64, mut last_in: F) -> Result<Option<u64>, E>
where
    F: FnMut(i64) -> Fut,
    Fut: Future<Output = Result<Option<u64>, E>>,
{
    let mut bucket = bucket_of(start);
    let mut full_below = None;
    loop {
        match last_in(bucket).await? {
            Some(last) if last == bucket_last(bucket) => {
                full_below = Some(last);
                bucket += 1;
            }
            Some(last) => return Ok(Some(last)),
            None => match full_below {
                Some(last) => return Ok(Some(last)),
                None => break,
            },
        }
    }
    // The start's bucket is empty: the start was ahead of the head.
    for _ in 0..MAX_BUCKETS_BELOW_START {
        if bucket == 0 {
            return Ok(Some(0));
        }
        bucket -= 1;
        if let Some(last) = last_in(bucket).await? {
            return Ok(Some(last));
        }
    }
    Ok((bucket == 0).then_some(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_split_at_multiples_of_the_span() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1023), 0);
        assert_eq!(bucket_of(1024), 1);
        assert_eq!(bucket_of(1025), 1);
        assert_eq!(bucket_last(0), 1023);
        assert_eq!(bucket_last(1), 2047);
        assert_eq!(bucket_of(bucket_last(7)), 7);
        assert_eq!(bucket_of(bucket_last(7) + 1), 8);
    }

    #[test]
    fn member_shards_are_stable_and_spread() {
        // Pinned values: changing the hash would orphan every member row.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(member_shard("alice"), member_shard("alice"));
        let mut used = [0u32; MEMBER_SHARDS as usize];
        for i in 0..1_600 {
            used[member_shard(&format!("user-{i}")) as usize] += 1;
        }
        assert!(used.iter().all(|&n| (50..=150).contains(&n)), "{used:?}");
    }

    #[test]
    fn conversation_buckets_are_the_hour_of_the_id() {
        let at = |millis: u64| {
            let mut bytes = [0u8; 16];
            bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
            bytes[6] = 0x70; // version 7
            bytes[8] = 0x80; // RFC 9562 variant
            Uuid::from_bytes(bytes)
        };
        assert_eq!(conversation_bucket(at(0)), 0);
        assert_eq!(conversation_bucket(at(3_599_999)), 0);
        assert_eq!(conversation_bucket(at(3_600_000)), 1);
        // 2026-01-01T00:00:00Z is hour 492,264.
        assert_eq!(conversation_bucket(at(1_767_225_600_000)), 490_896);
        assert_eq!(conversation_bucket(at((1 << 48) - 1)), 78_187_493);
        assert_eq!(
            conversation_bucket(Uuid::from_u128(1 << 76)),
            UNDATED_BUCKET
        );
        assert!(conversation_bucket(Uuid::now_v7()) > 490_896);
    }

    #[test]
    fn every_partition_has_an_int_of_its_own() {
        assert_eq!(partition_key(0), 0);
        assert_eq!(partition_key(i32::MAX as u32), i32::MAX);
        assert_eq!(partition_key(i32::MAX as u32 + 1), i32::MIN);
        assert_eq!(partition_key(u32::MAX), -1);
    }

    #[test]
    fn positions_beyond_bigint_saturate() {
        assert_eq!(to_bigint(5), 5);
        assert_eq!(to_bigint(u64::MAX), i64::MAX);
    }

    /// `find_head` over an in-memory set of positions 1..=head, minus
    /// the buckets in `dropped`, counting the buckets it reads.
    fn head_of(start: u64, head: u64, dropped: &[i64]) -> (Option<u64>, usize) {
        let reads = std::cell::Cell::new(0);
        let found = futures::executor::block_on(find_head(start, |bucket| {
            reads.set(reads.get() + 1);
            let last = if dropped.contains(&bucket) || head == 0 {
                None
            } else {
                let first = (bucket.unsigned_abs() * BUCKET_SPAN).max(1);
                (first <= head).then(|| head.min(bucket_last(bucket)))
            };
            std::future::ready(Ok::<_, ()>(last))
        }));
        (found.expect("no i/o errors here"), reads.get())
    }

    #[test]
    fn the_head_is_found_from_any_start_at_or_below_it() {
        assert_eq!(head_of(0, 0, &[]).0, Some(0));
        assert_eq!(head_of(0, 5, &[]), (Some(5), 1));
        assert_eq!(head_of(5, 5, &[]), (Some(5), 1));
        assert_eq!(head_of(0, 1023, &[]), (Some(1023), 2));
        assert_eq!(head_of(1000, 1024, &[]), (Some(1024), 2));
        assert_eq!(head_of(1023, 1025, &[]), (Some(1025), 2));
        assert_eq!(head_of(0, 3000, &[]), (Some(3000), 3));
        assert_eq!(head_of(2047, 2047, &[]), (Some(2047), 2));
    }

    #[test]
    fn a_start_past_the_head_walks_down() {
        // A hint one bucket ahead, or a trim floor just past the head.
        assert_eq!(head_of(1024, 1023, &[]).0, Some(1023));
        assert_eq!(head_of(2048, 2047, &[0]).0, Some(2047));
        assert_eq!(head_of(1024, 0, &[]).0, Some(0));
        assert_eq!(head_of(10 * 1024, 5, &[]).0, None);
    }
}
