"""Whether a runner fits in the memory budget, and the largest context that would.

:func:`fit_context` is pure: it takes the runner's estimated size as a function of the context per slot
(:func:`enginehouse.engines.llama_memory.estimate_runner` with everything else fixed), the context wanted
and the budget, and searches the contexts llama.cpp would actually allocate (multiples of ``CTX_PAD``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from enginehouse.engines.llama_memory import CTX_PAD, MiB


@dataclass(frozen=True)
class Fit:
    fits: bool  # at the context wanted
    wanted_ctx: int  # tokens per slot the model would get
    ctx_per_slot: int  # wanted_ctx when it fits, else the largest that does (0: none does)
    slots: int
    needed: int  # bytes at wanted_ctx
    budget: int  # bytes
    reason: str

    @property
    def total_ctx(self) -> int:
        return self.ctx_per_slot * self.slots


def _mib(n: int) -> str:
    return f"{n / MiB:,.0f} MiB"


def fit_context(
    estimate: Callable[[int], int],
    *,
    wanted_ctx: int,
    slots: int,
    budget: int,
    step: int = CTX_PAD,
) -> Fit:
    """Does ``estimate(wanted_ctx)`` (bytes) fit in ``budget``? If not, the largest multiple of
    ``step`` below ``wanted_ctx`` that does, by bisection (``estimate`` must grow with the context)."""
    slots = max(1, slots)
    needed = estimate(wanted_ctx)
    shape = f"{slots} slot{'s' if slots != 1 else ''} x {wanted_ctx} tokens"
    if needed <= budget:
        return Fit(
            True,
            wanted_ctx,
            wanted_ctx,
            slots,
            needed,
            budget,
            f"needs {_mib(needed)} of {_mib(budget)} at {shape}",
        )
    lo, hi = 0, max(0, (wanted_ctx - 1) // step)  # in steps: lo fits (0 = nothing), hi+1 does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(mid * step) <= budget:
            lo = mid
        else:
            hi = mid - 1
    best = lo * step
    if best == 0:
        smallest = estimate(step)
        return Fit(
            False,
            wanted_ctx,
            0,
            slots,
            needed,
            budget,
            f"needs {_mib(smallest)} even at {slots} x {step} tokens; only {_mib(budget)} available",
        )
    return Fit(
        False,
        wanted_ctx,
        best,
        slots,
        needed,
        budget,
        f"needs {_mib(needed)} at {shape}, {_mib(budget)} available: fits at {slots} x {best} tokens "
        f"(ENGINEHOUSE_CONTEXT_LENGTH={best}, or fewer slots)",
    )


__all__ = ["Fit", "fit_context"]
