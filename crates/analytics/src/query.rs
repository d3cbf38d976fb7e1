//! Reading the rollups: a time range, grouped and filtered, as rows of
//! figures, and the rows as CSV.

use std::collections::BTreeMap;

use natter_core::{TeamId, TenantId, UserId};

use crate::error::{Error, Result};
use crate::rollup::{HourKey, Rollup};

/// Whose figures a row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// One row per tenant: its `team` and `agent` are `None`.
    Tenant,
    /// One row per tenant and team; `team: None` is what happened outside
    /// any team.
    Team,
    /// One row per tenant and agent; `agent: None` is what happened with
    /// nobody assigned (and bots' and services' messages).
    Agent,
}

/// Which stretch of time a row holds. Hours and days are UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Hour,
    Day,
    /// The hour of the day, 0 to 23, across the days of the range: with
    /// [`sort_busiest`], the busiest hours.
    HourOfDay,
    /// The whole range.
    Total,
}

/// A row's stretch of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeriodKey {
    /// A Unix hour.
    Hour(i64),
    /// Whole days since the Unix epoch.
    Day(i64),
    HourOfDay(u8),
    Total,
}

impl Period {
    fn key(self, hour: i64) -> PeriodKey {
        match self {
            Period::Hour => PeriodKey::Hour(hour),
            Period::Day => PeriodKey::Day(hour.div_euclid(24)),
            // rem_euclid(24) is 0..=23.
            Period::HourOfDay => {
                PeriodKey::HourOfDay(u8::try_from(hour.rem_euclid(24)).unwrap_or(0))
            }
            Period::Total => PeriodKey::Total,
        }
    }
}

/// What to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Only this tenant's rollups, or every tenant's.
    pub tenant: Option<TenantId>,
    /// The first Unix hour of the range.
    pub from_hour: i64,
    /// The Unix hour after the range.
    pub to_hour: i64,
    pub group: Group,
    pub period: Period,
    /// Only what happened in this team.
    pub team: Option<TeamId>,
    /// Only what happened with this agent.
    pub agent: Option<UserId>,
}

/// The figures of one group and period. Durations are whole seconds;
/// percentiles are by nearest rank ([`crate::Samples::percentile`]), so a
/// median is one of the measured values; `None` where nothing was
/// measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub tenant: TenantId,
    pub team: Option<TeamId>,
    pub agent: Option<UserId>,
    pub period: PeriodKey,
    pub opened: u64,
    pub first_responses: u64,
    pub first_response_median_s: Option<u32>,
    pub first_response_p90_s: Option<u32>,
    pub sla_missed: u64,
    pub resolutions: u64,
    pub resolution_median_s: Option<u32>,
    pub resolution_p90_s: Option<u32>,
    pub reopened: u64,
    /// Reopenings over resolutions in the same group and period (it can
    /// exceed 1 where a period holds reopenings of earlier resolutions).
    pub reopen_rate: Option<f64>,
    pub messages_customer: u64,
    pub messages_agent: u64,
    pub messages_bot: u64,
    pub messages_service: u64,
    pub queue_waits: u64,
    pub queue_wait_median_s: Option<u32>,
    pub queue_wait_p90_s: Option<u32>,
    pub csat_count: u64,
    pub csat_average: Option<f64>,
}

impl Row {
    fn new(
        tenant: TenantId,
        team: Option<TeamId>,
        agent: Option<UserId>,
        period: PeriodKey,
        r: &Rollup,
    ) -> Row {
        let ratio = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);
        Row {
            tenant,
            team,
            agent,
            period,
            opened: r.opened,
            first_responses: r.first_responses.len(),
            first_response_median_s: r.first_responses.percentile(50),
            first_response_p90_s: r.first_responses.percentile(90),
            sla_missed: r.sla_missed,
            resolutions: r.resolutions.len(),
            resolution_median_s: r.resolutions.percentile(50),
            resolution_p90_s: r.resolutions.percentile(90),
            reopened: r.reopened,
            reopen_rate: ratio(r.reopened, r.resolutions.len()),
            messages_customer: r.messages_customer,
            messages_agent: r.messages_agent,
            messages_bot: r.messages_bot,
            messages_service: r.messages_service,
            queue_waits: r.queue_waits.len(),
            queue_wait_median_s: r.queue_waits.percentile(50),
            queue_wait_p90_s: r.queue_waits.percentile(90),
            csat_count: r.csat_count(),
            csat_average: ratio(r.csat_sum(), r.csat_count()),
        }
    }

    /// All messages, whatever the side.
    pub fn messages(&self) -> u64 {
        self.messages_customer + self.messages_agent + self.messages_bot + self.messages_service
    }
}

