//! Who may do what in a conversation, as plain decisions over roles and
//! ids: no store, no bus, so every rule is checked by a unit test. The
//! caller looks up membership only when a rule asks for it.

use natter_core::{LifecycleChange, Owner, Role, UserId};
use natter_proto::status::{self, reason};
use tonic::Status;

/// What a caller needs before an action on one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// Nothing beyond the conversation being in the caller's tenant, which
    /// every store call checks itself.
    Allowed,
    /// The caller must be a member (else NOT_A_MEMBER).
    Member,
    /// The caller's role may not do this, whatever its membership.
    Denied(&'static str),
}

/// Reading a conversation, its members and messages, and sending to it:
/// members, and service-role callers without membership.
pub(crate) fn read_or_send(role: Role) -> Check {
    match role {
        Role::Service => Check::Allowed,
        Role::Customer | Role::Agent | Role::Bot => Check::Member,
    }
}

/// Changing a conversation's lifecycle: the business's members (agents
/// and bots), and service-role callers without membership; never a
/// customer. A bot passes control to the inbox but never takes it: it
/// asks for it.
pub(crate) fn change_lifecycle(role: Role, change: &LifecycleChange) -> Check {
    match role {
        Role::Service => Check::Allowed,
        Role::Bot if change.owner == Some(Owner::Bot) => {
            Check::Denied("a bot may not take control from the inbox; request it")
        }
        Role::Agent | Role::Bot => Check::Member,
        Role::Customer => Check::Denied("customers may not change a conversation's lifecycle"),
    }
}

/// Moving a read marker: only members have one, whatever their role.
pub(crate) fn mark_read() -> Check {
    Check::Member
}

/// How much a role may do, lowest first: a caller grants a member at most
/// its own rank. Bots answer for the business but may not make anyone a
/// human agent; services act for the whole tenant.
fn rank(role: Role) -> u8 {
    match role {
        Role::Customer => 0,
        Role::Bot => 1,
        Role::Agent => 2,
        Role::Service => 3,
    }
}

/// Creating a conversation with `members` (the caller included, when it
/// joins): services create anything in their tenant; agents and bots
/// create conversations with members of at most their own role; a
/// customer only a conversation whose one member is themselves, since the
/// business's agents and bots join through routing or a business token,
/// never by a customer's say-so.
pub(crate) fn create_conversation(
    role: Role,
    caller: &UserId,
    members: &[(UserId, Role)],
) -> Check {
    if let Some(denied) = grants(role, members) {
        return denied;
    }
    match role {
        Role::Customer if members.iter().any(|(user, _)| user != caller) => {
            Check::Denied("a customer may create only a conversation of their own")
        }
        Role::Customer | Role::Agent | Role::Bot | Role::Service => Check::Allowed,
    }
}

/// Adding `members`: agents and bots who are members, and services, each
/// granting at most their own role.
pub(crate) fn add_members(role: Role, members: &[(UserId, Role)]) -> Check {
    if role == Role::Customer {
        return Check::Denied("customers may not add members");
    }
    match grants(role, members) {
        Some(denied) => denied,
        None if role == Role::Service => Check::Allowed,
        None => Check::Member,
    }
}

/// `Denied` if any of `members` would get a role above the caller's.
fn grants(role: Role, members: &[(UserId, Role)]) -> Option<Check> {
    members
        .iter()
        .any(|(_, granted)| rank(*granted) > rank(role))
        .then_some(Check::Denied("no one may grant a role above their own"))
}

/// Removing members: like adding, except that anyone may remove just
/// themselves (leave). Leaving a conversation one is not in changes
/// nothing, so a retried leave succeeds.
pub(crate) fn remove_members(role: Role, caller: &UserId, users: &[UserId]) -> Check {
    if let [only] = users
        && only == caller
    {
        return Check::Allowed;
    }
    match role {
        Role::Service => Check::Allowed,
        Role::Agent | Role::Bot => Check::Member,
        Role::Customer => Check::Denied("customers may only remove themselves"),
    }
}

/// Whose conversations a caller may list: their own, or, for a service,
/// any user's of the tenant. `requested` is `None` when the request names
/// nobody.
pub(crate) fn list_conversations_of<'a>(
    role: Role,
    caller: &'a UserId,
    requested: Option<&'a UserId>,
) -> Result<&'a UserId, Status> {
    match requested {
        None => Ok(caller),
        Some(user) if user == caller || role == Role::Service => Ok(user),
        Some(_) => Err(role_not_allowed(
            "only service-role callers may list another user's conversations",
        )),
    }
}

