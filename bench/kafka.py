"""Kafka ingest: Kafka-to-visible latency at a steady rate, and the highest sustained rate.

    cargo build --release --bin floe && cargo build --release -p floe-ingest --example kafka_load
    FLOE_BIN=target/release/floe FLOE_TEST_KAFKA_BROKERS=127.0.0.1:19092 \
        python bench/kafka.py [--rate 20000] [--seconds 60] [--tenants 4] [--backlog 1000000]

Needs a Kafka-compatible broker (`eval "$(infra/services.sh up)"` starts one) and
`confluent-kafka` (backlog producer, peer and plain consumer).

1. Steady rate: one `floe ingest kafka` worker consumes `--tenants` topics (4 partitions each)
   while `kafka_load` (Rust, `ingest/examples/kafka_load.rs`; `FLOE_KAFKA_LOAD` names another
   build) sends `--rate` events/s for `--seconds`. Every 100th record's produce time is
   kept with its (partition, offset); a prober reads each table's current snapshot every 50 ms
   (catalog row, then the metadata file) and notes when the group's position passes the offset.
   Latency = visible - acknowledged by the broker (the poll period adds 0..50 ms). The worker's
   own figure, first record of a batch received to its commit, is read from its /metrics.
   `--plain-consumer` also times a plain consumer of the same topics: what the broker alone
   adds before any client sees a record. `--clusters "A;B"` spreads the tenants over
   independent brokers, one worker each, for a broker that cannot take the rate alone.
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
# The steady-rate producer, built beside floe by `cargo build --release -p floe-ingest --example kafka_load`.
KAFKA_LOAD = os.environ.get("FLOE_KAFKA_LOAD", str(Path(FLOE).parent / "examples" / "kafka_load"))
BROKERS = os.environ.get("FLOE_TEST_KAFKA_BROKERS", "127.0.0.1:19092")
GROUP = "bench"


def cpu_model():
    """The CPU's name and clock as /proc/cpuinfo gives them: the broker is single-core-bound, so
    figures from different machines differ by this."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        info = dict((k.strip(), v) for k, v in (line.split(":", 1) for line in lines if ":" in line))
        return f"{info['model name'].strip()} at {float(info['cpu MHz']):.0f} MHz"
    except (OSError, KeyError, ValueError):
        return platform.processor() or "cpu unknown"


def floe(data, *args):
    return subprocess.run([FLOE, "--data-dir", str(data), *args], check=True, capture_output=True,
                          text=True).stdout


def security():
    """librdkafka's security settings from FLOE_KAFKA_PROPERTIES_* (`_` is `.`, `__` is `_`), as
    `infra/services.sh up` exports them for its broker (TLS, SASL/SCRAM): the same for every
    client of the run, Floe's included."""
    prefix = "FLOE_KAFKA_PROPERTIES_"
    return {k[len(prefix):].lower().replace("__", "\0").replace("_", ".").replace("\0", "_"): v
            for k, v in os.environ.items() if k.startswith(prefix)}


SECURITY = security()


def create_topics(topics, partitions=4, brokers=BROKERS):
    admin = AdminClient({"bootstrap.servers": brokers, **SECURITY})
    futures = admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics])
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
        # tenant -> (metadata location, positions): a metadata file never changes, so it is
        # parsed once, not at every poll (the prober shares the two cores with what it measures).
        self.known = {}

    def of(self, tenant):
        row = self.db.execute(
            "SELECT metadata_location FROM iceberg_tables WHERE table_namespace = ? AND table_name = 'events'",
            (tenant,)).fetchone()
        known = self.known.get(tenant)
        if known and known[0] == row[0]:
            return known[1]
        meta = json.loads(Path(row[0].removeprefix("file://")).read_text())
        current = meta.get("current-snapshot-id")
        positions = {}
        for s in meta.get("snapshots", []):
            if s["snapshot-id"] == current:
                raw = s["summary"].get(f"floe.kafka.{GROUP}.tenant-{tenant}.events")
                positions = {int(k): v for k, v in json.loads(raw).items()} if raw else {}
        self.known[tenant] = (row[0], positions)
        return positions

    def total(self, tenants):
        return sum(sum(self.of(t).values()) for t in tenants)


METRICS_PORT = 19464
# `--worker-set KEY=VALUE` settings, given to every worker as `--set`.
WORKER_SET = []


def start_worker(data, log, prefix, brokers=BROKERS, port=METRICS_PORT):
    # Only this run's topics: the broker may hold other runs' and other tests' topics.
    sets = [a for kv in WORKER_SET for a in ("--set", kv)]
    return subprocess.Popen([FLOE, "--data-dir", str(data), *sets, "ingest", "kafka", "--brokers", brokers,
                             "--group", GROUP, "--topic-pattern", rf"^tenant-({prefix}-[0-9]+)\.events$",
                             "--metrics-listen", f"127.0.0.1:{port}"],
                            stderr=open(log, "w"))


