"""Soak: many concurrent streams through the gateway for a while, with bad requests mixed in.

    .venv/bin/python -m bench.soak [--streams 200] [--seconds 60] [--tokens 16] [--bad-every 0.5] [--json F]

One gateway (default settings but the context) serves the bundled model through a real llama-server
runner. `--streams` clients each send streamed chats back to back (alternating the Ollama and OpenAI
doors) until `--seconds` have passed; a separate client sends one bad request every `--bad-every`
seconds, cycling through the classes the hardening work refuses (malformed JSON, wrong types, an
over-large `n_probs`, an invalid schema, a foreign Host, a foreign Origin, a gzip body, a missing model).

Reported: requests answered per class; unexpected errors (a good request that did not stream an answer
to its end, or a bad one that got anything but a 4xx); the gateway's RSS after warm-up (once every
client has had one answer: with 200 clients behind a few slots that first round takes a while, and the
gateway's buffers grow until it ends) and at the end, its drift, and RSS at each quarter of the run.
Targets: zero unexpected errors, RSS drift within ±10%.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from bench.common import BENCH_MODEL, direct_and_gateway

PROMPTS = [
    "Name a colour.",
    "Say hello in French.",
    "What is two plus two?",
    "Give me one word that rhymes with cat.",
]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def bad_requests(base: str) -> list[tuple[str, str, dict[str, str], bytes]]:
    """(name, url, headers, body): each must be refused with a 4xx and leave the server serving."""
    chat = {"model": BENCH_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    js = {"Content-Type": "application/json"}
    return [
        ("malformed-json", f"{base}/api/chat", js, b'{"model": '),
        ("wrong-type", f"{base}/v1/chat/completions", js, orjson.dumps({**chat, "logit_bias": [1, 2]})),
        ("n-probs", f"{base}/v1/chat/completions", js, orjson.dumps({**chat, "n_probs": 10**9})),
        (
            "bad-schema",
            f"{base}/api/chat",
            js,
            orjson.dumps({**chat, "format": {"type": "object", "properties": {"a": {"type": 12}}}}),
        ),
        (
            "huge-enum",
            f"{base}/api/chat",
            js,
            orjson.dumps({**chat, "format": {"enum": [f"v{i}" for i in range(100_000)]}}),
        ),
        ("foreign-host", f"{base}/api/chat", {**js, "Host": "evil.example.com"}, orjson.dumps(chat)),
        (
            "foreign-origin",
            f"{base}/api/chat",
            {"Content-Type": "text/plain", "Origin": "https://evil.example.com"},
            orjson.dumps(chat),
        ),
        ("gzip-body", f"{base}/api/chat", {**js, "Content-Encoding": "gzip"}, gzip.compress(b"{}" * 1000)),
        ("no-model", f"{base}/api/chat", js, orjson.dumps({**chat, "model": "no-such-model:1"})),
    ]


@dataclass
class Tally:
    good: Counter[str] = field(default_factory=Counter)
    bad: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)


async def good_stream(session: aiohttp.ClientSession, base: str, n: int, tokens: int, tally: Tally) -> None:
    prompt = PROMPTS[n % len(PROMPTS)]
    ollama = n % 2 == 0
    if ollama:
        url = f"{base}/api/chat"
        body = {
            "model": BENCH_MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "options": {"num_predict": tokens},
        }
    else:
        url = f"{base}/v1/chat/completions"
        body = {
            "model": BENCH_MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": tokens,
            "stream": True,
        }
    door = "ollama" if ollama else "openai"
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                tally.unexpected.append(f"{door}: HTTP {resp.status} {(await resp.text())[:200]}")
                return
            done = False
            async for raw in resp.content:
                line = raw.strip()
                if not line:
                    continue
                if ollama:
                    event = orjson.loads(line)
                    if "error" in event:
                        tally.unexpected.append(f"{door}: mid-stream {event['error'][:200]}")
                        return
                    done = done or bool(event.get("done"))
                elif line == b"data: [DONE]":
                    done = True
                elif line.startswith(b"data:") and b'"error"' in line:
                    tally.unexpected.append(f"{door}: mid-stream {line[:200]!r}")
                    return
            if not done:
                tally.unexpected.append(f"{door}: stream ended without its final event")
                return
    except (TimeoutError, aiohttp.ClientError) as exc:
        tally.unexpected.append(f"{door}: {type(exc).__name__}: {exc}")
        return
    tally.good[door] += 1


async def stream_worker(
    base: str, n: int, deadline: float, tokens: int, tally: Tally, warm: asyncio.Semaphore
) -> None:
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        i = n
        while time.monotonic() < deadline:
            await good_stream(session, base, i, tokens, tally)
            if i == n:
                warm.release()  # this client's first round is done
            i += 1


async def bad_worker(base: str, deadline: float, every: float, tally: Tally) -> None:
    cases = bad_requests(base)
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=60), auto_decompress=False
    ) as session:
        i = 0
        while time.monotonic() < deadline:
            name, url, headers, body = cases[i % len(cases)]
            i += 1
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    text = await resp.text()
                    if not 400 <= resp.status < 500:
                        tally.unexpected.append(f"bad {name}: HTTP {resp.status} {text[:200]}")
                    else:
                        tally.bad[name] += 1
            except aiohttp.ClientError as exc:
                tally.unexpected.append(f"bad {name}: {type(exc).__name__}: {exc}")
            await asyncio.sleep(every)


async def soak(base: str, pid: int, streams: int, seconds: float, tokens: int, bad_every: float) -> dict:
    tally = Tally()
    start = time.monotonic()
    deadline = start + seconds
    rss: list[tuple[float, float]] = []
    warm = asyncio.Semaphore(0)
    warm_at: list[float] = []

    async def sample_rss() -> None:
        while time.monotonic() < deadline:
            rss.append((time.monotonic() - start, rss_mib(pid)))
            await asyncio.sleep(1)

    async def wait_warm() -> None:
        for _ in range(streams):
            await warm.acquire()
        warm_at.append(time.monotonic() - start)

    idle_rss = rss_mib(pid)
    waiter = asyncio.ensure_future(wait_warm())
    await asyncio.gather(
        sample_rss(),
        bad_worker(base, deadline, bad_every, tally),
        *(stream_worker(base, n, deadline, tokens, tally, warm) for n in range(streams)),
    )
    waiter.cancel()
    if not warm_at:
        raise RuntimeError("not every client got an answer: run longer (--seconds)")
    after_warmup, end = next(m for t, m in rss if t >= warm_at[0]), rss_mib(pid)
    quarters = [next(m for t, m in rss if t >= seconds * q / 4) for q in (1, 2, 3)]
    return {
        "streams": streams,
        "seconds": seconds,
        "answered": dict(tally.good),
        "refused_as_expected": dict(tally.bad),
        "unexpected": len(tally.unexpected),
        "unexpected_first": tally.unexpected[:10],
        "rss_mib": {
            "idle": round(idle_rss, 1),
            "warm_at_s": round(warm_at[0], 1),
            "after_warmup": round(after_warmup, 1),
            "at_quarters": [round(m, 1) for m in quarters],
            "peak": round(max(m for _, m in rss), 1),
            "end": round(end, 1),
            "drift_pct": round(100 * (end - after_warmup) / after_warmup, 1),
        },
        "elapsed_s": round(time.monotonic() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=200, help="concurrent streaming clients")
    parser.add_argument("--seconds", type=float, default=60, help="how long the clients keep sending")
    parser.add_argument("--tokens", type=int, default=16, help="output tokens per streamed answer")
    parser.add_argument("--bad-every", type=float, default=0.5, help="seconds between bad requests")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    params = {"temperature": 0, "seed": 1}
    with direct_and_gateway(ctx=2048, parallel=4, params=params, separate_direct=False) as pair:
        result = asyncio.run(
            soak(pair.gateway_url, pair.gateway_pid, args.streams, args.seconds, args.tokens, args.bad_every)
        )
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    ok = result["unexpected"] == 0 and abs(result["rss_mib"]["drift_pct"]) <= 10
    print("soak:", "PASS" if ok else "FAIL", "(zero unexpected errors, RSS drift within ±10%)")


if __name__ == "__main__":
    main()
