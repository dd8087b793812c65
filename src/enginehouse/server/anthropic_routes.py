"""Anthropic's front door: ``/v1/messages`` and ``/v1/messages/count_tokens``, named SSE events,
``{"type": "error", "error": {"type", "message"}}`` errors (the shape is chosen in ``server/app.py``).

No engine speaks Anthropic's dialect here, so every answer takes the canonical path: the body becomes a
chat call (``api/anthropic_door.py``), routing, the cache, the scheduler and the model's template apply
as on the other doors, and the events come back as Anthropic's.
"""

from __future__ import annotations

import time

from aiohttp import web

from enginehouse.api.anthropic import CountTokensRequest, MessagesRequest
from enginehouse.api.anthropic_door import AnthropicEncoder, StopStep, messages_call
from enginehouse.engines.base import RunnerSpec
from enginehouse.routing.dispatch import Outcome
from enginehouse.server.app_state import GATEWAY, json_response, read_json
from enginehouse.server.caching import answer_cached
from enginehouse.server.generation import (
    facts_for,
    lease_for,
    link_headers,
    plan_request,
    prepare,
    routed,
    run_generation,
)

MESSAGES = "/v1/messages"


async def messages(request: web.Request) -> web.StreamResponse:
    started = time.monotonic()
    gw = request.app[GATEWAY]
    data = await read_json(request)
    req = MessagesRequest.model_validate(data)
    call = messages_call(req)

    async def attempt(name: str, outcome: Outcome) -> web.StreamResponse:
        record = gw.catalog.resolve(name)

        async def answer() -> web.StreamResponse:
            async with lease_for(request, name, None, RunnerSpec(), record) as lease:
                prepared = prepare(call, facts_for(request, lease.model.record))
                encoder = AnthropicEncoder(call.model, started)
                stops = StopStep(req.stop_sequences) if req.stop_sequences else None  # fresh state per try
                return await run_generation(request, "anthropic", lease, prepared, encoder, outcome, stops)

        return await answer_cached(request, "anthropic", MESSAGES, data, record, answer)

    return await routed(request, await plan_request(request, call), attempt)


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """The prompt's length in the answering model's own tokens, rendered as a generation would be."""
    gw = request.app[GATEWAY]
    call = messages_call(CountTokensRequest.model_validate(await read_json(request)))

    async def attempt(name: str, outcome: Outcome) -> web.StreamResponse:
        record = gw.catalog.resolve(name)
        async with lease_for(request, name, None, RunnerSpec(), record) as lease:
            prepared = prepare(call, facts_for(request, lease.model.record))
            engine = lease.model.engine
            count = await engine.count_tokens(prepared.call, gw.upstream, link_headers(request, engine))
        return json_response({"input_tokens": count})

    return await routed(request, await plan_request(request, call), attempt)


def add_routes(app: web.Application) -> None:
    app.router.add_post(MESSAGES, messages)
    app.router.add_post(MESSAGES + "/count_tokens", count_tokens)
