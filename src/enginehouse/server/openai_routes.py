"""OpenAI's front door: ``/v1/*``, SSE streams, ``{"error": {"message", "type", ...}}`` errors.

Client and engine speak the same dialect here, so the request is parsed once (to find the model and
name the engine's served model) and the engine's bytes are streamed back untouched: no per-chunk work.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from aiohttp import web

from enginehouse.api.convert import sampling_fields
from enginehouse.errors import InvalidRequest, RunnerError, openai_error_body
from enginehouse.server.app_state import GATEWAY, json_response, read_json
from enginehouse.server.upstream import error_text
from enginehouse.store import ModelRecord


async def models(request: web.Request) -> web.Response:
    store = request.app[GATEWAY].store
    data = [
        {
            "id": r.name.display,
            "object": "model",
            "created": int(r.modified_at.timestamp()),
            "owned_by": r.name.namespace,
        }
        for r in store.list_models()
    ]
    return json_response({"object": "list", "data": data})


def apply_model_defaults(data: dict[str, Any], record: ModelRecord, path: str) -> None:
    """The model's Modelfile SYSTEM and PARAMETERs apply on this door too, as on Ollama's; whatever
    the client sent wins."""
    if path == "/v1/embeddings":
        return
    for name, value in sampling_fields(record.params).items():
        data.setdefault(name, value)
    messages = data.get("messages")
    if record.system and isinstance(messages, list) and not any(
        isinstance(m, dict) and m.get("role") in ("system", "developer") for m in messages
    ):
        data["messages"] = [{"role": "system", "content": record.system}, *messages]


async def _proxy(request: web.Request, path: str) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    data = await read_json(request)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter")
    if path == "/v1/chat/completions" and not isinstance(data.get("messages"), list):
        raise InvalidRequest("'messages' must be a list of messages")
    streaming = bool(data.get("stream"))
    async with gw.scheduler.acquire(model) as lease:
        engine = lease.model.engine
        data["model"] = engine.served_model
        apply_model_defaults(data, lease.model.record, path)
        resp = await gw.upstream.post(engine.base_url + path, data)
        try:
            if resp.status != 200:
                message = await error_text(resp)
                raise (InvalidRequest if resp.status == 400 else RunnerError)(message)
            content_type = resp.headers.get("Content-Type", "application/json")
            if not streaming:
                return web.Response(body=await resp.read(), headers={"Content-Type": content_type})
            out = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
            await out.prepare(request)
            try:
                async for chunk in resp.content.iter_any():
                    await out.write(chunk)
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
                error = RunnerError(f"the engine closed the stream early: {exc.__class__.__name__}")
                await out.write(b"data: " + orjson.dumps(openai_error_body(error)) + b"\n\n")
            await out.write_eof()
            return out
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            resp.close()  # the client left: closing the engine's stream cancels its generation
            raise
        finally:
            resp.release()


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _proxy(request, "/v1/chat/completions")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _proxy(request, "/v1/completions")


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _proxy(request, "/v1/embeddings")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/models", models)
    r.add_post("/v1/chat/completions", chat_completions)
    r.add_post("/v1/completions", completions)
    r.add_post("/v1/embeddings", embeddings)
