//! Centrifugo's JSON client protocol (v6), so the same runs can drive
//! Centrifugo for comparison: a device connects with a JWT (`sub`, `exp`,
//! HS256 with Centrifugo's `client.token.hmac_secret_key`), subscribes to
//! the channel of each of its conversations, and sends by publishing into
//! that channel (client-side publish, which the channel namespace must
//! allow), as the fairest counterpart of Natter's `send`: a device sends,
//! the other members' devices receive.
//!
//! Frames are translated into Natter's own at the edge, so the scenarios
//! stay as they are: a `send` becomes a `publish` command whose id carries
//! the `client_message_id`, its reply a `send_ack` (or an `error`), and a
//! publication a `message` frame. Cursor acks have no counterpart and are
//! dropped. This module is the encoding only (sans-I/O); the connection is
//! in `gateway.rs`.

use std::collections::VecDeque;

use natter_proto::v1::server_frame::Frame as ServerKind;
use natter_proto::v1::{ErrorFrame, Message, MessageContent, SendAck, message_content};
use serde_json::{Value, json};

/// The channel namespace a run's channels live in; Centrifugo's
/// configuration must have it, with subscribe and publish allowed to
/// clients (`allow_subscribe_for_client`, `allow_publish_for_subscriber`).
pub(crate) const NAMESPACE: &str = "load";

/// Command ids: the connect, then one per subscription, then publishes
/// from [`PUBLISH_BASE`] up (the `client_message_id` added to it).
pub(crate) const CONNECT_ID: u32 = 1;
pub(crate) const SUBSCRIBE_BASE: u32 = 2;
const PUBLISH_BASE: u64 = 1000;

/// The channel of a conversation.
pub(crate) fn channel(conversation: &str) -> String {
    format!("{NAMESPACE}:{conversation}")
}

fn conversation_of(channel: &str) -> &str {
    channel
        .strip_prefix(NAMESPACE)
        .and_then(|rest| rest.strip_prefix(':'))
        .unwrap_or(channel)
}

pub(crate) fn connect(token: &str) -> String {
    json!({"id": CONNECT_ID, "connect": {"token": token, "name": "natter-load"}}).to_string()
}

