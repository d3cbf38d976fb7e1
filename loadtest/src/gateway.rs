//! Device sessions to the gateway, over WebSocket (`natter.v1.proto`) or
//! gRPC: open one (hello, welcome, the watches asked for), then send and
//! receive frames through its two halves, each owned by its own task so a
//! blocked write never holds up reading. Centrifugo, for comparison, is one
//! more kind of session whose frames `centrifugo.rs` translates.
//!
//! Every connection may be bound to a source address before it connects,
//! so one machine can hold more connections to one gateway than one
//! address has ephemeral ports.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt as _, StreamExt as _};
use natter_proto::v1::gateway_service_client::GatewayServiceClient;
use natter_proto::v1::server_frame::Frame as ServerKind;
use natter_proto::v1::{ClientFrame, Hello, ServerFrame, Watch, Welcome, client_frame};
use nix::sys::socket::{setsockopt, sockopt::IpBindAddressNoPort};
use prost::Message as _;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::centrifugo::{self, Incoming};
use crate::cli::TargetArgs;

/// The WebSocket subprotocol the load generator speaks.
const PROTOCOL: &str = "natter.v1.proto";

/// Bytes read from a WebSocket at a time. Server frames are small; the
/// default (128 KiB) would cost the load generator that much per idle
/// connection.
const WS_READ_BUFFER_BYTES: usize = 4096;

/// Client frames a gRPC session may queue before its sender waits.
const GRPC_OUTBOUND_FRAMES: usize = 16;

/// Where the gateway is.
#[derive(Debug, Clone)]
pub(crate) enum Gateway {
    Ws {
        url: String,
        addr: SocketAddr,
    },
    Grpc {
        addr: SocketAddr,
    },
    /// Not Natter: a Centrifugo server's JSON WebSocket endpoint.
    Centrifugo {
        url: String,
        addr: SocketAddr,
    },
}

impl Gateway {
    pub(crate) async fn resolve(target: &TargetArgs) -> anyhow::Result<Gateway> {
        if let Some(url) = &target.ws {
            let addr = ws_addr(url, "--ws").await?;
            Ok(Gateway::Ws {
                url: url.clone(),
                addr,
            })
        } else if let Some(url) = &target.centrifugo {
            let addr = ws_addr(url, "--centrifugo").await?;
            Ok(Gateway::Centrifugo {
                url: url.clone(),
                addr,
            })
        } else if let Some(grpc) = &target.grpc {
            let (host, port) = grpc
                .rsplit_once(':')
                .with_context(|| format!("--grpc {grpc:?} must be host:port"))?;
            let port: u16 = port
                .parse()
                .with_context(|| format!("--grpc {grpc:?} has a bad port"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let addr = resolve(host, port, "--grpc").await?;
            Ok(Gateway::Grpc { addr })
        } else {
            bail!("give the gateway's address with --ws, --grpc or --centrifugo")
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        match self {
            Gateway::Ws { addr, .. }
            | Gateway::Grpc { addr }
            | Gateway::Centrifugo { addr, .. } => *addr,
        }
    }

    pub(crate) fn is_centrifugo(&self) -> bool {
        matches!(self, Gateway::Centrifugo { .. })
    }
}

impl std::fmt::Display for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gateway::Ws { url, .. } => write!(f, "{url}"),
            Gateway::Grpc { addr } => write!(f, "grpc://{addr}"),
            Gateway::Centrifugo { url, .. } => write!(f, "centrifugo {url}"),
        }
    }
}

/// The address of a ws:// URL.
async fn ws_addr(url: &str, flag: &str) -> anyhow::Result<SocketAddr> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("{flag} {url:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => bail!("{flag}: wss:// is not supported yet; use ws://"),
        _ => bail!("{flag} {url:?} must start with ws://"),
    }
    let host = uri
        .host()
        .with_context(|| format!("{flag} {url:?} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    resolve(host, uri.port_u16().unwrap_or(80), flag).await
}

async fn resolve(host: &str, port: u16, flag: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("{flag}: cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{flag}: {host} has no address"))
}

