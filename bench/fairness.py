"""Fairness between tenants: tenant B's ingest time-to-visible and query latency, alone and
while tenant A floods ingest at ten times its quota and runs heavy queries, on one `floe serve`.

    FLOE_BIN=target/release/floe python bench/fairness.py [--seconds 30] [--quota 5000] [--flood 10]

Both tenants get the quota `ingest_events_per_sec` (default 5,000, burst 2 s). B sends 200
events five times a second with `?wait=visible` (its time-to-visible is send-to-reply) and runs
`SELECT type, count(*) FROM events GROUP BY type` five times a second (enough samples for a
p99). A's table is loaded first (`--a-events`, 500,000, with its quota lifted for the load).
A, in the second phase, sends 500-event batches from four connections at ten times its quota
(`--flood`; 0 sends as fast as the server answers; -1 not at all; most get 429), and runs two
heavy queries at a time in a loop (distinct users and a sort over its whole table; `--heavy`). A runs in a process of its own, so that its client
work does not hold up B's client (one Python process would share one interpreter lock). The peer
of each figure is B's own baseline in the same run.

B's table grows during the run (five commits a second), and its query's time grows with its
files. So that the baseline is not measured on a smaller table than the contended phase, the
phases alternate (`--rounds` of alone, then contended) and B's table is compacted before each
phase (`floe compact --tenant tenant-b`, as a production schedule would keep it): every phase
starts from the same few files and adds the same number.

Prints a Markdown table; the figures go into BENCHMARKS.md.
"""

import argparse
import http.client
import json
import multiprocessing
import random
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import floe_server
from floe_server import FLOE


