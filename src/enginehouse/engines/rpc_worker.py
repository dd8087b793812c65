"""llama.cpp RPC workers: ``rpc-server`` processes that lend their memory and compute to a llama-server on
another host (its ``--rpc host:port,...``), so that a model too big for one machine is split across several.

The RPC protocol has **no authentication and no encryption**: whoever reaches a worker's port can make it
allocate memory, run computations, and read what it holds. So a worker binds to loopback (127.0.0.1) unless
told an interface, and never to every interface (0.0.0.0) or a public address without ``allow_public``.

What the vendored rpc-server (``tools/rpc/rpc-server.cpp`` and ``ggml/src/ggml-rpc``) does, and this module
works around:

- it binds IPv4 only, and ``--host`` must be an address literal (``inet_addr``): no names, no IPv6;
- it serves one client at a time: a second llama-server that connects waits until the first one leaves;
- when it cannot bind its port it prints "Failed to create server socket" and exits with status 0, so
  :func:`check_bind` tries the bind first, for a clear error;
- it has no memory limit option: a CPU worker reports the host's free RAM, and llama.cpp splits the layers
  in proportion to what each device reports (``--tensor-split`` on the llama-server side overrides that).

llama-server aborts (it does not hang) when a worker refuses the connection at start ("Failed to connect to
HOST:PORT") or closes it later ("Remote RPC server crashed or returned malformed response"); a worker that
accepts but never answers (busy with another llama-server, or its host gone without a reset) is bounded by
the runner's load timeout only. :func:`check_workers_async` asks each worker for its HELLO with a short
timeout before a start, so those cases get an error naming the worker in seconds, and
:func:`name_failed_workers` names the worker after an abort whose message does not.

:class:`RpcWorker` runs one rpc-server as a subprocess (``enginehouse rpc-worker``, the tests, the benchmark).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from enginehouse.config_values import RPC_DEFAULT_PORT as DEFAULT_PORT
from enginehouse.config_values import parse_endpoint
from enginehouse.errors import InvalidRequest, RunnerStartFailed
from enginehouse.process import _read_tail, child_preexec

DEFAULT_HOST = "127.0.0.1"

# The wire protocol of the vendored ggml-rpc (ggml/include/ggml-rpc.h, ggml/src/ggml-rpc): a request is
# | cmd: u8 | size: u64 LE | payload |, a reply | size: u64 LE | payload |. HELLO's command number is fixed
# forever (14) so that any client can learn any server's version.
RPC_CMD_HELLO = 14
RPC_CONN_CAPS_SIZE = 24  # transport capabilities (RDMA); all zero: plain TCP
RPC_PROTO_MAJOR = 7  # the version the pinned llama-server speaks; another major cannot work with it
_HELLO_REPLY = 4 + RPC_CONN_CAPS_SIZE  # major, minor, patch, padding, caps

NO_AUTH_WARNING = (
    "the llama.cpp RPC protocol has no authentication and no encryption: anyone who can reach {endpoint} "
    "can use this machine's memory and CPU and read the model data it holds. Expose it only on a trusted, "
    "private network (or a VPN / SSH tunnel)."
)


class RpcWorkerError(RunnerStartFailed):
    """An RPC worker that cannot be used: not reachable, not an rpc-server, busy, or the wrong version.
    A start failure: a runner that needs the worker cannot start (``details["workers"]`` names them)."""


@dataclass(frozen=True)
class HelloReply:
    major: int
    minor: int
    patch: int

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


# ---- addresses -----------------------------------------------------------------------------------------


def check_bind_host(host: str, *, allow_public: bool = False) -> str:
    """The IPv4 address a worker may bind, or InvalidRequest saying why not.

    Loopback and private-network addresses are allowed (the latter with :func:`bind_warning`); every
    interface (0.0.0.0) and globally routable addresses only with ``allow_public``."""
    value = host.strip()
    if value == "localhost":
        value = "127.0.0.1"
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidRequest(
            f"--host {host!r} is not an IP address: rpc-server binds an IPv4 address literal"
            " (127.0.0.1, or this machine's address on a private network)"
        ) from None
    if not isinstance(address, ipaddress.IPv4Address):
        raise InvalidRequest(f"--host {host!r} is IPv6: llama.cpp's rpc-server binds IPv4 only")
    if address == ipaddress.IPv4Address("255.255.255.255"):
        raise InvalidRequest("--host 255.255.255.255 is the broadcast address, not an interface")
    if not allow_public and (address.is_unspecified or address.is_global):
        what = "every network interface" if address.is_unspecified else "a public address"
        raise InvalidRequest(
            f"refusing to bind an RPC worker to {value} ({what}): the llama.cpp RPC protocol has no"
            " authentication, so anyone who can reach the port can use this machine. Bind 127.0.0.1 or this"
            " machine's address on a trusted private network, or pass --allow-public if you really mean it."
        )
    return str(address)


def bind_warning(host: str, port: int) -> str | None:
    """The warning to print for a worker bound to ``host``: None on loopback only."""
    if ipaddress.ip_address(host).is_loopback:
        return None
    endpoint = f"{host}:{port}"
    text = NO_AUTH_WARNING.format(endpoint=endpoint)
    if ipaddress.ip_address(host).is_unspecified:
        text = f"listening on EVERY network interface (port {port}); " + text
    elif ipaddress.ip_address(host).is_global:
        text = f"listening on a PUBLIC address ({endpoint}); " + text
    return text


def check_bind(host: str, port: int) -> None:
    """Bind (and release) ``host:port`` the way rpc-server will, so that a taken port or an address this
    machine does not have is a clear error here, not rpc-server's "Failed to create server socket"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as rpc-server does
        try:
            s.bind((host, port))
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise InvalidRequest(f"cannot listen on {host}:{port}: {reason}") from None


