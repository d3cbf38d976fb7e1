use natter_auth::{Identity, Verifier};
use natter_proto::status::{reason, unauthenticated};
use tonic::{Request, Status};

/// The caller of a gRPC request, from its `authorization: Bearer <jwt>`
/// metadata.
pub fn authenticate<T>(verifier: &Verifier, request: &Request<T>) -> Result<Identity, Status> {
    let header = request.metadata().get("authorization").ok_or_else(|| {
        unauthenticated(reason::TOKEN_INVALID, "authorization metadata is missing")
    })?;
    let token = header
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(|| {
            unauthenticated(
                reason::TOKEN_INVALID,
                "authorization must be `Bearer <jwt>`",
            )
        })?;
    verifier
        .verify(token.trim())
        .map_err(|e| unauthenticated(reason::TOKEN_INVALID, e.to_string()))
}
