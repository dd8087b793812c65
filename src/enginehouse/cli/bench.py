"""``enginehouse bench``: load any OpenAI or Ollama endpoint (ours or not) and report as vllm does."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import platform
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from enginehouse.config import Config
from enginehouse.loadgen import report as rep
from enginehouse.loadgen import runner as runner_mod
from enginehouse.loadgen.engines import local_engines
from enginehouse.loadgen.plot import figure_png
from enginehouse.loadgen.runner import LoadPlan
from enginehouse.loadgen.stats import parse_slo
from enginehouse.loadgen.targets import discover_model, model_overrides, parse_targets
from enginehouse.loadgen.workload import find_tokenizer, load_prompts, synthetic

LEVELS_HELP = "Comma-separated levels, e.g. 1,2,4,8."


def _levels(value: str | None, kind: type) -> list[Any]:
    if not value:
        return []
    try:
        levels = [kind(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated numbers") from None
    if not levels or any(x <= 0 for x in levels):
        raise click.BadParameter(f"{value!r}: levels must be positive")
    return levels


def _run(coro: Any) -> Any:
    """On uvloop where installed: the load generator's own per-chunk cost is part of what it measures."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _command_line() -> str:
    args = sys.argv[1:]
    return "enginehouse " + shlex.join(args) if "bench" in args else "enginehouse bench"


