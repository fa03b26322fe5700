"""Projections checked from outside Floe: after each step (events with resent duplicates and
events without a user, late events days back, the three timestamp forms, a user erasure), every
built-in projection read by pyiceberg equals DuckDB's aggregate over the `events` table read by
pyiceberg; and a viewer reads them over the Trino protocol."""

import time

import duckdb
import trino
from trino.auth import JWTAuthentication
from conftest import erase, floe, iceberg_catalog, post, request

TENANT = "proj"
DAY = 86400
SOURCE = "floe.projection.source-snapshot"

# The references, over the events (each (day, event_id) once), by UTC day of the event time.
ONCE = """
CREATE VIEW once AS SELECT *, CAST(ts AS DATE) AS day FROM events
QUALIFY row_number() OVER (PARTITION BY CAST(ts AS DATE), event_id) = 1
"""
REFERENCE = {
    # Per day with events: distinct users that day, over the 7 and the 28 days ending on it.
    "daily_active_users": """
        WITH du AS (SELECT DISTINCT day, user_id FROM once),
             days AS (SELECT DISTINCT day FROM du)
        SELECT d.day,
               count(DISTINCT u.user_id) FILTER (WHERE u.day = d.day),
               count(DISTINCT u.user_id) FILTER (WHERE u.day > d.day - 7),
               count(DISTINCT u.user_id)
        FROM days d JOIN du u ON u.day BETWEEN d.day - 27 AND d.day
        GROUP BY d.day""",
    "revenue_by_day": """
        SELECT day, json_extract_string(payload, '$.currency'),
               sum(CAST(json_extract_string(payload, '$.amount') AS DECIMAL(38, 2))), count(*)
        FROM once WHERE type = 'PurchaseMade' GROUP BY ALL""",
    "top_pages": """
        SELECT day, json_extract_string(payload, '$.page'), count(*), count(DISTINCT user_id)
        FROM once WHERE type = 'PageViewed' GROUP BY ALL""",
}


def fresh(server, timeout=30):
    """Waits until `GET /v1/projections` says every projection has caught up with the events;
    the tables."""
    token = server.token(TENANT, "viewer")
    deadline = time.time() + timeout
    while True:
        status, body = request("GET", f"{server.url}/v1/projections", token)
        assert status == 200, body
        lag = {p["name"]: (p["lag_events"], p["lag_seconds"]) for p in body["projections"]}
        assert set(lag) == set(REFERENCE), body
        if all(v == (0, 0) for v in lag.values()):
            break
        assert time.time() < deadline, body
        time.sleep(0.1)
    cat = iceberg_catalog(server.data)
    events = cat.load_table(f"{TENANT}.events")
    tables = {name: cat.load_table(f"{TENANT}.{name}") for name in REFERENCE}
    for name, t in tables.items():
        # The snapshot reflected (the current one, or one a compaction of events followed:
        # the same rows).
        assert t.current_snapshot().summary.additional_properties.get(SOURCE), name
    return events, tables


def tables_now(server):
    cat = iceberg_catalog(server.data)
    return {name: cat.load_table(f"{TENANT}.{name}") for name in REFERENCE}


def check(server):
    """Every projection equals its reference; the rows of each."""
    events, tables = fresh(server)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("events", events.scan().to_arrow())
    con.execute(ONCE)
    out = {}
    for name, sql in REFERENCE.items():
        expected = [tuple(r) for r in con.execute(f"SELECT * FROM ({sql}) ORDER BY ALL").fetchall()]
        con.register("projection", tables[name].scan().to_arrow())
        got = [tuple(r) for r in con.execute("SELECT * FROM projection ORDER BY ALL").fetchall()]
        assert got == expected, name
        out[name] = got
    return out


def event(i, ts, user):
    """Page views, purchases (in two currencies and in none) and sensor readings, by `i`."""
    kind = ["PageViewed", "PurchaseMade", "SensorReading"][i % 3]
    payload = {"page": f"/p/{i % 4}"} if kind == "PageViewed" else {"value": i}
    if kind == "PurchaseMade":
        payload = {"amount": (i % 500) / 4, "currency": ["EUR", "USD", None][i % 7 % 3]}
    return {"event_id": f"p-{i}", "type": kind, "timestamp": ts, "user_id": user, "payload": payload}


