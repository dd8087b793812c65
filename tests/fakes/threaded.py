"""A fake server's plumbing: aiohttp apps on loopback ports, served from a thread of their own, so a
test can drive them with blocking clients. Subclasses say which apps; this says how they run."""

from __future__ import annotations

import asyncio
import threading
from typing import Self

from aiohttp import web


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) of a single ``bytes=a-b`` / ``bytes=a-`` range; None when absent."""
    if not value:
        return None
    unit, _, spec = value.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        raise ValueError(value)
    a, _, b = spec.strip().partition("-")
    start = int(a)
    end = min(int(b) + 1, size) if b else size
    if start >= end:
        raise ValueError(value)
    return start, end


class ThreadedApps:
    thread_name = "fake-server"

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []

    async def serve(self, *apps_and_ports: tuple[web.Application, int]) -> list[int]:
        """Start each app on 127.0.0.1 (port 0: a free one); return the bound ports."""
        ports = []
        for app, port in apps_and_ports:
            runner = web.AppRunner(
                app, access_log=None, handle_signals=False, shutdown_timeout=1.0, handler_cancellation=True
            )
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", port)
            await site.start()
            self._runners.append(runner)
            ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        return ports

    async def start_async(self) -> None:
        raise NotImplementedError

    async def stop_async(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    def start(self) -> Self:
        ready = threading.Event()
        errors: list[BaseException] = []
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as e:
                errors.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop_async())
            loop.close()

        self._thread = threading.Thread(target=run, name=self.thread_name, daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
