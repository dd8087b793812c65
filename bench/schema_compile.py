"""How long llama-server takes to compile structured-output inputs into a grammar, by size.

Starts one llama-server with the bundled model, then for each case sends a one-token chat completion
with the schema (``response_format``), the ``grammar`` or a tool, and reports the runner's CPU seconds
and wall seconds for it, beside an unconstrained request's. CPU seconds (from ``/proc``) stay meaningful
on a machine shared with other work; wall seconds do not. The bounds in ``enginehouse.api.limits`` were
picked from this table.

    python bench/schema_compile.py --port 21200 [--only enum] [--timeout 20]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from enginehouse.config import Config
from enginehouse.engines import llama_install
from enginehouse.store import bundled_model_file

Body = dict[str, Any]


def _schema(schema: Body) -> Body:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}}


def _nested(depth: int) -> Body:
    schema: Body = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def _tool(parameters: Body) -> Body:
    return {"tools": [{"type": "function", "function": {"name": "f", "parameters": parameters}}]}


def _gbnf_alternatives(n: int) -> str:
    return "root ::= " + " | ".join(f'"w{i}"' for i in range(n)) + "\n"


def _gbnf_rules(n: int) -> str:
    rules = [f'r{i} ::= "x{i}" r{i + 1}?' for i in range(n)]
    return "root ::= r0\n" + "\n".join(rules[:-1]) + f'\nr{n - 1} ::= "end"\n'


CASES: dict[str, Callable[[int], Body]] = {
    "enum": lambda n: _schema({"enum": [f"value-{i}" for i in range(n)]}),
    "properties": lambda n: _schema(
        {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(n)}}
    ),
    "required-properties": lambda n: _schema(
        {
            "type": "object",
            "properties": {f"p{i}": {"type": "integer"} for i in range(n)},
            "required": [f"p{i}" for i in range(n)],
        }
    ),
    "depth": lambda n: _schema(_nested(n)),
    "pattern-length": lambda n: _schema({"type": "string", "pattern": "^" + "(ab|cd)" * (n // 7) + "$"}),
    "pattern-repeat": lambda n: _schema({"type": "string", "pattern": f"^[a-z]{{0,{n}}}$"}),
    "string-maxLength": lambda n: _schema({"type": "string", "maxLength": n}),
    "array-maxItems": lambda n: _schema({"type": "array", "items": {"type": "integer"}, "maxItems": n}),
    "integer-range": lambda n: _schema({"type": "integer", "minimum": -n, "maximum": n}),
    "tool-enum": lambda n: _tool({"type": "object", "properties": {"x": {"enum": list(range(n))}}}),
    "grammar-alternatives": lambda n: {"grammar": _gbnf_alternatives(n)},
    "grammar-rules": lambda n: {"grammar": _gbnf_rules(n)},
    "grammar-repeat": lambda n: {"grammar": f"root ::= [a-z]{{0,{n}}}\n"},
}
SIZES: dict[str, tuple[int, ...]] = {
    "depth": (10, 50, 100, 200),
    "pattern-length": (100, 1_000, 10_000),
    "pattern-repeat": (100, 1_000, 10_000),
    "string-maxLength": (100, 1_000, 10_000),
    "array-maxItems": (100, 1_000, 10_000),
    "integer-range": (1_000, 10**9, 10**15),
    "grammar-repeat": (100, 1_000, 10_000),
}
DEFAULT_SIZES = (1_000, 10_000, 100_000)


def start(port: int) -> subprocess.Popen[bytes]:
    binary = llama_install.find_llama_server(Config())
    model = bundled_model_file()
    if binary is None or model is None:
        sys.exit("needs an installed llama-server and the bundled model")
    argv = [str(binary.path), "-m", str(model), "--port", str(port), "--host", "127.0.0.1"]
    argv += ["-c", "2048", "-np", "1", "--jinja"]  # as the gateway starts runners, with one slot
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    sys.exit("llama-server did not become ready")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def timed(
    client: httpx.Client, pid: int, extra: Body, timeout: float, tokens: int
) -> tuple[float, float, int | str]:
    """(runner CPU seconds, wall seconds, status) of one greedy request for ``tokens`` tokens
    (0: the grammar is compiled when the slot starts, and nothing is sampled)."""
    body = {"messages": [{"role": "user", "content": "hi"}], "n_predict": tokens, "temperature": 0, **extra}
    cpu, started = cpu_seconds(pid), time.monotonic()
    try:
        status: int | str = client.post("/v1/chat/completions", json=body, timeout=timeout).status_code
    except httpx.TimeoutException:
        status = "timeout"
    return cpu_seconds(pid) - cpu, time.monotonic() - started, status


def cases(only: str | None, sizes: tuple[int, ...] | None) -> Iterator[tuple[str, int, Body]]:
    for name, build in CASES.items():
        if only and only not in name:
            continue
        for n in sizes or SIZES.get(name, DEFAULT_SIZES):
            yield name, n, build(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=21200)
    parser.add_argument("--only", help="run the cases whose name contains this")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds before a case counts as stuck")
    parser.add_argument("--sizes", help="comma-separated sizes instead of each case's own")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the fastest counts")
    parser.add_argument("--tokens", type=int, default=0, help="tokens to sample (0: compile only)")
    args = parser.parse_args()
    proc = start(args.port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{args.port}") as client:
            for _ in range(2):  # warm-up
                timed(client, proc.pid, {}, args.timeout, args.tokens)
            base = sorted(timed(client, proc.pid, {}, args.timeout, args.tokens)[:2] for _ in range(5))[2]
            print(f"{args.tokens} tokens; unconstrained: {base[0]:.3f} runner CPU s, {base[1]:.3f} wall s\n")
            print("| case | size | runner CPU s | wall s | status |")
            print("|---|---:|---:|---:|---|")
            sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else None
            for name, n, extra in cases(args.only, sizes):
                if proc.poll() is not None:
                    proc = start(args.port)
                runs = [timed(client, proc.pid, extra, args.timeout, args.tokens) for _ in range(args.repeat)]
                cpu, wall, status = min(runs)
                row = f"| {name} | {n:,} | {cpu:.2f} | {wall:.2f} | {status} |"
                print(row, flush=True)
                if status == "timeout":  # the runner is stuck compiling: start a fresh one
                    proc.kill()
                    proc.wait()
                    proc = start(args.port)
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
