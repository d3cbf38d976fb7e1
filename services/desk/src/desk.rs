//! The holder's desk: each tenant's routing, loaded from the store when
//! first needed, and what every call, lifecycle change, session and
//! timeout does to it. Only the holder's loop owns a [`Desk`], so nothing
//! here locks. Each change is written to the store before its effects go
//! out; a write that fails drops the tenant from memory, so it is loaded
//! again as the store has it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use natter_auth::Identity;
use natter_bus::{Bus, Outgoing};
use natter_core::{
    ConversationId, Event, Invalid, Lifecycle, MembershipKind, Owner, Role, Status, TeamId,
    TenantId,
};
use natter_core::{Timestamp, UserId};
use natter_proto::bus::v1::DeskRoute;
use natter_proto::convert::{parse_id, timestamp_to_wire};
use natter_proto::page::{next_page_token, page_request};
use natter_proto::status::{self, reason};
use natter_proto::v1::{self, desk_answer::Answer, desk_call::Call, desk_signal::Signal};
use natter_routing::{Presence, Request, Router, RoutingError, Step};
use natter_store::{DeskKind, DeskRecord, DeskStore, DeskWrite, PageRequest, StoreError};
use thiserror::Error;

use crate::contacts::{ContactError, Contacts, Patch};
use crate::events::{self, Also, EventLog};
use crate::notes;
use crate::payments;
use crate::presence::{AgentKey, Sessions};
use crate::records::{self, Hours, Route, Rule};
use crate::webhooks::{self, Webhooks};

/// [`load`] with the desk's own fields, borrowed apart so the caller may
/// use the others while it holds the tenant.
macro_rules! load {
    ($desk:ident, $tenant:expr, $changes:expr) => {
        load(
            &mut $desk.tenants,
            &mut $desk.webhooks,
            &*$desk.store,
            &$desk.sessions,
            $tenant,
            $changes,
        )
        .await
    };
}

/// How many records one store read returns while a tenant loads.
const LOAD_PAGE: u32 = 500;

/// What a caller did wrong, or what failed underneath.
#[derive(Debug, Error)]
pub(crate) enum DeskError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    Denied(&'static str),
    #[error(transparent)]
    Routing(#[from] RoutingError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Contact(#[from] ContactError),
    #[error("no {0} {1}")]
    NotFound(&'static str, String),
    #[error("{0}")]
    Full(&'static str),
}

impl DeskError {
    pub(crate) fn into_status(self) -> tonic::Status {
        match self {
            DeskError::Invalid(e) => status::invalid_argument(e),
            DeskError::Denied(why) => status::permission_denied(reason::ROLE_NOT_ALLOWED, why),
            DeskError::Routing(e) => match e {
                RoutingError::UnknownTeam(team) => status::not_found("team", team.as_str()),
                RoutingError::UnknownAgent(agent) => status::not_found("agent", agent.as_str()),
                RoutingError::UnknownConversation(id) => {
                    status::not_found("routed conversation", &id.to_string())
                }
                RoutingError::AlreadyRouted(_) => {
                    status::already_exists(reason::CONFLICT, e.to_string())
                }
                RoutingError::NotOffered { .. } | RoutingError::Unavailable(_) => {
                    status::failed_precondition(reason::FAILED_PRECONDITION, e.to_string())
                }
            },
            DeskError::Store(e) | DeskError::Contact(ContactError::Store(e)) => {
                natter_server::store_status(e)
            }
            DeskError::Contact(ContactError::Invalid(e)) => status::invalid_argument(e),
            DeskError::NotFound(kind, id) => status::not_found(kind, &id),
            DeskError::Full(why) => status::failed_precondition(reason::LIMIT_EXCEEDED, why),
            DeskError::Contact(ContactError::NotFound(user)) => {
                status::not_found("contact", user.as_str())
            }
            DeskError::Contact(e @ ContactError::Merged(..)) => {
                status::failed_precondition(reason::FAILED_PRECONDITION, e.to_string())
            }
        }
    }
}

pub(crate) type Result<T, E = DeskError> = std::result::Result<T, E>;

/// What the holder carries out once a change is in the store. Each is
/// safe to carry out twice.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    /// Make `agent` a member of the conversation and its assignee, with
    /// the inbox in control.
    Assign {
        tenant: TenantId,
        conversation: ConversationId,
        agent: UserId,
        team: TeamId,
    },
    /// Close the conversation: resolved and left alone long enough.
    Close {
        tenant: TenantId,
        conversation: ConversationId,
    },
    /// The conversation waits again, in `team`'s queue: no assignee.
    Requeue {
        tenant: TenantId,
        conversation: ConversationId,
        team: TeamId,
    },
    /// Send `text` to the conversation as the desk; `key` makes sending
    /// it again a duplicate.
    Reply {
        tenant: TenantId,
        conversation: ConversationId,
        key: String,
        text: String,
    },
    /// Tell these users' sessions.
    Tell {
        tenant: TenantId,
        users: Vec<UserId>,
        signal: Signal,
    },
    /// Tell the conversation's members.
    TellConversation {
        tenant: TenantId,
        conversation: ConversationId,
        signal: Signal,
    },
}

impl Changes {
    fn new(now: Timestamp) -> Self {
        Self {
            now,
            writes: Vec::new(),
            effects: Vec::new(),
            changed: false,
        }
    }
}

/// What one change of a tenant's desk writes and sets off.
#[derive(Debug)]
struct Changes {
    /// When it happens.
    now: Timestamp,
    writes: Vec<DeskWrite>,
    effects: Vec<Effect>,
    /// Agents should look at the desk again.
    changed: bool,
}

#[derive(Debug)]
struct Tenant {
    router: Router,
    teams: BTreeMap<TeamId, v1::Team>,
    /// The hours of the teams that keep any.
    hours: BTreeMap<TeamId, Hours>,
    agents: BTreeMap<UserId, v1::Agent>,
    /// Presence set by hand; an agent who set none is online while
    /// connected.
    manual: HashMap<UserId, Presence>,
    routes: BTreeMap<ConversationId, Route>,
    /// Resolved conversations of teams that close them, and when.
    closing: BTreeMap<ConversationId, Timestamp>,
    /// Routing rules by id, as given and as applied.
    rules: BTreeMap<String, (v1::RoutingRule, Rule)>,
    /// What the rules look at, for conversations not routed yet: kept
    /// only while the tenant has rules.
    context: HashMap<ConversationId, Context>,
    /// Webhook settings by id.
    webhooks: BTreeMap<String, v1::Webhook>,
    /// Kept once the tenant has a webhook.
    log: Option<EventLog>,
}

pub(crate) struct Desk {
    store: Arc<dyn DeskStore>,
    contacts: Contacts,
    webhooks: Webhooks,
    bus: Arc<dyn Bus>,
    tenants: HashMap<TenantId, Tenant>,
    pub(crate) sessions: Sessions,
}

impl std::fmt::Debug for Desk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Desk")
            .field("tenants", &self.tenants.len())
            .finish_non_exhaustive()
    }
}

