//! The HTTP events API: `POST /v1/events`, plus `/healthz` and `/readyz`.
//!
//! A request is authenticated, takes one of its tenant's request slots ([`slots`]), has its
//! body read (at a minimum rate, else 408), refused unparsed when the tenant's ingest
//! allowance is short of what a body of its size holds, parsed and checked against the
//! tenant's ingest quotas (429 with `Retry-After`, nothing stored), and only then is stored.
//! Every reply to an authenticated request carries the tenant's `X-RateLimit-*` headers.

pub mod slots;

use std::io::Read;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
pub use floe_catalog::api::ApiError;
use floe_catalog::api::min_rate::too_slow;
use floe_catalog::metrics as m;
use floe_catalog::quota::{QuotaBook, RateLimit, RawBody};
use floe_catalog::{Authenticator, Role, TenantKey};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::Instrument;

use crate::Ingest;
use crate::event::{self, BodyError, Framing, Limits, Rejection, StoredEvent};
use crate::writer::DeadLetter;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub ingest: Ingest,
    pub auth: Authenticator,
    /// Kafka mode (`kafka.brokers` set): accepted events go to the tenant's topic, and
    /// `floe ingest kafka` commits them; otherwise to the local write-ahead log.
    pub producer: Option<std::sync::Arc<crate::produce::Producer>>,
    /// Tenants' quotas.
    pub quotas: QuotaBook,
    /// The request slots, shared fairly between tenants.
    pub slots: std::sync::Arc<slots::Slots>,
    /// Tenants' event type schemas, compiled.
    pub schemas: std::sync::Arc<crate::schema::Schemas>,
}

impl HttpState {
    /// The state for `ingest`, with its slots from the ingest configuration.
    pub fn new(
        ingest: Ingest,
        auth: Authenticator,
        producer: Option<std::sync::Arc<crate::produce::Producer>>,
        quotas: QuotaBook,
    ) -> HttpState {
        let cfg = ingest.config();
        let slots = slots::Slots::new(
            cfg.max_concurrent_requests,
            cfg.max_concurrent_requests_per_tenant,
            Duration::from_millis(cfg.slot_wait_ms),
        );
        let schemas = crate::schema::Schemas::new(
            ingest.catalog().clone(),
            Duration::from_millis(cfg.schema_refresh_ms),
        );
        HttpState {
            ingest,
            auth,
            producer,
            quotas,
            slots: std::sync::Arc::new(slots),
            schemas: std::sync::Arc::new(schemas),
        }
    }
}

/// The ingest routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/v1/events", post(post_events))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        match &e {
            crate::Error::Overloaded { message } => {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    message.clone(),
                );
                e.retry_after = Some(1);
                e
            }
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
    /// Of `accepted`, events whose ids are checked against the events stored before the
    /// server's last start only at their commit (its de-duplication window was still loading):
    /// any that retries a stored event is then left out, and not counted in `duplicates`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub duplicates_unchecked: usize,
    pub rejected: Vec<RejectionOut>,
    /// With `?wait=visible`: the snapshot in which they are queryable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<i64>,
    /// Of `rejected`, how many were kept in the tenant's `events_dlq` (types without a schema,
    /// for a tenant that dead-letters them): not to be sent again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dead_lettered: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RejectionOut {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub code: String,
    pub message: String,
    /// For a `schema_violation`: the JSON pointer of the failing payload value...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// ... and the schema keyword it fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Kept in the tenant's `events_dlq`: not to be sent again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dead_lettered: bool,
}

