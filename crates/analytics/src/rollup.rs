//! Hourly rollups: what every conversation contributed to each hour, team
//! and agent, kept so that adding and taking away are exact.

use std::collections::BTreeMap;

use natter_core::{TeamId, TenantId, Timestamp, UserId};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::facts::ConversationFacts;
use crate::serde_ids::{opt_text, text};

const HOUR_MS: i64 = 3_600_000;

/// The Unix hour `at` falls in: whole hours since the epoch, UTC.
pub fn hour_of(at: Timestamp) -> i64 {
    at.as_millis().div_euclid(HOUR_MS)
}

/// Where a figure is counted: a tenant's hour, for a team and an agent
/// (`None`: the conversation had no team, or no agent, at the time).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HourKey {
    #[serde(with = "text")]
    pub tenant: TenantId,
    /// The Unix hour (see [`hour_of`]).
    pub hour: i64,
    #[serde(with = "opt_text")]
    pub team: Option<TeamId>,
    #[serde(with = "opt_text")]
    pub agent: Option<UserId>,
}

/// Durations in whole seconds as a multiset (value → how many times), so
/// that merging and subtracting are exact and any percentile of a merged
/// set is the percentile of the raw values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Samples(BTreeMap<u32, u64>);

impl Samples {
    pub fn insert(&mut self, seconds: u32) {
        *self.0.entry(seconds).or_default() += 1;
    }

    /// How many values it holds.
    pub fn len(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The distinct values, ascending, each with how many times it occurs.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.0.iter().map(|(v, n)| (*v, *n))
    }

    pub fn merge(&mut self, other: &Samples) {
        for (value, count) in other.iter() {
            *self.0.entry(value).or_default() += count;
        }
    }

    /// Takes `other`'s values away; fails, changing nothing, when it holds
    /// one this does not.
    pub fn subtract(&mut self, other: &Samples, what: &'static str) -> Result<()> {
        if other
            .iter()
            .any(|(value, count)| self.0.get(&value).copied().unwrap_or(0) < count)
        {
            return Err(Error::Underflow { what });
        }
        for (value, count) in other.iter() {
            if let Some(have) = self.0.get_mut(&value) {
                *have -= count;
                if *have == 0 {
                    self.0.remove(&value);
                }
            }
        }
        Ok(())
    }

    /// The `p`th percentile by nearest rank: the smallest value such that
    /// at least `p` percent of the values are at or below it, that is the
    /// value at 1-based rank `ceil(p × n / 100)` (at least 1) of the sorted
    /// values. So the median (`p = 50`) of an even count is the lower of the
    /// two middle values, and no value is ever interpolated. `None` when
    /// empty; `p` above 100 is taken as 100.
    pub fn percentile(&self, p: u8) -> Option<u32> {
        let n = self.len();
        if n == 0 {
            return None;
        }
        let p = u64::from(p.min(100));
        let rank = (p * n).div_ceil(100).max(1);
        let mut seen = 0;
        for (value, count) in self.iter() {
            seen += count;
            if seen >= rank {
                return Some(value);
            }
        }
        None
    }
}

/// What happened in one [`HourKey`]. Every field adds up across
/// conversations and hours ([`Rollup::merge`]) and takes away exactly
/// ([`Rollup::subtract`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollup {
    /// Conversations opened.
    pub opened: u64,
    /// First response times, in the hour of the response.
    pub first_responses: Samples,
    /// First responses over their team's target.
    pub sla_missed: u64,
    /// Resolution times, in the hour of the resolution.
    pub resolutions: Samples,
    pub reopened: u64,
    pub messages_customer: u64,
    pub messages_agent: u64,
    pub messages_bot: u64,
    pub messages_service: u64,
    /// Time from starting to wait for a person to being assigned one, in
    /// the hour of the assignment.
    pub queue_waits: Samples,
    /// Satisfaction scores: `csat[s - 1]` counts the scores `s`.
    pub csat: [u64; 5],
}

impl Rollup {
    pub fn merge(&mut self, other: &Rollup) {
        self.opened += other.opened;
        self.first_responses.merge(&other.first_responses);
        self.sla_missed += other.sla_missed;
        self.resolutions.merge(&other.resolutions);
        self.reopened += other.reopened;
        self.messages_customer += other.messages_customer;
        self.messages_agent += other.messages_agent;
        self.messages_bot += other.messages_bot;
        self.messages_service += other.messages_service;
        self.queue_waits.merge(&other.queue_waits);
        for (mine, theirs) in self.csat.iter_mut().zip(other.csat) {
            *mine += theirs;
        }
    }

