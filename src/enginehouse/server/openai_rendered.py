"""``/v1/chat/completions`` for a model with an Ollama (Go) template: rendered here, completed raw.

The pass-through in ``openai_routes`` would let llama-server apply the GGUF's own template instead of the
model's, so the two doors would prompt the model differently. Here the prompt is rendered as on Ollama's
door and the completion stream is re-framed as chat chunks (see ``api.rendered_chat``).
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from enginehouse.api.rendered_chat import ChatChunks, completion_body
from enginehouse.errors import EnginehouseError, InvalidRequest, RunnerError, openai_error_body
from enginehouse.metrics import Metrics
from enginehouse.sched.scheduler import Lease
from enginehouse.server.app_state import GATEWAY, json_response
from enginehouse.server.caching import open_stream
from enginehouse.server.upstream import error_text, sse_events


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def rendered_chat(
    request: web.Request, lease: Lease, data: dict[str, Any], template: str, started: float
) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    engine = lease.model.engine
    choice = gw.scheduler.entry(lease.model.name).tool_choice
    body, fmt, forced = completion_body(data, engine.served_model, template, None, choice)
    options = data.get("stream_options") or {}
    chunks = ChatChunks(lease.model.name, fmt, forced, bool(options.get("include_usage")))
    sent = time.monotonic()
    resp = await gw.upstream.post(engine.base_url + "/v1/completions", body, engine.request_headers)
    first: float | None = None
    try:
        if resp.status != 200:
            message = await error_text(resp)
            raise (InvalidRequest if resp.status == 400 else RunnerError)(message)
        if not data.get("stream"):
            async for event in sse_events(resp):
                chunks.feed(event)
            chunks.final()
            _observe(gw.metrics, lease, chunks, started, sent, None)
            return json_response(chunks.completion())
        out = open_stream(request, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await out.prepare(request)
        try:
            async for event in sse_events(resp):
                for chunk in chunks.feed(event):
                    first = first or time.monotonic()
                    await out.write(_sse(chunk))
            await out.write(b"".join(_sse(c) for c in chunks.final()) + b"data: [DONE]\n\n")
            _observe(gw.metrics, lease, chunks, started, sent, first)
        except (EnginehouseError, aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            error = (
                exc
                if isinstance(exc, EnginehouseError)
                else RunnerError("the engine closed the stream early")
            )
            await out.write(_sse(openai_error_body(error)))
        await out.write_eof()
        return out
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        resp.close()  # the client left: closing the engine's stream cancels its generation
        raise
    finally:
        resp.close()


def _observe(
    metrics: Metrics, lease: Lease, chunks: ChatChunks, started: float, sent: float, first: float | None
) -> None:
    usage = chunks.usage or {}
    metrics.overhead.labels("openai").observe(max(0.0, sent - started - lease.waited))
    metrics.observe_generation(
        "openai",
        lease.model.name,
        ttft=(first - started) if first is not None else None,
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        output_tokens=int(usage.get("completion_tokens", 0)),
        decode_seconds=(time.monotonic() - first) if first is not None else None,
    )
