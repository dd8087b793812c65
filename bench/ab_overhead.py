"""Two builds of enginehouse side by side: the hot-path TTFT of an older commit against this tree.

    git worktree add /tmp/eh-base REV
    .venv/bin/python -m bench.ab_overhead ROUNDS /tmp/eh-base/src

Two gateways (the older code, run with PYTHONPATH at BASE_SRC, and this tree), each with its own
llama-server runner reached directly too. Each round sends one short stream (8 tokens, concurrency 1) per
path, order rotated, so the machine's drift hits all paths alike; three warm-up rounds are left out.
Reported: p50 TTFT per path, and per path the paired median of this tree minus the older code with a
bootstrap 95% CI over rounds: a change that costs nothing on the hot path has an interval around 0.
"""

import asyncio
import os
import statistics
import sys
from contextlib import ExitStack

import aiohttp

from bench.common import bootstrap_ci, direct_and_gateway, one_stream
from bench.gateway_overhead import rotated, targets

rounds, base_src = int(sys.argv[1]), sys.argv[2]
DOORS = ("direct", "openai-api", "ollama-api")
params = {"temperature": 0, "seed": 1, "num_predict": 8}
with ExitStack() as stack:
    os.environ["PYTHONPATH"] = base_src
    before = stack.enter_context(
        direct_and_gateway(ctx=512, parallel=1, params=params, separate_direct=False)
    )
    del os.environ["PYTHONPATH"]
    after = stack.enter_context(direct_and_gateway(ctx=512, parallel=1, params=params, separate_direct=False))
    paths = {}
    for tag, pair in (("before", before), ("after", after)):
        for name, target in targets(pair, 8).items():
            if name in DOORS:  # the doors both builds have
                paths[f"{tag}:{name}"] = target
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

    ttft = asyncio.run(main())
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
