//! Who the members of a conversation are: from the cache, or page by page
//! from storage's `MembersQuery` responder.

use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_bus::Bus;
use natter_contract::{ContractError, subjects};
use natter_core::{ConversationId, MembershipChange, TenantId, UserId};
use natter_proto::bus::v1::{Failure, MembersPage, MembersQuery};
use natter_proto::status::{from_failure, internal, reason};
use thiserror::Error;
use tonic::{Code, Status};

use crate::members::{CacheLimits, Key, MemberCache, Members};

/// How long one page of members may take.
const PAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a member list could not be had.
#[derive(Debug, Error)]
pub(crate) enum LookupError {
    /// Storage could not be reached or answered nonsense.
    #[error("storage: {0}")]
    Peer(#[from] ContractError),
    /// Storage answered with a failure.
    #[error("storage refused the members query: {} ({})", .0.message, .0.reason)]
    Refused(Failure),
    /// Storage's pages do not add up to a member list.
    #[error("storage answered a malformed member list: {0}")]
    Malformed(String),
}

impl LookupError {
    /// Failures that asking again cannot cure: no such conversation in the
    /// tenant, or a query storage rejects.
    pub(crate) fn is_permanent(&self) -> bool {
        match self {
            LookupError::Refused(failure) => matches!(
                Code::from_i32(failure.code),
                Code::NotFound
                    | Code::InvalidArgument
                    | Code::PermissionDenied
                    | Code::FailedPrecondition
            ),
            LookupError::Peer(_) | LookupError::Malformed(_) => false,
        }
    }

    /// How a caller of the gRPC API is told.
    pub(crate) fn into_status(self) -> Status {
        match self {
            LookupError::Peer(e) => e.into_status("storage"),
            LookupError::Refused(failure) => from_failure(failure),
            LookupError::Malformed(reason) => {
                tracing::error!(%reason, "storage answered a malformed member list");
                internal(
                    reason::SERVICE_MESSAGE_UNREADABLE,
                    "storage answered an unreadable member list",
                )
            }
        }
    }
}

/// Member lists, cached, loaded from storage on a miss.
#[derive(Debug)]
pub(crate) struct Directory {
    bus: Arc<dyn Bus>,
    cache: MemberCache,
    page_size: u32,
    /// More members than this means storage is misbehaving; stop paging.
    max_members: usize,
}

impl Directory {
    pub(crate) fn new(
        bus: Arc<dyn Bus>,
        limits: CacheLimits,
        page_size: u32,
        max_members: usize,
    ) -> Self {
        Self {
            bus,
            cache: MemberCache::new(limits),
            page_size: page_size.max(1),
            max_members,
        }
    }

    /// The members of `conversation` in `tenant`.
    pub(crate) async fn members(
        &self,
        tenant: &TenantId,
        conversation: ConversationId,
    ) -> Result<Arc<Members>, LookupError> {
        let key: Key = (tenant.clone(), conversation);
        if let Some(members) = self.cache.get(&key, Instant::now()) {
            return Ok(members);
        }
        let ticket = self.cache.ticket(&key);
        let members = self.load(tenant, conversation).await?;
        Ok(self.cache.insert(key, members, ticket, Instant::now()))
    }

    /// Applies a membership change to the cached list, if one is cached.
    pub(crate) fn apply(&self, tenant: &TenantId, change: &MembershipChange) {
        self.cache.apply(tenant, change, Instant::now());
    }

    pub(crate) fn cached_conversations(&self) -> usize {
        self.cache.len()
    }

    #[tracing::instrument(skip(self), fields(members))]
    async fn load(
        &self,
        tenant: &TenantId,
        conversation: ConversationId,
    ) -> Result<Members, LookupError> {
        let mut users: Vec<UserId> = Vec::new();
        let mut after = String::new();
        loop {
            let query = MembersQuery {
                tenant_id: tenant.to_string(),
                conversation_id: conversation.to_string(),
                after_user_id: after.clone(),
                page_size: self.page_size,
            };
            let page: MembersPage =
                natter_contract::request(&*self.bus, subjects::MEMBERS, &query, PAGE_TIMEOUT)
                    .await?;
            if let Some(failure) = page.failure {
                return Err(LookupError::Refused(failure));
            }
            let page_was_empty = page.user_ids.is_empty();
            for id in page.user_ids {
                let user = UserId::new(id).map_err(|e| LookupError::Malformed(e.to_string()))?;
                users.push(user);
            }
            if users.len() > self.max_members {
                return Err(LookupError::Malformed(format!(
                    "more than {} members",
                    self.max_members
                )));
            }
            if page.next_after_user_id.is_empty() {
                break;
            }
            // The token follows the store's own order (the CQL store pages
            // by shard, then user id), so it need not grow. Every page that
            // continues must bring someone, and `max_members` bounds how
            // many, so the paging ends.
            if page_was_empty {
                return Err(LookupError::Malformed(format!(
                    "an empty page after {after:?} continues after {:?}",
                    page.next_after_user_id
                )));
            }
            after = page.next_after_user_id;
        }
        tracing::Span::current().record("members", users.len());
        Ok(users.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use natter_bus_local::LocalBus;
    use natter_contract::serve;

    use super::*;

    /// Storage pages in its own order: here the second page's token sorts
    /// before the first's, as the CQL store's (shard, user id) order does.
    fn page(query: &MembersQuery) -> MembersPage {
        let (users, next): (&[&str], &str) = match query.after_user_id.as_str() {
            "" => (&["m5", "m6"], "m6"),
            "m6" => (&["m1", "m2"], "m2"),
            "m2" => (&["m3"], ""),
            other => panic!("unexpected token {other:?}"),
        };
        MembersPage {
            failure: None,
            user_ids: users.iter().map(|u| (*u).to_owned()).collect(),
            next_after_user_id: next.to_owned(),
        }
    }

    #[tokio::test]
    async fn pages_follow_the_stores_order_whatever_it_is() {
        let bus: Arc<dyn Bus> = Arc::new(LocalBus::new("directory").unwrap());
        let requests = bus.subscribe(subjects::MEMBERS, None).await.unwrap();
        tokio::spawn(serve(bus.clone(), requests, 4, |query: MembersQuery| {
            std::future::ready(page(&query))
        }));
        let directory = Directory::new(bus, CacheLimits::default(), 2, 100);
        let tenant = TenantId::new("acme").unwrap();
        let members = directory
            .members(&tenant, ConversationId::generate())
            .await
            .unwrap();
        let mut users: Vec<&str> = members.iter().map(UserId::as_str).collect();
        users.sort_unstable();
        assert_eq!(users, ["m1", "m2", "m3", "m5", "m6"]);
    }
}
