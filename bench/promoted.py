"""Queries over promoted columns against the same over the JSON payload, in Floe and in DuckDB
on the same Parquet files, same run.

    FLOE_BIN=target/release/floe python bench/promoted.py [--events N] [--runs R] [--data DIR]

One tenant registers the schemas of the four generated types (bench/schemas.py) with `page`,
`amount` and `currency` promoted ("x-floe-promote": true), then gets N events (default
5 million) through `floe serve` + `floe gen`: ingest fills the three columns. Each query runs R
times after a warm-up, in four ways: Floe over the promoted column and over
`json_extract_scalar(payload, …)` (the `trino` client against `floe serve`), DuckDB over the
same column and over `json_extract_string` (in-process `read_parquet` of the table's live files).
Prints the median seconds and the ratios as a Markdown table for BENCHMARKS.md.
"""

import argparse
import json
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
from query_vs_duckdb import timed
from schemas import SCHEMAS

TENANT = "bench"
PROMOTED = {"PageViewed": ["page"], "PurchaseMade": ["amount", "currency"]}

# (name, Floe promoted, Floe JSON, DuckDB promoted, DuckDB JSON)
QUERIES = [
    ("top pages",
     "SELECT page AS p, count(*) AS n FROM events WHERE type = 'PageViewed' GROUP BY 1 ORDER BY n DESC, p LIMIT 10",
     "SELECT json_extract_scalar(payload, '$.page') AS p, count(*) AS n FROM events "
     "WHERE type = 'PageViewed' GROUP BY 1 ORDER BY n DESC, p LIMIT 10",
     "SELECT page AS p, count(*) AS n FROM events WHERE type = 'PageViewed' GROUP BY 1 ORDER BY n DESC, p LIMIT 10",
     "SELECT json_extract_string(payload, '$.page') AS p, count(*) AS n FROM events "
     "WHERE type = 'PageViewed' GROUP BY 1 ORDER BY n DESC, p LIMIT 10"),
    ("revenue by day and currency",
     "SELECT date(ts) AS d, currency, sum(amount) FROM events WHERE type = 'PurchaseMade' "
     "GROUP BY 1, 2 ORDER BY 1, 2",
     "SELECT date(ts) AS d, json_extract_scalar(payload, '$.currency') AS c, "
     "sum(CAST(json_extract_scalar(payload, '$.amount') AS DOUBLE)) FROM events "
     "WHERE type = 'PurchaseMade' GROUP BY 1, 2 ORDER BY 1, 2",
     "SELECT CAST(ts AS DATE) AS d, currency, sum(amount) FROM events WHERE type = 'PurchaseMade' "
     "GROUP BY 1, 2 ORDER BY 1, 2",
     "SELECT CAST(ts AS DATE) AS d, json_extract_string(payload, '$.currency') AS c, "
     "sum(CAST(json_extract_string(payload, '$.amount') AS DOUBLE)) FROM events "
     "WHERE type = 'PurchaseMade' GROUP BY 1, 2 ORDER BY 1, 2"),
]

# The same top pages through the per-type view (Floe only): what the view adds.
VIEW_QUERY = "SELECT page AS p, count(*) AS n FROM page_viewed GROUP BY 1 ORDER BY n DESC, p LIMIT 10"


def floe_cli(data, *args):
    return subprocess.run([FLOE, "--data-dir", str(data), *args], check=True, capture_output=True,
                          text=True).stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--data", type=Path,
                    help="Floe data folder to keep; if it already holds the tenant, its events are reused")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="floe-promoted-"))
    data = args.data or tmp / "floe"
    reuse = (data / "catalog.db").exists()
    if not reuse:
        floe_cli(data, "tenant", "create", TENANT)
        for kind, schema in SCHEMAS.items():
            schema = json.loads(json.dumps(schema))
            for prop in PROMOTED.get(kind, []):
                schema["properties"][prop]["x-floe-promote"] = True
            path = tmp / f"{kind}.json"
            path.write_text(json.dumps(schema))
            floe_cli(data, "schema", "register", "--tenant", TENANT, "--type", kind, "--version", "1",
                     "--file", str(path))
    proc, port, url = floe_server.start(data, tmp / "serve.log")
    try:
        started = time.time()
        if not reuse:
            floe_server.load(data, url, TENANT, args.events)
            print(f"loaded {args.events:,} events in {time.time() - started:.0f} s")
        floe_query = floe_server.analyst_query(data, port, TENANT)

        cat = SqlCatalog("floe", uri=f"sqlite:///{data}/catalog.db", warehouse=f"file://{data}/warehouse")
        files = [t.file.file_path.removeprefix("file://")
                 for t in cat.load_table(f"{TENANT}.events").scan().plan_files()]
        rows = floe_query("SELECT count(*) FROM events")[0][0]
        unfilled = floe_query("SELECT count(*) FROM events WHERE type = 'PageViewed' AND page IS NULL")[0][0]
        assert unfilled == 0, f"{unfilled} page views without the promoted page"
        size = sum(os.path.getsize(f) for f in files)
        print(f"{rows:,} rows in {len(files)} files, {size / 2**20:.0f} MiB")
        duck = duckdb.connect()
        duck.execute("SET TimeZone = 'UTC'")
        duck.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet({files!r}, hive_partitioning = false, "
                     "union_by_name = true)")

        print()
        print(f"{rows:,} events, {platform.machine()}, {os.cpu_count()} cores, median of {args.runs}")
        print()
        print("| query | Floe, column (s) | Floe, JSON (s) | DuckDB, column (s) | DuckDB, JSON (s) "
              "| Floe JSON / column | Floe / DuckDB, column |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, f_col, f_json, d_col, d_json in QUERIES:
            fc = timed(lambda: floe_query(f_col), args.runs)
            fj = timed(lambda: floe_query(f_json), args.runs)
            dc = timed(lambda: duck.sql(d_col).fetchall(), args.runs)
            dj = timed(lambda: duck.sql(d_json).fetchall(), args.runs)
            print(f"| {name} | {fc:.3f} | {fj:.3f} | {dc:.3f} | {dj:.3f} | {fj / fc:.1f}× | {fc / dc:.2f}× |",
                  flush=True)
        fv = timed(lambda: floe_query(VIEW_QUERY), args.runs)
        print(f"\ntop pages through the page_viewed view: {fv:.3f} s")
    finally:
        floe_server.stop(proc)


if __name__ == "__main__":
    main()
