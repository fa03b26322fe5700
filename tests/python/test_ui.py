"""The dashboard at /ui/ in a real browser: headless Chromium (Debian's `chromium`) driven by
Playwright from PyPI, against a `floe serve` of its own with two tenants and known events.

Checked: signing in with the form and with `#token=` (which leaves the address bar); the live
events-per-minute figures, the daily active users, the revenue and the top pages equal what was
ingested; an analyst's query in the SQL editor, its chart and its infoUri page; a viewer of the
other tenant sees only its own figures, has no SQL editor and cannot read `events`; the
operator page lists both tenants. No request carries the token in its URL, every API request
carries it in its Authorization header, and no page breaks the server's Content-Security-Policy.
Screenshots of every page go to $FLOE_ARTIFACTS_DIR (default tests/python/artifacts/), named
after the stack and the page; their paths are printed."""

import os
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

expect.set_options(timeout=15_000)

from conftest import STACK, floe, post, request, start, statement, stop

CHROMIUM = os.environ.get("FLOE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("FLOE_ARTIFACTS_DIR") or Path(__file__).parent / "artifacts")
A, B = "ui-acme", "ui-bravo"
DAY = 86400


def events_of_a(now):
    """Today: ten page views by four users, three purchases, two readings without a user; and
    one page view three days back (arriving now, so it counts in the live chart too)."""
    views = [("/home", "u1"), ("/home", "u2"), ("/home", "u3"), ("/home", "u1"), ("/home", "u2"),
             ("/pricing", "u1"), ("/pricing", "u3"), ("/pricing", "u4"), ("/docs", "u2"), ("/docs", "u2")]
    evs = [{"type": "PageViewed", "timestamp": now, "user_id": u, "payload": {"page": p}} for p, u in views]
    evs += [{"type": "PurchaseMade", "timestamp": now, "user_id": u, "payload": {"amount": a, "currency": c}}
            for u, a, c in [("u1", 10.5, "EUR"), ("u3", "4.25", "EUR"), ("u4", 20, "USD")]]
    evs += [{"type": "SensorReading", "timestamp": now, "payload": {"value": v}} for v in (1, 2)]
    evs.append({"type": "PageViewed", "timestamp": now - 3 * DAY, "user_id": "u9", "payload": {"page": "/old"}})
    return [{"event_id": f"a-{i}", **e} for i, e in enumerate(evs)]


def events_of_b(now):
    evs = [{"type": "PageViewed", "timestamp": now, "user_id": u, "payload": {"page": "/b-only"}}
           for u in ("v1", "v2", "v1", "v2")]
    evs.append({"type": "PurchaseMade", "timestamp": now, "user_id": "v1", "payload": {"amount": 7, "currency": "GBP"}})
    return [{"event_id": f"b-{i}", **e} for i, e in enumerate(evs)]


def caught_up(srv, tenant, timeout=30):
    """Waits until every projection of `tenant` reflects all its events."""
    deadline = time.time() + timeout
    while True:
        status, body = request("GET", f"{srv.url}/v1/projections", srv.token(tenant, "viewer"))
        assert status == 200, body
        if body["projections"] and all(p["lag_events"] == 0 for p in body["projections"]):
            return
        assert time.time() < deadline, body
        time.sleep(0.1)


@pytest.fixture(scope="module")
def world(tmp_path_factory, request):
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: infra/test.sh installs Debian's chromium"
    data = tmp_path_factory.mktemp("ui")
    proc, srv = start(data)
    shots = []
    try:
        for t in (A, B):
            floe(data, "tenant", "create", t)
        now = int(time.time())
        post(srv.url, srv.token(A, "ingest"), events_of_a(now))
        post(srv.url, srv.token(B, "ingest"), events_of_b(now))
        for t in (A, B):
            caught_up(srv, t)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                yield {"srv": srv, "browser": browser, "shots": shots, "data": data}
            finally:
                browser.close()
    finally:
        stop(proc)
        # Printed past pytest's capture, so that they show on a passing run too.
        with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
            for s in shots:
                print(f"\nscreenshot: {s}", end="")
            print()


class Tab:
    """A browser context of its own (its own session storage), recording every request."""

    def __init__(self, world, *tokens):
        self.srv = world["srv"]
        self.world = world
        self.tokens = tokens
        self.ctx = world["browser"].new_context(viewport={"width": 1280, "height": 900})
        self.page = self.ctx.new_page()
        self.page.set_default_timeout(15_000)
        self.requests = []
        self.problems = []
        self.page.on("request", lambda r: self.requests.append(r))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("console", self._console)

    def _console(self, msg):
        if msg.type == "error" and "Content Security Policy" in msg.text:
            self.problems.append(f"CSP violation: {msg.text}")

    def goto(self, path):
        return self.page.goto(self.srv.url + path)

    def shot(self, name):
        # No value the page failed to render.
        bad = {"null", "undefined", "NaN", "[object"}
        lines = [line for line in self.page.inner_text("body").splitlines() if bad & set(line.split())]
        assert not lines, (name, lines)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{STACK}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.world["shots"].append(path)

    def close(self):
        try:
            assert not self.problems, self.problems
            assert self.requests, "no request recorded"
            for r in self.requests:
                for token in self.tokens:
                    assert token not in r.url, f"a token in the URL of {r.method} {r.url[:80]}…"
                if "/v1/" in r.url:
                    auth = r.headers.get("authorization", "")
                    assert auth in {f"Bearer {t}" for t in self.tokens}, (r.method, r.url, "no Authorization header")
        finally:
            self.ctx.close()


def rows(page, selector, *attrs):
    """The data-* attributes `attrs` of each element matching `selector`."""
    return page.eval_on_selector_all(selector, "(els, attrs) => els.map(e => attrs.map(a => e.dataset[a]))", list(attrs))


def figures(page):
    """Every figure of the tenant dashboard, read from the page."""
    for selector in ("#activity-totals tr[data-type]", "#top-pages tr[data-page], [data-testid=top-pages-empty]",
                     "#users-table", "#revenue-totals", "#fresh-projections tr[data-name]"):
        page.wait_for_selector(selector, state="attached")
    return {
        "activity": {t: int(n) for t, n in rows(page, "#activity-totals tbody tr", "type", "total") if t},
        "pages": {p: (int(v), int(u)) for p, v, u in rows(page, "#top-pages tbody tr", "page", "views", "visitors")},
        "users": page.eval_on_selector_all(
            "#users-table tbody tr",
            "els => els.map(e => [e.dataset.day, ...[...e.querySelectorAll('td')].map(td => +td.dataset.value)])"),
        "revenue": {c: (r, int(o)) for c, r, o in rows(page, "#revenue-totals tbody tr", "currency", "revenue", "orders")},
        "projections": {n: int(v) for n, v in page.eval_on_selector_all(
            "#fresh-projections tbody tr", "els => els.map(e => [e.dataset.name, e.querySelectorAll('td')[1].dataset.value])")},
        "text": page.inner_text("main"),
    }


def today(offset_days=0):
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() - offset_days * DAY))


