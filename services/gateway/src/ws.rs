//! The WebSocket transport (`GET /v1/connect`) and the HTTP routes around
//! it.
//!
//! Subprotocols: `natter.v1.json` carries one `ClientFrame`/`ServerFrame`
//! per text message in the proto3 JSON mapping; `natter.v1.proto` one per
//! binary message, protobuf-encoded. A client that offers neither gets
//! HTTP 400; one that offers no subprotocol at all gets JSON. The token
//! comes from `hello.token`, else a subprotocol offered as
//! `natter.token.<jwt>` (never chosen; proxies log query strings, not
//! this header), else the `access_token` query parameter, else
//! `Authorization: Bearer`. A session ends when its token expires (1008,
//! `TOKEN_INVALID`), and the client reconnects with a new one.
//!
//! A frame that cannot be decoded is answered with an `error` frame and
//! the session goes on, as the WebSocket framing around it is intact.
//! Close codes when the server ends a connection:
//!
//! | code | when |
//! |---|---|
//! | 1000 | the device closed the session |
//! | 1001 | the server is shutting down (reconnect elsewhere) |
//! | 1002 | a WebSocket protocol error |
//! | 1003 | a binary message on `natter.v1.json`, or text on `natter.v1.proto` |
//! | 1007 | a text message that is not UTF-8 |
//! | 1008 | a bad or missing token, a revoked device, no `hello` first or in time, a bad `hello` |
//! | 1009 | a message larger than `gateway.max_frame_bytes` |
//! | 1011 | the server failed |
//! | 1013 | the device reads too slowly, or a peer service is unavailable: reconnect later |
//!
//! The close reason is `<ErrorInfo reason>: <message>`, cut to the 123
//! bytes a close frame allows.
//!
//! Memory: tungstenite allocates its read buffer up front at the
//! configured size (128 KiB by default), so it is set to
//! [`READ_BUFFER_BYTES`]; frames are written through at once rather than
//! gathered in a write buffer.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use futures::stream::SplitStream;
use futures::{SinkExt, Stream, StreamExt};
use natter_proto::v1::{ClientFrame, ServerFrame};
use prost::Message as _;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use crate::Shared;
use crate::outbound;
use crate::session::{self, Inbound, Undecodable};

/// Offered with a token after it, the subprotocol that carries the token.
const TOKEN_PROTOCOL_PREFIX: &str = "natter.token.";
/// The JSON subprotocol.
pub const JSON_PROTOCOL: &str = "natter.v1.json";
/// The protobuf subprotocol.
pub const PROTO_PROTOCOL: &str = "natter.v1.proto";

/// Bytes read from the socket at a time, allocated for every connection.
/// Typical client frames (a hello with its token, a short send, an ack)
/// fit in one read; larger ones take several. tungstenite keeps a buffer
/// grown for a large frame, and its write buffer grows to the largest
/// frame sent.
pub(crate) const READ_BUFFER_BYTES: usize = 512;

/// Bytes one connection may have waiting to be written before its writes
/// fail; far above the largest frame.
const MAX_WRITE_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// How long the server tries to say goodbye (a close frame) to a device.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest close reason a close frame carries.
const MAX_CLOSE_REASON_BYTES: usize = 123;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Json,
    Proto,
}

impl Codec {
    fn name(self) -> &'static str {
        match self {
            Codec::Json => "websocket-json",
            Codec::Proto => "websocket-proto",
        }
    }

    fn encode(self, frame: &ServerFrame) -> Result<Message, serde_json::Error> {
        Ok(match self {
            Codec::Json => Message::Text(serde_json::to_string(frame)?.into()),
            Codec::Proto => Message::Binary(frame.encode_to_vec().into()),
        })
    }
}

/// `GET /v1/connect` and `GET /healthz`.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/connect", get(connect))
        .route("/healthz", get(healthz))
        .with_state(shared)
}

/// Serves `router` until `stop`, then stops accepting and waits up to
/// `grace` for open HTTP requests. WebSocket sessions are not HTTP requests
/// any more once upgraded; the gateway drains them itself.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
    grace: Duration,
) -> io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let server = axum::serve(listener, router)
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result,
        () = stop.cancelled() => {}
    }
    match tokio::time::timeout(grace, server).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("grace period elapsed with HTTP requests still open");
            Ok(())
        }
    }
}

