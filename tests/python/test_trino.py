"""SQL over the Trino client protocol, through the real `trino` Python client: DBAPI with JWT
and Basic credentials, SQLAlchemy reflection, pandas; results compared with DuckDB over the same
Parquet files; tenant isolation and refused statements. The official JavaScript client (npm
`trino-client`, installed by infra/test.sh into tests/js) must get the same rows."""

import json
import shutil
import subprocess
import time
from pathlib import Path
from datetime import datetime, timedelta, timezone

import duckdb
import pandas as pd
import pytest
import sqlalchemy
import trino
from trino.auth import BasicAuthentication, JWTAuthentication

from conftest import catalog_rows, floe, iceberg_catalog, local_files, post, request, statement

TENANTS = ["tq-main", "tq-other"]


@pytest.fixture(scope="module")
def loaded(server):
    for t in TENANTS:
        floe(server.data, "tenant", "create", t)
    # Synthetic events of the four demo types, then a barrier so all are visible.
    floe(server.data, "gen", "--url", server.url, "--tenants", ",".join(TENANTS), "--events", "30000",
         "--no-probe", "--concurrency", "4")
    for t in TENANTS:
        post(server.url, server.token(t, "ingest"), [])  # barrier: everything acknowledged is visible
    return server


def connect(server, tenant, role="analyst", basic=False, **kw):
    token = server.token(tenant, role)
    auth = BasicAuthentication("someone", token) if basic else JWTAuthentication(token)
    return trino.dbapi.connect(host="127.0.0.1", port=server.port, user="someone", catalog="floe",
                               schema=tenant, http_scheme="http", allow_insecure_auth=True, auth=auth, **kw)


def run(server, tenant, sql, **kw):
    cur = connect(server, tenant, **kw).cursor()
    cur.execute(sql)
    return cur.fetchall(), cur.description


def duck(server, tenant, sql):
    files = local_files(server.data, iceberg_catalog(server.data).load_table(f"{tenant}.events"))
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet({files!r}, hive_partitioning = false)")
    return con.sql(sql).fetchall()


# Queries whose SQL both engines accept as written.
ANALYTICS = [
    "SELECT type, count(*) FROM events GROUP BY type ORDER BY type",
    "SELECT date_trunc('day', ts) AS d, count(DISTINCT user_id) FROM events GROUP BY 1 ORDER BY 1",
    "SELECT user_id, count(*) AS n FROM events GROUP BY user_id ORDER BY n DESC, user_id LIMIT 10",
    "SELECT date_trunc('hour', ts) AS h, count(*) FROM events WHERE type = 'PageViewed' GROUP BY 1 ORDER BY 1",
    "SELECT type, user_id, n, rank() OVER (PARTITION BY type ORDER BY n DESC, user_id) AS r FROM "
    "(SELECT type, user_id, count(*) AS n FROM events GROUP BY 1, 2) ORDER BY type, r LIMIT 20",
    "SELECT count(*) FROM (SELECT user_id FROM events WHERE type = 'PageViewed' INTERSECT "
    "SELECT user_id FROM events WHERE type = 'PurchaseMade')",
]


@pytest.mark.parametrize("sql", ANALYTICS)
def test_results_equal_duckdb(loaded, sql):
    rows, _ = run(loaded, "tq-main", sql)
    want = duck(loaded, "tq-main", sql)
    norm = lambda rs: [tuple(r) for r in rs]
    assert norm(rows) == norm(want)


def _utc_midnight(days_ago):
    day = datetime.now(timezone.utc).date() - timedelta(days=days_ago)
    return day.isoformat()