# ---- talking to a worker -------------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the connection was closed")
        data += chunk
    return data


def hello(endpoint: str, timeout: float = 3.0) -> HelloReply:
    """Connect to an RPC worker and exchange HELLO, as llama-server does first; RpcWorkerError naming the
    worker when that fails. ``timeout`` bounds the connect and the reply each."""
    try:
        host, port = parse_endpoint(endpoint)
    except ValueError as exc:
        raise RpcWorkerError(str(exc)) from None
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        raise RpcWorkerError(
            f"RPC worker {endpoint} is not reachable: no answer to connect within {timeout:g}s"
            " (host down, or a firewall drops the packets)",
            worker=endpoint,
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        refused = exc.errno == errno.ECONNREFUSED
        hint = " (no rpc-server listening: start `enginehouse rpc-worker` there)" if refused else ""
        raise RpcWorkerError(
            f"RPC worker {endpoint} is not reachable: {reason}{hint}", worker=endpoint
        ) from None
    with sock:
        try:
            sock.sendall(struct.pack("<BQ", RPC_CMD_HELLO, RPC_CONN_CAPS_SIZE) + bytes(RPC_CONN_CAPS_SIZE))
            (size,) = struct.unpack("<Q", _recv_exact(sock, 8))
            if size != _HELLO_REPLY:
                raise RpcWorkerError(
                    f"RPC worker {endpoint} answered HELLO with {size} bytes, not {_HELLO_REPLY}:"
                    " not an rpc-server of a compatible llama.cpp",
                    worker=endpoint,
                )
            major, minor, patch = _recv_exact(sock, _HELLO_REPLY)[:3]
        except TimeoutError:
            raise RpcWorkerError(
                f"RPC worker {endpoint} accepted the connection but did not answer within {timeout:g}s:"
                " it serves one llama-server at a time and is probably busy with another one",
                worker=endpoint,
            ) from None
        except OSError as exc:
            raise RpcWorkerError(
                f"RPC worker {endpoint} closed the connection during HELLO ({exc}): not an rpc-server,"
                " or one that refuses this client's protocol version",
                worker=endpoint,
            ) from None
    reply = HelloReply(major, minor, patch)
    if major != RPC_PROTO_MAJOR:
        raise RpcWorkerError(
            f"RPC worker {endpoint} speaks RPC protocol {reply.version}; this llama-server needs"
            f" {RPC_PROTO_MAJOR}.x: run the rpc-server from the same llama.cpp build on both sides",
            worker=endpoint,
        )
    return reply


def _all_or_error(
    endpoints: Sequence[str], results: Sequence[HelloReply | BaseException]
) -> dict[str, HelloReply]:
    problems = {e: r for e, r in zip(endpoints, results, strict=True) if isinstance(r, BaseException)}
    for problem in problems.values():
        if not isinstance(problem, RpcWorkerError):
            raise problem
    if problems:
        message = "; ".join(p.message for p in problems.values() if isinstance(p, RpcWorkerError))
        raise RpcWorkerError(message, workers=list(problems))
    return {e: r for e, r in zip(endpoints, results, strict=True) if isinstance(r, HelloReply)}


def check_workers(endpoints: Iterable[str], timeout: float = 3.0) -> dict[str, HelloReply]:
    """HELLO every worker; one RpcWorkerError naming all the unusable ones. Must not run while a
    llama-server of ours is connected to them (a worker serves one client: the probe would time out)."""
    listed = list(endpoints)
    results: list[HelloReply | BaseException] = []
    for endpoint in listed:
        try:
            results.append(hello(endpoint, timeout))
        except RpcWorkerError as exc:
            results.append(exc)
    return _all_or_error(listed, results)


async def check_workers_async(endpoints: Sequence[str], timeout: float = 3.0) -> dict[str, HelloReply]:
    """:func:`check_workers` for the event loop: every worker at once, each in a thread."""
    results = await asyncio.gather(
        *(asyncio.to_thread(hello, endpoint, timeout) for endpoint in endpoints), return_exceptions=True
    )
    return _all_or_error(endpoints, results)


async def name_failed_workers(endpoints: Sequence[str], error: RunnerStartFailed) -> RunnerStartFailed:
    """After a llama-server with RPC workers failed to start: ``error`` with the unusable workers named
    first. llama.cpp does not always name the one that failed ("Remote RPC server crashed or returned
    malformed response"); asking each for its HELLO now does. ``error`` itself when all answer."""
    try:
        await check_workers_async(endpoints)
    except RpcWorkerError as bad:
        return RpcWorkerError(f"{bad.message}; {error.message}", workers=bad.details["workers"])
    return error


# ---- running a worker ----------------------------------------------------------------------------------


def worker_argv(
    binary: Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    threads: int | None = None,
    cache: bool = False,
    devices: Sequence[str] = (),
) -> list[str]:
    """rpc-server's command line (flags as in the vendored tools/rpc/rpc-server.cpp)."""
    argv = [str(binary), "--host", host, "--port", str(port)]
    if threads:
        argv += ["--threads", str(threads)]
    if devices:
        argv += ["--device", ",".join(devices)]
    if cache:
        argv += ["--cache"]  # keep large tensors in a local file cache (LLAMA_CACHE), loads faster next time
    return argv


def free_port(host: str) -> int:
    """A TCP port free on ``host`` now (for tests and the benchmark)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class RpcWorker:
    """One rpc-server subprocess in its own process group, killed with the parent (PDEATHSIG on Linux).

    For tests, the benchmark and ``enginehouse rpc-worker``: ``start()`` returns once it answers HELLO."""

    def __init__(
        self,
        binary: Path,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        threads: int | None = None,
        cache: bool = False,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.binary, self.host, self.port = binary, host, port
        self.argv = worker_argv(binary, host, port, threads=threads, cache=cache)
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.reply: HelloReply | None = None  # its HELLO, once started

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> RpcWorker:
        preexec = child_preexec(os.getpid())
        out: int | object = None  # no log file: its output goes where ours goes
        logf = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
            out = logf
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,  # type: ignore[arg-type]
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env} if self.env else None,
                start_new_session=True,
                preexec_fn=preexec,
            )
        finally:
            if logf is not None:
                logf.close()
        self.reply = self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> HelloReply:
        deadline = time.monotonic() + timeout
        last: RpcWorkerError | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RpcWorkerError(
                    f"rpc-server for {self.endpoint} exited with code {self.proc.returncode} at start;"
                    f" {self._tail()}",
                    worker=self.endpoint,
                )
            try:
                return hello(self.endpoint, timeout=min(2.0, max(deadline - time.monotonic(), 0.1)))
            except RpcWorkerError as exc:
                last = exc
            time.sleep(0.05)
        self.kill()
        why = f" ({last.message})" if last else ""
        raise RpcWorkerError(
            f"rpc-server for {self.endpoint} did not answer within {timeout:g}s{why}; {self._tail()}",
            worker=self.endpoint,
        )

    def _tail(self) -> str:
        if self.log_path is None:
            return "see its output above"
        return f"last lines of {self.log_path}:\n" + (_read_tail(self.log_path, 15) or "(no output)")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def _signal(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: the worker vanishes without a goodbye (its socket is reset by the kernel)."""
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self, grace: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> RpcWorker:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "HelloReply",
    "RpcWorker",
    "RpcWorkerError",
    "bind_warning",
    "check_bind",
    "check_bind_host",
    "check_workers",
    "check_workers_async",
    "free_port",
    "hello",
    "name_failed_workers",
    "parse_endpoint",
    "worker_argv",
]
