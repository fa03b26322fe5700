//! End-to-end tests of the `floe` binary on embedded defaults: HTTP ingest through the
//! write-ahead log into per-tenant Iceberg tables, read back with `floe sql`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "e2e/data_safety.rs"]
mod data_safety;

use std::collections::BTreeMap;
use std::process::Command;

use common::*;
use serde_json::{Value, json};

fn events_json(prefix: &str, n: usize, start: usize) -> Vec<Value> {
    (start..start + n)
        .map(|i| {
            json!({
                "event_id": format!("{prefix}-{i}"),
                "type": if i % 3 == 0 { "PurchaseMade" } else { "PageViewed" },
                "timestamp": 1_764_150_000 + (i as i64 * 7919) % 200_000,
                "user_id": format!("u-{}", i % 50),
                "payload": {"page": "/home", "amount": i},
            })
        })
        .collect()
}

fn barrier(url: &str, token: &str) -> Value {
    let r = post_events(url, token, "application/json", b"[]", false, true);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn count(dir: &std::path::Path, tenant: &str) -> (u64, u64) {
    let rows = sql_rows(
        dir,
        tenant,
        "SELECT count(*), count(DISTINCT event_id) FROM events",
    );
    (rows[0][0].parse().unwrap(), rows[0][1].parse().unwrap())
}

#[test]
fn three_tenants_via_floe_gen_store_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let out = command(dir.path())
        .args([
            "gen",
            "--url",
            &server.url,
            "--tenants",
            "gen-a,gen-b,gen-c",
            "--events",
            "50000",
            "--batch",
            "500",
            "--duplicates",
            "0.01",
            "--format",
            "mixed",
            "--concurrency",
            "4",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rejected"], 0);
    assert!(report["duplicates"].as_u64().unwrap() >= 1500, "{report}");
    assert!(report["visible_samples"].as_u64().unwrap() > 0);

    for tenant in ["gen-a", "gen-b", "gen-c"] {
        let token = floe(
            dir.path(),
            &["token", "issue", "--tenant", tenant, "--role", "ingest"],
        );
        barrier(&server.url, token.trim());
        let expected: BTreeMap<String, u64> =
            serde_json::from_value(report["tenants"][tenant]["by_type"].clone()).unwrap();
        let got: BTreeMap<String, u64> = sql_rows(
            dir.path(),
            tenant,
            "SELECT type, count(*) FROM events GROUP BY type ORDER BY type",
        )
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse().unwrap()))
        .collect();
        assert_eq!(got, expected, "per-type counts of {tenant}");
        let (n, distinct) = count(dir.path(), tenant);
        assert_eq!(n, distinct, "duplicate event ids stored for {tenant}");
        assert_eq!(n, report["tenants"][tenant]["distinct"].as_u64().unwrap());
        // Only this tenant's rows are visible to it.
        let tenants = sql_rows(dir.path(), tenant, "SELECT DISTINCT tenant_id FROM events");
        assert_eq!(tenants, vec![vec![tenant.to_string()]]);
    }
}

