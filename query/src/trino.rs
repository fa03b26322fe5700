//! The Trino client protocol over Floe's tenant-scoped sessions.
//!
//! `POST /v1/statement` answers as Trino does: the query's id, `infoUri`, and `nextUri`, state
//! `QUEUED`, no rows. Clients follow `nextUri` (`GET /v1/statement/executing/{id}/{token}`)
//! until it is absent, and may `DELETE` it (or `/v1/query/{id}`) to cancel. Results stream:
//! each page pulls batches from the running plan until it holds `query.page_rows` rows or about
//! 1 MiB, so a large result is never held whole. Every outcome, refusals included, comes on a
//! page, never in the first reply: some clients read nothing else. The tenant comes from the
//! verified token only (Bearer, or Basic whose password is the token).
//!
//! The parts: [`session`] tells session statements from queries, [`query`] runs a query and
//! pages it, [`error`] names Trino's error codes, [`values`] renders what the protocol sends.

pub mod error;
mod history;
mod query;
mod redact;
mod session;
mod values;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use floe_catalog::quota::{QuerySlot, Quota, QuotaBook};
use floe_catalog::{Authenticator, ErrorKind, Principal, Role};
use serde_json::json;

pub use error::error_text;
pub use query::SQL_STACK_BYTES;
pub use values::json_rows;

use error::{
    CATALOG_NOT_FOUND, GENERIC_INTERNAL_ERROR, PERMISSION_DENIED, QUERY_QUEUE_FULL,
    QUERY_TEXT_TOO_LARGE, QUOTA_EXCEEDED, QueryError, SCHEMA_NOT_FOUND, SYNTAX_ERROR,
};
use history::{Described, History};
use query::{Page, Plan, Run};
use session::Session;

use crate::{Engine, Scope};

/// The queries that have not ended, by id.
pub(crate) type Queries = Mutex<HashMap<String, Arc<tokio::sync::Mutex<Run>>>>;

/// State of the Trino endpoints.
#[derive(Clone)]
pub struct TrinoState {
    engine: Engine,
    /// Worker threads of each query's runtime (see [`query`]).
    threads: usize,
    auth: Authenticator,
    queries: Arc<Queries>,
    /// Ended queries' descriptions.
    history: Arc<History>,
    /// Tenants' quotas: concurrent queries, queries per minute, bytes scanned per day.
    quotas: QuotaBook,
    started: Instant,
}

impl TrinoState {
    pub fn new(engine: Engine, auth: Authenticator, quotas: QuotaBook) -> Self {
        let threads = match engine.config().target_partitions {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => n,
        };
        let history = Arc::new(History::new(engine.config().history_bytes));
        TrinoState {
            engine,
            threads,
            auth,
            queries: Default::default(),
            history,
            quotas,
            started: Instant::now(),
        }
    }

    /// Records every query's end (outcome, rows, bytes scanned, duration) in the audit log.
    pub fn auditing(mut self, queue: floe_catalog::audit::AuditQueue) -> Self {
        self.history = Arc::new(History::new(self.engine.config().history_bytes).auditing(queue));
        self
    }
}

/// The routes: `/v1/statement`, `/v1/statement/executing/{id}/{token}`, `/v1/query/{id}`,
/// `/v1/info`. Queries whose clients stopped fetching are reaped in the background (when the
/// router is made on a runtime) and on every submission.
pub fn router(state: TrinoState) -> Router {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let queries = Arc::downgrade(&state.queries);
        let idle = Duration::from_secs(state.engine.config().abandoned_after_secs);
        let every = (idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(5));
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                // Gone with the server: stop.
                let Some(queries) = queries.upgrade() else {
                    return;
                };
                query::reap(&queries, idle);
            }
        });
    }
    Router::new()
        .route("/v1/statement", post(submit))
        .route(
            "/v1/statement/executing/{id}/{token}",
            get(next).delete(cancel),
        )
        .route("/v1/query/{id}", get(query_info).delete(cancel_query))
        .route("/v1/info", get(info))
        .with_state(state)
}

/// The page that shows a query (the dashboard's, as Trino's `infoUri` names its web UI's):
/// it reads `GET /v1/query/{id}` with the signed-in token.
pub(crate) fn info_uri(base: &str, id: &str) -> String {
    format!("{base}/ui/query.html?{id}")
}

/// Where a query's description is, as JSON.
fn described_uri(base: &str, id: &str) -> String {
    format!("{base}/v1/query/{id}")
}

fn base_uri(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("http");
    format!("{proto}://{host}")
}

fn unauthorized(message: &str) -> Response {
    let mut r = (StatusCode::UNAUTHORIZED, message.to_string()).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"floe\", Basic realm=\"floe\""),
    );
    r
}

