"""Request ids and JSON logs of `floe serve`: `X-Request-Id` taken from the client (when usable)
or made, returned on every reply, written in error bodies and carried by the log lines of the
request's handling."""

import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request

from conftest import FLOE, floe, free_port, process_env


def serve(data, *extra):
    port = free_port()
    log = open(data / "serve.log", "w")
    proc = subprocess.Popen([FLOE, "--data-dir", str(data), *extra, "serve", "--listen", f"127.0.0.1:{port}"],
                            stderr=log, env=process_env(data))
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=1)
            return proc, url
        except Exception:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"floe serve did not start; see {data / 'serve.log'}")


def call(url, headers=None, body=None, method="GET"):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_request_ids_on_replies_error_bodies_and_json_logs(tmp_path):
    proc, url = serve(tmp_path, "--log-format", "json")
    try:
        floe(tmp_path, "tenant", "create", "rid")
        token = floe(tmp_path, "token", "issue", "--tenant", "rid", "--role", "ingest").strip()
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

        # Made here when the client sends none: on a success and on a refusal.
        status, headers, _ = call(f"{url}/healthz")
        assert status == 200 and re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-Id"]), headers
        status, headers, body = call(f"{url}/v1/events", {"Content-Type": "application/json"}, b"[]", "POST")
        assert status == 401, body
        made = headers["X-Request-Id"]
        assert json.loads(body)["error"]["request_id"] == made

        # The client's own id is kept, and is in the error body.
        status, headers, body = call(f"{url}/v1/events", {**auth, "X-Request-Id": "client-42.a:b"},
                                     b"this is not JSON", "POST")
        assert status == 400 and headers["X-Request-Id"] == "client-42.a:b", (status, body)
        assert json.loads(body)["error"]["request_id"] == "client-42.a:b"

        # An id that is not plain text is replaced, never echoed.
        status, headers, _ = call(f"{url}/healthz", {"X-Request-Id": "bad id\u00e9".encode().decode("latin-1")})
        assert headers["X-Request-Id"] != "bad idé" and re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-Id"])

        # Trino replies carry one too.
        analyst = floe(tmp_path, "token", "issue", "--tenant", "rid", "--role", "analyst").strip()
        status, headers, _ = call(f"{url}/v1/statement", {"Authorization": f"Bearer {analyst}"},
                                  b"SELECT 1", "POST")
        assert status == 200 and headers["X-Request-Id"], headers
        trino_id = headers["X-Request-Id"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0

    # Every log line is a JSON object; the lines logged while handling a request name its id.
    lines = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines() if line.strip()]
    assert lines and all("timestamp" in l and "level" in l for l in lines), lines[:3]
    in_requests = [l for l in lines if any(s.get("name") == "request" for s in l.get("spans", []))]
    ids = {s["request_id"] for l in in_requests for s in l["spans"] if s.get("name") == "request"}
    # ("query started" is logged while the submission is handled.)
    assert trino_id in ids, in_requests[:5]


# ---------------------------------------------------------------- OTLP traces

def varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def fields(buf):
    """The (field number, value) pairs of a protobuf message: ints for varints and fixed
    widths, bytes for length-delimited values (strings and sub-messages alike)."""
    out, i = [], 0
    while i < len(buf):
        key, i = varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = varint(buf, i)
        elif wire == 1:
            v, i = int.from_bytes(buf[i:i + 8], "little"), i + 8
        elif wire == 5:
            v, i = int.from_bytes(buf[i:i + 4], "little"), i + 4
        elif wire == 2:
            n, i = varint(buf, i)
            v, i = bytes(buf[i:i + n]), i + n
        else:
            raise ValueError(f"wire type {wire}")
        out.append((num, v))
    return out


