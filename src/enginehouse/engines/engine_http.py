"""HTTP/1.1 to engines on plain ``http://``: the gateway's hot path, kept to one connect and one write.

Every request the gateway forwards pays its client's fixed cost before the engine sees a byte. aiohttp's
client costs about 0.45 ms a request on the reference machine (happy-eyeballs connect, request and
response tasks); this is an asyncio Protocol that writes the request in one call and feeds what comes
back to httptools' parser (llhttp, the one Node.js uses), so parsing, chunked framing included, stays in
C. HTTPS upstreams keep aiohttp (TLS, certificates); the engines this gateway starts are loopback HTTP.

Connections are reused only after a response with a Content-Length: llama-server closes a connection
after a streamed answer while still advertising keep-alive, so reusing one after a stream fails the next
request at random. Instead, each request that finds no idle connection leaves one spare opened behind
it (while the engine works), so the next request does not wait for a connect; a spare unused for
IDLE_SECONDS is dropped before the engine's own keep-alive timeout would close it. A reused or spare
connection that turns out closed is retried once on a fresh one. An answer released before its end is
never reused: its leftovers would precede the next answer.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from enginehouse.errors import DeadlineExceeded, RunnerError, UpstreamUnavailable

CONNECT_TIMEOUT = 10.0
IDLE_SECONDS = 4.0  # under cpp-httplib's 5 s keep-alive timeout, so an idle connection is not stale
HIGH_WATER = 256 * 1024  # bytes buffered unread before the engine is paused (a slow client)


#: What a push consumer says after each piece (:meth:`EngineResponse.push`): read on, wait until its
#: client drained, or stop (the answer is complete for it).
Flow = Literal["go", "wait", "stop"]


class _Stale(Exception):
    """A reused connection was closed before its answer began: retry on a fresh one."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 exchange at a time on one connection, its body handed over as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[str, str]] = []
        self._head: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._complete = False
        self._keep_alive = False  # llhttp resets its flags once a message ends: kept from that moment
        self._error: BaseException | None = None
        self.chunked = False
        self.closed = False
        self.idle_since = 0.0
        self._deadline: asyncio.TimerHandle | None = None
        self._sink: Callable[[bytes], Flow] | None = None  # a push consumer, fed in on_body
        self._halt: Flow | None = None  # what the sink last said, when not "go"
        self._sink_error: BaseException | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            message = f"the engine's answer is not valid HTTP: {exc}"
            if self._head is not None and not self._head.done():
                self._head.set_exception(RunnerError(message))
            self._fail(aiohttp.ClientPayloadError(message))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._head is not None and not self._head.done():
            self._head.set_exception(_Stale())
        elif not self._complete and exc is None and self._error is None and self._until_eof():
            self._complete = True  # a body without length or chunks ends with the connection (not a reset)
        elif not self._complete:
            self._fail(aiohttp.ServerDisconnectedError())
        self._wake()

    # -- httptools callbacks -------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.chunked = any(
            k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in self._headers
        )
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._sink is not None and self._halt is None:
            try:
                flow = self._sink(body)
            except BaseException as exc:  # the consumer's own failure (its client left): raised in push()
                self._sink_error, flow = exc, "stop"
            if flow != "go":
                self._halt = flow
                if self.transport is not None:
                    self.transport.pause_reading()  # pieces already read queue up below until push() resumes
                self._wake()
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()
        self._wake()

    # -- the exchange --------------------------------------------------------------------------------
    async def send(self, request: bytes) -> None:
        """Write the request and wait for the answer's status line and headers."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise _Stale()
        self._headers, self._complete, self._keep_alive, self._error = [], False, False, None
        self._chunks.clear()
        self._buffered = 0
        self._parser = httptools.HttpResponseParser(self)
        self._head = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        await self._head

    @property
    def status(self) -> int:
        return self._parser.get_status_code()

    @property
    def headers(self) -> list[tuple[str, str]]:
        return self._headers

    @property
    def reusable(self) -> bool:
        """Whether another request may use this connection: the answer was read to its end, had a
        length rather than chunks, and the engine keeps the connection open."""
        return (
            self._complete and not self._chunks and not self.closed and not self.chunked and self._keep_alive
        )

    async def next_chunk(self) -> bytes | None:
        """The next piece of body as it arrived, or None at its end."""
        while not self._chunks:
            if self._complete:
                return None
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered < HIGH_WATER // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    async def push(self, sink: Callable[[bytes], Flow], drain: Callable[[], Awaitable[None]]) -> None:
        """:meth:`EngineResponse.push`."""
        try:
            while True:
                while self._chunks:  # what arrived before push, or during a wait, goes first
                    flow = sink(self._chunks.popleft())
                    if flow == "stop":
                        return
                    if flow == "wait":
                        await drain()
                self._buffered = 0
                if self._complete:
                    return
                if self._error is not None:
                    raise self._error
                self._sink, self._halt = sink, None
                if self.transport is not None and not self.closed:
                    self._paused = False
                    self.transport.resume_reading()
                await self._settled()
                self._sink = None
                if self._sink_error is not None:
                    raise self._sink_error
                if self._halt == "stop":
                    return
                if self._halt == "wait":
                    await drain()
        finally:
            self._sink = None

    async def _settled(self) -> None:
        """Wait until the body ended, failed, or the push consumer halted."""
        while not (self._complete or self._error is not None or self._halt is not None or self._chunks):
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _until_eof(self) -> bool:
        names = {k.lower() for k, _ in self._headers}
        return not self.chunked and "content-length" not in names

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def close(self) -> None:
        self.cancel_deadline()
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    def set_deadline(self, seconds: float) -> None:
        """End this exchange with DeadlineExceeded after ``seconds``: the connection is dropped, which
        cancels the engine's generation (llama-server stops a task whose client left)."""
        self._deadline = asyncio.get_running_loop().call_later(seconds, self._expire, seconds)

    def cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, seconds: float) -> None:
        self._deadline = None
        error = DeadlineExceeded.after(seconds)
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self._fail(error)
        if self.transport is not None:
            self.transport.abort()
        self.closed = True
        self._wake()


