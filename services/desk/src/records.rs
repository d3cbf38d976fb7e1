//! The edge between the wire and the routing rules: teams, agents,
//! presence and routes as the API and the store carry them, checked and
//! turned into `natter_routing` types. The store keeps the wire messages
//! (`v1::Team`, `v1::Agent`, `bus::v1::DeskRoute`) as protobuf.

use std::collections::{BTreeMap, BTreeSet};

use natter_core::{
    ConversationId, Invalid, Page, PageRequest, Priority, TeamId, TenantId, Timestamp, UserId,
};
use natter_proto::bus::v1::DeskRoute;
use natter_proto::convert::{parse_id, priority_from_wire, timestamp_from_wire, timestamp_to_wire};
use natter_proto::v1;
use natter_routing::{Agent, Date, Opening, Presence, Request, Schedule, Strategy, Team};
use natter_store::{DeskKind, DeskStore, StoreError};

/// An offer stands this long unless the team says otherwise.
const DEFAULT_OFFER_TIMEOUT_SECONDS: u32 = 30;
/// The longest offer timeout a team may set.
const MAX_OFFER_TIMEOUT_SECONDS: u32 = 3600;
/// The longest a resolved conversation may wait to be closed.
const MAX_AUTO_CLOSE_SECONDS: u32 = 90 * 24 * 3600;
/// The most conversations one agent may hold at once.
const MAX_CAPACITY: u32 = 1000;
/// The most teams and skills one agent may have.
const MAX_AGENT_LABELS: usize = 100;
/// The longest skill and team name.
const MAX_LABEL_BYTES: usize = 64;

pub(crate) type Result<T, E = Invalid> = std::result::Result<T, E>;

/// The most openings and holidays a team's hours may list.
const MAX_HOURS_ENTRIES: usize = 400;
/// The longest automatic reply out of hours, and canned reply.
const MAX_REPLY_BYTES: usize = 2000;
const MAX_CANNED_REPLIES: usize = 100;
const MAX_SHORTCUT_BYTES: usize = 32;

/// A team's hours and what it tells customers while closed.
#[derive(Debug, Clone)]
pub(crate) struct Hours {
    pub(crate) schedule: Schedule,
    pub(crate) closed_reply: String,
}

/// A team as given, with its defaults filled in, as the router takes it,
/// and its hours if it keeps any.
pub(crate) fn team(mut wire: v1::Team) -> Result<(v1::Team, Team, Option<Hours>)> {
    let id: TeamId = parse_id("team.team_id", &wire.team_id)?;
    if wire.name.len() > MAX_LABEL_BYTES {
        return Err(Invalid::new("team.name", "must be at most 64 bytes"));
    }
    let strategy = match v1::RoutingStrategy::try_from(wire.strategy) {
        Ok(v1::RoutingStrategy::Unspecified | v1::RoutingStrategy::LeastBusy) => {
            Strategy::LeastBusy
        }
        Ok(v1::RoutingStrategy::RoundRobin) => Strategy::RoundRobin,
        Err(_) => return Err(Invalid::new("team.strategy", "unknown strategy")),
    };
    wire.strategy = match strategy {
        Strategy::LeastBusy => v1::RoutingStrategy::LeastBusy,
        Strategy::RoundRobin => v1::RoutingStrategy::RoundRobin,
    }
    .into();
    if wire.offer_timeout_seconds == 0 {
        wire.offer_timeout_seconds = DEFAULT_OFFER_TIMEOUT_SECONDS;
    }
    if wire.auto_close_after_seconds > MAX_AUTO_CLOSE_SECONDS {
        return Err(Invalid::new(
            "team.auto_close_after_seconds",
            "must be at most 90 days",
        ));
    }
    if wire.offer_timeout_seconds > MAX_OFFER_TIMEOUT_SECONDS {
        return Err(Invalid::new(
            "team.offer_timeout_seconds",
            "must be at most 3600",
        ));
    }
    let team = Team {
        id,
        strategy,
        offer_timeout_ms: u64::from(wire.offer_timeout_seconds) * 1000,
    };
    if wire.canned_replies.len() > MAX_CANNED_REPLIES
        || wire.canned_replies.iter().any(|r| {
            !(1..=MAX_SHORTCUT_BYTES).contains(&r.shortcut.len())
                || !(1..=MAX_REPLY_BYTES).contains(&r.text.len())
        })
    {
        return Err(Invalid::new(
            "team.canned_replies",
            "at most 100, each a shortcut of 1 to 32 bytes and a text of 1 to 2000",
        ));
    }
    let hours = wire.hours.as_mut().map(hours).transpose()?;
    Ok((wire, team, hours))
}

