"""Query latency: Floe over the Trino protocol versus DuckDB and chdb on the same Parquet files,
same run.

    FLOE_BIN=target/release/floe python bench/query_vs_duckdb.py [--events N] [--runs R] [--data DIR]
        [--compact]

One tenant gets N events (default 10 million) through `floe serve` + `floe gen` (in chunks of
one million). Then each query runs R times (after one warm-up) in both engines:

- floe:   the `trino` Python client against `floe serve` (token check, session, Iceberg
          metadata, planning, execution, JSON pages): what an analyst's tool sees.
- duckdb: `read_parquet` over the table's live data files (from pyiceberg's scan plan), in
          the same process as the benchmark: no protocol, no catalog.
- chdb:   ClickHouse's engine in the same process (`file(..., Parquet)` over links to the same
          live files), the same queries in ClickHouse's SQL.

With `--compact`, `floe compact` rewrites the table first (sorted by `(type, ts)`, one file of
up to 128 MiB per day), and all three engines read the compacted files.

All use every core. Prints the median seconds per query and the ratios, as a Markdown table
for BENCHMARKS.md; a peer whose answer has another number of rows than Floe's is named.
"""

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import duckdb
from pyiceberg.catalog.sql import SqlCatalog

import floe_server

from floe_server import FLOE
TENANT = "bench"

# (name, Floe's Trino SQL, DuckDB's SQL)
QUERIES = [
    ("daily active users (projection)",
     "SELECT date(ts) AS d, count(DISTINCT user_id) FROM events GROUP BY 1 ORDER BY 1",
     "SELECT CAST(ts AS DATE) AS d, count(DISTINCT user_id) FROM events GROUP BY 1 ORDER BY 1"),
    ("revenue by day and currency (projection)",
     "SELECT date(ts), json_extract_scalar(payload, '$.currency') AS c, "
     "sum(CAST(json_extract_scalar(payload, '$.amount') AS DECIMAL(12,2))) FROM events "
     "WHERE type = 'PurchaseMade' GROUP BY 1, 2 ORDER BY 1, 2",
     "SELECT CAST(ts AS DATE), json_extract_string(payload, '$.currency') AS c, "
     "sum(CAST(json_extract_string(payload, '$.amount') AS DECIMAL(12,2))) FROM events "
     "WHERE type = 'PurchaseMade' GROUP BY 1, 2 ORDER BY 1, 2"),
    ("top pages (projection)",
     "SELECT json_extract_scalar(payload, '$.page') AS p, count(*) AS n FROM events "
     "WHERE type = 'PageViewed' GROUP BY 1 ORDER BY n DESC, p LIMIT 10",
     "SELECT json_extract_string(payload, '$.page') AS p, count(*) AS n FROM events "
     "WHERE type = 'PageViewed' GROUP BY 1 ORDER BY n DESC, p LIMIT 10"),
    ("count by type",
     "SELECT type, count(*) FROM events GROUP BY 1 ORDER BY 1",
     "SELECT type, count(*) FROM events GROUP BY 1 ORDER BY 1"),
    ("hourly histogram",
     "SELECT date_trunc('hour', ts) AS h, count(*) FROM events GROUP BY 1 ORDER BY 1",
     "SELECT date_trunc('hour', ts) AS h, count(*) FROM events GROUP BY 1 ORDER BY 1"),
    ("top users per type (window)",
     "SELECT * FROM (SELECT type, user_id, n, rank() OVER (PARTITION BY type ORDER BY n DESC, user_id) AS r "
     "FROM (SELECT type, user_id, count(*) AS n FROM events GROUP BY 1, 2)) WHERE r <= 3 ORDER BY type, r",
     "SELECT * FROM (SELECT type, user_id, n, rank() OVER (PARTITION BY type ORDER BY n DESC, user_id) AS r "
     "FROM (SELECT type, user_id, count(*) AS n FROM events GROUP BY 1, 2)) WHERE r <= 3 ORDER BY type, r"),
    ("one user's events (point lookup)",
     "SELECT count(*), min(ts), max(ts) FROM events WHERE user_id = 'u-42'",
     "SELECT count(*), min(ts), max(ts) FROM events WHERE user_id = 'u-42'"),
    ("viewers who bought",
     "SELECT count(*) FROM (SELECT user_id FROM events WHERE type = 'PageViewed' "
     "INTERSECT SELECT user_id FROM events WHERE type = 'PurchaseMade')",
     "SELECT count(*) FROM (SELECT user_id FROM events WHERE type = 'PageViewed' "
     "INTERSECT SELECT user_id FROM events WHERE type = 'PurchaseMade')"),
]

