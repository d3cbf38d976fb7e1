//! `natter.v1.SyncService`: the gRPC face of sync, for callers without a
//! gateway connection.

use std::sync::Arc;

use natter_auth::{Identity, Verifier};
use natter_bus::Bus;
use natter_contract::{ContractError, encode, subjects};
use natter_core::{ConversationId, Cursor, DeviceId, Limits, ReadMarker, Role, Seq, UserId};
use natter_proto::bus::v1::{DeviceRevoked, MarkReadCommand, MarkReadOutcome};
use natter_proto::convert::parse_id;
use natter_proto::page::{next_page_token, page_request};
use natter_proto::status::{from_failure, invalid_argument, permission_denied, reason};
use natter_proto::v1::sync_service_server::SyncService;
use natter_proto::v1::{
    GetUpdatesRequest, GetUpdatesResponse, ListDevicesRequest, ListDevicesResponse,
    MarkReadRequest, MarkReadResponse, ResyncRequired, RevokeDeviceRequest, RevokeDeviceResponse,
};
use natter_server::{authenticate, store_status};
use natter_store::{SyncStore, UpdateBatch};
use tonic::{Request, Response, Status};

use crate::PEER_TIMEOUT;

pub(crate) struct Api {
    bus: Arc<dyn Bus>,
    verifier: Arc<Verifier>,
    store: Arc<dyn SyncStore>,
    limits: Limits,
}

impl Api {
    pub(crate) fn new(
        bus: Arc<dyn Bus>,
        verifier: Arc<Verifier>,
        store: Arc<dyn SyncStore>,
        limits: Limits,
    ) -> Self {
        Self {
            bus,
            verifier,
            store,
            limits,
        }
    }
}

#[tonic::async_trait]
impl SyncService for Api {
    #[tracing::instrument(skip_all)]
    async fn get_updates(
        &self,
        request: Request<GetUpdatesRequest>,
    ) -> Result<Response<GetUpdatesResponse>, Status> {
        let caller = authenticate(&self.verifier, &request)?;
        let request = request.into_inner();
        let user = whose(&caller, &request.user_id)?;
        let limit = self.limits.page_size(request.page_size);
        let batch = self
            .store
            .read_updates(&caller.tenant, &user, Cursor::new(request.cursor), limit)
            .await
            .map_err(store_status)?;
        let response = match batch {
            UpdateBatch::Updates(updates) => GetUpdatesResponse {
                updates: updates.into_iter().map(Into::into).collect(),
                resync_required: None,
            },
            UpdateBatch::ResyncRequired { head } => GetUpdatesResponse {
                updates: Vec::new(),
                resync_required: Some(ResyncRequired { cursor: head.get() }),
            },
        };
        Ok(Response::new(response))
    }

    /// Forwarded to storage, the owner of read markers, which tells every
    /// member's devices through their logs.
    #[tracing::instrument(skip_all)]
    async fn mark_read(
        &self,
        request: Request<MarkReadRequest>,
    ) -> Result<Response<MarkReadResponse>, Status> {
        let caller = authenticate(&self.verifier, &request)?;
        let request = request.into_inner();
        let conversation: ConversationId =
            parse_id("conversation_id", &request.conversation_id).map_err(invalid_argument)?;
        let command = MarkReadCommand {
            actor: Some((&caller).into()),
            conversation_id: conversation.to_string(),
            seq: request.seq,
        };
        let outcome: MarkReadOutcome = natter_contract::request(
            self.bus.as_ref(),
            subjects::MARK_READ,
            &command,
            PEER_TIMEOUT,
        )
        .await
        .map_err(|e| e.into_status("storage"))?;
        if let Some(failure) = outcome.failure {
            let status = from_failure(failure);
            tracing::info!(code = ?status.code(), message = status.message(), "storage refused to mark read");
            return Err(status);
        }
        // A marker only when this call moved the watermark.
        let read_marker = outcome.raised.then(|| {
            ReadMarker {
                conversation_id: conversation,
                user_id: caller.user.clone(),
                seq: Seq::new(outcome.seq),
            }
            .into()
        });
        Ok(Response::new(MarkReadResponse { read_marker }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_devices(
        &self,
        request: Request<ListDevicesRequest>,
    ) -> Result<Response<ListDevicesResponse>, Status> {
        let caller = authenticate(&self.verifier, &request)?;
        let request = request.into_inner();
        let user = whose(&caller, &request.user_id)?;
        let page = page_request::<DeviceId>(request.page_size, &request.page_token, &self.limits)
            .map_err(invalid_argument)?;
        let page = self
            .store
            .list_devices(&caller.tenant, &user, page)
            .await
            .map_err(store_status)?;
        Ok(Response::new(ListDevicesResponse {
            next_page_token: next_page_token(&page),
            devices: page.items.into_iter().map(Into::into).collect(),
        }))
    }

    /// Revokes the device in the store, then tells the gateways so they end
    /// its sessions. If the announcement fails the call fails too, and a
    /// retry (revoking is idempotent) announces it again.
    #[tracing::instrument(skip_all)]
    async fn revoke_device(
        &self,
        request: Request<RevokeDeviceRequest>,
    ) -> Result<Response<RevokeDeviceResponse>, Status> {
        let caller = authenticate(&self.verifier, &request)?;
        let request = request.into_inner();
        let user = whose(&caller, &request.user_id)?;
        let device: DeviceId =
            parse_id("device_id", &request.device_id).map_err(invalid_argument)?;
        self.store
            .revoke_device(&caller.tenant, &user, &device)
            .await
            .map_err(store_status)?;
        let revoked = DeviceRevoked {
            tenant_id: caller.tenant.to_string(),
            user_id: user.to_string(),
            device_id: device.to_string(),
        };
        self.bus
            .publish(&subjects::revoked(&caller.tenant, &user), encode(&revoked))
            .await
            .map_err(|e| ContractError::from(e).into_status("the gateways"))?;
        tracing::info!(tenant = %caller.tenant, %user, %device, "device revoked");
        Ok(Response::new(RevokeDeviceResponse {}))
    }
}

/// The user a call acts on: the caller, or the user a service-role caller
/// names (always within the caller's tenant).
fn whose(caller: &Identity, named: &str) -> Result<UserId, Status> {
    if named.is_empty() {
        return Ok(caller.user.clone());
    }
    let user: UserId = parse_id("user_id", named).map_err(invalid_argument)?;
    if user != caller.user && caller.role != Role::Service {
        return Err(permission_denied(
            reason::ROLE_NOT_ALLOWED,
            "only callers with the service role may name another user",
        ));
    }
    Ok(user)
}
