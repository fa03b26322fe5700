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
