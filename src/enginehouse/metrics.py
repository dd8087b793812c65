"""Prometheus metrics: ``GET /metrics``, the gateway's own and every runner's, in one scrape.

Per request (observed once, at its end, never per chunk): requests by door, endpoint, model, engine and
status; end-to-end latency; time to first token; time per output token (first token excluded, as
``vllm bench serve`` defines it); queue wait; prompt and output tokens; the gateway's own added time
before the engine sees the request; runner restarts with their cause, as they happen. Read at scrape time
from the scheduler: in-flight requests, loaded models with their estimated and measured memory. Each
runner's own ``/metrics`` (llama-server ``--metrics``, vLLM) is fetched at scrape time and re-exposed with a
``model`` label.

Each gateway has its own registry, so several gateways in one process (tests, benchmarks) never share
counters.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from enginehouse.engines.base import Engine
    from enginehouse.sched.scheduler import Scheduler

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Latency buckets from a millisecond (a warm cache hit) to minutes (a long answer on a CPU).
_LATENCY = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_PER_TOKEN = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2)
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "enginehouse_requests",
            "Requests answered, by door (ollama, openai, anthropic), endpoint, model, engine, HTTP status.",
            ["door", "endpoint", "model", "engine", "status"],
            registry=r,
        )
        self.e2e = Histogram(
            "enginehouse_request_duration_seconds",
            "End-to-end time of a request, from arrival to its last byte.",
            ["door", "endpoint", "model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.ttft = Histogram(
            "enginehouse_time_to_first_token_seconds",
            "Time from a request's arrival to its first generated token.",
            ["door", "model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.tpot = Histogram(
            "enginehouse_time_per_output_token_seconds",
            "Mean time per output token of a request, the first token excluded.",
            ["door", "model"],
            buckets=_PER_TOKEN,
            registry=r,
        )
        self.queue_wait = Histogram(
            "enginehouse_queue_wait_seconds",
            "Time a request waited for its model: admission, a swap, or a load.",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.overhead = Histogram(
            "enginehouse_gateway_overhead_seconds",
            "Time the gateway itself spent before the engine got the request (parsing, translating, "
            "routing), queue wait and loads excluded.",
            ["door"],
            buckets=_OVERHEAD,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "enginehouse_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r
        )
        self.output_tokens = Counter(
            "enginehouse_output_tokens", "Output tokens generated.", ["model"], registry=r
        )
        self.loads = Histogram(
            "enginehouse_model_load_duration_seconds",
            "Time to start a runner until it answered.",
            ["model", "engine"],
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
            registry=r,
        )

        self.route_decisions = Counter(
            "enginehouse_route_decisions",
            "Routing decisions, by router, route, classifier tier and the model chosen first.",
            ["router", "route", "tier", "model"],
            registry=r,
        )
        self.route_seconds = Histogram(
            "enginehouse_route_decision_seconds",
            "Time a router took to decide (classification and candidate costs).",
            ["router", "tier"],
            buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.035, 0.05, 0.1, 0.25),
            registry=r,
        )
        self.restarts = Counter(
            "enginehouse_runner_restarts",
            "Automatic restarts of loaded runners, by model and cause: exited (it died) or stalled (the "
            "watchdog killed it when it stopped answering with requests in flight).",
            ["model", "cause"],
            registry=r,
        )
        self.fallbacks = Counter(
            "enginehouse_fallbacks",
            "Candidates that could not answer and were passed over, by model and reason.",
            ["model", "reason"],
            registry=r,
        )

    def attach(self, scheduler: Scheduler) -> None:
        """Report the scheduler's table at scrape time and observe its loads."""
        self.registry.register(SchedulerCollector(scheduler))
        scheduler.on_load = lambda name, engine, seconds: self.loads.labels(name, engine).observe(seconds)
        scheduler.on_restart = lambda name, cause: self.restarts.labels(name, cause).inc()

    def observe_generation(
        self,
        door: str,
        model: str,
        *,
        ttft: float | None,
        prompt_tokens: int,
        output_tokens: int,
        decode_seconds: float | None,
    ) -> None:
        """One finished generation: the numbers its last line (or usage) reported."""
        if ttft is not None:
            self.ttft.labels(door, model).observe(ttft)
        if output_tokens > 1 and decode_seconds is not None:
            self.tpot.labels(door, model).observe(decode_seconds / (output_tokens - 1))
        if prompt_tokens:
            self.prompt_tokens.labels(model).inc(prompt_tokens)
        if output_tokens:
            self.output_tokens.labels(model).inc(output_tokens)

    async def exposition(self, scheduler: Scheduler, session: aiohttp.ClientSession) -> bytes:
        """Our metrics, then every loaded runner's own, labelled with its model."""
        ours = generate_latest(self.registry)
        loaded = [m for m in scheduler.ps() if m.engine.info().state == "ready"]
        texts = await asyncio.gather(*(_scrape(session, m.engine) for m in loaded))
        runner = relabel(
            (m.spec.key(m.name), m.engine.kind, text) for m, text in zip(loaded, texts, strict=True)
        )
        return ours + runner.encode()


