"""The audit log as data, against a running `floe serve`: credential attacks on a tenant's
routes are refused and each refusal is in that tenant's `audit` table (forged credentials in
the platform's), queries are recorded with their outcome, the table is readable by the
tenant's admins with SQL and by nobody else, pyiceberg reads it, and `floe audit verify` names
a record changed in storage."""

import base64
import json
import os
import subprocess
import time
import urllib.request

import pyarrow as pa
import pyarrow.parquet as pq

from conftest import FLOE, floe, iceberg_catalog, process_env, request, s3_filesystem, start, statement, stop


def fetch(srv, token, sql):
    """(error, rows) of a query, every page read."""
    body = statement(srv, token, sql)
    out = list(body.get("data") or [])
    hdrs = {"Authorization": f"Bearer {token}", "X-Trino-User": "someone"}
    while body.get("nextUri") and "error" not in body:
        with urllib.request.urlopen(urllib.request.Request(body["nextUri"], headers=hdrs), timeout=60) as r:
            body = json.loads(r.read())
        out += body.get("data") or []
    return body.get("error"), out


def rows(srv, token, sql):
    error, out = fetch(srv, token, sql)
    assert error is None, error
    return out


def audit_rows(srv, admin, where, count, timeout=20):
    """Rows (action, actor, detail) of the tenant's audit table matching `where`, once there
    are at least `count` (published within the interval)."""
    deadline = time.time() + timeout
    while True:
        error, found = fetch(srv, admin, f"SELECT action, actor, detail FROM audit WHERE {where} ORDER BY seq")
        if error is None and len(found) >= count:
            return found
        assert time.time() < deadline, (where, error, found)
        time.sleep(0.3)


def forged(token):
    """The token with its payload's role raised to admin and the signature kept."""
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "admin"
    raw = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{raw}.{sig}"


def alg_none(tenant):
    enc = lambda o: base64.urlsafe_b64encode(json.dumps(o).encode()).rstrip(b"=").decode()
    now = int(time.time())
    return f"{enc({'alg': 'none', 'typ': 'JWT'})}.{enc({'tenant': tenant, 'role': 'admin', 'iat': now, 'exp': now + 600, 'jti': 'x'})}."


