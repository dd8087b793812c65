// Small inline-SVG charts (no library) and a Prometheus text parser for the gateway's own /metrics.

const NS = "http://www.w3.org/2000/svg";
export const COLORS = ["#2f6fde", "#d9480f", "#2b8a3e", "#9c36b5", "#e67700", "#0b7285", "#c2255c", "#5c940d"];

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function fmt(v) {
  if (v === 0) return "0";
  if (Math.abs(v) >= 100) return v.toFixed(0);
  if (Math.abs(v) >= 1) return v.toFixed(1);
  return v.toPrecision(2);
}

// series: [{label, points: [[x, y|null], ...]}]; a null y breaks the line.
// opts: {title, unit, width, height, xLabel, xTicks: [x...], xFormat}
export function lineChart(series, opts = {}) {
  const W = opts.width || 460;
  const H = opts.height || 200;
  const m = { l: 48, r: 12, t: 24, b: 34 };
  const all = series.flatMap((se) => se.points.filter((p) => p[1] !== null && p[1] !== undefined));
  const xs = all.map((p) => p[0]);
  let x0 = xs.length ? Math.min(...xs) : 0;
  let x1 = xs.length ? Math.max(...xs) : 1;
  if (opts.xRange) [x0, x1] = opts.xRange;
  if (x1 === x0) x1 = x0 + 1;
  const yMax = niceMax(Math.max(0, ...all.map((p) => p[1])));
  const X = (x) => m.l + ((x - x0) / (x1 - x0)) * (W - m.l - m.r);
  const Y = (y) => H - m.b - (y / yMax) * (H - m.t - m.b);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img" });
  svg.append(s("title", {}, opts.title || "chart"));
  svg.append(s("text", { x: m.l, y: 15, class: "chart-title" }, `${opts.title || ""}${opts.unit ? ` (${opts.unit})` : ""}`));
  for (let i = 0; i <= 4; i += 1) {
    const v = (yMax * i) / 4;
    svg.append(s("line", { x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v), class: "grid" }));
    svg.append(s("text", { x: m.l - 4, y: Y(v) + 4, class: "tick", "text-anchor": "end" }, fmt(v)));
  }
  const ticks = opts.xTicks || [x0, x1];
  for (const t of ticks) {
    svg.append(s("text", { x: X(t), y: H - m.b + 14, class: "tick", "text-anchor": "middle" }, opts.xFormat ? opts.xFormat(t) : fmt(t)));
  }
  if (opts.xLabel) svg.append(s("text", { x: (W + m.l) / 2, y: H - 4, class: "tick", "text-anchor": "middle" }, opts.xLabel));
  series.forEach((se, i) => {
    const color = COLORS[i % COLORS.length];
    let d = "";
    let pen = false;
    for (const [x, y] of se.points) {
      if (y === null || y === undefined) {
        pen = false;
        continue;
      }
      d += `${pen ? "L" : "M"}${X(x).toFixed(1)},${Y(y).toFixed(1)}`;
      pen = true;
    }
    if (d) svg.append(s("path", { d, fill: "none", stroke: color, "stroke-width": 2 }));
    for (const [x, y] of se.points) {
      if (y !== null && y !== undefined && (opts.dots || se.points.length < 12)) {
        svg.append(s("circle", { cx: X(x), cy: Y(y), r: 3, fill: color }));
      }
    }
  });
  if (!all.length) svg.append(s("text", { x: W / 2, y: H / 2, class: "tick", "text-anchor": "middle" }, "no data yet"));
  return svg;
}

export function legend(labels) {
  const box = document.createElement("div");
  box.className = "legend";
  labels.forEach((label, i) => {
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.className = `swatch c${i % COLORS.length}`;
    item.append(swatch, document.createTextNode(label));
    box.append(item);
  });
  return box;
}

// One horizontal bar of segments against a limit: [{label, value, kind}] in bytes.
export function budgetBar(segments, limit, opts = {}) {
  const W = opts.width || 900;
  const H = 46;
  const total = Math.max(limit || 0, segments.reduce((a, g) => a + Math.max(g.value, g.estimate || 0), 0), 1);
  const X = (v) => (v / total) * (W - 2) + 1;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "bar", role: "img" });
  svg.append(s("title", {}, opts.title || "memory"));
  svg.append(s("rect", { x: 1, y: 8, width: W - 2, height: 24, class: "bar-bg" }));
  let at = 0;
  segments.forEach((g, i) => {
    const w = X(at + g.value) - X(at);
    const rect = s("rect", { x: X(at), y: 8, width: Math.max(w, 1), height: 24, fill: COLORS[i % COLORS.length] });
    rect.append(s("title", {}, g.label));
    svg.append(rect);
    if (g.estimate && g.estimate > g.value) {
      // the estimate beyond what it holds now: room the runner may still grow into
      const ew = X(at + g.estimate) - X(at + g.value);
      svg.append(s("rect", { x: X(at + g.value), y: 8, width: ew, height: 24, class: "bar-est", stroke: COLORS[i % COLORS.length] }));
    }
    at += Math.max(g.value, g.estimate || 0);
  });
  if (limit) {
    svg.append(s("line", { x1: X(limit), x2: X(limit), y1: 2, y2: 38, class: "bar-limit" }));
    svg.append(s("text", { x: Math.min(X(limit), W - 4), y: 45, class: "tick", "text-anchor": "end" }, "limit"));
  }
  return svg;
}

// Prometheus text exposition -> [{name, labels: {...}, value}] (the gateway's own metrics only).
export function parseMetrics(text, prefix = "enginehouse_") {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line.startsWith(prefix)) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      for (const lm of m[3].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[lm[1]] = lm[2].replace(/\\(.)/g, "$1");
    }
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}
