// The dashboard at /ui/: a tenant's figures (viewer, analyst, admin), the SQL editor (analyst,
// admin), or every tenant's ingest and storage (operator). Figures come from Floe's API and, for
// the daily ones, from the tenant's projection tables over the Trino protocol.

import {
  $,
  ApiError,
  api,
  clearToken,
  fmtAgo,
  fmtBytes,
  fmtInt,
  fmtSeconds,
  fmtTime,
  h,
  renderIdentity,
  runSql,
  showError,
  signIn,
  startPage,
  whoami,
} from "./common.js";
import { chartOfResult, colorFor, dayToSeconds, makeChart } from "./charts.js";

const main = $("#main");
const identitySlot = $("#identity-slot");

/** What the current view started (timers, charts, requests), undone on sign-out. */
let teardown = [];
function stopAll() {
  for (const fn of teardown.splice(0)) {
    try {
      fn();
    } catch (e) {
      console.warn(e);
    }
  }
}

const LIVE_RANGES = [
  ["15m", "last 15 minutes", 15 * 60_000],
  ["1h", "last hour", 60 * 60_000],
  ["6h", "last 6 hours", 6 * 3600_000],
  ["24h", "last 24 hours", 24 * 3600_000],
];
const DAY_RANGES = [
  ["7", "last 7 days", 7],
  ["30", "last 30 days", 30],
  ["90", "last 90 days", 90],
];
const LIVE_REFRESH_MS = 5_000;
const DAILY_REFRESH_MS = 30_000;
const OPERATOR_REFRESH_MS = 10_000;

async function boot(notice) {
  stopAll();
  identitySlot.replaceChildren();
  document.body.dataset.view = "signin";
  const who = notice ? await signIn(main, notice) : await whoami(main);
  renderIdentity(identitySlot, who, () => {
    clearToken();
    boot("Signed out.");
  });
  watchExpiry(who);
  if (who.role === "operator") operatorView(who);
  else if (who.tenant && ["viewer", "analyst", "admin"].includes(who.role)) tenantView(who);
  else {
    document.body.dataset.view = "refused";
    main.replaceChildren(
      h(
        "section",
        { class: "panel", "data-testid": "role-refused" },
        h("h2", {}, "Nothing to show"),
        h("p", {}, `A token with role “${who.role}” cannot read the dashboard. Sign in with a viewer, analyst, admin or operator token.`),
      ),
    );
  }
}

function watchExpiry(who) {
  if (!who.expires_at_ms) return;
  const left = who.expires_at_ms - Date.now();
  if (left > 2 ** 31 - 1) return;
  const t = setTimeout(() => {
    clearToken();
    boot("The token has expired: sign in with a new one.");
  }, Math.max(0, left));
  teardown.push(() => clearTimeout(t));
}

/** Calls `load` now and every `ms` (while `enabled()`), never twice at once; returns `now()`. */
function every(ms, load, enabled = () => true) {
  let running = null;
  let again = false;
  const now = async () => {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      try {
        await load();
      } finally {
        running = null;
      }
    })();
    await running;
    if (again) {
      again = false;
      return now();
    }
  };
  const timer = setInterval(() => {
    if (enabled() && !document.hidden) now();
  }, ms);
  teardown.push(() => clearInterval(timer));
  now();
  return now;
}

function select(id, options, chosen, label) {
  return h(
    "label",
    { class: "picker" },
    label + " ",
    h("select", { id, "data-testid": id }, options.map(([v, text]) => h("option", { value: v, selected: v === chosen }, text))),
  );
}

function panel(id, title, ...body) {
  return h("section", { class: "panel", id, "data-testid": id }, h("h2", {}, title), ...body);
}

const errorBox = (id) => h("p", { class: "error", role: "alert", hidden: true, id, "data-testid": id });

function table(id, headers, rows, extra = {}) {
  return h(
    "table",
    { id, "data-testid": id, ...extra },
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col", class: /^[#≈]|events|rows|lag|revenue|orders|users|views|visitors|bytes|rate|DAU|WAU|MAU/i.test(t) ? "num" : "" }, t)))),
    h("tbody", {}, rows),
  );
}

const num = (value, text = fmtInt(value)) => h("td", { class: "num", dataset: { value: value === null || value === undefined ? "" : String(value) } }, text);

// ---- the tenant's dashboard ---------------------------------------------------------------------

