//! The one place errors become gRPC statuses: every status a Natter
//! service reports is built by a function here.
//!
//! Errors of crates natter-proto does not know are mapped onto these
//! functions where both are known: `StoreError` by
//! `natter_server::store_status`, the bus's `ContractError` by
//! `ContractError::into_status`.
//!
//! Every status carries `google.rpc` details: an `ErrorInfo` with domain
//! [`DOMAIN`] and a [`reason`], and for INVALID_ARGUMENT a `BadRequest`
//! naming the offending field. `proto/natter/v1/common.proto` documents the
//! same table for callers; keep the two in step.

use std::collections::HashMap;

use natter_core::{ClientMessageId, Invalid};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{bus, v1};

/// The `ErrorInfo.domain` of every Natter error.
pub const DOMAIN: &str = "natter.dev";

/// `ErrorInfo.reason` values. Not-found reasons are built from the kind of
/// record instead: `CONVERSATION_NOT_FOUND`, `DEVICE_NOT_FOUND`, ...
pub mod reason {
    /// INVALID_ARGUMENT: a request field breaks a rule.
    pub const INVALID_FIELD: &str = "INVALID_FIELD";
    /// UNAUTHENTICATED: the token is missing, malformed, expired or badly signed.
    pub const TOKEN_INVALID: &str = "TOKEN_INVALID";
    /// PERMISSION_DENIED: the caller is not a member of the conversation.
    pub const NOT_A_MEMBER: &str = "NOT_A_MEMBER";
    /// PERMISSION_DENIED: the caller's role may not do this.
    pub const ROLE_NOT_ALLOWED: &str = "ROLE_NOT_ALLOWED";
    /// ALREADY_EXISTS: the record exists, or a concurrent write won.
    pub const CONFLICT: &str = "CONFLICT";
    /// FAILED_PRECONDITION: a bound such as the member limit would be passed.
    pub const LIMIT_EXCEEDED: &str = "LIMIT_EXCEEDED";
    /// FAILED_PRECONDITION: the record is not in the state the call needs.
    pub const FAILED_PRECONDITION: &str = "FAILED_PRECONDITION";
    /// FAILED_PRECONDITION: a bot sent while the people of the inbox have
    /// control of the conversation.
    pub const INBOX_HAS_CONTROL: &str = "INBOX_HAS_CONTROL";
    /// UNAVAILABLE: storage could not be reached; retry with backoff.
    pub const STORE_UNAVAILABLE: &str = "STORE_UNAVAILABLE";
    /// UNAVAILABLE: another Natter service, or the bus between them, did
    /// not answer; retry with backoff.
    pub const SERVICE_UNAVAILABLE: &str = "SERVICE_UNAVAILABLE";
    /// INTERNAL: a stored record could not be read.
    pub const CORRUPT_RECORD: &str = "CORRUPT_RECORD";
    /// INTERNAL: one Natter service could not read what another sent it.
    pub const SERVICE_MESSAGE_UNREADABLE: &str = "SERVICE_MESSAGE_UNREADABLE";
    /// OUT_OF_RANGE for a client frame over the size limit, else the
    /// transport's code: a client frame could not be decoded; the session
    /// ends.
    pub const FRAME_UNREADABLE: &str = "FRAME_UNREADABLE";
    /// PERMISSION_DENIED: the device was revoked; it may not connect.
    pub const DEVICE_REVOKED: &str = "DEVICE_REVOKED";
    /// RESOURCE_EXHAUSTED: the device reads too slowly, or fell too far
    /// behind during catch-up; reconnect to catch up.
    pub const SLOW_CONSUMER: &str = "SLOW_CONSUMER";
    /// UNAVAILABLE: the gateway is shutting down; reconnect elsewhere.
    pub const SHUTTING_DOWN: &str = "SHUTTING_DOWN";
}

/// INVALID_ARGUMENT with a `BadRequest` field violation for `err.field`.
pub fn invalid_argument(err: Invalid) -> Status {
    let mut details = ErrorDetails::with_bad_request_violation(err.field, err.reason.as_str());
    details.set_error_info(
        reason::INVALID_FIELD,
        DOMAIN,
        HashMap::from([("field".to_owned(), err.field.to_owned())]),
    );
    Status::with_error_details(Code::InvalidArgument, err.to_string(), details)
}

