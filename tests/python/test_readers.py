"""Other engines read Floe's tables as they are: pyiceberg through the SQL catalog (on
catalog.db, or on PostgreSQL and S3), and DuckDB over the Parquet files of the current snapshot."""

import json

import duckdb
import pytest
from conftest import floe, iceberg_catalog, local_files, post

COLUMNS = ["event_id", "tenant_id", "type", "version", "ts", "received_at", "user_id", "payload"]


@pytest.fixture(scope="module")
def floe_data(server):
    data = server.data
    expected = {}
    for t, n in [("py-a", 1200), ("py-b", 300)]:
        floe(data, "tenant", "create", t)
        token = server.token(t, "ingest")
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
            reply = post(server.url, token, events[k:k + 250])
            assert reply["accepted"] == len(events[k:k + 250])
            assert isinstance(reply["snapshot_id"], int)
        expected[t] = events
    return data, expected


def catalog(data):
    return iceberg_catalog(data)


def test_pyiceberg_lists_tenant_namespaces_and_reads_events(floe_data):
    data, expected = floe_data
    cat = catalog(data)
    namespaces = {ns[0] for ns in cat.list_namespaces()}
    assert {"py-a", "py-b"} <= namespaces
    for t, events in expected.items():
        names = sorted(n for _, n in cat.list_tables(t))
        # The audit log's table comes once the tenant has audited records (its queries, say).
        assert [n for n in names if n != "audit"] == ["daily_active_users", "events", "revenue_by_day", "top_pages"]
        if "audit" in names:
            assert cat.load_table(f"{t}.audit").properties["floe.table.kind"] == "audit"
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
        files = local_files(data, table)
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