/// Checks a team's hours and fills in the default reply.
fn hours(wire: &mut v1::BusinessHours) -> Result<Hours> {
    if wire.openings.len() > MAX_HOURS_ENTRIES || wire.holidays.len() > MAX_HOURS_ENTRIES {
        return Err(Invalid::new(
            "team.hours",
            "at most 400 openings and 400 holidays",
        ));
    }
    let mut weekly: [Vec<Opening>; 7] = Default::default();
    for opening in &wire.openings {
        let day = usize::try_from(opening.weekday).unwrap_or(0);
        let minute = |m: u32| u16::try_from(m).unwrap_or(u16::MAX);
        if !(1..=7).contains(&day) {
            return Err(Invalid::new(
                "team.hours.openings.weekday",
                "must be 1 (Monday) to 7 (Sunday)",
            ));
        }
        weekly[day - 1].push(Opening {
            start_minute: minute(opening.start_minute),
            end_minute: minute(opening.end_minute),
        });
    }
    let holidays = wire
        .holidays
        .iter()
        .map(|d| {
            d.parse::<Date>()
                .map_err(|_| Invalid::new("team.hours.holidays", "must be dates as YYYY-MM-DD"))
        })
        .collect::<Result<_>>()?;
    let schedule = Schedule::new(&wire.time_zone, weekly, holidays).map_err(|e| {
        Invalid::new(
            if e.field == "zone" {
                "team.hours.time_zone"
            } else {
                "team.hours.openings"
            },
            e.reason,
        )
    })?;
    if wire.closed_reply.is_empty() {
        wire.closed_reply = "Thanks for your message! We are closed right now; \
                             someone from our team will answer as soon as we open again."
            .into();
    }
    if wire.closed_reply.len() > MAX_REPLY_BYTES {
        return Err(Invalid::new(
            "team.hours.closed_reply",
            "must be at most 2000 bytes",
        ));
    }
    Ok(Hours {
        schedule,
        closed_reply: wire.closed_reply.clone(),
    })
}

/// An agent as given, with teams and skills sorted and deduplicated, and
/// as the router takes it.
pub(crate) fn agent(mut wire: v1::Agent) -> Result<(v1::Agent, Agent)> {
    let id: UserId = parse_id("agent.user_id", &wire.user_id)?;
    if !(1..=MAX_CAPACITY).contains(&wire.capacity) {
        return Err(Invalid::new("agent.capacity", "must be from 1 to 1000"));
    }
    if wire.team_ids.len() > MAX_AGENT_LABELS || wire.skills.len() > MAX_AGENT_LABELS {
        return Err(Invalid::new("agent", "at most 100 teams and 100 skills"));
    }
    let teams = wire
        .team_ids
        .iter()
        .map(|t| parse_id("agent.team_ids", t))
        .collect::<Result<BTreeSet<TeamId>>>()?;
    let skills = wire.skills.iter().cloned().collect::<BTreeSet<String>>();
    if skills
        .iter()
        .any(|s| s.is_empty() || s.len() > MAX_LABEL_BYTES)
    {
        return Err(Invalid::new("agent.skills", "must be 1 to 64 bytes each"));
    }
    wire.team_ids = teams.iter().map(ToString::to_string).collect();
    wire.skills = skills.iter().cloned().collect();
    let agent = Agent {
        id,
        teams,
        skills,
        capacity: wire.capacity,
    };
    Ok((wire, agent))
}

/// A routing rule as the desk applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) team: TeamId,
    /// In lower case.
    keywords: Vec<String>,
    /// Values in lower case.
    attributes: BTreeMap<String, String>,
    pub(crate) skills: BTreeSet<String>,
    pub(crate) priority: Option<Priority>,
}

/// The most keywords, attributes and skills a rule may name.
const MAX_RULE_TERMS: usize = 50;

