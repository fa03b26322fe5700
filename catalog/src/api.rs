//! The HTTP edge's errors: one table from an error's kind to the status and code a client
//! gets, and a body of `{"error": {"code", "message"}}`. Messages of internal and dependency
//! errors are replaced by a generic one (the details go to the log, never to a client); the
//! request's id (`request_id.rs`) is in the body, to find those details.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::ErrorKind;

pub mod min_rate;
pub mod refusal;
pub mod request_id;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for `Retry-After`.
    pub retry_after: Option<u32>,
    /// More fields of the error object (`quota`, `limit`, …).
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// The status and code of each kind: the one place the HTTP edge maps them.
pub fn status_of(kind: ErrorKind) -> (StatusCode, &'static str) {
    use ErrorKind as K;
    match kind {
        K::InvalidInput => (StatusCode::BAD_REQUEST, "invalid_input"),
        K::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        K::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
        K::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        K::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
        K::CommitConflict | K::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        K::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            fields: Default::default(),
        }
    }

    /// Adds a field to the error object.
    pub fn with(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        self.fields.insert(name.to_string(), value.into());
        self
    }

    /// An error of `kind`, answered by the table above. A retry may help with a dependency
    /// that failed: those say so with `Retry-After`.
    pub fn from_kind(kind: ErrorKind, message: String) -> Self {
        let (status, code) = status_of(kind);
        let message = match kind {
            ErrorKind::Internal => {
                tracing::error!(%message, "internal error");
                "internal error".to_string()
            }
            ErrorKind::CommitConflict | ErrorKind::Unavailable => {
                tracing::warn!(%message, "request failed on a dependency");
                "a dependency is unavailable; retry later".to_string()
            }
            _ => message,
        };
        ApiError {
            status,
            code,
            message,
            retry_after: kind.retryable().then_some(1),
            fields: Default::default(),
        }
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        ApiError::from_kind(e.kind(), e.to_string())
    }
}

impl From<crate::quota::QuotaExceeded> for ApiError {
    fn from(e: crate::quota::QuotaExceeded) -> Self {
        let mut api = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", e.message)
            .with("quota", e.quota.name())
            .with("limit", e.limit);
        api.retry_after = Some(u32::try_from(e.retry_after_secs).unwrap_or(u32::MAX));
        api
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = self.fields;
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), self.message.into());
        if let Some(id) = request_id::current() {
            error.insert("request_id".into(), id.into());
        }
        let body = json!({ "error": error });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_messages_never_reach_the_client() {
        let e = ApiError::from_kind(ErrorKind::Internal, "/var/lib/secret path".into());
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.message.contains("secret"));
        let e = ApiError::from_kind(ErrorKind::Unavailable, "postgres://u:p@h".into());
        assert_eq!(
            (e.status, e.retry_after),
            (StatusCode::SERVICE_UNAVAILABLE, Some(1))
        );
        assert!(!e.message.contains("postgres"));
        let e = ApiError::from_kind(ErrorKind::NotFound, "tenant x not found".into());
        assert_eq!(
            (e.status, e.message.as_str()),
            (StatusCode::NOT_FOUND, "tenant x not found")
        );
    }
}
