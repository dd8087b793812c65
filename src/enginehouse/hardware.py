"""What this machine has: CPU, RAM, NVIDIA GPUs, Apple Silicon and Metal.

:func:`detect` reads everything through a :class:`Probe`, whose readers (the text of a file, the stdout of
a command, NVML) are parameters, so tests feed recorded outputs of machines they are not running on.
The parsers (:func:`parse_cpuinfo`, :func:`parse_meminfo`, :func:`parse_nvidia_smi`, :func:`parse_sysctl`,
:func:`parse_vm_stat`) are pure. Nothing here raises on a missing file, command or library: what cannot
be read is left out (an empty tuple, ``None``, 0).

NVIDIA GPUs come from NVML (the ``pynvml`` module of ``nvidia-ml-py``, imported only when installed and
only here), else from ``nvidia-smi``. Memory figures are bytes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MiB = 1 << 20

#: x86 /proc/cpuinfo flags that matter to inference kernels (llama.cpp's and PyTorch's).
X86_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
#: Linux aarch64 /proc/cpuinfo "Features" -> the names llama.cpp prints (NEON, DOTPROD, ...), lowercased.
ARM_FEATURES = {
    "asimd": "neon",
    "asimdhp": "fp16",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
    "bf16": "bf16",
    "sve": "sve",
    "sve2": "sve2",
    "sme": "sme",
}
#: macOS ``sysctl hw`` keys (after ``hw.optional.``) -> the same names.
SYSCTL_FLAGS = {
    "neon": "neon",
    "neon_fp16": "fp16",
    "arm.FEAT_FP16": "fp16",
    "arm.FEAT_DotProd": "dotprod",
    "arm.FEAT_I8MM": "i8mm",
    "arm.FEAT_BF16": "bf16",
    "arm.FEAT_SME": "sme",
    "sse4_2": "sse4_2",
    "avx1_0": "avx",
    "avx2_0": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512vnni": "avx512_vnni",
}
NVIDIA_SMI_FIELDS = "name,memory.total,memory.free,driver_version,compute_cap"


@dataclass(frozen=True)
class CPU:
    model: str
    physical_cores: int
    logical_cores: int
    flags: tuple[str, ...] = ()  # only those of interest (X86_FLAGS, ARM_FEATURES), in that order


@dataclass(frozen=True)
class Memory:
    total: int  # bytes
    available: int  # bytes the system can give without swapping (MemAvailable on Linux)


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    memory_total: int  # bytes
    memory_free: int  # bytes
    driver: str | None = None
    compute_capability: str | None = None  # "9.0" for an H100
    source: str = "nvidia-smi"  # or "nvml"


@dataclass(frozen=True)
class AppleSilicon:
    chip: str  # "Apple M2 Pro"
    metal: bool = True  # every Apple Silicon GPU runs Metal; its memory is the system's (unified)


@dataclass(frozen=True)
class Hardware:
    system: str  # platform.system(): "Linux", "Darwin", ...
    machine: str  # platform.machine(): "x86_64", "arm64", "aarch64"
    cpu: CPU
    memory: Memory
    gpus: tuple[GPU, ...] = ()  # NVIDIA only
    apple: AppleSilicon | None = None

    @property
    def has_nvidia(self) -> bool:
        return bool(self.gpus)

    @property
    def has_metal(self) -> bool:
        return self.apple is not None and self.apple.metal

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cpu"]["flags"] = list(self.cpu.flags)
        out["gpus"] = [asdict(g) for g in self.gpus]
        return out


# -- readers ------------------------------------------------------------------------------------------


def read_text(path: str) -> str | None:
    """A file's text, or None when it cannot be read."""
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def run_command(argv: Sequence[str], timeout: float = 10.0) -> str | None:
    """A command's stdout when it exits 0, else None (missing, failing, or slower than ``timeout``)."""
    try:
        out = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def read_nvml() -> tuple[GPU, ...] | None:
    """NVIDIA GPUs through NVML; None when ``pynvml`` is not installed or NVML does not start."""
    if importlib.util.find_spec("pynvml") is None:
        return None
    try:
        import pynvml  # nvidia-ml-py: a thin ctypes binding, cheap to import
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no usable NVIDIA driver
        return None
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
                cc: str | None = f"{major}.{minor}"
            except Exception:
                cc = None
            gpus.append(
                GPU(
                    i,
                    _text(pynvml.nvmlDeviceGetName(handle)),
                    int(mem.total),
                    int(mem.free),
                    driver,
                    cc,
                    "nvml",
                )
            )
        return tuple(gpus)
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _text(v: str | bytes) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


