"""State and helpers shared by the route modules: the gateway object and JSON in and out."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from aiohttp import web
from pydantic import ValidationError

from enginehouse.config import Config
from enginehouse.errors import InvalidRequest, RequestTooLarge
from enginehouse.sched.scheduler import Scheduler
from enginehouse.server.upstream import Upstream
from enginehouse.store import Store


@dataclass
class Gateway:
    config: Config
    store: Store
    scheduler: Scheduler
    upstream: Upstream


GATEWAY = web.AppKey("gateway", Gateway)


def json_response(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"'{where}': {err['msg']}")
    return "invalid request: " + "; ".join(parts)


async def read_json(request: web.Request) -> dict:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        limit = request.app[GATEWAY].config.max_body_mib
        raise RequestTooLarge(f"request body too large: the limit is {limit} MiB") from exc
    if not raw:
        raise InvalidRequest("missing request body")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"invalid JSON in request body: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    return data
