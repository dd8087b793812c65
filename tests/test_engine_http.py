"""engine_http against scripted engines: tiny asyncio servers on loopback that answer with raw bytes,
fail on demand and number the connections they accept, which a real llama-server cannot be made to do.

Each test runs its own server and client under one ``asyncio.run`` with a bounded timeout, so a bug
fails a test instead of hanging the run."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import closing
from typing import Any

import aiohttp
import pytest

from enginehouse.engines.engine_http import HIGH_WATER, EngineHTTP, Flow
from enginehouse.errors import RunnerError, UpstreamUnavailable

TIMEOUT = 5.0
JSON = {"Content-Type": "application/json"}

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
Script = Callable[["Engine", int, Reader, Writer], Awaitable[None]]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll: bounded by run()'s timeout."""
    while not predicate():
        await asyncio.sleep(0.005)


def fixed(body: bytes, *headers: bytes) -> bytes:
    """A Content-Length answer, keep-alive by HTTP/1.1's default."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + b"".join(h + b"\r\n" for h in headers)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def chunked(*pieces: bytes) -> bytes:
    return CHUNKED_HEAD + b"".join(chunk(p) for p in pieces) + b"0\r\n\r\n"


class Engine:
    """A scripted engine on a free loopback port. Connections are numbered from 1 in accept order;
    ``served`` holds the connection number of each request read, ``eof`` the connections the client
    closed (seen while the script waited for a request)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.accepted = 0
        self.served: list[int] = []
        self.heads: list[bytes] = []
        self.eof: set[int] = set()
        self._writers: list[Writer] = []

    async def __aenter__(self) -> Engine:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _accept(self, reader: Reader, writer: Writer) -> None:
        self.accepted += 1
        self._writers.append(writer)
        try:
            await self.script(self, self.accepted, reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def request(self, n: int, reader: Reader) -> bytes | None:
        """The next request's body on connection ``n``, or None once the client closed it."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.eof.add(n)
            return None
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = await reader.readexactly(length)
        self.served.append(n)
        self.heads.append(head)
        return body


def answering(*responses: bytes) -> Script:
    """Answer every request, on any connection, until the client closes it: the i-th request overall
    gets the i-th response (the last one repeats)."""

    async def script(engine: Engine, n: int, reader: Reader, writer: Writer) -> None:
        while await engine.request(n, reader) is not None:
            writer.write(responses[min(len(engine.served), len(responses)) - 1])
            await writer.drain()

    return script


async def spare_ready(engine: Engine, n: int) -> None:
    """Wait until the engine accepted connection ``n`` (a spare) and the client has pooled it: the pool
    adds it a few loop turns after the accept, and nothing public says when."""
    await wait_until(lambda: engine.accepted >= n)
    await asyncio.sleep(0.05)


def test_a_content_length_answer_is_read_with_case_insensitive_headers() -> None:
    async def scenario() -> None:
        async with Engine(answering(fixed(b'{"ok":true}', b"X-Engine: llama"))) as engine:
            with closing(EngineHTTP()) as http:
                async with await http.post(engine.url, b'{"a":1}', JSON) as resp:
                    assert resp.status == 200
                    assert resp.headers["content-type"] == "application/json"
                    assert resp.headers["X-ENGINE"] == "llama"
                    assert await resp.read() == b'{"ok":true}'
                head = engine.heads[0].decode("latin-1")  # one well-formed POST, body length included
                assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
                assert f"Host: {engine.url.split('/')[2]}\r\n" in head
                assert "Content-Length: 7\r\n" in head
                assert "Content-Type: application/json\r\n" in head

    run(scenario())


def test_a_content_length_connection_is_reused_after_release() -> None:
    async def scenario() -> None:
        async with Engine(answering(fixed(b"ok"))) as engine:
            with closing(EngineHTTP()) as http:
                resp = await http.post(engine.url, b"{}", JSON)
                assert await resp.read() == b"ok"
                # Nothing was idle when the first request went out, so a spare (connection 2) was opened
                # behind it. Releasing after the spare is pooled makes connection 1 the last idled one,
                # which the next request takes back.
                await spare_ready(engine, 2)
                resp.release()
                async with await http.post(engine.url, b"{}", JSON) as again:
                    assert await again.read() == b"ok"
                assert engine.served == [1, 1]
                await asyncio.sleep(0.05)  # room for a (wrong) third connection to show up
                # The second send left the spare idle, so it opened no other: two connections in all.
                assert engine.accepted == 2

    run(scenario())


def test_a_chunked_answer_is_decoded_and_its_connection_never_reused() -> None:
    pieces = [b'data: {"a":1}\n\n', b'data: {"b":2}\n\n', b"data: [DONE]\n\n"]

    async def scenario() -> None:
        async with Engine(answering(chunked(*pieces))) as engine:
            with closing(EngineHTTP()) as http:
                resp = await http.post(engine.url, b"{}", JSON)
                # One write, so each chunk arrives whole: one piece per chunk, framing stripped.
                assert [p async for p in resp.iter_any()] == pieces
                await spare_ready(engine, 2)
                resp.release()
                await wait_until(lambda: 1 in engine.eof)  # closed on release, not pooled
                async with await http.post(engine.url, b"{}", JSON) as again:
                    assert await again.read() == b"".join(pieces)
                # The second request went out on the spare; that left nothing idle, so it opened a new
                # spare (connection 3), which no request used.
                await wait_until(lambda: engine.accepted == 3)
                assert engine.served == [1, 2]
                await wait_until(lambda: 2 in engine.eof)

    run(scenario())


def test_lines_are_whole_across_chunk_boundaries() -> None:
    async def scenario() -> None:
        answer = chunked(b"data: a", b"bc\n\nda", b"ta: [DONE]\n\n", b"tail")
        async with Engine(answering(answer)) as engine:
            with closing(EngineHTTP()) as http:
                async with await http.post(engine.url, b"{}", JSON) as resp:
                    lines = [line async for line in resp.lines()]
                assert lines == [b"data: abc\n", b"\n", b"data: [DONE]\n", b"\n", b"tail"]

    run(scenario())


def test_connections_closed_while_idle_are_replaced_by_a_fresh_one() -> None:
    async def script(engine: Engine, n: int, reader: Reader, writer: Writer) -> None:
        if n == 2:
            return  # the spare: closed unused
        while await engine.request(n, reader) is not None:
            writer.write(fixed(b"ok", b"Connection: keep-alive"))
            await writer.drain()
            if n == 1:
                return  # advertised keep-alive, closed anyway

    async def scenario() -> None:
        async with Engine(script) as engine:
            with closing(EngineHTTP()) as http:
                async with await http.post(engine.url, b"{}", JSON) as resp:
                    assert await resp.read() == b"ok"
                await spare_ready(engine, 2)  # so the fresh connection is number 3
                # Whether the client noticed the closes yet or finds out on sending, it gets there.
                async with await http.post(engine.url, b"{}", JSON) as again:
                    assert again.status == 200
                    assert await again.read() == b"ok"
                assert engine.served == [1, 3]

    run(scenario())


def test_a_pooled_connection_closed_as_the_request_arrives_is_retried_on_a_fresh_one() -> None:
    # An engine's keep-alive timer firing just as the request comes in: the request was written on a
    # pooled connection, which then closes before any answer.
    async def script(engine: Engine, n: int, reader: Reader, writer: Writer) -> None:
        answered = False
        while await engine.request(n, reader) is not None:
            if n == 2 or (n == 1 and answered):
                return
            writer.write(fixed(b"ok"))
            await writer.drain()
            answered = True

    async def scenario() -> None:
        async with Engine(script) as engine:
            with closing(EngineHTTP()) as http:
                async with await http.post(engine.url, b"{}", JSON) as resp:
                    assert await resp.read() == b"ok"
                await spare_ready(engine, 2)
                async with await http.post(engine.url, b"{}", JSON) as again:
                    assert await again.read() == b"ok"
                # Sent once on a pooled one (1 or the spare 2: both close on it), then again on a fresh 3.
                assert engine.served in ([1, 1, 3], [1, 2, 3])

    run(scenario())


def test_a_fresh_connection_closed_before_the_answer_is_upstream_unavailable() -> None:
    async def script(engine: Engine, n: int, reader: Reader, writer: Writer) -> None:
        await engine.request(n, reader)  # read it, then hang up

    async def scenario() -> None:
        async with Engine(script) as engine:
            with closing(EngineHTTP()) as http:
                with pytest.raises(UpstreamUnavailable, match="closed the connection before answering"):
                    await http.post(engine.url, b"{}", JSON)
                assert engine.served == [1]  # a fresh connection is not retried
                assert engine.accepted == 1  # and a failed send leaves no spare behind

    run(scenario())


def test_connection_refused_is_upstream_unavailable_naming_the_url() -> None:
    with socket.socket() as s:  # a port that was free a moment ago, with nobody listening now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/completions"

    async def scenario() -> None:
        with closing(EngineHTTP()) as http:
            with pytest.raises(UpstreamUnavailable) as caught:
                await http.post(url, b"{}", JSON)
            assert url in str(caught.value)

    run(scenario())


def test_an_answer_that_is_not_http_is_a_runner_error() -> None:
    async def script(engine: Engine, n: int, reader: Reader, writer: Writer) -> None:
        await engine.request(n, reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await engine.request(n, reader)  # wait for the client to hang up

    async def scenario() -> None:
        async with Engine(script) as engine:
            with closing(EngineHTTP()) as http:
                with pytest.raises(RunnerError, match="not valid HTTP"):
                    await http.post(engine.url, b"{}", JSON)
                await wait_until(lambda: 1 in engine.eof)  # the broken connection is dropped

    run(scenario())


@pytest.mark.parametrize(
    "cut",
    [
        CHUNKED_HEAD + chunk(b"data: a\n\n"),
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\ndata: a\n\n",
    ],
    ids=["chunked", "content-length"],
)
def test_a_body_cut_short_raises_server_disconnected_while_iterating(cut: bytes) -> None:
    async def script(engine: Engine, n: int, reader: Reader, writer: Writer) -> None:
        await engine.request(n, reader)
        writer.write(cut)
        await writer.drain()

    async def scenario() -> None:
        async with Engine(script) as engine:
            with closing(EngineHTTP()) as http:
                resp = await http.post(engine.url, b"{}", JSON)
                got: list[bytes] = []
                with pytest.raises(aiohttp.ServerDisconnectedError):
                    async for piece in resp.iter_any():
                        got.append(piece)
                assert b"".join(got) == b"data: a\n\n"  # what came before the cut was handed over
                resp.release()

    run(scenario())


def test_a_body_without_length_or_chunks_ends_at_close() -> None:
    body = b"no framing at all\n" * 1000

    async def script(engine: Engine, n: int, reader: Reader, writer: Writer) -> None:
        await engine.request(n, reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + body)
        await writer.drain()

    async def scenario() -> None:
        async with Engine(script) as engine:
            with closing(EngineHTTP()) as http:
                async with await http.post(engine.url, b"{}", JSON) as resp:
                    assert await resp.read() == body

    run(scenario())


def test_a_slow_reader_pauses_the_engine_and_gets_every_byte_in_order() -> None:
    body = os.urandom(4 << 20)

    async def scenario() -> None:
        async with Engine(answering(fixed(body))) as engine:
            with closing(EngineHTTP()) as http:
                resp = await http.post(engine.url, b"{}", JSON)
                # Private on purpose: the pause itself is what this test is about, and it has no public sign.
                transport = resp._conn.transport
                assert transport is not None
                await wait_until(lambda: not transport.is_reading())  # paused, nothing read yet
                digest, size = hashlib.sha256(), 0
                async for piece in resp.iter_any():
                    digest.update(piece)
                    size += len(piece)
                    await asyncio.sleep(0.002)
                assert size == len(body)
                assert digest.hexdigest() == hashlib.sha256(body).hexdigest()
                assert transport.is_reading()  # resumed once drained
                resp.release()

    run(scenario())


@pytest.mark.parametrize(
    "headers",
    [{"X-Api-Key": "secret\r\nX-Injected: 1"}, {"X-Api-Key\nX-Injected": "1"}, {"X-Note": "a\rb"}],
    ids=["crlf-in-value", "lf-in-name", "cr-in-value"],
)
def test_a_line_break_in_a_header_is_refused_before_connecting(headers: dict[str, str]) -> None:
    async def scenario() -> None:
        async with Engine(answering(fixed(b"ok"))) as engine:
            with closing(EngineHTTP()) as http:
                with pytest.raises(ValueError, match="line break"):
                    await http.post(engine.url, b"{}", headers)
                await asyncio.sleep(0.05)  # room for a (wrong) connect to reach the engine
                assert engine.accepted == 0

    run(scenario())


def test_closing_a_stream_hangs_up_on_the_engine() -> None:
    async def script(engine: Engine, n: int, reader: Reader, writer: Writer) -> None:
        await engine.request(n, reader)
        writer.write(CHUNKED_HEAD + chunk(b"data: first\n\n"))  # and then generates forever
        await writer.drain()
        await engine.request(n, reader)  # until the client hangs up

    async def scenario() -> None:
        async with Engine(script) as engine:
            with closing(EngineHTTP()) as http:
                resp = await http.post(engine.url, b"{}", JSON)
                pieces = resp.iter_any()
                assert await anext(pieces) == b"data: first\n\n"
                await pieces.aclose()
                resp.close()
                await wait_until(lambda: 1 in engine.eof)

    run(scenario())


def test_closing_the_client_closes_its_idle_connections() -> None:
    async def scenario() -> None:
        async with Engine(answering(fixed(b"ok"))) as engine:
            http = EngineHTTP()
            async with await http.post(engine.url, b"{}", JSON) as resp:
                assert await resp.read() == b"ok"
            await spare_ready(engine, 2)
            assert 2 not in engine.eof  # the spare, idle and open
            http.close()
            # Every connection ends closed: the idle ones by close() (connection 1 too, once it is pooled).
            await wait_until(lambda: engine.eof == {1, 2})
            assert engine.accepted == 2

    run(scenario())


def test_a_released_unread_answer_over_the_high_water_does_not_stall_the_next_request() -> None:
    # HIGH_WATER + 1 bytes: the buffer crosses the mark only with the last byte, so the answer is
    # both complete (reusable) and paused when released. A caller cancelled during read() (the client
    # left) releases exactly such an answer.
    async def scenario() -> None:
        async with Engine(answering(fixed(b"x" * (HIGH_WATER + 1)), fixed(b"small"))) as engine:
            with closing(EngineHTTP()) as http:
                resp = await http.post(engine.url, b"{}", JSON)
                await spare_ready(engine, 2)  # also gives the whole body time to arrive
                resp.release()  # connection 1 on top of the pool, above the spare
                again = await asyncio.wait_for(http.post(engine.url, b"{}", JSON), 1)
                assert await again.read() == b"small"
                again.release()
                # An answer released unread is not pooled (its leftovers would precede the next
                # answer, and its transport is paused): the spare answered instead.
                assert engine.served == [1, 2]

    run(scenario())


def test_a_body_without_length_cut_by_a_reset_is_not_taken_as_whole() -> None:
    async def script(engine: Engine, n: int, reader: Reader, writer: Writer) -> None:
        await engine.request(n, reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart of it")
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
        writer.transport.abort()

    async def scenario() -> None:
        async with Engine(script) as engine:
            with closing(EngineHTTP()) as http:
                resp = await http.post(engine.url, b"{}", JSON)
                with pytest.raises(aiohttp.ServerDisconnectedError):
                    await resp.read()

    run(scenario())


def test_credentials_in_the_url_never_reach_the_host_header() -> None:
    async def scenario() -> None:
        async with Engine(answering(fixed(b"{}"))) as engine:
            with closing(EngineHTTP()) as http:
                url = engine.url.replace("http://", "http://user:secret@")
                async with await http.post(url, b"{}", JSON) as resp:
                    await resp.read()
                host = next(h for h in engine.heads[0].split(b"\r\n") if h.lower().startswith(b"host:"))
                assert b"secret" not in host and host.endswith(url.split("@")[1].split("/")[0].encode())

    run(scenario())


# -- push: the body handed to a consumer from the connection's callback --------------------------------
def test_push_hands_every_piece_in_order_and_reads_nothing_while_the_consumer_waits() -> None:
    pieces = [os.urandom(1500) for _ in range(2000)]  # 3 MB: more than one read, past the high water

    async def scenario() -> None:
        async with Engine(answering(chunked(*pieces))) as engine:
            with closing(EngineHTTP()) as http:
                resp = await http.post(engine.url, b"{}", JSON)
                transport = resp._conn.transport  # private on purpose: the pause is what is tested
                assert transport is not None
                got: list[bytes] = []
                waits = 0

                def sink(piece: bytes) -> Flow:
                    got.append(piece)
                    return "wait" if len(got) % 300 == 0 else "go"

                async def drain() -> None:
                    nonlocal waits
                    waits += 1
                    assert not transport.is_reading()  # the engine is not read while the consumer waits
                    await asyncio.sleep(0.01)

                await resp.push(sink, drain)
                assert b"".join(got) == b"".join(pieces)
                assert waits >= len(got) // 300 - 1
                resp.close()

    run(scenario())


def test_push_stops_where_the_consumer_says_and_hands_nothing_after() -> None:
    async def scenario() -> None:
        async with Engine(answering(chunked(b"one", b"two", b"three"))) as engine:
            with closing(EngineHTTP()) as http:
                resp = await http.post(engine.url, b"{}", JSON)
                got: list[bytes] = []

                def sink(piece: bytes) -> Flow:
                    got.append(piece)
                    return "stop" if b"two" in b"".join(got) else "go"

                await resp.push(sink, asyncio.sleep)
                assert b"".join(got).startswith(b"onetwo") and b"three" not in b"".join(got)
                resp.close()

    run(scenario())


def test_an_error_the_consumer_raises_comes_out_of_push() -> None:
    async def scenario() -> None:
        async with Engine(answering(chunked(b"one", b"two"))) as engine:
            with closing(EngineHTTP()) as http:
                resp = await http.post(engine.url, b"{}", JSON)

                def sink(piece: bytes) -> Flow:
                    raise ConnectionResetError("the client left")

                with pytest.raises(ConnectionResetError, match="the client left"):
                    await resp.push(sink, asyncio.sleep)
                resp.close()

    run(scenario())


def test_a_body_cut_short_raises_server_disconnected_from_push() -> None:
    async def scenario() -> None:
        async with Engine(answering(CHUNKED_HEAD + chunk(b"partial"))) as engine:
            with closing(EngineHTTP()) as http:
                resp = await http.post(engine.url, b"{}", JSON)
                got: list[bytes] = []

                async def cut() -> None:
                    await wait_until(lambda: bool(got))
                    for writer in engine._writers:
                        writer.close()

                closer = asyncio.ensure_future(cut())
                with pytest.raises(aiohttp.ServerDisconnectedError):
                    await resp.push(lambda piece: got.append(piece) or "go", asyncio.sleep)
                await closer
                assert got == [b"partial"]
                resp.close()

    run(scenario())