impl Desk {
    pub(crate) fn new(
        contacts: Contacts,
        webhooks: Webhooks,
        bus: Arc<dyn Bus>,
        sessions: Sessions,
    ) -> Self {
        Self {
            store: contacts.store.clone(),
            contacts,
            webhooks,
            bus,
            tenants: HashMap::new(),
            sessions,
        }
    }

    /// Carries out a call of `actor`'s.
    pub(crate) async fn call(
        &mut self,
        actor: &Identity,
        call: Call,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) -> Result<Answer> {
        allowed(actor, &call)?;
        let tenant_id = &actor.tenant;
        let mut changes = Changes::new(now);
        let answer = self.answer(actor, call, now, &mut changes).await;
        self.commit(tenant_id, changes, out).await?;
        answer
    }

    async fn answer(
        &mut self,
        actor: &Identity,
        call: Call,
        now: Timestamp,
        changes: &mut Changes,
    ) -> Result<Answer> {
        let tenant_id = actor.tenant.clone();
        let sessions = &self.sessions;
        let tenant = load!(self, &tenant_id, changes)?;
        let answer = match call {
            Call::PutTeam(request) => {
                let (wire, team, hours) = records::team(request.team.unwrap_or_default())?;
                changes
                    .writes
                    .push(put(DeskKind::Team, team.id.as_str(), &wire));
                tenant.teams.insert(team.id.clone(), wire.clone());
                match hours {
                    Some(hours) => tenant.hours.insert(team.id.clone(), hours),
                    None => tenant.hours.remove(&team.id),
                };
                tenant.router.set_team(team);
                changes.changed = true;
                Answer::PutTeam(v1::PutTeamResponse { team: Some(wire) })
            }
            Call::PutAgent(request) => {
                let (wire, agent) = records::agent(request.agent.unwrap_or_default())?;
                let id = agent.id.clone();
                let mut steps = tenant.router.set_agent(agent, now)?;
                changes
                    .writes
                    .push(put(DeskKind::Agent, id.as_str(), &wire));
                tenant.agents.insert(id.clone(), wire.clone());
                let presence = tenant.presence(sessions, &tenant_id, &id);
                steps.extend(tenant.router.set_presence(&id, presence, now)?);
                tenant.apply(&tenant_id, steps, changes);
                changes.changed = true;
                Answer::PutAgent(v1::PutAgentResponse { agent: Some(wire) })
            }
            Call::ListTeams(_) => {
                let teams = tenant.teams.values().cloned().collect();
                Answer::ListTeams(v1::ListTeamsResponse { teams })
            }
            Call::GetDesk(_) => Answer::GetDesk(tenant.view()),
            Call::PutWebhook(request) => {
                let wire = webhooks::settings(request.webhook.unwrap_or_default())?;
                let id = wire.webhook_id.clone();
                // Written at once, not with the call's other changes: the
                // deliverer reads it back when it starts.
                self.store
                    .write_desk(&tenant_id, &[put(DeskKind::Webhook, &id, &wire)])
                    .await?;
                if tenant.log.is_none() {
                    tenant.log = Some(EventLog::load(&*self.store, &tenant_id).await?);
                }
                let start = tenant.log.as_ref().map_or(0, EventLog::next_seq);
                tenant.webhooks.insert(id.clone(), wire.clone());
                self.webhooks.start(&tenant_id, wire, start).await?;
                Answer::PutWebhook(v1::PutWebhookResponse {
                    webhook: self.webhook(&tenant_id, &id),
                })
            }
            Call::ListWebhooks(_) => Answer::ListWebhooks(v1::ListWebhooksResponse {
                webhooks: self
                    .webhooks
                    .list(&tenant_id)
                    .into_iter()
                    .map(redacted)
                    .collect(),
            }),
            Call::DeleteWebhook(request) => {
                let id = request.webhook_id;
                self.webhooks.stop_one(&tenant_id, &id).await;
                tenant.webhooks.remove(&id);
                for kind in [DeskKind::Webhook, DeskKind::WebhookState] {
                    changes.writes.push(DeskWrite::Delete {
                        kind,
                        id: id.clone(),
                    });
                }
                Answer::DeleteWebhook(v1::DeleteWebhookResponse {})
            }
            Call::ReplayWebhook(request) => {
                let id = request.webhook_id;
                self.webhooks
                    .replay(&tenant_id, &id, request.after_seq)
                    .ok_or_else(|| DeskError::NotFound("webhook", id.clone()))?;
                Answer::ReplayWebhook(v1::ReplayWebhookResponse {
                    webhook: self.webhook(&tenant_id, &id),
                })
            }
            Call::PutRule(request) => {
                let (wire, rule) = records::rule(request.rule.unwrap_or_default())?;
                changes
                    .writes
                    .push(put(DeskKind::Rule, &wire.rule_id, &wire));
                tenant
                    .rules
                    .insert(wire.rule_id.clone(), (wire.clone(), rule));
                Answer::PutRule(v1::PutRuleResponse { rule: Some(wire) })
            }
            Call::ListRules(_) => Answer::ListRules(v1::ListRulesResponse {
                rules: tenant
                    .rules
                    .values()
                    .map(|(wire, _)| wire.clone())
                    .collect(),
            }),
            Call::DeleteRule(request) => {
                tenant.rules.remove(&request.rule_id);
                changes.writes.push(DeskWrite::Delete {
                    kind: DeskKind::Rule,
                    id: request.rule_id,
                });
                Answer::DeleteRule(v1::DeleteRuleResponse {})
            }
            Call::GetContact(request) => {
                let user = parse_id("user_id", &request.user_id)?;
                Answer::GetContact(v1::GetContactResponse {
                    contact: Some(self.contacts.get(&tenant_id, &user).await?),
                })
            }
            Call::UpdateContact(request) => {
                let (user, patch) = Patch::from_wire(request.contact.unwrap_or_default())?;
                let contact = self.contacts.update(&tenant_id, &user, patch, now).await?;
                Answer::UpdateContact(v1::UpdateContactResponse {
                    contact: Some(contact),
                })
            }
            Call::MergeContacts(request) => {
                let from = parse_id("from_user_id", &request.from_user_id)?;
                let into = parse_id("into_user_id", &request.into_user_id)?;
                Answer::MergeContacts(v1::MergeContactsResponse {
                    contact: self.contacts.merge(&tenant_id, &from, &into, now).await?,
                })
            }
            Call::AddNote(request) => {
                let conversation = parse_id("conversation_id", &request.conversation_id)?;
                let (note, write) = notes::write(conversation, &actor.user, &request.text, now)?;
                changes.writes.push(write);
                let users = tenant.online_agents(sessions, &tenant_id);
                if !users.is_empty() {
                    changes.effects.push(Effect::Tell {
                        tenant: tenant_id.clone(),
                        users,
                        signal: Signal::Note(note.clone()),
                    });
                }
                Answer::AddNote(v1::AddNoteResponse { note: Some(note) })
            }
            Call::ListNotes(request) => {
                let conversation = parse_id("conversation_id", &request.conversation_id)?;
                let limits = &self.contacts.limits;
                let page = page_request(request.page_size, &request.page_token, limits)?;
                let page = notes::page(&*self.store, &tenant_id, conversation, page).await?;
                Answer::ListNotes(v1::ListNotesResponse {
                    next_page_token: next_page_token(&page),
                    notes: page.items,
                })
            }
            Call::PutFaqEntry(request) => {
                let entry = records::faq_entry(request.entry.unwrap_or_default())?;
                let id = entry.entry_id.as_str();
                let store = &*self.store;
                if store
                    .desk_record(&tenant_id, DeskKind::FaqEntry, id)
                    .await?
                    .is_none()
                    && records_of(store, &tenant_id, DeskKind::FaqEntry)
                        .await?
                        .len()
                        >= records::MAX_FAQ_ENTRIES
                {
                    return Err(DeskError::Full("the FAQ holds 1000 entries"));
                }
                changes.writes.push(put(DeskKind::FaqEntry, id, &entry));
                Answer::PutFaqEntry(v1::PutFaqEntryResponse { entry: Some(entry) })
            }
            Call::ListFaqEntries(request) => {
                let size = match request.page_size {
                    0 => records::FAQ_PAGE,
                    n => n.min(records::FAQ_PAGE),
                };
                let after = match request.page_token.as_str() {
                    "" => None,
                    token => Some(token.to_owned()),
                };
                let page = PageRequest { after, size };
                let page = self
                    .store
                    .desk_records(&tenant_id, DeskKind::FaqEntry, page)
                    .await?;
                Answer::ListFaqEntries(v1::ListFaqEntriesResponse {
                    entries: page.items.iter().map(decode).collect::<Result<_>>()?,
                    next_page_token: page.next.unwrap_or_default(),
                })
            }
            Call::DeleteFaqEntry(request) => {
                let _: TeamId = parse_id("entry_id", &request.entry_id)?;
                changes.writes.push(DeskWrite::Delete {
                    kind: DeskKind::FaqEntry,
                    id: request.entry_id,
                });
                Answer::DeleteFaqEntry(v1::DeleteFaqEntryResponse {})
            }
            Call::RequestPayment(_) => {
                // Answered beside the loop (`holder.rs`): it waits for the
                // payment provider.
                return Err(Invalid::new("call", "request_payment is not taken here").into());
            }
            Call::QueryAnalytics(_) => {
                // Answered beside the loop (`holder.rs`): it may read many
                // records.
                return Err(Invalid::new("call", "query_analytics is not taken here").into());
            }
            Call::GetPayment(request) => {
                let payment = payments::get(&*self.store, &tenant_id, &request)
                    .await?
                    .ok_or_else(|| DeskError::NotFound("payment", request.payment_id.clone()))?;
                Answer::GetPayment(v1::GetPaymentResponse {
                    payment: Some(payment),
                })
            }
            Call::ListPayments(request) => {
                let conversation = parse_id("conversation_id", &request.conversation_id)?;
                let limits = &self.contacts.limits;
                let page = page_request(request.page_size, &request.page_token, limits)?;
                let page = payments::page(&*self.store, &tenant_id, conversation, page).await?;
                Answer::ListPayments(v1::ListPaymentsResponse {
                    next_page_token: next_page_token(&page),
                    payments: page.items,
                })
            }
            Call::TellPlace(request) => {
                let id: ConversationId = parse_id("conversation_id", &request.conversation_id)?;
                // Told to the conversation's members, never to the caller:
                // asking about another's conversation tells the asker
                // nothing.
                if let Some((_, position)) = tenant
                    .router
                    .waiting()
                    .into_iter()
                    .find(|(r, _)| r.conversation == id)
                {
                    tenant.tell_place(&tenant_id, id, position, changes);
                }
                Answer::TellPlace(v1::TellPlaceResponse {})
            }
            Call::SetPresence(request) => {
                let user = match request.user_id.as_str() {
                    "" => actor.user.clone(),
                    id => parse_id("user_id", id)?,
                };
                let manual = records::presence_from_wire(request.presence)?;
                if !tenant.agents.contains_key(&user) {
                    return Err(RoutingError::UnknownAgent(user).into());
                }
                tenant.manual.insert(user.clone(), manual);
                let presence = tenant.presence(sessions, &tenant_id, &user);
                let steps = tenant.router.set_presence(&user, presence, now)?;
                tenant.apply(&tenant_id, steps, changes);
                changes.changed = true;
                Answer::SetPresence(v1::SetPresenceResponse {
                    presence: records::presence_to_wire(presence).into(),
                })
            }
            Call::AcceptOffer(request) => {
                let id = parse_id("conversation_id", &request.conversation_id)?;
                let steps = tenant.router.accept(id, &actor.user, now)?;
                tenant.apply(&tenant_id, steps, changes);
                changes.changed = true;
                Answer::AcceptOffer(v1::AcceptOfferResponse {})
            }
            Call::DeclineOffer(request) => {
                let id = parse_id("conversation_id", &request.conversation_id)?;
                let steps = tenant.router.decline(id, &actor.user, now)?;
                tenant.apply(&tenant_id, steps, changes);
                changes.changed = true;
                Answer::DeclineOffer(v1::DeclineOfferResponse {})
            }
            Call::Transfer(request) => {
                let id: ConversationId = parse_id("conversation_id", &request.conversation_id)?;
                if actor.role == Role::Agent && tenant.router.holder(id) != Some(&actor.user) {
                    return Err(DeskError::Denied(
                        "an agent may transfer only a conversation they hold",
                    ));
                }
                use v1::transfer_request::To;
                let steps = match request.to {
                    Some(To::AgentId(agent)) => {
                        let agent = parse_id("agent_id", &agent)?;
                        tenant.router.transfer_to_agent(id, &agent, now)?
                    }
                    Some(To::TeamId(team)) => {
                        let team = parse_id("team_id", &team)?;
                        tenant.router.transfer_to_team(id, &team, now)?
                    }
                    None => return Err(Invalid::new("to", "an agent or a team is required").into()),
                };
                tenant.apply(&tenant_id, steps, changes);
                changes.changed = true;
                Answer::Transfer(v1::TransferResponse {})
            }
        };
        Ok(answer)
    }