function tenantView(who) {
  document.body.dataset.view = "tenant";
  const analyst = who.role === "analyst" || who.role === "admin";
  const params = new URLSearchParams(location.hash.slice(1));
  const state = {
    live: LIVE_RANGES.some(([v]) => v === params.get("live")) ? params.get("live") : "1h",
    days: DAY_RANGES.some(([v]) => v === params.get("days")) ? params.get("days") : "30",
    auto: true,
  };

  const updated = h("span", { id: "updated", class: "muted", "data-testid": "updated" }, "");
  const controls = h(
    "section",
    { class: "controls", id: "controls" },
    h("h1", { id: "tenant-name", "data-testid": "tenant-name" }, who.tenant),
    select("live-range", LIVE_RANGES, state.live, "Live chart:"),
    select("day-range", DAY_RANGES, state.days, "Daily charts:"),
    h("label", { class: "picker" }, h("input", { type: "checkbox", id: "auto-refresh", "data-testid": "auto-refresh", checked: true }), " auto-refresh"),
    h("button", { type: "button", id: "refresh", "data-testid": "refresh" }, "Refresh now"),
    updated,
  );

  // Events per minute by type.
  const activityChartEl = h("div", { class: "chart", id: "chart-activity", "data-testid": "chart-activity" });
  const activityNote = h("span", { class: "sub", id: "activity-step" }, "");
  const activityTotals = h("div", { class: "table-wrap" });
  const activityError = errorBox("activity-error");
  const activity = panel("panel-activity", "Events per minute by type", activityNote, activityChartEl, activityError, activityTotals);
  activity.classList.add("wide");

  // Freshness.
  const freshError = errorBox("freshness-error");
  const freshBody = h("div", { id: "freshness-body" });
  const freshness = panel("panel-freshness", "Freshness", freshError, freshBody);

  // Active users.
  const usersTiles = h("div", { class: "tiles", id: "users-tiles" });
  const usersChartEl = h("div", { class: "chart", id: "chart-users", "data-testid": "chart-users" });
  const usersError = errorBox("users-error");
  const usersTable = h("details", { class: "figures" });
  const users = panel("panel-users", "Active users (UTC days)", usersTiles, usersChartEl, usersError, usersTable);

  // Revenue.
  const revenueChartEl = h("div", { class: "chart", id: "chart-revenue", "data-testid": "chart-revenue" });
  const revenueTotals = h("div", { class: "table-wrap" });
  const revenueError = errorBox("revenue-error");
  const revenueTable = h("details", { class: "figures" });
  const revenue = panel("panel-revenue", "Revenue by day and currency", revenueChartEl, revenueError, revenueTotals, revenueTable);

  // Top pages.
  const pagesBody = h("div", { class: "table-wrap" });
  const pagesError = errorBox("pages-error");
  const pages = panel("panel-pages", "Top pages", pagesError, pagesBody);

  const grid = h("div", { class: "grid" }, activity, freshness, users, revenue, pages);
  main.replaceChildren(controls, grid);
  if (analyst) grid.append(sqlPanel());

  const activityChart = makeChart(activityChartEl, { kind: "time", yLabel: "events", integer: true });
  const usersChart = makeChart(usersChartEl, { kind: "days", yLabel: "users", integer: true });
  const revenueChart = makeChart(revenueChartEl, { kind: "days", yLabel: "revenue" });
  teardown.push(() => [activityChart, usersChart, revenueChart].forEach((c) => c.destroy()));

  const stamp = () => (updated.textContent = `updated ${new Date().toLocaleTimeString()}`);

  // -- live: activity and freshness
  let liveAbort = null;
  async function loadLive() {
    liveAbort?.abort();
    const ctl = (liveAbort = new AbortController());
    const span = LIVE_RANGES.find(([v]) => v === state.live)[2];
    const to = Date.now();
    const from = to - span;
    await Promise.all([
      api(`/v1/dashboard/activity?from=${from}&to=${to}`, { signal: ctl.signal })
        .then((r) => {
          showError(activityError, null);
          renderActivity(r);
        })
        .catch((e) => e.name !== "AbortError" && showError(activityError, e)),
      api("/v1/dashboard/freshness", { signal: ctl.signal })
        .then((r) => {
          showError(freshError, null);
          renderFreshness(r);
        })
        .catch((e) => e.name !== "AbortError" && showError(freshError, e)),
    ]);
    stamp();
  }

  function renderActivity(r) {
    const step = Number(r.step_seconds) || 60;
    const stepMs = step * 1000;
    activity.dataset.stepSeconds = String(step);
    activity.dataset.fromMs = String(r.from_ms);
    activity.dataset.toMs = String(r.to_ms);
    activityNote.textContent = step === 60 ? "per minute, by arrival time" : `per ${fmtSeconds(step)} (a bucket holds ${step / 60} minutes), by arrival time`;
    const series = (r.series || []).map((s) => ({
      type: s.type,
      points: s.points || [],
      total: (s.points || []).reduce((a, [, c]) => a + Number(c), 0),
    }));
    series.sort((a, b) => b.total - a.total || a.type.localeCompare(b.type));
    // Buckets on the server's grid (anchored on a bucket it listed), empty ones as zero.
    const anchor = series.find((s) => s.points.length)?.points[0][0] ?? Math.floor(r.from_ms / stepMs) * stepMs;
    const first = anchor - Math.ceil((anchor - r.from_ms) / stepMs) * stepMs;
    const grid = new Set();
    for (let t = first; t <= r.to_ms; t += stepMs) grid.add(t);
    // A bucket off that grid (not expected) is drawn where it is rather than lost.
    for (const s of series) for (const [t] of s.points) grid.add(t);
    const xs = [...grid].sort((a, b) => a - b);
    const index = new Map(xs.map((t, i) => [t, i]));
    const chartSeries = series.map((s) => {
      const values = xs.map(() => 0);
      for (const [t, c] of s.points) values[index.get(t)] += Number(c);
      return { label: s.type, values };
    });
    activityChart.update(
      xs.map((t) => t / 1000),
      chartSeries,
    );
    const grand = series.reduce((a, s) => a + s.total, 0);
    activity.dataset.total = String(grand);
    const rows = series.map((s) => {
      const last = s.points.length ? s.points[s.points.length - 1] : null;
      return h(
        "tr",
        { dataset: { type: s.type, total: String(s.total) } },
        h("th", { scope: "row" }, h("span", { class: "swatch", style: { background: colorFor(s.type) } }), s.type),
        num(s.total),
        num(Math.max(0, ...s.points.map(([, c]) => Number(c)))),
        h("td", {}, last ? fmtTime(last[0]) : "—"),
      );
    });
    rows.push(h("tr", { class: "total", dataset: { type: "", total: String(grand) } }, h("th", { scope: "row" }, "all types"), num(grand), h("td"), h("td")));
    activityTotals.replaceChildren(table("activity-totals", ["type", "events in range", "busiest bucket", "latest bucket"], rows));
  }

  let freshTick = null;
  function renderFreshness(r) {
    const fetched = Date.now();
    const since = r.seconds_since_last_event;
    const lastEl = h("span", { id: "fresh-last", "data-testid": "fresh-last", dataset: { seconds: since === null || since === undefined ? "" : String(since) } });
    const tick = () => {
      lastEl.textContent = since === null || since === undefined ? "no events yet" : `${fmtSeconds(Number(since) + (Date.now() - fetched) / 1000)} ago`;
    };
    tick();
    clearInterval(freshTick);
    freshTick = setInterval(tick, 1000);
    const kafka = r.kafka_lag_events;
    const projections = r.projections || [];
    const maxLag = projections.reduce((a, p) => Math.max(a, Number(p.lag_seconds) || 0), 0);
    freshBody.replaceChildren(
      h(
        "div",
        { class: "tiles" },
        tile("Last visible event", lastEl, r.last_event_at_ms ? fmtTime(r.last_event_at_ms) : ""),
        tile(
          "Kafka lag",
          h(
            "span",
            { id: "fresh-kafka", "data-testid": "fresh-kafka", dataset: { value: kafka === null || kafka === undefined ? "" : String(kafka) } },
            kafka !== null && kafka !== undefined ? `${fmtInt(kafka)} events` : r.kafka_lag_error ? "unknown" : "not reported",
          ),
          kafka !== null && kafka !== undefined ? "in the topic, not yet in the table" : r.kafka_lag_error ? "" : "no Kafka ingest",
        ),
        tile("Projection lag", h("span", { id: "fresh-projection-lag", dataset: { value: String(maxLag) } }, fmtSeconds(maxLag)), "the most behind"),
      ),
      r.kafka_lag_error ? h("p", { class: "error", role: "alert", "data-testid": "fresh-kafka-error" }, `Kafka lag unknown: ${r.kafka_lag_error}`) : "",
      h(
        "div",
        { class: "table-wrap" },
        table(
          "fresh-projections",
          ["projection", "kind", "lag events", "lag seconds", "refreshed", "rows"],
          projections.map((p) =>
            h(
              "tr",
              { dataset: { name: p.name } },
              h("th", { scope: "row" }, p.name),
              h("td", {}, p.kind ?? ""),
              num(p.lag_events),
              num(p.lag_seconds, fmtSeconds(p.lag_seconds)),
              h("td", { title: fmtTime(p.refreshed_at_ms) }, fmtAgo(p.refreshed_at_ms)),
              num(p.rows),
            ),
          ),
        ),
      ),
    );
  }
  teardown.push(() => clearInterval(freshTick));

  // -- daily: projections over SQL
  let dailyAbort = null;
  async function loadDaily() {
    dailyAbort?.abort();
    const ctl = (dailyAbort = new AbortController());
    const days = Number(state.days);
    const today = Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), new Date().getUTCDate());
    const since = new Date(today - (days - 1) * 86400_000).toISOString().slice(0, 10);
    const dayList = [];
    for (let t = today - (days - 1) * 86400_000; t <= today; t += 86400_000) dayList.push(t / 1000);
    const run = (sql, box, render) =>
      runSql(sql, { signal: ctl.signal })
        .then((r) => {
          showError(box, null);
          render(r, dayList, since);
        })
        .catch((e) => e.name !== "AbortError" && showError(box, e));
    await Promise.all([
      run(
        `SELECT day, users, users_7d, users_28d FROM daily_active_users WHERE day >= DATE '${since}' ORDER BY day`,
        usersError,
        renderUsers,
      ),
      run(
        `SELECT day, currency, revenue, orders FROM revenue_by_day WHERE day >= DATE '${since}' ORDER BY day, currency`,
        revenueError,
        renderRevenue,
      ),
      run(
        `SELECT page, sum(views) AS views, sum(visitors) AS visitors FROM top_pages WHERE day >= DATE '${since}' GROUP BY page ORDER BY views DESC, page LIMIT 10`,
        pagesError,
        renderPages,
      ),
    ]);
    stamp();
  }

  function renderUsers(r, dayList) {
    const byDay = new Map(r.rows.map(([day, u, u7, u28]) => [dayToSeconds(day), [Number(u), Number(u7), Number(u28)]]));
    // A day without a row had no events: nobody active that day; its 7- and 28-day windows are not stored.
    usersChart.update(dayList, [
      { label: "daily (DAU)", values: dayList.map((d) => (byDay.has(d) ? byDay.get(d)[0] : 0)), color: "#2563eb" },
      { label: "7 days (WAU)", values: dayList.map((d) => (byDay.has(d) ? byDay.get(d)[1] : null)), color: "#16a34a", spanGaps: true },
      { label: "28 days (MAU)", values: dayList.map((d) => (byDay.has(d) ? byDay.get(d)[2] : null)), color: "#d97706", spanGaps: true },
    ]);
    const latest = r.rows.length ? r.rows[r.rows.length - 1] : null;
    usersTiles.replaceChildren(
      tile("DAU", h("span", { "data-testid": "dau-latest", dataset: { value: latest ? String(latest[1]) : "" } }, latest ? fmtInt(latest[1]) : "—"), latest ? `on ${latest[0]}` : "no days with events"),
      tile("WAU", h("span", { "data-testid": "wau-latest", dataset: { value: latest ? String(latest[2]) : "" } }, latest ? fmtInt(latest[2]) : "—"), "7 days to it"),
      tile("MAU", h("span", { "data-testid": "mau-latest", dataset: { value: latest ? String(latest[3]) : "" } }, latest ? fmtInt(latest[3]) : "—"), "28 days to it"),
    );
    usersTable.replaceChildren(
      h("summary", {}, `Figures (${r.rows.length} days with events)`),
      table(
        "users-table",
        ["day", "DAU", "WAU", "MAU"],
        r.rows.map(([day, u, u7, u28]) => h("tr", { dataset: { day } }, h("th", { scope: "row" }, day), num(u), num(u7), num(u28))),
      ),
    );
  }

  function renderRevenue(r, dayList) {
    const cents = (s) => Math.round(Number(s) * 100);
    const currencies = new Map();
    for (const [day, currency, rev, orders] of r.rows) {
      const key = currency === null ? "(none)" : currency;
      if (!currencies.has(key)) currencies.set(key, { days: new Map(), cents: 0, orders: 0 });
      const c = currencies.get(key);
      c.days.set(dayToSeconds(day), Number(rev));
      c.cents += cents(rev);
      c.orders += Number(orders);
    }
    const names = [...currencies.keys()].sort();
    revenueChart.update(
      dayList,
      names.map((n) => ({ label: n, values: dayList.map((d) => currencies.get(n).days.get(d) ?? 0) })),
    );
    const money = (c) => (c / 100).toFixed(2);
    revenueTotals.replaceChildren(
      table(
        "revenue-totals",
        ["currency", "revenue", "orders"],
        names.map((n) => {
          const c = currencies.get(n);
          return h(
            "tr",
            { dataset: { currency: n, revenue: money(c.cents), orders: String(c.orders) } },
            h("th", { scope: "row" }, h("span", { class: "swatch", style: { background: colorFor(n) } }), n),
            num(money(c.cents), Number(money(c.cents)).toLocaleString("en-US", { minimumFractionDigits: 2 })),
            num(c.orders),
          );
        }),
      ),
    );
    revenueTable.replaceChildren(
      h("summary", {}, `Figures (${r.rows.length} rows)`),
      table(
        "revenue-table",
        ["day", "currency", "revenue", "orders"],
        r.rows.map(([day, currency, rev, orders]) =>
          h("tr", { dataset: { day, currency: currency ?? "" } }, h("th", { scope: "row" }, day), h("td", {}, currency ?? "(none)"), num(rev, rev), num(orders)),
        ),
      ),
    );
  }

  function renderPages(r) {
    const max = r.rows.reduce((a, [, v]) => Math.max(a, Number(v)), 0);
    pagesBody.replaceChildren(
      r.rows.length === 0
        ? h("p", { class: "chart-empty", "data-testid": "top-pages-empty" }, "No page views in this range.")
        : table(
            "top-pages",
            ["page", "views", "visitors (daily, summed)"],
            r.rows.map(([page, views, visitors]) =>
              h(
                "tr",
                { dataset: { page: page ?? "", views: String(views), visitors: String(visitors) } },
                h(
                  "th",
                  { scope: "row", class: "bar-cell" },
                  h("span", { class: "bar", style: { width: `${max ? (100 * Number(views)) / max : 0}%` } }),
                  h("span", { class: "bar-label" }, page ?? "(no page)"),
                ),
                num(views),
                num(visitors),
              ),
            ),
          ),
    );
  }

  const refreshLive = every(LIVE_REFRESH_MS, loadLive, () => state.auto);
  const refreshDaily = every(DAILY_REFRESH_MS, loadDaily, () => state.auto);
  teardown.push(() => {
    liveAbort?.abort();
    dailyAbort?.abort();
  });

  const remember = () => {
    const p = new URLSearchParams(location.hash.slice(1));
    p.set("live", state.live);
    p.set("days", state.days);
    history.replaceState(history.state, "", location.pathname + location.search + "#" + p.toString());
  };
  $("#live-range").addEventListener("change", (e) => {
    state.live = e.target.value;
    remember();
    refreshLive();
  });
  $("#day-range").addEventListener("change", (e) => {
    state.days = e.target.value;
    remember();
    refreshDaily();
  });
  $("#auto-refresh").addEventListener("change", (e) => (state.auto = e.target.checked));
  $("#refresh").addEventListener("click", () => {
    refreshLive();
    refreshDaily();
  });
}

