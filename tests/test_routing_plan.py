"""The pure parts of routing: which errors fall through to the next candidate, cost order, pool names."""

from __future__ import annotations

import pytest

from enginehouse.errors import (
    AllCandidatesFailed,
    ContextOverflow,
    InsufficientMemory,
    InvalidRequest,
    LoopDetected,
    ModelNotFound,
    RunnerError,
    RunnerStartFailed,
    ServerBusy,
    UpstreamUnavailable,
    openai_error_body,
)
from enginehouse.routing.dispatch import fallthrough
from enginehouse.routing.plan import describe, order_by_cost
from enginehouse.routing.pools import node_of
from enginehouse.sched.scheduler import Placement


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ContextOverflow("too long"), ("context", False)),
        (InsufficientMemory("no"), ("no-fit", False)),
        (RunnerStartFailed("died"), ("start-failed", True)),
        (UpstreamUnavailable("refused"), ("unreachable", True)),
        (RunnerError("500"), ("engine-error", True)),
        (ServerBusy(), ("busy", False)),
        (ModelNotFound("x"), ("not-found", False)),
        (LoopDetected("loop"), ("loop", False)),
        (TimeoutError(), ("timeout", True)),
        (InvalidRequest("bad field"), None),  # the client's own: no other model does better
        (ValueError("bug"), None),
    ],
)
def test_what_falls_through_and_what_counts_against_health(exc: BaseException, expected: object) -> None:
    assert fallthrough(exc) == expected


def test_latency_orders_by_cost_and_quality_keeps_the_route_order() -> None:
    cold = Placement("a", False, 0, 3.0, evicts=("c",))
    busy = Placement("b", True, 0, 0.0)
    free = Placement("d", True, 2, 0.0)
    route = [("a", cold), ("b", busy), ("d", free)]
    assert [n for n, _ in order_by_cost(route, "latency")] == ["d", "b", "a"]
    assert [n for n, _ in order_by_cost(route, "quality")] == ["a", "b", "d"]
    assert describe("a", cold) == "a would load (~3.0 s), evicting c"
    assert describe("d", free) == "d is loaded with 2 free slot(s)"
    assert busy.cost == 0.5 and free.cost == 0.0


def test_pool_member_names() -> None:
    assert node_of("smollm2:135m@b") == "b" and node_of("smollm2:135m") == "local"
    assert node_of("user@host/model:tag@gpu-1") == "gpu-1"


def test_errors_have_their_dialects_codes() -> None:
    body = openai_error_body(AllCandidatesFailed("every candidate failed", [("a", "no-fit")]))
    assert body["error"]["code"] == "all_candidates_failed" and body["error"]["type"] == "server_error"
    assert openai_error_body(ContextOverflow("long"))["error"]["code"] == "context_length_exceeded"
    assert LoopDetected("x").status == 508 and AllCandidatesFailed("x", []).status == 503
