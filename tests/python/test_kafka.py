"""Kafka ingestion checked from outside Floe: records are produced with kafka-python (an
independent client), `floe ingest kafka` workers are killed with SIGKILL, restarted, joined and
left while they consume, and the tables are read back with pyiceberg.

Needs the Kafka-compatible broker that `infra/services.sh up` starts (FLOE_TEST_KAFKA_BROKERS),
reached over TLS with SASL/SCRAM as the FLOE_KAFKA_PROPERTIES_* variables it exports say: the
same variables configure Floe's workers and, translated here, the tests' own clients."""

import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid

import pytest
from conftest import FLOE, floe, free_port, iceberg_catalog, post, process_env, start, stop

BROKERS = os.environ.get("FLOE_TEST_KAFKA_BROKERS")
TENANTS = int(os.environ.get("FLOE_TEST_KAFKA_TENANTS", "20"))
EVENTS = int(os.environ.get("FLOE_TEST_KAFKA_EVENTS", "200000"))


def kafka_properties():
    """The librdkafka settings of FLOE_KAFKA_PROPERTIES_* (`_` is `.`, `__` is `_`)."""
    prefix = "FLOE_KAFKA_PROPERTIES_"
    return {k[len(prefix):].lower().replace("__", "\0").replace("_", ".").replace("\0", "_"): v
            for k, v in os.environ.items() if k.startswith(prefix)}


def kafka_python_security(props=None):
    """kafka-python's arguments for the same security settings."""
    props = kafka_properties() if props is None else props
    names = {"security.protocol": "security_protocol", "ssl.ca.location": "ssl_cafile",
             "sasl.mechanism": "sasl_mechanism", "sasl.mechanisms": "sasl_mechanism",
             "sasl.username": "sasl_plain_username", "sasl.password": "sasl_plain_password"}
    unknown = set(props) - set(names)
    assert not unknown, f"no kafka-python argument for {sorted(unknown)}"
    return {names[k]: v for k, v in props.items()}


SECURITY = kafka_python_security()


def keep_first_sasl_session():
    """The test broker (tansu 0.6) tells clients their SASL session lasts 60 s, then refuses the
    second handshake a client sends on the connection to renew it (KIP-368 re-authentication;
    Apache Kafka accepts it). kafka-python fails the batches in flight on that refusal, so the
    tests' own clients keep their first session. Floe's librdkafka clients, refused the same
    way, reconnect and authenticate afresh; nothing is lost (these tests check it)."""
    from kafka.net.connection import SaslReauthenticator

    SaslReauthenticator.schedule = lambda self: None


keep_first_sasl_session()


@pytest.fixture(scope="module")
def brokers():
    assert BROKERS, "FLOE_TEST_KAFKA_BROKERS is not set: run eval \"$(infra/services.sh up)\" first"
    return BROKERS


def admin(brokers):
    from kafka import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=brokers, **SECURITY, request_timeout_ms=30000)


def tenant_with_topic(data, brokers, prefix, partitions):
    """(run, tenant, topic): a fresh tenant of `data` and its events topic on the broker."""
    run = uuid.uuid4().hex[:6]
    tenant = f"{prefix}{run}"
    topic = f"tenant-{tenant}.events"
    floe(data, "tenant", "create", tenant)
    create_topics(brokers, [topic], partitions=partitions)
    return run, tenant, topic


def create_topics(brokers, topics, partitions=4):
    from kafka.admin import NewTopic

    a = admin(brokers)
    a.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics])
    a.close()


class Workers:
    """`floe ingest kafka` processes of one consumer group, each with its own log."""

    def __init__(self, data, brokers, group, pattern, *extra):
        self.data, self.brokers, self.group, self.pattern, self.extra = data, brokers, group, pattern, extra
        self.procs = {}
        self.started = 0

    def start(self, name, *args):
        self.started += 1
        log = open(self.data / f"worker-{name}-{self.started}.log", "w")
        self.procs[name] = subprocess.Popen(
            [FLOE, "--data-dir", str(self.data), *self.extra, "ingest", "kafka", "--brokers", self.brokers,
             "--group", self.group, "--topic-pattern", self.pattern, *args],
            stderr=log, env=process_env(self.data))

    def kill(self, name):
        p = self.procs.pop(name)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)

    def stop(self, name):
        p = self.procs.pop(name)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 0, f"worker {name} did not stop cleanly"

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name)

    def check_alive(self):
        for name, p in self.procs.items():
            assert p.poll() is None, f"worker {name} exited with {p.returncode}; see {self.data}/worker-{name}-*.log"