pub(crate) fn not_a_member() -> Status {
    status::permission_denied(reason::NOT_A_MEMBER, "not a member of the conversation")
}

pub(crate) fn role_not_allowed(message: &str) -> Status {
    status::permission_denied(reason::ROLE_NOT_ALLOWED, message)
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn user(id: &str) -> UserId {
        UserId::new(id).unwrap()
    }

    #[test]
    fn services_act_without_membership_and_others_need_it() {
        assert_eq!(read_or_send(Role::Service), Check::Allowed);
        for role in [Role::Customer, Role::Agent, Role::Bot] {
            assert_eq!(read_or_send(role), Check::Member);
        }
        assert_eq!(mark_read(), Check::Member);
    }

    const ROLES: [Role; 4] = [Role::Customer, Role::Bot, Role::Agent, Role::Service];

    #[test]
    fn creating_a_conversation_for_every_caller_and_member_role() {
        let (me, other) = (user("me"), user("other"));
        for caller in ROLES {
            // Alone, in one's own role: always allowed.
            assert_eq!(
                create_conversation(caller, &me, &[(me.clone(), caller)]),
                Check::Allowed,
                "{caller:?} alone"
            );
            for granted in ROLES {
                let with_other = [(me.clone(), caller), (other.clone(), granted)];
                let expected = match (caller, granted) {
                    (Role::Service, _) => Check::Allowed,
                    (Role::Customer, Role::Customer) => {
                        Check::Denied("a customer may create only a conversation of their own")
                    }
                    _ if rank(granted) > rank(caller) => {
                        Check::Denied("no one may grant a role above their own")
                    }
                    (Role::Agent | Role::Bot, _) => Check::Allowed,
                    (Role::Customer, _) => unreachable!("customers rank lowest"),
                };
                assert_eq!(
                    create_conversation(caller, &me, &with_other),
                    expected,
                    "{caller:?} creating with another {granted:?}"
                );
            }
        }
    }

    #[test]
    fn a_customer_may_not_be_made_agent_by_the_request() {
        let (mallory, victim) = (user("mallory"), user("victim"));
        let request = [
            (mallory.clone(), Role::Customer),
            (victim.clone(), Role::Agent),
        ];
        assert!(matches!(
            create_conversation(Role::Customer, &mallory, &request),
            Check::Denied(_)
        ));
        // Not even oneself: the caller joins with the role of its token.
        assert!(matches!(
            create_conversation(Role::Customer, &mallory, &[(mallory.clone(), Role::Agent)]),
            Check::Denied(_)
        ));
    }

    #[test]
    fn adding_members_for_every_caller_and_member_role() {
        let other = user("other");
        for caller in ROLES {
            for granted in ROLES {
                let expected = match caller {
                    Role::Customer => Check::Denied("customers may not add members"),
                    _ if rank(granted) > rank(caller) => {
                        Check::Denied("no one may grant a role above their own")
                    }
                    Role::Service => Check::Allowed,
                    Role::Agent | Role::Bot => Check::Member,
                };
                assert_eq!(
                    add_members(caller, &[(other.clone(), granted)]),
                    expected,
                    "{caller:?} adding a {granted:?}"
                );
            }
        }
    }

    #[test]
    fn anyone_may_leave_but_only_business_roles_remove_others() {
        let (alice, bob) = (user("alice"), user("bob"));
        for role in [Role::Customer, Role::Agent, Role::Bot, Role::Service] {
            assert_eq!(
                remove_members(role, &alice, std::slice::from_ref(&alice)),
                Check::Allowed
            );
        }
        assert!(matches!(
            remove_members(Role::Customer, &alice, std::slice::from_ref(&bob)),
            Check::Denied(_)
        ));
        assert!(matches!(
            remove_members(Role::Customer, &alice, &[alice.clone(), bob.clone()]),
            Check::Denied(_)
        ));
        assert_eq!(
            remove_members(Role::Agent, &alice, std::slice::from_ref(&bob)),
            Check::Member
        );
        assert_eq!(
            remove_members(Role::Service, &alice, &[bob]),
            Check::Allowed
        );
    }

    #[test]
    fn only_services_list_other_users_conversations() {
        let (alice, bob) = (user("alice"), user("bob"));
        assert_eq!(
            list_conversations_of(Role::Customer, &alice, None).unwrap(),
            &alice
        );
        assert_eq!(
            list_conversations_of(Role::Agent, &alice, Some(&alice)).unwrap(),
            &alice
        );
        assert_eq!(
            list_conversations_of(Role::Service, &alice, Some(&bob)).unwrap(),
            &bob
        );
        let denied = list_conversations_of(Role::Agent, &alice, Some(&bob)).unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
    }
}
