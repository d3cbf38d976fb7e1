//! What only the gRPC transport has: the token in metadata, tonic's own
//! frame size limit, and the standard health service beside the gateway.

// Helpers outside #[test] functions panic on the unexpected too.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use natter_proto::v1::server_frame::Frame;
use natter_proto::v1::{ClientFrame, Hello, client_frame};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt as _;

#[tokio::test]
async fn the_token_may_come_from_authorization_metadata() {
    let harness = Harness::start().await;
    let mut device = Device::connect(&harness, Transport::Grpc, Some(&token("alice"))).await;
    device
        .send(ClientFrame {
            frame: Some(client_frame::Frame::Hello(Hello {
                token: String::new(),
                device_id: "d1".into(),
                cursor: 0,
                device_label: String::new(),
            })),
        })
        .await;
    assert!(matches!(device.frame().await, Frame::Welcome(w) if w.user_id == "alice"));
    device.round_trip(1).await;
    harness.stop().await;
}

#[tokio::test]
async fn a_frame_over_the_limit_ends_the_stream() {
    let harness = Harness::start_with(|s| s.gateway.max_frame_bytes = 16 * 1024).await;
    let mut device = harness.open(Transport::Grpc, "alice", "d1", 0).await;
    let room = natter_core::ConversationId::generate();
    device
        .send(text_send(room, "c-1", &"x".repeat(20 * 1024)))
        .await;
    match device.ended().await {
        Ended::Status(status) => {
            assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
            let info = status.get_details_error_info().expect("an ErrorInfo");
            assert_eq!(info.reason, "FRAME_UNREADABLE");
        }
        other => panic!("expected a status, got {other:?}"),
    }
    harness.wait_until_gone("alice").await;
    harness.stop().await;
}

#[tokio::test]
async fn the_gateway_reports_serving_on_grpc_health() {
    let harness = Harness::start().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", harness.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "natter.v1.GatewayService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status(), ServingStatus::Serving);
    harness.stop().await;
}

#[tokio::test]
async fn a_client_that_hangs_up_ends_its_session() {
    let harness = Harness::start().await;
    let device = harness.open(Transport::Grpc, "alice", "d1", 0).await;
    assert!(harness.has_live_session("alice").await);
    drop(device);
    harness.wait_until_gone("alice").await;
    harness.stop().await;
}
