//! `natter.v1.DeskService` over gRPC: each call is authenticated here and
//! carried to the desk's holder as a `DeskCommand`, the same way a gateway
//! session's `desk` frames travel, so both follow one set of rules.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use natter_core::{Invalid, PageRequest, Role, TenantId};
use natter_proto::page::{next_page_token, page_request};
use natter_store::DeskKind;

use crate::contacts::{ContactError, Contacts, EXPORT_PAGE, csv, email_key, phone_key};
use crate::events;

/// Events a subscription reads at once.
const SUBSCRIBE_PAGE: u32 = 100;
/// How long an idle subscription waits for a notice before it looks.
const SUBSCRIBE_LOOK: Duration = Duration::from_secs(5);
use crate::desk::DeskError;

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
use natter_proto::v1::event_service_server::EventService;
use natter_proto::v1::*;
use tonic::{Request, Response, Status};

#[derive(Debug)]
pub(crate) struct Api {
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) verifier: Arc<Verifier>,
    /// Read here, from the store; changed by the holder.
    pub(crate) contacts: Contacts,
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

/// The service's RPCs: those carried to the holder, each request becoming
/// the call `$variant`, whose answer must be `$variant` too; then those
/// answered here.
macro_rules! rpcs {
    ($service:ident holder { $($name:ident($request:ty) -> $response:ty = $variant:ident;)* } here { $($here:tt)* }) => {
        #[tonic::async_trait]
        impl $service for Api {
            $(
                async fn $name(&self, request: Request<$request>) -> Result<Response<$response>, Status> {
                    match self.ask(request, Call::$variant).await? {
                        Answer::$variant(answer) => Ok(Response::new(answer)),
                        _ => Err(unreadable()),
                    }
                }
            )*
            $($here)*
        }
    };
}

rpcs! {
    DeskService holder {
            put_team(PutTeamRequest) -> PutTeamResponse = PutTeam;
            list_teams(ListTeamsRequest) -> ListTeamsResponse = ListTeams;
            put_agent(PutAgentRequest) -> PutAgentResponse = PutAgent;
            set_presence(SetPresenceRequest) -> SetPresenceResponse = SetPresence;
            get_desk(GetDeskRequest) -> GetDeskResponse = GetDesk;
            accept_offer(AcceptOfferRequest) -> AcceptOfferResponse = AcceptOffer;
            decline_offer(DeclineOfferRequest) -> DeclineOfferResponse = DeclineOffer;
        transfer(TransferRequest) -> TransferResponse = Transfer;
        update_contact(UpdateContactRequest) -> UpdateContactResponse = UpdateContact;
        get_contact(GetContactRequest) -> GetContactResponse = GetContact;
        put_rule(PutRuleRequest) -> PutRuleResponse = PutRule;
        list_rules(ListRulesRequest) -> ListRulesResponse = ListRules;
        delete_rule(DeleteRuleRequest) -> DeleteRuleResponse = DeleteRule;
        merge_contacts(MergeContactsRequest) -> MergeContactsResponse = MergeContacts;
        add_note(AddNoteRequest) -> AddNoteResponse = AddNote;
        list_notes(ListNotesRequest) -> ListNotesResponse = ListNotes;
        put_faq_entry(PutFaqEntryRequest) -> PutFaqEntryResponse = PutFaqEntry;
        list_faq_entries(ListFaqEntriesRequest) -> ListFaqEntriesResponse = ListFaqEntries;
        delete_faq_entry(DeleteFaqEntryRequest) -> DeleteFaqEntryResponse = DeleteFaqEntry;
        request_payment(RequestPaymentRequest) -> RequestPaymentResponse = RequestPayment;
        get_payment(GetPaymentRequest) -> GetPaymentResponse = GetPayment;
        list_payments(ListPaymentsRequest) -> ListPaymentsResponse = ListPayments;
    }
    here {
        async fn list_contacts(
            &self,
            request: Request<ListContactsRequest>,
        ) -> Result<Response<ListContactsResponse>, Status> {
            let (tenant, request) = self.reader(request, &[Role::Agent, Role::Service])?;
            let by = match (request.email.as_str(), request.phone.as_str()) {
                ("", "") => None,
                (email, "") => Some((DeskKind::ContactEmail, email_key(email))),
                ("", phone) => Some((DeskKind::ContactPhone, phone_key(phone))),
                _ => {
                    let why = Invalid::new("phone", "search by email or by phone, not both");
                    return Err(status::invalid_argument(why));
                }
            };
            if let Some((kind, key)) = by {
                let key = key.map_err(contact_status)?;
                let contacts = self.contacts.find_by(&tenant, kind, &key).await.map_err(contact_status)?;
                return Ok(Response::new(ListContactsResponse {
                    contacts,
                    next_page_token: String::new(),
                }));
            }
            let page = page_request(request.page_size, &request.page_token, &self.contacts.limits)
                .map_err(status::invalid_argument)?;
            let page = self.contacts.page(&tenant, page).await.map_err(contact_status)?;
            Ok(Response::new(ListContactsResponse {
                next_page_token: next_page_token(&page),
                contacts: page.items,
            }))
        }

        type ExportContactsStream =
            Pin<Box<dyn Stream<Item = Result<ExportContactsResponse, Status>> + std::marker::Send>>;

        async fn export_contacts(
            &self,
            request: Request<ExportContactsRequest>,
        ) -> Result<Response<Self::ExportContactsStream>, Status> {
            let (tenant, _) = self.reader(request, &[Role::Service])?;
            let contacts = self.contacts.clone();
            // One read of the store per chunk, as the caller takes them.
            let chunks = futures::stream::try_unfold(Some(None), move |after| {
                let (contacts, tenant) = (contacts.clone(), tenant.clone());
                async move {
                    let Some(after) = after else {
                        return Ok(None);
                    };
                    let header = after.is_none();
                    let page = PageRequest { after, size: EXPORT_PAGE };
                    let page = contacts.page(&tenant, page).await.map_err(contact_status)?;
                    let chunk = ExportContactsResponse {
                        csv: csv(&page.items, header).into(),
                    };
                    Ok(Some((chunk, page.next.map(Some))))
                }
            });
            Ok(Response::new(Box::pin(chunks)))
        }
    }
}