#[test]
fn kill_9_after_acknowledgements_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let token = setup_tenant(dir.path(), "crash", "ingest");
    // Phase 1: batches are acknowledged (in the log) but never committed before the kill.
    let server = Server::start(
        dir.path(),
        &[
            "--set",
            "ingest.flush_interval_ms=600000",
            "--set",
            "ingest.flush_max_rows=10000000",
        ],
    );
    let port = server.port;
    let mut batches = Vec::new();
    for b in 0..20 {
        let body = serde_json::to_vec(&events_json("p1", 100, b * 100)).unwrap();
        let r = post_events(&server.url, &token, "application/json", &body, false, false);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["accepted"], 100);
        batches.push(body);
    }
    server.kill9();
    assert_eq!(
        count(dir.path(), "crash").0,
        0,
        "nothing was committed before the kill"
    );

    // Restart: the log is replayed and committed exactly once.
    let server = Server::start_on(dir.path(), port, &[]);
    let v = barrier(&server.url, &token);
    assert!(v["snapshot_id"].is_i64(), "{v}");
    assert_eq!(count(dir.path(), "crash"), (2000, 2000));

    // Re-sending an acknowledged batch stores nothing new (de-duplication survives restarts).
    let r = post_events(
        &server.url,
        &token,
        "application/json",
        &batches[3],
        false,
        true,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["duplicates"], 100);
    assert_eq!(count(dir.path(), "crash"), (2000, 2000));

    // Phase 2: normal flushing, killed right after the last acknowledgement.
    for b in 0..20 {
        let body = events_json("p2", 100, b * 100)
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        let r = post_events(
            &server.url,
            &token,
            "application/x-ndjson",
            &gzip(body.as_bytes()),
            true,
            false,
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    server.kill9();
    let server = Server::start_on(dir.path(), port, &[]);
    barrier(&server.url, &token);
    assert_eq!(count(dir.path(), "crash"), (4000, 4000));
    drop(server);

    // A graceful restart after that keeps the count too.
    let server = Server::start_on(dir.path(), port, &[]);
    barrier(&server.url, &token);
    assert_eq!(count(dir.path(), "crash"), (4000, 4000));
}

#[test]
fn bad_input_gets_documented_statuses_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let token = setup_tenant(dir.path(), "strict", "ingest");
    let other = setup_tenant(dir.path(), "someone-else", "ingest");
    let viewer = floe(
        dir.path(),
        &["token", "issue", "--tenant", "strict", "--role", "viewer"],
    );
    let server = Server::start(dir.path(), &[]);
    let url = &server.url;
    let ok =
        json!({"event_id": "keep-1", "type": "PageViewed", "timestamp": "2025-11-26T10:00:00Z"});
    let r = post_events(
        url,
        &token,
        "application/json",
        ok.to_string().as_bytes(),
        false,
        true,
    );
    assert_eq!(r.status, 200, "{}", r.body);

    let code = |r: &http::Response| r.json()["error"]["code"].as_str().unwrap_or("").to_string();

    // Malformed and truncated bodies.
    let r = post_events(
        url,
        &token,
        "application/json",
        br#"[{"type":"A","timestamp":1"#,
        false,
        false,
    );
    assert_eq!((r.status, code(&r).as_str()), (400, "malformed_body"));
    let r = post_events(
        url,
        &token,
        "application/json",
        b"\x1f\x8bnot gzip",
        true,
        false,
    );
    assert_eq!((r.status, code(&r).as_str()), (400, "malformed_body"));

    // Wrong types and missing fields: every event rejected, each named.
    let body = json!([
        {"type": 5, "timestamp": 1},
        {"timestamp": 1},
        {"type": "A"},
        {"type": "A", "timestamp": "soon"},
    ]);
    let r = post_events(
        url,
        &token,
        "application/json",
        body.to_string().as_bytes(),
        false,
        false,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let codes: Vec<String> = r.json()["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["code"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        codes,
        [
            "invalid_type",
            "missing_field",
            "missing_field",
            "invalid_timestamp"
        ]
    );

    // A mixed batch stores its valid events.
    let body = json!([
        {"event_id": "keep-2", "type": "A", "timestamp": 1764150000123i64},
        {"event_id": "bad-1", "type": "A"},
    ]);
    let r = post_events(
        url,
        &token,
        "application/json",
        body.to_string().as_bytes(),
        false,
        false,
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["accepted"], 1);
    assert_eq!(v["rejected"][0]["index"], 1);
    assert_eq!(v["rejected"][0]["event_id"], "bad-1");

    // Another tenant named in the body.
    let body = json!({"type": "A", "timestamp": 1, "tenant_id": "someone-else"});
    let r = post_events(
        url,
        &token,
        "application/json",
        body.to_string().as_bytes(),
        false,
        false,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["rejected"][0]["code"], "tenant_mismatch");

    // Too large: 20 MiB body, and the same compressed (limit applies after decompression).
    let big = format!(
        "[{}]",
        vec![r#"{"type":"A","timestamp":1}"#; 800_000].join(",")
    );
    assert!(big.len() > 20 << 20);
    let r = post_events(
        url,
        &token,
        "application/json",
        big.as_bytes(),
        false,
        false,
    );
    assert_eq!((r.status, code(&r).as_str()), (413, "request_too_large"));
    let r = post_events(
        url,
        &token,
        "application/json",
        &gzip(big.as_bytes()),
        true,
        false,
    );
    assert_eq!((r.status, code(&r).as_str()), (413, "request_too_large"));
    let many = format!(
        "[{}]",
        vec![r#"{"type":"A","timestamp":1}"#; 10_001].join(",")
    );
    let r = post_events(
        url,
        &token,
        "application/json",
        many.as_bytes(),
        false,
        false,
    );
    assert_eq!((r.status, code(&r).as_str()), (413, "too_many_events"));

    // Content types and encodings.
    let r = post_events(
        url,
        &token,
        "text/plain",
        ok.to_string().as_bytes(),
        false,
        false,
    );
    assert_eq!(
        (r.status, code(&r).as_str()),
        (415, "unsupported_media_type")
    );

    // Tokens: missing, forged, expired, wrong role.
    let auth_status = |auth: Option<&str>| {
        let h = auth.map(|a| format!("Bearer {a}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(h) = &h {
            headers.push(("Authorization", h.as_str()));
        }
        let r = http::request(
            "POST",
            &format!("{url}/v1/events"),
            &headers,
            ok.to_string().as_bytes(),
        )
        .unwrap();
        assert!(r.json()["error"]["message"].is_string(), "{}", r.body);
        r.status
    };
    assert_eq!(auth_status(None), 401);
    // Flip a character in the middle of the signature (not the last, whose low bits are padding).
    let mut forged: Vec<char> = token.chars().collect();
    let at = forged.len() - 10;
    forged[at] = if forged[at] == 'x' { 'y' } else { 'x' };
    let forged: String = forged.into_iter().collect();
    assert_eq!(auth_status(Some(&forged)), 401);
    assert_eq!(auth_status(Some("not.a.jwt")), 401);
    let short = floe(
        dir.path(),
        &[
            "token", "issue", "--tenant", "strict", "--role", "ingest", "--ttl", "1s",
        ],
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(auth_status(Some(short.trim())), 401);
    assert_eq!(auth_status(Some(viewer.trim())), 403);
    // A token of another data dir's key is forged too.
    let elsewhere = tempfile::tempdir().unwrap();
    let foreign = setup_tenant(elsewhere.path(), "strict", "ingest");
    assert_eq!(auth_status(Some(&foreign)), 401);
    let _ = other;

    // Nothing accepted was lost along the way.
    barrier(url, &token);
    let ids = sql_rows(
        dir.path(),
        "strict",
        "SELECT event_id FROM events ORDER BY event_id",
    );
    assert_eq!(
        ids,
        vec![vec!["keep-1".to_string()], vec!["keep-2".to_string()]]
    );
}

#[test]
fn sql_sees_only_the_callers_tenant_and_prints_formats() {
    let dir = tempfile::tempdir().unwrap();
    let a = setup_tenant(dir.path(), "alpha", "ingest");
    setup_tenant(dir.path(), "beta", "ingest");
    let server = Server::start(dir.path(), &[]);
    let body = serde_json::to_vec(&events_json("a", 10, 0)).unwrap();
    assert_eq!(
        post_events(&server.url, &a, "application/json", &body, false, true).status,
        200
    );

    let csv = floe(
        dir.path(),
        &[
            "sql",
            "--tenant",
            "alpha",
            "--format",
            "csv",
            "SELECT count(*) AS n FROM events",
        ],
    );
    assert_eq!(csv, "n\n10\n");
    let json = floe(
        dir.path(),
        &[
            "sql",
            "--tenant",
            "alpha",
            "--format",
            "json",
            "SELECT count(*) AS n FROM events",
        ],
    );
    assert_eq!(json.trim(), r#"{"n":10}"#);
    let table = floe(
        dir.path(),
        &[
            "sql",
            "--tenant",
            "alpha",
            "SELECT count(*) AS n FROM events",
        ],
    );
    assert!(
        table.contains("| n  |") && table.contains("| 10 |"),
        "{table}"
    );

    let schemas = sql_rows(
        dir.path(),
        "alpha",
        "SELECT DISTINCT table_catalog, table_schema FROM information_schema.tables WHERE table_schema <> 'information_schema'",
    );
    assert_eq!(schemas, vec![vec!["floe".to_string(), "alpha".to_string()]]);
    for query in [
        "SELECT * FROM beta.events",
        "SELECT * FROM floe.beta.events",
    ] {
        let out = command(dir.path())
            .args(["sql", "--tenant", "alpha", query])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not found")
                || err.contains("doesn't exist")
                || err.contains("does not exist"),
            "{err}"
        );
    }
    // Writes are refused.
    let out = command(dir.path())
        .args(["sql", "--tenant", "alpha", "DROP TABLE events"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // The column names of the table, in order.
    let cols = sql_rows(
        dir.path(),
        "alpha",
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'events' ORDER BY ordinal_position",
    );
    let cols: Vec<&str> = cols.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        cols,
        [
            "event_id",
            "tenant_id",
            "type",
            "version",
            "ts",
            "received_at",
            "user_id",
            "payload"
        ]
    );
}

#[test]
fn tenant_commands_work_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    floe(dir.path(), &["tenant", "create", "late-1"]);
    // The running server accepts the new tenant at once.
    let t = floe(
        dir.path(),
        &["token", "issue", "--tenant", "late-1", "--role", "ingest"],
    );
    let body = serde_json::to_vec(&events_json("late", 3, 0)).unwrap();
    let r = post_events(
        &server.url,
        t.trim(),
        "application/json",
        &body,
        false,
        true,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(count(dir.path(), "late-1"), (3, 3));
    floe(dir.path(), &["tenant", "create", "late-0"]);
    assert_eq!(floe(dir.path(), &["tenant", "list"]), "late-0\nlate-1\n");
    let out = command(dir.path())
        .args(["tenant", "create", "late-1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = command(dir.path())
        .args(["tenant", "create", "Bad/Id"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // A second server on the same data dir refuses to start: the log has one writer.
    let out = command(dir.path())
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another process is using the write-ahead log"),
        "{err}"
    );
    // The key is created once, owner-only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("signing.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A token printed by `token issue` is just the JWT.
    let t = floe(
        dir.path(),
        &[
            "token", "issue", "--tenant", "late-1", "--role", "admin", "--ttl", "15m",
        ],
    );
    assert_eq!(t.trim().split('.').count(), 3);
    assert_eq!(t.lines().count(), 1);
}

#[test]
fn sigterm_commits_buffered_events_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let token = setup_tenant(dir.path(), "calm", "ingest");
    // A flush interval long enough that only the shutdown itself can commit, and the
    // maintenance schedule on (every second): it stops with everything else.
    let mut server = Server::start(
        dir.path(),
        &[
            "--set",
            "ingest.flush_interval_ms=600000",
            "--set",
            "compaction.interval_secs=1",
        ],
    );
    let body = serde_json::to_vec(&events_json("t", 300, 0)).unwrap();
    let r = post_events(&server.url, &token, "application/json", &body, false, false);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(count(dir.path(), "calm").0, 0);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let term = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    // Bounded so that a service that ignores the stop fails the test instead of hanging it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "floe serve did not stop on SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "floe serve exited with {status}");
    assert_eq!(count(dir.path(), "calm"), (300, 300));
}

/// `floe compact` output: the files and partitions of `<tenant>.events` before it ran.
fn files_and_partitions(out: &str, tenant: &str) -> (u64, u64) {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{tenant}.events: ")))
        .unwrap_or_else(|| panic!("no plan line for {tenant} in {out}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let files = words[1].parse().unwrap();
    let at = words.iter().position(|w| *w == "in").unwrap();
    (files, words[at + 1].parse().unwrap())
}

#[test]
fn compaction_keeps_every_row_while_ingest_runs() {
    let dir = tempfile::tempdir().unwrap();
    let token = setup_tenant(dir.path(), "tidy", "ingest");
    let server = Server::start(dir.path(), &["--set", "ingest.flush_interval_ms=50"]);
    // Many small commits, each touching three or four day partitions.
    for b in 0..40 {
        let body = serde_json::to_vec(&events_json("a", 50, b * 50)).unwrap();
        let r = post_events(&server.url, &token, "application/json", &body, false, true);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let checksum = "SELECT count(*), count(DISTINCT event_id), sum(length(payload)), \
                    min(ts), max(ts) FROM events WHERE event_id LIKE 'a-%'";
    let before = sql_rows(dir.path(), "tidy", checksum);
    let plan = floe(dir.path(), &["compact", "--dry-run"]);
    let (files, partitions) = files_and_partitions(&plan, "tidy");
    assert!(files > 40, "expected many small files: {plan}");

    // Compaction while ingest keeps committing: nothing acknowledged is lost or doubled.
    let url = server.url.clone();
    let writer_token = token.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_writer = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut acknowledged = 0;
        // 60 batches, or fewer if compaction finishes first (bounded: a table that commits
        // without pause can keep a compactor losing every race, by design).
        for b in 0..60 {
            if b >= 20 && stop_writer.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let body = serde_json::to_vec(&events_json("b", 50, b * 50)).unwrap();
            let r = post_events(&url, &writer_token, "application/json", &body, false, false);
            assert_eq!(r.status, 200, "{}", r.body);
            acknowledged += r.json()["accepted"].as_u64().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        acknowledged
    });
    let out = floe(dir.path(), &["compact", "--tenant", "tidy"]);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(out.contains("compacted: "), "{out}");
    assert!(
        !out.contains(" 0 bins committed"),
        "no bin landed under ingest: {out}"
    );
    let acknowledged = writer.join().unwrap();
    barrier(&server.url, &token);
    assert_eq!(
        count(dir.path(), "tidy"),
        (2000 + acknowledged, 2000 + acknowledged)
    );
    assert_eq!(sql_rows(dir.path(), "tidy", checksum), before);

    // Once ingest is quiet, a second pass leaves one file per partition.
    floe(dir.path(), &["compact"]);
    let plan = floe(dir.path(), &["compact", "--dry-run"]);
    let (files_after, partitions_after) = files_and_partitions(&plan, "tidy");
    assert!(partitions_after >= partitions);
    assert_eq!(files_after, partitions_after, "{plan}");
    assert!(plan.contains("0 bins"), "{plan}");
    assert_eq!(
        count(dir.path(), "tidy"),
        (2000 + acknowledged, 2000 + acknowledged)
    );
    assert_eq!(sql_rows(dir.path(), "tidy", checksum), before);
    drop(server);
}

/// The `THP_enabled` line of a process' status: 0 when transparent huge pages are off for it.
#[cfg(target_os = "linux")]
fn thp_enabled(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .unwrap_or_else(|| panic!("no THP_enabled in /proc/{pid}/status:\n{status}"))
        .trim()
        .to_string()
}

#[test]
#[cfg(target_os = "linux")]
fn the_server_runs_without_transparent_huge_pages_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    assert_eq!(thp_enabled(server.child.id()), "0");
    drop(server);

    // mimalloc's own switch keeps them.
    let kept = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = command(kept.path());
    cmd.env("MIMALLOC_ALLOW_THP", "1")
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")]);
    let server = Server::spawn(cmd, kept.path(), port);
    assert_eq!(thp_enabled(server.child.id()), "1");
}
