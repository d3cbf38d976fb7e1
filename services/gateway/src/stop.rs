//! Why a session stops, and the statuses the gateway reports of its own:
//! those that end a session, and those it answers a frame with when a
//! peer service fails. Every status is built by `natter_proto::status`, so
//! each carries an `ErrorInfo` reason.
//!
//! The session (`session.rs`), its requests to peers (`peers.rs`) and its
//! watches (`watches.rs`) all speak these; this module needs none of
//! them, so none of them needs another just for these.

use natter_proto::status::{self, reason};
use tonic::Status;

use crate::outbound::Refused;

/// Why the session stops.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The device went away; there is nobody to tell.
    Gone,
    /// The session fails with this status.
    Fail(Status),
}

impl From<Refused> for Stop {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Gone => Stop::Gone,
            Refused::Full => Stop::Fail(slow_consumer("too slow; reconnect to catch up")),
        }
    }
}

/// A peer service (storage, sync) or the bus did not answer; the client
/// retries.
pub(crate) fn unavailable(message: impl Into<String>) -> Status {
    status::unavailable(reason::SERVICE_UNAVAILABLE, message)
}

/// A peer answered with something that cannot be read.
pub(crate) fn unreadable(message: impl Into<String>) -> Status {
    status::internal(reason::SERVICE_MESSAGE_UNREADABLE, message)
}

pub(crate) fn shutting_down() -> Status {
    status::unavailable(reason::SHUTTING_DOWN, "server shutting down; reconnect")
}

/// A session lasts no longer than its token; the client reconnects with a
/// new one (the widget asks the business's token endpoint again).
pub(crate) fn token_expired() -> Status {
    status::unauthenticated(
        reason::TOKEN_INVALID,
        "the session's token expired: reconnect with a new token",
    )
}

pub(crate) fn device_revoked() -> Status {
    status::permission_denied(reason::DEVICE_REVOKED, "device revoked")
}

pub(crate) fn slow_consumer(message: &str) -> Status {
    status::resource_exhausted(reason::SLOW_CONSUMER, message)
}

pub(crate) fn too_many_watches(max: usize) -> Status {
    status::resource_exhausted(
        reason::LIMIT_EXCEEDED,
        format!("a session watches at most {max} conversations; unwatch one first"),
    )
}
