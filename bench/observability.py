"""What metrics and traces cost ingest: the same `floe gen` load with no telemetry, with the
Prometheus endpoint on and scraped every second, and with traces sent to an OTLP collector too.

    FLOE_BIN=target/release/floe python bench/observability.py [--events-per-tenant N] [--rounds R]

Each round runs `floe serve` + `floe gen` (3 tenants, batches of 500, 8 connections, mixed
JSON/NDJSON/gzip, 1 % duplicates) once per arm on fresh data dirs; rounds rotate which arm goes
first. The collector is a minimal OTLP/HTTP receiver in this process (it reads and drops the
batches). Prints events/s accepted for each arm and the ratio to no telemetry.
"""

import argparse
import http.server
import platform
import tempfile
import threading
import urllib.request
from pathlib import Path

import floe_server
from floe_server import free_port

TENANTS = ["bench-1", "bench-2", "bench-3"]
ARMS = ["no telemetry", "metrics, scraped every second", "metrics + traces to a collector"]


class Collector(http.server.BaseHTTPRequestHandler):
    spans_bytes = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Collector.spans_bytes += len(body)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def run(tmp, per_tenant, arm, collector_url):
    data = tmp / "data"
    extra, metrics_port = [], None
    if arm != ARMS[0]:
        metrics_port = free_port()
        extra += ["--set", f"metrics.listen=127.0.0.1:{metrics_port}"]
    if arm == ARMS[2]:
        extra += ["--otlp-endpoint", collector_url]
    proc, _, url = floe_server.start(data, tmp / "serve.log", extra)
    done = threading.Event()
    scrapes = []

    def scrape():
        while not done.wait(1.0):
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
                scrapes.append(len(r.read()))

    scraper = threading.Thread(target=scrape, daemon=True)
    if metrics_port:
        scraper.start()
    try:
        report = floe_server.gen(data, url, TENANTS, per_tenant)
    finally:
        done.set()
        floe_server.stop(proc)
    return report["events_per_sec"], len(scrapes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events-per-tenant", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    collector_url = f"http://127.0.0.1:{collector.server_address[1]}"
    rates = {arm: [] for arm in ARMS}
    for r in range(args.rounds):
        for arm in floe_server.rotated(ARMS, r):
            with tempfile.TemporaryDirectory() as d:
                rate, scrapes = run(Path(d), args.events_per_tenant, arm, collector_url)
                rates[arm].append(rate)
                print(f"round {r + 1}: {arm}: {rate:,.0f} events/s ({scrapes} scrapes)", flush=True)
    collector.shutdown()
    print(f"\nmachine: {platform.machine()}, {platform.system()}; {args.rounds} rounds of "
          f"{len(TENANTS)} x {args.events_per_tenant:,} events; the collector received "
          f"{Collector.spans_bytes / 1e6:.1f} MB of spans\n")
    floe_server.ratio_table(rates, ARMS, "no telemetry")


if __name__ == "__main__":
    main()
