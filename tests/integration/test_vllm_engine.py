"""The vLLM engine's lifecycle with real processes, without vLLM (it cannot run here).

- A stand-in ``vllm`` executable translates the vllm command line into a llama-server one on the bundled
  GGUF and execs it, so start, health, the API key, requests, crash-restart and stop run for real, and
  the gateway serves a ``engine = "vllm"`` model through both doors.
- Sleep mode, which llama-server does not have, runs against ``tests/fakes/fake_vllm.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from enginehouse.catalog import Catalog
from enginehouse.config_file import parse_config_text
from enginehouse.engines.vllm import VllmEngine, VllmSettings
from enginehouse.process import RestartPolicy, State
from enginehouse.sched.scheduler import Scheduler
from enginehouse.server.runtime import BackgroundServer
from enginehouse.store import Store
from tests.conftest import make_config, pid_alive

pytestmark = pytest.mark.slow

FAKE_VLLM = Path(__file__).parent.parent / "fakes" / "fake_vllm.py"

STAND_IN = """#!{python}
# A stand-in for `vllm serve`: records its command line and environment, then execs llama-server.
import json, os, sys
args = sys.argv[1:]
assert args[0] == "serve", args
flags = {{"--enable-sleep-mode", "--enable-prefix-caching", "--no-enable-prefix-caching"}}
opts, i = {{}}, 2
while i < len(args):
    if args[i] in flags:
        opts[args[i]] = True
        i += 1
    else:
        opts[args[i]] = args[i + 1]
        i += 2
with open({record!r}, "a") as f:
    env = {{k: v for k, v in os.environ.items() if k.startswith("VLLM_")}}
    f.write(json.dumps({{"argv": args, "env": env}}) + "\\n")
argv = [{llama!r}, "--model", {gguf!r}, "--host", opts["--host"], "--port", opts["--port"],
        "--alias", opts["--served-model-name"], "--ctx-size", opts.get("--max-model-len", "1024"),
        "--parallel", "1", "--cache-ram", "0", "--no-webui"]
key = os.environ.get("VLLM_API_KEY") or opts.get("--api-key")
if key:
    argv += ["--api-key", key]
os.execv(argv[0], argv)
"""


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    path = tmp_path / "Qwen2.5-0.5B-Instruct"
    path.mkdir()
    (path / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"]}')
    return path


@pytest.fixture
def stand_in(tmp_path: Path, llama_server_bin: Path, bundled_gguf: Path) -> tuple[Path, Path]:
    """(the stand-in `vllm` executable, the file it records its invocations in)."""
    record = tmp_path / "vllm-calls.jsonl"
    script = tmp_path / "bin" / "vllm"
    script.parent.mkdir()
    script.write_text(
        STAND_IN.format(
            python=sys.executable, record=str(record), llama=str(llama_server_bin), gguf=str(bundled_gguf)
        )
    )
    script.chmod(0o755)
    return script, record


def calls(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()]


def test_start_health_key_restart_stop(stand_in: tuple[Path, Path], hf_dir: Path, tmp_path: Path) -> None:
    script, record = stand_in
    settings = VllmSettings(str(hf_dir), "qwen-small", max_model_len=512, sleep_mode=False, api_key="k-123")
    engine = VllmEngine(
        (str(script), "serve"),
        settings,
        log_dir=tmp_path / "logs",
        ready_timeout=60,
        restart=RestartPolicy(backoff_initial_s=0.1),
    )

    async def scenario() -> None:
        await engine.ensure_ready()
        assert engine.process.state is State.READY and engine.info().engine == "vllm"
        first = calls(record)[0]
        assert first["argv"][:2] == ["serve", str(hf_dir)]
        assert "--served-model-name" in first["argv"] and "k-123" not in first["argv"]
        assert first["env"]["VLLM_API_KEY"] == "k-123"
        body = {"model": "qwen-small", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        async with httpx.AsyncClient(timeout=60) as http:
            url = engine.base_url + "/v1/chat/completions"
            assert (await http.post(url, json=body)).status_code == 401  # the runner answers only the gateway
            ok = await http.post(url, json=body, headers=engine.request_headers)
            assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] is not None
        pid = engine.process.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # a crash: restarted with the same command line
        deadline = time.monotonic() + 60
        while engine.process.restarts == 0 or engine.process.state is not State.READY:
            assert time.monotonic() < deadline, "not restarted"
            await asyncio.sleep(0.1)
        assert engine.process.pid != pid and len(calls(record)) == 2
        new_pid = engine.process.pid
        await engine.stop()
        assert engine.process.state is State.STOPPED
        assert new_pid is not None and not pid_alive(new_pid)

    asyncio.run(scenario())


def test_gateway_serves_a_vllm_model_through_both_doors(
    stand_in: tuple[Path, Path], hf_dir: Path, tmp_path: Path, llama_server_bin: Path
) -> None:
    script, record = stand_in
    home = tmp_path / "home"
    home.mkdir()
    (home / "enginehouse.toml").write_text(
        f"""
