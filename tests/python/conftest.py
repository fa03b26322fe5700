"""Shared fixtures: a running `floe serve` on a private data dir, with tenants and events.

The suite runs on one of two stacks, chosen by FLOE_TEST_STACK:
- `local` (default): the embedded defaults, a local folder and SQLite under the data dir;
- `s3pg`: the S3 server and PostgreSQL that `infra/services.sh up` started, named by the
  FLOE_WAREHOUSE / FLOE_CATALOG / FLOE_S3_* variables it exports. Each data dir gets its own
  PostgreSQL database and its own warehouse prefix, so tests do not see each other's tenants.
"""

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

FLOE = os.environ.get("FLOE_BIN")
STACK = os.environ.get("FLOE_TEST_STACK", "local")
assert STACK in ("local", "s3pg"), f"FLOE_TEST_STACK must be local or s3pg, not {STACK!r}"

# The stack's S3 server speaks TLS with a certificate of the test CA. pyiceberg has no setting
# for a CA of its own; its pyarrow file system (AWS SDK, curl) trusts the bundle SSL_CERT_FILE
# names when pyarrow.fs is imported: this process gets a bundle of the system's authorities and
# the test CA. Floe's processes keep the SSL_CERT_FILE they were given (see process_env): they
# trust the CA through FLOE_S3_CA_FILE (s3.ca_file) alone.
FLOE_SSL_CERT_FILE = os.environ.get("SSL_CERT_FILE")
if STACK == "s3pg" and os.environ.get("FLOE_S3_CA_FILE"):
    _bundle = Path(tempfile.mkdtemp(prefix="floe-test-ca-")) / "bundle.pem"
    _parts = [Path(os.environ["FLOE_S3_CA_FILE"]).read_text()]
    _system = FLOE_SSL_CERT_FILE or ssl.get_default_verify_paths().openssl_cafile
    if _system and Path(_system).is_file():
        _parts.append(Path(_system).read_text())
    _bundle.write_text("\n".join(_parts))
    os.environ["SSL_CERT_FILE"] = str(_bundle)

_ENVS = {}


def stack_env(data_dir):
    """The FLOE_* environment of the floe processes on `data_dir` (empty on the local stack)."""
    key = str(data_dir)
    if key in _ENVS:
        return _ENVS[key]
    env = {}
    if STACK == "s3pg":
        for var in ("FLOE_WAREHOUSE", "FLOE_CATALOG", "FLOE_S3_ENDPOINT", "FLOE_S3_ACCESS_KEY_ID",
                    "FLOE_S3_SECRET_ACCESS_KEY"):
            assert os.environ.get(var), f"{var} is not set: run eval \"$(infra/services.sh up)\" first"
        name = "t_" + re.sub(r"[^a-z0-9]", "_", Path(data_dir).name.lower())[:40] + f"_{os.getpid()}"
        base = urllib.parse.urlsplit(os.environ["FLOE_CATALOG"])
        create_database(base, name)
        env = {
            "FLOE_CATALOG": urllib.parse.urlunsplit(base._replace(path=f"/{name}")),
            "FLOE_WAREHOUSE": os.environ["FLOE_WAREHOUSE"].rstrip("/") + f"/{name}",
        }
    _ENVS[key] = env
    return env


def create_database(base, name):
    import sqlalchemy

    url = f"postgresql+psycopg2://{base.username}:{base.password}@{base.hostname}:{base.port}{base.path}"
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
        c.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()


def sharing(a, b):
    """Arguments for `start` that make processes on data dirs `a` and `b` share `a`'s catalog,
    warehouse and signing key; each keeps its own write-ahead log under its own data dir."""
    shared = ["--set", f"auth.signing_key_file={a}/signing.key"]
    if STACK == "local":
        shared += ["--set", f"catalog=sqlite://{a}/catalog.db", "--set", f"warehouse=file://{a}/warehouse"]
    else:
        _ENVS[str(b)] = stack_env(a)
    return shared


def process_env(data_dir):
    env = {**os.environ, **stack_env(data_dir)}
    env.pop("SSL_CERT_FILE", None)
    if FLOE_SSL_CERT_FILE is not None:
        env["SSL_CERT_FILE"] = FLOE_SSL_CERT_FILE
    return env


def floe(data_dir, *args):
    out = subprocess.run([FLOE, "--data-dir", str(data_dir), *args], capture_output=True, text=True,
                         env=process_env(data_dir))
    assert out.returncode == 0, out.stderr
    return out.stdout


def iceberg_catalog(data_dir):
    """pyiceberg's SQL catalog on the same database and warehouse as Floe's."""
    from pyiceberg.catalog.sql import SqlCatalog

    if STACK == "local":
        return SqlCatalog("floe", uri=f"sqlite:///{data_dir}/catalog.db", warehouse=f"file://{data_dir}/warehouse")
    env = stack_env(data_dir)
    base = urllib.parse.urlsplit(env["FLOE_CATALOG"])
    return SqlCatalog(
        "floe",
        uri=f"postgresql+psycopg2://{base.username}:{base.password}@{base.hostname}:{base.port}{base.path}",
        warehouse=env["FLOE_WAREHOUSE"],
        **{
            "s3.endpoint": os.environ["FLOE_S3_ENDPOINT"],
            "s3.access-key-id": os.environ["FLOE_S3_ACCESS_KEY_ID"],
            "s3.secret-access-key": os.environ["FLOE_S3_SECRET_ACCESS_KEY"],
            "s3.region": os.environ.get("FLOE_S3_REGION", "us-east-1"),
        },
    )


