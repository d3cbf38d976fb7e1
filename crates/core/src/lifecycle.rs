//! A conversation's support lifecycle: its status, priority, tags,
//! assignee and team.
//!
//! Every change is stored as an *activity* message in the conversation
//! (content [`Content::Activity`](crate::Content::Activity) holding the
//! lifecycle after the change), numbered by the conversation's sequencer
//! like any message. So a change is ordered with the messages around it,
//! costs the message path nothing it does not already pay, reaches every
//! member's devices live and after a reconnect through the update logs,
//! and stays in the transcript. The store keeps the newest lifecycle on
//! the conversation, written with its activity message in one write.

use std::collections::BTreeSet;

use crate::error::{Invalid, Result};
use crate::ids::{Tag, TeamId, UserId};
use crate::limits::Limits;

/// Where a conversation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Status {
    /// Waiting on the business.
    #[default]
    Open,
    /// Waiting on the customer.
    Pending,
    /// Answered; the customer may still come back.
    Resolved,
    /// Done. A new customer message opens it again, as it does a resolved
    /// or pending one.
    Closed,
}

/// How urgently a conversation needs an answer; queues serve higher first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Urgent,
}

/// A conversation's lifecycle. A new conversation's is the default: open,
/// normal priority, no tags, nobody assigned, no team.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lifecycle {
    pub status: Status,
    pub priority: Priority,
    pub tags: BTreeSet<Tag>,
    pub assignee: Option<UserId>,
    pub team: Option<TeamId>,
}

/// What a change sets; everything left `None` (or empty) stays as it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LifecycleChange {
    pub status: Option<Status>,
    pub priority: Option<Priority>,
    pub add_tags: BTreeSet<Tag>,
    pub remove_tags: BTreeSet<Tag>,
    /// `Some(None)` unassigns.
    pub assignee: Option<Option<UserId>>,
    /// `Some(None)` takes the conversation out of its team.
    pub team: Option<Option<TeamId>>,
}

impl LifecycleChange {
    /// The change a customer's message makes to a conversation that is
    /// not open.
    pub fn reopen() -> Self {
        Self {
            status: Some(Status::Open),
            ..Self::default()
        }
    }

    /// Checks what does not depend on the conversation: the change sets
    /// something, names few enough tags, and does not both add and remove
    /// one.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        if *self == Self::default() {
            return Err(Invalid::new("change", "must set at least one field"));
        }
        let named = self.add_tags.len() + self.remove_tags.len();
        if named > limits.max_tags {
            return Err(Invalid::new(
                "tags",
                format!("at most {} tags per change, got {named}", limits.max_tags),
            ));
        }
        if let Some(tag) = self.add_tags.intersection(&self.remove_tags).next() {
            return Err(Invalid::new(
                "remove_tags",
                format!("tag {tag} is both added and removed"),
            ));
        }
        Ok(())
    }
}

impl Lifecycle {
    /// The lifecycle after `change`, or `None` when it changes nothing.
    /// Fails when the conversation would carry more tags than allowed.
    pub fn apply(&self, change: &LifecycleChange, limits: &Limits) -> Result<Option<Self>> {
        let mut next = self.clone();
        if let Some(status) = change.status {
            next.status = status;
        }
        if let Some(priority) = change.priority {
            next.priority = priority;
        }
        next.tags.extend(change.add_tags.iter().cloned());
        next.tags.retain(|tag| !change.remove_tags.contains(tag));
        if next.tags.len() > limits.max_tags {
            return Err(Invalid::new(
                "add_tags",
                format!("a conversation carries at most {} tags", limits.max_tags),
            ));
        }
        if let Some(assignee) = &change.assignee {
            next.assignee.clone_from(assignee);
        }
        if let Some(team) = &change.team {
            next.team.clone_from(team);
        }
        Ok((next != *self).then_some(next))
    }

    /// The bytes it weighs as a message's content.
    pub fn size_bytes(&self) -> usize {
        self.tags.iter().map(|t| t.as_str().len()).sum::<usize>()
            + self.assignee.as_ref().map_or(0, |a| a.as_str().len())
            + self.team.as_ref().map_or(0, |t| t.as_str().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(names: &[&str]) -> BTreeSet<Tag> {
        names.iter().map(|n| Tag::new(*n).unwrap()).collect()
    }

    #[test]
    fn a_change_sets_what_it_names_and_keeps_the_rest() {
        let limits = Limits::default();
        let before = Lifecycle {
            tags: tags(&["vip"]),
            team: Some(TeamId::new("billing").unwrap()),
            ..Lifecycle::default()
        };
        let change = LifecycleChange {
            status: Some(Status::Resolved),
            add_tags: tags(&["refund"]),
            remove_tags: tags(&["vip"]),
            assignee: Some(Some(UserId::new("ann").unwrap())),
            ..LifecycleChange::default()
        };
        let after = before.apply(&change, &limits).unwrap().unwrap();
        assert_eq!(after.status, Status::Resolved);
        assert_eq!(after.priority, Priority::Normal);
        assert_eq!(after.tags, tags(&["refund"]));
        assert_eq!(after.assignee, Some(UserId::new("ann").unwrap()));
        assert_eq!(after.team, before.team);
        // The same change again changes nothing.
        assert_eq!(after.apply(&change, &limits).unwrap(), None);
        // Unassigning and leaving the team.
        let cleared = after
            .apply(
                &LifecycleChange {
                    assignee: Some(None),
                    team: Some(None),
                    ..LifecycleChange::default()
                },
                &limits,
            )
            .unwrap()
            .unwrap();
        assert_eq!((cleared.assignee, cleared.team), (None, None));
    }

    #[test]
    fn changes_are_checked() {
        let limits = Limits {
            max_tags: 2,
            ..Limits::default()
        };
        assert_eq!(
            LifecycleChange::default()
                .validate(&limits)
                .unwrap_err()
                .field,
            "change"
        );
        let both = LifecycleChange {
            add_tags: tags(&["a"]),
            remove_tags: tags(&["a"]),
            ..LifecycleChange::default()
        };
        assert_eq!(both.validate(&limits).unwrap_err().field, "remove_tags");
        let many = LifecycleChange {
            add_tags: tags(&["a", "b", "c"]),
            ..LifecycleChange::default()
        };
        assert_eq!(many.validate(&limits).unwrap_err().field, "tags");
        let one_more = LifecycleChange {
            add_tags: tags(&["c"]),
            ..LifecycleChange::default()
        };
        let full = Lifecycle {
            tags: tags(&["a", "b"]),
            ..Lifecycle::default()
        };
        assert_eq!(
            full.apply(&one_more, &limits).unwrap_err().field,
            "add_tags"
        );
        assert!(LifecycleChange::reopen().validate(&limits).is_ok());
    }
}