def worker_metrics(port=METRICS_PORT):
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {line.split(" ")[0]: line.split(" ")[1] for line in text.splitlines()
            if line.startswith(("floe_kafka_commit_seconds_", "floe_kafka_visible_seconds_",
                                    "floe_kafka_records_per_commit{", "floe_kafka_commits_total"))}


def send(producer, topic, value, **kw):
    while True:
        try:
            producer.produce(topic, value, **kw)
            return
        except BufferError:  # the broker is behind: wait for deliveries
            producer.poll(0.01)


def stop(proc):
    proc.terminate()
    proc.wait(timeout=60)


def steady(data, tenants, rate, seconds, plain_consumer=False, linger_ms=5, clusters=(BROKERS,)):
    """Tenant k's topic is on cluster k % len(clusters); one worker per cluster."""
    total = rate * seconds
    positions = Positions(data)
    prefix = tenants[0].rsplit("-", 1)[0]
    workers = [start_worker(data, data / f"worker-steady-{c}.log", prefix, brokers, METRICS_PORT + c)
               for c, brokers in enumerate(clusters)]
    time.sleep(3)

    seen = {}  # (tenant, partition) -> [(unix time, position)]
    stop_probe = threading.Event()

    def probe():
        while not stop_probe.is_set():
            for t in tenants:
                now = time.time()
                for p, pos in positions.of(t).items():
                    hist = seen.setdefault((t, p), [])
                    if not hist or hist[-1][1] != pos:
                        hist.append((now, pos))
            time.sleep(0.05)

    # A plain consumer of the same topics (its own group) notes when each record reaches a
    # client at all: what the broker adds before any consumer can see a record.
    arrivals = {}  # (tenant, partition) -> [(offset, unix time)]
    consumer = None
    if plain_consumer:
        consumer = Consumer({"bootstrap.servers": clusters[0], **SECURITY, "group.id": f"probe-{uuid.uuid4().hex[:6]}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False,
                             "fetch.wait.max.ms": 100})
        consumer.subscribe([f"tenant-{t}.events" for t in tenants])

    def listen():
        while plain_consumer and not stop_probe.is_set():
            for m in consumer.consume(num_messages=5000, timeout=0.1):
                if not m.error():
                    t = m.topic().removeprefix("tenant-").removesuffix(".events")
                    arrivals.setdefault((t, m.partition()), []).append((m.offset(), time.time()))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    # The producer is a Rust program (ingest/examples/kafka_load.rs): at 20,000 records/s it
    # takes 4 % of a core, where the Python loop it replaces took 7 %, from the cores the broker
    # and the worker are measured on.
    out = data / "samples.tsv"
    with open(out, "w") as stdout:
        load = subprocess.run([KAFKA_LOAD, "--clusters", ";".join(clusters), "--tenants", ",".join(tenants),
                               "--rate", str(rate), "--seconds", str(seconds), "--linger-ms", str(linger_ms)],
                              stdout=stdout, stderr=subprocess.PIPE, text=True)
    if load.returncode != 0:
        raise SystemExit(f"kafka_load failed: {load.stderr}")
    summary = json.loads(load.stderr.strip().splitlines()[-1])
    if summary["failed"]:
        raise SystemExit(f"kafka_load: {summary['failed']} records not delivered: {load.stderr}")
    achieved = summary["per_s"]
    # (tenant, produced_at, acknowledged_at, partition, offset), times in Unix seconds
    samples = []
    for line in out.read_text().splitlines():
        t, p, off, sent_ns, acked_ns = line.split("\t")
        samples.append((t, int(sent_ns) / 1e9, int(acked_ns) / 1e9, int(p), int(off)))
    deadline = time.monotonic() + 60
    while positions.total(tenants) < total and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.3)
    stop_probe.set()
    prober.join()
    listener.join()
    if consumer:
        consumer.close()
    metrics = [worker_metrics(METRICS_PORT + c) for c in range(len(clusters))]
    for worker in workers:
        stop(worker)
    # Kafka-to-visible: from the broker's acknowledgement (the record is in Kafka) to the
    # first snapshot holding it; the producer's own queueing and the broker's write are apart,
    # and counted in produced-to-visible (handed to the client to queryable).
    import bisect

    lat, ack, delivered, whole = [], [], [], []
    missing = 0
    for t, sent, acked, p, off in samples:
        got = arrivals.get((t, p), [])
        i = bisect.bisect_left(got, (off, 0.0))
        if i < len(got) and got[i][0] == off:
            delivered.append(max(0.0, got[i][1] - acked) * 1000)
        hist = seen.get((t, p), [])
        when = next((ts for ts, pos in hist if pos > off), None)
        ack.append((acked - sent) * 1000)
        if when is None:
            missing += 1
        else:
            lat.append(max(0.0, when - acked) * 1000)
            whole.append(max(0.0, when - sent) * 1000)

    def q(xs, f):
        xs = sorted(xs)
        return round(xs[min(len(xs) - 1, int(f * len(xs)))]) if xs else None

    return {"events": total, "produced_per_s": round(achieved), "samples": len(lat), "missing": missing,
            "visible_p50_ms": q(lat, 0.5), "visible_p90_ms": q(lat, 0.9), "visible_p99_ms": q(lat, 0.99),
            "visible_max_ms": q(lat, 1.0),
            "broker_to_plain_consumer_p50_ms": q(delivered, 0.5), "broker_to_plain_consumer_p99_ms": q(delivered, 0.99),
            "produce_ack_p50_ms": q(ack, 0.5), "produce_ack_p99_ms": q(ack, 0.99),
            "produced_to_visible_p50_ms": q(whole, 0.5), "produced_to_visible_p99_ms": q(whole, 0.99),
            "workers": metrics}


