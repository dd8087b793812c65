"""HTTP to engines, with the one retry that pooled keep-alive connections need.

Plain ``http://`` engines (every runner this gateway starts) go through engine_http's lean client, the
hot path; ``https://`` upstreams through aiohttp. Either way the caller gets an :class:`EngineAnswer`
(one interface, whichever client carried it), and the request's deadline (ENGINEHOUSE_REQUEST_TIMEOUT)
ends it with DeadlineExceeded, before the engine's headers or while its body is read. A pooled
connection can go stale (the engine closed it while idle, or restarted); the first write then fails
before any byte reached the client. That case, and only that case, is retried once on a fresh
connection. An engine that refuses connections or dies mid-stream is reported, not retried here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import aiohttp
import orjson

from enginehouse import http_client
from enginehouse.engines.engine_http import EngineHTTP, EngineResponse, Flow
from enginehouse.errors import (
    ContextOverflow,
    DeadlineExceeded,
    InvalidRequest,
    LoopDetected,
    RunnerError,
    UpstreamUnavailable,
)

_STALE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class EngineAnswer(Protocol):
    """An engine's answer once its status line arrived; released (reusable) or closed by the caller."""

    status: int
    reason: str | None

    @property
    def headers(self) -> Any: ...  # a case-insensitive mapping
    def iter_any(self) -> AsyncIterator[bytes]: ...
    async def read(self) -> bytes: ...
    def release(self) -> None: ...
    def close(self) -> None: ...


async def pump(
    resp: EngineAnswer, sink: Callable[[bytes], Flow], drain: Callable[[], Awaitable[None]]
) -> None:
    """Hand an answer's body to ``sink`` piece by piece, until its end or until ``sink`` says "stop"; on
    "wait" nothing more is read until ``drain()`` returned. The lean client pushes the pieces from its
    connection's callback (no task switch per piece: most of what relaying a token costs); an aiohttp
    answer is read here."""
    if isinstance(resp, EngineResponse):
        await resp.push(sink, drain)
        return
    async for chunk in resp.iter_any():
        flow = sink(chunk)
        if flow == "stop":
            return
        if flow == "wait":
            await drain()


class _AiohttpAnswer:
    """An https upstream's aiohttp response as an :class:`EngineAnswer`. Its request's deadline is
    aiohttp's ``total`` timeout, which runs on while the body is read: a plain TimeoutError there (no
    other timeout of ours covers the body) is the deadline, raised as on the plain path."""

    def __init__(self, resp: aiohttp.ClientResponse, deadline: float) -> None:
        self._resp = resp
        self._deadline = deadline
        self.status = resp.status
        self.reason = resp.reason

    @property
    def headers(self) -> Any:
        return self._resp.headers

    async def iter_any(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except TimeoutError as exc:
            raise DeadlineExceeded.after(self._deadline) from exc

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except TimeoutError as exc:
            raise DeadlineExceeded.after(self._deadline) from exc

    def release(self) -> None:
        self._resp.release()

    def close(self) -> None:
        self._resp.close()

    async def __aenter__(self) -> _AiohttpAnswer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class Upstream:
    def __init__(self, *, limit: int = 0, deadline: float = 0.0) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._limit = limit
        self.deadline = deadline  # seconds an engine may spend on one request, body included (0: no limit)
        self._plain = EngineHTTP()
        self._timeout = aiohttp.ClientTimeout(total=deadline or None, sock_connect=10)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = http_client.session(
                timeout=self._timeout,
                connector_args={"limit": self._limit, "keepalive_timeout": 30},
            )
        return self._session

    async def close(self) -> None:
        self._plain.close()
        if self._session is not None:
            await self._session.close()

    async def post(
        self, url: str, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None
    ) -> EngineResponse | _AiohttpAnswer:
        """POST and return the answer once its status line arrived; the caller must release it."""
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if url.startswith("http://"):
            return await self._plain.post(url, data, hdrs, self.deadline)
        for attempt in (1, 2):
            try:
                return _AiohttpAnswer(await self.session.post(url, data=data, headers=hdrs), self.deadline)
            except _STALE as exc:
                if attempt == 2 or isinstance(exc, aiohttp.ClientConnectorError):
                    raise UpstreamUnavailable(f"engine at {url} is unreachable: {exc}") from exc
            except aiohttp.ClientError as exc:  # a connect timeout too (a ClientError and a TimeoutError)
                raise UpstreamUnavailable(f"engine at {url} is unreachable: {exc}") from exc
            except TimeoutError as exc:  # the deadline ran out before the engine's headers
                raise DeadlineExceeded.after(self.deadline) from exc
        raise AssertionError("unreachable")

    async def post_json(
        self,
        url: str,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
        refused: type[RunnerError] = RunnerError,
    ) -> Any:
        """POST and parse a JSON answer; an error answer raises as in :func:`raise_for_engine`."""
        resp = await self.post(url, body, headers)
        async with resp:
            await raise_for_engine(resp, refused)
            return orjson.loads(await resp.read())

    async def get_json(self, url: str, timeout: float = 10) -> Any:
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            resp.raise_for_status()
            return await resp.json(loads=orjson.loads)


async def raise_for_engine(resp: EngineAnswer, refused: type[RunnerError] = RunnerError) -> None:
    """An engine's non-200 answer as our error: its 400 is the client's (InvalidRequest), its 500
    ``refused`` (the engine's :attr:`~enginehouse.engines.base.Engine.refused`), anything else a
    RunnerError, with the engine's own message either way."""
    if resp.status != 200:
        message = await error_text(resp)
        if resp.status == 400 and "context" in message and ("exceed" in message or "larger" in message):
            raise ContextOverflow(message)  # llama-server's exceed_context_size_error, vLLM's too
        if resp.status == 508:
            raise LoopDetected(message)  # another node: the request already passed it
        if resp.status == 500:
            raise refused(message)
        raise (InvalidRequest if resp.status == 400 else RunnerError)(message)


async def error_text(resp: EngineAnswer) -> str:
    """The engine's own error message from a non-2xx answer (OpenAI or llama.cpp shape)."""
    raw = await resp.read()
    try:
        data = orjson.loads(raw)
        err = data.get("error", data)
        return str(err.get("message", err) if isinstance(err, dict) else err)
    except (orjson.JSONDecodeError, AttributeError):
        return raw.decode(errors="replace")[:500] or resp.reason or "error"