rpcs! {
    EventService holder {
        put_webhook(PutWebhookRequest) -> PutWebhookResponse = PutWebhook;
        list_webhooks(ListWebhooksRequest) -> ListWebhooksResponse = ListWebhooks;
        delete_webhook(DeleteWebhookRequest) -> DeleteWebhookResponse = DeleteWebhook;
        replay_webhook(ReplayWebhookRequest) -> ReplayWebhookResponse = ReplayWebhook;
    }
    here {
        type SubscribeStream =
            Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + std::marker::Send>>;

        async fn subscribe(
            &self,
            request: Request<SubscribeRequest>,
        ) -> Result<Response<Self::SubscribeStream>, Status> {
            let (tenant, request) = self.reader(request, &[Role::Service])?;
            let store = self.contacts.store.clone();
            let keeps_log = store
                .desk_records(&tenant, DeskKind::Webhook, PageRequest { after: None, size: 1 })
                .await
                .map_err(natter_server::store_status)?;
            if keeps_log.items.is_empty() {
                return Err(status::failed_precondition(
                    reason::FAILED_PRECONDITION,
                    "the tenant keeps no event log until it has a webhook",
                ));
            }
            // Told of new events before reading, so none slips between.
            let notices = self
                .bus
                .subscribe(&events::logged_subject(&tenant), None)
                .await
                .map_err(|e| natter_contract::ContractError::Bus(e).into_status("the bus"))?;
            let pending: Vec<TenantEvent> = Vec::new();
            let state = (store, tenant, request.after_seq, notices, pending.into_iter());
            let stream = futures::stream::try_unfold(state, move |mut state| {
                let types = request.event_types.clone();
                async move {
                    loop {
                        let (store, tenant, after, notices, pending) = &mut state;
                        if let Some(event) = pending.next() {
                            *after = event.seq;
                            if events::wanted(&types, &event.r#type) {
                                return Ok(Some((SubscribeResponse { event: Some(event) }, state)));
                            }
                            continue;
                        }
                        let page = events::read(&**store, tenant, *after, SUBSCRIBE_PAGE)
                            .await
                            .map_err(natter_server::store_status)?;
                        if page.is_empty() {
                            // A lost notice costs at most this long.
                            let _ = tokio::time::timeout(SUBSCRIBE_LOOK, notices.next()).await;
                        }
                        *pending = page.into_iter();
                    }
                }
            });
            Ok(Response::new(Box::pin(stream)))
        }
    }
}

impl Api {
    /// The caller's tenant and the request, if the caller's role may read.
    fn reader<T>(&self, request: Request<T>, roles: &[Role]) -> Result<(TenantId, T), Status> {
        let identity: Identity = natter_server::authenticate(&self.verifier, &request)?;
        if !roles.contains(&identity.role) {
            return Err(status::permission_denied(
                reason::ROLE_NOT_ALLOWED,
                "contacts are for the business's agents and services",
            ));
        }
        Ok((identity.tenant, request.into_inner()))
    }
}

fn contact_status(error: ContactError) -> Status {
    DeskError::Contact(error).into_status()
}
