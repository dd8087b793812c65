"""A real llama-server runner on the bundled model: build-or-find, start, ready, stop, restart after a
crash, and no orphan after the gateway is killed with SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import ollama
import pytest

from enginehouse.config import Config
from enginehouse.engines import llama_install
from enginehouse.engines.llama_server import LlamaServerEngine, LlamaServerSettings
from enginehouse.process import State, autogroup_nice
from enginehouse.server.runtime import BackgroundServer
from tests.conftest import MODEL, free_port, pid_alive, serve_subprocess, thread_nices, wait_http

pytestmark = pytest.mark.slow


def test_build_or_find_gives_a_working_binary(llama_server_bin: Path, user_config: Config) -> None:
    found = llama_install.find_llama_server(user_config.with_(llama_server=None))
    assert found is not None and os.access(found.path, os.X_OK)
    assert llama_install.LLAMA_CPP_COMMIT in llama_install.binary_version(llama_server_bin)
    if found.source == "built":
        assert found.build and found.build["sdist_sha256"] == llama_install.SDIST_SHA256


def test_named_binary_that_is_missing_is_a_clear_error(tmp_path: Path) -> None:
    from enginehouse.errors import EngineNotInstalled

    with pytest.raises(EngineNotInstalled, match="not an executable"):
        llama_install.find_llama_server(Config.from_env({}, home=tmp_path, llama_server=tmp_path / "missing"))


def test_runner_start_ready_crash_restart_stop(
    llama_server_bin: Path, bundled_gguf: Path, tmp_path: Path
) -> None:
    settings = LlamaServerSettings(
        bundled_gguf, "smollm2", ctx_per_slot=512, num_parallel=2, cache_ram_mib=32
    )

    async def scenario() -> None:
        engine = LlamaServerEngine(llama_server_bin, settings, log_dir=tmp_path, ready_timeout=60)
        await engine.ensure_ready()
        assert engine.process.state is State.READY
        # A loaded 2-core machine answers slowly; the runner answers only with its key.
        async with httpx.AsyncClient(timeout=60, headers=engine.request_headers) as client:
            slots = (await client.get(engine.base_url + "/slots")).json()
            assert [s["n_ctx"] for s in slots] == [512, 512]  # -c is split across the slots
            first_pid = engine.process.pid
            assert first_pid is not None
            os.kill(first_pid, signal.SIGKILL)  # a crash
            deadline = time.monotonic() + 60
            while engine.process.restarts == 0 or engine.process.state is not State.READY:
                assert time.monotonic() < deadline, "runner was not restarted"
                await asyncio.sleep(0.1)
            assert engine.process.pid != first_pid
            r = await client.post(
                engine.base_url + "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
            )
            assert r.status_code == 200
        pid = engine.process.pid
        await engine.stop()
        assert engine.process.state is State.STOPPED
        assert pid is not None and not pid_alive(pid)
        assert "llama-server" in engine.process.log_tail(200) or engine.process.log_path.stat().st_size

    asyncio.run(scenario())


def test_no_orphan_runner_after_gateway_sigkill(server_config: Config, tmp_path: Path) -> None:
    port = free_port()
    config = server_config.with_(home=tmp_path / "home")
    gateway = serve_subprocess(config, port, "--preload", MODEL)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/version")
        deadline = time.monotonic() + 90
        runner_pid = None
        while runner_pid is None:
            assert time.monotonic() < deadline, "model was never preloaded"
            models = httpx.get(f"http://127.0.0.1:{port}/api/ps").json()["models"]
            if models and models[0]["state"] == "ready":
                runner_pid = models[0]["pid"]
            time.sleep(0.2)
        assert pid_alive(runner_pid)
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(10)
        deadline = time.monotonic() + 5
        while pid_alive(runner_pid):
            assert time.monotonic() < deadline, f"runner {runner_pid} outlived the gateway"
            time.sleep(0.05)
    finally:
        if gateway.poll() is None:
            gateway.kill()


def test_serve_stops_its_runners_on_sigterm(server_config: Config, tmp_path: Path) -> None:
    port = free_port()
    gateway = serve_subprocess(server_config.with_(home=tmp_path / "home"), port, "--preload", MODEL)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/version")
        deadline = time.monotonic() + 90
        while not (models := httpx.get(f"http://127.0.0.1:{port}/api/ps").json()["models"]):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        runner_pid = models[0]["pid"]
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(30) == 0
        assert not pid_alive(runner_pid)
        output = gateway.stdout.read().decode() if gateway.stdout else ""
        assert "stopping runners" in output
    finally:
        if gateway.poll() is None:
            gateway.kill()


def test_shared_pool_slots_all_start_at_once(
    llama_server_bin: Path, bundled_gguf: Path, tmp_path: Path
) -> None:
    """The default layout on the real build: 8 slots in a pool of 2 contexts, each request capped at one
    context, and 8 short concurrent requests all answered (bench/slots.py measures that they start at
    once)."""
    settings = LlamaServerSettings(
        bundled_gguf, "smollm2", ctx_per_slot=512, num_parallel=8, kv_pool=2, cache_ram_mib=32
    )

    async def scenario() -> None:
        engine = LlamaServerEngine(llama_server_bin, settings, log_dir=tmp_path, ready_timeout=120)
        await engine.ensure_ready()
        try:
            async with httpx.AsyncClient(timeout=120, headers=engine.request_headers) as client:
                slots = (await client.get(engine.base_url + "/slots")).json()
                assert [s["n_ctx"] for s in slots] == [512] * 8  # the cap, not the pool's 1024
                body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
                answers = await asyncio.gather(
                    *(client.post(engine.base_url + "/v1/chat/completions", json=body) for _ in range(8))
                )
                assert [r.status_code for r in answers] == [200] * 8
        finally:
            await engine.stop()

    asyncio.run(scenario())


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads niceness from /proc")
def test_runner_threads_run_below_the_gateway(server: BackgroundServer) -> None:
    """With the default ENGINEHOUSE_RUNNER_NICE every thread of the real runner, the compute threads it
    starts after loading included, runs 5 below the gateway, which keeps its own priority; so does the
    runner's session where the kernel schedules sessions as groups (autogroup)."""
    ollama.Client(host=server.base_url).generate(model=MODEL, prompt="Hi", options={"num_predict": 1})
    models = httpx.get(f"{server.base_url}/api/ps", timeout=10).json()["models"]
    pid = next(m["pid"] for m in models if m["name"] == MODEL)
    nices = thread_nices(pid)
    assert len(nices) > 2  # HTTP threads and the compute pool
    assert set(nices) == {min(19, os.nice(0) + 5)}
    ours = autogroup_nice()  # the runner's session, a scheduling group of its own, is lowered as well
    if ours is not None:
        assert autogroup_nice(pid) == min(19, ours + 5)
