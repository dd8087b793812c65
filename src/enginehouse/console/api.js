// The API as the page calls it: same origin, the key (when the server wants one) as a Bearer header.
// The key lives in sessionStorage: asked once per tab, gone when the tab closes.

const KEY = "enginehouse.apiKey";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setApiKey(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

let onUnauthorized = () => {};
export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

function headers(json) {
  const h = {};
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function errorOf(resp) {
  let message = resp.statusText || `HTTP ${resp.status}`;
  try {
    const body = await resp.json();
    const e = body.error;
    message = typeof e === "string" ? e : (e && e.message) || message;
  } catch {
    // not JSON: keep the status text
  }
  return new ApiError(resp.status, message);
}

// fetch + the key + errors as ApiError (401 also asks for a key). Returns the Response.
export async function request(path, { method = "GET", body, signal } = {}) {
  const json = body !== undefined;
  const resp = await fetch(path, {
    method,
    headers: headers(json),
    body: json ? JSON.stringify(body) : undefined,
    signal,
    cache: "no-store",
  });
  if (!resp.ok) {
    const err = await errorOf(resp);
    if (resp.status === 401) onUnauthorized(err);
    throw err;
  }
  return resp;
}

export async function getJSON(path) {
  return (await request(path)).json();
}

export async function postJSON(path, body, method = "POST") {
  const resp = await request(path, { method, body });
  const type = resp.headers.get("content-type") || "";
  return type.includes("json") ? resp.json() : null;
}

export async function getText(path) {
  return (await request(path)).text();
}

// Lines of a streamed body as they arrive (NDJSON, or SSE's "data: " lines).
export async function* lines(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, nl).replace(/\r$/, "");
      buffered = buffered.slice(nl + 1);
      if (line) yield line;
    }
  }
  buffered += decoder.decode();
  if (buffered.trim()) yield buffered;
}

// Ollama's NDJSON: one object per line; an {"error"} line after the first is a failure mid-stream.
export async function* ndjson(resp) {
  for await (const line of lines(resp)) {
    const obj = JSON.parse(line);
    if (obj.error) throw new ApiError(resp.status, obj.error);
    yield obj;
  }
}

// OpenAI's SSE: "data: {...}" events ending with "data: [DONE]".
export async function* sse(resp) {
  for await (const line of lines(resp)) {
    if (!line.startsWith("data:")) continue;
    const data = line.slice(5).trim();
    if (data === "[DONE]") return;
    const obj = JSON.parse(data);
    if (obj.error) throw new ApiError(resp.status, obj.error.message || String(obj.error));
    yield obj;
  }
}
