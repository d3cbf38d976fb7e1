//! `natter.v1.DeskService` over gRPC: each call is authenticated here and
//! carried to the desk's holder as a `DeskCommand`, the same way a gateway
//! session's `desk` frames travel, so both follow one set of rules.

use std::sync::Arc;
use std::time::Duration;

use natter_bus::BusError;
use natter_contract::{Backoff, ContractError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use natter_auth::{Identity, Verifier};
use natter_bus::Bus;
use natter_contract::subjects;
use natter_proto::bus::v1::{DeskCommand, DeskOutcome};
use natter_proto::status::{self, reason};
use natter_proto::v1::desk_answer::Answer;
use natter_proto::v1::desk_call::Call;
use natter_proto::v1::desk_service_server::DeskService;
use natter_proto::v1::*;
use tonic::{Request, Response, Status};

#[derive(Debug)]
pub(crate) struct Api {
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) verifier: Arc<Verifier>,
    pub(crate) timeout: Duration,
}

impl Api {
    /// Authenticates the request and hands its call to the holder.
    async fn ask<T>(
        &self,
        request: Request<T>,
        call: impl FnOnce(T) -> Call,
    ) -> Result<Answer, Status> {
        let identity: Identity = natter_server::authenticate(&self.verifier, &request)?;
        let command = DeskCommand {
            actor: Some((&identity).into()),
            call: Some(DeskCall {
                client_call_id: String::new(),
                call: Some(call(request.into_inner())),
            }),
        };
        // Nobody answers for the second or so a holder takes to start:
        // wait for one rather than fail the call.
        let deadline = Instant::now() + self.timeout;
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
        let outcome: DeskOutcome = loop {
            match natter_contract::request(&*self.bus, subjects::DESK_CALL, &command, self.timeout)
                .await
            {
                Err(ContractError::Bus(BusError::NoResponders { .. }))
                    if Instant::now() < deadline =>
                {
                    backoff.wait(&CancellationToken::new()).await;
                }
                answered => break answered.map_err(|e| e.into_status("desk"))?,
            }
        };
        if let Some(failure) = outcome.failure {
            return Err(status::from_failure(failure));
        }
        outcome.answer.and_then(|a| a.answer).ok_or_else(unreadable)
    }
}

fn unreadable() -> Status {
    status::internal(
        reason::SERVICE_MESSAGE_UNREADABLE,
        "the desk answered with an unreadable outcome",
    )
}

/// The service's RPCs: each request becomes the call `$variant`, whose
/// answer must be `$variant` too.
macro_rules! rpcs {
    ($($name:ident($request:ty) -> $response:ty = $variant:ident;)*) => {
        #[tonic::async_trait]
        impl DeskService for Api {$(
            async fn $name(&self, request: Request<$request>) -> Result<Response<$response>, Status> {
                match self.ask(request, Call::$variant).await? {
                    Answer::$variant(answer) => Ok(Response::new(answer)),
                    _ => Err(unreadable()),
                }
            }
        )*}
    };
}

rpcs! {
        put_team(PutTeamRequest) -> PutTeamResponse = PutTeam;
        list_teams(ListTeamsRequest) -> ListTeamsResponse = ListTeams;
        put_agent(PutAgentRequest) -> PutAgentResponse = PutAgent;
        set_presence(SetPresenceRequest) -> SetPresenceResponse = SetPresence;
        get_desk(GetDeskRequest) -> GetDeskResponse = GetDesk;
        accept_offer(AcceptOfferRequest) -> AcceptOfferResponse = AcceptOffer;
        decline_offer(DeclineOfferRequest) -> DeclineOfferResponse = DeclineOffer;
    transfer(TransferRequest) -> TransferResponse = Transfer;
}
