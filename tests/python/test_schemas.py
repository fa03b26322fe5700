"""Event type schemas through the real binary: registered with the CLI and over HTTP, checked for
compatibility (refused with the reasons, `floe schema check` exiting non-zero for producers' CI),
and enforced at ingest: an event whose payload fails its schema is rejected with the JSON pointer
and the rule, the valid events of the batch are stored, and a tenant can refuse types it has no
schema for."""

import json
import subprocess
import time

from conftest import FLOE, floe, post, process_env, request

TENANT = "schemas-http"

V1 = {
    "type": "object",
    "properties": {
        "amount": {"type": "number", "minimum": 0},
        "currency": {"type": "string", "enum": ["EUR", "USD"]},
        "items": {"type": "array", "items": {"type": "object", "required": ["sku"]}},
    },
    "required": ["amount"],
}
# Compatible (backward): a property that may hold anything.
V2 = {**V1, "properties": {**V1["properties"], "note": {}}}
# Not: a new required property, and a narrower currency list.
V3_BAD = {**V2, "properties": {**V2["properties"], "currency": {"type": "string", "enum": ["EUR"]},
                               "country": {"type": "string"}},
          "required": ["amount", "country"]}


def purchase(i, payload, version=1):
    return {"event_id": f"p-{i}", "type": "PurchaseMade", "version": version, "timestamp": 1764000000,
            "user_id": "u", "payload": payload}


