//! The demo `natter dev` serves beside the services, so a newcomer sees the
//! whole product in a minute: a sample business website with the chat
//! widget on it (`GET /`), and an agent console where a person answers as
//! the business (`GET /agent`, `/agent?as=agent-2` for the second agent).
//!
//! It plays the business, and only through Natter's public surfaces: its
//! website loads the widget from the gateway's `/widget.js`; its sign-in is
//! a cookie holding a name; and its backend is the token endpoint the
//! widget calls (`POST /natter-token`), a client of the public gRPC API
//! (`natter.v1.ConversationService` on the storage address,
//! `natter.v1.DeskService` on the desk's) with a service-role token,
//! minting tokens with the development secret exactly as a business
//! backend mints them with its own.
//!
//! At start-up it sets up the support desk: a team (`support`) with a few
//! canned replies and a satisfaction survey, two agents (`agent`,
//! `agent-2`) who take up to three conversations each, and the sample shop
//! FAQ; then it runs the FAQ bot (`natter-faqbot`) as its bot, over the
//! gateway like any business's bot. Until the desk has answered, both
//! token endpoints answer 503: a customer who asked for a person before
//! the desk knew its team would never be routed.
//!
//! The token endpoint's rules, which a real business would choose itself:
//!
//! - A guest (no sign-in cookie) gets a guest id (`guest-…`) unless it sent
//!   one, and the guest's newest conversation, or a new one: the guest as
//!   customer and the demo bot (`bot`), which greets with quick replies,
//!   one of them asking for a person, and answers questions from the FAQ.
//!   Agents join through the desk.
//! - A signed-in visitor (`user-<name>`) who sends a guest id has the
//!   guest's conversations with more than the greeting linked to them: the
//!   known user is added as a member, so the whole history comes along and
//!   shows on all their devices. They then get their own newest
//!   conversation, or a new one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use natter_auth::{Identity, Signer};
use natter_contract::Backoff;
use natter_core::{Role, TenantId, UserId};
use natter_proto::v1::conversation_service_client::ConversationServiceClient;
use natter_proto::v1::desk_service_client::DeskServiceClient;
use natter_proto::v1::message_content::Kind;
use natter_proto::v1::{
    AddMembersRequest, Agent, CannedReply, Conversation, CreateConversationRequest, FaqEntry,
    ListConversationsRequest, ListMembersRequest, MergeContactsRequest, MessageContent, NewMember,
    PutAgentRequest, PutFaqEntryRequest, PutTeamRequest, QuickReplies, QuickReply, RoutingStrategy,
    SendMessageRequest, Team,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const INDEX_HTML: &str = include_str!("../../../web/demo/index.html");
const AGENT_HTML: &str = include_str!("../../../web/demo/agent.html");
const JS: &str = "text/javascript; charset=utf-8";
/// The files the pages load, by path: what type, what body.
const FILES: [(&str, &str, &str); 5] = [
    ("/agent.js", JS, include_str!("../../../web/demo/agent.js")),
    (
        "/analytics.js",
        JS,
        include_str!("../../../web/demo/analytics.js"),
    ),
    // The console's charts: uPlot (MIT), vendored as released.
    (
        "/uplot.js",
        JS,
        include_str!("../../../web/vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "/uplot.css",
        "text/css; charset=utf-8",
        include_str!("../../../web/vendor/uplot/uPlot.min.css"),
    ),
    (
        "/trail-tent.svg",
        "image/svg+xml",
        include_str!("../../../web/demo/trail-tent.svg"),
    ),
];

/// The demo business.
const TENANT: &str = "demo";
/// The desk's one team, and the people who answer in the agent console
/// (the first unless the console asks for another).
const TEAM: &str = "support";
const AGENTS: [&str; 2] = ["agent", "agent-2"];
/// The team's ready answers, by shortcut, for the console's composer.
const CANNED_REPLIES: [(&str, &str); 4] = [
    (
        "/hello",
        "Hi, thanks for contacting Acme Outdoor! How can I help you today?",
    ),
    (
        "/refund",
        "Sorry it didn't work out! Anything unused can come back within 30 days for a full \
         refund. Send me your order number and I'll start the return right away.",
    ),
    (
        "/shipping",
        "Orders leave our warehouse within one business day and arrive in 3 to 5 days; \
         the tracking link comes by email as soon as yours ships.",
    ),
    (
        "/bye",
        "Glad I could help. Enjoy the trail, and write any time if anything comes up!",
    ),
];
/// How many conversations each agent takes at once.
const AGENT_CAPACITY: u32 = 3;
/// The bot that greets every new conversation.
const BOT: &str = "bot";
/// The business backend's own identity, with the service role.
const BACKEND: &str = "acme-backend";
/// The demo site's sign-in cookie: the signed-in visitor's name.
const SIGN_IN_COOKIE: &str = "natter_demo_user";
/// How long visitors' and the agent's tokens are valid; the widget asks
/// for a new one when its token expires.
const VISITOR_TOKEN_SECONDS: u64 = 3600;
const AGENT_TOKEN_SECONDS: u64 = 12 * 3600;
/// How long the demo's FAQ bot's token is valid: within the maximum token
/// lifetime (a day by default). The bot connects again with it whenever
/// its session drops, and starts over with a new token every
/// [`BOT_SESSION`], before the token (and so the session) expires.
const BOT_TOKEN_SECONDS: u64 = 12 * 3600;
const BOT_SESSION: Duration = Duration::from_secs(11 * 3600);
/// The FAQ the demo's bot answers from: the sample shop FAQ the FAQ
/// bot's accuracy is measured on.
const SAMPLE_FAQ: &str = include_str!("../../../crates/faq/data/shop.json");
/// Guest conversations looked at when a visitor signs in.
const MAX_LINKED: u32 = 20;

/// Where the demo finds the services it is a client of.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The storage service's gRPC address (`ConversationService`).
    pub(crate) storage: SocketAddr,
    /// The desk's gRPC address (`DeskService`).
    pub(crate) desk: SocketAddr,
    /// The gateway's HTTP address (`/widget.js`, `/v1/connect`).
    pub(crate) gateway_http: SocketAddr,
    /// The gateway's gRPC address, where the demo's FAQ bot connects.
    pub(crate) gateway_grpc: SocketAddr,
    /// The HS256 secret Natter verifies tokens with.
    pub(crate) secret: String,
}

#[derive(Debug, Clone)]
struct Demo {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    signer: Signer,
    tenant: TenantId,
    conversations: ConversationServiceClient<Channel>,
    desk: DeskServiceClient<Channel>,
    /// Whether the desk knows the demo's team and agents.
    desk_ready: AtomicBool,
    gateway_http: SocketAddr,
}

/// Serves the demo on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), std::io::Error> {
    let channel = |addr: SocketAddr| {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map(|endpoint| endpoint.connect_lazy())
            .map_err(std::io::Error::other)
    };
    let demo = Demo {
        inner: Arc::new(Inner {
            signer: Signer::hs256(config.secret.as_bytes()),
            tenant: TenantId::new(TENANT).map_err(std::io::Error::other)?,
            conversations: ConversationServiceClient::new(channel(config.storage)?),
            desk: DeskServiceClient::new(channel(config.desk)?),
            desk_ready: AtomicBool::new(false),
            gateway_http: config.gateway_http,
        }),
    };
    let mut router = Router::new()
        .route("/", get(index))
        .route("/agent", get(agent_page))
        .route("/agent-token", get(agent_token))
        .route("/natter-token", post(natter_token))
        .with_state(demo.clone());
    for (path, content_type, body) in FILES {
        router = router.route(path, get(move || async move { page(content_type, body) }));
    }
    let serve =
        axum::serve(listener, router).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let bot = async {
        demo.set_up_desk(&shutdown).await;
        demo.run_faq_bot(config.gateway_grpc, &shutdown).await;
    };
    let ((), served) = tokio::join!(bot, serve);
    served
}

