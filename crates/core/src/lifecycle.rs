//! A conversation's support lifecycle: its status, priority, tags,
//! assignee and team, and who answers it, the bot or the people of the
//! business's inbox (the handover protocol of Messenger's platform: one
//! owner at a time; the owner passes control, the inbox takes it, the bot
//! requests it; the customer asks for a person).
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

use crate::content::Content;
use crate::error::{Invalid, Result};
use crate::ids::{Tag, TeamId, UserId};
use crate::limits::Limits;
use crate::model::Role;

/// The `form_id` of the satisfaction survey the desk sends when a
/// conversation is resolved: a `score` (a [`FieldKind::Rating`](crate::FieldKind::Rating))
/// and an optional `comment`. The customer's answer does not reopen the
/// conversation ([`Lifecycle::follow_up`]).
pub const CSAT_FORM_ID: &str = "csat";

fn is_csat_answer(content: &Content) -> bool {
    matches!(content, Content::FormReply(reply) if reply.form_id == CSAT_FORM_ID)
}

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

/// Who answers a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Owner {
    /// The business's bots; people may still write.
    #[default]
    Bot,
    /// The people of the business's inbox: bots receive the messages but
    /// may not send until control is passed back.
    Inbox,
}

/// A conversation's lifecycle. A new conversation's is the default: open,
/// normal priority, no tags, nobody assigned, no team, the bot answering.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lifecycle {
    pub status: Status,
    pub priority: Priority,
    pub tags: BTreeSet<Tag>,
    pub assignee: Option<UserId>,
    pub team: Option<TeamId>,
    pub owner: Owner,
    /// Control was asked of the owner (by the bot, or by the customer
    /// asking for a person) and not passed yet.
    pub control_requested: bool,
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
    /// Passes or takes control; a new owner clears a request.
    pub owner: Option<Owner>,
    /// Asks the owner for control.
    pub request_control: bool,
}

/// The postback payload of a quick reply or button that asks for a
/// person, whatever its title.
pub const ASK_FOR_A_PERSON: &str = "natter:person";

/// Words that, in a customer's text, ask for a person.
const PERSON_WORDS: [&str; 6] = [
    "human",
    "person",
    "agent",
    "representative",
    "operator",
    "someone",
];

/// Whether a customer's message asks for a person: a text with one of
/// [`PERSON_WORDS`] as a word (any case) or a reply with one, or a postback with the payload
/// [`ASK_FOR_A_PERSON`] or such a word in its title.
pub fn asks_for_a_person(content: &Content) -> bool {
    let has_word = |text: &str| {
        text.split(|c: char| !c.is_alphanumeric())
            .any(|word| PERSON_WORDS.iter().any(|w| word.eq_ignore_ascii_case(w)))
    };
    match content {
        Content::Postback(p) => p.payload == ASK_FOR_A_PERSON || has_word(&p.title),
        _ => content.text().is_some_and(has_word),
    }
}

impl LifecycleChange {
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
        if change.request_control {
            next.control_requested = true;
        }
        if let Some(owner) = change.owner
            && owner != self.owner
        {
            next.owner = owner;
            next.control_requested = false;
        }
        Ok((next != *self).then_some(next))
    }

    /// Whether someone of `role` may send now: anyone but a bot while the
    /// inbox has control.
    pub fn may_send(&self, role: Role) -> bool {
        role != Role::Bot || self.owner == Owner::Bot
    }

    /// What a message from `role` changes by itself: a customer's opens the
    /// conversation if it is not open, and asks for control while the bot
    /// has it if it asks for a person.
    /// An answer to the satisfaction survey ([`CSAT_FORM_ID`]) changes
    /// nothing: rating a resolved conversation does not reopen it.
    pub fn follow_up(&self, role: Role, content: &Content) -> LifecycleChange {
        if role != Role::Customer || is_csat_answer(content) {
            return LifecycleChange::default();
        }
        LifecycleChange {
            status: (self.status != Status::Open).then_some(Status::Open),
            request_control: self.owner == Owner::Bot
                && !self.control_requested
                && asks_for_a_person(content),
            ..LifecycleChange::default()
        }
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
    fn a_csat_answer_does_not_reopen_but_other_forms_do() {
        let resolved = Lifecycle {
            status: Status::Resolved,
            ..Lifecycle::default()
        };
        let answer = |form_id: &str| {
            Content::FormReply(crate::FormReply {
                form_id: form_id.to_owned(),
                values: [("score".to_owned(), "5".to_owned())].into(),
            })
        };
        assert_eq!(
            resolved.follow_up(Role::Customer, &answer(CSAT_FORM_ID)),
            LifecycleChange::default()
        );
        let rating = crate::FieldKind::Rating;
        assert!(rating.accepts("1") && rating.accepts(" 5 "));
        assert!(!rating.accepts("0") && !rating.accepts("6") && !rating.accepts("4.5"));
        assert_eq!(
            resolved.follow_up(Role::Customer, &answer("lead")).status,
            Some(Status::Open)
        );
        assert_eq!(
            resolved
                .follow_up(Role::Customer, &Content::Text("again".into()))
                .status,
            Some(Status::Open)
        );
    }

    #[test]
    fn control_passes_and_a_customer_asks_for_a_person() {
        let limits = Limits::default();
        let start = Lifecycle::default();
        assert!(start.may_send(Role::Bot) && start.may_send(Role::Agent));
        let person = Content::Text("Can I talk to a HUMAN, please?".into());
        assert!(asks_for_a_person(&Content::Reply(crate::Reply {
            text: "No, an agent please".into(),
            to: crate::Seq::new(1),
        })));
        let asked = start.follow_up(Role::Customer, &person);
        assert!(asked.request_control && asked.status.is_none());
        let requested = start.apply(&asked, &limits).unwrap().unwrap();
        assert!(requested.control_requested);
        // Asking again while a request stands changes nothing.
        assert_eq!(
            requested.follow_up(Role::Customer, &person),
            LifecycleChange::default()
        );
        // Only customers' messages change anything by themselves.
        assert_eq!(
            start.follow_up(Role::Agent, &person),
            LifecycleChange::default()
        );
        // The bot passes control: the request is answered.
        let pass = LifecycleChange {
            owner: Some(Owner::Inbox),
            ..LifecycleChange::default()
        };
        let inbox = requested.apply(&pass, &limits).unwrap().unwrap();
        assert_eq!(
            (inbox.owner, inbox.control_requested),
            (Owner::Inbox, false)
        );
        assert!(!inbox.may_send(Role::Bot) && inbox.may_send(Role::Agent));
        // While people answer, the customer asking again asks nothing.
        assert_eq!(
            inbox.follow_up(Role::Customer, &person),
            LifecycleChange::default()
        );
        for content in [
            Content::Text("agent".into()),
            Content::Postback(crate::content::Postback {
                title: "Talk to us".into(),
                payload: ASK_FOR_A_PERSON.into(),
            }),
        ] {
            assert!(asks_for_a_person(&content), "{content:?}");
        }
        for content in [
            Content::Text("the agency is humane".into()),
            Content::Text("where is my parcel?".into()),
        ] {
            assert!(!asks_for_a_person(&content), "{content:?}");
        }
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
        let reopen = LifecycleChange {
            status: Some(Status::Open),
            ..LifecycleChange::default()
        };
        assert!(reopen.validate(&limits).is_ok());
    }
}