class EngineResponse:
    """An engine's answer (:class:`~enginehouse.engines.upstream.EngineAnswer`): ``status``, ``headers``,
    ``iter_any()``, ``lines()``, ``read()``, ``release()`` and ``close()``."""

    def __init__(self, conn: _Connection, pool: EngineHTTP, key: tuple[str, int]) -> None:
        self._conn = conn
        self._pool = pool
        self._key = key
        self.status = conn.status
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict(conn.headers))
        self.reason = ""
        self._done = False

    async def iter_any(self) -> AsyncIterator[bytes]:
        while (chunk := await self._conn.next_chunk()) is not None:
            yield chunk

    async def push(self, sink: Callable[[bytes], Flow], drain: Callable[[], Awaitable[None]]) -> None:
        """Hand the body to ``sink`` piece by piece, called from the connection's own callback as each
        piece is parsed: no task switch per piece. Returns at the body's end or when ``sink`` says
        "stop"; on "wait" the engine is not read until ``drain()`` returned. An error of the exchange
        (the engine gone, the deadline), or one ``sink`` raised, is raised here."""
        await self._conn.push(sink, drain)

    async def lines(self) -> AsyncIterator[bytes]:
        """The body line by line, each with its ``\\n`` (the last one may have none)."""
        pending = b""
        async for chunk in self.iter_any():
            pending += chunk
            while (cut := pending.find(b"\n") + 1) > 0:
                yield pending[:cut]
                pending = pending[cut:]
        if pending:
            yield pending

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_any()])

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool if it can carry another."""
        if self._done:
            return
        self._done = True
        self._conn.cancel_deadline()
        if self._conn.reusable:
            self._pool._put(self._key, self._conn)
        else:
            self._conn.close()

    def close(self) -> None:
        """Drop the connection: for a stream, the engine sees it and stops generating."""
        self._done = True
        self._conn.close()

    async def __aenter__(self) -> EngineResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class EngineHTTP:
    """POSTs to plain-HTTP engines, with a small pool of idle keep-alive connections per host."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._opening: dict[tuple[str, int], asyncio.Task[None]] = {}

    def _put(self, key: tuple[str, int], conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.setdefault(key, []).append(conn)

    def _take(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_SECONDS:
                return conn
            conn.close()
        return None

    def _open_spare(self, host: str, port: int, url: str) -> None:
        key = (host, port)
        if key in self._opening or self._idle.get(key):
            return

        async def open_one() -> None:
            try:
                self._put(key, await self._connect(host, port, url))
            except UpstreamUnavailable:
                pass  # the engine went away: the next request reports it
            finally:
                self._opening.pop(key, None)

        self._opening[key] = asyncio.get_running_loop().create_task(open_one())

    async def _connect(self, host: str, port: int, url: str) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, conn = await loop.create_connection(_Connection, host, port)
        except (OSError, TimeoutError) as exc:
            raise UpstreamUnavailable(
                f"engine at {url} is unreachable: {exc or 'connect timed out'}"
            ) from exc
        return conn

    async def post(
        self, url: str, body: bytes, headers: dict[str, Any], deadline: float = 0.0
    ) -> EngineResponse:
        """POST ``body`` and return once the status line and headers arrived; release or close it.
        ``deadline`` (seconds, 0: none) bounds the whole exchange, the answer's body included."""
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        key = (host, port)
        authority = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"  # never a URL's user:pass@
        request = _request_bytes(parts.path or "/", parts.query, authority, body, headers)
        reused = self._take(key)
        for conn in (reused, None):
            fresh = conn is None
            if fresh:
                conn = await self._connect(host, port, url)
            try:
                if deadline > 0:
                    conn.set_deadline(deadline)
                await conn.send(request)
                self._open_spare(host, port, url)  # for the next request, unless one is idle
                return EngineResponse(conn, self, key)
            except _Stale:
                conn.close()
                if fresh:  # a reused one may have been closed while idle: that one is retried fresh
                    raise UpstreamUnavailable(
                        f"engine at {url} closed the connection before answering"
                    ) from None
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        for task in self._opening.values():
            task.cancel()
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _request_bytes(path: str, query: str, authority: str, body: bytes, headers: dict[str, Any]) -> bytes:
    target = f"{path}?{query}" if query else path
    lines = [f"POST {target} HTTP/1.1", f"Host: {authority}", f"Content-Length: {len(body)}"]
    for name, value in headers.items():
        text = str(value)
        if "\r" in text or "\n" in text or "\r" in name or "\n" in name:  # no header injection
            raise ValueError(f"header {name!r} has a line break")
        lines.append(f"{name}: {text}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