def test_schemas_are_registered_checked_and_enforced_at_ingest(server, tmp_path):
    floe(server.data, "tenant", "create", TENANT)
    admin, ingest = server.token(TENANT, "admin"), server.token(TENANT, "ingest")
    (tmp_path / "v1.json").write_text(json.dumps(V1))
    out = floe(server.data, "schema", "register", "--tenant", TENANT, "--type", "PurchaseMade", "--version", "1",
               "--file", str(tmp_path / "v1.json"))
    assert "registered; compatibility backward" in out, out
    url = f"{server.url}/v1/schemas/PurchaseMade"

    # Over HTTP: the next version; the same again changes nothing; another schema as it is refused.
    status, body = request("PUT", f"{url}/2", admin, V2)
    assert status == 201 and body["created"] and body["schema"]["version"] == 2, body
    assert request("PUT", f"{url}/2", admin, V2)[0] == 200
    assert request("PUT", f"{url}/2", admin, V1 | {"required": []})[0] == 409
    assert request("PUT", f"{url}/3", server.token(TENANT, "analyst"), V3_BAD)[0] == 403
    status, body = request("PUT", f"{url}/3", admin, V3_BAD)
    message = body["error"]["message"]
    assert status == 400 and "not backward compatible with version 2" in message, body
    assert '/required: "country" became required' in message, message
    assert '/properties/currency/enum: "USD" is no longer allowed' in message, message
    status, body = request("PUT", f"{url}/3", admin, {"type": 12})
    assert status == 400 and "not a valid JSON Schema" in body["error"]["message"], body

    # `floe schema check` for producers' CI: non-zero with the reasons, zero when compatible.
    (tmp_path / "bad.json").write_text(json.dumps(V3_BAD))
    checked = subprocess.run([FLOE, "--data-dir", str(server.data), "schema", "check", "--tenant", TENANT,
                              "--type", "PurchaseMade", "--file", str(tmp_path / "bad.json")],
                             capture_output=True, text=True, env=process_env(server.data))
    assert checked.returncode != 0 and "became required" in checked.stderr, checked
    (tmp_path / "ok.json").write_text(json.dumps({**V2, "properties": {**V2["properties"], "extra": True}}))
    floe(server.data, "schema", "check", "--tenant", TENANT, "--type", "PurchaseMade", "--file",
         str(tmp_path / "ok.json"))
    status, listed = request("GET", f"{server.url}/v1/schemas", server.token(TENANT, "viewer"))
    assert status == 200 and [(s["type"], s["version"]) for s in listed["schemas"]] == \
        [("PurchaseMade", 1), ("PurchaseMade", 2)], listed
    shown = json.loads(floe(server.data, "schema", "show", "--tenant", TENANT, "--type", "PurchaseMade"))
    assert shown["version"] == 2 and shown["schema"] == V2

    # Enforced at ingest (within ingest.schema_refresh_ms of registering): the valid events of a
    # batch are stored, the others rejected with where and why.
    batch = [
        purchase(0, {"amount": 10, "currency": "EUR"}),
        purchase(1, {"amount": -1}),
        purchase(2, {"amount": 3, "items": [{"sku": "a"}, {"qty": 2}]}),
        purchase(3, {"currency": "EUR"}, version=2),
        purchase(4, {"amount": 1, "note": [1, 2]}, version=2),
        {"event_id": "v-0", "type": "PageViewed", "timestamp": 1764000000, "payload": {"page": "/"}},
    ]
    deadline = time.time() + 30
    while True:
        reply = post(server.url, ingest, batch)
        if reply["rejected"] or time.time() > deadline:
            break
        time.sleep(0.5)
    rejected = {r["event_id"]: r for r in reply["rejected"]}
    assert set(rejected) == {"p-1", "p-2", "p-3"}, reply
    assert (rejected["p-1"]["code"], rejected["p-1"]["pointer"], rejected["p-1"]["rule"]) == \
        ("schema_violation", "/amount", "minimum")
    assert (rejected["p-2"]["pointer"], rejected["p-2"]["rule"]) == ("/items/1", "required")
    assert (rejected["p-3"]["pointer"], rejected["p-3"]["rule"]) == ("", "required")
    assert "PurchaseMade version 2" in rejected["p-3"]["message"], rejected["p-3"]

    # Types without a schema: accepted until the tenant says reject; then (once the server has
    # read the setting) refused by name.
    floe(server.data, "tenant", "set", TENANT, "--unknown-types", "reject")
    deadline, n = time.time() + 30, 0
    while True:
        n += 1
        # Every event of the batch refused: 400 with the reply.
        _, reply = request("POST", f"{server.url}/v1/events?wait=visible", ingest,
                           [{"event_id": f"v-1-{n}", "type": "PageViewed", "timestamp": 1764000000},
                            purchase(f"9-{n}", {"amount": 1}, version=7)])
        if reply["rejected"] or time.time() > deadline:
            break
        time.sleep(0.5)
    codes = sorted((r["event_id"], r["code"]) for r in reply["rejected"])
    assert codes == [(f"p-9-{n}", "unknown_type"), (f"v-1-{n}", "unknown_type")], reply
    assert "no schema for version 7" in [r for r in reply["rejected"] if r["event_id"] == f"p-9-{n}"][0]["message"]

    stored = floe(server.data, "sql", "--tenant", TENANT, "--format", "json", "SELECT event_id FROM events")
    ids = {r["event_id"] for r in json.loads(stored)} if stored.strip().startswith("[") else \
        {json.loads(line)["event_id"] for line in stored.splitlines() if line.strip()}
    assert {"p-0", "p-4", "v-0"} <= ids, ids
    assert not ids & {"p-1", "p-2", "p-3", f"p-9-{n}", f"v-1-{n}"}, ids


ORDER_V1 = {
    "type": "object",
    "properties": {
        "amount_cents": {"type": "integer"},
        "currency": {"type": "string"},
        "legacy": {"type": "string"},
    },
    "required": ["amount_cents", "currency"],
}
# Version 2: amount in units (promoted), a channel every old order gets as "web", legacy dropped.
ORDER_V2 = {
    "type": "object",
    "properties": {
        "amount": {"type": "number", "x-floe-promote": True},
        "currency": {"type": "string", "x-floe-promote": True},
        "channel": {"type": "string"},
    },
    "required": ["amount", "currency", "channel"],
    "x-floe-upcast": [
        {"op": "rename", "from": "amount_cents", "to": "amount"},
        {"op": "convert", "field": "amount", "factor": 0.01},
        {"op": "default", "field": "channel", "value": "web"},
        {"op": "drop", "field": "legacy"},
    ],
}


