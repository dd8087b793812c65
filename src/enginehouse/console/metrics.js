// Live output tokens/s and TTFT per model, from the gateway's own /metrics, sampled each poll (2 s) while
// shown. A rate is the difference of two samples; TTFT is the mean of the requests that ended between them.

import { getText } from "./api.js";
import { legend, lineChart, parseMetrics } from "./charts.js";
import { $, fill, h } from "./dom.js";

const KEEP = 90; // samples: three minutes at one per 2 s
const samples = []; // [{t, tokens: {model: n}, ttftSum: {model: s}, ttftCount: {model: n}}]

function sample(text) {
  const s = { t: Date.now() / 1000, tokens: {}, ttftSum: {}, ttftCount: {} };
  for (const m of parseMetrics(text)) {
    const model = m.labels.model;
    if (!model) continue;
    if (m.name === "enginehouse_output_tokens_total") s.tokens[model] = (s.tokens[model] || 0) + m.value;
    else if (m.name === "enginehouse_time_to_first_token_seconds_sum") s.ttftSum[model] = (s.ttftSum[model] || 0) + m.value;
    else if (m.name === "enginehouse_time_to_first_token_seconds_count") s.ttftCount[model] = (s.ttftCount[model] || 0) + m.value;
  }
  return s;
}

export async function refresh() {
  samples.push(sample(await getText("/metrics")));
  if (samples.length > KEEP) samples.shift();
  draw();
}

function draw() {
  const models = [...new Set(samples.flatMap((s) => [...Object.keys(s.tokens), ...Object.keys(s.ttftCount)]))].sort();
  const now = Date.now() / 1000;
  const tps = [];
  const ttft = [];
  for (const model of models) {
    const a = [];
    const b = [];
    for (let i = 1; i < samples.length; i += 1) {
      const p = samples[i - 1];
      const c = samples[i];
      const dt = c.t - p.t;
      const x = c.t - now;
      if (dt > 10) {
        a.push([x, null]); // the view was hidden: no rate across the gap
        b.push([x, null]);
        continue;
      }
      const dTok = (c.tokens[model] || 0) - (p.tokens[model] || 0);
      a.push([x, dTok >= 0 ? dTok / dt : null]);
      const dn = (c.ttftCount[model] || 0) - (p.ttftCount[model] || 0);
      const ds = (c.ttftSum[model] || 0) - (p.ttftSum[model] || 0);
      b.push([x, dn > 0 ? (ds / dn) * 1000 : null]);
    }
    tps.push({ label: model, points: a });
    ttft.push({ label: model, points: b });
  }
  // the span sampled so far, up to three minutes: a short history fills the chart too
  const span = samples.length ? Math.min(KEEP * 2, Math.max(20, Math.ceil((now - samples[0].t) / 10) * 10)) : KEEP * 2;
  const ticks = [-span, Math.round(-span / 1.5), Math.round(-span / 3), 0];
  const opts = { xRange: [-span, 0], xTicks: ticks, xFormat: (t) => (t ? `${t} s` : "now") };
  const totals = models.map((m) => {
    const last = samples[samples.length - 1];
    return h("li", {}, `${m}: ${last.tokens[m] || 0} output tokens, ${last.ttftCount[m] || 0} timed requests since start`);
  });
  fill(
    $("#charts"),
    h(
      "div",
      { class: "charts" },
      lineChart(tps, { ...opts, title: "output tokens/s", unit: "tok/s" }),
      lineChart(ttft, { ...opts, title: "time to first token, mean", unit: "ms", dots: true }),
    ),
    models.length ? legend(models) : h("p", { class: "muted" }, "No generation yet: try the chat."),
    h("ul", { class: "muted", id: "metric-totals" }, totals),
  );
}