def rewrite(path, table):
    """Writes `table` over the data file at `path` (a local file or an S3 object), in one put."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    if path.startswith("file://"):
        with open(path.removeprefix("file://"), "wb") as f:
            f.write(data)
        return
    s3 = s3_filesystem()
    with s3.open_output_stream(path.removeprefix("s3://")) as f:
        f.write(data)


def verify(data, *args):
    return subprocess.run([FLOE, "--data-dir", str(data), "audit", "verify", *args], capture_output=True,
                          text=True, env=process_env(data))


def test_audit_log(tmp_path):
    """Refusals and queries are audited per tenant, readable by its admins only, and a change
    in storage is named (a short name: the S3 test server keeps keys in file names)."""
    proc, srv = start(tmp_path, "--set", "audit.publish_interval_ms=200")
    try:
        floe(tmp_path, "tenant", "create", "aud")
        floe(tmp_path, "tenant", "create", "aud-other")
        admin = srv.token("aud", "admin")
        analyst = srv.token("aud", "analyst")
        viewer = srv.token("aud", "viewer")
        other_admin = srv.token("aud-other", "admin")
        operator = floe(tmp_path, "token", "issue", "--role", "operator", "--ttl", "1h").strip()

        # Credential attacks on the tenant's routes: each refused.
        status, made = request("POST", f"{srv.url}/v1/keys", admin, {"role": "ingest"})
        assert status == 201, made
        assert request("DELETE", f"{srv.url}/v1/keys/{made['id']}", admin)[0] == 204
        deadline = time.time() + 5
        while request("GET", f"{srv.url}/v1/keys", made["key"])[0] != 401:
            assert time.time() < deadline
            time.sleep(0.1)
        assert request("POST", f"{srv.url}/v1/keys", viewer, {"role": "admin"})[0] == 403
        assert request("GET", f"{srv.url}/v1/keys", operator)[0] == 403
        assert request("GET", f"{srv.url}/v1/keys", forged(viewer))[0] == 401
        assert request("GET", f"{srv.url}/v1/keys", alg_none("aud"))[0] == 401
        expiring = floe(tmp_path, "token", "issue", "--tenant", "aud", "--role", "admin", "--ttl", "1s").strip()
        time.sleep(2.1)
        assert request("GET", f"{srv.url}/v1/keys", expiring)[0] == 401

        # A query, and one that fails; both name a user's id, which the log must not keep.
        assert rows(srv, analyst,
                    "SELECT count(*) AS audited_answer FROM events WHERE user_id = 'u-erased-4711'") == [[0]]
        failed = statement(srv, analyst, "SELECT CAST('u-erased-4711' AS INTEGER) AS n")
        assert "u-erased-4711" in failed["error"]["message"], failed  # the client is told

        # The tenant's admin reads its audit table with SQL.
        refused = audit_rows(srv, admin, "action = 'request.refused'", 3)
        details = [json.loads(d) for _, _, d in refused]
        reasons = [d["reason"] for d in details]
        assert any("revoked" in r for r in reasons), reasons
        assert any(d["status"] == 403 and d["path"] == "/v1/keys" for d in details), details
        assert any("expired" in r for r in reasons), reasons
        assert all(d["request_id"] for d in details), details
        assert {a for _, a, _ in refused} >= {f"key:{made['id']}"}, refused
        ended = audit_rows(srv, admin, "action = 'query.end' AND detail LIKE '%\"role\":\"analyst\"%'", 2)
        outcomes = sorted(json.loads(d)["outcome"] for _, _, d in ended)
        assert outcomes == ["FAILED", "FINISHED"], ended
        finished = next(json.loads(d) for _, _, d in ended if json.loads(d)["outcome"] == "FINISHED")
        assert finished["rows"] == 1 and finished["duration_ms"] >= 0 and finished["role"] == "analyst", finished
        started = audit_rows(srv, admin, "action = 'query' AND detail LIKE '%audited_answer%'", 1)
        assert started[0][1].startswith("token:"), started
        # The values a query names stay out of the log, as its erasure could not take them out of
        # a hash chain: the text is kept with `?` for each literal, errors without what they quote.
        assert "WHERE user_id = ?" in json.loads(started[0][2])["sql"], started
        failure = next(json.loads(d) for _, _, d in ended if json.loads(d)["outcome"] == "FAILED")
        assert "?" in failure["error"]["message"], failure
        # The whole value: its digits alone turn up by chance in a query id (hex) of a record.
        assert fetch(srv, admin, "SELECT count(*) FROM audit WHERE detail LIKE '%erased-4711%'") == (None, [[0]])
        assert audit_rows(srv, admin, "action = 'key.revoke'", 1)

        # Nobody else reads it: not the tenant's analysts or viewers, not another tenant.
        for token in (analyst, viewer):
            body = statement(srv, token, "SELECT count(*) FROM audit")
            assert body["error"]["errorName"] == "TABLE_NOT_FOUND", body
        assert not any(r[0] == "audit" for r in rows(srv, analyst, "SHOW TABLES"))
        status, theirs_key = request("POST", f"{srv.url}/v1/keys", other_admin, {"role": "ingest"})
        assert status == 201, theirs_key
        # One tenant's admin on another tenant's key: not found, and on the first's record.
        assert request("DELETE", f"{srv.url}/v1/keys/{theirs_key['id']}", admin)[0] == 404
        tried = audit_rows(srv, admin, "action = 'key.revoke.refused'", 1)
        assert theirs_key["id"] in tried[0][2], tried
        theirs = audit_rows(srv, other_admin, "action = 'key.create'", 1)
        theirs = audit_rows(srv, other_admin, "true", 1)
        assert not any("audited_answer" in d or made["id"] in d for _, _, d in theirs), theirs

        # Forged credentials are the platform's; pyiceberg reads both tables.
        cat = iceberg_catalog(tmp_path)
        mine = cat.load_table("aud.audit").scan().to_arrow()
        assert set(mine.column("tenant").to_pylist()) == {"aud"}
        assert mine.num_rows == len(set(mine.column("seq").to_pylist()))
        deadline = time.time() + 20
        while True:
            platform = cat.load_table("_platform.audit").scan().to_arrow().to_pylist()
            anonymous = [r for r in platform if r["action"] == "request.refused" and r["actor"] == "anonymous"]
            if len(anonymous) >= 2:
                break
            assert time.time() < deadline, platform
            time.sleep(0.3)
        assert any(r["action"] == "tenant.create" and r["tenant"] == "aud" for r in platform)
        assert not any(r["action"] == "request.refused" and r["tenant"] == "aud" for r in platform)

        ok = verify(tmp_path, "--tenant", "aud")
        assert ok.returncode == 0 and "verified" in ok.stdout, ok.stderr
        assert verify(tmp_path, "--platform").returncode == 0

        # One record changed in storage: verify names it.
        table = cat.load_table("aud.audit")
        path = next(iter(table.scan().plan_files())).file.file_path
        with_fs = table.io.new_input(path).open()
        data = pq.read_table(with_fs)
        changed_seq = data.column("seq")[0].as_py()
        detail = data.column("detail").to_pylist()
        detail[0] = json.dumps({"nothing": "happened"})
        data = data.set_column(data.schema.get_field_index("detail"), data.schema.field("detail"),
                               pa.array(detail, pa.string()))
        rewrite(path, data)
        broken = verify(tmp_path, "--tenant", "aud")
        assert broken.returncode == 1, (broken.stdout, broken.stderr)
        assert f"broken at record {changed_seq}" in broken.stderr and "changed" in broken.stderr, broken.stderr
        assert verify(tmp_path, "--tenant", "aud-other").returncode == 0
    finally:
        stop(proc)
