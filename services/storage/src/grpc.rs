//! `natter.v1.ConversationService`: the gRPC face of the storage service.
//! Every call is authenticated and tenant-scoped; wire types are converted
//! to domain types here and nowhere further in.

use std::sync::Arc;
use std::time::Duration;

use natter_auth::{Identity, Verifier};
use natter_contract::Holders;
use natter_core::{
    ClientMessageId, Conversation, ConversationId, Event, Invalid, LifecycleChange,
    NewConversation, Role, UserId, validate_member_list,
};
use natter_proto::bus::v1::{SendCommand, send_outcome};
use natter_proto::convert::{self, content_from_wire, new_members_from_wire, parse_id};
use natter_proto::page;
use natter_proto::status;
use natter_proto::v1::conversation_service_server::ConversationService;
use natter_proto::v1::{
    AddMembersRequest, AddMembersResponse, CreateConversationRequest, CreateConversationResponse,
    GetConversationRequest, GetConversationResponse, ListConversationsRequest,
    ListConversationsResponse, ListMembersRequest, ListMembersResponse, ListMessagesRequest,
    ListMessagesResponse, RemoveMembersRequest, RemoveMembersResponse, SendMessageRequest,
    SendMessageResponse, UpdateLifecycleRequest, UpdateLifecycleResponse,
};
use natter_server::store_status;
use natter_store::StoreError;
use tonic::{Request, Response, Status};
use tracing::Span;

use crate::policy;
use natter_server::clock::now;

use crate::storage::{RETRY_CALL, Storage, invalid, joined, unavailable, with_tenant};

/// How long `SendMessage` waits for the sequencer's outcome before
/// telling the caller to retry.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What a caller is told when a send may or may not have been stored.
const RETRY_SEND: &str = "the message may not be stored yet; retry with the same client_message_id";

pub(crate) struct ConversationApi {
    storage: Arc<Storage>,
    sends: Holders,
    verifier: Arc<Verifier>,
}

impl ConversationApi {
    pub(crate) fn new(storage: Arc<Storage>, sends: Holders, verifier: Arc<Verifier>) -> Self {
        Self {
            storage,
            sends,
            verifier,
        }
    }

    /// The caller, recorded on the current span.
    fn caller<T>(&self, request: &Request<T>) -> Result<Identity, Status> {
        let who = natter_server::authenticate(&self.verifier, request).inspect_err(|e| {
            tracing::debug!(error = %e.message(), "unauthenticated call");
        })?;
        let span = Span::current();
        span.record("tenant", who.tenant.as_str());
        span.record("user", who.user.as_str());
        Ok(who)
    }

    /// The rest of a create whose proposed id is taken. A retry of the
    /// same create (same caller and subject, and every requested member
    /// joined at creation with the requested role) gets the conversation
    /// back, with its Joined events published again while the EVENTS
    /// stream still deduplicates them, so events lost to a crash after the
    /// store write are repaired. Anything else is ALREADY_EXISTS.
    async fn retried_create(&self, new: &NewConversation) -> Result<Conversation, Status> {
        let conflict = || {
            store_status(StoreError::Conflict(format!(
                "conversation {} already exists",
                new.id
            )))
        };
        let existing = match self
            .storage
            .store
            .conversation(&new.tenant_id, new.id)
            .await
        {
            Ok(existing) => existing,
            // Gone again between the two calls: still not ours to create.
            Err(StoreError::NotFound { .. }) => return Err(conflict()),
            Err(e) => return Err(store_status(e)),
        };
        if existing.created_by != new.created_by || existing.subject != new.subject {
            return Err(conflict());
        }
        let users: Vec<&UserId> = new.members.iter().map(|(user, _)| user).collect();
        let members = self
            .storage
            .members_among(&new.tenant_id, new.id, &users)
            .await?;
        let same = members.iter().zip(&new.members).all(|(found, (_, role))| {
            found
                .as_ref()
                .is_some_and(|m| m.role == *role && m.joined_at == existing.created_at)
        });
        if !same {
            return Err(conflict());
        }
        tracing::info!(conversation = %new.id, "create retried; returning the existing conversation");
        if self.storage.within_dedup_window(existing.created_at) {
            let events = members
                .iter()
                .flatten()
                .map(|m| joined(new.id, &m.user_id, m.role, m.joined_at))
                .collect();
            self.storage
                .announce(with_tenant(&new.tenant_id, events), RETRY_CALL)
                .await?;
        }
        Ok(existing)
    }
}