/// The rows `q` asks for, from the rollups of every key it covers (the
/// caller may pass more; the range and filters are applied here). Sorted by
/// tenant, team, agent and period; a group and period with nothing counted
/// has no row.
pub fn query<K, R>(rollups: impl IntoIterator<Item = (K, R)>, q: &Query) -> Vec<Row>
where
    K: std::borrow::Borrow<HourKey>,
    R: std::borrow::Borrow<Rollup>,
{
    type Key = (TenantId, Option<TeamId>, Option<UserId>, PeriodKey);
    let mut groups: BTreeMap<Key, Rollup> = BTreeMap::new();
    for (key, rollup) in rollups {
        let (key, rollup) = (key.borrow(), rollup.borrow());
        if key.hour < q.from_hour
            || key.hour >= q.to_hour
            || q.tenant.as_ref().is_some_and(|t| *t != key.tenant)
            || q.team
                .as_ref()
                .is_some_and(|t| key.team.as_ref() != Some(t))
            || q.agent
                .as_ref()
                .is_some_and(|a| key.agent.as_ref() != Some(a))
        {
            continue;
        }
        let (team, agent) = match q.group {
            Group::Tenant => (None, None),
            Group::Team => (key.team.clone(), None),
            Group::Agent => (None, key.agent.clone()),
        };
        groups
            .entry((key.tenant.clone(), team, agent, q.period.key(key.hour)))
            .or_default()
            .merge(rollup);
    }
    groups
        .into_iter()
        .filter(|(_, rollup)| !rollup.is_empty())
        .map(|((tenant, team, agent, period), rollup)| {
            Row::new(tenant, team, agent, period, &rollup)
        })
        .collect()
}

/// Orders rows busiest first: most messages, then most conversations
/// opened, then earliest period. Over a [`Period::Hour`] or
/// [`Period::HourOfDay`] query, the busiest hours.
pub fn sort_busiest(rows: &mut [Row]) {
    rows.sort_by(|a, b| {
        b.messages()
            .cmp(&a.messages())
            .then(b.opened.cmp(&a.opened))
            .then(a.period.cmp(&b.period))
            .then(a.tenant.cmp(&b.tenant))
            .then(a.team.cmp(&b.team))
            .then(a.agent.cmp(&b.agent))
    });
}

const HEADER: [&str; 25] = [
    "tenant",
    "team",
    "agent",
    "period",
    "start",
    "opened",
    "first_responses",
    "first_response_median_s",
    "first_response_p90_s",
    "sla_missed",
    "resolutions",
    "resolution_median_s",
    "resolution_p90_s",
    "reopened",
    "reopen_rate",
    "messages_customer",
    "messages_agent",
    "messages_bot",
    "messages_service",
    "queue_waits",
    "queue_wait_median_s",
    "queue_wait_p90_s",
    "csat_count",
    "csat_average",
    "messages",
];

/// The rows as CSV (RFC 4180: a header line, fields quoted where needed,
/// CRLF line ends). `period` is `hour`, `day`, `hour_of_day` or `total`;
/// `start` is the hour or day as `YYYY-MM-DDTHH:00:00Z` (UTC), the hour of
/// the day as `0`–`23`, and empty for the total. Missing figures are empty
/// fields; rates and averages have three decimals.
pub fn to_csv(rows: &[Row]) -> Result<String> {
    let mut out = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    let csv_error = |e: csv::Error| Error::Csv(e.to_string());
    out.write_record(HEADER).map_err(csv_error)?;
    let opt = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_default();
    let rate = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_default();
    for row in rows {
        let (period, start) = match row.period {
            PeriodKey::Hour(h) => ("hour", iso_hour(h)),
            PeriodKey::Day(d) => ("day", iso_hour(d * 24)),
            PeriodKey::HourOfDay(h) => ("hour_of_day", h.to_string()),
            PeriodKey::Total => ("total", String::new()),
        };
        let record: [String; 25] = [
            row.tenant.to_string(),
            row.team
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            row.agent
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            period.to_owned(),
            start,
            row.opened.to_string(),
            row.first_responses.to_string(),
            opt(row.first_response_median_s),
            opt(row.first_response_p90_s),
            row.sla_missed.to_string(),
            row.resolutions.to_string(),
            opt(row.resolution_median_s),
            opt(row.resolution_p90_s),
            row.reopened.to_string(),
            rate(row.reopen_rate),
            row.messages_customer.to_string(),
            row.messages_agent.to_string(),
            row.messages_bot.to_string(),
            row.messages_service.to_string(),
            row.queue_waits.to_string(),
            opt(row.queue_wait_median_s),
            opt(row.queue_wait_p90_s),
            row.csat_count.to_string(),
            rate(row.csat_average),
            row.messages().to_string(),
        ];
        out.write_record(&record).map_err(csv_error)?;
    }
    let bytes = out
        .into_inner()
        .map_err(|e| Error::Csv(e.error().to_string()))?;
    String::from_utf8(bytes).map_err(|e| Error::Csv(e.to_string()))
}

/// A Unix hour as `YYYY-MM-DDTHH:00:00Z`, by the proleptic Gregorian
/// calendar (days to civil date after Howard Hinnant's `civil_from_days`).
pub(crate) fn iso_hour(hour: i64) -> String {
    let days = hour.div_euclid(24);
    let hh = hour.rem_euclid(24);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{hh:02}:00:00Z")
}
