"""Query latency: Floe over the Trino protocol versus DuckDB on the same Parquet files, same run.

    FLOE_BIN=target/release/floe python bench/query_vs_duckdb.py [--events N] [--runs R] [--data DIR]

One tenant gets N events (default 10 million) through `floe serve` + `floe gen` (in chunks of
one million). Then each query runs R times (after one warm-up) in both engines:

- floe:   the `trino` Python client against `floe serve` (token check, session, Iceberg
          metadata, planning, execution, JSON pages): what an analyst's tool sees.
- duckdb: `read_parquet` over the table's live data files (from pyiceberg's scan plan), in
          the same process as the benchmark: no protocol, no catalog.

Both use every core. Prints the median seconds per query and the ratio, as a Markdown table
for BENCHMARKS.md.
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
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="floe-qbench-"))
    data = args.data or tmp / "floe"
    reuse = (data / "catalog.db").exists()
    if not reuse:
        subprocess.run([FLOE, "--data-dir", str(data), "tenant", "create", TENANT], check=True, capture_output=True)
    proc, port, url = floe_server.start(data, tmp / "serve.log")
    try:
        started = time.time()
        if not reuse:
            floe_server.load(data, url, TENANT, args.events)
            print(f"loaded {args.events:,} events in {time.time() - started:.0f} s")
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

        print()
        print(f"{args.events:,} events, {platform.machine()}, {os.cpu_count()} cores, median of {args.runs}")
        print()
        print("| query | Floe (s) | DuckDB (s) | Floe / DuckDB |")
        print("|---|---:|---:|---:|")
        ratios = []
        for name, floe_sql, duck_sql in QUERIES:
            f = timed(lambda: floe_query(floe_sql), args.runs)
            d = timed(lambda: duck.sql(duck_sql).fetchall(), args.runs)
            ratios.append(f / d)
            print(f"| {name} | {f:.3f} | {d:.3f} | {f / d:.2f}× |", flush=True)
        print(f"| geometric mean | | | {statistics.geometric_mean(ratios):.2f}× |")
    finally:
        floe_server.stop(proc)


if __name__ == "__main__":
    main()
