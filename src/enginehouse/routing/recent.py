"""The last routing decisions, with their reasons, for ``GET /api/route/recent`` (the console shows them).

A small bounded ring per dispatcher (several gateways may share a process, in tests), filled by ONE call:
``record(self, plan)`` at the end of :meth:`Dispatcher.plan` for a router's decision. Recording copies
``plan.to_dict()`` (a few hundred bytes) into a deque, so a router's request pays microseconds; plain
model names are not recorded (their "decision" is the name itself).
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from enginehouse.routing.plan import Plan

#: Decisions kept per dispatcher: enough for a screen of history, bounded whatever the traffic.
KEEP = 100

_rings: weakref.WeakKeyDictionary[object, deque[dict[str, Any]]] = weakref.WeakKeyDictionary()


def record(owner: object, plan: Plan) -> None:
    """Remember ``plan``'s decision under ``owner`` (the dispatcher that made it)."""
    ring = _rings.get(owner)
    if ring is None:
        ring = _rings[owner] = deque(maxlen=KEEP)
    ring.append({"at": time.time(), **plan.to_dict()})


def recent(owner: object, limit: int = KEEP) -> list[dict[str, Any]]:
    """The last ``limit`` decisions made under ``owner``, newest first."""
    ring = _rings.get(owner)
    if not ring or limit <= 0:
        return []
    items = list(ring)[-limit:]
    items.reverse()
    return items
