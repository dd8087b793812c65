"""ManagedProcess against tests/fakes/fake_runner.py: start, stop, crash, restart, back-off, no orphans."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop

from enginehouse.errors import RunnerError, RunnerStartFailed
from enginehouse.process import ManagedProcess, RestartPolicy, State, autogroup_nice
from tests.conftest import pid_alive, thread_nices

pytestmark = pytest.mark.timeout(60)

FAKE = Path(__file__).parent / "fakes" / "fake_runner.py"
SRC = Path(__file__).parents[1] / "src"
FAST = RestartPolicy(backoff_initial_s=0.05, backoff_max_s=1.0)


def run(coro: Coroutine[Any, Any, Any], loop: str = "asyncio") -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop if loop == "uvloop" else None) as runner:
        return runner.run(coro)


class Fake:
    """build_argv for the fake runner; ``per_call`` gives extra options for the n-th call (0-based)."""

    def __init__(self, *opts: str, per_call: Callable[[int], list[str]] | None = None) -> None:
        self.opts, self.per_call, self.ports = list(opts), per_call, []

    def __call__(self, port: int) -> list[str]:
        extra = self.per_call(len(self.ports)) if self.per_call else []
        self.ports.append(port)
        return [sys.executable, str(FAKE), "--port", str(port), *self.opts, *extra]


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, State, float]] = []

    def __call__(self, event: str, mp: ManagedProcess) -> None:
        self.seen.append((event, mp.state, time.monotonic()))

    @property
    def names(self) -> list[str]:
        return [e for e, _, _ in self.seen]

    def count(self, *events: str) -> int:
        return sum(e in events for e in self.names)

    async def wait(self, *events: str, count: int = 1, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count(*events) < count:
            assert time.monotonic() < deadline, f"waited for {count} x {events}; saw {self.names}"
            await asyncio.sleep(0.01)


def make(tmp_path: Path, fake: Fake, **kw: Any) -> tuple[ManagedProcess, Events]:
    events = Events()
    kw.setdefault("restart", FAST)
    kw.setdefault("ready_timeout", 20.0)
    mp = ManagedProcess("fake", fake, log_path=tmp_path / "logs" / "fake.log", on_event=events, **kw)
    return mp, events


def wait_gone(pid: int, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def logged_pids(mp: ManagedProcess, what: str = "fake_runner: pid") -> list[int]:
    text = mp.log_path.read_text() if mp.log_path.exists() else ""
    return [int(m) for m in re.findall(re.escape(what) + r" (\d+)", text)]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_start_ready_then_stop(tmp_path: Path, loop: str) -> None:
    fake = Fake("--load-seconds", "0.3")
    mp, events = make(tmp_path, fake)

    async def main() -> None:
        assert mp.state is State.STOPPED and mp.pid is None
        await mp.ensure_ready()
        assert mp.state is State.READY
        assert mp.port == fake.ports[0] and mp.base_url == f"http://127.0.0.1:{fake.ports[0]}"
        assert mp.started_at is not None and mp.ready_at is not None and mp.ready_at >= mp.started_at
        async with aiohttp.ClientSession() as http:
            async with http.get(mp.base_url + "/health") as resp:
                assert resp.status == 200
            async with http.get(mp.base_url + "/pid") as resp:
                assert (await resp.json())["pid"] == mp.pid
        await mp.ensure_ready()  # READY: returns at once
        pid = mp.pid
        await mp.stop()
        await mp.stop()  # idempotent
        assert mp.state is State.STOPPED and mp.pid is None and wait_gone(pid)
        assert events.names == ["starting", "ready", "stopping", "stopped"]
        assert mp.restarts == 0

    run(main(), loop)


def test_concurrent_ensure_ready_spawns_once(tmp_path: Path) -> None:
    fake = Fake("--load-seconds", "0.3")
    mp, events = make(tmp_path, fake)

    async def main() -> None:
        await asyncio.gather(*(mp.ensure_ready() for _ in range(8)))
        assert mp.state is State.READY
        assert len(fake.ports) == 1 and events.count("starting") == 1
        assert mp.log_path.read_text().count("enginehouse: starting fake") == 1
        await asyncio.gather(mp.stop(), mp.stop(), mp.stop())
        assert events.count("stopping") == 1 and mp.state is State.STOPPED

    run(main())


def test_start_failure_raises_with_log_then_backs_off(tmp_path: Path) -> None:
    fake = Fake("--fail-start")
    mp, events = make(tmp_path, fake, restart=RestartPolicy(backoff_initial_s=0.3))

    async def main() -> None:
        with pytest.raises(RunnerStartFailed) as exc:
            await mp.ensure_ready()
        assert "error: failed to load model 'x'" in str(exc.value)
        assert "exited with code 1" in str(exc.value)
        assert mp.state is State.FAILED and mp.last_exit_code == 1 and mp.pid is None
        assert events.names == ["starting", "failed"]
        with pytest.raises(RunnerError) as again:  # during the back-off: refused, nothing spawned
            await mp.ensure_ready()
        assert not isinstance(again.value, RunnerStartFailed)
        assert "retried in" in str(again.value) and 0 < again.value.details["retry_after"] <= 0.3
        assert len(fake.ports) == 1
        await asyncio.sleep(0.35)  # back-off elapsed: it starts again (and fails again)
        with pytest.raises(RunnerStartFailed):
            await mp.ensure_ready()
        assert len(fake.ports) == 2 and mp.restarts == 0  # explicit retries are not automatic restarts
        await mp.stop()
        assert mp.state is State.STOPPED

    run(main())


def test_ready_timeout_kills_the_process(tmp_path: Path) -> None:
    mp, _ = make(tmp_path, Fake("--load-seconds", "60"))

    async def main() -> None:
        t0 = time.monotonic()
        with pytest.raises(RunnerStartFailed) as exc:
            await mp.ensure_ready(timeout=1.0)
        assert time.monotonic() - t0 < 6
        assert "not healthy within 1s" in str(exc.value) and "fake_runner: listening" in str(exc.value)
        assert mp.state is State.FAILED and mp.last_exit_code == -signal.SIGKILL
        [pid] = logged_pids(mp)
        assert wait_gone(pid)

    run(main())


def test_stop_is_graceful(tmp_path: Path) -> None:
    mp, _ = make(tmp_path, Fake())

    async def main() -> None:
        await mp.ensure_ready()
        t0 = time.monotonic()
        await mp.stop(grace=5.0)
        assert time.monotonic() - t0 < 3
        assert mp.last_exit_code == 0
        assert "received SIGTERM" in mp.log_tail()

    run(main())


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    mp, _ = make(tmp_path, Fake("--ignore-sigterm"))

    async def main() -> None:
        await mp.ensure_ready()
        pid = mp.pid
        assert pid is not None
        t0 = time.monotonic()
        await mp.stop(grace=0.5)
        elapsed = time.monotonic() - t0
        assert 0.45 <= elapsed < 4, elapsed
        assert mp.last_exit_code == -signal.SIGKILL and mp.state is State.STOPPED and wait_gone(pid)

    run(main())


@pytest.mark.parametrize("opts", [(), ("--ignore-sigterm",)])
def test_stop_kills_the_whole_process_group(tmp_path: Path, opts: tuple[str, ...]) -> None:
    mp, _ = make(tmp_path, Fake("--spawn-child", *opts))

    async def main() -> None:
        await mp.ensure_ready()
        [grandchild] = logged_pids(mp, "child pid")
        assert pid_alive(grandchild)
        await mp.stop(grace=0.5)
        assert wait_gone(grandchild)

    run(main())


def test_crash_while_ready_restarts(tmp_path: Path) -> None:
    fake = Fake(per_call=lambda n: ["--exit-after", "0.5"] if n == 0 else [])
    mp, events = make(tmp_path, fake)

    async def main() -> None:
        await mp.ensure_ready()
        first = mp.pid
        await events.wait("exited")
        assert events.seen[events.names.index("exited")][1] is State.FAILED
        await events.wait("ready", count=2)
        assert mp.state is State.READY and mp.restarts == 1 and mp.last_exit_code == 3
        assert mp.pid is not None and mp.pid != first and len(fake.ports) == 2
        assert events.names == ["starting", "ready", "exited", "restarting", "starting", "ready"]
        await mp.stop()

    run(main())


def test_explicit_stop_does_not_restart(tmp_path: Path) -> None:
    mp, events = make(tmp_path, Fake())

    async def main() -> None:
        await mp.ensure_ready()
        await mp.stop()
        await asyncio.sleep(0.5)
        assert mp.state is State.STOPPED and "restarting" not in events.names

    run(main())


def test_failed_during_backoff_refuses_and_stop_cancels_the_restart(tmp_path: Path) -> None:
    fake = Fake("--exit-after", "0.5")
    mp, events = make(tmp_path, fake, restart=RestartPolicy(backoff_initial_s=1.0))

    async def main() -> None:
        await mp.ensure_ready()
        await events.wait("exited")
        with pytest.raises(RunnerError, match="retried in"):
            await mp.ensure_ready()
        await mp.stop()
        await asyncio.sleep(1.3)
        assert mp.state is State.STOPPED and "restarting" not in events.names and len(fake.ports) == 1
        await mp.ensure_ready()  # an explicit start after a stop is fine
        await mp.stop()

    run(main())


def test_backoff_grows_and_gives_up_after_max_restarts(tmp_path: Path) -> None:
    policy = RestartPolicy(max_restarts=3, window_s=60.0, backoff_initial_s=0.1, backoff_max_s=10.0)
    assert [policy.backoff(n) for n in (1, 2, 3, 4, 9)] == [0.1, 0.2, 0.4, 0.8, 10.0]
    mp, events = make(tmp_path, Fake("--exit-after", "0.5"), restart=policy)

    async def main() -> None:
        await mp.ensure_ready()
        await events.wait("exited", "failed", count=4, timeout=20)
        await asyncio.sleep(1.2)  # longer than the next back-off (0.8 s) would be
        assert mp.state is State.FAILED and mp.restarts == 3 and events.count("restarting") == 3
        failures = [t for e, _, t in events.seen if e in ("exited", "failed")]
        restarts = [t for e, _, t in events.seen if e == "restarting"]
        for i, (failed, restarted) in enumerate(zip(failures, restarts, strict=False)):
            assert restarted - failed >= policy.backoff(i + 1) - 0.02, (i, restarted - failed)
        await mp.ensure_ready()  # the back-off has elapsed: an explicit start goes ahead
        await mp.stop()

    run(main())


def test_stop_while_starting(tmp_path: Path) -> None:
    mp, events = make(tmp_path, Fake("--load-seconds", "60"))

    async def main() -> None:
        waiter = asyncio.create_task(mp.ensure_ready())
        deadline = time.monotonic() + 10
        while not logged_pids(mp):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await mp.stop()
        with pytest.raises(RunnerError, match="stopped while starting"):
            await waiter
        assert mp.state is State.STOPPED and mp.last_exit_code == 0 and wait_gone(logged_pids(mp)[0])
        assert events.names == ["starting", "stopping", "stopped"]

    run(main())


def test_log_file_holds_header_and_output(tmp_path: Path) -> None:
    mp, _ = make(tmp_path, Fake())

    async def main() -> None:
        await mp.ensure_ready()
        await mp.stop()
        await mp.ensure_ready()
        await mp.stop()

    run(main())
    text = mp.log_path.read_text()
    assert text.count("enginehouse: starting fake: ") == 2
    assert str(FAKE) in text and f"--port {mp.port}" in text
    assert text.count("fake_runner: listening on 127.0.0.1:") == 2
    assert mp.log_tail(1) == "fake_runner: received SIGTERM, shutting down"


def test_address_in_use_retries_on_a_fresh_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        fake = Fake()
        mp, _ = make(tmp_path, lambda port: fake(busy if not fake.ports else port))

        async def main() -> None:
            await mp.ensure_ready()
            assert len(fake.ports) == 2 and mp.port == fake.ports[1] != busy
            await mp.stop()

        run(main())
    assert "Address already in use" in mp.log_path.read_text()


def test_on_event_exceptions_do_not_break_the_machine(tmp_path: Path) -> None:
    def boom(event: str, mp: ManagedProcess) -> None:
        raise ValueError(event)

    mp = ManagedProcess("fake", Fake(), log_path=tmp_path / "fake.log", on_event=boom)

    async def main() -> None:
        await mp.ensure_ready()
        assert mp.state is State.READY
        await mp.stop()
        assert mp.state is State.STOPPED

    run(main())


GATEWAY = """
import asyncio, sys
from pathlib import Path
sys.path.insert(0, {src!r})
from enginehouse import process

