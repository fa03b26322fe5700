"""The storage and catalog stack itself: where objects land, two writers on one catalog, and an
object-storage outage during ingest. Runs on both stacks (FLOE_TEST_STACK); the outage test needs
the S3 server of `infra/services.sh` and runs on the s3pg stack only."""

import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from conftest import (FLOE, STACK, floe, iceberg_catalog, post, process_env, s3_filesystem, sharing, stack_env,
                      start, stop)

ROOT = Path(__file__).resolve().parents[2]


def events(prefix, n, start_at=0):
    return [
        {"event_id": f"{prefix}-{i}", "type": "PageViewed", "timestamp": 1764150000 + i % 86400,
         "user_id": f"u-{i % 50}", "payload": {"page": f"/p/{i % 7}"}}
        for i in range(start_at, start_at + n)
    ]


def count_and_ids(data, tenant):
    table = iceberg_catalog(data).load_table(f"{tenant}.events")
    ids = table.scan(selected_fields=("event_id",)).to_arrow().column("event_id").to_pylist()
    return table, ids


def object_keys(data, tenant):
    """Every object under `<warehouse>/<tenant>/`, as paths relative to that prefix."""
    if STACK == "local":
        root = Path(data) / "warehouse" / tenant
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    from pyarrow import fs

    s3 = s3_filesystem()
    prefix = stack_env(data)["FLOE_WAREHOUSE"].removeprefix("s3://") + f"/{tenant}"
    infos = s3.get_file_info(fs.FileSelector(prefix, recursive=True))
    return sorted(i.path.removeprefix(prefix + "/") for i in infos if i.type == fs.FileType.File)


def exists(location):
    if location.startswith("file://"):
        return Path(location.removeprefix("file://")).exists()
    from pyarrow import fs

    return s3_filesystem().get_file_info(location.removeprefix("s3://")).type == fs.FileType.File


def test_objects_live_under_the_tenant_prefix_and_other_engines_read_them(server):
    tenant = "stack-a"
    floe(server.data, "tenant", "create", tenant)
    sent = events(tenant, 900)
    for k in range(0, len(sent), 300):
        assert post(server.url, server.token(tenant, "ingest"), sent[k:k + 300])["accepted"] == 300
    keys = object_keys(server.data, tenant)
    assert any(k.startswith("events/data/") and k.endswith(".parquet") for k in keys), keys
    assert any(k.startswith("events/metadata/") and k.endswith(".metadata.json") for k in keys), keys
    table, ids = count_and_ids(server.data, tenant)
    assert sorted(ids) == sorted(e["event_id"] for e in sent)
    assert table.metadata.location.endswith(f"/{tenant}/events")
    # Floe's SQL sees the same rows.
    rows = floe(server.data, "sql", "--tenant", tenant, "--format", "csv",
                "SELECT count(*), count(DISTINCT event_id) FROM events")
    assert rows.splitlines()[1] == "900,900"


def test_two_writers_share_one_catalog_and_lose_nothing(tmp_path):
    a, b = tmp_path / "writer-a", tmp_path / "writer-b"
    a.mkdir()
    b.mkdir()
    shared = sharing(a, b)
    floe(a, "tenant", "create", "shared")
    pa, sa = start(a, *shared)
    pb, sb = start(b, *shared)
    token = sa.token("shared", "ingest")
    per_writer, batch = 6000, 200
    errors = []

    def writer(srv, prefix):
        try:
            sent = events(prefix, per_writer)
            for k in range(0, per_writer, batch):
                reply = post(srv.url, token, sent[k:k + batch], wait=False)
                assert reply["accepted"] == batch, reply
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(s, p)) for s, p in [(sa, "wa"), (sb, "wb")]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    # A barrier on each writer: everything it acknowledged is visible.
    for srv, p in [(sa, "barrier-a"), (sb, "barrier-b")]:
        post(srv.url, token, events(p, 1))
    stop(pa)
    stop(pb)
    _, ids = count_and_ids(a, "shared")
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    assert not dupes, dupes[:5]
    assert len(ids) == 2 * per_writer + 2


