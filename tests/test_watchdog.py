"""The runner watchdog: the pure decision as a table, then the loop against tests/fakes/fake_runner.py, whose
``/slots`` can stop answering on demand while its ``/health`` stays green (what a real llama-server does
only by chance: a pathological grammar, a deadlock). The real runner's faults are in tests/security."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from enginehouse.engines.base import EngineInfo, RunnerSpec
from enginehouse.process import ManagedProcess, RestartPolicy, State
from enginehouse.sched.watchdog import Action, Observation, Watchdog, decide, restart_kind
from tests.conftest import pid_alive

pytestmark = pytest.mark.timeout(60)

FAKE = Path(__file__).parent / "fakes" / "fake_runner.py"
KEY = {"Authorization": "Bearer runner-key"}


@pytest.mark.parametrize(
    ("ready", "in_flight", "silent_for", "timeout", "action"),
    [
        (True, 0, 100.0, 3.0, Action.REST),  # idle runners are never probed, however long
        (False, 4, 100.0, 3.0, Action.REST),  # starting or restarting: the process manager's business
        (True, 1, 0.0, 3.0, Action.PROBE),
        (True, 8, 2.99, 3.0, Action.PROBE),
        (True, 1, 3.0, 3.0, Action.KILL),
        (True, 1, 1e9, 0.0, Action.REST),  # stall timeout 0: the watchdog is off
    ],
)
def test_decide(ready: bool, in_flight: int, silent_for: float, timeout: float, action: Action) -> None:
    assert decide(Observation(ready, in_flight, silent_for), timeout) is action


def test_restart_kind_is_a_small_label_set() -> None:
    assert restart_kind("stalled: no answer to /slots for 3.0s with 2 request(s) in flight") == "stalled"
    assert restart_kind("exited with code -9") == "exited"
    assert restart_kind(None) == "exited"


class FakeEngine:
    """The part of LlamaServerEngine the watchdog uses, over a fake runner process."""

    kind = "fake"
    stall_probe = "/slots"

    def __init__(self, tmp_path: Path, per_call: list[list[str]]) -> None:
        self.calls = 0

        def argv(port: int) -> list[str]:
            extra = per_call[min(self.calls, len(per_call) - 1)]
            self.calls += 1
            return [sys.executable, str(FAKE), "--port", str(port), *extra]

        policy = RestartPolicy(backoff_initial_s=0.05, backoff_max_s=1.0)
        self.process = ManagedProcess(
            "fake", argv, log_path=tmp_path / "fake.log", restart=policy, ready_timeout=20
        )

    base_url = property(lambda self: self.process.base_url)
    ready = property(lambda self: self.process.state is State.READY)
    request_headers = property(lambda self: KEY)

    def kill(self, cause: str) -> bool:
        return self.process.kill(cause)

    def info(self) -> EngineInfo:
        p = self.process
        return EngineInfo("fake", p.state.value, "", p.pid, p.restarts, {"restart_cause": p.last_cause})


@dataclass
class Model:
    engine: FakeEngine
    in_flight: int = 1
    name: str = "fake"
    spec: RunnerSpec = field(default_factory=RunnerSpec)


async def _until(check: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, what
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def _dog(model: Model, timeout: float, restarts: list[tuple[str, str]]) -> Watchdog:
    return Watchdog(lambda: [model], timeout, interval=0.1, on_restart=lambda *r: restarts.append(r))


def test_a_busy_runner_whose_main_loop_stalls_is_killed_and_restarted(tmp_path: Path) -> None:
    """/health stays green: only the main-loop probe sees it. Killed within the timeout plus one look,
    restarted at once (no back-off), the cause in the process's record and the restart hook."""

    async def scenario() -> None:
        engine = FakeEngine(tmp_path, [["--stall-slots-after", "0.5"], []])
        await engine.process.ensure_ready()
        first = engine.process.pid
        restarts: list[tuple[str, str]] = []
        dog = _dog(Model(engine), 1.0, restarts)
        task = asyncio.create_task(dog.run())
        try:
            async with httpx.AsyncClient() as client:
                assert (await client.get(engine.base_url + "/health")).status_code == 200
            took = await _until(lambda: engine.process.pid not in (None, first), 6, "never killed")
            assert 1.0 <= took <= 3.5
            assert first is not None and not pid_alive(first)
            await _until(lambda: engine.ready, 20, "never restarted")
            await _until(lambda: restarts, 2, "restart never reported")
            assert restarts == [("fake", "stalled")]
            assert engine.process.restarts == 1
            assert (engine.process.last_cause or "").startswith("stalled: no answer to /slots")
            async with httpx.AsyncClient() as client:  # the fresh runner is probed, with its key
                await asyncio.sleep(0.5)
                seen = (await client.get(engine.base_url + "/seen")).json()["authorization"]
            assert seen and set(seen) == {KEY["Authorization"]}
            assert engine.process.pid is not None and engine.process.restarts == 1  # healthy: left alone
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await engine.process.stop()

    asyncio.run(scenario())


def test_an_idle_runner_is_never_probed_nor_killed(tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = FakeEngine(tmp_path, [["--stall-slots-after", "0"]])
        await engine.process.ensure_ready()
        pid = engine.process.pid
        dog = _dog(Model(engine, in_flight=0), 0.3, [])
        task = asyncio.create_task(dog.run())
        try:
            await asyncio.sleep(1.5)
            async with httpx.AsyncClient() as client:
                assert (await client.get(engine.base_url + "/seen")).json()["authorization"] == []
            assert engine.process.pid == pid and engine.process.restarts == 0
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await engine.process.stop()

    asyncio.run(scenario())


def test_a_crash_is_reported_as_exited(tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = FakeEngine(tmp_path, [[]])
        await engine.process.ensure_ready()
        restarts: list[tuple[str, str]] = []
        task = asyncio.create_task(_dog(Model(engine, in_flight=0), 5.0, restarts).run())
        try:
            await asyncio.sleep(0.2)
            assert engine.process.pid is not None
            os.kill(engine.process.pid, signal.SIGKILL)
            await _until(lambda: restarts, 10, "crash restart never reported")
            assert restarts == [("fake", "exited")]
            assert engine.process.last_cause == "exited with code -9"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await engine.process.stop()

    asyncio.run(scenario())


def test_kill_ends_a_sigstopped_runner_and_only_a_ready_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = FakeEngine(tmp_path, [[]])
        assert engine.kill("stalled: test") is False  # never started: nothing to kill
        await engine.process.ensure_ready()
        pid = engine.process.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        assert engine.kill("stalled: test") is True
        await _until(lambda: not pid_alive(pid), 5, "a SIGSTOPped runner survived SIGKILL")
        # ready alone is not enough: the old process reads READY until its exit is reported
        await _until(lambda: engine.process.restarts and engine.ready, 20, "never restarted")
        assert engine.process.last_cause == "stalled: test" and engine.process.restarts == 1
        await engine.process.stop()
        assert engine.kill("stalled: test") is False

    asyncio.run(scenario())
