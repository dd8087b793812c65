"""llama.cpp RPC with real processes: two ``rpc-server`` workers, each its own process on its own loopback
address (127.0.0.2 and 127.0.0.3 stand in for two hosts), and a llama-server that splits the bundled model
over them. It must answer as the same model alone does at temperature 0; a worker that is not listening,
or that vanishes while the model loads, must fail the start promptly with an error naming the worker."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from enginehouse.config import Config
from enginehouse.engines import llama_install
from enginehouse.engines.llama_server import LlamaServerEngine, LlamaServerSettings
from enginehouse.engines.rpc_worker import RpcWorker, free_port
from enginehouse.errors import RunnerStartFailed

HOSTS = ("127.0.0.2", "127.0.0.3")
PROMPT = "The three primary colours are"
# Bounds for the failure cases: llama-server gives up on its own well before the runner's load timeout.
FAIL_WITHIN = 45.0


def _loopback_alias_works(host: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def rpc_server_bin(user_config: Config, llama_server_bin: Path) -> Path:
    """rpc-server from the same build as llama-server (`enginehouse engines install llama-server` makes
    both); skips when there is none, or when the llama-server in use was built without GGML_RPC."""
    found = llama_install.find_rpc_server(user_config)
    if found is None:
        pytest.skip(
            "no rpc-server: the llama-server in use is not our GGML_RPC=ON build and none is beside it or on"
            " PATH (run `enginehouse engines install llama-server`)"
        )
    if not llama_install.supports_rpc(llama_server_bin):
        pytest.skip(f"{llama_server_bin} was built without GGML_RPC=ON: it cannot take --rpc")
    for host in HOSTS:
        if not _loopback_alias_works(host):
            pytest.skip(f"cannot bind {host} here (only Linux routes all of 127.0.0.0/8 to loopback)")
    return found.path


@pytest.fixture
def workers(rpc_server_bin: Path, tmp_path: Path) -> Iterator[list[RpcWorker]]:
    started: list[RpcWorker] = []
    try:
        for i, host in enumerate(HOSTS):
            worker = RpcWorker(
                rpc_server_bin, host, free_port(host), threads=2, log_path=tmp_path / f"worker{i}.log"
            )
            started.append(worker.start(timeout=30))
        yield started
    finally:
        for worker in started:
            worker.stop()


def settings(gguf: Path, rpc: tuple[str, ...] = ()) -> LlamaServerSettings:
    """One slot, no prompt cache; with RPC, log level 4 so that the log shows where each buffer went."""
    return LlamaServerSettings(
        gguf,
        "smollm2",
        ctx_per_slot=512,
        num_parallel=1,
        cache_ram_mib=0,
        threads=2,
        rpc=rpc,
        extra_args=("--log-verbosity", "4") if rpc else (),
    )


async def complete(engine: LlamaServerEngine) -> dict:
    body = {"prompt": PROMPT, "n_predict": 24, "temperature": 0, "seed": 42, "cache_prompt": False}
    async with httpx.AsyncClient(timeout=120, headers=engine.request_headers) as client:
        resp = await client.post(engine.base_url + "/completion", json=body)
        resp.raise_for_status()
        return resp.json()


async def answer(
    llama_server_bin: Path, gguf: Path, log_dir: Path, rpc: tuple[str, ...] = ()
) -> tuple[str, str]:
    engine = LlamaServerEngine(llama_server_bin, settings(gguf, rpc), log_dir=log_dir, ready_timeout=120)
    try:
        await engine.ensure_ready()
        result = await complete(engine)
    finally:
        await engine.stop()
    return result["content"], engine.process.log_path.read_text(errors="replace")


def test_split_over_two_workers_answers_like_the_model_alone(
    llama_server_bin: Path, bundled_gguf: Path, workers: list[RpcWorker], tmp_path: Path
) -> None:
    endpoints = tuple(w.endpoint for w in workers)
    alone, _ = asyncio.run(answer(llama_server_bin, bundled_gguf, tmp_path / "alone"))
    split, log = asyncio.run(answer(llama_server_bin, bundled_gguf, tmp_path / "split", endpoints))
    # The weights really went to both workers (llama-server logs a buffer per RPC device).
    for endpoint in endpoints:
        assert re.search(rf"RPC\d+\[{re.escape(endpoint)}\] model buffer size", log), log[-3000:]
    assert alone.strip(), "the model alone said nothing"
    # Same CPU kernels on every side and greedy sampling: the same tokens.
    assert split == alone
    for worker in workers:
        assert worker.pid is not None  # still serving after the llama-server left
        assert "Accepted client connection" in worker.log_path.read_text()  # type: ignore[union-attr]


def start_failure(
    llama_server_bin: Path, gguf: Path, log_dir: Path, rpc: tuple[str, ...]
) -> tuple[str, float]:
    async def scenario() -> str:
        engine = LlamaServerEngine(llama_server_bin, settings(gguf, rpc), log_dir=log_dir, ready_timeout=120)
        try:
            with pytest.raises(RunnerStartFailed) as info:
                await engine.ensure_ready()
        finally:
            await engine.stop()
        return info.value.message

    started = time.monotonic()
    message = asyncio.run(scenario())
    return message, time.monotonic() - started


def test_worker_not_listening_fails_the_start_naming_it(
    llama_server_bin: Path, bundled_gguf: Path, workers: list[RpcWorker], tmp_path: Path
) -> None:
    nobody = f"{HOSTS[1]}:{free_port(HOSTS[1])}"
    message, took = start_failure(llama_server_bin, bundled_gguf, tmp_path, (workers[0].endpoint, nobody))
    assert took < FAIL_WITHIN, f"took {took:.0f}s"
    assert f"RPC worker {nobody} is not reachable" in message, message
    assert workers[0].endpoint not in message.split(";")[0]  # the one that works is not blamed


def test_worker_vanishing_mid_load_fails_the_start_naming_it(
    llama_server_bin: Path, bundled_gguf: Path, workers: list[RpcWorker], tmp_path: Path
) -> None:
    doomed = workers[1]
    endpoints = tuple(w.endpoint for w in workers)

    async def scenario() -> tuple[str, float]:
        engine = LlamaServerEngine(
            llama_server_bin, settings(bundled_gguf, endpoints), log_dir=tmp_path, ready_timeout=120
        )
        start = asyncio.ensure_future(engine.ensure_ready())
        # Kill the second worker when llama-server starts sending it the weights.
        deadline = time.monotonic() + 30
        log = engine.process.log_path
        while not (log.is_file() and "load_tensors: loading model tensors" in log.read_text()):
            assert time.monotonic() < deadline and not start.done(), "llama-server never got to the load"
            await asyncio.sleep(0.002)
        doomed.kill()
        killed = time.monotonic()
        try:
            with pytest.raises(RunnerStartFailed) as info:
                await start
        finally:
            await engine.stop()
        return info.value.message, time.monotonic() - killed

    message, took = asyncio.run(scenario())
    assert took < FAIL_WITHIN, f"took {took:.0f}s"
    assert doomed.endpoint in message, message


def test_worker_busy_with_another_llama_server_is_named_not_waited_for(
    llama_server_bin: Path, bundled_gguf: Path, workers: list[RpcWorker], tmp_path: Path
) -> None:
    """A worker serves one llama-server at a time: a second one would wait for it until its load timeout."""
    endpoints = tuple(w.endpoint for w in workers)

    async def scenario() -> tuple[str, float]:
        first = LlamaServerEngine(
            llama_server_bin, settings(bundled_gguf, endpoints), log_dir=tmp_path / "first", ready_timeout=120
        )
        second = LlamaServerEngine(
            llama_server_bin,
            settings(bundled_gguf, endpoints),
            log_dir=tmp_path / "second",
            ready_timeout=120,
        )
        try:
            await first.ensure_ready()
            started = time.monotonic()
            with pytest.raises(RunnerStartFailed) as info:
                await second.ensure_ready()
            return info.value.message, time.monotonic() - started
        finally:
            await second.stop()
            await first.stop()

    message, took = asyncio.run(scenario())
    assert took < FAIL_WITHIN, f"took {took:.0f}s"
    assert all(endpoint in message for endpoint in endpoints) and "busy" in message, message
