// The chat playground: any model, the router (auto) included, on either door, streamed; the answer's
// route headers (x-enginehouse-route, x-enginehouse-model) say what the gateway decided.

import { getJSON, ndjson, request, sse } from "./api.js";
import { $, fill, h } from "./dom.js";

const history = []; // {role, content}
let controller = null;

export async function enter() {
  const select = $("#chat-model");
  const keep = select.value;
  const tags = await getJSON("/api/tags");
  const names = ["auto", ...tags.models.map((m) => m.name)];
  fill(select, names.map((n) => h("option", { value: n }, n === "auto" ? "auto (router)" : n)));
  if (names.includes(keep)) select.value = keep;
  else if (names.length > 1) select.value = names[1];
}

function bubble(role, text) {
  const el = h("div", { class: `msg ${role}` }, h("b", {}, role), h("span", { class: "text" }, text));
  $("#chat-log").append(el);
  el.scrollIntoView({ block: "end" });
  return el.querySelector(".text");
}

async function send(ev) {
  ev.preventDefault();
  const input = $("#chat-input");
  const text = input.value.trim();
  if (!text || controller) return;
  input.value = "";
  history.push({ role: "user", content: text });
  bubble("user", text);
  const out = bubble("assistant", "");
  out.parentElement.classList.add("streaming");
  const model = $("#chat-model").value;
  const door = $("#chat-door").value;
  const max = Number($("#chat-max").value) || 128;
  controller = new AbortController();
  $("#chat-send").disabled = true;
  $("#chat-stop").disabled = false;
  const started = performance.now();
  let first = null;
  let chunks = 0;
  let answer = "";
  let summary = "";
  try {
    const resp =
      door === "ollama"
        ? await request("/api/chat", {
            method: "POST",
            body: { model, messages: history, stream: true, options: { num_predict: max } },
            signal: controller.signal,
          })
        : await request("/v1/chat/completions", {
            method: "POST",
            body: { model, messages: history, stream: true, max_tokens: max },
            signal: controller.signal,
          });
    const route = resp.headers.get("x-enginehouse-route");
    const served = resp.headers.get("x-enginehouse-model");
    const fallback = resp.headers.get("x-enginehouse-fallback");
    fill(
      $("#chat-route"),
      h(
        "span",
        { id: "route-headers" },
        `answered by ${served || model}`,
        route ? ` · route ${route}` : "",
        fallback ? ` · tried ${fallback}` : "",
      ),
    );
    const events = door === "ollama" ? ndjson(resp) : sse(resp);
    for await (const e of events) {
      const piece = door === "ollama" ? (e.message && e.message.content) || "" : (e.choices && e.choices[0] && e.choices[0].delta && e.choices[0].delta.content) || "";
      if (piece) {
        if (first === null) first = performance.now();
        chunks += 1;
        answer += piece;
        out.textContent = answer;
      }
      if (door === "ollama" && e.done && e.eval_count && e.eval_duration) {
        summary = `${e.eval_count} tokens, ${(e.eval_count / (e.eval_duration / 1e9)).toFixed(1)} tok/s`;
      }
    }
    history.push({ role: "assistant", content: answer });
  } catch (err) {
    if (err.name === "AbortError") {
      summary = "stopped";
      if (answer) history.push({ role: "assistant", content: answer });
    } else {
      out.parentElement.classList.add("error");
      out.textContent = answer ? `${answer}\n[${err.message}]` : err.message;
      history.pop(); // the question goes again with the next one
    }
  } finally {
    const ttft = first === null ? "" : `first token after ${Math.round(first - started)} ms`;
    const stats = [ttft, summary || (chunks ? `${chunks} chunks` : "")].filter(Boolean).join(", ");
    out.parentElement.classList.remove("streaming");
    out.parentElement.append(h("small", { class: "muted" }, stats));
    controller = null;
    $("#chat-send").disabled = false;
    $("#chat-stop").disabled = true;
  }
}

export function init() {
  $("#chat-form").addEventListener("submit", send);
  $("#chat-stop").addEventListener("click", () => controller && controller.abort());
  $("#chat-clear").addEventListener("click", () => {
    history.length = 0;
    fill($("#chat-log"));
    fill($("#chat-route"));
  });
  $("#chat-input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      $("#chat-form").requestSubmit();
    }
  });
}
