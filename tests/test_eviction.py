"""The eviction policy, rule by rule, as tables (sizes in MiB)."""

from __future__ import annotations

import random

import pytest

from enginehouse.sched.eviction import (
    Candidate,
    EvictionPlan,
    Fits,
    NeverFits,
    Wait,
    evict_for,
    eviction_order,
)

MiB = 1 << 20


def c(
    key: str, mib: int, last: float = 0.0, *, busy: int = 0, pinned: bool = False, **kw: object
) -> Candidate:
    return Candidate(key, mib * MiB, in_flight=busy, pinned=pinned, last_used=last, **kw)  # type: ignore[arg-type]


def summary(plan: EvictionPlan) -> tuple[object, ...]:
    if isinstance(plan, Fits):
        return ("fits", plan.evict)
    if isinstance(plan, Wait):
        return ("wait", plan.evict, plan.wait_for)
    return ("never",)


T = c("T", 4)  # the usual target: 4 MiB

CASES = [
    # id, target, loaded, budget MiB, expected
    ("empty table", T, [], 10, ("fits", ())),
    ("fits beside the others", T, [c("A", 3, 1), c("B", 3, 2)], 10, ("fits", ())),
    ("exactly fills the budget", T, [c("A", 6, 1)], 10, ("fits", ())),
    ("least recently used goes", T, [c("A", 4, 2), c("B", 4, 1)], 10, ("fits", ("B",))),
    ("tie on last use: larger first", T, [c("A", 4, 1), c("B", 5, 1)], 10, ("fits", ("B",))),
    ("tie on use and size: by key", T, [c("B", 4, 1), c("A", 4, 1)], 10, ("fits", ("A",))),
    ("two must go, oldest first", T, [c("A", 3, 1), c("B", 3, 2), c("C", 3, 3)], 8, ("fits", ("A", "B"))),
    ("unpinned before an older pinned", T, [c("P", 4, 1, pinned=True), c("A", 4, 2)], 10, ("fits", ("A",))),
    ("pinned as a last resort", T, [c("P", 8, 1, pinned=True)], 10, ("fits", ("P",))),
    ("idle before an older busy", T, [c("B", 4, 1, busy=1), c("A", 4, 2)], 10, ("fits", ("A",))),
    ("busy but not needed: untouched", T, [c("B", 4, 1, busy=3)], 10, ("fits", ())),
    ("only a busy one can make room", T, [c("B", 8, 1, busy=2)], 10, ("wait", ("B",), ("B",))),
    (
        "busy unpinned before idle pinned",
        T,
        [c("P", 7, 1, pinned=True), c("B", 7, 2, busy=1)],
        14,
        ("wait", ("B",), ("B",)),
    ),
    ("pinned and busy: wait", T, [c("P", 8, 1, pinned=True, busy=1)], 10, ("wait", ("P",), ("P",))),
    ("no more than needed: small old one kept", T, [c("A", 1, 1), c("B", 6, 2)], 8, ("fits", ("B",))),
    (
        "keep the later-preferred when one suffices",
        T,
        [c("A", 1, 1), c("B", 2, 2), c("C", 6, 3)],
        7,
        ("fits", ("C",)),
    ),
    ("idle victim plus a busy one", T, [c("A", 3, 1), c("B", 3, 2, busy=1)], 6, ("wait", ("A", "B"), ("B",))),
    (
        "mixed: unpinned idle, unpinned busy, pinned idle",
        T,
        [c("P", 3, 0, pinned=True), c("B", 3, 1, busy=1), c("A", 3, 2)],
        8,
        ("wait", ("A", "B"), ("B",)),
    ),
    ("larger than the budget", c("T", 11), [], 10, ("never",)),
    ("larger than the budget, table irrelevant", c("T", 11), [c("A", 1)], 10, ("never",)),
    (
        "as large as the budget: everyone goes",
        c("T", 10),
        [c("A", 1, 1), c("P", 1, 0, pinned=True)],
        10,
        ("fits", ("A", "P")),
    ),
    ("the runner being replaced is ignored", T, [c("T", 8, 1, busy=1), c("A", 2, 2)], 10, ("fits", ())),
    # exclusive groups
    (
        "exclusive: member goes though memory suffices",
        c("T", 1, group="g", exclusive_group=True),
        [c("G", 1, 5, group="g"), c("A", 1, 1)],
        100,
        ("fits", ("G",)),
    ),
    (
        "exclusive marked on the loaded member",
        c("T", 1, group="g"),
        [c("G", 1, 5, group="g", exclusive_group=True)],
        100,
        ("fits", ("G",)),
    ),
    ("same group, not exclusive: stays", c("T", 1, group="g"), [c("G", 1, group="g")], 100, ("fits", ())),
    (
        "exclusive, other group untouched",
        c("T", 1, group="g", exclusive_group=True),
        [c("H", 1, group="h", exclusive_group=True)],
        100,
        ("fits", ()),
    ),
    (
        "exclusive member busy: wait",
        c("T", 1, group="g", exclusive_group=True),
        [c("G", 1, group="g", busy=1)],
        100,
        ("wait", ("G",), ("G",)),
    ),
    (
        "exclusive pinned member still goes",
        c("T", 1, group="g", exclusive_group=True),
        [c("G", 1, group="g", pinned=True)],
        100,
        ("fits", ("G",)),
    ),
    (
        "exclusive eviction frees the room",
        c("T", 4, group="g", exclusive_group=True),
        [c("A", 4, 1), c("G", 4, 9, group="g")],
        8,
        ("fits", ("G",)),
    ),
    (
        "exclusive members first, then memory",
        c("T", 4, group="g", exclusive_group=True),
        [c("A", 4, 1), c("B", 4, 2), c("G", 2, 9, group="g")],
        8,
        ("fits", ("G", "A")),
    ),
]


