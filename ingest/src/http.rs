//! The HTTP events API: `POST /v1/events`, plus `/healthz` and `/readyz`.

use std::io::Read;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
pub use floe_catalog::api::ApiError;
use floe_catalog::{Authenticator, Role};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Ingest;
use crate::event::{self, BodyError, Framing, Limits, Rejection, StoredEvent};

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub ingest: Ingest,
    pub auth: Authenticator,
    /// Kafka mode (`kafka.brokers` set): accepted events go to the tenant's topic, and
    /// `floe ingest kafka` commits them; otherwise to the local write-ahead log.
    pub producer: Option<std::sync::Arc<crate::produce::Producer>>,
}

/// The ingest routes.
pub fn router(state: HttpState) -> Router {
    let slots = state.ingest.config().max_concurrent_requests;
    Router::new()
        .route(
            "/v1/events",
            post(post_events).layer(tower::limit::ConcurrencyLimitLayer::new(slots)),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        match &e {
            crate::Error::Overloaded { message } => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "overloaded",
                message: message.clone(),
                retry_after: Some(1),
            },
            crate::Error::Timeout { message } => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "not_yet_visible",
                message.clone(),
            ),
            _ => ApiError::from_kind(e.kind(), e.to_string()),
        }
    }
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    wait: Option<String>,
}

/// The reply to `POST /v1/events`.
#[derive(Debug, Serialize, Deserialize)]
pub struct EventsReply {
    /// Events stored, plus retries of events already stored.
    pub accepted: usize,
    /// Of `accepted`, how many were retries of stored events.
    pub duplicates: usize,
    pub rejected: Vec<RejectionOut>,
    /// With `?wait=visible`: the snapshot in which they are queryable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RejectionOut {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub code: String,
    pub message: String,
}

impl From<Rejection> for RejectionOut {
    fn from(r: Rejection) -> Self {
        RejectionOut {
            index: r.index,
            event_id: r.event_id,
            code: r.code.to_string(),
            message: r.message,
        }
    }
}

async fn post_events(
    State(st): State<HttpState>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = st.auth.authenticate(auth).await?;
    principal.require_role(&[Role::Ingest, Role::Admin])?;
    let tenant = principal.tenant;
    let wait_visible = match q.wait.as_deref() {
        None => false,
        Some("visible") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_input",
                format!("unknown wait={other:?}; the only value is wait=visible"),
            ));
        }
    };
    let framing = framing(&headers)?;
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("identity") | Some("") => false,
        Some("gzip") | Some("x-gzip") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                format!("Content-Encoding {other:?} is not supported (use gzip or none)"),
            ));
        }
    };
    let cfg = st.ingest.config().clone();
    let raw = axum::body::to_bytes(body, cfg.max_request_bytes)
        .await
        .map_err(|_| too_large(cfg.max_request_bytes))?;

    // Decompressing and validating are CPU work: off the I/O threads.
    let tenant_name = tenant.id().to_string();
    let limits = Limits {
        max_event_bytes: cfg.max_event_bytes,
        max_events: cfg.max_events_per_request,
    };
    let max = cfg.max_request_bytes;
    let (accepted, rejected) = tokio::task::spawn_blocking(move || {
        parse_body(&raw, gzip, framing, limits, max, &tenant_name)
    })
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    })??;

    let (stored, duplicates, snapshot_id) = match &st.producer {
        Some(producer) => {
            let produced = producer.send(&tenant, accepted).await?;
            let snapshot_id = if wait_visible {
                let timeout = Duration::from_millis(cfg.wait_visible_timeout_ms);
                Some(
                    producer
                        .wait_visible(
                            st.ingest.catalog(),
                            tenant.id(),
                            &produced.last_offsets,
                            timeout,
                        )
                        .await?,
                )
            } else {
                None
            };
            (produced.stored, produced.duplicates, snapshot_id)
        }
        None => {
            let submitted = st.ingest.submit(&tenant, accepted).await?;
            let snapshot_id = if wait_visible {
                let target = st.ingest.acked(&tenant);
                Some(st.ingest.wait_visible(&tenant, target).await?.snapshot_id)
            } else {
                None
            };
            (submitted.stored, submitted.duplicates, snapshot_id)
        }
    };
    let accepted = stored + duplicates;
    let status = if accepted == 0 && !rejected.is_empty() {
        if rejected.iter().any(|r| r.code == "tenant_mismatch") {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::BAD_REQUEST
        }
    } else {
        StatusCode::OK
    };
    let reply = EventsReply {
        accepted,
        duplicates,
        rejected: rejected.into_iter().map(Into::into).collect(),
        snapshot_id: snapshot_id.flatten(),
    };
    Ok((status, axum::Json(reply)).into_response())
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        format!("request body exceeds {max} bytes (after decompression)"),
    )
}

fn framing(headers: &HeaderMap) -> Result<Framing, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Framing::Json),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Ok(Framing::Ndjson),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type {ct:?} is not supported: use application/json or \
                 application/x-ndjson"
            ),
        )),
    }
}

fn parse_body(
    raw: &[u8],
    gzip: bool,
    framing: Framing,
    limits: Limits,
    max_bytes: usize,
    tenant: &str,
) -> Result<(Vec<StoredEvent>, Vec<Rejection>), ApiError> {
    let inflated;
    let bytes: &[u8] = if gzip {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw)
            .take(max_bytes as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_body",
                    format!("body is not valid gzip: {e}"),
                )
            })?;
        if out.len() > max_bytes {
            return Err(too_large(max_bytes));
        }
        inflated = out;
        &inflated
    } else {
        raw
    };
    let items = event::split_body(bytes, framing, limits).map_err(|e| match e {
        BodyError::Malformed(m) => ApiError::new(StatusCode::BAD_REQUEST, "malformed_body", m),
        BodyError::TooManyEvents { count, max } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!("{count} events in one request; the limit is {max}"),
        ),
    })?;
    let received_at = chrono::Utc::now().timestamp_micros();
    let mut accepted = Vec::with_capacity(items.len());
    let mut rejected = Vec::new();
    for (i, raw) in items.into_iter().enumerate() {
        match event::parse_event(i, raw, tenant, received_at, limits) {
            Ok(e) => accepted.push(e),
            Err(r) => rejected.push(r),
        }
    }
    Ok((accepted, rejected))
}

async fn readyz(State(st): State<HttpState>) -> Response {
    let down = st
        .ingest
        .catalog()
        .unavailable(Duration::from_secs(3))
        .await;
    if down.is_empty() {
        (StatusCode::OK, axum::Json(json!({"ready": true}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"ready": false, "down": down})),
        )
            .into_response()
    }
}
