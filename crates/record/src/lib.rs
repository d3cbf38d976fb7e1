//! Values as the embedded store keeps them: fields in a fixed order,
//! integers big-endian and fixed-width, strings as a `u32` byte length then
//! UTF-8, a duration as `u64` seconds then `u32` nanoseconds, a wall-clock
//! time as the duration since the Unix epoch. A trailing blob (a payload,
//! protobuf content) runs to the end. The store decides what a damaged
//! value means to it by mapping [`Damaged`].
//!
//! The store's commits are [`group`] commits.

pub mod group;

use std::time::{Duration, SystemTime};

use thiserror::Error;

/// Reads one value with `body` and checks nothing is left over.
pub fn read<T>(
    what: &'static str,
    bytes: &[u8],
    body: impl FnOnce(&mut Reader<'_>) -> Result<T>,
) -> Result<T> {
    let mut reader = Reader::new(what, bytes);
    let value = body(&mut reader)?;
    reader.finish()?;
    Ok(value)
}

/// A value that does not decode: which record, and what is wrong.
#[derive(Debug, Error)]
#[error("{what} record {reason}")]
pub struct Damaged {
    pub what: &'static str,
    pub reason: String,
}

pub type Result<T, E = Damaged> = std::result::Result<T, E>;

/// Builds one value, field by field.
#[derive(Debug, Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    pub fn u8(mut self, value: u8) -> Self {
        self.0.push(value);
        self
    }

    pub fn u32(mut self, value: u32) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn u64(mut self, value: u64) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn i64(mut self, value: i64) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn u128(mut self, value: u128) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// A length as `u32`. Every length stored is bounded far below 4 GiB,
    /// and redb refuses values of that size before this could matter.
    pub fn length(self, len: usize) -> Self {
        self.u32(u32::try_from(len).unwrap_or(u32::MAX))
    }

    pub fn str(mut self, value: &str) -> Self {
        self = self.length(value.len());
        self.0.extend_from_slice(value.as_bytes());
        self
    }

    pub fn duration(self, value: Duration) -> Self {
        self.u64(value.as_secs()).u32(value.subsec_nanos())
    }

    /// A time before the epoch is stored as the epoch.
    pub fn time(self, value: SystemTime) -> Self {
        self.duration(
            value
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        )
    }

    /// Appends a trailing blob and ends the value.
    pub fn rest(mut self, value: &[u8]) -> Vec<u8> {
        self.0.extend_from_slice(value);
        self.0
    }

    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Reads the fields of one value; every error names the record.
#[derive(Debug)]
pub struct Reader<'a> {
    what: &'static str,
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(what: &'static str, bytes: &'a [u8]) -> Self {
        Self { what, bytes }
    }

    /// The error for this record with `reason`.
    pub fn damaged(&self, reason: impl std::fmt::Display) -> Damaged {
        Damaged {
            what: self.what,
            reason: reason.to_string(),
        }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let (head, rest) = self
            .bytes
            .split_first_chunk::<N>()
            .ok_or_else(|| self.damaged("is truncated"))?;
        self.bytes = rest;
        Ok(*head)
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take::<1>()?[0])
    }

    pub fn u32(&mut self) -> Result<u32> {
        self.take().map(u32::from_be_bytes)
    }

    pub fn u64(&mut self) -> Result<u64> {
        self.take().map(u64::from_be_bytes)
    }

    pub fn i64(&mut self) -> Result<i64> {
        self.take().map(i64::from_be_bytes)
    }

    pub fn u128(&mut self) -> Result<u128> {
        self.take().map(u128::from_be_bytes)
    }

    pub fn length(&mut self) -> Result<usize> {
        let len = self.u32()?;
        usize::try_from(len).map_err(|_| self.damaged("has a length beyond memory"))
    }

    pub fn str(&mut self) -> Result<&'a str> {
        let len = self.length()?;
        if self.bytes.len() < len {
            return Err(self.damaged("is truncated"));
        }
        let (text, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        std::str::from_utf8(text).map_err(|_| self.damaged("has a string that is not UTF-8"))
    }

    pub fn duration(&mut self) -> Result<Duration> {
        let secs = self.u64()?;
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(self.damaged("has a duration with too many nanoseconds"));
        }
        Ok(Duration::new(secs, nanos))
    }

    pub fn time(&mut self) -> Result<SystemTime> {
        let since_epoch = self.duration()?;
        SystemTime::UNIX_EPOCH
            .checked_add(since_epoch)
            .ok_or_else(|| self.damaged("has a time beyond the clock's range"))
    }

    /// Bytes not read yet: a bound for counts read from the value.
    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    /// The trailing blob: everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    /// Checks the value was read to its end.
    pub fn finish(&self) -> Result<()> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(self.damaged(format!("has {} trailing bytes", self.bytes.len())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_damage_is_an_error() {
        let at = SystemTime::UNIX_EPOCH + Duration::new(1_800_000_000, 5);
        let bytes = Writer::default()
            .u8(7)
            .i64(-3)
            .u128(u128::MAX)
            .str("héllo")
            .time(at)
            .rest(b"tail");
        let mut r = Reader::new("test", &bytes);
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.i64().unwrap(), -3);
        assert_eq!(r.u128().unwrap(), u128::MAX);
        assert_eq!(r.str().unwrap(), "héllo");
        assert_eq!(r.time().unwrap(), at);
        assert_eq!(r.rest(), b"tail");

        let mut short = Reader::new("test", &bytes[..3]);
        assert!(short.u64().is_err());
        let trailing = Reader::new("test", &bytes);
        assert!(trailing.finish().is_err());
        let mut whole = Reader::new("test", &bytes);
        whole.rest();
        assert!(whole.finish().is_ok());
    }
}