# Queries in Trino's dialect, each with the DuckDB query that means the same.
DIALECT = [
    # Revenue by day and currency, from the JSON payload.
    ("SELECT date(ts) AS d, json_extract_scalar(payload, '$.currency') AS c, "
     "sum(CAST(json_extract_scalar(payload, '$.amount') AS DECIMAL(12,2))) FROM events "
     "WHERE type = 'PurchaseMade' GROUP BY 1, 2 ORDER BY 1, 2",
     "SELECT CAST(ts AS DATE) AS d, json_extract_string(payload, '$.currency') AS c, "
     "sum(CAST(json_extract_string(payload, '$.amount') AS DECIMAL(12,2))) FROM events "
     "WHERE type = 'PurchaseMade' GROUP BY 1, 2 ORDER BY 1, 2"),
    # Top pages.
    ("SELECT json_extract_scalar(payload, '$.page') AS p, count(*) AS n FROM events "
     "WHERE type = 'PageViewed' GROUP BY 1 ORDER BY n DESC, p LIMIT 5",
     "SELECT json_extract_string(payload, '$.page') AS p, count(*) AS n FROM events "
     "WHERE type = 'PageViewed' GROUP BY 1 ORDER BY n DESC, p LIMIT 5"),
    # Hourly histogram and ISO day of week.
    ("SELECT hour(ts), day_of_week(ts), count(*) FROM events GROUP BY 1, 2 ORDER BY 1, 2",
     "SELECT hour(ts), isodow(ts), count(*) FROM events GROUP BY 1, 2 ORDER BY 1, 2"),
    # A funnel: viewers who bought, per referrer.
    ("SELECT json_extract_scalar(payload, '$.ref') AS r, count_if(type = 'PageViewed') FROM events "
     "WHERE user_id IN (SELECT user_id FROM events WHERE type = 'PurchaseMade') GROUP BY 1 ORDER BY 1",
     "SELECT json_extract_string(payload, '$.ref') AS r, count_if(type = 'PageViewed') FROM events "
     "WHERE user_id IN (SELECT user_id FROM events WHERE type = 'PurchaseMade') GROUP BY 1 ORDER BY 1"),
    # A time range with zoned literals.
    (f"SELECT count(*), count(DISTINCT user_id) FROM events WHERE ts >= TIMESTAMP '{_utc_midnight(1)} 00:00:00 UTC' "
     f"AND ts < TIMESTAMP '{_utc_midnight(0)} 00:00:00 UTC'",
     f"SELECT count(*), count(DISTINCT user_id) FROM events WHERE ts >= TIMESTAMPTZ '{_utc_midnight(1)} 00:00:00+00' "
     f"AND ts < TIMESTAMPTZ '{_utc_midnight(0)} 00:00:00+00'"),
    # Sensor readings: percentiles are exact here (approx_percentile is checked for range only).
    ("SELECT json_extract_scalar(payload, '$.sensor_id') AS s, count(*), "
     "round(max(CAST(json_extract_scalar(payload, '$.value') AS DOUBLE)), 6) FROM events "
     "WHERE type = 'SensorReading' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5",
     "SELECT json_extract_string(payload, '$.sensor_id') AS s, count(*), "
     "round(max(CAST(json_extract_string(payload, '$.value') AS DOUBLE)), 6) FROM events "
     "WHERE type = 'SensorReading' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5"),
]


@pytest.mark.parametrize("floe_sql,duck_sql", DIALECT)
def test_trino_dialect_equals_duckdb(loaded, floe_sql, duck_sql):
    rows, _ = run(loaded, "tq-main", floe_sql)
    want = duck(loaded, "tq-main", duck_sql)
    assert [tuple(r) for r in rows] == [tuple(r) for r in want]


def test_approximate_aggregates(loaded):
    (exact, approx, median), = run(
        loaded, "tq-main",
        "SELECT count(DISTINCT user_id), approx_distinct(user_id), "
        "approx_percentile(CAST(json_extract_scalar(payload, '$.value') AS DOUBLE), 0.5) "
        "FROM events")[0]
    assert abs(approx - exact) <= 0.05 * exact
    assert -40 <= median <= 60