def order(i, version, payload):
    return {"event_id": f"o-{i}", "type": "OrderPlaced", "version": version, "timestamp": 1764000000 + i,
            "user_id": f"u{i}", "payload": payload}


def upcast_by_hand(event):
    """What the view must show for an event: version 1 read through version 2's steps."""
    p = event["payload"]
    if event["version"] == 1:
        return (event["event_id"], 1, p["amount_cents"] / 100, p["currency"], "web")
    return (event["event_id"], 2, float(p["amount"]), p["currency"], p["channel"])


def test_upcast_views_and_promoted_columns_through_evolution(server, tmp_path):
    """Orders sent at version 1, then version 2 registered with upcasting steps and promoted
    properties: the per-type view shows every order at version 2 (equal to a hand computation),
    the promoted columns are filled from then on and by backfill, and pyiceberg reads the evolved
    table (nulls where a file was written before the promotion)."""
    import trino
    from conftest import iceberg_catalog
    from trino.auth import JWTAuthentication

    tenant = "schemas-upcast"
    floe(server.data, "tenant", "create", tenant)
    admin, ingest = server.token(tenant, "admin"), server.token(tenant, "ingest")
    url = f"{server.url}/v1/schemas/OrderPlaced"
    assert request("PUT", f"{url}/1", admin, ORDER_V1)[0] == 201
    # Steps on a first version are refused: there is nothing before it.
    status, body = request("PUT", f"{server.url}/v1/schemas/Other/1", admin,
                           {**ORDER_V1, "x-floe-upcast": [{"op": "drop", "field": "legacy"}]})
    assert status == 400 and "first" in body["error"]["message"], body
    v1 = [order(i, 1, {"amount_cents": 1999 + i, "currency": "EUR", "legacy": "x"}) for i in range(3)]
    assert post(server.url, ingest, v1)["accepted"] == 3

    # Without its steps, version 2 breaks backward compatibility (amount required, no default);
    # with them it is compatible: old orders are read through them.
    status, body = request("PUT", f"{url}/2", admin, {k: v for k, v in ORDER_V2.items() if k != "x-floe-upcast"})
    assert status == 400 and '"amount" became required' in body["error"]["message"], body
    # A unit conversion cannot carry the wrong kind of step.
    status, body = request("PUT", f"{url}/2", admin, {**ORDER_V2, "x-floe-upcast": [{"op": "explode"}]})
    assert status == 400 and "/x-floe-upcast/0" in body["error"]["message"], body
    status, body = request("PUT", f"{url}/2", admin, ORDER_V2)
    assert status == 201, body

    v2 = [order(10 + i, 2, {"amount": 5.5 + i, "currency": "USD", "channel": "app"}) for i in range(2)]
    reply = post(server.url, ingest, v2)
    assert reply["accepted"] == 2 and not reply["rejected"], reply

    cur = trino.dbapi.connect(host="127.0.0.1", port=server.port, user="someone", catalog="floe", schema=tenant,
                              http_scheme="http", allow_insecure_auth=True,
                              auth=JWTAuthentication(server.token(tenant, "analyst"))).cursor()
    cur.execute("SELECT event_id, version, amount, currency, channel FROM order_placed ORDER BY event_id")
    got = [tuple(r) for r in cur.fetchall()]
    assert got == sorted(upcast_by_hand(e) for e in v1 + v2), got
    cur.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'order_placed'")
    assert "legacy" not in {r[0] for r in cur.fetchall()}

    # The promoted columns: filled for the events written after the promotion only.
    cur.execute("SELECT event_id, currency, amount FROM events WHERE type = 'OrderPlaced' ORDER BY event_id")
    assert [tuple(r) for r in cur.fetchall()] == \
        sorted([(e["event_id"], None, None) for e in v1] + [(e["event_id"], "USD", 5.5 + i) for i, e in enumerate(v2)])
    table = iceberg_catalog(server.data).load_table(f"{tenant}.events")
    assert [f.name for f in table.schema().fields][-2:] == ["amount", "currency"], table.schema()
    rows = table.scan(row_filter="type == 'OrderPlaced'").to_arrow().sort_by("event_id").to_pylist()
    assert [(r["event_id"], r["currency"]) for r in rows] == \
        sorted([(e["event_id"], None) for e in v1] + [(e["event_id"], "USD") for e in v2]), rows

    # Backfill fills the files written before (version 1 orders have a currency, not an amount).
    out = floe(server.data, "backfill", "--tenant", tenant, "--promote", "currency")
    assert "currency filled in" in out, out
    cur.execute("SELECT event_id, currency, amount FROM events WHERE type = 'OrderPlaced' ORDER BY event_id")
    assert [tuple(r) for r in cur.fetchall()] == \
        sorted([(e["event_id"], "EUR", None) for e in v1] + [(e["event_id"], "USD", 5.5 + i) for i, e in enumerate(v2)])
    table = iceberg_catalog(server.data).load_table(f"{tenant}.events")
    rows = table.scan(row_filter="type == 'OrderPlaced'").to_arrow().sort_by("event_id").to_pylist()
    assert sorted((r["event_id"], r["currency"]) for r in rows) == \
        sorted([(e["event_id"], "EUR") for e in v1] + [(e["event_id"], "USD") for e in v2]), rows
    cur.execute("SELECT event_id, version, amount, currency, channel FROM order_placed ORDER BY event_id")
    assert [tuple(r) for r in cur.fetchall()] == got


