//! What a run needs before it connects: tokens for its users, and its
//! conversations, created through the storage service's public API as any
//! backend of the business would.

use std::time::Duration;

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use natter_auth::{Identity, Signer, Verifier};
use natter_core::{Role, TenantId, UserId};
use natter_proto::v1::conversation_service_client::ConversationServiceClient;
use natter_proto::v1::{AddMembersRequest, CreateConversationRequest, NewMember};
use tonic::metadata::{Ascii, MetadataValue};
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

/// Members a create or add request carries at most (Natter's default
/// `limits.max_members_per_request`).
const MEMBERS_PER_REQUEST: usize = 1000;

/// Creates one conversation per member list through `ConversationService`
/// at `storage` with a service-role token (members beyond the first
/// thousand added in batches); returns their ids in order.
pub(crate) async fn create_conversations(
    storage: &str,
    minter: &Minter,
    conversations: &[Vec<(String, Role)>],
) -> anyhow::Result<Vec<String>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{storage}"))
        .with_context(|| format!("--storage {storage:?} must be host:port"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(CREATE_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("cannot connect to the storage service at {storage}"))?;
    let bearer = format!("Bearer {}", minter.token("natter-load", Role::Service)?);
    let bearer: MetadataValue<Ascii> = bearer
        .parse()
        .context("a token is not a valid header value")?;
    futures::stream::iter(conversations.iter().enumerate())
        .map(|(i, members)| {
            let client = ConversationServiceClient::new(channel.clone());
            create(client, bearer.clone(), i, members)
        })
        .buffered(CREATE_CONCURRENCY)
        .try_collect()
        .await
}

async fn create(
    mut client: ConversationServiceClient<Channel>,
    bearer: MetadataValue<Ascii>,
    i: usize,
    members: &[(String, Role)],
) -> anyhow::Result<String> {
    let failed = |what: &str, status: tonic::Status| {
        anyhow::anyhow!(
            "{what} for conversation {i} failed: {:?}: {}",
            status.code(),
            status.message()
        )
    };
    let mut batches = members.chunks(MEMBERS_PER_REQUEST).map(|batch| {
        batch
            .iter()
            .map(|(user, role)| NewMember {
                user_id: user.clone(),
                role: natter_proto::v1::Role::from(*role).into(),
            })
            .collect::<Vec<_>>()
    });
    let mut request = tonic::Request::new(CreateConversationRequest {
        conversation_id: String::new(),
        subject: format!("natter-load conversation {i}"),
        members: batches.next().unwrap_or_default(),
    });
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    let id = client
        .create_conversation(request)
        .await
        .map_err(|status| failed("CreateConversation", status))?
        .into_inner()
        .conversation
        .map(|c| c.conversation_id)
        .with_context(|| format!("CreateConversation for conversation {i} returned none"))?;
    for members in batches {
        let mut request = tonic::Request::new(AddMembersRequest {
            conversation_id: id.clone(),
            members,
        });
        request
            .metadata_mut()
            .insert("authorization", bearer.clone());
        client
            .add_members(request)
            .await
            .map_err(|status| failed("AddMembers", status))?;
    }
    Ok(id)
}
