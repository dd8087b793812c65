"""An OpenAI-compatible stand-in engine for the behaviours a real runner cannot show on demand (a crash
mid-answer, a flood, a refusal): ``/v1/models`` lists ``model_ids``, and each subclass answers
``/v1/chat/completions`` its own way, streaming with :func:`sse_chunk`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from enginehouse.wire import sse
from tests.fakes.threaded import ThreadedApps


def sse_chunk(choice: dict[str, Any], **fields: Any) -> bytes:
    """One ``chat.completion.chunk`` event with one choice."""
    return sse({"object": "chat.completion.chunk", **fields, "choices": [{"index": 0, **choice}]})


class OpenAIUpstream(ThreadedApps):
    model_ids: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.port = 0

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": m, "object": "model"} for m in self.model_ids]}
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    async def start_async(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        (self.port,) = await self.serve((app, 0))