async def _scrape(session: aiohttp.ClientSession, engine: Engine) -> str:
    url, timeout = engine.base_url + "/metrics", aiohttp.ClientTimeout(total=2)
    try:
        async with session.get(url, timeout=timeout, headers=engine.request_headers) as resp:
            return await resp.text() if resp.status == 200 else ""
    except (aiohttp.ClientError, TimeoutError):
        return ""  # a runner that cannot answer now is missing from this scrape, not an error


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?(\s.*)$")


def relabel(runners: Iterable[tuple[str, str, str]]) -> str:
    """Runner expositions merged into one: each sample gains ``model`` and ``engine`` labels, and the
    samples of one metric stay together under its HELP and TYPE lines (given once), as the format asks."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}  # family -> its samples from every runner, in order
    for model, engine, text in runners:
        extra = f'model="{_escape(model)}",engine="{_escape(engine)}"'
        for line in text.splitlines():
            if line.startswith("#"):
                parts = line.split(maxsplit=3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE") and line not in headers.get(parts[2], []):
                    headers.setdefault(parts[2], []).append(line)
                continue
            match = _SAMPLE.match(line)
            if not match:
                continue
            name, labels, rest = match.groups()
            family = name if name in headers else re.sub(r"_(total|sum|count|bucket|created)$", "", name)
            labels = "{" + extra + ("," + labels[1:-1] if labels and labels != "{}" else "") + "}"
            samples.setdefault(family, []).append(f"{name}{labels}{rest}")
    out: list[str] = []
    for family, lines in samples.items():
        out += headers.get(family, [])
        out += lines
    return "\n".join(out) + ("\n" if out else "")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class SchedulerCollector(Collector):
    """The loaded-model table as gauges, read when scraped."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def describe(self) -> Iterator[Metric]:
        return iter(())  # described by collect(); no describe-time scheduler access

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "enginehouse_requests_in_flight",
            "Requests holding a model now (running or queued).",
            labels=["model"],
        )
        slots = GaugeMetricFamily(
            "enginehouse_model_slots", "Parallel slots of a loaded model.", labels=["model"]
        )
        loaded = GaugeMetricFamily(
            "enginehouse_model_loaded", "1 for each loaded model.", labels=["model", "engine"]
        )
        estimated = GaugeMetricFamily(
            "enginehouse_model_memory_estimated_bytes",
            "Memory a loaded runner was expected to hold.",
            labels=["model"],
        )
        measured = GaugeMetricFamily(
            "enginehouse_model_memory_measured_bytes",
            "Peak resident memory of a runner, read after its first request (0 until then).",
            labels=["model"],
        )
        for m in self.scheduler.ps():
            key = m.spec.key(m.name)
            info: Any = m.engine.info()
            in_flight.add_metric([key], m.in_flight)
            slots.add_metric([key], m.slots)
            loaded.add_metric([key, info.engine], 1)
            estimated.add_metric([key], m.estimate)
            measured.add_metric([key], m.measured)
        yield from (in_flight, slots, loaded, estimated, measured)


class HealthCollector(Collector):
    """Targets (models, upstreams, replicas) set aside after failures, read when scraped."""

    def __init__(self, health: Any) -> None:
        self.health = health

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        until = GaugeMetricFamily(
            "enginehouse_cooled_down_until_seconds",
            "Unix time until which a failing target is set aside (present only while it is).",
            labels=["target"],
        )
        for key, state in self.health.cooled().items():
            until.add_metric([key], state.cooled_until or 0)
        yield until


class PoolCollector(Collector):
    """Replica pools: requests in flight per replica, and which are drained by hand."""

    def __init__(self, dispatch: Any) -> None:
        self.dispatch = dispatch

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "enginehouse_replica_in_flight",
            "Requests in flight per pool replica.",
            labels=["pool", "replica"],
        )
        draining = GaugeMetricFamily(
            "enginehouse_replica_draining", "1 while a replica takes no new work.", labels=["pool", "replica"]
        )
        for pool in self.dispatch.pool.snapshot():
            for r in pool["replicas"]:
                in_flight.add_metric([pool["model"], r["name"]], r["in_flight"])
                draining.add_metric([pool["model"], r["name"]], 1 if r["draining"] else 0)
        yield in_flight
        yield draining
