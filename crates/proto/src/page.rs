//! Page tokens: the `page_token` and `next_page_token` strings of the List
//! RPCs, and how they map onto the store's page requests.
//!
//! A token names where the next page starts: `after:<key>` for lists ordered
//! by a key (conversations, members, devices), `after_seq:<n>` and
//! `before_seq:<n>` for messages read forward and backward. The API calls
//! tokens opaque so this format can change; the tag in front is what lets a
//! later format tell old tokens apart. Tokens carry no authority: every
//! store call is tenant-scoped whatever a token says.

use std::fmt::Display;
use std::str::FromStr;

use natter_core::{Invalid, Limits, Message, MessageRange, Page, PageRequest, Result, Seq};

use crate::v1::ListMessagesRequest;
use crate::v1::list_messages_request::Start;

const FIELD: &str = "page_token";
const AFTER: &str = "after:";
const AFTER_SEQ: &str = "after_seq:";
const BEFORE_SEQ: &str = "before_seq:";

/// The store request for a keyed List RPC's `page_size` and `page_token`.
pub fn page_request<K: FromStr<Err = Invalid>>(
    page_size: u32,
    page_token: &str,
    limits: &Limits,
) -> Result<PageRequest<K>> {
    let after = match page_token {
        "" => None,
        token => {
            let key = token.strip_prefix(AFTER).ok_or_else(malformed)?;
            Some(key.parse().map_err(|_| malformed())?)
        }
    };
    Ok(PageRequest {
        after,
        size: limits.page_size(page_size),
    })
}

/// The `next_page_token` for a page of a keyed list; empty after the last.
pub fn next_page_token<T, K: Display>(page: &Page<T, K>) -> String {
    page.next
        .as_ref()
        .map_or_else(String::new, |key| format!("{AFTER}{key}"))
}

/// The range of messages a `ListMessagesRequest` asks for.
pub fn message_range(request: &ListMessagesRequest, limits: &Limits) -> Result<MessageRange> {
    let limit = limits.page_size(request.page_size);
    if !request.page_token.is_empty() {
        let token = request.page_token.as_str();
        if let Some(seq) = token.strip_prefix(AFTER_SEQ) {
            return Ok(MessageRange::After {
                after: parse_seq(seq)?,
                limit,
            });
        }
        if let Some(seq) = token.strip_prefix(BEFORE_SEQ) {
            return Ok(MessageRange::Before {
                before: Some(parse_seq(seq)?),
                limit,
            });
        }
        return Err(malformed());
    }
    Ok(match request.start {
        Some(Start::AfterSeq(after)) => MessageRange::After {
            after: Seq::new(after),
            limit,
        },
        Some(Start::BeforeSeq(before)) => MessageRange::Before {
            before: Some(Seq::new(before)),
            limit,
        },
        None => MessageRange::Before {
            before: None,
            limit,
        },
    })
}

/// The `next_page_token` after reading `messages` (ascending seq order, as
/// the store returns them) for `range`: the next page in the same direction,
/// or empty when a short page shows there is nothing more.
pub fn next_message_page_token(range: &MessageRange, messages: &[Message]) -> String {
    match *range {
        MessageRange::After { limit, .. } => match messages.last() {
            Some(last) if messages.len() >= limit as usize => format!("{AFTER_SEQ}{}", last.seq),
            _ => String::new(),
        },
        MessageRange::Before { limit, .. } => match messages.first() {
            Some(first) if messages.len() >= limit as usize && first.seq > Seq::new(1) => {
                format!("{BEFORE_SEQ}{}", first.seq)
            }
            _ => String::new(),
        },
    }
}

fn parse_seq(value: &str) -> Result<Seq> {
    value.parse().map(Seq::new).map_err(|_| malformed())
}

fn malformed() -> Invalid {
    Invalid::new(
        FIELD,
        "is not a next_page_token this RPC returned; start over with an empty token",
    )
}

#[cfg(test)]
mod tests {
    use natter_core::{ConversationId, DeviceId};

