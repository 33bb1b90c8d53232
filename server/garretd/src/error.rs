//! The one error type of the server and how it becomes an HTTP answer.
//!
//! Every error leaves the server as Attic's JSON body `{code, error, message}` so the stock
//! `attic` client and our own print it the same way. Internal details (SQL, I/O paths) are
//! logged, never sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

pub type ServerResult<T> = Result<T, ServerError>;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("The URL you requested was not found.")]
    NotFound,
    /// The caller has no right at all on the cache name. `reason` says why a presented
    /// token was not accepted, so users are not left guessing.
    #[error("Unauthorized.{}", reason.as_ref().map(|r| format!(" The token was rejected: {r}.")).unwrap_or_default())]
    Unauthorized { reason: Option<String> },
    #[error("Access error: User does not have permission to complete this action.")]
    AccessError,
    #[error("The requested cache does not exist.")]
    NoSuchCache,
    #[error("The requested object does not exist.")]
    NoSuchObject,
    #[error("A cache with the same name already exists.")]
    CacheAlreadyExists,
    /// Garret addition: a pin name the cache does not have.
    #[error("The requested pin does not exist.")]
    NoSuchPin,
    /// Garret addition: deleting a path that pins hold (named in the message).
    #[error("The path is pinned by {0}; delete those pins first.")]
    PathPinned(String),
    #[error("General request error: {0}")]
    RequestError(String),
    #[error("The request body is too large: {0}")]
    PayloadTooLarge(String),
    #[error("The NAR has missing chunks; it cannot be served.")]
    IncompleteNar,
    #[error("The service is temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("An internal server error occurred.")]
    Internal(#[source] anyhow::Error),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: u16,
    error: &'a str,
    message: String,
}

impl ServerError {
    pub fn request(msg: impl Into<String>) -> Self {
        Self::RequestError(msg.into())
    }

    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Self::Internal(e.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound | Self::NoSuchCache | Self::NoSuchObject | Self::NoSuchPin => {
                StatusCode::NOT_FOUND
            }
            Self::PathPinned(_) => StatusCode::CONFLICT,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::AccessError => StatusCode::FORBIDDEN,
            Self::CacheAlreadyExists | Self::RequestError(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::IncompleteNar | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Attic's error name, kept verbatim for wire compatibility.
    pub fn name(&self) -> &'static str {
        match self {
            Self::NotFound => "NotFound",
            Self::Unauthorized { .. } => "Unauthorized",
            Self::AccessError => "AccessError",
            Self::NoSuchCache => "NoSuchCache",
            Self::NoSuchObject => "NoSuchObject",
            Self::CacheAlreadyExists => "CacheAlreadyExists",
            Self::NoSuchPin => "NoSuchPin",
            Self::PathPinned(_) => "PathPinned",
            Self::RequestError(_) => "RequestError",
            Self::PayloadTooLarge(_) => "PayloadTooLarge",
            Self::IncompleteNar => "IncompleteNar",
            Self::Unavailable(_) => "ServiceUnavailable",
            Self::Internal(_) => "InternalServerError",
        }
    }
}

impl From<crate::db::DbError> for ServerError {
    fn from(e: crate::db::DbError) -> Self {
        if e.is_unavailable() {
            Self::Unavailable("the database is unreachable".into())
        } else {
            Self::Internal(e.into())
        }
    }
}

impl From<crate::backend::StorageError> for ServerError {
    fn from(e: crate::backend::StorageError) -> Self {
        match e {
            crate::backend::StorageError::NotFound(_) => Self::IncompleteNar,
            crate::backend::StorageError::Unavailable(_) => {
                Self::Unavailable("the object storage is unreachable".into())
            }
            other => Self::Internal(other.into()),
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Internal(e) => tracing::error!(error = format!("{e:#}"), "internal error"),
            Self::Unavailable(what) => tracing::warn!(%what, "backend unavailable"),
            _ => {}
        }
        let body = ErrorBody {
            code: status.as_u16(),
            error: self.name(),
            message: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}
