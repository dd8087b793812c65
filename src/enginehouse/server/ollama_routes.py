"""Ollama's front door: ``/api/*``, NDJSON streams, ``{"error": "..."}`` errors."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from enginehouse.api.gotemplate import parse as parse_template
from enginehouse.api.ollama import (
    ChatRequest,
    CopyRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    NameRequest,
)
from enginehouse.api.ollama_door import (
    OllamaEncoder,
    chat_call,
    embed_call,
    embeddings_call,
    generate_call,
    now_rfc3339,
)
from enginehouse.api.prepare import is_jinja
from enginehouse.canonical import ChatCall, CompletionCall, EmbedCall
from enginehouse.catalog import ExternalRecord, is_gguf
from enginehouse.engines.base import RunnerSpec
from enginehouse.engines.factory import gguf_info_for
from enginehouse.engines.openai_remote import auth_headers
from enginehouse.engines.upstream import error_text
from enginehouse.errors import EnginehouseError, InvalidRequest, LoopDetected, RunnerError, ollama_error_body
from enginehouse.routing.dispatch import Outcome
from enginehouse.sched.scheduler import LoadedModel
from enginehouse.server.app_state import (
    GATEWAY,
    clamp_num_ctx,
    engine_takes_tools,
    json_response,
    read_json,
)
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
from enginehouse.server.relay import relay_bytes, renamer
from enginehouse.store import ModelRecord
from enginehouse.store.modelfile import modelfile_for
from enginehouse.wire import ndjson

NDJSON = "application/x-ndjson"
log = logging.getLogger("enginehouse.server")


def _rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def details(record: ModelRecord) -> dict[str, Any]:
    cfg = record.config
    family = cfg.get("model_family", "")
    return {
        "parent_model": "",
        "format": cfg.get("model_format", "gguf"),
        "family": family,
        "families": cfg.get("model_families") or ([family] if family else None),
        "parameter_size": cfg.get("model_type", ""),
        "quantization_level": cfg.get("file_type", ""),
    }


def _digest_hex(record: ModelRecord) -> str:
    return record.manifest_digest.removeprefix("sha256:")


async def tags(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    store = gw.store
    await gw.catalog.refresh()  # upstreams' models: a no-op while the cache is fresh
    models = [_store_tag(r) for r in store.list_models()]
    listed = {m["name"] for m in models}
    models += [_external_tag(r) for r in gw.catalog.external_models() if r.name.display not in listed]
    listed = {m["name"] for m in models}
    for name, record in gw.catalog.named_entries():  # named instances and aliases
        if name not in listed:
            tag = _external_tag(record) if isinstance(record, ExternalRecord) else _store_tag(record)
            models.append({**tag, "name": name, "model": name})
    return json_response({"models": models})


def _store_tag(r: ModelRecord) -> dict[str, Any]:
    return {
        "name": r.name.display,
        "model": r.name.display,
        "modified_at": _rfc3339(r.modified_at),
        "size": r.size,
        "digest": _digest_hex(r),
        "details": details(r),
    }


def _external_tag(r: ExternalRecord) -> dict[str, Any]:
    """A model outside the store in /api/tags: the upstream's own entry when it gave one."""
    return {
        **r.listing,
        "name": r.name.display,
        "model": r.name.display,
        "modified_at": r.listing.get("modified_at") or _rfc3339(r.modified_at),
        "size": r.size,
        "digest": r.listing.get("digest") or _digest_hex(r),
        "details": r.listing.get("details") or details(r),
    }


def capabilities(record: ModelRecord, engine_tools: bool = False) -> list[str]:
    """Ollama's capability names for a local GGUF. ``engine_tools``: its engine takes tools whatever
    the template says (:func:`engine_takes_tools`)."""
    info = gguf_info_for(record)
    if info.is_reranker:
        return ["rerank"]  # not Ollama's (it has no reranking): the models /api/rerank and /v1/rerank take
    if info.is_embedding:
        return ["embedding"]
    caps = ["completion"]
    template = record.template or info.chat_template or ""
    if "tools" in template or ".Tools" in template or engine_tools:
        caps.append("tools")
    if "<think>" in template or "enable_thinking" in template or ".Think" in template:
        caps.append("thinking")
    if "tokenizer.ggml.fim_pre_token_id" in info.model_info or ".Suffix" in template:
        caps.append("insert")
    if record.projectors:  # a vision projector beside the weights (llama-server --mmproj)
        caps.append("vision")
    return caps


def require_capabilities(
    record: ModelRecord,
    *,
    engine_tools: bool = False,
    tools: bool = False,
    think: bool = False,
    insert: bool = False,
    images: bool = False,
) -> None:
    """Refuse, as Ollama does, a request for something the model cannot do. A model without a local
    GGUF (remote, vLLM) is not checked here: its engine answers for itself."""
    if not is_gguf(record):
        return
    caps = capabilities(record, engine_tools)
    wanted = {"tools": tools, "thinking": think, "insert": insert, "vision": images}
    for cap, asked in wanted.items():
        if asked and cap not in caps:
            raise InvalidRequest(f"{record.name.display} does not support {cap}")