    /// A webhook as it stands, without its secrets.
    fn webhook(&self, tenant: &TenantId, id: &str) -> Option<v1::Webhook> {
        self.webhooks
            .list(tenant)
            .into_iter()
            .find(|w| w.webhook_id == id)
            .map(redacted)
    }

    /// A customer answered a lead form: the answers land on their contact.
    /// An answer the contact cannot take is reported and dropped.
    pub(crate) async fn lead(
        &mut self,
        tenant: &TenantId,
        customer: &UserId,
        values: &BTreeMap<String, String>,
        now: Timestamp,
    ) -> Result<Option<v1::Contact>> {
        let updated = match Patch::from_form(values) {
            Ok(patch) => self.contacts.update(tenant, customer, patch, now).await,
            Err(e) => Err(e),
        };
        match updated {
            Ok(contact) => Ok(Some(contact)),
            Err(ContactError::Store(e)) => Err(e.into()),
            Err(e) => {
                tracing::warn!(tenant = %tenant, customer = %customer, error = %e, "lead form answer not kept");
                Ok(None)
            }
        }
    }

    /// The payment a payment message concerns, for the event log of a
    /// tenant that keeps one.
    pub(crate) async fn logged_payment(
        &mut self,
        tenant_id: &TenantId,
        message: &natter_core::Message,
    ) -> Result<Option<Also>> {
        let mut changes = Changes::new(message.sent_at);
        let tenant = load!(self, tenant_id, &mut changes)?;
        if tenant.log.is_none() {
            return Ok(None);
        }
        let mut out = Vec::new();
        self.commit(tenant_id, changes, &mut out).await?;
        let payment = payments::logged(&*self.store, tenant_id, message).await?;
        Ok(payment.map(Also::Payment))
    }