[aliases]
qwen = "qwen-hf"

[models."qwen-hf"]
engine = "vllm"
source = "{hf_dir}"
num_ctx = 512
[models."qwen-hf".vllm]
sleep_mode = false
gpu_memory_utilization = 0.5
"""
    )
    config = make_config(home, llama_server_bin, vllm=script)
    with BackgroundServer(config) as srv:
        oc = ollama.Client(host=srv.base_url)
        assert "qwen-hf" in [m.model for m in oc.list().models]
        answer = oc.chat(
            model="qwen", messages=[{"role": "user", "content": "Say hi"}], options={"num_predict": 4}
        )
        assert answer.done and answer.model == "qwen"  # an alias answers with the name asked for
        oai = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused")
        assert "qwen-hf" in [m.id for m in oai.models.list().data]
        chunks = list(
            oai.chat.completions.create(
                model="qwen-hf", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True
            )
        )
        assert chunks
        ps = httpx.get(srv.base_url + "/api/ps").json()["models"]
        assert [(m["name"], m["engine"], m["state"]) for m in ps] == [("qwen-hf", "vllm", "ready")]
        argv = calls(record)[0]["argv"]
        assert argv[argv.index("--max-model-len") + 1] == "512"
        assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.5"
        pid = ps[0]["pid"]
        oc.generate(model="qwen-hf", prompt="", keep_alive=0)  # unload: the runner stops
        assert httpx.get(srv.base_url + "/api/ps").json()["models"] == []
        assert not pid_alive(pid)


def test_sleep_on_first_expiry_wake_on_request_stop_on_second(tmp_path: Path) -> None:
    script = tmp_path / "vllm"
    script.write_text(
        f"#!{sys.executable}\nimport runpy, sys\nrunpy.run_path({str(FAKE_VLLM)!r}, run_name='__main__')\n"
    )
    script.chmod(0o755)
    store = Store(tmp_path / "models")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    catalog = Catalog(store, parse_config_text(f'[models.sleepy]\nengine = "vllm"\nsource = "{hf}"\n'))
    engines: list[VllmEngine] = []

    def factory(rec: object, spec: object) -> VllmEngine:
        engines.append(VllmEngine((str(script), "serve"), VllmSettings(str(hf), "sleepy"), log_dir=tmp_path))
        return engines[-1]

    async def fake_calls(engine: VllmEngine) -> list[list[str]]:
        async with httpx.AsyncClient() as http:
            data = (await http.get(engine.base_url + "/calls")).json()
            assert data["env"]["VLLM_SERVER_DEV_MODE"] == "1"
            return [c for c in data["calls"] if c[1] not in ("/health", "/calls")]

    async def wait_for(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 10
        while not predicate():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.02)

    async def scenario() -> None:
        sched = Scheduler(store, factory, resolve=catalog.resolve, reap_interval=0.05, default_keep_alive=0.3)
        await sched.start()
        try:
            async with sched.acquire("sleepy"):
                pass
            engine = engines[0]
            await wait_for(lambda: engine.sleeping, "not asleep after the first expiry")
            assert sched.get("sleepy") is not None and engine.info().state == "sleeping"
            assert await fake_calls(engine) == [["POST", "/sleep?level=1"], ["GET", "/is_sleeping"]]
            pid = engine.process.pid
            async with sched.acquire("sleepy"):  # a request wakes it: same process
                assert not engine.sleeping and engine.process.pid == pid
            assert (await fake_calls(engine))[-2:] == [["POST", "/wake_up"], ["GET", "/is_sleeping"]]
            await wait_for(lambda: engine.sleeping, "not asleep again")
            await wait_for(lambda: sched.get("sleepy") is None, "not unloaded at the second expiry")
            await wait_for(lambda: engine.process.state is State.STOPPED, "not stopped")
            assert pid is not None and not pid_alive(pid)
            assert len(engines) == 1
        finally:
            await sched.close()

    asyncio.run(scenario())


def test_sleep_endpoints_missing_means_stop(tmp_path: Path) -> None:
    """Without dev mode vLLM has no /sleep: the engine says so and the scheduler stops it instead."""
    script = tmp_path / "vllm"
    script.write_text(
        f"#!{sys.executable}\nimport runpy\nrunpy.run_path({str(FAKE_VLLM)!r}, run_name='__main__')\n"
    )
    script.chmod(0o755)
    engine = VllmEngine((str(script), "serve"), VllmSettings("/m", "m", sleep_mode=True), log_dir=tmp_path)
    engine.process.env = {}  # as if VLLM_SERVER_DEV_MODE were not set

    async def scenario() -> None:
        await engine.ensure_ready(30)
        assert await engine.idle() is False and not engine.sleeping
        await engine.stop()

    asyncio.run(scenario())