def test_projections_equal_duckdb_after_every_step(server):
    data = server.data
    floe(data, "tenant", "create", TENANT)
    ingest = server.token(TENANT, "ingest")
    now = int(time.time())

    # Three days, out of order, in all three timestamp forms; every ninth event has no user.
    evs = []
    for i in range(900):
        ts = now - (i * 7919) % (3 * DAY)
        form = [ts, ts * 1000, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))][i % 3]
        evs.append(event(i, form, None if i % 9 == 0 else f"u-{i % 37}"))
    for k in range(0, 900, 300):
        post(server.url, ingest, evs[k:k + 300])
    rows = check(server)
    assert len(rows["daily_active_users"]) >= 3 and all(r[1] > 0 for r in rows["daily_active_users"])
    assert {r[1] for r in rows["revenue_by_day"]} == {"EUR", "USD", None}

    # Resent events (the same ids) change nothing.
    post(server.url, ingest, evs[:200])
    assert check(server) == rows

    # Late events, 10 and 30 days back: new rows, and the windows after them grow.
    late = [event(1000 + i, now - 10 * DAY - i, f"late-{i % 5}") for i in range(50)]
    late += [event(2000 + i, (now - 30 * DAY - i) * 1000, f"u-{i % 3}") for i in range(20)]
    post(server.url, ingest, late)
    after = check(server)
    assert len(after["daily_active_users"]) == len(rows["daily_active_users"]) + 2

    # Freshness over HTTP: one projection, and who may ask.
    status, one = request("GET", f"{server.url}/v1/projections/top_pages", server.token(TENANT, "analyst"))
    assert status == 200 and one["lag_events"] == 0 and one["rows"] > 0, one
    assert request("GET", f"{server.url}/v1/projections/nope", server.token(TENANT, "viewer"))[0] == 404
    assert request("GET", f"{server.url}/v1/projections", server.token(TENANT, "ingest"))[0] == 403
    listed = floe(data, "projection", "list", "--tenant", TENANT)
    assert listed.splitlines()[0].startswith("name\tkind\tlag_events"), listed
    assert len(listed.splitlines()) == 4, listed

    # A rebuild over HTTP (admin only): recomputed from all events in one commit, then caught up.
    admin = server.token(TENANT, "admin")
    url = f"{server.url}/v1/projections/top_pages/rebuild"
    assert request("POST", url, server.token(TENANT, "analyst"))[0] == 403
    assert request("POST", f"{server.url}/v1/projections/nope/rebuild", admin)[0] == 404
    assert request("POST", f"{url}?at_snapshot=42", admin)[0] == 400
    before = tables_now(server)["top_pages"].current_snapshot().snapshot_id
    status, reply = request("POST", url, admin)
    assert status == 202 and reply["status"] == "rebuilding", reply
    deadline = time.time() + 30
    while tables_now(server)["top_pages"].current_snapshot().snapshot_id == before:
        assert time.time() < deadline, "not rebuilt within 30 s"
        time.sleep(0.1)
    assert check(server) == after
    # The CLI does the same in its own process, at an older events snapshot, and catches up.
    snapshots = iceberg_catalog(data).load_table(f"{TENANT}.events").metadata.snapshots
    oldest = min(snapshots, key=lambda s: s.sequence_number).snapshot_id
    out = floe(data, "projection", "rebuild", "--tenant", TENANT, "daily_active_users", "--at-snapshot", str(oldest))
    assert "rebuilt from" in out, out
    assert check(server) == after

    # An erasure (by the server's own schedule): the user's events leave every count.
    erase(server, server.token(TENANT, "admin"), ["u-1"])
    check(server)


