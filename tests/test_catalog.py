"""Name resolution: aliases, models declared in enginehouse.toml, the store, and models discovered at
upstreams (with a fake discovery function and clock: the TTL is what is under test here)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from enginehouse.catalog import Catalog, ExternalRecord, is_gguf
from enginehouse.config import Config
from enginehouse.config_file import Upstream, parse_config_text
from enginehouse.engines.factory import EngineFactory
from enginehouse.engines.ollama_remote import OllamaRemoteEngine
from enginehouse.engines.openai_remote import OpenAIRemoteEngine
from enginehouse.errors import ModelNotFound, StoreError
from enginehouse.store import BUNDLED_NAME, Store, ensure_bundled

TOML = f"""
[aliases]
chat = "{BUNDLED_NAME}"
big = "remote-llama"

[upstreams.home]
engine = "ollama"
url = "http://10.0.0.2:11434"

[upstreams.lab]
engine = "openai"
url = "http://10.0.0.3:8000/"
api_key = "sk-lab"
models = ["Qwen/Qwen2.5-7B-Instruct"]

[models."remote-llama"]
engine = "ollama"
upstream = "home"
remote_model = "llama3.1:70b"
num_parallel = 8

[models."{BUNDLED_NAME}"]
num_parallel = 3
"""


class FakeDiscovery:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.models: dict[str, list[dict[str, Any]]] = {"home": [{"name": "mistral:latest", "size": 7}]}
        self.fail = False

    async def __call__(self, name: str, upstream: Upstream) -> list[dict[str, Any]]:
        self.calls.append(name)
        if self.fail:
            raise OSError("unreachable")
        return self.models.get(name, [])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "models")
    assert ensure_bundled(store) is not None
    return store


def make(store: Store, toml: str = TOML) -> tuple[Catalog, FakeDiscovery, list[float]]:
    now = [100.0]
    discovery = FakeDiscovery()
    catalog = Catalog(store, parse_config_text(toml), ttl=60, discover=discovery, clock=lambda: now[0])
    return catalog, discovery, now


def test_store_names_and_aliases_resolve_to_store_records(store: Store) -> None:
    catalog, discovery, _ = make(store)
    record = catalog.resolve(BUNDLED_NAME)
    assert record is store.resolve(BUNDLED_NAME)  # the store's own (cached) record: same speed
    assert catalog.resolve("chat") is record
    assert is_gguf(record) and not isinstance(record, ExternalRecord)
    assert catalog.entry("chat").num_parallel == 3
    assert discovery.calls == []  # resolving never touches the network


def test_declared_remote_models(store: Store) -> None:
    catalog, _, _ = make(store)
    r = catalog.resolve("remote-llama")
    assert isinstance(r, ExternalRecord) and r.remote and not is_gguf(r)
    assert (r.engine, r.upstream_name, r.remote_model, r.name.display) == (
        "ollama",
        "home",
        "llama3.1:70b",
        "remote-llama",
    )
    assert catalog.resolve("big") is r  # an alias to a remote model
    listed = catalog.resolve("Qwen/Qwen2.5-7B-Instruct")  # case kept: OpenAI ids are compared verbatim
    assert isinstance(listed, ExternalRecord) and listed.engine == "openai" and listed.upstream_name == "lab"
    assert listed.upstream is not None and listed.upstream.url == "http://10.0.0.3:8000"
    # stable digests: the scheduler's "same model?" check
    assert make(store)[0].resolve("remote-llama").manifest_digest == r.manifest_digest


def test_unknown_name_is_not_found(store: Store) -> None:
    catalog, _, _ = make(store)
    with pytest.raises(ModelNotFound):
        catalog.resolve("nope:1b")


def test_discovery_ttl_and_lookup(store: Store) -> None:
    catalog, discovery, now = make(store)

    async def scenario() -> None:
        # an unknown name with a stale cache waits for one refresh, then resolves
        r = await catalog.lookup("mistral")  # Ollama's default tag
        assert isinstance(r, ExternalRecord) and r.remote_model == "mistral:latest" and r.size == 7
        assert discovery.calls == ["home"]  # "lab" lists its models: never asked
        # within the TTL: neither a known nor an unknown name asks again
        await catalog.lookup("mistral:latest")
        with pytest.raises(ModelNotFound):
            await catalog.lookup("missing")
        await catalog.refresh()
        assert discovery.calls == ["home"]
        # past the TTL a known name refreshes in the background, once
        now[0] += 61
        discovery.models["home"].append({"name": "phi4:latest"})
        await catalog.ensure_known(BUNDLED_NAME)
        await catalog.ensure_known(BUNDLED_NAME)
        await asyncio.sleep(0.01)
        assert discovery.calls == ["home", "home"]
        assert catalog.resolve("phi4").name.display == "phi4:latest"
        # an upstream that fails keeps its previous models
        now[0] += 61
        discovery.fail = True
        await catalog.refresh()
        assert catalog.resolve("phi4").remote_model == "phi4:latest"
        names = [r.name.display for r in catalog.external_models()]
        assert names == ["Qwen/Qwen2.5-7B-Instruct", "remote-llama", "mistral:latest", "phi4:latest"]

    asyncio.run(scenario())


def test_store_wins_over_a_discovered_name(store: Store) -> None:
    catalog, discovery, _ = make(store)
    discovery.models["home"] = [{"name": BUNDLED_NAME}]
    asyncio.run(catalog.refresh())
    assert not isinstance(catalog.resolve(BUNDLED_NAME), ExternalRecord)


def test_no_upstreams_means_no_discovery(store: Store) -> None:
    catalog, discovery, _ = make(store, "")
    asyncio.run(catalog.ensure_known("x"))
    asyncio.run(catalog.refresh())
    assert discovery.calls == []


def test_gguf_path_and_hf_directory_entries(store: Store, tmp_path: Path, bundled_gguf: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    toml = f"""
[models.local]
source = "{bundled_gguf}"
num_parallel = 2
[models.hf]
source = "{hf}"
engine = "vllm"
[models.repo]
source = "Qwen/Qwen2.5-0.5B-Instruct"
engine = "vllm"
"""
    catalog, _, _ = make(store, toml)
    local = catalog.resolve("local")
    assert isinstance(local, ExternalRecord) and local.engine == "llama-server" and is_gguf(local)
    assert local.model_path == bundled_gguf and local.size == bundled_gguf.stat().st_size
    assert catalog.resolve("hf").engine == "vllm"  # type: ignore[attr-defined]
    assert catalog.resolve("repo").remote_model == "Qwen/Qwen2.5-0.5B-Instruct"  # type: ignore[attr-defined]
    # a GGUF by path runs on llama-server with its entry's settings
    factory = EngineFactory(Config.from_env({}, home=tmp_path), catalog.file_config, store=store)
    assert factory.engine_for(local) == "llama-server"
    settings = factory.settings_for(local)
    assert settings.alias == "local" and settings.num_parallel == 2


def test_factory_dispatches_remote_engines(store: Store, tmp_path: Path) -> None:
    catalog, _, _ = make(store)
    factory = EngineFactory(Config.from_env({}, home=tmp_path), catalog.file_config, store=store)
    ollama = factory(catalog.resolve("remote-llama"))
    assert isinstance(ollama, OllamaRemoteEngine)
    assert (ollama.base_url, ollama.served_model, ollama.request_headers) == (
        "http://10.0.0.2:11434",
        "llama3.1:70b",
        {},
    )
    assert ollama.info().extra["num_parallel"] == 8
    openai = factory(catalog.resolve("Qwen/Qwen2.5-7B-Instruct"))
    assert isinstance(openai, OpenAIRemoteEngine)
    assert openai.request_headers == {"Authorization": "Bearer sk-lab"}
    assert factory.estimate_for(catalog.resolve("remote-llama")) is None


def test_the_example_config_is_valid_and_resolves(store: Store) -> None:
    example = Path(__file__).parent.parent / "config.example.toml"
    catalog, _, _ = make(store, example.read_text())
    engines = {
        name: getattr(catalog.resolve(name), "engine", "store")
        for name in ("smollm2:135m", "chat", "qwen2.5-7b-hf", "llama-70b", "big", "lab-qwen")
    }
    assert engines == {
        "smollm2:135m": "store",
        "chat": "store",
        "qwen2.5-7b-hf": "vllm",
        "llama-70b": "vllm",
        "big": "ollama",
        "lab-qwen": "openai",
    }
    assert catalog.resolve("Qwen/Qwen2.5-72B-Instruct").upstream_name == "lab"  # type: ignore[attr-defined]
    assert list(catalog.discoverable) == ["old-box"]


def test_a_path_source_that_appears_later(store: Store, tmp_path: Path, bundled_gguf: Path) -> None:
    late = tmp_path / "late.gguf"
    catalog, _, _ = make(store, f'[models.late]\nsource = "{late}"\n')
    with pytest.raises(StoreError, match="not a GGUF file"):
        catalog.resolve("late")
    late.symlink_to(bundled_gguf)
    record = catalog.resolve("late")
    assert isinstance(record, ExternalRecord) and record.engine == "llama-server"
