"""Compaction: a table built from many small commits, before and after `floe compact`.

    FLOE_BIN=target/release/floe python bench/compaction.py [--commits 5000] [--events-per-commit 200] [--runs 3]
        [--one-stream-too]

1. `floe serve` (maintenance schedule off) takes `--commits` requests of `--events-per-commit`
   events over three days, each acknowledged with `?wait=visible`: one Iceberg commit each.
2. The query set of bench/query_vs_duckdb.py runs through the Trino protocol (median of R).
3. `floe compact` (with snapshot expiry down to the current snapshot) rewrites the table; its
   throughput (input MB/s) is printed beside the raw read-plus-write rate of the same input
   files: DuckDB reading them and writing one sorted ZSTD Parquet file, in the same run. With
   `--one-stream-too`, a second tenant gets the same commits during the load, and is compacted
   first with one read stream (`compaction.read_parallelism=1`, the way a bin was read before).
   (The warehouse cannot be copied for this: its metadata names files by absolute path.)
4. The checks of issue 6: files per partition at most ceil(bytes / target) + 1, rows and
   checksums unchanged, pyiceberg and DuckDB read the compacted table.
5. The queries again. Prints Markdown tables for BENCHMARKS.md.
"""

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import duckdb
from pyiceberg.catalog.sql import SqlCatalog

import floe_server
from floe_server import FLOE
from query_vs_duckdb import QUERIES, timed

TENANT = "bench"
# With --one-stream-too: a second tenant given the same commits, compacted with one read stream.
ONE_STREAM = "bench-one-stream"
TARGET = 128 << 20
CHECKSUM = ("SELECT count(*), count(DISTINCT event_id), sum(length(payload)), min(ts), max(ts), "
            "count(DISTINCT user_id) FROM events")


def floe(data, *args):
    return subprocess.run([FLOE, "--data-dir", str(data), *args], check=True, capture_output=True,
                          text=True).stdout


def post(url, token, events):
    req = urllib.request.Request(f"{url}/v1/events?wait=visible", data=json.dumps(events).encode(),
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=120) as r:
        reply = json.loads(r.read())
    assert reply["accepted"] == len(events), reply


def rewrite_seconds(report):
    """The seconds `floe compact` printed for planning, rewriting and committing the events
    table's bins (its lines between the plan and the expiry of `TENANT.events`)."""
    total, inside = 0.0, False
    for line in report.splitlines():
        if line.startswith(f"{TENANT}.events: ") and "to plan)" in line:
            inside = True
            total += float(re.search(r"\(([\d.]+) s to plan\)", line).group(1))
        elif inside and re.match(r"\s+\[\d+/\d+\] ", line):
            total += float(re.search(r" rows, ([\d.]+) s, ", line).group(1))
        elif inside and re.match(r"\s+(committed \d+ bins? in one snapshot|dropped \d+ bins?,)", line):
            total += float(re.search(r"\(([\d.]+) s\)", line).group(1))
        elif inside:
            break
    return total