loop, mode = sys.argv[1:3]
if mode == "watchdog":
    process._prctl = None

def argv(port):
    return [sys.executable, {fake!r}, "--port", str(port), "--spawn-child"]

async def main():
    mp = process.ManagedProcess("orphan", argv, log_path=Path({log!r}), ready_timeout=20)
    await mp.ensure_ready()
    print(mp.pid, flush=True)
    await asyncio.sleep(3600)

factory = None
if loop == "uvloop":
    import uvloop
    factory = uvloop.new_event_loop
with asyncio.Runner(loop_factory=factory) as runner:
    runner.run(main())
"""


@pytest.mark.parametrize(
    ("loop", "mode"), [("asyncio", "pdeathsig"), ("uvloop", "pdeathsig"), ("asyncio", "watchdog")]
)
def test_no_orphans_after_the_gateway_is_sigkilled(tmp_path: Path, loop: str, mode: str) -> None:
    if mode == "pdeathsig" and not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    log = tmp_path / "orphan.log"
    script = tmp_path / "gateway.py"
    script.write_text(GATEWAY.format(src=str(SRC), fake=str(FAKE), log=str(log)))
    gateway = subprocess.Popen([sys.executable, str(script), loop, mode], stdout=subprocess.PIPE)
    runner_pid = None
    try:
        assert gateway.stdout is not None
        ready, _, _ = select.select([gateway.stdout], [], [], 30)
        assert ready, "the gateway did not report its runner"
        runner_pid = int(gateway.stdout.readline())
        assert pid_alive(runner_pid)
        [grandchild] = [int(p) for p in re.findall(r"child pid (\d+)", log.read_text())]
        gateway.kill()
        gateway.wait()
        assert wait_gone(runner_pid), f"runner {runner_pid} outlived the gateway"
        if mode == "watchdog":  # the watchdog kills the whole group; PDEATHSIG only the runner
            assert wait_gone(grandchild), f"grandchild {grandchild} outlived the gateway"
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
        if gateway.stdout is not None:
            gateway.stdout.close()
        if runner_pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(runner_pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads niceness from /proc")
@pytest.mark.parametrize("nice", [0, 5])
def test_nice_reaches_every_thread_of_the_runner(tmp_path: Path, nice: int) -> None:
    mp, _ = make(tmp_path, Fake(), nice=nice)
    own = os.nice(0)

    async def main() -> None:
        await mp.ensure_ready()
        assert mp.pid is not None
        try:
            nices = thread_nices(mp.pid)
            assert nices == [min(19, own + nice)] * len(nices)
            assert os.nice(0) == own  # the gateway keeps its own
            # Its session is scheduled as a group of its own where the kernel has autogroups: that
            # group is lowered too, or the runner would share the CPU with the gateway as an equal.
            ours = autogroup_nice()
            if ours is not None:
                assert autogroup_nice(mp.pid) == min(19, ours + nice)
                assert autogroup_nice() == ours
        finally:
            await mp.stop()

    run(main())
