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

from enginehouse.config_file import EMPTY, FileConfig, ModelEntry
from enginehouse.engines.base import Engine, RunnerSpec
from enginehouse.errors import EnginehouseError, InsufficientMemory, ServerBusy
from enginehouse.sched.admission import Admission
from enginehouse.sched.eviction import Candidate, EvictionPlan, Fits, NeverFits, evict_for
from enginehouse.sched.memory import EstimateCorrector, MemoryBudget, MemoryEstimate, measure_rss
from enginehouse.sched.watchdog import Watchdog
from enginehouse.store import ModelRecord, Store

log = logging.getLogger(__name__)


EngineFactory = Callable[[ModelRecord, RunnerSpec], Engine]
Estimator = Callable[[ModelRecord, RunnerSpec], MemoryEstimate]


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
    spec: RunnerSpec = field(default_factory=RunnerSpec)
    draining: bool = False  # being replaced: new requests wait for the replacement
    estimate: int = 0  # bytes the runner was expected to hold when it was loaded (corrected)
    memory: MemoryEstimate | None = None  # the uncorrected estimate, term by term
    measured: int = 0  # peak resident bytes, read after its first request

    @property
    def slots(self) -> int:
        return int(self.engine.info().extra.get("num_parallel", 1))

    def resident(self) -> int:
        """What the runner holds now: its measured RSS, or the estimate when it cannot be read."""
        pid = self.engine.info().pid
        return measure_rss(pid) if pid else self.estimate

    @property
    def ctx_per_slot(self) -> int | None:
        return self.engine.info().extra.get("ctx_per_slot")

    def serves(self, record: ModelRecord, spec: RunnerSpec) -> bool:
        """Whether this runner can take a request for ``record`` with ``spec`` without a reload."""
        if self.draining or self.record.manifest_digest != record.manifest_digest:
            return False
        ctx = self.ctx_per_slot
        return spec.num_ctx is None or ctx is None or ctx >= spec.num_ctx


@dataclass(frozen=True)
class Placement:
    """What serving a model would cost now, without doing it (the router's cost model)."""

    key: str
    loaded: bool
    free_slots: int  # loaded: slots not in use (0 when every slot is busy)
    load_seconds: float  # not loaded: its last load time, or an estimate from its size
    evicts: tuple[str, ...] = ()  # runners a load would stop
    waits_for: tuple[str, ...] = ()  # busy runners a load would wait for
    fits: bool = True
    reason: str = ""  # why it cannot fit

    @property
    def cost(self) -> float:
        """Seconds of delay, roughly: a free slot costs nothing; a busy one a queue turn; a load its
        time plus the reload time of what it evicts (they will be asked for again)."""
        if self.loaded:
            return 0.0 if self.free_slots else QUEUE_TURN_S
        return self.load_seconds


NO_ENTRY = ModelEntry()  # a model without an entry in enginehouse.toml (frozen: shared)

#: Seconds a request waiting for a busy slot is assumed to cost (one short answer).
QUEUE_TURN_S = 0.5
#: Load-time estimate for a model never loaded here: start-up plus reading the file at this rate.
START_S, READ_BYTES_PER_S = 0.5, 1 << 30


@dataclass(frozen=True)
class Lease:
    model: LoadedModel
    load_duration: float  # seconds this request waited for a load (0 when the model was warm)
    waited: float = 0.0  # seconds from asking to admission: queue, swap and load together


