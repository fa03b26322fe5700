//! The Trino client protocol over Floe's tenant-scoped sessions.
//!
//! `POST /v1/statement` plans the SQL and answers with the first page; clients follow `nextUri`
//! (`GET /v1/statement/executing/{id}/{token}`) until it is absent, and may `DELETE` it to
//! cancel. Results stream: each page pulls batches from the running plan until it holds
//! `query.page_rows` rows or about 1 MiB, so a large result is never held whole. The tenant comes
//! from the verified token only (Bearer, or Basic whose password is the token).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Field, Int8Type, Int16Type, Int32Type, Int64Type, SchemaRef, TimeUnit,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use floe_catalog::{Authenticator, ErrorKind, Principal, Role, TenantId, TenantKey};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::{Engine, Error, Scope};

const PAGE_BYTES: usize = 1 << 20;

/// Stack of query threads: parsing and planning walk expression trees recursively, to the
/// depth `query.max_sql_depth` and `query.max_sql_operators` allow.
pub const SQL_STACK_BYTES: usize = 16 << 20;

/// State of the Trino endpoints.
#[derive(Clone)]
pub struct TrinoState {
    engine: Engine,
    /// Worker threads of each query's runtime (see `submit`).
    threads: usize,
    auth: Authenticator,
    queries: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<Run>>>>>,
    /// Per tenant incarnation, the slots of `query.max_concurrent_per_tenant`.
    slots: Arc<Mutex<HashMap<TenantKey, Arc<tokio::sync::Semaphore>>>>,
    started: Instant,
}

impl TrinoState {
    pub fn new(engine: Engine, auth: Authenticator) -> Self {
        let threads = match engine.config().target_partitions {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => n,
        };
        TrinoState {
            engine,
            threads,
            auth,
            queries: Default::default(),
            slots: Default::default(),
            started: Instant::now(),
        }
    }
}

/// The routes: `/v1/statement`, `/v1/statement/executing/{id}/{token}`, `/v1/info`.
pub fn router(state: TrinoState) -> Router {
    Router::new()
        .route("/v1/statement", post(submit))
        .route(
            "/v1/statement/executing/{id}/{token}",
            get(next).delete(cancel),
        )
        .route("/v1/info", get(info))
        .with_state(state)
}

/// A running query.
struct Run {
    /// The incarnation that ran it: a tenant created again under the id cannot read it.
    tenant: TenantKey,
    /// Batches from the thread that runs the plan; `None` once finished or failed. Dropping it
    /// (finished, cancelled, reaped, failed) stops that thread's work.
    batches: Option<tokio::sync::mpsc::Receiver<Result<Produced, Error>>>,
    columns: Value,
    /// The token the next GET must carry; the previous page is kept for a retried GET.
    token: u64,
    last_page: Option<Value>,
    rows: u64,
    deadline: Instant,
    touched: Instant,
    /// Fires when the query's thread has given its tenant slot back.
    released: Option<tokio::sync::oneshot::Receiver<()>>,
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

/// A Trino-style failure, carried in a 200 `QueryResults` as clients expect.
#[derive(Debug)]
struct QueryError {
    name: &'static str,
    code: i64,
    kind: &'static str,
    message: String,
}

impl QueryError {
    fn user(name: &'static str, code: i64, message: impl Into<String>) -> Self {
        QueryError {
            name,
            code,
            kind: "USER_ERROR",
            message: message.into(),
        }
    }

    fn insufficient(name: &'static str, code: i64, message: impl Into<String>) -> Self {
        QueryError {
            name,
            code,
            kind: "INSUFFICIENT_RESOURCES",
            message: message.into(),
        }
    }