# The same queries in ClickHouse's SQL (chdb), by name.
CHDB = {
    "daily active users (projection)":
        "SELECT toDate(ts) AS d, count(DISTINCT user_id) FROM events GROUP BY d ORDER BY d",
    "revenue by day and currency (projection)":
        "SELECT toDate(ts) AS d, JSONExtractString(payload, 'currency') AS c, "
        "sum(toDecimal64(JSONExtractRaw(payload, 'amount'), 2)) FROM events "
        "WHERE type = 'PurchaseMade' GROUP BY d, c ORDER BY d, c",
    "top pages (projection)":
        "SELECT JSONExtractString(payload, 'page') AS p, count() AS n FROM events "
        "WHERE type = 'PageViewed' GROUP BY p ORDER BY n DESC, p LIMIT 10",
    "count by type": "SELECT type, count() FROM events GROUP BY type ORDER BY type",
    "hourly histogram": "SELECT toStartOfHour(ts) AS h, count() FROM events GROUP BY h ORDER BY h",
    "top users per type (window)":
        "SELECT * FROM (SELECT type, user_id, n, rank() OVER (PARTITION BY type ORDER BY n DESC, user_id) AS r "
        "FROM (SELECT type, user_id, count() AS n FROM events GROUP BY type, user_id)) WHERE r <= 3 ORDER BY type, r",
    "one user's events (point lookup)":
        "SELECT count(), min(ts), max(ts) FROM events WHERE user_id = 'u-42'",
    "viewers who bought":
        "SELECT count() FROM (SELECT user_id FROM events WHERE type = 'PageViewed' "
        "INTERSECT DISTINCT SELECT user_id FROM events WHERE type = 'PurchaseMade')",
}


def chdb_engine(files, folder):
    """A chdb session whose `events` view reads `files` (through links in `folder`: ClickHouse's
    `file()` takes one glob, not a list); returns a function running a query to its rows."""
    import chdb.session  # here: compaction.py and promoted.py import this module's queries

    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        (folder / f"{i:06}.parquet").symlink_to(f)
    session = chdb.session.Session()
    session.query("SET session_timezone = 'UTC'")
    session.query(f"CREATE VIEW events AS SELECT * FROM file('{folder}/*.parquet', Parquet)")
    return lambda sql: [line for line in str(session.query(sql, "TSV")).splitlines() if line]


def timed(fn, runs):
    fn()  # warm-up: caches, page cache
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--data", type=Path,
                    help="Floe data folder to keep; if it already holds the tenant, its events are reused")
    ap.add_argument("--compact", action="store_true",
                    help="run `floe compact` on the table before the queries: all engines read the compacted files")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="floe-qbench-"))
    data = args.data or tmp / "floe"
    reuse = (data / "catalog.db").exists()
    if not reuse:
        subprocess.run([FLOE, "--data-dir", str(data), "tenant", "create", TENANT], check=True, capture_output=True)
    proc, port, url = floe_server.start(data, tmp / "serve.log")
    try:
        # Not timed beside the server's own start-up work.
        floe_server.wait_for_window(tmp / "serve.log")
        started = time.time()
        if not reuse:
            floe_server.load(data, url, TENANT, args.events)
            print(f"loaded {args.events:,} events in {time.time() - started:.0f} s")
        if args.compact:
            t = time.perf_counter()
            report = subprocess.run([FLOE, "--data-dir", str(data), "compact", "--tenant", TENANT], check=True,
                                    capture_output=True, text=True).stdout
            summary = [line for line in report.splitlines() if line.startswith("compacted:")]
            print(f"floe compact: {time.perf_counter() - t:.0f} s; {' '.join(summary)}")
        floe_query = floe_server.analyst_query(data, port, TENANT)

        cat = SqlCatalog("floe", uri=f"sqlite:///{data}/catalog.db", warehouse=f"file://{data}/warehouse")
        table = cat.load_table(f"{TENANT}.events")
        files = [t.file.file_path.removeprefix("file://") for t in table.scan().plan_files()]
        rows = floe_query("SELECT count(*) FROM events")[0][0]
        assert rows == args.events, f"expected {args.events} rows, found {rows}"
        size = sum(os.path.getsize(f) for f in files)
        print(f"{rows:,} rows in {len(files)} files, {size / 2**20:.0f} MiB")
        duck = duckdb.connect()
        duck.execute("SET TimeZone = 'UTC'")
        duck.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet({files!r}, hive_partitioning = false)")
        ch = chdb_engine(files, tmp / "chdb-files")

        print()
        print(f"{args.events:,} events, {platform.machine()}, {os.cpu_count()} cores, median of {args.runs}"
              + (f"; the table compacted ({len(files)} files)" if args.compact else ""))
        print()
        print("| query | Floe (s) | DuckDB (s) | chdb (s) | Floe / DuckDB | Floe / chdb |")
        print("|---|---:|---:|---:|---:|---:|")
        ratios, ch_ratios = [], []
        for name, floe_sql, duck_sql in QUERIES:
            rows = len(floe_query(floe_sql))
            for peer, n in (("DuckDB", len(duck.sql(duck_sql).fetchall())), ("chdb", len(ch(CHDB[name])))):
                if n != rows:
                    print(f"warning: {peer} answered {n} rows to {name!r}, Floe {rows}")
            f = timed(lambda: floe_query(floe_sql), args.runs)
            d = timed(lambda: duck.sql(duck_sql).fetchall(), args.runs)
            c = timed(lambda: ch(CHDB[name]), args.runs)
            ratios.append(f / d)
            ch_ratios.append(f / c)
            print(f"| {name} | {f:.3f} | {d:.3f} | {c:.3f} | {f / d:.2f}× | {f / c:.2f}× |", flush=True)
        print(f"| geometric mean | | | | {statistics.geometric_mean(ratios):.2f}× "
              f"| {statistics.geometric_mean(ch_ratios):.2f}× |")
    finally:
        floe_server.stop(proc)


if __name__ == "__main__":
    main()
