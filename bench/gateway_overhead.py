"""What the gateway adds: the same streamed requests straight to its llama-server runner and through it.

    .venv/bin/python -m bench.gateway_overhead [--levels 1,8,32] [--rounds 5] [--tokens 128]
        [--ttft-requests 300] [--ttft-tokens 8] [--relays] [--with-console]

Every path ends at one process: the llama-server runner that the gateway started for the model (found
from /proc), so slots and prompt cache are shared and the only difference is the gateway hop:
  direct      the runner's own /v1/chat/completions (the baseline)
  openai-api  enginehouse /v1/chat/completions (SSE bytes passed through)
  ollama-api  enginehouse /api/chat (each chunk translated to NDJSON)
  anthropic-api, responses-api  enginehouse /v1/messages and /v1/responses (events per chunk, SSE)
Sampling is the same on all: greedy (temperature 0, seed 1: sent by direct, Modelfile defaults on the
doors) and the same max tokens in every body.

TTFT phase, concurrency 1: --ttft-requests short streams (--ttft-tokens output tokens) per path, one at a
time; each round sends one per path, order rotated. Reported: p50/p95 TTFT per path and, per door, the
median of the per-round differences door - direct with a bootstrap 95% CI over rounds. Pairing within a
round cancels the machine's drift, which is what makes a 1 ms difference measurable on a shared machine.
With --relays, two reference relays in front of the same runner join both phases (bench/relays.py):
  relay-tcp      a byte-copying TCP relay: what one more process and hop cost on this machine
  relay-aiohttp  aiohttp's server with enginehouse's engine client and nothing else: the parts the
                 gateway is built from, without its work

Throughput phase, at each of --levels: one excluded warm-up batch per path, then --rounds rounds, each
sending `level` concurrent streams of --tokens tokens per path (order rotated) and waiting for all.
Reported: p50/p95 TTFT and the door's Δ p50 vs direct (bootstrap 95% CI over rounds), aggregate output
tokens/s (all tokens of a round over its wall time, median over rounds), its ratio to direct's, the
median of the per-round ratios with a bootstrap CI, and the gateway's own CPU time per request (from
/proc), which on a 2-core machine is taken from the engine.

Target: p50 TTFT through a door within 1 ms of direct; aggregate tokens/s >= 98% of direct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    BENCH_MODEL,
    PROMPT,
    ROOT,
    Pair,
    Sample,
    bootstrap_ci,
    cpu_seconds,
    direct_and_gateway,
    free_port,
    one_stream,
    percentile,
    wait_ready,
)

PATHS = ("direct", "openai-api", "ollama-api", "anthropic-api", "responses-api")
DOORS = PATHS[1:]
RELAYS = ("relay-tcp", "relay-aiohttp")
TTFT_WARMUP_ROUNDS = 3
TTFT_TARGET_MS = 1.0
RATE_TARGET = 0.98

Target = tuple[str, dict[str, Any], dict[str, str]]  # URL, JSON body and headers


def targets(pair: Pair, tokens: int) -> dict[str, Target]:
    base = {"model": BENCH_MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    return {
        # The doors take temperature and seed from the model's Modelfile; the bare runner has no such
        # defaults, so direct sends them. Max tokens goes in every body: the Modelfile's num_predict is
        # the throughput phase's, and the TTFT phase's requests must be as short on the doors.
        # The runner answers only with its key (read from its environment, as the gateway's own user).
        "direct": (
            f"{pair.direct_url}/v1/chat/completions",
            {**base, "max_tokens": tokens, "temperature": 0, "seed": 1},
            pair.direct_headers,
        ),
        "openai-api": (f"{pair.gateway_url}/v1/chat/completions", {**base, "max_tokens": tokens}, {}),
        "ollama-api": (f"{pair.gateway_url}/api/chat", {**base, "options": {"num_predict": tokens}}, {}),
        # the newer doors go the canonical way (events encoded per chunk), as a Go-template model does
        "anthropic-api": (
            f"{pair.gateway_url}/v1/messages",
            {**base, "max_tokens": tokens, "temperature": 0},
            {},
        ),
        "responses-api": (
            f"{pair.gateway_url}/v1/responses",
            {
                "model": BENCH_MODEL,
                "input": PROMPT,
                "stream": True,
                "max_output_tokens": tokens,
                "temperature": 0,
            },
            {},
        ),
    }


def rotated(rnd: int, paths: tuple[str, ...] = PATHS) -> tuple[str, ...]:
    """Path order of a round: each path goes first, second and last equally often."""
    k = rnd % len(paths)
    return paths[k:] + paths[:k]


@contextmanager
def reference_relays(pair: Pair):  # type: ignore[no-untyped-def]
    """The two reference relays in front of the gateway's runner: {path name: chat URL}."""
    runner_port = pair.direct_url.rsplit(":", 1)[1]
    ports = {name: free_port() for name in RELAYS}
    procs = [
        subprocess.Popen([sys.executable, "-m", "bench.relays", name.split("-")[1], runner_port, str(port)])
        for name, port in ports.items()
    ]
    try:
        for port in ports.values():  # the TCP relay passes /health on to the runner
            asyncio.run(wait_ready(f"http://127.0.0.1:{port}/health", 30))
        yield {name: f"http://127.0.0.1:{port}/v1/chat/completions" for name, port in ports.items()}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


