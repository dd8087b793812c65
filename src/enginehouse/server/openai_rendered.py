"""``/v1/chat/completions`` for a model with an Ollama (Go) template: rendered here, completed raw.

The pass-through in ``openai_routes`` would let llama-server apply the GGUF's own template instead of the
model's, so the two doors would prompt the model differently. Here the prompt is rendered as on Ollama's
door and the completion stream is re-framed as chat chunks (see ``api.rendered_chat``).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from enginehouse.api.rendered_chat import ChatChunks, completion_body
from enginehouse.engines.upstream import raise_for_engine, sse_events
from enginehouse.errors import EnginehouseError, openai_error_body
from enginehouse.sched.scheduler import Lease
from enginehouse.server.app_state import FAILED_MID_STREAM, GATEWAY, engine_headers, json_response
from enginehouse.server.caching import open_stream
from enginehouse.server.observe import record_openai


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def rendered_chat(
    request: web.Request, lease: Lease, data: dict[str, Any], template: str, started: float, asked: str
) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    engine = lease.model.engine
    choice = gw.scheduler.entry(lease.model.name).tool_choice
    body, fmt, forced = completion_body(data, engine.served_model, template, None, choice)
    options = data.get("stream_options") or {}
    chunks = ChatChunks(asked, fmt, forced, bool(options.get("include_usage")))
    sent = time.monotonic()
    resp = await gw.upstream.post(engine.base_url + "/v1/completions", body, engine_headers(request, engine))
    first: float | None = None
    try:
        await raise_for_engine(resp)
        if not data.get("stream"):
            async for event in sse_events(resp):
                chunks.feed(event)
            chunks.final()
            _record(request, lease, chunks, started, sent, None)
            return json_response(chunks.completion())
        out = open_stream(request, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await out.prepare(request)
        try:
            async for event in sse_events(resp):
                for chunk in chunks.feed(event):
                    first = first or time.monotonic()
                    await out.write(_sse(chunk))
            await out.write(b"".join(_sse(c) for c in chunks.final()) + b"data: [DONE]\n\n")
            _record(request, lease, chunks, started, sent, first)
        except EnginehouseError as exc:  # sse_events reports a broken engine stream as RunnerError
            request[FAILED_MID_STREAM] = exc.message
            await out.write(_sse(openai_error_body(exc)))
        await out.write_eof()
        return out
    finally:
        resp.close()  # also when the client left: closing the engine's stream cancels its generation


def _record(
    request: web.Request, lease: Lease, chunks: ChatChunks, started: float, sent: float, first: float | None
) -> None:
    usage = chunks.usage or {}
    decode = (time.monotonic() - first) if first is not None else None
    prompt, output = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    record_openai(request, lease, started, sent, first, prompt, output, decode)