def catalog_rows(data_dir, sql):
    """Rows of `sql` run on Floe's catalog database (SQLite or PostgreSQL)."""
    import sqlalchemy

    if STACK == "local":
        url = f"sqlite:///{data_dir}/catalog.db"
    else:
        base = urllib.parse.urlsplit(stack_env(data_dir)["FLOE_CATALOG"])
        url = f"postgresql+psycopg2://{base.username}:{base.password}@{base.hostname}:{base.port}{base.path}"
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as c:
        rows = [tuple(r) for r in c.execute(sqlalchemy.text(sql))]
    engine.dispose()
    return rows


def local_files(data_dir, table):
    """Local paths of the Parquet files of `table`'s current snapshot, for DuckDB: the files
    themselves on the local stack, copies fetched over the S3 API on the other."""
    paths = [t.file.file_path for t in table.scan().plan_files()]
    if STACK == "local":
        return [p.removeprefix("file://") for p in paths]
    s3 = s3_filesystem()
    out = []
    cache = Path(data_dir) / "s3-copies"
    for p in paths:
        key = p.removeprefix("s3://")
        local = cache / key
        if not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            with s3.open_input_stream(key) as src, open(local, "wb") as dst:
                dst.write(src.read())
        out.append(str(local))
    return out


def s3_filesystem():
    """A pyarrow file system on the stack's S3 server (over TLS, trusting the test CA)."""
    from pyarrow import fs

    return fs.S3FileSystem(
        endpoint_override=os.environ["FLOE_S3_ENDPOINT"], access_key=os.environ["FLOE_S3_ACCESS_KEY_ID"],
        secret_key=os.environ["FLOE_S3_SECRET_ACCESS_KEY"], region=os.environ.get("FLOE_S3_REGION", "us-east-1"),
        tls_ca_file_path=os.environ.get("FLOE_S3_CA_FILE"),
    )


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


def request(method, url, token, body=None):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def erase(srv, admin, user_ids, timeout=120):
    """Requests an erasure and waits for it to complete; returns its final state."""
    status, reply = request("POST", f"{srv.url}/v1/erasures", admin, {"user_ids": user_ids})
    assert status == 202, reply
    assert reply["status"] == "pending" and reply["verified_at_ms"] is None
    deadline = time.time() + timeout
    while True:
        status, state = request("GET", f"{srv.url}/v1/erasures/{reply['id']}", admin)
        assert status == 200, state
        if state["status"] == "completed":
            assert state["verified_at_ms"] >= state["requested_at_ms"]
            assert state["verified_at"], state
            return state
        assert time.time() < deadline, state
        time.sleep(1)


def statement(server, token, sql, headers=None):
    """A raw `POST /v1/statement`, answered as Trino answers it (queued: an id, `nextUri`, no
    rows), then its `nextUri` pages until one says how the query went: the first page with an
    error or with columns, or the last one."""
    hdrs = {"Authorization": f"Bearer {token}", "X-Trino-User": "someone", **(headers or {})}
    req = urllib.request.Request(f"{server.url}/v1/statement", data=sql.encode(), method="POST", headers=hdrs)
    with urllib.request.urlopen(req, timeout=120) as r:
        body = json.loads(r.read())
    assert body["stats"]["state"] == "QUEUED" and body.get("nextUri"), body
    assert "data" not in body and "columns" not in body and "error" not in body, body
    while body.get("nextUri") and "error" not in body and "columns" not in body:
        with urllib.request.urlopen(urllib.request.Request(body["nextUri"], headers=hdrs), timeout=120) as r:
            body = json.loads(r.read())
    return body


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


# Every `floe serve` started, in order: one a test started and did not stop (it failed before
# its `stop`) is killed after it, so that it cannot load the machine under the tests after it.
_STARTED = []


@pytest.fixture(autouse=True)
def _no_server_outlives_its_test():
    # Fixtures of a wider scope (the session's `server`) start before this one: theirs are
    # before `first`.
    first = len(_STARTED)
    yield
    for proc in _STARTED[first:]:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    del _STARTED[first:]


@pytest.fixture(scope="session", autouse=True)
def _no_server_outlives_the_session():
    yield
    for proc in _STARTED:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start(data, *extra):
    """Starts `floe serve` on `data` with extra arguments (e.g. `--set key=value`)."""
    assert FLOE and Path(FLOE).exists(), "FLOE_BIN must point at the floe binary (infra/test.sh sets it)"
    path = data / "serve.log"
    log = open(path, "a")
    # The port was free when chosen; if another process took it before floe bound it (the
    # other stack's tests run beside these), floe exits and another port is tried. Only this
    # process's own line saying it listens (logged once bound) counts, not any answer there.
    for _ in range(3):
        port = free_port()
        offset = path.stat().st_size
        env = process_env(data)
        if env.get("RUST_LOG"):
            env["RUST_LOG"] += ",floe::serve=info"  # the line that says it listens
        proc = subprocess.Popen([FLOE, "--data-dir", str(data), *extra, "serve", "--listen", f"127.0.0.1:{port}"],
                                stderr=log, env=env)
        for _ in range(600):
            if proc.poll() is not None:
                break
            with open(path, "rb") as f:
                f.seek(offset)
                said = f.read()
            bound = b"floe serving" in said and f"127.0.0.1:{port}".encode() in said
            try:
                if bound:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    _STARTED.append(proc)
                    return proc, Floe(data, port)
            except Exception:
                pass
            time.sleep(0.05)
        else:
            proc.kill()
            raise RuntimeError(f"floe serve did not start; see {data / 'serve.log'}")
    raise RuntimeError(f"floe serve exited at start three times; see {data / 'serve.log'}")


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, "floe serve did not shut down cleanly"


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    proc, srv = start(tmp_path_factory.mktemp("floe"))
    yield srv
    stop(proc)