    use super::*;
    use crate::testdata;

    fn limits() -> Limits {
        Limits {
            default_page_size: 2,
            max_page_size: 3,
            ..Limits::default()
        }
    }

    fn at(seqs: &[u64]) -> Vec<Message> {
        seqs.iter()
            .map(|&seq| Message {
                seq: Seq::new(seq),
                ..testdata::message()
            })
            .collect()
    }

    #[test]
    fn keyed_tokens_round_trip_and_reject_strangers() {
        let key = ConversationId::generate();
        let token = next_page_token(&Page::<(), _> {
            items: vec![],
            next: Some(key),
        });
        let request = page_request::<ConversationId>(0, &token, &limits()).unwrap();
        assert_eq!(
            request,
            PageRequest {
                after: Some(key),
                size: 2
            }
        );
        assert_eq!(
            page_request::<DeviceId>(99, "", &limits()).unwrap(),
            PageRequest {
                after: None,
                size: 3
            }
        );
        assert_eq!(
            next_page_token(&Page::<(), DeviceId> {
                items: vec![],
                next: None
            }),
            ""
        );
        for bad in ["garbage", "after:not-a-uuid", "after_seq:3"] {
            let err = page_request::<ConversationId>(0, bad, &limits()).unwrap_err();
            assert_eq!(err.field, "page_token");
        }
    }

    #[test]
    fn messages_open_at_the_newest_and_page_backward() {
        let first = ListMessagesRequest::default();
        let range = message_range(&first, &limits()).unwrap();
        assert_eq!(
            range,
            MessageRange::Before {
                before: None,
                limit: 2
            }
        );
        let token = next_message_page_token(&range, &at(&[4, 5]));
        let second = ListMessagesRequest {
            page_token: token,
            ..first
        };
        let range = message_range(&second, &limits()).unwrap();
        assert_eq!(
            range,
            MessageRange::Before {
                before: Some(Seq::new(4)),
                limit: 2
            }
        );
        // The page reaching seq 1, or a short page, is the last.
        assert_eq!(next_message_page_token(&range, &at(&[1, 2])), "");
        assert_eq!(next_message_page_token(&range, &at(&[3])), "");
    }

    #[test]
    fn messages_page_forward_until_a_short_page() {
        let first = ListMessagesRequest {
            start: Some(Start::AfterSeq(0)),
            page_size: 3,
            ..ListMessagesRequest::default()
        };
        let range = message_range(&first, &limits()).unwrap();
        assert_eq!(
            range,
            MessageRange::After {
                after: Seq::ZERO,
                limit: 3
            }
        );
        let token = next_message_page_token(&range, &at(&[1, 2, 3]));
        let second = ListMessagesRequest {
            page_token: token,
            // A token wins over `start`.
            start: Some(Start::BeforeSeq(1)),
            ..first
        };
        let range = message_range(&second, &limits()).unwrap();
        assert_eq!(
            range,
            MessageRange::After {
                after: Seq::new(3),
                limit: 3
            }
        );
        assert_eq!(next_message_page_token(&range, &at(&[4])), "");
        assert_eq!(next_message_page_token(&range, &[]), "");
    }

    #[test]
    fn before_seq_starts_a_backward_read() {
        let request = ListMessagesRequest {
            start: Some(Start::BeforeSeq(10)),
            ..ListMessagesRequest::default()
        };
        assert_eq!(
            message_range(&request, &limits()).unwrap(),
            MessageRange::Before {
                before: Some(Seq::new(10)),
                limit: 2
            }
        );
    }

    #[test]
    fn malformed_message_tokens_name_the_field() {
        for bad in ["after:5", "after_seq:x", "before_seq:-1", "zzz"] {
            let request = ListMessagesRequest {
                page_token: bad.into(),
                ..ListMessagesRequest::default()
            };
            assert_eq!(
                message_range(&request, &limits()).unwrap_err().field,
                "page_token"
            );
        }
    }
}
