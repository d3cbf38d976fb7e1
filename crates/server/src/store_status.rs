use natter_proto::status::{self, reason};
use natter_store::StoreError;
use tonic::Status;

/// The status for a store failure, logged first: backend trouble loudly,
/// the caller's mistakes (not found, invalid, conflict) quietly.
///
/// This is the one mapping of `StoreError` onto `natter_proto::status`,
/// kept here because natter-proto does not know the stores.
///
/// UNAVAILABLE and INTERNAL carry a fixed message, not the backend's,
/// which is only logged, so nothing about the backend leaks to clients.
///
/// LIMIT_EXCEEDED maps to FAILED_PRECONDITION, not RESOURCE_EXHAUSTED: a
/// full conversation stays full however often the call is retried, and
/// RESOURCE_EXHAUSTED is what retry policies back off and retry on (keep it
/// for rate limits).
pub fn store_status(err: StoreError) -> Status {
    match &err {
        StoreError::Unavailable(_) | StoreError::Corrupt(_) => {
            tracing::error!(error = %err, "store call failed");
        }
        _ => tracing::debug!(error = %err, "store refused the call"),
    }
    match err {
        StoreError::Invalid(invalid) => status::invalid_argument(invalid),
        StoreError::NotFound { kind, id } => status::not_found(kind, &id),
        StoreError::Conflict(_) => status::already_exists(reason::CONFLICT, err.to_string()),
        StoreError::LimitExceeded(_) => {
            status::failed_precondition(reason::LIMIT_EXCEEDED, err.to_string())
        }
        StoreError::FailedPrecondition(_) => {
            status::failed_precondition(reason::FAILED_PRECONDITION, err.to_string())
        }
        StoreError::Unavailable(_) => status::unavailable(
            reason::STORE_UNAVAILABLE,
            "storage is unavailable, retry later",
        ),
        StoreError::Corrupt(_) => {
            status::internal(reason::CORRUPT_RECORD, "a stored record could not be read")
        }
    }
}

#[cfg(test)]
mod tests {
    use natter_core::Invalid;
    use natter_proto::status::reason_of;
    use tonic::Code;
    use tonic_types::StatusExt as _;

    use super::*;

    #[test]
    fn store_errors_map_to_codes_and_reasons() {
        let cases = [
            (
                StoreError::Invalid(Invalid::new("members", "listed twice")),
                Code::InvalidArgument,
                "INVALID_FIELD",
            ),
            (
                StoreError::not_found("conversation", "0190"),
                Code::NotFound,
                "CONVERSATION_NOT_FOUND",
            ),
            (
                StoreError::not_found("update log", "bob"),
                Code::NotFound,
                "UPDATE_LOG_NOT_FOUND",
            ),
            (
                StoreError::Conflict("id taken".into()),
                Code::AlreadyExists,
                "CONFLICT",
            ),
            (
                StoreError::LimitExceeded("too many members".into()),
                Code::FailedPrecondition,
                "LIMIT_EXCEEDED",
            ),
            (
                StoreError::FailedPrecondition("device revoked".into()),
                Code::FailedPrecondition,
                "FAILED_PRECONDITION",
            ),
            (
                StoreError::Unavailable("10.0.0.7:9042 timed out".into()),
                Code::Unavailable,
                "STORE_UNAVAILABLE",
            ),
            (
                StoreError::Corrupt("bad row".into()),
                Code::Internal,
                "CORRUPT_RECORD",
            ),
        ];
        for (err, code, reason) in cases {
            let status = store_status(err);
            assert_eq!(status.code(), code, "{status:?}");
            assert_eq!(reason_of(&status), reason);
        }
    }

    #[test]
    fn backend_details_stay_out_of_client_messages() {
        let status = store_status(StoreError::Unavailable("10.0.0.7:9042 timed out".into()));
        assert!(
            !status.message().contains("10.0.0.7"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn not_found_carries_the_id() {
        let status = store_status(StoreError::not_found("device", "phone-1"));
        let info = status.get_details_error_info().expect("an ErrorInfo");
        assert_eq!(info.metadata.get("id").map(String::as_str), Some("phone-1"));
        assert_eq!(status.message(), "device phone-1 not found");
    }
}
