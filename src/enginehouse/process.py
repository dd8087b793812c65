"""One runner process (llama-server or another engine) under management.

The state machine; every transition happens on the event loop's thread::

    STOPPED ──ensure_ready──▶ STARTING ──health 200──▶ READY
                                │  ▲                      │
          exited / not healthy  │  │ back-off elapsed:    │ exited unexpectedly
          in time ("failed")    ▼  │ auto restart or      ▼ ("exited")
                              FAILED ◀─ensure_ready────── ┘
    any state ──stop()──▶ STOPPING ──▶ STOPPED   (and no automatic restart after it)

A start is one shared task (``_start_task``) and a stop another (``_stop_task``): concurrent callers
await the same task, so a runner is never spawned twice nor stopped twice.

No runner may outlive the gateway, even one killed with SIGKILL. On Linux each runner gets
``prctl(PR_SET_PDEATHSIG, SIGKILL)`` before exec; PDEATHSIG follows the *thread* that forked, so
runners are always spawned from the event loop's thread (never from an executor). Elsewhere a tiny
watchdog process holds the read end of a pipe from the gateway and kills the runner's process group
when the pipe reaches end-of-file, which the kernel guarantees when the gateway dies (a gateway
killed in the instant between spawning the runner and spawning its watchdog can still leak it).
POSIX only: Windows has no process groups to kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from enginehouse import http_client
from enginehouse.errors import EnginehouseError, RunnerError, RunnerStartFailed

log = logging.getLogger(__name__)

_ADDRESS_IN_USE = ("address already in use", "eaddrinuse", "couldn't bind")
_PR_SET_PDEATHSIG = 1
_WATCHDOG = (
    "import os, signal, sys\n"
    "try:\n"
    "    while os.read(0, 512): pass\n"
    "except OSError: pass\n"
    "try: os.killpg(int(sys.argv[1]), signal.SIGKILL)\n"
    "except OSError: pass\n"
)


class State(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


@dataclass(frozen=True)
class RestartPolicy:
    enabled: bool = True
    max_restarts: int = 5  # automatic restarts allowed within window_s
    window_s: float = 300.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0

    def backoff(self, failures: int) -> float:
        """Wait before the next attempt, after ``failures`` (1, 2, ...) failures within the window."""
        return min(self.backoff_initial_s * 2.0 ** min(max(failures - 1, 0), 62), self.backoff_max_s)


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


_prctl = _load_prctl()  # None: use the watchdog instead


def _pdeathsig_preexec(parent_pid: int) -> Callable[[], None]:
    prctl, sigkill = _prctl, int(signal.SIGKILL)
    assert prctl is not None

    def preexec() -> None:  # in the forked child, before exec: keep it tiny
        prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if os.getppid() != parent_pid:  # the gateway died before prctl took effect
            os._exit(137)

    return preexec


def autogroup_nice(pid: int | str = "self") -> int | None:
    """The niceness of the scheduling group of ``pid``'s session (Linux autogroup), or None without one."""
    try:
        with open(f"/proc/{pid}/autogroup") as fh:  # "/autogroup-42 nice 0"
            return int(fh.read().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def child_preexec(parent_pid: int, nice: int = 0) -> Callable[[], None] | None:
    """What a child of the gateway (a runner, an RPC worker, the converter) does before exec: die with
    ``parent_pid`` (Linux; None where there is no prctl and nothing else to do) and lower its priority
    by ``nice``. The niceness is set before exec, so every thread the child starts inherits it.

    The child leads a session of its own (its process group is killed as one). Where the kernel
    schedules each session as a group (autogroup, on by default in most Linux distributions), a thread's
    niceness only weighs against threads of its own session: the gateway and a runner would share the
    CPU as equals, whatever the runner's threads say. So the child's session is lowered by ``nice`` too,
    relative to the gateway's (raising a niceness needs no privilege)."""
    pdeathsig = _pdeathsig_preexec(parent_pid) if _prctl is not None else None
    if nice <= 0:
        return pdeathsig
    ours = autogroup_nice()  # read here, in the gateway: the child's new session starts at 0
    group = None if ours is None else str(min(19, ours + nice)).encode()

    def preexec() -> None:
        if pdeathsig is not None:
            pdeathsig()
        os.nice(nice)
        if group is not None and os.getsid(0) == os.getpid():  # a session leader: the group is its own
            try:
                fd = os.open("/proc/self/autogroup", os.O_WRONLY)
                try:
                    os.write(fd, group)
                finally:
                    os.close(fd)
            except OSError:
                pass  # a kernel that refuses: thread niceness still orders the runner's own threads

    return preexec


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _read_tail(path: Path, lines: int, since: int = 0) -> str:
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(max(since, end - 64 * 1024))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:]) if lines > 0 else ""


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # the awaiters get it; this only silences "exception never retrieved"