@pytest.mark.skipif(STACK != "s3pg", reason="needs the S3 server of infra/services.sh (the s3pg stack)")
def test_s3_outage_loses_and_duplicates_nothing(tmp_path):
    services = [str(ROOT / "infra" / "services.sh")]
    proc, srv = start(tmp_path, "--set", "s3.request_timeout_secs=2", "--set", "s3.request_retries=1")
    tenant = "outage"
    floe(tmp_path, "tenant", "create", tenant)
    token = srv.token(tenant, "ingest")
    acked, refused = [], []
    stop_writing = threading.Event()

    def writer():
        i = 0
        while not stop_writing.is_set():
            batch = events("o", 100, i)
            try:
                reply = post(srv.url, token, batch, wait=False)
                assert reply["accepted"] == 100
                acked.extend(e["event_id"] for e in batch)
            except urllib.error.HTTPError as e:
                assert e.code == 503, e
                assert e.headers.get("Retry-After"), "503 without Retry-After"
                refused.append(e.code)
            i += 100
            time.sleep(0.02)

    w = threading.Thread(target=writer)
    w.start()
    try:
        time.sleep(2)
        subprocess.run([*services, "stop", "s3"], check=True)
        down_at = time.monotonic()
        acked_before = len(acked)
        # /readyz names what is down while the server keeps acknowledging into its log.
        ready = None
        while time.monotonic() - down_at < 20:
            try:
                with urllib.request.urlopen(f"{srv.url}/readyz", timeout=10) as r:
                    ready = (r.status, r.read())
            except urllib.error.HTTPError as e:
                ready = (e.code, e.read())
            time.sleep(1)
        acked_during = len(acked)
        subprocess.run([*services, "start", "s3"], check=True)
    finally:
        stop_writing.set()
        w.join()
    assert ready and ready[0] == 503 and b"storage" in ready[1], ready
    # Ingest went on acknowledging while storage was down.
    assert acked_during > acked_before, (acked_before, acked_during)
    # Everything acknowledged becomes visible once storage is back.
    post(srv.url, token, events("after", 1))
    stop(proc)
    table, ids = count_and_ids(tmp_path, tenant)
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    assert not dupes, dupes[:5]
    assert set(acked) | {"after-0"} == set(ids)
    # No snapshot references a missing object.
    for snap in table.metadata.snapshots:
        assert exists(snap.manifest_list), snap.manifest_list
    for task in table.scan().plan_files():
        assert exists(task.file.file_path), task.file.file_path


@pytest.mark.skipif(STACK != "s3pg", reason="needs the PostgreSQL of infra/services.sh (the s3pg stack)")
def test_catalog_outage_loses_and_duplicates_nothing(tmp_path):
    services = [str(ROOT / "infra" / "services.sh")]
    proc, srv = start(tmp_path)
    tenant = "pg-outage"
    floe(tmp_path, "tenant", "create", tenant)
    token = srv.token(tenant, "ingest")
    post(srv.url, token, events("warm", 1))  # the server has seen the tenant
    acked = []
    try:
        subprocess.run([*services, "stop", "postgres"], check=True)
        slowest = 0.0
        for k in range(10):
            batch = events("p", 100, k * 100)
            began = time.monotonic()
            assert post(srv.url, token, batch, wait=False)["accepted"] == 100
            slowest = max(slowest, time.monotonic() - began)
            acked.extend(e["event_id"] for e in batch)
            time.sleep(0.5)
        # The token, the tenant and its schemas were read before: a request goes on with them
        # instead of waiting out the database pool's timeout for each (about 30 s a request).
        assert slowest < 5, f"an ingest request took {slowest:.1f} s while the catalog was down"
        try:
            urllib.request.urlopen(f"{srv.url}/readyz", timeout=15)
            ready = (200, b"")
        except urllib.error.HTTPError as e:
            ready = (e.code, e.read())
    finally:
        subprocess.run([*services, "start", "postgres"], check=True)
    assert ready[0] == 503 and b"catalog" in ready[1], ready
    post(srv.url, token, events("after", 1))
    stop(proc)
    _, ids = count_and_ids(tmp_path, tenant)
    assert sorted(ids) == sorted(["warm-0", "after-0", *acked])


