"""Projections checked from outside Floe: after each step (events with resent duplicates and
events without a user, late events days back, the three timestamp forms, a user erasure), the
`daily_active_users` table read by pyiceberg equals DuckDB's aggregate over the `events` table
read by pyiceberg; and a viewer reads it over the Trino protocol."""

import time

import duckdb
import trino
from trino.auth import JWTAuthentication
from conftest import erase, floe, iceberg_catalog, post

TENANT = "proj"
DAY = 86400
SOURCE = "floe.projection.source-snapshot"

# The reference: per day with events, distinct users that day, over the 7 days and over the
# 28 days ending on it (UTC days of the event time).
DAU_SQL = """
WITH du AS (SELECT DISTINCT CAST(ts AS DATE) AS day, user_id FROM events),
     days AS (SELECT DISTINCT day FROM du)
SELECT d.day,
       count(DISTINCT u.user_id) FILTER (WHERE u.day = d.day) AS users,
       count(DISTINCT u.user_id) FILTER (WHERE u.day > d.day - 7) AS users_7d,
       count(DISTINCT u.user_id) AS users_28d
FROM days d JOIN du u ON u.day BETWEEN d.day - 27 AND d.day
GROUP BY d.day ORDER BY d.day
"""


def fresh(data, timeout=30):
    """Waits until daily_active_users reflects the current events snapshot; both tables."""
    cat = iceberg_catalog(data)
    deadline = time.time() + timeout
    while True:
        events = cat.load_table(f"{TENANT}.events")
        dau = cat.load_table(f"{TENANT}.daily_active_users")
        snap = dau.current_snapshot()
        source = snap.summary.additional_properties.get(SOURCE) if snap else None
        if events.current_snapshot() and source == str(events.current_snapshot().snapshot_id):
            return events, dau
        assert time.time() < deadline, f"daily_active_users at {source}, events at {events.current_snapshot()}"
        time.sleep(0.1)


def check(data):
    events, dau = fresh(data)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("events", events.scan().to_arrow())
    expected = [tuple(r) for r in con.execute(DAU_SQL).fetchall()]
    con.register("dau", dau.scan().to_arrow())
    got = [tuple(r) for r in con.execute("SELECT * FROM dau ORDER BY day").fetchall()]
    assert got == expected
    return got


def event(i, ts, user):
    return {"event_id": f"p-{i}", "type": "PageViewed", "timestamp": ts, "user_id": user,
            "payload": {"page": f"/p/{i % 4}"}}


def test_daily_active_users_equal_duckdb_after_every_step(server):
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
    rows = check(data)
    assert len(rows) >= 3 and all(r[1] > 0 for r in rows)

    # Resent events (the same ids) change nothing.
    post(server.url, ingest, evs[:200])
    assert check(data) == rows

    # Late events, 10 and 30 days back: new rows, and the windows after them grow.
    late = [event(1000 + i, now - 10 * DAY - i, f"late-{i % 5}") for i in range(50)]
    late += [event(2000 + i, (now - 30 * DAY - i) * 1000, f"u-{i % 3}") for i in range(20)]
    post(server.url, ingest, late)
    after = check(data)
    assert len(after) == len(rows) + 2

    # An erasure (by the server's own schedule): the user's events leave every count.
    erase(server, server.token(TENANT, "admin"), ["u-1"])
    check(data)


def test_a_viewer_reads_daily_active_users_over_trino(server):
    data = server.data
    floe(data, "tenant", "create", "proj-view")
    post(server.url, server.token("proj-view", "ingest"),
         [event(i, int(time.time()) - i * 60, f"v-{i % 3}") for i in range(30)])
    cur = trino.dbapi.connect(host="127.0.0.1", port=server.port, user="someone", catalog="floe",
                              schema="proj-view", http_scheme="http", allow_insecure_auth=True,
                              auth=JWTAuthentication(server.token("proj-view", "viewer"))).cursor()
    deadline = time.time() + 30
    while True:
        cur.execute("SELECT day, users, users_7d, users_28d FROM daily_active_users ORDER BY day")
        rows = cur.fetchall()
        if rows:
            break
        assert time.time() < deadline, "no row within 30 s"
        time.sleep(0.2)
    # Thirty minutes of events (one day, or two across midnight) by three users.
    assert rows[-1][3] == 3, rows
