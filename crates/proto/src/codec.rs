//! How the store crates encode content and events at rest: as the protobuf
//! messages of the public API, so stored records evolve under protobuf's
//! compatibility rules (fields added with new numbers, none reused) and a
//! record written by an older release still decodes.
//!
//! Decoding errors come back as [`Invalid`] naming the record; a store
//! reports them as `StoreError::Corrupt`.

use natter_core::{Content, Event, Invalid, Lifecycle, Result};
use prost::Message as _;

use crate::v1;

/// Content as stored: an encoded `natter.v1.MessageContent`.
pub fn encode_content(content: &Content) -> Vec<u8> {
    v1::MessageContent::from(content.clone()).encode_to_vec()
}

pub fn decode_content(bytes: &[u8]) -> Result<Content> {
    v1::MessageContent::decode(bytes)
        .map_err(|err| Invalid::new("content", format!("undecodable: {err}")))?
        .try_into()
}

/// An event as stored in an update log: an encoded `natter.v1.Event`.
pub fn encode_event(event: &Event) -> Vec<u8> {
    v1::Event::from(event.clone()).encode_to_vec()
}

pub fn decode_event(bytes: &[u8]) -> Result<Event> {
    v1::Event::decode(bytes)
        .map_err(|err| Invalid::new("event", format!("undecodable: {err}")))?
        .try_into()
}

/// A conversation's lifecycle as stored: an encoded `natter.v1.Lifecycle`.
pub fn encode_lifecycle(lifecycle: &Lifecycle) -> Vec<u8> {
    v1::Lifecycle::from(lifecycle.clone()).encode_to_vec()
}

pub fn decode_lifecycle(bytes: &[u8]) -> Result<Lifecycle> {
    let lifecycle = v1::Lifecycle::decode(bytes)
        .map_err(|err| Invalid::new("lifecycle", format!("undecodable: {err}")))?;
    crate::convert::lifecycle_from_wire("lifecycle", lifecycle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata;

    #[test]
    fn lifecycles_round_trip() {
        for lifecycle in [Lifecycle::default(), testdata::lifecycle()] {
            assert_eq!(
                decode_lifecycle(&encode_lifecycle(&lifecycle)).unwrap(),
                lifecycle
            );
        }
    }

    #[test]
    fn every_content_variant_round_trips() {
        for content in testdata::contents() {
            assert_eq!(decode_content(&encode_content(&content)).unwrap(), content);
        }
    }

    #[test]
    fn every_event_variant_round_trips() {
        for event in testdata::events() {
            assert_eq!(decode_event(&encode_event(&event)).unwrap(), event);
        }
    }

    #[test]
    fn garbage_and_empty_records_are_rejected() {
        assert_eq!(decode_content(&[0xff, 0xff]).unwrap_err().field, "content");
        assert_eq!(decode_event(&[0xff, 0xff]).unwrap_err().field, "event");
        // An empty record decodes as a message with no oneof set.
        assert_eq!(
            decode_content(&[]).unwrap_err(),
            Invalid::new("content", "is required")
        );
        assert_eq!(
            decode_event(&[]).unwrap_err(),
            Invalid::new("event", "is required")
        );
    }

    #[test]
    fn unknown_fields_from_a_newer_release_are_skipped() {
        let mut bytes = encode_content(&Content::Text("hi".into()));
        // Field 99, varint 1: a field this release does not know.
        bytes.extend_from_slice(&[0x98, 0x06, 0x01]);
        assert_eq!(decode_content(&bytes).unwrap(), Content::Text("hi".into()));
    }
}