@pytest.mark.skipif(STACK != "s3pg", reason="needs the S3 server of infra/services.sh (the s3pg stack)")
def test_the_s3_server_is_reached_over_tls_only(tmp_path):
    """The stack's S3 server answers over TLS only, with a certificate of the test CA: Floe
    trusts it through s3.ca_file (not through SSL_CERT_FILE), refuses it without, and gets no S3
    answer over plain http."""
    env = process_env(tmp_path)
    assert env["FLOE_S3_ENDPOINT"].startswith("https://")
    ca = Path(env["FLOE_S3_CA_FILE"]).read_text().strip()
    assert not env.get("SSL_CERT_FILE") or ca not in Path(env["SSL_CERT_FILE"]).read_text()

    def create(tenant, **changes):
        return subprocess.run([FLOE, "--data-dir", str(tmp_path), "tenant", "create", tenant],
                              capture_output=True, text=True, timeout=120,
                              env={**env, "FLOE_S3_REQUEST_RETRIES": "0", "FLOE_S3_REQUEST_TIMEOUT_SECS": "10",
                                   **changes})

    untrusted = create("tls-untrusted", FLOE_S3_CA_FILE="")
    assert untrusted.returncode != 0
    assert "certificate" in untrusted.stderr.lower(), untrusted.stderr
    plain = create("tls-plain", FLOE_S3_ENDPOINT=env["FLOE_S3_ENDPOINT"].replace("https://", "http://"))
    assert plain.returncode != 0, plain.stdout
    trusted = create("tls-trusted")
    assert trusted.returncode == 0, trusted.stderr
    assert [k for k in object_keys(tmp_path, "tls-trusted") if k.endswith(".metadata.json")]


@pytest.mark.skipif(STACK != "s3pg", reason="needs the S3 server of infra/services.sh (the s3pg stack)")
@pytest.mark.parametrize("source", ["environment", "profile"])
def test_s3_credentials_from_the_aws_chain(tmp_path, source):
    """With no keys in Floe's configuration, credentials come from the standard AWS chain."""
    key, secret = os.environ["FLOE_S3_ACCESS_KEY_ID"], os.environ["FLOE_S3_SECRET_ACCESS_KEY"]
    stack_env(tmp_path)  # database and prefix for this data dir
    import conftest

    env = conftest._ENVS[str(tmp_path)]
    env.update({"FLOE_S3_ACCESS_KEY_ID": "", "FLOE_S3_SECRET_ACCESS_KEY": "",
                "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(tmp_path / "no-config")})
    if source == "environment":
        env.update({"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret})
    else:
        creds = tmp_path / "credentials"
        creds.write_text(f"[floe-test]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
        env.update({"AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_PROFILE": "floe-test"})
    floe(tmp_path, "tenant", "create", "chain")
    proc, srv = start(tmp_path)
    try:
        assert post(srv.url, srv.token("chain", "ingest"), events("c", 10))["accepted"] == 10
    finally:
        stop(proc)
    _, ids = count_and_ids(tmp_path, "chain")
    assert len(ids) == 10


@pytest.mark.skipif(STACK != "s3pg", reason="needs the PostgreSQL of infra/services.sh (the s3pg stack)")
def test_the_catalog_database_is_reached_over_verified_tls(tmp_path):
    """infra/services.sh's PostgreSQL refuses the floe user in plain text and shows a certificate
    of a CA it made: Floe's sessions are TLS (sslmode=verify-full), and with a CA that did not
    sign the certificate Floe does not connect at all."""
    from conftest import catalog_rows, process_env

    proc, srv = start(tmp_path)
    try:
        floe(tmp_path, "tenant", "create", "tls-pg")
        sessions = catalog_rows(
            tmp_path,
            "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
            "WHERE a.usename = 'floe' AND a.datname = current_database() AND a.pid <> pg_backend_pid()")
        assert sessions and all(ssl for ssl, _ in sessions), sessions
        assert all(v.startswith("TLS") for _, v in sessions), sessions
    finally:
        stop(proc)

    other = tmp_path / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "1", "-subj", "/CN=not the CA", "-keyout", str(tmp_path / "other.key"), "-out", str(other)],
                   check=True, capture_output=True)
    env = {**process_env(tmp_path), "PGSSLROOTCERT": str(other)}
    out = subprocess.run([os.environ["FLOE_BIN"], "--data-dir", str(tmp_path), "tenant", "list"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode != 0, out.stdout
    assert "catalog" in out.stderr.lower() and "certificate" in out.stderr, out.stderr