/// The host a browser reaches the gateway at: its bound address, or, when
/// it listens on every interface, the host the demo page was loaded from.
fn gateway_origin(demo: &Demo, headers: &HeaderMap) -> String {
    let addr = demo.inner.gateway_http;
    let host = if addr.ip().is_unspecified() {
        let requested = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("127.0.0.1");
        // Strip the port, keeping an IPv6 literal's brackets.
        match requested.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => host.to_owned(),
            _ => requested.to_owned(),
        }
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    format!("{host}:{}", addr.port())
}

fn page(content_type: &'static str, body: impl IntoResponse) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

async fn index(State(demo): State<Demo>, headers: HeaderMap) -> Response {
    let src = format!("http://{}/widget.js", gateway_origin(&demo, &headers));
    page(
        "text/html; charset=utf-8",
        INDEX_HTML.replace("{{WIDGET_SRC}}", &src),
    )
}

async fn agent_page(State(demo): State<Demo>, headers: HeaderMap) -> Response {
    let ws = format!("ws://{}/v1/connect", gateway_origin(&demo, &headers));
    page(
        "text/html; charset=utf-8",
        AGENT_HTML.replace("{{GATEWAY_WS}}", &ws),
    )
}

/// What the token endpoint answers; the widget's contract.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenAnswer {
    token: String,
    user_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    conversation_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    guest_id: String,
    /// Other ids the visitor wrote under in this conversation (the guests
    /// they were on other devices), so the widget shows those messages as
    /// theirs too. Optional in the contract.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    aliases: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct TokenRequest {
    guest_id: String,
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_string(body) {
        Ok(text) => (
            status,
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            text,
        )
            .into_response(),
        Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn failure(status: StatusCode, message: &str) -> Response {
    (status, format!("{message}\n")).into_response()
}

/// `GET /agent-token?as=<agent>`: the agent console's token, for the
/// first agent unless `as` names another. A real agent console would sign
/// its agents in first; the demo trusts whoever opens it.
async fn agent_token(State(demo): State<Demo>, RawQuery(query): RawQuery) -> Response {
    let Some(agent) = agent_named(query.as_deref().unwrap_or_default()) else {
        return failure(StatusCode::NOT_FOUND, "no such agent");
    };
    if let Some(unready) = demo.unready() {
        return unready;
    }
    match demo.token(agent, Role::Agent, AGENT_TOKEN_SECONDS) {
        Ok(token) => json(
            StatusCode::OK,
            &TokenAnswer {
                token,
                user_id: agent.into(),
                conversation_id: String::new(),
                guest_id: String::new(),
                aliases: Vec::new(),
            },
        ),
        Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

/// `POST /natter-token`: the business's token endpoint (see the module
/// documentation for its rules).
#[tracing::instrument(skip_all)]
async fn natter_token(State(demo): State<Demo>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(unready) = demo.unready() {
        return unready;
    }
    let request: TokenRequest = if body.is_empty() {
        TokenRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => return failure(StatusCode::BAD_REQUEST, &format!("bad request: {e}")),
        }
    };
    match demo.visitor(signed_in(&headers), request.guest_id).await {
        Ok(answer) => json(StatusCode::OK, &answer),
        Err(e) => {
            tracing::warn!(error = %e, "demo token endpoint failed");
            failure(StatusCode::BAD_GATEWAY, &e)
        }
    }
}

/// The demo agent a query string's `as` names, the first when it names
/// none.
fn agent_named(query: &str) -> Option<&'static str> {
    let wanted = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("as="))
        .unwrap_or(AGENTS[0]);
    AGENTS.into_iter().find(|agent| *agent == wanted)
}

/// The signed-in visitor's user id, from the demo's sign-in cookie.
fn signed_in(headers: &HeaderMap) -> Option<String> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    let value = cookies.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == SIGN_IN_COOKIE).then_some(value)
    })?;
    let name: String = percent_decode(value)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(40)
        .collect::<String>()
        .to_ascii_lowercase();
    (!name.is_empty()).then(|| format!("user-{name}"))
}

