// Charts drawn with uPlot (vendored under vendor/uplot/, loaded by a classic <script> before
// the modules, as the global `uPlot`). Each chart keeps its figures in the page too: the
// panels put them in tables, and the chart element carries them as data-* attributes.

const uPlot = window.uPlot;

const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563", "#65a30d", "#9333ea"];
const assigned = new Map();

/** A colour per series name that stays the same across refreshes. */
export function colorFor(name) {
  if (!assigned.has(name)) assigned.set(name, PALETTE[assigned.size % PALETTE.length]);
  return assigned.get(name);
}

const HEIGHT = 240;
const INTEGER_STEPS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 2.5e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6, 5e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12];

function sizeOf(el) {
  return { width: Math.max(280, Math.floor(el.clientWidth || el.getBoundingClientRect().width || 600)), height: HEIGHT };
}

const utcDate = (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC");

/**
 * A chart in `el`. `kind`: "time" (x in Unix seconds, local time), "days" (x in Unix seconds
 * at UTC midnight, shown as UTC days) or "categories" (x = 0..n-1, labelled by `labels`).
 * update(x, series, labels) draws [{label, values, bars?}] and is cheap when only figures change.
 */
export function makeChart(el, { kind = "time", yLabel = "", integer = false } = {}) {
  let plot = null;
  let shape = "";
  let labels = [];
  const empty = document.createElement("p");
  empty.className = "chart-empty";
  empty.textContent = "No data in this range.";
  empty.hidden = true;

  const ro = new ResizeObserver(() => {
    if (plot) plot.setSize(sizeOf(el));
  });
  ro.observe(el);

  function options(series) {
    const opts = {
      ...sizeOf(el),
      cursor: { drag: { x: false, y: false } },
      legend: { show: true, live: true },
      // The y axis always shows zero (bars and counts start there).
      scales: { x: { time: kind !== "categories" }, y: { range: (u, min, max) => uPlot.rangeNum(Math.min(0, min), Math.max(max, 1), 0.1, true) } },
      series: [{ label: kind === "categories" ? "" : "time" }],
      axes: [{}, { label: yLabel, size: 60, ...(integer ? { incrs: INTEGER_STEPS } : {}) }],
    };
    if (kind === "days") {
      opts.tzDate = utcDate;
      opts.series[0].value = (u, v) => (v == null ? "—" : new Date(v * 1000).toISOString().slice(0, 10));
    }
    if (kind === "categories") {
      opts.scales.x.range = (u, min, max) => [min - 0.5, max + 0.5];
      opts.axes[0] = {
        // A label under every bar, or under every k-th when there are many.
        splits: (u) => {
          const n = u.data[0].length;
          const every = Math.max(1, Math.ceil(n / 20));
          return u.data[0].filter((i) => i % every === 0);
        },
        values: (u, splits) => splits.map((i) => (labels[i] === undefined ? "" : shorten(labels[i]))),
      };
      opts.series[0].value = (u, i) => (i == null ? "" : labels[i] ?? "");
    }
    for (const s of series) {
      const color = s.color || colorFor(s.label);
      const one = { label: s.label, stroke: color, width: 2, spanGaps: !!s.spanGaps };
      if (s.bars) {
        one.paths = uPlot.paths.bars({ size: [0.6, 80] });
        one.fill = color + "99";
        one.points = { show: false };
      }
      opts.series.push(one);
    }
    return opts;
  }

  return {
    update(x, series, categoryLabels = []) {
      labels = categoryLabels;
      el.dataset.points = String(x.length);
      el.dataset.series = JSON.stringify(series.map((s) => s.label));
      const none = x.length === 0 || series.length === 0;
      if (none) {
        if (plot) plot.destroy();
        plot = null;
        shape = "";
        el.replaceChildren(empty);
        empty.hidden = false;
        return;
      }
      const data = [x, ...series.map((s) => s.values)];
      const key = kind + "|" + series.map((s) => `${s.label}:${!!s.bars}`).join("|");
      if (plot && key === shape) {
        plot.setData(data);
        return;
      }
      if (plot) plot.destroy();
      el.replaceChildren();
      shape = key;
      plot = new uPlot(options(series), data, el);
    },
    destroy() {
      ro.disconnect();
      if (plot) plot.destroy();
      plot = null;
    },
  };
}

function shorten(s) {
  s = String(s);
  return s.length > 18 ? s.slice(0, 17) + "…" : s;
}

// ---- query results ------------------------------------------------------------------------------

const NUMERIC = /^(tinyint|smallint|integer|int|bigint|real|double|decimal)/i;

export const isNumericType = (type) => NUMERIC.test(String(type || ""));

/** Unix seconds of a 'YYYY-MM-DD' date (UTC midnight), or null. */
export function dayToSeconds(s) {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(String(s));
  return m ? Date.UTC(+m[1], +m[2] - 1, +m[3]) / 1000 : null;
}

/** Unix seconds of a timestamp as Floe renders it ('2025-11-15 10:00:00.000000 UTC' and the like), or null. */
export function timestampToSeconds(s) {
  const m = /^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}(?::\d{2})?)(\.\d+)?\s*(UTC|Z|[+-]\d{2}:?\d{2})?$/.exec(String(s).trim());
  if (!m) return null;
  let zone = m[4] || "Z";
  if (zone === "UTC") zone = "Z";
  else if (/^[+-]\d{4}$/.test(zone)) zone = zone.slice(0, 3) + ":" + zone.slice(3);
  const frac = m[3] ? m[3].slice(0, 4) : "";
  const t = Date.parse(`${m[1]}T${m[2]}${frac}${zone}`);
  return Number.isNaN(t) ? null : t / 1000;
}

