"""The response cache in front of the doors: a hit is answered before any model is loaded or any slot
taken; a miss is recorded as the door writes it and stored once it completed.

Handlers wrap their answer in :func:`answer_cached` and open their streams with :func:`open_stream`,
which records only when the cache asked for it, so an uncached request pays nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client.registry import Collector

from enginehouse.cache import (
    CACHE_HEADER,
    CacheRequest,
    Recorder,
    ResponseCache,
    digest_of,
    metric_families,
)
from enginehouse.config_file import entry_dict
from enginehouse.server.app_state import GATEWAY, note_header
from enginehouse.server.cache_http import respond_from_cache
from enginehouse.store import ModelRecord

_RECORDER = web.RequestKey("enginehouse.cache.recorder", object)  # content type -> Recorder | None


class RecordingStream(web.StreamResponse):
    """A stream whose body is also handed to the cache's recorder (by the relay's writer, which writes
    to the transport itself: ``server/relay.BodyWriter``)."""

    recorder: Recorder | None = None


def recorder_of(response: web.StreamResponse) -> Recorder | None:
    """The recorder a stream opened by :func:`open_stream` feeds, if the cache asked for one."""
    return response.recorder if isinstance(response, RecordingStream) else None


def open_stream(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    make = request.get(_RECORDER)
    if make is None:
        return web.StreamResponse(headers=headers)
    out = RecordingStream(headers=headers)
    out.recorder = make(headers.get("Content-Type", ""))
    return out


async def answer_cached(
    request: web.Request,
    door: str,
    endpoint: str,
    body: dict[str, Any],
    record: ModelRecord,
    answer: Callable[[], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    cache: ResponseCache | None = gw.cache
    if cache is None:
        return await answer()
    entry = gw.scheduler.entry(record.name.display)
    # The caller's key, as the key check reads it: the bearer token, else Anthropic's x-api-key.
    auth = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    auth = auth or request.headers.get("x-api-key", "").strip()
    key = CacheRequest(
        door,  # type: ignore[arg-type]
        endpoint,
        body,
        record.manifest_digest,
        digest_of(record.template or ""),
        {"engine": entry.engine, **entry_dict(entry)},
        auth or None,
        record.params,
    )
    plan = cache.plan(key, request.headers)
    if plan is None:
        return await answer()
    if plan.lookup and (hit := await cache.lookup(plan)) is not None:
        return await respond_from_cache(request, hit)
    note_header(request, CACHE_HEADER, "miss")
    request[_RECORDER] = lambda content_type: cache.recorder(plan, content_type)
    response = await answer()
    recorder = recorder_of(response)
    if isinstance(response, web.Response) and response.status == 200 and isinstance(response.body, bytes):
        recorder = cache.recorder(plan, response.content_type)
        if recorder is not None:
            recorder.feed(response.body)
    cache.keep(plan, recorder)
    return response


class CacheCollector(Collector):
    def __init__(self, cache: ResponseCache) -> None:
        self.cache = cache

    def describe(self) -> Iterator[Any]:
        return iter(())

    def collect(self) -> Iterator[Any]:
        backend = self.cache.backend
        yield from metric_families(self.cache.stats, backend.name, getattr(backend, "size_bytes", None))
