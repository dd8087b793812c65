"""The aiohttp glue, used the way the routes will: a real aiohttp server whose "engine" is a recorded
answer, and a real client that sees miss, then hit, with the same bytes and the same events."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from enginehouse.cache import CACHE_HEADER, CacheRequest, CacheSettings, ResponseCache
from enginehouse.server.cache_http import respond_from_cache, tee

DATA = Path(__file__).parent / "data" / "cache"
ANSWERS = {
    "/api/chat": ("ollama", "ollama-chat-toolcall-stream.ndjson", "application/x-ndjson"),
    "/v1/chat/completions": ("openai", "openai-chat-stream.sse", "text/event-stream"),
}
CACHE = web.AppKey("cache", ResponseCache)
ENGINE_CALLS = web.AppKey("engine_calls", list)


async def handler(request: web.Request) -> web.StreamResponse:
    """A door's handler, cache included: the pattern the routes follow."""
    cache = request.app[CACHE]
    body: dict[str, Any] = orjson.loads(await request.read())
    door, answer, content_type = ANSWERS[request.path]
    key = request.headers.get("Authorization", "").removeprefix("Bearer ") or None
    plan = cache.plan(CacheRequest(door, request.path, body, "sha256:1", api_key=key), request.headers)
    if plan is not None and (entry := await cache.lookup(plan)) is not None:
        return await respond_from_cache(request, entry)
    request.app[ENGINE_CALLS].append(request.path)
    recorder = cache.recorder(plan, content_type) if plan is not None else None
    headers = {"Content-Type": content_type}
    if plan is not None:
        headers[CACHE_HEADER] = "miss"
    out = web.StreamResponse(headers=headers)
    await out.prepare(request)
    write = tee(out.write, recorder)
    data = (DATA / answer).read_bytes()
    sep = b"\n\n" if content_type == "text/event-stream" else b"\n"
    for event in data.split(sep)[:-1]:  # the engine's events, one write each
        await write(event + sep)
    await out.write_eof()
    if plan is not None:
        cache.keep(plan, recorder)
    return out


async def fetch(session: aiohttp.ClientSession, url: str, body: dict, **headers: str) -> tuple[str, bytes]:
    async with session.post(url, json=body, headers=headers) as resp:
        assert resp.status == 200
        return resp.headers.get(CACHE_HEADER, ""), await resp.read()


@pytest.mark.parametrize("path", list(ANSWERS))
def test_miss_then_hit_over_http(path: str) -> None:
    door = ANSWERS[path][0]
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    body |= {"options": {"temperature": 0}} if door == "ollama" else {"temperature": 0, "stream": True}

    async def scenario() -> None:
        app = web.Application()
        app[CACHE] = ResponseCache(CacheSettings(url="memory"))
        app[ENGINE_CALLS] = []
        app.router.add_post(path, handler)
        async with TestServer(app) as server, aiohttp.ClientSession() as session:
            url = str(server.make_url(path))
            first = await fetch(session, url, body)
            await asyncio.sleep(0.01)  # the store runs after the answer
            reordered = dict(reversed(list(body.items())))
            second = await fetch(session, url, reordered)
            assert first[0] == "miss" and second[0] == "hit"
            assert second[1] == first[1] == (DATA / ANSWERS[path][1]).read_bytes()
            assert app[ENGINE_CALLS] == [path]

            other_key = await fetch(session, url, body, Authorization="Bearer other")
            assert other_key[0] == "miss"
            no_cache = await fetch(session, url, body, **{"Cache-Control": "no-cache"})
            assert no_cache[0] == "miss"
            hot = {"options": {"temperature": 0.9}} if door == "ollama" else {"temperature": 1}
            assert (await fetch(session, url, body | hot))[0] == ""  # not cacheable: no header
            assert len(app[ENGINE_CALLS]) == 4
            await app[CACHE].close()

    asyncio.run(scenario())
