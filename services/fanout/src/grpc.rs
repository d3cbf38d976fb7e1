//! `natter.v1.FanoutService`: the gRPC face of the relay and the counters.

use std::sync::Arc;

use natter_auth::{Identity, Verifier};
use natter_core::{Invalid, Role, UserId};
use natter_proto::convert::{parse_id, required};
use natter_proto::status::{invalid_argument, permission_denied, reason};
use natter_proto::v1::fanout_service_server::FanoutService;
use natter_proto::v1::{
    GetStatsRequest, GetStatsResponse, PublishEphemeralRequest, PublishEphemeralResponse,
    publish_ephemeral_request,
};
use natter_server::authenticate;
use tonic::{Request, Response, Status};

use crate::ephemeral::{Relay, Signal, SignalKind};
use crate::stats::Stats;
use natter_server::clock::now;

#[derive(Debug, Clone)]
pub(crate) struct FanoutApi {
    pub(crate) verifier: Arc<Verifier>,
    pub(crate) relay: Arc<Relay>,
    pub(crate) stats: Arc<Stats>,
}

#[tonic::async_trait]
impl FanoutService for FanoutApi {
    #[tracing::instrument(skip_all, fields(user, conversation))]
    async fn publish_ephemeral(
        &self,
        request: Request<PublishEphemeralRequest>,
    ) -> Result<Response<PublishEphemeralResponse>, Status> {
        let identity = authenticate(&self.verifier, &request)?;
        let signal = signal_from_request(&identity, request.into_inner()).map_err(|e| {
            tracing::info!(error = %e, "invalid ephemeral signal");
            invalid_argument(e)
        })?;
        let span = tracing::Span::current();
        span.record("user", signal.user.as_str());
        span.record("conversation", tracing::field::display(signal.conversation));
        if identity.role != Role::Service && signal.user != identity.user {
            tracing::info!("signal for another user refused");
            return Err(permission_denied(
                reason::ROLE_NOT_ALLOWED,
                "only the service role may signal for another user",
            ));
        }
        self.relay
            .relay(&signal, identity.role)
            .await
            .map_err(|e| {
                tracing::info!(error = %e, "ephemeral signal refused");
                e.into_status()
            })?;
        Ok(Response::new(PublishEphemeralResponse {}))
    }

    /// Instance-wide counters over every tenant, so only for the service
    /// role: operators and tenant backends, not end users.
    #[tracing::instrument(skip_all)]
    async fn get_stats(
        &self,
        request: Request<GetStatsRequest>,
    ) -> Result<Response<GetStatsResponse>, Status> {
        let identity = authenticate(&self.verifier, &request)?;
        if identity.role != Role::Service {
            return Err(permission_denied(
                reason::ROLE_NOT_ALLOWED,
                "only the service role may read fanout counters",
            ));
        }
        Ok(Response::new(self.stats.snapshot()))
    }
}

/// The signal a request describes, sent now. An empty `user_id` means the
/// caller.
fn signal_from_request(
    identity: &Identity,
    request: PublishEphemeralRequest,
) -> Result<Signal, Invalid> {
    use publish_ephemeral_request::Signal as Wire;
    // Field names as the API spells them, so a violation points at the
    // right one.
    let (conversation, user, kind, fields) = match required("signal", request.signal)? {
        Wire::Typing(t) => (
            t.conversation_id,
            t.user_id,
            SignalKind::Typing { active: t.active },
            ("typing.conversation_id", "typing.user_id"),
        ),
        Wire::Presence(p) => (
            p.conversation_id,
            p.user_id,
            SignalKind::Presence { online: p.online },
            ("presence.conversation_id", "presence.user_id"),
        ),
    };
    let user: UserId = if user.is_empty() {
        identity.user.clone()
    } else {
        parse_id(fields.1, &user)?
    };
    Ok(Signal {
        tenant: identity.tenant.clone(),
        conversation: parse_id(fields.0, &conversation)?,
        user,
        kind,
        at: now(),
    })
}