/// 200 while serving, 503 once shutting down.
async fn healthz(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if shared.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::OK, "serving\n")
    }
}

#[derive(Debug, Deserialize)]
struct ConnectQuery {
    access_token: Option<String>,
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

#[tracing::instrument(skip_all)]
async fn connect(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<ConnectQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if shared.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "server shutting down\n").into_response();
    }
    // A browser cannot set headers on a WebSocket, but it can offer
    // subprotocols: one named `natter.token.<jwt>` carries the token where
    // proxies do not log it (they log query strings). It is never chosen.
    let offered_token = upgrade.requested_protocols().find_map(|protocol| {
        let token = protocol
            .to_str()
            .ok()?
            .strip_prefix(TOKEN_PROTOCOL_PREFIX)?;
        (!token.is_empty()).then(|| token.to_owned())
    });
    let offered = upgrade.requested_protocols().any(|protocol| {
        !protocol
            .as_bytes()
            .starts_with(TOKEN_PROTOCOL_PREFIX.as_bytes())
    });
    let upgrade = upgrade.protocols([JSON_PROTOCOL, PROTO_PROTOCOL]);
    let codec = match upgrade.selected_protocol().map(HeaderValue::as_bytes) {
        Some(protocol) if protocol == PROTO_PROTOCOL.as_bytes() => Codec::Proto,
        Some(_) => Codec::Json,
        None if offered => {
            return (
                StatusCode::BAD_REQUEST,
                "unsupported subprotocol: offer natter.v1.json or natter.v1.proto\n",
            )
                .into_response();
        }
        None => Codec::Json,
    };
    let token = offered_token
        .or_else(|| query.access_token.filter(|token| !token.is_empty()))
        .or_else(|| bearer(&headers));
    let max_frame_bytes = shared.config.max_frame_bytes;
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .max_message_size(max_frame_bytes)
        .max_frame_size(max_frame_bytes)
        .on_upgrade(move |socket| run_socket(shared, socket, codec, token))
}

/// One upgraded connection: the session and the writer that drains its
/// queue into the socket, in one task.
async fn run_socket(shared: Arc<Shared>, socket: WebSocket, codec: Codec, token: Option<String>) {
    let _tracked = shared.sessions.token();
    let (mut sink, stream) = socket.split();
    let broken = OnceLock::new();
    let inbound = Incoming {
        stream,
        codec,
        broken: &broken,
    };
    let (outbound, mut frames) = outbound::channel(shared.config.outbound_queue);
    let session = session::run(shared.clone(), codec.name(), inbound, outbound, token);
    let writer = async {
        while let Some(frame) = frames.recv().await {
            let message = match codec.encode(&frame) {
                Ok(message) => message,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a frame; dropped");
                    continue;
                }
            };
            if sink.send(message).await.is_err() {
                return;
            }
        }
    };
    let ended = tokio::select! {
        ended = session => ended,
        // The socket failed, or the session dropped its queue: either
        // way the session is over.
        () = writer => return,
    };
    let close = match (broken.into_inner(), ended) {
        (Some(close), _) => Some(close),
        (None, Ok(())) => None,
        (None, Err(status)) => Some(close_frame(&status)),
    };
    let goodbye = async {
        if let Some(close) = close {
            sink.send(Message::Close(Some(close))).await?;
        }
        sink.close().await
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await;
}

/// Client frames as the session takes them. A message that breaks the
/// connection (not UTF-8, too large, of the wrong kind) ends the stream
/// and leaves the close frame to send in `broken`.
struct Incoming<'a> {
    stream: SplitStream<WebSocket>,
    codec: Codec,
    broken: &'a OnceLock<CloseFrame>,
}

impl Incoming<'_> {
    fn break_with(&self, code: u16, reason: &str) -> Poll<Option<Inbound>> {
        let _ = self.broken.set(CloseFrame {
            code,
            reason: Utf8Bytes::from(truncate(reason, MAX_CLOSE_REASON_BYTES)),
        });
        Poll::Ready(None)
    }
}