def spans_of(request):
    """The spans of an OTLP ExportTraceServiceRequest: dicts of name, ids, parent, string
    attributes and links (trace id, span id)."""
    spans = []
    for num, resource_spans in fields(request):
        if num != 1:
            continue
        for num, scope_spans in fields(resource_spans):
            if num != 2:
                continue
            for num, span in fields(scope_spans):
                if num != 2:
                    continue
                s = {"attributes": {}, "links": [], "parent": b""}
                for n, v in fields(span):
                    if n == 1:
                        s["trace_id"] = v
                    elif n == 2:
                        s["span_id"] = v
                    elif n == 4:
                        s["parent"] = v
                    elif n == 5:
                        s["name"] = v.decode()
                    elif n == 9:
                        kv = dict(fields(v))
                        any_value = dict(fields(kv.get(2, b"")))
                        if 1 in any_value:
                            s["attributes"][kv[1].decode()] = any_value[1].decode()
                        elif 3 in any_value:
                            s["attributes"][kv[1].decode()] = any_value[3]
                    elif n == 13:
                        link = dict(fields(v))
                        s["links"].append((link.get(1), link.get(2)))
                spans.append(s)
    return spans


def test_spans_reach_an_otlp_collector_from_request_to_commit(tmp_path):
    """With --otlp-endpoint, an ingest request's spans (the request, its parse and log append)
    and the commit that made its events visible (linked to the append) reach a collector, with
    the tenant and the request id; a query's spans likewise."""
    import http.server
    import threading

    received = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers.get("Content-Type"), body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    proc, url = serve(tmp_path, "--otlp-endpoint", endpoint)
    try:
        floe(tmp_path, "tenant", "create", "traced")
        token = floe(tmp_path, "token", "issue", "--tenant", "traced", "--role", "ingest").strip()
        body = json.dumps([{"event_id": f"t-{i}", "type": "PageViewed", "user_id": "u",
                            "timestamp": 1_700_000_000, "payload": {"page": "/"}} for i in range(5)]).encode()
        status, headers, reply = call(f"{url}/v1/events?wait=visible",
                                      {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                                       "X-Request-Id": "trace-me-1"}, body, "POST")
        assert status == 200, reply
        analyst = floe(tmp_path, "token", "issue", "--tenant", "traced", "--role", "analyst").strip()
        status, headers, page = call(f"{url}/v1/statement",
                                     {"Authorization": f"Bearer {analyst}", "X-Request-Id": "query-me-1"},
                                     b"SELECT count(*) FROM events", "POST")
        assert status == 200
        page = json.loads(page)
        while page.get("nextUri"):
            status, _, raw = call(page["nextUri"], {"Authorization": f"Bearer {analyst}"})
            page = json.loads(raw)
        assert page.get("data") == [[5]], page
    finally:
        # The last spans are sent on the way out.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        collector.shutdown()

    assert received, "the collector received nothing"
    assert all(path == "/v1/traces" and ctype == "application/x-protobuf" for path, ctype, _ in received), \
        [(p, c) for p, c, _ in received]
    spans = [s for _, _, body in received for s in spans_of(body)]
    by_id = {s["span_id"]: s for s in spans}
    names = {s["name"] for s in spans}

    ingest = [s for s in spans if s["attributes"].get("request_id") == "trace-me-1"]
    assert len(ingest) == 1, [s["name"] for s in spans]
    ingest = ingest[0]
    assert ingest["name"] == "POST /v1/events" and ingest["attributes"].get("tenant") == "traced", ingest
    children = {s["name"]: s for s in spans if s["parent"] == ingest["span_id"]}
    assert {"parse", "wal append"} <= set(children), (names, children.keys())
    append = children["wal append"]
    assert append["trace_id"] == ingest["trace_id"]
    commits = [s for s in spans if s["name"] == "commit"
               and (append["trace_id"], append["span_id"]) in s["links"]]
    assert len(commits) == 1, [s for s in spans if s["name"] == "commit"]
    assert commits[0]["attributes"].get("tenant") == "traced"

    submitted = [s for s in spans if s["attributes"].get("request_id") == "query-me-1"]
    assert len(submitted) == 1 and submitted[0]["name"] == "POST /v1/statement", submitted
    query = [s for s in spans if s["name"] == "query" and s["parent"] == submitted[0]["span_id"]]
    assert len(query) == 1 and query[0]["attributes"].get("tenant") == "traced", query
    assert {"plan", "execute"} <= {s["name"] for s in spans if s["parent"] == query[0]["span_id"]}
    assert all(s["parent"] == b"" or s["parent"] in by_id for s in spans), "a span's parent was never sent"
