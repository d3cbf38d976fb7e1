//! Values as the embedded store keeps them: fields in a fixed order,
//! integers big-endian and fixed-width, strings as a `u32` byte length then
//! UTF-8. A trailing blob (protobuf content) runs to the end. The store
//! decides what a damaged value means to it by mapping [`Damaged`].

use thiserror::Error;

/// Reads one value with `body` and checks nothing is left over.
pub(crate) fn read<T>(
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
pub(crate) struct Damaged {
    pub(crate) what: &'static str,
    pub(crate) reason: String,
}

pub(crate) type Result<T, E = Damaged> = std::result::Result<T, E>;

/// Builds one value, field by field.
#[derive(Debug, Default)]
pub(crate) struct Writer(Vec<u8>);

impl Writer {
    pub(crate) fn u8(mut self, value: u8) -> Self {
        self.0.push(value);
        self
    }

    pub(crate) fn u32(mut self, value: u32) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub(crate) fn u64(mut self, value: u64) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub(crate) fn i64(mut self, value: i64) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub(crate) fn u128(mut self, value: u128) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// A length as `u32`. Every length stored is bounded far below 4 GiB,
    /// and redb refuses values of that size before this could matter.
    pub(crate) fn length(self, len: usize) -> Self {
        self.u32(u32::try_from(len).unwrap_or(u32::MAX))
    }

    pub(crate) fn str(mut self, value: &str) -> Self {
        self = self.length(value.len());
        self.0.extend_from_slice(value.as_bytes());
        self
    }

    /// Appends a trailing blob and ends the value.
    pub(crate) fn rest(mut self, value: &[u8]) -> Vec<u8> {
        self.0.extend_from_slice(value);
        self.0
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Reads the fields of one value; every error names the record.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    what: &'static str,
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(what: &'static str, bytes: &'a [u8]) -> Self {
        Self { what, bytes }
    }

    /// The error for this record with `reason`.
    pub(crate) fn damaged(&self, reason: impl std::fmt::Display) -> Damaged {
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

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.take::<1>()?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        self.take().map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        self.take().map(u64::from_be_bytes)
    }

    pub(crate) fn i64(&mut self) -> Result<i64> {
        self.take().map(i64::from_be_bytes)
    }

    pub(crate) fn u128(&mut self) -> Result<u128> {
        self.take().map(u128::from_be_bytes)
    }

    pub(crate) fn length(&mut self) -> Result<usize> {
        let len = self.u32()?;
        usize::try_from(len).map_err(|_| self.damaged("has a length beyond memory"))
    }

    pub(crate) fn str(&mut self) -> Result<&'a str> {
        let len = self.length()?;
        if self.bytes.len() < len {
            return Err(self.damaged("is truncated"));
        }
        let (text, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        std::str::from_utf8(text).map_err(|_| self.damaged("has a string that is not UTF-8"))
    }

    /// The trailing blob: everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    /// Checks the value was read to its end.
    pub(crate) fn finish(&self) -> Result<()> {
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
        let bytes = Writer::default()
            .u8(7)
            .i64(-3)
            .u128(u128::MAX)
            .str("héllo")
            .rest(b"tail");
        let mut r = Reader::new("test", &bytes);
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.i64().unwrap(), -3);
        assert_eq!(r.u128().unwrap(), u128::MAX);
        assert_eq!(r.str().unwrap(), "héllo");
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