    /// Adds `message` (and the contact its lead form filled in) to the
    /// tenant's event log, if it keeps one and does not hold it yet; the
    /// writes wait in `logged` for [`Desk::write_log`].
    pub(crate) async fn log(
        &mut self,
        tenant_id: &TenantId,
        message: &v1::Message,
        also: Option<Also>,
        now: Timestamp,
        logged: &mut Logged,
    ) -> Result<()> {
        let mut changes = Changes::new(now);
        let tenant = load!(self, tenant_id, &mut changes)?;
        if let Some(log) = tenant.log.as_mut()
            && log.is_new(message)
        {
            let writes = logged.0.entry(tenant_id.clone()).or_default();
            log.append(message, also, now, writes);
        }
        let mut out = Vec::new();
        self.commit(tenant_id, changes, &mut out).await?;
        logged.1.extend(out);
        Ok(())
    }

    /// Writes what [`Desk::log`] gathered, each tenant's events before its
    /// head, and tells its webhooks and subscribers.
    pub(crate) async fn write_log(&mut self, logged: Logged) -> Result<()> {
        for (tenant_id, mut writes) in logged.0 {
            let Some(log) = self.tenants.get(&tenant_id).and_then(|t| t.log.as_ref()) else {
                continue;
            };
            writes.push(log.head_write());
            if let Err(e) = self.store.write_desk(&tenant_id, &writes).await {
                // The log in memory ran ahead of the store: load it again.
                self.tenants.remove(&tenant_id);
                return Err(e.into());
            }
            self.webhooks.wake(&tenant_id);
            let notice = Outgoing::new(Vec::new());
            if let Err(e) = self
                .bus
                .publish(&events::logged_subject(&tenant_id), notice)
                .await
            {
                tracing::warn!(error = %e, "cannot tell subscribers the log grew");
            }
        }
        Ok(())
    }

    pub(crate) async fn stop_webhooks(&mut self) {
        self.webhooks.stop_all().await;
    }

    /// Lets the tenant's rules see an event of a conversation.
    pub(crate) async fn note(
        &mut self,
        tenant_id: &TenantId,
        event: &Event,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) -> Result<()> {
        let mut changes = Changes::new(now);
        let tenant = load!(self, tenant_id, &mut changes)?;
        tenant.note(event);
        self.commit(tenant_id, changes, out).await
    }

