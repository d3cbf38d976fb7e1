//! The gRPC transport: `natter.v1.GatewayService/Connect`.
//!
//! Frames arrive and leave as protobuf; tonic decodes them and bounds their
//! size (`gateway.max_frame_bytes`). A session that fails ends the response
//! stream with its status at once, ahead of frames still queued (the
//! device reconnects and catches up). The device closing its side of the
//! stream ends the session: what is queued is sent, then OK.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use futures::{FutureExt, Stream, StreamExt};
use natter_proto::status;
use natter_proto::v1::gateway_service_server::{GatewayService, GatewayServiceServer};
use natter_proto::v1::{ClientFrame, ServerFrame};
use tokio::sync::oneshot;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::Shared;
use crate::outbound::{self, Frames};
use crate::session::{self, Inbound};
use crate::stop::shutting_down;

/// The `GatewayService` implementation.
#[derive(Debug, Clone)]
pub struct GatewayGrpc {
    shared: Arc<Shared>,
}

pub(crate) fn service(shared: Arc<Shared>) -> GatewayServiceServer<GatewayGrpc> {
    let max_frame_bytes = shared.config.max_frame_bytes;
    GatewayServiceServer::new(GatewayGrpc { shared }).max_decoding_message_size(max_frame_bytes)
}

/// The token of `authorization: Bearer <jwt>` metadata, if any.
fn bearer(metadata: &MetadataMap) -> Option<String> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

#[tonic::async_trait]
impl GatewayService for GatewayGrpc {
    type ConnectStream = ConnectStream;

    async fn connect(
        &self,
        request: Request<Streaming<ClientFrame>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        if self.shared.shutdown.is_cancelled() {
            return Err(shutting_down());
        }
        let token = bearer(request.metadata());
        let streaming = request.into_inner();
        let (outbound, frames) = outbound::channel(self.shared.config.outbound_queue);
        let (end_tx, end_rx) = oneshot::channel();
        let shared = self.shared.clone();
        self.shared.sessions.spawn(async move {
            let broken = OnceLock::new();
            let inbound = Incoming {
                streaming,
                broken: &broken,
            };
            let result = session::run(shared, "grpc", inbound, outbound, token).await;
            // A stream that broke (undecodable or oversized frame) ends
            // with what tonic reported, and a reason.
            let result = match broken.into_inner() {
                Some(status) => Err(status),
                None => result,
            };
            let _ = end_tx.send(result);
        });
        Ok(Response::new(ConnectStream {
            frames,
            end: Some(end_rx),
            finished: false,
        }))
    }
}

/// Client frames as the session takes them. tonic cannot go on after a
/// frame it fails to decode, so the first error ends the stream and is
/// kept in `broken`.
struct Incoming<'a> {
    streaming: Streaming<ClientFrame>,
    broken: &'a OnceLock<Status>,
}

impl Stream for Incoming<'_> {
    type Item = Inbound;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        match ready!(self.streaming.poll_next_unpin(cx)) {
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            Some(Err(status)) => {
                tracing::debug!(code = ?status.code(), message = status.message(), "client stream broke");
                let _ = self.broken.set(status::frame_unreadable(&status));
                Poll::Ready(None)
            }
            None => Poll::Ready(None),
        }
    }
}

/// The response stream: queued frames, then the session's end.
pub struct ConnectStream {
    frames: Frames,
    end: Option<oneshot::Receiver<Result<(), Status>>>,
    finished: bool,
}

impl std::fmt::Debug for ConnectStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectStream").finish_non_exhaustive()
    }
}

impl Stream for ConnectStream {
    type Item = Result<ServerFrame, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some(end) = &mut this.end
            && let Poll::Ready(result) = end.poll_unpin(cx)
        {
            this.end = None;
            if let Ok(Err(status)) = result {
                this.finished = true;
                return Poll::Ready(Some(Err(status)));
            }
        }
        match ready!(this.frames.poll_recv(cx)) {
            Some(frame) => Poll::Ready(Some(Ok(*frame))),
            None if this.end.is_none() => {
                this.finished = true;
                Poll::Ready(None)
            }
            // The session is ending; its result wakes us through `end`.
            None => Poll::Pending,
        }
    }
}