@click.command()
@click.option(
    "targets",
    "--target",
    "-t",
    multiple=True,
    metavar="[LABEL:]DIALECT=URL",
    help="An endpoint to load (repeatable), DIALECT openai or ollama: "
    "openai=http://127.0.0.1:8080/v1, direct:openai=http://127.0.0.1:8080, ollama=http://HOST:11434.",
)
@click.option(
    "--engines",
    is_flag=True,
    help="Start MODEL on every engine here (llama-server alone, and enginehouse's two doors in "
    "front of it) and compare them. Needs --model.",
)
@click.option(
    "models",
    "--model",
    "-m",
    multiple=True,
    metavar="NAME | LABEL=NAME",
    help="Model to ask for (default: the first each target lists); LABEL=NAME for one target.",
)
@click.option(
    "--concurrency", "-c", default=None, help=f"Requests in flight. {LEVELS_HELP} [default: 1,2,4,8]"
)
@click.option("--rate", default=None, help=f"Poisson arrivals in requests/s instead. {LEVELS_HELP}")
@click.option("--max-concurrency", type=click.IntRange(1), help="With --rate: cap on requests in flight.")
@click.option(
    "--requests",
    "-n",
    type=click.IntRange(1),
    default=40,
    show_default=True,
    help="Measured requests per target and level.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds per target and level (stops new requests; with --requests, whichever first).",
)
@click.option(
    "--warmup",
    type=click.IntRange(0),
    help="Excluded warm-up requests per target and level [default: one batch at the level's width].",
)
@click.option(
    "--rounds",
    type=click.IntRange(1),
    default=2,
    show_default=True,
    help="Each level is split into rounds; targets take turns in rotating order every round.",
)
@click.option(
    "--input-len",
    type=click.IntRange(1),
    default=128,
    show_default=True,
    help="Synthetic prompt length in tokens (exact where a target has POST /tokenize).",
)
@click.option(
    "--output-len",
    type=click.IntRange(1),
    default=128,
    show_default=True,
    help="Tokens to generate (max_tokens / num_predict).",
)
@click.option(
    "--prompts",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSONL of real prompts: {"prompt": ...} or {"messages": [...]}, optional "max_tokens".',
)
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option(
    "--ignore-eos",
    is_flag=True,
    help="Ask OpenAI-dialect targets to generate all --output-len tokens (llama-server, vLLM).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="For prompts and arrival times.")
@click.option(
    "slos",
    "--slo",
    multiple=True,
    metavar="NAME=MS",
    help="Goodput bound (repeatable): ttft_ms, tpot_ms, itl_ms, e2e_ms.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    help="Seconds a request may take before it counts as an error (stalled targets).",
)
@click.option("--compare", is_flag=True, help="Each target's ratio to the first (on with --engines).")
@click.option("json_out", "--json", metavar="FILE|-", help="Write the report as JSON (- for stdout).")
@click.option("--html", type=click.Path(dir_okay=False, path_type=Path), help="Write an HTML report.")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), help="Write the figure as PNG.")
@click.option(
    "--parallel",
    type=click.IntRange(1),
    help="--engines: llama-server slots [default: the highest concurrency level].",
)
@click.pass_obj
def bench(config: Config, **opts: Any) -> None:
    """Measure LLM endpoints under load: TTFT, TPOT, ITL, latency, throughput and goodput.

    \b
      enginehouse bench -t openai=http://127.0.0.1:8080/v1 -t ollama=http://127.0.0.1:11434 -m smollm2:135m
      enginehouse bench --engines -m smollm2:135m -c 1,4,8 --output-len 64 --html report.html
      enginehouse bench -t openai=URL --rate 0.5,1,2 --duration 60 --slo ttft_ms=500 --slo tpot_ms=50
    """
    from rich.console import Console

    if opts["rate"] and opts["concurrency"]:
        raise click.UsageError(
            "--concurrency and --rate are two load patterns: give one (cap rate with --max-concurrency)"
        )
    rates = _levels(opts["rate"], float)
    levels = rates or _levels(opts["concurrency"] or "1,2,4,8", int)
    try:
        slos = dict(parse_slo(s) for s in opts["slos"])
        targets = parse_targets(list(opts["targets"]))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    default_model, per_model = model_overrides(opts["models"])
    if opts["engines"] == bool(targets):
        raise click.UsageError("give --target URLs, or --engines with --model (not both)")
    if opts["engines"] and not default_model:
        raise click.UsageError("--engines needs --model NAME")
    unknown = set(per_model) - {t.label for t in targets}
    if unknown and not opts["engines"]:
        raise click.UsageError(f"--model for unknown target label(s): {', '.join(sorted(unknown))}")
    sampling: dict[str, Any] = {"temperature": opts["temperature"], "seed": opts["seed"]}
    if opts["ignore_eos"]:
        sampling["ignore_eos"] = True
    plan = LoadPlan(
        mode="rate" if rates else "concurrency", levels=levels, requests=opts["requests"],
        duration=opts["duration"], warmup=opts["warmup"], rounds=opts["rounds"], timeout=opts["timeout"],
        max_concurrency=opts["max_concurrency"], seed=opts["seed"], sampling=sampling,
    )  # fmt: skip
    json_to_stdout = opts["json_out"] == "-"
    console = Console(stderr=json_to_stdout)
    if not console.is_terminal:
        console = Console(stderr=json_to_stdout, width=160)  # piped: wide rows rather than wrapped cells
    err = Console(stderr=True)

    with contextlib.ExitStack() as stack:
        engines: list[dict[str, str]] = []
        notes: list[str] = []
        if opts["engines"]:
            parallel = opts["parallel"] or int(max(levels) if not rates else opts["max_concurrency"] or 8)
            ctx = _ctx_per_slot(opts)
            with err.status(f"starting llama-server and enginehouse for {default_model} …"):
                setup = stack.enter_context(
                    local_engines(default_model, config, parallel=parallel, ctx_per_slot=ctx)
                )
            targets, engines, notes = setup.targets, setup.engines, setup.notes
            opts["compare"] = True
        else:
            targets = [
                dataclasses.replace(t, model=per_model.get(t.label, default_model or "")) for t in targets
            ]
        report = _run(_measure(targets, plan, slos, opts, err))
    report["command"] = _command_line()
    report["model"] = default_model or ", ".join(sorted({t["model"] for t in report["targets"]}))
    report["engines"] = engines
    report["notes"] = notes + report["notes"]
    _write_outputs(report, opts, console, json_to_stdout)
    if not any(r["completed"] for r in report["results"]):
        sys.exit(1)


