"""OpenAI's front door: ``/v1/*``, SSE streams, ``{"error": {"message", "type", ...}}`` errors.

Client and engine speak the same dialect here, so the request is parsed once (to find the model and
name the engine's served model) and the engine's bytes are streamed back untouched: no per-chunk work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from pydantic import BaseModel

from enginehouse.api.convert import gateway_template, sampling_fields
from enginehouse.api.ollama import Options
from enginehouse.api.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from enginehouse.catalog import is_gguf
from enginehouse.engines.base import RunnerSpec
from enginehouse.engines.upstream import raise_for_engine
from enginehouse.errors import EnginehouseError, RunnerError, openai_error_body
from enginehouse.routing.balance import chat_prompt
from enginehouse.server.app_state import (
    FAILED_MID_STREAM,
    GATEWAY,
    VIA,
    clamp_num_ctx,
    engine_headers,
    engine_takes_tools,
    json_response,
    read_json,
)
from enginehouse.server.caching import answer_cached, open_stream
from enginehouse.server.observe import note_model, observe_openai
from enginehouse.server.openai_rendered import rendered_chat
from enginehouse.store import ModelRecord


async def models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    store = gw.store
    await gw.catalog.refresh()  # upstreams' models: a no-op while the cache is fresh
    data = [
        {
            "id": r.name.display,
            "object": "model",
            "created": int(r.modified_at.timestamp()),
            "owned_by": r.name.namespace,
        }
        for r in store.list_models()
    ]
    listed = {m["id"] for m in data}
    for r in gw.catalog.external_models():
        if r.name.display not in listed:
            created = int(r.modified_at.timestamp())
            owner = r.upstream_name or r.engine
            data.append({"id": r.name.display, "object": "model", "created": created, "owned_by": owner})
    listed = {m["id"] for m in data}
    for name, r in gw.catalog.named_entries():  # named instances and aliases
        if name not in listed:
            created = int(r.modified_at.timestamp())
            data.append({"id": name, "object": "model", "created": created, "owned_by": r.name.namespace})
    return json_response({"object": "list", "data": data})


REQUEST_TYPES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
}


def normalise_request(data: dict[str, Any], path: str) -> RunnerSpec:
    """Validate the body (the dict itself goes upstream untouched but for what follows), map
    ``max_completion_tokens`` for engines that know only ``max_tokens``, and take Ollama's ``options``
    (sampling and ``num_ctx``) as an extension field."""
    REQUEST_TYPES[path].model_validate(data)
    embedding = path == "/v1/embeddings"
    if "max_completion_tokens" in data:
        data.setdefault("max_tokens", data.pop("max_completion_tokens"))
    raw_options = data.pop("options", None)
    if raw_options is None:
        return RunnerSpec(embedding=embedding)
    options = Options.model_validate(raw_options)
    for name, value in sampling_fields(options.model_dump(exclude_none=True)).items():
        data.setdefault(name, value)
    return RunnerSpec(embedding=embedding, num_ctx=options.num_ctx)


def apply_model_defaults(data: dict[str, Any], record: ModelRecord, path: str) -> None:
    """The model's Modelfile SYSTEM and PARAMETERs apply on this door too, as on Ollama's; whatever
    the client sent wins."""
    if path == "/v1/embeddings":
        return
    for name, value in sampling_fields(record.params).items():
        data.setdefault(name, value)
    messages = data.get("messages")
    if (
        record.system
        and isinstance(messages, list)
        and not any(isinstance(m, dict) and m.get("role") in ("system", "developer") for m in messages)
    ):
        data["messages"] = [{"role": "system", "content": record.system}, *messages]


async def model(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    asked = request.match_info["model"]
    record = await gw.catalog.lookup(asked)
    return json_response(
        {
            "id": asked if gw.catalog.is_alias(asked) else record.name.display,
            "object": "model",
            "created": int(record.modified_at.timestamp()),
            "owned_by": record.name.namespace,
        }
    )


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: the text ones
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def routing_text(data: dict[str, Any], path: str) -> tuple[str, str]:
    """(system prompt, last user turn) for a router to classify."""
    if path == "/v1/chat/completions":
        messages = [m for m in data.get("messages") or [] if isinstance(m, dict)]
        system = "\n".join(
            _text_of(m.get("content")) for m in messages if m.get("role") in ("system", "developer")
        )
        user = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        return system, user
    value = data.get("prompt" if path == "/v1/completions" else "input")
    first = value[0] if isinstance(value, list) and value else value
    return "", first if isinstance(first, str) else ""


def affinity_text(data: dict[str, Any], path: str) -> str:
    """The request's whole text, for a pool that balances on shared prefixes."""
    if path == "/v1/chat/completions":
        return chat_prompt([m for m in data.get("messages") or [] if isinstance(m, dict)])
    value = data.get("prompt" if path == "/v1/completions" else "input")
    return value if isinstance(value, str) else str(value)


