// Runner logs, tailed: the first read gives the last lines and an offset; each poll asks only for what
// was appended after it (GET /api/logs?model=NAME&since=OFFSET).

import { getJSON } from "./api.js";
import { $, fill, h } from "./dom.js";

const MAX_LINES = 2000;
let current = "";
let offset = null;

export async function enter() {
  const { logs } = await getJSON("/api/logs");
  const select = $("#log-name");
  const keep = current || select.value;
  fill(select, logs.length ? logs.map((l) => h("option", { value: l.name }, l.name)) : [h("option", { value: "" }, "no runner has logged yet")]);
  if (logs.some((l) => l.name === keep)) select.value = keep;
}

export async function refresh() {
  const name = $("#log-name").value;
  if (!name) {
    await enter();
    return;
  }
  if (name !== current) {
    current = name;
    offset = null;
    fill($("#log-lines"));
  }
  if (offset !== null && !$("#log-follow").checked) return;
  const q = new URLSearchParams({ model: name });
  if (offset !== null) q.set("since", String(offset));
  const chunk = await getJSON(`/api/logs?${q}`);
  if (name !== current) return; // switched while asking
  offset = chunk.offset;
  if (!chunk.lines.length) return;
  const pre = $("#log-lines");
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.append(document.createTextNode(`${chunk.lines.join("\n")}\n`));
  const text = pre.textContent;
  const lines = text.split("\n");
  if (lines.length > MAX_LINES) pre.textContent = lines.slice(-MAX_LINES).join("\n");
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

export function init() {
  $("#log-name").addEventListener("change", () => refresh());
}
