"""Replica pools on the request path: one :class:`~enginehouse.routing.balance.Balancer` per pooled model,
the failover order of its members for each request, drains by hand, and what ``ps`` shows.

A member is a candidate name: ``MODEL`` for this node's own runner, ``MODEL@NODE`` for a replica on an
upstream or another node (see :meth:`enginehouse.catalog.Catalog.pool_members`). Requests are counted
per replica from the pick (the dispatcher increments and decrements ``Replica.in_flight`` around each
attempt), so that a burst of requests spreads before any of them holds an engine's lease; slots stay
1, since a remote replica's are unknown until used.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from enginehouse.routing.balance import Balancer, Replica
from enginehouse.routing.health import Health
from enginehouse.routing.plan import Plan

if TYPE_CHECKING:
    from enginehouse.catalog import Catalog
    from enginehouse.config_file import FileConfig


def node_of(member: str) -> str:
    """The node a pool member runs on: ``MODEL@NODE`` -> NODE; anything else is this node's, "local"."""
    model, at, node = member.rpartition("@")
    return node if at and model else "local"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class Pools:
    def __init__(self, catalog: Catalog, file_config: FileConfig, health: Health) -> None:
        self.catalog = catalog
        self.file_config = file_config
        self.health = health
        self.draining: set[str] = set()  # nodes ("local" for this one) that take no new pool work
        self._balancers: dict[str, Balancer] = {}

    def order(self, name: str, plan: Plan) -> list[str] | None:
        """The pool's members in the order to try them (None: ``name`` is not pooled). Draining ones
        and those on nodes the request already passed are left out; cooled-down ones come last, so
        that a request they would have taken reads why."""
        members = self.catalog.pool_members(name)
        if not members:
            return None
        balancer = self._balancer(name, members)
        passed = set(plan.via.split(",")) if plan.via else set()
        exclude = {m for m in members if self.catalog.node_ids.get(node_of(m), "") in passed}
        for replica in balancer.replicas:  # slots stay 1: a remote replica's are unknown until used
            replica.draining = node_of(replica.name) in self.draining
        text = plan.prompt() if plan.prompt is not None and balancer.strategy == "prefix" else None
        chosen = balancer.order(text, exclude)  # cooled-down, draining and excluded ones left out
        for replica in chosen:
            plan.replicas[replica.name] = (balancer, replica, text)
        cooled = [
            r for r in balancer.replicas if r not in chosen and r.name not in exclude and not r.draining
        ]
        return [r.name for r in (*chosen, *cooled)]

    def members(self) -> list[str]:
        """Every member of every pool seen so far (what the active probes visit)."""
        return [r.name for balancer in self._balancers.values() for r in balancer.replicas]

    def _balancer(self, name: str, members: list[str]) -> Balancer:
        found = self._balancers.get(name)
        if found is not None and [r.name for r in found.replicas] == members:
            return found
        entry = self.file_config.entry(name)
        strategy = (entry.balance if entry is not None else None) or self.file_config.pools.balance
        balancer = Balancer([Replica(m) for m in members], strategy, health=self.health)
        self._balancers[name] = balancer
        return balancer

    def snapshot(self) -> list[dict[str, object]]:
        """Each pool seen so far, for ``ps``."""
        out: list[dict[str, object]] = []
        for name, balancer in self._balancers.items():
            replicas = []
            for r in balancer.replicas:
                state = self.health.state(r.name)
                replicas.append(
                    {
                        "name": r.name,
                        "node": node_of(r.name),
                        "in_flight": r.in_flight,
                        "draining": node_of(r.name) in self.draining,
                        "cooled_until": _iso(state.cooled_until) if state and state.cooled_until else None,
                    }
                )
            out.append({"model": name, "balance": balancer.strategy, "replicas": replicas})
        return out

    def in_flight_on(self, node: str) -> int:
        """Requests in flight on the pool members at ``node`` ("local": this node's own)."""
        total = 0
        for balancer in self._balancers.values():
            total += sum(r.in_flight for r in balancer.replicas if node_of(r.name) == node)
        return total