async def _proxy(request: web.Request, path: str) -> web.StreamResponse:
    started = time.monotonic()
    gw = request.app[GATEWAY]
    data = await read_json(request)
    as_sent = dict(data)  # the cache keys on the client's request, before normalising
    spec = normalise_request(data, path)
    asked = data["model"]
    await gw.catalog.ensure_known(asked)  # free unless upstream discovery is due
    system, text = routing_text(data, path) if gw.dispatch.is_router(asked) else ("", "")
    plan = await gw.dispatch.plan(
        asked,
        system=system,
        text=text,
        num_ctx=spec.num_ctx,
        embedding=spec.embedding,
        prompt=lambda: affinity_text(data, path),
        via=request.headers.get(VIA, ""),
    )

    async def attempt(name: str) -> web.StreamResponse:
        record = gw.catalog.resolve(name)
        run_spec = spec
        if spec.num_ctx is not None:
            run_spec = replace(spec, num_ctx=clamp_num_ctx(request, record, spec.num_ctx))
        body = dict(data)  # each candidate gets its own copy: the engine's name and defaults go in
        return await answer_cached(
            request,
            "openai",
            path,
            as_sent,
            record,
            lambda: _answer(request, path, body, record, name, run_spec, started),
        )

    return await gw.dispatch.run(request, plan, attempt)


async def _answer(
    request: web.Request,
    path: str,
    data: dict[str, Any],
    record: ModelRecord,
    name: str,
    spec: RunnerSpec,
    started: float,
) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    streaming = bool(data.get("stream"))
    asked = data["model"]
    async with gw.scheduler.acquire(name, None, spec, record) as lease:
        note_model(request, lease)
        engine = lease.model.engine
        record = lease.model.record
        data["model"] = engine.served_model
        apply_model_defaults(data, record, path)
        if path == "/v1/chat/completions" and is_gguf(record):
            tools = bool(data.get("tools")) and data.get("tool_choice") != "none"
            template = gateway_template(record.template, tools, engine_takes_tools(request, record))
            if template:
                return await rendered_chat(request, lease, data, template, started, asked)
        # The answer names the model the client asked for (an alias, a router), not the engine's name.
        rename = _renamer(engine.served_model, asked)
        sent = time.monotonic()
        resp = await gw.upstream.post(engine.base_url + path, data, engine_headers(request, engine))
        try:
            await raise_for_engine(resp)
            content_type = resp.headers.get("Content-Type", "application/json")
            if not streaming:
                body = await resp.read()
                observe_openai(request, lease, started, sent, None, body)
                return web.Response(
                    body=rename(body) if rename else body, headers={"Content-Type": content_type}
                )
            out = open_stream(request, {"Content-Type": content_type, "Cache-Control": "no-cache"})
            await out.prepare(request)
            first: float | None = None
            prev = b""  # the engine's counts are in the last event before [DONE]
            try:
                async for chunk in resp.content.iter_any():
                    await out.write(rename(chunk) if rename else chunk)
                    first = first or time.monotonic()
                    if chunk.endswith(b"data: [DONE]\n\n"):
                        observe_openai(request, lease, started, sent, first, prev[-4096:] + chunk)
                        break
                    prev = chunk  # llama-server's end marker: do not wait for it to close the stream
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, EnginehouseError) as exc:
                # EnginehouseError: the request's deadline (engine_http) cuts the stream and says so
                closed = RunnerError("the engine closed the stream early")
                error = exc if isinstance(exc, EnginehouseError) else closed
                request[FAILED_MID_STREAM] = error.message
                await out.write(b"data: " + orjson.dumps(openai_error_body(error)) + b"\n\n")
            await out.write_eof()
            return out
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            resp.close()  # the client left: closing the engine's stream cancels its generation
            raise
        finally:
            if streaming:  # llama-server closes after a stream without saying so: never pool it
                resp.close()
            else:
                resp.release()


def _renamer(served: str, asked: str) -> Callable[[bytes], bytes] | None:
    """A byte replace of the ``model`` field, or None when the names agree (no per-chunk cost).
    Engines write compact JSON (llama-server, vLLM), so the field has one spelling."""
    if served == asked:
        return None
    old, new = b'"model":' + orjson.dumps(served), b'"model":' + orjson.dumps(asked)
    return lambda chunk: chunk.replace(old, new)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _proxy(request, "/v1/chat/completions")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _proxy(request, "/v1/completions")


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _proxy(request, "/v1/embeddings")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/models", models)
    r.add_get("/v1/models/{model:.+}", model)
    r.add_post("/v1/chat/completions", chat_completions)
    r.add_post("/v1/completions", completions)
    r.add_post("/v1/embeddings", embeddings)