function tile(label, value, note) {
  return h("div", { class: "tile" }, h("div", { class: "tile-label" }, label), h("div", { class: "tile-value" }, value), note ? h("div", { class: "tile-note muted" }, note) : null);
}

// ---- the SQL editor (analyst, admin) -------------------------------------------------------------

const EXAMPLES = [
  ["Events by type", "SELECT type, count(*) AS events\nFROM events\nGROUP BY type\nORDER BY events DESC"],
  ["Events per hour (last day)", "SELECT date_trunc('hour', ts) AS hour, count(*) AS events\nFROM events\nWHERE ts >= current_timestamp - INTERVAL '1' DAY\nGROUP BY 1\nORDER BY 1"],
  ["Top pages (7 days)", "SELECT page, sum(views) AS views\nFROM top_pages\nWHERE day >= current_date - INTERVAL '7' DAY\nGROUP BY page\nORDER BY views DESC\nLIMIT 10"],
  ["Revenue by currency", "SELECT currency, sum(revenue) AS revenue, sum(orders) AS orders\nFROM revenue_by_day\nGROUP BY currency\nORDER BY revenue DESC"],
];
const SHOWN_ROWS = 1000;

function sqlPanel() {
  const input = h("textarea", { id: "sql-input", "data-testid": "sql-input", rows: 7, spellcheck: "false", "aria-label": "SQL" }, EXAMPLES[0][1]);
  const run = h("button", { type: "button", id: "sql-run", "data-testid": "sql-run", class: "primary" }, "Run");
  const cancel = h("button", { type: "button", id: "sql-cancel", "data-testid": "sql-cancel", hidden: true }, "Cancel");
  const status = h("span", { id: "sql-status", "data-testid": "sql-status", class: "muted", dataset: { state: "idle" } }, "Ctrl+Enter runs the query.");
  const info = h("a", { id: "sql-info", "data-testid": "sql-info-link", hidden: true, target: "_blank", rel: "noopener" }, "query details");
  const error = errorBox("sql-error");
  const chartEl = h("div", { class: "chart", id: "sql-chart", "data-testid": "sql-chart", hidden: true });
  const result = h("div", { class: "table-wrap result", id: "sql-result-wrap" });
  const examples = h(
    "select",
    { id: "sql-examples", "aria-label": "Examples" },
    h("option", { value: "" }, "Examples…"),
    EXAMPLES.map(([name], i) => h("option", { value: String(i) }, name)),
  );
  examples.addEventListener("change", () => {
    if (examples.value !== "") input.value = EXAMPLES[Number(examples.value)][1];
    examples.value = "";
    input.focus();
  });

  let chart = null;
  let ctl = null;
  const go = async () => {
    const sql = input.value.trim();
    if (!sql || ctl) return;
    ctl = new AbortController();
    run.disabled = true;
    cancel.hidden = false;
    showError(error, null);
    info.hidden = true;
    // The last result goes: a failure must not leave it looking like this query's.
    chart?.destroy();
    chart = null;
    chartEl.hidden = true;
    chartEl.replaceChildren();
    result.replaceChildren();
    status.dataset.state = "running";
    status.textContent = "Running…";
    const started = performance.now();
    try {
      const r = await runSql(sql, { signal: ctl.signal });
      const ms = Math.round(performance.now() - started);
      status.dataset.state = "finished";
      status.dataset.rows = String(r.rows.length);
      status.textContent = `${fmtInt(r.rows.length)} row${r.rows.length === 1 ? "" : "s"} in ${ms} ms` + (r.rows.length > SHOWN_ROWS ? ` (the first ${fmtInt(SHOWN_ROWS)} shown)` : "");
      linkInfo(r);
      renderResult(r);
    } catch (e) {
      if (e.name === "AbortError") {
        status.dataset.state = "canceled";
        status.textContent = "Canceled.";
      } else {
        status.dataset.state = "failed";
        status.textContent = "Failed.";
        showError(error, e);
        if (e.infoUri) linkInfo(e);
      }
    } finally {
      ctl = null;
      run.disabled = false;
      cancel.hidden = true;
    }
  };
  function linkInfo(r) {
    if (!r.infoUri) return;
    info.href = r.infoUri;
    info.dataset.queryId = r.id || "";
    info.textContent = `query ${r.id}`;
    info.hidden = false;
  }
  function renderResult(r) {
    const cols = r.columns;
    const cell = (v, type) => {
      if (v === null || v === undefined) return h("td", { class: "null" }, "NULL");
      const text = typeof v === "object" ? JSON.stringify(v) : String(v);
      return h("td", { class: /^(tinyint|smallint|integer|bigint|real|double|decimal)/i.test(type) ? "num" : "" }, text);
    };
    result.replaceChildren(
      h(
        "table",
        { id: "sql-result", "data-testid": "sql-result", dataset: { rows: String(r.rows.length) } },
        h("thead", {}, h("tr", {}, cols.map((c) => h("th", { scope: "col", title: c.type, dataset: { type: c.type } }, c.name)))),
        h("tbody", {}, r.rows.slice(0, SHOWN_ROWS).map((row) => h("tr", {}, row.map((v, i) => cell(v, cols[i]?.type))))),
      ),
    );
    if (chart) chart.destroy();
    chart = null;
    const spec = chartOfResult(cols, r.rows);
    chartEl.hidden = !spec;
    chartEl.replaceChildren();
    if (spec) {
      chart = makeChart(chartEl, { kind: spec.kind });
      chart.update(spec.x, spec.series, spec.labels);
    }
  }
  run.addEventListener("click", go);
  cancel.addEventListener("click", () => ctl?.abort());
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      go();
    }
  });
  teardown.push(() => {
    ctl?.abort();
    chart?.destroy();
  });

  const p = panel(
    "panel-sql",
    "SQL",
    h("p", { class: "muted" }, "Read-only SQL over this tenant's tables (", h("code", {}, "events"), ", ", h("code", {}, "daily_active_users"), ", ", h("code", {}, "revenue_by_day"), ", ", h("code", {}, "top_pages"), ")."),
    input,
    h("div", { class: "row" }, run, cancel, examples, status, info),
    error,
    chartEl,
    result,
  );
  p.classList.add("wide");
  return p;
}