def floe(data, *args):
    done = subprocess.run([FLOE, "--data-dir", str(data), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"floe {' '.join(args)} exited with {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()


def live_files(data, tenant):
    """Live data files of the tenant's tables (`floe compact --dry-run`)."""
    out = floe(data, "compact", "--tenant", tenant, "--dry-run")
    return int(out.split("dry run: ", 1)[1].split(" files", 1)[0])


def body_of(tenant, start, n):
    now = int(time.time())
    return json.dumps([{"event_id": f"{tenant}-{start + i}", "type": ["PageViewed", "PurchaseMade"][i % 2],
                        "user_id": f"u{(start + i) % 5000}", "timestamp": now - (i % 86400),
                        "payload": {"page": f"/p/{i % 50}", "amount": i % 100}} for i in range(n)]).encode()


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def ratio_interval(alone, contended, p=99, draws=2000):
    """The 5th and 95th percentiles of the ratio of the two arms' p-th percentiles, each arm
    resampled with replacement (a bootstrap): how far one run's ratio can be trusted."""
    if not alone or not contended:
        return float("nan"), float("nan")
    rng = random.Random(0)
    ratios = sorted(pct(rng.choices(contended, k=len(contended)), p) /
                    pct(rng.choices(alone, k=len(alone)), p) for _ in range(draws))
    return ratios[int(0.05 * draws)], ratios[int(0.95 * draws)]


class Tenant:
    def __init__(self, url, data, name):
        self.url, self.name = url, name
        self.host, self.port = url.removeprefix("http://").split(":")
        self.ingest = floe(data, "token", "issue", "--tenant", name, "--role", "ingest", "--ttl", "2h")
        self.analyst = floe(data, "token", "issue", "--tenant", name, "--role", "analyst", "--ttl", "2h")

    def post(self, body, wait):
        req = urllib.request.Request(f"{self.url}/v1/events" + ("?wait=visible" if wait else ""), data=body,
                                     method="POST", headers={"Authorization": f"Bearer {self.ingest}",
                                                             "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def count(self):
        return int(self.rows("SELECT count(*) FROM events")[0][0])

    def query(self, sql):
        return self.rows(sql, error_only=True)

    def timed(self, sql):
        """Runs `sql`; its error name (None) and its last page's `stats`."""
        return self.rows(sql, error_only="stats")

    def rows(self, sql, error_only=False):
        hdrs = {"Authorization": f"Bearer {self.analyst}", "X-Trino-User": self.name}
        req = urllib.request.Request(f"{self.url}/v1/statement", data=sql.encode(), method="POST", headers=hdrs)
        with urllib.request.urlopen(req, timeout=120) as r:
            page = json.loads(r.read())
        data = page.get("data", [])
        while page.get("nextUri"):
            with urllib.request.urlopen(urllib.request.Request(page["nextUri"], headers=hdrs), timeout=120) as r:
                page = json.loads(r.read())
            data += page.get("data", [])
        error = page.get("error", {}).get("errorName")
        if error_only == "stats":
            return error, page.get("stats", {})
        if error_only:
            return error
        assert error is None, f"{sql}: {error}"
        return data


def tenant_b(b, seconds, results):
    """B's steady load; fills `results` with time-to-visible and query latencies (ms)."""
    started = time.monotonic()
    stop = started + seconds
    sent = [results.get("sent", 0)]

    def ingest():
        while time.monotonic() < stop:
            t0 = time.monotonic()
            status = b.post(body_of(b.name, sent[0], 200), wait=True)
            sent[0] += 200
            if status == 200:
                results["visible"].append((time.monotonic() - t0) * 1000)
            else:
                results["refused"] += 1
            time.sleep(max(0.0, 0.2 - (time.monotonic() - t0)))

    def query():
        while time.monotonic() < stop:
            t0 = time.monotonic()
            error, stats = b.timed("SELECT type, count(*) FROM events GROUP BY type")
            if error is None:
                ms = (time.monotonic() - t0) * 1000
                results["query"].append(ms)
                results["split"].append((ms, stats.get("elapsedTimeMillis", 0), stats.get("cpuTimeMillis", 0),
                                         stats.get("wallTimeMillis", 0) - stats.get("cpuTimeMillis", 0),
                                         t0 - started))
            else:
                results["query_errors"].append(error)
            time.sleep(max(0.0, 0.2 - (time.monotonic() - t0)))

    threads = [threading.Thread(target=ingest), threading.Thread(target=query)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results["sent"] = sent[0]


def tenant_a(a, seconds, rate, heavies, out, ready):
    """A's flood: four connections of 500-event batches at `rate` events/s in all (0: as fast
    as answered; None: no flood); `heavies` heavy queries at a time. Sets `ready` once its
    bodies are made (the client's own work, half a second of a core, which would otherwise
    fall into B's phase), then loads for `seconds`; puts its counts on `out` when done."""
    stats = {"attempted": 0, "accepted": 0, "429": 0, "queries": 0, "query_errors": 0}
    gap = 4 * 500 / rate if rate else 0.0
    bodies = [body_of(a.name, i * 500, 500) for i in range(200)]
    ready.set()
    stop = time.monotonic() + seconds

    def flood(k):
        conn = http.client.HTTPConnection(a.host, int(a.port), timeout=60)
        i = k
        next_at = time.monotonic()
        while time.monotonic() < stop:
            next_at += gap
            time.sleep(max(0.0, next_at - time.monotonic()))
            conn.request("POST", "/v1/events", body=bodies[i % len(bodies)],
                         headers={"Authorization": f"Bearer {a.ingest}", "Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            stats["attempted"] += 500
            if r.status == 200:
                stats["accepted"] += 500
            elif r.status == 429:
                stats["429"] += 1
            i += 4

    def heavy():
        sqls = ["SELECT count(DISTINCT user_id), count(DISTINCT event_id) FROM events",
                "SELECT event_id, payload FROM events ORDER BY payload DESC, event_id LIMIT 10"]
        i = 0
        while time.monotonic() < stop:
            error = a.query(sqls[i % 2])
            stats["queries"] += 1
            if error:
                stats["query_errors"] += 1
            i += 1

    threads = [threading.Thread(target=flood, args=(k,)) for k in range(4 if rate is not None else 0)]
    threads += [threading.Thread(target=heavy) for _ in range(heavies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(stats)


def summary(label, r):
    return (f"| {label} | {pct(r['visible'], 50):.0f} ms | {pct(r['visible'], 99):.0f} ms | "
            f"{pct(r['query'], 50):.0f} ms | {pct(r['query'], 99):.0f} ms | {len(r['visible'])} / "
            f"{len(r['query'])} | {r['refused']} / {len(r['query_errors'])} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--quota", type=int, default=5000)
    ap.add_argument("--flood", type=float, default=10,
                    help="A's attempted rate as a multiple of its quota (0: as fast as answered; "
                         "-1: no flood)")
    ap.add_argument("--heavy", type=int, default=2, help="A's heavy queries at a time")
    ap.add_argument("--a-events", type=int, default=500_000, help="events in A's table")
    ap.add_argument("--rounds", type=int, default=4,
                    help="rounds of (alone, contended) phases (B queries five times a second: 600 "
                         "queries an arm at 30 s a phase; with fewer its p99 is one or two queries)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting for the server (`floe serve --set`), e.g. query.cpu_slots=1")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="floe-fair-"))
    data = tmp / "floe"
    data.mkdir()
    proc, _, url = floe_server.start(data, tmp / "serve.log", extra=(
        "--set", f"quota.ingest_events_per_sec={args.quota}", "--set", "quota.refresh_secs=1",
        "--set", "compaction.interval_secs=0", *(a for kv in args.set for a in ("--set", kv))))
    try:
        for t in ("tenant-a", "tenant-b"):
            floe(data, "tenant", "create", t)
        a, b = Tenant(url, data, "tenant-a"), Tenant(url, data, "tenant-b")
        # A's table holds enough for its queries to be heavy before the flood starts: loaded
        # with its ingest quotas lifted, which then go back to the defaults.
        floe(data, "tenant", "set", a.name, "--quota", "ingest_events_per_sec=0",
             "--quota", "ingest_bytes_per_sec=0")
        time.sleep(2)
        for i in range(0, args.a_events, 5000):
            status = a.post(body_of(a.name, 10_000_000 + i, min(5000, args.a_events - i)), wait=False)
            assert status == 200, f"loading A's table: HTTP {status}"
        floe(data, "tenant", "set", a.name, "--quota", "ingest_events_per_sec=default",
             "--quota", "ingest_bytes_per_sec=default")
        deadline = time.monotonic() + 60
        while a.count() < args.a_events:
            assert time.monotonic() < deadline, "A's table did not become visible"
            time.sleep(0.5)
        time.sleep(2)
        fresh = lambda: {"visible": [], "query": [], "split": [], "refused": 0, "query_errors": [],  # noqa: E731
                         "sent": 0}
        solo, contended = fresh(), fresh()
        rate = None if args.flood < 0 else int(args.flood * args.quota)
        ctx = multiprocessing.get_context("fork")
        stats, elapsed, phases = {}, 0.0, []
        for _ in range(args.rounds):
            for arm in ("alone", "contended"):
                floe(data, "compact", "--tenant", b.name)
                files = live_files(data, b.name)
                phase = fresh()
                phase["sent"] = max(solo["sent"], contended["sent"])
                if arm == "alone":
                    tenant_b(b, args.seconds, phase)
                else:
                    out, ready = ctx.Queue(), ctx.Event()
                    flood = ctx.Process(target=tenant_a, args=(a, args.seconds, rate, args.heavy, out, ready))
                    flood.start()
                    assert ready.wait(120), "tenant A's client did not get ready"
                    started = time.monotonic()
                    tenant_b(b, args.seconds, phase)
                    for k, v in out.get().items():
                        stats[k] = stats.get(k, 0) + v
                    flood.join()
                    elapsed += time.monotonic() - started
                phases.append((arm, files, live_files(data, b.name), phase))
                total = solo if arm == "alone" else contended
                for k in ("visible", "query", "split", "query_errors"):
                    total[k] += phase[k]
                total["refused"] += phase["refused"]
                total["sent"] = phase["sent"]
                solo["sent"] = contended["sent"] = phase["sent"]
    finally:
        floe_server.stop(proc)
    print(f"quota ingest_events_per_sec = {args.quota} for both tenants; {args.seconds} s per phase\n")
    print("| tenant B | time-to-visible p50 | p99 | query p50 | p99 | samples (ingest / queries) | refused (ingest / queries) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(summary("alone", solo))
    print(summary("while A floods", contended))
    print("\nPhases (B's live files at the start and end of each, after its compaction):\n")
    print("| phase | B's files | query p50 | p99 | time-to-visible p99 |")
    print("|---|---:|---:|---:|---:|")
    for arm, before, after, r in phases:
        print(f"| {arm} | {before} → {after} | {pct(r['query'], 50):.0f} ms | {pct(r['query'], 99):.0f} ms | "
              f"{pct(r['visible'], 99):.0f} ms |")
    print("\nWhere B's query time went (ms; the server's figures are its last page's `stats`): the")
    print("median query, and the mean of the slowest 2 % (client = sent to last page read; server =")
    print("submitted to last page made; on a core = its steps holding a query CPU slot; waiting = its")
    print("steps waiting for one; the rest of the server's time is reading files and handing pages on):\n")
    print("| tenant B | queries | client | server | on a core | waiting for a core | client − server |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, r in (("alone", solo), ("while A floods", contended)):
        split = sorted(r["split"])
        if not split:
            continue
        slow = split[-max(1, len(split) // 50):]
        for which, rows in (("median", [split[len(split) // 2]]), ("slowest 2 %", slow)):
            mean = [sum(x[i] for x in rows) / len(rows) for i in range(4)]
            print(f"| {label} | {which} | {mean[0]:.0f} | {mean[1]:.0f} | {mean[2]:.0f} | {mean[3]:.0f} | "
                  f"{mean[0] - mean[1]:.0f} |")
    print("\nWhen B's slowest 2 % of queries were sent, in seconds from the start of their phase:\n")
    for label, r in (("alone", solo), ("while A floods", contended)):
        split = sorted(r["split"])
        slow = split[-max(1, len(split) // 50):]
        print(f"- {label}: " + ", ".join(f"{x[4]:.1f} s ({x[0]:.0f} ms)" for x in sorted(slow, key=lambda x: x[4])))
    ratio_v = pct(contended["visible"], 99) / pct(solo["visible"], 99)
    ratio_q = pct(contended["query"], 99) / pct(solo["query"], 99)
    low_v, high_v = ratio_interval(solo["visible"], contended["visible"])
    low_q, high_q = ratio_interval(solo["query"], contended["query"])
    print(f"\nB's p99 under A's flood / alone: time-to-visible {ratio_v:.2f}x, query {ratio_q:.2f}x")
    print(f"(90 % intervals of this run's ratios, B's samples resampled: time-to-visible "
          f"{low_v:.2f}-{high_v:.2f}x, query {low_q:.2f}-{high_q:.2f}x; separate runs have differed "
          f"by more, BENCHMARKS.md)")
    print(f"A: attempted {stats['attempted'] / elapsed:,.0f} events/s, accepted {stats['accepted'] / elapsed:,.0f} "
          f"events/s ({stats['429']} replies 429), {stats['queries']} heavy queries ({stats['query_errors']} refused)")


if __name__ == "__main__":
    main()
