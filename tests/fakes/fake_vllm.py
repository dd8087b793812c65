"""A fake vLLM for what llama-server cannot do: sleep mode. Run as ``python fake_vllm.py serve MODEL --port
N [vllm flags...]``, which is how :class:`~enginehouse.engines.vllm.VllmEngine` launches ``vllm``.

    GET  /health        200 (also while asleep, as vLLM does)
    POST /sleep?level=1 200; then /is_sleeping says true
    POST /wake_up       200; then /is_sleeping says false
    GET  /is_sleeping   {"is_sleeping": bool}
    GET  /calls         every request so far: [[method, path_qs], ...] and the environment it saw

As in vLLM, the sleep endpoints exist only with ``--enable-sleep-mode`` and ``VLLM_SERVER_DEV_MODE=1``
(404 otherwise).
"""

from __future__ import annotations

import argparse
import os

from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--enable-sleep-mode", action="store_true")
    args, _ = parser.parse_known_args()
    dev = os.environ.get("VLLM_SERVER_DEV_MODE") == "1" and args.enable_sleep_mode
    state = {"sleeping": False}
    calls: list[list[str]] = []

    @web.middleware
    async def record(request: web.Request, handler):  # type: ignore[no-untyped-def]
        calls.append([request.method, request.path_qs])
        return await handler(request)

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="")

    async def sleep(request: web.Request) -> web.Response:
        if request.query.get("level", "1") not in ("1", "2"):
            return web.json_response({"error": "bad level"}, status=400)
        state["sleeping"] = True
        return web.Response(text="")

    async def wake_up(request: web.Request) -> web.Response:
        state["sleeping"] = False
        return web.Response(text="")

    async def is_sleeping(request: web.Request) -> web.Response:
        return web.json_response({"is_sleeping": state["sleeping"]})

    async def get_calls(request: web.Request) -> web.Response:
        env = {k: v for k, v in os.environ.items() if k.startswith("VLLM_")}
        return web.json_response({"calls": calls, "env": env, "model": args.model})

    app = web.Application(middlewares=[record])
    app.router.add_get("/health", health)
    app.router.add_get("/calls", get_calls)
    if dev:
        app.router.add_post("/sleep", sleep)
        app.router.add_post("/wake_up", wake_up)
        app.router.add_get("/is_sleeping", is_sleeping)
    web.run_app(app, host=args.host, port=args.port, print=None, handle_signals=True)


if __name__ == "__main__":
    main()
