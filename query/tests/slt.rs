//! SQL behaviour over a fixed dataset, as sqllogictest files (`tests/slt/*.slt`), each file one
//! case: `cargo test -p floe-query --test slt` runs them all and names each file that fails;
//! `… --test slt -- FILTER` runs the files whose name holds FILTER; `… -- --complete` rewrites
//! the expected output of those files from what Floe answers now (read the diff before
//! committing it), as DataFusion's runner does.
//!
//! The events in `tests/slt/*.ndjson` go in through the real ingest path (HTTP router, log,
//! Iceberg commit) into tenants `shop` and `other`. Every statement then goes through the Trino
//! protocol as a client sends it (`POST /v1/statement`, then the `nextUri` pages), with an
//! analyst token of `shop`, and the client's session carried from one statement to the next
//! (`X-Trino-Set-Catalog`/`-Schema`, session properties, prepared statements): `USE`, `SHOW`,
//! `DESCRIBE` and `PREPARE`/`EXECUTE` take the same path as in a real client. Failures read
//! `ERROR_NAME: message`, as Trino clients see them.
//!
//! After the events, the schemas of `tests/slt/schemas.json` are registered for `shop` (so
//! the events were stored unchecked, as sent, and the per-type views read them upcast).
//!
//! Values: NULL is `NULL`, an empty string `(empty)`, arrays, maps and rows their JSON text.
//! Variables: `$SNAPSHOT_1` is the id of the snapshot holding the first 8 `shop` events, and
//! `$SNAPSHOT_1_AT` its commit time (`YYYY-MM-DD HH:MM:SS.mmm UTC`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use floe_catalog::quota::QuotaBook;
use floe_catalog::table::EVENTS_TABLE;
use floe_catalog::{Authenticator, Catalog, Config, Role, TenantId, TokenAuthority};
use floe_ingest::Ingest;
use floe_ingest::http::{HttpState, router};
use floe_query::Engine;
use floe_query::trino::TrinoState;
use serde_json::Value;
use sqllogictest::{DBOutput, DefaultColumnType};
use tower::ServiceExt;

