"""Tokens/s of `enginehouse run` and of both doors against llama-server alone: same model, same settings.

    .venv/bin/python -m bench.run_vs_llama_server [--rounds 5] [--tokens 128]

Paths, interleaved round by round (order rotated each round) so machine drift hits all alike:
  direct      llama-server's own /v1/chat/completions, streamed: the baseline
  ollama-api  enginehouse /api/chat, streamed NDJSON (what `enginehouse run` uses)
  openai-api  enginehouse /v1/chat/completions, streamed SSE (bytes passed through)
  run-cli     `enginehouse run MODEL PROMPT` as a user types it; token times are read off its stdout,
              so TTFT and end-to-end include the command's own Python start-up
Greedy decoding with a fixed seed gives the same tokens on every path. Decode tokens/s is measured on the
client: (tokens - 1) / (last token time - first token time). Ratios are each path's median over direct's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from bench.common import BENCH_MODEL, PROMPT, ROOT, Sample, direct_and_gateway, one_stream


def run_cli(env: dict[str, str]) -> Sample:
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "enginehouse", "run", BENCH_MODEL, PROMPT, "--verbose"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = last = 0.0
    while chunk := os.read(proc.stdout.fileno(), 4096):
        if chunk.strip():
            now = time.perf_counter()
            first = first or now
            last = now
    stderr = proc.stderr.read().decode()
    proc.wait(60)
    stats = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in stderr.splitlines())}
    tokens = int(stats.get("eval count", "0").split()[0])
    return Sample(first - start, time.perf_counter() - start, tokens, first, last)


async def measure(pair, rounds: int, tokens: int) -> dict[str, list[Sample]]:
    chat = [{"role": "user", "content": PROMPT}]
    openai_body = {"model": BENCH_MODEL, "messages": chat, "stream": True, "max_tokens": tokens}
    ollama_body = {"model": BENCH_MODEL, "messages": chat, "stream": True}
    paths = {
        "direct": (f"{pair.direct_url}/v1/chat/completions", {**openai_body, "temperature": 0, "seed": 1}),
        "ollama-api": (f"{pair.gateway_url}/api/chat", ollama_body),
        "openai-api": (f"{pair.gateway_url}/v1/chat/completions", openai_body),
    }
    results: dict[str, list[Sample]] = {name: [] for name in [*paths, "run-cli"]}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        for url, body in paths.values():  # warm-up (and the gateway's preload), excluded
            await one_stream(session, url, body, url.endswith("/api/chat"))
        names = list(results)
        for rnd in range(rounds):
            for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
                if name == "run-cli":
                    results[name].append(await asyncio.to_thread(run_cli, pair.env))
                else:
                    url, body = paths[name]
                    results[name].append(await one_stream(session, url, body, name == "ollama-api"))
            print(f"round {rnd + 1}/{rounds}", file=sys.stderr)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "run_vs_llama_server.json")
    args = ap.parse_args()
    params = {"temperature": 0, "seed": 1, "num_predict": args.tokens}
    with direct_and_gateway(ctx=1024, parallel=1, params=params) as pair:
        results = asyncio.run(measure(pair, args.rounds, args.tokens))
    report = {}
    base = statistics.median(s.decode_tps for s in results["direct"])
    print(f"\n{'path':<12}{'decode tok/s':>14}{'vs direct':>11}{'TTFT p50':>11}{'e2e p50':>10}{'tokens':>8}")
    for name, samples in results.items():
        tps = statistics.median(s.decode_tps for s in samples)
        ttft = statistics.median(s.ttft for s in samples) * 1000
        e2e = statistics.median(s.e2e for s in samples) * 1000
        toks = statistics.median(s.tokens for s in samples)
        report[name] = {
            "decode_tps": tps,
            "ratio": tps / base,
            "ttft_ms": ttft,
            "e2e_ms": e2e,
            "tokens": toks,
        }
        print(f"{name:<12}{tps:>14.1f}{tps / base:>10.3f}x{ttft:>9.1f}ms{e2e:>8.0f}ms{toks:>8.0f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"rounds": args.rounds, "tokens": args.tokens, "paths": report}, indent=2)
    )


if __name__ == "__main__":
    main()
