"""Projections: how far they lag behind the events under steady ingest, and how fast they answer
beside the raw queries they replace, same run.

    FLOE_BIN=target/release/floe python bench/projections.py [--preload N] [--rate R] [--seconds S]

1. One tenant gets N events (default 10 million) whose times fall on today (UTC) so far, through
   `floe serve` + `floe gen` (in chunks of two million); the projections are filled from them
   (a replay), and the time that took is printed.
2. Then `floe gen --rate R` (default 20,000 events/s) sends events for S seconds (default 120).
   The lag of each projection is computed exactly from both tables' snapshot logs: for each
   commit to `events` during the run, the time until the first commit of the projection whose
   recorded events snapshot is that one or a later one. `GET /v1/projections` is sampled too.
3. Each query runs R times (after one warm-up) over the Trino protocol: `SELECT * FROM
   daily_active_users` and today's top pages, each beside the query over `events` it replaces.

Prints Markdown tables for BENCHMARKS.md, and the server's resident memory.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from pyiceberg.catalog.sql import SqlCatalog

import floe_server
from floe_server import FLOE

TENANT = "bench"
SOURCE_SEQUENCE = "floe.projection.source-sequence"
PROJECTIONS = ["daily_active_users", "top_pages", "revenue_by_day"]

# (name, over the projection, over the events it replaces)
QUERIES = [
    ("daily active users, 1/7/28 days",
     "SELECT * FROM daily_active_users ORDER BY day",
     """SELECT d.day, count(DISTINCT u.user_id) FILTER (WHERE u.day = d.day),
               count(DISTINCT u.user_id) FILTER (WHERE u.day > d.day - INTERVAL '7' DAY),
               count(DISTINCT u.user_id)
        FROM (SELECT DISTINCT CAST(ts AS DATE) AS day FROM events) d
        JOIN (SELECT DISTINCT CAST(ts AS DATE) AS day, user_id FROM events) u
          ON u.day BETWEEN d.day - INTERVAL '27' DAY AND d.day
        GROUP BY 1 ORDER BY 1"""),
    ("today's top pages",
     "SELECT page, views, visitors FROM top_pages WHERE day = current_date ORDER BY views DESC LIMIT 10",
     """SELECT json_extract_scalar(payload, '$.page') AS page, count(*) AS views, count(DISTINCT user_id)
        FROM events WHERE type = 'PageViewed' AND ts >= current_date
        GROUP BY 1 ORDER BY 2 DESC LIMIT 10"""),
]


def floe(data, *args, **kw):
    return subprocess.run([FLOE, "--data-dir", str(data), *args], check=True, capture_output=True, text=True, **kw)


def gen(data, url, events, seed, extra=()):
    return floe(data, "gen", "--url", url, "--tenants", TENANT, "--events", str(events), "--no-probe",
                "--duplicates", "0", "--seed", str(seed), "--batch", "2000", *extra)


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def status(url, token):
    req = urllib.request.Request(f"{url}/v1/projections", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return {p["name"]: p for p in json.loads(r.read())["projections"]}


def caught_up(url, token, timeout):
    deadline = time.time() + timeout
    while True:
        s = status(url, token)
        if all(p["source_snapshot"] and p["lag_events"] == 0 for p in s.values()):
            return s
        if time.time() > deadline:
            raise RuntimeError(f"projections not caught up within {timeout} s: {s}")
        time.sleep(0.2)


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


def exact_lags(cat, since_ms):
    """Seconds from each commit to `events` after `since_ms` until each projection reflected it."""
    events = cat.load_table(f"{TENANT}.events")
    steady = [s for s in events.metadata.snapshots
              if s.timestamp_ms >= since_ms and s.summary.operation.value == "append"]
    appends = [(s.sequence_number, s.timestamp_ms) for s in steady]
    records = sum(int(s.summary.additional_properties.get("added-records", 0)) for s in steady)
    span = (max(at for _, at in appends) - min(at for _, at in appends)) / 1000 if appends else 0
    lags = {}
    for name in PROJECTIONS:
        table = cat.load_table(f"{TENANT}.{name}")
        reflected = sorted((int(s.summary.additional_properties[SOURCE_SEQUENCE]), s.timestamp_ms)
                           for s in table.metadata.snapshots if SOURCE_SEQUENCE in s.summary.additional_properties)
        out = []
        for seq, at in appends:
            after = [ts for reflected_seq, ts in reflected if reflected_seq >= seq and ts >= at]
            if after:
                out.append((min(after) - at) / 1000)
        lags[name] = (out, len(appends))
    return lags, records / span if span else float("nan")


def timed(fn, runs):
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), pct(times, 0.99)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preload", type=int, default=10_000_000)
    ap.add_argument("--rate", type=float, default=20_000)
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="floe-pbench-"))
    data = tmp / "floe"
    floe(data, "tenant", "create", TENANT)
    # Projection snapshots kept for the whole run: the lag is read from their log afterwards.
    proc, port, url = floe_server.start(data, tmp / "serve.log",
                                        ["--set", "projection.snapshot_max_age_secs=3600",
                                         "--set", "compaction.snapshot_max_age_secs=3600"])
    try:
        viewer = floe(data, "token", "issue", "--tenant", TENANT, "--role", "viewer").stdout.strip()
        now = datetime.datetime.now(datetime.timezone.utc)
        today_so_far = int((now - now.replace(hour=0, minute=0, second=0, microsecond=0)).total_seconds())
        started = time.time()
        left, seed = args.preload, 1
        while left > 0:
            chunk = min(left, 2_000_000)
            gen(data, url, chunk, seed, ["--ts-spread-secs", str(max(today_so_far - 60, 1))])
            left -= chunk
            seed += 1
        loaded = time.time() - started
        caught_up(url, viewer, 3600)
        replayed = time.time() - started - loaded
        print(f"preload: {args.preload:,} events on today in {loaded:.0f} s; projections caught up "
              f"{replayed:.1f} s later; server RSS {rss_mib(proc.pid):.0f} MiB")

        # Steady ingest, sampling the HTTP lag meanwhile.
        samples, stop = [], threading.Event()

        def sample():
            while not stop.is_set():
                try:
                    samples.extend(p["lag_seconds"] for p in status(url, viewer).values())
                except Exception:
                    pass
                time.sleep(0.2)

        sampler = threading.Thread(target=sample)
        since_ms = int(time.time() * 1000)
        sampler.start()
        t = time.time()
        gen(data, url, int(args.rate * args.seconds), seed + 1,
            ["--ts-spread-secs", "1", "--rate", str(args.rate), "--concurrency", "16"])
        sent_for = time.time() - t
        caught_up(url, viewer, 120)
        stop.set()
        sampler.join()
        cat = SqlCatalog("floe", uri=f"sqlite:///{data}/catalog.db", warehouse=f"file://{data}/warehouse")
        print()
        lags, committed_rate = exact_lags(cat, since_ms)
        print(f"{platform.machine()}, {os.cpu_count()} cores; {args.preload:,} events on today, then "
              f"{int(args.rate * args.seconds):,} events at {args.rate:,.0f}/s asked: "
              f"{committed_rate:,.0f}/s committed (first to last commit; `floe gen` took {sent_for:.0f} s "
              f"with building its requests)")
        print()
        print("| projection | events commits | lag p50 | lag p99 | lag max |")
        print("|---|---:|---:|---:|---:|")
        for name, (lags, commits) in lags.items():
            print(f"| {name} | {commits} | {pct(lags, 0.5):.2f} s | {pct(lags, 0.99):.2f} s | "
                  f"{max(lags, default=float('nan')):.2f} s |")
        print(f"| `GET /v1/projections` lag_seconds, sampled every 0.2 s | {len(samples)} samples | "
              f"{pct(samples, 0.5):.2f} s | {pct(samples, 0.99):.2f} s | {max(samples, default=0):.2f} s |")
        print(f"\nserver RSS after the run: {rss_mib(proc.pid):.0f} MiB")

        query = floe_server.analyst_query(data, port, TENANT)

        print()
        print(f"Trino protocol, median and p99 of {args.runs} runs")
        print()
        print("| query | projection p50 | p99 | raw events p50 | p99 | raw / projection (p50) |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, projected, raw in QUERIES:
            p50, p99 = timed(lambda: query(projected), args.runs)
            r50, r99 = timed(lambda: query(raw), max(3, args.runs // 10))
            print(f"| {name} | {p50 * 1000:.0f} ms | {p99 * 1000:.0f} ms | {r50 * 1000:.0f} ms | "
                  f"{r99 * 1000:.0f} ms | {r50 / p50:.0f}× |", flush=True)
    finally:
        floe_server.stop(proc)


if __name__ == "__main__":
    main()