/// A Trino client of Floe's protocol router, with its session.
struct Client {
    app: axum::Router,
    token: String,
    /// `X-Trino-*` request headers the server asked the client to send (catalog, schema,
    /// session properties, prepared statements).
    session: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failed(String);

impl Client {
    async fn call(&mut self, request: Request<Body>) -> Value {
        let resp = self.app.clone().oneshot(request).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        for (name, value) in resp.headers() {
            let value = value.to_str().unwrap().to_string();
            match name.as_str() {
                "x-trino-set-catalog" => self.set("x-trino-catalog", value),
                "x-trino-set-schema" => self.set("x-trino-schema", value),
                "x-trino-set-session" => self.session.push(("x-trino-session".into(), value)),
                "x-trino-clear-session" => self.session.retain(|(k, v)| {
                    k != "x-trino-session" || !v.starts_with(&format!("{value}="))
                }),
                "x-trino-added-prepare" => self
                    .session
                    .push(("x-trino-prepared-statement".into(), value)),
                "x-trino-deallocated-prepare" => self.session.retain(|(k, v)| {
                    k != "x-trino-prepared-statement" || !v.starts_with(&format!("{value}="))
                }),
                _ => {}
            }
        }
        let body = axum::body::to_bytes(resp.into_body(), 1 << 30)
            .await
            .unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    fn set(&mut self, name: &str, value: String) {
        self.session.retain(|(k, _)| k != name);
        self.session.push((name.to_string(), value));
    }

    fn request(&self, builder: axum::http::request::Builder) -> axum::http::request::Builder {
        let mut b = builder
            .header("authorization", format!("Bearer {}", self.token))
            .header("x-trino-user", "slt")
            .header("x-trino-time-zone", "UTC");
        for (k, v) in &self.session {
            b = b.header(k.as_str(), v.as_str());
        }
        b
    }
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for Client {
    type Error = Failed;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Failed> {
        let post = self
            .request(Request::post("/v1/statement"))
            .body(Body::from(sql.to_string()))
            .unwrap();
        let mut page = self.call(post).await;
        assert_eq!(page["stats"]["state"], "QUEUED", "{page}");
        let (mut columns, mut rows) = (None, Vec::new());
        while let Some(next) = page["nextUri"].as_str() {
            let path = next.trim_start_matches("http://localhost").to_string();
            page = self
                .call(
                    self.request(Request::get(path))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await;
            if let Some(error) = page.get("error") {
                return Err(Failed(format!(
                    "{}: {}",
                    error["errorName"].as_str().unwrap_or("?"),
                    error["message"].as_str().unwrap_or("?")
                )));
            }
            if let Some(c) = page.get("columns").and_then(Value::as_array) {
                columns = Some(c.clone());
            }
            for row in page["data"].as_array().into_iter().flatten() {
                rows.push(row.as_array().unwrap().iter().map(text).collect());
            }
        }
        // The last page's figures: the rows sent, and a core's time no more than the time
        // spent on one or waiting for one.
        let stats = &page["stats"];
        assert_eq!(stats["state"], "FINISHED", "{page}");
        assert_eq!(
            stats["processedRows"].as_u64(),
            Some(rows.len() as u64),
            "{page}"
        );
        assert!(
            stats["cpuTimeMillis"].as_u64() <= stats["wallTimeMillis"].as_u64(),
            "{page}"
        );
        let Some(columns) = columns else {
            return Ok(DBOutput::StatementComplete(0));
        };
        let types = columns
            .iter()
            .map(|c| match c["type"].as_str().unwrap_or("") {
                "tinyint" | "smallint" | "integer" | "bigint" => DefaultColumnType::Integer,
                t if t == "real" || t == "double" || t.starts_with("decimal") => {
                    DefaultColumnType::FloatingPoint
                }
                _ => DefaultColumnType::Text,
            })
            .collect();
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) if s.is_empty() => "(empty)".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Posts events (one JSON object per line) and waits until they are visible.
async fn ingest(app: &axum::Router, token: &str, lines: &str) {
    let events: Vec<Value> = lines
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let resp = app
        .clone()
        .oneshot(
            Request::post("/v1/events?wait=visible")
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_string(&events).unwrap()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// The dataset every file runs against, and what the files may refer to.
struct Fixture {
    engine: Engine,
    trino: axum::Router,
    token: String,
    shop: TenantId,
    vars: Vec<(String, String)>,
    ingest: Ingest,
    _dir: tempfile::TempDir,
}

async fn fixture(fixtures: &Path) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::load(
        None,
        Vec::<(String, String)>::new(),
        &[("data_dir", dir.path().display().to_string())],
    )
    .unwrap();
    let catalog = Catalog::open(&config).await.unwrap();
    let authority = TokenAuthority::load_or_create(&config.signing_key_path()).unwrap();
    let ingest_service = Ingest::start(catalog.clone(), &config, tokio::runtime::Handle::current())
        .await
        .unwrap();
    let auth = Authenticator::new(authority.clone(), catalog.clone());
    let quotas = QuotaBook::new(catalog.clone(), config.quota.clone());
    let app = router(HttpState::new(
        ingest_service.clone(),
        auth.clone(),
        None,
        quotas.clone(),
    ));
    let token = |t: &TenantId, role| authority.issue(t, role, Duration::from_secs(3600)).unwrap();

    let shop = TenantId::parse("shop").unwrap();
    let other = TenantId::parse("other").unwrap();
    for t in [&shop, &other] {
        catalog.create_tenant(t, "slt").await.unwrap();
    }
    let shop_events = std::fs::read_to_string(fixtures.join("shop.ndjson")).unwrap();
    let (first, second) = shop_events.split_once("---\n").unwrap();
    ingest(&app, &token(&shop, Role::Ingest), first).await;
    let table = catalog.load_table(&shop, EVENTS_TABLE).await.unwrap();
    let snapshot = table.metadata().current_snapshot().unwrap().clone();
    // The next commit must be later than this one, to the millisecond.
    tokio::time::sleep(Duration::from_millis(20)).await;
    ingest(&app, &token(&shop, Role::Ingest), second).await;
    let other_events = std::fs::read_to_string(fixtures.join("other.ndjson")).unwrap();
    ingest(&app, &token(&other, Role::Ingest), &other_events).await;

    let schemas: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("schemas.json")).unwrap())
            .unwrap();
    for s in schemas {
        let (kind, version) = (s["type"].as_str().unwrap(), s["version"].as_i64().unwrap());
        catalog
            .register_schema(
                &shop,
                kind,
                version as i32,
                s["schema"].clone(),
                None,
                "slt",
            )
            .await
            .unwrap();
    }

    let engine = Engine::new(catalog.clone(), config.query.clone());
    let vars = vec![
        ("SNAPSHOT_1".to_string(), snapshot.snapshot_id().to_string()),
        (
            "SNAPSHOT_1_AT".to_string(),
            chrono::DateTime::from_timestamp_millis(snapshot.timestamp_ms())
                .unwrap()
                .format("%Y-%m-%d %H:%M:%S%.3f UTC")
                .to_string(),
        ),
    ];
    Fixture {
        trino: floe_query::trino::router(TrinoState::new(engine.clone(), auth, quotas)),
        token: token(&shop, Role::Analyst),
        engine,
        shop,
        vars,
        ingest: ingest_service,
        _dir: dir,
    }
}

/// Runs one file (or rewrites its expected output); `Err` says what failed.
async fn run_file(f: &Fixture, file: &Path, complete: bool) -> Result<(), String> {
    let (app, token) = (f.trino.clone(), f.token.clone());
    let mut runner = sqllogictest::Runner::new(move || {
        let (app, token) = (app.clone(), token.clone());
        async move {
            Ok(Client {
                app,
                token,
                session: vec![
                    ("x-trino-catalog".into(), "floe".into()),
                    ("x-trino-schema".into(), "shop".into()),
                ],
            })
        }
    });
    for (k, v) in &f.vars {
        runner.set_var(k.clone(), v.clone());
    }
    if complete {
        return runner
            .update_test_file(
                file,
                " ",
                sqllogictest::default_validator,
                sqllogictest::default_normalizer,
                sqllogictest::default_column_validator,
            )
            .await
            .map_err(|e| e.to_string());
    }
    runner
        .run_file_async(file)
        .await
        .map_err(|e| e.display(true).to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let complete = args.iter().any(|a| a == "--complete");
    // Other flags (libtest's, passed by `cargo test -- …`) are taken and ignored.
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let fixtures = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
        })
        .collect();
    files.sort();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let failed = runtime.block_on(async {
        let f = fixture(&fixtures).await;
        println!("\nrunning {} sqllogictest files", files.len());
        let mut failed = Vec::new();
        for file in &files {
            let name = file.strip_prefix(&fixtures).unwrap_or(file).display();
            match run_file(&f, file, complete).await {
                Ok(()) if complete => println!("slt {name} ... rewritten"),
                Ok(()) => println!("slt {name} ... ok"),
                Err(e) => {
                    println!("slt {name} ... FAILED\n{e}");
                    failed.push(name.to_string());
                }
            }
        }
        if filters.is_empty() {
            scan_prunes_files_by_manifest_bounds(&f.engine, &f.shop).await;
            println!("scan_prunes_files_by_manifest_bounds ... ok");
            a_local_warehouse_is_read_on_the_querys_threads(&f.engine, &f.shop).await;
            println!("a_local_warehouse_is_read_on_the_querys_threads ... ok");
        }
        f.ingest.shutdown(Duration::from_secs(5)).await;
        failed
    });
    if failed.is_empty() {
        println!("\nslt result: ok. {} files", files.len());
        ExitCode::SUCCESS
    } else {
        println!("\nslt result: FAILED: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}

/// A session over a local warehouse reads its files with `scan::local_files::QueryFiles`, not
/// DataFusion's default local store (every answer above would be the same either way).
async fn a_local_warehouse_is_read_on_the_querys_threads(engine: &Engine, tenant: &TenantId) {
    let ctx = engine
        .session(tenant, floe_query::Scope::AllTables)
        .await
        .unwrap();
    let url = datafusion::execution::object_store::ObjectStoreUrl::local_filesystem();
    let store = ctx.runtime_env().object_store(&url).unwrap();
    assert!(store.to_string().starts_with("QueryFiles("), "{store}");
}

/// A time range is answered from the files of that range only: the manifests' `ts` bounds prune
/// the others before the scan is planned, and the answer stays right.
async fn scan_prunes_files_by_manifest_bounds(engine: &Engine, tenant: &TenantId) {
    let (_, batches) = engine
        .sql(
            tenant,
            floe_query::Scope::AllTables,
            "EXPLAIN ANALYZE SELECT count(*) FROM events \
             WHERE ts >= TIMESTAMP '2025-11-15 00:00:00 UTC' AND ts < TIMESTAMP '2025-11-16 00:00:00 UTC'",
        )
        .await
        .unwrap();
    let plan = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    assert!(plan.contains("file_type=parquet"), "{plan}");
    // Data files are written per day (`ts_day=`): only that day's reach the Parquet scan.
    assert!(plan.contains("ts_day=2025-11-15/"), "{plan}");
    for other_day in ["ts_day=2025-11-14/", "ts_day=2025-11-16/"] {
        assert!(
            !plan.contains(other_day),
            "{other_day} was not pruned: {plan}"
        );
    }

    let (_, rows) = engine
        .sql(
            tenant,
            floe_query::Scope::AllTables,
            "SELECT count(*), count(DISTINCT event_id) FROM events \
             WHERE ts >= TIMESTAMP '2025-11-15 00:00:00 UTC' AND ts < TIMESTAMP '2025-11-16 00:00:00 UTC'",
        )
        .await
        .unwrap();
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    let counts: Vec<i64> = (0..2)
        .map(|c| rows[0].column(c).as_primitive::<Int64Type>().value(0))
        .collect();
    // Five events of 2025-11-15 in shop.ndjson.
    assert_eq!(counts, vec![5, 5]);
}
