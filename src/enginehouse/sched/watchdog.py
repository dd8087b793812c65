"""The runner watchdog: a runner whose main loop stops answering while requests wait on it is killed and
restarted, so that one stuck runner (a grammar that takes minutes to compile, a SIGSTOPped process, a
deadlock) cannot wedge its model for everyone.

While a runner has requests in flight it is probed about once a second with a request only its main loop
can answer (the engine's ``stall_probe``: llama-server's ``GET /slots``; its ``/health`` is answered by the
HTTP threads and stays green while the main loop is stuck). A runner that leaves every probe unanswered for
``stall_timeout`` seconds is killed (SIGKILL) and started again at once: its connections close with it, so
each client in flight gets an explicit error now, and requests still queued in the gateway go to the fresh
runner. Idle runners are never probed.

The decision is a pure function of what was observed (:func:`decide`); :class:`Watchdog` probes and acts.
It also reports every automatic restart of a loaded runner (a crash too) with its cause, for the metrics.
Engines without a ``stall_probe`` (vLLM, remote upstreams: no cheap request that needs their engine loop
and is not queued behind the requests themselves) are not probed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from enginehouse import http_client

if TYPE_CHECKING:
    from enginehouse.sched.scheduler import LoadedModel

log = logging.getLogger(__name__)

#: Seconds between two looks at the loaded runners.
INTERVAL_S = 1.0


class Action(enum.Enum):
    REST = "rest"  # nothing in flight, or not ready: nothing to watch (its silence starts counting anew)
    PROBE = "probe"  # requests in flight and the runner answered recently: ask again
    KILL = "kill"  # requests in flight and no answer for the stall timeout


@dataclass(frozen=True)
class Observation:
    ready: bool
    in_flight: int
    silent_for: float  # seconds since the runner last answered a probe (or since it was last at rest)


def decide(seen: Observation, stall_timeout: float) -> Action:
    """What to do about one runner. ``stall_timeout`` <= 0 turns the watchdog off."""
    if stall_timeout <= 0 or not seen.ready or seen.in_flight <= 0:
        return Action.REST
    if seen.silent_for >= stall_timeout:
        return Action.KILL
    return Action.PROBE


def restart_kind(cause: str | None) -> str:
    """The metric label of a restart's cause: ``stalled`` (killed by the watchdog) or ``exited``."""
    return "stalled" if cause and cause.startswith("stalled") else "exited"


@dataclass
class _Watch:
    """What the watchdog remembers about one loaded runner."""

    answered_at: float
    restarts_seen: int
    probe: asyncio.Task[None] | None = None
    warned: bool = False  # a long pause was logged once

    def cancel_probe(self) -> None:
        if self.probe is not None and not self.probe.done():
            self.probe.cancel()
        self.probe = None


class Watchdog:
    """Probes busy runners and kills stalled ones; ``models`` gives the loaded models at each look.
    ``on_restart(key, kind)`` hears of each automatic restart of a loaded runner (see restart_kind)."""

    def __init__(
        self,
        models: Callable[[], Iterable[LoadedModel]],
        stall_timeout: float,
        *,
        interval: float = INTERVAL_S,
        on_restart: Callable[[str, str], None] | None = None,
    ) -> None:
        self.models = models
        self.stall_timeout = stall_timeout
        self.interval = interval
        self.on_restart = on_restart
        self._watches: dict[int, _Watch] = {}  # by id(LoadedModel): a reload is a new runner
        self._session: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        try:
            while True:
                self.look(time.monotonic())
                await asyncio.sleep(self.interval)
        finally:
            await self.close()

    async def close(self) -> None:
        for watch in self._watches.values():
            watch.cancel_probe()
        self._watches.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def look(self, now: float) -> None:
        """One look at every loaded runner: report restarts, then rest, probe or kill."""
        loaded = {id(m): m for m in self.models()}
        for gone in self._watches.keys() - loaded.keys():
            self._watches.pop(gone).cancel_probe()
        for ident, model in loaded.items():
            info = model.engine.info()
            watch = self._watches.get(ident)
            if watch is None:
                watch = self._watches[ident] = _Watch(now, info.restarts)
            if info.restarts > watch.restarts_seen:
                self._report_restarts(model, info.restarts - watch.restarts_seen, info.extra)
                watch.restarts_seen = info.restarts
            probe_path = getattr(model.engine, "stall_probe", None)
            ready = probe_path is not None and model.engine.ready
            seen = Observation(ready, model.in_flight, now - watch.answered_at)
            action = decide(seen, self.stall_timeout)
            if action is Action.REST:
                watch.answered_at = now
                watch.cancel_probe()
            elif action is Action.KILL:
                watch.answered_at = now
                watch.cancel_probe()
                self._kill(model, probe_path or "", seen)
            elif watch.probe is None or watch.probe.done():
                watch.probe = asyncio.ensure_future(self._probe(model, probe_path or "", watch))

    def _report_restarts(self, model: LoadedModel, count: int, extra: dict[str, Any]) -> None:
        if self.on_restart is None:
            return
        kind = restart_kind(extra.get("restart_cause"))
        for _ in range(count):
            self.on_restart(model.spec.key(model.name), kind)

    def _kill(self, model: LoadedModel, probe_path: str, seen: Observation) -> None:
        engine: Any = model.engine
        pid = engine.info().pid
        cause = (
            f"stalled: no answer to {probe_path} for {seen.silent_for:.1f}s"
            f" with {seen.in_flight} request(s) in flight"
        )
        if engine.kill(cause):
            log.error("runner for %s (pid %s) %s: killed, restarting", model.name, pid, cause)

    async def _probe(self, model: LoadedModel, path: str, watch: _Watch) -> None:
        if self._session is None:
            # A fresh connection per probe: cpp-httplib drops idle keep-alive connections after 5 s.
            self._session = http_client.session(connector_args={"force_close": True})
        engine = model.engine
        timeout = aiohttp.ClientTimeout(total=max(self.stall_timeout, self.interval))
        sent = time.monotonic()
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
            async with self._session.get(
                engine.base_url + path, headers=engine.request_headers, timeout=timeout
            ) as resp:
                await resp.read()
                # Any answer counts: a 501 (--no-slots) or 401 still means the runner is not wedged, and a
                # false kill under load would cost more than a missed one.
                watch.answered_at = time.monotonic()
        pause = watch.answered_at - sent
        if pause > self.stall_timeout / 2 and not watch.warned:
            # A big model's prompt batch on a slow CPU can take this long: say so before it is mistaken
            # for a stall (one batch of --batch-size tokens must fit in the stall timeout).
            watch.warned = True
            log.warning(
                "runner for %s paused %.1fs between batches; ENGINEHOUSE_RUNNER_STALL_TIMEOUT is %gs",
                model.name,
                pause,
                self.stall_timeout,
            )
