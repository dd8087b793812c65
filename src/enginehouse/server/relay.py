"""The one relay: an engine's answer to the client, for every door.

Two shapes of answer reach a client:

- **events** (:func:`relay_events`): the engine's answer as canonical events, written by the door's
  encoder (NDJSON lines, SSE chunks, or one folded body for ``stream: false``);
- **bytes** (:func:`relay_bytes`): client and engine speak the same dialect, so the engine's bytes go
  back untouched but for the ``model`` field (a byte replace, only when the names differ).

Both: the response opens once the engine accepted the request (a refusal before that is an exception,
and routing may try another candidate); after the first byte a failure ends the stream with an error
in the door's own shape and is noted on the :class:`~enginehouse.routing.dispatch.Outcome`, so it still
counts against the model's health; a client that leaves closes the engine's stream, which cancels its
generation; the response is opened by :func:`~enginehouse.server.caching.open_stream`, which records
what is written when the response cache asked; metrics are observed once per answer, never per chunk.
A stream's pieces are relayed as they arrive, in the engine connection's own callback
(:func:`~enginehouse.engines.upstream.pump`), and written by :class:`BodyWriter`: no task switch per
token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from aiohttp import ClientConnectionResetError, web

from enginehouse.canonical import Event, Failure
from enginehouse.engines.base import STREAM_BROKEN, EventStream
from enginehouse.engines.engine_http import Flow
from enginehouse.engines.upstream import EngineAnswer, pump
from enginehouse.errors import EnginehouseError, EngineRefused, RunnerError
from enginehouse.routing.dispatch import Outcome
from enginehouse.server.app_state import json_response
from enginehouse.server.caching import open_stream, recorder_of


class Encoder(Protocol):
    """A door's writer of canonical events (``api/*_door.py``)."""

    content_type: str
    closing_bytes: bytes  # after the last object (OpenAI's ``data: [DONE]``)
    tally: Any

    def objects(self, event: Event) -> list[dict[str, Any]]: ...
    def closing(self) -> list[dict[str, Any]]: ...
    def fold(self, objects: list[dict[str, Any]]) -> dict[str, Any]: ...
    def frame(self, obj: Any) -> bytes: ...
    def error(self, exc: EnginehouseError) -> bytes: ...


def _objects(events: list[Event], encoder: Encoder) -> list[dict[str, Any]]:
    """The door's objects for some of an answer's events; the engine's in-band failure raises here."""
    out: list[dict[str, Any]] = []
    now = time.monotonic()
    for event in events:
        if isinstance(event, Failure):
            raise EngineRefused(event.message)
        encoder.tally.see(event, now)
        out += encoder.objects(event)
    return out


class BodyWriter:
    """A prepared response's body, written straight to the client's transport from plain code (the relay
    runs in the engine connection's callback, where nothing can be awaited): the chunked framing
    aiohttp announced in ``prepare()``, and the cache's recorder fed the body's bytes. Flow control is
    aiohttp's own: the transport pauses its protocol past its high-water mark, and :meth:`drain` waits
    as aiohttp's writer would."""

    def __init__(self, request: web.Request, out: web.StreamResponse) -> None:
        self._protocol = request.protocol
        self._chunked = out.headers.get("Transfer-Encoding", "").lower() == "chunked"
        self._recorder = recorder_of(out)

    def write(self, data: bytes) -> bool:
        """Send ``data``; True when the client reads slower than we write (then :meth:`drain`)."""
        transport = self._protocol.transport
        if transport is None or transport.is_closing():
            raise ClientConnectionResetError("the client closed the connection")
        if data:
            transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
            if self._recorder is not None:
                self._recorder.feed(data)
        return self._protocol.writing_paused

    async def drain(self) -> None:
        if self._protocol.transport is not None and self._protocol.writing_paused:
            await self._protocol._drain_helper()  # aiohttp's StreamWriter.drain, which our writes bypass


async def _nothing() -> None:
    """No client to drain: a folded answer is gathered in memory."""


