"""Do the bundled model's generation defaults answer right and end on their own?

Two checks through a real gateway (Ollama's /api/chat, the model's own defaults unless --options):

  paris   "What is the capital of France?" with N different seeds: how many answers name Paris.
  open    every prompt in bench/open_prompts.txt (stories, haiku, lists, explanations, recipes, letters):
          how many answers end by the model's end-of-turn token (done_reason "stop") rather than a
          token cap ("length"), and how many tokens they take.

    .venv/bin/python -m bench.generation_defaults                  # a private gateway on a free port
    .venv/bin/python -m bench.generation_defaults --url http://127.0.0.1:11434
    .venv/bin/python -m bench.generation_defaults --options '{"temperature": 0.2}'   # try other values
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.common import free_port, wait_ready
from enginehouse.config import Config
from enginehouse.engines.llama_install import require_llama_server

MODEL = "smollm2:135m"
PARIS = "What is the capital of France?"
PROMPTS = Path(__file__).with_name("open_prompts.txt")


def open_prompts() -> list[str]:
    lines = (line.strip() for line in PROMPTS.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


async def ask(
    client: httpx.AsyncClient, url: str, prompt: str, options: dict[str, Any], gate: asyncio.Semaphore
) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "stream": False}
    if options:
        body["options"] = options
    async with gate:
        resp = await client.post(f"{url}/api/chat", json=body, timeout=None)
    resp.raise_for_status()
    answer = resp.json()
    ending = f"{answer.get('done_reason')} after {answer.get('eval_count')} tokens"
    print(f"{ending:>22}  {prompt[:50]!r}: {answer['message']['content'][:60]!r}", file=sys.stderr)
    return answer


async def measure(url: str, options: dict[str, Any], seeds: int, concurrency: int) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)
    prompts = open_prompts()
    async with httpx.AsyncClient() as client:
        paris = await asyncio.gather(
            *(ask(client, url, PARIS, {**options, "seed": seed}, gate) for seed in range(1, seeds + 1))
        )
        answers = await asyncio.gather(*(ask(client, url, p, options, gate) for p in prompts))
    right = sum("paris" in a["message"]["content"].lower() for a in paris)
    ended = [a for a in answers if a.get("done_reason") == "stop"]
    tokens = [int(a.get("eval_count") or 0) for a in answers]
    return {
        "options": options,
        "paris": f"{right}/{seeds}",
        "wrong_paris": [
            a["message"]["content"][:80] for a in paris if "paris" not in a["message"]["content"].lower()
        ],
        "ended_by_eos": f"{len(ended)}/{len(answers)}",
        "not_ended": [p for p, a in zip(prompts, answers, strict=True) if a.get("done_reason") != "stop"],
        "tokens_median": statistics.median(tokens),
        "tokens_max": max(tokens),
    }


def start_gateway(port: int, home: str) -> subprocess.Popen[bytes]:
    llama = require_llama_server(Config.from_env())
    env = {
        **os.environ,
        "ENGINEHOUSE_HOME": home,
        "ENGINEHOUSE_HOST": f"127.0.0.1:{port}",
        "ENGINEHOUSE_LLAMA_SERVER": str(llama.path),
    }
    cmd = [sys.executable, "-m", "enginehouse", "serve", "--preload", MODEL]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running gateway (default: start a private one)")
    parser.add_argument("--options", default="{}", help="Ollama options over the model's defaults (JSON)")
    parser.add_argument("--seeds", type=int, default=20, help="how many times to ask the Paris question")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    args = parser.parse_args()
    options = orjson.loads(args.options)
    if args.url:
        result = asyncio.run(measure(args.url, options, args.seeds, args.concurrency))
    else:
        with tempfile.TemporaryDirectory(prefix="eh-gen-") as home:
            port = free_port()
            proc = start_gateway(port, home)
            try:
                url = f"http://127.0.0.1:{port}"
                asyncio.run(wait_ready(f"{url}/api/version"))
                result = asyncio.run(measure(url, options, args.seeds, args.concurrency))
            finally:
                proc.terminate()
                proc.wait(30)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
