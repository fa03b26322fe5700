"""Kafka ingest: Kafka-to-visible latency at a steady rate, and the highest sustained rate.

    FLOE_BIN=target/release/floe FLOE_TEST_KAFKA_BROKERS=127.0.0.1:19092 \
        python bench/kafka.py [--rate 20000] [--seconds 60] [--tenants 4] [--backlog 1000000]

Needs a Kafka-compatible broker (`eval "$(infra/services.sh up)"` starts one) and
`confluent-kafka` (a C producer fast enough to hold the rate on the same two cores).

1. Steady rate: one `floe ingest kafka` worker consumes `--tenants` topics (4 partitions each)
   while a producer sends `--rate` events/s for `--seconds`. Every 100th record's produce time is
   kept with its (partition, offset); a prober reads each table's current snapshot every 50 ms
   (catalog row, then the metadata file) and notes when the group's position passes the offset.
   Latency = visible - produced (the poll period bounds the error: +0..50 ms).
2. Highest sustained rate: a backlog of `--backlog` events is produced first, then a worker
   starts; events/s = backlog / time until every table holds it all.
3. The peer, same backlog, same machine: a Python consumer (confluent-kafka) appending each
   100,000 records to an Iceberg table with pyiceberg (`table.append`), the usual way to sink
   Kafka into Iceberg from Python; no exactly-once bookkeeping.
"""

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

FLOE = os.environ.get("FLOE_BIN", "target/release/floe")
BROKERS = os.environ.get("FLOE_TEST_KAFKA_BROKERS", "127.0.0.1:19092")
GROUP = "bench"


def floe(data, *args):
    return subprocess.run([FLOE, "--data-dir", str(data), *args], check=True, capture_output=True,
                          text=True).stdout


def create_topics(topics, partitions=4):
    futures = AdminClient({"bootstrap.servers": BROKERS}).create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics])
    for f in futures.values():
        f.result()


def event(tenant, i, rng):
    return json.dumps({
        "event_id": f"{tenant}-{i}", "type": rng.choice(["page_view", "purchase", "signup"]),
        "timestamp": 1764000000 + i // 100, "user_id": f"u{rng.randrange(10000)}",
        "payload": {"page": f"/p/{rng.randrange(500)}", "amount": rng.randrange(10000) / 100},
    }).encode()


class Positions:
    """The consumer group's committed positions per topic, read from the tables' current
    snapshots (the catalog row, then the metadata JSON)."""

    def __init__(self, data):
        self.db = sqlite3.connect(f"{data}/catalog.db", check_same_thread=False)

    def of(self, tenant):
        row = self.db.execute(
            "SELECT metadata_location FROM iceberg_tables WHERE table_namespace = ? AND table_name = 'events'",
            (tenant,)).fetchone()
        meta = json.loads(Path(row[0].removeprefix("file://")).read_text())
        current = meta.get("current-snapshot-id")
        for s in meta.get("snapshots", []):
            if s["snapshot-id"] == current:
                raw = s["summary"].get(f"floe.kafka.{GROUP}.tenant-{tenant}.events")
                return {int(k): v for k, v in json.loads(raw).items()} if raw else {}
        return {}

    def total(self, tenants):
        return sum(sum(self.of(t).values()) for t in tenants)


def start_worker(data, log):
    return subprocess.Popen([FLOE, "--data-dir", str(data), "ingest", "kafka", "--brokers", BROKERS,
                             "--group", GROUP, "--metrics-listen", "127.0.0.1:0"],
                            stderr=open(log, "w"))


def stop(proc):
    proc.terminate()
    proc.wait(timeout=60)


def steady(data, tenants, rate, seconds):
    rng = random.Random(1)
    positions = Positions(data)
    worker = start_worker(data, data / "worker-steady.log")
    time.sleep(3)
    producer = Producer({"bootstrap.servers": BROKERS, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 5})
    samples = []  # (tenant, produced_at, partition, offset)

    def report(tenant, sent_at):
        def cb(err, msg):
            if err is None:
                samples.append((tenant, sent_at, msg.partition(), msg.offset()))
        return cb

    seen = {}  # (tenant, partition) -> [(time, position)]
    stop_probe = threading.Event()

    def probe():
        while not stop_probe.is_set():
            for t in tenants:
                now = time.monotonic()
                for p, pos in positions.of(t).items():
                    hist = seen.setdefault((t, p), [])
                    if not hist or hist[-1][1] != pos:
                        hist.append((now, pos))
            time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    total = rate * seconds
    t0 = time.monotonic()
    for i in range(total):
        t = tenants[i % len(tenants)]
        if i % 100 == 0:
            producer.produce(f"tenant-{t}.events", event(t, i, rng), on_delivery=report(t, time.monotonic()))
        else:
            producer.produce(f"tenant-{t}.events", event(t, i, rng))
        if i % 1000 == 0:
            producer.poll(0)
            ahead = i / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush()
    achieved = total / (time.monotonic() - t0)
    deadline = time.monotonic() + 60
    while positions.total(tenants) < total and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.3)
    stop_probe.set()
    prober.join()
    stop(worker)
    lat = []
    missing = 0
    for t, sent, p, off in samples:
        hist = seen.get((t, p), [])
        when = next((ts for ts, pos in hist if pos > off), None)
        if when is None:
            missing += 1
        else:
            lat.append((when - sent) * 1000)
    lat.sort()
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))]  # noqa: E731
    return {"events": total, "produced_per_s": round(achieved), "samples": len(lat), "missing": missing,
            "p50_ms": round(q(0.5)), "p90_ms": round(q(0.9)), "p99_ms": round(q(0.99)),
            "max_ms": round(lat[-1])}


