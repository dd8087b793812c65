"""Reference relays for bench.gateway_overhead: the least any proxy in front of the runner can add here.

  .venv/bin/python -m bench.relays tcp|aiohttp RUNNER_PORT LISTEN_PORT

tcp      copies bytes both ways and parses nothing: the cost of one more process and one more
         loopback hop on this machine, which no gateway can go below
aiohttp  an aiohttp server that reads the request and streams the runner's answer back through
         enginehouse's engine client: the same parts as the gateway, none of its work (no validation,
         routing, scheduling or metrics)
"""

from __future__ import annotations

import asyncio
import sys

import uvloop
from aiohttp import web

from enginehouse.engines.engine_http import EngineHTTP


async def tcp_relay(runner_port: int, port: int) -> None:
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", runner_port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    await server.serve_forever()


def aiohttp_relay(runner_port: int, port: int) -> None:
    http = EngineHTTP()

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"Content-Type": "application/json"}
        if key := request.headers.get("Authorization"):  # the runner's key, which the bench sends
            headers["Authorization"] = key
        resp = await http.post(f"http://127.0.0.1:{runner_port}{request.path}", body, headers)
        out = web.StreamResponse(headers={"Content-Type": resp.headers.get("Content-Type", "text/plain")})
        await out.prepare(request)
        try:
            async for chunk in resp.iter_any():
                await out.write(chunk)
                if chunk.endswith(b"data: [DONE]\n\n"):
                    break
        finally:
            resp.close()
        await out.write_eof()
        return out

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")  # what bench.common.wait_ready polls, as on the runner

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def main() -> None:
    kind, runner_port, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    uvloop.install()  # as the gateway runs
    if kind == "tcp":
        asyncio.run(tcp_relay(runner_port, port))
    elif kind == "aiohttp":
        aiohttp_relay(runner_port, port)
    else:
        raise SystemExit(f"unknown relay {kind!r}: tcp or aiohttp")


if __name__ == "__main__":
    main()
