"""OpenAI's Responses door: ``POST /v1/responses``, ``GET``/``DELETE /v1/responses/{id}`` and
``GET /v1/responses/{id}/input_items``.

Always the canonical path (no engine speaks this dialect): body -> chat call -> plan -> lease ->
prepare -> events -> :class:`~enginehouse.api.responses_door.ResponsesEncoder`. The response cache stays
out of it: every answer has its own id and may be stored for a follow-up, so a replayed one would lie.
A finished answer (completed, incomplete or failed) is stored unless the request said ``store: false``.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from enginehouse.api.responses_door import echo, input_items, responses_call, with_ids
from enginehouse.api.responses_events import ResponsesEncoder
from enginehouse.api.responses_wire import ResponsesRequest
from enginehouse.cache.response_store import ResponseStore, StoreBounds, StoreUnavailable
from enginehouse.errors import InvalidRequest, ResponseNotFound, ServerBusy
from enginehouse.routing.dispatch import Outcome
from enginehouse.sched.memory import MiB
from enginehouse.server.app_state import GATEWAY, engine_takes_tools, json_response, read_json
from enginehouse.server.generation import facts_for, lease_for, plan_request, prepare, routed, run_generation
from enginehouse.server.ollama_routes import require_capabilities, runner_spec

RESPONSES = web.AppKey("enginehouse.responses", ResponseStore)


def caller_key(request: web.Request) -> str | None:
    """The API key the caller sent (as the key check reads it): the scope of its stored responses."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


async def stored(request: web.Request, response_id: str, param: str | None = None) -> dict[str, Any]:
    store = request.app[RESPONSES]
    try:
        entry = await store.get(caller_key(request), response_id)
    except StoreUnavailable:
        raise ServerBusy("the response store (Redis) is unavailable; try again shortly") from None
    if entry is None:
        raise ResponseNotFound(
            f"response '{response_id}' not found: it was not stored (store: false), was deleted, expired, "
            f"or was dropped as the oldest (the store keeps {store.bounds.describe()})",
            param=param,
        )
    return entry


async def create(request: web.Request) -> web.StreamResponse:
    started = time.monotonic()
    gw = request.app[GATEWAY]
    req = ResponsesRequest.model_validate(await read_json(request))
    context: list[dict[str, Any]] = []
    if req.previous_response_id:
        prev = await stored(request, req.previous_response_id, "previous_response_id")
        context = [*prev["context"], *prev["input"], *prev["response"]["output"]]
    call = responses_call(req, context)
    items = with_ids(input_items(req.input))
    echoed = echo(req)
    store, key = request.app[RESPONSES], caller_key(request)

    def keep(response: dict[str, Any]) -> None:
        if req.store is not False:
            store.put_soon(key, response["id"], {"response": response, "input": items, "context": context})

    async def attempt(name: str, outcome: Outcome) -> web.StreamResponse:
        record = gw.catalog.resolve(name)
        takes_tools = engine_takes_tools(request, record)
        require_capabilities(record, engine_tools=takes_tools, tools=bool(call.tools), images=call.images)
        async with lease_for(request, name, None, runner_spec(request, None, record), record) as lease:
            prepared = prepare(call, facts_for(request, lease.model.record))
            encoder = ResponsesEncoder(req.model, echoed, started, keep)
            return await run_generation(request, "openai", lease, prepared, encoder, outcome)

    return await routed(request, await plan_request(request, call), attempt)


async def retrieve(request: web.Request) -> web.Response:
    return json_response((await stored(request, request.match_info["id"]))["response"])


async def delete(request: web.Request) -> web.Response:
    response_id = request.match_info["id"]
    if not await request.app[RESPONSES].delete(caller_key(request), response_id):
        await stored(request, response_id)  # raises the same 404 a lookup gives
    return json_response({"id": response_id, "object": "response", "deleted": True})


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise InvalidRequest("'limit' must be an integer from 1 to 100", param="limit")
    return int(raw)


async def list_input_items(request: web.Request) -> web.Response:
    """The response's own input items (not the conversation before it), newest first unless
    ``order=asc``; ``after`` pages on from an item id."""
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be 'asc' or 'desc'", param="order")
    limit = _limit(request)
    items = list((await stored(request, request.match_info["id"]))["input"])
    if order == "desc":
        items.reverse()
    if after := request.query.get("after"):
        at = next((i for i, item in enumerate(items) if item.get("id") == after), None)
        if at is None:
            raise InvalidRequest(f"'after': no input item {after!r} in this response", param="after")
        items = items[at + 1 :]
    page = items[:limit]
    return json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


def add_routes(app: web.Application) -> None:
    gw = app[GATEWAY]
    config = gw.config
    bounds = StoreBounds(
        config.responses_max_entries, int(config.responses_max_mib * MiB), config.responses_ttl_s
    )
    app[RESPONSES] = ResponseStore.build(bounds, gw.cache.settings if gw.cache is not None else None)

    async def close_store(app: web.Application) -> None:
        await app[RESPONSES].close()

    app.on_cleanup.append(close_store)
    r = app.router
    r.add_post("/v1/responses", create)
    r.add_get("/v1/responses/{id}", retrieve)
    r.add_delete("/v1/responses/{id}", delete)
    r.add_get("/v1/responses/{id}/input_items", list_input_items)
