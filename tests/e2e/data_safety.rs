//! Data safety of the write path: a damaged write-ahead log never loses acknowledged events
//! without an error that says so, and a tenant deleted and created again starts clean.

use super::{barrier, count, events_json};
use crate::common::*;

/// The newest log segment of a data dir.
fn newest_segment(dir: &std::path::Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segs.sort();
    segs.pop().expect("a log segment")
}

/// Acknowledges 3,000 events in 30 requests that are never committed, then SIGKILL.
fn acknowledged_then_killed(dir: &std::path::Path, token: &str) -> u16 {
    let server = Server::start(
        dir,
        &[
            "--set",
            "ingest.flush_interval_ms=600000",
            "--set",
            "ingest.flush_max_rows=10000000",
        ],
    );
    let port = server.port;
    for b in 0..30 {
        let body = serde_json::to_vec(&events_json("d", 100, b * 100)).unwrap();
        let r = post_events(&server.url, token, "application/json", &body, false, false);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    server.kill9();
    port
}

#[test]
fn a_damaged_log_stops_the_start_and_names_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let token = setup_tenant(dir.path(), "damaged", "ingest");
    let port = acknowledged_then_killed(dir.path(), &token);

    // One byte flipped in the middle of the newest segment: records follow the damage.
    let segment = newest_segment(dir.path());
    let name = segment.file_name().unwrap().to_string_lossy().into_owned();
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&segment, &bytes).unwrap();

    // The start is refused, naming the segment, the offset and what follows.
    let mut child = command(dir.path())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve started on a damaged log");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!status.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&name), "{err}");
    assert!(err.contains("damaged at offset"), "{err}");
    assert!(err.contains("readable records follow"), "{err}");
    let token_arg = err
        .split("--accept-wal-loss ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no --accept-wal-loss in: {err}"))
        .to_string();
    assert!(token_arg.starts_with(&format!("{name}@")), "{token_arg}");

    // `floe wal check` reports the same, exits non-zero, and changes nothing.
    let check = command(dir.path()).args(["wal", "check"]).output().unwrap();
    assert!(!check.status.success());
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(report.contains("DAMAGED"), "{report}");
    assert_eq!(std::fs::read(&segment).unwrap(), bytes);

    // Accepting the named loss starts the server: the one unreadable record (one request of
    // 100 events) is lost, every other acknowledged event is committed, and the loss is in
    // the audit log.
    let server = Server::start_serving(dir.path(), port, &[], &["--accept-wal-loss", &token_arg]);
    barrier(&server.url, &token);
    assert_eq!(count(dir.path(), "damaged"), (2900, 2900));
    drop(server);
    let audit = catalog_rows(
        dir.path(),
        "SELECT detail FROM floe_audit WHERE action = 'wal.loss_accepted'",
    );
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert!(audit[0].contains(&name), "{audit:?}");

    // The repaired log starts without the flag, and loses nothing more.
    let server = Server::start_on(dir.path(), port, &[]);
    barrier(&server.url, &token);
    assert_eq!(count(dir.path(), "damaged"), (2900, 2900));
}

#[test]
fn a_torn_tail_is_cut_and_every_acknowledged_event_kept() {
    let dir = tempfile::tempdir().unwrap();
    let token = setup_tenant(dir.path(), "torn", "ingest");
    let port = acknowledged_then_killed(dir.path(), &token);
    // What a crash in the middle of the next write leaves: a partial record at the end.
    let segment = newest_segment(dir.path());
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[0x40, 0x01, 0, 0, 0x11, 0x22, 0x33]);
    std::fs::write(&segment, &bytes).unwrap();
    let server = Server::start_on(dir.path(), port, &[]);
    barrier(&server.url, &token);
    assert_eq!(count(dir.path(), "torn"), (3000, 3000));
}

#[test]
fn a_tenant_deleted_and_created_again_stores_what_it_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--set", "ingest.flush_interval_ms=50"]);
    let first = setup_tenant(dir.path(), "b", "ingest");
    let body = serde_json::to_vec(&events_json("same", 5, 0)).unwrap();
    let r = post_events(&server.url, &first, "application/json", &body, false, true);
    assert_eq!(r.json()["accepted"], 5);
    assert_eq!(count(dir.path(), "b"), (5, 5));

    // Deleted with its data, created again while the server runs.
    floe(dir.path(), &["tenant", "delete", "b", "--purge"]);
    let second = setup_tenant(dir.path(), "b", "ingest");
    assert_eq!(
        post_events(&server.url, &first, "application/json", b"[]", false, false).status,
        401,
        "the old tenant's token reaches the new one"
    );

    // The same event ids are new events for the new tenant: stored, not "duplicates".
    let r = post_events(&server.url, &second, "application/json", &body, false, true);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["accepted"], 5, "{}", r.body);
    assert_eq!(r.json()["duplicates"], 0, "{}", r.body);
    assert_eq!(count(dir.path(), "b"), (5, 5));
    // Retried within the new tenant, they are duplicates as usual.
    let r = post_events(&server.url, &second, "application/json", &body, false, true);
    assert_eq!(r.json()["duplicates"], 5, "{}", r.body);
    assert_eq!(count(dir.path(), "b"), (5, 5));
}