/// A routing rule as given, and as the desk applies it.
pub(crate) fn rule(wire: v1::RoutingRule) -> Result<(v1::RoutingRule, Rule)> {
    let _: TeamId = parse_id("rule.rule_id", &wire.rule_id)?;
    let team = parse_id("rule.team_id", &wire.team_id)?;
    if wire.keywords.len() > MAX_RULE_TERMS
        || wire.contact_attributes.len() > MAX_RULE_TERMS
        || wire.skills.len() > MAX_RULE_TERMS
    {
        return Err(Invalid::new(
            "rule",
            "at most 50 keywords, attributes and skills each",
        ));
    }
    if !labels(wire.keywords.iter())
        || !labels(wire.skills.iter())
        || !labels(wire.contact_attributes.keys())
    {
        return Err(Invalid::new(
            "rule",
            "keywords, attribute names and skills must be 1 to 64 bytes",
        ));
    }
    let rule = Rule {
        team,
        keywords: wire
            .keywords
            .iter()
            .map(|k| k.trim().to_lowercase())
            .collect(),
        attributes: wire
            .contact_attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.to_lowercase()))
            .collect(),
        skills: wire.skills.iter().cloned().collect(),
        priority: priority_from_wire("rule.priority", wire.priority)?,
    };
    Ok((wire, rule))
}

/// The most entries a tenant's FAQ holds.
pub(crate) const MAX_FAQ_ENTRIES: usize = 1000;
/// The most entries a page of the FAQ holds: what a bus answer carries.
pub(crate) const FAQ_PAGE: u32 = 100;
const MAX_FAQ_QUESTIONS: usize = 10;
const MAX_FAQ_QUESTION_BYTES: usize = 300;
const MAX_FAQ_ANSWER_BYTES: usize = 2000;

/// An FAQ entry, checked and trimmed.
pub(crate) fn faq_entry(mut wire: v1::FaqEntry) -> Result<v1::FaqEntry> {
    let _: TeamId = parse_id("entry.entry_id", &wire.entry_id)?;
    for question in &mut wire.questions {
        *question = question.trim().to_owned();
    }
    wire.answer = wire.answer.trim().to_owned();
    let questions = 1..=MAX_FAQ_QUESTIONS;
    if !questions.contains(&wire.questions.len())
        || wire
            .questions
            .iter()
            .any(|q| q.is_empty() || q.len() > MAX_FAQ_QUESTION_BYTES)
    {
        return Err(Invalid::new(
            "entry.questions",
            format!(
                "1 to {MAX_FAQ_QUESTIONS} questions of 1 to {MAX_FAQ_QUESTION_BYTES} bytes each"
            ),
        ));
    }
    if wire.answer.is_empty() || wire.answer.len() > MAX_FAQ_ANSWER_BYTES {
        return Err(Invalid::new(
            "entry.answer",
            format!("must be 1 to {MAX_FAQ_ANSWER_BYTES} bytes and not blank"),
        ));
    }
    Ok(wire)
}

/// Each value 1 to 64 bytes, not blank.
fn labels<'a>(mut values: impl Iterator<Item = &'a String>) -> bool {
    values.all(|v| !v.trim().is_empty() && v.len() <= MAX_LABEL_BYTES)
}

impl Rule {
    /// Whether the rule holds for a customer who wrote `first` and has
    /// `attributes` on their contact.
    pub(crate) fn holds(&self, first: &str, attributes: &BTreeMap<String, String>) -> bool {
        let text = first.to_lowercase();
        let words: BTreeSet<&str> = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        let said = |keyword: &String| {
            if keyword.contains(char::is_whitespace) {
                text.contains(keyword.as_str())
            } else {
                words.contains(keyword.as_str())
            }
        };
        (self.keywords.is_empty() || self.keywords.iter().any(said))
            && self
                .attributes
                .iter()
                .all(|(k, v)| attributes.get(k).is_some_and(|a| a.to_lowercase() == *v))
    }

    /// Whether it asks anything of the contact.
    pub(crate) fn reads_contact(&self) -> bool {
        !self.attributes.is_empty()
    }
}

pub(crate) fn presence_from_wire(presence: i32) -> Result<Presence> {
    match v1::AgentPresence::try_from(presence) {
        Ok(v1::AgentPresence::Online) => Ok(Presence::Online),
        Ok(v1::AgentPresence::Away) => Ok(Presence::Away),
        Ok(v1::AgentPresence::Offline) => Ok(Presence::Offline),
        Ok(v1::AgentPresence::Unspecified) | Err(_) => {
            Err(Invalid::new("presence", "must be online, away or offline"))
        }
    }
}

