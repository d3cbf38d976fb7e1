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

/// Gives `args.tenant` a desk: one team (least busy) and `args.agents`
/// agents of it, through `DeskService` at `args.desk` with a service-role
/// token. Each call travels to the desk's holder, so the calls succeed
/// once it routes; until `args.timeout` they are retried (puts change
/// nothing the second time). Returns what the holder then has, one line.
pub(crate) async fn desk(args: &crate::cli::DeskSetupArgs) -> anyhow::Result<String> {
    use natter_proto::v1::desk_service_client::DeskServiceClient;
    use natter_proto::v1::{
        Agent, AgentPresence, GetDeskRequest, PutAgentRequest, PutTeamRequest, RoutingStrategy,
        Team,
    };

    let minter = Minter::new(&args.secret, &args.tenant, Duration::from_secs(600))?;
    let bearer: MetadataValue<Ascii> =
        format!("Bearer {}", minter.token("natter-load", Role::Service)?)
            .parse()
            .context("a token is not a valid header value")?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", args.desk))
        .with_context(|| format!("--desk {:?} must be host:port", args.desk))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    let mut desk = DeskServiceClient::new(channel);
    let agents: Vec<String> = (1..=args.agents)
        .map(|a| format!("{}-agent-{a}", args.team))
        .collect();
    let deadline = tokio::time::Instant::now() + args.timeout;
    let answer = loop {
        let attempt = async {
            desk.put_team(authorized(
                &bearer,
                PutTeamRequest {
                    team: Some(Team {
                        team_id: args.team.clone(),
                        name: "natter-load".into(),
                        strategy: RoutingStrategy::LeastBusy.into(),
                        ..Team::default()
                    }),
                },
            ))
            .await?;
            for agent in &agents {
                desk.put_agent(authorized(
                    &bearer,
                    PutAgentRequest {
                        agent: Some(Agent {
                            user_id: agent.clone(),
                            team_ids: vec![args.team.clone()],
                            skills: Vec::new(),
                            capacity: args.capacity,
                        }),
                    },
                ))
                .await?;
            }
            desk.get_desk(authorized(&bearer, GetDeskRequest {}))
                .await
                .map(tonic::Response::into_inner)
        };
        match attempt.await {
            Ok(answer) => break answer,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(status) => anyhow::bail!(
                "the desk at {} did not take the team and agents within {:?}: {:?}: {}",
                args.desk,
                args.timeout,
                status.code(),
                status.message()
            ),
        }
    };
    let known: Vec<String> = answer
        .agents
        .iter()
        .filter_map(|a| {
            let agent = a.agent.as_ref()?;
            let presence =
                AgentPresence::try_from(a.presence).map_or("unknown", |p| p.as_str_name());
            Some(format!("{} ({presence})", agent.user_id))
        })
        .collect();
    anyhow::ensure!(
        agents.iter().all(|a| answer
            .agents
            .iter()
            .any(|d| d.agent.as_ref().is_some_and(|d| &d.user_id == a))),
        "the desk's holder does not list every agent put: {known:?}"
    );
    Ok(format!(
        "desk of tenant {}: team {}, agents {}; {} waiting",
        args.tenant,
        args.team,
        known.join(", "),
        answer.waiting.len()
    ))
}

fn authorized<T>(bearer: &MetadataValue<Ascii>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    request
}