class ManagedProcess:
    """A runner subprocess with health-checked start-up, graceful stop and automatic restart.

    ``env`` holds overrides merged onto the gateway's environment. ``started_at`` and ``ready_at`` are
    Unix times (``time.time()``). ``pid`` is that of the live process, None when none runs.
    """

    def __init__(
        self,
        name: str,
        build_argv: Callable[[int], list[str]],
        *,
        log_path: Path,
        health_path: str = "/health",
        health_headers: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 300.0,
        stop_grace: float = 10.0,
        restart: RestartPolicy = RestartPolicy(),  # frozen: sharing the default is safe
        on_event: Callable[[str, ManagedProcess], None] | None = None,
        nice: int = 0,
    ) -> None:
        self.name = name
        self.nice = nice  # added to the child's niceness (0: the gateway's own)
        self.health_path = health_path
        self.health_headers = dict(health_headers or {})  # the runner's key, where it has one
        self.host = host
        self.env = dict(env) if env else None
        self.ready_timeout = ready_timeout
        self.stop_grace = stop_grace
        self.restart_policy = restart
        self._build_argv = build_argv
        self._log_path = Path(log_path)
        self._on_event = on_event

        self._loop: asyncio.AbstractEventLoop | None = None
        self._state = State.STOPPED
        self._start_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._restart_handle: asyncio.TimerHandle | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._exited: asyncio.Future[int] | None = None  # the current process's exit code
        self._pgid: int | None = None  # the current process group, until swept
        self._watchdog_fd: int | None = None
        self._port: int | None = None
        self._log_offset = 0  # where the current run's output starts in the log
        self._retry_at = 0.0  # loop time from which FAILED may start again
        self._failures: deque[float] = deque()  # loop times of failures, within the window
        self._restart_times: deque[float] = deque()  # loop times of automatic restarts, within the window
        self._restarts = 0
        self._last_exit_code: int | None = None
        self._kill_cause: str | None = None  # why kill() was called, until the process exits
        self._last_cause: str | None = None
        self._started_at: float | None = None
        self._ready_at: float | None = None

    # ---- read-only view -------------------------------------------------------------------------
    @property
    def state(self) -> State:
        return self._state

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def restarts(self) -> int:
        """Automatic restarts since this object was made."""
        return self._restarts

    @property
    def last_cause(self) -> str | None:
        """Why the last automatic restart happened ("stalled: ...", "exited with code -9"), or None."""
        return self._last_cause

    @property
    def last_exit_code(self) -> int | None:
        """Negative for a signal, as in subprocess."""
        return self._last_exit_code

    @property
    def started_at(self) -> float | None:
        return self._started_at

    @property
    def ready_at(self) -> float | None:
        return self._ready_at

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def pid(self) -> int | None:
        running = self._proc is not None and self._exited is not None and not self._exited.done()
        return self._proc.pid if running else None

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RunnerError(f"runner '{self.name}' has never been started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    def log_tail(self, lines: int = 20) -> str:
        return _read_tail(self._log_path, lines)

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} {self._state.name} pid={self.pid} port={self._port}>"

    # ---- public operations ----------------------------------------------------------------------
    async def ensure_ready(self, timeout: float | None = None) -> None:
        """Return once the runner answers its health check with 200.

        - STOPPED: start it and wait (``timeout`` or ``ready_timeout`` seconds).
        - STARTING: wait for the start in progress; concurrent callers share one start and the
          process is never spawned twice. A ``timeout`` bounds this caller's wait only.
        - READY: return at once.
        - STOPPING: wait for the stop to finish, then start.
        - FAILED: if the restart back-off has elapsed, start again; else raise RunnerError saying
          when it may be retried (``details["retry_after"]``, seconds).

        Raises RunnerStartFailed, whose message ends with the last lines of the runner's log, if the
        process exits during start-up or is not healthy in time (then it is killed); RunnerError if
        ``stop()`` interrupts the start.
        """
        self._loop = loop = self._loop or asyncio.get_running_loop()
        while True:
            if self._state is State.READY:
                return
            if self._state is State.STOPPING:
                assert self._stop_task is not None
                await asyncio.shield(self._stop_task)
                continue
            joining = self._state is State.STARTING
            if self._state is State.FAILED:
                wait = self._retry_at - loop.time()
                if wait > 0:
                    raise RunnerError(
                        f"runner '{self.name}' failed (last exit code {self._last_exit_code});"
                        f" it may be retried in {wait:.1f}s",
                        retry_after=wait,
                    )
                self._cancel_restart()
            if not joining:
                self._begin_start(self.ready_timeout if timeout is None else timeout, auto=False)
            await self._join_start(timeout if joining else None)

    async def stop(self, grace: float | None = None) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; idempotent, shared by callers."""
        if self._stop_task is None:
            if self._state is State.STOPPED:
                return
            assert self._loop is not None
            grace = self.stop_grace if grace is None else grace
            self._stop_task = self._loop.create_task(self._run_stop(grace), name=f"stop {self.name}")
            self._stop_task.add_done_callback(_retrieve)
        await asyncio.shield(self._stop_task)

    def kill(self, cause: str) -> bool:
        """SIGKILL a READY runner that stopped answering and start a fresh one at once (an automatic
        restart, counted and recorded with ``cause``). Its connections close with it, so every request
        in flight fails now rather than at its client's timeout. SIGKILL also ends a SIGSTOPped process.
        Returns False (and does nothing) in any other state."""
        if self._state is not State.READY or self.pid is None:
            return False
        self._kill_cause = cause
        self._signal_group(signal.SIGKILL)
        return True

    # ---- transitions ----------------------------------------------------------------------------
    def _emit(self, event: str) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event, self)
        except Exception:
            log.exception("on_event(%r) for runner %s raised; ignored", event, self.name)

    def _transition(self, state: State, event: str) -> None:
        log.debug("runner %s: %s -> %s", self.name, self._state.name, state.name)
        self._state = state
        self._emit(event)

    def _begin_start(self, timeout: float, *, auto: bool) -> None:
        assert self._loop is not None
        self._start_task = self._loop.create_task(self._run_start(timeout, auto), name=f"start {self.name}")
        self._start_task.add_done_callback(_retrieve)
        self._transition(State.STARTING, "starting")  # the task runs only after this returns

    async def _join_start(self, timeout: float | None) -> None:
        task = self._start_task
        assert task is not None
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            raise RunnerStartFailed(
                f"runner '{self.name}' was not ready within {timeout:g}s (its start-up"
                f" goes on); {self._log_excerpt()}"
            ) from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                raise RunnerError(f"runner '{self.name}' was stopped while starting") from None
            raise

    def _enter_failed(self, event: str, *, auto_restart: bool, at_once: bool = False) -> None:
        """``at_once``: the first failure in the window restarts without a back-off (a runner the
        watchdog killed was healthy until it stalled; requests queued for it should not wait)."""
        assert self._loop is not None
        now, policy = self._loop.time(), self.restart_policy
        for times in (self._failures, self._restart_times):
            while times and times[0] < now - policy.window_s:
                times.popleft()
        self._failures.append(now)
        delay = 0.0 if at_once and len(self._failures) == 1 else policy.backoff(len(self._failures))
        self._retry_at = now + delay
        self._transition(State.FAILED, event)
        if not (auto_restart and policy.enabled) or self._state is not State.FAILED:
            return
        if len(self._restart_times) >= policy.max_restarts:
            log.error(
                "runner %s: %d automatic restarts within %gs; giving up",
                self.name,
                len(self._restart_times),
                policy.window_s,
            )
            return
        if delay <= 0:
            self._auto_restart()  # now: a request arriving meanwhile joins this start
            return
        log.warning("runner %s: restarting in %.2fs", self.name, delay)
        self._restart_handle = self._loop.call_later(delay, self._auto_restart)

    def _auto_restart(self) -> None:
        self._restart_handle = None
        if self._state is not State.FAILED:
            return
        assert self._loop is not None
        self._restart_times.append(self._loop.time())
        self._restarts += 1
        self._emit("restarting")
        self._begin_start(self.ready_timeout, auto=True)

    def _cancel_restart(self) -> None:
        if self._restart_handle is not None:
            self._restart_handle.cancel()
            self._restart_handle = None

    # ---- the start and the stop -----------------------------------------------------------------
    async def _run_start(self, timeout: float, auto: bool) -> None:
        assert self._loop is not None
        deadline = self._loop.time() + timeout
        try:
            for attempt in (1, 2):
                exited = self._spawn()
                outcome = await self._wait_healthy(exited, deadline)
                if outcome == "ready":
                    self._ready_at = time.time()
                    self._transition(State.READY, "ready")
                    return
                if outcome == "timeout":
                    await self._kill_now()
                    raise RunnerStartFailed(
                        f"runner '{self.name}' was not healthy within {timeout:g}s and"
                        f" was killed; {self._log_excerpt()}"
                    )
                self._sweep_group()
                output = _read_tail(self._log_path, 200, since=self._log_offset).lower()
                if attempt == 1 and any(s in output for s in _ADDRESS_IN_USE):
                    log.warning("runner %s: port %s taken; retrying on a fresh one", self.name, self._port)
                    continue
                raise RunnerStartFailed(
                    f"runner '{self.name}' exited with code {exited.result()} during"
                    f" start-up; {self._log_excerpt()}"
                )
        except asyncio.CancelledError:
            if self._state is State.STARTING:  # not cancelled by stop(), which kills gracefully itself
                self._signal_group(signal.SIGKILL)
            raise
        except Exception as exc:
            await self._kill_now()
            self._enter_failed("failed", auto_restart=auto)
            if isinstance(exc, EnginehouseError):
                raise
            reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or "unexpected error"
            raise RunnerStartFailed(f"runner '{self.name}' failed to start: {reason}") from exc

    async def _wait_healthy(self, exited: asyncio.Future[int], deadline: float) -> str:
        """Poll the health URL until 200: returns "ready", "exited" or "timeout"."""
        assert self._loop is not None
        url, delay = self.base_url + self.health_path, 0.02
        async with http_client.session(connector_args={"force_close": True}) as http:
            while True:
                if exited.done():
                    return "exited"
                remaining = deadline - self._loop.time()
                if remaining <= 0:
                    return "timeout"
                try:
                    per_try = aiohttp.ClientTimeout(total=min(remaining, 5.0))
                    async with http.get(url, timeout=per_try, headers=self.health_headers) as resp:
                        if resp.status == 200:
                            return "ready"
                except (aiohttp.ClientError, TimeoutError, OSError):
                    pass
                remaining = deadline - self._loop.time()
                if remaining > 0:
                    await asyncio.wait({exited}, timeout=min(delay, remaining))
                delay = min(delay * 1.5, 0.25)

    async def _run_stop(self, grace: float) -> None:
        try:
            self._cancel_restart()
            self._transition(State.STOPPING, "stopping")
            start = self._start_task
            if start is not None and not start.done():
                start.cancel()
                await asyncio.wait({start})
            exited = self._exited
            if exited is not None and not exited.done():
                self._signal_group(signal.SIGTERM)
                await asyncio.wait({exited}, timeout=grace)
                if not exited.done():
                    log.warning("runner %s ignored SIGTERM for %gs; sending SIGKILL", self.name, grace)
                    self._signal_group(signal.SIGKILL)
                    await asyncio.wait({exited}, timeout=5.0)
            self._sweep_group()
            self._transition(State.STOPPED, "stopped")
        finally:
            self._stop_task = None

    # ---- the operating system side --------------------------------------------------------------
    def _spawn(self) -> asyncio.Future[int]:
        """Start one process on a fresh port. Runs on the loop's thread: PDEATHSIG follows the forker."""
        assert self._loop is not None
        self._port = port = _free_port(self.host)
        argv = [str(a) for a in self._build_argv(port)]
        env = {**os.environ, **self.env} if self.env else None
        preexec = child_preexec(os.getpid(), self.nice)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._log_path, "ab") as logf:
            stamp = datetime.now().astimezone().isoformat(timespec="seconds")
            logf.write(f"\n=== {stamp} enginehouse: starting {self.name}: {shlex.join(argv)}\n".encode())
            logf.flush()
            self._log_offset = logf.tell()
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    preexec_fn=preexec,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                logf.write(f"enginehouse: could not run {argv[0]}: {exc}\n".encode())
                reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
                binary = Path(argv[0]).name  # the engines directory stays in the log, not the answer
                raise RunnerStartFailed(f"runner '{self.name}' could not run {binary}: {reason}") from exc
        self._proc, self._pgid, self._started_at, self._ready_at = proc, proc.pid, time.time(), None
        self._exited = exited = self._loop.create_future()
        if _prctl is None:
            self._start_watchdog(proc.pid)
        threading.Thread(
            target=self._watch, args=(proc, exited), name=f"wait {self.name} {proc.pid}", daemon=True
        ).start()
        return exited

    def _watch(self, proc: subprocess.Popen[bytes], exited: asyncio.Future[int]) -> None:
        code = proc.wait()  # in a daemon thread
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody left to tell
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._on_exit, proc, exited, code)

    def _on_exit(self, proc: subprocess.Popen[bytes], exited: asyncio.Future[int], code: int) -> None:
        killed = None  # the cause given to kill(), when that is why it exited
        if proc is self._proc:
            self._last_exit_code = code
            killed, self._kill_cause = self._kill_cause, None
        if not exited.done():
            exited.set_result(code)
        if proc is self._proc and self._state is State.READY:
            if killed is None:
                log.warning("runner %s (pid %d) exited unexpectedly with code %s", self.name, proc.pid, code)
            self._last_cause = killed or f"exited with code {code}"
            self._sweep_group()
            self._enter_failed("exited", auto_restart=True, at_once=killed is not None)
        # STARTING: the start task sees `exited`; STOPPING: so does the stop task.

    async def _kill_now(self) -> None:
        exited = self._exited
        if exited is not None and not exited.done():
            self._signal_group(signal.SIGKILL)
            await asyncio.wait({exited}, timeout=5.0)
        self._sweep_group()

    def _signal_group(self, sig: int) -> None:
        if self._pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pgid, sig)

    def _sweep_group(self) -> None:
        """The leader is gone: kill whatever it left in its group, once, and release the watchdog."""
        self._signal_group(signal.SIGKILL)
        self._pgid = None
        if self._watchdog_fd is not None:
            os.close(self._watchdog_fd)
            self._watchdog_fd = None

    def _start_watchdog(self, pgid: int) -> None:
        rfd, wfd = os.pipe()
        try:
            dog = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(pgid)],
                stdin=rfd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            log.warning("runner %s: no watchdog (%s); it may outlive a killed gateway", self.name, exc)
            os.close(wfd)
            return
        finally:
            os.close(rfd)
        self._watchdog_fd = wfd
        threading.Thread(target=dog.wait, name=f"watchdog {self.name}", daemon=True).start()

    def _log_excerpt(self) -> str:
        tail = _read_tail(self._log_path, 20, since=self._log_offset) or "(no output)"
        return f"last lines of {self._log_path}:\n{tail}"