fn conversation_id(value: &str) -> Result<ConversationId, Status> {
    parse_id("conversation_id", value).map_err(invalid)
}

#[tonic::async_trait]
impl ConversationService for ConversationApi {
    #[tracing::instrument(skip_all, fields(tenant, user, conversation))]
    async fn create_conversation(
        &self,
        request: Request<CreateConversationRequest>,
    ) -> Result<Response<CreateConversationResponse>, Status> {
        let who = self.caller(&request)?;
        let request = request.into_inner();
        let proposed = !request.conversation_id.is_empty();
        let id = if proposed {
            conversation_id(&request.conversation_id)?
        } else {
            ConversationId::generate()
        };
        Span::current().record("conversation", tracing::field::display(id));
        let mut members = new_members_from_wire(request.members).map_err(invalid)?;
        if who.role != Role::Service {
            match members.iter().find(|(user, _)| *user == who.user) {
                None => members.push((who.user.clone(), who.role)),
                Some((_, role)) if *role == who.role => {}
                Some((_, role)) => {
                    return Err(invalid(Invalid::new(
                        "members.role",
                        format!(
                            "the caller joins with the role of its token, {}, not {}",
                            who.role.as_str(),
                            role.as_str()
                        ),
                    )));
                }
            }
        }
        let new = NewConversation {
            id,
            tenant_id: who.tenant.clone(),
            subject: request.subject,
            created_by: who.user.clone(),
            created_at: now(),
            members,
        };
        new.validate(&self.storage.limits).map_err(invalid)?;
        self.storage
            .enforce(
                policy::create_conversation(who.role, &who.user, &new.members),
                &who,
                id,
            )
            .await?;
        let conversation = match self.storage.store.create_conversation(&new).await {
            Ok(conversation) => {
                let events = new
                    .members
                    .iter()
                    .map(|(user, role)| joined(id, user, *role, conversation.created_at))
                    .collect();
                self.storage
                    .announce(with_tenant(&who.tenant, events), RETRY_CALL)
                    .await?;
                conversation
            }
            Err(StoreError::Conflict(_)) if proposed => self.retried_create(&new).await?,
            Err(e) => return Err(store_status(e)),
        };
        Ok(Response::new(CreateConversationResponse {
            conversation: Some(conversation.into()),
        }))
    }

    #[tracing::instrument(skip_all, fields(tenant, user, conversation))]
    async fn get_conversation(
        &self,
        request: Request<GetConversationRequest>,
    ) -> Result<Response<GetConversationResponse>, Status> {
        let who = self.caller(&request)?;
        let id = conversation_id(&request.get_ref().conversation_id)?;
        Span::current().record("conversation", tracing::field::display(id));
        self.storage
            .enforce(policy::read_or_send(who.role), &who, id)
            .await?;
        let conversation = self
            .storage
            .store
            .conversation(&who.tenant, id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(GetConversationResponse {
            conversation: Some(conversation.into()),
        }))
    }

