"""Ingest throughput: Floe end to end over HTTP versus peers on the same machine, same run.

    FLOE_BIN=target/release/floe python bench/ingest_vs_peers.py [--events-per-tenant N]

- floe:      `floe serve` + `floe gen` (3 tenants, batches of 500, mixed JSON/NDJSON/gzip,
             1% duplicates): validated, de-duplicated, fsynced to the write-ahead log before
             each reply, committed to Iceberg within a second.
- pyiceberg: the same events parsed from NDJSON and appended to an Iceberg table of the same
             schema and day(ts) partitioning in a SQLite SqlCatalog, one append per 25,000
             events (about Floe's commit size at this rate). No HTTP, no log, no de-dup.
- duckdb:    NDJSON to one ZSTD Parquet file with read_json + COPY: parse and encode only,
             no catalog, no durability. An upper bound for the file-writing part.

Prints a Markdown table; the figures go into BENCHMARKS.md.
"""

import argparse
import json
import os
import platform
import random
import subprocess
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform
from pyiceberg.types import IntegerType, NestedField, StringType, TimestamptzType

import floe_server

from floe_server import FLOE
TYPES = ["PageViewed", "PurchaseMade", "SensorReading", "AlertTriggered"]


def run_floe(tmp, per_tenant, concurrency):
    data = tmp / "floe"
    proc, _, url = floe_server.start(data, tmp / "serve.log")
    out = subprocess.run(
        [FLOE, "--data-dir", str(data), "gen", "--url", url, "--tenants", "bench-1,bench-2,bench-3",
         "--events", str(per_tenant), "--batch", "500", "--concurrency", str(concurrency)],
        capture_output=True, text=True, check=True)
    rss = floe_server.peak_rss_mib(proc)
    floe_server.stop(proc)
    return {**json.loads(out.stdout), "serve_peak_rss_mib": rss}


def make_events(n, seed=7):
    rng = random.Random(seed)
    now = int(time.time())
    for i in range(n):
        kind = TYPES[i % 4]
        yield {
            "event_id": f"{seed}-{i}",
            "type": kind,
            "version": 1,
            "timestamp": (now - rng.randrange(3 * 86400)) * 1000,
            "user_id": f"u-{rng.randrange(5000)}",
            "payload": {"page": "/home", "ref": "newsletter", "amount": rng.randrange(10000) / 100},
        }


SCHEMA = Schema(
    NestedField(1, "event_id", StringType(), required=True),
    NestedField(2, "tenant_id", StringType(), required=True),
    NestedField(3, "type", StringType(), required=True),
    NestedField(4, "version", IntegerType(), required=True),
    NestedField(5, "ts", TimestamptzType(), required=True),
    NestedField(6, "received_at", TimestamptzType(), required=True),
    NestedField(7, "user_id", StringType(), required=False),
    NestedField(8, "payload", StringType(), required=True),
)
ARROW = pa.schema([
    pa.field("event_id", pa.string(), False), pa.field("tenant_id", pa.string(), False),
    pa.field("type", pa.string(), False), pa.field("version", pa.int32(), False),
    pa.field("ts", pa.timestamp("us", tz="UTC"), False),
    pa.field("received_at", pa.timestamp("us", tz="UTC"), False),
    pa.field("user_id", pa.string(), True), pa.field("payload", pa.string(), False),
])


def run_pyiceberg(tmp, ndjson, n, chunk=25_000):
    wh = tmp / "pyice"
    wh.mkdir()
    cat = SqlCatalog("peer", uri=f"sqlite:///{wh}/catalog.db", warehouse=f"file://{wh}")
    cat.create_namespace("t")
    table = cat.create_table("t.events", schema=SCHEMA, partition_spec=PartitionSpec(
        PartitionField(source_id=5, field_id=1000, transform=DayTransform(), name="ts_day")))
    start = time.perf_counter()
    with open(ndjson) as f:
        rows = []
        for line in f:
            e = json.loads(line)
            now_us = int(time.time() * 1e6)
            rows.append((e["event_id"], "t", e["type"], e["version"], e["timestamp"] * 1000, now_us,
                         e["user_id"], json.dumps(e["payload"])))
            if len(rows) == chunk:
                table.append(to_arrow(rows))
                rows = []
        if rows:
            table.append(to_arrow(rows))
    secs = time.perf_counter() - start
    return n / secs, secs


def to_arrow(rows):
    cols = list(zip(*rows))
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(cols, ARROW)], schema=ARROW)


def run_duckdb(tmp, ndjson, n):
    con = duckdb.connect()
    start = time.perf_counter()
    con.execute(
        f"COPY (SELECT * FROM read_json('{ndjson}', format='newline_delimited')) "
        f"TO '{tmp}/duck.parquet' (FORMAT parquet, COMPRESSION zstd)")
    secs = time.perf_counter() - start
    return n / secs, secs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events-per-tenant", type=int, default=400_000)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        report = run_floe(tmp, args.events_per_tenant, args.concurrency)
        n = report["events_sent"]
        ndjson = tmp / "events.ndjson"
        with open(ndjson, "w") as f:
            for e in make_events(n):
                f.write(json.dumps(e) + "\n")
        py_rate, py_secs = run_pyiceberg(tmp, ndjson, n)
        dd_rate, dd_secs = run_duckdb(tmp, ndjson, n)
    floe_rate = report["events_per_sec"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"duckdb {duckdb.__version__}")
    print(f"events: {n} ({args.events_per_tenant} per tenant x 3, batches of 500)\n")
    print("| system | what it does | events/s | Floe / it |")
    print("|---|---|---:|---:|")
    print(f"| Floe | HTTP, validate, de-dup, fsync WAL, Iceberg commit <= 1 s | {floe_rate:,.0f} | 1.00 |")
    print(f"| pyiceberg {__import__('pyiceberg').__version__} | parse, append 25k-event commits | {py_rate:,.0f} | {floe_rate / py_rate:.2f} |")
    print(f"| DuckDB | NDJSON to one Parquet file, no catalog | {dd_rate:,.0f} | {floe_rate / dd_rate:.2f} |")
    print(f"\nFloe time-to-visible: p50 {report['visible_p50_ms']:.0f} ms, p99 {report['visible_p99_ms']:.0f} ms "
          f"({report['visible_samples']} samples); `floe serve` peak resident memory "
          f"{report['serve_peak_rss_mib']:,.0f} MiB")


if __name__ == "__main__":
    main()
