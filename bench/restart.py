"""Restart after `kill -9`: how soon `floe serve` takes events again, beside how long reading
its de-duplication window from the tables takes (what the start waited for before it loaded the
window in the background).

    FLOE_BIN=target/release/floe python bench/restart.py [--ids N] [--runs R]

A tenant gets N generated events (each with its own id, all within the window), and one more,
`probe-1`, made visible; then the server is killed with SIGKILL and started again on the same
data, R times. Each run measures, from the new process' spawn:
- ready:    the first answer of /healthz;
- ingest:   the first 200 to an event sent right after (a new id);
- window:   the server's log line saying the window is loaded from the tables;
and sends `probe-1` again at once (a retry of a stored event, likely while the window loads):
the run fails unless the table then holds it exactly once.

Prints a Markdown table; the figures go into BENCHMARKS.md.
"""

import argparse
import json
import re
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import floe_server
from floe_server import FLOE

TENANT = "restart"


def floe(data, *args):
    return subprocess.run([FLOE, "--data-dir", str(data), *args], check=True, capture_output=True,
                          text=True).stdout


def post(url, token, events, wait=False, timeout=60):
    req = urllib.request.Request(f"{url}/v1/events{'?wait=visible' if wait else ''}",
                                 data=json.dumps(events).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def spawn(data, port, log_path):
    return subprocess.Popen([FLOE, "--data-dir", str(data), "serve", "--listen", f"127.0.0.1:{port}"],
                            stderr=open(log_path, "w"))


def until(what, deadline_s=300):
    """Calls `what` every millisecond until it returns a value other than None."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        v = what()
        if v is not None:
            return v
        time.sleep(0.001)
    raise RuntimeError("timed out")


def healthy(url):
    try:
        urllib.request.urlopen(f"{url}/healthz", timeout=1)
        return True
    except (urllib.error.URLError, ConnectionError, OSError):
        return None


def window_loaded(log_path):
    for line in Path(log_path).read_text(errors="replace").splitlines():
        if "de-duplication window loaded" in line:
            ids = re.search(r'ids[=":]+(\d+)', line)
            return int(ids.group(1)) if ids else -1
    return None


def restart_once(data, port, token, log_path, run):
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    proc = spawn(data, port, log_path)
    until(lambda: healthy(url))
    ready = time.monotonic() - t0
    reply = until(lambda: try_post(url, token, [event(f"new-{run}")]))
    ingest = time.monotonic() - t0
    retry = post(url, token, [event("probe-1")])
    ids = until(lambda: window_loaded(log_path))
    window = time.monotonic() - t0
    post(url, token, [], wait=True)
    return proc, {"ready": ready, "ingest": ingest, "window": window, "ids": ids,
                  "first_reply": reply, "retry_reply": retry}


def try_post(url, token, events):
    try:
        return post(url, token, events, timeout=5)
    except (urllib.error.URLError, ConnectionError, OSError):
        return None


def event(event_id):
    return {"event_id": event_id, "type": "PageViewed", "user_id": "u-1", "timestamp": int(time.time()),
            "payload": {"page": "/restart"}}


def probe_count(data):
    out = floe(data, "sql", "--tenant", TENANT, "--format", "csv",
               "SELECT count(*) FROM events WHERE event_id = 'probe-1'")
    return int(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ids", type=int, default=5_000_000, help="events (ids) in the window before the kill")
    ap.add_argument("--runs", type=int, default=3)
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="floe-restart-") as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        proc, port, url = floe_server.start(data, tmp / "load.log")
        floe(data, "tenant", "create", TENANT)
        token = floe(data, "token", "issue", "--tenant", TENANT, "--role", "ingest", "--ttl", "4h").strip()
        started = time.monotonic()
        floe_server.load(data, url, TENANT, opts.ids)
        post(url, token, [event("probe-1")], wait=True)
        print(f"loaded {opts.ids:,} events in {time.monotonic() - started:.0f} s", flush=True)
        rows = []
        for run in range(opts.runs):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc, r = restart_once(data, port, token, tmp / f"restart-{run}.log", run)
            rows.append(r)
            count = probe_count(data)
            print(f"run {run + 1}: ready {r['ready']:.2f} s, ingest {r['ingest']:.2f} s, window {r['window']:.2f} s "
                  f"({r['ids']:,} ids); retry of a stored event answered {r['retry_reply']}, stored {count}x",
                  flush=True)
            if count != 1:
                raise SystemExit(f"probe-1 is stored {count} times after run {run + 1}")
        floe_server.stop(proc)

    def med(k):
        return statistics.median(r[k] for r in rows)

    print(f"\n| after kill -9, window of {opts.ids:,} ids | median of {opts.runs} |")
    print("|---|---:|")
    print(f"| first /healthz answer | {med('ready'):.2f} s |")
    print(f"| first event accepted (200) | {med('ingest'):.2f} s |")
    print(f"| window read from the tables (the start's wait before) | {med('window'):.2f} s |")
    print(f"| ratio, accepted / window | {med('ingest') / med('window'):.2f}x |")


if __name__ == "__main__":
    main()
