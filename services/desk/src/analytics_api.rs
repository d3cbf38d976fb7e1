//! `natter.v1.AnalyticsService` over gRPC: read in any desk process, from
//! the rollup and facts records the holder's analytics consumer writes
//! (`analytics.rs`). The wire types are converted here, at the edge.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use natter_analytics::{Group, Period, PeriodKey, Query, Row};
use natter_auth::{Identity, Verifier};
use natter_core::{ConversationId, Invalid, Role, TenantId, Timestamp};
use natter_proto::convert::{parse_id, timestamp_from_wire, timestamp_to_wire};
use natter_proto::status::{self, reason};
use natter_proto::v1::analytics_service_server::AnalyticsService;
use natter_proto::v1::{
    AnalyticsGroup, AnalyticsOrder, AnalyticsPeriod, AnalyticsQuery, AnalyticsRow,
    ConversationAnalytics, ExportCsvRequest, ExportCsvResponse, GetConversationAnalyticsRequest,
    GetConversationAnalyticsResponse, QueryRequest, QueryResponse,
};
use natter_store::{DeskKind, DeskStore, StoreError};
use tonic::{Request, Response, Status};

use crate::analytics::{RollupRow, decode_facts, rollup_hour, rollups_from};

const HOUR_MS: i64 = 3_600_000;
/// The longest range a query reads, in hours.
const MAX_HOURS: i64 = 366 * 24;
/// The most rows a query answers.
const MAX_ROWS: usize = 10_000;
/// The size of a CSV chunk.
const CSV_CHUNK: usize = 64 * 1024;

pub(crate) struct AnalyticsApi {
    pub(crate) verifier: Arc<Verifier>,
    pub(crate) store: Arc<dyn DeskStore>,
}

/// What a request asks for, in the core's terms.
struct Asked {
    query: Query,
    busiest: bool,
}

impl AnalyticsApi {
    /// The caller's tenant and the request, for agents and services only.
    fn reader<T>(&self, request: Request<T>) -> Result<(TenantId, T), Status> {
        let identity: Identity = natter_server::authenticate(&self.verifier, &request)?;
        if !matches!(identity.role, Role::Agent | Role::Service) {
            return Err(status::permission_denied(
                reason::ROLE_NOT_ALLOWED,
                "analytics are for the business's agents and services",
            ));
        }
        Ok((identity.tenant, request.into_inner()))
    }
}

/// The rows a query asks for, read from every partition's rollups: for
/// this service and for the consoles' desk calls.
pub(crate) async fn rows(
    store: &dyn DeskStore,
    tenant: TenantId,
    wire: Option<AnalyticsQuery>,
) -> Result<Vec<Row>, Status> {
    let asked = query_from_wire(tenant.clone(), wire).map_err(status::invalid_argument)?;
    let q = &asked.query;
    let rollups = read_rollups(store, &tenant, q.from_hour, q.to_hour)
        .await
        .map_err(natter_server::store_status)?;
    let mut rows = natter_analytics::query(rollups, q);
    if rows.len() > MAX_ROWS {
        return Err(status::invalid_argument(Invalid::new(
            "query",
            format!("gives more than {MAX_ROWS} rows; narrow the range or the period"),
        )));
    }
    if asked.busiest {
        natter_analytics::sort_busiest(&mut rows);
    }
    Ok(rows)
}

/// Every rollup record of `tenant` from `from_hour` up to `to_hour`.
pub(crate) async fn read_rollups(
    store: &dyn DeskStore,
    tenant: &TenantId,
    from_hour: i64,
    to_hour: i64,
) -> Result<Vec<RollupRow>, StoreError> {
    // Ids are `<hour> <partition> <team> <agent>`: the bare hour sorts just
    // before them.
    rollups_from(
        store,
        tenant,
        format!("{from_hour:020}"),
        |id| match rollup_hour(id) {
            Some(hour) => Ok(hour < to_hour),
            None => Err(StoreError::Corrupt(format!("analytics rollup id {id:?}"))),
        },
    )
    .await
}

fn whole_hour(field: &'static str, at: Option<pbjson_types::Timestamp>) -> Result<i64, Invalid> {
    let at = timestamp_from_wire(field, at)?.as_millis();
    if at % HOUR_MS != 0 {
        return Err(Invalid::new(field, "must be a whole hour"));
    }
    Ok(at.div_euclid(HOUR_MS))
}

fn query_from_wire(tenant: TenantId, wire: Option<AnalyticsQuery>) -> Result<Asked, Invalid> {
    let wire = wire.ok_or_else(|| Invalid::new("query", "is required"))?;
    let from_hour = whole_hour("query.from", wire.from)?;
    let to_hour = whole_hour("query.to", wire.to)?;
    if to_hour <= from_hour || to_hour - from_hour > MAX_HOURS {
        return Err(Invalid::new(
            "query.to",
            "must be after query.from, by at most 366 days",
        ));
    }
    let group = match AnalyticsGroup::try_from(wire.group_by) {
        Ok(AnalyticsGroup::Unspecified | AnalyticsGroup::Tenant) => Group::Tenant,
        Ok(AnalyticsGroup::Team) => Group::Team,
        Ok(AnalyticsGroup::Agent) => Group::Agent,
        Err(_) => return Err(Invalid::new("query.group_by", "is unknown")),
    };
    let period = match AnalyticsPeriod::try_from(wire.period) {
        Ok(AnalyticsPeriod::Unspecified | AnalyticsPeriod::Total) => Period::Total,
        Ok(AnalyticsPeriod::Hour) => Period::Hour,
        Ok(AnalyticsPeriod::Day) => Period::Day,
        Ok(AnalyticsPeriod::HourOfDay) => Period::HourOfDay,
        Err(_) => return Err(Invalid::new("query.period", "is unknown")),
    };
    let busiest = match AnalyticsOrder::try_from(wire.order) {
        Ok(AnalyticsOrder::Unspecified | AnalyticsOrder::Time) => false,
        Ok(AnalyticsOrder::Busiest) => true,
        Err(_) => return Err(Invalid::new("query.order", "is unknown")),
    };
    let team = match wire.team_id.as_str() {
        "" => None,
        id => Some(parse_id("query.team_id", id)?),
    };
    let agent = match wire.agent_id.as_str() {
        "" => None,
        id => Some(parse_id("query.agent_id", id)?),
    };
    Ok(Asked {
        query: Query {
            tenant: Some(tenant),
            from_hour,
            to_hour,
            group,
            period,
            team,
            agent,
        },
        busiest,
    })
}

