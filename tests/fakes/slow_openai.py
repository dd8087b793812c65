"""Slow OpenAI-compatible upstreams: each answers ``/v1/chat/completions`` with a short SSE stream after a
delay, counting the requests it holds now and at most, so that a test can watch how a gateway spreads
concurrent requests over replicas. All of them run on one loop in one thread (:class:`ThreadedApps`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from tests.fakes.threaded import ThreadedApps

VIA = "X-Enginehouse-Via"


@dataclass
class SlowReplica:
    """One fake engine's counters (touched only on the fakes' loop; read from the test's thread)."""

    name: str
    delay: float
    port: int = 0
    in_flight: int = 0
    peak: int = 0
    served: int = 0
    cut: bool = False  # die after the first chunk (the engine crashing mid-stream)
    via: list[str | None] = field(default_factory=list)  # the loop-guard header of each request

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "x", "object": "model"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.via.append(request.headers.get(VIA))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delay)  # "prompt processing": nothing is sent meanwhile
            out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await out.prepare(request)
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": body.get("model")}
            for delta, finish in (({"role": "assistant", "content": self.name}, None), ({}, "stop")):
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
                await out.write(b"data: " + orjson.dumps({**chunk, "choices": [choice]}) + b"\n\n")
                if self.cut:
                    await asyncio.sleep(0.05)
                    assert request.transport is not None
                    request.transport.abort()
                    return out
            await out.write(b"data: [DONE]\n\n")
            await out.write_eof()
            self.served += 1
            return out
        finally:
            self.in_flight -= 1


class SlowUpstreams(ThreadedApps):
    """``count`` slow replicas named ``s1``, ``s2``, ... on free ports of 127.0.0.1."""

    thread_name = "slow-upstreams"

    def __init__(self, count: int = 3, delay: float = 1.0) -> None:
        super().__init__()
        self.replicas = [SlowReplica(f"s{i}", delay) for i in range(1, count + 1)]

    async def start_async(self) -> None:
        apps = []
        for replica in self.replicas:
            app = web.Application()
            app.router.add_get("/v1/models", replica.models)
            app.router.add_post("/v1/chat/completions", replica.chat)
            apps.append((app, 0))
        for replica, port in zip(self.replicas, await self.serve(*apps), strict=True):
            replica.port = port

    def in_flight(self) -> list[int]:
        return [r.in_flight for r in self.replicas]

    def reset(self) -> None:
        for r in self.replicas:
            r.peak = r.served = 0
            r.cut = False
            r.via.clear()
