//! A device as a client app would be: one session to the gateway over gRPC
//! or WebSocket, frames in and out, and helpers to wait for what a test
//! expects.

use std::collections::VecDeque;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use natter_proto::v1::client_frame::Frame as ClientKind;
use natter_proto::v1::gateway_service_client::GatewayServiceClient;
use natter_proto::v1::server_frame::Frame as ServerKind;
use natter_proto::v1::{
    ClientFrame, ErrorFrame, Event, Hello, Message, MessageContent, SendAck, ServerFrame, Update,
    Welcome, event, message_content,
};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::cluster::{Cluster, channel};

/// How long a test waits for a frame it expects.
pub const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    /// WebSocket, subprotocol `natter.v1.json`.
    WsJson,
    /// WebSocket, subprotocol `natter.v1.proto`.
    WsProto,
}

/// How a session ended: a gRPC status code or a WebSocket close code, and
/// the reason given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: i32,
    pub reason: String,
}

#[derive(Debug)]
enum Inbound {
    Frame(Box<ServerFrame>),
    Closed(Closed),
}

/// What a test may put on the wire, including what a correct client never
/// would.
#[derive(Debug)]
pub enum Outbound {
    Frame(ClientFrame),
    /// A raw WebSocket message (ignored on gRPC).
    Raw(tungstenite::Message),
}

#[derive(Debug)]
pub struct Device {
    out: mpsc::Sender<Outbound>,
    inbox: mpsc::Receiver<Inbound>,
    stash: VecDeque<ServerFrame>,
    pub welcome: Welcome,
    /// The cursor of the last update this device received.
    pub cursor: u64,
}

impl Device {
    /// Connects, says hello, and waits for the welcome.
    pub async fn connect(
        cluster: &Cluster,
        transport: Transport,
        token: &str,
        device_id: &str,
        cursor: u64,
    ) -> Result<Device, Closed> {
        let (out, inbox) = match transport {
            Transport::Grpc => grpc(cluster).await,
            Transport::WsJson | Transport::WsProto => ws(cluster, transport).await,
        };
        let mut device = Device {
            out,
            inbox,
            stash: VecDeque::new(),
            welcome: Welcome::default(),
            cursor,
        };
        device
            .send(ClientKind::Hello(Hello {
                token: token.into(),
                device_id: device_id.into(),
                cursor,
                device_label: format!("{transport:?}"),
            }))
            .await;
        match device.next().await {
            Inbound::Frame(frame) => match frame.frame {
                Some(ServerKind::Welcome(welcome)) => {
                    device.welcome = welcome;
                    Ok(device)
                }
                other => panic!("expected welcome, got {other:?}"),
            },
            Inbound::Closed(closed) => Err(closed),
        }
    }

    pub async fn send(&self, frame: ClientKind) {
        self.send_raw(Outbound::Frame(ClientFrame { frame: Some(frame) }))
            .await;
    }

    pub async fn send_raw(&self, outbound: Outbound) {
        let _ = self.out.send(outbound).await;
    }

    async fn next(&mut self) -> Inbound {
        match tokio::time::timeout(WAIT, self.inbox.recv()).await {
            Ok(Some(inbound)) => inbound,
            Ok(None) => Inbound::Closed(Closed {
                code: -1,
                reason: "transport ended".into(),
            }),
            Err(_) => panic!("no frame from the gateway within {WAIT:?}"),
        }
    }

    /// Waits for the first frame `pick` accepts; frames it passes over are
    /// kept for later waits.
    pub async fn expect<T>(&mut self, mut pick: impl FnMut(&ServerFrame) -> Option<T>) -> T {
        if let Some(i) = self.stash.iter().position(|f| pick(f).is_some()) {
            let frame = self.stash.remove(i).expect("index in range");
            return pick(&frame).expect("picked before");
        }
        loop {
            match self.next().await {
                Inbound::Frame(frame) => match pick(&frame) {
                    Some(found) => return found,
                    None => self.stash.push_back(*frame),
                },
                Inbound::Closed(closed) => panic!("session closed while waiting: {closed:?}"),
            }
        }
    }

    /// Waits for the session to end and returns how.
    pub async fn closed(&mut self) -> Closed {
        loop {
            if let Inbound::Closed(closed) = self.next().await {
                return closed;
            }
        }
    }