pub(crate) fn presence_to_wire(presence: Presence) -> v1::AgentPresence {
    match presence {
        Presence::Online => v1::AgentPresence::Online,
        Presence::Away => v1::AgentPresence::Away,
        Presence::Offline => v1::AgentPresence::Offline,
    }
}

/// A conversation the desk routes: what it asked for, and its agent once
/// assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) request: Request,
    pub(crate) agent: Option<UserId>,
    /// Set once resolved, while it waits to be closed.
    pub(crate) resolved_at: Option<Timestamp>,
}

impl From<&Route> for DeskRoute {
    fn from(route: &Route) -> Self {
        let request = &route.request;
        DeskRoute {
            conversation_id: request.conversation.to_string(),
            team_id: request.team.to_string(),
            priority: v1::Priority::from(request.priority).into(),
            since: Some(timestamp_to_wire(request.since)),
            agent_id: route
                .agent
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            resolved_at: route.resolved_at.map(timestamp_to_wire),
        }
    }
}

impl TryFrom<DeskRoute> for Route {
    type Error = Invalid;

    fn try_from(wire: DeskRoute) -> Result<Self> {
        let conversation: ConversationId = parse_id("conversation_id", &wire.conversation_id)?;
        Ok(Route {
            request: Request {
                conversation,
                team: parse_id("team_id", &wire.team_id)?,
                priority: priority_from_wire("priority", wire.priority)?.unwrap_or_default(),
                skills: BTreeSet::new(),
                since: timestamp_from_wire("since", wire.since)?,
            },
            agent: (!wire.agent_id.is_empty())
                .then(|| parse_id("agent_id", &wire.agent_id))
                .transpose()?,
            resolved_at: wire
                .resolved_at
                .map(|at| timestamp_from_wire("resolved_at", Some(at)))
                .transpose()?,
        })
    }
}

/// The wire form of a waiting conversation's position.
pub(crate) fn position_to_wire(position: natter_routing::Position) -> v1::QueuePosition {
    v1::QueuePosition {
        ahead: position.ahead,
        estimated_wait_seconds: u32::try_from(position.estimated_wait_ms.div_ceil(1000))
            .unwrap_or(u32::MAX),
    }
}

/// The priority a waiting conversation has on the wire.
pub(crate) fn priority_to_wire(priority: Priority) -> i32 {
    v1::Priority::from(priority).into()
}

/// The id of a record kept by conversation: `<conversation id> <item id>`,
/// so a conversation's items are one range, in item id order.
pub(crate) fn by_conversation(
    conversation: ConversationId,
    item: impl std::fmt::Display,
) -> String {
    format!("{conversation} {item}")
}

