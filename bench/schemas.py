"""Ingest throughput with event schemas enforced, against the same ingest without them.

    FLOE_BIN=target/release/floe python bench/schemas.py [--events-per-tenant N] [--rounds R]

Each round runs `floe serve` + `floe gen` (3 tenants, batches of 500, mixed JSON/NDJSON/gzip,
1 % duplicates) twice on fresh data dirs: once with no schema registered (every type accepted
unchecked), once with a schema for each of the four generated types (typed properties, enums,
bounds, required fields, closed objects) and the tenants set to reject types without one. Both
store the same events. Prints events/s accepted for each and the ratio; rounds alternate which
goes first.
"""

import argparse
import json
import platform
import statistics
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


def run(tmp, per_tenant, with_schemas):
    data = tmp / ("with" if with_schemas else "without")
    if with_schemas:
        for t in TENANTS:
            floe(data, "tenant", "create", t)
            floe(data, "tenant", "set", t, "--unknown-types", "reject")
            for kind, schema in SCHEMAS.items():
                path = tmp / f"{kind}.json"
                path.write_text(json.dumps(schema))
                floe(data, "schema", "register", "--tenant", t, "--type", kind, "--version", "1", "--file", str(path))
    proc, _, url = floe_server.start(data, tmp / "serve.log")
    try:
        out = subprocess.run(
            [FLOE, "--data-dir", str(data), "gen", "--url", url, "--tenants", ",".join(TENANTS),
             "--events", str(per_tenant), "--batch", "500", "--concurrency", "8"],
            capture_output=True, text=True, check=True)
    finally:
        floe_server.stop(proc)
    report = json.loads(out.stdout)
    return report["events_per_sec"], report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events-per-tenant", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rates = {False: [], True: []}
    for r in range(args.rounds):
        order = [False, True] if r % 2 == 0 else [True, False]
        for with_schemas in order:
            with tempfile.TemporaryDirectory() as d:
                rate, _ = run(Path(d), args.events_per_tenant, with_schemas)
                rates[with_schemas].append(rate)
                print(f"round {r + 1}: {'with' if with_schemas else 'without'} schemas: {rate:,.0f} events/s",
                      flush=True)
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"\nmachine: {platform.machine()}, {platform.system()}; {args.rounds} rounds of "
          f"{len(TENANTS)} x {args.events_per_tenant:,} events\n")
    print("| ingest | events/s accepted (median) | runs |")
    print("|---|---:|---|")
    print(f"| no schemas | {off:,.0f} | {', '.join(f'{x:,.0f}' for x in rates[False])} |")
    print(f"| schemas enforced | {on:,.0f} | {', '.join(f'{x:,.0f}' for x in rates[True])} |")
    print(f"\nwith / without: {on / off:.2f}")


if __name__ == "__main__":
    main()