/// A row on the wire.
pub(crate) fn row_to_wire(row: &Row) -> AnalyticsRow {
    let (start, hour_of_day) = match row.period {
        PeriodKey::Hour(h) => (Some(Timestamp::from_millis(h * HOUR_MS)), 0),
        PeriodKey::Day(d) => (Some(Timestamp::from_millis(d * 24 * HOUR_MS)), 0),
        PeriodKey::HourOfDay(h) => (None, u32::from(h)),
        PeriodKey::Total => (None, 0),
    };
    AnalyticsRow {
        team_id: row
            .team
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        agent_id: row
            .agent
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        start: start.map(timestamp_to_wire),
        hour_of_day,
        opened: row.opened,
        first_responses: row.first_responses,
        first_response_median_seconds: row.first_response_median_s,
        first_response_p90_seconds: row.first_response_p90_s,
        sla_missed: row.sla_missed,
        resolutions: row.resolutions,
        resolution_median_seconds: row.resolution_median_s,
        resolution_p90_seconds: row.resolution_p90_s,
        reopened: row.reopened,
        reopen_rate: row.reopen_rate,
        messages_customer: row.messages_customer,
        messages_agent: row.messages_agent,
        messages_bot: row.messages_bot,
        messages_service: row.messages_service,
        queue_waits: row.queue_waits,
        queue_wait_median_seconds: row.queue_wait_median_s,
        queue_wait_p90_seconds: row.queue_wait_p90_s,
        csat_count: row.csat_count,
        csat_average: row.csat_average,
    }
}

#[tonic::async_trait]
impl AnalyticsService for AnalyticsApi {
    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        let (tenant, request) = self.reader(request)?;
        let rows = rows(&*self.store, tenant, request.query).await?;
        Ok(Response::new(QueryResponse {
            rows: rows.iter().map(row_to_wire).collect(),
        }))
    }

    type ExportCsvStream =
        Pin<Box<dyn Stream<Item = Result<ExportCsvResponse, Status>> + std::marker::Send>>;

    async fn export_csv(
        &self,
        request: Request<ExportCsvRequest>,
    ) -> Result<Response<Self::ExportCsvStream>, Status> {
        let (tenant, request) = self.reader(request)?;
        let rows = rows(&*self.store, tenant, request.query).await?;
        let csv = natter_analytics::to_csv(&rows).map_err(|e| {
            status::internal(
                reason::FAILED_PRECONDITION,
                format!("cannot write CSV: {e}"),
            )
        })?;
        let chunks: Vec<Result<ExportCsvResponse, Status>> = csv
            .into_bytes()
            .chunks(CSV_CHUNK)
            .map(|chunk| {
                Ok(ExportCsvResponse {
                    csv: chunk.to_vec().into(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn get_conversation_analytics(
        &self,
        request: Request<GetConversationAnalyticsRequest>,
    ) -> Result<Response<GetConversationAnalyticsResponse>, Status> {
        let (tenant, request) = self.reader(request)?;
        let conversation: ConversationId = parse_id("conversation_id", &request.conversation_id)
            .map_err(status::invalid_argument)?;
        let id = conversation.to_string();
        let record = self
            .store
            .desk_record(&tenant, DeskKind::AnalyticsFacts, &id)
            .await
            .map_err(natter_server::store_status)?;
        let facts = match record {
            Some(record) => {
                decode_facts(&record.body)
                    .map_err(natter_server::store_status)?
                    .facts
            }
            None => None,
        };
        let Some(facts) = facts else {
            return Err(status::not_found("conversation analytics", &id));
        };
        let first = facts.first_response();
        let messages = facts.messages();
        let csat = facts.csat();
        Ok(Response::new(GetConversationAnalyticsResponse {
            analytics: Some(ConversationAnalytics {
                conversation_id: id,
                opened_at: facts.opened_at().map(timestamp_to_wire),
                first_response_seconds: first.map(|f| f.seconds),
                first_response_agent_id: first.map(|f| f.agent.to_string()).unwrap_or_default(),
                sla_missed: first.is_some_and(natter_analytics::FirstResponse::missed_sla),
                resolutions: u32::try_from(facts.resolutions().len()).unwrap_or(u32::MAX),
                last_resolution_seconds: facts.resolutions().last().map(|r| r.seconds),
                reopens: u32::try_from(facts.reopens().len()).unwrap_or(u32::MAX),
                messages_customer: messages.customer,
                messages_agent: messages.agent,
                messages_bot: messages.bot,
                messages_service: messages.service,
                csat_score: csat.map(|c| u32::from(c.score)),
                csat_comment: csat.and_then(|c| c.comment.clone()).unwrap_or_default(),
                csat_at: csat.map(|c| timestamp_to_wire(c.mark.at)),
            }),
        }))
    }
}
