"""OpenAI's front door: ``/v1/*``, SSE streams, ``{"error": {"message", "type", ...}}`` errors.

Client and engine speak the same dialect here, so the request is parsed once (to route it and name the
engine's served model) and the engine's bytes are streamed back untouched: no per-chunk work. A model
whose prompt the gateway renders (an Ollama Go template) goes through the canonical path instead, and
its events come back as chat-completion chunks (``api/openai_door.py``).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from enginehouse.api.ollama import Options
from enginehouse.api.ollama_door import sampling_fields
from enginehouse.api.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, image_urls
from enginehouse.api.openai_door import OpenAIChatEncoder, chat_call, completion_call, embed_call
from enginehouse.api.prepare import renders
from enginehouse.canonical import Call
from enginehouse.catalog import is_gguf
from enginehouse.engines.base import RunnerSpec
from enginehouse.engines.upstream import EngineAnswer, raise_for_engine
from enginehouse.errors import EnginehouseError, InvalidRequest, RunnerError, openai_error_body
from enginehouse.routing.dispatch import Outcome
from enginehouse.sched.scheduler import Lease
from enginehouse.server.app_state import GATEWAY, clamp_num_ctx, json_response, read_json
from enginehouse.server.caching import answer_cached
from enginehouse.server.generation import (
    facts_for,
    forward,
    lease_for,
    link_headers,
    plan_request,
    prepare,
    routed,
    run_generation,
)
from enginehouse.server.observe import observe_bytes
from enginehouse.server.relay import relay_bytes, renamer
from enginehouse.store import ModelRecord
from enginehouse.wire import SSE_DONE, sse


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
    if "reasoning" in data:  # the Responses API's spelling; engines read reasoning_effort on chat
        effort = (data.pop("reasoning") or {}).get("effort")
        if effort is not None:
            data.setdefault("reasoning_effort", effort)
    raw_options = data.pop("options", None)
    if raw_options is None:
        return RunnerSpec(embedding=embedding)
    options = Options.model_validate(raw_options)
    for name, value in sampling_fields(options.model_dump(exclude_none=True)).items():
        data.setdefault(name, value)
    return RunnerSpec(embedding=embedding, num_ctx=options.num_ctx)


def has_images(data: dict[str, Any], path: str) -> bool:
    """Whether a chat body carries image parts (only such requests are checked for vision)."""
    if path != "/v1/chat/completions":
        return False
    return any(isinstance(m, dict) and image_urls(m.get("content")) for m in data.get("messages") or [])


def refuse_images(record: ModelRecord) -> None:
    """A local GGUF without a vision projector cannot take images: a clear 400, as Ollama's door says."""
    if is_gguf(record) and not record.projectors:
        raise InvalidRequest(f"{record.name.display} does not support vision", param="messages")


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


CALLS = {
    "/v1/chat/completions": chat_call,
    "/v1/completions": completion_call,
    "/v1/embeddings": embed_call,
}


class _SSEFraming:
    """OpenAI's streams for the byte relay: SSE events, ended by ``data: [DONE]``."""

    line_based = False  # engines write whole events per chunk; a rename needs no line buffer
    end_marker = SSE_DONE

    @staticmethod
    def error(exc: EnginehouseError) -> bytes:
        return sse(openai_error_body(exc))


async def _proxy(request: web.Request, path: str) -> web.StreamResponse:
    started = time.monotonic()
    gw = request.app[GATEWAY]
    data = await read_json(request)
    as_sent = dict(data)  # the cache keys on the client's request, before normalising
    spec = normalise_request(data, path)
    call = CALLS[path](data)
    if spec.num_ctx is not None:
        call = replace(call, num_ctx=spec.num_ctx)  # type: ignore[type-var]
    images = has_images(data, path)

    async def attempt(name: str, outcome: Outcome) -> web.StreamResponse:
        record = gw.catalog.resolve(name)
        if images:
            refuse_images(record)
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
            lambda: _answer(request, path, body, call, record, name, run_spec, started, outcome),
        )

    return await routed(request, await plan_request(request, call), attempt)


async def _answer(
    request: web.Request,
    path: str,
    data: dict[str, Any],
    call: Call,
    record: ModelRecord,
    name: str,
    spec: RunnerSpec,
    started: float,
    outcome: Outcome,
) -> web.StreamResponse:
    asked = data["model"]
    async with lease_for(request, name, None, spec, record) as lease:
        engine = lease.model.engine
        record = lease.model.record
        if path == "/v1/chat/completions" and is_gguf(record):
            facts = facts_for(request, record)
            if renders(call, facts):  # type: ignore[arg-type]
                prepared = prepare(call, facts)  # type: ignore[arg-type]
                encoder = OpenAIChatEncoder(asked, prepared.call.include_usage, started)
                return await run_generation(request, "openai", lease, prepared, encoder, outcome)
        data["model"] = engine.served_model
        apply_model_defaults(data, record, path)
        sent = time.monotonic()
        try:
            resp = await _sent(request, lease, path, data)
        except (InvalidRequest, RunnerError) as exc:
            # An embedding input longer than the engine takes is cut to fit, as Ollama's /v1 does
            limit = engine.input_limit(exc) if path == "/v1/embeddings" else None
            if limit is None:
                raise
            upstream, extra = request.app[GATEWAY].upstream, link_headers(request, engine)
            data["input"] = await engine.fit_inputs(
                _embedding_inputs(data.get("input")), limit, upstream, extra
            )
            resp = await _sent(request, lease, path, data)

        def observe(first: float | None, tail: bytes) -> None:
            observe_bytes(request, "openai", lease, started, sent, first, tail)

        # The answer names the model the client asked for (an alias, a router), not the engine's name.
        rename = renamer(engine.served_model, asked)
        return await relay_bytes(request, resp, _SSEFraming, outcome, rename, observe)


async def _sent(request: web.Request, lease: Lease, path: str, data: dict[str, Any]) -> EngineAnswer:
    """The body to the leased engine; its error answer raises (the connection closed)."""
    resp = await forward(request, lease, path, data)
    try:
        await raise_for_engine(resp, lease.model.engine.refused)
    except BaseException:
        resp.close()
        raise
    return resp


def _embedding_inputs(value: Any) -> list[str | list[int]]:
    """OpenAI's ``input`` as a list of inputs: a string, token ids, or a list of either."""
    if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], int)):
        return [value]
    return list(value or [])


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