    /// Sends a text message and waits for its ack or error.
    pub async fn send_text(
        &mut self,
        conversation_id: &str,
        client_message_id: &str,
        text: &str,
    ) -> Result<SendAck, ErrorFrame> {
        self.send_content(
            conversation_id,
            client_message_id,
            MessageContent {
                kind: Some(message_content::Kind::Text(text.into())),
            },
        )
        .await
    }

    pub async fn send_content(
        &mut self,
        conversation_id: &str,
        client_message_id: &str,
        content: MessageContent,
    ) -> Result<SendAck, ErrorFrame> {
        self.send(ClientKind::Send(natter_proto::v1::Send {
            conversation_id: conversation_id.into(),
            client_message_id: client_message_id.into(),
            content: Some(content),
        }))
        .await;
        let key = client_message_id.to_owned();
        self.expect(|frame| match &frame.frame {
            Some(ServerKind::SendAck(ack)) if ack.client_message_id == key => Some(Ok(ack.clone())),
            Some(ServerKind::Error(error)) if error.client_message_id == key => {
                Some(Err(error.clone()))
            }
            _ => None,
        })
        .await
    }

    /// Waits for the next error frame.
    pub async fn error(&mut self) -> ErrorFrame {
        self.expect(|frame| match &frame.frame {
            Some(ServerKind::Error(error)) => Some(error.clone()),
            _ => None,
        })
        .await
    }

    /// The next `n` updates, checking they continue the cursor without gap
    /// or repeat.
    pub async fn updates(&mut self, n: usize) -> Vec<Update> {
        let mut updates = Vec::with_capacity(n);
        while updates.len() < n {
            let update = self
                .expect(|frame| match &frame.frame {
                    Some(ServerKind::Update(update)) => Some(update.clone()),
                    _ => None,
                })
                .await;
            assert_eq!(
                update.cursor,
                self.cursor + 1,
                "updates continue the cursor without gap or repeat"
            );
            self.cursor = update.cursor;
            updates.push(update);
        }
        updates
    }

    /// Reads updates until `n` new messages of `conversation_id` arrived;
    /// other updates (read markers, membership) are passed over.
    pub async fn messages(&mut self, conversation_id: &str, n: usize) -> Vec<Message> {
        let mut messages = Vec::with_capacity(n);
        while messages.len() < n {
            for update in self.updates(1).await {
                if let Some(message) = message_of(&update)
                    && message.conversation_id == conversation_id
                {
                    messages.push(message);
                }
            }
        }
        messages
    }

    /// Starts watching a conversation after `after_seq`.
    pub async fn watch(&self, conversation_id: &str, after_seq: u64) {
        self.send(ClientKind::Watch(natter_proto::v1::Watch {
            conversation_id: conversation_id.into(),
            after_seq,
        }))
        .await;
    }

    /// The next `n` messages of a watched conversation, checking that they
    /// continue from `after_seq` without gap or repeat.
    pub async fn watched(
        &mut self,
        conversation_id: &str,
        after_seq: u64,
        n: usize,
    ) -> Vec<Message> {
        let mut messages: Vec<Message> = Vec::with_capacity(n);
        while messages.len() < n {
            let message = self
                .expect(|frame| match &frame.frame {
                    Some(ServerKind::Message(m)) if m.conversation_id == conversation_id => {
                        Some(m.clone())
                    }
                    _ => None,
                })
                .await;
            let expected = messages.last().map_or(after_seq, |m| m.seq) + 1;
            assert_eq!(
                message.seq, expected,
                "watched messages continue without gap or repeat"
            );
            messages.push(message);
        }
        messages
    }

    /// Waits for `watching` of a conversation: its backlog is replayed.
    /// Returns the newest seq replayed.
    pub async fn watching(&mut self, conversation_id: &str) -> u64 {
        self.expect(|frame| match &frame.frame {
            Some(ServerKind::Watching(w)) if w.conversation_id == conversation_id => {
                Some(w.last_seq)
            }
            _ => None,
        })
        .await
    }

    /// Tells the gateway this device processed everything received.
    pub async fn ack(&self) {
        self.send(ClientKind::Ack(natter_proto::v1::Ack {
            cursor: self.cursor,
        }))
        .await;
    }
}