class Scheduler:
    def __init__(
        self,
        store: Store,
        engine_factory: EngineFactory,
        *,
        default_keep_alive: float = 300.0,
        load_timeout: float = 300.0,
        reap_interval: float = 1.0,
        budget: MemoryBudget | None = None,
        estimator: Estimator | None = None,
        max_queue: int | None = None,
        file_config: FileConfig = EMPTY,
        fairness_s: float = 10.0,
        policy: str = "batch",
        resolve: Callable[[str], ModelRecord] | None = None,
        stall_timeout: float = 0.0,
    ) -> None:
        self.store = store
        self.resolve = resolve or store.resolve  # names -> records: the catalog (aliases, remote models)
        self.engine_factory = engine_factory
        self.default_keep_alive = default_keep_alive
        self.load_timeout = load_timeout
        self.reap_interval = reap_interval
        self.budget = budget  # with an estimator: a load evicts idle models to stay within it
        self.estimator = estimator
        self.corrector = EstimateCorrector()  # learns each model's estimate error from its runs
        self.max_queue = max_queue  # requests per model beyond its slots before a 503 (None: no bound)
        self.file_config = file_config  # per-model keep_alive, pins and exclusive groups
        self.admission = Admission(policy, fairness_s)
        self.loads = 0  # runners started since start-up (swaps, for benchmarks and metrics)
        self.load_seconds: dict[str, float] = {}  # each runner key's last load time
        self.on_load: Callable[[str, str, float], None] | None = None  # (key, engine kind, seconds)
        self.on_restart: Callable[[str, str], None] | None = None  # (key, cause: "stalled" or "exited")
        # Kills and restarts a runner that stops answering while requests wait on it (0: off).
        self.watchdog = Watchdog(self.ps, stall_timeout, on_restart=self._restarted)
        self._watching: asyncio.Task[None] | None = None
        self._loaded: dict[str, LoadedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._pending_memory: dict[str, MemoryEstimate] = {}
        self._planning = asyncio.Lock()  # one load at a time plans and spends memory
        self._reaper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_forever(), name="keep-alive-reaper")
        if self._watching is None:
            self._watching = asyncio.create_task(self.watchdog.run(), name="runner-watchdog")

    async def close(self) -> None:
        for task in (self._reaper, self._watching):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._reaper = self._watching = None
        await asyncio.gather(*(self._stop(m) for m in list(self._loaded.values())), return_exceptions=True)

    def _restarted(self, key: str, cause: str) -> None:
        if self.on_restart is not None:
            self.on_restart(key, cause)

    def ps(self) -> list[LoadedModel]:
        return sorted(self._loaded.values(), key=lambda m: m.loaded_at)

    def get(self, name: str) -> LoadedModel | None:
        return self._loaded.get(name)

    @contextlib.asynccontextmanager
    async def acquire(
        self,
        name: str,
        keep_alive: float | None = None,
        spec: RunnerSpec | None = None,
        record: ModelRecord | None = None,
    ) -> AsyncIterator[Lease]:
        """Load ``name`` if needed and hold it for the duration of the ``async with`` block
        (``record``: ``name`` already resolved by the caller, which saves reading it again)."""
        spec = spec or RunnerSpec()
        record = record or self.resolve(name)
        key = spec.key(record.name.display)
        was_loaded = key in self._loaded and self._loaded[key].serves(record, spec)
        started = time.monotonic()
        async with self.admission.turn(key):
            model = self._loaded.get(key)
            if model is None or not model.engine.ready or not model.serves(record, spec):
                model = await self._ensure_loaded(key, record, spec, started)
            if self.max_queue is not None and model.in_flight >= model.slots + self.max_queue:
                # Every slot busy and the queue behind them full: refuse now rather than queue forever.
                raise ServerBusy(
                    f"server busy: {model.name} has {model.in_flight} requests in flight "
                    f"({model.slots} slots, queue of {self.max_queue}); please try again"
                )
            model.in_flight += 1
            model.expires_at = None
        try:
            waited = time.monotonic() - started
            yield Lease(model, 0.0 if was_loaded else waited, waited)
        finally:
            model.in_flight -= 1
            model.last_used = time.time()
            if not model.measured:
                self._measure(model)
            model.keep_alive = self.keep_alive_for(model.name, keep_alive)
            if model.in_flight == 0 and not model.draining:
                if model.keep_alive <= 0:
                    await self.unload(key)
                elif not math.isinf(model.keep_alive):
                    model.expires_at = model.last_used + model.keep_alive

    async def load(self, name: str, keep_alive: float | None = None) -> Lease:
        """Load without a request (Ollama's empty prompt); sets the expiry like a finished request."""
        async with self.acquire(name, keep_alive) as lease:
            return lease

    async def unload(self, name: str) -> bool:
        """Stop a model's runners now (chat and embedding). False when none was loaded.
        Waits for requests in flight: a runner is never stopped under a request."""
        keys = [k for k, m in self._loaded.items() if name in (k, m.name)]
        if not keys:
            try:
                display = self.resolve(name).name.display
            except EnginehouseError:
                return False
            keys = [k for k, m in self._loaded.items() if m.name == display]
        for key in keys:
            async with self._lock(key):
                model = self._loaded.get(key)
                if model is not None:
                    await self._drain_and_stop(model)
        return bool(keys)

    async def _drain_and_stop(self, model: LoadedModel) -> None:
        model.draining = True
        while model.in_flight > 0:
            await asyncio.sleep(0.05)
        await self._stop(model)

    def speaks(self, record: ModelRecord, dialect: str) -> bool:
        """Whether the model's engine takes ``dialect``'s requests as they come (see
        :meth:`~enginehouse.engines.factory.EngineFactory.dialects_for`)."""
        return dialect in self.engine_factory.dialects_for(record)

    def entry(self, name: str) -> ModelEntry:
        return self.file_config.entry(name) or NO_ENTRY

    def keep_alive_for(self, name: str, requested: float | None) -> float:
        """The request's keep_alive, else the model's entry, else the default. A pinned model stays
        loaded whatever a request asks, except ``keep_alive: 0``, which is how a user unloads it."""
        entry = self.entry(name)
        if entry.pinned and requested != 0:
            return math.inf
        if requested is not None:
            return requested
        configured = entry.keep_alive_seconds
        return self.default_keep_alive if configured is None else configured

    def _candidate(self, key: str, name: str, estimate: int, **kw: object) -> Candidate:
        entry = self.entry(name)
        group = entry.group
        exclusive = group is not None and self.file_config.groups[group].exclusive
        return Candidate(key, estimate, group=group, exclusive_group=exclusive, **kw)  # type: ignore[arg-type]

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def _ensure_loaded(
        self, key: str, record: ModelRecord, spec: RunnerSpec, arrived: float | None = None
    ) -> LoadedModel:
        model = self._loaded.get(key)
        if model is not None and model.serves(record, spec):
            await model.engine.ensure_ready(self.load_timeout)  # restarts a crashed runner
            return model
        async with self._lock(key):
            model = self._loaded.get(key)
            if model is not None and not model.serves(record, spec):
                log.info(
                    "reloading %s (%s)",
                    key,
                    "model changed on disk"
                    if model.record.manifest_digest != record.manifest_digest
                    else f"num_ctx {spec.num_ctx} > {model.ctx_per_slot}",
                )
                await self._drain_and_stop(model)
                model = None
            if model is None:
                async with self._planning:
                    started = time.monotonic()
                    try:
                        estimate = await self._make_room(key, record, spec, arrived or started)
                    finally:
                        self.admission.done(key)
                    engine = self.engine_factory(record, spec)
                    log.info("loading %s on %s", key, engine.kind)
                    try:
                        await engine.ensure_ready(self.load_timeout)
                    except BaseException:
                        await engine.stop()
                        raise
                    model = LoadedModel(
                        record.name.display,
                        record,
                        engine,
                        loaded_at=time.time(),
                        load_duration=time.monotonic() - started,
                        keep_alive=self.default_keep_alive,
                        spec=spec,
                        estimate=estimate,
                        memory=self._pending_memory.pop(key, None),
                    )
                    self._loaded[key] = model
                    self.loads += 1
                    self.load_seconds[key] = model.load_duration
                    if self.on_load is not None:
                        self.on_load(key, engine.kind, model.load_duration)
                log.info("loaded %s in %.2fs (%s)", key, model.load_duration, engine.base_url)
            else:
                await model.engine.ensure_ready(self.load_timeout)
            return model

    def placement(self, name: str, spec: RunnerSpec | None = None) -> Placement:
        """What serving ``name`` with ``spec`` would cost now: free slots if loaded, else its load
        time and what the load would evict, or that it cannot fit. No I/O beyond name resolution."""
        spec = spec or RunnerSpec()
        record = self.resolve(name)
        key = spec.key(record.name.display)
        model = self._loaded.get(key)
        if model is not None and model.serves(record, spec):
            return Placement(key, True, max(0, model.slots - model.in_flight), 0.0)
        load = self.load_seconds.get(key, START_S + record.size / READ_BYTES_PER_S)
        raw = self.estimator(record, spec) if self.budget and self.estimator else None
        estimate = self.corrector.correct(record.model_digest, raw) if raw is not None else 0
        plan = self._room_plan(key, record, estimate, raw is not None)
        if isinstance(plan, NeverFits):
            return Placement(key, False, 0, load, fits=False, reason=plan.message)
        if isinstance(plan, Fits):
            again = sum(self.load_seconds.get(k, START_S) for k in plan.evict)
            return Placement(key, False, 0, load + again, evicts=tuple(plan.evict))
        return Placement(key, False, 0, load + QUEUE_TURN_S, waits_for=tuple(plan.wait_for))

    def _room_plan(self, key: str, record: ModelRecord, estimate: int, budgeted: bool) -> EvictionPlan:
        """The eviction policy's answer for loading ``key`` now (Fits, Wait or NeverFits)."""
        loaded = [
            self._candidate(
                m.spec.key(m.name),
                m.name,
                max(m.estimate, m.resident()) if budgeted else 0,
                in_flight=m.in_flight,
                pinned=math.isinf(m.keep_alive) or self.entry(m.name).pinned,
                last_used=m.last_used,
            )
            for k, m in self._loaded.items()
            if k != key
        ]
        budget = self.budget.available(c.estimate for c in loaded) if self.budget and budgeted else 1 << 62
        target = self._candidate(key, record.name.display, estimate, last_used=time.time())
        return evict_for(target, loaded, budget)

    async def _make_room(self, key: str, record: ModelRecord, spec: RunnerSpec, arrived: float) -> int:
        """Stop idle models until the new runner fits the budget and its exclusive group; wait (up to
        the load timeout) for busy ones to drain when only they stand in the way. Returns the new
        runner's estimate (0 without a budget)."""
        raw = self.estimator(record, spec) if self.budget and self.estimator else None
        estimate = self.corrector.correct(record.model_digest, raw) if raw is not None else 0
        deadline = time.monotonic() + self.load_timeout
        while True:
            plan = self._room_plan(key, record, estimate, raw is not None)
            if isinstance(plan, NeverFits):
                detail = f" (estimate: {raw.describe()})" if raw is not None else ""
                raise InsufficientMemory(plan.message + detail)
            if isinstance(plan, Fits):
                for victim in plan.evict:
                    log.info("evicting %s to make room for %s", victim, key)
                    await self._drain_and_stop(self._loaded[victim])
                if raw is not None:
                    self._pending_memory[key] = raw
                return estimate
            if time.monotonic() > deadline:
                raise ServerBusy(f"{plan.message}; gave up after {self.load_timeout:.0f}s", retry_after=5)
            self.admission.waiting(key, arrived, plan.wait_for)
            await asyncio.sleep(0.02)  # the models in the way are serving requests: let them drain

    def _measure(self, model: LoadedModel) -> None:
        """After its first request a runner has touched its compute buffers: read its peak size, feed
        the corrector, and log how far the estimate was."""
        pid = model.engine.info().pid
        model.measured = measure_rss(pid, peak=True) if pid else 0
        if model.measured and model.memory is not None:
            self.corrector.observe(model.record.model_digest, model.memory, model.measured)
            proper = model.memory.total - model.memory.prompt_cache  # that cache fills over time
            log.info(
                "%s holds %d MiB; estimated %d MiB (%+.1f%%) plus up to %d MiB of prompt cache",
                model.name,
                model.measured >> 20,
                proper >> 20,
                (proper - model.measured) / model.measured * 100,
                model.memory.prompt_cache >> 20,
            )

    async def _stop(self, model: LoadedModel) -> None:
        key = model.spec.key(model.name)
        if self._loaded.get(key) is model:
            del self._loaded[key]
        log.info("unloading %s", model.name)
        await model.engine.stop()

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            now = time.time()
            for model in list(self._loaded.values()):
                if model.in_flight == 0 and model.expires_at is not None and model.expires_at <= now:
                    log.info("keep_alive of %s expired", model.name)
                    try:
                        async with self._lock(model.spec.key(model.name)):
                            if model.in_flight == 0 and model.expires_at is not None:
                                if await model.engine.idle():  # vLLM sleeps first; the next expiry stops it
                                    model.expires_at = time.time() + model.keep_alive
                                    continue
                                await self._stop(model)
                    except Exception:  # one failing runner must not stop the expiry of the others
                        log.exception("could not stop %s", model.name)