def live_files(data):
    table = SqlCatalog("floe", uri=f"sqlite:///{data}/catalog.db",
                       warehouse=f"file://{data}/warehouse").load_table(f"{TENANT}.events")
    return table, [(t.file.file_path.removeprefix("file://"), t.file.partition, t.file.file_size_in_bytes)
                   for t in table.scan().plan_files()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=5000)
    ap.add_argument("--events-per-commit", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--one-stream-too", action="store_true",
                    help="also time `floe compact` of a second tenant with the same commits with one "
                         "read stream (compaction.read_parallelism=1), beside the default of one per core")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="floe-cbench-"))
    data = tmp / "floe"
    floe(data, "tenant", "create", TENANT)
    if args.one_stream_too:
        floe(data, "tenant", "create", ONE_STREAM)
    proc, port, url = floe_server.start(data, tmp / "serve.log", extra=[
        "--set", "compaction.interval_secs=0", "--set", "ingest.flush_interval_ms=5"])
    try:
        token = floe(data, "token", "issue", "--tenant", TENANT, "--role", "admin").strip()
        tokens = [token]
        if args.one_stream_too:
            tokens.append(floe(data, "token", "issue", "--tenant", ONE_STREAM, "--role", "admin").strip())
        now = int(time.time())
        started = time.time()
        n = args.events_per_commit
        for c in range(args.commits):
            batch = [{
                "event_id": f"e-{c}-{i}",
                "type": ["PageViewed", "PurchaseMade", "SensorReading"][(c + i) % 3],
                "timestamp": now - ((c * n + i) * 7919) % (3 * 86400),
                "user_id": f"u-{(c * n + i) % 5000}",
                "payload": {"page": f"/p/{i % 20}", "amount": (c + i) % 500, "currency": "EUR"},
            } for i in range(n)]
            for t in tokens:
                post(url, t, batch)
        load_s = time.time() - started
        load_rss = floe_server.peak_rss_mib(proc)
        print(f"loaded {args.commits} commits of {n} events in {load_s:.0f} s"
              + (" (to each of two tenants)" if args.one_stream_too else ""), flush=True)

        q = floe_server.analyst_query(data, port, TENANT)

        checksum = q(CHECKSUM)
        _, before_files = live_files(data)
        bytes_in = sum(f[2] for f in before_files)
        before = {name: timed(lambda: q(sql), args.runs) for name, sql, _ in QUERIES}
        before_rss = floe_server.peak_rss_mib(proc)
        print(f"before: {len(before_files)} files; query seconds {before}", flush=True)

        # The peer: DuckDB reads the same files and writes them sorted into one ZSTD file.
        duck = duckdb.connect()
        out = tmp / "duckdb-rewrite.parquet"
        t = time.perf_counter()
        duck.execute(f"COPY (SELECT * FROM read_parquet({[f[0] for f in before_files]!r}) ORDER BY type, ts) "
                     f"TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
        duck_s = time.perf_counter() - t

        one_stream = None
        if args.one_stream_too:
            q1 = floe_server.analyst_query(data, port, ONE_STREAM)
            assert q1(CHECKSUM) == checksum, "the one-stream tenant holds other rows"
            t = time.perf_counter()
            _, one_rss = floe_server.run_peak_rss(
                [FLOE, "--data-dir", str(data), "--set", "compaction.read_parallelism=1", "--set",
                 "compaction.snapshot_max_age_secs=0", "--set", "compaction.min_snapshots=1", "compact",
                 "--tenant", ONE_STREAM])
            one_stream = (time.perf_counter() - t, one_rss)
            assert q1(CHECKSUM) == checksum, "rows or checksums changed (one read stream)"

        t = time.perf_counter()
        report, compact_rss = floe_server.run_peak_rss(
            [FLOE, "--data-dir", str(data), "--set", "compaction.snapshot_max_age_secs=0", "--set",
             "compaction.min_snapshots=1", "compact", "--tenant", TENANT])
        compact_s = time.perf_counter() - t
        print(f"floe compact: {compact_s:.1f} s; DuckDB rewrite: {duck_s:.1f} s\n{report}", flush=True)
        summary = [line for line in report.splitlines() if line.startswith(("compacted:", f"{TENANT}.events: expired"))]

        table, after_files = live_files(data)
        assert q(CHECKSUM) == checksum, "rows or checksums changed"
        parts = {}
        for _, part, size in after_files:
            parts.setdefault(str(part), []).append(size)
        for part, sizes in parts.items():
            assert len(sizes) <= math.ceil(sum(sizes) / TARGET) + 1, (part, sizes)
        arrow = table.scan().to_arrow()
        assert len(arrow) == checksum[0][0]
        duck_rows = duck.sql(f"SELECT count(*) FROM read_parquet({[f[0] for f in after_files]!r})").fetchall()[0][0]
        assert duck_rows == checksum[0][0]
        after = {name: timed(lambda: q(sql), args.runs) for name, sql, _ in QUERIES}
        serve_rss = floe_server.peak_rss_mib(proc)

        print()
        print(f"{args.commits} commits × {n} events = {checksum[0][0]:,} rows; {platform.machine()}, "
              f"{os.cpu_count()} cores; median of {args.runs}")
        print()
        print(f"- before: {len(before_files)} files, {bytes_in / 2**20:.1f} MiB; after: {len(after_files)} files "
              f"in {len(parts)} partitions, {sum(f[2] for f in after_files) / 2**20:.1f} MiB")
        print(f"- `floe compact`: {compact_s:.1f} s, {bytes_in / 1e6 / compact_s:.1f} MB/s of input "
              f"(whole command: planning, rewrite, commits, expiry, garbage)")
        print(f"- DuckDB read + sort + write of the same files: {duck_s:.1f} s, {bytes_in / 1e6 / duck_s:.1f} MB/s "
              f"(Floe / DuckDB time: {compact_s / duck_s:.2f}×)")
        rewrite_s = rewrite_seconds(report)
        print(f"- of which the rewrite of `{TENANT}.events` (planning, the bins, their commits; not expiry and "
              f"garbage): {rewrite_s:.1f} s, {bytes_in / 1e6 / rewrite_s:.1f} MB/s "
              f"(Floe / DuckDB time: {rewrite_s / duck_s:.2f}×)")
        if one_stream:
            print(f"- `floe compact` of the same table with one read stream (`compaction.read_parallelism=1`): "
                  f"{one_stream[0]:.1f} s ({one_stream[0] / duck_s:.2f}× DuckDB), peak {one_stream[1]:,.0f} MiB")
        for line in summary:
            print(f"- {line}")
        print(f"- peak resident memory: `floe serve` {serve_rss:,.0f} MiB (by the end of the load "
              f"{load_rss:,.0f}, of the queries before compaction {before_rss:,.0f}), "
              f"`floe compact` {compact_rss:,.0f} MiB")
        print()
        print("| query | before (s) | after (s) | speed-up |")
        print("|---|---:|---:|---:|")
        ups = []
        for name, _, _ in QUERIES:
            ups.append(before[name] / after[name])
            print(f"| {name} | {before[name]:.3f} | {after[name]:.3f} | {ups[-1]:.1f}× |")
        print(f"| geometric mean | | | {statistics.geometric_mean(ups):.1f}× |")
        m = re.search(r"(\d+) snapshots expired", report)
        print(f"\nsnapshots expired: {m.group(1) if m else '?'}")
    finally:
        floe_server.stop(proc)


if __name__ == "__main__":
    main()
