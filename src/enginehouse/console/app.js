// The console's shell: views by URL hash, the key dialog, errors in one notice, and the poll loop.
// Cost to the server: the shown view polls what it draws at most once every 2 s, and only while the
// page is visible (document.visibilityState); a hidden tab asks nothing.

import { ApiError, getJSON, setApiKey, apiKey, whenUnauthorized } from "./api.js";
import * as bench from "./bench.js";
import * as chat from "./chat.js";
import { $, fill } from "./dom.js";
import * as loaded from "./loaded.js";
import * as logs from "./logs.js";
import * as metrics from "./metrics.js";
import * as models from "./models.js";
import * as routing from "./routing.js";

const VIEWS = { models, loaded, metrics, chat, logs, routing, bench };
const POLL_MS = 2000;
let view = null;
let name = "";
let timer = null;
let polling = false;

function notice(text) {
  const el = $("#notice");
  el.hidden = !text;
  el.textContent = text || "";
}

function explain(err) {
  if (err instanceof ApiError) {
    if (err.status === 401) return `API key refused: ${err.message}`;
    if (err.status === 403) return `Refused by the server (403): ${err.message}`;
    return `${err.status}: ${err.message}`;
  }
  return `The server did not answer: ${err.message}`;
}

async function poll() {
  clearTimeout(timer);
  timer = null;
  if (document.visibilityState !== "visible" || polling) return;
  polling = true;
  try {
    if (view && view.refresh) await view.refresh();
    notice("");
  } catch (err) {
    notice(explain(err));
  } finally {
    polling = false;
    if (document.visibilityState === "visible") timer = setTimeout(poll, POLL_MS);
  }
}

async function show(next) {
  if (!VIEWS[next]) next = "models";
  if (view && view.leave && next !== name) view.leave();
  name = next;
  view = VIEWS[next];
  for (const [n] of Object.entries(VIEWS)) $(`#view-${n}`).hidden = n !== next;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === next);
  document.title = `enginehouse · ${next}`;
  try {
    if (view.enter) await view.enter();
  } catch (err) {
    notice(explain(err));
  }
  await poll();
}

function askForKey(message) {
  const dialog = $("#key-dialog");
  $("#key-message").textContent = message;
  $("#key-input").value = "";
  if (!dialog.open) dialog.showModal();
}

whenUnauthorized((err) => {
  askForKey(
    apiKey()
      ? `The server refused this key (401): ${err.message}. Enter the server's ENGINEHOUSE_API_KEY.`
      : "This server wants an API key (ENGINEHOUSE_API_KEY). It is kept for this tab only.",
  );
  $("#change-key").hidden = false;
});

$("#key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  setApiKey($("#key-input").value.trim());
  $("#key-dialog").close();
  show(name);
});
$("#change-key").addEventListener("click", () => askForKey("Enter the server's API key."));

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") poll();
  else {
    clearTimeout(timer);
    timer = null;
  }
});
window.addEventListener("hashchange", () => show(location.hash.slice(1)));

for (const v of Object.values(VIEWS)) if (v.init) v.init();

getJSON("/api/version")
  .then((v) => fill($("#server"), `v${v.version} · node ${v.node}`))
  .catch((err) => notice(explain(err)));
show(location.hash.slice(1) || "models");
