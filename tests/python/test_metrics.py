"""Prometheus metrics of `floe serve` and `floe compactor`: served on an address of their own
(never the public port), valid for `promtool check metrics`, and counting what was sent. The
Kafka worker's are checked in test_kafka.py."""

import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import FLOE, floe, free_port, post, process_env, start, statement, stop


def promtool():
    tool = os.environ.get("FLOE_PROMTOOL") or shutil.which("promtool")
    assert tool and os.path.exists(tool), \
        "promtool is missing: infra/test.sh installs it (Debian's prometheus package, unpacked)"
    return tool


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain"), r.headers
        return r.read().decode()


def lint(text):
    """`promtool check metrics` on a scrape: exit 0 (no errors, and no lint problems)."""
    out = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True)
    assert out.returncode == 0, f"promtool: {out.stdout}{out.stderr}\n--- scrape ---\n{text}"


def series(text):
    """{'name{labels}': value} of a scrape, labels as written."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def value(text, name, **labels):
    """The sum of `name`'s series whose labels include `labels`."""
    total = 0.0
    for key, v in series(text).items():
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?", key)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'([a-zA-Z_]+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == str(v2) for k, v2 in labels.items()):
            total += v
    return total


def present(text, name, **labels):
    """Whether a series of `name` with `labels` is in the scrape (whatever its value)."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return any(line.startswith(name) and line[len(name):len(name) + 1] in "{ " and all(w in line for w in want)
               for line in text.splitlines() if not line.startswith("#"))


def events(n, prefix):
    return [{"event_id": f"{prefix}-{i}", "type": "PageViewed", "user_id": f"u{i % 7}",
             "timestamp": 1_700_000_000 + i, "payload": {"page": f"/p{i % 5}"}} for i in range(n)]


def test_serve_metrics_count_what_was_sent(tmp_path):
    port = free_port()
    proc, srv = start(tmp_path, "--set", f"metrics.listen=127.0.0.1:{port}",
                      "--set", "metrics.max_tenant_labels=2")
    try:
        for t in ("m1", "m2", "m3"):
            floe(tmp_path, "tenant", "create", t)
        token = srv.token("m1", "ingest")
        # 250 new events, 50 sent again, 3 rejected (no type), in three requests.
        assert post(srv.url, token, events(200, "a"))["accepted"] == 200
        reply = post(srv.url, token, events(50, "a") + events(50, "b"))
        assert reply["accepted"] == 100 and reply["duplicates"] == 50, reply
        bad = [{"event_id": f"bad-{i}", "user_id": "u", "timestamp": 1_700_000_000} for i in range(3)]
        req = urllib.request.Request(f"{srv.url}/v1/events", data=__import__("json").dumps(bad).encode(),
                                     method="POST", headers={"Authorization": f"Bearer {token}",
                                                             "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=30)
        assert refused.value.code == 400
        # The other tenants: m2 gets a label, m3 is past the cap of two.
        for t in ("m2", "m3"):
            assert post(srv.url, srv.token(t, "ingest"), events(7, t))["accepted"] == 7
        body = statement(srv, srv.token("m1", "analyst"), "SELECT count(DISTINCT event_id) FROM events")
        assert body.get("data") == [[250]], body
        body = statement(srv, srv.token("m1", "analyst"), "SELECT nope FROM events")
        assert "error" in body

        text = scrape(port)
        lint(text)
        assert value(text, "floe_ingest_events_total", tenant="m1", outcome="accepted") == 250
        assert value(text, "floe_ingest_events_total", tenant="m1", outcome="duplicate") == 50
        assert value(text, "floe_ingest_events_total", tenant="m1", outcome="rejected") == 3
        assert value(text, "floe_ingest_rejections_total", tenant="m1") == 3
        assert value(text, "floe_ingest_requests_total", tenant="m1", status="200") == 2
        assert value(text, "floe_ingest_requests_total", tenant="m1", status="400") == 1
        assert value(text, "floe_ingest_events_total", tenant="m2", outcome="accepted") == 7
        assert value(text, "floe_ingest_events_total", tenant="_other", outcome="accepted") == 7
        assert 'tenant="m3"' not in text, "m3 is past the label cap"
        # Everything sent with ?wait=visible is committed by now.
        assert value(text, "floe_ingest_committed_events_total") == 264
        assert value(text, "floe_ingest_time_to_visible_seconds_count") >= 1
        assert value(text, "floe_ingest_commit_seconds_count") >= 1
        assert value(text, "floe_wal_fsync_seconds_count") >= 4
        # The active segment is never deleted: the log holds bytes.
        assert present(text, "floe_wal_depth_bytes") and value(text, "floe_wal_depth_bytes") > 0
        assert value(text, "floe_ingest_request_bytes_count") == 5
        assert value(text, "floe_queries_total", tenant="m1", outcome="finished") == 1
        assert value(text, "floe_queries_total", tenant="m1", outcome="failed") == 1
        assert value(text, "floe_query_rows_total", tenant="m1") == 1
        assert value(text, "floe_query_scanned_bytes_total", tenant="m1") > 0
        assert value(text, "floe_query_seconds_count") == 2

        # The figures move as events arrive.
        assert post(srv.url, token, events(20, "c"))["accepted"] == 20
        later = scrape(port)
        assert value(later, "floe_ingest_events_total", tenant="m1", outcome="accepted") == 270
        assert value(later, "floe_ingest_committed_events_total") == 284

        # The projections catch up with the commits: m1's lag is shown, and reads 0 once
        # nothing waits (the refresher runs seconds after each commit).
        deadline = time.monotonic() + 30
        while not (present(later, "floe_projection_lag_seconds", tenant="m1")
                   and value(later, "floe_projection_lag_seconds", tenant="m1") == 0):
            assert time.monotonic() < deadline, [l for l in later.splitlines() if "projection_lag" in l]
            time.sleep(0.5)
            later = scrape(port)
        assert not present(later, "floe_projection_lag_seconds", tenant="_other"), "gauges: labelled tenants only"

        # Never on the public port.
        with pytest.raises(urllib.error.HTTPError) as public:
            urllib.request.urlopen(f"{srv.url}/metrics", timeout=5)
        assert public.value.code == 404
    finally:
        stop(proc)


def test_quota_rejections_are_counted_by_quota(tmp_path):
    port = free_port()
    proc, srv = start(tmp_path, "--set", f"metrics.listen=127.0.0.1:{port}",
                      "--set", "quota.ingest_events_per_sec=10", "--set", "quota.burst_secs=1")
    try:
        floe(tmp_path, "tenant", "create", "q1")
        token = srv.token("q1", "ingest")
        assert post(srv.url, token, events(30, "debt"), wait=False)["accepted"] == 30
        with pytest.raises(urllib.error.HTTPError) as refused:
            post(srv.url, token, events(5, "more"), wait=False)
        assert refused.value.code == 429
        text = scrape(port)
        lint(text)
        assert value(text, "floe_quota_rejections_total", tenant="q1",
                     quota="ingest_events_per_sec") == 1
        assert value(text, "floe_ingest_requests_total", tenant="q1", status="429") == 1
    finally:
        stop(proc)


def test_compactor_metrics(tmp_path):
    """`floe compactor --metrics-listen`: files and bytes in and out of its rewrites, the
    snapshots a table keeps."""
    proc, srv = start(tmp_path, "--set", "compaction.interval_secs=0")
    try:
        floe(tmp_path, "tenant", "create", "c1")
        token = srv.token("c1", "ingest")
        for i in range(4):
            assert post(srv.url, token, events(50, f"f{i}"))["accepted"] == 50
    finally:
        stop(proc)
    port = free_port()
    log = open(tmp_path / "compactor.log", "a")
    compactor = subprocess.Popen(
        [FLOE, "--data-dir", str(tmp_path), "--set", "compaction.interval_secs=1",
         "compactor", "--metrics-listen", f"127.0.0.1:{port}"],
        stderr=log, env=process_env(tmp_path))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                text = scrape(port)
                if value(text, "floe_compaction_files_total", stage="input") >= 4 \
                        and value(text, "floe_table_snapshots", tenant="c1", table="events") > 0:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "the compactor's metrics never showed its rewrite"
            time.sleep(0.5)
        lint(text)
        assert value(text, "floe_compaction_files_total", stage="output") == 1
        assert value(text, "floe_compaction_bytes_total", stage="input") > 0
        assert value(text, "floe_compaction_bytes_total", stage="output") > 0
        assert value(text, "floe_compaction_rewrite_seconds_count") >= 1
    finally:
        compactor.terminate()
        compactor.wait(timeout=30)
