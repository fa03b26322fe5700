// Shared by the dashboard (index.html) and the query page (query.html): the token kept for
// this browser tab, calls to Floe's API with it, the Trino protocol, the sign-in form, and
// small DOM and formatting helpers. The token travels only in the Authorization header.

const TOKEN_KEY = "floe.token";

/** Builds an element: h("td", {class: "num", dataset: {value: 3}}, "3"). Text is never parsed as HTML. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
    else if (k === "class") el.className = v;
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const $ = (sel, root = document) => root.querySelector(sel);

// ---- the token -------------------------------------------------------------------------------

/**
 * Takes a token handed over in the address (`#token=JWT`, for links and tests): keeps it for
 * this tab and removes it from the address bar and the history entry. A fragment is never sent
 * to a server, and after this it is not in the address either.
 */
export function adoptTokenFromHash() {
  if (!location.hash || location.hash.length < 2) return;
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token === null) return;
  params.delete("token");
  const rest = params.toString();
  if (token.trim()) sessionStorage.setItem(TOKEN_KEY, token.trim());
  history.replaceState(history.state, "", location.pathname + location.search + (rest ? "#" + rest : ""));
}

export const getToken = () => sessionStorage.getItem(TOKEN_KEY);
export const setToken = (t) => sessionStorage.setItem(TOKEN_KEY, t);
export const clearToken = () => sessionStorage.removeItem(TOKEN_KEY);

// ---- the API ---------------------------------------------------------------------------------

/** A failed API call: the HTTP status and the server's message. */
export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Called with the ApiError when the server refuses the token (401); set by the page. */
let onUnauthorized = null;
export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

function messageOf(status, text) {
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === "object" && body.error) {
      return [body.error.message || JSON.stringify(body.error), body.error.code || body.error.errorName];
    }
    if (body && typeof body.error === "string") return [body.error, undefined];
    if (body && typeof body.message === "string") return [body.message, undefined];
  } catch {
    // not JSON: the text itself
  }
  return [text.trim() || `HTTP ${status}`, undefined];
}

/**
 * Calls Floe's API with the tab's token and returns the JSON reply. `path` is a path
 * (`/v1/whoami`) or a full URL the server handed out (a Trino `nextUri`).
 */
export async function api(path, { method = "GET", body, headers = {}, signal } = {}) {
  const token = getToken();
  if (!token) throw new ApiError(401, "not signed in");
  const res = await fetch(path, {
    method,
    body,
    signal,
    headers: { Authorization: `Bearer ${token}`, Accept: "application/json", ...headers },
    credentials: "omit",
    cache: "no-store",
  });
  const text = await res.text();
  if (!res.ok) {
    const [message, code] = messageOf(res.status, text);
    const err = new ApiError(res.status, `${res.status} ${res.statusText || ""}: ${message}`.replace(" :", ":"), code);
    if (res.status === 401 && onUnauthorized) onUnauthorized(err);
    throw err;
  }
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    throw new ApiError(res.status, `the server's reply to ${method} ${new URL(path, location.href).pathname} is not JSON`);
  }
}