    /// A conversation's lifecycle changed (an activity stored at `at`):
    /// it may now wait for a person, be resolved, or be reopened.
    pub(crate) async fn lifecycle(
        &mut self,
        tenant_id: &TenantId,
        conversation: ConversationId,
        lifecycle: &Lifecycle,
        at: Timestamp,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) -> Result<()> {
        let mut changes = Changes::new(now);
        let tenant = load!(self, tenant_id, &mut changes)?;
        let contact = match tenant.customer_to_read(conversation) {
            Some(customer) => match self.contacts.get(tenant_id, customer).await {
                Ok(contact) => Some(contact),
                Err(ContactError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        tenant.on_lifecycle(
            tenant_id,
            conversation,
            lifecycle,
            at,
            contact.as_ref(),
            &mut changes,
        );
        self.commit(tenant_id, changes, out).await
    }

    /// Agents' sessions opened or closed.
    pub(crate) async fn connected(
        &mut self,
        agents: Vec<AgentKey>,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) -> Result<()> {
        let mut by_tenant: BTreeMap<TenantId, Vec<UserId>> = BTreeMap::new();
        for (tenant, user) in agents {
            by_tenant.entry(tenant).or_default().push(user);
        }
        for (tenant_id, users) in by_tenant {
            // Only loaded tenants have a presence to change; the others
            // read the sessions when they load.
            let Some(tenant) = self.tenants.get_mut(&tenant_id) else {
                continue;
            };
            let mut changes = Changes::new(now);
            for user in users {
                let presence = tenant.presence(&self.sessions, &tenant_id, &user);
                if tenant
                    .router
                    .agents()
                    .any(|a| a.agent.id == user && a.presence != presence)
                {
                    let steps = tenant.router.set_presence(&user, presence, now)?;
                    tenant.apply(&tenant_id, steps, &mut changes);
                    changes.changed = true;
                }
            }
            self.commit(&tenant_id, changes, out).await?;
        }
        Ok(())
    }

    /// When the next offer times out.
    pub(crate) fn next_timeout(&self) -> Option<Timestamp> {
        self.tenants.values().filter_map(Tenant::next_due).min()
    }

    /// Withdraws the offers whose time is up, and closes the resolved
    /// conversations left alone long enough.
    pub(crate) async fn tick(&mut self, now: Timestamp, out: &mut Vec<Effect>) -> Result<()> {
        let due: Vec<TenantId> = self
            .tenants
            .iter()
            .filter(|(_, t)| t.next_due().is_some_and(|at| at <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for tenant_id in due {
            let mut changes = Changes::new(now);
            if let Some(tenant) = self.tenants.get_mut(&tenant_id) {
                tenant.tick(&tenant_id, &mut changes);
            }
            self.commit(&tenant_id, changes, out).await?;
        }
        Ok(())
    }

    /// Writes what a change wrote, then lets its effects out.
    async fn commit(
        &mut self,
        tenant_id: &TenantId,
        changes: Changes,
        out: &mut Vec<Effect>,
    ) -> Result<()> {
        if !changes.writes.is_empty()
            && let Err(e) = self.store.write_desk(tenant_id, &changes.writes).await
        {
            tracing::warn!(tenant = %tenant_id, error = %e, "desk write failed; reloading the tenant");
            self.tenants.remove(tenant_id);
            return Err(e.into());
        }
        out.extend(changes.effects);
        if changes.changed
            && let Some(tenant) = self.tenants.get(tenant_id)
        {
            let users = tenant.online_agents(&self.sessions, tenant_id);
            if !users.is_empty() {
                out.push(Effect::Tell {
                    tenant: tenant_id.clone(),
                    users,
                    signal: Signal::Changed(v1::DeskChanged {}),
                });
            }
        }
        Ok(())
    }
}

/// What routing rules look at in a conversation not routed yet.
#[derive(Debug, Default)]
struct Context {
    customer: Option<UserId>,
    /// The start of the customer's first text.
    first: Option<String>,
}

/// Conversations whose context a tenant keeps at most.
const MAX_CONTEXTS: usize = 10_000;
/// How much of a customer's first text the rules see.
const MAX_FIRST_BYTES: usize = 1000;

/// Events to log, by tenant, and the effects loading their tenants set
/// off.
#[derive(Debug, Default)]
pub(crate) struct Logged(BTreeMap<TenantId, Vec<DeskWrite>>, pub(crate) Vec<Effect>);

/// What a webhook shows callers: never its secrets.
fn redacted(mut webhook: v1::Webhook) -> v1::Webhook {
    webhook.secrets.clear();
    webhook
}

/// Who may make which call: the business's services anything, agents
/// what concerns their own work, nobody else anything.
pub(crate) fn allowed(actor: &Identity, call: &Call) -> Result<()> {
    match (actor.role, call) {
        (Role::Service, _) => Ok(()),
        (
            Role::Agent,
            Call::PutTeam(_)
            | Call::PutAgent(_)
            | Call::PutWebhook(_)
            | Call::PutRule(_)
            | Call::DeleteRule(_)
            | Call::ListWebhooks(_)
            | Call::DeleteWebhook(_)
            | Call::ReplayWebhook(_)
            | Call::MergeContacts(_)
            | Call::PutFaqEntry(_)
            | Call::DeleteFaqEntry(_),
        ) => Err(DeskError::Denied(
            "only a service may configure the desk or merge contacts",
        )),
        (Role::Agent, Call::SetPresence(r))
            if !r.user_id.is_empty() && r.user_id != actor.user.as_str() =>
        {
            Err(DeskError::Denied("an agent sets only their own presence"))
        }
        (_, Call::TellPlace(_)) | (Role::Bot, Call::ListFaqEntries(_)) | (Role::Agent, _) => Ok(()),
        (Role::Customer | Role::Bot, _) => Err(DeskError::Denied(
            "the desk is for the business's agents and services",
        )),
    }
}

/// The tenant's desk, loaded from the store if it is not in memory yet:
/// teams, agents with their presence, and the routed conversations, each
/// assignment carried out again in case the holder before did not finish.
async fn load<'a>(
    tenants: &'a mut HashMap<TenantId, Tenant>,
    webhooks: &mut Webhooks,
    store: &dyn DeskStore,
    sessions: &Sessions,
    tenant_id: &TenantId,
    changes: &mut Changes,
) -> Result<&'a mut Tenant> {
    if !tenants.contains_key(tenant_id) {
        let tenant = read(store, sessions, tenant_id, changes).await?;
        for webhook in tenant.webhooks.values() {
            webhooks.start(tenant_id, webhook.clone(), 0).await?;
        }
        tenants.insert(tenant_id.clone(), tenant);
    }
    Ok(tenants
        .get_mut(tenant_id)
        .expect("the tenant was just inserted"))
}

async fn read(
    store: &dyn DeskStore,
    sessions: &Sessions,
    tenant_id: &TenantId,
    changes: &mut Changes,
) -> Result<Tenant> {
    let now = changes.now;
    let mut tenant = Tenant {
        router: Router::new(),
        teams: BTreeMap::new(),
        hours: BTreeMap::new(),
        agents: BTreeMap::new(),
        manual: HashMap::new(),
        routes: BTreeMap::new(),
        closing: BTreeMap::new(),
        rules: BTreeMap::new(),
        context: HashMap::new(),
        webhooks: BTreeMap::new(),
        log: None,
    };
    for record in records_of(store, tenant_id, DeskKind::Rule).await? {
        match decode::<v1::RoutingRule>(&record).and_then(|r| Ok(records::rule(r)?)) {
            Ok(rule) => {
                tenant.rules.insert(record.id, rule);
            }
            Err(e) => {
                tracing::error!(tenant = %tenant_id, id = record.id, error = %e, "unreadable rule skipped")
            }
        }
    }
    for record in records_of(store, tenant_id, DeskKind::Webhook).await? {
        match decode::<v1::Webhook>(&record) {
            Ok(webhook) => {
                tenant.webhooks.insert(record.id, webhook);
            }
            Err(e) => {
                tracing::error!(tenant = %tenant_id, id = record.id, error = %e, "unreadable webhook skipped")
            }
        }
    }
    if !tenant.webhooks.is_empty() {
        tenant.log = Some(EventLog::load(store, tenant_id).await?);
    }
    for record in records_of(store, tenant_id, DeskKind::Team).await? {
        match decode::<v1::Team>(&record).and_then(|t| Ok(records::team(t)?)) {
            Ok((wire, team, hours)) => {
                if let Some(hours) = hours {
                    tenant.hours.insert(team.id.clone(), hours);
                }
                tenant.teams.insert(team.id.clone(), wire);
                tenant.router.set_team(team);
            }
            Err(e) => {
                tracing::error!(tenant = %tenant_id, id = record.id, error = %e, "unreadable team skipped")
            }
        }
    }
    for record in records_of(store, tenant_id, DeskKind::Agent).await? {
        let agent = decode::<v1::Agent>(&record).and_then(|a| Ok(records::agent(a)?));
        let set = agent.and_then(|(wire, agent)| {
            let id = agent.id.clone();
            tenant.router.set_agent(agent, now)?;
            let presence = tenant.presence(sessions, tenant_id, &id);
            tenant.router.set_presence(&id, presence, now)?;
            tenant.agents.insert(id, wire);
            Ok(())
        });
        if let Err(e) = set {
            tracing::error!(tenant = %tenant_id, id = record.id, error = %e, "unusable agent skipped");
        }
    }
    let (mut assigned, mut waiting) = (Vec::new(), Vec::new());
    for record in records_of(store, tenant_id, DeskKind::Route).await? {
        let route = decode::<DeskRoute>(&record).and_then(|r| Ok(Route::try_from(r)?));
        match route {
            Ok(route) if route.resolved_at.is_some() => {
                let closes_after = tenant.closes_after(&route.request.team);
                match (route.resolved_at, closes_after) {
                    (Some(at), Some(after)) => {
                        tenant
                            .closing
                            .insert(route.request.conversation, plus(at, after));
                    }
                    // The team no longer closes: forget it.
                    _ => changes
                        .writes
                        .push(delete_route(route.request.conversation)),
                }
            }
            Ok(route) if tenant.teams.contains_key(&route.request.team) => {
                match route
                    .agent
                    .clone()
                    .filter(|a| tenant.agents.contains_key(a))
                {
                    Some(agent) => assigned.push((route.request.clone(), agent)),
                    None => waiting.push(route.request.clone()),
                }
                tenant.routes.insert(route.request.conversation, route);
            }
            Ok(route) => {
                tracing::warn!(tenant = %tenant_id, conversation = %route.request.conversation, "route of a removed team dropped")
            }
            Err(e) => {
                tracing::error!(tenant = %tenant_id, id = record.id, error = %e, "unreadable route skipped")
            }
        }
    }
    for (request, agent) in &assigned {
        changes.effects.push(Effect::Assign {
            tenant: tenant_id.clone(),
            conversation: request.conversation,
            agent: agent.clone(),
            team: request.team.clone(),
        });
    }
    let steps = tenant.router.restore(assigned, waiting, now)?;
    tenant.apply(tenant_id, steps, changes);
    Ok(tenant)
}

/// Every record of `kind`, page by page.
async fn records_of(
    store: &dyn DeskStore,
    tenant: &TenantId,
    kind: DeskKind,
) -> Result<Vec<DeskRecord>> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .desk_records(
                tenant,
                kind,
                PageRequest {
                    after,
                    size: LOAD_PAGE,
                },
            )
            .await?;
        all.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(all),
        }
    }
}