def test_a_viewer_reads_the_projections_over_trino(server):
    data = server.data
    floe(data, "tenant", "create", "proj-view")
    post(server.url, server.token("proj-view", "ingest"),
         [event(i, int(time.time()) - i * 60, f"v-{i % 3}") for i in range(30)])
    cur = trino.dbapi.connect(host="127.0.0.1", port=server.port, user="someone", catalog="floe",
                              schema="proj-view", http_scheme="http", allow_insecure_auth=True,
                              auth=JWTAuthentication(server.token("proj-view", "viewer"))).cursor()

    def one(sql):
        cur.execute(sql)
        return cur.fetchall()

    totals = "SELECT (SELECT sum(views) FROM top_pages), (SELECT sum(orders) FROM revenue_by_day)"
    deadline = time.time() + 30
    while one(totals) != [[10, 10]]:
        assert time.time() < deadline, one(totals)
        time.sleep(0.2)
    # Thirty minutes of events (one day, or two across midnight) by three users.
    rows = one("SELECT day, users, users_7d, users_28d FROM daily_active_users ORDER BY day")
    assert rows[-1][3] == 3, rows
    # Raw events stay out of a viewer's reach.
    try:
        one("SELECT count(*) FROM events")
        raise AssertionError("a viewer read events")
    except trino.exceptions.TrinoUserError as e:
        assert e.error_name == "TABLE_NOT_FOUND"


HOURLY = """SELECT CAST(ts AS DATE) AS day, date_trunc('hour', ts) AS hour,
       json_extract_scalar(payload, '$.country') AS country, count(*) AS purchases,
       count(DISTINCT user_id) AS buyers
FROM events WHERE type = 'PurchaseMade' GROUP BY 1, 2, 3"""
HOURLY_REFERENCE = """
SELECT day, date_trunc('hour', ts), json_extract_string(payload, '$.country'), count(*), count(DISTINCT user_id)
FROM once WHERE type = 'PurchaseMade' GROUP BY ALL ORDER BY ALL"""


DAILY_BY_COUNTRY = """
SELECT CAST(ts AS DATE) AS day, json_extract_scalar(payload, '$.country') AS country,
       count(DISTINCT user_id) AS buyers, count(*) AS orders
FROM events WHERE type = 'PurchaseMade' GROUP BY 1, 2"""

DAILY_BY_COUNTRY_REFERENCE = """
SELECT day, json_extract_string(payload, '$.country'), count(DISTINCT user_id), count(*)
FROM once WHERE type = 'PurchaseMade' GROUP BY ALL ORDER BY ALL"""


