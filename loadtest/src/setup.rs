//! What a run needs before it connects: tokens for its users, and its
//! conversations, created through the storage service's public API as any
//! backend of the business would.

use std::time::Duration;

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use natter_auth::{Identity, Signer, Verifier};
use natter_core::{Role, TenantId, UserId};
use natter_proto::v1::conversation_service_client::ConversationServiceClient;
use natter_proto::v1::{CreateConversationRequest, NewMember};
use tonic::transport::Channel;

/// Conversations being created at once.
const CREATE_CONCURRENCY: usize = 16;

/// How long one `CreateConversation` may take.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Mints HS256 tokens with the claims `natter_auth::Signer` writes.
#[derive(Debug)]
pub(crate) struct Minter {
    signer: Signer,
    tenant: TenantId,
    ttl_seconds: u64,
}

impl Minter {
    /// Tokens for users of `tenant`, valid for `ttl`.
    pub(crate) fn new(secret: &str, tenant: &str, ttl: Duration) -> anyhow::Result<Minter> {
        let tenant = TenantId::new(tenant).context("--tenant")?;
        let minter = Minter {
            signer: Signer::hs256(secret.as_bytes()),
            tenant,
            ttl_seconds: ttl.as_secs().max(60),
        };
        // Fail here, not with ten thousand refused hellos, if the server
        // could not accept what is minted.
        let verifier = Verifier::hs256(secret.as_bytes()).context("--secret")?;
        let probe = minter.token("natter-load", Role::Customer)?;
        verifier
            .verify(&probe)
            .context("--secret: a minted token does not verify")?;
        Ok(minter)
    }

    pub(crate) fn token(&self, user: &str, role: Role) -> anyhow::Result<String> {
        let identity = Identity {
            tenant: self.tenant.clone(),
            user: UserId::new(user).with_context(|| format!("user id {user:?}"))?,
            role,
        };
        self.signer
            .token(&identity, self.ttl_seconds)
            .context("cannot sign a token")
    }
}

/// A conversation of one customer and one agent.
#[derive(Debug, Clone)]
pub(crate) struct Pair {
    pub(crate) customer: String,
    pub(crate) agent: String,
}

/// Creates one conversation per pair through `ConversationService` at
/// `storage` with a service-role token; returns their ids in pair order.
pub(crate) async fn create_conversations(
    storage: &str,
    minter: &Minter,
    pairs: &[Pair],
) -> anyhow::Result<Vec<String>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{storage}"))
        .with_context(|| format!("--storage {storage:?} must be host:port"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(CREATE_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("cannot connect to the storage service at {storage}"))?;
    let bearer = format!("Bearer {}", minter.token("natter-load", Role::Service)?);
    let bearer: tonic::metadata::MetadataValue<_> = bearer
        .parse()
        .context("a token is not a valid header value")?;
    futures::stream::iter(pairs.iter().enumerate())
        .map(|(i, pair)| {
            let client = ConversationServiceClient::new(channel.clone());
            create(client, bearer.clone(), i, pair)
        })
        .buffered(CREATE_CONCURRENCY)
        .try_collect()
        .await
}

async fn create(
    mut client: ConversationServiceClient<Channel>,
    bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    i: usize,
    pair: &Pair,
) -> anyhow::Result<String> {
    let member = |user: &str, role: Role| NewMember {
        user_id: user.to_owned(),
        role: natter_proto::v1::Role::from(role).into(),
    };
    let mut request = tonic::Request::new(CreateConversationRequest {
        conversation_id: String::new(),
        subject: format!("natter-load pair {i}"),
        members: vec![
            member(&pair.customer, Role::Customer),
            member(&pair.agent, Role::Agent),
        ],
    });
    request.metadata_mut().insert("authorization", bearer);
    let response = client
        .create_conversation(request)
        .await
        .map_err(|status| {
            anyhow::anyhow!(
                "CreateConversation for pair {i} failed: {:?}: {}",
                status.code(),
                status.message()
            )
        })?;
    response
        .into_inner()
        .conversation
        .map(|c| c.conversation_id)
        .with_context(|| format!("CreateConversation for pair {i} returned no conversation"))
}