@pytest.mark.parametrize(
    ("target", "loaded", "budget", "expected"), [x[1:] for x in CASES], ids=[x[0] for x in CASES]
)
def test_policy(
    target: Candidate, loaded: list[Candidate], budget: int, expected: tuple[object, ...]
) -> None:
    plan = evict_for(target, loaded, budget * MiB)
    assert summary(plan) == expected
    check_invariants(target, loaded, budget * MiB, plan)


def check_invariants(target: Candidate, loaded: list[Candidate], budget: int, plan: EvictionPlan) -> None:
    others = {x.key: x for x in loaded if x.key != target.key}
    if isinstance(plan, NeverFits):
        assert target.estimate > budget
        return
    kept = [x for k, x in others.items() if k not in plan.evict]
    assert plan.needed == target.estimate + sum(x.estimate for x in kept)
    assert plan.needed <= plan.budget == budget
    assert not any(target.excludes(x) for x in kept)
    if isinstance(plan, Fits):
        assert not any(others[k].busy for k in plan.evict)
    else:
        assert plan.wait_for == tuple(k for k in plan.evict if others[k].busy) != ()
    # Only as many as needed: no memory victim could have been kept.
    for k in plan.evict:
        if not target.excludes(others[k]):
            assert plan.needed + others[k].estimate > budget, f"{k} was evicted for nothing"


def test_never_fits_message_names_both_numbers() -> None:
    plan = evict_for(c("big:70b", 40_000), [], 24_000 * MiB)
    assert isinstance(plan, NeverFits)
    assert (plan.needed, plan.budget) == (40_000 * MiB, 24_000 * MiB)
    assert "big:70b" in plan.message and "40,000 MiB" in plan.message and "24,000 MiB" in plan.message


def test_wait_message_names_the_busy_models() -> None:
    plan = evict_for(T, [c("busy:1b", 8, busy=1)], 10 * MiB)
    assert isinstance(plan, Wait) and "busy:1b" in plan.message


def test_eviction_order() -> None:
    table = [
        c("pinned-busy", 1, 0, pinned=True, busy=1),
        c("pinned-idle", 1, 5, pinned=True),
        c("busy", 1, 0, busy=1),
        c("idle-new", 1, 9),
        c("idle-old", 1, 1),
    ]
    assert [x.key for x in sorted(table, key=eviction_order)] == [
        "idle-old",
        "idle-new",
        "busy",
        "pinned-idle",
        "pinned-busy",
    ]


def test_excludes_is_symmetric_and_not_reflexive() -> None:
    a, b = c("a", 1, group="g", exclusive_group=True), c("b", 1, group="g")
    assert a.excludes(b) and b.excludes(a)
    assert not a.excludes(a)
    assert not c("x", 1).excludes(c("y", 1))  # no group: never exclusive


@pytest.mark.parametrize("seed", range(200))
def test_random_tables_keep_the_invariants(seed: int) -> None:
    rng = random.Random(seed)
    loaded = [
        c(
            f"m{i}",
            rng.randint(1, 8),
            rng.choice([0.0, 1.0, 2.0, float(i)]),
            busy=rng.choice([0, 0, 0, 1, 2]),
            pinned=rng.random() < 0.25,
            group=rng.choice([None, "g", "h"]),
            exclusive_group=rng.random() < 0.3,
        )
        for i in range(rng.randint(0, 7))
    ]
    target = c("T", rng.randint(1, 12), group=rng.choice([None, "g"]), exclusive_group=rng.random() < 0.5)
    budget = rng.randint(4, 30) * MiB
    plan = evict_for(target, loaded, budget)
    check_invariants(target, loaded, budget, plan)
    if target.estimate <= budget:  # within the budget, it always fits once the plan is carried out
        assert not isinstance(plan, NeverFits)
