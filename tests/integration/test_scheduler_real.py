"""The scheduler with real llama-server runners: entries from enginehouse.toml (pins, an exclusive
group, slots), expiry, a swap that waits for a streamed request, and context tiers without reloads."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import ollama
import pytest

from enginehouse.config import Config
from enginehouse.engines.base import RunnerSpec
from enginehouse.engines.factory import EngineFactory
from enginehouse.server.runtime import BackgroundServer
from enginehouse.store import Store, ensure_bundled
from tests.conftest import MODEL

pytestmark = pytest.mark.slow

TOML = """
[models."pinned:latest"]
pinned = true

[models."g1:latest"]
group = "g"
num_parallel = 3

[models."g2:latest"]
group = "g"

[groups.g]
exclusive = true
"""


def runner_mib(config: Config) -> int:
    record = ensure_bundled(Store(config.models))
    assert record is not None
    return EngineFactory(config).estimate_for(record, RunnerSpec()).total >> 20


def loaded(client: ollama.Client) -> list[str]:
    return sorted(m.model for m in client.ps().models)


def hi(client: ollama.Client, model: str, **options: object) -> ollama.GenerateResponse:
    return client.generate(model=model, prompt="Hi", options={"num_predict": 2, **options})


def test_pins_exclusive_groups_and_slots_from_the_config_file(server_config: Config, tmp_path: Path) -> None:
    (tmp_path / "enginehouse.toml").write_text(TOML)
    config = server_config.with_(home=tmp_path, memory_reserve_mib=0)
    config = config.with_(max_memory_mib=int(runner_mib(config) * 2.5))  # room for two runners
    with BackgroundServer(config) as srv:
        client = ollama.Client(host=srv.base_url)
        for name in ("pinned:latest", "g1:latest", "g2:latest", "other:latest"):
            client.copy(MODEL, name)
        hi(client, "pinned:latest")
        hi(client, "g1:latest")
        assert loaded(client) == ["g1:latest", "pinned:latest"]
        engine = srv.gateway.scheduler.get("g1:latest").engine
        slots = httpx.get(engine.base_url + "/slots", headers=engine.request_headers).json()
        assert len(slots) == 3  # num_parallel from the entry reached the runner

        hi(client, "g2:latest")  # same exclusive group: g1 goes although memory would allow it
        assert loaded(client) == ["g2:latest", "pinned:latest"]
        hi(client, "other:latest")  # memory for two: the pinned one stays although least recently used
        assert loaded(client) == ["other:latest", "pinned:latest"]
        hi(client, "pinned:latest", num_predict=1)
        assert client.ps().models[0].expires_at.year > 2100 or client.ps().models[1].expires_at.year > 2100


def test_a_swap_waits_for_the_streamed_request(server_config: Config, tmp_path: Path) -> None:
    config = server_config.with_(home=tmp_path, memory_reserve_mib=0)
    config = config.with_(max_memory_mib=int(runner_mib(config) * 1.5))  # one runner at a time
    with BackgroundServer(config) as srv:
        client = ollama.Client(host=srv.base_url)
        client.copy(MODEL, "b:latest")
        hi(client, MODEL)
        stream = client.generate(
            model=MODEL, prompt="Count to fifty.", stream=True, options={"num_predict": 48}
        )
        first = next(stream)  # A is now generating
        other: dict[str, object] = {}
        thread = threading.Thread(target=lambda: other.setdefault("b", hi(client, "b:latest")))
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive()  # B waits: A's runner is never stopped under its request
        parts = [first, *stream]
        thread.join(120)
        assert parts[-1].done and parts[-1].done_reason in ("length", "stop")
        assert parts[-1].eval_count > 1
        assert other["b"].done and loaded(client) == ["b:latest"]


def test_keep_alive_expiry_and_context_tiers(server_config: Config, tmp_path: Path) -> None:
    with BackgroundServer(server_config.with_(home=tmp_path)) as srv:  # 1024 tokens per slot
        client = ollama.Client(host=srv.base_url)
        sched = srv.gateway.scheduler

        def pid() -> int | None:
            model = sched.get(MODEL)
            return model.engine.info().pid if model else None

        hi(client, MODEL)
        first = pid()
        hi(client, MODEL, num_ctx=512)  # smaller than loaded: the same runner
        assert pid() == first
        hi(client, MODEL, num_ctx=2048)  # larger: one reload
        second = pid()
        assert second != first and sched.get(MODEL).ctx_per_slot == 2048
        hi(client, MODEL, num_ctx=1024)  # back down: no reload storm
        assert pid() == second

        client.generate(model=MODEL, prompt="Hi", keep_alive="1s", options={"num_predict": 1})
        deadline = time.monotonic() + 10
        while client.ps().models and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.ps().models == []  # expired and stopped by the reaper
