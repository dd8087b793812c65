"""The loaded-model table: load on first use, count requests in flight, unload after ``keep_alive``.

A request holds a :class:`Lease` for as long as it talks to the engine; a model with leases out is never
stopped. When the last lease ends the model's expiry is set from the request's ``keep_alive`` (or the
default); a reaper task stops models whose expiry has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from enginehouse.engines.base import Engine
from enginehouse.store import ModelRecord, Store

log = logging.getLogger(__name__)

EngineFactory = Callable[[ModelRecord], Engine]


@dataclass
class LoadedModel:
    name: str
    record: ModelRecord
    engine: Engine
    loaded_at: float
    load_duration: float = 0.0
    keep_alive: float = 300.0
    expires_at: float | None = None  # wall-clock seconds; None while requests are in flight
    in_flight: int = 0
    last_used: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Lease:
    model: LoadedModel
    load_duration: float  # seconds this request waited for a load (0 when the model was warm)


class Scheduler:
    def __init__(
        self,
        store: Store,
        engine_factory: EngineFactory,
        *,
        default_keep_alive: float = 300.0,
        load_timeout: float = 300.0,
        reap_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.engine_factory = engine_factory
        self.default_keep_alive = default_keep_alive
        self.load_timeout = load_timeout
        self.reap_interval = reap_interval
        self._loaded: dict[str, LoadedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._reaper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_forever(), name="keep-alive-reaper")

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        await asyncio.gather(*(self._stop(m) for m in list(self._loaded.values())), return_exceptions=True)

    def ps(self) -> list[LoadedModel]:
        return sorted(self._loaded.values(), key=lambda m: m.loaded_at)

    def get(self, name: str) -> LoadedModel | None:
        return self._loaded.get(name)

    @contextlib.asynccontextmanager
    async def acquire(self, name: str, keep_alive: float | None = None) -> AsyncIterator[Lease]:
        """Load ``name`` if needed and hold it for the duration of the ``async with`` block."""
        record = self.store.resolve(name)
        key = record.name.display
        was_loaded = key in self._loaded
        started = time.monotonic()
        model = await self._ensure_loaded(key, record)
        model.in_flight += 1
        model.expires_at = None
        try:
            yield Lease(model, 0.0 if was_loaded else time.monotonic() - started)
        finally:
            model.in_flight -= 1
            model.last_used = time.time()
            model.keep_alive = self.default_keep_alive if keep_alive is None else keep_alive
            if model.in_flight == 0:
                if model.keep_alive <= 0:
                    await self.unload(key)
                elif not math.isinf(model.keep_alive):
                    model.expires_at = model.last_used + model.keep_alive

    async def load(self, name: str, keep_alive: float | None = None) -> Lease:
        """Load without a request (Ollama's empty prompt); sets the expiry like a finished request."""
        async with self.acquire(name, keep_alive) as lease:
            return lease

    async def unload(self, name: str) -> bool:
        """Stop a loaded model now. Returns False when it was not loaded. Waits for in-flight requests."""
        key = self._key(name)
        async with self._lock(key):
            model = self._loaded.get(key)
            if model is None:
                return False
            while model.in_flight > 0:  # never stop a runner with requests in flight
                await asyncio.sleep(0.05)
            await self._stop(model)
            return True

    def _key(self, name: str) -> str:
        if name in self._loaded:
            return name
        try:
            return self.store.resolve(name).name.display
        except Exception:
            return name

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def _ensure_loaded(self, key: str, record: ModelRecord) -> LoadedModel:
        model = self._loaded.get(key)
        if model is not None and model.record.manifest_digest == record.manifest_digest:
            await model.engine.ensure_ready(self.load_timeout)  # restarts a crashed runner
            return model
        async with self._lock(key):
            model = self._loaded.get(key)
            if model is not None and model.record.manifest_digest != record.manifest_digest:
                log.info("model %s changed on disk; reloading", key)
                await self._stop(model)
                model = None
            if model is None:
                started = time.monotonic()
                engine = self.engine_factory(record)
                log.info("loading %s on %s", key, engine.kind)
                try:
                    await engine.ensure_ready(self.load_timeout)
                except BaseException:
                    await engine.stop()
                    raise
                model = LoadedModel(
                    key,
                    record,
                    engine,
                    loaded_at=time.time(),
                    load_duration=time.monotonic() - started,
                    keep_alive=self.default_keep_alive,
                )
                self._loaded[key] = model
                log.info("loaded %s in %.2fs (%s)", key, model.load_duration, engine.base_url)
            return model

    async def _stop(self, model: LoadedModel) -> None:
        self._loaded.pop(model.name, None)
        log.info("unloading %s", model.name)
        await model.engine.stop()

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            now = time.time()
            for model in list(self._loaded.values()):
                if model.in_flight == 0 and model.expires_at is not None and model.expires_at <= now:
                    log.info("keep_alive of %s expired", model.name)
                    await self.unload(model.name)