    /// Takes `other` away exactly; fails, changing nothing, when `other`
    /// holds what this does not (the facts and the rollups disagree).
    pub fn subtract(&mut self, other: &Rollup) -> Result<()> {
        fn less(have: u64, take: u64, what: &'static str) -> Result<u64> {
            have.checked_sub(take).ok_or(Error::Underflow { what })
        }
        let mut next = self.clone();
        next.opened = less(self.opened, other.opened, "opened")?;
        next.first_responses
            .subtract(&other.first_responses, "first_responses")?;
        next.sla_missed = less(self.sla_missed, other.sla_missed, "sla_missed")?;
        next.resolutions
            .subtract(&other.resolutions, "resolutions")?;
        next.reopened = less(self.reopened, other.reopened, "reopened")?;
        next.messages_customer = less(
            self.messages_customer,
            other.messages_customer,
            "messages_customer",
        )?;
        next.messages_agent = less(self.messages_agent, other.messages_agent, "messages_agent")?;
        next.messages_bot = less(self.messages_bot, other.messages_bot, "messages_bot")?;
        next.messages_service = less(
            self.messages_service,
            other.messages_service,
            "messages_service",
        )?;
        next.queue_waits
            .subtract(&other.queue_waits, "queue_waits")?;
        for (mine, theirs) in next.csat.iter_mut().zip(other.csat) {
            *mine = less(*mine, theirs, "csat")?;
        }
        *self = next;
        Ok(())
    }

    /// Whether it counts nothing at all.
    pub fn is_empty(&self) -> bool {
        *self == Rollup::default()
    }

    /// All messages, whatever the side.
    pub fn messages(&self) -> u64 {
        self.messages_customer + self.messages_agent + self.messages_bot + self.messages_service
    }

    pub fn csat_count(&self) -> u64 {
        self.csat.iter().sum()
    }

    /// The sum of the scores.
    pub fn csat_sum(&self) -> u64 {
        self.csat.iter().zip(1..).map(|(n, s)| n * s).sum()
    }
}

/// What one message changes in the rollups: for each touched key, what to
/// take away and what to add (the conversation's old and new contribution
/// there, or only what the message added).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    pub changes: Vec<(HourKey, Change)>,
}

/// One key's part of a [`Delta`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    pub remove: Rollup,
    pub add: Rollup,
}

impl Delta {
    /// `added` at `key`, nothing taken away.
    pub(crate) fn added(key: HourKey, added: Rollup) -> Delta {
        Delta {
            changes: vec![(
                key,
                Change {
                    remove: Rollup::default(),
                    add: added,
                },
            )],
        }
    }

    /// The difference between a conversation's contributions before and
    /// after.
    pub(crate) fn between(
        before: BTreeMap<HourKey, Rollup>,
        mut after: BTreeMap<HourKey, Rollup>,
    ) -> Delta {
        let mut changes = Vec::new();
        for (key, old) in before {
            let new = after.remove(&key).unwrap_or_default();
            if new != old {
                changes.push((
                    key,
                    Change {
                        remove: old,
                        add: new,
                    },
                ));
            }
        }
        for (key, new) in after {
            changes.push((
                key,
                Change {
                    remove: Rollup::default(),
                    add: new,
                },
            ));
        }
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        Delta { changes }
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The keys whose rollup rows the shell reads and writes back.
    pub fn keys(&self) -> impl Iterator<Item = &HourKey> {
        self.changes.iter().map(|(key, _)| key)
    }
}

impl Change {
    /// Applies this change to the key's stored rollup (`None` when the
    /// store has no row); `None` back means the row is to be deleted.
    pub fn apply_to(&self, stored: Option<Rollup>) -> Result<Option<Rollup>> {
        let mut rollup = stored.unwrap_or_default();
        self.apply_in(&mut rollup)?;
        Ok((!rollup.is_empty()).then_some(rollup))
    }

    /// Applies this change to a rollup in place; fails, changing nothing,
    /// when it takes away what the rollup does not hold.
    pub fn apply_in(&self, rollup: &mut Rollup) -> Result<()> {
        rollup.subtract(&self.remove)?;
        rollup.merge(&self.add);
        Ok(())
    }
}

/// Rollups held in memory, by key: what a store keeps, for tests, the
/// simulation and [`rebuild`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rollups(BTreeMap<HourKey, Rollup>);

impl Rollups {
    /// Applies a delta, all of it or, when a row would underflow, none.
    pub fn apply(&mut self, delta: &Delta) -> Result<()> {
        let mut next = Vec::with_capacity(delta.changes.len());
        for (key, change) in &delta.changes {
            next.push((key, change.apply_to(self.0.get(key).cloned())?));
        }
        for (key, rollup) in next {
            match rollup {
                Some(rollup) => self.0.insert(key.clone(), rollup),
                None => self.0.remove(key),
            };
        }
        Ok(())
    }

    /// Adds a conversation's contributions.
    pub fn add(&mut self, contributions: BTreeMap<HourKey, Rollup>) {
        for (key, rollup) in contributions {
            self.0.entry(key).or_default().merge(&rollup);
        }
    }

    pub fn get(&self, key: &HourKey) -> Option<&Rollup> {
        self.0.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&HourKey, &Rollup)> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl IntoIterator for Rollups {
    type Item = (HourKey, Rollup);
    type IntoIter = std::collections::btree_map::IntoIter<HourKey, Rollup>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// The rollups the given facts imply: the repair when stored rollups and
/// facts are found to disagree, and the definition the incremental deltas
/// keep.
pub fn rebuild<'a>(facts: impl IntoIterator<Item = &'a ConversationFacts>) -> Rollups {
    let mut rollups = Rollups::default();
    for f in facts {
        rollups.add(f.contributions());
    }
    rollups
}