impl From<Rejection> for RejectionOut {
    fn from(r: Rejection) -> Self {
        RejectionOut {
            dead_lettered: r.dead_lettered,
            pointer: r.pointer,
            rule: r.rule,
            index: r.index as usize,
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
    floe_catalog::api::request_id::record_tenant(tenant.id().as_str());
    let scope = principal.claims.scopes;
    let (reply, rate) = match accept(&st, &tenant, &scope, q, &headers, body).await {
        Ok((reply, rate)) => (reply, rate),
        Err(e) => (e.into_response(), None),
    };
    metrics::counter!(
        m::INGEST_REQUESTS,
        "tenant" => m::tenant(tenant.id().as_str()),
        "status" => reply.status().as_str().to_string()
    )
    .increment(1);
    let rate = match rate {
        Some(r) => Some(r),
        None => st.quotas.ingest_rate(tenant.id()).await,
    };
    Ok(with_rate(reply, rate))
}

/// The `X-RateLimit-*` headers: the tenant's events per second, the events it may send now,
/// and the seconds until its bucket is full again.
fn with_rate(mut reply: Response, rate: Option<RateLimit>) -> Response {
    if let Some(r) = rate {
        let h = reply.headers_mut();
        h.insert("x-ratelimit-limit", r.limit.into());
        h.insert("x-ratelimit-remaining", r.remaining.into());
        h.insert("x-ratelimit-reset", r.reset_secs.into());
    }
    reply
}

/// Stores the events of an authenticated request; `scope`: the event types its credential may
/// send (empty: any).
async fn accept(
    st: &HttpState,
    tenant: &TenantKey,
    scope: &[String],
    q: EventsQuery,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Response, Option<RateLimit>), ApiError> {
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
    let framing = framing(headers)?;
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
    let _slot = st.slots.take(tenant).await.map_err(|no| {
        let message = match no {
            slots::NoSlot::Tenant { limit } => format!(
                "tenant {} has {limit} ingest requests in flight \
                 (ingest.max_concurrent_requests_per_tenant); retry",
                tenant.id()
            ),
            slots::NoSlot::All { limit } => format!(
                "all {limit} ingest request slots are taken (ingest.max_concurrent_requests); \
                 retry"
            ),
        };
        ApiError::from(crate::Error::Overloaded { message })
    })?;
    let raw = axum::body::to_bytes(body, cfg.max_request_bytes)
        .await
        .map_err(|e| match too_slow(&e) {
            Some(slow) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_too_slow",
                slow.to_string(),
            ),
            None => too_large(cfg.max_request_bytes),
        })?;
    // Read to its end (the connection stays usable) but not parsed when the tenant's
    // allowance is short of what a body of this size holds: a flood past the quota costs
    // little CPU that others could use.
    metrics::histogram!(m::INGEST_REQUEST_BYTES).record(raw.len() as f64);
    let raw_body = RawBody {
        len: raw.len() as u64,
        gzip,
    };
    st.quotas
        .refuse_ingest_early(tenant.id(), raw_body)
        .await
        .inspect_err(|e| e.count(tenant.id()))?;

    // Decompressing and validating are CPU work: off the I/O threads.
    let tenant_name = tenant.id().to_string();
    let limits = Limits {
        max_event_bytes: cfg.max_event_bytes,
        max_events: cfg.max_events_per_request,
    };
    let max = cfg.max_request_bytes;
    let schemas = st.schemas.of(tenant.id()).await?;
    let scope = scope.to_vec();
    let Parsed {
        accepted,
        rejected,
        dead,
    } = tokio::task::spawn_blocking(move || {
        let body = Framed {
            gzip,
            framing,
            max_bytes: max,
        };
        parse_body(&raw, body, limits, &tenant_name, &schemas, &scope)
    })
    .instrument(tracing::info_span!("parse"))
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    })??;

    // Dead letters count against the ingest quota as events do.
    let event_bytes: usize = accepted.iter().map(StoredEvent::size).sum::<usize>()
        + dead.iter().map(|d| d.payload.len()).sum::<usize>();
    let events = accepted.len() + dead.len();
    let rate = if events == 0 {
        None
    } else {
        st.quotas
            .admit_ingest(tenant.id(), events as u64, event_bytes as u64, raw_body)
            .await
            .inspect_err(|e| e.count(tenant.id()))?
    };
    // Kept aside before any event is stored: if this fails, the request fails whole and a
    // retry sends everything again (a dead letter kept twice then, never an event).
    if !dead.is_empty() {
        crate::writer::store_dead_letters(
            st.ingest.catalog(),
            tenant,
            &dead,
            cfg.parquet_compression(),
        )
        .await?;
    }

    let (stored, duplicates, unchecked, snapshot_id) = match &st.producer {
        Some(producer) => {
            let produced = producer.send(tenant, accepted).await?;
            // Stored whatever the wait below answers.
            count_events(
                &st.quotas,
                tenant,
                produced.stored,
                produced.duplicates,
                &rejected,
            );
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
            (produced.stored, produced.duplicates, 0, snapshot_id)
        }
        None => {
            let submitted = st.ingest.submit(tenant, accepted).await?;
            count_events(
                &st.quotas,
                tenant,
                submitted.stored,
                submitted.duplicates,
                &rejected,
            );
            let snapshot_id = if wait_visible {
                let target = st.ingest.acked(tenant);
                Some(st.ingest.wait_visible(tenant, target).await?.snapshot_id)
            } else {
                None
            };
            (
                submitted.stored,
                submitted.duplicates,
                submitted.unchecked,
                snapshot_id,
            )
        }
    };
    let accepted = stored + duplicates;
    let refused = rejected.iter().filter(|r| !r.dead_lettered).count();
    let status = if accepted == 0 && refused > 0 {
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
        duplicates_unchecked: unchecked,
        dead_lettered: rejected.len() - refused,
        rejected: rejected.into_iter().map(Into::into).collect(),
        snapshot_id: snapshot_id.flatten(),
    };
    Ok(((status, axum::Json(reply)).into_response(), rate))
}