/// NOT_FOUND for record `id` of `kind` ("conversation", "device", ...),
/// with reason `<KIND>_NOT_FOUND` and the id in the `ErrorInfo` metadata.
pub fn not_found(kind: &str, id: &str) -> Status {
    let metadata = HashMap::from([("id".to_owned(), id.to_owned())]);
    with_info(
        Code::NotFound,
        &not_found_reason(kind),
        format!("{kind} {id} not found"),
        metadata,
    )
}

/// Defines `name(reason, message)`: a status of `code` whose `ErrorInfo`
/// carries `reason`.
macro_rules! with_reason {
    ($($(#[$doc:meta])* $name:ident: $code:ident;)*) => {$(
        $(#[$doc])*
        pub fn $name(reason: &str, message: impl Into<String>) -> Status {
            plain(Code::$code, reason, message)
        }
    )*};
}

with_reason! {
    /// ALREADY_EXISTS, such as `already_exists(reason::CONFLICT, "id taken")`.
    already_exists: AlreadyExists;
    /// FAILED_PRECONDITION for a call the record's state or a bound refuses
    /// however often it is retried, such as
    /// `failed_precondition(reason::LIMIT_EXCEEDED, "too many members")`.
    failed_precondition: FailedPrecondition;
    /// PERMISSION_DENIED for an authorization failure, such as
    /// `permission_denied(reason::NOT_A_MEMBER, "not a member of the conversation")`.
    permission_denied: PermissionDenied;
    /// UNAUTHENTICATED for a missing or unacceptable token, such as
    /// `unauthenticated(reason::TOKEN_INVALID, "token expired")`.
    unauthenticated: Unauthenticated;
    /// UNAVAILABLE for a call that may succeed if retried with backoff, such
    /// as `unavailable(reason::SERVICE_UNAVAILABLE, "sync did not answer")`.
    unavailable: Unavailable;
    /// RESOURCE_EXHAUSTED for a caller over a bound that frees up, such as
    /// `resource_exhausted(reason::SLOW_CONSUMER, "too slow")`.
    resource_exhausted: ResourceExhausted;
    /// INTERNAL for what the caller cannot fix, such as
    /// `internal(reason::SERVICE_MESSAGE_UNREADABLE, "storage answered nonsense")`.
    /// The message must not carry backend details.
    internal: Internal;
}

/// The `ErrorInfo.reason` of a status; empty for one without.
pub fn reason_of(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

/// The status that ends a stream whose client frame the transport could
/// not decode: the transport's code and message, with an `ErrorInfo`.
pub fn frame_unreadable(cause: &Status) -> Status {
    plain(cause.code(), reason::FRAME_UNREADABLE, cause.message())
}

/// The gateway's `error` frame for a status, so a failed frame reports the
/// same code, reason and field as the unary RPC would. `client_message_id`
/// is set when the status answers a `send`.
pub fn error_frame(status: &Status, client_message_id: Option<&ClientMessageId>) -> v1::ErrorFrame {
    v1::ErrorFrame {
        code: status.code().into(),
        message: status.message().to_owned(),
        client_message_id: client_message_id
            .map(ToString::to_string)
            .unwrap_or_default(),
        reason: reason_of(status),
        field: status
            .get_details_bad_request()
            .and_then(|bad| bad.field_violations.into_iter().next())
            .map(|violation| violation.field)
            .unwrap_or_default(),
        conversation_id: String::new(),
    }
}

/// A status as it travels between services (`natter.bus.v1.Failure`).
pub fn to_failure(status: &Status) -> bus::v1::Failure {
    let frame = error_frame(status, None);
    bus::v1::Failure {
        code: frame.code,
        reason: frame.reason,
        message: frame.message,
        field: frame.field,
    }
}

/// The status a service reports for a failure another service sent it.
pub fn from_failure(failure: bus::v1::Failure) -> Status {
    let code = Code::from_i32(failure.code);
    if failure.field.is_empty() {
        return plain(code, &failure.reason, failure.message);
    }
    let mut details =
        ErrorDetails::with_bad_request_violation(failure.field.clone(), failure.message.clone());
    details.set_error_info(
        failure.reason,
        DOMAIN,
        HashMap::from([("field".to_owned(), failure.field)]),
    );
    Status::with_error_details(code, failure.message, details)
}

fn plain(code: Code, reason: &str, message: impl Into<String>) -> Status {
    with_info(code, reason, message, HashMap::new())
}

fn with_info(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    metadata: HashMap<String, String>,
) -> Status {
    let details = ErrorDetails::with_error_info(reason, DOMAIN, metadata);
    Status::with_error_details(code, message, details)
}

/// `CONVERSATION_NOT_FOUND` for kind "conversation".
fn not_found_reason(kind: &str) -> String {
    let kind: String = kind
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{kind}_NOT_FOUND")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reason of a status that must carry an `ErrorInfo` of ours.
    fn checked_reason(status: &Status) -> String {
        let info = status.get_details_error_info().expect("an ErrorInfo");
        assert_eq!(info.domain, DOMAIN);
        info.reason
    }

    #[test]
    fn invalid_input_names_the_field() {
        let status = invalid_argument(Invalid::new("content.text", "must not be empty"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(checked_reason(&status), reason::INVALID_FIELD);
        let bad = status.get_details_bad_request().expect("a BadRequest");
        assert_eq!(bad.field_violations.len(), 1);
        assert_eq!(bad.field_violations[0].field, "content.text");
        assert_eq!(bad.field_violations[0].description, "must not be empty");
    }

    #[test]
    fn failures_cross_services_without_losing_code_reason_or_field() {
        let original = invalid_argument(Invalid::new("content.text", "must not be empty"));
        let back = from_failure(to_failure(&original));
        assert_eq!(back.code(), Code::InvalidArgument);
        assert_eq!(checked_reason(&back), reason::INVALID_FIELD);
        let bad = back.get_details_bad_request().expect("a BadRequest");
        assert_eq!(bad.field_violations[0].field, "content.text");

        let denied = permission_denied(reason::NOT_A_MEMBER, "not a member");
        let back = from_failure(to_failure(&denied));
        assert_eq!(back.code(), Code::PermissionDenied);
        assert_eq!(checked_reason(&back), reason::NOT_A_MEMBER);
        assert_eq!(back.message(), "not a member");
    }

    #[test]
    fn not_found_names_the_kind_and_carries_the_id() {
        let status = not_found("update log", "bob");
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(checked_reason(&status), "UPDATE_LOG_NOT_FOUND");
        let info = status.get_details_error_info().expect("an ErrorInfo");
        assert_eq!(info.metadata.get("id").map(String::as_str), Some("bob"));
        assert_eq!(status.message(), "update log bob not found");
    }

    #[test]
    fn helpers_carry_their_code_and_reason() {
        type Builder = fn(&str, &'static str) -> Status;
        let builders: [(Builder, Code); 7] = [
            (already_exists, Code::AlreadyExists),
            (failed_precondition, Code::FailedPrecondition),
            (permission_denied, Code::PermissionDenied),
            (unauthenticated, Code::Unauthenticated),
            (unavailable, Code::Unavailable),
            (resource_exhausted, Code::ResourceExhausted),
            (internal, Code::Internal),
        ];
        for (build, code) in builders {
            let status = build(reason::CONFLICT, "no");
            assert_eq!(status.code(), code, "{status:?}");
            assert_eq!(checked_reason(&status), "CONFLICT");
            assert_eq!(status.message(), "no");
        }
        let broken = frame_unreadable(&Status::out_of_range("frame too large"));
        assert_eq!(broken.code(), Code::OutOfRange);
        assert_eq!(checked_reason(&broken), "FRAME_UNREADABLE");
    }

    #[test]
    fn error_frames_repeat_code_reason_and_field() {
        let id = ClientMessageId::new("c-9").unwrap();
        let frame = error_frame(
            &invalid_argument(Invalid::new("content", "is required")),
            Some(&id),
        );
        assert_eq!(frame.code, Code::InvalidArgument as i32);
        assert_eq!(frame.reason, "INVALID_FIELD");
        assert_eq!(frame.field, "content");
        assert_eq!(frame.client_message_id, "c-9");
        assert_eq!(frame.message, "invalid content: is required");

        let frame = error_frame(&permission_denied(reason::NOT_A_MEMBER, "no"), None);
        assert_eq!(frame.code, 7);
        assert_eq!(frame.reason, "NOT_A_MEMBER");
        assert_eq!(frame.field, "");
        assert_eq!(frame.client_message_id, "");
    }
}