/// Why a session ended, or could not open: short, so that equal causes
/// count together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Ended(pub(crate) String);

impl Ended {
    fn ws(error: &tungstenite::Error) -> Ended {
        match error {
            tungstenite::Error::Io(e) => Ended(format!("io: {}", e.kind())),
            other => Ended(format!("websocket: {other}")),
        }
    }

    fn grpc(status: &tonic::Status) -> Ended {
        Ended(format!("grpc {:?}: {}", status.code(), status.message()))
    }
}

/// Opens sessions to one gateway.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    gateway: Gateway,
    sources: Vec<Ipv4Addr>,
    timeout: Duration,
}

impl Connector {
    pub(crate) fn new(gateway: Gateway, target: &TargetArgs) -> anyhow::Result<Connector> {
        let sources: Vec<Ipv4Addr> = match target.source_addrs {
            // The operating system picks the source, as for any client.
            1 => Vec::new(),
            n => {
                let ip = gateway.addr().ip();
                anyhow::ensure!(
                    ip.is_loopback() && ip.is_ipv4(),
                    "--source-addrs uses 127.0.0.1..127.0.0.N, which only reach a gateway on an \
                     IPv4 loopback address, not {ip}"
                );
                (1..=n).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect()
            }
        };
        Ok(Connector {
            gateway,
            sources,
            timeout: target.connect_timeout,
        })
    }

    pub(crate) fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Connection `index` comes from source address `index mod N`.
    fn source(&self, index: u64) -> Option<IpAddr> {
        let n = self.sources.len() as u64;
        (n > 0).then(|| IpAddr::V4(self.sources[(index % n) as usize]))
    }

    /// Opens connection number `index`: connects, says `hello`, waits for
    /// the welcome and sends the `watch` frames (on Centrifugo: subscribes
    /// to their conversations' channels and waits for the answers), all
    /// within the connect timeout.
    pub(crate) async fn open(
        &self,
        index: u64,
        hello: Hello,
        watches: &[Watch],
    ) -> Result<Session, Ended> {
        let source = self.source(index);
        let opening = async {
            let (mut sink, mut stream) = match &self.gateway {
                Gateway::Ws { url, addr } => ws(url, *addr, source, hello).await?,
                Gateway::Grpc { addr } => grpc(*addr, source, self.timeout, hello).await?,
                Gateway::Centrifugo { url, addr } => {
                    return centrifugo_session(url, *addr, source, hello, watches).await;
                }
            };
            let welcome = match stream.next().await?.frame {
                Some(ServerKind::Welcome(welcome)) => welcome,
                Some(other) => {
                    return Err(Ended(format!(
                        "expected welcome, got {}",
                        frame_name(&other)
                    )));
                }
                None => return Err(Ended("expected welcome, got an empty frame".into())),
            };
            for watch in watches {
                sink.send(frame(client_frame::Frame::Watch(watch.clone())))
                    .await?;
            }
            Ok(Session {
                sink,
                stream,
                welcome,
            })
        };
        tokio::time::timeout(self.timeout, opening)
            .await
            .unwrap_or_else(|_| Err(Ended("timed out opening".into())))
    }
}

async fn ws(
    url: &str,
    addr: SocketAddr,
    source: Option<IpAddr>,
    hello: Hello,
) -> Result<(FrameSink, FrameStream), Ended> {
    let socket = ws_connect(url, addr, source, Some(PROTOCOL)).await?;
    let (sink, stream) = socket.split();
    let mut sink = FrameSink::Ws(sink);
    sink.send(frame(client_frame::Frame::Hello(hello))).await?;
    Ok((sink, FrameStream::Ws(stream)))
}

