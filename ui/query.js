// The page a query's Trino `infoUri` names: /ui/query.html?<query id> (the whole query string
// is the id, as in Trino's own web UI). It reads GET /v1/query/{id} with the tab's token, and
// asks for one first when there is none.

import {
  $,
  ApiError,
  api,
  clearToken,
  fmtBytes,
  fmtInt,
  fmtTime,
  h,
  renderIdentity,
  showError,
  signIn,
  startPage,
  whoami,
} from "./common.js";

const main = $("#main");
const identitySlot = $("#identity-slot");
const FINAL = new Set(["FINISHED", "FAILED", "CANCELED"]);

let poll = null;

async function boot(notice) {
  clearTimeout(poll);
  identitySlot.replaceChildren();
  document.body.dataset.view = "signin";
  const who = notice ? await signIn(main, notice) : await whoami(main);
  renderIdentity(identitySlot, who, () => {
    clearToken();
    boot("Signed out.");
  });
  document.body.dataset.view = "query";
  show();
}

function queryId() {
  const raw = location.search.slice(1);
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
}

async function show() {
  const id = queryId();
  const error = h("p", { class: "error", role: "alert", hidden: true, id: "query-error", "data-testid": "query-error" });
  const body = h("div", { id: "query-body" });
  main.replaceChildren(
    h("section", { class: "panel wide", id: "panel-query", "data-testid": "panel-query" }, h("h2", {}, "Query ", h("code", { id: "query-id" }, id || "(none)")), error, body),
  );
  if (!id) {
    showError(error, new Error("No query id: this page is /ui/query.html?<query id>."));
    return;
  }
  const load = async () => {
    try {
      const q = await api(`/v1/query/${encodeURIComponent(id)}`);
      showError(error, null);
      render(body, q);
      if (!FINAL.has(q.state)) poll = setTimeout(load, 1000);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return;
      if (e instanceof ApiError && e.status === 404) {
        showError(error, new Error(`No query ${id} for this tenant: it never ran here, another tenant ran it, or it is no longer kept.`));
      } else showError(error, e);
      body.replaceChildren();
    }
  };
  await load();
}

function render(body, q) {
  const row = (label, value, testid) => [h("dt", {}, label), h("dd", { "data-testid": testid }, value)];
  body.replaceChildren(
    h(
      "dl",
      { class: "facts", id: "query-facts", dataset: { state: q.state } },
      row("State", h("span", { class: `state state-${String(q.state).toLowerCase()}` }, q.state), "query-state"),
      row("Submitted", fmtTime(q.created_at_ms), "query-created"),
      row("Ended", q.ended_at_ms ? fmtTime(q.ended_at_ms) : "not yet", "query-ended"),
      row("Elapsed", `${fmtInt(q.elapsed_ms)} ms`, "query-elapsed"),
      row("Rows", fmtInt(q.rows), "query-rows"),
      row("Bytes scanned", `${fmtBytes(q.scanned_bytes)} (${fmtInt(q.scanned_bytes)} bytes)`, "query-scanned"),
      row("CPU", `${fmtInt(q.cpu_ms)} ms on a core, ${fmtInt(q.cpu_wait_ms)} ms waiting for one`, "query-cpu"),
    ),
    q.error
      ? h(
          "div",
          { class: "error", role: "alert", id: "query-failure", "data-testid": "query-failure" },
          h("strong", {}, q.error.errorName || "error"),
          ": ",
          q.error.message || "",
        )
      : "",
    h("h3", {}, "SQL"),
    h("pre", { class: "sql", id: "query-sql", "data-testid": "query-sql" }, q.query ?? ""),
  );
}

startPage(main, boot, "The page");