def event(tenant, i):
    return {
        "event_id": f"{tenant}-{i}",
        "tenant_id": tenant,
        "type": random.choice(["page_view", "purchase", "signup"]),
        "timestamp": 1764000000 + i,
        "user_id": f"u{i % 97}",
        "payload": {"i": i, "page": f"/p/{i % 13}"},
    }


POISON = [
    b"not json at all",
    b"{\"type\": \"truncated\"",
    b"\xff\xfe\x00 binary",
    b"[1, 2, 3]",
    json.dumps({"type": "x", "timestamp": 1764000000}).encode(),  # wrong tenant: filled below
    json.dumps({"type": "no_timestamp"}).encode(),
    json.dumps({"timestamp": 1764000000}).encode(),
    json.dumps({"type": "x", "timestamp": "yesterday"}).encode(),
    json.dumps({"type": "x", "timestamp": 1764000000, "payload": [1]}).encode(),
    json.dumps({"type": "x", "timestamp": 1764000000, "version": -3}).encode(),
]


def scrape(port):
    """The worker's /metrics as {series: value}."""
    import urllib.request

    from test_metrics import lint

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    lint(text)
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def table_rows(data, tenant, table, columns):
    t = iceberg_catalog(data).load_table(f"{tenant}.{table}")
    return t.scan(selected_fields=columns).to_arrow()


def test_exactly_once_through_kills_and_rebalances(tmp_path, brokers):
    """200,000 events over 20 tenant topics while two workers run; workers are SIGKILLed and
    restarted five times at random moments and a third joins and leaves. Every tenant ends with
    exactly what was produced, no event_id twice, and the ten poison records in events_dlq."""
    from kafka import KafkaProducer

    data = tmp_path
    run = uuid.uuid4().hex[:6]
    tenants = [f"k{run}-{i}" for i in range(TENANTS)]
    for t in tenants:
        floe(data, "tenant", "create", t)
    create_topics(brokers, [f"tenant-{t}.events" for t in tenants])
    workers = Workers(data, brokers, f"g-{run}", rf"^tenant-(k{run}-[0-9]+)\.events$",
                      "--set", "ingest.flush_interval_ms=200")
    workers.start("a")
    workers.start("b")

    per_tenant = EVENTS // TENANTS
    produced = {t: 0 for t in tenants}
    poison_at = {}
    done = threading.Event()
    errors = []

    def produce():
        try:
            p = KafkaProducer(bootstrap_servers=brokers, **SECURITY, acks="all", linger_ms=5, retries=10,
                              max_in_flight_requests_per_connection=1)
            rng = random.Random(7)
            poison_slots = set(rng.sample(range(per_tenant * TENANTS), len(POISON)))
            n = 0
            start = time.monotonic()
            for i in range(per_tenant):
                for t in tenants:
                    if n in poison_slots:
                        k = len(poison_at)
                        raw = POISON[k]
                        if k == 4:
                            raw = json.dumps({"type": "x", "timestamp": 1764000000,
                                              "tenant_id": "someone-else"}).encode()
                        poison_at[(t, k)] = p.send(f"tenant-{t}.events", value=raw)
                    e = event(t, i)
                    p.send(f"tenant-{t}.events", key=e["user_id"].encode(), value=json.dumps(e).encode())
                    produced[t] += 1
                    n += 1
                    # A steady rate, so that the kills land while records flow (~40 s).
                    if n % 1000 == 0:
                        ahead = n / (EVENTS / 40) - (time.monotonic() - start)
                        if ahead > 0:
                            time.sleep(ahead)
            p.flush()
            for key, fut in list(poison_at.items()):
                poison_at[key] = fut.get(timeout=30)
            p.close()
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append(e)
        finally:
            done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    rng = random.Random()
    kills = 0
    third = False
    t0 = time.monotonic()
    while kills < 5 or not done.is_set():
        time.sleep(rng.uniform(2, 7))
        workers.check_alive()
        if kills < 5:
            # The two long-lived workers; the third only joins and leaves.
            victim = rng.choice(["a", "b"])
            workers.kill(victim)
            time.sleep(rng.uniform(0, 2))
            workers.start(victim)
            kills += 1
        if kills == 2 and not third:
            workers.start("c")
            third = True
        if kills == 4 and "c" in workers.procs:
            workers.stop("c")
        assert time.monotonic() - t0 < 600, "producer did not finish"
    producer.join()
    assert not errors, errors
    assert "c" not in workers.procs and third

    expected = sum(produced.values())
    assert expected == per_tenant * TENANTS
    deadline = time.monotonic() + 240
    counts = {}
    while time.monotonic() < deadline:
        workers.check_alive()
        counts = {t: table_rows(data, t, "events", ("event_id",)).num_rows for t in tenants}
        if counts == produced:
            break
        time.sleep(2)
    workers.stop_all()
    assert counts == produced, {t: (counts.get(t), produced[t]) for t in tenants if counts.get(t) != produced[t]}
    for t in tenants:
        ids = table_rows(data, t, "events", ("event_id",)).column("event_id").to_pylist()
        assert len(ids) == len(set(ids)) == per_tenant, t
        assert set(ids) == {f"{t}-{i}" for i in range(per_tenant)}, t

    # The ten poison records, each once, at the offset the broker gave it.
    dead = []
    for t in {t for (t, _) in poison_at}:
        rows = table_rows(data, t, "events_dlq", ("topic", "partition", "offset", "reason")).to_pylist()
        dead += [(t, r["partition"], r["offset"], r["reason"]) for r in rows]
    assert len(dead) == len(POISON), dead
    want = sorted((t, md.partition, md.offset) for (t, _), md in poison_at.items())
    assert sorted((t, p, o) for t, p, o, _ in dead) == want
    reasons = {r for *_, r in dead}
    assert {"malformed_json", "not_utf8", "not_an_object", "tenant_mismatch", "missing_field",
            "invalid_timestamp", "invalid_payload", "invalid_version"} <= reasons, reasons