def produce_backlog(topics, n):
    rng = random.Random(2)
    producer = Producer({"bootstrap.servers": BROKERS, "acks": "all", "linger.ms": 20,
                         "batch.num.messages": 10000})
    for i in range(n):
        t = topics[i % len(topics)]
        producer.produce(f"tenant-{t}.events", event(t, i, rng))
        if i % 10000 == 0:
            producer.poll(0)
    producer.flush()


def drain(data, tenants, n):
    positions = Positions(data)
    worker = start_worker(data, data / "worker-drain.log")
    t0 = time.monotonic()
    while positions.total(tenants) < n:
        time.sleep(0.2)
        assert worker.poll() is None, "worker died"
        assert time.monotonic() - t0 < 1800, "drain took over 30 minutes"
    secs = time.monotonic() - t0
    stop(worker)
    return {"events": n, "seconds": round(secs, 1), "events_per_s": round(n / secs)}


def pyiceberg_sink(data, tenants, n):
    """The peer: consume the same backlog and append 100,000-record batches with pyiceberg."""
    import pyarrow as pa
    from pyiceberg.catalog.sql import SqlCatalog

    cat = SqlCatalog("peer", uri=f"sqlite:///{data}/peer.db", warehouse=f"file://{data}/peer-warehouse")
    cat.create_namespace("peer")
    schema = pa.schema([("event_id", pa.string()), ("type", pa.string()), ("ts", pa.timestamp("us", "UTC")),
                        ("user_id", pa.string()), ("payload", pa.string())])
    table = cat.create_table("peer.events", schema=schema)
    c = Consumer({"bootstrap.servers": BROKERS, "group.id": f"peer-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([f"tenant-{t}.events" for t in tenants])
    got = 0
    rows = {k: [] for k in schema.names}
    t0 = None

    def flush():
        table.append(pa.table(rows, schema=schema))
        for v in rows.values():
            v.clear()

    while got < n:
        for m in c.consume(num_messages=10000, timeout=1.0):
            if m.error():
                continue
            if t0 is None:
                t0 = time.monotonic()
            e = json.loads(m.value())
            rows["event_id"].append(e["event_id"])
            rows["type"].append(e["type"])
            rows["ts"].append(e["timestamp"] * 1_000_000)
            rows["user_id"].append(e.get("user_id"))
            rows["payload"].append(json.dumps(e.get("payload", {})))
            got += 1
            if len(rows["event_id"]) >= 100_000:
                flush()
    if rows["event_id"]:
        flush()
    secs = time.monotonic() - t0
    c.close()
    return {"events": got, "seconds": round(secs, 1), "events_per_s": round(got / secs)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--tenants", type=int, default=4)
    ap.add_argument("--backlog", type=int, default=1_000_000)
    ap.add_argument("--skip-peer", action="store_true")
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="floe-kafka-bench-"))
    run = uuid.uuid4().hex[:6]
    tenants = [f"b{run}-{i}" for i in range(args.tenants)]
    for t in tenants:
        floe(data, "tenant", "create", t)
    create_topics([f"tenant-{t}.events" for t in tenants])
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}; data {data}; broker {BROKERS}")

    s = steady(data, tenants, args.rate, args.seconds)
    print(f"steady {args.rate} events/s for {args.seconds} s over {args.tenants} tenants: {json.dumps(s)}")

    backlog_tenants = [f"d{run}-{i}" for i in range(args.tenants)]
    for t in backlog_tenants:
        floe(data, "tenant", "create", t)
    create_topics([f"tenant-{t}.events" for t in backlog_tenants])
    t0 = time.monotonic()
    produce_backlog(backlog_tenants, args.backlog)
    print(f"backlog of {args.backlog} produced in {time.monotonic() - t0:.1f} s")
    d = drain(data, backlog_tenants, args.backlog)
    print(f"floe ingest kafka, highest sustained rate (backlog drain): {json.dumps(d)}")
    if not args.skip_peer:
        p = pyiceberg_sink(data, backlog_tenants, args.backlog)
        print(f"pyiceberg sink (peer), same backlog: {json.dumps(p)}")
        print(f"ratio floe / pyiceberg: {d['events_per_s'] / p['events_per_s']:.1f}x")


if __name__ == "__main__":
    main()