/**
 * How to chart a query result, or null when it has no numeric column: the x axis (a date or
 * timestamp column as time, else the first other column as categories, else the row number)
 * and one series per numeric column (at most eight).
 */
export function chartOfResult(columns, rows) {
  const numeric = columns.map((c, i) => (isNumericType(c.type) ? i : -1)).filter((i) => i >= 0);
  if (numeric.length === 0 || rows.length === 0) return null;
  const limit = 2000;
  rows = rows.slice(0, limit);
  let xi = columns.findIndex((c) => /^date$/i.test(c.type));
  let kind = "days";
  let toX = dayToSeconds;
  if (xi < 0) {
    xi = columns.findIndex((c) => /^timestamp/i.test(c.type));
    kind = "time";
    toX = timestampToSeconds;
  }
  if (xi >= 0 && rows.some((r) => r[xi] === null || toX(r[xi]) === null)) xi = -1;
  if (xi < 0) {
    kind = "categories";
    xi = columns.findIndex((c, i) => !numeric.includes(i));
  }
  const ys = numeric.filter((i) => i !== xi).slice(0, 8);
  if (ys.length === 0) return null;
  const num = (v) => (v === null || v === undefined || v === "" ? null : Number(v));
  if (kind !== "categories") {
    const xs = [...new Set(rows.map((r) => toX(r[xi])))].sort((a, b) => a - b);
    if (xs.length === rows.length) {
      const order = rows.map((r, i) => [toX(r[xi]), i]).sort((a, b) => a[0] - b[0]);
      return {
        kind,
        x: order.map(([t]) => t),
        series: ys.map((i) => ({ label: columns[i].name, values: order.map(([, k]) => num(rows[k][i])) })),
        labels: [],
      };
    }
    // Several rows per instant: one series per value of the first other column (a currency,
    // a page), as `day, currency, revenue` reads.
    const gi = columns.findIndex((c, i) => i !== xi && !numeric.includes(i));
    if (gi >= 0) {
      const at = new Map(xs.map((t, k) => [t, k]));
      const series = new Map();
      for (const r of rows) {
        const group = r[gi] === null ? "NULL" : String(r[gi]);
        for (const i of ys) {
          const label = ys.length === 1 ? group : `${group} ${columns[i].name}`;
          if (!series.has(label)) {
            if (series.size >= 8) continue;
            series.set(label, xs.map(() => null));
          }
          const values = series.get(label);
          const k = at.get(toX(r[xi]));
          values[k] = (values[k] ?? 0) + (num(r[i]) ?? 0);
        }
      }
      return { kind, x: xs, series: [...series].map(([label, values]) => ({ label, values, spanGaps: true })), labels: [] };
    }
    kind = "categories";
  }
  const labels = rows.map((r, k) => (xi >= 0 ? (r[xi] === null ? "NULL" : typeof r[xi] === "object" ? JSON.stringify(r[xi]) : String(r[xi])) : `row ${k + 1}`));
  return {
    kind,
    x: rows.map((_, k) => k),
    series: ys.map((i) => ({ label: columns[i].name, values: rows.map((r) => num(r[i])), bars: ys.length === 1 })),
    labels,
  };
}
