//! The ingest service in-process: HTTP through the router, durability through the log, and
//! replay after the batchers die before committing.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use floe_catalog::quota::QuotaBook;
use floe_catalog::table::EVENTS_TABLE;
use floe_catalog::{Authenticator, Catalog, Config, Role, TenantId, TokenAuthority};
use floe_ingest::Ingest;
use floe_ingest::http::{HttpState, router};
use futures::TryStreamExt;
use tower::ServiceExt;

fn config(dir: &std::path::Path, extra: &[(&str, &str)]) -> Config {
    let mut o: Vec<(&str, String)> = vec![("data_dir", dir.display().to_string())];
    o.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    Config::load(None, Vec::<(String, String)>::new(), &o).unwrap()
}

async fn rows(catalog: &Catalog, tenant: &TenantId) -> usize {
    let table = catalog.load_table(tenant, EVENTS_TABLE).await.unwrap();
    if table.metadata().current_snapshot().is_none() {
        return 0;
    }
    let stream = table.scan().build().unwrap().to_arrow().await.unwrap();
    let batches: Vec<_> = stream.try_collect().await.unwrap();
    batches.iter().map(|b| b.num_rows()).sum()
}

fn post(token: &str, body: String) -> Request<Body> {
    Request::post("/v1/events")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_replay_exactly_once_after_batchers_die() {
    let dir = tempfile::tempdir().unwrap();
    let slow = config(dir.path(), &[("ingest.flush_interval_ms", "3600000")]);
    let catalog = Catalog::open(&slow).await.unwrap();
    let tenant = TenantId::parse("t1").unwrap();
    let key = create(&catalog, &tenant).await;
    let authority = TokenAuthority::load_or_create(&slow.signing_key_path()).unwrap();
    let token = authority
        .issue(&tenant, Role::Ingest, Duration::from_secs(60))
        .unwrap();

    // Phase 1: acknowledged, never committed (the batchers' runtime is killed).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ingest = Ingest::start(catalog.clone(), &slow, rt.handle().clone())
        .await
        .unwrap();
    let app = router(HttpState::new(
        ingest.clone(),
        Authenticator::new(authority.clone(), catalog.clone()),
        None,
        QuotaBook::new(catalog.clone(), Default::default()),
    ));
    for b in 0..3 {
        let events: Vec<_> = (0..10)
            .map(|i| serde_json::json!({"event_id": format!("e{b}-{i}"), "type": "A", "timestamp": 1_700_000_000 + i}))
            .collect();
        let resp = app
            .clone()
            .oneshot(post(&token, serde_json::to_string(&events).unwrap()))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    assert_eq!(rows(&catalog, &tenant).await, 0);
    drop(app);
    drop(ingest);
    rt.shutdown_background();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Phase 2: a new service replays the log and commits it once.
    let fast = config(dir.path(), &[("ingest.flush_interval_ms", "20")]);
    let rt2 = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ingest = Ingest::start(catalog.clone(), &fast, rt2.handle().clone())
        .await
        .unwrap();
    let v = ingest.wait_visible(&key, 3).await.unwrap();
    assert!(v.snapshot_id.is_some());
    assert_eq!(rows(&catalog, &tenant).await, 30);
    let table = catalog.load_table(&tenant, EVENTS_TABLE).await.unwrap();
    let summary = &table
        .metadata()
        .current_snapshot()
        .unwrap()
        .summary()
        .additional_properties;
    let pos: Vec<_> = summary
        .iter()
        .filter(|(k, _)| k.starts_with("floe.position.wal-"))
        .collect();
    assert_eq!(pos.len(), 1);
    assert_eq!(pos[0].1, "3");
    assert_eq!(summary["total-records"], "30");

    // The replayed ids are remembered: re-sending one is a duplicate.
    let app = router(HttpState::new(
        ingest.clone(),
        Authenticator::new(authority, catalog.clone()),
        None,
        QuotaBook::new(catalog.clone(), Default::default()),
    ));
    let resp = app
        .oneshot(post(
            &token,
            r#"{"event_id":"e1-1","type":"A","timestamp":1}"#.into(),
        ))
        .await
        .unwrap();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["duplicates"], 1, "{v}");
    drop(ingest);
    rt2.shutdown_background();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_to_one_table_lose_nothing() {
    // Two services (two logs) on one catalog commit to the same table at once: the
    // compare-and-swap makes one of each racing pair reload and retry.
    let dir = tempfile::tempdir().unwrap();
    let base = config(dir.path(), &[("ingest.flush_interval_ms", "5")]);
    let catalog = Catalog::open(&base).await.unwrap();
    let tenant = TenantId::parse("shared").unwrap();
    let key = create(&catalog, &tenant).await;
    let mut services = Vec::new();
    for i in 0..2 {
        let sub = dir.path().join(format!("node{i}"));
        let mut cfg = config(&sub, &[("ingest.flush_interval_ms", "5")]);
        cfg.catalog = base.catalog_url().unwrap();
        cfg.warehouse = base.warehouse_url().unwrap();
        let c = Catalog::open(&cfg).await.unwrap();
        services.push(
            Ingest::start(c, &cfg, tokio::runtime::Handle::current())
                .await
                .unwrap(),
        );
    }
    let mut tasks = Vec::new();
    for (n, svc) in services.iter().enumerate() {
        let svc = svc.clone();
        let tenant = key.clone();
        tasks.push(tokio::spawn(async move {
            for b in 0..25 {
                let events = (0..4)
                    .map(|i| {
                        floe_ingest::event::parse_event(
                            i,
                            &format!(r#"{{"event_id":"n{n}-{b}-{i}","type":"A","timestamp":1}}"#),
                            "shared",
                            0,
                            floe_ingest::event::Limits {
                                max_event_bytes: 1 << 20,
                                max_events: 100,
                            },
                            &floe_ingest::schema::TenantSchemas::none(),
                        )
                        .unwrap()
                    })
                    .collect();
                svc.submit(&tenant, events).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let acked = svc.acked(&tenant);
            svc.wait_visible(&tenant, acked).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(rows(&catalog, &tenant).await, 200);
}

/// Creates the tenant; its current incarnation.
async fn create(catalog: &Catalog, tenant: &TenantId) -> floe_catalog::TenantKey {
    catalog
        .create_tenant(tenant, "test")
        .await
        .unwrap()
        .key()
        .unwrap()
}

/// Events received now (the de-duplication window counts from `received_at`).
fn events(prefix: &str, n: usize) -> Vec<floe_ingest::event::StoredEvent> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    (0..n)
        .map(|i| {
            floe_ingest::event::parse_event(
                i,
                &format!(r#"{{"event_id":"{prefix}-{i}","type":"A","timestamp":1700000000}}"#),
                "again",
                now,
                floe_ingest::event::Limits {
                    max_event_bytes: 1 << 20,
                    max_events: 100,
                },
                &floe_ingest::schema::TenantSchemas::none(),
            )
            .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn ingest_files_keep_no_dictionary_of_ids_or_payloads() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(&config(dir.path(), &[])).await.unwrap();
    let tenant = TenantId::parse("again").unwrap();
    create(&catalog, &tenant).await;
    let table = catalog.load_table(&tenant, EVENTS_TABLE).await.unwrap();
    let events = events("d", 100);
    let rows: Vec<_> = events.iter().collect();
    let files = floe_ingest::writer::write_events(
        &table,
        "again",
        &rows,
        parquet::basic::Compression::SNAPPY,
        catalog.written(),
    )
    .await
    .unwrap();
    assert_eq!(files.len(), 1);
    let path = files[0].file_path();
    let file = std::fs::File::open(path.strip_prefix("file://").unwrap_or(path)).unwrap();
    let reader = SerializedFileReader::new(file).unwrap();
    let mut seen = Vec::new();
    for chunk in reader
        .metadata()
        .row_groups()
        .iter()
        .flat_map(|g| g.columns())
    {
        let name = chunk.column_path().string();
        let dictionary = chunk.dictionary_page_offset().is_some();
        if ["event_id", "payload", "type"].contains(&name.as_str()) {
            assert_eq!(dictionary, name == "type", "{name}");
            seen.push(name);
        }
    }
    assert_eq!(seen, ["event_id", "type", "payload"]);
}

/// The ids (`event_id`) in a tenant's events table.
async fn ids(catalog: &Catalog, tenant: &TenantId) -> Vec<String> {
    use arrow_array::cast::AsArray;
    let table = catalog.load_table(tenant, EVENTS_TABLE).await.unwrap();
    if table.metadata().current_snapshot().is_none() {
        return Vec::new();
    }
    let stream = table
        .scan()
        .select(["event_id"])
        .build()
        .unwrap()
        .to_arrow()
        .await
        .unwrap();
    let batches: Vec<_> = stream.try_collect().await.unwrap();
    let mut out: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_tenant_starts_clean_and_never_gets_the_old_ones_events() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing is committed by time: only a graceful stop or a restart's replay commits.
    let cfg = config(dir.path(), &[("ingest.flush_interval_ms", "3600000")]);
    let catalog = Catalog::open(&cfg).await.unwrap();
    let tenant = TenantId::parse("again").unwrap();
    let old = create(&catalog, &tenant).await;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ingest = Ingest::start(catalog.clone(), &cfg, rt.handle().clone())
        .await
        .unwrap();

    // The old tenant's events are acknowledged (in the log), not yet committed …
    let first = ingest.submit(&old, events("e", 5)).await.unwrap();
    assert_eq!((first.stored, first.duplicates), (5, 0));
    // … when the tenant is deleted and created again under the same id.
    catalog.delete_tenant(&tenant, true, "test").await.unwrap();
    let new = create(&catalog, &tenant).await;
    assert_ne!(old, new);

    // The same ids sent to the new tenant are new events, not retries of the old ones.
    let again = ingest.submit(&new, events("e", 5)).await.unwrap();
    assert_eq!((again.stored, again.duplicates), (5, 0));
    let more = ingest.submit(&new, events("n", 2)).await.unwrap();
    assert_eq!(more.stored, 2);

    // A restart replays the log: the old incarnation's records are dropped, the new one's
    // committed, once.
    drop(ingest);
    rt.shutdown_background();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fast = config(dir.path(), &[("ingest.flush_interval_ms", "20")]);
    let ingest = Ingest::start(catalog.clone(), &fast, tokio::runtime::Handle::current())
        .await
        .unwrap();
    let acked = ingest.acked(&new);
    ingest.wait_visible(&new, acked).await.unwrap();
    let mut want: Vec<String> = (0..5).map(|i| format!("e-{i}")).collect();
    want.extend((0..2).map(|i| format!("n-{i}")));
    want.sort();
    assert_eq!(ids(&catalog, &tenant).await, want);
    // The window after the restart is the new tenant's: its ids are retries now.
    let retry = ingest.submit(&new, events("e", 5)).await.unwrap();
    assert_eq!((retry.stored, retry.duplicates), (0, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_a_deleted_tenant_is_never_committed_into_its_successor() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[("ingest.flush_interval_ms", "300")]);
    let catalog = Catalog::open(&cfg).await.unwrap();
    let tenant = TenantId::parse("again").unwrap();
    let old = create(&catalog, &tenant).await;
    let ingest = Ingest::start(catalog.clone(), &cfg, tokio::runtime::Handle::current())
        .await
        .unwrap();
    // Buffered in the old incarnation's batcher, then the id changes hands before the flush.
    ingest.submit(&old, events("old", 3)).await.unwrap();
    catalog.delete_tenant(&tenant, true, "test").await.unwrap();
    let new = create(&catalog, &tenant).await;
    ingest.submit(&new, events("new", 2)).await.unwrap();
    let acked = ingest.acked(&new);
    ingest.wait_visible(&new, acked).await.unwrap();
    // The old batch's flush found a table of another incarnation and dropped it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(ids(&catalog, &tenant).await, vec!["new-0", "new-1"]);
}

/// Stops a service gracefully and lets its log's writer let go of the folder.
async fn stop(ingest: Ingest) {
    ingest.shutdown(Duration::from_secs(5)).await;
    drop(ingest);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A restart accepts requests before it has read the ids the tables hold (reading them takes
/// seconds at millions of ids). A retry of a stored event sent in that time is acknowledged,
/// held back from the batchers, and left out before its commit; so is one still in the log
/// when the process dies before the window is loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_sent_while_the_window_loads_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[("ingest.flush_interval_ms", "20")]);
    let catalog = Catalog::open(&cfg).await.unwrap();
    let tenant = TenantId::parse("restarted").unwrap();
    let key = create(&catalog, &tenant).await;
    let here = tokio::runtime::Handle::current;
    let ev = |id: &str| {
        let mut e = events(id, 1);
        e[0].event_id = id.to_string();
        e.remove(0)
    };

    // Three events stored before the restart.
    let ingest = Ingest::start(catalog.clone(), &cfg, here()).await.unwrap();
    let first = ingest.submit(&key, events("a", 3)).await.unwrap();
    ingest.wait_visible(&key, first.lsn.unwrap()).await.unwrap();
    stop(ingest).await;

    // Started again; the window is not loaded yet. A request retrying a stored event (a-1)
    // with a new one (b) is acknowledged at once: only b's retry within this period is caught
    // at admission, and nothing is committed while the window loads.
    let ingest = Ingest::open(catalog.clone(), &cfg, here(), &[])
        .await
        .unwrap();
    let mixed = ingest.submit(&key, vec![ev("a-1"), ev("b")]).await.unwrap();
    assert_eq!((mixed.stored, mixed.duplicates, mixed.unchecked), (2, 0, 2));
    let again = ingest.submit(&key, vec![ev("b")]).await.unwrap();
    assert_eq!((again.stored, again.duplicates), (0, 1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ids(&catalog, &tenant).await, vec!["a-0", "a-1", "a-2"]);

    // Loaded: a-1 is found in both and left out of the held record; b is committed.
    let loaded = ingest.load_window().await.unwrap();
    assert_eq!((loaded.ids, loaded.retries_left_out), (3, 1));
    ingest.wait_visible(&key, mixed.lsn.unwrap()).await.unwrap();
    assert_eq!(ids(&catalog, &tenant).await, vec!["a-0", "a-1", "a-2", "b"]);
    // From now on a retry of a stored event is caught at admission.
    let late = ingest.submit(&key, vec![ev("a-2"), ev("b")]).await.unwrap();
    assert_eq!((late.stored, late.duplicates, late.unchecked), (0, 2, 0));
    stop(ingest).await;

    // Started again and dies before its window is loaded: the acknowledged record (a retry
    // of a-0, a new c) is in the log. The next start replays it and checks it the same way.
    let ingest = Ingest::open(catalog.clone(), &cfg, here(), &[])
        .await
        .unwrap();
    let held = ingest.submit(&key, vec![ev("a-0"), ev("c")]).await.unwrap();
    assert_eq!((held.stored, held.unchecked), (2, 2));
    drop(ingest);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ingest = Ingest::start(catalog.clone(), &cfg, here()).await.unwrap();
    ingest.wait_visible(&key, held.lsn.unwrap()).await.unwrap();
    assert_eq!(
        ids(&catalog, &tenant).await,
        vec!["a-0", "a-1", "a-2", "b", "c"]
    );
    // A record whose every event was such a retry commits nothing, and is passed all the same.
    stop(ingest).await;
    let ingest = Ingest::open(catalog.clone(), &cfg, here(), &[])
        .await
        .unwrap();
    let only = ingest.submit(&key, vec![ev("c")]).await.unwrap();
    assert_eq!((only.stored, only.unchecked), (1, 1));
    let loaded = ingest.load_window().await.unwrap();
    assert_eq!(loaded.retries_left_out, 1);
    ingest.wait_visible(&key, only.lsn.unwrap()).await.unwrap();
    assert_eq!(
        ids(&catalog, &tenant).await,
        vec!["a-0", "a-1", "a-2", "b", "c"]
    );
}
