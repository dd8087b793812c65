"""Running the gateway: in the foreground (``enginehouse serve``) or in a background thread (``run``
without a server, tests, benchmarks). Both use uvloop when it is installed."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from enginehouse.config import Config
from enginehouse.errors import EnginehouseError
from enginehouse.server.app import create_app
from enginehouse.server.app_state import GATEWAY, Gateway
from enginehouse.server.guard import is_loopback_bind
from enginehouse.server.protocol import GatewayRunner

log = logging.getLogger("enginehouse.server")


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_loop(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main())


def open_bind_warning(host: str, api_key: str) -> str | None:
    """The start-up warning for a bind that other machines can reach while no API key is set."""
    if api_key or is_loopback_bind(host):
        return None
    return (
        f"listening on {host or 'every interface'}, which other machines can reach, with no API key: anyone "
        "there can generate, pull, create and delete models. Set ENGINEHOUSE_API_KEY (clients then send "
        "'Authorization: Bearer KEY') or bind 127.0.0.1 (ENGINEHOUSE_HOST=127.0.0.1:11434)"
    )


async def start_site(
    config: Config, host: str | None = None, port: int | None = None
) -> tuple[web.AppRunner, int]:
    bind_host, bind_port = config.bind
    if warning := open_bind_warning(host or bind_host, config.api_key):
        log.warning("%s", warning)
    # Runners stop first (app.py's on_shutdown); handlers still running this long after are cancelled, so
    # a shutdown takes the runners' stop grace plus a few seconds, not aiohttp's default minute.
    runner = GatewayRunner(create_app(config), access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host or bind_host, bind_port if port is None else port, reuse_address=True)
    await site.start()
    server = site._server  # the bound port, when 0 was asked for
    actual = server.sockets[0].getsockname()[1] if server and server.sockets else bind_port
    return runner, actual


async def preload(runner: web.AppRunner, model: str) -> None:
    """Load a model right after start-up so the first request does not wait for it."""
    gateway = runner.app[GATEWAY]
    try:
        lease = await gateway.scheduler.load(model)
        log.info("preloaded %s in %.1fs", lease.model.name, lease.load_duration)
    except EnginehouseError as exc:
        log.error("could not preload %s: %s", model, exc.message)


def settle_heap() -> None:
    """Leave what start-up built (modules, classes, schemas, templates: about 80k objects) out of
    every later garbage collection. Each full collection walked them all: 30-40 ms with the event
    loop stopped, in the middle of a burst of requests, on 2 busy cores (1-2 ms since)."""
    gc.collect()
    gc.freeze()


async def serve_forever(config: Config, preload_models: tuple[str, ...] = ()) -> None:
    runner, port = await start_site(config)
    settle_heap()
    host = config.bind[0]
    log.info("enginehouse listening on http://%s:%d (Ollama API at /api, OpenAI API at /v1)", host, port)
    tasks = [asyncio.create_task(preload(runner, m)) for m in preload_models]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down: stopping runners")
        for task in tasks:
            task.cancel()
        await runner.cleanup()


class BackgroundServer:
    """A gateway on its own loop in a daemon thread, bound to a free loopback port.

    Runner processes are spawned from this thread; it lives as long as the server, so the runners'
    parent-death signal fires only when the process ends.
    """

    def __init__(self, config: Config, port: int = 0) -> None:
        self.config = config
        self._port = port
        self._loop = new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="enginehouse-server", daemon=True)
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def gateway(self) -> Gateway:
        """The live gateway state (store, scheduler), for tests and benchmarks in this process."""
        assert self._runner is not None, "not started"
        return self._runner.app[GATEWAY]

    def start(self) -> BackgroundServer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            start_site(self.config, "127.0.0.1", self._port), self._loop
        )
        self._runner, self.port = future.result(timeout=60)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=60)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