/// Decodes `%XX` escapes (what `encodeURIComponent` produces); anything
/// else passes through.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The sample FAQ as the desk keeps it.
fn sample_faq() -> DemoResult<Vec<FaqEntry>> {
    #[derive(Deserialize)]
    struct Sample {
        id: String,
        questions: Vec<String>,
        answer: String,
    }
    let sample: Vec<Sample> =
        serde_json::from_str(SAMPLE_FAQ).map_err(|e| format!("the sample faq: {e}"))?;
    Ok(sample
        .into_iter()
        .map(|s| FaqEntry {
            entry_id: s.id,
            questions: s.questions,
            answer: s.answer,
        })
        .collect())
}

/// A guest id the demo minted, or a new one.
fn guest_id(given: &str) -> String {
    let valid = given.len() <= 64
        && given
            .strip_prefix("guest-")
            .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_hexdigit()));
    if valid {
        given.to_owned()
    } else {
        format!("guest-{}", uuid::Uuid::new_v4().simple())
    }
}

type DemoResult<T> = Result<T, String>;

impl Demo {
    /// Sets up the demo's desk, retrying until the desk answers (it starts
    /// with the demo) or `shutdown`.
    async fn set_up_desk(&self, shutdown: &CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !shutdown.is_cancelled() {
            match self.put_desk().await {
                Ok(()) => {
                    self.inner.desk_ready.store(true, Ordering::Release);
                    tracing::info!(team = TEAM, agents = ?AGENTS, "the demo's desk is set up");
                    return;
                }
                Err(e) => {
                    tracing::info!(error = %e, "cannot set up the demo's desk yet; retrying");
                    backoff.wait(shutdown).await;
                }
            }
        }
    }