/// A page of the conversation's records of `kind` (kept by
/// [`by_conversation`]), each decoded by `decode` from its item id and
/// body; the next page starts after the last item's id.
pub(crate) async fn conversation_page<I, T>(
    store: &dyn DeskStore,
    tenant: &TenantId,
    kind: DeskKind,
    conversation: ConversationId,
    page: PageRequest<I>,
    decode: impl Fn(&str, &[u8]) -> Result<T, StoreError>,
) -> Result<Page<T, I>, StoreError>
where
    I: std::fmt::Display + std::str::FromStr<Err = Invalid>,
{
    let prefix = by_conversation(conversation, "");
    let records = store
        .desk_records(
            tenant,
            kind,
            PageRequest {
                // The conversation's first item sorts after its prefix.
                after: Some(
                    page.after
                        .map_or(prefix.clone(), |after| by_conversation(conversation, after)),
                ),
                size: page.size,
            },
        )
        .await?;
    let mut items = Vec::new();
    let mut last = None;
    for record in records.items {
        // Past the conversation's range: no more pages.
        let Some(id) = record.id.strip_prefix(&prefix) else {
            return Ok(Page { items, next: None });
        };
        items.push(decode(id, &record.body)?);
        last = Some(id.to_owned());
    }
    let next = match (records.next, last) {
        (Some(_), Some(last)) => Some(
            last.parse()
                .map_err(|e: Invalid| StoreError::Corrupt(format!("{kind:?} {last}: {e}")))?,
        ),
        _ => None,
    };
    Ok(Page { items, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_team_gets_its_defaults() {
        let (wire, team, hours) = team(v1::Team {
            team_id: "billing".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(wire.offer_timeout_seconds, 30);
        assert_eq!(team.strategy, Strategy::LeastBusy);
        assert_eq!(team.offer_timeout_ms, 30_000);
        assert!(hours.is_none());
    }

    #[test]
    fn hours_are_checked_and_kept() {
        let with = |hours: v1::BusinessHours| {
            team(v1::Team {
                team_id: "billing".into(),
                hours: Some(hours),
                ..Default::default()
            })
        };
        let weekdays = v1::BusinessHours {
            time_zone: "Europe/Berlin".into(),
            openings: (1..=5)
                .map(|weekday| v1::Opening {
                    weekday,
                    start_minute: 540,
                    end_minute: 1020,
                })
                .collect(),
            holidays: vec!["2026-12-25".into()],
            closed_reply: String::new(),
        };
        let (wire, _, hours) = with(weekdays.clone()).unwrap();
        assert!(!wire.hours.unwrap().closed_reply.is_empty());
        // Friday 2026-12-04 10:00 in Berlin is 09:00 UTC; Christmas is shut.
        let schedule = hours.unwrap().schedule;
        assert!(schedule.is_open(Timestamp::from_millis(1_796_374_800_000)));
        assert!(!schedule.is_open(Timestamp::from_millis(1_798_189_200_000)));
        let field = |hours| with(hours).unwrap_err().field;
        assert_eq!(
            field(v1::BusinessHours {
                time_zone: "Mars/Olympus".into(),
                ..weekdays.clone()
            }),
            "team.hours.time_zone"
        );
        assert_eq!(
            field(v1::BusinessHours {
                holidays: vec!["25.12.2026".into()],
                ..weekdays.clone()
            }),
            "team.hours.holidays"
        );
        assert_eq!(
            field(v1::BusinessHours {
                openings: vec![v1::Opening {
                    weekday: 8,
                    start_minute: 0,
                    end_minute: 60,
                }],
                ..weekdays
            }),
            "team.hours.openings.weekday"
        );
    }

    #[test]
    fn bad_agents_are_refused_with_the_field() {
        let bad = |agent: v1::Agent| super::agent(agent).unwrap_err().field;
        let base = v1::Agent {
            user_id: "ann".into(),
            capacity: 2,
            ..Default::default()
        };
        assert_eq!(
            bad(v1::Agent {
                capacity: 0,
                ..base.clone()
            }),
            "agent.capacity"
        );
        assert_eq!(
            bad(v1::Agent {
                skills: vec![String::new()],
                ..base.clone()
            }),
            "agent.skills"
        );
        assert_eq!(
            bad(v1::Agent {
                user_id: String::new(),
                ..base
            }),
            "agent.user_id"
        );
    }

    #[test]
    fn a_rule_holds_on_a_keyword_and_every_attribute() {
        let (_, rule) = rule(v1::RoutingRule {
            rule_id: "billing-de".into(),
            team_id: "billing".into(),
            keywords: vec!["Invoice".into(), "money back".into()],
            contact_attributes: [("language".to_owned(), "DE".to_owned())].into(),
            ..Default::default()
        })
        .unwrap();
        let german = BTreeMap::from([("language".to_owned(), "de".to_owned())]);
        assert!(rule.holds("Where is my invoice?", &german));
        assert!(rule.holds("I want my MONEY BACK", &german));
        assert!(
            !rule.holds("Where are my invoices?", &german),
            "words, not parts"
        );
        assert!(!rule.holds("Where is my invoice?", &BTreeMap::new()));
        assert!(rule.reads_contact());
    }

    #[test]
    fn routes_round_trip() {
        let route = Route {
            request: Request {
                conversation: ConversationId::generate(),
                team: TeamId::new("billing").unwrap(),
                priority: Priority::High,
                skills: BTreeSet::new(),
                since: Timestamp::from_millis(1_700_000_000_123),
            },
            agent: Some(UserId::new("ann").unwrap()),
            resolved_at: Some(Timestamp::from_millis(1_700_000_100_000)),
        };
        assert_eq!(Route::try_from(DeskRoute::from(&route)).unwrap(), route);
    }
}
