"""Routing on the request path: a :class:`Plan` for each request, then each candidate in turn until one
answers.

A candidate is passed over, and the next one tried, when it fails before the first byte reached the
client: it cannot load (does not fit, its runner fails to start, no engine), its engine refuses the
connection, answers 5xx or times out, its queue is full, or the prompt is longer than its context
(counted by the engine with the model's own tokenizer). A model that is still loading is waited for
(the scheduler's load timeout), not counted as a failure. After the first byte nothing is retried:
the relay ends the stream with an explicit error in the door's dialect and notes it on the request's
:class:`Outcome`, so the failure still counts against the model's health.

Engine failures (start, connection, 5xx, timeout) count in :class:`~enginehouse.routing.health.Health`:
``[cooldown] failures`` of them within ``window`` seconds set the model aside for ``seconds``
(doubling on each repeat), then one trial request decides. The requests one incident fails together
(a runner's death, every request it had in flight) count once. A request whose only candidate is cooled
down gets 503 saying until when.

Requests that name a model directly pay a dictionary look-up or two here, nothing more.

Routing returns decisions, not side effects: a :class:`Plan` for a canonical call, and an
:class:`Outcome` per request that the door turns into headers. Nothing here knows HTTP.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NoReturn, TypeVar

from enginehouse.canonical import Call, EmbedCall
from enginehouse.config_names import routers_of
from enginehouse.engines.base import RunnerSpec
from enginehouse.errors import (
    AllCandidatesFailed,
    ContextOverflow,
    EnginehouseError,
    EngineNotInstalled,
    EngineRefused,
    InsufficientMemory,
    LoopDetected,
    ModelNotFound,
    RunnerError,
    RunnerStartFailed,
    ServerBusy,
    UpstreamUnavailable,
)
from enginehouse.routing import recent
from enginehouse.routing.classify import Classifier, Decision, Router, word_count
from enginehouse.routing.embedding import RouterEmbedding
from enginehouse.routing.health import Health
from enginehouse.routing.plan import Plan, describe, order_by_cost
from enginehouse.routing.pools import Pools
from enginehouse.sched.scheduler import Placement

if TYPE_CHECKING:
    from enginehouse.catalog import Catalog
    from enginehouse.config import Config
    from enginehouse.config_file import FileConfig
    from enginehouse.metrics import Metrics
    from enginehouse.sched.scheduler import Scheduler

log = logging.getLogger("enginehouse.routing")

#: A request that passed this many nodes is refused (the loop guard's backstop).
MAX_HOPS = 8


#: Errors after which another candidate may answer: (type, short reason, counts against health).
#: Order matters: RunnerStartFailed is a RunnerError; the first match wins.
FALLTHROUGH: tuple[tuple[type[BaseException], str, bool], ...] = (
    (ContextOverflow, "context", False),
    (InsufficientMemory, "no-fit", False),
    (EngineRefused, "engine-error", False),  # the engine is up: this request failed, not the engine
    (RunnerStartFailed, "start-failed", True),
    (UpstreamUnavailable, "unreachable", True),
    (RunnerError, "engine-error", True),
    (ServerBusy, "busy", False),
    (EngineNotInstalled, "no-engine", False),
    (ModelNotFound, "not-found", False),
    (LoopDetected, "loop", False),  # that node already has the request: not its failure
    (TimeoutError, "timeout", True),
)


def fallthrough(exc: BaseException) -> tuple[str, bool] | None:
    """(short reason, counts against health) when another candidate may answer instead; None when
    the error is the client's own and no other model would do better."""
    for kind, reason, counts in FALLTHROUGH:
        if isinstance(exc, kind):
            return reason, counts
    return None


T = TypeVar("T")


