"""Tenants' alert rules against a real `floe serve` and a webhook receiver run by the test:
created by the command line and over HTTP, evaluated every second, notified as signed JSON
(firing, then resolved), retried when the receiver fails, refused when the webhook is a private
address (unless allowed), visible at GET /v1/alerts and as `floe_alert_firing`."""

import hashlib
import hmac
import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import floe, free_port, post, request, start, stop
from test_metrics import lint, scrape, value

SECRET = "a-webhook-secret-of-the-test"


class Receiver:
    """A webhook receiver: records each POST (headers, body); answers 500 to the first
    `fail_first` of them, 204 to the others (`accepted`)."""

    def __init__(self, fail_first=0):
        self.received = []
        self.accepted = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.received.append((headers, body))
                failing = len(receiver.received) <= receiver.fail_first
                if not failing:
                    receiver.accepted.append((headers, body))
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def notifications(self, alert):
        """The distinct notifications of `alert` accepted (repeats of a delivery id once)."""
        seen, out = set(), []
        for headers, body in self.accepted:
            doc = json.loads(body)
            if doc["alert"] == alert and headers["x-floe-delivery"] not in seen:
                seen.add(headers["x-floe-delivery"])
                out.append(doc)
        return out

    def wait_for(self, alert, statuses, timeout=30):
        deadline = time.monotonic() + timeout
        while [n["status"] for n in self.notifications(alert)] != statuses:
            assert time.monotonic() < deadline, (statuses, self.notifications(alert))
            time.sleep(0.2)
        return self.notifications(alert)

    def close(self):
        self.server.shutdown()


def alerts(srv, token):
    status, body = request("GET", f"{srv.url}/v1/alerts", token)
    assert status == 200, body
    return {a["name"]: a for a in body["alerts"]}


def events(n, prefix):
    return [{"event_id": f"{prefix}-{i}", "type": "PageViewed", "user_id": f"u{i}",
             "timestamp": int(time.time()), "payload": {"page": "/"}} for i in range(n)]


