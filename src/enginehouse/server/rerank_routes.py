"""The rerank door's routes: ``POST /v1/rerank`` and ``/rerank`` (Jina's and Cohere's shape, OpenAI-style
errors) and ``POST /api/rerank`` (Ollama's style: durations in the answer, ``{"error": "..."}`` errors).

A reranker runs in its own runner (llama-server ``--rerank``, keyed ``NAME (rerank)`` by the scheduler);
a local model that is not a reranker is refused before anything loads.
"""

from __future__ import annotations

import time

from aiohttp import web

from enginehouse.api.rerank_door import (
    OllamaRerankRequest,
    RerankRequest,
    ollama_rerank_response,
    rerank_call,
    rerank_response,
)
from enginehouse.canonical import RerankCall, RerankResult
from enginehouse.catalog import is_gguf
from enginehouse.engines.base import RunnerSpec
from enginehouse.engines.factory import gguf_info_for
from enginehouse.errors import InvalidRequest
from enginehouse.routing.dispatch import Outcome
from enginehouse.server.app_state import GATEWAY, json_response, read_json
from enginehouse.server.caching import answer_cached
from enginehouse.server.generation import lease_for, link_headers, plan_request, routed
from enginehouse.store import ModelRecord

#: Paths outside ``/v1`` that answer errors in OpenAI's shape (Jina's and Cohere's clients read that one).
OPENAI_SHAPED = frozenset({"/rerank"})


def require_reranker(record: ModelRecord) -> None:
    """A local GGUF must be a reranker (``/api/show`` lists ``rerank`` among its capabilities); a remote
    model's engine answers for itself."""
    if is_gguf(record) and not gguf_info_for(record).is_reranker:
        raise InvalidRequest(
            f"{record.name.display} is not a reranking model (a reranker has rank pooling or a "
            "one-output classification head)",
            param="model",
        )


async def _rank(
    request: web.Request, name: str, record: ModelRecord, call: RerankCall
) -> tuple[RerankResult, float]:
    """The scores from the model's rerank runner: (result, load seconds)."""
    gw = request.app[GATEWAY]
    async with lease_for(request, name, call.keep_alive, RunnerSpec(rerank=True), record) as lease:
        engine = lease.model.engine
        result = await engine.rerank(call, gw.upstream, link_headers(request, engine))
        return result, lease.load_duration


async def rerank(request: web.Request) -> web.StreamResponse:
    """``/v1/rerank`` and ``/rerank``."""
    gw = request.app[GATEWAY]
    data = await read_json(request)
    req = RerankRequest.model_validate(data)
    call = rerank_call(req)

    async def attempt(name: str, outcome: Outcome) -> web.StreamResponse:
        record = gw.catalog.resolve(name)
        require_reranker(record)

        async def answer() -> web.StreamResponse:
            result, _ = await _rank(request, name, record, call)
            return json_response(rerank_response(req.model, call, result, req.return_documents))

        return await answer_cached(request, "openai", "/v1/rerank", data, record, answer)

    return await routed(request, await plan_request(request, call), attempt)


async def ollama_rerank(request: web.Request) -> web.StreamResponse:
    """``/api/rerank``: no documents loads the model (as ``/api/embed`` with no input)."""
    gw = request.app[GATEWAY]
    started = time.monotonic()
    data = await read_json(request)
    req = OllamaRerankRequest.model_validate(data)
    call = rerank_call(req)

    async def attempt(name: str, outcome: Outcome) -> web.StreamResponse:
        record = gw.catalog.resolve(name)
        require_reranker(record)

        async def answer() -> web.StreamResponse:
            result, load = await _rank(request, name, record, call)
            total_ns, load_ns = int((time.monotonic() - started) * 1e9), int(load * 1e9)
            body = ollama_rerank_response(
                req.model, call, result, req.return_documents, total_ns=total_ns, load_ns=load_ns
            )
            return json_response(body)

        if not call.documents:  # a load, not an answer
            return await answer()
        return await answer_cached(request, "ollama", "/api/rerank", data, record, answer)

    return await routed(request, await plan_request(request, call), attempt)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/rerank", rerank)
    r.add_post("/rerank", rerank)
    r.add_post("/api/rerank", ollama_rerank)
