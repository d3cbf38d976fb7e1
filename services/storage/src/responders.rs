//! What storage answers on the bus: read markers (`MARK_READ`), member
//! pages (`MEMBERS`), message pages for watching devices (`MESSAGES`) and
//! member additions for services without a token (`ADD_MEMBERS`), all in
//! queue group `storage` so any one storage process answers each request.

use std::future::Future;
use std::sync::Arc;

use natter_bus::Subscription;
use natter_contract::serve;
use natter_core::{ConversationId, Event, Seq, TenantId, UserId};
use natter_proto::bus::v1::{
    AddMembersCommand, AddMembersOutcome, Failure, MarkReadCommand, MarkReadOutcome, MembersPage,
    MembersQuery, MessagesPage, MessagesQuery,
};
use natter_proto::convert::{actor_from_wire, new_members_from_wire, parse_id};
use natter_proto::status::to_failure;
use natter_server::store_status;
use natter_store::{MessageRange, PageRequest};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::policy;
use crate::storage::{RETRY_CALL, Storage, invalid};

/// Requests one storage process answers at once, per subject.
const CONCURRENCY: usize = 64;

/// An answer that can carry a failure instead.
pub(crate) trait Answer: prost::Message + Default + 'static {
    fn failed(failure: Failure) -> Self;
}

/// Implements [`Answer`] for bus answers with a `failure` field.
macro_rules! answers {
    ($($answer:ty),*) => {$(
        impl Answer for $answer {
            // Some answers have no field but the failure.
            #[allow(clippy::needless_update)]
            fn failed(failure: Failure) -> Self {
                Self {
                    failure: Some(failure),
                    ..Self::default()
                }
            }
        }
    )*};
}

answers!(
    AddMembersOutcome,
    MarkReadOutcome,
    MembersPage,
    MessagesPage
);

/// Answers the requests on `requests` with `handler` until `shutdown`; a
/// handler's error status goes back as the answer's failure.
pub(crate) async fn respond<Q, A, F, Fut>(
    storage: Arc<Storage>,
    requests: Subscription,
    shutdown: CancellationToken,
    handler: F,
) where
    Q: prost::Message + Default + 'static,
    A: Answer,
    F: Fn(Arc<Storage>, Q) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<A, Status>> + Send + 'static,
{
    let bus = storage.bus.clone();
    let work = serve(bus, requests, CONCURRENCY, move |query| {
        let answer = handler(storage.clone(), query);
        async move {
            answer
                .await
                .unwrap_or_else(|status| A::failed(to_failure(&status)))
        }
    });
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = work => tracing::warn!("request subscription ended"),
    }
}

/// Moves a read marker for a gateway.
pub(crate) async fn mark_read(
    storage: Arc<Storage>,
    command: MarkReadCommand,
) -> Result<MarkReadOutcome, Status> {
    let (seq, raised) = raise_watermark(&storage, command).await?;
    Ok(MarkReadOutcome {
        failure: None,
        seq: seq.get(),
        raised,
    })
}

/// Raises the reader's watermark and, if it rose, announces the read
/// marker to the conversation. Returns the watermark after the command.
/// The watermark after the command, and whether the command raised it.
#[tracing::instrument(skip_all, fields(conversation = %command.conversation_id, seq = command.seq))]
async fn raise_watermark(
    storage: &Storage,
    command: MarkReadCommand,
) -> Result<(Seq, bool), Status> {
    let reader = actor_from_wire(command.actor).map_err(invalid)?;
    let id: ConversationId =
        parse_id("conversation_id", &command.conversation_id).map_err(invalid)?;
    storage.enforce(policy::mark_read(), &reader, id).await?;
    let raised = storage
        .store
        .mark_read(&reader.tenant, id, &reader.user, Seq::new(command.seq))
        .await
        .map_err(store_status)?;
    match raised {
        Some(marker) => {
            let seq = marker.seq;
            storage
                .announce(vec![(reader.tenant, Event::Read(marker))], RETRY_CALL)
                .await?;
            Ok((seq, true))
        }
        // Already at or past it: report where it is now.
        None => match storage.store.member(&reader.tenant, id, &reader.user).await {
            Ok(Some(member)) => Ok((member.read_seq, false)),
            Ok(None) => Err(policy::not_a_member()),
            Err(e) => Err(store_status(e)),
        },
    }
}

/// One page of a conversation's member ids, for fanout.
#[tracing::instrument(skip_all, fields(conversation = %query.conversation_id))]
pub(crate) async fn members(
    storage: Arc<Storage>,
    query: MembersQuery,
) -> Result<MembersPage, Status> {
    let tenant: TenantId = parse_id("tenant_id", &query.tenant_id).map_err(invalid)?;
    let id: ConversationId =
        parse_id("conversation_id", &query.conversation_id).map_err(invalid)?;
    let after = match query.after_user_id.as_str() {
        "" => None,
        user => Some(parse_id::<UserId>("after_user_id", user).map_err(invalid)?),
    };
    let page = storage
        .store
        .list_members(
            &tenant,
            id,
            PageRequest {
                after,
                size: storage.limits.page_size(query.page_size),
            },
        )
        .await
        .map_err(store_status)?;
    Ok(MembersPage {
        failure: None,
        user_ids: page
            .items
            .into_iter()
            .map(|m| m.user_id.to_string())
            .collect(),
        next_after_user_id: page.next.map(|user| user.to_string()).unwrap_or_default(),
    })
}

/// One page of a conversation's messages after a seq, for a member's
/// watching device. Membership is checked on every page, so a member who
/// left stops reading at the next page.
#[tracing::instrument(skip_all, fields(conversation = %query.conversation_id, after = query.after_seq))]
pub(crate) async fn messages(
    storage: Arc<Storage>,
    query: MessagesQuery,
) -> Result<MessagesPage, Status> {
    let reader = actor_from_wire(query.actor).map_err(invalid)?;
    let id: ConversationId =
        parse_id("conversation_id", &query.conversation_id).map_err(invalid)?;
    storage
        .enforce(policy::read_or_send(reader.role), &reader, id)
        .await?;
    let limit = storage.limits.page_size(query.limit);
    let messages = storage
        .store
        .list_messages(
            &reader.tenant,
            id,
            MessageRange::After {
                after: Seq::new(query.after_seq),
                limit,
            },
        )
        .await
        .map_err(store_status)?;
    Ok(MessagesPage {
        failure: None,
        complete: messages.len() < limit as usize,
        messages: messages.into_iter().map(Into::into).collect(),
    })
}

/// Adds members for a service that reaches storage only over the bus (the
/// desk), with the rules and effects of `AddMembers`.
#[tracing::instrument(skip_all, fields(conversation = %command.conversation_id))]
pub(crate) async fn add_members(
    storage: Arc<Storage>,
    command: AddMembersCommand,
) -> Result<AddMembersOutcome, Status> {
    let who = actor_from_wire(command.actor).map_err(invalid)?;
    let id: ConversationId =
        parse_id("conversation_id", &command.conversation_id).map_err(invalid)?;
    let members = new_members_from_wire(command.members).map_err(invalid)?;
    storage.add_members(&who, id, members).await?;
    Ok(AddMembersOutcome { failure: None })
}
