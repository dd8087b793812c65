"""Choosing the replica that serves a request.

A replica is *eligible* unless it is draining, listed in ``exclude`` (already tried by this request) or
cooled down by :class:`~enginehouse.routing.health.Health`. Among the eligible ones:

``round-robin``
    each in turn.
``least-outstanding`` (the default)
    the fewest requests in flight per slot (``in_flight / slots``); ties go round-robin, so that idle
    replicas share the load instead of the first one taking every request.
``prefix`` (prefix-aware affinity)
    the prompt text is cut into blocks of ``prefix_block`` characters (256, about 64 tokens); only whole
    blocks count. A block's key hashes the block chained onto the key of the block before it, so one key
    stands for the whole text up to the end of its block, as in a paged or radix KV cache. ``start``
    records in an LRU table of ``table_size`` keys (8192) which replicas served each key, most recent
    first. The replica holding the longest matching prefix is picked (ties: the least outstanding),
    unless its ``in_flight`` exceeds the smallest ``in_flight`` among the eligible replicas by more than
    ``affinity_slack`` (default: ``max(2, that replica's slots)``): then least-outstanding decides, as it
    does for a prompt shorter than one block or one that matches nothing. Affinity pays off because
    llama-server reuses a slot's (or its ``--cache-ram``) KV cache for a prompt that starts the same,
    so a conversation's next turn on the same replica skips most of its prompt processing; the slack
    keeps one hot conversation from queueing on one replica while the others idle.

``order`` gives the failover order: the pick first, then the rest by the same rule applied to those
left. ``pick`` and ``order`` each count as one choice for the round-robin rotation.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from enginehouse.routing.health import Health

STRATEGIES = ("round-robin", "least-outstanding", "prefix")
PREFIX_BLOCK = 256  # characters
TABLE_SIZE = 8192  # block keys remembered (a few hundred bytes each)
_MAX_HOLDERS = 8  # replicas remembered per block key


@dataclass
class Replica:
    name: str  # e.g. "local", "node-b", or a URL
    in_flight: int = 0  # requests outstanding to it (the caller's, or Balancer.start/finish)
    draining: bool = False
    slots: int = 1  # parallel slots it has (weights busyness)


def block_keys(text: str, block: int = PREFIX_BLOCK) -> list[bytes]:
    """One chained key per whole block of ``text``: key i stands for ``text[: (i + 1) * block]``."""
    keys: list[bytes] = []
    prev = b""
    for end in range(block, len(text) + 1, block):
        piece = text[end - block : end].encode("utf-8", "surrogatepass")
        prev = hashlib.blake2b(prev + piece, digest_size=8).digest()
        keys.append(prev)
    return keys


def chat_prompt(messages: Iterable[Mapping[str, Any]]) -> str:
    """A chat's text for prefix affinity: roles and texts in order, so a later turn's text extends an
    earlier turn's (the chat template is the engine's business; only the order of the text matters)."""
    parts: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):  # OpenAI content parts; images are not text and are left out
            content = "".join(p.get("text") or "" for p in content if isinstance(p, Mapping))
        parts.append(f"{message.get('role', '')}\n{content or ''}\n")
    return "".join(parts)


class Balancer:
    def __init__(
        self,
        replicas: Sequence[Replica],
        strategy: str = "least-outstanding",
        *,
        health: Health | None = None,
        prefix_block: int = PREFIX_BLOCK,
        affinity_slack: int | None = None,
        table_size: int = TABLE_SIZE,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown balancing strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
        if prefix_block < 1 or table_size < 1 or (affinity_slack is not None and affinity_slack < 0):
            raise ValueError("prefix_block and table_size must be >= 1, affinity_slack >= 0")
        if len({r.name for r in replicas}) != len(replicas):
            raise ValueError("replica names must be unique")
        self.replicas = list(replicas)
        self.strategy = strategy
        self.health = health
        self.prefix_block = prefix_block
        self.affinity_slack = affinity_slack
        self.table_size = table_size
        self._next = 0  # rotation cursor: round-robin, and ties of least-outstanding
        self._table: OrderedDict[bytes, tuple[str, ...]] = OrderedDict()

    def pick(self, prompt: str | None = None, exclude: Collection[str] = ()) -> Replica | None:
        """The replica to send to, or None when none is eligible."""
        chosen = self._rank(prompt, exclude, first_only=True)
        return chosen[0] if chosen else None

    def order(self, prompt: str | None = None, exclude: Collection[str] = ()) -> list[Replica]:
        """Every eligible replica, in failover order."""
        return self._rank(prompt, exclude, first_only=False)

    def start(self, replica: Replica, prompt: str | None = None) -> None:
        """A request goes to ``replica``: count it, and remember that it now holds the prompt's prefix."""
        replica.in_flight += 1
        if self.health is not None:
            self.health.begin(replica.name)
        if self.strategy == "prefix" and prompt:
            self._remember(replica.name, block_keys(prompt, self.prefix_block))

    def remember(self, replica: Replica, prompt: str | None) -> None:
        """Only the affinity half of :meth:`start`: for callers that count in-flight requests and
        report health themselves (the gateway's scheduler and dispatcher)."""
        if self.strategy == "prefix" and prompt:
            self._remember(replica.name, block_keys(prompt, self.prefix_block))

    def finish(self, replica: Replica, ok: bool, reason: str = "") -> None:
        replica.in_flight = max(0, replica.in_flight - 1)
        if self.health is None:
            return
        if ok:
            self.health.success(replica.name)
        else:
            self.health.failure(replica.name, reason or "failed")

    def forget(self, name: str) -> None:
        """Drop a replica's affinity (it restarted and lost its caches, or left the pool)."""
        for key in list(self._table):
            holders = tuple(h for h in self._table[key] if h != name)
            if holders:
                self._table[key] = holders
            else:
                del self._table[key]

    def eligible(self, exclude: Collection[str] = ()) -> list[Replica]:
        return [
            r
            for r in self.replicas
            if not r.draining
            and r.name not in exclude
            and (self.health is None or self.health.available(r.name))
        ]

    def _rank(self, prompt: str | None, exclude: Collection[str], first_only: bool) -> list[Replica]:
        left = self.eligible(exclude)
        if not left:
            return []
        n = len(self.replicas)
        index = {r.name: i for i, r in enumerate(self.replicas)}
        cursor = self._next

        def ring(r: Replica) -> int:
            return (index[r.name] - cursor) % n

        def lo_key(r: Replica) -> tuple[float, int]:
            return (r.in_flight / max(r.slots, 1), ring(r))

        depth: dict[str, int] = {}
        if self.strategy == "prefix" and prompt:
            depth = self._depths(block_keys(prompt, self.prefix_block))
        out: list[Replica] = []
        while left:
            if self.strategy == "round-robin":
                best = min(left, key=ring)
            elif depth:
                best = self._affine(left, depth, lo_key)
            else:
                best = min(left, key=lo_key)
            out.append(best)
            if first_only:
                break
            left.remove(best)
        self._next = (index[out[0].name] + 1) % n
        return out

    def _affine(
        self, left: list[Replica], depth: dict[str, int], lo_key: Callable[[Replica], tuple[float, int]]
    ) -> Replica:
        held = [r for r in left if depth.get(r.name, 0) > 0]
        if held:
            best = min(held, key=lambda r: (-depth[r.name], *lo_key(r)))
            slack = self.affinity_slack if self.affinity_slack is not None else max(2, best.slots)
            if best.in_flight - min(r.in_flight for r in left) <= slack:
                return best
        return min(left, key=lo_key)

    def _depths(self, keys: list[bytes]) -> dict[str, int]:
        """For each replica, how many leading blocks of the prompt it was last seen to hold."""
        depth: dict[str, int] = {}
        for i, key in enumerate(keys, 1):
            for name in self._table.get(key, ()):
                depth[name] = i
        return depth

    def _remember(self, name: str, keys: list[bytes]) -> None:
        # Deepest first, so the shared root blocks end up most recent and are evicted last.
        for key in reversed(keys):
            holders = self._table.pop(key, ())
            self._table[key] = (name, *(h for h in holders if h != name))[:_MAX_HOLDERS]
        while len(self._table) > self.table_size:
            self._table.popitem(last=False)
