"""``enginehouse bench --engines``: one model on every engine this machine has, started here.

For a GGUF: llama-server alone (the baseline), and the same llama-server settings behind an
enginehouse gateway, through both of its doors. The gateway runs as a separate process (as users run
it), so its CPU is its own and not the load generator's. Both get a private home with the model
imported under a neutral name without Modelfile defaults, so every path generates with exactly the
sampling the bench sends. Engines that are not installed here are listed as such in the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from enginehouse import __version__
from enginehouse.config import Config
from enginehouse.engines.llama_install import require_llama_server
from enginehouse.engines.llama_server import LlamaServerSettings, build_argv
from enginehouse.errors import EnginehouseError
from enginehouse.loadgen.targets import Target, stream_chat
from enginehouse.store import BUNDLED_NAME, Store, ensure_bundled

SERVED = "eh-bench:latest"  # the name both paths serve the model under


@dataclass
class EngineSetup:
    targets: list[Target]
    engines: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def other_engines() -> list[dict[str, str]]:
    """Engines this command does not start: whether each is installed here."""
    out = []
    vllm = importlib.util.find_spec("vllm") is not None or shutil.which("vllm") is not None
    out.append(
        {
            "name": "vLLM",
            "status": "installed here; not started by --engines: run `vllm serve MODEL` and add "
            "--target vllm:openai=http://127.0.0.1:8000/v1"
            if vllm
            else "not installed here",
        }
    )
    ollama = shutil.which("ollama")
    out.append(
        {
            "name": "Ollama",
            "status": f"installed here ({ollama}); not started by --engines: add --target ollama=URL"
            if ollama
            else "not installed here",
        }
    )
    return out


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise EnginehouseError(f"{url} exited with code {proc.returncode}:\n{_tail(log)}")
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise EnginehouseError(f"{url} did not become ready in {timeout:g}s:\n{_tail(log)}")


async def _probe(targets: list[Target], timeout: float) -> None:
    """One short answer from each path, so the gateway's runner is loaded before any timing."""
    async with aiohttp.ClientSession() as session:
        for t in targets:
            body: dict[str, Any] = {"model": t.model, "messages": [{"role": "user", "content": "Hi"}]}
            body |= {"stream": True}
            body |= {"max_tokens": 2} if t.dialect == "openai" else {"options": {"num_predict": 2}}
            result = await stream_chat(session, t, body, timeout)
            if not result.ok:
                raise EnginehouseError(f"{t.label} did not answer a probe request: {result.error}")


@contextlib.contextmanager
def local_engines(
    model: str, config: Config, *, parallel: int, ctx_per_slot: int, ready_timeout: float = 300.0
) -> Iterator[EngineSetup]:
    """Start llama-server and an enginehouse gateway for ``model``; stop both on exit."""
    store = Store(config.models)
    if model == BUNDLED_NAME:
        ensure_bundled(store)
    record = store.resolve(model)  # ModelNotFound says what is missing
    binary = require_llama_server(config)
    home = Path(tempfile.mkdtemp(prefix="eh-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        Store(home / "models").import_gguf(record.model_path, SERVED, link=True)
        direct_port, gateway_port = free_port(), free_port()
        settings = LlamaServerSettings(
            record.model_path, SERVED, ctx_per_slot=ctx_per_slot, num_parallel=parallel,
            threads=config.threads, cache_ram_mib=config.cache_ram_mib,
        )  # fmt: skip
        direct_log, gateway_log = home / "llama-server.log", home / "gateway.log"
        with direct_log.open("wb") as out:
            procs.append(
                subprocess.Popen(build_argv(binary.path, settings, direct_port), stdout=out, stderr=out)
            )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINEHOUSE_", "OLLAMA_"))}
        env |= {
            "ENGINEHOUSE_HOME": str(home),
            "ENGINEHOUSE_HOST": f"127.0.0.1:{gateway_port}",
            "ENGINEHOUSE_LLAMA_SERVER": str(binary.path),
            "ENGINEHOUSE_NUM_PARALLEL": str(parallel),
            "ENGINEHOUSE_CONTEXT_LENGTH": str(ctx_per_slot),
            "ENGINEHOUSE_CACHE_RAM_MIB": str(config.cache_ram_mib),
            "ENGINEHOUSE_THREADS": str(config.threads),
            "ENGINEHOUSE_KEEP_ALIVE": "1h",
            "ENGINEHOUSE_LOG_LEVEL": "warning",
        }
        with gateway_log.open("wb") as out:
            argv = [sys.executable, "-m", "enginehouse", "serve", "--preload", SERVED]
            procs.append(subprocess.Popen(argv, env=env, stdout=out, stderr=out))
        direct_url, gateway_url = f"http://127.0.0.1:{direct_port}", f"http://127.0.0.1:{gateway_port}"
        targets = [
            Target("llama-server", "openai", direct_url + "/v1", SERVED),
            Target("enginehouse-openai", "openai", gateway_url + "/v1", SERVED),
            Target("enginehouse-ollama", "ollama", gateway_url, SERVED),
        ]

        async def ready() -> None:
            await _wait_ready(direct_url + "/health", procs[0], direct_log, ready_timeout)
            await _wait_ready(gateway_url + "/api/version", procs[1], gateway_log, ready_timeout)
            await _probe(targets, ready_timeout)

        asyncio.run(ready())
        engines = [
            {"name": "llama-server", "status": f"{binary.path} ({binary.version}), started here on its own"},
            {
                "name": "enginehouse",
                "status": f"{__version__}, started here in front of the same llama-server",
            },
            *other_engines(),
        ]
        notes = [
            f"model {model} ({record.model_digest[:19]}…); llama-server with {parallel} slots of "
            f"{ctx_per_slot} tokens on both paths; the model's Modelfile defaults are not applied, "
            "every path gets the bench's sampling",
        ]
        yield EngineSetup(targets, engines, notes)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(home, ignore_errors=True)