@dataclass(frozen=True)
class Probe:
    """Where :func:`detect` gets its facts. The defaults read this machine; tests replace any of them."""

    system: str = field(default_factory=platform.system)
    machine: str = field(default_factory=platform.machine)
    read: Callable[[str], str | None] = read_text
    run: Callable[[Sequence[str]], str | None] = run_command
    nvml: Callable[[], tuple[GPU, ...] | None] = read_nvml
    cpu_count: Callable[[], int | None] = os.cpu_count


# -- parsers --------------------------------------------------------------------------------------------


def parse_cpuinfo(text: str) -> tuple[str, int, int, tuple[str, ...]]:
    """(model, physical cores, logical cores, flags of interest) from /proc/cpuinfo (x86 or arm64).

    Physical cores are the distinct (physical id, core id) pairs; where those are absent (most arm64
    kernels) every processor counts as a core. 0 for counts that cannot be read.
    """
    model = ""
    logical = 0
    cores: set[tuple[str, str]] = set()
    flags: set[str] = set()
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "processor" in fields and fields["processor"].isdigit():
            logical += 1
        model = model or fields.get("model name") or fields.get("Model") or fields.get("Hardware", "")
        physical_id, core_id = fields.get("physical id"), fields.get("core id")
        if physical_id is not None and core_id is not None:
            cores.add((physical_id, core_id))
        flags.update(fields.get("flags", "").split())
        flags.update(ARM_FEATURES.get(f, "") for f in fields.get("Features", "").split())
        if not model and "CPU implementer" in fields:
            model = f"ARM (implementer {fields['CPU implementer']}, part {fields.get('CPU part', '?')})"
    wanted = (*X86_FLAGS, *dict.fromkeys(ARM_FEATURES.values()))
    return model, len(cores) or logical, logical, tuple(f for f in wanted if f in flags)


def parse_meminfo(text: str) -> Memory:
    """MemTotal and MemAvailable (MemFree + Cached on kernels older than 3.14) of /proc/meminfo."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0]) * 1024  # always kB
    available = values.get("MemAvailable")
    if available is None:
        available = values.get("MemFree", 0) + values.get("Cached", 0)
    return Memory(total=values.get("MemTotal", 0), available=available)


def parse_nvidia_smi(text: str, driver: str | None = None) -> tuple[GPU, ...]:
    """Rows of ``nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version,compute_cap
    --format=csv,noheader,nounits`` (MiB). Without ``compute_cap`` (drivers before 510) the row has
    four fields. ``[N/A]`` or unparsable values become None / 0; a row without a name is skipped."""
    gpus = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 3 or not _known(cells[0]):
            continue
        cells += [""] * (5 - len(cells))
        name, total, free, drv, cc = cells[:5]
        gpus.append(
            GPU(
                index=len(gpus),
                name=name,
                memory_total=_mib_or_zero(total),
                memory_free=_mib_or_zero(free),
                driver=_known(drv) or driver,
                compute_capability=_known(cc),
            )
        )
    return tuple(gpus)


def _known(v: str) -> str | None:
    return None if not v or v.startswith("[") or v.upper() == "N/A" else v


def _mib_or_zero(v: str) -> int:
    try:
        return int(float(v) * MiB)
    except ValueError:
        return 0


def parse_sysctl(text: str) -> dict[str, str]:
    """``name: value`` lines of ``sysctl`` (macOS prints ``name: value``, BSDs ``name=value``)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        sep = ":" if ": " in line else "="
        key, found, value = line.partition(sep)
        if found:
            out[key.strip()] = value.strip()
    return out


def parse_vm_stat(text: str) -> int:
    """Bytes macOS can give without swapping: free + inactive + speculative pages of ``vm_stat``."""
    page = 4096
    pages = 0
    for line in text.splitlines():
        if "page size of" in line:
            digits = "".join(ch for ch in line.split("page size of", 1)[1] if ch.isdigit())
            page = int(digits or page)
            continue
        key, _, value = line.partition(":")
        if key.strip() in ("Pages free", "Pages inactive", "Pages speculative"):
            pages += int(value.strip().rstrip(".") or 0)
    return pages * page


# -- detection ------------------------------------------------------------------------------------------


