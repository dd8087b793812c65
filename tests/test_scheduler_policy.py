"""Per-model entries (keep_alive, pins, exclusive groups, slots) and the anti-thrash admission rule,
with a real store and the fake engine of test_scheduler (no process)."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from enginehouse.config import Config
from enginehouse.config_file import parse_config_text
from enginehouse.engines.factory import EngineFactory
from enginehouse.sched.memory import MemoryBudget, MemoryEstimate, MiB
from enginehouse.sched.scheduler import Scheduler
from enginehouse.store import Store
from tests.test_scheduler import Factory, another_model, run, store, wait_until

__all__ = ["store"]  # the module-scoped store fixture, shared with test_scheduler


def scheduler(store: Store, factory: Factory, toml: str = "", budget_mib: int = 0, **kw: Any) -> Scheduler:
    budget = estimator = None
    if budget_mib:
        budget = MemoryBudget(cap_bytes=budget_mib * MiB, reserve_bytes=0, free=lambda: 64 * 1024 * MiB)

        def estimator(record: Any, spec: Any) -> MemoryEstimate:
            return MemoryEstimate(100 * MiB, 0, 0, 0)

    return Scheduler(
        store, factory, budget=budget, estimator=estimator, file_config=parse_config_text(toml), **kw
    )


def test_keep_alive_from_the_model_entry_and_pins(store: Store) -> None:
    a, b = another_model(store), another_model(store)
    toml = f'[models."{a}"]\nkeep_alive = "1h"\n[models."{b}"]\npinned = true\n'

    async def main() -> None:
        sched = scheduler(store, Factory(delay=0), toml, default_keep_alive=300)
        async with sched.acquire(a):
            pass
        assert sched.get(a).keep_alive == 3600  # the entry, not the default
        async with sched.acquire(a, keep_alive=5):
            pass
        assert sched.get(a).keep_alive == 5  # a request's own keep_alive wins
        async with sched.acquire(b, keep_alive=5):
            pass
        assert math.isinf(sched.get(b).keep_alive) and sched.get(b).expires_at is None  # pinned
        async with sched.acquire(b, keep_alive=0):  # how a user unloads a pinned model
            pass
        assert sched.get(b) is None

    run(main())


def test_a_pinned_model_survives_eviction_even_when_least_recently_used(store: Store) -> None:
    factory = Factory(delay=0)
    a, b, c = another_model(store), another_model(store), another_model(store)

    async def main() -> None:
        sched = scheduler(store, factory, f'[models."{a}"]\npinned = true\n', budget_mib=250)
        for name in (a, b, c):  # a is the least recently used when c needs room
            async with sched.acquire(name):
                pass
        assert sorted(m.name for m in sched.ps()) == sorted([a, c])
        assert ("stop", b) in factory.events and ("stop", a) not in factory.events

    run(main())


def test_an_exclusive_group_holds_one_member_even_with_memory_to_spare(store: Store) -> None:
    factory = Factory(delay=0)
    a, b, c = another_model(store), another_model(store), another_model(store)
    toml = f'[models."{a}"]\ngroup = "g"\n[models."{b}"]\ngroup = "g"\n[groups.g]\nexclusive = true\n'

    async def main() -> None:
        sched = scheduler(store, factory, toml)  # no memory budget at all
        for name in (a, c, b):
            async with sched.acquire(name):
                pass
        assert sorted(m.name for m in sched.ps()) == sorted([b, c])  # a left for b; c is not in g
        assert factory.events.index(("stop", a)) < factory.events.index(("start", b))

    run(main())


def test_num_parallel_and_num_ctx_from_the_entry(store: Store, tmp_path) -> None:
    name = another_model(store)
    toml = f'[defaults]\nnum_parallel = 3\n[models."{name}"]\nnum_parallel = 6\nnum_ctx = 2048\n'
    factory = EngineFactory(Config.from_env({}, home=tmp_path, num_parallel=4), parse_config_text(toml))
    settings = factory.settings_for(store.resolve(name))
    assert (settings.num_parallel, settings.ctx_per_slot) == (6, 2048)
    other = factory.settings_for(store.resolve(another_model(store)))
    assert other.num_parallel == 3  # the file's defaults before the environment's


async def alternate(
    sched: Scheduler, a: str, b: str, clients: int, requests: int, work: float
) -> list[float]:
    """The sequence A, B, A, B... sent by ``clients`` concurrent clients, each taking the next request
    when its last one is answered; returns every request's wait before admission."""
    waits: list[float] = []
    sequence = iter([a, b] * (requests // 2))

    async def client(i: int) -> None:
        for name in sequence:
            asked = time.monotonic()
            async with sched.acquire(name):
                waits.append(time.monotonic() - asked)
                await asyncio.sleep(work)

    await asyncio.gather(*(client(i) for i in range(clients)))
    return waits


def test_batch_policy_swaps_far_less_than_fifo(store: Store) -> None:
    a, b = another_model(store), another_model(store)

    async def swaps(policy: str) -> int:
        factory = Factory(delay=0.02)
        sched = scheduler(store, factory, budget_mib=150, policy=policy, fairness_s=5)
        await alternate(sched, a, b, clients=4, requests=64, work=0.01)
        return factory.count("start")

    fifo, batch = run(swaps("fifo"), 60), run(swaps("batch"), 60)
    assert fifo >= 48, fifo  # nearly every request changes model in arrival order
    assert batch * 5 <= fifo, (batch, fifo)


def test_fairness_bound_caps_the_wait_of_the_other_model(store: Store) -> None:
    """A keeps getting requests; B's load may wait for it only about as long as the bound."""
    a, b = another_model(store), another_model(store)

    async def main() -> None:
        sched = scheduler(store, Factory(delay=0.01), budget_mib=150, fairness_s=0.3)
        stop = asyncio.Event()

        async def hammer_a() -> None:  # overlapping requests: A is never idle on its own
            while not stop.is_set():
                async with sched.acquire(a):
                    await asyncio.sleep(0.05)

        hammers = [asyncio.create_task(hammer_a()) for _ in range(3)]
        await wait_until(lambda: sched.get(a) is not None and sched.get(a).in_flight > 0)
        asked = time.monotonic()
        async with sched.acquire(b):
            waited = time.monotonic() - asked
        stop.set()
        await asyncio.gather(*hammers)
        assert 0.3 <= waited < 0.3 + 0.05 + 0.25, waited  # bound + one request + slack

    run(main(), 30)