pub fn message_of(update: &Update) -> Option<Message> {
    match update.event.as_ref()?.kind.as_ref()? {
        event::Kind::Message(message) => Some(message.clone()),
        _ => None,
    }
}

pub fn event_kind(update: &Update) -> Option<&event::Kind> {
    update.event.as_ref().and_then(|e: &Event| e.kind.as_ref())
}

pub fn text_of(message: &Message) -> &str {
    match message.content.as_ref().and_then(|c| c.kind.as_ref()) {
        Some(message_content::Kind::Text(text)) => text,
        _ => "",
    }
}

async fn grpc(cluster: &Cluster) -> (mpsc::Sender<Outbound>, mpsc::Receiver<Inbound>) {
    let (out, mut outbound) = mpsc::channel::<Outbound>(64);
    let (frames_tx, frames_rx) = mpsc::channel::<ClientFrame>(64);
    tokio::spawn(async move {
        while let Some(item) = outbound.recv().await {
            if let Outbound::Frame(frame) = item
                && frames_tx.send(frame).await.is_err()
            {
                break;
            }
        }
    });
    let (inbound_tx, inbox) = mpsc::channel(4096);
    let mut client = GatewayServiceClient::new(channel(cluster.addrs.gateway_grpc).await);
    tokio::spawn(async move {
        let closed = match client.connect(ReceiverStream::new(frames_rx)).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(frame)) => {
                            if inbound_tx
                                .send(Inbound::Frame(Box::new(frame)))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Ok(None) => {
                            break Closed {
                                code: 0,
                                reason: "stream ended".into(),
                            };
                        }
                        Err(status) => {
                            break Closed {
                                code: status.code() as i32,
                                reason: status.message().into(),
                            };
                        }
                    }
                }
            }
            Err(status) => Closed {
                code: status.code() as i32,
                reason: status.message().into(),
            },
        };
        let _ = inbound_tx.send(Inbound::Closed(closed)).await;
    });
    (out, inbox)
}

async fn ws(
    cluster: &Cluster,
    transport: Transport,
) -> (mpsc::Sender<Outbound>, mpsc::Receiver<Inbound>) {
    let json = transport == Transport::WsJson;
    let url = format!("ws://{}/v1/connect", cluster.addrs.gateway_http);
    let mut request = url.into_client_request().expect("websocket request");
    let protocol = if json {
        "natter.v1.json"
    } else {
        "natter.v1.proto"
    };
    request.headers_mut().insert(
        "sec-websocket-protocol",
        protocol.parse().expect("header value"),
    );
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket connect");
    let (mut sink, mut stream) = socket.split();
    let (out, mut outbound) = mpsc::channel::<Outbound>(64);
    tokio::spawn(async move {
        while let Some(item) = outbound.recv().await {
            let message = match item {
                Outbound::Frame(frame) if json => tungstenite::Message::Text(
                    serde_json::to_string(&frame).expect("json frame").into(),
                ),
                Outbound::Frame(frame) => {
                    tungstenite::Message::Binary(frame.encode_to_vec().into())
                }
                Outbound::Raw(message) => message,
            };
            if sink.send(message).await.is_err() {
                break;
            }
        }
    });
    let (inbound_tx, inbox) = mpsc::channel(4096);
    tokio::spawn(async move {
        let closed = loop {
            let frame = match stream.next().await {
                Some(Ok(tungstenite::Message::Text(text))) => {
                    serde_json::from_str::<ServerFrame>(&text).expect("server sent valid json")
                }
                Some(Ok(tungstenite::Message::Binary(bytes))) => {
                    ServerFrame::decode(bytes).expect("server sent a valid frame")
                }
                Some(Ok(tungstenite::Message::Close(close))) => {
                    break close.map_or(
                        Closed {
                            code: 1005,
                            reason: String::new(),
                        },
                        |c| Closed {
                            code: i32::from(u16::from(c.code)),
                            reason: c.reason.to_string(),
                        },
                    );
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    break Closed {
                        code: -1,
                        reason: e.to_string(),
                    };
                }
                None => {
                    break Closed {
                        code: 1006,
                        reason: "connection dropped".into(),
                    };
                }
            };
            if inbound_tx
                .send(Inbound::Frame(Box::new(frame)))
                .await
                .is_err()
            {
                return;
            }
        };
        let _ = inbound_tx.send(Inbound::Closed(closed)).await;
    });
    (out, inbox)
}
