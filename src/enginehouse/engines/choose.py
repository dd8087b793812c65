"""Which engine runs a model on this machine, and why: one pure function, :func:`choose_engine`.

``engine = "auto"`` (the default) decides from the model's format and the hardware:

- a GGUF file runs on llama-server, its layers offloaded to the GPU where the llama-server build has a
  GPU backend (CUDA, Metal, ...) and the machine has that GPU, on the CPU otherwise;
- a Hugging Face directory (safetensors + config.json) runs on vLLM when there is an NVIDIA GPU and vLLM
  is installed; elsewhere it cannot run until converted to GGUF (``enginehouse convert``);
- remote engines (``ollama``, ``openai``) are never chosen automatically.

An engine named explicitly is honoured when it can work, and refused with the reason when it cannot
(vLLM without an NVIDIA GPU, llama-server for safetensors). :func:`installed_engines` reports the local
engines found, without importing them; the caller passes it, with :func:`enginehouse.hardware.detect`,
to :func:`choose_engine`.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enginehouse.config import Config
from enginehouse.engines.llama_install import find_llama_server
from enginehouse.errors import EngineNotInstalled
from enginehouse.hardware import Hardware, run_command

LLAMA_SERVER = "llama-server"
VLLM = "vllm"
OLLAMA = "ollama"
OPENAI = "openai"
AUTO = "auto"
LOCAL_ENGINES = (LLAMA_SERVER, VLLM)
REMOTE_ENGINES = (OLLAMA, OPENAI)
ENGINES = (*LOCAL_ENGINES, *REMOTE_ENGINES)

GGUF = "gguf"
SAFETENSORS = "safetensors"  # a Hugging Face directory: config.json + *.safetensors
_FORMAT_ALIASES = {"gguf": GGUF, "safetensors": SAFETENSORS, "hf": SAFETENSORS, "huggingface": SAFETENSORS}

#: vLLM's kernels need Volta (compute capability 7.0) or newer.
VLLM_MIN_COMPUTE = (7, 0)
#: What to run when an engine is missing.
INSTALL_HINTS = {
    LLAMA_SERVER: "enginehouse engines install llama-server",
    VLLM: "pip install vllm (into the Python that runs enginehouse)",
}
CONVERT_HINT = "convert it to GGUF with `enginehouse convert SOURCE NAME` to run it on llama-server"


@dataclass(frozen=True)
class InstalledEngine:
    """A local engine found on this machine."""

    name: str  # "llama-server" or "vllm"
    version: str
    path: str | None = None  # the binary or entry point, when there is one
    source: str = ""  # llama-server: "config", "built", "path"; vllm: "python" (importable), "path"
    #: llama-server ``--list-devices`` lines ("CUDA0: NVIDIA H100 80GB HBM3 (81079 MiB, 80562 MiB free)");
    #: () for a CPU-only build, None when unknown.
    devices: tuple[str, ...] | None = None

    @property
    def backends(self) -> frozenset[str] | None:
        """GPU backends of the build ("CUDA", "Metal", "Vulkan", ...); None when unknown."""
        if self.devices is None:
            return None
        return frozenset(filter(None, (_backend_of(d) for d in self.devices)))


def _backend_of(device: str) -> str | None:
    name = device.split(":", 1)[0].strip().upper()
    for prefix, backend in (("CUDA", "CUDA"), ("MTL", "Metal"), ("METAL", "Metal"), ("VULKAN", "Vulkan")):
        if name.startswith(prefix):
            return backend
    for prefix, backend in (("ROCM", "ROCm"), ("HIP", "ROCm"), ("SYCL", "SYCL")):
        if name.startswith(prefix):
            return backend
    return None


@dataclass(frozen=True)
class Choice:
    """The engine for one model, or None with the reason nothing here can run it."""

    engine: str | None
    reason: str
    offload: str | None = None  # GPU backend llama-server offloads layers to ("CUDA", "Metal"); None: CPU
    ready: bool = True  # False: the engine is right but must be installed first (the reason says how)

    @property
    def runnable(self) -> bool:
        return self.engine is not None and self.ready


def normalise_format(model_format: str | None) -> str | None:
    """``"gguf"`` or ``"safetensors"`` (``"hf"``/``"huggingface"`` accepted); None when unknown."""
    return _FORMAT_ALIASES.get((model_format or "").strip().lower())


def choose_engine(
    model_format: str | None,
    requested: str = AUTO,
    *,
    hardware: Hardware,
    installed: Mapping[str, InstalledEngine],
) -> Choice:
    """Pick the engine for a model of ``model_format`` ("gguf", "safetensors"; None for a model with no
    local file), ``requested`` being "auto" or an engine name from :data:`ENGINES`.

    Pure: the hardware (:func:`enginehouse.hardware.detect`) and the installed local engines
    (:func:`installed_engines`) are parameters. Never raises; an impossible ask comes back as
    ``Choice(None, reason)``, and an engine that is right but not installed as ``ready=False``.
    """
    requested = (requested or AUTO).strip().lower()
    fmt = normalise_format(model_format)
    if requested in REMOTE_ENGINES:
        return Choice(requested, f"named explicitly: the model is served by the remote {requested} server")
    if requested not in (AUTO, *LOCAL_ENGINES):
        return Choice(None, f"unknown engine {requested!r} (known: auto, {', '.join(ENGINES)})")
    if fmt is None:
        shown = f"format {model_format!r}" if model_format else "no local model file"
        return Choice(None, f"{shown}: local engines run GGUF files or Hugging Face safetensors directories")
    if fmt == GGUF:
        if requested == VLLM:
            return Choice(
                None,
                "vLLM is for Hugging Face (safetensors) models; its GGUF support is experimental and "
                "needs the original tokenizer: run this GGUF on llama-server (engine auto)",
            )
        return _llama_server(hardware, installed.get(LLAMA_SERVER), explicit=requested == LLAMA_SERVER)
    if requested == LLAMA_SERVER:
        return Choice(
            None, f"llama-server reads GGUF files only; this is a safetensors model: {CONVERT_HINT}"
        )
    return _vllm(hardware, installed.get(VLLM), explicit=requested == VLLM)


def _llama_server(hw: Hardware, found: InstalledEngine | None, *, explicit: bool) -> Choice:
    why = "named explicitly" if explicit else "GGUF runs on llama-server"
    offload, where = _offload(hw, found)
    if found is None:
        return Choice(
            LLAMA_SERVER,
            f"{why}, {where}; llama-server is not installed: run `{INSTALL_HINTS[LLAMA_SERVER]}`",
            offload,
            ready=False,
        )
    return Choice(LLAMA_SERVER, f"{why}, {where}", offload)


def _offload(hw: Hardware, found: InstalledEngine | None) -> tuple[str | None, str]:
    """(GPU backend, where the layers go in words) for llama-server on ``hw``."""
    backends = found.backends if found is not None else None
    gpu = _gpu_label(hw)
    if hw.has_metal and (backends is None or "Metal" in backends):
        return "Metal", f"layers offloaded to the {hw.apple.chip if hw.apple else 'Apple'} GPU (Metal)"
    if gpu and backends is not None and "CUDA" in backends:
        return "CUDA", f"layers offloaded to the {gpu} (CUDA)"
    if gpu and backends is None:
        return None, f"on the CPU unless this llama-server was built with CUDA ({gpu} present)"
    if gpu:
        return None, f"on the CPU: this llama-server build has no CUDA backend, so the {gpu} stays unused"
    if hw.has_metal:
        return None, "on the CPU: this llama-server build has no Metal backend"
    return None, "on the CPU (no GPU found)"


def _gpu_label(hw: Hardware) -> str | None:
    """ "NVIDIA H100 80GB HBM3", or "2 x NVIDIA H100 80GB HBM3" / "NVIDIA A10G + NVIDIA T4"."""
    names = [g.name for g in hw.gpus]
    if len(set(names)) == 1 and len(names) > 1:
        return f"{len(names)} x {names[0]}"
    return " + ".join(names) or None


def _vllm(hw: Hardware, found: InstalledEngine | None, *, explicit: bool) -> Choice:
    if not hw.gpus:
        where = "Apple Silicon" if hw.has_metal else "this machine"
        return Choice(None, f"vLLM needs an NVIDIA GPU and {where} has none: {CONVERT_HINT}")
    gpu = hw.gpus[0]
    if gpu.compute_capability and _version(gpu.compute_capability) < VLLM_MIN_COMPUTE:
        return Choice(
            None,
            f"vLLM needs compute capability {'.'.join(map(str, VLLM_MIN_COMPUTE))} or newer; "
            f"the {gpu.name} has {gpu.compute_capability}: {CONVERT_HINT}",
        )
    if found is None:
        return Choice(
            None,
            f"safetensors models run on vLLM, which is not installed: {INSTALL_HINTS[VLLM]}, "
            f"or {CONVERT_HINT}",
        )
    why = "named explicitly" if explicit else "safetensors model and an NVIDIA GPU"
    return Choice(VLLM, f"{why}: vLLM {found.version} on the {gpu.name}", "CUDA")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:2])


def model_format(record: Any) -> str | None:
    """The format of a store record: its config's ``model_format``, else what its model path holds
    (a Hugging Face directory, a GGUF file); None when neither says."""
    declared = normalise_format((getattr(record, "config", None) or {}).get("model_format"))
    if declared:
        return declared
    path = Path(getattr(record, "model_path", "") or "")
    if path.is_dir():
        return SAFETENSORS if (path / "config.json").is_file() and any(path.glob("*.safetensors")) else None
    try:
        with path.open("rb") as fh:
            return GGUF if fh.read(4) == b"GGUF" else None
    except OSError:
        return None


def requested_engine(record: Any) -> str:
    """The engine a model names (a catalog record's ``engine``, else its config's or parameters'
    ``engine``), else "auto"."""
    candidates = [getattr(record, "engine", None)]
    candidates += [(getattr(record, attr, None) or {}).get("engine") for attr in ("config", "params")]
    for value in candidates:
        if isinstance(value, str) and value.strip():
            return value.strip().lower()
    return AUTO


# -- what is installed -----------------------------------------------------------------------------------


def installed_engines(
    config: Config, *, run: Callable[[Sequence[str]], str | None] = run_command
) -> dict[str, InstalledEngine]:
    """The local engines found on this machine, by name; none of them is imported.

    llama-server: the binary :func:`~enginehouse.engines.llama_install.find_llama_server` picks, its
    version (from the build record, or ``--version``) and its ``--list-devices``. vLLM: the version of
    the installed ``vllm`` distribution, else ``vllm --version`` of one on PATH.
    """
    found: dict[str, InstalledEngine] = {}
    if (llama := _llama_server_found(config, run)) is not None:
        found[LLAMA_SERVER] = llama
    if (vllm := _vllm_found(run)) is not None:
        found[VLLM] = vllm
    return found


def _llama_server_found(config: Config, run: Callable[[Sequence[str]], str | None]) -> InstalledEngine | None:
    try:
        binary = find_llama_server(config)
    except EngineNotInstalled:  # ENGINEHOUSE_LLAMA_SERVER names something that is not a binary
        return None
    if binary is None:
        return None
    listing = run([str(binary.path), "--list-devices"])
    return InstalledEngine(
        LLAMA_SERVER, binary.version, str(binary.path), binary.source, parse_list_devices(listing)
    )


def parse_list_devices(text: str | None) -> tuple[str, ...] | None:
    """The device lines of ``llama-server --list-devices`` (``Available devices:`` then one indented
    line per device, or ``(none)``); None when there was no listing (an old build, or it failed)."""
    if not text or "Available devices" not in text:
        return None
    lines = text.split("Available devices", 1)[1].splitlines()[1:]
    return tuple(s for line in lines if (s := line.strip()) and s != "(none)")


def _vllm_found(run: Callable[[Sequence[str]], str | None]) -> InstalledEngine | None:
    try:
        version = importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        version = None
    path = shutil.which("vllm")
    if version is not None:
        return InstalledEngine(VLLM, version, path, "python")
    if path is None:
        return None
    out = run([path, "--version"])  # another environment's vllm: slow (it imports torch), so last
    return InstalledEngine(VLLM, (out or "").strip().splitlines()[-1] if out else "unknown", path, "path")


__all__ = [
    "AUTO",
    "ENGINES",
    "GGUF",
    "LLAMA_SERVER",
    "LOCAL_ENGINES",
    "OLLAMA",
    "OPENAI",
    "REMOTE_ENGINES",
    "SAFETENSORS",
    "VLLM",
    "Choice",
    "InstalledEngine",
    "choose_engine",
    "installed_engines",
    "model_format",
    "normalise_format",
    "parse_list_devices",
    "requested_engine",
]