def test_time_travel(loaded):
    tenant = "tq-travel"
    floe(loaded.data, "tenant", "create", tenant)
    token = loaded.token(tenant, "ingest")
    event = lambda i: {"event_id": f"tt-{i}", "type": "PageViewed", "timestamp": 1_763_164_800 + i,
                       "user_id": "u1", "payload": {"page": "/"}}
    post(loaded.url, token, [event(i) for i in range(5)])
    cat = iceberg_catalog(loaded.data)
    snap = cat.load_table(f"{tenant}.events").current_snapshot()
    time.sleep(0.05)
    post(loaded.url, token, [event(i) for i in range(5, 12)])
    count = lambda sql: run(loaded, tenant, sql)[0][0][0]
    assert count("SELECT count(*) FROM events") == 12
    assert count(f"SELECT count(*) FROM events FOR VERSION AS OF {snap.snapshot_id}") == 5
    at = datetime.fromtimestamp(snap.timestamp_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    assert count(f"SELECT count(*) FROM events FOR TIMESTAMP AS OF TIMESTAMP '{at} UTC'") == 5
    with pytest.raises(trino.exceptions.TrinoUserError) as e:
        run(loaded, tenant, "SELECT count(*) FROM events FOR VERSION AS OF 1")
    assert "snapshot" in e.value.message


def test_session_time_zone(loaded):
    rows, desc = run(loaded, "tq-main",
                     "SELECT TIMESTAMP '2025-06-01 12:00:00 UTC', CAST('2025-06-01 12:00:00' AS TIMESTAMP WITH TIME ZONE)",
                     timezone="Europe/Berlin")
    instant, local_noon = rows[0]
    assert instant == datetime(2025, 6, 1, 12, tzinfo=timezone.utc)
    assert instant.utcoffset() == timedelta(hours=2)  # shown in the session's zone
    assert local_noon == datetime(2025, 6, 1, 10, tzinfo=timezone.utc)  # read in the session's zone
    body = statement(loaded, loaded.token("tq-main", "analyst"), "SELECT 1",
                     {"X-Trino-Time-Zone": "Mars/Olympus"})
    assert body["error"]["errorName"] == "GENERIC_USER_ERROR"
    assert "Time zone" in body["error"]["message"]


def test_types_and_basic_auth(loaded):
    rows, desc = run(loaded, "tq-main",
                     "SELECT count(*) AS n, min(ts) AS first, CAST(1.5 AS DECIMAL(10,2)) AS d, "
                     "DATE '2025-01-01' AS day, true AS b FROM events", basic=True)
    types = [d[1] for d in desc]
    assert types == ["bigint", "timestamp(6) with time zone", "decimal(10,2)", "date", "boolean"]
    assert rows[0][0] >= 30000
    assert rows[0][1].tzinfo is not None


def test_large_results_stream_in_pages(loaded):
    cur = connect(loaded, "tq-main").cursor()
    cur.execute("SELECT event_id, payload FROM events")
    seen = 0
    while batch := cur.fetchmany(7000):
        seen += len(batch)
    assert seen == run(loaded, "tq-main", "SELECT count(*) FROM events")[0][0][0]


def test_statistics_say_where_the_time_went(loaded):
    """The last page's `stats` carry the query's elapsed time, the time its steps held a core
    and waited for one, and the bytes it read; `GET /v1/query/{id}` shows the same."""
    cur = connect(loaded, "tq-main").cursor()
    # Work enough for milliseconds of CPU: every event paired with 300 others.
    cur.execute("SELECT count(*), count(DISTINCT a.user_id || b.type) FROM events a "
                "CROSS JOIN (SELECT type FROM events LIMIT 300) b")
    assert cur.fetchall()[0][0] == 300 * run(loaded, "tq-main", "SELECT count(*) FROM events")[0][0][0]
    stats = cur.stats
    assert stats["state"] == "FINISHED", stats
    assert stats["cpuTimeMillis"] >= 1, stats
    assert stats["wallTimeMillis"] >= stats["cpuTimeMillis"], stats
    assert stats["elapsedTimeMillis"] >= 1 and stats["processedBytes"] > 0, stats
    status, info = request("GET", f"{loaded.url}/v1/query/{cur.query_id}", loaded.token("tq-main", "analyst"))
    assert status == 200, info
    assert info["cpu_ms"] == stats["cpuTimeMillis"], (info, stats)
    # (each rounded down to the millisecond on its own)
    assert abs(info["cpu_wait_ms"] - (stats["wallTimeMillis"] - stats["cpuTimeMillis"])) <= 1, (info, stats)
    assert info["scanned_bytes"] == stats["processedBytes"], (info, stats)


def test_sqlalchemy_reflection_and_pandas(loaded):
    token = loaded.token("tq-main", "analyst")
    engine = sqlalchemy.create_engine(
        f"trino://someone@127.0.0.1:{loaded.port}/floe/tq-main",
        connect_args={"auth": JWTAuthentication(token), "http_scheme": "http", "allow_insecure_auth": True},
    )
    inspector = sqlalchemy.inspect(engine)
    assert inspector.get_table_names(schema="tq-main") == ["daily_active_users", "events", "revenue_by_day",
                                                           "top_pages"]
    columns = [c["name"] for c in inspector.get_columns("events", schema="tq-main")]
    assert columns == ["event_id", "tenant_id", "type", "version", "ts", "received_at", "user_id", "payload"]
    with engine.connect() as conn:
        df = pd.read_sql("SELECT type, count(*) AS n FROM events GROUP BY type", conn)
    assert sorted(df["type"]) == ["AlertTriggered", "PageViewed", "PurchaseMade", "SensorReading"]


def test_session_statements(loaded):
    assert run(loaded, "tq-main", "SHOW CATALOGS")[0] == [["floe"]]
    assert run(loaded, "tq-main", "SHOW SCHEMAS")[0] == [["tq-main"], ["information_schema"]]
    assert run(loaded, "tq-main", "SHOW TABLES")[0] == [["daily_active_users"], ["events"], ["revenue_by_day"],
                                                        ["top_pages"]]
    conn = connect(loaded, "tq-main")
    cur = conn.cursor()
    cur.execute("USE floe.\"tq-main\"")
    cur.fetchall()
    assert conn.schema == "tq-main"


REFUSED = [
    ("SELECT * FROM \"tq-other\".events", "TABLE_NOT_FOUND"),
    ("SELECT * FROM floe.\"tq-other\".events", "TABLE_NOT_FOUND"),
    ("SELECT * FROM \"no-such-tenant\".events", "TABLE_NOT_FOUND"),
    ("SHOW TABLES FROM \"tq-other\"", "SCHEMA_NOT_FOUND"),
    ("USE \"tq-other\"", "SCHEMA_NOT_FOUND"),
    ("DROP TABLE events", "PERMISSION_DENIED"),
    ("INSERT INTO events SELECT * FROM events", "PERMISSION_DENIED"),
    ("CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc/'", "PERMISSION_DENIED"),
    ("COPY (SELECT 1) TO '/tmp/x.parquet'", "PERMISSION_DENIED"),
    ("SET datafusion.execution.batch_size = 1", "PERMISSION_DENIED"),
    ("SELECT * FROM '/etc/passwd'", "NOT_SUPPORTED"),
    ("SELECT * FROM read_parquet('/etc/x.parquet')", "NOT_SUPPORTED"),
    ("SELECT * FROM information_schema.tables, \"tq-other\".events", "TABLE_NOT_FOUND"),
]


@pytest.mark.parametrize("sql,name", REFUSED)
def test_refused_statements(loaded, sql, name):
    with pytest.raises(trino.exceptions.TrinoUserError) as e:
        run(loaded, "tq-main", sql)
    assert e.value.error_name == name, e.value


def test_isolation(loaded):
    # information_schema shows only the caller's tenant.
    rows, _ = run(loaded, "tq-main", "SELECT DISTINCT table_schema FROM information_schema.tables")
    assert sorted(r[0] for r in rows) == ["information_schema", "tq-main"]
    # The schema header cannot widen the scope.
    with pytest.raises(trino.exceptions.TrinoUserError) as e:
        cur = trino.dbapi.connect(host="127.0.0.1", port=loaded.port, user="someone", catalog="floe",
                                  schema="tq-other", http_scheme="http", allow_insecure_auth=True,
                                  auth=JWTAuthentication(loaded.token("tq-main", "analyst"))).cursor()
        cur.execute("SELECT count(*) FROM events")
        cur.fetchall()
    assert e.value.error_name == "SCHEMA_NOT_FOUND"
    # Describing another tenant's table shows nothing; describing one's own shows its columns.
    assert run(loaded, "tq-main", 'DESCRIBE "tq-other".events')[0] == []
    assert len(run(loaded, "tq-main", "DESCRIBE events")[0]) == 8
    # Each tenant counts only its own rows.
    for t in TENANTS:
        rows, _ = run(loaded, t, "SELECT DISTINCT tenant_id FROM events")
        assert rows == [[t]]


def test_roles_and_credentials(loaded):
    # viewer: projection tables only, so events is not there.
    with pytest.raises(trino.exceptions.TrinoUserError) as e:
        run(loaded, "tq-main", "SELECT count(*) FROM events", role="viewer")
    assert e.value.error_name == "TABLE_NOT_FOUND"
    # The projections follow the events within moments of the barrier (a refresh after commits).
    deadline = time.time() + 30
    while (rows := run(loaded, "tq-main", "SELECT count(*) FROM daily_active_users", role="viewer")[0])[0][0] < 1:
        assert time.time() < deadline, "daily_active_users not refreshed within 30 s"
        time.sleep(0.2)
    with pytest.raises(trino.exceptions.TrinoUserError) as e:
        run(loaded, "tq-main", "SELECT 1", role="ingest")
    assert e.value.error_name == "PERMISSION_DENIED"
    with pytest.raises(trino.exceptions.HttpError):
        cur = trino.dbapi.connect(host="127.0.0.1", port=loaded.port, user="someone",
                                  http_scheme="http").cursor()
        cur.execute("SELECT 1")
        cur.fetchall()


def test_queries_are_audited(loaded):
    run(loaded, "tq-main", "SELECT 42 AS audited_marker")
    rows = catalog_rows(
        loaded.data,
        "SELECT tenant, actor, detail FROM floe_audit WHERE action = 'query' AND detail LIKE '%audited_marker%'",
    )
    assert len(rows) == 1
    tenant, actor, detail = rows[0]
    assert tenant == "tq-main" and actor.startswith("token:")


JS = Path(__file__).resolve().parent.parent / "js"


def js_query(server, tenant, sql, role="analyst"):
    """What the Trino JavaScript client gets for `sql`: {"columns", "rows"} or {"error"}."""
    node = shutil.which("node")
    assert node, "node is not on the PATH"
    assert (JS / "node_modules" / "trino-client").is_dir(), \
        "trino-client is not installed: run infra/test.sh (it runs npm ci in tests/js)"
    out = subprocess.run([node, str(JS / "query.js"), server.url, server.token(tenant, role), tenant, sql],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_javascript_client_gets_the_same_rows(loaded):
    """The JavaScript client reads rows only from `nextUri` pages (never from the reply to the
    POST): before Floe answered the POST as Trino does, it got no rows at all."""
    for sql in [ANALYTICS[0], ANALYTICS[2], "SELECT event_id, type, version FROM events ORDER BY event_id LIMIT 25000"]:
        expected, desc = run(loaded, "tq-main", sql)
        got = js_query(loaded, "tq-main", sql)
        assert "error" not in got, (sql, got)
        assert got["columns"] == [[d[0], d[1]] for d in desc], sql
        assert got["rows"] == [list(r) for r in expected], sql
    got = js_query(loaded, "tq-main", "SHOW TABLES")
    assert ["events"] in got["rows"], got
    got = js_query(loaded, "tq-main", "SELECT * FROM missing")
    assert got["error"]["errorName"] == "TABLE_NOT_FOUND", got
    got = js_query(loaded, "tq-main", "SELECT count(*) FROM events", role="ingest")
    assert got["error"]["errorName"] == "PERMISSION_DENIED", got