def test_http_in_kafka_mode_and_dlq_replay(tmp_path, brokers):
    """`floe serve` with kafka.brokers produces accepted events to the tenant's topic (created
    with the tenant); ?wait=visible answers once a worker committed them; a retried event_id is
    not produced twice; a dead letter fixed and replayed becomes an event."""
    from kafka import KafkaProducer

    data = tmp_path
    run = uuid.uuid4().hex[:6]
    tenant = f"h{run}"
    group = f"g-{run}"
    kafka = ["--set", f"kafka.brokers={brokers}", "--set", f"kafka.group={group}",
             "--set", "ingest.flush_interval_ms=100"]
    floe(data, *kafka, "tenant", "create", tenant)
    topics = admin(brokers).list_topics()
    assert f"tenant-{tenant}.events" in topics, "tenant creation did not create its topic"

    # librdkafka settings go through `--set kafka.properties.NAME` (their names hold dots) to
    # the client as they are: a bad value reaches librdkafka, which refuses it by name.
    bad = subprocess.run([FLOE, "--data-dir", str(data), *kafka, "--set", "kafka.properties.fetch.wait.max.ms=soon",
                          "ingest", "kafka", "--brokers", brokers, "--group", group],
                         capture_output=True, text=True, timeout=60, env=process_env(data))
    assert bad.returncode != 0 and 'Invalid value for configuration property "fetch.wait.max.ms"' in bad.stderr, \
        bad.stderr
    # The same through the environment, `_` for `.` (how secrets such as sasl.password arrive).
    bad = subprocess.run([FLOE, "--data-dir", str(data), *kafka, "ingest", "kafka", "--brokers", brokers,
                          "--group", group], capture_output=True, text=True, timeout=60,
                         env={**process_env(data), "FLOE_KAFKA_PROPERTIES_SESSION_TIMEOUT_MS": "soon"})
    assert bad.returncode != 0 and 'Invalid value for configuration property "session.timeout.ms"' in bad.stderr, \
        bad.stderr

    proc, srv = start(data, *kafka)
    workers = Workers(data, brokers, group, rf"^tenant-({tenant})\.events$", *kafka)
    metrics_port = free_port()
    workers.start("a", "--metrics-listen", f"127.0.0.1:{metrics_port}")
    try:
        token = srv.token(tenant, "ingest")
        batch = [{"event_id": f"e{i}", "type": "page_view", "timestamp": 1764000000 + i,
                  "user_id": f"u{i % 5}", "payload": {"i": i}} for i in range(500)]
        reply = post(srv.url, token, batch)
        assert reply["accepted"] == 500 and reply["duplicates"] == 0
        assert reply.get("snapshot_id"), reply
        # Visible when the reply comes: the table holds all 500.
        assert table_rows(data, tenant, "events", ("event_id",)).num_rows == 500
        again = post(srv.url, token, batch[:10] + [{"event_id": "new", "type": "x", "timestamp": 1764000000}])
        assert again["accepted"] == 11 and again["duplicates"] == 10
        ids = table_rows(data, tenant, "events", ("event_id",)).column("event_id").to_pylist()
        assert len(ids) == 501 == len(set(ids))

        # A poison record, then its fixed version through `floe dlq replay`.
        p = KafkaProducer(bootstrap_servers=brokers, **SECURITY, acks="all")
        p.send(f"tenant-{tenant}.events", value=json.dumps({"event_id": "fixme", "type": "x"}).encode())
        p.flush()
        p.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if table_rows(data, tenant, "events_dlq", ("offset",)).num_rows == 1:
                    break
            except Exception:  # noqa: BLE001 - the table appears with the first dead letter
                pass
            time.sleep(0.5)
        out = floe(data, "sql", "--tenant", tenant, "--format", "json", "SELECT * FROM events_dlq")
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        rows = rows[0] if len(rows) == 1 and isinstance(rows[0], list) else rows
        assert len(rows) == 1 and rows[0]["reason"] == "missing_field", rows
        fixed = json.loads(rows[0]["payload"])
        fixed["timestamp"] = 1764000999
        rows[0]["payload"] = json.dumps(fixed)
        (data / "fixed.jsonl").write_text(json.dumps(rows[0]) + "\n")
        floe(data, *kafka, "dlq", "replay", "--tenant", tenant, "--file", str(data / "fixed.jsonl"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ids = table_rows(data, tenant, "events", ("event_id",)).column("event_id").to_pylist()
            if "fixme" in ids:
                break
            time.sleep(0.5)
        assert "fixme" in ids and len(ids) == 502

        # The worker's figures: 501 + 1 events and 1 dead letter committed, no lag left (the
        # brokers' watermarks reach the worker with its statistics, every 5 s), and each
        # commit timed from its oldest record's timestamp.
        deadline = time.monotonic() + 30
        while True:
            m = scrape(metrics_port)
            if m.get(f'floe_kafka_consumer_lag{{tenant="{tenant}"}}') == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert m["floe_kafka_records_committed_total"] == 503, m
        assert m["floe_kafka_dlq_records_total"] == 1, m
        assert m[f'floe_kafka_consumer_lag{{tenant="{tenant}"}}'] == 0, m
        partitions = [k for k in m if k.startswith(f'floe_kafka_partition_lag{{tenant="{tenant}",')]
        assert partitions and all(m[k] == 0 for k in partitions), m
        assert m["floe_kafka_commits_total"] >= 3 and m["floe_kafka_commit_seconds_count"] == m["floe_kafka_commits_total"], m
        assert m["floe_kafka_visible_seconds_count"] == m["floe_kafka_commits_total"], m
        # Produced during this test: no record was older than a minute when it became visible.
        assert m['floe_kafka_visible_seconds_bucket{le="60"}'] == m["floe_kafka_visible_seconds_count"], m
        assert 0 < m["floe_kafka_visible_seconds_sum"], m

        # Deleted and created again while everything runs: the new tenant's table starts where
        # the topic ends, so none of the old tenant's 502 events reach it, and the same event
        # ids are new events for it.
        floe(data, *kafka, "tenant", "delete", tenant, "--purge")
        floe(data, *kafka, "tenant", "create", tenant)
        srv.tokens.clear()
        token = srv.token(tenant, "ingest")
        reply = post(srv.url, token, batch[:3])
        assert reply["accepted"] == 3 and reply["duplicates"] == 0, reply
        ids = table_rows(data, tenant, "events", ("event_id",)).column("event_id").to_pylist()
        assert sorted(ids) == ["e0", "e1", "e2"], len(ids)
        workers.check_alive()
    finally:
        workers.stop_all()
        stop(proc)


def test_frozen_worker_does_not_commit_twice(tmp_path, brokers):
    """A worker frozen (SIGSTOP) with a batch in hand loses its partitions to another, which
    commits the same records; thawed, the first one's batch must not land a second time."""
    from kafka import KafkaProducer

    data = tmp_path
    run, tenant, topic = tenant_with_topic(data, brokers, "z", 1)
    group = f"g-{run}"
    pattern = rf"^tenant-({tenant})\.events$"
    slow = Workers(data, brokers, group, pattern, "--set", "ingest.flush_interval_ms=4000")
    fast = Workers(data, brokers, group, pattern, "--set", "ingest.flush_interval_ms=200")
    p = KafkaProducer(bootstrap_servers=brokers, **SECURITY, acks="all")
    sent = 0

    def send(n):
        nonlocal sent
        for _ in range(n):
            p.send(topic, value=json.dumps(event(tenant, sent)).encode())
            sent += 1
        p.flush()

    def wait_rows(n, secs=90):
        deadline = time.monotonic() + secs
        rows = -1
        while time.monotonic() < deadline:
            rows = table_rows(data, tenant, "events", ("event_id",)).num_rows
            if rows >= n:
                return rows
            time.sleep(0.3)
        return rows

    slow.start("a")
    try:
        send(500)
        assert wait_rows(500) == 500
        send(500)
        time.sleep(2)  # in a's buffer, not committed (4 s interval)
        frozen = slow.procs["a"]
        frozen.send_signal(signal.SIGSTOP)
        # Past a's session (10 s) before b joins: the group then forms without a. (Joining
        # earlier works on Apache Kafka too, but tansu does not rebalance when it drops a
        # member for a missed heartbeat while the others keep their subscription.)
        time.sleep(12)
        fast.start("b")
        assert wait_rows(1000) == 1000, "b did not take the partition over"
        send(100)
        assert wait_rows(1100) == 1100
        frozen.send_signal(signal.SIGCONT)
        time.sleep(8)  # a's stale batch is due: it must find its records already in
        send(100)
        assert wait_rows(1200) == 1200
        time.sleep(3)
        ids = table_rows(data, tenant, "events", ("event_id",)).column("event_id").to_pylist()
        assert len(ids) == len(set(ids)) == 1200
        slow.check_alive()
        fast.check_alive()
    finally:
        p.close()
        for w in (slow, fast):
            for name, proc in list(w.procs.items()):
                proc.send_signal(signal.SIGCONT)
            w.stop_all()
    # Thawed, a learns it lost the partition (revoked: its batch is dropped) or tries to commit
    # its batch (refused as already committed, or fenced), whichever comes first.
    log = "".join((data / f).read_text() for f in os.listdir(data) if f.startswith("worker-a-"))
    assert ("batch was already committed" in log or "fenced: another worker" in log
            or "partitions revoked" in log), "the frozen worker never learnt it lost the partition"


def test_partitions_of_a_dead_member_are_read_again(tmp_path, brokers):
    """Of two workers, one is SIGKILLed and nobody joins after: once its session ends, its
    partitions must reach the live worker, and every record lands once."""
    from kafka import KafkaProducer

    data = tmp_path
    run, tenant, topic = tenant_with_topic(data, brokers, "d", 6)
    workers = Workers(data, brokers, f"g-{run}", rf"^tenant-({tenant})\.events$",
                      "--set", "ingest.flush_interval_ms=200", "--set", "kafka.stall_rejoin_ms=8000")
    p = KafkaProducer(bootstrap_servers=brokers, **SECURITY, acks="all")
    sent = 0

    def send(n):
        nonlocal sent
        for _ in range(n):
            e = event(tenant, sent)
            p.send(topic, key=str(sent).encode(), value=json.dumps(e).encode())
            sent += 1
        p.flush()

    def rows():
        return table_rows(data, tenant, "events", ("event_id",)).num_rows

    def wait_rows(n, secs):
        deadline = time.monotonic() + secs
        while time.monotonic() < deadline and rows() < n:
            workers.check_alive()
            time.sleep(0.5)
        return rows()

    workers.start("a")
    try:
        send(300)
        assert wait_rows(300, 90) == 300
        workers.start("b")
        send(300)
        assert wait_rows(600, 90) == 600
        time.sleep(5)  # the group settles with both
        workers.kill("b")
        send(600)
        got = wait_rows(1200, 120)
        assert got == 1200, f"{1200 - got} records were never read: partitions left to the dead member"
        ids = table_rows(data, tenant, "events", ("event_id",)).column("event_id").to_pylist()
        assert len(ids) == len(set(ids)) == 1200
    finally:
        p.close()
        workers.stop_all()


def test_the_broker_is_reached_over_tls_with_scram_only(tmp_path, brokers):
    """The test stack's broker takes SASL_SSL with SCRAM-SHA-256 and nothing else, as a
    production cluster would: a client speaking plain Kafka gets no answer; a worker that does
    not trust the broker's CA, or has a wrong password, reads nothing and says why in its log;
    with the stack's settings (FLOE_KAFKA_PROPERTIES_*) the same worker reads the record."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError
    from cryptography.hazmat.primitives import serialization
    from test_tls import make_ca

    assert SECURITY.get("security_protocol") == "SASL_SSL" and SECURITY.get("sasl_mechanism"), \
        "the stack's broker is not configured for SASL_SSL: run eval \"$(infra/services.sh up)\" first"
    with pytest.raises(KafkaError):
        KafkaProducer(bootstrap_servers=brokers, request_timeout_ms=3000, max_block_ms=3000)

    data = tmp_path
    run, tenant, topic = tenant_with_topic(data, brokers, "s", 1)
    p = KafkaProducer(bootstrap_servers=brokers, **SECURITY, acks="all")
    p.send(topic, value=json.dumps(event(tenant, 0)).encode()).get(timeout=30)
    p.close()

    _, other_ca = make_ca()
    other = data / "other-ca.pem"
    other.write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))
    pattern = rf"^tenant-({tenant})\.events$"
    for name, setting, reason in [
        ("untrusted", f"kafka.properties.ssl.ca.location={other}", "certificate verify failed"),
        ("wrong-password", "kafka.properties.sasl.password=not-the-password", "SASL SCRAM authentication failed"),
    ]:
        workers = Workers(data, brokers, f"g-{run}", pattern, "--set", setting)
        workers.start(name)
        log = next(data.glob(f"worker-{name}-*.log"))
        deadline = time.monotonic() + 30
        while reason not in log.read_text() and time.monotonic() < deadline:
            workers.check_alive()
            time.sleep(0.2)
        workers.stop_all()
        assert reason in log.read_text(), f"{name}: the worker's log does not say {reason!r}"
    assert table_rows(data, tenant, "events", ("event_id",)).num_rows == 0

    workers = Workers(data, brokers, f"g-{run}", pattern, "--set", "ingest.flush_interval_ms=200")
    workers.start("trusted")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers.check_alive()
            if table_rows(data, tenant, "events", ("event_id",)).num_rows == 1:
                break
            time.sleep(0.5)
        assert table_rows(data, tenant, "events", ("event_id",)).column("event_id").to_pylist() == [f"{tenant}-0"]
    finally:
        workers.stop_all()


def test_a_tenant_over_its_quota_is_paused_not_dropped(tmp_path, brokers):
    """A tenant whose producers write past its ingest quota straight to Kafka has its topic
    paused: its rows arrive at about the quota's rate (the lag grows meanwhile), another
    tenant's arrive at once, and in the end every record of both is stored exactly once."""
    from kafka import KafkaProducer

    data = tmp_path
    run = uuid.uuid4().hex[:6]
    slow, quick = f"qs{run}", f"qq{run}"
    for t in (slow, quick):
        floe(data, "tenant", "create", t)
    create_topics(brokers, [f"tenant-{t}.events" for t in (slow, quick)], partitions=2)
    floe(data, "tenant", "set", slow, "--quota", "ingest_events_per_sec=200")
    workers = Workers(data, brokers, f"g-{run}", rf"^tenant-({slow}|{quick})\.events$",
                      "--set", "ingest.flush_interval_ms=200", "--set", "quota.burst_secs=1")
    p = KafkaProducer(bootstrap_servers=brokers, **SECURITY, acks="all")
    try:
        for t in (slow, quick):
            for i in range(2000):
                p.send(f"tenant-{t}.events", value=json.dumps(event(t, i)).encode())
        p.flush()
        started = time.monotonic()
        workers.start("a")

        def rows(t):
            try:
                return table_rows(data, t, "events", ("event_id",)).num_rows
            except Exception:
                return 0

        deadline = started + 90
        while rows(quick) < 2000:
            assert time.monotonic() < deadline, f"the other tenant was held up: {rows(quick)} rows"
            time.sleep(0.3)
        # 200/s with a 1 s burst: far from 2,000 within a few seconds of the start.
        early = rows(slow)
        elapsed = time.monotonic() - started
        assert early < 200 * (elapsed + 1) + 1000, (early, elapsed)
        assert early < 2000, f"the quota did not hold the tenant back: {early} rows after {elapsed:.1f} s"
        while rows(slow) < 2000:
            assert time.monotonic() < deadline, f"the paused tenant never caught up: {rows(slow)} rows"
            time.sleep(0.5)
        time.sleep(1)
        for t in (slow, quick):
            ids = table_rows(data, t, "events", ("event_id",)).column("event_id").to_pylist()
            assert len(ids) == len(set(ids)) == 2000, t
        workers.check_alive()
        log = "".join((data / f).read_text() for f in os.listdir(data) if f.startswith("worker-a-"))
        assert "over its ingest quota" in log
    finally:
        p.close()
        workers.stop_all()


def test_a_record_that_fails_its_schema_is_dead_lettered_with_the_pointer(tmp_path, brokers):
    """A tenant's registered schema holds for Kafka ingest as for HTTP: the failing record goes to
    events_dlq with reason schema_violation and the pointer and rule in its detail; the valid
    records of the same partition are stored."""
    from kafka import KafkaProducer

    data = tmp_path
    run = uuid.uuid4().hex[:6]
    tenant = f"s{run}"
    group = f"g-{run}"
    kafka = ["--set", f"kafka.brokers={brokers}", "--set", f"kafka.group={group}",
             "--set", "ingest.flush_interval_ms=100"]
    floe(data, *kafka, "tenant", "create", tenant)
    schema = {"type": "object", "properties": {"amount": {"type": "number", "minimum": 0}}, "required": ["amount"]}
    (data / "purchase.json").write_text(json.dumps(schema))
    floe(data, "schema", "register", "--tenant", tenant, "--type", "PurchaseMade", "--version", "1",
         "--file", str(data / "purchase.json"))
    workers = Workers(data, brokers, group, rf"^tenant-({tenant})\.events$", *kafka)
    workers.start("a")
    try:
        p = KafkaProducer(bootstrap_servers=brokers, **SECURITY, acks="all")
        for i, amount in enumerate([5, -2, 7]):
            record = {"event_id": f"k{i}", "type": "PurchaseMade", "timestamp": 1764000000 + i,
                      "payload": {"amount": amount}}
            p.send(f"tenant-{tenant}.events", key=b"same", value=json.dumps(record).encode())
        p.flush()
        p.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if table_rows(data, tenant, "events", ("event_id",)).num_rows == 2 and \
                        table_rows(data, tenant, "events_dlq", ("offset",)).num_rows == 1:
                    break
            except Exception:  # noqa: BLE001 - the tables fill as the worker commits
                pass
            time.sleep(0.5)
        ids = sorted(table_rows(data, tenant, "events", ("event_id",)).column("event_id").to_pylist())
        assert ids == ["k0", "k2"], ids
        dead = table_rows(data, tenant, "events_dlq", ("reason", "detail", "payload")).to_pylist()
        assert len(dead) == 1 and dead[0]["reason"] == "schema_violation", dead
        assert 'pointer "/amount", rule minimum' in dead[0]["detail"], dead
        assert json.loads(dead[0]["payload"])["event_id"] == "k1"
        workers.check_alive()
    finally:
        workers.stop_all()
