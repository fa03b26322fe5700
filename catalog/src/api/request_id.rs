//! `X-Request-Id`: every request of the HTTP port gets one, taken from the client when it sends
//! a usable one (1 to 128 characters of letters, digits, `.`, `_`, `:`, `-`) or made here (a
//! UUIDv7), returned on the reply whatever its status, written in error bodies
//! (`error.request_id`) and carried by the log lines of its handling (a `request` span).

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The header, in lower case as HTTP/1 sends it.
pub const HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Names the tenant of the request being handled (in its span, for logs and traces).
pub fn record_tenant(tenant: &str) {
    tracing::Span::current().record("tenant", tenant);
}

/// The id of the request being handled on this task, if any.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(|id| id.clone()).ok()
}

/// The client's id when usable: never echoed (to the log or the reply) otherwise.
fn usable(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The middleware (`axum::middleware::from_fn(request_id::layer)`).
pub async fn layer(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| usable(id))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    // Traces name the span by its route (`POST /v1/events`), not by each path.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{} {route}", req.method()),
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
        tenant = tracing::field::Empty,
    );
    let mut reply = REQUEST_ID
        .scope(id.clone(), next.run(req).instrument(span))
        .await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        reply.headers_mut().insert(HEADER, value);
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_ids_are_taken_from_clients() {
        assert!(usable("abc-123_x.y:z"));
        assert!(!usable(""));
        assert!(!usable(&"a".repeat(129)));
        assert!(!usable("a b"));
        assert!(!usable("a\"b"));
        assert!(!usable("é"));
    }
}