/// Subscribe commands for `conversations`, one line each, in one frame.
pub(crate) fn subscribe<'a>(conversations: impl IntoIterator<Item = &'a str>) -> String {
    conversations
        .into_iter()
        .zip(SUBSCRIBE_BASE..)
        .map(|(c, id)| json!({"id": id, "subscribe": {"channel": channel(c)}}).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A publish of `text` into a conversation's channel; `None` when the
/// `client_message_id` is not a number a command id can carry.
pub(crate) fn publish(client_message_id: &str, conversation: &str, text: &str) -> Option<String> {
    let id = client_message_id.parse::<u64>().ok()? + PUBLISH_BASE;
    u32::try_from(id).ok()?;
    Some(
        json!({"id": id, "publish": {"channel": channel(conversation), "data": {"text": text}}})
            .to_string(),
    )
}

/// What one line from the server means.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Incoming {
    /// An empty object: the server's ping, to be answered with one.
    Ping,
    /// The answer to command `id`: success, or an error code and message.
    Reply {
        id: u32,
        error: Option<(u32, String)>,
    },
    /// A publication in a subscribed channel.
    Publication { conversation: String, text: String },
    /// The server ends the connection.
    Disconnect { code: u32, reason: String },
    /// Anything else (join/leave, subscription pushes, …).
    Other,
}

/// Decodes one WebSocket text frame: one JSON object per line.
pub(crate) fn decode(frame: &str, out: &mut VecDeque<Incoming>) -> Result<(), String> {
    for value in serde_json::Deserializer::from_str(frame).into_iter::<Value>() {
        let value = value.map_err(|e| format!("undecodable centrifugo frame: {e}"))?;
        out.push_back(incoming(&value));
    }
    Ok(())
}

fn incoming(value: &Value) -> Incoming {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let number = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
    if value.as_object().is_some_and(|o| o.is_empty()) {
        return Incoming::Ping;
    }
    if let Some(id) = value.get("id").and_then(Value::as_u64) {
        let error = value
            .get("error")
            .map(|e| (number(&e["code"]), text(&e["message"])));
        return Incoming::Reply {
            id: u32::try_from(id).unwrap_or(u32::MAX),
            error,
        };
    }
    let Some(push) = value.get("push") else {
        return Incoming::Other;
    };
    if let Some(publication) = push.get("pub") {
        return Incoming::Publication {
            conversation: conversation_of(push["channel"].as_str().unwrap_or_default()).to_owned(),
            text: text(&publication["data"]["text"]),
        };
    }
    if let Some(disconnect) = push.get("disconnect") {
        return Incoming::Disconnect {
            code: number(&disconnect["code"]),
            reason: text(&disconnect["reason"]),
        };
    }
    Incoming::Other
}

/// The Natter frame a reply or publication stands for; `None` for what has
/// no counterpart (connect and subscribe replies, other pushes).
pub(crate) fn server_frame(incoming: Incoming) -> Option<ServerKind> {
    match incoming {
        Incoming::Reply { id, error } if u64::from(id) >= PUBLISH_BASE => {
            let client_message_id = (u64::from(id) - PUBLISH_BASE).to_string();
            Some(match error {
                None => ServerKind::SendAck(SendAck {
                    client_message_id,
                    ..SendAck::default()
                }),
                Some((code, message)) => ServerKind::Error(ErrorFrame {
                    code: 0,
                    message,
                    reason: format!("CENTRIFUGO_{code}"),
                    client_message_id,
                    ..ErrorFrame::default()
                }),
            })
        }
        Incoming::Publication { conversation, text } => Some(ServerKind::Message(Message {
            conversation_id: conversation,
            content: Some(MessageContent {
                kind: Some(message_content::Kind::Text(text)),
            }),
            ..Message::default()
        })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_json_with_ids_that_map_back() {
        let connect: Value = serde_json::from_str(&connect("t.o.k")).unwrap();
        assert_eq!(connect["connect"]["token"], "t.o.k");
        let subscribe = subscribe(["a", "b"]);
        let lines: Vec<Value> = subscribe
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[1]["id"], 3);
        assert_eq!(lines[1]["subscribe"]["channel"], "load:b");
        let publish: Value = serde_json::from_str(&publish("42", "a", "hi").unwrap()).unwrap();
        assert_eq!(publish["publish"]["data"]["text"], "hi");
        let reply = Incoming::Reply {
            id: publish["id"].as_u64().unwrap() as u32,
            error: None,
        };
        match server_frame(reply) {
            Some(ServerKind::SendAck(ack)) => assert_eq!(ack.client_message_id, "42"),
            other => panic!("{other:?}"),
        }
        assert!(super::publish("x", "a", "hi").is_none());
        assert!(super::publish("5000000000", "a", "hi").is_none());
    }

    #[test]
    fn server_lines_decode() {
        let frame = concat!(
            "{}\n",
            r#"{"id":1,"connect":{"client":"c","version":"6.9.1","ping":25,"pong":true}}"#,
            "\n",
            r#"{"id":1001,"error":{"code":103,"message":"permission denied"}}"#,
            "\n",
            r#"{"push":{"channel":"load:c-1","pub":{"data":{"text":"natter-load 1 2"},"offset":3}}}"#,
            "\n",
            r#"{"push":{"disconnect":{"code":3001,"reason":"shutdown"}}}"#,
        );
        let mut out = VecDeque::new();
        decode(frame, &mut out).unwrap();
        let out: Vec<Incoming> = out.into();
        assert_eq!(out[0], Incoming::Ping);
        assert_eq!(out[1], Incoming::Reply { id: 1, error: None });
        assert_eq!(
            out[3],
            Incoming::Publication {
                conversation: "c-1".into(),
                text: "natter-load 1 2".into()
            }
        );
        assert_eq!(
            out[4],
            Incoming::Disconnect {
                code: 3001,
                reason: "shutdown".into()
            }
        );
        match server_frame(out[2].clone()) {
            Some(ServerKind::Error(e)) => {
                assert_eq!(
                    (e.client_message_id.as_str(), e.reason.as_str()),
                    ("1", "CENTRIFUGO_103")
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(server_frame(out[1].clone()), None);
        assert!(decode("{nope", &mut VecDeque::new()).is_err());
    }
}
