"""What the gateway adds: the same streamed requests straight to llama-server and through enginehouse.

    .venv/bin/python -m bench.gateway_overhead [--levels 1,8,32] [--rounds 3] [--tokens 128]

At each concurrency level, each round sends `level` concurrent streamed chats to each path (order rotated
every round) and waits for all of them:
  direct      llama-server /v1/chat/completions (the baseline)
  openai-api  enginehouse /v1/chat/completions (SSE bytes passed through)
  ollama-api  enginehouse /api/chat (each chunk translated to NDJSON)
Each level starts with one excluded warm-up batch per path. Reported per level and path: p50/p95
time to first token, aggregate output tokens/s (all tokens of a
round over its wall time, median over rounds), their ratio and difference to direct, and the gateway's
own CPU time per request (from /proc), which on a 2-core machine is taken from the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import aiohttp

from bench.common import BENCH_MODEL, PROMPT, ROOT, cpu_seconds, direct_and_gateway, one_stream, percentile


async def measure(pair, levels: list[int], rounds: int, tokens: int) -> dict:
    chat = [{"role": "user", "content": PROMPT}]
    openai_body = {"model": BENCH_MODEL, "messages": chat, "stream": True, "max_tokens": tokens}
    paths = {
        "direct": (f"{pair.direct_url}/v1/chat/completions", {**openai_body, "temperature": 0, "seed": 1}),
        "openai-api": (f"{pair.gateway_url}/v1/chat/completions", openai_body),
        "ollama-api": (
            f"{pair.gateway_url}/api/chat",
            {"model": BENCH_MODEL, "messages": chat, "stream": True},
        ),
    }
    names = list(paths)
    out: dict = {}
    # No pooling: llama-server closes a connection after a stream without saying so, and a pooled one
    # would fail the next request at random. A fresh loopback connection costs every path the same.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=900)
    ) as session:
        for level in levels:
            # Warm-up at every level, excluded: each runner's slots cache the prompt, and the first batch
            # to reach a runner at a new width pays the prompt for every cold slot (a second or more).
            # The two doors share one runner, so without this the first door to arrive pays for both.
            for name, (url, body) in paths.items():
                await asyncio.gather(
                    *(one_stream(session, url, body, name == "ollama-api") for _ in range(level))
                )
            ttfts: dict[str, list[float]] = {n: [] for n in names}
            rates: dict[str, list[float]] = {n: [] for n in names}
            cpu: dict[str, list[float]] = {n: [] for n in names}
            for rnd in range(rounds):
                for name in names[rnd % 3 :] + names[: rnd % 3]:
                    url, body = paths[name]
                    cpu_before = cpu_seconds(pair.gateway_pid)
                    start = time.perf_counter()
                    batch = await asyncio.gather(
                        *(one_stream(session, url, body, name == "ollama-api") for _ in range(level))
                    )
                    wall = time.perf_counter() - start
                    cpu[name].append((cpu_seconds(pair.gateway_pid) - cpu_before) / level)
                    ttfts[name].extend(s.ttft for s in batch)
                    rates[name].append(sum(s.tokens for s in batch) / wall)
                print(f"level {level}: round {rnd + 1}/{rounds}", file=sys.stderr)
            out[level] = {
                n: {
                    "ttft_p50_ms": percentile(ttfts[n], 50) * 1000,
                    "ttft_p95_ms": percentile(ttfts[n], 95) * 1000,
                    "tokens_per_s": statistics.median(rates[n]),
                    "gateway_cpu_ms_per_request": statistics.median(cpu[n]) * 1000,
                }
                for n in names
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "gateway_overhead.json")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    params = {"temperature": 0, "seed": 1, "num_predict": args.tokens}
    with direct_and_gateway(ctx=512, parallel=max(levels), params=params) as pair:
        out = asyncio.run(measure(pair, levels, args.rounds, args.tokens))
    print(
        f"\n{'streams':>7} {'path':<11}{'TTFT p50':>10}{'Δ p50':>9}{'TTFT p95':>10}{'tok/s':>9}"
        f"{'vs direct':>10}{'gw CPU/req':>11}"
    )
    for level, per in out.items():
        d = per["direct"]
        for name, r in per.items():
            delta = r["ttft_p50_ms"] - d["ttft_p50_ms"]
            ratio = r["tokens_per_s"] / d["tokens_per_s"]
            cpu = "" if name == "direct" else f"{r['gateway_cpu_ms_per_request']:.1f}ms"
            print(
                f"{level:>7} {name:<11}{r['ttft_p50_ms']:>8.1f}ms{delta:>+7.1f}ms{r['ttft_p95_ms']:>8.1f}ms"
                f"{r['tokens_per_s']:>9.1f}{ratio:>9.3f}x{cpu:>11}"
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rounds": args.rounds, "tokens": args.tokens, "levels": out}, indent=2))


if __name__ == "__main__":
    main()
