"""State and helpers shared by the route modules: the gateway object and JSON in and out."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote

import orjson
from aiohttp import web

from enginehouse.cache import ResponseCache
from enginehouse.catalog import Catalog, is_gguf
from enginehouse.config import Config
from enginehouse.config_file import EMPTY, FileConfig
from enginehouse.engines.factory import gguf_info_for
from enginehouse.engines.upstream import Upstream
from enginehouse.errors import InvalidRequest, RequestTooLarge
from enginehouse.metrics import Metrics
from enginehouse.sched.scheduler import Scheduler
from enginehouse.store import ModelRecord, Store

if TYPE_CHECKING:
    from enginehouse.routing.dispatch import Dispatcher

log = logging.getLogger("enginehouse.server")


@dataclass
class Gateway:
    config: Config
    store: Store
    scheduler: Scheduler
    upstream: Upstream
    file_config: FileConfig = EMPTY
    catalog: Catalog = None  # type: ignore[assignment]  # names -> records; built from the store if None
    metrics: Metrics = field(default_factory=Metrics)
    cache: ResponseCache | None = None  # None: off
    dispatch: Dispatcher = None  # type: ignore[assignment]  # routing; built from the rest if None
    node_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # for the loop guard

    def __post_init__(self) -> None:
        if self.catalog is None:
            self.catalog = Catalog(self.store, self.file_config)
        if self.dispatch is None:
            from enginehouse.routing.dispatch import Dispatcher

            self.dispatch = Dispatcher(
                self.catalog, self.scheduler, self.file_config, self.config, self.metrics
            )
        self.dispatch.node_id = self.node_id


GATEWAY = web.AppKey("gateway", Gateway)


def json_response(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


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


#: The nodes a request has passed, by node id, comma-separated: a node that finds itself here refuses
#: the request (508), and never forwards it to a node already listed.
VIA = "X-Enginehouse-Via"


EXTRA_HEADERS = web.RequestKey("enginehouse.headers", dict)  # headers a handler wants on its response


def note_header(request: web.Request, name: str, value: str) -> None:
    """Add a header to this request's response, streamed or not (set at ``on_response_prepare``).
    The value may carry a client's model name: anything but printable ASCII is percent-encoded."""
    if not value.isascii() or not value.isprintable():
        value = quote(value, safe=" !#$&'()*+,/:;=?@[]~")
    request.setdefault(EXTRA_HEADERS, {})[name] = value


async def add_noted_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in request.get(EXTRA_HEADERS, {}).items():
        response.headers[name] = value


def engine_takes_tools(request: web.Request, record: ModelRecord) -> bool:
    """Whether the model's engine takes ``tools`` whatever the model's template says: llama-server run
    with --jinja (the default) has a generic tool-call format for any chat template; remote and vLLM
    engines answer for themselves."""
    if not is_gguf(record):
        return True
    entry = request.app[GATEWAY].scheduler.entry(record.name.display)
    return entry.llama_server.jinja is not False and entry.engine in ("auto", "llama-server")


def clamp_num_ctx(request: web.Request, record: ModelRecord, num_ctx: int | None) -> int | None:
    """A context above what the model was trained for is clamped to it, and the response says so."""
    trained = gguf_info_for(record).context_length if is_gguf(record) else None
    if num_ctx is None or not trained or num_ctx <= trained:
        return num_ctx
    log.warning(
        "%s: num_ctx %d is above the trained context %d; clamped", record.name.display, num_ctx, trained
    )
    note_header(request, "X-Enginehouse-Num-Ctx", f"{trained}; asked {num_ctx}, above the trained context")
    return trained
