"""What the routes tell the metrics: one middleware for every request, and a few calls per generation.

Handlers note which model and engine answered (``note_model``) and, once a generation ends, its numbers
(``observe``). Nothing here runs per streamed chunk.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from enginehouse.canonical import Tally
from enginehouse.metrics import CONTENT_TYPE, Metrics
from enginehouse.sched.scheduler import Lease
from enginehouse.server.app_state import GATEWAY
from enginehouse.wire import last_sse_payloads

MODEL = web.RequestKey("enginehouse.model", tuple)  # (model, engine) that answered this request
SKIP = frozenset({"/metrics", "/", "/api/version"})


def door_of(path: str) -> str:
    return "openai" if path.startswith("/v1") or path == "/rerank" else "ollama"


def note_model(request: web.Request, lease: Lease) -> None:
    request[MODEL] = (lease.model.spec.key(lease.model.name), lease.model.engine.kind)
    request.app[GATEWAY].metrics.queue_wait.labels(lease.model.name).observe(lease.waited)


def metrics_middleware(metrics: Metrics):  # type: ignore[no-untyped-def]
    @web.middleware
    async def observe_request(request: web.Request, handler):  # type: ignore[no-untyped-def]
        if request.path in SKIP:
            return await handler(request)
        started = time.monotonic()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            route = request.match_info.route.resource
            endpoint = route.canonical if route is not None else "unmatched"
            model, engine = request.get(MODEL, ("", ""))
            door = door_of(request.path)
            metrics.requests.labels(door, endpoint, model, engine, str(status)).inc()
            metrics.e2e.labels(door, endpoint, model).observe(time.monotonic() - started)

    return observe_request


def observe_generation(request: web.Request, door: str, lease: Lease, tally: Tally, sent: float) -> None:
    """A generation, from the same numbers the door's answer reports: the gateway's own time before the
    engine got the request, time to the first token, and the counts."""
    metrics: Metrics = request.app[GATEWAY].metrics
    metrics.overhead.labels(door).observe(max(0.0, sent - tally.started - lease.waited))
    metrics.observe_generation(door, lease.model.name, **tally.summary(time.monotonic()))


def observe_bytes(
    request: web.Request,
    door: str,
    lease: Lease,
    started: float,
    sent: float,
    first: float | None,
    tail: bytes,
) -> None:
    """A generation passed through as bytes: time to the first chunk, and the counts from the engine's
    last event (llama-server's ``timings``, or ``usage``), parsed once per request."""
    metrics: Metrics = request.app[GATEWAY].metrics
    counts = _last_counts(tail)
    decode = counts.get("decode")
    metrics.overhead.labels(door).observe(max(0.0, sent - started - lease.waited))
    metrics.observe_generation(
        door,
        lease.model.name,
        ttft=(first - started) if first is not None else None,
        prompt_tokens=counts.get("prompt", 0),
        output_tokens=counts.get("output", 0),
        decode_seconds=decode,
    )


def _last_counts(tail: bytes) -> dict[str, Any]:
    """Token counts from the end of an answer: a whole JSON body, or the last SSE events."""
    candidates = [tail] if tail.lstrip().startswith(b"{") else []
    candidates += [p for p in last_sse_payloads(tail) if p.startswith(b"{")]
    for raw in candidates:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        t, usage = data.get("timings") or {}, data.get("usage") or {}
        if t or usage:
            return {
                "prompt": int(t.get("prompt_n", usage.get("prompt_tokens", 0))),
                "output": int(t.get("predicted_n", usage.get("completion_tokens", 0))),
                "decode": t["predicted_ms"] / 1000 if "predicted_ms" in t else None,
            }
    return {}


async def metrics_endpoint(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    async with aiohttp.ClientSession() as session:
        body = await gw.metrics.exposition(gw.scheduler, session)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
