"""Ollama's model-management endpoints that move models: create, blobs, pull and push.

Store writes hash and copy files, so they run in a worker thread; their progress reaches the client as
NDJSON lines through a queue, the way Ollama streams ``/api/create`` and ``/api/pull``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import Field

from enginehouse.api.ollama import _Wire
from enginehouse.errors import InvalidRequest, public_message
from enginehouse.server.app_state import GATEWAY, json_response, read_json
from enginehouse.server.blob_upload import receive_blob
from enginehouse.store import parse_digest
from enginehouse.store.create import create_from_request
from enginehouse.store.pull import pull_model
from enginehouse.store.push_ollama import push_ollama
from enginehouse.wire import ndjson

NDJSON = "application/x-ndjson"
Progress = Callable[[dict[str, Any]], None]


class CreateRequest(_Wire):
    model: str | None = None
    name: str | None = None  # the older spelling
    from_: str | None = Field(None, alias="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    messages: list[dict[str, Any]] | None = None
    license: str | list[str] | None = None
    modelfile: str | None = None
    quantize: str | None = None
    stream: bool = True


async def stream_progress(
    request: web.Request, work: Callable[[Progress], Awaitable[Any]], stream: bool
) -> web.StreamResponse:
    """Run ``work(progress)``; stream its progress dicts as NDJSON, or answer once at the end.

    Errors before the first line get a normal error status; after it, a final ``{"error": ...}`` line.
    A client that leaves cancels the work (a pull keeps what arrived, for a resume).
    """
    if not stream:
        await work(lambda event: None)  # raises: the middleware answers in Ollama's shape
        return json_response({"status": "success"})
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    task = asyncio.ensure_future(work(queue.put_nowait))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    out: web.StreamResponse | None = None
    try:
        while (event := await queue.get()) is not None:
            if out is None:
                out = web.StreamResponse(headers={"Content-Type": NDJSON})
                await out.prepare(request)
            await out.write(ndjson(event))
    except BaseException:
        task.cancel()
        raise
    if out is None:
        await task  # failed before any progress: a plain error response
        out = web.StreamResponse(headers={"Content-Type": NDJSON})
        await out.prepare(request)
    elif not task.cancelled() and (exc := task.exception()) is not None:
        await out.write(ndjson({"error": public_message(exc)}))
    await out.write_eof()
    return out


def in_thread(fn: Callable[[Progress], Any]) -> Callable[[Progress], Awaitable[Any]]:
    """Store writes hash and copy files: run them in a worker thread, reporting back to the loop."""

    async def run(progress: Progress) -> Any:
        loop = asyncio.get_running_loop()
        return await asyncio.to_thread(fn, lambda event: loop.call_soon_threadsafe(progress, event))

    return run


async def create(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    req = CreateRequest.model_validate(await read_json(request))
    name = req.model or req.name
    if not name:
        raise InvalidRequest("model is required")
    if req.quantize:
        raise InvalidRequest("quantize is not supported yet: quantize with llama.cpp's llama-quantize first")

    def work(progress: Progress) -> None:
        create_from_request(
            gw.store,
            name,
            from_=req.from_,
            files=req.files,
            template=req.template,
            system=req.system,
            parameters=req.parameters,
            messages=req.messages,
            license=req.license,
            adapters=req.adapters,
            modelfile_text=req.modelfile,
            allow_paths=False,
            progress=progress,
        )

    return await stream_progress(request, in_thread(work), req.stream)


class PullRequest(_Wire):
    model: str | None = None
    name: str | None = None  # the older spelling
    insecure: bool = False
    stream: bool = True


async def pull(request: web.Request) -> web.StreamResponse:
    """Ollama's ``/api/pull``: its progress lines, streamed; ``stream: false`` answers once at the end."""
    gw = request.app[GATEWAY]
    req = PullRequest.model_validate(await read_json(request))
    name = req.model or req.name
    if not name:
        raise InvalidRequest("model is required")
    return await stream_progress(
        request,
        lambda progress: pull_model(gw.store, name, insecure=req.insecure, progress=progress),
        req.stream,
    )


async def push(request: web.Request) -> web.StreamResponse:
    """Ollama's ``/api/push``: every layer the registry lacks, then the manifest; progress streamed."""
    gw = request.app[GATEWAY]
    req = PullRequest.model_validate(await read_json(request))  # the same fields: model, insecure, stream
    name = req.model or req.name
    if not name:
        raise InvalidRequest("model is required")
    return await stream_progress(
        request,
        lambda progress: push_ollama(gw.store, name, insecure=req.insecure, progress=progress),
        req.stream,
    )


async def blob_head(request: web.Request) -> web.Response:
    digest = parse_digest(request.match_info["digest"])
    has = request.app[GATEWAY].store.has_blob(digest)
    return web.Response(status=200 if has else 404)


async def blob_upload(request: web.Request) -> web.Response:
    """Stream an upload into the store; its sha256 must match the digest in the path."""
    gw = request.app[GATEWAY]
    digest = parse_digest(request.match_info["digest"])
    if gw.store.has_blob(digest):
        return web.Response(status=200)
    await receive_blob(request, gw.store, digest, gw.config)
    return web.Response(status=201)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/create", create)
    r.add_post("/api/pull", pull)
    r.add_post("/api/push", push)
    r.add_route("HEAD", "/api/blobs/{digest}", blob_head)
    r.add_post("/api/blobs/{digest}", blob_upload)
