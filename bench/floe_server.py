"""Starting and stopping `floe serve` for the benchmarks."""

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

FLOE = os.environ.get("FLOE_BIN", "target/release/floe")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(data, log_path, extra=()):
    """Starts `floe serve` on `data` (with `extra` global flags, e.g. `--set k=v`); returns the
    process, its port and its base URL."""
    port = free_port()
    proc = subprocess.Popen([FLOE, "--data-dir", str(data), *extra, "serve", "--listen", f"127.0.0.1:{port}"],
                            stderr=open(log_path, "w"))
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=1)
            return proc, port, url
        except Exception:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"floe serve did not start; see {log_path}")


def wait_for_window(log_path, timeout=120):
    """Waits until the server of `log_path` has read its de-duplication window from the tables
    (it does so in the background after a start: about 4 s of a core at 10 million ids, which a
    query timed meanwhile shares). Returns the seconds waited."""
    started = time.time()
    while time.time() - started < timeout:
        with open(log_path, errors="replace") as f:
            if "de-duplication window loaded" in f.read():
                return time.time() - started
        time.sleep(0.1)
    raise RuntimeError(f"the de-duplication window was not loaded within {timeout} s; see {log_path}")


def peak_rss_mib(proc):
    """The peak resident memory of a running process so far (Linux' VmHWM), in MiB."""
    with open(f"/proc/{proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_peak_rss(cmd):
    """Runs `cmd` to its end; returns its standard output and its peak resident memory in MiB.
    A non-zero exit raises, with the end of its standard error."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise RuntimeError(f"{cmd} exited with {proc.returncode}: {err.read().decode()[-2000:]}")
        return out.read().decode(), usage.ru_maxrss / 1024


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def load(data, url, tenant, events):
    """Sends `events` generated events to `tenant` with `floe gen`, in chunks of one million (a
    seed per chunk: the same seed would send the same event ids again, de-duplicated)."""
    left, seed = events, 1
    while left > 0:
        chunk = min(left, 1_000_000)
        subprocess.run([FLOE, "--data-dir", str(data), "gen", "--url", url, "--tenants", tenant,
                        "--events", str(chunk), "--no-probe", "--duplicates", "0", "--seed", str(seed)],
                       check=True, capture_output=True)
        left -= chunk
        seed += 1


def analyst_query(data, port, tenant):
    """A function that runs SQL as `tenant`'s analyst through the `trino` client and returns the
    rows."""
    import trino
    from trino.auth import JWTAuthentication

    token = subprocess.run([FLOE, "--data-dir", str(data), "token", "issue", "--tenant", tenant, "--role",
                            "analyst"], check=True, capture_output=True, text=True).stdout.strip()
    conn = trino.dbapi.connect(host="127.0.0.1", port=port, user="bench", catalog="floe", schema=tenant,
                               http_scheme="http", allow_insecure_auth=True, auth=JWTAuthentication(token))

    def query(sql):
        cur = conn.cursor()
        cur.execute(sql)
        return cur.fetchall()

    return query


def rotated(arms, round_index):
    """The arms in the order of round `round_index`: each goes first in turn."""
    k = round_index % len(arms)
    return arms[k:] + arms[:k]


def ratio_table(rates, arms, against):
    """Prints a Markdown table of each arm's median events/s and its ratio to the first arm's."""
    import statistics

    medians = {arm: statistics.median(rates[arm]) for arm in arms}
    print(f"| ingest | events/s accepted (median) | against {against} | runs |")
    print("|---|---:|---:|---|")
    for arm in arms:
        runs = ", ".join(f"{x:,.0f}" for x in rates[arm])
        print(f"| {arm} | {medians[arm]:,.0f} | {medians[arm] / medians[arms[0]]:.2f} | {runs} |")


def gen(data, url, tenants, per_tenant):
    """`floe gen` of `per_tenant` events to each of `tenants` (batches of 500, 8 connections);
    returns its report."""
    import json

    out = subprocess.run(
        [FLOE, "--data-dir", str(data), "gen", "--url", url, "--tenants", ",".join(tenants),
         "--events", str(per_tenant), "--batch", "500", "--concurrency", "8"],
        capture_output=True, text=True, check=True)
    return json.loads(out.stdout)