def detect(probe: Probe | None = None) -> Hardware:
    """Everything this module knows about the machine ``probe`` reads (this one by default)."""
    probe = probe or Probe()
    if probe.system == "Darwin":
        cpu, memory, apple = _darwin(probe)
    else:
        cpu, memory, apple = _cpu_linux(probe), _memory_linux(probe), None
    return Hardware(probe.system, probe.machine, cpu, memory, detect_nvidia(probe), apple)


def _cpu_linux(probe: Probe) -> CPU:
    model, physical, logical, flags = parse_cpuinfo(probe.read("/proc/cpuinfo") or "")
    logical = logical or probe.cpu_count() or 0
    return CPU(model or platform.processor() or probe.machine, physical or logical, logical, flags)


def _memory_linux(probe: Probe) -> Memory:
    memory = parse_meminfo(probe.read("/proc/meminfo") or "")
    if memory.total:
        return memory
    try:  # no /proc: what POSIX says
        page = os.sysconf("SC_PAGE_SIZE")
        return Memory(os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page)
    except (ValueError, OSError, AttributeError):
        return memory


def _darwin(probe: Probe) -> tuple[CPU, Memory, AppleSilicon | None]:
    hw = parse_sysctl(probe.run(["sysctl", "hw"]) or "")
    brand = (probe.run(["sysctl", "-n", "machdep.cpu.brand_string"]) or "").strip()
    logical = _int(hw.get("hw.logicalcpu")) or probe.cpu_count() or 0
    flags = {name for key, name in SYSCTL_FLAGS.items() if hw.get(f"hw.optional.{key}") == "1"}
    wanted = dict.fromkeys((*X86_FLAGS, *ARM_FEATURES.values()))
    cpu = CPU(
        brand or probe.machine,
        _int(hw.get("hw.physicalcpu")) or logical,
        logical,
        tuple(f for f in wanted if f in flags),
    )
    total = _int(hw.get("hw.memsize"))
    memory = Memory(total, parse_vm_stat(probe.run(["vm_stat"]) or "") or total)
    # hw.optional.arm64 is 1 on Apple Silicon even for an x86_64 Python running under Rosetta.
    arm = probe.machine == "arm64" or hw.get("hw.optional.arm64") == "1"
    return cpu, memory, AppleSilicon(brand or "Apple Silicon") if arm else None


def _int(v: str | None) -> int:
    try:
        return int(v or 0)
    except ValueError:
        return 0


def detect_nvidia(probe: Probe) -> tuple[GPU, ...]:
    """NVIDIA GPUs from NVML, else ``nvidia-smi`` (retried without ``compute_cap``, which drivers
    before 510 refuse); () when neither answers."""
    gpus = probe.nvml()
    if gpus is not None:
        return gpus
    tail = ["--format=csv,noheader,nounits"]
    text = probe.run(["nvidia-smi", f"--query-gpu={NVIDIA_SMI_FIELDS}", *tail])
    if text is None:
        text = probe.run(["nvidia-smi", "--query-gpu=name,memory.total,memory.free,driver_version", *tail])
    return parse_nvidia_smi(text) if text else ()


def describe(hw: Hardware) -> Mapping[str, str]:
    """One line per part, for people: {"CPU": ..., "RAM": ..., "GPU 0": ..., "Apple": ...}."""
    lines = {
        "CPU": f"{hw.cpu.model}: {hw.cpu.physical_cores} cores, {hw.cpu.logical_cores} threads"
        + (f"; {' '.join(hw.cpu.flags)}" if hw.cpu.flags else ""),
        "RAM": f"{hw.memory.total / 2**30:.1f} GiB, {hw.memory.available / 2**30:.1f} GiB available",
    }
    for g in hw.gpus:
        cc = f", compute {g.compute_capability}" if g.compute_capability else ""
        drv = f", driver {g.driver}" if g.driver else ""
        lines[f"GPU {g.index}"] = (
            f"{g.name}: {g.memory_total / 2**30:.1f} GiB, {g.memory_free / 2**30:.1f} GiB free{cc}{drv}"
        )
    if hw.apple:
        lines["Apple"] = f"{hw.apple.chip}, Metal {'yes' if hw.apple.metal else 'no'}, unified memory"
    return lines


__all__ = [
    "CPU",
    "GPU",
    "AppleSilicon",
    "Hardware",
    "Memory",
    "Probe",
    "describe",
    "detect",
    "detect_nvidia",
    "parse_cpuinfo",
    "parse_meminfo",
    "parse_nvidia_smi",
    "parse_sysctl",
    "parse_vm_stat",
]