def test_a_viewer_signs_in_with_the_form_and_sees_the_ingested_figures(world):
    srv = world["srv"]
    token = srv.token(A, "viewer")
    tab = Tab(world, token)
    page = tab.page
    reply = tab.goto("/ui/")
    # The pages work under the server's policy (a violation fails Tab.close).
    assert "default-src 'self'" in reply.headers["content-security-policy"], reply.headers
    expect(page.get_by_test_id("signin-form")).to_be_visible()
    tab.shot("signin")
    page.get_by_test_id("token-input").fill(token)
    page.get_by_test_id("signin-button").click()
    expect(page.get_by_test_id("identity")).to_have_attribute("data-tenant", A)
    expect(page.get_by_test_id("identity")).to_have_attribute("data-role", "viewer")

    f = figures(page)
    assert f["activity"] == {"PageViewed": 11, "PurchaseMade": 3, "SensorReading": 2}, f["activity"]
    assert f["pages"] == {"/home": (5, 3), "/pricing": (3, 3), "/docs": (2, 1), "/old": (1, 1)}, f["pages"]
    assert f["revenue"] == {"EUR": ("14.75", 2), "USD": ("20.00", 1)}, f["revenue"]
    assert f["users"] == [[today(3), 1, 1, 1], [today(), 4, 5, 5]], f["users"]
    assert page.get_by_test_id("dau-latest").get_attribute("data-value") == "4"
    assert page.get_by_test_id("wau-latest").get_attribute("data-value") == "5"
    assert page.get_by_test_id("mau-latest").get_attribute("data-value") == "5"
    assert f["projections"] == {"daily_active_users": 0, "revenue_by_day": 0, "top_pages": 0}, f["projections"]
    since = float(page.get_by_test_id("fresh-last").get_attribute("data-seconds"))
    assert 0 <= since < 120, since
    # Charts are drawn (uPlot canvases), one point per bucket / day.
    for chart in ("chart-activity", "chart-users", "chart-revenue"):
        expect(page.locator(f"#{chart} canvas")).to_have_count(1)
    assert page.locator("#chart-users").get_attribute("data-points") == "30"
    # A viewer gets no SQL editor.
    expect(page.locator("#panel-sql")).to_have_count(0)
    assert B not in f["text"] and "/b-only" not in f["text"] and "GBP" not in f["text"]
    tab.shot("dashboard-viewer-a")

    # The time-range pickers: the live chart over the last 15 minutes, the daily ones over 7 days.
    page.select_option("#live-range", "15m")
    page.wait_for_function(
        "() => { const p = document.getElementById('panel-activity');"
        " return p.dataset.toMs - p.dataset.fromMs <= 16 * 60000; }")
    page.select_option("#day-range", "7")
    expect(page.locator("#chart-users")).to_have_attribute("data-points", "7")
    assert figures(page)["activity"] == f["activity"]

    # Signing out forgets the token.
    page.get_by_test_id("signout").click()
    expect(page.get_by_test_id("signin-form")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    tab.close()


def test_an_analyst_runs_sql_and_opens_the_query_page(world):
    srv = world["srv"]
    token = srv.token(A, "analyst")
    tab = Tab(world, token)
    page = tab.page
    tab.goto(f"/ui/#token={token}")
    expect(page.get_by_test_id("identity")).to_have_attribute("data-role", "analyst")
    # The token left the address bar and stays in this tab's session storage.
    assert page.url == f"{srv.url}/ui/", page.url
    assert page.evaluate("sessionStorage.getItem('floe.token')") == token
    assert figures(page)["activity"] == {"PageViewed": 11, "PurchaseMade": 3, "SensorReading": 2}

    sql = "SELECT type, count(*) AS events FROM events GROUP BY type ORDER BY type"
    page.get_by_test_id("sql-input").fill(sql)
    page.get_by_test_id("sql-run").click()
    expect(page.get_by_test_id("sql-status")).to_have_attribute("data-state", "finished")
    header = page.eval_on_selector_all("#sql-result thead th", "els => els.map(e => e.textContent)")
    body = page.eval_on_selector_all("#sql-result tbody tr", "els => els.map(r => [...r.cells].map(c => c.textContent))")
    assert header == ["type", "events"], header
    assert body == [["PageViewed", "11"], ["PurchaseMade", "3"], ["SensorReading", "2"]], body
    expect(page.locator("#sql-chart canvas")).to_have_count(1)
    assert page.locator("#sql-chart").get_attribute("data-points") == "3"
    tab.shot("sql-editor-analyst-a")

    link = page.get_by_test_id("sql-info-link")
    query_id = link.get_attribute("data-query-id")
    assert query_id and link.get_attribute("href") == f"{srv.url}/ui/query.html?{query_id}", link.get_attribute("href")

    # A failing query shows Trino's error in the page.
    page.get_by_test_id("sql-input").fill("SELECT nothing FROM no_such_table")
    page.get_by_test_id("sql-run").click()
    expect(page.get_by_test_id("sql-status")).to_have_attribute("data-state", "failed")
    expect(page.get_by_test_id("sql-error")).to_be_visible()
    assert "TABLE_NOT_FOUND" in page.get_by_test_id("sql-error").inner_text()
    expect(page.locator("#sql-result")).to_have_count(0)
    failed_id = page.get_by_test_id("sql-info-link").get_attribute("data-query-id")
    assert failed_id and failed_id != query_id
    tab.shot("sql-error-analyst-a")

    # The infoUri page shows the query (same tab: the token is in its session storage).
    page.goto(f"{srv.url}/ui/query.html?{query_id}")
    expect(page.get_by_test_id("query-sql")).to_have_text(sql)
    expect(page.get_by_test_id("query-state")).to_have_text("FINISHED")
    expect(page.get_by_test_id("query-rows")).to_have_text("3")
    expect(page.get_by_test_id("query-cpu")).to_contain_text("ms on a core")
    tab.shot("query-page")
    page.goto(f"{srv.url}/ui/query.html?{failed_id}")
    expect(page.get_by_test_id("query-state")).to_have_text("FAILED")
    expect(page.get_by_test_id("query-failure")).to_contain_text("TABLE_NOT_FOUND")
    expect(page.get_by_test_id("query-sql")).to_have_text("SELECT nothing FROM no_such_table")
    tab.shot("query-page-failed")
    tab.close()

    # Opened in a new tab without a token, the page asks for one, then shows the query.
    tab = Tab(world, token)
    tab.goto(f"/ui/query.html?{query_id}")
    expect(tab.page.get_by_test_id("signin-form")).to_be_visible()
    tab.page.get_by_test_id("token-input").fill(token)
    tab.page.get_by_test_id("signin-button").click()
    expect(tab.page.get_by_test_id("query-sql")).to_have_text(sql)
    tab.close()


def test_a_viewer_of_the_other_tenant_sees_only_its_own(world):
    srv = world["srv"]
    token = srv.token(B, "viewer")
    tab = Tab(world, token)
    page = tab.page
    tab.goto(f"/ui/#token={token}")
    expect(page.get_by_test_id("identity")).to_have_attribute("data-tenant", B)
    f = figures(page)
    assert f["activity"] == {"PageViewed": 4, "PurchaseMade": 1}, f["activity"]
    assert f["pages"] == {"/b-only": (4, 2)}, f["pages"]
    assert f["revenue"] == {"GBP": ("7.00", 1)}, f["revenue"]
    assert page.get_by_test_id("dau-latest").get_attribute("data-value") == "2"
    for other in (A, "/home", "/pricing", "/docs", "/old", "EUR", "USD", "SensorReading"):
        assert other not in f["text"], other
    expect(page.locator("#panel-sql")).to_have_count(0)
    tab.shot("dashboard-viewer-b")

    # Tenant A's query page is not B's to read.
    a_query = statement(srv, srv.token(A, "analyst"), "SELECT count(*) FROM events")
    page.goto(f"{srv.url}/ui/query.html?{a_query['id']}")
    expect(page.get_by_test_id("query-error")).to_be_visible()
    expect(page.get_by_test_id("query-sql")).to_have_count(0)
    tab.shot("query-page-other-tenant")
    tab.close()

    # Nor are raw events, asked for directly.
    reply = statement(srv, token, "SELECT count(*) FROM events")
    assert reply.get("error", {}).get("errorName") == "TABLE_NOT_FOUND", reply


def test_the_operator_page_lists_every_tenant(world):
    srv = world["srv"]
    token = floe(world["data"], "token", "issue", "--role", "operator", "--ttl", "1h").strip()
    tab = Tab(world, token)
    page = tab.page
    tab.goto(f"/ui/#token={token}")
    expect(page.get_by_test_id("identity")).to_have_attribute("data-role", "operator")
    page.wait_for_selector("#operator-tenants tbody tr[data-tenant]")
    listed = page.eval_on_selector_all(
        "#operator-tenants tbody tr",
        "els => els.map(e => [e.dataset.tenant, ...[...e.querySelectorAll('td')].map(td => td.dataset.value)])")
    by_id = {r[0]: r[1:] for r in listed}
    assert {A, B} <= set(by_id), listed
    # ingest rate, events in the last 5 minutes, stored bytes, projection lag, last maintenance
    assert int(by_id[A][1]) == len(events_of_a(0)) and int(by_id[B][1]) == len(events_of_b(0)), listed
    assert int(by_id[A][2]) > 0 and int(by_id[B][2]) > 0, listed
    tab.shot("operator")
    tab.close()

    # An ingest token has nothing to show.
    ingest = srv.token(A, "ingest")
    tab = Tab(world, ingest)
    tab.goto(f"/ui/#token={ingest}")
    expect(tab.page.get_by_test_id("role-refused")).to_be_visible()
    tab.close()
