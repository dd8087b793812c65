// What is loaded (/api/ps) drawn against the memory budget (/api/status): estimated and measured
// memory, slots busy and free, the queue, keep_alive countdowns; cooldowns and pools (/api/ps extras).

import { getJSON, postJSON } from "./api.js";
import { budgetBar, legend } from "./charts.js";
import { $, bytes, fill, h, seconds, table, when } from "./dom.js";

let skew = 0; // server clock - ours, in seconds: countdowns use the server's expiry times
let runners = [];
let ticker = null;

export async function refresh() {
  const [status, ps] = await Promise.all([getJSON("/api/status"), getJSON("/api/ps")]);
  skew = status.now - Date.now() / 1000;
  runners = status.runners;
  drawBudget(status);
  drawRunners(status.runners, ps.models, status.max_queue);
  drawCooldowns(ps.cooled_down || []);
  drawPools(ps.pools || []);
}

function drawBudget(status) {
  const b = status.budget;
  const segs = status.runners.map((r) => ({
    label: `${r.name}: holds ${bytes(r.resident_bytes)}, estimated ${bytes(r.estimated_bytes)}`,
    value: r.resident_bytes,
    estimate: r.estimated_bytes,
  }));
  const held = status.runners.reduce((a, r) => a + r.resident_bytes, 0);
  const facts = b
    ? `runners hold ${bytes(held)} of a ${bytes(b.limit_bytes)} limit` +
      ` (machine free ${bytes(b.free_bytes)}, reserve ${bytes(b.reserve_bytes)}` +
      `${b.cap_bytes ? `, cap ${bytes(b.cap_bytes)}` : ", no cap"})`
    : `runners hold ${bytes(held)}; no memory budget`;
  fill(
    $("#budget"),
    h("p", { id: "budget-facts" }, facts),
    budgetBar(segs, b ? b.limit_bytes : 0, { title: "memory held by runners against the limit" }),
    segs.length ? legend(status.runners.map((r) => r.name)) : h("p", { class: "muted" }, "nothing loaded"),
  );
}

function countdown(r) {
  if (r.expires_at === null || r.expires_at === undefined) {
    if (r.keep_alive === null) return "kept loaded (forever)";
    return r.busy ? "in use" : "—";
  }
  return `unloads in ${seconds(r.expires_at - (Date.now() / 1000 + skew))}`;
}

function slotBoxes(r) {
  const boxes = [];
  for (let i = 0; i < r.slots; i += 1) boxes.push(h("i", { class: i < r.busy ? "slot busy" : "slot" }));
  return h("span", { class: "slots", title: `${r.busy} busy, ${r.slots - r.busy} free` }, boxes);
}

function drawRunners(list, psModels, maxQueue) {
  const byName = Object.fromEntries(psModels.map((m) => [m.name, m]));
  const cards = list.map((r) => {
    const p = byName[r.name] || {};
    return h(
      "div",
      { class: "card runner", "data-model": r.name },
      h(
        "div",
        { class: "row" },
        h("strong", {}, r.name),
        h("span", { class: `state ${r.state}` }, r.state),
        h("span", { class: "muted" }, `${r.engine}${p.pid ? `, pid ${p.pid}` : ""}`),
        h("button", { type: "button", onclick: () => unload(r.name) }, "Unload"),
      ),
      table(
        ["estimated", "measured (peak)", "resident now", "slots", "queued", "keep_alive", "context/slot", "restarts"],
        [
          [
            bytes(r.estimated_bytes),
            r.measured_bytes ? bytes(r.measured_bytes) : "after its first request",
            bytes(r.resident_bytes),
            h("span", {}, slotBoxes(r), ` ${r.busy}/${r.slots} busy`),
            `${r.queued}${maxQueue !== null && maxQueue !== undefined ? ` of ${maxQueue}` : ""}`,
            h("span", { class: "countdown", "data-model": r.name }, countdown(r)),
            p.context_length || "—",
            p.restarts ? `${p.restarts} (${p.restart_cause || ""})` : "0",
          ],
        ],
      ),
    );
  });
  fill($("#runners"), cards.length ? cards : [h("p", { class: "muted", id: "nothing-loaded" }, "No model is loaded.")]);
}

async function unload(name) {
  // Ollama's contract: an empty generate with keep_alive 0 unloads now
  await postJSON("/api/generate", { model: name, keep_alive: 0 });
  await refresh();
}

function drawCooldowns(cooled) {
  fill(
    $("#cooldowns"),
    cooled.length
      ? table(["name", "until", "why"], cooled.map((c) => [c.name, when(c.until), c.reason || ""]))
      : h("p", { class: "muted" }, "Nothing is cooled down."),
  );
}

function drawPools(pools) {
  fill(
    $("#pools"),
    pools.length
      ? pools.map((p) =>
          h(
            "div",
            { class: "card" },
            h("strong", {}, `${p.model} (${p.balance})`),
            table(
              ["replica", "node", "in flight", "draining", "health"],
              p.replicas.map((r) => [
                r.name,
                r.node,
                r.in_flight,
                r.draining ? "yes" : "no",
                r.cooled_until ? `cooled down until ${when(r.cooled_until)}` : "healthy",
              ]),
            ),
          ),
        )
      : h("p", { class: "muted" }, "No replica pool has been used."),
  );
}

// The countdowns move every second between polls, without asking the server.
export function enter() {
  if (ticker) return;
  ticker = setInterval(() => {
    for (const el of document.querySelectorAll(".countdown")) {
      const r = runners.find((x) => x.name === el.dataset.model);
      if (r) el.textContent = countdown(r);
    }
  }, 1000);
}

export function leave() {
  clearInterval(ticker);
  ticker = null;
}
