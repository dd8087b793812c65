"""The relay under a client that reads slower than the engine writes: nothing is lost or reordered while
the gateway's writer waits for the client (aiohttp's flow control; the engine connection's own pause is
tested in test_engine_http).

The engine is a stand-in that streams as fast as it can (a real runner cannot be made to flood on
demand); the gateway is real, on the Ollama door, so the answer takes the canonical path (decoded,
re-encoded) that the relay writes straight to the client's transport. The answer (6 MB) is sized past
what the kernel's socket buffers take on loopback, so the writer does reach its pause."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from enginehouse.server.runtime import BackgroundServer
from enginehouse.wire import SSE_DONE
from tests.conftest import make_config
from tests.fakes.openai_upstream import OpenAIUpstream, sse_chunk

PIECES = 6000
PIECE = "x" * 1000


class FloodingUpstream(OpenAIUpstream):
    """An OpenAI-compatible engine that streams PIECES numbered deltas back to back."""

    thread_name = "flooding-upstream"
    model_ids = ("flood",)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        for i in range(PIECES):
            await out.write(sse_chunk({"delta": {"content": f"{i:05d}{PIECE}"}}))
        await out.write(sse_chunk({"delta": {}, "finish_reason": "stop"}) + SSE_DONE)
        await out.write_eof()
        return out


def unchunked(body: bytes) -> bytes:
    out = b""
    while True:
        size, _, body = body.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            return out
        out, body = out + body[:n], body[n + 2 :]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    home: Path = tmp_path_factory.mktemp("flow-home")
    upstream = FloodingUpstream().start()
    (home / "enginehouse.toml").write_text(
        f'[upstreams.flood]\nengine = "openai"\nurl = "http://127.0.0.1:{upstream.port}"\nmodels = []\n\n'
        '[models.flood]\nengine = "openai"\nupstream = "flood"\nremote_model = "flood"\n'
    )
    with BackgroundServer(make_config(home, home / "no-llama-server")) as server:
        yield server
    upstream.stop()


def test_a_slow_reader_gets_every_piece_in_order(gateway: BackgroundServer) -> None:
    host, port = gateway.base_url.removeprefix("http://").split(":")
    body = orjson.dumps({"model": "flood", "messages": [{"role": "user", "content": "go"}], "stream": True})
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the client's buffer fills quickly
        sock.settimeout(60)
        sock.connect((host, int(port)))
        head = f"POST /api/chat HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        sock.sendall(head.encode() + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        raw = b""
        while piece := sock.recv(4096):
            raw += piece
            time.sleep(0.001)  # at most 4 MB/s: slower than the stand-in writes
    status, _, rest = raw.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200") and b"chunked" in status.lower()
    raw = unchunked(rest)
    lines = [orjson.loads(line) for line in raw.splitlines() if line.strip()]
    text = "".join(line["message"]["content"] for line in lines if not line["done"])
    assert text == "".join(f"{i:05d}{PIECE}" for i in range(PIECES))
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"
