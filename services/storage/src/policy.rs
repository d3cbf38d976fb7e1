//! Who may do what in a conversation, as plain decisions over roles and
//! ids: no store, no bus, so every rule is checked by a unit test. The
//! caller looks up membership only when a rule asks for it.

use natter_core::{Role, UserId};
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

/// Moving a read marker: only members have one, whatever their role.
pub(crate) fn mark_read() -> Check {
    Check::Member
}

/// Adding members: agents and bots who are members, and services.
pub(crate) fn add_members(role: Role) -> Check {
    match role {
        Role::Service => Check::Allowed,
        Role::Agent | Role::Bot => Check::Member,
        Role::Customer => Check::Denied("customers may not add members"),
    }
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

    #[test]
    fn customers_may_not_add_members() {
        assert!(matches!(add_members(Role::Customer), Check::Denied(_)));
        assert_eq!(add_members(Role::Agent), Check::Member);
        assert_eq!(add_members(Role::Bot), Check::Member);
        assert_eq!(add_members(Role::Service), Check::Allowed);
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
