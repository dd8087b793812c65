"""aiohttp glue for the routes: answer a hit, and tee a miss's writes into a recorder."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from enginehouse.cache.record import Entry, Framing, Recorder, replay
from enginehouse.cache.response_cache import CACHE_HEADER

Write = Callable[[bytes], Awaitable[object]]


async def respond_from_cache(
    request: web.Request, entry: Entry, coalesce_bytes: int = 0
) -> web.StreamResponse:
    """Answer with a stored entry: one body, or the original stream event by event (``coalesce_bytes``:
    whole events grouped into writes of up to that size, see :func:`replay`)."""
    headers = {
        "Content-Type": entry.content_type,
        CACHE_HEADER: "hit",
        "Age": str(max(0, int(time.time() - entry.stored_at))),
    }
    if not entry.streamed:
        return web.Response(status=entry.status, body=entry.body, headers=headers)
    if entry.framing is Framing.SSE:
        headers["Cache-Control"] = "no-cache"  # as the OpenAI door's own streams say
    out = web.StreamResponse(status=entry.status, headers=headers)
    await out.prepare(request)
    await replay(entry, out.write, coalesce_bytes)
    await out.write_eof()
    return out


def tee(write: Write, recorder: Recorder | None) -> Write:
    """``write``, also feeding each chunk to ``recorder`` once it is written (``write`` itself when
    there is nothing to record, so an uncached request pays nothing)."""
    if recorder is None:
        return write

    async def write_and_record(data: bytes) -> None:
        await write(data)
        recorder.feed(data)

    return write_and_record
