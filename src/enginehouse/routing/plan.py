"""Which models may answer a request, in the order to try them: one :class:`Plan` per request.

A name a client sends becomes candidates like this:

- an alias is followed (the engine never sees it; the response still says the asked name);
- a router (``auto``, or a ``[routers.NAME]``) classifies the request, takes the route's candidates,
  drops those that are not installed, cannot fit or are cooled down, and orders the rest by
  ``prefer``: ``latency`` (default) by :attr:`~enginehouse.sched.scheduler.Placement.cost` (a
  loaded candidate with a free slot costs nothing, an unloaded one its load time plus the reload of
  what it would evict), ``quality`` in the route's order. The route's ``fallbacks`` follow;
- a model with named instances and a request ``num_ctx``: the smallest instance whose context fits
  (a loaded one first among equals), so no runner reloads for a bigger context when another
  instance has it;
- each candidate is followed by its own ``fallbacks`` (transitively; the config has no cycles).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from enginehouse.routing.classify import Decision
from enginehouse.sched.scheduler import Placement


@dataclass
class Plan:
    asked: str  # the name the client sent
    candidates: tuple[str, ...]  # model names, in the order to try them
    router: str | None = None
    decision: Decision | None = None
    why: str = ""  # why the first candidate
    placements: dict[str, Placement] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (candidate, why not)
    # pool members -> (balancer, replica, prompt text): in-flight counts and prefix affinity
    replicas: dict[str, tuple[Any, Any, str | None]] = field(default_factory=dict)
    prompt: Callable[[], str] | None = None  # the request's whole text, for prefix-aware pools
    via: str = ""  # X-Enginehouse-Via: the nodes the request passed
    elapsed_ms: float = 0.0

    @property
    def route(self) -> str | None:
        return self.decision.route if self.decision else None

    @property
    def route_header(self) -> str | None:
        """``x-enginehouse-route``: ``router/route (tier)``."""
        if self.decision is None:
            return None
        return f"{self.decision.router}/{self.decision.route} ({self.decision.tier})"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = self.decision.to_dict() if self.decision else {"router": None, "route": None}
        out.update(
            asked=self.asked,
            chosen=self.candidates[0] if self.candidates else None,
            order=list(self.candidates),
            why=self.why,
            costs={
                name: {
                    "loaded": p.loaded,
                    "free_slots": p.free_slots,
                    "cost_s": round(p.cost, 3),
                    "evicts": list(p.evicts),
                }
                for name, p in self.placements.items()
            },
            skipped=[{"candidate": c, "why": w} for c, w in self.skipped],
            decision_ms=round(self.elapsed_ms, 3),
        )
        return out


def describe(name: str, p: Placement) -> str:
    if p.loaded:
        return (
            f"{name} is loaded with {p.free_slots} free slot(s)"
            if p.free_slots
            else f"{name} is loaded, busy"
        )
    text = f"{name} would load (~{p.load_seconds:.1f} s)"
    if p.evicts:
        text += f", evicting {', '.join(p.evicts)}"
    if p.waits_for:
        text += f", after {', '.join(p.waits_for)} drain"
    return text


def order_by_cost(candidates: list[tuple[str, Placement]], prefer: str) -> list[tuple[str, Placement]]:
    """``quality``: the route's order; ``latency``: cheapest first, the route's order among equals."""
    if prefer == "quality":
        return candidates
    return sorted(candidates, key=lambda c: c[1].cost)  # stable: ties keep the route's order
