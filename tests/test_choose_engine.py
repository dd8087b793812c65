"""The engine choice as an input/output table, and what installed_engines finds on this machine."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from enginehouse.config import Config
from enginehouse.engines import choose as ch
from enginehouse.engines.choose import Choice, InstalledEngine, choose_engine
from enginehouse.engines.llama_install import find_llama_server
from enginehouse.hardware import CPU, GPU, AppleSilicon, Hardware, Memory

GiB = 1 << 30

_cpu = CPU("test CPU", 8, 16, ("avx2",))
_mem = Memory(64 * GiB, 60 * GiB)
CPU_BOX = Hardware("Linux", "x86_64", _cpu, _mem)
H100 = Hardware(
    "Linux", "x86_64", _cpu, _mem, (GPU(0, "NVIDIA H100 80GB HBM3", 80 * GiB, 79 * GiB, "550.54.15", "9.0"),)
)
GTX1080 = Hardware(
    "Linux", "x86_64", _cpu, _mem, (GPU(0, "NVIDIA GeForce GTX 1080", 8 * GiB, 8 * GiB, "535", "6.1"),)
)
MAC = Hardware(
    "Darwin", "arm64", CPU("Apple M2 Pro", 12, 12, ("neon",)), _mem, (), AppleSilicon("Apple M2 Pro")
)

LS_CPU = InstalledEngine("llama-server", "b1", "/x/llama-server", "built", devices=())
LS_CUDA = InstalledEngine(
    "llama-server",
    "b1",
    "/x/llama-server",
    "path",
    ("CUDA0: NVIDIA H100 80GB HBM3 (81079 MiB, 80562 MiB free)",),
)
LS_METAL = InstalledEngine(
    "llama-server", "b1", "/x/llama-server", "path", ("MTL0: Apple M2 Pro (24576 MiB free)",)
)
LS_UNKNOWN = InstalledEngine("llama-server", "b1", "/x/llama-server", "path", None)
VLLM = InstalledEngine("vllm", "0.11.0", "/venv/bin/vllm", "python")


def installed(*engines: InstalledEngine) -> dict[str, InstalledEngine]:
    return {e.name: e for e in engines}


# format, requested, hardware, installed -> engine, offload, ready, a phrase of the reason
TABLE = [
    # auto: GGUF -> llama-server, offloaded where the build and the machine both have the GPU
    ("gguf", "auto", CPU_BOX, installed(LS_CPU), "llama-server", None, True, "on the CPU (no GPU found)"),
    ("gguf", "auto", H100, installed(LS_CUDA), "llama-server", "CUDA", True, "offloaded to the NVIDIA H100"),
    ("gguf", "auto", H100, installed(LS_CPU), "llama-server", None, True, "no CUDA backend"),
    (
        "gguf",
        "auto",
        H100,
        installed(LS_UNKNOWN),
        "llama-server",
        None,
        True,
        "unless this llama-server was built",
    ),
    ("gguf", "auto", MAC, installed(LS_METAL), "llama-server", "Metal", True, "Apple M2 Pro GPU (Metal)"),
    ("gguf", "auto", MAC, installed(LS_UNKNOWN), "llama-server", "Metal", True, "(Metal)"),
    ("gguf", "auto", MAC, installed(LS_CPU), "llama-server", None, True, "no Metal backend"),
    ("gguf", "auto", CPU_BOX, {}, "llama-server", None, False, "enginehouse engines install llama-server"),
    ("GGUF", None, CPU_BOX, installed(LS_CPU), "llama-server", None, True, "GGUF runs on llama-server"),
    # auto: Hugging Face safetensors -> vLLM on NVIDIA when installed, else a reason
    (
        "safetensors",
        "auto",
        H100,
        installed(LS_CPU, VLLM),
        "vllm",
        "CUDA",
        True,
        "vLLM 0.11.0 on the NVIDIA H100",
    ),
    ("hf", "auto", H100, installed(VLLM), "vllm", "CUDA", True, "safetensors model and an NVIDIA GPU"),
    ("safetensors", "auto", H100, installed(LS_CPU), None, None, False, "pip install vllm"),
    ("safetensors", "auto", CPU_BOX, installed(LS_CPU, VLLM), None, None, False, "vLLM needs an NVIDIA GPU"),
    ("safetensors", "auto", CPU_BOX, installed(LS_CPU), None, None, False, "`enginehouse convert SOURCE"),
    ("safetensors", "auto", MAC, installed(LS_METAL), None, None, False, "Apple Silicon has none"),
    ("safetensors", "auto", GTX1080, installed(VLLM), None, None, False, "compute capability 7.0 or newer"),
    # explicit choices: honoured when they can work, refused with the reason otherwise
    (
        "gguf",
        "llama-server",
        H100,
        installed(LS_CUDA, VLLM),
        "llama-server",
        "CUDA",
        True,
        "named explicitly",
    ),
    ("gguf", "vllm", H100, installed(LS_CUDA, VLLM), None, None, False, "run this GGUF on llama-server"),
    ("safetensors", "vllm", H100, installed(VLLM), "vllm", "CUDA", True, "named explicitly: vLLM 0.11.0"),
    ("safetensors", "vllm", CPU_BOX, installed(VLLM), None, None, False, "vLLM needs an NVIDIA GPU"),
    ("safetensors", "llama-server", CPU_BOX, installed(LS_CPU), None, None, False, "reads GGUF files only"),
    ("gguf", "ollama", CPU_BOX, {}, "ollama", None, True, "remote ollama server"),
    ("safetensors", "OpenAI", CPU_BOX, {}, "openai", None, True, "remote openai server"),
    (None, "openai", CPU_BOX, {}, "openai", None, True, "named explicitly"),
    # remote engines are never chosen automatically; odd input is a reason, not an exception
    (None, "auto", H100, installed(LS_CUDA, VLLM), None, None, False, "no local model file"),
    ("pytorch-bin", "auto", H100, installed(VLLM), None, None, False, "format 'pytorch-bin'"),
    ("gguf", "sglang", H100, installed(LS_CUDA), None, None, False, "unknown engine 'sglang'"),
]


@pytest.mark.parametrize("fmt, requested, hw, found, engine, offload, ready, phrase", TABLE)
def test_choice_table(fmt, requested, hw, found, engine, offload, ready, phrase) -> None:
    choice = choose_engine(fmt, requested, hardware=hw, installed=found)
    assert (choice.engine, choice.offload, choice.runnable) == (engine, offload, ready), choice.reason
    assert phrase in choice.reason


def test_several_gpus_are_named_in_the_reason() -> None:
    two = Hardware("Linux", "x86_64", _cpu, _mem, H100.gpus * 2)
    choice = choose_engine("gguf", hardware=two, installed=installed(LS_CUDA))
    assert choice.offload == "CUDA" and "2 x NVIDIA H100 80GB HBM3" in choice.reason


def test_a_choice_without_an_engine_is_never_runnable() -> None:
    assert not Choice(None, "x").runnable
    assert not Choice("llama-server", "x", ready=False).runnable
    assert Choice("llama-server", "x").runnable


@pytest.mark.parametrize(
    "text, devices",
    [
        ("Available devices:\n  (none)\n", ()),
        (
            "ggml_cuda_init: found 1 CUDA devices:\nAvailable devices:\n"
            "  CUDA0: NVIDIA H100 80GB HBM3 (81079 MiB, 80562 MiB free)\n",
            ("CUDA0: NVIDIA H100 80GB HBM3 (81079 MiB, 80562 MiB free)",),
        ),
        (
            "Available devices:\n  MTL0: Apple M2 Pro (24576 MiB, 24575 MiB free)\n",
            ("MTL0: Apple M2 Pro (24576 MiB, 24575 MiB free)",),
        ),
        ("error: invalid argument: --list-devices\n", None),
        (None, None),
    ],
)
def test_list_devices_parser(text: str | None, devices: tuple[str, ...] | None) -> None:
    assert ch.parse_list_devices(text) == devices


def test_backends_of_devices() -> None:
    assert LS_CUDA.backends == {"CUDA"} and LS_METAL.backends == {"Metal"}
    assert LS_CPU.backends == frozenset() and LS_UNKNOWN.backends is None
    vk = InstalledEngine("llama-server", "b", devices=("Vulkan0: AMD Radeon", "CPU: whatever"))
    assert vk.backends == {"Vulkan"}


def test_model_format_from_config_or_path(tmp_path: Path) -> None:
    class Rec:
        def __init__(self, path: Path, config: dict | None = None, params: dict | None = None) -> None:
            self.model_path, self.config, self.params = path, config or {}, params or {}

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(20))
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"x")
    other = tmp_path / "other.bin"
    other.write_bytes(b"PK\x03\x04")
    assert ch.model_format(Rec(gguf)) == "gguf"
    assert ch.model_format(Rec(hf)) == "safetensors"
    assert ch.model_format(Rec(other)) is None
    assert ch.model_format(Rec(tmp_path)) is None  # a directory without config.json + safetensors
    assert ch.model_format(Rec(tmp_path / "gone")) is None
    assert ch.model_format(Rec(other, {"model_format": "safetensors"})) == "safetensors"
    assert ch.requested_engine(Rec(gguf)) == "auto"
    assert ch.requested_engine(Rec(gguf, {"engine": "vLLM"})) == "vllm"
    assert ch.requested_engine(Rec(gguf, params={"engine": "ollama"})) == "ollama"
    catalog_entry = Rec(hf, {"engine": "ignored"})
    catalog_entry.engine = "vllm"  # enginehouse.catalog.ExternalRecord carries its engine
    assert ch.requested_engine(catalog_entry) == "vllm"


# -- installed_engines: the real llama-server of this machine; vLLM (absent here) faked on PATH -----------


def test_installed_engines_finds_this_machines_llama_server(tmp_path: Path, user_config: Config) -> None:
    found = find_llama_server(user_config)
    if found is None:
        pytest.skip("no llama-server built or on PATH here")
    config = Config.from_env({}, home=tmp_path, llama_server=found.path)
    engines = ch.installed_engines(config)
    ls = engines["llama-server"]
    assert (ls.path, ls.source, ls.version) == (str(found.path), "config", found.version)
    assert ls.devices is not None  # the pinned build answers --list-devices (() for a CPU build)


@pytest.fixture
def no_vllm_package(monkeypatch: pytest.MonkeyPatch) -> None:
    def version(name: str) -> str:
        raise ch.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(ch.importlib.metadata, "version", version)


@pytest.mark.usefixtures("no_vllm_package")
def test_installed_engines_without_any(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    config = Config.from_env({}, home=tmp_path)
    assert ch.installed_engines(config) == {}
    bad = Config.from_env({}, home=tmp_path, llama_server=tmp_path / "nothing-here")
    assert ch.installed_engines(bad) == {}  # the load itself reports the bad path


@pytest.mark.usefixtures("no_vllm_package")
def test_vllm_in_another_environment_is_found_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "vllm"
    fake.write_text("#!/bin/sh\necho 'INFO some log line'\necho 0.11.0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    vllm = ch.installed_engines(Config.from_env({}, home=tmp_path))["vllm"]
    assert (vllm.version, vllm.path, vllm.source) == ("0.11.0", str(fake), "path")