    async fn put_desk(&self) -> DemoResult<()> {
        let team = PutTeamRequest {
            team: Some(Team {
                team_id: TEAM.into(),
                name: "Support".into(),
                strategy: RoutingStrategy::LeastBusy.into(),
                canned_replies: CANNED_REPLIES
                    .iter()
                    .map(|&(shortcut, text)| CannedReply {
                        shortcut: shortcut.into(),
                        text: text.into(),
                    })
                    .collect(),
                // The customer rates each resolved conversation; a first
                // reply within two minutes is on time.
                csat: true,
                first_response_target_seconds: 120,
                ..Team::default()
            }),
        };
        let mut desk = self.inner.desk.clone();
        desk.put_team(self.call(team, BACKEND, Role::Service)?)
            .await
            .map_err(|e| format!("PutTeam: {}", e.message()))?;
        for agent in AGENTS {
            let request = PutAgentRequest {
                agent: Some(Agent {
                    user_id: agent.into(),
                    team_ids: vec![TEAM.into()],
                    skills: Vec::new(),
                    capacity: AGENT_CAPACITY,
                }),
            };
            desk.put_agent(self.call(request, BACKEND, Role::Service)?)
                .await
                .map_err(|e| format!("PutAgent: {}", e.message()))?;
        }
        for entry in sample_faq()? {
            let request = PutFaqEntryRequest { entry: Some(entry) };
            desk.put_faq_entry(self.call(request, BACKEND, Role::Service)?)
                .await
                .map_err(|e| format!("PutFaqEntry: {}", e.message()))?;
        }
        Ok(())
    }

    /// Runs the FAQ bot as the demo's bot until `shutdown`, connecting
    /// again if it cannot at first.
    async fn run_faq_bot(&self, gateway: SocketAddr, shutdown: &CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !shutdown.is_cancelled() {
            let token = match self.token(BOT, Role::Bot, BOT_TOKEN_SECONDS) {
                Ok(token) => token,
                Err(e) => return tracing::warn!(error = %e, "the demo's bot has no token"),
            };
            let config = natter_faqbot::Config {
                bot: natter_bot::Config {
                    device_id: "demo-faqbot".into(),
                    ..natter_bot::Config::new(format!("http://{gateway}"), token)
                },
                refresh: Duration::from_secs(30),
            };
            let session = shutdown.child_token();
            let renew = tokio::spawn({
                let session = session.clone();
                async move {
                    tokio::time::sleep(BOT_SESSION).await;
                    session.cancel();
                }
            });
            let ran = natter_faqbot::run(config, session).await;
            renew.abort();
            match ran {
                // Stopped, or time for a new token.
                Ok(()) if shutdown.is_cancelled() => return,
                Ok(()) => {
                    backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
                }
                Err(e) => {
                    tracing::info!(error = %e, "the demo's faq bot cannot connect yet; retrying");
                    backoff.wait(shutdown).await;
                }
            }
        }
    }

