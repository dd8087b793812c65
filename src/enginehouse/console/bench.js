// Bench reports (`enginehouse bench --json HOME/bench/NAME.json`): listed, opened, plotted as the HTML
// report does (output throughput and p99 TTFT against load, one line per target), in inline SVG.

import { getJSON } from "./api.js";
import { legend, lineChart } from "./charts.js";
import { $, fill, h, table, when } from "./dom.js";

let opened = "";
let listed = "";

export async function refresh() {
  const { reports } = await getJSON("/api/bench");
  const key = JSON.stringify(reports);
  if (key === listed) return; // unchanged: keep the table (and a selection) as it is
  listed = key;
  const rows = reports.map((r) =>
    h(
      "tr",
      { class: r.name === opened ? "selected" : "", "data-report": r.name, onclick: () => open(r.name) },
      h("td", {}, h("a", { href: "#bench" }, r.name)),
      h("td", {}, r.model || ""),
      h("td", {}, r.mode || ""),
      h("td", {}, (r.levels || []).join(", ")),
      h("td", {}, (r.targets || []).join(", ")),
      h("td", {}, when(r.modified_at)),
    ),
  );
  fill($("#bench-table tbody"), rows.length ? rows : [h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No report saved yet."))]);
}

function num(v, digits = 1) {
  return v === null || v === undefined ? "—" : Number(v).toFixed(digits);
}

async function open(name) {
  opened = name;
  for (const tr of document.querySelectorAll("#bench-table tbody tr")) tr.classList.toggle("selected", tr.dataset.report === name);
  const box = $("#bench-report");
  let report;
  try {
    report = await getJSON(`/api/bench/${encodeURIComponent(name)}`);
  } catch (err) {
    fill(box, h("p", { class: "error" }, err.message));
    return;
  }
  const results = (report.results || []).slice().sort((a, b) => a.level - b.level);
  const targets = (report.targets || []).map((t) => t.label);
  const levels = report.levels || [...new Set(results.map((r) => r.level))];
  const line = (field) =>
    targets.map((label) => ({
      label,
      points: results.filter((r) => r.target === label && r.completed).map((r) => [r.level, field(r)]),
    }));
  const xLabel = report.mode === "concurrency" ? "concurrency (requests in flight)" : "request rate (req/s)";
  const opts = { xTicks: levels, xFormat: String, xLabel, dots: true, width: 440, height: 230 };
  const rows = results.map((r) => {
    if (r.skipped) return [r.target, r.level, "skipped", "", "", "", "", "", r.skipped];
    const t = r.ttft_ms || {};
    return [r.target, r.level, r.completed, r.errors, num(r.request_throughput, 2), num(r.output_throughput), num(t.p50), num(t.p99), num((r.tpot_ms || {}).p50)];
  });
  fill(
    box,
    h("h3", {}, name),
    h("p", { class: "muted" }, [report.model, report.workload && report.workload.description, report.command].filter(Boolean).join(" · ")),
    h(
      "div",
      { class: "charts" },
      lineChart(line((r) => r.output_throughput), { ...opts, title: "output throughput", unit: "tok/s" }),
      lineChart(line((r) => (r.ttft_ms || {}).p99), { ...opts, title: "time to first token, p99", unit: "ms" }),
    ),
    legend(targets),
    table(["target", report.mode === "concurrency" ? "conc" : "rate", "ok", "err", "req/s", "tok/s", "TTFT p50", "TTFT p99", "TPOT p50"], rows),
    (report.notes || []).length ? h("ul", {}, report.notes.map((n) => h("li", {}, n))) : null,
  );
}
