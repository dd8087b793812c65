"""One HTTP client library (aiohttp) outside the engine hot path: the decision pinned by scanning the
source, and the CLI's sync helpers against a real aiohttp server on loopback."""

from __future__ import annotations

import ast
import asyncio
import os
import signal
import socket
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from enginehouse import __version__, http_client
from enginehouse.http_client import HttpError

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "enginehouse"
# No module but http_client may build one (the engines' plain-http hot path, engine_http.py, uses none).
SESSION_EXCEPTIONS: set[str] = set()


def modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        yield path.relative_to(SRC).as_posix(), ast.parse(path.read_text(), str(path))


def test_no_module_imports_httpx() -> None:
    offenders = []
    for name, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            if "httpx" in roots:
                offenders.append(f"{name}:{node.lineno}")
    assert offenders == [], "httpx is no runtime dependency: use enginehouse.http_client"


def test_client_sessions_are_built_only_by_the_factory() -> None:
    builders = set()
    for name, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                if called == "ClientSession":
                    builders.add(name)
    assert "http_client.py" in builders
    assert builders - {"http_client.py"} <= SESSION_EXCEPTIONS, "use enginehouse.http_client.session()"


def test_httpx_is_a_test_dependency_only() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [
        d.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower()
        for d in project["dependencies"]
    ]
    assert "httpx" not in names and "aiohttp" in names
    assert any(d.startswith("httpx") for d in project["optional-dependencies"]["test"])


# -- the sync helpers, against a real server ---------------------------------------------------------


@dataclass
class Server:
    url: str = ""
    loop: asyncio.AbstractEventLoop | None = None
    seen: list[dict[str, str]] = field(default_factory=list)
    gone: threading.Event = field(default_factory=threading.Event)  # a streaming client went away


LONG_LINE = b"x" * (300 << 10)  # past aiohttp's readline limit: iter_lines must not care


def make_app(srv: Server) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        srv.seen.append(dict(request.headers))
        body = await request.read()
        return web.json_response({"method": request.method, "body": body.decode(), "q": request.query_string})

    async def missing(request: web.Request) -> web.Response:
        return web.json_response({"error": "no such thing"}, status=404)

    async def lines(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        # line ends split across writes, a CRLF, a very long line, no newline at the end
        for piece in (b'{"n": 1}\n{"n"', b": 2}\r\n", LONG_LINE[:1000], LONG_LINE[1000:] + b"\n", b"tail"):
            await resp.write(piece)
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            await resp.write(b"first\n")
            while True:  # then silence, as a model that thinks: only the client's close ends this
                await asyncio.sleep(0.05)
                if request.transport is None or request.transport.is_closing():
                    break
        finally:
            srv.gone.set()
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/echo")

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/missing", missing)
    app.router.add_get("/lines", lines)
    app.router.add_get("/endless", endless)
    app.router.add_get("/slow", slow)
    app.router.add_get("/moved", moved)
    return app


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server()
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    srv.loop = loop

    async def start() -> web.AppRunner:
        runner = web.AppRunner(make_app(srv), handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        srv.url = f"http://127.0.0.1:{port}"
        return runner

    def serve() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield srv
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_the_session_factory_sets_the_project_defaults(server: Server) -> None:
    async def go() -> tuple[dict, float | None]:
        async with (
            http_client.session(connector_args={"force_close": True}) as http,
            http.post(server.url + "/echo", json={"a": [1, 2]}) as resp,
        ):
            return await resp.json(), http.timeout.sock_read

    data, sock_read = asyncio.run(go())
    assert data["body"] == '{"a":[1,2]}'  # orjson
    assert server.seen[-1]["User-Agent"] == f"enginehouse/{__version__}"
    assert server.seen[-1].get("Connection", "").lower() == "close"  # the site's connector arguments
    assert sock_read == http_client.DEFAULT_TIMEOUT.sock_read


def test_get_json_sends_the_user_agent_and_headers(server: Server) -> None:
    data = http_client.get_json(server.url + "/echo?a=1", headers={"X-Test": "yes"})
    assert data == {"method": "GET", "body": "", "q": "a=1"}
    assert server.seen[-1]["User-Agent"] == f"enginehouse/{__version__}"
    assert server.seen[-1]["X-Test"] == "yes"


def test_request_posts_json(server: Server) -> None:
    reply = http_client.request("POST", server.url + "/echo", json={"model": "m", "n": [1, 2]})
    assert reply.status == 200 and reply.url == server.url + "/echo"
    assert reply.json()["body"] == '{"model":"m","n":[1,2]}'  # orjson's compact form
    assert server.seen[-1]["Content-Type"] == "application/json"


def test_error_status_is_a_reply_or_an_http_error(server: Server) -> None:
    reply = http_client.request("GET", server.url + "/missing")
    assert reply.status == 404 and reply.json() == {"error": "no such thing"}
    with pytest.raises(HttpError, match="HTTP 404"):
        reply.raise_for_status()
    with pytest.raises(HttpError, match="HTTP 404"):
        http_client.get_json(server.url + "/missing")


def test_redirects_only_when_asked(server: Server) -> None:
    assert http_client.request("GET", server.url + "/moved").status == 302
    reply = http_client.request("GET", server.url + "/moved", follow_redirects=True)
    assert reply.status == 200 and reply.url == server.url + "/echo"


def test_stream_lines_and_chunks(server: Server) -> None:
    with http_client.stream("GET", server.url + "/lines") as resp:
        assert resp.status == 200
        got = list(resp.iter_lines())
    assert got == [b'{"n": 1}', b'{"n": 2}', LONG_LINE, b"tail"]
    with http_client.stream("GET", server.url + "/lines") as resp:
        body = b"".join(resp.iter_chunks())
    assert body == b'{"n": 1}\n{"n": 2}\r\n' + LONG_LINE + b"\ntail"


def test_no_server_is_an_http_error_naming_it() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(HttpError, match=f"127.0.0.1:{port}"):
        http_client.request("GET", f"http://127.0.0.1:{port}/x", timeout=2)


def test_a_silent_server_times_out(server: Server) -> None:
    started = time.monotonic()
    with pytest.raises(HttpError, match="/slow"):
        http_client.request("GET", server.url + "/slow", timeout=0.3)
    assert time.monotonic() - started < 3


def test_leaving_a_stream_early_closes_the_connection(server: Server) -> None:
    server.gone.clear()
    with http_client.stream("GET", server.url + "/endless", timeout=None) as resp:
        assert next(resp.iter_lines()) == b"first"
    assert server.gone.wait(5), "the server never saw the client go"


def test_ctrl_c_while_reading_cancels_the_read_and_closes_the_connection(server: Server) -> None:
    assert threading.current_thread() is threading.main_thread()
    server.gone.clear()
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    with (
        pytest.raises(KeyboardInterrupt),
        http_client.stream("GET", server.url + "/endless", timeout=None) as resp,
    ):
        timer.start()
        for _ in resp.iter_lines():  # the first line, then blocked on the silent server
            pass
    timer.join()
    assert server.gone.wait(5), "the server never saw the client go"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the runner put it back
    assert http_client.get_json(server.url + "/echo")["method"] == "GET"  # and the next call works
