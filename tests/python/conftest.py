"""Shared fixtures: a running `floe serve` on a private data dir, with tenants and events."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

FLOE = os.environ.get("FLOE_BIN")


def floe(data_dir, *args):
    out = subprocess.run([FLOE, "--data-dir", str(data_dir), *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, token, body, wait=True):
    req = urllib.request.Request(
        f"{url}/v1/events" + ("?wait=visible" if wait else ""),
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def statement(server, token, sql, headers=None):
    """One raw `POST /v1/statement`: the first QueryResults page as JSON."""
    req = urllib.request.Request(
        f"{server.url}/v1/statement", data=sql.encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "X-Trino-User": "someone", **(headers or {})},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def healthy(server):
    with urllib.request.urlopen(f"{server.url}/healthz", timeout=5) as r:
        return r.status == 200


class Floe:
    def __init__(self, data, port):
        self.data = data
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.tokens = {}

    def token(self, tenant, role):
        key = (tenant, role)
        if key not in self.tokens:
            self.tokens[key] = floe(self.data, "token", "issue", "--tenant", tenant, "--role", role).strip()
        return self.tokens[key]


def start(data, *extra):
    """Starts `floe serve` on `data` with extra arguments (e.g. `--set key=value`)."""
    assert FLOE and Path(FLOE).exists(), "FLOE_BIN must point at the floe binary (infra/test.sh sets it)"
    port = free_port()
    log = open(data / "serve.log", "a")
    proc = subprocess.Popen([FLOE, "--data-dir", str(data), *extra, "serve", "--listen", f"127.0.0.1:{port}"],
                            stderr=log)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            break
        except Exception:
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError(f"floe serve did not start; see {data / 'serve.log'}")
    return proc, Floe(data, port)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, "floe serve did not shut down cleanly"


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    proc, srv = start(tmp_path_factory.mktemp("floe"))
    yield srv
    stop(proc)