def test_a_user_defined_projection_is_created_refreshed_rebuilt_redefined_and_dropped(server):
    tenant = "proj-udp"
    floe(server.data, "tenant", "create", tenant)
    ingest, admin = server.token(tenant, "ingest"), server.token(tenant, "admin")
    now = int(time.time())

    def purchases(start, n):
        return [{"event_id": f"b-{i}", "type": "PurchaseMade", "timestamp": now - (i * 977) % (2 * DAY),
                 "user_id": f"u-{i % 11}", "payload": {"country": ["FR", "DE", "JP", None][i % 4], "amount": i}}
                for i in range(start, start + n)]

    post(server.url, ingest, purchases(0, 300) + [event(9000 + i, now - i, "x") for i in range(30)])
    url = f"{server.url}/v1/projections"

    # Refused, naming the problem.
    for sql, reason in [
        ("SELECT CAST(now() AS DATE) AS day, count(*) AS n FROM events GROUP BY 1", "non-deterministic function now()"),
        ("SELECT type, count(*) AS n FROM events GROUP BY 1", "needs a column `day`"),
        ("SELECT CAST(ts AS DATE) AS day, count(*) AS n FROM daily_active_users GROUP BY 1", "may read only `events`"),
        ("SELECT CAST(ts AS DATE) AS day, count(*) AS n FROM \"proj\".events GROUP BY 1", "may read only `events`"),
        ("SELECT CAST(a.ts AS DATE) AS day, count(*) AS n FROM events a JOIN events b ON a.event_id = b.event_id "
         "GROUP BY 1", "joins are not allowed"),
    ]:
        status, body = request("POST", url, admin, {"name": "bad", "sql": sql})
        assert status == 400 and reason in body["error"]["message"], (sql, body)
    status, body = request("POST", url, admin, {"name": "events", "sql": HOURLY})
    assert status == 400 and "taken" in body["error"]["message"], body
    assert request("POST", url, server.token(tenant, "analyst"), {"name": "hourly", "sql": HOURLY})[0] == 403

    status, body = request("POST", url, admin, {"name": "hourly_purchases", "sql": HOURLY})
    assert status == 201 and body["name"] == "hourly_purchases", body
    assert request("POST", url, admin, {"name": "hourly_purchases", "sql": HOURLY})[0] == 409

    def compare():
        token = server.token(tenant, "viewer")
        deadline = time.time() + 30
        while True:
            status, one = request("GET", f"{url}/hourly_purchases", token)
            assert status == 200, one
            if one["source_snapshot"] and one["lag_events"] == 0 and one["lag_seconds"] == 0:
                break
            assert time.time() < deadline, one
            time.sleep(0.1)
        assert one["kind"] == "sql"
        cat = iceberg_catalog(server.data)
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        con.register("events", cat.load_table(f"{tenant}.events").scan().to_arrow())
        con.execute(ONCE)
        expected = con.execute(HOURLY_REFERENCE).fetchall()
        con.register("p", cat.load_table(f"{tenant}.hourly_purchases").scan().to_arrow())
        got = con.execute("SELECT * FROM p ORDER BY ALL").fetchall()
        assert got == expected
        return got

    first = compare()
    assert len(first) > 10

    # New purchases (and late ones) reach it; so does a rebuild.
    post(server.url, ingest, purchases(300, 200) + purchases(1000, 5))
    assert len(compare()) >= len(first)
    status, _ = request("POST", f"{url}/hourly_purchases/rebuild", admin)
    assert status == 202
    compare()

    # Redefined: refused if not a definition (or no such projection); otherwise the next refresh
    # brings the new rows and columns in one snapshot, and the old snapshot keeps its columns.
    bad = {"sql": "SELECT type, count(*) AS n FROM events GROUP BY 1"}
    status, body = request("PUT", f"{url}/hourly_purchases", admin, bad)
    assert status == 400 and "needs a column `day`" in body["error"]["message"], body
    assert request("PUT", f"{url}/nope", admin, {"sql": DAILY_BY_COUNTRY})[0] == 404
    assert request("PUT", f"{url}/hourly_purchases", server.token(tenant, "analyst"), {"sql": DAILY_BY_COUNTRY})[0] == 403
    cat = iceberg_catalog(server.data)
    old = cat.load_table(f"{tenant}.hourly_purchases")
    old_snapshot, old_rows = old.current_snapshot().snapshot_id, old.scan().to_arrow()
    status, body = request("PUT", f"{url}/hourly_purchases", admin, {"sql": DAILY_BY_COUNTRY})
    assert status == 202 and body["sql"] == DAILY_BY_COUNTRY, body
    deadline = time.time() + 30
    while (table := cat.load_table(f"{tenant}.hourly_purchases")).properties.get("floe.projection.sql") != DAILY_BY_COUNTRY:
        assert time.time() < deadline, table.properties
        time.sleep(0.1)
    got = table.scan().to_arrow()
    assert got.column_names == ["day", "country", "buyers", "orders"]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("events", cat.load_table(f"{tenant}.events").scan().to_arrow())
    con.execute(ONCE)
    con.register("p", got)
    assert con.execute("SELECT * FROM p ORDER BY ALL").fetchall() == con.execute(DAILY_BY_COUNTRY_REFERENCE).fetchall()
    before = table.scan(snapshot_id=old_snapshot).to_arrow()
    assert before.column_names == old_rows.column_names and before.num_rows == old_rows.num_rows

    # Dropped: its table and definition go.
    assert request("DELETE", f"{url}/hourly_purchases", admin)[0] == 204
    assert request("GET", f"{url}/hourly_purchases", admin)[0] == 404
    assert "hourly_purchases" not in [t[1] for t in iceberg_catalog(server.data).list_tables(tenant)]
