use thiserror::Error;

/// Input that breaks a rule of the domain. `field` names the offending
/// field in the API's terms so the edge can report it as a field violation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {field}: {reason}")]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Invalid> = std::result::Result<T, E>;