async fn authenticate(st: &TrinoState, headers: &HeaderMap) -> Result<Principal, Response> {
    let raw = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // Basic: the password is a token (for tools that only speak Basic).
    let bearer = match raw {
        Some(v) if v.len() > 6 && v[..6].eq_ignore_ascii_case("basic ") => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(v[6..].trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.split_once(':').map(|(_, p)| p.to_string()));
            match decoded {
                Some(token) => Some(format!("Bearer {token}")),
                None => return Err(unauthorized("malformed Basic credentials")),
            }
        }
        Some(v) => Some(v.to_string()),
        None => None,
    };
    match st.auth.authenticate(bearer.as_deref()).await {
        Ok(c) => Ok(c),
        Err(e) if e.kind() == ErrorKind::Unauthenticated => Err(unauthorized(&e.to_string())),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            Err((StatusCode::FORBIDDEN, e.to_string()).into_response())
        }
        Err(e) => Err((StatusCode::SERVICE_UNAVAILABLE, e.kind().to_string()).into_response()),
    }
}

fn trino_header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(format!("x-trino-{name}"))
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn respond(page: Page) -> Response {
    let mut r = axum::Json(page.body).into_response();
    for (k, v) in page.headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

async fn submit(State(st): State<TrinoState>, headers: HeaderMap, body: Bytes) -> Response {
    let principal = match authenticate(&st, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    floe_catalog::api::request_id::record_tenant(principal.tenant.id().as_str());
    let base = base_uri(&headers);
    let id = format!(
        "{}_{}",
        chrono::Utc::now().format("%Y%m%d_%H%M%S"),
        uuid::Uuid::now_v7().simple()
    );
    let cfg = st.engine.config().clone();
    let deadline = Instant::now() + Duration::from_secs(cfg.timeout_secs);
    let mut run = match admit(&st, &principal, &headers, &body).await {
        Ok(Admitted::Answer(answer)) => Run::answered(principal.tenant.clone(), answer, deadline),
        Ok(Admitted::Run { sql, scope, slot }) => match audit(&st, &principal, &id, &sql).await {
            // An audit write that fails fails the query it records.
            Err(e) => Run::failed(principal.tenant.clone(), e, deadline),
            Ok(()) => {
                let plan = Plan {
                    engine: st.engine.clone(),
                    tenant: principal.tenant.id().clone(),
                    scope,
                    time_zone: trino_header(&headers, "time-zone")
                        .unwrap_or("UTC")
                        .to_string(),
                    sql,
                    threads: st.threads,
                    span: tracing::info_span!(
                        "query",
                        tenant = %principal.tenant.id(),
                        query_id = %id
                    ),
                };
                tracing::info!(tenant = %principal.tenant, query = %id, "query started");
                query::start(principal.tenant.clone(), plan, slot, deadline)
            }
        },
        Err(e) => Run::failed(principal.tenant.clone(), e, deadline),
    };
    run.describe(
        Described::submitted(&id, principal.tenant.clone(), &body)
            .by(principal.claims.actor(), principal.claims.role.as_str()),
        st.history.clone(),
    );
    if let Ok(mut q) = st.queries.lock() {
        q.insert(id.clone(), Arc::new(tokio::sync::Mutex::new(run)));
    }
    axum::Json(query::queued(&id, &base)).into_response()
}

/// What a submission turns into.
enum Admitted {
    Answer(session::Answer),
    Run {
        sql: String,
        scope: Scope,
        slot: QuerySlot,
    },
}

/// Checks a submission against the caller's role, the session headers and the limits, and
/// tells session statements from queries.
async fn admit(
    st: &TrinoState,
    principal: &Principal,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Admitted, QueryError> {
    let scope = match principal.claims.role {
        Role::Admin => Scope::Everything,
        Role::Analyst => Scope::AllTables,
        Role::Viewer => Scope::ProjectionsOnly,
        Role::Ingest | Role::Operator => {
            return Err(QueryError::new(
                PERMISSION_DENIED,
                format!("role {} may not query", principal.claims.role.as_str()),
            ));
        }
    };
    let tenant = principal.tenant.id();
    let cfg = st.engine.config();
    if body.len() > cfg.max_sql_bytes {
        return Err(QueryError::new(
            QUERY_TEXT_TOO_LARGE,
            format!(
                "SQL text is {} bytes; the limit is {}",
                body.len(),
                cfg.max_sql_bytes
            ),
        ));
    }
    let sql = std::str::from_utf8(body)
        .map_err(|_| QueryError::new(SYNTAX_ERROR, "SQL text is not UTF-8"))?;
    let sql = sql.trim().trim_end_matches(';').trim();
    // The session's catalog and schema may only name the caller's own.
    if let Some(c) = trino_header(headers, "catalog")
        && c != floe_catalog::CATALOG_NAME
    {
        return Err(QueryError::new(
            CATALOG_NOT_FOUND,
            format!("Catalog '{c}' does not exist"),
        ));
    }
    if let Some(s) = trino_header(headers, "schema")
        && s != tenant.as_str()
    {
        return Err(QueryError::new(
            SCHEMA_NOT_FOUND,
            format!("Schema '{s}' does not exist"),
        ));
    }
    let sql = match session::classify(sql, tenant, headers)? {
        Session::Answer(answer) => return Ok(Admitted::Answer(answer)),
        Session::Run(sql) => sql,
        Session::Plain => sql.to_string(),
    };
    let slot = st.quotas.start_query(tenant).await.map_err(|e| {
        e.count(tenant);
        let code = match e.quota {
            Quota::ConcurrentQueries => QUERY_QUEUE_FULL,
            _ => QUOTA_EXCEEDED,
        };
        QueryError::new(code, e.message)
    })?;
    Ok(Admitted::Run { sql, scope, slot })
}

/// Every query is audited before it runs: who (token id and role), which query, its text
/// without its literals and comments (capped; `redact`), so that no value a user's erasure
/// must remove ever enters the chained log; its end is audited too (`History`). A query whose
/// record cannot be written does not run.
async fn audit(
    st: &TrinoState,
    principal: &Principal,
    id: &str,
    sql: &str,
) -> Result<(), QueryError> {
    let detail = json!({
        "query_id": id,
        "role": principal.claims.role.as_str(),
        "sql": redact::redact_literals(sql, 4096),
    });
    // Committed before the query runs, without waiting for the disk: a query does not wait
    // for a flush of its own, behind every other writer's (`audit_unflushed`).
    st.engine
        .catalog()
        .audit_unflushed(
            &principal.claims.actor(),
            Some(principal.tenant.id().as_str()),
            "query",
            &detail.to_string(),
        )
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "could not write the query audit entry: the query is refused");
            QueryError::new(
                GENERIC_INTERNAL_ERROR,
                format!(
                    "the audit log could not be written, so the query was not run \
                     ({}); retry",
                    e.kind()
                ),
            )
        })
}

