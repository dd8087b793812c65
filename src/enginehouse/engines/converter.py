"""Install llama.cpp's own Hugging Face to GGUF converter (``convert_hf_to_gguf.py``) in a venv of its own.

The converter comes from the same pinned source as ``llama-server`` (the llama.cpp tree vendored in the
``llama-cpp-python`` sdist, fetched and verified by :mod:`~enginehouse.engines.llama_install`), so a
converted GGUF is one the built ``llama-server`` reads. It needs torch and transformers, which the
gateway must never import, so it gets its own virtualenv under the engines directory::

    engines/converter/<llama.cpp commit>/
        venv/                      torch, transformers, sentencepiece, protobuf, numpy, gguf (from gguf-py)
        llama.cpp/                 convert_hf_to_gguf.py, conversion/, models/templates/ (copied)
        converter.json             what was installed (written last: no record, no install)

Installing is explicit (``enginehouse engines install converter``), never a silent step of a convert.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from enginehouse.child_output import output_lines, wait_exit
from enginehouse.config import SETTINGS, Config
from enginehouse.engines import llama_install
from enginehouse.errors import EngineBuildFailed, EngineNotInstalled

# torch is pinned to one release (2.13.0; the vendored requirements name 2.11.0 from PyTorch's CPU index,
# which is not on PyPI): a plain `torch` may resolve to a multi-GB CUDA build. transformers, sentencepiece
# and protobuf follow llama.cpp's requirements/requirements-convert_legacy_llama.txt at the pinned commit.
TORCH_PIN = "torch==2.13.0"
REQUIREMENTS = (
    TORCH_PIN,
    "transformers==4.57.6",
    "sentencepiece>=0.1.98,<0.3.0",
    "protobuf>=4.21.0,<5.0.0",
    "numpy>=2.2.6",
)
# What the converter imports from the source tree besides the script itself.
TREE_PARTS = ("convert_hf_to_gguf.py", "conversion", "models/templates")
RECORD = "converter.json"
INSTALL_COMMAND = "enginehouse engines install converter"

Progress = llama_install.Progress  # stage, completed, total
Log = Callable[[str], None]  # one line of pip's (or the converter's) output


@dataclass(frozen=True)
class Converter:
    python: Path  # the venv's interpreter
    script: Path  # convert_hf_to_gguf.py
    facts: dict[str, Any]  # the install record

    def argv(self, *args: str) -> list[str]:
        return [str(self.python), str(self.script), *args]


def _noop_progress(stage: str, completed: float, total: float | None) -> None:
    pass


def _noop_log(line: str) -> None:
    pass


def converter_dir(config: Config, engines: Path | None = None) -> Path:
    """Where the converter is installed: the shared engines folder unless ``engines`` names another."""
    return (engines or config.engines) / "converter" / llama_install.LLAMA_CPP_COMMIT


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def find_converter(config: Config) -> Converter | None:
    """The installed converter (in the shared engines folder, else in HOME/engines where it was
    installed before), or None when ``enginehouse engines install converter`` has not run."""
    for engines in config.engine_dirs:
        root = converter_dir(config, engines)
        record, python = root / RECORD, _venv_python(root / "venv")
        script = root / "llama.cpp" / TREE_PARTS[0]
        if not (record.is_file() and python.is_file() and script.is_file()):
            continue
        try:
            facts = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        return Converter(python, script, facts if isinstance(facts, dict) else {})
    return None


def require_converter(config: Config) -> Converter:
    found = find_converter(config)
    if found is None:
        raise EngineNotInstalled(
            "the Hugging Face to GGUF converter is not installed: run "
            f"`{INSTALL_COMMAND}` (a virtualenv with torch and transformers, about 1.2 GB)"
        )
    return found


def _index_args(config: Config) -> list[str]:
    """``--index-url`` only when ENGINEHOUSE_PYPI_INDEX is set: otherwise pip's own config decides."""
    default = next(s.default for s in SETTINGS if s.name == "pypi_index")
    return [] if config.pypi_index == default else ["--index-url", config.pypi_index]


