"""Table maintenance checked from outside Floe: the warehouse is listed with pyarrow's file
systems (a local folder, or the S3 API), what the live snapshots reach is read with pyiceberg,
and erased users are searched for in every object with pyarrow and pyiceberg's readers."""

import json
import os
import re
import time

import pyarrow.parquet as pq
import pytest
from conftest import STACK, erase, floe, iceberg_catalog, post, request, s3_filesystem, stack_env, start, stop

DAY = 86400


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    proc, server = start(tmp_path_factory.mktemp("maint"), "--set", "ingest.flush_interval_ms=50")
    yield server
    stop(proc)


def warehouse_fs(data):
    """(pyarrow file system, warehouse path in it)."""
    from pyarrow import fs

    if STACK == "local":
        return fs.LocalFileSystem(), f"{data}/warehouse"
    s3 = s3_filesystem()
    return s3, stack_env(data)["FLOE_WAREHOUSE"].removeprefix("s3://").rstrip("/")


def listing(data, tenant):
    """Every object under the tenant's prefix: {path: size}."""
    from pyarrow import fs

    filesystem, base = warehouse_fs(data)
    infos = filesystem.get_file_info(fs.FileSelector(f"{base}/{tenant}", recursive=True, allow_not_found=True))
    return {i.path: i.size for i in infos if i.type == fs.FileType.File}


def plain(location):
    return location.removeprefix("file://").removeprefix("s3://").removeprefix("s3a://")


def reachable(data, tenant):
    """Objects the table's snapshots and metadata log reach, per pyiceberg."""
    table = iceberg_catalog(data).load_table(f"{tenant}.events")
    out = {plain(table.metadata_location)}
    out |= {plain(m.metadata_file) for m in table.metadata.metadata_log}
    for snap in table.metadata.snapshots:
        out.add(plain(snap.manifest_list))
        for m in snap.manifests(table.io):
            out.add(plain(m.manifest_path))
            for e in m.fetch_manifest_entry(table.io, discard_deleted=True):
                out.add(plain(e.data_file.file_path))
    return table, out


def events(prefix, n, now, users=10, days=3):
    return [
        {
            "event_id": f"{prefix}-{i}",
            "type": ["PageViewed", "PurchaseMade"][i % 2],
            "timestamp": now - (i % days) * DAY - i,
            "user_id": f"u-{i % users}",
            "payload": {"page": f"/p/{i % 4}", "amount": i},
        }
        for i in range(n)
    ]


AGGRESSIVE = ["--set", "compaction.snapshot_max_age_secs=0", "--set", "compaction.min_snapshots=1",
              "--set", "compaction.orphan_min_age_secs=0"]