@dataclass
class Outcome:
    """What routing did with one request, as it goes: the door turns it into headers, the relay notes
    a failure after the first byte."""

    route: str | None = None  # ``router/route (tier)`` when a router chose
    model: str = ""  # the candidate answering now
    tried: list[str] = field(default_factory=list)  # candidates that could not answer, in order
    failed: str | None = None  # the engine failed after the first byte reached the client
    failed_counts: bool = False  # ... in a way that says the engine is broken (health counts it)

    def fail(self, exc: EnginehouseError) -> None:
        """Note a failure after the first byte: a dropped stream counts against the model's health, an
        engine's own error event or the request's deadline does not."""
        reason = fallthrough(exc)
        self.failed, self.failed_counts = exc.message, bool(reason and reason[1])

    @property
    def fallbacks(self) -> str | None:
        """``x-enginehouse-fallback``: every candidate tried, the answering one last."""
        return ", ".join([*self.tried, self.model]) if self.tried else None


def _until(ts: float | None) -> str:
    return datetime.fromtimestamp(ts or 0, UTC).strftime("%H:%M:%SZ")


class Dispatcher:
    def __init__(
        self,
        catalog: Catalog,
        scheduler: Scheduler,
        file_config: FileConfig,
        config: Config,
        metrics: Metrics | None = None,
        health: Health | None = None,
    ) -> None:
        self.catalog = catalog
        self.scheduler = scheduler
        self.file_config = file_config
        self.config = config
        self.metrics = metrics
        cd = file_config.cooldown
        self.health = health or Health(
            failures=cd.failures, window=cd.window, cooldown=cd.seconds, max_cooldown=cd.max_seconds
        )
        self.routers: dict[str, Router] = routers_of(file_config)
        self._classifiers: dict[str, Classifier] = {}
        self.embedding = RouterEmbedding(config, catalog.store, self._classifiers, self.routers)
        self.pool = Pools(catalog, file_config, self.health)
        self.node_id = ""  # this gateway's, for the loop guard (set by the gateway)

    # ---- planning -----------------------------------------------------------------------------------
    def is_router(self, name: str) -> bool:
        return self.catalog.canonical(name) in self.routers

    async def plan_for(self, call: Call, via: str = "") -> Plan:
        """The candidates for a canonical call; its text is read only by a router (to classify) and
        by a pool balancing on prefixes. ``via`` is the request's X-Enginehouse-Via (the loop guard)."""
        await self.catalog.ensure_known(call.model)  # free unless upstream discovery is due
        system, text = call.routing_text() if self.is_router(call.model) else ("", "")
        return await self.plan(
            call.model,
            system=system,
            text=text,
            num_ctx=getattr(call, "num_ctx", None),
            embedding=isinstance(call, EmbedCall),
            prompt=call.affinity_text,
            via=via,
        )

    async def plan(
        self,
        asked: str,
        *,
        system: str = "",
        text: str = "",
        num_ctx: int | None = None,
        embedding: bool = False,
        prompt: Callable[[], str] | None = None,
        via: str = "",
    ) -> Plan:
        """The candidates for ``asked``. ``prompt`` gives the request's whole text, read only by a
        pool balancing on prefixes; ``via`` is the request's X-Enginehouse-Via (the loop guard)."""
        started = time.perf_counter()
        if via:
            self._guard_loop(via)
        name = self.catalog.canonical(asked)
        router = self.routers.get(name)
        spec = RunnerSpec(embedding=embedding, num_ctx=num_ctx)
        if router is None:
            first = self._instance_for(name, num_ctx) if num_ctx else name
            plan = Plan(asked, (), prompt=prompt, via=via)
            plan.candidates = self._with_fallbacks([first], plan)
            if first != name:
                plan.why = f"{first}: the smallest instance of {name} with num_ctx >= {num_ctx}"
            plan.elapsed_ms = (time.perf_counter() - started) * 1000
            return plan
        decision = await self._classify(router, system, text)
        route = router.route(decision.route)
        plan = Plan(asked, (), router=router.name, decision=decision, prompt=prompt, via=via)
        usable: list[tuple[str, Placement]] = []
        for candidate in route.candidates:
            if not self.catalog.known(candidate):
                plan.skipped.append((candidate, "not installed"))
                continue
            try:
                placement = self.scheduler.placement(candidate, spec)
            except ModelNotFound:
                plan.skipped.append((candidate, "not installed"))
                continue
            except EnginehouseError as exc:
                plan.skipped.append((candidate, exc.message))
                continue
            if not placement.fits:
                plan.skipped.append((candidate, f"cannot fit: {placement.reason}"))
                continue
            if not self.health.available(candidate):
                state = self.health.state(candidate)
                plan.skipped.append((candidate, f"cooled down until {_until(state and state.cooled_until)}"))
                continue
            plan.placements[candidate] = placement
            usable.append((candidate, placement))
        ordered = order_by_cost(usable, route.prefer)
        # the route's fallbacks after its candidates; _with_fallbacks drops any name already there
        plan.candidates = self._with_fallbacks([*(n for n, _ in ordered), *route.fallbacks], plan)
        if ordered:
            chosen, placement = ordered[0]
            rule = "the route's first usable candidate" if route.prefer == "quality" else "the cheapest"
            plan.why = f"{describe(chosen, placement)}; {rule} (prefer {route.prefer})"
        elif plan.candidates:
            plan.why = "no candidate of the route is usable; its fallbacks"
        else:
            plan.why = "no candidate of the route is installed or usable"
        plan.elapsed_ms = (time.perf_counter() - started) * 1000
        log.info(
            "%s/%s (%s, %.1f ms) -> %s: %s",
            router.name,
            decision.route,
            decision.tier,
            plan.elapsed_ms,
            ", ".join(plan.candidates) or "no candidate",
            plan.why,
        )
        if self.metrics is not None:
            chosen_name = plan.candidates[0] if plan.candidates else ""
            self.metrics.route_decisions.labels(router.name, decision.route, decision.tier, chosen_name).inc()
            self.metrics.route_seconds.labels(router.name, decision.tier).observe(plan.elapsed_ms / 1000)
        recent.record(self, plan)  # GET /api/route/recent, the console's "last decisions"
        return plan

    def _not_found(self, asked: str, exc: ModelNotFound) -> NoReturn:
        """The 404 for a name nothing answers to, naming the closest models, aliases and routers
        (resolved only here, on the error path: a known name pays for nothing)."""
        names = [
            *(r.name.display for r in self.catalog.store.list_models()),
            *(r.name.display for r in self.catalog.external_models()),
            *self.file_config.models,
            *self.file_config.alias_map,
            *self.routers,
        ]
        close = difflib.get_close_matches(asked, list(dict.fromkeys(names)), n=3, cutoff=0.5)
        raise ModelNotFound(exc.name, close or exc.suggestions) from None

    def _with_fallbacks(self, names: list[str], plan: Plan) -> tuple[str, ...]:
        """Each name (a pool: its members, in the balancer's order) followed by its fallbacks, depth
        first, each model once."""
        out: list[str] = []
        seen: set[str] = set()

        def add(name: str) -> None:
            target = self.catalog.canonical(name)
            if target in seen:
                return
            seen.add(target)
            members = self.pool.order(target, plan)
            out.extend(m for m in (members if members is not None else [target]) if m not in out)
            entry = self.file_config.entry(target)
            for fallback in entry.fallbacks if entry is not None else ():
                add(fallback)

        for name in names:
            add(name)
        return tuple(out)

    def _guard_loop(self, via: str) -> None:
        passed = via.split(",")
        if self.node_id in passed:
            raise LoopDetected(f"loop detected: this request already passed this node ({self.node_id})")
        if len(passed) >= MAX_HOPS:
            raise LoopDetected(f"loop detected: the request passed {len(passed)} nodes")

    def _instance_for(self, name: str, num_ctx: int) -> str:
        """The smallest instance of ``name``'s model whose context holds ``num_ctx`` (a loaded one
        first among equals), or ``name`` itself when none does or it has no other instance."""
        instances = self.catalog.instances_of(name)
        if len(instances) < 2:
            return name
        fitting: list[tuple[int, int, int, str]] = []
        for i, inst in enumerate(instances):
            ctx = self._context_of(inst)
            if ctx is not None and ctx >= num_ctx:
                loaded = self.scheduler.get(inst)
                fitting.append((ctx, 0 if loaded else 1, i, inst))
        return min(fitting)[3] if fitting else name

    def _context_of(self, name: str) -> int | None:
        loaded = self.scheduler.get(name)
        if loaded is not None and loaded.ctx_per_slot:
            return int(loaded.ctx_per_slot)
        entry = self.file_config.entry(name)
        try:
            params = self.catalog.resolve(name).params
        except EnginehouseError:
            return None
        return (
            (entry.num_ctx if entry else None)
            or params.get("num_ctx")
            or self.file_config.defaults.num_ctx
            or self.config.ctx_size
        )

    # ---- the embedding tier -------------------------------------------------------------------------
    async def _classify(self, router: Router, system: str, text: str) -> Decision:
        """The keyword tier's decision when it has one; else the embedding tier's, starting the
        embedding runner the first time one is needed."""
        clf = self._classifiers.get(router.name)
        if clf is None:
            clf = self._classifiers[router.name] = Classifier(router)
        if clf.embed is None:
            decision = clf.classify_keywords(system, text)
            if decision is not None:
                return decision
            if not self.embedding.settled and word_count(text, router.min_words) >= router.min_words:
                clf.embed = await self.embedding.ensure()
        return await clf.classify(system or None, text)

    async def close(self) -> None:
        await self.embedding.close()

    # ---- trying candidates --------------------------------------------------------------------------
    async def run(self, plan: Plan, attempt: Callable[[str, Outcome], Awaitable[T]]) -> T:
        """``attempt(name, outcome)`` for each candidate until one answers; see the module's docstring.
        The outcome says, at each attempt, the route, the candidate and those tried before it."""
        outcome = Outcome(route=plan.route_header)
        tried: list[tuple[str, str]] = []
        last: BaseException | None = None
        for name in plan.candidates:
            if not self.health.available(name):
                state = self.health.state(name)
                until = _until(state and state.cooled_until)
                tried.append((name, f"cooled down until {until} after: {state.reason if state else ''}"))
                continue
            outcome.model, outcome.tried = name, [t for t, _ in tried]
            pooled = plan.replicas.get(name)
            if pooled is not None:  # counted from the pick, not from the engine's lease
                balancer, replica, text = pooled
                balancer.remember(replica, text)
                replica.in_flight += 1
            self.health.begin(name)
            sent_at = self.health.clock()
            try:
                response = await attempt(name, outcome)
            except (EnginehouseError, TimeoutError) as exc:
                reason = fallthrough(exc)
                if reason is None:
                    raise
                code, counts = reason
                message = exc.message if isinstance(exc, EnginehouseError) else "timed out"
                if counts:
                    self.health.failure(name, message, sent_at)
                if self.metrics is not None:
                    self.metrics.fallbacks.labels(name, code).inc()
                tried.append((name, f"{code}: {message}"))
                last = exc
                if len(plan.candidates) > 1:
                    log.warning("%s could not answer (%s): %s", name, code, message)
                continue
            finally:
                if pooled is not None:
                    pooled[1].in_flight -= 1
            if outcome.failed is None:
                self.health.success(name)
            elif outcome.failed_counts:
                self.health.failure(name, outcome.failed, sent_at)
            return response
        if last is not None and len(tried) == 1 and len(plan.candidates) == 1:
            if isinstance(last, ModelNotFound) and plan.router is None:
                self._not_found(plan.asked, last)
            raise last  # one candidate: its own error (404, 507, 502...), as without routing
        if not plan.candidates:
            skipped = "; ".join(f"{c} ({w})" for c, w in plan.skipped) or "none configured"
            raise AllCandidatesFailed(f"no candidate can serve {plan.asked!r}: {skipped}", list(plan.skipped))
        listing = "; ".join(f"{n} ({w})" for n, w in tried)
        raise AllCandidatesFailed(f"every candidate for {plan.asked!r} failed: {listing}", tried)