def runner_spec(
    request: web.Request, num_ctx: int | None, record: ModelRecord, *, embedding: bool = False
) -> RunnerSpec:
    return RunnerSpec(embedding=embedding, num_ctx=clamp_num_ctx(request, record, num_ctx or None))


def parameters_text(params: dict[str, Any]) -> str:
    """``/api/show``'s ``parameters``: one line per value, names padded to 30, strings quoted (Ollama's)."""
    lines = []
    for key, value in params.items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"{key:<30} {orjson.dumps(v).decode() if isinstance(v, str) else v}")
    return "\n".join(lines)


async def show(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    req = NameRequest.model_validate(await read_json(request))
    if not req.target:
        raise InvalidRequest("model is required")
    record = await gw.catalog.lookup(req.target)
    if not is_gguf(record):
        return await _show_external(request, record)  # type: ignore[arg-type]
    info = gguf_info_for(record)
    params = parameters_text(record.params)
    return json_response(
        {
            "license": record.license or "",
            "modelfile": modelfile_for(record),
            "parameters": params,
            "template": record.template or info.chat_template or "",
            "system": record.system or "",
            "details": details(record),
            "model_info": info.model_info,
            "capabilities": capabilities(record, engine_takes_tools(request, record)),
            "modified_at": _rfc3339(record.modified_at),
        }
    )


def _ps_entry(m: LoadedModel) -> dict[str, Any]:
    expires = (
        datetime.fromtimestamp(m.expires_at, UTC)
        if m.expires_at is not None
        else datetime.now(UTC).replace(year=2318)
    )  # in use or pinned: far future, as Ollama shows
    info = m.engine.info()
    return {
        "name": m.name,
        "model": m.name,
        "size": m.measured or m.estimate or m.record.size,  # Ollama: memory held, not file size
        "digest": _digest_hex(m.record),
        "details": details(m.record),
        "expires_at": _rfc3339(expires),
        "size_vram": 0,
        "context_length": info.extra.get("ctx_per_slot", 0),
        "engine": info.engine,
        "state": info.state,
        "in_flight": m.in_flight,
        "pid": info.pid,
        "restarts": info.restarts,  # automatic restarts, and why the last one happened (the watchdog's too)
        "restart_cause": info.extra.get("restart_cause"),
    }


async def ps(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    cooled = [  # extra fields: Ollama's clients ignore them
        {
            "name": key,
            "until": _rfc3339(datetime.fromtimestamp(st.cooled_until or 0, UTC)),
            "reason": st.reason,
        }
        for key, st in gw.dispatch.health.cooled().items()
    ]
    models = [_ps_entry(m) for m in gw.scheduler.ps()]
    return json_response({"models": models, "cooled_down": cooled, "pools": gw.dispatch.pool.snapshot()})


async def drain(request: web.Request) -> web.Response:
    """``POST /api/drain {"node": NAME}``: no new pool work for the replicas on NAME ("local": this
    node's own runners); answers once their requests in flight have finished (or after ``timeout``
    seconds, with the count left). ``"undo": true`` takes them back."""
    gw = request.app[GATEWAY]
    data = await read_json(request)
    node, undo, timeout = data.get("node"), data.get("undo", False), data.get("timeout", 300)
    if not isinstance(node, str) or not node or not isinstance(undo, bool):
        raise InvalidRequest("expected {'node': str, 'undo': bool (optional), 'timeout': seconds (optional)}")
    if not isinstance(timeout, int | float) or timeout < 0:
        raise InvalidRequest("'timeout' must be a number of seconds >= 0")
    known = {"local", *(n.key for n in gw.file_config.nodes), *gw.file_config.upstreams}
    if node not in known:
        raise InvalidRequest(f"no node {node!r}; nodes: {', '.join(sorted(known))}")
    if undo:
        gw.dispatch.pool.draining.discard(node)
        log.info("node %s takes pool work again", node)
        return json_response(
            {"node": node, "draining": False, "in_flight": gw.dispatch.pool.in_flight_on(node)}
        )
    gw.dispatch.pool.draining.add(node)
    log.info("draining node %s: no new pool work; waiting for its requests in flight", node)
    deadline = time.monotonic() + timeout
    while (left := gw.dispatch.pool.in_flight_on(node)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return json_response({"node": node, "draining": True, "in_flight": left})


async def copy(request: web.Request) -> web.Response:
    req = CopyRequest.model_validate(await read_json(request))
    request.app[GATEWAY].store.copy(req.source, req.destination)
    return web.Response(status=200)


async def delete(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    req = NameRequest.model_validate(await read_json(request))
    if not req.target:
        raise InvalidRequest("model is required")
    await gw.scheduler.unload(req.target)
    gw.store.remove(req.target)
    return web.Response(status=200)


async def _load_or_unload(
    request: web.Request, model: str, keep_alive: float | None, kind: str, asked: str
) -> web.Response:
    """An empty prompt loads the model; with ``keep_alive: 0`` it unloads it (Ollama's contract)."""
    gw = request.app[GATEWAY]
    if keep_alive == 0:
        record = gw.catalog.resolve(model)
        await gw.scheduler.unload(record.name.display)
        reason = "unload"
    else:
        await gw.scheduler.load(model, keep_alive)
        reason = "load"
    line: dict[str, Any] = {"model": asked, "created_at": now_rfc3339()}
    if kind == "chat":
        line["message"] = {"role": "assistant", "content": ""}
    else:
        line["response"] = ""
    line.update(done=True, done_reason=reason)
    return json_response(line)


class _OllamaFraming:
    """Ollama's streams for the byte relay: NDJSON, ended by the upstream's close."""

    line_based = True
    end_marker = None

    @staticmethod
    def error(exc: EnginehouseError) -> bytes:
        return ndjson(ollama_error_body(exc))


async def _passthrough(
    request: web.Request, data: dict[str, Any], path: str, name: str, outcome: Outcome
) -> web.StreamResponse:
    """An Ollama request to an engine that speaks Ollama's API (an Ollama upstream), as it came but for
    ``model``, so every feature the upstream has (tools, images, thinking, logprobs, load and unload)
    works without a translation here. Its 4xx errors keep their status and body; a 5xx before the first
    byte is a RunnerError (another candidate may answer)."""
    async with lease_for(request, name) as lease:
        served = lease.model.engine.served_model
        resp = await forward(request, lease, path, {**data, "model": served})
        try:
            if resp.status == 508:
                raise LoopDetected(f"{lease.model.name}: {await error_text(resp)}")
            if resp.status >= 500:
                raise RunnerError(
                    f"{lease.model.name}: the upstream answered {resp.status}: {await error_text(resp)}"
                )
        except BaseException:
            resp.close()
            raise
        if resp.status != 200:
            body = await resp.read()
            resp.release()
            content_type = resp.headers.get("Content-Type", NDJSON)
            return web.Response(status=resp.status, body=body, headers={"Content-Type": content_type})
        return await relay_bytes(
            request, resp, _OllamaFraming, outcome, renamer(served, data["model"]), lambda *_: None
        )


async def _door(
    request: web.Request,
    call: ChatCall | CompletionCall,
    data: dict[str, Any],
    endpoint: str,
    kind: str,
    empty: bool,
    checks: dict[str, bool],
) -> web.StreamResponse:
    """``/api/chat`` and ``/api/generate`` after parsing: route, then answer from each candidate."""
    gw = request.app[GATEWAY]
    started = time.monotonic()

    async def attempt(name: str, outcome: Outcome) -> web.StreamResponse:
        record = gw.catalog.resolve(name)
        if gw.scheduler.speaks(record, "ollama"):
            return await _passthrough(request, data, endpoint, name, outcome)
        if empty:
            return await _load_or_unload(request, name, call.keep_alive, kind, call.model)
        require_capabilities(record, engine_tools=engine_takes_tools(request, record), **checks)

        async def answer() -> web.StreamResponse:
            spec = runner_spec(request, call.num_ctx, record)
            async with lease_for(request, name, call.keep_alive, spec, record) as lease:
                prepared = prepare(call, facts_for(request, lease.model.record))
                encoder = OllamaEncoder(call.model, kind, started=started, load_duration=lease.load_duration)
                return await run_generation(request, "ollama", lease, prepared, encoder, outcome)

        return await answer_cached(request, "ollama", endpoint, data, record, answer)

    return await routed(request, await plan_request(request, call), attempt)


async def chat(request: web.Request) -> web.StreamResponse:
    data = await read_json(request)
    req = ChatRequest.model_validate(data)
    call = chat_call(req)
    checks = {"tools": bool(req.tools), "think": bool(req.think), "images": call.images}
    return await _door(request, call, data, "/api/chat", "chat", not req.messages, checks)


async def generate(request: web.Request) -> web.StreamResponse:
    data = await read_json(request)
    req = GenerateRequest.model_validate(data)
    if req.template and is_jinja(req.template):
        raise InvalidRequest("a per-request template must be an Ollama (Go) template")
    if req.template and not req.raw:
        parse_template(req.template)  # a bad template is the client's error, before any model loads
    call = generate_call(req)
    checks = {"think": bool(req.think), "insert": bool(req.suffix), "images": bool(req.images)}
    return await _door(
        request, call, data, "/api/generate", "generate", not req.prompt and not req.suffix, checks
    )


async def _embed(request: web.Request, name: str, call: EmbedCall) -> tuple[list[list[float]], int, float]:
    """Embeddings from the model's embedding runner: (vectors, prompt tokens, load seconds)."""
    gw = request.app[GATEWAY]
    record = gw.catalog.resolve(name)
    spec = runner_spec(request, call.num_ctx, record, embedding=True)
    async with lease_for(request, name, call.keep_alive, spec, record) as lease:
        engine = lease.model.engine
        result = await engine.embed(call, gw.upstream, link_headers(request, engine))
        return result.vectors, result.prompt_tokens, lease.load_duration


def _truncate_dimensions(vectors: list[list[float]], dimensions: int) -> list[list[float]]:
    """Matryoshka-style truncation, renormalised to unit length like Ollama's."""
    out = []
    for vec in vectors:
        head = vec[:dimensions]
        norm = sum(x * x for x in head) ** 0.5 or 1.0
        out.append([x / norm for x in head])
    return out


async def embed(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    started = time.monotonic()
    data = await read_json(request)
    call = embed_call(EmbedRequest.model_validate(data))

    async def attempt(name: str, outcome: Outcome) -> web.StreamResponse:
        record = gw.catalog.resolve(name)
        if gw.scheduler.speaks(record, "ollama"):
            return await _passthrough(request, data, "/api/embed", name, outcome)

        async def answer() -> web.StreamResponse:
            vectors, tokens, load = await _embed(request, name, call)
            if call.dimensions:
                vectors = _truncate_dimensions(vectors, call.dimensions)
            return json_response(
                {
                    "model": call.model,
                    "embeddings": vectors,
                    "total_duration": int((time.monotonic() - started) * 1e9),
                    "load_duration": int(load * 1e9),
                    "prompt_eval_count": tokens,
                }
            )

        if not call.inputs:  # a load, not an answer
            return await answer()
        return await answer_cached(request, "ollama", "/api/embed", data, record, answer)

    return await routed(request, await plan_request(request, call), attempt)


async def embeddings(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    data = await read_json(request)
    call = embeddings_call(EmbeddingsRequest.model_validate(data))

    async def attempt(name: str, outcome: Outcome) -> web.StreamResponse:
        if gw.scheduler.speaks(gw.catalog.resolve(name), "ollama"):
            return await _passthrough(request, data, "/api/embeddings", name, outcome)
        vectors, _, _ = await _embed(request, name, call)
        return json_response({"embedding": vectors[0] if vectors else []})

    return await routed(request, await plan_request(request, call), attempt)


async def _show_external(request: web.Request, record: ExternalRecord) -> web.Response:
    """``/api/show`` of a model outside the store: an Ollama upstream's own answer, else what is known."""
    gw = request.app[GATEWAY]
    if record.engine == "ollama" and record.upstream is not None:
        url, headers = f"{record.upstream.url}/api/show", auth_headers(record.upstream.api_key)
        data = await gw.upstream.post_json(url, {"model": record.remote_model}, headers)
        return json_response(data)
    return json_response(
        {
            "license": "",
            "modelfile": "",
            "parameters": "",
            "template": "",
            "system": "",
            "details": details(record),
            "model_info": {"enginehouse.engine": record.engine, "enginehouse.model": record.remote_model},
            "capabilities": ["completion", "tools"],  # the engine decides; nothing is refused here
            "modified_at": _rfc3339(record.modified_at),
        }
    )


async def route(request: web.Request) -> web.Response:
    """``POST /api/route``: what a router (or a model name) would do with a prompt, without generating:
    the route, the classifier's scores, each candidate's cost, the order and why."""
    gw = request.app[GATEWAY]
    data = await read_json(request)
    asked = data.get("router") or data.get("model") or "auto"
    prompt, system = data.get("prompt"), data.get("system") or ""
    if not isinstance(asked, str) or not isinstance(prompt, str) or not isinstance(system, str):
        raise InvalidRequest("expected {'router': str, 'prompt': str, 'system': str (optional)}")
    await gw.catalog.ensure_known(asked)
    if not gw.dispatch.is_router(asked):
        gw.catalog.resolve(asked)  # an unknown name is a 404 naming the closest ones
    plan = await gw.dispatch.plan(asked, system=system, text=prompt)
    return json_response(plan.to_dict())


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/route", route)
    r.add_post("/api/drain", drain)
    r.add_get("/api/tags", tags)
    r.add_post("/api/show", show)
    r.add_get("/api/ps", ps)
    r.add_post("/api/copy", copy)
    r.add_delete("/api/delete", delete)
    r.add_post("/api/chat", chat)
    r.add_post("/api/generate", generate)
    r.add_post("/api/embed", embed)
    r.add_post("/api/embeddings", embeddings)