def _run_logged(
    argv: Sequence[str], log_file: IO[str], stage: str, log: Log, env: dict[str, str] | None = None
) -> None:
    log_file.write(f"\n$ {' '.join(argv)}\n")
    log_file.flush()
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    try:
        for line in output_lines(proc):
            log_file.write(line)
            if line.strip():
                log(line.rstrip())
        code = wait_exit(proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if code != 0:
        log_file.flush()
        tail = "\n".join(Path(log_file.name).read_text(errors="replace").splitlines()[-25:])
        raise EngineBuildFailed(f"converter install: {stage} failed (log: {log_file.name}):\n{tail}")


def _copy_tree_parts(source: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for part in TREE_PARTS:
        src, out = source / part, tmp / part
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, out)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def _installed_versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json\n"
        "names = ['torch', 'transformers', 'sentencepiece', 'protobuf', 'numpy', 'gguf', 'safetensors']\n"
        "out = {}\n"
        "for n in names:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120)
    try:
        return json.loads(out.stdout)
    except ValueError:
        return {}


def install(
    config: Config,
    *,
    progress: Progress = _noop_progress,
    log: Log = _noop_log,
    force: bool = False,
) -> Converter:
    """Create the converter's venv from the pinned source unless it is already installed.

    Stages reported through ``progress``: download and extract (the sdist, shared with llama-server's
    build), venv, pip, copy, check; pip's and the check's output lines go to ``log`` and to a log file.
    The record is written last, so an interrupted install is redone from scratch by the next call.
    """
    if not force and (found := find_converter(config)) is not None:
        return found
    started = time.monotonic()
    root = converter_dir(config)
    record = root / RECORD
    record.unlink(missing_ok=True)
    sdist = llama_install.fetch_sdist(config, progress)
    source = llama_install.extract_source(config, sdist, progress)
    if not (source / TREE_PARTS[0]).is_file() or not (source / "gguf-py" / "pyproject.toml").is_file():
        raise EngineBuildFailed(
            f"{source} has no convert_hf_to_gguf.py or gguf-py: the extraction is incomplete"
        )
    root.mkdir(parents=True, exist_ok=True)
    venv = root / "venv"
    log_path = config.cache / "build" / f"converter-{llama_install.LLAMA_CPP_COMMIT}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    python = _venv_python(venv)
    with log_path.open("a") as log_file:
        progress("venv", 0, 1)
        shutil.rmtree(venv, ignore_errors=True)
        _run_logged([sys.executable, "-m", "venv", str(venv)], log_file, "venv", log)
        progress("venv", 1, 1)
        progress("pip", 0, None)
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *_index_args(config)]
        _run_logged([*pip, *REQUIREMENTS, str(source / "gguf-py")], log_file, "pip install", log)
        progress("pip", 1, 1)
        progress("copy", 0, 1)
        _copy_tree_parts(source, root / "llama.cpp")
        progress("copy", 1, 1)
        progress("check", 0, 1)
        script = root / "llama.cpp" / TREE_PARTS[0]
        env = {**os.environ, "NO_LOCAL_GGUF": "1"}
        _run_logged(
            [str(python), str(script), "--help"], log_file, "check (convert_hf_to_gguf.py --help)", log, env
        )
        progress("check", 1, 1)
    facts = {
        "package": f"{llama_install.SDIST_PACKAGE}=={llama_install.SDIST_VERSION}",
        "sdist_sha256": llama_install.SDIST_SHA256,
        "llama_cpp_commit": llama_install.LLAMA_CPP_COMMIT,
        "requirements": [*REQUIREMENTS, "gguf (from gguf-py)"],
        "installed": _installed_versions(python),
        "python": sys.version.split()[0],
        "install_seconds": round(time.monotonic() - started, 1),
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp_record = record.with_suffix(".json.tmp")
    tmp_record.write_text(json.dumps(facts, indent=2))
    os.replace(tmp_record, record)
    return Converter(python, script, facts)


__all__ = [
    "INSTALL_COMMAND",
    "TORCH_PIN",
    "Converter",
    "converter_dir",
    "find_converter",
    "install",
    "require_converter",
]