/// A WebSocket from `source` (if given) to `addr`, asking for `protocol`.
async fn ws_connect(
    url: &str,
    addr: SocketAddr,
    source: Option<IpAddr>,
    protocol: Option<&'static str>,
) -> Result<WebSocketStream<TcpStream>, Ended> {
    let io = |e: std::io::Error| Ended(format!("connect: {}", e.kind()));
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(io)?;
    if let Some(source) = source {
        // Binding port 0 reserves a port by searching every port bound on
        // the address, a cost that grows with the connections open: a
        // 10,000-device storm spent its time in the kernel's port search.
        // Without the reservation the port is picked at connect, by the
        // whole address pair.
        setsockopt(&socket, IpBindAddressNoPort, &true).map_err(|e| io(e.into()))?;
        socket.bind(SocketAddr::new(source, 0)).map_err(io)?;
    }
    let tcp = socket.connect(addr).await.map_err(io)?;
    tcp.set_nodelay(true).map_err(io)?;
    let mut request = url
        .into_client_request()
        .map_err(|e| Ended(format!("bad websocket request: {e}")))?;
    if let Some(protocol) = protocol {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(0);
    let (socket, response) =
        tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
            .await
            .map_err(|e| match e {
                tungstenite::Error::Http(response) => {
                    Ended(format!("websocket handshake: http {}", response.status()))
                }
                other => Ended::ws(&other),
            })?;
    let chosen = response.headers().get("sec-websocket-protocol");
    if protocol.is_some() && chosen.and_then(|v| v.to_str().ok()) != protocol {
        return Err(Ended(format!(
            "the gateway did not accept subprotocol {PROTOCOL}"
        )));
    }
    Ok(socket)
}

/// A Centrifugo session: connect with the hello's token, subscribe to the
/// watched conversations' channels, and wait until all are answered.
async fn centrifugo_session(
    url: &str,
    addr: SocketAddr,
    source: Option<IpAddr>,
    hello: Hello,
    watches: &[Watch],
) -> Result<Session, Ended> {
    let socket = ws_connect(url, addr, source, None).await?;
    let (sink, stream) = socket.split();
    let sink = Arc::new(Mutex::new(sink));
    let mut stream = CentrifugoStream {
        stream,
        sink: sink.clone(),
        queue: VecDeque::new(),
    };
    let send = |text: String| {
        let sink = sink.clone();
        async move {
            sink.lock()
                .await
                .send(Message::Text(text.into()))
                .await
                .map_err(|e| Ended::ws(&e))
        }
    };
    send(centrifugo::connect(&hello.token)).await?;
    stream.answer(centrifugo::CONNECT_ID).await?;
    if !watches.is_empty() {
        send(centrifugo::subscribe(
            watches.iter().map(|w| w.conversation_id.as_str()),
        ))
        .await?;
        for id in (centrifugo::SUBSCRIBE_BASE..).take(watches.len()) {
            stream.answer(id).await?;
        }
    }
    Ok(Session {
        sink: FrameSink::Centrifugo(sink),
        stream: FrameStream::Centrifugo(Box::new(stream)),
        // Centrifugo has no update log, hence no cursor.
        welcome: Welcome {
            user_id: String::new(),
            device_id: hello.device_id,
            cursor: 0,
        },
    })
}

async fn grpc(
    addr: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
    hello: Hello,
) -> Result<(FrameSink, FrameStream), Ended> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Ended(format!("bad grpc address: {e}")))?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .local_address(source);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Ended(format!("connect: {e}")))?;
    let (tx, rx) = mpsc::channel(GRPC_OUTBOUND_FRAMES);
    let mut sink = FrameSink::Grpc(tx);
    // Queued before the call, so the hello goes with the request headers.
    sink.send(frame(client_frame::Frame::Hello(hello))).await?;
    let response = GatewayServiceClient::new(channel)
        .connect(ReceiverStream::new(rx))
        .await
        .map_err(|status| Ended::grpc(&status))?;
    Ok((sink, FrameStream::Grpc(Box::new(response.into_inner()))))
}

pub(crate) fn frame(frame: client_frame::Frame) -> ClientFrame {
    ClientFrame { frame: Some(frame) }
}

