"""The pure parts of routing: which errors fall through to the next candidate, cost order, pool names."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from enginehouse.engines.base import Engine
from enginehouse.engines.llama_server import LlamaServerEngine
from enginehouse.engines.openai_remote import RemoteEngine
from enginehouse.engines.upstream import raise_for_engine
from enginehouse.errors import (
    AllCandidatesFailed,
    ContextOverflow,
    DeadlineExceeded,
    EngineRefused,
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
from enginehouse.routing.dispatch import Outcome, fallthrough
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
        (EngineRefused("template threw"), ("engine-error", False)),  # the engine is up: the request failed
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


@pytest.mark.parametrize(
    ("exc", "counts"),
    [
        (RunnerError("the engine closed the stream early"), True),  # the runner died mid-answer
        (EngineRefused("Context size has been exceeded."), False),  # its own error event, alive
        (DeadlineExceeded("ran past its deadline"), False),  # a long request, not a broken engine
    ],
)
def test_a_failure_after_the_first_byte_counts_only_when_it_says_the_engine_broke(
    exc: RunnerError | DeadlineExceeded, counts: bool
) -> None:
    outcome = Outcome()
    outcome.fail(exc)
    assert outcome.failed == exc.message and outcome.failed_counts is counts


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


class _Answer:
    """An engine's error answer, as the engine clients give it (status line and body)."""

    def __init__(self, status: int, message: str) -> None:
        self.status, self.reason, self._body = status, None, orjson.dumps({"error": {"message": message}})

    async def read(self) -> bytes:
        return self._body


@pytest.mark.parametrize(
    ("engine", "status", "raised"),
    [
        (LlamaServerEngine, 500, EngineRefused),  # a runner the gateway watches: its 500 is the request's
        (LlamaServerEngine, 503, RunnerError),
        (RemoteEngine, 500, RunnerError),  # a server we cannot watch: its 500 may mean it is broken
        (RemoteEngine, 400, InvalidRequest),
    ],
)
def test_what_an_engines_error_answer_raises(engine: type[Engine], status: int, raised: type) -> None:
    with pytest.raises(raised) as caught:
        asyncio.run(raise_for_engine(_Answer(status, "Failed to load image"), engine.refused))
    assert type(caught.value) is raised and caught.value.message == "Failed to load image"
