//! What only the WebSocket transport has: subprotocols, message kinds,
//! UTF-8 and size rules, tokens in the query or a header, and `/healthz`.

// Helpers outside #[test] functions panic on the unexpected too.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use futures::StreamExt;
use natter_auth::Verifier;
use natter_bus_local::LocalBus;
use natter_gateway::{Deps, Gateway};
use natter_proto::v1::server_frame::Frame;
use natter_proto::v1::{ClientFrame, client_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as RawFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_util::sync::CancellationToken;
use tonic::Code;

fn url(harness: &Harness) -> String {
    format!("ws://{}/v1/connect", harness.http_addr)
}

#[tokio::test]
async fn undecodable_json_gets_an_error_frame_and_the_session_goes_on() {
    let harness = Harness::start().await;
    let mut device = harness.open(Transport::WsJson, "alice", "d1", 0).await;
    for text in [
        "{not json",
        r#"{"bogus": {}}"#,
        r#"{"send": {"conversation_id": 7}}"#,
        "[]",
    ] {
        device.send_raw(Message::Text(text.into())).await;
        let error = device.error().await;
        assert_eq!(
            error.code,
            Code::InvalidArgument as i32,
            "{text}: {error:?}"
        );
        assert_eq!(error.field, "frame", "{text}: {error:?}");
    }
    // An empty object is a frame without a kind.
    device.send_raw(Message::Text("{}".into())).await;
    let error = device.error().await;
    assert_eq!(
        (error.code, error.field.as_str()),
        (Code::InvalidArgument as i32, "frame")
    );
    // Numbers as strings, as proto3 JSON writes 64-bit integers, or bare.
    device
        .send_raw(Message::Text(
            r#"{"ping": {"nonce": "18446744073709551615"}}"#.into(),
        ))
        .await;
    assert!(matches!(device.frame().await, Frame::Pong(p) if p.nonce == u64::MAX));
    device.round_trip(3).await;
    harness.stop().await;
}

#[tokio::test]
async fn undecodable_protobuf_gets_an_error_frame_and_the_session_goes_on() {
    let harness = Harness::start().await;
    let mut device = harness.open(Transport::WsProto, "alice", "d1", 0).await;
    device
        .send_raw(Message::Binary(vec![0xff, 0xff, 0xff].into()))
        .await;
    let error = device.error().await;
    assert_eq!(
        (error.code, error.field.as_str()),
        (Code::InvalidArgument as i32, "frame")
    );
    device.round_trip(1).await;
    harness.stop().await;
}

#[tokio::test]
async fn a_text_message_that_is_not_utf8_closes_with_1007() {
    let harness = Harness::start().await;
    let mut device = harness.open(Transport::WsJson, "alice", "d1", 0).await;
    let raw = RawFrame::message(vec![b'{', 0xc3, 0x28, b'}'], OpCode::Data(Data::Text), true);
    device.send_raw(Message::Frame(raw)).await;
    match device.ended().await {
        Ended::Close(Some(close)) => assert_eq!(u16::from(close.code), 1007, "{close:?}"),
        other => panic!("expected close 1007, got {other:?}"),
    }
    harness.stop().await;
}

#[tokio::test]
async fn the_wrong_kind_of_message_for_the_subprotocol_closes_with_1003() {
    let harness = Harness::start().await;
    let mut json = harness.open(Transport::WsJson, "alice", "d1", 0).await;
    json.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    let mut proto = harness.open(Transport::WsProto, "alice", "d2", 0).await;
    proto.send_raw(Message::Text("{}".into())).await;
    for device in [&mut json, &mut proto] {
        match device.ended().await {
            Ended::Close(Some(close)) => assert_eq!(u16::from(close.code), 1003, "{close:?}"),
            other => panic!("expected close 1003, got {other:?}"),
        }
    }
    harness.stop().await;
}

#[tokio::test]
async fn a_message_over_the_frame_limit_closes_with_1009() {
    let harness = Harness::start_with(|s| s.gateway.max_frame_bytes = 16 * 1024).await;
    for transport in [Transport::WsJson, Transport::WsProto] {
        let mut device = harness.open(transport, "alice", "d1", 0).await;
        let room = natter_core::ConversationId::generate();
        device
            .send(text_send(room, "c-1", &"x".repeat(20 * 1024)))
            .await;
        match device.ended().await {
            Ended::Close(Some(close)) => assert_eq!(u16::from(close.code), 1009, "{close:?}"),
            other => panic!("expected close 1009, got {other:?}"),
        }
    }
    harness.stop().await;
}

#[tokio::test]
async fn subprotocols_are_negotiated_and_unknown_ones_refused() {
    let harness = Harness::start().await;
    // No subprotocol offered: JSON.
    let socket = ws_connect(&url(&harness), None, None).await.unwrap();
    let mut device = Device::Ws {
        socket,
        proto: false,
    };
    device.send(hello("alice", "d1", 0)).await;
    assert!(matches!(device.frame().await, Frame::Welcome(_)));

    // The server picks its own preference among those offered.
    let socket = ws_connect(
        &url(&harness),
        Some("natter.v1.proto, natter.v1.json"),
        None,
    )
    .await
    .unwrap();
    let mut device = Device::Ws {
        socket,
        proto: false,
    };
    device.send(hello("alice", "d2", 0)).await;
    assert!(matches!(device.frame().await, Frame::Welcome(_)));

    let refused = ws_connect(&url(&harness), Some("graphql-ws"), None).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
        }
        other => panic!("expected HTTP 400, got {:?}", other.map(|_| ())),
    }
    harness.stop().await;
}