fn decode<M: prost::Message + Default>(record: &DeskRecord) -> Result<M> {
    M::decode(record.body.as_slice()).map_err(|e| Invalid::new("record", e.to_string()).into())
}

fn put(kind: DeskKind, id: &str, message: &impl prost::Message) -> DeskWrite {
    DeskWrite::Put {
        kind,
        id: id.to_owned(),
        body: message.encode_to_vec(),
    }
}

impl Tenant {
    /// The tenant's agents with a live session.
    fn online_agents(&self, sessions: &Sessions, tenant: &TenantId) -> Vec<UserId> {
        self.agents
            .keys()
            .filter(|a| sessions.connected(tenant, a))
            .cloned()
            .collect()
    }

    /// What the router should take `user`'s presence to be.
    fn presence(&self, sessions: &Sessions, tenant: &TenantId, user: &UserId) -> Presence {
        if sessions.connected(tenant, user) {
            self.manual.get(user).copied().unwrap_or(Presence::Online)
        } else {
            Presence::Offline
        }
    }

    fn on_lifecycle(
        &mut self,
        tenant_id: &TenantId,
        conversation: ConversationId,
        lifecycle: &Lifecycle,
        at: Timestamp,
        contact: Option<&v1::Contact>,
        changes: &mut Changes,
    ) {
        let now = changes.now;
        let routed = self.routes.contains_key(&conversation);
        if routed || lifecycle.status != Status::Open {
            self.context.remove(&conversation);
        }
        let steps = match lifecycle.status {
            Status::Resolved | Status::Closed if routed => {
                let route = self.routes.remove(&conversation);
                let closes_after = route
                    .as_ref()
                    .and_then(|r| self.closes_after(&r.request.team));
                match (lifecycle.status, route, closes_after) {
                    (Status::Resolved, Some(mut route), Some(after)) => {
                        route.resolved_at = Some(at);
                        changes.writes.push(route_write(&route));
                        self.closing.insert(conversation, plus(at, after));
                    }
                    _ => changes.writes.push(delete_route(conversation)),
                }
                Ok(self.router.resolve(conversation, now))
            }
            Status::Closed if self.closing.remove(&conversation).is_some() => {
                changes.writes.push(delete_route(conversation));
                return;
            }
            Status::Open if !routed => {
                // Reopened before it was closed; routed again below if it
                // asks for a person.
                if self.closing.remove(&conversation).is_some() {
                    changes.writes.push(delete_route(conversation));
                }
                let for_people = lifecycle.owner == Owner::Inbox || lifecycle.control_requested;
                let Some(request) = self.request(conversation, lifecycle, at, contact) else {
                    return;
                };
                match &lifecycle.assignee {
                    None if for_people => {
                        self.reply_if_closed(tenant_id, &request, changes);
                        self.route(request, None, changes, now)
                    }
                    // Reopened, or assigned by someone else while the inbox
                    // has it: back to that agent while they can take it.
                    Some(last) if lifecycle.owner == Owner::Inbox => {
                        self.route(request, Some(last), changes, now)
                    }
                    _ => return,
                }
            }
            _ => return,
        };
        match steps {
            Ok(steps) => {
                self.apply(tenant_id, steps, changes);
                changes.changed = true;
            }
            Err(e) => {
                tracing::warn!(tenant = %tenant_id, %conversation, error = %e, "cannot route")
            }
        }
    }

