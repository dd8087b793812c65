"""Two builds of enginehouse side by side: the hot-path TTFT of an older commit against this tree, and
(with STREAM_ROUNDS) the gateway's CPU per relayed token.

    git worktree add /tmp/eh-base REV
    .venv/bin/python -m bench.ab_overhead ROUNDS /tmp/eh-base/src [STREAM_ROUNDS [STREAM_TOKENS]]

Two gateways (the older code, run with PYTHONPATH at BASE_SRC, and this tree), each with its own
llama-server runner reached directly too. Each round sends one short stream (8 tokens, concurrency 1) per
path, order rotated, so the machine's drift hits all paths alike; three warm-up rounds are left out.
Reported: p50 TTFT per path, and per path the paired median of this tree minus the older code with a
bootstrap 95% CI over rounds: a change that costs nothing on the hot path has an interval around 0.

Stream phase (STREAM_ROUNDS > 0): each round sends one stream of STREAM_TOKENS tokens (default 300) per
path, order rotated, and reads the CPU time the path's gateway process spent on it from /proc (10 ms
ticks, so a stream must be long). Reported per build and door: tokens/s and the gateway's CPU per token
(median over rounds), and per door the paired ratio of this tree's CPU per token to the older code's,
with a bootstrap 95% CI. openai-api is the byte relay, ollama-api the canonical path (decoded and
re-encoded); on 2 cores that llama-server computes on, that CPU is taken from the engine's steps.
"""

import asyncio
import os
import statistics
import sys
from contextlib import ExitStack

import aiohttp

from bench.common import bootstrap_ci, cpu_seconds, direct_and_gateway, one_stream
from bench.gateway_overhead import rotated, targets

rounds, base_src = int(sys.argv[1]), sys.argv[2]
stream_rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 0
stream_tokens = int(sys.argv[4]) if len(sys.argv) > 4 else 300
DOORS = ("direct", "openai-api", "ollama-api")
params = {"temperature": 0, "seed": 1, "num_predict": 8}
with ExitStack() as stack:
    os.environ["PYTHONPATH"] = base_src
    before = stack.enter_context(
        direct_and_gateway(ctx=512, parallel=1, params=params, separate_direct=False)
    )
    del os.environ["PYTHONPATH"]
    after = stack.enter_context(direct_and_gateway(ctx=512, parallel=1, params=params, separate_direct=False))
    paths, streams, pids = {}, {}, {}
    for tag, pair in (("before", before), ("after", after)):
        for name, target in targets(pair, 8).items():
            if name in DOORS:  # the doors both builds have
                paths[f"{tag}:{name}"] = target
        for name, target in targets(pair, stream_tokens).items():
            if name in DOORS[1:]:
                streams[f"{tag}:{name}"] = target
                pids[f"{tag}:{name}"] = pair.gateway_pid
    names = tuple(paths)

    async def main() -> dict[str, list[float]]:
        out: dict[str, list[float]] = {n: [] for n in names}
        conn = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=300)) as s:
            for rnd in range(rounds + 3):
                for n in rotated(rnd, names):
                    url, body, headers = paths[n]
                    sample = await one_stream(s, url, body, n.endswith("ollama-api"), headers)
                    if rnd >= 3:  # warm-up rounds excluded
                        out[n].append(sample.ttft)
                if rnd % 25 == 0:
                    print(f"round {rnd}", file=sys.stderr)
        return out

    async def stream_phase() -> dict[str, list[tuple[float, float]]]:
        """(tokens/s, gateway CPU ms a token) per path and round."""
        out: dict[str, list[tuple[float, float]]] = {n: [] for n in streams}
        conn = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as s:
            for rnd in range(stream_rounds + 1):
                for n in rotated(rnd, tuple(streams)):
                    url, body, headers = streams[n]
                    cpu = cpu_seconds(pids[n])
                    sample = await one_stream(s, url, body, n.endswith("ollama-api"), headers)
                    cpu = cpu_seconds(pids[n]) - cpu
                    if rnd >= 1 and sample.tokens:  # the first round warms up
                        out[n].append((sample.tokens / sample.e2e, cpu * 1000 / sample.tokens))
                print(f"stream round {rnd}", file=sys.stderr)
        return out

    ttft = asyncio.run(main())
    streamed = asyncio.run(stream_phase()) if stream_rounds else {}
for n in names:
    print(f"{n:<20} TTFT p50 {statistics.median(ttft[n]) * 1000:7.2f} ms")
for door in DOORS:
    a, b = ttft[f"after:{door}"], ttft[f"before:{door}"]
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    lo, hi = bootstrap_ci(len(diffs), lambda idx, d=diffs: statistics.median([d[i] for i in idx]))
    print(
        f"{door:<12} after - before, paired median {statistics.median(diffs) * 1000:+.2f} ms "
        f"[95% CI {lo * 1000:+.2f}, {hi * 1000:+.2f}] over {len(diffs)} rounds"
    )
for tag in ("before", "after"):
    for door in ("openai-api", "ollama-api"):
        d = [x - y for x, y in zip(ttft[f"{tag}:{door}"], ttft[f"{tag}:direct"], strict=True)]
        print(f"{tag:<7}{door:<12} door - direct, paired median {statistics.median(d) * 1000:+.2f} ms")
for n, rows in streamed.items():
    print(
        f"{n:<20} {statistics.median(r[0] for r in rows):6.1f} tok/s, gateway CPU "
        f"{statistics.median(r[1] for r in rows):.3f} ms a token"
    )
for door in DOORS[1:] if streamed else ():
    a, b = streamed[f"after:{door}"], streamed[f"before:{door}"]
    ratios = [x[1] / y[1] for x, y in zip(a, b, strict=True) if y[1] > 0]
    lo, hi = bootstrap_ci(len(ratios), lambda idx, r=ratios: statistics.median([r[i] for i in idx]))
    print(
        f"{door:<12} gateway CPU a token, after / before: {statistics.median(ratios):.3f}x "
        f"[95% CI {lo:.3f}, {hi:.3f}] over {len(ratios)} rounds"
    )