async def stream(session: aiohttp.ClientSession, target: Target, name: str) -> Sample:
    url, body, headers = target
    dialect = {"anthropic-api": "anthropic", "responses-api": "responses"}.get(name, "")
    return await one_stream(session, url, body, name == "ollama-api", headers, dialect)


def median_ci(values: list[float]) -> tuple[float, float]:
    return bootstrap_ci(len(values), lambda idx: statistics.median([values[i] for i in idx]))


def pooled_delta_ci(door: list[list[float]], direct: list[list[float]]) -> tuple[float, float]:
    """CI of p50(door) - p50(direct), TTFTs pooled over the drawn rounds (the same rounds for both)."""

    def stat(idx: list[int]) -> float:
        return statistics.median([t for i in idx for t in door[i]]) - statistics.median(
            [t for i in idx for t in direct[i]]
        )

    return bootstrap_ci(len(door), stat)


def ms(ci: tuple[float, float]) -> list[float]:
    return [ci[0] * 1000, ci[1] * 1000]


def all_targets(pair: Pair, tokens: int, relays: dict[str, str]) -> dict[str, Target]:
    paths = targets(pair, tokens)
    for name, url in relays.items():  # a relay forwards the direct request as it is, key included
        paths[name] = (url, *paths["direct"][1:])
    return paths


async def ttft_phase(
    session: aiohttp.ClientSession, pair: Pair, requests: int, tokens: int, relays: dict[str, str]
) -> dict:
    paths = all_targets(pair, tokens, relays)
    names = tuple(paths)
    # Excluded warm-up: the first requests fill the slot's prompt cache and warm the gateway's code paths.
    for rnd in range(TTFT_WARMUP_ROUNDS):
        for name in rotated(rnd, names):
            await stream(session, paths[name], name)
    ttft: dict[str, list[float]] = {n: [] for n in names}
    cpu = dict.fromkeys(names, 0.0)
    for rnd in range(requests):
        for name in rotated(rnd, names):
            cpu_before = cpu_seconds(pair.gateway_pid)
            ttft[name].append((await stream(session, paths[name], name)).ttft)
            cpu[name] += cpu_seconds(pair.gateway_pid) - cpu_before
        if (rnd + 1) % 50 == 0 or rnd + 1 == requests:
            print(f"ttft: round {rnd + 1}/{requests}", file=sys.stderr)
    out: dict[str, Any] = {"requests": requests, "tokens": tokens, "paths": {}}
    for name in names:
        row = {
            "ttft_p50_ms": percentile(ttft[name], 50) * 1000,
            "ttft_p95_ms": percentile(ttft[name], 95) * 1000,
            # Summed over the phase: one request is below the CPU clock's 10 ms tick.
            "gateway_cpu_ms_per_request": cpu[name] / requests * 1000 if name in DOORS else None,
        }
        if name != "direct":
            diffs = [d - b for d, b in zip(ttft[name], ttft["direct"], strict=True)]
            row["paired_delta_median_ms"] = statistics.median(diffs) * 1000
            row["paired_delta_ci95_ms"] = ms(median_ci(diffs))
        out["paths"][name] = row
    return out