    /// A 503 while the desk is not set up.
    fn unready(&self) -> Option<Response> {
        (!self.inner.desk_ready.load(Ordering::Acquire)).then(|| {
            failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "the support desk is not set up yet",
            )
        })
    }

    fn token(&self, user: &str, role: Role, ttl_seconds: u64) -> DemoResult<String> {
        let identity = Identity {
            tenant: self.inner.tenant.clone(),
            user: UserId::new(user).map_err(|e| e.to_string())?,
            role,
        };
        self.inner
            .signer
            .token(&identity, ttl_seconds)
            .map_err(|e| e.to_string())
    }

    /// A request to the public API as `user` (with `role`).
    fn call<T>(&self, message: T, user: &str, role: Role) -> DemoResult<tonic::Request<T>> {
        let token = self.token(user, role, 300)?;
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .map_err(|e| format!("token is not ascii: {e}"))?,
        );
        Ok(request)
    }

    /// The token endpoint's answer for a visitor.
    async fn visitor(
        &self,
        signed_in: Option<String>,
        guest_id: String,
    ) -> DemoResult<TokenAnswer> {
        let guest =
            (!guest_id.is_empty() || signed_in.is_none()).then(|| self::guest_id(&guest_id));
        let user = match (&signed_in, &guest) {
            (Some(user), Some(guest)) => {
                self.link(guest, user).await?;
                user.clone()
            }
            (Some(user), None) => user.clone(),
            (None, Some(guest)) => guest.clone(),
            (None, None) => return Err("no visitor".into()),
        };
        let conversation = match self.newest(&user).await? {
            Some(conversation) => conversation.conversation_id,
            None => self.start(&user).await?,
        };
        let aliases = if signed_in.is_some() {
            self.customers(&conversation)
                .await?
                .into_iter()
                .filter(|customer| *customer != user)
                .collect()
        } else {
            Vec::new()
        };
        Ok(TokenAnswer {
            token: self.token(&user, Role::Customer, VISITOR_TOKEN_SECONDS)?,
            user_id: user,
            conversation_id: conversation,
            guest_id: guest.unwrap_or_default(),
            aliases,
        })
    }

    /// The customers of a conversation: in the demo's one-visitor
    /// conversations, the visitor under each id they were linked from.
    async fn customers(&self, conversation_id: &str) -> DemoResult<Vec<String>> {
        let request = ListMembersRequest {
            conversation_id: conversation_id.to_owned(),
            page_size: 100,
            page_token: String::new(),
        };
        let answer = self
            .inner
            .conversations
            .clone()
            .list_members(self.call(request, BACKEND, Role::Service)?)
            .await
            .map_err(|e| format!("ListMembers: {}", e.message()))?;
        Ok(answer
            .into_inner()
            .members
            .into_iter()
            .filter(|member| member.role == natter_proto::v1::Role::Customer as i32)
            .map(|member| member.user_id)
            .collect())
    }

    async fn conversations(&self, user: &str, page_size: u32) -> DemoResult<Vec<Conversation>> {
        let request = ListConversationsRequest {
            page_size,
            page_token: String::new(),
            user_id: user.to_owned(),
        };
        let answer = self
            .inner
            .conversations
            .clone()
            .list_conversations(self.call(request, BACKEND, Role::Service)?)
            .await
            .map_err(|e| format!("ListConversations: {}", e.message()))?;
        Ok(answer.into_inner().conversations)
    }

    async fn newest(&self, user: &str) -> DemoResult<Option<Conversation>> {
        Ok(self.conversations(user, 1).await?.into_iter().next())
    }

    /// Adds `user` to the guest's conversations that hold more than the
    /// bot's greeting (a member already is left as it is), and merges the
    /// guest's contact into the user's, so what the guest told a lead form
    /// stays known.
    async fn link(&self, guest: &str, user: &str) -> DemoResult<()> {
        let merge = MergeContactsRequest {
            from_user_id: guest.to_owned(),
            into_user_id: user.to_owned(),
        };
        self.inner
            .desk
            .clone()
            .merge_contacts(self.call(merge, BACKEND, Role::Service)?)
            .await
            .map_err(|e| format!("MergeContacts: {}", e.message()))?;
        for conversation in self.conversations(guest, MAX_LINKED).await? {
            if conversation.last_seq <= 1 {
                continue;
            }
            let request = AddMembersRequest {
                conversation_id: conversation.conversation_id.clone(),
                members: vec![NewMember {
                    user_id: user.to_owned(),
                    role: natter_proto::v1::Role::Customer as i32,
                }],
            };
            self.inner
                .conversations
                .clone()
                .add_members(self.call(request, BACKEND, Role::Service)?)
                .await
                .map_err(|e| format!("AddMembers: {}", e.message()))?;
            tracing::info!(%guest, %user, conversation = %conversation.conversation_id, "linked a guest conversation");
        }
        Ok(())
    }

    /// Opens a conversation for `visitor` with the bot, and has the bot
    /// greet; agents join when the desk assigns it.
    async fn start(&self, visitor: &str) -> DemoResult<String> {
        let member = |user: &str, role: natter_proto::v1::Role| NewMember {
            user_id: user.to_owned(),
            role: role as i32,
        };
        let request = CreateConversationRequest {
            conversation_id: String::new(),
            subject: "Website chat".into(),
            members: vec![
                member(visitor, natter_proto::v1::Role::Customer),
                member(BOT, natter_proto::v1::Role::Bot),
            ],
        };
        let created = self
            .inner
            .conversations
            .clone()
            .create_conversation(self.call(request, BACKEND, Role::Service)?)
            .await
            .map_err(|e| format!("CreateConversation: {}", e.message()))?
            .into_inner()
            .conversation
            .ok_or("CreateConversation answered no conversation")?;
        let reply = |title: &str, payload: &str| QuickReply {
            title: title.into(),
            payload: payload.into(),
        };
        let greeting = SendMessageRequest {
            conversation_id: created.conversation_id.clone(),
            client_message_id: "greeting".into(),
            content: Some(MessageContent {
                kind: Some(Kind::QuickReplies(QuickReplies {
                    text: "Hi, I'm Acme's assistant. What can we help you with?".into(),
                    replies: vec![
                        reply("Track my order", "track-order"),
                        reply("Returns", "returns"),
                        // The payload that asks the desk for a person.
                        reply("Talk to a person", "natter:person"),
                    ],
                })),
            }),
        };
        self.inner
            .conversations
            .clone()
            .send_message(self.call(greeting, BOT, Role::Bot)?)
            .await
            .map_err(|e| format!("SendMessage: {}", e.message()))?;
        tracing::info!(%visitor, conversation = %created.conversation_id, "started a conversation");
        Ok(created.conversation_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sign_in_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; natter_demo_user=Alice%20Smith; c=d"),
        );
        assert_eq!(signed_in(&headers).as_deref(), Some("user-alicesmith"));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("natter_demo_user="),
        );
        assert_eq!(signed_in(&headers), None);
        assert_eq!(signed_in(&HeaderMap::new()), None);
    }

    #[test]
    fn keeps_valid_guest_ids_and_mints_others() {
        assert_eq!(guest_id("guest-0a1b"), "guest-0a1b");
        for bad in ["", "guest-", "agent", "guest-a b", "guest-zz"] {
            let minted = guest_id(bad);
            assert!(
                minted.starts_with("guest-") && minted.len() == 38,
                "{minted}"
            );
        }
    }

    #[test]
    fn signs_in_as_a_demo_agent_only() {
        assert_eq!(agent_named(""), Some("agent"));
        assert_eq!(agent_named("as=agent-2"), Some("agent-2"));
        assert_eq!(agent_named("x=1&as=agent"), Some("agent"));
        assert_eq!(agent_named("as=bot"), None);
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("a%20b%2"), "a b%2");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }
}
