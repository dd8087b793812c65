"""Ollama's door to an Ollama upstream: requests pass through as they came, answers stream back.

Only ``model`` is touched: renamed to the upstream's name on the way in and back to the client's on the
way out (a byte replace per NDJSON line, and only when the names differ), so every Ollama feature the
upstream has (tools, images, thinking, logprobs, load and unload) works without a translation here.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from aiohttp import web

from enginehouse.catalog import ExternalRecord
from enginehouse.engines.upstream import error_text
from enginehouse.errors import EnginehouseError, LoopDetected, RunnerError
from enginehouse.server.app_state import FAILED_MID_STREAM, GATEWAY, engine_headers
from enginehouse.store import ModelRecord

NDJSON = "application/x-ndjson"


def speaks_ollama(record: ModelRecord) -> bool:
    return isinstance(record, ExternalRecord) and record.engine == "ollama"


async def ollama_passthrough(
    request: web.Request, data: dict[str, Any], path: str, name: str | None = None
) -> web.StreamResponse:
    """Send an Ollama request to an Ollama upstream as it came (``model`` renamed to the upstream's name)
    and stream its answer back, with ``model`` saying the name the client asked for. Its 4xx errors
    keep their status and body; a 5xx before the first byte is a RunnerError (another candidate may
    answer); a stream cut short ends with an ``{"error": ...}`` line."""
    gw = request.app[GATEWAY]
    client_name = data["model"]
    async with gw.scheduler.acquire(name or client_name) as lease:
        engine = lease.model.engine
        served = engine.served_model
        body = {**data, "model": served}
        resp = await gw.upstream.post(engine.base_url + path, body, engine_headers(request, engine))
        try:
            content_type = resp.headers.get("Content-Type", NDJSON)
            if resp.status == 508:
                raise LoopDetected(f"{lease.model.name}: {await error_text(resp)}")
            if resp.status >= 500:
                raise RunnerError(
                    f"{lease.model.name}: the upstream answered {resp.status}: {await error_text(resp)}"
                )
            if resp.status != 200:
                body_bytes = await resp.read()
                return web.Response(
                    status=resp.status, body=body_bytes, headers={"Content-Type": content_type}
                )
            out = web.StreamResponse(headers={"Content-Type": content_type})
            await out.prepare(request)
            old, new = orjson.dumps(served), orjson.dumps(client_name)
            old_field, new_field = b'"model":' + old, b'"model":' + new
            pending = b""
            try:
                async for chunk in resp.content.iter_any():
                    if served == client_name:
                        await out.write(chunk)
                        continue
                    pending += chunk
                    cut = pending.rfind(b"\n") + 1
                    if cut:
                        await out.write(pending[:cut].replace(old_field, new_field))
                        pending = pending[cut:]
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, EnginehouseError) as exc:
                # its exception's name is ours to log; ours (the request's deadline) says what happened
                message = "the upstream closed the stream early"
                if isinstance(exc, EnginehouseError):
                    message = exc.message
                request[FAILED_MID_STREAM] = message
                await out.write(orjson.dumps({"error": message}) + b"\n")
            if pending:
                await out.write(pending.replace(old_field, new_field))
            await out.write_eof()
            return out
        finally:
            resp.close()  # also when the client left: closing the upstream's stream cancels its generation