#[tokio::test]
async fn the_token_may_come_from_the_query_a_subprotocol_or_the_authorization_header() {
    let harness = Harness::start().await;
    let hello_without_token = |device: &str| ClientFrame {
        frame: Some(client_frame::Frame::Hello(natter_proto::v1::Hello {
            token: String::new(),
            device_id: device.into(),
            cursor: 0,
            device_label: String::new(),
        })),
    };

    let mut device = Device::connect(&harness, Transport::WsJson, Some(&token("alice"))).await;
    device.send(hello_without_token("d1")).await;
    assert!(matches!(device.frame().await, Frame::Welcome(w) if w.user_id == "alice"));

    // Who a JSON socket's session opens as, after a hello without a token.
    let welcomed = async |socket| {
        let mut device = Device::Ws {
            socket,
            proto: false,
        };
        device.send(hello_without_token("d1")).await;
        match device.frame().await {
            Frame::Welcome(welcome) => welcome.user_id,
            other => panic!("expected welcome, got {other:?}"),
        }
    };
    let (bob, dave) = (token("bob"), token("dave"));
    let bearer = ws_connect(&url(&harness), Some("natter.v1.json"), Some(&bob))
        .await
        .unwrap();
    assert_eq!(welcomed(bearer).await, "bob");

    // Offered as a subprotocol, which the server never chooses: it
    // answers with the JSON one.
    let offered = format!("natter.token.{dave}, natter.v1.json");
    let subprotocol = ws_connect(&url(&harness), Some(&offered), None)
        .await
        .unwrap();
    assert_eq!(welcomed(subprotocol).await, "dave");

    // A token in hello wins over the one in the query.
    let mut device = Device::connect(&harness, Transport::WsJson, Some("garbage")).await;
    device.send(hello("carol", "d1", 0)).await;
    assert!(matches!(device.frame().await, Frame::Welcome(w) if w.user_id == "carol"));
    harness.stop().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn healthz_says_serving_and_then_shutting_down() {
    let harness = Harness::start().await;
    let response = http_get(harness.http_addr, "/healthz").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    harness.stop().await;

    // The same router on a gateway that is shutting down.
    let bus = Arc::new(LocalBus::new("test").unwrap());
    let deps = Deps {
        bus,
        verifier: Arc::new(Verifier::hs256(SECRET).unwrap()),
        instance: "gateway-health".into(),
    };
    let stopped = CancellationToken::new();
    stopped.cancel();
    let gateway = Gateway::new(&settings(), deps, stopped).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, gateway.router()).into_future());
    let response = http_get(addr, "/healthz").await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    let response = http_get(addr, "/v1/connect").await;
    assert!(
        response.starts_with("HTTP/1.1 4"),
        "not an upgrade: {response}"
    );
    server.abort();
}

#[tokio::test]
async fn a_closed_socket_ends_the_session() {
    let harness = Harness::start().await;
    let device = harness.open(Transport::WsJson, "alice", "d1", 0).await;
    assert!(harness.has_live_session("alice").await);
    let Device::Ws { mut socket, .. } = device else {
        unreachable!()
    };
    socket.close(None).await.unwrap();
    // The server answers the close handshake.
    while let Some(Ok(_)) = socket.next().await {}
    harness.wait_until_gone("alice").await;
    harness.stop().await;
}