/** A query that Floe refused or that failed: Trino's error, with the query's id and page. */
export class QueryError extends Error {
  constructor(error, id, infoUri) {
    super(error.message || JSON.stringify(error));
    this.errorName = error.errorName || error.errorType || "";
    this.id = id;
    this.infoUri = infoUri;
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Runs `sql` over the Trino client protocol: POST /v1/statement, then every `nextUri` until
 * none is left, collecting the rows. Resolves to {id, infoUri, columns, rows, stats}; rejects
 * with a QueryError carrying Trino's message. Aborting `signal` cancels the query on the
 * server (DELETE of its current `nextUri`) so that it does not hold the tenant's query slot.
 */
export async function runSql(sql, { signal } = {}) {
  const hdrs = { "X-Trino-User": "floe-dashboard", "Content-Type": "text/plain; charset=utf-8" };
  let page = await api("/v1/statement", { method: "POST", body: sql, headers: hdrs, signal });
  const id = page.id;
  const infoUri = page.infoUri;
  let columns = null;
  const rows = [];
  let idle = 0;
  for (;;) {
    if (page.error) throw new QueryError(page.error, id, infoUri);
    if (page.columns) columns = page.columns;
    if (page.data) rows.push(...page.data);
    if (!page.nextUri) break;
    if (signal?.aborted) {
      cancel(page.nextUri);
      throw new DOMException("aborted", "AbortError");
    }
    // Pages with nothing yet (queued, running): back off a little between them.
    if (!page.data && !page.columns) {
      if (idle > 0) await sleep(Math.min(20 * 2 ** idle, 500));
      idle++;
    } else idle = 0;
    const next = page.nextUri;
    try {
      page = await api(next, { headers: { "X-Trino-User": hdrs["X-Trino-User"] }, signal });
    } catch (e) {
      if (e.name === "AbortError") cancel(next);
      throw e;
    }
  }
  return { id, infoUri, columns: columns || [], rows, stats: page.stats || {} };
}

function cancel(uri) {
  const token = getToken();
  if (!token) return;
  fetch(uri, { method: "DELETE", headers: { Authorization: `Bearer ${token}` }, credentials: "omit" }).catch((e) =>
    console.warn("cancelling a query failed", e),
  );
}

/** The message of an error as shown in a page: Trino's name and message, or the HTTP error. */
export function describeError(e) {
  if (e instanceof QueryError) return `${e.errorName ? e.errorName + ": " : ""}${e.message}`;
  if (e instanceof ApiError) return e.message;
  if (e instanceof TypeError) return `cannot reach the server (${e.message})`;
  return String(e && e.message ? e.message : e);
}

/** Shows `e` in `box` (an element with role=alert), or clears it when `e` is null. */
export function showError(box, e, prefix = "") {
  if (!box) return;
  if (e === null || e === undefined) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.hidden = false;
  box.textContent = prefix + describeError(e);
  if (!(e instanceof ApiError || e instanceof QueryError)) console.error(e);
}

// ---- signing in ------------------------------------------------------------------------------

/**
 * Shows the sign-in form in `root` and resolves once a token the server accepts was pasted:
 * to the reply of GET /v1/whoami. `notice` is shown above the form (why it is shown).
 */
export function signIn(root, notice) {
  return new Promise((resolve) => {
    const input = h("textarea", {
      id: "token-input",
      name: "token",
      rows: 4,
      required: true,
      autocomplete: "off",
      spellcheck: "false",
      placeholder: "eyJhbGciOi…",
      "data-testid": "token-input",
    });
    const err = h("p", { class: "error", role: "alert", hidden: true, "data-testid": "signin-error" });
    const form = h(
      "form",
      { id: "signin", class: "panel signin", "data-testid": "signin-form" },
      h("h2", {}, "Sign in"),
      notice ? h("p", { class: "notice", "data-testid": "signin-notice" }, notice) : null,
      h("label", { for: "token-input" }, "Token (a JWT from ", h("code", {}, "floe token issue"), ")"),
      input,
      err,
      h("button", { type: "submit", id: "signin-button", "data-testid": "signin-button" }, "Sign in"),
      h(
        "p",
        { class: "hint" },
        "The token is kept in this tab only (session storage) and sent only in the Authorization header.",
      ),
    );
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const token = input.value.trim().replace(/^Bearer\s+/i, "");
      if (!token) return;
      setToken(token);
      try {
        const who = await api("/v1/whoami");
        resolve(who);
      } catch (e) {
        clearToken();
        showError(err, e, "Not signed in: ");
      }
    });
    root.replaceChildren(form);
    input.focus();
  });
}

/**
 * The signed-in principal: GET /v1/whoami with the kept token, or the sign-in form when there
 * is none or the server refuses it.
 */
export async function whoami(root) {
  if (getToken()) {
    try {
      return await api("/v1/whoami");
    } catch (e) {
      if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
        clearToken();
        return signIn(root, `The kept token was refused: ${describeError(e)}`);
      }
      return signIn(root, `Could not check the kept token: ${describeError(e)}`);
    }
  }
  return signIn(root);
}

// ---- formatting ------------------------------------------------------------------------------

export function fmtInt(n) {
  return n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US");
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

export function fmtSeconds(s) {
  if (s === null || s === undefined) return "—";
  s = Number(s);
  if (s === 0) return "0 s";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 90) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min`;
  if (s < 48 * 3600) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} days`;
}

export function fmtTime(ms) {
  if (ms === null || ms === undefined) return "—";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

export function fmtAgo(ms, now = Date.now()) {
  if (ms === null || ms === undefined) return "never";
  return `${fmtSeconds(Math.max(0, (now - ms) / 1000))} ago`;
}

/** The header's right-hand side: who is signed in, and a sign-out button. */
export function renderIdentity(slot, who, onSignOut) {
  const label = who.tenant ? `${who.tenant} · ${who.role}` : who.role;
  slot.replaceChildren(
    h("span", { id: "identity", "data-testid": "identity", dataset: { tenant: who.tenant || "", role: who.role } }, label),
    who.expires_at_ms
      ? h("span", { class: "muted", title: fmtTime(who.expires_at_ms) }, ` · token expires ${fmtTime(who.expires_at_ms)}`)
      : "",
    h("button", { type: "button", id: "signout", "data-testid": "signout", onclick: onSignOut }, "Sign out"),
  );
}

// Starts a page: takes a `#token=` from the address bar, signs the tab out and shows the form
// again when the server refuses its token, and shows `boot`'s failure in the page (`what`
// names the page in that message).
export function startPage(main, boot, what) {
  adoptTokenFromHash();
  whenUnauthorized((e) => {
    // Once per view: the sign-in form handles its own refusals.
    if (document.body.dataset.view === "signin") return;
    clearToken();
    boot(`The server refused the token: ${describeError(e)}`);
  });
  boot().catch((e) => {
    main.replaceChildren(h("p", { class: "error", role: "alert" }, `${what} failed: ${describeError(e)}`));
    console.error(e);
  });
}
