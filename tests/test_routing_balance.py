"""Balancer: the three strategies, drain, exclusion (failover), health ejection and re-admission,
prefix affinity (hit, miss, slack) and the bound on its table."""

from __future__ import annotations

import random
from typing import Any

import pytest

from enginehouse.routing.balance import Balancer, Replica, block_keys, chat_prompt
from enginehouse.routing.health import Health


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def pool(n: int = 3, **kw: Any) -> tuple[Balancer, list[Replica]]:
    replicas = [Replica(name) for name in "abcdefgh"[:n]]
    return Balancer(replicas, **kw), replicas


def picked(bal: Balancer, **kw: Any) -> str:
    r = bal.pick(**kw)
    assert r is not None
    return r.name


def names(replicas: list[Replica]) -> list[str]:
    return [r.name for r in replicas]


def doc(seed: int, blocks: int = 8) -> str:
    """A conversation's text: distinct from the first block on, `blocks` whole blocks of 256 characters."""
    return "".join(f"[{seed}:{i}]".ljust(256, ".") for i in range(blocks))


def test_round_robin_skips_drained_and_excluded() -> None:
    bal, (_, b, c) = pool(strategy="round-robin")
    assert [picked(bal) for _ in range(4)] == ["a", "b", "c", "a"]
    b.draining = True
    assert [picked(bal) for _ in range(3)] == ["c", "a", "c"]
    assert bal.pick(exclude={"a"}) is c
    assert names(bal.order(exclude={"c"})) == ["a"]


def test_least_outstanding_stays_within_one_under_random_start_finish() -> None:
    bal, replicas = pool()
    rng = random.Random(7)
    outstanding: list[Replica] = []
    for _ in range(2000):
        # Ramp up to 7 requests; then each finish (of a random one) is followed by a start.
        if len(outstanding) == 7:
            bal.finish(outstanding.pop(rng.randrange(len(outstanding))), ok=True)
        chosen = bal.pick()
        assert chosen is not None
        bal.start(chosen)
        outstanding.append(chosen)
        loads = [r.in_flight for r in replicas]
        assert max(loads) - min(loads) <= 1, loads
    assert sum(r.in_flight for r in replicas) == len(outstanding)


def test_every_pick_is_least_loaded_under_random_load() -> None:
    bal, replicas = pool()
    rng = random.Random(11)
    outstanding: list[Replica] = []
    for _ in range(2000):
        if outstanding and rng.random() < 0.5:
            bal.finish(outstanding.pop(rng.randrange(len(outstanding))), ok=True)
            continue
        least = min(r.in_flight for r in replicas)
        chosen = bal.pick()
        assert chosen is not None and chosen.in_flight == least
        bal.start(chosen)
        outstanding.append(chosen)


def test_ties_rotate_so_idle_replicas_share() -> None:
    bal, _ = pool()
    seen = []
    for _ in range(6):
        r = bal.pick()
        assert r is not None
        bal.start(r)
        bal.finish(r, ok=True)  # idle again at once: every pick is a three-way tie
        seen.append(r.name)
    assert seen == ["a", "b", "c", "a", "b", "c"]


def test_slots_weight_busyness() -> None:
    big, small = Replica("big", slots=4), Replica("small", slots=1)
    bal = Balancer([big, small])
    for _ in range(10):
        r = bal.pick()
        assert r is not None
        bal.start(r)
    assert (big.in_flight, small.in_flight) == (8, 2)


def test_drain_and_none_left() -> None:
    bal, (a, b, c) = pool()
    a.in_flight = 5  # a draining replica is never picked, however idle the rest are
    b.draining = True
    assert names(bal.order()) == ["c", "a"]
    a.draining = c.draining = True
    assert bal.pick() is None and bal.order() == []


def test_failover_order_and_exclusion() -> None:
    bal, (a, b, c) = pool()
    a.in_flight, b.in_flight, c.in_flight = 2, 0, 1
    assert names(bal.order()) == ["b", "c", "a"]
    assert bal.pick(exclude={"b"}) is c
    assert names(bal.order(exclude=["b", "c"])) == ["a"]
    assert bal.pick(exclude={"a", "b", "c"}) is None


def test_health_ejects_and_re_admits_with_back_off() -> None:
    clock = Clock()
    health = Health(failures=2, window=30, cooldown=10, clock=clock)
    bal, (a, b) = pool(2, health=health)
    for _ in range(2):
        bal.start(a)
        bal.finish(a, ok=False, reason="timeout")
    assert a.in_flight == 0
    assert [bal.pick() for _ in range(3)] == [b, b, b]
    assert health.cooled()["a"].reason == "timeout"
    clock.now = 10  # cool-down over: half-open, one trial
    assert names(bal.order()) == ["a", "b"]
    bal.start(a)
    assert names(bal.order()) == ["b"]  # a's trial is not answered yet
    bal.finish(a, ok=False, reason="timeout")  # the trial failed: out again, for twice as long
    clock.now = 29.9
    assert bal.pick() is b
    clock.now = 30
    trial = bal.pick()
    assert trial is a
    bal.start(a)
    bal.finish(a, ok=True)
    assert health.state("a") is None
    assert names(bal.order()) == ["b", "a"]  # back in the rotation


