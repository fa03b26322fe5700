//! Refused requests in the audit log: every reply 401 or 403 of the HTTP port becomes a
//! `request.refused` record (status, method, path, reason, request id) on the chain of whom
//! the credential verifiably belongs to (see [`Authenticator::attribute`]), else the
//! platform's.
//!
//! The records go through the batched [`AuditQueue`], so a flood of bad credentials costs one
//! transaction per batch, not one per request.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;

use super::request_id;
use crate::audit::{AuditQueue, Entry};
use crate::auth::Authenticator;

/// Bodies of refusals are read (to record their reason) up to this size.
const REASON_BYTES: usize = 16 * 1024;

/// Characters of a path or reason kept in a record.
const KEPT_CHARS: usize = 512;

/// What the middleware needs.
#[derive(Clone)]
pub struct RefusalLog {
    pub queue: AuditQueue,
    pub auth: Authenticator,
}

/// The bearer credential of a request: `Authorization: Bearer …`, or the password of Basic
/// credentials (Trino clients send the token so).
fn credential(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    match value.get(..6) {
        Some(p) if p.eq_ignore_ascii_case("basic ") => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value[6..].trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            Some(format!("Bearer {}", text.split_once(':')?.1))
        }
        _ => Some(value.to_string()),
    }
}

/// The reason a refusal's body gives: `error.message` of a JSON error, else its text.
fn reason_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.pointer("/message"))
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| text.trim().to_string())
}

/// The middleware (`axum::middleware::from_fn_with_state(log, refusal::layer)`), inside the
/// request id layer.
pub async fn layer(State(log): State<RefusalLog>, req: Request, next: Next) -> Response {
    let presented = credential(req.headers());
    let (method, path) = (req.method().to_string(), req.uri().path().to_string());
    let reply = next.run(req).await;
    let status = reply.status();
    if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
        return reply;
    }
    let (parts, body) = reply.into_parts();
    // A body larger than a refusal's is passed on unread (its reason is not recorded).
    let small = http_body::Body::size_hint(&body)
        .upper()
        .is_some_and(|n| n <= REASON_BYTES as u64);
    let (reason, body) = if small {
        match axum::body::to_bytes(body, REASON_BYTES).await {
            Ok(bytes) => (reason_of(&bytes), Body::from(bytes)),
            Err(_) => (
                "(the refusal's body could not be read)".into(),
                Body::empty(),
            ),
        }
    } else {
        ("(the refusal's body was not read)".to_string(), body)
    };
    let (tenant, actor) = log.auth.attribute(presented.as_deref()).await;
    let detail = serde_json::json!({
        "status": status.as_u16(),
        "method": method,
        "path": clip(&path),
        "reason": clip(&reason),
        "request_id": request_id::current(),
    });
    let entry = Entry::new(
        actor,
        tenant.as_deref(),
        "request.refused",
        detail.to_string(),
    );
    log.queue.record(entry);
    Response::from_parts(parts, body)
}

/// At most [`KEPT_CHARS`] characters of a client-chosen text (a path, a reason quoting it):
/// a record's size does not grow with what a client sends.
fn clip(text: &str) -> String {
    match text.char_indices().nth(KEPT_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_read_from_json_errors_and_plain_text() {
        assert_eq!(
            reason_of(br#"{"error":{"code":"unauthenticated","message":"token expired"}}"#),
            "token expired"
        );
        assert_eq!(reason_of(b"token revoked\n"), "token revoked");
    }

    #[test]
    fn basic_credentials_carry_the_token_as_password() {
        let mut h = HeaderMap::new();
        let basic = base64::engine::general_purpose::STANDARD.encode("user:tok");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {basic}").parse().unwrap(),
        );
        assert_eq!(credential(&h).as_deref(), Some("Bearer tok"));
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(credential(&h).as_deref(), Some("Bearer abc"));
    }
}