def test_rules_fire_and_resolve_with_signed_retried_notifications(tmp_path):
    receiver = Receiver(fail_first=2)
    metrics_port = free_port()
    proc, srv = start(tmp_path, "--set", "alerting.interval_secs=1", "--set", "alerting.allow_private_webhooks=true",
                      "--set", "alerting.webhook_backoff_ms=100", "--set", f"metrics.listen=127.0.0.1:{metrics_port}",
                      "--set", "projection.enabled=false")
    try:
        floe(tmp_path, "tenant", "create", "al")
        floe(tmp_path, "alert", "create", "--tenant", "al", "--name", "quiet", "--kind", "no_events",
             "--window", "1m", "--webhook", receiver.url, "--secret", SECRET)
        # Projections are not refreshed in this server: once events arrive, they fall behind.
        floe(tmp_path, "alert", "create", "--tenant", "al", "--name", "behind", "--kind", "lag",
             "--threshold", "1", "--webhook", receiver.url, "--secret", SECRET)

        # No events yet: the rule fires. The receiver fails twice; the third attempt lands,
        # with the same delivery id and a signature of the body by the secret.
        [fired] = receiver.wait_for("quiet", ["firing"])
        attempts = [h for h, b in receiver.received if json.loads(b)["alert"] == "quiet"]
        assert len(attempts) == 3, attempts
        assert len({h["x-floe-delivery"] for h in attempts}) == 1
        for headers, body in receiver.received:
            mac = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            assert headers["x-floe-signature"] == f"sha256={mac}", headers
        assert fired["tenant"] == "al" and fired["kind"] == "no_events" and fired["value"] == 0, fired
        viewer = srv.token("al", "viewer")
        state = alerts(srv, viewer)["quiet"]
        assert state["status"] == "firing" and state["firing"], state
        assert "secret" not in state and SECRET not in json.dumps(state)
        text = scrape(metrics_port)
        lint(text)
        assert value(text, "floe_alert_firing", tenant="al", alert="quiet") == 1

        # Events arrive: the rule resolves, once.
        assert post(srv.url, srv.token("al", "ingest"), events(3, "a"))["accepted"] == 3
        [_, resolved] = receiver.wait_for("quiet", ["firing", "resolved"])
        assert resolved["value"] == 3, resolved
        [behind] = receiver.wait_for("behind", ["firing"])
        assert behind["value"] > 1 and behind["kind"] == "lag", behind
        deadline = time.monotonic() + 10
        while alerts(srv, viewer)["quiet"].get("delivered") != "resolved":
            assert time.monotonic() < deadline, alerts(srv, viewer)
            time.sleep(0.2)
        assert value(scrape(metrics_port), "floe_alert_firing", tenant="al", alert="quiet") == 0
        time.sleep(2)
        assert [n["status"] for n in receiver.notifications("quiet")] == ["firing", "resolved"], "no repeats"

        # Over HTTP: an admin creates rules; a viewer may read them but not create or delete.
        admin = srv.token("al", "admin")
        sql_rule = {"name": "many", "kind": "sql", "threshold": 4, "sql": "SELECT count(*) FROM events",
                    "window": "1m", "webhook": receiver.url, "secret": SECRET}
        status, body = request("POST", f"{srv.url}/v1/alerts", viewer, sql_rule)
        assert status == 403, body
        status, body = request("POST", f"{srv.url}/v1/alerts", admin, sql_rule)
        assert status == 201 and body["kind"] == "sql" and "secret" not in body, body
        status, body = request("POST", f"{srv.url}/v1/alerts", admin, sql_rule)
        assert status == 409, body
        status, body = request("POST", f"{srv.url}/v1/alerts", admin, {**sql_rule, "name": "x", "kind": "nope"})
        assert status == 400 and "unknown alert kind" in body["error"]["message"], body
        rejections = {"name": "bad-input", "kind": "rejections", "threshold": 20, "window": "1m",
                      "webhook": receiver.url, "secret": SECRET}
        assert request("POST", f"{srv.url}/v1/alerts", admin, rejections)[0] == 201

        # 3 events: the query gives 3, under its threshold of 4; 2 more make it fire.
        time.sleep(2)
        assert receiver.notifications("many") == []
        assert alerts(srv, viewer)["many"]["value"] == 3
        assert post(srv.url, srv.token("al", "ingest"), events(2, "b"))["accepted"] == 2
        [many] = receiver.wait_for("many", ["firing"])
        assert many["value"] == 5 and many["threshold"] == 4, many

        # Rejected events, counted across the window: 3 bad of 8 sent is over 20 %.
        bad = [{"event_id": f"bad-{i}", "user_id": "u", "timestamp": int(time.time())} for i in range(3)]
        req = urllib.request.Request(f"{srv.url}/v1/events", data=json.dumps(bad).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {srv.token('al', 'ingest')}",
                                              "Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=30)
        except urllib.error.HTTPError as e:
            assert e.code == 400
        [rejected] = receiver.wait_for("bad-input", ["firing"])
        assert 30 < rejected["value"] < 40, rejected

        # Deleting: 204, then 404; gone from the list and the command line's.
        assert request("DELETE", f"{srv.url}/v1/alerts/many", viewer)[0] == 403
        assert request("DELETE", f"{srv.url}/v1/alerts/many", admin)[0] == 204
        assert request("DELETE", f"{srv.url}/v1/alerts/many", admin)[0] == 404
        listed = [json.loads(l) for l in floe(tmp_path, "alert", "list", "--tenant", "al").splitlines()]
        assert sorted(a["name"] for a in listed) == ["bad-input", "behind", "quiet"], listed
        # Another tenant sees none of them.
        floe(tmp_path, "tenant", "create", "other")
        assert alerts(srv, srv.token("other", "viewer")) == {}
        assert request("DELETE", f"{srv.url}/v1/alerts/quiet", srv.token("other", "admin"))[0] == 404
    finally:
        stop(proc)
        receiver.close()


def test_a_webhook_on_a_private_address_is_refused_unless_allowed(tmp_path):
    receiver = Receiver()
    proc, srv = start(tmp_path, "--set", "alerting.interval_secs=1", "--set", "alerting.webhook_attempts=1")
    try:
        floe(tmp_path, "tenant", "create", "pr")
        floe(tmp_path, "alert", "create", "--tenant", "pr", "--name", "quiet", "--kind", "no_events",
             "--window", "1m", "--webhook", receiver.url, "--secret", SECRET)
        viewer = srv.token("pr", "viewer")
        deadline = time.monotonic() + 20
        while not alerts(srv, viewer)["quiet"].get("delivery_error"):
            assert time.monotonic() < deadline, alerts(srv, viewer)
            time.sleep(0.2)
        state = alerts(srv, viewer)["quiet"]
        assert state["status"] == "firing", state
        assert "private address" in state["delivery_error"], state
        assert receiver.received == [], "nothing reached the loopback receiver"
    finally:
        stop(proc)
        receiver.close()