def produce_backlog(topics, n):
    rng = random.Random(2)
    producer = Producer({"bootstrap.servers": BROKERS, **SECURITY, "acks": "all", "linger.ms": 20,
                         "batch.num.messages": 10000})
    for i in range(n):
        t = topics[i % len(topics)]
        send(producer, f"tenant-{t}.events", event(t, i, rng))
        if i % 10000 == 0:
            producer.poll(0)
    producer.flush()


def drain(data, tenants, n):
    positions = Positions(data)
    worker = start_worker(data, data / "worker-drain.log", tenants[0].rsplit("-", 1)[0])
    t0 = time.monotonic()
    # When each tenant's share was all in: a fair worker drains the tenants side by side, so
    # their finishing times lie close together; one after another, they spread over the run.
    share = {t: sum(1 for i in range(n) if i % len(tenants) == k) for k, t in enumerate(tenants)}
    done = {}
    while len(done) < len(tenants):
        time.sleep(0.2)
        assert worker.poll() is None, "worker died"
        assert time.monotonic() - t0 < 1800, "drain took over 30 minutes"
        for t in tenants:
            if t not in done and sum(positions.of(t).values()) >= share[t]:
                done[t] = round(time.monotonic() - t0, 1)
    secs = time.monotonic() - t0
    stop(worker)
    return {"events": n, "seconds": round(secs, 1), "events_per_s": round(n / secs),
            "tenant_done_s": sorted(done.values())}


def pyiceberg_sink(data, tenants, n):
    """The peer: consume the same backlog and append 100,000-record batches with pyiceberg."""
    import pyarrow as pa
    from pyiceberg.catalog.sql import SqlCatalog

    cat = SqlCatalog("peer", uri=f"sqlite:///{data}/peer.db", warehouse=f"file://{data}/peer-warehouse")
    cat.create_namespace("peer")
    schema = pa.schema([("event_id", pa.string()), ("type", pa.string()), ("ts", pa.timestamp("us", "UTC")),
                        ("user_id", pa.string()), ("payload", pa.string())])
    table = cat.create_table("peer.events", schema=schema)
    c = Consumer({"bootstrap.servers": BROKERS, **SECURITY, "group.id": f"peer-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    # Timed from the subscription, like the worker from its start: joining the group and the
    # first fetch count for both.
    t0 = time.monotonic()
    c.subscribe([f"tenant-{t}.events" for t in tenants])
    got = 0
    rows = {k: [] for k in schema.names}

    def flush():
        table.append(pa.table(rows, schema=schema))
        for v in rows.values():
            v.clear()

    while got < n:
        for m in c.consume(num_messages=10000, timeout=1.0):
            if m.error():
                continue
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
    ap.add_argument("--skip-drain", action="store_true")
    ap.add_argument("--skip-steady", action="store_true")
    ap.add_argument("--linger-ms", type=int, default=5,
                    help="the steady producer's linger.ms: larger batches cost the broker less per record")
    ap.add_argument("--clusters", default=BROKERS,
                    help="steady phase only: independent Kafka clusters separated by ';', one worker "
                         "each, the tenants spread over them (a broker that cannot take the rate alone)")
    ap.add_argument("--worker-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a Floe setting for the workers (e.g. kafka.properties.fetch.wait.max.ms=500)")
    ap.add_argument("--plain-consumer", action="store_true",
                    help="also time a plain consumer of the same topics (adds load to the broker)")
    args = ap.parse_args()
    WORKER_SET.extend(args.worker_set)
    data = Path(tempfile.mkdtemp(prefix="floe-kafka-bench-"))
    run = uuid.uuid4().hex[:6]
    tenants = [f"b{run}-{i}" for i in range(args.tenants)]
    clusters = args.clusters.split(";")
    for k, t in enumerate(tenants):
        floe(data, "tenant", "create", t)
        create_topics([f"tenant-{t}.events"], brokers=clusters[k % len(clusters)])
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, {cpu_model()}; data {data}; broker {BROKERS}")

    if not args.skip_steady:
        s = steady(data, tenants, args.rate, args.seconds, args.plain_consumer, args.linger_ms, clusters)
        print(f"steady {args.rate} events/s for {args.seconds} s over {args.tenants} tenants "
              f"on {len(clusters)} cluster(s) (linger.ms {args.linger_ms}): {json.dumps(s)}")

    if args.skip_drain:
        return
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
