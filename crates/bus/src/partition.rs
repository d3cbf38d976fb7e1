//! Which partition a key belongs to.
//!
//! All messages for one key (a conversation, a user) go to one partition
//! subject, `<base>.<partition>`, so one consumer sees them in order.
//!
//! The mapping is part of the wire format: messages already in a stream
//! were routed by it, so it must never change. It is FNV-1a (64-bit, the
//! published offset basis and prime) over the key's bytes, then
//! MurmurHash3's 64-bit finalizer (`fmix64`), reduced to `0..partitions` by
//! multiply-shift, `(hash * partitions) >> 64`. The finalizer is needed:
//! FNV-1a alone barely mixes the last bytes of a key into the high bits,
//! nor anything but the inputs' low bits into the low bits, so keys that
//! differ only at the end (`conversation-17`, `conversation-18`) would
//! cluster. Changing the partition count moves most keys, so it needs a
//! drain of the old partitions first; that is deliberate, as a key moved
//! while messages for it are in flight would lose its order.

use std::num::NonZeroU32;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a64(key: &[u8]) -> u64 {
    key.iter().fold(FNV_OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

/// MurmurHash3's `fmix64`: every input bit affects every output bit.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// The partition of `key`, in `0..partitions`. Stable forever.
pub fn partition(key: &[u8], partitions: NonZeroU32) -> u32 {
    let hash = fmix64(fnv1a64(key));
    let scaled = (u128::from(hash) * u128::from(partitions.get())) >> 64;
    // Below `partitions`, so it fits.
    u32::try_from(scaled).unwrap_or(u32::MAX)
}

/// The subject for `key` under `base`: `<base>.<partition>`.
pub fn partition_subject(base: &str, key: &[u8], partitions: NonZeroU32) -> String {
    format!("{base}.{}", partition(key, partitions))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(value: u32) -> NonZeroU32 {
        NonZeroU32::new(value).expect("non-zero")
    }

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// Pinned outputs: if this test fails, the mapping changed and every
    /// deployed stream would be routed differently. Do not update the
    /// expected values; restore the function.
    #[test]
    fn partitions_never_change() {
        let cases: [(&[u8], u32, u32); 8] = [
            (b"", 16, 14),
            (b"a", 16, 8),
            (b"foobar", 16, 2),
            (b"0190f4e2-7b7c-7cc3-9d1b-3f6e8a2b4c5d", 16, 3),
            (b"0190f4e2-7b7c-7cc3-9d1b-3f6e8a2b4c5d", 64, 13),
            (b"acme/alice", 32, 6),
            (b"acme/bob", 32, 4),
            (b"anything", 1, 0),
        ];
        for (key, partitions, expected) in cases {
            assert_eq!(
                partition(key, n(partitions)),
                expected,
                "{:?} over {partitions}",
                String::from_utf8_lossy(key)
            );
        }
        assert_eq!(partition_subject("msg.send", b"a", n(16)), "msg.send.8");
    }

    #[test]
    fn keys_spread_over_all_partitions() {
        let partitions = n(16);
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[partition(format!("conversation-{i}").as_bytes(), partitions) as usize] += 1;
        }
        for count in counts {
            assert!((800..1200).contains(&count), "uneven spread: {counts:?}");
        }
    }
}