    #[tracing::instrument(skip_all, fields(tenant, user))]
    async fn list_conversations(
        &self,
        request: Request<ListConversationsRequest>,
    ) -> Result<Response<ListConversationsResponse>, Status> {
        let who = self.caller(&request)?;
        let request = request.into_inner();
        let named = match request.user_id.as_str() {
            "" => None,
            user => Some(parse_id::<UserId>("user_id", user).map_err(invalid)?),
        };
        let user = policy::list_conversations_of(who.role, &who.user, named.as_ref())?;
        let page_request =
            page::page_request(request.page_size, &request.page_token, &self.storage.limits)
                .map_err(invalid)?;
        let found = self
            .storage
            .store
            .list_conversations(&who.tenant, user, page_request)
            .await
            .map_err(store_status)?;
        let next_page_token = page::next_page_token(&found);
        Ok(Response::new(ListConversationsResponse {
            conversations: found.items.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(tenant, user, conversation))]
    async fn add_members(
        &self,
        request: Request<AddMembersRequest>,
    ) -> Result<Response<AddMembersResponse>, Status> {
        let who = self.caller(&request)?;
        let request = request.into_inner();
        let id = conversation_id(&request.conversation_id)?;
        Span::current().record("conversation", tracing::field::display(id));
        let members = new_members_from_wire(request.members).map_err(invalid)?;
        let changes = self.storage.add_members(&who, id, members).await?;
        Ok(Response::new(AddMembersResponse {
            changes: changes.into_iter().map(Into::into).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(tenant, user, conversation))]
    async fn remove_members(
        &self,
        request: Request<RemoveMembersRequest>,
    ) -> Result<Response<RemoveMembersResponse>, Status> {
        let who = self.caller(&request)?;
        let request = request.into_inner();
        let id = conversation_id(&request.conversation_id)?;
        Span::current().record("conversation", tracing::field::display(id));
        let users = request
            .user_ids
            .iter()
            .map(|user| parse_id::<UserId>("user_ids", user))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        validate_member_list(users.iter(), &self.storage.limits).map_err(invalid)?;
        self.storage
            .enforce(
                policy::remove_members(who.role, &who.user, &users),
                &who,
                id,
            )
            .await?;
        let changes = self
            .storage
            .store
            .remove_members(&who.tenant, id, &users, now())
            .await
            .map_err(store_status)?;
        let events = changes.iter().cloned().map(Event::Membership).collect();
        self.storage
            .announce(with_tenant(&who.tenant, events), RETRY_CALL)
            .await?;
        Ok(Response::new(RemoveMembersResponse {
            changes: changes.into_iter().map(Into::into).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(tenant, user, conversation))]
    async fn list_members(
        &self,
        request: Request<ListMembersRequest>,
    ) -> Result<Response<ListMembersResponse>, Status> {
        let who = self.caller(&request)?;
        let request = request.into_inner();
        let id = conversation_id(&request.conversation_id)?;
        Span::current().record("conversation", tracing::field::display(id));
        let page_request =
            page::page_request(request.page_size, &request.page_token, &self.storage.limits)
                .map_err(invalid)?;
        self.storage
            .enforce(policy::read_or_send(who.role), &who, id)
            .await?;
        let found = self
            .storage
            .store
            .list_members(&who.tenant, id, page_request)
            .await
            .map_err(store_status)?;
        let next_page_token = page::next_page_token(&found);
        Ok(Response::new(ListMembersResponse {
            members: found.items.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(tenant, user, conversation))]
    async fn list_messages(
        &self,
        request: Request<ListMessagesRequest>,
    ) -> Result<Response<ListMessagesResponse>, Status> {
        let who = self.caller(&request)?;
        let request = request.into_inner();
        let id = conversation_id(&request.conversation_id)?;
        Span::current().record("conversation", tracing::field::display(id));
        let range = page::message_range(&request, &self.storage.limits).map_err(invalid)?;
        self.storage
            .enforce(policy::read_or_send(who.role), &who, id)
            .await?;
        let messages = self
            .storage
            .store
            .list_messages(&who.tenant, id, range)
            .await
            .map_err(store_status)?;
        let next_page_token = page::next_message_page_token(&range, &messages);
        Ok(Response::new(ListMessagesResponse {
            messages: messages.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    /// Sends through the conversation's sequencer like a device's send, so
    /// ordering and idempotency have one home, whichever storage process
    /// holds the partition. Input and access are checked here too, to
    /// answer early; the sequencer checks again, as it must for commands
    /// from gateways.
    #[tracing::instrument(skip_all, fields(tenant, user, conversation))]
    async fn send_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        let who = self.caller(&request)?;
        let request = request.into_inner();
        let id = conversation_id(&request.conversation_id)?;
        Span::current().record("conversation", tracing::field::display(id));
        parse_id::<ClientMessageId>("client_message_id", &request.client_message_id)
            .map_err(invalid)?;
        let content = content_from_wire(request.content.clone()).map_err(invalid)?;
        content.validate(&self.storage.limits).map_err(invalid)?;
        content.sendable().map_err(invalid)?;
        self.storage
            .enforce(policy::read_or_send(who.role), &who, id)
            .await?;

        let command = SendCommand {
            actor: Some((&who).into()),
            conversation_id: request.conversation_id,
            client_message_id: request.client_message_id,
            content: request.content,
            sent_at: Some(convert::timestamp_to_wire(now())),
            change: None,
        };
        match self.sequence(id, command).await? {
            send_outcome::Result::Stored(stored) => Ok(Response::new(SendMessageResponse {
                message: stored.message,
                duplicate: stored.duplicate,
            })),
            other => Err(unexpected(other)),
        }
    }

    /// Changes the lifecycle through the conversation's sequencer, which
    /// stores the change as an activity message in order with the
    /// conversation's messages (see `SendMessage`).
    #[tracing::instrument(skip_all, fields(tenant, user, conversation))]
    async fn update_lifecycle(
        &self,
        request: Request<UpdateLifecycleRequest>,
    ) -> Result<Response<UpdateLifecycleResponse>, Status> {
        let who = self.caller(&request)?;
        let request = request.into_inner();
        let id = conversation_id(&request.conversation_id)?;
        Span::current().record("conversation", tracing::field::display(id));
        parse_id::<ClientMessageId>("client_change_id", &request.client_change_id)
            .map_err(invalid)?;
        let change: LifecycleChange = convert::required("change", request.change.clone())
            .and_then(TryInto::try_into)
            .map_err(invalid)?;
        change.validate(&self.storage.limits).map_err(invalid)?;
        self.storage
            .enforce(policy::change_lifecycle(who.role, &change), &who, id)
            .await?;

        let command = SendCommand {
            actor: Some((&who).into()),
            conversation_id: request.conversation_id,
            client_message_id: request.client_change_id,
            sent_at: Some(convert::timestamp_to_wire(now())),
            change: request.change,
            ..SendCommand::default()
        };
        let outcome = self.sequence(id, command).await?;
        match convert::lifecycle_response(outcome.clone()) {
            Some(response) => Ok(Response::new(response)),
            None => Err(unexpected(outcome)),
        }
    }
}

impl ConversationApi {
    /// Hands `command` to the sequencer of conversation `id` and waits for
    /// what became of it; a failure comes back as its status.
    async fn sequence(
        &self,
        id: ConversationId,
        command: SendCommand,
    ) -> Result<send_outcome::Result, Status> {
        let outcome = self
            .sends
            .send(id, command, SEND_TIMEOUT)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "send did not complete");
                unavailable(RETRY_SEND)
            })?;
        match outcome.result {
            Some(send_outcome::Result::Failure(failure)) => Err(status::from_failure(failure)),
            Some(result) => Ok(result),
            None => {
                tracing::error!("send outcome without a result");
                Err(unavailable(RETRY_SEND))
            }
        }
    }
}

/// An outcome the request cannot have had: a sequencer that answers a
/// send as a change, or the other way round.
fn unexpected(outcome: send_outcome::Result) -> Status {
    tracing::error!(
        ?outcome,
        "the sequencer answered with an unexpected outcome"
    );
    unavailable(RETRY_SEND)
}
