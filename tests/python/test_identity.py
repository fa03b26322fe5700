"""Identity over HTTP against two `floe serve` processes sharing one catalog: the operator
manages tenants (`/v1/tenants`), a tenant admin makes and revokes tokens and API keys
(`/v1/tokens`, `/v1/keys`), a revocation made through one process is refused by the other
within a second, keys are shown once and scoped to event types, and every action is audited."""

import json
from pathlib import Path
import time
import urllib.request

from conftest import catalog_rows, floe, request, sharing, start, statement, stop


def post_events(srv, credential, events):
    req = urllib.request.Request(f"{srv.url}/v1/events?wait=visible", data=json.dumps(events).encode(),
                                 method="POST", headers={"Authorization": f"Bearer {credential}",
                                                         "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def event(i, kind="PageViewed"):
    payload = {"page": "/"} if kind == "PageViewed" else {"amount": 1, "currency": "EUR"}
    return {"event_id": f"e-{kind}-{i}", "type": kind, "user_id": "u", "timestamp": int(time.time()),
            "payload": payload}


def refused_within(srv, credential, seconds):
    """Seconds until `credential` gets 401 on ingest (fails past `seconds`)."""
    started = time.monotonic()
    while True:
        status, body = post_events(srv, credential, [event(int(time.time() * 1000))])
        if status == 401:
            return time.monotonic() - started
        assert status == 200, body
        assert time.monotonic() - started < seconds, "still accepted"
        time.sleep(0.05)


def test_operator_tenants_keys_tokens_and_revocation_across_processes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    shared = sharing(a, b)
    pa, sa = start(a, *shared)
    pb, sb = start(b, *shared)
    try:
        operator = floe(a, "token", "issue", "--role", "operator", "--ttl", "1h").strip()

        # The operator's tenants.
        status, body = request("POST", f"{sa.url}/v1/tenants", operator, {"id": "idt"})
        assert status == 201 and body["id"] == "idt", body
        assert request("POST", f"{sa.url}/v1/tenants", operator, {"id": "idt"})[0] == 409
        assert request("POST", f"{sa.url}/v1/tenants", operator, {"id": "Bad Id"})[0] == 400
        assert request("POST", f"{sa.url}/v1/tenants", operator, {"id": "other"})[0] == 201
        status, body = request("GET", f"{sb.url}/v1/tenants", operator)
        assert status == 200 and {t["id"] for t in body["tenants"]} == {"idt", "other"}, body
        status, body = request("PATCH", f"{sa.url}/v1/tenants/idt", operator,
                               {"retention_days": 30, "quotas": {"ingest_events_per_sec": 1000}})
        assert status == 200 and body["retention_days"] == 30, body
        assert request("PATCH", f"{sa.url}/v1/tenants/idt", operator, {"colour": "red"})[0] == 400
        status, body = request("GET", f"{sa.url}/v1/tenants/idt", operator)
        assert status == 200 and body["tenant"]["quotas"]["ingest_events_per_sec"] == 1000, body

        admin = floe(a, "token", "issue", "--tenant", "idt", "--role", "admin").strip()
        other_admin = floe(a, "token", "issue", "--tenant", "other", "--role", "admin").strip()
        # A tenant's credentials reach no operator route, and the operator's no tenant route.
        assert request("GET", f"{sa.url}/v1/tenants", admin)[0] == 403
        assert request("POST", f"{sa.url}/v1/tenants", admin, {"id": "x"})[0] == 403
        assert post_events(sa, operator, [event(0)])[0] == 403
        assert request("GET", f"{sa.url}/v1/keys", operator)[0] == 403

        # A key: shown once, hashed at rest, usable wherever a token is, refused once revoked.
        status, made = request("POST", f"{sa.url}/v1/keys", admin, {"role": "ingest"})
        assert status == 201 and made["key"].startswith(made["prefix"] + "_"), made
        key = made["key"]
        status, listed = request("GET", f"{sa.url}/v1/keys", admin)
        assert status == 200 and [k["prefix"] for k in listed["keys"]] == [made["prefix"]], listed
        assert key not in json.dumps(listed) and "secret" not in json.dumps(listed)
        stored = catalog_rows(a, "SELECT secret_sha256 FROM floe_api_keys")
        assert len(stored) == 1 and key.split("_")[-1] not in stored[0][0]
        assert post_events(sb, key, [event(1)])[0] == 200
        assert request("GET", f"{sa.url}/v1/keys", key)[0] == 403, "an ingest key is no admin"
        assert request("DELETE", f"{sa.url}/v1/keys/{made['id']}", other_admin)[0] == 404
        assert request("DELETE", f"{sa.url}/v1/keys/{made['id']}", admin)[0] == 204
        # Revoked through process a; process b refuses it within a second.
        assert refused_within(sb, key, 1.5) < 1.5

        # A key scoped to one event type sends only that type.
        status, scoped = request("POST", f"{sa.url}/v1/keys", admin,
                                 {"role": "ingest", "event_types": ["PageViewed"], "expires_in": "1d"})
        assert status == 201 and scoped["expires_at_ms"] > time.time() * 1000, scoped
        status, reply = post_events(sa, scoped["key"], [event(2), event(3, "PurchaseMade")])
        assert status == 200 and reply["accepted"] == 1, reply
        assert [r["code"] for r in reply["rejected"]] == ["type_not_allowed"], reply
        assert request("POST", f"{sa.url}/v1/keys", admin, {"role": "operator"})[0] == 400

        # A token made over HTTP, revoked by its jti: refused by both processes.
        status, made = request("POST", f"{sa.url}/v1/tokens", admin, {"role": "ingest", "ttl": "1h"})
        assert status == 201 and made["role"] == "ingest", made
        token = made["token"]
        assert post_events(sb, token, [event(4)])[0] == 200
        assert request("DELETE", f"{sb.url}/v1/tokens/{made['jti']}", other_admin)[0] == 204
        assert post_events(sa, token, [event(5)])[0] == 200, "another tenant cannot revoke it"
        assert request("DELETE", f"{sb.url}/v1/tokens/{made['jti']}", admin)[0] == 204
        assert refused_within(sa, token, 1.5) < 1.5
        analyst = request("POST", f"{sa.url}/v1/tokens", admin, {"role": "analyst"})[1]
        sent = "'e-PageViewed-1', 'e-PageViewed-2', 'e-PageViewed-4', 'e-PageViewed-5', 'e-PurchaseMade-3'"
        counted = statement(sb, analyst["token"], f"SELECT count(*) FROM events WHERE event_id IN ({sent})")
        assert counted["data"] == [[4]], counted
        assert request("POST", f"{sa.url}/v1/tokens", admin, {"role": "admin", "ttl": "400d"})[0] == 400

        # The command line makes and revokes keys and tokens the same way.
        cli_key = floe(a, "key", "create", "--tenant", "other", "--role", "ingest").strip()
        assert post_events(sb, cli_key, [event(7)])[0] == 200
        cli_id = cli_key.split("_")[1]
        assert cli_id in floe(a, "key", "list", "--tenant", "other")
        floe(a, "key", "revoke", "--tenant", "other", cli_id)
        assert refused_within(sb, cli_key, 1.5) < 1.5

        # Every action is in the audit log, with its actor.
        actions = {r[0] for r in catalog_rows(a, "SELECT action FROM floe_audit WHERE tenant = 'idt'")}
        assert {"tenant.create", "tenant.settings", "key.create", "key.revoke", "token.issue",
                "token.revoke"} <= actions, actions
        actors = {r[0] for r in catalog_rows(a, "SELECT actor FROM floe_audit WHERE action = 'tenant.create'")}
        assert all(x.startswith("operator:") for x in actors), actors

        # Deleting the tenant: its credentials stop at once; the key's row goes with it.
        status, body = request("DELETE", f"{sa.url}/v1/tenants/idt?purge=true", operator)
        assert status == 200 and body["existed"], body
        assert post_events(sb, scoped["key"], [event(6)])[0] == 401
        assert request("GET", f"{sa.url}/v1/tenants/idt", operator)[0] == 404
        assert catalog_rows(a, "SELECT count(*) FROM floe_api_keys WHERE tenant = 'idt'") == [(0,)]
    finally:
        stop(pa)
        stop(pb)


# Every route of `floe serve`'s API with a body that fails after the role check (so probing
# changes nothing); path parameters are probed with values that name nothing. The README's table of who may call what is this list as the server
# answers it; `test_the_readme_table_of_roles_is_what_the_server_does` renders it.
ROLES = ["ingest", "viewer", "analyst", "admin", "operator"]


def concrete(path):
    return (path.replace("{id}", "nope").replace("{type_name}", "T").replace("{version}", "1")
            .replace("{jti}", "nope").replace("{name}", "nope").replace("{token}", "1")
            .replace("{path}", "index.html"))


def probe_body(method, path):
    if path == "/v1/statement":
        return "SELECT 1"
    if path == "/v1/events":
        return []
    return {} if method in ("POST", "PUT", "PATCH") else None


def allowed(srv, method, path, body, credential):
    """Whether the server lets `credential` past the role check of the route (a Trino query
    refused for its role fails on its page with PERMISSION_DENIED)."""
    if path == "/v1/statement":
        req = urllib.request.Request(srv.url + path, data=body.encode(), method="POST",
                                     headers={"Authorization": f"Bearer {credential}", "X-Trino-User": "t"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                page = json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code not in (401, 403)
        while "nextUri" in page:
            with urllib.request.urlopen(urllib.request.Request(
                    page["nextUri"], headers={"Authorization": f"Bearer {credential}"}), timeout=30) as r:
                page = json.loads(r.read())
        return page.get("error", {}).get("errorName") != "PERMISSION_DENIED"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(srv.url + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {credential}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    return status not in (401, 403)


def test_the_readme_table_of_roles_is_what_the_server_does(tmp_path):
    """The README's table of roles is made from GET /openapi.json (every endpoint, with the
    roles it accepts), and every endpoint accepts exactly those roles' credentials."""
    proc, srv = start(tmp_path)
    try:
        floe(tmp_path, "tenant", "create", "roles")
        creds = {r: floe(tmp_path, "token", "issue", *([] if r == "operator" else ["--tenant", "roles"]),
                         "--role", r).strip() for r in ROLES}
        with urllib.request.urlopen(f"{srv.url}/openapi.json", timeout=10) as r:
            doc = json.loads(r.read())
        assert doc["openapi"].startswith("3.")
        rows = ["| route | roles |", "|---|---|"]
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                method = method.upper()
                probe, body = concrete(path), probe_body(method, path)
                roles = op["x-floe-roles"]
                if not roles:
                    assert allowed(srv, method, probe, body, "not-a-token"), f"{method} {path} is public"
                    rows.append(f"| `{method} {path}` | none needed |")
                    continue
                assert not allowed(srv, method, probe, body, "not-a-token"), f"{method} {path} without a credential"
                who = [r for r in ROLES if allowed(srv, method, probe, body, creds[r])]
                assert who == roles, f"{method} {path}: the server accepts {who}, the document says {roles}"
                rows.append(f"| `{method} {path}` | {', '.join(f'`{r}`' for r in roles)} |")
        table = "\n".join(rows) + "\n"
        readme = (Path(__file__).parents[2] / "README.md").read_text()
        assert table in readme, "README's table of roles differs from /openapi.json; it should be:\n" + table
    finally:
        stop(proc)


def test_tokens_of_an_identity_provider_verify_against_its_jwks(tmp_path):
    """An external identity provider's tokens (RS256, ES256, EdDSA) verify against its key
    set, with the tenant and role from configured claims; forged, expired, misdirected and
    unsigned ones are refused; a key the provider adds later is picked up at once."""
    import base64
    import hashlib
    import hmac

    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    keys = {"rsa-1": (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
            "ec-1": (ec.generate_private_key(ec.SECP256R1()), "ES256"),
            "ed-1": (ed25519.Ed25519PrivateKey.generate(), "EdDSA")}

    def jwk(kid, private):
        public = private.public_key()
        algorithm = {rsa.RSAPublicKey: jwt.algorithms.RSAAlgorithm, ec.EllipticCurvePublicKey: jwt.algorithms.ECAlgorithm,
                     ed25519.Ed25519PublicKey: jwt.algorithms.OKPAlgorithm}
        for kind, alg in algorithm.items():
            if isinstance(public, kind):
                return {**alg.to_jwk(public, as_dict=True), "kid": kid}
        raise AssertionError(public)

    jwks = tmp_path / "jwks.json"

    def publish():
        jwks.write_text(json.dumps({"keys": [jwk(kid, k) for kid, (k, _) in keys.items()]}))

    publish()
    issuer, audience = "https://idp.example", "floe"
    proc, srv = start(tmp_path, "--set", f"auth.jwks={jwks}", "--set", f"auth.jwks_issuer={issuer}",
                      "--set", f"auth.jwks_audience={audience}", "--set", "auth.jwks_tenant_claim=org",
                      "--set", "auth.jwks_role_claim=floe_role")
    try:
        floe(tmp_path, "tenant", "create", "idp")
        # Tokens issued before their tenant was created do not reach it; `iat` is in seconds.
        time.sleep(1.05 - time.time() % 1)
        now = int(time.time())

        def token(kid="rsa-1", **claims):
            private, alg = keys[kid]
            body = {"iss": issuer, "aud": audience, "org": "idp", "floe_role": "ingest", "sub": "svc",
                    "iat": now, "exp": now + 300, **claims}
            return jwt.encode({k: v for k, v in body.items() if v is not None}, private, algorithm=alg,
                              headers={"kid": kid})

        for kid in keys:
            status, reply = post_events(srv, token(kid, jti=f"t-{kid}"), [event(kid)])
            assert status == 200 and reply["accepted"] == 1, (kid, reply)

        def b64(raw):
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        good = token()
        head, body, _ = good.split(".")
        public_pem = keys["rsa-1"][0].public_key().public_bytes(serialization.Encoding.PEM,
                                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        confused_head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
        confused = f"{confused_head}.{body}." + b64(hmac.new(public_pem, f"{confused_head}.{body}".encode(),
                                                           hashlib.sha256).digest())
        unsigned = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "rsa-1"}).encode()) + f".{body}."
        tampered_body = b64(json.dumps({**jwt.decode(good, options={"verify_signature": False}),
                                        "org": "other"}).encode())
        attacks = {
            "expired": token(exp=now - 10),
            "wrong audience": token(aud="someone-else"),
            "wrong issuer": token(iss="https://evil.example"),
            "unknown key": jwt.encode({"iss": issuer, "aud": audience, "org": "idp", "floe_role": "ingest",
                                       "sub": "x", "iat": now, "exp": now + 60},
                                      rsa.generate_private_key(public_exponent=65537, key_size=2048),
                                      algorithm="RS256", headers={"kid": "rsa-9"}),
            "algorithm confusion": confused,
            "alg none": unsigned,
            "tampered": f"{head}.{tampered_body}.{good.split('.')[2]}",
            "no role": token(floe_role=None),
            "no iat": token(iat=None),
            "operator with a tenant": token(floe_role="operator"),
        }
        for name, bad in attacks.items():
            assert post_events(srv, bad, [event(1)])[0] == 401, name

        # Roles and the operator come from the claims, as with Floe's own tokens.
        assert post_events(srv, token(floe_role="viewer"), [event(2)])[0] == 403
        operator = token(org=None, floe_role="operator")
        assert request("GET", f"{srv.url}/v1/operator/tenants", operator)[0] == 200
        assert post_events(srv, operator, [event(3)])[0] == 403

        # The provider adds a key: its tokens verify at once (the set is read again).
        keys["rsa-2"] = (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
        publish()
        assert post_events(srv, token("rsa-2"), [event(4)])[0] == 200

        # A provider's token is revoked by its jti like Floe's own.
        revocable = token(jti="revoke-me")
        assert post_events(srv, revocable, [event(5)])[0] == 200
        admin = token(floe_role="admin", jti="admin-1")
        assert request("DELETE", f"{srv.url}/v1/tokens/revoke-me", admin)[0] == 204
        assert refused_within(srv, revocable, 1.5) < 1.5
    finally:
        stop(proc)


def kid_of(token):
    import base64

    head = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))).get("kid")


def test_signing_key_rotation_reaches_a_running_server(tmp_path):
    """`floe keys rotate`: the new key signs at once and a running server verifies it within
    a second; the old key's tokens keep working until its time, then are refused."""
    proc, srv = start(tmp_path)
    try:
        floe(tmp_path, "tenant", "create", "rot")
        old = floe(tmp_path, "token", "issue", "--tenant", "rot", "--role", "admin").strip()
        assert request("GET", f"{srv.url}/v1/keys", old)[0] == 200
        out = floe(tmp_path, "keys", "rotate", "--old-valid-for", "1h")
        new_kid = out.split()[3]
        assert new_kid != kid_of(old) and kid_of(old), out
        new = floe(tmp_path, "token", "issue", "--tenant", "rot", "--role", "admin").strip()
        assert kid_of(new) == new_kid
        deadline = time.time() + 1.5
        while request("GET", f"{srv.url}/v1/keys", new)[0] != 200:
            assert time.time() < deadline, "the running server did not read the new key"
            time.sleep(0.1)
        assert request("GET", f"{srv.url}/v1/keys", old)[0] == 200
        # Tokens the server issues are signed by the new key too.
        status, made = request("POST", f"{srv.url}/v1/tokens", new, {"role": "viewer", "ttl": "10m"})
        assert status == 201 and kid_of(made["token"]) == new_kid, made

        # The old key retires: its tokens are refused, the new key's are not.
        floe(tmp_path, "keys", "rotate", "--old-valid-for", "1s")
        time.sleep(2.2)
        status, body = request("GET", f"{srv.url}/v1/keys", old)
        assert status == 401 and "retired" in body["error"]["message"], body
        status, body = request("GET", f"{srv.url}/v1/keys", new)
        assert status == 401 and "retired" in body["error"]["message"], body
        newest = floe(tmp_path, "token", "issue", "--tenant", "rot", "--role", "admin").strip()
        assert request("GET", f"{srv.url}/v1/keys", newest)[0] == 200
    finally:
        stop(proc)