pub(crate) fn frame_name(frame: &ServerKind) -> &'static str {
    match frame {
        ServerKind::Welcome(_) => "welcome",
        ServerKind::Update(_) => "update",
        ServerKind::SendAck(_) => "send_ack",
        ServerKind::Typing(_) => "typing",
        ServerKind::ResyncRequired(_) => "resync_required",
        ServerKind::Error(_) => "error",
        ServerKind::Pong(_) => "pong",
        ServerKind::Presence(_) => "presence",
        ServerKind::Message(_) => "message",
        ServerKind::Watching(_) => "watching",
        ServerKind::LifecycleUpdated(_) => "lifecycle_updated",
        ServerKind::DeskAnswer(_) => "desk_answer",
        ServerKind::DeskSignal(_) => "desk_signal",
    }
}

/// How long a session may take to say goodbye.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// An open session, ready to be split between a writer and a reader.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) sink: FrameSink,
    pub(crate) stream: FrameStream,
    pub(crate) welcome: Welcome,
}

type WsSink = SplitSink<WebSocketStream<TcpStream>, Message>;

/// The sending half of a session.
#[derive(Debug)]
pub(crate) enum FrameSink {
    Ws(WsSink),
    Grpc(mpsc::Sender<ClientFrame>),
    /// Shared with the reading half, which answers the server's pings.
    Centrifugo(Arc<Mutex<WsSink>>),
}

impl FrameSink {
    /// Sends one frame, waiting while the connection cannot take it.
    pub(crate) async fn send(&mut self, frame: ClientFrame) -> Result<(), Ended> {
        match self {
            FrameSink::Ws(sink) => sink
                .send(Message::Binary(frame.encode_to_vec().into()))
                .await
                .map_err(|e| Ended::ws(&e)),
            FrameSink::Grpc(tx) => tx
                .send(frame)
                .await
                .map_err(|_| Ended("grpc request stream closed".into())),
            FrameSink::Centrifugo(sink) => {
                // Only sends have a counterpart; cursor acks and the rest
                // are Natter's own.
                let Some(client_frame::Frame::Send(send)) = frame.frame else {
                    return Ok(());
                };
                let text = match send.content.and_then(|c| c.kind) {
                    Some(natter_proto::v1::message_content::Kind::Text(text)) => text,
                    _ => return Ok(()),
                };
                let command =
                    centrifugo::publish(&send.client_message_id, &send.conversation_id, &text)
                        .ok_or_else(|| Ended("a send centrifugo cannot number".into()))?;
                sink.lock()
                    .await
                    .send(Message::Text(command.into()))
                    .await
                    .map_err(|e| Ended::ws(&e))
            }
        }
    }

    /// Ends the session as a client app would: a WebSocket close frame, or
    /// the end of the gRPC request stream. Waits at most [`CLOSE_TIMEOUT`].
    pub(crate) async fn close(self) {
        let within = CLOSE_TIMEOUT;
        match self {
            FrameSink::Ws(mut sink) => {
                let _ = tokio::time::timeout(within, sink.close()).await;
            }
            FrameSink::Grpc(tx) => drop(tx),
            FrameSink::Centrifugo(sink) => {
                let _ =
                    tokio::time::timeout(within, async { sink.lock().await.close().await }).await;
            }
        }
    }
}

/// The receiving half of a session.
#[derive(Debug)]
pub(crate) enum FrameStream {
    Ws(SplitStream<WebSocketStream<TcpStream>>),
    /// Boxed: far larger than the WebSocket half, and idle runs hold
    /// many of the latter.
    Grpc(Box<tonic::Streaming<ServerFrame>>),
    Centrifugo(Box<CentrifugoStream>),
}

