//! The value encodings of the journal's tables: fields in a fixed order,
//! integers big-endian and fixed-width, strings as a `u32` byte length then
//! UTF-8, a duration as `u64` seconds then `u32` nanoseconds, and a wall
//! clock time as the duration since the Unix epoch. What a key already says
//! (stream name, sequence, consumer name) is not repeated in the value. A
//! payload or a dedup id comes last and runs to the end.
//!
//! A value that does not decode is reported as a corrupt journal.

use std::time::SystemTime;

use bytes::Bytes;
use natter_record::{Damaged, Reader, Writer};

use super::durable::{ConsumerState, Stored};
use crate::{BusError, Headers, Result, Storage, StreamConfig};

impl From<Damaged> for BusError {
    fn from(damaged: Damaged) -> Self {
        BusError::Unavailable(format!("bus journal is corrupt: {damaged}"))
    }
}

/// A stream's configuration but its name: subjects, `max_age`,
/// `max_messages` (0 for none), `duplicate_window`.
pub(super) fn stream(config: &StreamConfig) -> Vec<u8> {
    let mut writer = Writer::default().length(config.subjects.len());
    for subject in &config.subjects {
        writer = writer.str(subject);
    }
    writer
        .duration(config.max_age)
        .u64(config.max_messages.unwrap_or(0))
        .duration(config.duplicate_window)
        .finish()
}

pub(super) fn read_stream(name: &str, bytes: &[u8]) -> Result<StreamConfig> {
    let mut reader = Reader::new("stream", bytes);
    let count = reader.length()?;
    // Each subject takes at least its length, so a count beyond the bytes
    // left is damage, not a reason to allocate.
    if count > reader.remaining() / 4 {
        return Err(BusError::from(
            reader.damaged("has more subjects than bytes"),
        ));
    }
    let subjects = (0..count)
        .map(|_| reader.str().map(str::to_owned))
        .collect::<Result<_, _>>()?;
    let max_age = reader.duration()?;
    let max_messages = Some(reader.u64()?).filter(|&max| max > 0);
    let duplicate_window = reader.duration()?;
    reader.finish()?;
    Ok(StreamConfig {
        name: name.to_owned(),
        subjects,
        max_age,
        max_messages,
        duplicate_window,
        // Memory streams are never journaled.
        storage: Storage::Disk,
    })
}

/// A message but its sequence: stored at, subject, header count, each
/// header's name and value, then the payload.
pub(super) fn message(message: &Stored) -> Vec<u8> {
    let mut writer = Writer::default()
        .time(message.at)
        .str(&message.subject)
        .length(message.headers.len());
    for (name, value) in message.headers.iter() {
        writer = writer.str(name).str(value);
    }
    writer.rest(&message.payload)
}

pub(super) fn read_message(sequence: u64, bytes: &[u8]) -> Result<Stored> {
    let mut reader = Reader::new("message", bytes);
    let at = reader.time()?;
    let subject = reader.str()?;
    let count = reader.length()?;
    if count > reader.remaining() / 8 {
        return Err(BusError::from(
            reader.damaged("has more headers than bytes"),
        ));
    }
    let headers = (0..count)
        .map(|_| Ok::<_, Damaged>((reader.str()?.to_owned(), reader.str()?.to_owned())))
        .collect::<Result<Headers, Damaged>>()?;
    Ok(Stored {
        sequence,
        subject: subject.to_owned(),
        headers,
        payload: Bytes::copy_from_slice(reader.rest()),
        at,
    })
}

/// A dedup id with the time its message was stored: the time, then the id.
pub(super) fn dedup_id(at: SystemTime, id: &str) -> Vec<u8> {
    Writer::default().time(at).rest(id.as_bytes())
}

pub(super) fn read_dedup_id(bytes: &[u8]) -> Result<(SystemTime, String)> {
    let mut reader = Reader::new("dedup id", bytes);
    let at = reader.time()?;
    let damaged = reader.damaged("is not UTF-8");
    let id = std::str::from_utf8(reader.rest()).map_err(|_| damaged)?;
    Ok((at, id.to_owned()))
}

/// A consumer: filter, ack wait, ack floor.
pub(super) fn consumer(state: &ConsumerState) -> Vec<u8> {
    Writer::default()
        .str(&state.filter)
        .duration(state.ack_wait)
        .u64(state.ack_floor)
        .finish()
}

pub(super) fn read_consumer(bytes: &[u8]) -> Result<ConsumerState> {
    let mut reader = Reader::new("consumer", bytes);
    let filter = reader.str()?;
    let ack_wait = reader.duration()?;
    let ack_floor = reader.u64()?;
    reader.finish()?;
    Ok(ConsumerState {
        filter: filter.to_owned(),
        ack_wait,
        ack_floor,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn records_round_trip() {
        let mut config = StreamConfig::new("s", &["a.*", "b.>"], Duration::new(3600, 5));
        config.max_messages = Some(7);
        assert_eq!(read_stream("s", &stream(&config)).expect("stream"), config);
        config.max_messages = None;
        assert_eq!(read_stream("s", &stream(&config)).expect("stream"), config);

        let stored = Stored {
            sequence: 9,
            subject: "a.b".to_owned(),
            headers: [("traceparent", "00-1"), ("x-kind", "")]
                .into_iter()
                .collect(),
            payload: Bytes::from_static(b"\0payload"),
            at: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123),
        };
        let read = read_message(9, &message(&stored)).expect("message");
        assert_eq!(
            (
                read.sequence,
                &read.subject,
                &read.headers,
                &read.payload,
                read.at
            ),
            (
                9,
                &stored.subject,
                &stored.headers,
                &stored.payload,
                stored.at
            )
        );

        let at = stored.at;
        assert_eq!(
            read_dedup_id(&dedup_id(at, "id-1")).expect("dedup id"),
            (at, "id-1".to_owned())
        );

        let state = ConsumerState {
            filter: "a.*".to_owned(),
            ack_wait: Duration::from_millis(1500),
            ack_floor: 42,
        };
        assert_eq!(read_consumer(&consumer(&state)).expect("consumer"), state);
    }

    #[test]
    fn damage_is_reported_not_panicked_on() {
        let config = StreamConfig::new("s", &["a"], Duration::from_secs(60));
        let bytes = stream(&config);
        for len in 0..bytes.len() {
            assert!(
                read_stream("s", &bytes[..len]).is_err(),
                "truncated to {len}"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(read_stream("s", &long).is_err(), "trailing bytes");
        let mut huge_count = bytes;
        huge_count[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(read_stream("s", &huge_count).is_err(), "huge count");
        assert!(read_consumer(&[0, 0, 0, 9, b'a']).is_err(), "short string");
        assert!(read_message(1, &[0; 11]).is_err(), "truncated time");
    }
}