async def throughput_level(
    session: aiohttp.ClientSession, pair: Pair, level: int, rounds: int, tokens: int, relays: dict[str, str]
) -> dict:
    paths = all_targets(pair, tokens, relays)
    names = tuple(paths)
    # Warm-up at every level, excluded: the runner's slots cache the prompt, and the first batch to reach
    # it at a new width pays the prompt for every cold slot (a second or more). All paths share the one
    # runner, so without this the first path to arrive pays for all.
    for name in names:
        await asyncio.gather(*(stream(session, paths[name], name) for _ in range(level)))
    ttfts: dict[str, list[list[float]]] = {n: [] for n in names}  # per round
    rates: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for rnd in range(rounds):
        for name in rotated(rnd, names):
            cpu_before = cpu_seconds(pair.gateway_pid)
            start = time.perf_counter()
            batch = await asyncio.gather(*(stream(session, paths[name], name) for _ in range(level)))
            wall = time.perf_counter() - start
            cpu[name].append((cpu_seconds(pair.gateway_pid) - cpu_before) / level)
            ttfts[name].append([s.ttft for s in batch])
            rates[name].append(sum(s.tokens for s in batch) / wall)
        print(f"level {level}: round {rnd + 1}/{rounds}", file=sys.stderr)
    out: dict[str, Any] = {}
    for name in names:
        pooled = [t for r in ttfts[name] for t in r]
        row: dict[str, Any] = {
            "ttft_p50_ms": percentile(pooled, 50) * 1000,
            "ttft_p95_ms": percentile(pooled, 95) * 1000,
            "tokens_per_s": statistics.median(rates[name]),
            "gateway_cpu_ms_per_request": statistics.median(cpu[name]) * 1000,
        }
        if name != "direct":
            direct = out["direct"]
            ratios = [d / b for d, b in zip(rates[name], rates["direct"], strict=True)]
            row["ttft_p50_delta_ms"] = row["ttft_p50_ms"] - direct["ttft_p50_ms"]
            row["ttft_p50_delta_ci95_ms"] = ms(pooled_delta_ci(ttfts[name], ttfts["direct"]))
            row["tokens_per_s_ratio"] = row["tokens_per_s"] / direct["tokens_per_s"]
            row["round_ratio_median"] = statistics.median(ratios)
            row["round_ratio_ci95"] = list(median_ci(ratios))
        out[name] = row
    return out


async def measure(pair: Pair, args: argparse.Namespace, levels: list[int], relays: dict[str, str]) -> dict:
    # No pooling, on every path: llama-server closes a connection after a streamed answer while
    # advertising keep-alive, so a pooled one fails the next request at random. A fresh loopback
    # connection costs every path the same.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=900)
    ) as session:
        ttft = None
        if args.ttft_requests > 0:
            ttft = await ttft_phase(session, pair, args.ttft_requests, args.ttft_tokens, relays)
        per_level = {
            level: await throughput_level(session, pair, level, args.rounds, args.tokens, relays)
            for level in levels
        }
    return {"ttft": ttft, "rounds": args.rounds, "tokens": args.tokens, "levels": per_level}


def verdict(lo: float, hi: float, limit: float, above: bool) -> str:
    """Whether a CI lies on the good side of a limit (above it, or below it), the bad side, or across."""
    good, bad = (lo >= limit, hi < limit) if above else (hi <= limit, lo > limit)
    return "meets" if good else "misses" if bad else "unclear"


