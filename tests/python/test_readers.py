"""Other engines read Floe's tables as they are: pyiceberg through the SQL catalog on
catalog.db, and DuckDB over the Parquet files of the current snapshot."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest
from pyiceberg.catalog.sql import SqlCatalog

FLOE = os.environ.get("FLOE_BIN")
COLUMNS = ["event_id", "tenant_id", "type", "version", "ts", "received_at", "user_id", "payload"]


def floe(data_dir, *args):
    out = subprocess.run([FLOE, "--data-dir", str(data_dir), *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, token, body, wait=True):
    req = urllib.request.Request(
        f"{url}/v1/events" + ("?wait=visible" if wait else ""),
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def floe_data(tmp_path_factory):
    assert FLOE and Path(FLOE).exists(), "FLOE_BIN must point at the floe binary (infra/test.sh sets it)"
    data = tmp_path_factory.mktemp("floe")
    tokens = {}
    for t in ["py-a", "py-b"]:
        floe(data, "tenant", "create", t)
        tokens[t] = floe(data, "token", "issue", "--tenant", t, "--role", "ingest").strip()
    port = free_port()
    log = open(data / "serve.log", "w")
    proc = subprocess.Popen([FLOE, "--data-dir", str(data), "serve", "--listen", f"127.0.0.1:{port}"], stderr=log)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=1)
            break
        except Exception:
            time.sleep(0.05)
    else:
        raise RuntimeError("floe serve did not start")
    expected = {}
    for t, n in [("py-a", 1200), ("py-b", 300)]:
        events = [
            {
                "event_id": f"{t}-{i}",
                "type": ["PageViewed", "PurchaseMade", "SensorReading"][i % 3],
                # Three days, out of order, all three timestamp forms.
                "timestamp": [1764150000 + (i * 7919) % 259200,
                              (1764150000 + (i * 7919) % 259200) * 1000,
                              "2025-11-27T12:00:00+00:00"][i % 3],
                "user_id": f"u-{i % 17}",
                "payload": {"page": f"/p/{i % 5}", "amount": i / 4},
            }
            for i in range(n)
        ]
        for k in range(0, n, 250):
            reply = post(url, tokens[t], events[k:k + 250])
            assert reply["accepted"] == len(events[k:k + 250])
            assert isinstance(reply["snapshot_id"], int)
        expected[t] = events
    yield data, expected
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def catalog(data):
    return SqlCatalog("floe", uri=f"sqlite:///{data}/catalog.db", warehouse=f"file://{data}/warehouse")


def test_pyiceberg_lists_tenant_namespaces_and_reads_events(floe_data):
    data, expected = floe_data
    cat = catalog(data)
    namespaces = sorted(ns[0] for ns in cat.list_namespaces())
    assert namespaces == ["py-a", "py-b"]
    for t, events in expected.items():
        assert cat.list_tables(t) == [(t, "events")]
        table = cat.load_table(f"{t}.events")
        spec = table.spec()
        assert [f.name for f in spec.fields] == ["ts_day"]
        arrow = table.scan().to_arrow()
        assert arrow.column_names == COLUMNS
        assert arrow.num_rows == len(events)
        assert sorted(arrow.column("event_id").to_pylist()) == sorted(e["event_id"] for e in events)
        assert set(arrow.column("tenant_id").to_pylist()) == {t}
        assert str(arrow.schema.field("ts").type) == "timestamp[us, tz=UTC]"
        # Payloads are JSON text, as sent.
        by_id = {e["event_id"]: e for e in events}
        for row in arrow.slice(0, 20).to_pylist():
            assert json.loads(row["payload"]) == by_id[row["event_id"]]["payload"]
        # Day partitions: a filter on ts prunes files.
        few = table.scan(row_filter="ts >= '2025-11-28T00:00:00+00:00'").to_arrow()
        assert 0 < few.num_rows < arrow.num_rows


def test_duckdb_reads_the_same_rows(floe_data):
    data, expected = floe_data
    cat = catalog(data)
    for t, events in expected.items():
        table = cat.load_table(f"{t}.events")
        files = [task.file.file_path.removeprefix("file://") for task in table.scan().plan_files()]
        assert files
        con = duckdb.connect()
        rel = con.sql(f"SELECT * FROM read_parquet({files!r}, hive_partitioning = false)")
        assert rel.columns == COLUMNS
        dd = dict(con.sql(
            f"SELECT type, count(*) FROM read_parquet({files!r}, hive_partitioning = false) GROUP BY type"
        ).fetchall())
        want = {}
        for e in events:
            want[e["type"]] = want.get(e["type"], 0) + 1
        assert dd == want
        floe_rows = floe(data, "sql", "--tenant", t, "--format", "csv",
                         "SELECT type, count(*) AS n FROM events GROUP BY type ORDER BY type")
        floe_counts = {line.split(",")[0]: int(line.split(",")[1]) for line in floe_rows.strip().splitlines()[1:]}
        assert floe_counts == want
        [(total, distinct)] = con.sql(
            f"SELECT count(*), count(DISTINCT event_id) FROM read_parquet({files!r}, hive_partitioning = false)"
        ).fetchall()
        assert total == distinct == len(events)