impl Stream for Incoming<'_> {
    type Item = Inbound;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        loop {
            let message = match ready!(self.stream.poll_next_unpin(cx)) {
                None => return Poll::Ready(None),
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    return match e.into_inner().downcast::<tungstenite::Error>() {
                        Ok(e) => match *e {
                            tungstenite::Error::Utf8(_) => {
                                self.break_with(1007, "text message is not valid UTF-8")
                            }
                            tungstenite::Error::Capacity(e) => {
                                self.break_with(1009, &format!("too big: {e}"))
                            }
                            tungstenite::Error::Protocol(e) => {
                                self.break_with(1002, &format!("protocol error: {e}"))
                            }
                            // Closed or failed underneath: nobody to tell.
                            _ => Poll::Ready(None),
                        },
                        Err(_) => Poll::Ready(None),
                    };
                }
            };
            let frame = match (message, self.codec) {
                (Message::Text(text), Codec::Json) => {
                    serde_json::from_str::<ClientFrame>(text.as_str())
                        .map_err(|e| Undecodable(e.to_string()))
                }
                (Message::Binary(bytes), Codec::Proto) => {
                    ClientFrame::decode(bytes).map_err(|e| Undecodable(e.to_string()))
                }
                (Message::Binary(_), Codec::Json) => {
                    return self.break_with(1003, "natter.v1.json takes text messages");
                }
                (Message::Text(_), Codec::Proto) => {
                    return self.break_with(1003, "natter.v1.proto takes binary messages");
                }
                // tungstenite answers pings itself.
                (Message::Ping(_) | Message::Pong(_), _) => continue,
                (Message::Close(_), _) => return Poll::Ready(None),
            };
            return Poll::Ready(Some(frame));
        }
    }
}

/// The close frame for a status that ended a session.
fn close_frame(status: &Status) -> CloseFrame {
    let reason = natter_proto::status::reason_of(status);
    let code = match status.code() {
        Code::Unauthenticated
        | Code::PermissionDenied
        | Code::InvalidArgument
        | Code::FailedPrecondition => 1008,
        Code::Unavailable if reason == natter_proto::status::reason::SHUTTING_DOWN => 1001,
        Code::ResourceExhausted | Code::Unavailable | Code::DeadlineExceeded => 1013,
        Code::OutOfRange => 1009,
        _ => 1011,
    };
    let text = if reason.is_empty() {
        status.message().to_owned()
    } else {
        format!("{reason}: {}", status.message())
    };
    CloseFrame {
        code,
        reason: Utf8Bytes::from(truncate(&text, MAX_CLOSE_REASON_BYTES)),
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use natter_proto::status::{reason, unauthenticated};

    use super::*;
    use crate::stop;

    #[test]
    fn statuses_map_to_close_codes_with_their_reason() {
        let close = close_frame(&unauthenticated(reason::TOKEN_INVALID, "token is expired"));
        assert_eq!(close.code, 1008);
        assert_eq!(close.reason.as_str(), "TOKEN_INVALID: token is expired");
        assert_eq!(close_frame(&stop::device_revoked()).code, 1008);
        assert_eq!(close_frame(&stop::shutting_down()).code, 1001);
        assert_eq!(close_frame(&stop::slow_consumer("too slow")).code, 1013);
        assert_eq!(close_frame(&stop::unavailable("sync is down")).code, 1013);
        assert_eq!(close_frame(&Status::internal("boom")).code, 1011);
    }

    #[test]
    fn close_reasons_fit_a_close_frame_on_a_char_boundary() {
        let long = "é".repeat(100);
        let cut = truncate(&long, MAX_CLOSE_REASON_BYTES);
        assert!(cut.len() <= MAX_CLOSE_REASON_BYTES);
        assert!(long.starts_with(&cut));
        let close = close_frame(&unauthenticated(reason::TOKEN_INVALID, long));
        assert!(close.reason.len() <= MAX_CLOSE_REASON_BYTES);
    }
}