/// Counts a stored request's events in the metrics (by outcome, and the rejected by reason)
/// and in the tally the `rejections` alert reads.
fn count_events(
    quotas: &QuotaBook,
    tenant: &TenantKey,
    stored: usize,
    duplicates: usize,
    rejected: &[Rejection],
) {
    quotas.tally(
        tenant.id(),
        (stored + duplicates) as u64,
        rejected.len() as u64,
    );
    let label = m::tenant(tenant.id().as_str());
    let dead = rejected.iter().filter(|r| r.dead_lettered).count();
    for (outcome, n) in [
        ("accepted", stored),
        ("duplicate", duplicates),
        ("rejected", rejected.len() - dead),
        ("dead_lettered", dead),
    ] {
        if n > 0 {
            metrics::counter!(m::INGEST_EVENTS, "tenant" => label.clone(), "outcome" => outcome)
                .increment(n as u64);
        }
    }
    for r in rejected.iter().filter(|r| !r.dead_lettered) {
        metrics::counter!(m::INGEST_REJECTIONS, "tenant" => label.clone(), "reason" => r.code)
            .increment(1);
    }
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

/// A request's events as parsed: those to store, those refused (with why), and of the refused
/// those the tenant keeps in its dead-letter table.
struct Parsed {
    accepted: Vec<StoredEvent>,
    rejected: Vec<Rejection>,
    dead: Vec<DeadLetter>,
}

/// How a request body is framed and how large it may grow.
#[derive(Debug, Clone, Copy)]
struct Framed {
    gzip: bool,
    framing: Framing,
    max_bytes: usize,
}

fn parse_body(
    raw: &[u8],
    Framed {
        gzip,
        framing,
        max_bytes,
    }: Framed,
    limits: Limits,
    tenant: &str,
    schemas: &crate::schema::TenantSchemas,
    scope: &[String],
) -> Result<Parsed, ApiError> {
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
    let (mut rejected, mut dead) = (Vec::new(), Vec::new());
    for (i, raw) in items.into_iter().enumerate() {
        match event::parse_event(i, raw, tenant, received_at, limits, schemas) {
            // A key scoped to some event types sends only those.
            Ok(e) if !scope.is_empty() && !scope.contains(&e.kind) => {
                rejected.push(Rejection::plain(
                    i as u32,
                    e.client_id.then(|| e.event_id.clone()),
                    "type_not_allowed",
                    format!(
                        "this credential may send only events of type {}; not {}",
                        scope.join(", "),
                        e.kind
                    ),
                ))
            }
            Ok(e) => accepted.push(e),
            Err(r) => {
                if r.dead_lettered {
                    dead.push(DeadLetter {
                        partition: -1,
                        offset: -1,
                        reason: r.code.to_string(),
                        detail: r.message.clone(),
                        key: r.event_id.clone(),
                        payload: raw.to_string(),
                        at_us: received_at,
                    });
                }
                rejected.push(r);
            }
        }
    }
    Ok(Parsed {
        accepted,
        rejected,
        dead,
    })
}

async fn readyz(State(st): State<HttpState>) -> Response {
    let down = st.ingest.catalog().unavailable().await;
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
