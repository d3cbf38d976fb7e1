//! What storage answers on the bus: read markers (`MARK_READ`) and member
//! pages (`MEMBERS`), both in queue group `storage` so any one storage
//! process answers each request.

use std::future::Future;
use std::sync::Arc;

use natter_bus::Subscription;
use natter_contract::serve;
use natter_core::{ConversationId, Event, Seq, TenantId, UserId};
use natter_proto::bus::v1::{MarkReadCommand, MarkReadOutcome, MembersPage, MembersQuery};
use natter_proto::convert::parse_id;
use natter_proto::status::to_failure;
use natter_store::PageRequest;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::policy;
use crate::send::actor_from_wire;
use crate::storage::{Storage, invalid, store_status};

/// Requests one storage process answers at once, per subject.
const CONCURRENCY: usize = 64;

/// Answers `MarkReadCommand`s on `requests` until `shutdown`.
pub(crate) async fn serve_mark_read(
    storage: Arc<Storage>,
    requests: Subscription,
    shutdown: CancellationToken,
) {
    let bus = storage.bus.clone();
    until(
        shutdown,
        serve(bus, requests, CONCURRENCY, move |command| {
            let storage = storage.clone();
            async move {
                match mark_read(&storage, command).await {
                    Ok((seq, raised)) => MarkReadOutcome {
                        failure: None,
                        seq: seq.get(),
                        raised,
                    },
                    Err(status) => MarkReadOutcome {
                        failure: Some(to_failure(&status)),
                        seq: 0,
                        raised: false,
                    },
                }
            }
        }),
    )
    .await;
}

/// Answers `MembersQuery`s on `requests` until `shutdown`.
pub(crate) async fn serve_members(
    storage: Arc<Storage>,
    requests: Subscription,
    shutdown: CancellationToken,
) {
    let bus = storage.bus.clone();
    until(
        shutdown,
        serve(bus, requests, CONCURRENCY, move |query| {
            let storage = storage.clone();
            async move {
                members(&storage, query)
                    .await
                    .unwrap_or_else(|status| MembersPage {
                        failure: Some(to_failure(&status)),
                        ..MembersPage::default()
                    })
            }
        }),
    )
    .await;
}

async fn until(shutdown: CancellationToken, work: impl Future<Output = ()>) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = work => tracing::warn!("request subscription ended"),
    }
}

/// Raises the reader's watermark and, if it rose, announces the read
/// marker to the conversation. Returns the watermark after the command.
#[tracing::instrument(skip_all, fields(conversation = %command.conversation_id, seq = command.seq))]
/// The watermark after the command, and whether the command raised it.
async fn mark_read(storage: &Storage, command: MarkReadCommand) -> Result<(Seq, bool), Status> {
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
                .announce(&reader.tenant, vec![Event::Read(marker)])
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
async fn members(storage: &Storage, query: MembersQuery) -> Result<MembersPage, Status> {
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