impl FrameStream {
    /// The next frame, or why the session ended.
    pub(crate) async fn next(&mut self) -> Result<ServerFrame, Ended> {
        match self {
            FrameStream::Ws(stream) => loop {
                match stream.next().await {
                    Some(Ok(Message::Binary(bytes))) => {
                        return ServerFrame::decode(bytes)
                            .map_err(|e| Ended(format!("undecodable frame: {e}")));
                    }
                    // Pings are answered by tungstenite; nothing else is
                    // expected on natter.v1.proto.
                    Some(Ok(Message::Close(close))) => return Err(closed(close)),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(Ended::ws(&e)),
                    None => return Err(Ended("connection dropped".into())),
                }
            },
            FrameStream::Centrifugo(stream) => loop {
                if let Some(kind) = stream
                    .next_incoming()
                    .await?
                    .and_then(centrifugo::server_frame)
                {
                    return Ok(ServerFrame { frame: Some(kind) });
                }
            },
            FrameStream::Grpc(stream) => match stream.message().await {
                Ok(Some(frame)) => Ok(frame),
                Ok(None) => Err(Ended("grpc stream ended".into())),
                Err(status) => Err(Ended::grpc(&status)),
            },
        }
    }
}

fn closed(close: Option<tungstenite::protocol::CloseFrame>) -> Ended {
    Ended(close.map_or_else(
        || "close 1005".to_owned(),
        |c| {
            // Natter's reason is "<ErrorInfo reason>: <message>"; the first
            // part names the cause.
            let cause = c.reason.split(':').next().unwrap_or_default();
            format!("close {} {cause}", u16::from(c.code))
        },
    ))
}

/// The reading half of a Centrifugo session: lines not yet handed out, and
/// the sink to answer pings on.
#[derive(Debug)]
pub(crate) struct CentrifugoStream {
    stream: SplitStream<WebSocketStream<TcpStream>>,
    sink: Arc<Mutex<WsSink>>,
    queue: VecDeque<Incoming>,
}

impl CentrifugoStream {
    /// The next line from the server, pings answered on the way; `None`
    /// for a frame that carried none.
    async fn next_incoming(&mut self) -> Result<Option<Incoming>, Ended> {
        loop {
            match self.queue.pop_front() {
                Some(Incoming::Ping) => {
                    self.sink
                        .lock()
                        .await
                        .send(Message::Text("{}".into()))
                        .await
                        .map_err(|e| Ended::ws(&e))?;
                }
                Some(Incoming::Disconnect { code, reason }) => {
                    return Err(Ended(format!("centrifugo disconnect {code} {reason}")));
                }
                Some(other) => return Ok(Some(other)),
                None => break,
            }
        }
        match self.stream.next().await {
            Some(Ok(Message::Text(text))) => {
                centrifugo::decode(&text, &mut self.queue).map_err(Ended)?;
                Ok(None)
            }
            Some(Ok(Message::Close(close))) => Err(closed(close)),
            Some(Ok(_)) => Ok(None),
            Some(Err(e)) => Err(Ended::ws(&e)),
            None => Err(Ended("connection dropped".into())),
        }
    }

    /// Waits for the answer to command `id`; an error answer ends the
    /// opening.
    async fn answer(&mut self, id: u32) -> Result<(), Ended> {
        loop {
            match self.next_incoming().await? {
                Some(Incoming::Reply { id: got, error }) if got == id => {
                    return match error {
                        None => Ok(()),
                        Some((code, message)) => {
                            Err(Ended(format!("centrifugo error {code}: {message}")))
                        }
                    };
                }
                _ => continue,
            }
        }
    }
}

/// Starts connection number `i` no earlier than `i / rate` seconds after
/// the pacer was made: an open-loop connect rate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacer {
    start: Instant,
    rate: f64,
}

impl Pacer {
    pub(crate) fn new(rate: f64) -> anyhow::Result<Pacer> {
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "--connect-rate must be above 0, not {rate}"
        );
        Ok(Pacer {
            start: Instant::now(),
            rate,
        })
    }

    pub(crate) async fn wait(&self, i: u64) {
        let due = Duration::try_from_secs_f64(i as f64 / self.rate).unwrap_or(Duration::MAX);
        if let Some(at) = self.start.checked_add(due) {
            tokio::time::sleep_until(at).await;
        }
    }
}
