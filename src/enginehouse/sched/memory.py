"""How much memory our runners hold, and how much they may hold.

:func:`~enginehouse.engines.llama_memory.estimate_runner` predicts a llama-server runner's resident size
from its GGUF header (the engine's own arithmetic); :class:`EstimateCorrector` learns each model's real size
once it has been loaded; :class:`MemoryBudget` says how much all our runners together may hold.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from enginehouse.engines.llama_memory import MemoryEstimate, MiB

__all__ = ["EstimateCorrector", "MemoryBudget", "MemoryEstimate", "MiB", "available_memory", "measure_rss"]


def _proc_status_kib(pid: int, field_name: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            parts = line.split()
            return int(parts[1]) * 1024 if len(parts) > 1 and parts[1].isdigit() else 0
    return 0


def measure_rss(pid: int, *, peak: bool = False) -> int:
    """Resident bytes of ``pid`` now (VmRSS), or its high-water mark (VmHWM) with ``peak``; 0 when
    unknown (not Linux, or the process is gone).

    Take it after the runner has served a request (or use ``peak``): llama.cpp's compute buffer only
    becomes resident once used. RSS counts the mmapped weights, which two runners of one file share.
    """
    return _proc_status_kib(pid, "VmHWM" if peak else "VmRSS")


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Bytes the system can give without swapping: MemAvailable (Linux), else free physical pages."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


@dataclass
class MemoryBudget:
    """What all of our runners together may hold, loaded ones and the one about to load included.

    ``available(resident)`` = min(cap, free() + sum(resident) - reserve), where ``resident`` is what
    each loaded runner holds now (measured RSS, or its estimate before one was taken): their memory is
    not free, but it would be if we stopped them. Compare it with the sum of the estimates of the
    runners that stay plus the new one; an estimate above a runner's RSS then reserves its growth.
    ``reserve`` leaves room for the gateway and the rest of the system.
    """

    cap_bytes: int | None = None
    reserve_bytes: int = 512 * MiB
    free: Callable[[], int] = field(default=available_memory)

    def available(self, resident: Iterable[int] = ()) -> int:
        total = max(0, self.free() + sum(resident) - self.reserve_bytes)
        return total if self.cap_bytes is None else min(self.cap_bytes, total)


@dataclass
class EstimateCorrector:
    """Learns, per model, how far the estimate was from the runner's measured size.

    The KV-cache term is exact and the prompt cache a bound the runner fills slowly, so the ratio is
    taken over the rest: ``ratio = (measured - kv) / (weights + compute + overhead)``, clamped to
    [low, high] so one odd measurement (a runner caught mid-load, a shared page cache) cannot make a
    model look free or enormous. Later estimates of the same model, at any context size, scale that
    part by the ratio. A repeated observation is averaged with the previous ratio.
    """

    low: float = 0.5
    high: float = 3.0
    ratios: dict[str, float] = field(default_factory=dict)

    def observe(self, key: str, estimate: MemoryEstimate, measured: int) -> float | None:
        """Record a measurement (bytes); returns the ratio now used, None when it was unusable."""
        rest = _modelled(estimate)
        if measured <= 0 or rest <= 0:
            return None
        ratio = min(self.high, max(self.low, (measured - estimate.kv_cache) / rest))
        if key in self.ratios:
            ratio = (self.ratios[key] + ratio) / 2
        self.ratios[key] = ratio
        return ratio

    def correct(self, key: str, estimate: MemoryEstimate) -> int:
        """The corrected total in bytes (the plain total for a model never measured)."""
        ratio = self.ratios.get(key)
        if ratio is None:
            return estimate.total
        return estimate.total - _modelled(estimate) + round(_modelled(estimate) * ratio)


def _modelled(e: MemoryEstimate) -> int:
    """The terms that are approximations (the rest are exact or bounds set by configuration)."""
    return e.weights + e.compute + e.overhead