def test_expiry_and_garbage_collection_leave_only_what_live_snapshots_reach(srv):
    floe(srv.data, "tenant", "create", "gc")
    token = srv.token("gc", "ingest")
    now = int(time.time())
    all_events = events("gc", 1200, now)
    for k in range(0, 1200, 40):  # 30 commits
        assert post(srv.url, token, all_events[k:k + 40])["accepted"] == 40
    # An object no snapshot reaches: orphan cleanup must take it.
    filesystem, base = warehouse_fs(srv.data)
    orphan = f"{base}/gc/events/data/ts_day=2026-01-01/not-referenced.parquet"
    filesystem.create_dir(orphan.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(orphan) as f:
        f.write(b"junk")
    before = iceberg_catalog(srv.data).load_table("gc.events").scan().to_arrow()
    assert len(before) == 1200
    # The events table's folder (the projections beside it keep committing as they refresh).
    listed_before = listing(srv.data, "gc/events")

    out = floe(srv.data, *AGGRESSIVE, "compact", "--tenant", "gc")
    # 30 appends and a replace per compacted partition: all but the last expire.
    expired = re.search(r"gc\.events: expired (\d+) snapshots \(kept 1\)", out)
    assert expired and int(expired.group(1)) >= 30, out

    table, reached = reachable(srv.data, "gc")
    listed = listing(srv.data, "gc/events")
    assert len(table.metadata.snapshots) == 1
    assert orphan not in listed
    # Nothing in storage that the live snapshot (and the metadata log) does not reach …
    assert set(listed) - reached == set(), out
    # … and everything the live snapshot reaches is there (old metadata files aside).
    live = {p for p in reached if not p.endswith(".metadata.json")}
    assert live <= set(listed)
    assert len(listed) < len(listed_before) / 2, (len(listed), len(listed_before))
    after = table.scan().to_arrow()
    assert sorted(after.column("event_id").to_pylist()) == sorted(before.column("event_id").to_pylist())
    assert len(after) == 1200


def test_retention_drops_old_days_and_their_bytes(srv):
    floe(srv.data, "tenant", "create", "ret")
    token = srv.token("ret", "ingest")
    now = int(time.time())
    recent = events("new", 200, now, days=2)
    old = [dict(e, event_id=f"old-{i}", timestamp=now - 40 * DAY - i) for i, e in enumerate(events("x", 100, now))]
    assert post(srv.url, token, recent + old)["accepted"] == 300
    old_day = time.strftime("%Y-%m-%d", time.gmtime(now - 40 * DAY))
    assert any(f"ts_day={old_day}" in p for p in listing(srv.data, "ret"))

    floe(srv.data, "tenant", "set", "ret", "--retention-days", "30")
    out = floe(srv.data, *AGGRESSIVE, "compact", "--tenant", "ret")
    assert "retention 30 days: dropped" in out, out
    rows = iceberg_catalog(srv.data).load_table("ret.events").scan().to_arrow()
    assert sorted(rows.column("event_id").to_pylist()) == sorted(e["event_id"] for e in recent)
    assert not any(f"ts_day={old_day}" in p for p in listing(srv.data, "ret"))
    assert "retention_days=30" in floe(srv.data, "tenant", "list")

    # Both deletions are in the tenant's audit log, as pyiceberg reads it: the dropped days
    # (with the `delete` snapshot) and the expiry that removed their bytes.
    floe(srv.data, "audit", "publish")
    records = iceberg_catalog(srv.data).load_table("ret.audit").scan().to_arrow().to_pylist()
    details = {r["action"]: (r["actor"], json.loads(r["detail"])) for r in records}
    actor, dropped = details["retention.delete"]
    assert actor == "compactor" and dropped["table"] == "events" and dropped["days"] == 30, dropped
    assert dropped["rows"] == 100 and dropped["files"] >= 1 and dropped["bytes"] > 0, dropped
    actor, expired = details["maintenance.expire"]
    assert actor == "compactor" and expired["data_bytes"] > 0, expired


def holds_user(filesystem, io, path, user):
    """Whether one object holds `user` in any string we can decode: stricter than Floe's own
    verification (which compares only `user_id` and the declared fields), as a cross-check."""
    quoted = json.dumps(user)
    with filesystem.open_input_file(path) as f:
        raw = f.read()
    if path.endswith(".parquet"):
        import io

        table = pq.read_table(io.BytesIO(raw))
        for column in table.column_names:
            for v in table.column(column).to_pylist():
                if isinstance(v, str) and (v == user or quoted in v):
                    return True
        return False
    if path.endswith(".avro") and not path.rsplit("/", 1)[-1].startswith("snap-"):
        from pyiceberg.manifest import ManifestContent, ManifestFile

        location = path if STACK == "local" else f"s3://{path}"
        manifest = ManifestFile.from_args(manifest_path=location, manifest_length=len(raw), partition_spec_id=0,
                                          content=ManifestContent.DATA, added_snapshot_id=0)
        for e in manifest.fetch_manifest_entry(io, discard_deleted=False):
            for bounds in (e.data_file.lower_bounds or {}, e.data_file.upper_bounds or {}):
                if any(b == user.encode() or quoted.encode() in b for b in bounds.values()):
                    return True
        return False
    return quoted.encode() in raw


def test_user_erasure_leaves_no_trace_in_any_object(srv):
    floe(srv.data, "tenant", "create", "gdpr")
    # Another user's event that names u-7 in a declared field is u-7's data too.
    floe(srv.data, "tenant", "set", "gdpr", "--user-fields", "payload.friend")
    ingest, admin = srv.token("gdpr", "ingest"), srv.token("gdpr", "admin")
    now = int(time.time())
    evs = events("g", 600, now)
    evs[1]["payload"]["friend"] = "u-7"
    for k in range(0, 600, 100):
        post(srv.url, ingest, evs[k:k + 100])
    keep = [e["event_id"] for e in evs if e["user_id"] != "u-7" and e["payload"].get("friend") != "u-7"]

    assert request("POST", f"{srv.url}/v1/erasures", ingest, {"user_ids": ["u-7"]})[0] == 403
    floe(srv.data, "tenant", "create", "other")
    state = erase(srv, admin, ["u-7"])
    assert request("GET", f"{srv.url}/v1/erasures/{state['id']}", srv.token("other", "admin"))[0] == 404
    assert "user_ids" not in state and state["users"] == 1
    assert state["fields"] == ["user_id", "payload.friend"], state
    assert state["rows_removed"] == 600 - len(keep), state
    assert state["files_rewritten"] >= 1, state

    table = iceberg_catalog(srv.data).load_table("gdpr.events")
    rows = table.scan().to_arrow()
    assert sorted(rows.column("event_id").to_pylist()) == sorted(keep)
    filesystem, _ = warehouse_fs(srv.data)
    listed = listing(srv.data, "gdpr")
    assert listed
    holding = [p for p in listed if holds_user(filesystem, table.io, p, "u-7")]
    assert holding == []
    # The check itself finds users that are there.
    assert any(holds_user(filesystem, table.io, p, "u-6") for p in listed if p.endswith(".parquet"))


def test_erasure_touches_only_the_named_users_rows_and_completes_for_any_id(srv):
    """An id equal to an event type, a page or an order id erases nothing of those; a short id
    such as "1" completes (it occurs in snapshot summaries, which hold no user data)."""
    floe(srv.data, "tenant", "create", "exact")
    floe(srv.data, "tenant", "set", "exact", "--user-fields", "payload.customer_id")
    assert "user_fields=payload.customer_id" in floe(srv.data, "tenant", "list")
    ingest, admin = srv.token("exact", "ingest"), srv.token("exact", "admin")
    now = int(time.time())
    evs = []
    for i in range(400):
        payload = {"page": str(i % 4), "order_id": str(i % 7)}
        if i % 50 == 3:
            payload["customer_id"] = "1"  # another user's event about customer "1"
        if i % 50 == 4:
            payload["customer_id"] = 1  # the same, as a JSON number
        evs.append({"event_id": f"x-{i}", "type": ["PageViewed", "PurchaseMade"][i % 2],
                    "timestamp": now - (i % 3) * DAY - i, "user_id": str(i % 10), "payload": payload})
    for k in range(0, 400, 100):
        post(srv.url, ingest, evs[k:k + 100])
    table = iceberg_catalog(srv.data).load_table("exact.events")
    assert len(table.scan().to_arrow()) == 400

    # "PageViewed" is a type, not a user: nothing changes.
    state = erase(srv, admin, ["PageViewed"])
    assert state["fields"] == ["user_id", "payload.customer_id"], state
    assert state["rows_removed"] == 0 and state["files_rewritten"] == 0, state
    table = iceberg_catalog(srv.data).load_table("exact.events")
    assert len(table.scan().to_arrow()) == 400

    # "1": the user's rows and the rows naming it as customer go; page "1" and order "1" stay.
    gone = {e["event_id"] for e in evs if e["user_id"] == "1" or str(e["payload"].get("customer_id")) == "1"}
    state = erase(srv, admin, ["1"], timeout=90)
    assert state["rows_removed"] == len(gone), state
    table = iceberg_catalog(srv.data).load_table("exact.events")
    rows = table.scan().to_arrow().to_pylist()
    assert sorted(r["event_id"] for r in rows) == sorted(e["event_id"] for e in evs if e["event_id"] not in gone)
    assert any(json.loads(r["payload"])["page"] == "1" for r in rows)
    assert any(json.loads(r["payload"])["order_id"] == "1" for r in rows)
    assert not any(r["user_id"] == "1" for r in rows)


def test_tenant_purge_removes_every_object_and_its_tokens_stop_at_once(srv):
    floe(srv.data, "tenant", "create", "gone")
    token = srv.token("gone", "ingest")
    post(srv.url, token, events("z", 100, int(time.time())))
    assert listing(srv.data, "gone")
    out = floe(srv.data, "tenant", "delete", "gone", "--purge")
    assert "objects purged" in out
    assert listing(srv.data, "gone") == {}
    assert request("POST", f"{srv.url}/v1/events", token, [])[0] == 401
    assert ("gone",) not in iceberg_catalog(srv.data).list_namespaces()
    # The id can be used again; the old tokens do not reach the new tenant.
    floe(srv.data, "tenant", "create", "gone")
    assert request("POST", f"{srv.url}/v1/events", token, [])[0] == 401