    /// How long `team` leaves a resolved conversation before closing it.
    fn closes_after(&self, team: &TeamId) -> Option<u64> {
        let seconds = self.teams.get(team)?.auto_close_after_seconds;
        (seconds > 0).then_some(u64::from(seconds) * 1000)
    }

    /// When the next offer times out or resolved conversation closes.
    fn next_due(&self) -> Option<Timestamp> {
        let closing = self.closing.values().min().copied();
        self.router.next_timeout().into_iter().chain(closing).min()
    }

    /// Withdraws the offers whose time is up and closes the resolved
    /// conversations left alone long enough.
    fn tick(&mut self, tenant: &TenantId, changes: &mut Changes) {
        let steps = self.router.tick(changes.now);
        self.apply(tenant, steps, changes);
        let due: Vec<ConversationId> = self
            .closing
            .iter()
            .filter(|(_, at)| **at <= changes.now)
            .map(|(id, _)| *id)
            .collect();
        for conversation in due {
            self.closing.remove(&conversation);
            changes.writes.push(delete_route(conversation));
            changes.effects.push(Effect::Close {
                tenant: tenant.clone(),
                conversation,
            });
        }
        changes.changed = true;
    }

    /// When `team` opens again, if it is closed at `now`.
    fn opens_at(&self, team: &TeamId, now: Timestamp) -> Option<Timestamp> {
        let hours = self.hours.get(team)?;
        if hours.schedule.is_open(now) {
            return None;
        }
        hours.schedule.next_open(now)
    }

    /// Answers a customer who asks for a person while their team is
    /// closed, once per time they ask.
    fn reply_if_closed(&self, tenant: &TenantId, request: &Request, changes: &mut Changes) {
        let Some(hours) = self.hours.get(&request.team) else {
            return;
        };
        if hours.schedule.is_open(changes.now) {
            return;
        }
        changes.effects.push(Effect::Reply {
            tenant: tenant.clone(),
            conversation: request.conversation,
            key: format!("closed-{}", request.since.as_millis()),
            text: hours.closed_reply.clone(),
        });
    }

    /// What `conversation` asks of the desk: its team, or the tenant's
    /// first; `None` when the tenant has no team.
    fn request(
        &self,
        conversation: ConversationId,
        lifecycle: &Lifecycle,
        at: Timestamp,
        contact: Option<&v1::Contact>,
    ) -> Option<Request> {
        let mut request = Request {
            conversation,
            team: lifecycle
                .team
                .clone()
                .filter(|t| self.teams.contains_key(t))
                .or_else(|| self.teams.keys().next().cloned())?,
            priority: lifecycle.priority,
            skills: Default::default(),
            since: at,
        };
        if lifecycle.team.is_none()
            && let Some(rule) = self.rule_for(conversation, contact)
        {
            request.team = rule.team.clone();
            request.skills.clone_from(&rule.skills);
            request.priority = request.priority.max(rule.priority.unwrap_or_default());
        }
        Some(request)
    }

    /// The first rule, in id order, that holds for the conversation and
    /// names a team that exists.
    fn rule_for(
        &self,
        conversation: ConversationId,
        contact: Option<&v1::Contact>,
    ) -> Option<&Rule> {
        let first = self
            .context
            .get(&conversation)
            .and_then(|c| c.first.as_deref())
            .unwrap_or_default();
        let no_attributes = BTreeMap::new();
        let attributes = contact.map_or(&no_attributes, |c| &c.attributes);
        self.rules
            .values()
            .map(|(_, rule)| rule)
            .find(|rule| self.teams.contains_key(&rule.team) && rule.holds(first, attributes))
    }