    fn from_query(e: &Error) -> Self {
        let text = e.to_string();
        match e {
            Error::Denied(m) => return QueryError::user("PERMISSION_DENIED", 4, m.clone()),
            Error::NotSupported(m) => return QueryError::user("NOT_SUPPORTED", 13, m.clone()),
            Error::Syntax(m) => return QueryError::user("SYNTAX_ERROR", 1, m.clone()),
            Error::InvalidArgument(m) => {
                return QueryError::user("GENERIC_USER_ERROR", 0, m.clone());
            }
            Error::TableNotFound(_) => return QueryError::user("TABLE_NOT_FOUND", 46, text),
            Error::DataFusion(df) => {
                use arrow::error::ArrowError as A;
                use datafusion::error::DataFusionError as D;
                match df.find_root() {
                    D::ResourcesExhausted(_) => {
                        return QueryError::insufficient("EXCEEDED_MEMORY_LIMIT", 131079, text);
                    }
                    // Raised by functions on bad input (e.g. an invalid JSON path or unit).
                    D::Execution(m) => {
                        return QueryError::user("INVALID_FUNCTION_ARGUMENT", 7, m.clone());
                    }
                    D::ArrowError(a, _) => match a.as_ref() {
                        A::DivideByZero => {
                            return QueryError::user("DIVISION_BY_ZERO", 8, a.to_string());
                        }
                        A::CastError(_) | A::ParseError(_) => {
                            return QueryError::user("INVALID_CAST_ARGUMENT", 9, a.to_string());
                        }
                        A::ComputeError(_) | A::InvalidArgumentError(_) => {
                            return QueryError::user("INVALID_FUNCTION_ARGUMENT", 7, a.to_string());
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
            _ => {}
        }
        match e.kind() {
            ErrorKind::InvalidInput => QueryError::user("SYNTAX_ERROR", 1, text),
            ErrorKind::NotFound => QueryError::user("TABLE_NOT_FOUND", 46, text),
            _ => {
                tracing::warn!(error = %e, "query failed");
                QueryError {
                    name: "GENERIC_INTERNAL_ERROR",
                    code: 65536,
                    kind: "INTERNAL_ERROR",
                    message: "internal error".into(),
                }
            }
        }
    }

    fn into_results(self, id: &str, base: &str) -> Value {
        json!({
            "id": id,
            "infoUri": format!("{base}/ui/query.html?{id}"),
            "stats": stats("FAILED", 0),
            "error": {
                "message": self.message,
                "errorCode": self.code,
                "errorName": self.name,
                "errorType": self.kind,
                "failureInfo": {"type": self.name, "message": self.message, "suppressed": [], "stack": []},
            },
            "warnings": [],
        })
    }
}

/// How a failed query is reported to Trino clients: `ERROR_NAME: message`.
pub fn error_text(e: &Error) -> String {
    let q = QueryError::from_query(e);
    format!("{}: {}", q.name, q.message)
}

fn stats(state: &str, rows: u64) -> Value {
    json!({
        "state": state, "queued": false, "scheduled": true, "nodes": 1,
        "totalSplits": 0, "queuedSplits": 0, "runningSplits": 0, "completedSplits": 0,
        "cpuTimeMillis": 0, "wallTimeMillis": 0, "queuedTimeMillis": 0, "elapsedTimeMillis": 0,
        "processedRows": rows, "processedBytes": 0, "peakMemoryBytes": 0, "spilledBytes": 0,
    })
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

async fn submit(State(st): State<TrinoState>, headers: HeaderMap, body: Bytes) -> Response {
    let principal = match authenticate(&st, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let claims = &principal.claims;
    let base = base_uri(&headers);
    let id = format!(
        "{}_{}",
        chrono::Utc::now().format("%Y%m%d_%H%M%S"),
        uuid::Uuid::now_v7().simple()
    );
    let fail = |e: QueryError| axum::Json(e.into_results(&id, &base)).into_response();
    let scope = match claims.role {
        Role::Analyst | Role::Admin => Scope::AllTables,
        Role::Viewer => Scope::ProjectionsOnly,
        Role::Ingest => {
            return fail(QueryError::user(
                "PERMISSION_DENIED",
                4,
                "role ingest may not query",
            ));
        }
    };
    let tenant = principal.tenant.id().clone();
    let cfg = st.engine.config().clone();
    if body.len() > cfg.max_sql_bytes {
        return fail(QueryError::user(
            "QUERY_TEXT_TOO_LARGE",
            131080,
            format!(
                "SQL text is {} bytes; the limit is {}",
                body.len(),
                cfg.max_sql_bytes
            ),
        ));
    }
    let Ok(sql) = std::str::from_utf8(&body) else {
        return fail(QueryError::user("SYNTAX_ERROR", 1, "SQL text is not UTF-8"));
    };
    let sql = sql.trim().trim_end_matches(';').trim();
    // The session's catalog and schema may only name the caller's own.
    if let Some(c) = trino_header(&headers, "catalog")
        && c != floe_catalog::CATALOG_NAME
    {
        return fail(QueryError::user(
            "CATALOG_NOT_FOUND",
            44,
            format!("Catalog '{c}' does not exist"),
        ));
    }
    if let Some(s) = trino_header(&headers, "schema")
        && s != tenant.as_str()
    {
        return fail(QueryError::user(
            "SCHEMA_NOT_FOUND",
            45,
            format!("Schema '{s}' does not exist"),
        ));
    }
    let prepared = match prepared_statement(sql, &headers) {
        Ok(Prepared::Answer(headers)) => {
            return finished(&id, &base, headers, Value::Null, Value::Null);
        }
        Ok(Prepared::Run(sql)) => Some(sql),
        Ok(Prepared::Plain) => None,
        Err(e) => return fail(e),
    };
    let sql = prepared.as_deref().unwrap_or(sql);
    if let Some(resp) = session_statement(sql, &tenant, &id, &base) {
        return resp;
    }
    let rewritten = trino_rewrite(sql, &tenant);
    let sql = rewritten.as_deref().unwrap_or(sql);
    reap(&st, Duration::from_secs(cfg.abandoned_after_secs));
    let slot = match take_slot(&st, &principal.tenant, cfg.max_concurrent_per_tenant) {
        Some(s) => s,
        None => {
            return fail(QueryError::insufficient(
                "QUERY_QUEUE_FULL",
                131074,
                format!(
                    "Too many queries running for tenant {tenant} (limit {})",
                    cfg.max_concurrent_per_tenant
                ),
            ));
        }
    };
    let time_zone = trino_header(&headers, "time-zone")
        .unwrap_or("UTC")
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(cfg.timeout_secs);
    // Each query plans and runs on threads of its own (a small runtime, one worker per
    // partition), away from the threads that serve HTTP and from other queries. A plan step
    // that does not yield for seconds (a big nested-loop join) then delays nobody else, and the
    // OS shares the cores. Batches come back through a bounded channel: a client that reads
    // slowly holds at most two batches in memory. When the client goes away (or a limit
    // stops the query), the channel closes and the work stops at its next yield.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Produced, Error>>(2);
    let engine = st.engine.clone();
    let plan_tenant = tenant.clone();
    let plan_sql = sql.to_string();
    let watch = tx.clone();
    let work = async move {
        let started = async {
            let ctx = engine
                .session_scoped(&plan_tenant, scope, &time_zone)
                .await?;
            let df = engine.plan(&ctx, &plan_tenant, &plan_sql).await?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let stream = df.execute_stream().await?;
            Ok::<_, Error>((schema, stream))
        };
        let mut stream = match started.await {
            Ok((schema, stream)) => {
                if tx.send(Ok(Produced::Schema(schema))).await.is_err() {
                    return;
                }
                stream
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        while let Some(next) = stream.next().await {
            let item = next.map(Produced::Batch).map_err(Error::DataFusion);
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    };
    let (released_tx, released) = tokio::sync::oneshot::channel::<()>();
    let threads = st.threads;
    let spawned = std::thread::Builder::new()
        .name("floe-query".into())
        .stack_size(SQL_STACK_BYTES)
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("floe-query-worker")
                .thread_stack_size(SQL_STACK_BYTES)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::warn!(error = %e, "could not start a query runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                tokio::select! {
                    _ = watch.closed() => {}
                    _ = work => {}
                }
            });
            // Waits for the workers' current steps to end; only then is the slot given back,
            // so that the tenant's limit counts work that is really still running.
            drop(runtime);
            drop(slot);
            let _ = released_tx.send(());
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start a query thread");
        return fail(QueryError::insufficient(
            "SERVER_RESOURCES_EXHAUSTED",
            131076,
            "could not start a query thread",
        ));
    }
    let first = tokio::time::timeout_at(deadline.into(), rx.recv()).await;
    let schema = match first {
        Ok(Some(Ok(Produced::Schema(schema)))) => schema,
        Ok(Some(Err(e))) => {
            drop(rx);
            slot_back(Some(released), deadline).await;
            return fail(QueryError::from_query(&e));
        }
        Ok(Some(Ok(Produced::Batch(_))) | None) => {
            drop(rx);
            slot_back(Some(released), deadline).await;
            return fail(QueryError::from_query(&Error::NotSupported(
                "the query ended before producing a schema".into(),
            )));
        }
        Err(_) => return fail(time_limit(cfg.timeout_secs)),
    };
    let columns = Value::Array(schema.fields().iter().map(|f| column(f)).collect());
    let run = Arc::new(tokio::sync::Mutex::new(Run {
        tenant: principal.tenant.clone(),
        batches: Some(rx),
        columns,
        token: 0,
        last_page: None,
        rows: 0,
        deadline,
        touched: Instant::now(),
        released: Some(released),
    }));
    if let Ok(mut q) = st.queries.lock() {
        q.insert(id.clone(), run.clone());
    }
    tracing::info!(tenant = %tenant, query = %id, "query started");
    // Every query is audited: who (token id and role), which query, its text (capped).
    let detail = json!({
        "query_id": id,
        "role": claims.role.as_str(),
        "sql": sql.chars().take(4096).collect::<String>(),
    });
    if let Err(e) = st
        .engine
        .catalog()
        .audit(
            &format!("token:{}", claims.jti),
            Some(tenant.as_str()),
            "query",
            &detail.to_string(),
        )
        .await
    {
        tracing::warn!(error = %e, "could not write the query audit entry");
    }
    let mut guard = run.lock().await;
    axum::Json(page(&st, &mut guard, &id, &base).await).into_response()
}

fn time_limit(secs: u64) -> QueryError {
    QueryError::insufficient(
        "EXCEEDED_TIME_LIMIT",
        131075,
        format!("Query exceeded the maximum execution time of {secs}s"),
    )
}

/// A finished `QueryResults` answered without the engine, with session headers for the client.
fn finished(
    id: &str,
    base: &str,
    headers: Vec<(&'static str, String)>,
    columns: Value,
    data: Value,
) -> Response {
    let mut body = json!({
        "id": id, "infoUri": format!("{base}/ui/query.html?{id}"),
        "stats": stats("FINISHED", 0), "warnings": [],
    });
    if !columns.is_null() {
        body["columns"] = columns;
        body["data"] = data;
    }
    let mut r = axum::Json(body).into_response();
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

/// `USE`, `SET SESSION`, `RESET SESSION`, `SHOW CATALOGS`, `SHOW SCHEMAS`: answered here.
fn session_statement(sql: &str, tenant: &TenantId, id: &str, base: &str) -> Option<Response> {
    let words: Vec<&str> = sql.split_whitespace().collect();
    let upper: Vec<String> = words
        .iter()
        .take(2)
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let ok = |headers: Vec<(&'static str, String)>, columns: Value, data: Value| {
        Some(finished(id, base, headers, columns, data))
    };
    let fail = |e: QueryError| Some(axum::Json(e.into_results(id, base)).into_response());
    let varchar_col = |name: &str| json!([column(&Field::new(name, DataType::Utf8, false))]);
    match upper
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["USE", ..] if words.len() == 2 => {
            let target = words[1];
            let (catalog, schema) = target
                .split_once('.')
                .map_or((floe_catalog::CATALOG_NAME, target), |(c, s)| (c, s));
            let (catalog, schema) = (catalog.trim_matches('"'), schema.trim_matches('"'));
            if catalog != floe_catalog::CATALOG_NAME || schema != tenant.as_str() {
                return fail(QueryError::user(
                    "SCHEMA_NOT_FOUND",
                    45,
                    format!("Schema '{target}' does not exist"),
                ));
            }
            ok(
                vec![
                    ("x-trino-set-catalog", catalog.to_string()),
                    ("x-trino-set-schema", schema.to_string()),
                ],
                Value::Null,
                Value::Null,
            )
        }
        ["SET", "SESSION"] => {
            let rest = sql[sql.to_ascii_uppercase().find("SESSION")? + 7..].trim();
            let Some((k, v)) = rest.split_once('=') else {
                return fail(QueryError::user(
                    "SYNTAX_ERROR",
                    1,
                    "expected SET SESSION name = value",
                ));
            };
            let v = v.trim().trim_matches('\'');
            ok(
                vec![("x-trino-set-session", format!("{}={}", k.trim(), v))],
                Value::Null,
                Value::Null,
            )
        }
        ["RESET", "SESSION"] if words.len() == 3 => ok(
            vec![("x-trino-clear-session", words[2].to_string())],
            Value::Null,
            Value::Null,
        ),
        ["SHOW", "TABLES"] if words.len() == 4 => {
            let target = words[3].trim_matches('"');
            let schema = target.rsplit('.').next().unwrap_or(target);
            if schema != tenant.as_str() {
                return fail(QueryError::user(
                    "SCHEMA_NOT_FOUND",
                    45,
                    format!("Schema '{target}' does not exist"),
                ));
            }
            None
        }
        ["SHOW", "CATALOGS"] => ok(
            vec![],
            varchar_col("Catalog"),
            json!([[floe_catalog::CATALOG_NAME]]),
        ),
        ["SHOW", "SCHEMAS"] => ok(
            vec![],
            varchar_col("Schema"),
            json!([[tenant.as_str()], ["information_schema"]]),
        ),
        _ => None,
    }
}

enum Prepared {
    /// Not a prepared-statement command.
    Plain,
    /// `PREPARE` / `DEALLOCATE PREPARE`: answered with these headers only.
    Answer(Vec<(&'static str, String)>),
    /// `EXECUTE` / `EXECUTE IMMEDIATE`: the statement with its parameters bound.
    Run(String),
}

/// Trino's prepared statements, as clients (SQLAlchemy among them) use them: the statement
/// text travels in `X-Trino-Prepared-Statement` headers, and parameters are bound by replacing
/// each `?` outside quotes with the matching `USING` literal.
fn prepared_statement(sql: &str, headers: &HeaderMap) -> Result<Prepared, QueryError> {
    let upper = sql.to_ascii_uppercase();
    let words: Vec<&str> = upper.split_whitespace().take(2).collect();
    match words.as_slice() {
        ["PREPARE", _] => {
            let rest = sql["PREPARE".len()..].trim_start();
            let name_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let (name, tail) = rest.split_at(name_end);
            let tail = tail.trim_start();
            let Some(body) = tail
                .get(..4)
                .filter(|k| k.eq_ignore_ascii_case("FROM"))
                .map(|_| tail[4..].trim())
            else {
                return Ok(Prepared::Plain);
            };
            Ok(Prepared::Answer(vec![(
                "x-trino-added-prepare",
                format!("{name}={}", percent_encode(body)),
            )]))
        }
        ["DEALLOCATE", "PREPARE"] => {
            let name = sql.split_whitespace().nth(2).unwrap_or("").to_string();
            Ok(Prepared::Answer(vec![(
                "x-trino-deallocated-prepare",
                name,
            )]))
        }
        ["EXECUTE", "IMMEDIATE"] => {
            let rest = sql["EXECUTE".len()..].trim_start()["IMMEDIATE".len()..].trim_start();
            let (text, after) = quoted(rest).ok_or_else(|| {
                QueryError::user(
                    "SYNTAX_ERROR",
                    1,
                    "EXECUTE IMMEDIATE needs a quoted statement",
                )
            })?;
            bind(&text, after).map(Prepared::Run)
        }
        ["EXECUTE", _] => {
            let rest = sql["EXECUTE".len()..].trim_start();
            let name_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let (name, after) = rest.split_at(name_end);
            let text = headers
                .get_all("x-trino-prepared-statement")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| percent_decode(v))
                .ok_or_else(|| {
                    QueryError::user(
                        "NOT_FOUND",
                        5,
                        format!("Prepared statement not found: {name}"),
                    )
                })?;
            bind(&text, after).map(Prepared::Run)
        }
        _ => Ok(Prepared::Plain),
    }
}

/// Replaces each `?` outside quotes in `text` with the next literal of `USING a, b, ...`.
fn bind(text: &str, using: &str) -> Result<String, QueryError> {
    let using = using.trim();
    let args = if using.is_empty() {
        Vec::new()
    } else if using.len() > 5 && using[..5].eq_ignore_ascii_case("USING") {
        split_top_level(&using[5..])
    } else {
        return Err(QueryError::user(
            "SYNTAX_ERROR",
            1,
            "expected USING after the statement",
        ));
    };
    let mut out = String::with_capacity(text.len());
    let mut args = args.into_iter();
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push(c);
            }
            (Some(q), c) if c == q => {
                quote = None;
                out.push(c);
            }
            (None, '?') => {
                let arg = args.next().ok_or_else(|| {
                    QueryError::user("SYNTAX_ERROR", 1, "fewer parameters than placeholders")
                })?;
                out.push('(');
                out.push_str(arg.trim());
                out.push(')');
            }
            _ => out.push(c),
        }
    }
    if args.next().is_some() {
        return Err(QueryError::user(
            "SYNTAX_ERROR",
            1,
            "more parameters than placeholders",
        ));
    }
    Ok(out)
}

/// Splits on commas outside quotes and parentheses.
fn split_top_level(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let (mut depth, mut quote) = (0i32, None::<char>);
    for c in s.chars() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, ',') if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        parts.push(cur);
    }
    parts
}

/// A single-quoted SQL string at the start of `s` (with `''` escapes), and what follows.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut chars = s.char_indices();
    if chars.next()?.1 != '\'' {
        return None;
    }
    let mut out = String::new();
    let mut pending_quote = false;
    for (i, c) in chars {
        if pending_quote {
            if c == '\'' {
                out.push('\'');
                pending_quote = false;
                continue;
            }
            return Some((out, &s[i..]));
        }
        if c == '\'' {
            pending_quote = true;
        } else {
            out.push(c);
        }
    }
    pending_quote.then_some((out, ""))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.*".contains(&b) {
            out.push(b as char);
        } else if b == b' ' {
            out.push('+');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'+' {
            out.push(b' ');
            i += 1;
            continue;
        }
        if b == b'%'
            && i + 3 <= bytes.len()
            && let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Trino statements DataFusion answers differently, rewritten to queries with Trino's shape.
fn trino_rewrite(sql: &str, tenant: &TenantId) -> Option<String> {
    let words: Vec<String> = sql
        .split_whitespace()
        .take(4)
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let schema = tenant.as_str();
    match words
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["SHOW", "TABLES"] => Some(format!(
            "SELECT table_name AS \"Table\" FROM information_schema.tables \
             WHERE table_schema = '{schema}' ORDER BY 1"
        )),
        ["SHOW", "COLUMNS", "FROM" | "IN", _] | ["DESCRIBE", _, ..] | ["DESC", _, ..] => {
            let target = sql
                .split_whitespace()
                .nth(if words[0] == "SHOW" { 3 } else { 1 })?;
            let parts: Vec<String> = target
                .split('.')
                .map(|p| p.trim_matches('"').replace('\'', "''"))
                .collect();
            let table = parts.last()?;
            // A schema named in the statement is used as given: information_schema holds only
            // the caller's tenant, so another schema's columns come back empty.
            let schema = match parts.len() {
                1 => schema.to_string(),
                n => parts[n - 2].clone(),
            };
            Some(format!(
                "SELECT column_name AS \"Column\", data_type AS \"Type\", '' AS \"Extra\", \
                 '' AS \"Comment\" FROM information_schema.columns \
                 WHERE table_schema = '{schema}' AND table_name = '{table}' ORDER BY ordinal_position"
            ))
        }
        // Another schema was refused before this point (`session_statement`).
        ["SHOW", "TABLES", "FROM" | "IN", _] => Some(format!(
            "SELECT table_name AS \"Table\" FROM information_schema.tables \
             WHERE table_schema = '{schema}' ORDER BY 1"
        )),
        _ => None,
    }
}

/// Cancels queries whose clients stopped fetching.
/// What the task running a plan sends: the schema first, then the batches.
enum Produced {
    Schema(SchemaRef),
    Batch(RecordBatch),
}

/// One of the tenant's query slots, or `None` when all are taken.
fn take_slot(
    st: &TrinoState,
    tenant: &TenantKey,
    limit: usize,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let sem = {
        let mut slots = st.slots.lock().ok()?;
        slots
            .entry(tenant.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(limit.max(1))))
            .clone()
    };
    sem.try_acquire_owned().ok()
}

fn reap(st: &TrinoState, idle: Duration) {
    if let Ok(mut q) = st.queries.lock() {
        q.retain(|_, run| match run.try_lock() {
            Ok(r) => r.touched.elapsed() < idle,
            Err(_) => true,
        });
    }
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
        return axum::Json(p.clone()).into_response();
    }
    if token != guard.token {
        return (StatusCode::GONE, "page token is not current").into_response();
    }
    axum::Json(page(&st, &mut guard, &id, &base).await).into_response()
}

async fn cancel(
    State(st): State<TrinoState>,
    headers: HeaderMap,
    Path((id, _token)): Path<(String, u64)>,
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

/// Waits, until `deadline` at most, for a query's thread to give its tenant slot back. Called
/// once the work has ended by itself (finished or failed), when that takes milliseconds: a
/// client that sees the end and sends its next query at once must not find the slot still
/// taken. A query stopped by a limit is answered at once instead; its slot comes back when its
/// work reaches its next yield.
async fn slot_back(released: Option<tokio::sync::oneshot::Receiver<()>>, deadline: Instant) {
    if let Some(released) = released {
        let _ = tokio::time::timeout_at(deadline.into(), released).await;
    }
}

/// Pulls the next page from the running plan and advances the token.
async fn page(st: &TrinoState, run: &mut Run, id: &str, base: &str) -> Value {
    let (page_rows, max_rows) = {
        let cfg = st.engine.config();
        (cfg.page_rows, cfg.max_result_rows)
    };
    run.touched = Instant::now();
    let mut data: Vec<Value> = Vec::new();
    let mut bytes = 0usize;
    let mut failure = None;
    let mut finished = false;
    while data.len() < page_rows && bytes < PAGE_BYTES {
        let Some(batches) = run.batches.as_mut() else {
            finished = true;
            break;
        };
        match tokio::time::timeout_at(run.deadline.into(), batches.recv()).await {
            Err(_) => {
                failure = Some(time_limit(st.engine.config().timeout_secs));
                break;
            }
            Ok(None) => {
                run.batches = None;
                finished = true;
                slot_back(run.released.take(), run.deadline).await;
                break;
            }
            Ok(Some(Err(e))) => {
                failure = Some(QueryError::from_query(&e));
                // The work stops on its own after an error: wait for its slot as for an end.
                run.batches = None;
                slot_back(run.released.take(), run.deadline).await;
                break;
            }
            Ok(Some(Ok(Produced::Schema(_)))) => continue,
            Ok(Some(Ok(Produced::Batch(batch)))) => {
                run.rows += batch.num_rows() as u64;
                if run.rows > max_rows {
                    failure = Some(QueryError::insufficient(
                        "EXCEEDED_ROW_LIMIT",
                        131083,
                        format!("Query returned more than the limit of {max_rows} rows"),
                    ));
                    break;
                }
                bytes += batch.get_array_memory_size();
                data.extend(json_rows(&batch));
            }
        }
    }
    if let Some(f) = failure {
        if let Ok(mut q) = st.queries.lock() {
            q.remove(id);
        }
        run.batches = None;
        return f.into_results(id, base);
    }
    let mut body = json!({
        "id": id,
        "infoUri": format!("{base}/ui/query.html?{id}"),
        "columns": run.columns,
        "stats": stats(if finished { "FINISHED" } else { "RUNNING" }, run.rows),
        "warnings": [],
    });
    if !data.is_empty() {
        body["data"] = Value::Array(data);
    }
    if finished {
        if let Ok(mut q) = st.queries.lock() {
            q.remove(id);
        }
    } else {
        run.token += 1;
        body["nextUri"] = json!(format!("{base}/v1/statement/executing/{id}/{}", run.token));
    }
    run.last_page = Some(body.clone());
    body
}

/// A column description with its Trino type and type signature.
fn column(f: &Field) -> Value {
    let (name, sig) = trino_type(f.data_type());
    json!({"name": f.name(), "type": name, "typeSignature": sig})
}

fn long(v: i64) -> Value {
    json!({"kind": "LONG", "value": v})
}

fn ty(sig: Value) -> Value {
    json!({"kind": "TYPE", "value": sig})
}

/// The Trino type name and signature of an Arrow type.
pub(crate) fn trino_type(dt: &DataType) -> (String, Value) {
    let simple = |raw: &str| (raw.to_string(), json!({"rawType": raw, "arguments": []}));
    match dt {
        DataType::Boolean => simple("boolean"),
        DataType::Int8 => simple("tinyint"),
        DataType::Int16 | DataType::UInt8 => simple("smallint"),
        DataType::Int32 | DataType::UInt16 => simple("integer"),
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => simple("bigint"),
        DataType::Float16 | DataType::Float32 => simple("real"),
        DataType::Float64 => simple("double"),
        DataType::Date32 | DataType::Date64 => simple("date"),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => (
            format!("decimal({p},{s})"),
            json!({"rawType": "decimal", "arguments": [long(*p as i64), long(*s as i64)]}),
        ),
        DataType::Timestamp(unit, tz) => {
            let p = match unit {
                TimeUnit::Second => 0,
                TimeUnit::Millisecond => 3,
                TimeUnit::Microsecond => 6,
                TimeUnit::Nanosecond => 9,
            };
            let raw = if tz.is_some() {
                "timestamp with time zone"
            } else {
                "timestamp"
            };
            let name = if tz.is_some() {
                format!("timestamp({p}) with time zone")
            } else {
                format!("timestamp({p})")
            };
            (name, json!({"rawType": raw, "arguments": [long(p)]}))
        }
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            let (n, s) = trino_type(f.data_type());
            (
                format!("array({n})"),
                json!({"rawType": "array", "arguments": [ty(s)]}),
            )
        }
        DataType::Map(entries, _) => {
            let (k, v) = match entries.data_type() {
                DataType::Struct(fs) if fs.len() == 2 => {
                    (trino_type(fs[0].data_type()), trino_type(fs[1].data_type()))
                }
                _ => (simple("varchar"), simple("varchar")),
            };
            (
                format!("map({}, {})", k.0, v.0),
                json!({"rawType": "map", "arguments": [ty(k.1), ty(v.1)]}),
            )
        }
        DataType::Struct(fields) => {
            let parts: Vec<(String, String, Value)> = fields
                .iter()
                .map(|f| {
                    let (n, s) = trino_type(f.data_type());
                    (f.name().clone(), n, s)
                })
                .collect();
            let name = format!(
                "row({})",
                parts
                    .iter()
                    .map(|(f, n, _)| format!("{f} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let args: Vec<Value> = parts
                .into_iter()
                .map(|(f, _, s)| {
                    json!({"kind": "NAMED_TYPE", "value": {"fieldName": {"name": f}, "typeSignature": s}})
                })
                .collect();
            (name, json!({"rawType": "row", "arguments": args}))
        }
        _ => (
            "varchar".to_string(),
            json!({"rawType": "varchar", "arguments": [long(i32::MAX as i64)]}),
        ),
    }
}

/// The rows of `batch` as the Trino protocol sends them in `data`.
pub fn json_rows(batch: &RecordBatch) -> Vec<Value> {
    (0..batch.num_rows())
        .map(|r| Value::Array(batch.columns().iter().map(|c| value(c, r)).collect()))
        .collect()
}

fn formatted(array: &ArrayRef, row: usize) -> Value {
    let opts = FormatOptions::default();
    match ArrayFormatter::try_new(array.as_ref(), &opts) {
        Ok(f) => Value::String(f.value(row).to_string()),
        Err(_) => Value::Null,
    }
}

fn float(v: f64) -> Value {
    if v.is_nan() {
        json!("NaN")
    } else if v.is_infinite() {
        json!(if v > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        json!(v)
    }
}

/// One value as Trino clients expect it in `data`.
fn value(array: &ArrayRef, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Boolean => json!(array.as_boolean().value(row)),
        DataType::Int8 => json!(array.as_primitive::<Int8Type>().value(row)),
        DataType::Int16 => json!(array.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => json!(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => json!(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            formatted(array, row)
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .map_or(Value::Null, |v| json!(v))
        }
        DataType::Float32 => float(
            array
                .as_primitive::<arrow::datatypes::Float32Type>()
                .value(row) as f64,
        ),
        DataType::Float64 => float(
            array
                .as_primitive::<arrow::datatypes::Float64Type>()
                .value(row),
        ),
        DataType::Utf8 => json!(array.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => json!(array.as_string::<i64>().value(row)),
        DataType::Utf8View => json!(array.as_string_view().value(row)),
        DataType::Timestamp(unit, tz) => {
            let raw = match unit {
                TimeUnit::Second => {
                    array
                        .as_primitive::<arrow::datatypes::TimestampSecondType>()
                        .value(row)
                        * 1_000_000
                }
                TimeUnit::Millisecond => {
                    array
                        .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                        .value(row)
                        * 1000
                }
                TimeUnit::Microsecond => array
                    .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                    .value(row),
                TimeUnit::Nanosecond => {
                    array
                        .as_primitive::<arrow::datatypes::TimestampNanosecondType>()
                        .value(row)
                        / 1000
                }
            };
            let Some(t) = chrono::DateTime::from_timestamp_micros(raw) else {
                return Value::Null;
            };
            let digits = match unit {
                TimeUnit::Second => "%Y-%m-%d %H:%M:%S",
                TimeUnit::Millisecond => "%Y-%m-%d %H:%M:%S%.3f",
                _ => "%Y-%m-%d %H:%M:%S%.6f",
            };
            match tz {
                // Shown in the value's zone, named as Trino names it.
                Some(tz) => {
                    let name = match tz.as_ref() {
                        "+00:00" | "UTC" | "Z" | "+0000" | "Etc/UTC" => "UTC",
                        other => other,
                    };
                    match arrow::array::timezone::Tz::from_str(name) {
                        Ok(zone) => {
                            json!(format!("{} {name}", t.with_timezone(&zone).format(digits)))
                        }
                        Err(_) => json!(format!("{} UTC", t.format(digits))),
                    }
                }
                None => json!(t.format(digits).to_string()),
            }
        }
        DataType::List(_) => {
            let list = array.as_list::<i32>().value(row);
            Value::Array((0..list.len()).map(|i| value(&list, i)).collect())
        }
        DataType::LargeList(_) => {
            let list = array.as_list::<i64>().value(row);
            Value::Array((0..list.len()).map(|i| value(&list, i)).collect())
        }
        DataType::Struct(_) => {
            let s = array.as_struct();
            Value::Array(s.columns().iter().map(|c| value(c, row)).collect())
        }
        DataType::Map(_, _) => {
            let m = array.as_map();
            let entries = m.value(row);
            let keys = entries.column(0);
            let values = entries.column(1);
            let mut obj = serde_json::Map::new();
            for i in 0..entries.len() {
                let k = match value(keys, i) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                obj.insert(k, value(values, i));
            }
            Value::Object(obj)
        }
        _ => formatted(array, row),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_bind_outside_quotes_only() {
        let sql = bind(
            "SELECT '?' , ? FROM t WHERE a = ? AND \"?\" = 1",
            "USING 'x,y', f(1, 2)",
        )
        .unwrap();
        assert_eq!(
            sql,
            "SELECT '?' , ('x,y') FROM t WHERE a = (f(1, 2)) AND \"?\" = 1"
        );
        assert!(bind("SELECT ?", "").is_err());
        assert!(bind("SELECT 1", "USING 1").is_err());
    }

    #[test]
    fn prepared_text_round_trips_through_the_header_encoding() {
        let text = "SELECT \"a b\" FROM t WHERE x = ? AND y = '100%'";
        assert_eq!(percent_decode(&percent_encode(text)), text);
        assert_eq!(
            quoted("'it''s' USING 1"),
            Some(("it's".to_string(), " USING 1"))
        );
        assert_eq!(quoted("'open"), None);
    }

    #[test]
    fn type_signatures() {
        let (n, s) = trino_type(&DataType::Timestamp(
            TimeUnit::Microsecond,
            Some("+00:00".into()),
        ));
        assert_eq!(n, "timestamp(6) with time zone");
        assert_eq!(s["rawType"], "timestamp with time zone");
        let (n, _) = trino_type(&DataType::Decimal128(10, 2));
        assert_eq!(n, "decimal(10,2)");
        let (n, s) = trino_type(&DataType::List(Arc::new(Field::new(
            "item",
            DataType::Int64,
            true,
        ))));
        assert_eq!(n, "array(bigint)");
        assert_eq!(s["arguments"][0]["value"]["rawType"], "bigint");
    }
}
