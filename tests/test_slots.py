"""Slot layout of a llama-server runner: by default as many slots of their own as the slot memory holds
(4 to 32), an explicit ``num_parallel`` as set, or (opt-in) 32 slots sharing a KV pool; the argv, the
factory's choice, and what the memory estimate counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from enginehouse.config import Config
from enginehouse.config_file import parse_config_text
from enginehouse.engines.choose import InstalledEngine
from enginehouse.engines.factory import AUTO_SLOTS, MIN_AUTO_SLOTS, EngineFactory
from enginehouse.engines.llama_install import supports_shared_kv
from enginehouse.engines.llama_server import LlamaServerEngine, LlamaServerSettings, build_argv
from enginehouse.hardware import CPU, GPU, Hardware, Memory
from enginehouse.store import BUNDLED_NAME, Store, ensure_bundled

GiB = 1 << 30
CPU_ONLY = Hardware("Linux", "x86_64", CPU("cpu", 2, 2), Memory(8 * GiB, 6 * GiB))
MiB = 1 << 20
CPU_BUILD = {"llama-server": InstalledEngine("llama-server", "b1", "/x", "built", ())}
CUDA_BUILD = {"llama-server": InstalledEngine("llama-server", "b1", "/x", "built", ("CUDA0: NVIDIA H100",))}
#: The bundled model's KV cache per 4096-token context: 30 blocks x 3 KV heads x 64 x (K + V) x f16.
KV_PER_4096 = 4096 * 30 * 3 * 64 * 2 * 2


def after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


# ---- argv -----------------------------------------------------------------------------------------


def test_slots_of_their_own_split_the_context() -> None:
    s = LlamaServerSettings(Path("/m.gguf"), "m", ctx_per_slot=4096, num_parallel=8)
    argv = build_argv(Path("/bin/llama-server"), s, 1)
    assert (after(argv, "--ctx-size"), after(argv, "--parallel")) == ("32768", "8")
    assert "--kv-unified" not in argv and "--kv-unified-per-slot" not in argv
    assert (s.kv_contexts, s.ctx_total, s.shared_kv) == (8, 32768, False)


def test_a_shared_pool_holds_kv_pool_contexts_and_caps_each_request() -> None:
    s = LlamaServerSettings(Path("/m.gguf"), "m", ctx_per_slot=4096, num_parallel=32, kv_pool=4)
    argv = build_argv(Path("/bin/llama-server"), s, 1)
    assert (after(argv, "--ctx-size"), after(argv, "--parallel")) == ("16384", "32")
    assert "--kv-unified" in argv and after(argv, "--kv-unified-per-slot") == "4096"
    assert (s.kv_contexts, s.ctx_total, s.shared_kv) == (4, 16384, True)


def test_a_pool_is_never_larger_than_one_context_per_slot() -> None:
    s = LlamaServerSettings(Path("/m.gguf"), "m", ctx_per_slot=1024, num_parallel=2, kv_pool=4)
    assert after(build_argv(Path("/x"), s, 1), "--ctx-size") == "2048"


# ---- the factory's choice ------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "models")
    assert ensure_bundled(store) is not None
    return store


def factory(
    tmp_path: Path,
    toml: str = "",
    hardware: Hardware = CPU_ONLY,
    installed: dict | None = None,
    **config: object,
) -> EngineFactory:
    cfg = Config.from_env({}, home=tmp_path, **config)  # type: ignore[arg-type]
    return EngineFactory(cfg, parse_config_text(toml), hardware=hardware, installed=installed or CPU_BUILD)


def test_default_is_as_many_slots_of_their_own_as_a_quarter_of_ram_holds(
    tmp_path: Path, store: Store
) -> None:
    assert Config.from_env({}).num_parallel == 0 and Config.from_env({}).kv_pool == 0
    record = store.resolve(BUNDLED_NAME)
    f = factory(tmp_path)  # 8 GiB of RAM, 512 MiB reserved: 1,920 MiB for slots, 90 MiB a context
    assert f.slot_memory(record) == (8 * GiB - 512 * MiB) // 4
    s = f.settings_for(record)
    assert (s.num_parallel, s.kv_pool, s.ctx_per_slot) == (
        min(AUTO_SLOTS, f.slot_memory(record) // KV_PER_4096),
        0,
        4096,
    )
    assert s.num_parallel == 21 and s.ctx_total == 21 * 4096
    assert "--kv-unified" not in build_argv(Path("/x"), s, 1)


@pytest.mark.parametrize(
    ("config", "slots"),
    [
        ({"slot_memory_mib": 10_000}, AUTO_SLOTS),  # capped at 32
        ({"slot_memory_mib": 100}, MIN_AUTO_SLOTS),  # never below the old default
        ({"slot_memory_mib": 900}, 10),
        ({"slot_memory_mib": 900, "ctx_size": 2048}, 20),  # smaller contexts: more slots
        ({"max_memory_mib": 2048}, 2048 // 4 * MiB // KV_PER_4096),  # a quarter of the cap
    ],
)
def test_the_slot_memory_decides_the_default_count(
    tmp_path: Path, store: Store, config: dict, slots: int
) -> None:
    s = factory(tmp_path, **config).settings_for(store.resolve(BUNDLED_NAME))
    assert (s.num_parallel, s.kv_pool) == (slots, 0)


def test_an_offloaded_model_sizes_its_slots_from_free_vram(tmp_path: Path, store: Store) -> None:
    gpu = Hardware(
        "Linux",
        "x86_64",
        CPU("cpu", 16, 32),
        Memory(128 * GiB, 100 * GiB),
        (GPU(0, "H100", 80 * GiB, 4 * GiB),),
    )
    f = factory(tmp_path, hardware=gpu, installed=CUDA_BUILD)
    record = store.resolve(BUNDLED_NAME)
    assert f.slot_memory(record) == GiB  # a quarter of the free VRAM, not of 128 GiB of RAM
    assert f.settings_for(record).num_parallel == GiB // KV_PER_4096 == 11
    cpu_build = factory(tmp_path, hardware=gpu, installed=CPU_BUILD)  # it cannot use the GPU
    assert cpu_build.slot_memory(record) == (128 * GiB - 512 * MiB) // 4


def test_an_opt_in_pool_gives_many_slots_sharing_its_memory(tmp_path: Path, store: Store) -> None:
    s = factory(tmp_path, kv_pool=4).settings_for(store.resolve(BUNDLED_NAME))
    assert (s.num_parallel, s.kv_pool, s.ctx_total) == (AUTO_SLOTS, 4, 4 * 4096)
    assert Config.from_env({"ENGINEHOUSE_KV_POOL": "6"}).kv_pool == 6
    assert Config.from_env({"ENGINEHOUSE_SLOT_MEMORY_MIB": "512"}).slot_memory_mib == 512


@pytest.mark.parametrize(
    ("config", "toml", "slots"),
    [
        ({"num_parallel": 2}, "", 2),  # ENGINEHOUSE_NUM_PARALLEL
        ({}, "[defaults]\nnum_parallel = 6\n", 6),  # the file's defaults
        ({"num_parallel": 2}, f'[models."{BUNDLED_NAME}"]\nnum_parallel = 8\n', 8),  # the entry wins
    ],
)
def test_an_explicit_slot_count_gives_slots_of_their_own(
    tmp_path: Path, store: Store, config: dict, toml: str, slots: int
) -> None:
    s = factory(tmp_path, toml, ctx_size=1024, **config).settings_for(store.resolve(BUNDLED_NAME))
    assert (s.num_parallel, s.kv_pool, s.ctx_total) == (slots, 0, slots * 1024)


def test_env_num_parallel_is_explicit() -> None:
    assert Config.from_env({"ENGINEHOUSE_NUM_PARALLEL": "8"}).num_parallel == 8
    assert Config.from_env({"OLLAMA_NUM_PARALLEL": "3"}).num_parallel == 3


def test_the_estimate_counts_what_the_slots_hold(tmp_path: Path, store: Store) -> None:
    record = store.resolve(BUNDLED_NAME)
    own = factory(tmp_path, slot_memory_mib=900).estimate_for(record)  # 10 slots of their own
    assert own is not None and own.kv_cache == 10 * KV_PER_4096
    shared = factory(tmp_path, kv_pool=4).estimate_for(record)
    four = factory(tmp_path, num_parallel=4).estimate_for(record)  # the old default: 4 x 4096 of their own
    assert shared is not None and four is not None
    assert shared.kv_cache == four.kv_cache
    # 28 more logits rows and a mask over the whole pool: megabytes, not a KV cache per slot
    assert 0 < shared.total - four.total < 32 << 20


def _fake_llama_server(path: Path, help_text: str) -> Path:
    path.write_text(f"#!/bin/sh\necho 'version: 0 (test)'\necho '{help_text}'\n")
    path.chmod(0o755)
    return path


def test_a_build_without_the_per_slot_cap_gets_slots_of_their_own(tmp_path: Path, store: Store) -> None:
    old = _fake_llama_server(tmp_path / "old-llama-server", "--kv-unified  use a unified KV buffer")
    new = _fake_llama_server(tmp_path / "llama-server", "--kv-unified-per-slot N  context limit per slot")
    assert not supports_shared_kv(old) and supports_shared_kv(new)
    assert not supports_shared_kv(tmp_path / "missing")
    record = store.resolve(BUNDLED_NAME)
    engine = factory(tmp_path, llama_server=old, kv_pool=4)(record)
    assert isinstance(engine, LlamaServerEngine)
    assert (engine.settings.num_parallel, engine.settings.kv_pool, engine.settings.ctx_total) == (
        4,
        0,
        4 * 4096,
    )
    engine = factory(tmp_path, llama_server=new, kv_pool=4)(record)
    assert isinstance(engine, LlamaServerEngine)
    assert (engine.settings.num_parallel, engine.settings.kv_pool) == (AUTO_SLOTS, 4)
    info = engine.info().extra
    assert (info["num_parallel"], info["ctx_per_slot"], info["kv_tokens"]) == (AUTO_SLOTS, 4096, 16384)


def test_an_embedding_runner_keeps_slots_of_their_own(tmp_path: Path, store: Store) -> None:
    from enginehouse.engines.base import RunnerSpec

    s = factory(tmp_path).settings_for(store.resolve(BUNDLED_NAME), RunnerSpec(embedding=True))
    assert (s.embedding, s.num_parallel, s.kv_pool, s.ctx_total) == (True, 4, 0, 4 * 4096)
