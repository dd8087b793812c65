// Routing: the last decisions with their reasons (GET /api/route/recent), and what a router would do
// with a prompt, without generating (POST /api/route).

import { getJSON, postJSON } from "./api.js";
import { $, fill, h, table } from "./dom.js";

function skipped(d) {
  return (d.skipped || []).map((s) => `${s.candidate} (${s.why})`).join("; ");
}

export async function refresh() {
  const { decisions } = await getJSON("/api/route/recent?limit=50");
  const rows = decisions.map((d) =>
    h(
      "tr",
      {},
      [
        new Date(d.at * 1000).toLocaleTimeString(),
        d.asked,
        d.router ? `${d.router}/${d.route}` : "",
        d.tier || "",
        d.chosen || "none",
        (d.order || []).join(" → "),
        d.why || "",
        skipped(d),
      ].map((c) => h("td", {}, c)),
    ),
  );
  fill($("#route-table tbody"), rows.length ? rows : [h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No routed request yet (ask `auto` in the chat)."))]);
}

async function ask(ev) {
  ev.preventDefault();
  const box = $("#route-answer");
  try {
    const d = await postJSON("/api/route", { router: $("#route-router").value || "auto", prompt: $("#route-prompt").value });
    const scores = d.scores ? Object.entries(d.scores).map(([k, v]) => `${k} ${Number(v).toFixed(2)}`).join(", ") : "";
    fill(
      box,
      table(
        ["route", "tier", "chosen", "why", "scores", "costs"],
        [[
          d.router ? `${d.router}/${d.route}` : "(not a router)",
          d.tier || "",
          d.chosen || "none",
          d.why || "",
          scores,
          Object.entries(d.costs || {}).map(([n, c]) => `${n}: ${c.loaded ? `loaded, ${c.free_slots} free` : "not loaded"}, ${c.cost_s} s`).join("; "),
        ]],
      ),
    );
  } catch (err) {
    fill(box, h("p", { class: "error" }, err.message));
  }
  await refresh();
}

export function init() {
  $("#route-form").addEventListener("submit", ask);
}
