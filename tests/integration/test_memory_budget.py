"""The memory budget with real runners: a second model evicts the idle first one; a model that can
never fit is refused with the numbers before any runner starts."""

from __future__ import annotations

from pathlib import Path

import ollama
import pytest

from enginehouse.config import Config
from enginehouse.engines.base import RunnerSpec
from enginehouse.engines.factory import EngineFactory
from enginehouse.server.runtime import BackgroundServer
from enginehouse.store import Store, ensure_bundled
from tests.conftest import MODEL

pytestmark = pytest.mark.slow


def one_runner_mib(config: Config) -> int:
    store = Store(config.models)
    record = ensure_bundled(store)
    assert record is not None
    return EngineFactory(config).estimate_for(record, RunnerSpec()).total >> 20


def test_a_second_model_evicts_the_idle_first(server_config: Config, tmp_path: Path) -> None:
    config = server_config.with_(home=tmp_path, memory_reserve_mib=0)
    config = config.with_(max_memory_mib=int(one_runner_mib(config) * 1.5))
    with BackgroundServer(config) as srv:
        client = ollama.Client(host=srv.base_url)
        client.copy(MODEL, "second:latest")
        client.generate(model=MODEL, prompt="Hi", options={"num_predict": 2})
        client.generate(model="second:latest", prompt="Hi", options={"num_predict": 2})
        assert [m.model for m in client.ps().models] == ["second:latest"]


def test_a_model_too_big_for_the_budget_is_refused(server_config: Config, tmp_path: Path) -> None:
    config = server_config.with_(home=tmp_path, memory_reserve_mib=0)
    config = config.with_(max_memory_mib=one_runner_mib(config) // 2)
    with BackgroundServer(config) as srv:
        with pytest.raises(ollama.ResponseError) as err:
            ollama.Client(host=srv.base_url).generate(model=MODEL, prompt="Hi")
        assert err.value.status_code == 507
        assert "needs" in err.value.error and "budget" in err.value.error
        assert srv.gateway.scheduler.ps() == []


def test_measured_size_corrects_the_estimate_and_shows_in_ps(server_config: Config, tmp_path: Path) -> None:
    with BackgroundServer(server_config.with_(home=tmp_path)) as srv:
        client = ollama.Client(host=srv.base_url)
        client.generate(model=MODEL, prompt="Hi", options={"num_predict": 4})
        loaded = srv.gateway.scheduler.get(MODEL)
        assert loaded is not None and loaded.memory is not None
        assert loaded.measured > 50 * 2**20
        # The prompt-cache term is a bound the runner fills over time; the rest is the estimate proper.
        proper = loaded.memory.total - loaded.memory.prompt_cache
        assert abs(proper - loaded.measured) / loaded.measured < 0.1
        corrector = srv.gateway.scheduler.corrector
        assert loaded.record.model_digest in corrector.ratios
        assert corrector.correct(loaded.record.model_digest, loaded.memory) != loaded.memory.total or (
            corrector.ratios[loaded.record.model_digest] == 1.0
        )
        assert client.ps().models[0].size == loaded.measured  # memory held, as Ollama reports it