def ci_text(ci: list[float], digits: int) -> str:
    return f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def report(out: dict) -> None:
    ttft = out["ttft"]
    if ttft is not None:
        print(
            f"\nTTFT, concurrency 1: {ttft['requests']} rounds of one {ttft['tokens']}-token stream per path"
        )
        print(
            f"{'path':<13}{'TTFT p50':>11}{'TTFT p95':>11}{'paired Δ median (95% CI)':>32}{'gw CPU/req':>12}"
        )
        for name, r in ttft["paths"].items():
            delta = ""
            if name != "direct":
                ci = ci_text(r["paired_delta_ci95_ms"], 2)
                delta = f"{r['paired_delta_median_ms']:+.2f}ms {ci}"
            cpu = "" if name not in DOORS else f"{r['gateway_cpu_ms_per_request']:.2f}ms"
            print(f"{name:<13}{r['ttft_p50_ms']:>9.2f}ms{r['ttft_p95_ms']:>9.2f}ms{delta:>32}{cpu:>12}")
    print(
        f"\nThroughput: {out['rounds']} rounds of {out['tokens']}-token streams, `streams` at once per path"
    )
    print(
        f"{'streams':>7} {'path':<13}{'TTFT p50':>11}{'Δ p50 (95% CI)':>28}{'TTFT p95':>11}{'tok/s':>9}"
        f"{'vs direct':>10}{'per round (95% CI)':>27}{'gw CPU/req':>11}"
    )
    for level, per in out["levels"].items():
        d = 2 if level == 1 else 1  # TTFT at concurrency 1 is a few ms: whole 0.1 ms steps hide it
        for name, r in per.items():
            delta = ratio = rounds = cpu = ""
            if name != "direct":
                delta = f"{r['ttft_p50_delta_ms']:+.{d}f}ms {ci_text(r['ttft_p50_delta_ci95_ms'], d)}"
                ratio = f"{r['tokens_per_s_ratio']:.3f}x"
                lo, hi = r["round_ratio_ci95"]
                rounds = f"{r['round_ratio_median']:.3f}x [{lo:.3f}, {hi:.3f}]"
                cpu = f"{r['gateway_cpu_ms_per_request']:.1f}ms" if name in DOORS else ""
            print(
                f"{level:>7} {name:<13}{r['ttft_p50_ms']:>9.{d}f}ms{delta:>28}{r['ttft_p95_ms']:>9.{d}f}ms"
                f"{r['tokens_per_s']:>9.1f}{ratio:>10}{rounds:>27}{cpu:>11}"
            )
    print(
        f"\nTarget: p50 TTFT within {TTFT_TARGET_MS:g} ms of direct, tokens/s >= {RATE_TARGET:.0%} of direct"
    )
    for door in DOORS:
        parts = []
        if ttft is not None:
            lo, hi = ttft["paths"][door]["paired_delta_ci95_ms"]
            parts.append(f"TTFT {verdict(lo, hi, TTFT_TARGET_MS, above=False)}")
        for level, per in out["levels"].items():
            lo, hi = per[door]["round_ratio_ci95"]
            parts.append(f"tok/s@{level} {verdict(lo, hi, RATE_TARGET, above=True)}")
        print(f"  {door:<11}" + ", ".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,8,32", help="concurrency levels of the throughput phase")
    ap.add_argument("--rounds", type=int, default=5, help="throughput rounds per level and path")
    ap.add_argument("--tokens", type=int, default=128, help="output tokens per throughput stream")
    ap.add_argument("--ttft-requests", type=int, default=300, help="TTFT-phase rounds (0: skip the phase)")
    ap.add_argument("--ttft-tokens", type=int, default=8, help="output tokens per TTFT-phase stream")
    ap.add_argument(
        "--relays", action="store_true", help="add the reference relays (bench/relays.py) to both phases"
    )
    ap.add_argument(
        "--with-console",
        action="store_true",
        help="keep the console (/ui) open in a headless Chromium during the run (bench/console_open.py)",
    )
    ap.add_argument(
        "--json", type=Path, default=ROOT / "bench" / "results" / "gateway_overhead.json", help="results file"
    )
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    params = {"temperature": 0, "seed": 1, "num_predict": args.tokens}
    with direct_and_gateway(ctx=512, parallel=max(levels), params=params, separate_direct=False) as pair:
        console = None
        if args.with_console:  # a person watching: the page polls /api/status, /metrics... every 2 s
            console = subprocess.Popen([sys.executable, "-m", "bench.console_open", pair.gateway_url])
        try:
            out = _run(pair, args, levels)
        finally:
            if console is not None:
                console.terminate()
                console.wait(30)
        out["with_console"] = args.with_console
    report(out)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))


def _run(pair: Pair, args: argparse.Namespace, levels: list[int]) -> dict:
    if args.relays:
        with reference_relays(pair) as relays:
            return asyncio.run(measure(pair, args, levels, relays))
    return asyncio.run(measure(pair, args, levels, {}))


if __name__ == "__main__":
    main()