async def relay_events(
    request: web.Request, answer: EventStream, encoder: Encoder, outcome: Outcome, stream: bool
) -> web.StreamResponse:
    try:
        if not stream:
            objects: list[dict[str, Any]] = []

            def gather(events: list[Event]) -> bool:
                objects.extend(_objects(events, encoder))
                return False  # never slow: nothing is sent before the end

            await answer.run(gather, _nothing)
            return json_response(encoder.fold(objects + encoder.closing()))
        out = open_stream(request, {"Content-Type": encoder.content_type, "Cache-Control": "no-cache"})
        await out.prepare(request)
        body = BodyWriter(request, out)

        def deliver(events: list[Event]) -> bool:
            return body.write(b"".join([encoder.frame(obj) for obj in _objects(events, encoder)]))

        try:
            await answer.run(deliver, body.drain)
            body.write(b"".join(encoder.frame(o) for o in encoder.closing()) + encoder.closing_bytes)
        except EnginehouseError as exc:  # after the first byte the status is sent: reported in-band
            outcome.fail(exc)
            body.write(encoder.error(exc))
        await out.write_eof()
        return out
    finally:
        answer.close()  # also when the client left: the engine stops generating


def renamer(served: str, asked: str) -> Callable[[bytes], bytes] | None:
    """A byte replace of the ``model`` field, or None when the names agree (no per-chunk cost). Engines
    write compact JSON (llama-server, vLLM, Ollama), so the field has one spelling."""
    if served == asked:
        return None
    old, new = b'"model":' + orjson.dumps(served), b'"model":' + orjson.dumps(asked)
    return lambda chunk: chunk.replace(old, new)


class ByteFraming(Protocol):
    """How a dialect's stream is cut and ends, for :func:`relay_bytes`."""

    line_based: bool  # renames must see whole lines (NDJSON), or events arrive whole (SSE from engines)
    end_marker: bytes | None  # the stream's last event; the relay stops there, not at the close

    def error(self, exc: EnginehouseError) -> bytes: ...


async def relay_bytes(
    request: web.Request,
    resp: EngineAnswer,
    framing: ByteFraming,
    outcome: Outcome,
    rename: Callable[[bytes], bytes] | None,
    observe: Callable[[float | None, bytes], None],
) -> web.StreamResponse:
    """Stream (or, without chunked framing, return) the engine's answer as it came. ``observe(first
    byte time, the answer's tail)`` is called once, at the end."""
    streaming = resp.headers.get("Content-Type", "").startswith(("text/event-stream", "application/x-ndjson"))
    content_type = resp.headers.get("Content-Type", "application/json")
    whole = False
    try:
        if not streaming:
            body = await resp.read()
            whole = True
            observe(None, body)
            return web.Response(
                status=resp.status,
                body=rename(body) if rename else body,
                headers={"Content-Type": content_type},
            )
        headers = {"Content-Type": content_type}
        if content_type.startswith("text/event-stream"):
            headers["Cache-Control"] = "no-cache"
        out = open_stream(request, headers)
        await out.prepare(request)
        body = BodyWriter(request, out)
        first: float | None = None
        prev = b""  # the engine's counts are in the last events before the end
        pending = b""  # NDJSON with a rename: the unfinished line
        ended = False

        def sink(chunk: bytes) -> Flow:
            nonlocal first, prev, pending, ended
            first = first or time.monotonic()
            slow = False
            if rename is not None and framing.line_based:
                pending += chunk
                cut = pending.rfind(b"\n") + 1
                if cut:
                    slow = body.write(rename(pending[:cut]))
                    pending = pending[cut:]
            else:
                slow = body.write(rename(chunk) if rename else chunk)
            if framing.end_marker is not None and chunk.endswith(framing.end_marker):
                observe(first, prev[-4096:] + chunk)  # llama-server's end: do not wait for the close
                ended = True
                return "stop"
            prev = chunk
            return "wait" if slow else "go"

        try:
            await pump(resp, sink, body.drain)
            if pending:
                body.write(rename(pending) if rename else pending)
            if not ended:
                observe(first, prev[-4096:])
        except (*STREAM_BROKEN, EnginehouseError) as exc:
            # EnginehouseError: the request's deadline (engine_http) cuts the stream and says so
            error = (
                exc
                if isinstance(exc, EnginehouseError)
                else RunnerError("the engine closed the stream early")
            )
            outcome.fail(error)
            body.write(framing.error(error))
        await out.write_eof()
        return out
    finally:
        if whole:
            resp.release()  # a whole answer with a length: its connection may carry the next request
        else:
            resp.close()  # a stream is never pooled (llama-server closes it unannounced); the client left