def test_all_cooled_gives_none() -> None:
    health = Health(failures=1, clock=Clock())
    bal, (a,) = pool(1, health=health)
    bal.start(a)
    bal.finish(a, ok=False)
    assert bal.pick() is None
    assert health.cooled()["a"].reason == "failed"


def test_affinity_hit_miss_and_short_prompts() -> None:
    bal, (a, b, c) = pool(strategy="prefix")
    first = doc(1)
    r1 = bal.pick(first)
    assert r1 is a
    bal.start(a, first)
    # The same conversation, one turn later, goes back to `a` although b and c are idle.
    assert bal.pick(first + "user\nand then?\n" + "x" * 300) is a
    # Another conversation matches nothing: least-outstanding (b, then c by rotation).
    assert bal.pick(doc(2)) is b
    # Shorter than one block: least-outstanding.
    assert bal.pick(first[:255]) is c
    bal.finish(a, ok=True)
    assert bal.pick(first) is a  # affinity outlives the request


def test_affinity_gives_way_past_the_slack() -> None:
    bal, (a, b) = pool(2, strategy="prefix")
    text = doc(3)
    bal.start(a, text)
    a.in_flight = 3  # b idle: 3 - 0 > max(2, slots=1)
    assert bal.pick(text) is b
    a.in_flight = 2  # exactly the slack: affinity holds
    assert bal.pick(text) is a
    a.slots = 4  # the default slack grows with the holder's slots
    a.in_flight = 4
    assert bal.pick(text) is a
    strict = Balancer([Replica("a", in_flight=1), Replica("b")], "prefix", affinity_slack=0)
    strict.start(strict.replicas[0], text)
    assert strict.pick(text) is strict.replicas[1]


def test_longest_prefix_wins_and_ties_go_to_the_least_loaded() -> None:
    bal, (a, b, _) = pool(strategy="prefix")
    base = doc(4, blocks=4)
    longer = base + doc(5, blocks=4)
    bal.start(a, base)
    bal.start(b, longer)  # b holds 8 blocks of `longer`, a only its first 4
    a.in_flight = b.in_flight = 1
    assert bal.pick(longer + "more") is b
    assert bal.pick(base) in (a, b)
    b.in_flight = 2
    assert bal.pick(base) is a  # both hold all of `base`: the less loaded
    # Failover goes to the next holder before a replica with nothing cached.
    assert names(bal.order(longer)) == ["b", "a", "c"]
    assert bal.pick(longer, exclude={"b"}) is a


def test_affinity_skips_drained_and_cooled_holders() -> None:
    clock = Clock()
    health = Health(failures=1, clock=clock)
    bal, (a, b, c) = pool(strategy="prefix", health=health)
    text = doc(6)
    bal.start(a, text)
    bal.finish(a, ok=True)
    a.draining = True
    assert bal.pick(text) is b
    a.draining = False
    bal.start(a, text)
    bal.finish(a, ok=False)
    assert bal.pick(text) in (b, c)


def test_table_is_a_bounded_lru() -> None:
    bal, (a, b) = pool(2, strategy="prefix", table_size=20)
    old, kept = doc(7), doc(8)  # 8 blocks each
    bal.start(a, old)
    bal.start(b, kept)
    bal.start(b, doc(9, blocks=3))  # 19 keys so far
    bal.start(b, kept)  # touched: most recent
    bal.start(a, doc(10))  # 8 more: the least recent keys go first, deepest before their roots
    assert len(bal._table) == 20
    a.in_flight = b.in_flight = 0
    assert bal.pick(kept) is b
    # `old` lost its 7 deepest blocks but keeps its root: still a (shorter) match on a.
    bal_depth = bal._depths(block_keys(old))
    assert bal_depth == {"a": 1}
    bal.start(a, doc(11, blocks=20))
    assert len(bal._table) == 20 and bal._depths(block_keys(old)) == {}


def test_forget_drops_a_replicas_affinity() -> None:
    bal, (a, b) = pool(2, strategy="prefix")
    text = doc(12)
    bal.start(a, text)
    bal.start(b, text)
    a.in_flight, b.in_flight = 0, 1
    bal.forget("a")
    assert bal.pick(text) is b
    bal.forget("b")
    assert bal._table == {}


def test_block_keys_chain_over_the_prefix() -> None:
    x, y = doc(1, blocks=3), doc(2, blocks=3)
    assert len(block_keys(x + "tail")) == 3  # a partial block has no key
    assert block_keys(x + y)[:3] == block_keys(x)
    # The same block after a different prefix is a different key.
    assert set(block_keys(x + y)[3:]).isdisjoint(block_keys(y + y)[3:])
    assert block_keys("\ud800" * 256)  # lone surrogates do not raise


def test_chat_prompt_extends_turn_by_turn() -> None:
    chat = [{"role": "system", "content": "doc"}, {"role": "user", "content": "q1"}]
    turn1 = chat_prompt(chat)
    chat += [
        {"role": "assistant", "content": None},
        {"role": "user", "content": [{"type": "text", "text": "q2"}, {"type": "image_url"}]},
    ]
    assert chat_prompt(chat).startswith(turn1)
    assert chat_prompt(chat).endswith("user\nq2\n")


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        Balancer([Replica("a")], "random")
    with pytest.raises(ValueError):
        Balancer([Replica("a"), Replica("a")])
