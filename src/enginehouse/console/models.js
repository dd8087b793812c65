// Models in the store: list (/api/tags + engines from /api/status), details (/api/show), pull with
// live progress (/api/pull NDJSON), copy (/api/copy), delete (/api/delete, after a confirmation).

import { getJSON, ndjson, postJSON, request } from "./api.js";
import { $, bytes, fill, h, table, when } from "./dom.js";

let selected = null;
let engines = {};
let pulling = false;

export async function refresh() {
  const [tags, status] = await Promise.all([getJSON("/api/tags"), getJSON("/api/status").catch(() => null)]);
  if (status) engines = status.engines || {};
  const body = $("#models-table tbody");
  const rows = tags.models.map((m) => {
    const d = m.details || {};
    const row = h(
      "tr",
      { class: m.name === selected ? "selected" : "", "data-model": m.name, onclick: () => select(m.name) },
      h("td", {}, h("a", { href: "#models" }, m.name)),
      h("td", { class: "num" }, bytes(m.size)),
      h("td", {}, d.format || ""),
      h("td", {}, d.family || ""),
      h("td", {}, d.parameter_size || ""),
      h("td", {}, d.quantization_level || ""),
      h("td", {}, engines[m.name] || ""),
      h("td", {}, when(m.modified_at)),
    );
    return row;
  });
  fill(body, rows.length ? rows : [h("tr", {}, h("td", { colspan: 8, class: "muted" }, "no models yet: pull one"))]);
}

async function select(name) {
  selected = name;
  for (const tr of document.querySelectorAll("#models-table tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.model === name);
  }
  const box = $("#model-detail");
  fill(box, h("p", { class: "muted" }, `loading ${name}…`));
  let show;
  try {
    show = await postJSON("/api/show", { model: name });
  } catch (err) {
    fill(box, h("p", { class: "error" }, `${name}: ${err.message}`));
    return;
  }
  const info = show.model_info || {};
  const arch = info["general.architecture"];
  const facts = [
    ["capabilities", (show.capabilities || []).join(", ")],
    ["architecture", arch || ""],
    ["context length", (arch && info[`${arch}.context_length`]) || ""],
    ["engine", engines[name] || info.engine || ""],
  ];
  const copyInput = h("input", { placeholder: "new name", id: "copy-name", required: true });
  fill(
    box,
    h("h3", {}, name),
    table(["", ""], facts),
    h(
      "form",
      {
        class: "row",
        id: "copy-form",
        onsubmit: async (ev) => {
          ev.preventDefault();
          await act(() => postJSON("/api/copy", { source: name, destination: copyInput.value }), `copied to ${copyInput.value}`);
        },
      },
      copyInput,
      h("button", { type: "submit" }, "Copy"),
      h(
        "button",
        {
          type: "button",
          class: "danger",
          id: "delete-model",
          onclick: async () => {
            if (!window.confirm(`Delete ${name}? Its blobs stay if another model uses them.`)) return;
            await act(() => postJSON("/api/delete", { model: name }, "DELETE"), `deleted ${name}`);
            selected = null;
            fill(box);
          },
        },
        "Delete…",
      ),
    ),
    h("h4", {}, "Modelfile"),
    h("pre", { class: "modelfile" }, show.modelfile || ""),
  );
}

async function act(fn, done) {
  const note = $("#pull-progress");
  try {
    await fn();
    fill(note, h("p", { class: "ok" }, done));
  } catch (err) {
    fill(note, h("p", { class: "error" }, err.message));
  }
  await refresh();
}

async function pull(ev) {
  ev.preventDefault();
  if (pulling) return;
  const name = $("#pull-name").value.trim();
  if (!name) return;
  pulling = true;
  const box = $("#pull-progress");
  const status = h("span", { id: "pull-status" }, "starting…");
  const layers = h("div", { id: "pull-layers" });
  const rows = {}; // one progress bar per layer (blob digest), as Ollama's CLI shows them
  fill(box, h("div", { class: "row" }, h("strong", {}, `pull ${name}:`), status), layers);
  try {
    const resp = await request("/api/pull", {
      method: "POST",
      body: { model: name, insecure: $("#pull-insecure").checked, stream: true },
    });
    for await (const ev of ndjson(resp)) {
      status.textContent = ev.status || "";
      if (ev.digest && ev.total) {
        let row = rows[ev.digest];
        if (!row) {
          const bar = h("progress", { max: ev.total, value: 0 });
          const numbers = h("span", { class: "muted" });
          row = rows[ev.digest] = { bar, numbers };
          layers.append(h("div", { class: "row layer", "data-digest": ev.digest }, h("code", {}, ev.digest.slice(0, 19)), bar, numbers));
        }
        row.bar.max = ev.total;
        row.bar.value = ev.completed || 0;
        row.numbers.textContent = `${bytes(ev.completed || 0)} / ${bytes(ev.total)}`;
      }
    }
    if (status.textContent === "success") status.classList.add("ok");
  } catch (err) {
    status.textContent = `failed: ${err.message}`;
    status.classList.add("error");
  } finally {
    pulling = false;
  }
  await refresh();
}

export function init() {
  $("#pull-form").addEventListener("submit", pull);
}
