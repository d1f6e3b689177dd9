//! Every error a client can see, and the one place that maps it to a gRPC status.
//!
//! Statuses follow AIP-193: a canonical code, a lowercase message, and
//! `google.rpc` details through tonic-types: a `BadRequest` with one field
//! violation per wrong field, and one `ErrorInfo` with an UPPER_SNAKE reason.

use std::collections::HashMap;

use rapport_domain::FieldViolation;
use rapport_projections::ProjectionError;
use rapport_store::StoreError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every Rapport error.
pub const ERROR_DOMAIN: &str = "rapport.v1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    #[error(
        "interaction_id {interaction_id:?} of community {community_id:?} was already recorded with a different payload"
    )]
    InteractionConflict {
        /// Path of the offending field (`interactions[3].interaction_id`).
        field: String,
        community_id: String,
        interaction_id: String,
    },
    #[error("the database is not ready yet")]
    NotReady,
    /// No token, a malformed one, or one the tokens file does not hold.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// A valid token without the scope or the community the call needs.
    #[error("permission denied: {0}")]
    PermissionDenied(#[from] rapport_auth::Denied),
    /// No such thing in this community (also for things of other communities:
    /// never say which).
    #[error("{what} not found")]
    NotFound {
        what: String,
        /// The `ErrorInfo` reason, e.g. `MEMBER_NOT_FOUND`.
        reason: &'static str,
    },
    /// The member's personal data was erased: it takes no more changes.
    #[error("member {member_id:?} was erased")]
    MemberErased { member_id: String },
    /// A merge-related refusal: the member is merged (act on `into`), or a
    /// merge would make a chain, or an unmerge names no merge.
    #[error("{message}")]
    MergeRefused {
        message: String,
        /// The `ErrorInfo` reason, e.g. `MEMBER_MERGED`.
        reason: &'static str,
        /// The member to act on instead, when there is one
        /// (`ErrorInfo.metadata["into_member_id"]`).
        into: Option<String>,
    },
    #[error("too many subscriptions are open (at most {limit}); retry later")]
    TooManySubscriptions { limit: usize },
    /// A subscription ends because the server stops; the client resumes
    /// after `resume_after` on another replica or after the restart.
    #[error("the server is shutting down; resume after position {resume_after}")]
    ShuttingDown { resume_after: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Projection(ProjectionError),
}

impl From<ProjectionError> for ApiError {
    fn from(e: ProjectionError) -> Self {
        match e {
            ProjectionError::Store(store) => ApiError::Store(store),
            ProjectionError::Unknown(name) => ApiError::NotFound {
                what: format!("projection {name:?}"),
                reason: "PROJECTION_NOT_FOUND",
            },
            other => ApiError::Projection(other),
        }
    }
}

impl ApiError {
    /// A single field violation.
    pub fn field(field: impl Into<String>, description: impl Into<String>) -> Self {
        ApiError::InvalidArgument(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        let mut details = ErrorDetails::new();
        let (code, reason, message) = match &error {
            ApiError::InvalidArgument(violations) => {
                for v in violations {
                    details.add_bad_request_violation(&v.field, &v.description);
                }
                let first = violations
                    .first()
                    .map(|v| format!("{} {}", v.field, v.description))
                    .unwrap_or_default();
                let more = match violations.len() {
                    0 | 1 => String::new(),
                    n => format!(" (and {} more)", n - 1),
                };
                (
                    Code::InvalidArgument,
                    "INVALID_ARGUMENT",
                    format!("invalid argument: {first}{more}"),
                )
            }
            ApiError::InteractionConflict {
                field,
                community_id,
                interaction_id,
            } => {
                let metadata = HashMap::from([
                    ("field".to_owned(), field.clone()),
                    ("community_id".to_owned(), community_id.clone()),
                    ("interaction_id".to_owned(), interaction_id.clone()),
                ]);
                details.set_error_info("INTERACTION_ID_CONFLICT", ERROR_DOMAIN, metadata);
                (Code::AlreadyExists, "", format!("{field}: {error}"))
            }
            ApiError::NotReady => (Code::Unavailable, "DATABASE_NOT_READY", error.to_string()),
            ApiError::Unauthenticated(_) => {
                (Code::Unauthenticated, "UNAUTHENTICATED", error.to_string())
            }
            ApiError::PermissionDenied(denied) => (
                Code::PermissionDenied,
                match denied {
                    rapport_auth::Denied::Scope { .. } => "SCOPE_MISSING",
                    _ => "COMMUNITY_NOT_ALLOWED",
                },
                error.to_string(),
            ),
            ApiError::NotFound { reason, .. } => (Code::NotFound, *reason, error.to_string()),
            ApiError::MemberErased { .. } => {
                (Code::FailedPrecondition, "MEMBER_ERASED", error.to_string())
            }
            ApiError::MergeRefused { reason, into, .. } => {
                let metadata: HashMap<String, String> = into
                    .iter()
                    .map(|i| ("into_member_id".to_owned(), i.clone()))
                    .collect();
                details.set_error_info(*reason, ERROR_DOMAIN, metadata);
                (Code::FailedPrecondition, "", error.to_string())
            }
            ApiError::TooManySubscriptions { .. } => (
                Code::ResourceExhausted,
                "TOO_MANY_SUBSCRIPTIONS",
                error.to_string(),
            ),
            ApiError::ShuttingDown { resume_after } => {
                let metadata =
                    HashMap::from([("resume_after".to_owned(), resume_after.to_string())]);
                details.set_error_info("SHUTTING_DOWN", ERROR_DOMAIN, metadata);
                (Code::Unavailable, "", error.to_string())
            }
            ApiError::Projection(
                ProjectionError::Behind { .. } | ProjectionError::NotBuilt { .. },
            ) => (Code::Unavailable, "PROJECTION_BEHIND", error.to_string()),
            ApiError::Projection(other) => {
                tracing::error!(error = ?other, "internal error");
                (Code::Internal, "INTERNAL", other.to_string())
            }
            ApiError::Store(StoreError::Unavailable(source)) => (
                Code::Unavailable,
                "DATABASE_UNAVAILABLE",
                format!("database unavailable: {source}"),
            ),
            ApiError::Store(StoreError::Closed) => (
                Code::Unavailable,
                "SHUTTING_DOWN",
                "the server is shutting down".to_owned(),
            ),
            ApiError::Store(other) => {
                tracing::error!(error = ?other, "internal error");
                (Code::Internal, "INTERNAL", other.to_string())
            }
        };
        if !reason.is_empty() {
            details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
        }
        Status::with_error_details(code, message, details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_become_bad_request_details() {
        let status: Status = ApiError::InvalidArgument(vec![
            FieldViolation {
                field: "interactions[3].kind".into(),
                description: "is required".into(),
            },
            FieldViolation {
                field: "interactions[4].channel".into(),
                description: "is required".into(),
            },
        ])
        .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "invalid argument: interactions[3].kind is required (and 1 more)"
        );
        let details = status.get_error_details();
        let fields: Vec<&str> = details
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["interactions[3].kind", "interactions[4].channel"]);
        assert_eq!(details.error_info().unwrap().reason, "INVALID_ARGUMENT");
    }

    #[test]
    fn a_conflict_is_already_exists_with_its_reason() {
        let status: Status = ApiError::InteractionConflict {
            field: "interaction.interaction_id".into(),
            community_id: "acme".into(),
            interaction_id: "msg-1".into(),
        }
        .into();
        assert_eq!(status.code(), Code::AlreadyExists);
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "INTERACTION_ID_CONFLICT");
        assert_eq!(info.metadata["interaction_id"], "msg-1");
    }
}
