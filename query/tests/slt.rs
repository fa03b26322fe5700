//! SQL behaviour over a fixed dataset, as sqllogictest files (`tests/slt/*.slt`).
//!
//! The events in `tests/slt/*.ndjson` go in through the real ingest path (HTTP router, log,
//! Iceberg commit) into tenants `shop` and `other`; every statement then runs as a Trino client's
//! would: Trino dialect, read-only guard, tenant-scoped session, values rendered as the protocol
//! sends them. Failures read `ERROR_NAME: message`, as Trino clients see them.
//!
//! Values: NULL is `NULL`, an empty string `(empty)`, arrays, maps and rows their JSON text.
//! Variables: `$SNAPSHOT_1` is the id of the snapshot holding the first 8 `shop` events, and
//! `$SNAPSHOT_1_AT` its commit time (`YYYY-MM-DD HH:MM:SS.mmm UTC`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use floe_catalog::table::EVENTS_TABLE;
use floe_catalog::{Authenticator, Catalog, Config, Role, TenantId, TokenAuthority};
use floe_ingest::Ingest;
use floe_ingest::http::{HttpState, router};
use floe_query::{Engine, Scope};
use serde_json::Value;
use sqllogictest::{DBOutput, DefaultColumnType};
use tower::ServiceExt;

struct Floe {
    engine: Engine,
    tenant: TenantId,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failed(String);

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for Floe {
    type Error = Failed;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Failed> {
        let failed = |e: floe_query::Error| Failed(floe_query::trino::error_text(&e));
        let ctx = self
            .engine
            .session_scoped(&self.tenant, Scope::AllTables, "UTC")
            .await
            .map_err(failed)?;
        let df = self
            .engine
            .plan(&ctx, &self.tenant, sql)
            .await
            .map_err(failed)?;
        let types = df
            .schema()
            .fields()
            .iter()
            .map(|f| {
                let t = f.data_type();
                if t.is_integer() {
                    DefaultColumnType::Integer
                } else if t.is_floating() || matches!(t, arrow::datatypes::DataType::Decimal128(..))
                {
                    DefaultColumnType::FloatingPoint
                } else {
                    DefaultColumnType::Text
                }
            })
            .collect();
        let batches = df
            .collect()
            .await
            .map_err(|e| failed(floe_query::Error::DataFusion(e)))?;
        let mut rows = Vec::new();
        for b in &batches {
            for row in floe_query::trino::json_rows(b) {
                let Value::Array(values) = row else { continue };
                rows.push(values.iter().map(text).collect());
            }
        }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_files() {
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
    let app = router(HttpState {
        ingest: ingest_service.clone(),
        auth: Authenticator::new(authority.clone(), catalog.clone()),
        producer: None,
    });
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let token = |t: &TenantId| {
        authority
            .issue(t, Role::Ingest, Duration::from_secs(600))
            .unwrap()
    };

    let shop = TenantId::parse("shop").unwrap();
    let other = TenantId::parse("other").unwrap();
    for t in [&shop, &other] {
        catalog.create_tenant(t, "slt").await.unwrap();
    }
    let shop_events = std::fs::read_to_string(fixtures.join("shop.ndjson")).unwrap();
    let (first, second) = shop_events.split_once("---\n").unwrap();
    ingest(&app, &token(&shop), first).await;
    let table = catalog.load_table(&shop, EVENTS_TABLE).await.unwrap();
    let snapshot = table.metadata().current_snapshot().unwrap().clone();
    // The next commit must be later than this one, to the millisecond.
    tokio::time::sleep(Duration::from_millis(20)).await;
    ingest(&app, &token(&shop), second).await;
    let other_events = std::fs::read_to_string(fixtures.join("other.ndjson")).unwrap();
    ingest(&app, &token(&other), &other_events).await;

    let engine = Engine::new(catalog.clone(), config.query.clone());
    let mut files: Vec<_> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", fixtures.display());
    for file in files {
        let engine = engine.clone();
        let tenant = shop.clone();
        let mut runner = sqllogictest::Runner::new(move || {
            let engine = engine.clone();
            let tenant = tenant.clone();
            async move { Ok(Floe { engine, tenant }) }
        });
        runner.set_var("SNAPSHOT_1".into(), snapshot.snapshot_id().to_string());
        runner.set_var(
            "SNAPSHOT_1_AT".into(),
            chrono::DateTime::from_timestamp_millis(snapshot.timestamp_ms())
                .unwrap()
                .format("%Y-%m-%d %H:%M:%S%.3f UTC")
                .to_string(),
        );
        if let Err(e) = runner.run_file_async(&file).await {
            panic!("{}:\n{}", file.display(), e.display(true));
        }
    }
    scan_prunes_files_by_manifest_bounds(&engine, &shop).await;
    ingest_service.shutdown(Duration::from_secs(5)).await;
}

/// A time range is answered from the files of that range only: the manifests' `ts` bounds prune
/// the others before the scan is planned, and the answer stays right.
async fn scan_prunes_files_by_manifest_bounds(engine: &Engine, tenant: &TenantId) {
    let (_, batches) = engine
        .sql(
            tenant,
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
