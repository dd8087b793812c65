"""The request path every door shares, from a canonical call to the relayed answer.

    door: wire -> call  ->  plan (routing)  ->  for each candidate: cache, lease (scheduler),
    prepare (the model's defaults and template), engine.stream -> events  ->  relay -> door: events -> wire

A door supplies its call, its encoder and its endpoint name; it never asks which engine answers. Where
the client's dialect is one the engine takes as it comes, the door forwards the body instead
(:func:`forward`) and the relay streams the engine's bytes back.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from enginehouse.api.prepare import ModelFacts, Prepared, prepare_chat, prepare_completion
from enginehouse.api.thinking import ThinkingStep
from enginehouse.api.toolcalls import ToolCallStep
from enginehouse.canonical import Call, ChatCall, CompletionCall, Step
from enginehouse.engines.base import Engine, RunnerSpec
from enginehouse.engines.upstream import EngineAnswer
from enginehouse.routing.dispatch import Outcome
from enginehouse.routing.plan import Plan
from enginehouse.sched.scheduler import Lease
from enginehouse.server.app_state import GATEWAY, VIA, engine_takes_tools, note_header
from enginehouse.server.observe import note_model, observe_generation
from enginehouse.server.relay import Encoder, relay_events
from enginehouse.store import ModelRecord

Attempt = Callable[[str, Outcome], Awaitable[web.StreamResponse]]


async def plan_request(request: web.Request, call: Call) -> Plan:
    return await request.app[GATEWAY].dispatch.plan_for(call, request.headers.get(VIA, ""))


async def routed(request: web.Request, plan: Plan, attempt: Attempt) -> web.StreamResponse:
    """Each candidate of the plan in turn; the response's headers say what routing did."""

    async def each(name: str, outcome: Outcome) -> web.StreamResponse:
        if outcome.route:
            note_header(request, "X-Enginehouse-Route", outcome.route)
        note_header(request, "X-Enginehouse-Model", outcome.model)
        if fallbacks := outcome.fallbacks:
            note_header(request, "X-Enginehouse-Fallback", fallbacks)
        return await attempt(name, outcome)

    return await request.app[GATEWAY].dispatch.run(plan, each)


def link_headers(request: web.Request, engine: Engine) -> dict[str, str] | None:
    """The loop guard's header for an engine that is another node: the nodes passed, this one last."""
    if not engine.forwards:
        return None
    via, own = request.headers.get(VIA), request.app[GATEWAY].node_id
    return {VIA: f"{via},{own}" if via else own}


def facts_for(request: web.Request, record: ModelRecord) -> ModelFacts:
    entry = request.app[GATEWAY].scheduler.entry(record.name.display)
    return ModelFacts(
        params=record.params,
        system=record.system,
        template=record.template,
        engine_tools=engine_takes_tools(request, record),
        tool_choice=entry.tool_choice,
    )


def prepare(call: ChatCall | CompletionCall, facts: ModelFacts) -> Prepared:
    return prepare_chat(call, facts) if isinstance(call, ChatCall) else prepare_completion(call, facts)


async def run_generation(
    request: web.Request,
    door: str,
    lease: Lease,
    prepared: Prepared,
    encoder: Encoder,
    outcome: Outcome,
    step: Step | None = None,
) -> web.StreamResponse:
    """One generation on a leased engine, relayed in the door's shape. ``step``: the door's own
    step over the events, after the tool calls are split out (e.g. Anthropic's stop sequences)."""
    engine = lease.model.engine
    sent = time.monotonic()
    answer = await engine.stream(prepared.call, request.app[GATEWAY].upstream, link_headers(request, engine))
    if prepared.thinking is not None:  # a Go template's model thinks in its text, between tags
        answer = answer.through(ThinkingStep(prepared.thinking, prepared.thinking_open))
    if prepared.tools is not None:  # a Go template's calls come back as text, written its way
        answer = answer.through(ToolCallStep(prepared.tools, prepared.forced))
    if step is not None:
        answer = answer.through(step)
    response = await relay_events(request, answer, encoder, outcome, prepared.call.stream)
    observe_generation(request, door, lease, encoder.tally, sent)
    return response


async def forward(
    request: web.Request, lease: Lease, path: str, body: dict[str, Any] | bytes
) -> EngineAnswer:
    """A client's body to the leased engine as it is (the dialects agree)."""
    engine = lease.model.engine
    return await engine.forward(path, body, request.app[GATEWAY].upstream, link_headers(request, engine))


@contextlib.asynccontextmanager
async def lease_for(
    request: web.Request,
    name: str,
    keep_alive: float | None = None,
    spec: RunnerSpec | None = None,
    record: ModelRecord | None = None,
) -> AsyncIterator[Lease]:
    """The scheduler's lease on ``name``, noted on the request for the metrics."""
    async with request.app[GATEWAY].scheduler.acquire(name, keep_alive, spec, record) as lease:
        note_model(request, lease)
        yield lease