    /// The customer of a conversation not routed yet, if the tenant's rules
    /// need their contact.
    fn customer_to_read(&self, conversation: ConversationId) -> Option<&UserId> {
        if !self.rules.values().any(|(_, rule)| rule.reads_contact()) {
            return None;
        }
        self.context.get(&conversation)?.customer.as_ref()
    }

    /// Remembers what the rules look at: who the customer is, and the
    /// first thing they wrote.
    fn note(&mut self, event: &Event) {
        if self.rules.is_empty() {
            return;
        }
        if self.context.len() >= MAX_CONTEXTS {
            // Conversations that never ask for a person would pile up.
            self.context.clear();
        }
        match event {
            Event::Membership(change)
                if change.role == Role::Customer && change.kind == MembershipKind::Joined =>
            {
                let context = self.context.entry(change.conversation_id).or_default();
                context
                    .customer
                    .get_or_insert_with(|| change.user_id.clone());
            }
            Event::Message(message) => {
                let Some(text) = message.content.text() else {
                    return;
                };
                if let Some(context) = self.context.get_mut(&message.conversation_id)
                    && context.customer.as_ref() == Some(&message.sender_id)
                    && context.first.is_none()
                {
                    let mut end = text.len().min(MAX_FIRST_BYTES);
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    context.first = Some(text[..end].to_owned());
                }
            }
            Event::Read(_) | Event::Membership(_) => {}
        }
    }

    fn route(
        &mut self,
        request: Request,
        last_agent: Option<&UserId>,
        changes: &mut Changes,
        now: Timestamp,
    ) -> Result<Vec<Step>, RoutingError> {
        let route = Route {
            request: request.clone(),
            agent: None,
            resolved_at: None,
        };
        let steps = match last_agent {
            None => self.router.enqueue(request, now)?,
            Some(agent) => self.router.reopen(request, Some(agent), now)?,
        };
        changes.writes.push(route_write(&route));
        self.routes.insert(route.request.conversation, route);
        Ok(steps)
    }

    /// Records and sets off what the router decided.
    fn apply(&mut self, tenant: &TenantId, steps: Vec<Step>, changes: &mut Changes) {
        let tell = |user: UserId, signal| Effect::Tell {
            tenant: tenant.clone(),
            users: vec![user],
            signal,
        };
        for step in steps {
            match step {
                Step::Offer {
                    conversation,
                    agent,
                    until,
                } => changes.effects.push(tell(
                    agent,
                    Signal::Offered(v1::Offered {
                        conversation_id: conversation.to_string(),
                        until: Some(timestamp_to_wire(until)),
                    }),
                )),
                Step::Withdraw {
                    conversation,
                    agent,
                } => changes.effects.push(tell(
                    agent,
                    Signal::WithdrawnConversationId(conversation.to_string()),
                )),
                Step::Assign {
                    conversation,
                    agent,
                } => {
                    let Some(route) = self.routes.get_mut(&conversation) else {
                        continue;
                    };
                    route.agent = Some(agent.clone());
                    let team = route.request.team.clone();
                    changes.writes.push(route_write(route));
                    changes.effects.push(Effect::Assign {
                        tenant: tenant.clone(),
                        conversation,
                        agent,
                        team,
                    });
                }
                Step::Requeue { conversation, team } => {
                    let Some(route) = self.routes.get_mut(&conversation) else {
                        continue;
                    };
                    route.agent = None;
                    route.request.team = team.clone();
                    changes.writes.push(route_write(route));
                    changes.effects.push(Effect::Requeue {
                        tenant: tenant.clone(),
                        conversation,
                        team,
                    });
                }
                Step::Positions(positions) => {
                    for (conversation, position) in positions {
                        self.tell_place(tenant, conversation, position, changes);
                    }
                }
            }
        }
    }

    /// Tells a waiting conversation's members its place, and when its team
    /// opens if it is closed.
    fn tell_place(
        &self,
        tenant: &TenantId,
        conversation: ConversationId,
        position: natter_routing::Position,
        changes: &mut Changes,
    ) {
        let opens_at = self
            .routes
            .get(&conversation)
            .and_then(|r| self.opens_at(&r.request.team, changes.now));
        changes.effects.push(Effect::TellConversation {
            tenant: tenant.clone(),
            conversation,
            signal: Signal::Queued(v1::Queued {
                conversation_id: conversation.to_string(),
                position: Some(records::position_to_wire(position)),
                opens_at: opens_at.map(timestamp_to_wire),
            }),
        });
    }

    fn view(&self) -> v1::GetDeskResponse {
        let waiting = self
            .router
            .waiting()
            .into_iter()
            .map(|(request, position)| v1::WaitingConversation {
                conversation_id: request.conversation.to_string(),
                team_id: request.team.to_string(),
                priority: records::priority_to_wire(request.priority),
                since: Some(timestamp_to_wire(request.since)),
                position: Some(records::position_to_wire(position)),
            })
            .collect();
        let ids = |set: &std::collections::BTreeSet<ConversationId>| {
            set.iter().map(ToString::to_string).collect()
        };
        let agents = self
            .router
            .agents()
            .map(|view| v1::AgentDesk {
                agent: self.agents.get(&view.agent.id).cloned(),
                presence: records::presence_to_wire(view.presence).into(),
                assigned_conversation_ids: ids(view.assigned),
                offered_conversation_ids: ids(view.offered),
            })
            .collect();
        v1::GetDeskResponse { waiting, agents }
    }
}

fn delete_route(conversation: ConversationId) -> DeskWrite {
    DeskWrite::Delete {
        kind: DeskKind::Route,
        id: conversation.to_string(),
    }
}

fn plus(at: Timestamp, ms: u64) -> Timestamp {
    Timestamp::from_millis(
        at.as_millis()
            .saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)),
    )
}

fn route_write(route: &Route) -> DeskWrite {
    put(
        DeskKind::Route,
        &route.request.conversation.to_string(),
        &DeskRoute::from(route),
    )
}