async fn lookup(
    st: &TrinoState,
    headers: &HeaderMap,
    id: &str,
) -> Result<Arc<tokio::sync::Mutex<Run>>, Response> {
    let principal = authenticate(st, headers).await?;
    let run = st
        .queries
        .lock()
        .ok()
        .and_then(|q| q.get(id).cloned())
        .ok_or_else(|| (StatusCode::NOT_FOUND, "no such query").into_response())?;
    // Another tenant's query id is as unknown as a made-up one.
    if run.lock().await.tenant != principal.tenant {
        return Err((StatusCode::NOT_FOUND, "no such query").into_response());
    }
    Ok(run)
}

async fn next(
    State(st): State<TrinoState>,
    headers: HeaderMap,
    Path((id, token)): Path<(String, u64)>,
) -> Response {
    let run = match lookup(&st, &headers, &id).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let base = base_uri(&headers);
    let mut guard = run.lock().await;
    if token + 1 == guard.token
        && let Some(p) = &guard.last_page
    {
        return respond(p.clone());
    }
    if token != guard.token {
        return (StatusCode::GONE, "page token is not current").into_response();
    }
    respond(query::page(&st, &mut guard, &id, &base).await)
}

async fn cancel(
    State(st): State<TrinoState>,
    headers: HeaderMap,
    Path((id, _token)): Path<(String, u64)>,
) -> Response {
    cancel_query(State(st), headers, Path(id)).await
}

/// `DELETE /v1/query/{id}`: drops the query; its work stops at its next yield.
async fn cancel_query(
    State(st): State<TrinoState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = lookup(&st, &headers, &id).await {
        return r;
    }
    if let Ok(mut q) = st.queries.lock() {
        q.remove(&id);
    }
    tracing::info!(query = %id, "query cancelled by the client");
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /v1/query/{id}`: what is known of a query that has not ended.
async fn query_info(
    State(st): State<TrinoState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let principal = match authenticate(&st, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    // The roles that query (an ingest credential has no query to look at).
    if let Err(e) = principal.require_role(&[Role::Viewer, Role::Analyst, Role::Admin]) {
        return (StatusCode::FORBIDDEN, e.to_string()).into_response();
    }
    let live = st.queries.lock().ok().and_then(|q| q.get(&id).cloned());
    let described = match live {
        Some(run) => {
            let run = run.lock().await;
            (run.tenant == principal.tenant)
                .then(|| run.description())
                .flatten()
        }
        // Ended (or never run here): its description while it is kept.
        None => st.history.find(&id, &principal.tenant),
    };
    // Another tenant's query id is as unknown as a made-up one.
    match described {
        Some(d) => axum::Json(d.to_json(described_uri(&base_uri(&headers), &id))).into_response(),
        None => (StatusCode::NOT_FOUND, "no such query").into_response(),
    }
}

async fn info(State(st): State<TrinoState>) -> Response {
    axum::Json(json!({
        "nodeVersion": {"version": concat!("floe-", env!("CARGO_PKG_VERSION"))},
        "environment": "floe",
        "coordinator": true,
        "starting": false,
        "uptime": format!("{:.2}s", st.started.elapsed().as_secs_f64()),
    }))
    .into_response()
}
