"""Which loaded models to stop so that another one fits: a pure policy, no I/O, no clock.

The scheduler knows the models, their sizes and their requests; this module only decides, so every
rule can be tested with a table. The rules, in order:

1. A target larger than the whole budget can never load: :class:`NeverFits`, with both numbers, so
   the user reads why instead of watching a runner die of out-of-memory.
2. Models in the target's exclusive group (same ``group``, either side marked ``exclusive_group``) must
   go even when memory suffices: exclusivity is how a user says "these never run side by side".
3. Otherwise victims are chosen, until the target fits, in this order: unpinned before pinned (a pin
   is a request to stay), idle before busy within each (evicting idle costs nothing now), least
   recently used first, then the larger first (fewer stops), then by key (deterministic).
4. Only as many as needed: after the greedy pass, a victim whose memory turns out not to be needed
   (a later, larger victim freed enough) is kept, checking the ones we would rather keep first.
5. A model with requests in flight is never stopped under them: if the plan needs one, the answer is
   :class:`Wait` for those to drain, then plan again. Because the budget covers everything our runners
   hold, stopping all of them always makes room for a target within the budget, so "cannot fit now"
   is always a wait, never a failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MiB = 1 << 20


def _mib(n: int) -> str:
    return f"{n / MiB:,.0f} MiB"


@dataclass(frozen=True)
class Candidate:
    """A loaded model, or the one about to load, as the policy sees it."""

    key: str
    estimate: int  # bytes it holds (or will): corrected estimate, or measured size
    in_flight: int = 0
    pinned: bool = False  # keep_alive -1 or an explicit pin
    last_used: float = 0.0  # any monotone clock; only the order matters
    group: str | None = None
    exclusive_group: bool = False  # no other member of ``group`` may be loaded beside this one

    @property
    def busy(self) -> bool:
        return self.in_flight > 0

    def excludes(self, other: Candidate) -> bool:
        """Whether the two may not be loaded together (symmetric)."""
        return (
            self.group is not None
            and self.group == other.group
            and self.key != other.key
            and (self.exclusive_group or other.exclusive_group)
        )


@dataclass(frozen=True)
class Fits:
    """Stop ``evict`` (in this order; empty when it fits as it is), then load."""

    evict: tuple[str, ...]
    needed: int  # bytes in use once the target is loaded and the victims are gone
    budget: int


@dataclass(frozen=True)
class Wait:
    """The plan needs models that are serving requests: wait for ``wait_for`` to drain, then plan again.

    ``evict`` is the whole plan as it stands (idle victims included), for logs and ``ps``; nothing
    should be stopped before planning again, since the table may have changed by then.
    """

    evict: tuple[str, ...]
    wait_for: tuple[str, ...]
    needed: int
    budget: int

    @property
    def message(self) -> str:
        return f"waiting for {', '.join(self.wait_for)} to finish their requests to free memory"


@dataclass(frozen=True)
class NeverFits:
    """The target alone is larger than the budget: no eviction can help."""

    key: str
    needed: int
    budget: int

    @property
    def message(self) -> str:
        return (
            f"model {self.key} needs {_mib(self.needed)} of memory but the budget is "
            f"{_mib(self.budget)}; use a smaller quantization or context, or raise the memory cap"
        )


EvictionPlan = Fits | Wait | NeverFits


def eviction_order(candidate: Candidate) -> tuple[bool, bool, float, int, str]:
    """Sort key: the first in this order is the first to stop."""
    return (candidate.pinned, candidate.busy, candidate.last_used, -candidate.estimate, candidate.key)


def evict_for(target: Candidate, loaded: Sequence[Candidate], budget: int) -> EvictionPlan:
    """Plan how to make room for ``target`` among ``loaded`` within ``budget`` bytes.

    ``budget`` is what all our runners together may hold (see ``MemoryBudget.available``). An entry of
    ``loaded`` with the target's key is ignored: that is a runner being replaced, which the caller
    stops anyway.
    """
    if target.estimate > budget:
        return NeverFits(target.key, target.estimate, budget)
    others = [c for c in loaded if c.key != target.key]
    forced = sorted((c for c in others if target.excludes(c)), key=eviction_order)
    rest = sorted((c for c in others if not target.excludes(c)), key=eviction_order)

    used = target.estimate + sum(c.estimate for c in rest)
    victims: list[Candidate] = []
    for c in rest:
        if used <= budget:
            break
        victims.append(c)
        used -= c.estimate
    # Keep any victim whose room turned out not to be needed, the ones we would rather keep first.
    for c in reversed(victims[:-1]):
        if used + c.estimate <= budget:
            victims.remove(c)
            used += c.estimate

    plan = forced + victims
    evict = tuple(c.key for c in plan)
    busy = tuple(c.key for c in plan if c.busy)
    if busy:
        return Wait(evict, busy, used, budget)
    return Fits(evict, used, budget)
