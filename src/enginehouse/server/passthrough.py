"""Ollama's door to an Ollama upstream: requests pass through as they came, answers stream back.

Only ``model`` is touched: renamed to the upstream's name on the way in and back to the client's on the
way out (a byte replace per NDJSON line, and only when the names differ), so every Ollama feature the
upstream has (tools, images, thinking, logprobs, load and unload) works without a translation here.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from enginehouse.catalog import ExternalRecord
from enginehouse.server.app_state import GATEWAY
from enginehouse.store import ModelRecord

NDJSON = "application/x-ndjson"


def speaks_ollama(record: ModelRecord) -> bool:
    return isinstance(record, ExternalRecord) and record.engine == "ollama"


async def ollama_passthrough(request: web.Request, data: dict[str, Any], path: str) -> web.StreamResponse:
    """Send an Ollama request to an Ollama upstream as it came (``model`` renamed to the upstream's name)
    and stream its answer back, renaming ``model`` back; its errors keep their status and body."""
    gw = request.app[GATEWAY]
    async with gw.scheduler.acquire(data["model"]) as lease:
        client_name = lease.model.name  # aliases answer with the model's own name, as local models do
        engine = lease.model.engine
        served = engine.served_model
        body = {**data, "model": served}
        resp = await gw.upstream.post(engine.base_url + path, body, engine.request_headers)
        try:
            content_type = resp.headers.get("Content-Type", NDJSON)
            if resp.status != 200:
                body_bytes = await resp.read()
                return web.Response(
                    status=resp.status, body=body_bytes, headers={"Content-Type": content_type}
                )
            out = web.StreamResponse(headers={"Content-Type": content_type})
            await out.prepare(request)
            if served == client_name:
                async for chunk in resp.content.iter_any():
                    await out.write(chunk)
            else:
                old, new = orjson.dumps(served), orjson.dumps(client_name)
                old_field, new_field = b'"model":' + old, b'"model":' + new
                pending = b""
                async for chunk in resp.content.iter_any():
                    pending += chunk
                    cut = pending.rfind(b"\n") + 1
                    if cut:
                        await out.write(pending[:cut].replace(old_field, new_field))
                        pending = pending[cut:]
                if pending:
                    await out.write(pending.replace(old_field, new_field))
            await out.write_eof()
            return out
        finally:
            resp.close()  # also when the client left: closing the upstream's stream cancels its generation
