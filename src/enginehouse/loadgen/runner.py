"""Driving the load: a concurrency sweep or Poisson arrivals, several targets interleaved.

Each level runs as ``rounds`` rounds; each round gives every target a share of the level's requests
(and time), in an order rotated every round, so slow drift of a shared machine (thermal, other
processes) falls on all targets alike. Each level starts with excluded warm-up requests per target at
the level's width: the first batch at a new width pays cold slots and caches, which is not the load
being measured. A target whose warm-up all fails, or that completes nothing in a level, is reported
and skipped from then on: a dead or stalled target costs one ``timeout``, never a hang.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from enginehouse import http_client
from enginehouse.loadgen.stats import RequestResult, error_kinds, level_metrics
from enginehouse.loadgen.targets import Target, chat_body, stream_chat
from enginehouse.loadgen.workload import WorkItem, Workload

Mode = Literal["concurrency", "rate"]


@dataclass(frozen=True)
class LoadPlan:
    mode: Mode
    levels: list[float]  # concurrency levels (ints) or request rates (req/s)
    requests: int | None = 40  # per target per level; None: bounded by duration only
    duration: float | None = None  # seconds per target per level
    warmup: int | None = None  # per target per level; None: one batch at the level's width
    rounds: int = 2
    timeout: float = 120.0
    max_concurrency: int | None = None  # a cap on requests in flight in rate mode
    seed: int = 0
    sampling: dict[str, Any] = field(default_factory=dict)

    def warmup_count(self, level: float) -> int:
        if self.warmup is not None:
            return self.warmup
        return int(level) if self.mode == "concurrency" else 2

    def round_sizes(self) -> list[int | None]:
        if self.requests is None:
            return [None] * self.rounds
        base, extra = divmod(self.requests, self.rounds)
        return [base + (i < extra) for i in range(self.rounds)]

    def prompts_needed(self, targets: int) -> int:
        """Distinct prompts so no target, level or warm-up repeats one (prompt caches), capped."""
        per_level = (self.requests or 64) + max(self.warmup_count(x) for x in self.levels)
        return min(2048, max(1, per_level * len(self.levels) * targets))


class Progress:
    """What the runner reports while it runs; the CLI draws it with rich."""

    def describe(self, text: str) -> None: ...

    def advance(self, n: int = 1) -> None: ...


@dataclass
class LevelRun:
    target: Target
    level: float
    results: list[RequestResult] = field(default_factory=list)
    duration: float = 0.0
    warmup_requests: int = 0
    warmup_errors: int = 0
    skipped: str | None = None


def _items(workload: Workload, start: int) -> Iterator[WorkItem]:
    items = workload.items
    i = start
    while True:
        yield items[i % len(items)]
        i += 1


async def run_fixed(
    send: Callable[[WorkItem], Any],
    items: Iterator[WorkItem],
    n: int | None,
    width: int,
    deadline: float | None,
    on_done: Callable[[], None],
) -> tuple[list[RequestResult], float]:
    """``width`` workers, each sending its next request as soon as its last one ends."""
    results: list[RequestResult] = []
    remaining = n if n is not None else float("inf")

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0 and (deadline is None or time.perf_counter() < deadline):
            remaining -= 1
            results.append(await send(next(items)))
            on_done()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, width))))
    return results, time.perf_counter() - start


async def run_poisson(
    send: Callable[[WorkItem], Any],
    items: Iterator[WorkItem],
    n: int | None,
    rate: float,
    deadline: float | None,
    cap: int | None,
    rng: random.Random,
    on_done: Callable[[], None],
) -> tuple[list[RequestResult], float]:
    """Requests arriving as a Poisson process of ``rate`` per second (exponential gaps), each sent at
    its arrival whatever is in flight (open loop), unless ``cap`` bounds the requests in flight."""
    results: list[RequestResult] = []
    gate = asyncio.Semaphore(cap) if cap else None

    async def one(item: WorkItem) -> None:
        if gate is None:
            results.append(await send(item))
        else:
            async with gate:
                results.append(await send(item))
        on_done()

    start = time.perf_counter()
    arrival = start
    tasks: list[asyncio.Task[None]] = []
    while n is None or len(tasks) < n:
        delay = arrival - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if deadline is not None and time.perf_counter() >= deadline:
            break
        tasks.append(asyncio.create_task(one(next(items))))
        arrival += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    return results, time.perf_counter() - start


class Runner:
    def __init__(self, targets: list[Target], workload: Workload, plan: LoadPlan, progress: Progress) -> None:
        self.targets = targets
        self.workload = workload
        self.plan = plan
        self.progress = progress
        self.down: dict[str, str] = {}  # label -> why it is skipped

    def total_requests(self) -> int | None:
        """For the progress bar; None when the levels are bounded by time only."""
        if self.plan.requests is None:
            return None
        return sum(
            (self.plan.requests + self.plan.warmup_count(x)) * len(self.targets) for x in self.plan.levels
        )

    def _sender(self, session: aiohttp.ClientSession, target: Target) -> Callable[[WorkItem], Any]:
        def send(item: WorkItem) -> Any:
            body = chat_body(target, item.messages, item.max_tokens, self.plan.sampling)
            return _with_input_tokens(stream_chat(session, target, body, self.plan.timeout), item)

        return send

    async def _chunk(
        self,
        session: aiohttp.ClientSession,
        target: Target,
        level: float,
        items: Iterator[WorkItem],
        n: int | None,
        seconds: float | None,
        seed: int,
    ) -> tuple[list[RequestResult], float]:
        send = self._sender(session, target)
        deadline = time.perf_counter() + seconds if seconds else None
        if self.plan.mode == "concurrency":
            return await run_fixed(send, items, n, int(level), deadline, self.progress.advance)
        rng = random.Random(seed)  # the same arrival times for every target in this round
        cap = self.plan.max_concurrency
        return await run_poisson(send, items, n, level, deadline, cap, rng, self.progress.advance)

    async def run(self) -> list[LevelRun]:
        connector_args = {"limit": 0, "force_close": True}  # a fresh connection each: no stale keep-alive
        sessions = {t.label: http_client.session(connector_args=connector_args) for t in self.targets}
        try:
            return await self._run_levels(sessions)
        finally:
            for s in sessions.values():
                await s.close()

    async def _run_levels(self, sessions: dict[str, aiohttp.ClientSession]) -> list[LevelRun]:
        plan, targets = self.plan, self.targets
        pool = len(self.workload.items)
        stride = max(1, pool // len(targets))  # each target its own slice of the prompts
        cursor = 0
        runs: list[LevelRun] = []
        for li, level in enumerate(plan.levels):
            level_runs = {t.label: LevelRun(t, level) for t in targets}
            runs.extend(level_runs.values())
            active = [t for t in targets if t.label not in self.down]
            for t in targets:
                if t.label in self.down:
                    level_runs[t.label].skipped = self.down[t.label]
            warm = plan.warmup_count(level)
            for t in active:
                if warm <= 0:
                    continue
                self.progress.describe(f"{t.label} · level {level:g} · warm-up")
                items = _items(self.workload, cursor + targets.index(t) * stride)
                results, _ = await run_fixed(
                    self._sender(sessions[t.label], t),
                    items,
                    warm,
                    min(warm, max(1, int(level))),
                    None,
                    self.progress.advance,
                )
                run = level_runs[t.label]
                run.warmup_requests = len(results)
                run.warmup_errors = sum(not r.ok for r in results)
                if results and run.warmup_errors == len(results):
                    why = next(iter(error_kinds(results)))
                    self._mark_down(t, run, li, f"every warm-up request failed: {why}", plan.requests or 0)
            cursor += warm
            for rnd, n in enumerate(plan.round_sizes()):
                live = [t for t in active if t.label not in self.down]
                shift = (li + rnd) % len(live) if live else 0
                seconds = plan.duration / plan.rounds if plan.duration else None
                used = 0
                for t in live[shift:] + live[:shift]:
                    self.progress.describe(f"{t.label} · level {level:g} · round {rnd + 1}/{plan.rounds}")
                    items = _items(self.workload, cursor + targets.index(t) * stride)
                    seed = plan.seed * 1_000_003 + li * 1009 + rnd
                    results, wall = await self._chunk(sessions[t.label], t, level, items, n, seconds, seed)
                    run = level_runs[t.label]
                    run.results.extend(results)
                    run.duration += wall
                    used = max(used, len(results))
                cursor += n if n is not None else used  # the next round's prompts are new ones
            for t in active:
                run = level_runs[t.label]
                if t.label not in self.down and run.results and not any(r.ok for r in run.results):
                    why = next(iter(error_kinds(run.results)))
                    self._mark_down(t, run, li, f"no request succeeded: {why}", 0)
        return runs

    def _mark_down(self, target: Target, run: LevelRun, li: int, why: str, unsent: int) -> None:
        self.down[target.label] = f"skipped after level {run.level:g}: {why}"
        run.skipped = None if run.results else why
        # The bar counted on requests this target will not send now; move it past them.
        if self.plan.requests is not None:
            later = self.plan.levels[li + 1 :]
            self.progress.advance(unsent + sum(self.plan.requests + self.plan.warmup_count(x) for x in later))


async def _with_input_tokens(pending: Any, item: WorkItem) -> RequestResult:
    """Use the server's prompt count when it reports one, else the length the workload counted."""
    result: RequestResult = await pending
    if result.input_tokens is None:
        result.input_tokens = item.input_tokens
    return result


def rows(runs: list[LevelRun], slos: dict[str, float]) -> list[dict[str, Any]]:
    """One JSON-ready row per target and level."""
    out = []
    for run in runs:
        row: dict[str, Any] = {"target": run.target.label, "level": run.level}
        row |= level_metrics(run.results, run.duration, slos)
        row["warmup"] = {"requests": run.warmup_requests, "errors": run.warmup_errors}
        row["skipped"] = run.skipped
        out.append(row)
    return out
