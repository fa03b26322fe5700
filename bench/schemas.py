"""Ingest throughput with event schemas enforced, against the same ingest without them.

    FLOE_BIN=target/release/floe python bench/schemas.py [--events-per-tenant N] [--rounds R]

Each round runs `floe serve` + `floe gen` (3 tenants, batches of 500, mixed JSON/NDJSON/gzip,
1 % duplicates) three times on fresh data dirs: once with no schema registered (every type accepted
unchecked), once with a schema for each of the four generated types (typed properties, enums,
bounds, required fields, closed objects) and the tenants set to reject types without one, and
once with the same schemas promoting `page`, `amount` and `currency` to columns (filled from
the payloads at ingest). All store the same events. Prints events/s accepted for each and the
ratio to no schemas; rounds rotate which goes first.
"""

import argparse
import json
import platform
import subprocess
import tempfile
from pathlib import Path

import floe_server
from floe_server import FLOE

TENANTS = ["bench-1", "bench-2", "bench-3"]

SCHEMAS = {
    "PageViewed": {
        "type": "object",
        "properties": {"page": {"type": "string", "pattern": "^/"},
                       "ref": {"enum": ["newsletter", "search", "direct", "ad"]}},
        "required": ["page"],
        "additionalProperties": False,
    },
    "PurchaseMade": {
        "type": "object",
        "properties": {"order_id": {"type": "string", "minLength": 1},
                       "amount": {"type": "number", "minimum": 0},
                       "currency": {"type": "string", "enum": ["EUR", "USD", "GBP"]}},
        "required": ["order_id", "amount", "currency"],
        "additionalProperties": False,
    },
    "SensorReading": {
        "type": "object",
        "properties": {"sensor_id": {"type": "string"}, "value": {"type": "number", "minimum": -100, "maximum": 100}},
        "required": ["sensor_id", "value"],
        "additionalProperties": False,
    },
    "AlertTriggered": {
        "type": "object",
        "properties": {"alert": {"type": "string"}, "severity": {"enum": ["low", "high", "critical"]}},
        "required": ["alert", "severity"],
        "additionalProperties": False,
    },
}


def floe(data, *args):
    subprocess.run([FLOE, "--data-dir", str(data), *args], check=True, capture_output=True, text=True)


# The third arm: the same schemas, with these properties promoted to columns (filled at ingest).
PROMOTED = {"PageViewed": ["page"], "PurchaseMade": ["amount", "currency"]}
ARMS = ["no schemas", "schemas enforced", "schemas + promoted columns"]


def run(tmp, per_tenant, arm):
    data = tmp / "data"
    if arm != ARMS[0]:
        for t in TENANTS:
            floe(data, "tenant", "create", t)
            floe(data, "tenant", "set", t, "--unknown-types", "reject")
            for kind, schema in SCHEMAS.items():
                schema = json.loads(json.dumps(schema))
                if arm == ARMS[2]:
                    for prop in PROMOTED.get(kind, []):
                        schema["properties"][prop]["x-floe-promote"] = True
                path = tmp / f"{kind}.json"
                path.write_text(json.dumps(schema))
                floe(data, "schema", "register", "--tenant", t, "--type", kind, "--version", "1", "--file", str(path))
    proc, _, url = floe_server.start(data, tmp / "serve.log")
    try:
        report = floe_server.gen(data, url, TENANTS, per_tenant)
    finally:
        floe_server.stop(proc)
    return report["events_per_sec"], report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events-per-tenant", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rates = {arm: [] for arm in ARMS}
    for r in range(args.rounds):
        for arm in floe_server.rotated(ARMS, r):
            with tempfile.TemporaryDirectory() as d:
                rate, _ = run(Path(d), args.events_per_tenant, arm)
                rates[arm].append(rate)
                print(f"round {r + 1}: {arm}: {rate:,.0f} events/s", flush=True)
    print(f"\nmachine: {platform.machine()}, {platform.system()}; {args.rounds} rounds of "
          f"{len(TENANTS)} x {args.events_per_tenant:,} events\n")
    floe_server.ratio_table(rates, ARMS, "no schemas")


if __name__ == "__main__":
    main()