def test_a_tenant_can_dead_letter_types_without_a_schema(server):
    """`--unknown-types dead_letter`: over HTTP, events of a type without a schema are kept in the
    tenant's events_dlq (not stored as events), said so in the reply, and the request is a 200."""
    tenant = "schemas-dlq"
    floe(server.data, "tenant", "create", tenant)
    floe(server.data, "tenant", "set", tenant, "--unknown-types", "dead_letter")
    ingest = server.token(tenant, "ingest")
    deadline, n = time.time() + 30, 0
    while True:  # until the server has read the setting (ingest.schema_refresh_ms)
        n += 1
        status, reply = request("POST", f"{server.url}/v1/events?wait=visible", ingest,
                                [{"event_id": f"d-{n}", "type": "Mystery", "timestamp": 1764000000,
                                  "payload": {"x": n}}])
        if reply.get("dead_lettered") or time.time() > deadline:
            break
        time.sleep(0.5)
    assert status == 200 and reply["accepted"] == 0 and reply["dead_lettered"] == 1, reply
    [r] = reply["rejected"]
    assert (r["event_id"], r["code"], r["dead_lettered"]) == (f"d-{n}", "unknown_type", True), r
    assert "dead-letters" in r["message"], r
    out = floe(server.data, "sql", "--tenant", tenant, "--format", "json",
               'SELECT topic, "partition", "offset", reason, key, payload FROM events_dlq')
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    mine = [row for row in rows if row["key"] == f"d-{n}"]
    assert len(mine) == 1, rows
    assert (mine[0]["topic"], mine[0]["partition"], mine[0]["offset"], mine[0]["reason"]) == \
        ("http", -1, -1, "unknown_type"), mine
    assert json.loads(mine[0]["payload"])["payload"] == {"x": n}
    stored = floe(server.data, "sql", "--tenant", tenant, "--format", "json", "SELECT count(*) AS n FROM events")
    assert json.loads(stored) == {"n": 0}, stored