const fmtRate = (r) => Number(r ?? 0).toLocaleString("en-US", { maximumFractionDigits: Number(r) < 10 ? 2 : 1 });

// ---- the operator's page --------------------------------------------------------------------------

function operatorView() {
  document.body.dataset.view = "operator";
  const error = errorBox("operator-error");
  const body = h("div", { class: "table-wrap" });
  const summary = h("div", { class: "tiles" });
  const updated = h("span", { class: "muted", id: "updated" });
  main.replaceChildren(
    h("section", { class: "controls" }, h("h1", {}, "All tenants"), updated),
    h("div", { class: "grid" }, h("section", { class: "panel wide", id: "panel-operator", "data-testid": "panel-operator" }, h("h2", {}, "Ingest, storage and maintenance"), summary, error, body)),
  );
  const load = async () => {
    try {
      const r = await api("/v1/operator/tenants");
      showError(error, null);
      const tenants = (r.tenants || []).slice().sort((a, b) => String(a.id).localeCompare(String(b.id)));
      const sum = (k) => tenants.reduce((a, t) => a + (Number(t[k]) || 0), 0);
      summary.replaceChildren(
        tile("Tenants", h("span", { "data-testid": "operator-count" }, fmtInt(tenants.length))),
        tile("Ingest", `${fmtRate(sum("ingest_events_per_sec"))} events/s`, "all tenants, last 5 minutes"),
        tile("Stored", fmtBytes(sum("stored_bytes")), "data files of current snapshots"),
      );
      body.replaceChildren(
        table(
          "operator-tenants",
          ["tenant", "ingest rate (events/s)", "events, last 5 min", "stored bytes", "projection lag", "last maintenance", "last event"],
          tenants.map((t) =>
            h(
              "tr",
              { dataset: { tenant: t.id } },
              h("th", { scope: "row" }, t.id),
              // A tenant whose figures could not be read says why, in place of them.
              t.error
                ? h("td", { colspan: 4, class: "error-cell", "data-testid": "operator-row-error" }, t.error)
                : [
                    num(t.ingest_events_per_sec, fmtRate(t.ingest_events_per_sec)),
                    num(t.events_last_5m),
                    num(t.stored_bytes, fmtBytes(t.stored_bytes)),
                    num(t.projection_lag_seconds, fmtSeconds(t.projection_lag_seconds)),
                  ],
              h("td", { dataset: { value: t.last_maintenance_at_ms ?? "" }, title: fmtTime(t.last_maintenance_at_ms) }, t.last_maintenance_at_ms ? fmtAgo(t.last_maintenance_at_ms) : "never"),
              h("td", { dataset: { value: t.last_event_at_ms ?? "" }, title: fmtTime(t.last_event_at_ms) }, t.last_event_at_ms ? fmtAgo(t.last_event_at_ms) : "—"),
            ),
          ),
        ),
      );
      updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) showError(error, e);
    }
  };
  every(OPERATOR_REFRESH_MS, load);
}

// ---- start ---------------------------------------------------------------------------------------

startPage(main, boot, "The dashboard");
