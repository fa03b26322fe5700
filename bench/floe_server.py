"""Starting and stopping `floe serve` for the benchmarks."""

import os
import signal
import socket
import subprocess
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