def _ctx_per_slot(opts: dict[str, Any]) -> int:
    """Enough context per slot for the prompt, the answer and the chat template, in 256-token steps."""
    if opts["prompts"]:
        longest = max((len(line) for line in opts["prompts"].read_text().splitlines()), default=0)
        need = longest // 2 + 1024  # a generous bound: two characters a token, plus any max_tokens up to 1k
    else:
        need = opts["input_len"] + opts["output_len"] + 128
    return max(512, math.ceil(need / 256) * 256)


async def _measure(targets: list, plan: Any, slos: dict[str, float], opts: dict[str, Any], err: Any) -> dict:
    import aiohttp
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    notes: list[str] = []
    async with aiohttp.ClientSession() as session:
        for i, t in enumerate(targets):
            if not t.model:
                found = await discover_model(session, t)
                targets[i] = dataclasses.replace(t, model=found or "default")
                notes.append(
                    f"{t.label}: model {found!r} is the first it lists"
                    if found
                    else f"{t.label}: lists no model; asked for 'default'"
                )
        if opts["prompts"]:
            try:
                workload = load_prompts(opts["prompts"], opts["output_len"])
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--prompts") from None
        else:
            with err.status("preparing prompts …"):
                tok = await find_tokenizer(session, targets)
                workload = await synthetic(
                    plan.prompts_needed(len(targets)), opts["input_len"], opts["output_len"], opts["seed"],
                    tok[0] if tok else None, tok[1] if tok else None,
                )  # fmt: skip
    if plan.mode == "concurrency" and plan.requests is not None:
        thin = [x for x in plan.levels if min(n or 0 for n in plan.round_sizes()) < 2 * x]
        if thin:
            notes.append(
                f"at concurrency {', '.join(map(str, thin))} a round has fewer than twice the requests "
                "it keeps in flight, so the tail of each round runs below that width (raise --requests)"
            )
    if opts["ignore_eos"] and any(t.dialect == "ollama" for t in targets):
        notes.append("--ignore-eos reaches OpenAI-dialect targets only: Ollama's API has no such option")

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("starting", total=None)

        class BarProgress(runner_mod.Progress):
            def describe(self, text: str) -> None:
                bar.update(task, description=text)
                if not err.is_terminal:  # no live bar in a log: one line per step instead
                    err.print(text, highlight=False, markup=False)

            def advance(self, n: int = 1) -> None:
                bar.advance(task, n)

        run = runner_mod.Runner(targets, workload, plan, BarProgress())
        bar.update(task, total=run.total_requests())
        started = datetime.now(UTC)
        load_before = _loadavg()
        runs = await run.run()

    return {
        "enginehouse_bench": 1,
        "started_at": started.isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            # Other work on the machine skews every figure: the 1-minute load average before and after.
            "loadavg_1m": [load_before, _loadavg()],
        },
        "mode": plan.mode,
        "levels": plan.levels,
        "settings": {
            "requests": plan.requests,
            "duration_s": plan.duration,
            "warmup": plan.warmup,
            "rounds": plan.rounds,
            "timeout_s": plan.timeout,
            "max_concurrency": plan.max_concurrency,
            "sampling": plan.sampling,
        },
        "slos": {f"{k}_ms": v * 1000 for k, v in slos.items()},
        "workload": workload.as_json(),
        "targets": [dataclasses.asdict(t) for t in targets],
        "notes": notes + workload.notes,
        "results": runner_mod.rows(runs, slos),
    }


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not on every platform
        return None


def _write_outputs(report: dict[str, Any], opts: dict[str, Any], console: Any, json_to_stdout: bool) -> None:

    if opts["compare"] and len(report["targets"]) > 1:
        rep.add_comparison(report)
    rep.print_report(report, console)
    if opts["json_out"]:
        data = rep.to_json(report)
        if json_to_stdout:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        else:
            Path(opts["json_out"]).write_bytes(data)
    if opts["html"] or opts["png"]:
        png = figure_png(report)
        if opts["png"]:
            opts["png"].write_bytes(png)
        if opts["html"]:
            opts["html"].write_text(rep.render_html(report, png), encoding="utf-8")


COMMANDS = (bench,)
