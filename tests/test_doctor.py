"""doctor's report on machines this one is not: an H100 box with vLLM, a Mac, and how it renders."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from enginehouse.cli import doctor
from enginehouse.config import Config
from enginehouse.engines.choose import InstalledEngine
from enginehouse.store import Store, ensure_bundled
from tests.conftest import MODEL
from tests.test_choose_engine import CPU_BOX, H100, LS_CPU, LS_CUDA, MAC, VLLM

GiB = 1 << 30


def hf_record(tmp_path: Path, weights: int) -> SimpleNamespace:
    repo = tmp_path / "hf" / "Qwen" / "Qwen2.5-7B-Instruct"
    repo.mkdir(parents=True)
    (repo / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"]}')
    with (repo / "model-00001-of-00001.safetensors").open("wb") as fh:
        fh.truncate(weights)  # sparse: the size is what matters
    return SimpleNamespace(
        name=SimpleNamespace(display="hf.co/Qwen/Qwen2.5-7B-Instruct:latest"),
        model_path=repo,
        config={},
        params={},
    )


def installed(*engines: InstalledEngine) -> dict[str, InstalledEngine]:
    return {e.name: e for e in engines}


def test_hf_model_on_an_h100_with_vllm(tmp_path: Path) -> None:
    config = Config.from_env({}, home=tmp_path)
    row = doctor.model_row(config, hf_record(tmp_path, 15 * GiB), H100, installed(LS_CUDA, VLLM), 10 * GiB)
    assert (row["format"], row["engine"], row["ready"], row["offload"]) == (
        "safetensors",
        "vllm",
        True,
        "CUDA",
    )
    assert row["fits"] is True and row["needed_bytes"] == 15 * GiB
    assert row["budget_bytes"] == int(80 * GiB * 0.9) and "KV cache" in row["fit_reason"]


def test_hf_model_too_big_for_one_gpu(tmp_path: Path) -> None:
    config = Config.from_env({}, home=tmp_path)
    row = doctor.model_row(config, hf_record(tmp_path, 140 * GiB), H100, installed(VLLM), 10 * GiB)
    assert row["engine"] == "vllm" and row["fits"] is False and "too large" in row["fit_reason"]


def test_hf_model_without_a_gpu_needs_converting(tmp_path: Path) -> None:
    config = Config.from_env({}, home=tmp_path)
    for hw in (CPU_BOX, MAC):
        row = doctor.model_row(config, hf_record(tmp_path / hw.system, GiB), hw, installed(LS_CPU), 10 * GiB)
        assert row["engine"] is None and row["ready"] is False and row["fits"] is None
        assert "enginehouse convert" in row["reason"]


def test_report_and_rendering_of_an_h100_box(tmp_path: Path) -> None:
    config = Config.from_env({}, home=tmp_path, max_memory_mib=2048)
    store = Store(config.models)
    assert ensure_bundled(store) is not None
    report = doctor.build_report(config, store, H100, installed(LS_CUDA, VLLM))
    assert report["memory_budget"]["bytes"] == 2048 << 20
    [model] = report["models"]
    assert (model["name"], model["engine"], model["offload"], model["fits"]) == (
        MODEL,
        "llama-server",
        "CUDA",
        True,
    )
    assert "offloaded to the NVIDIA H100" in model["reason"] and "CUDA need less" in model["fit_reason"]
    out = io.StringIO()
    doctor.render(report, Console(file=out, width=200))
    text = out.getvalue()
    assert "NVIDIA H100 80GB HBM3: 80.0 GiB, 79.0 GiB free, compute 9.0, driver 550.54.15" in text
    assert "capped at 2048 MiB" in text and "CUDA0: NVIDIA H100" in text and "0.11.0" in text
