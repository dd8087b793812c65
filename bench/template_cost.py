"""What a chat template costs per request, rendered in the gateway (Ollama Go templates) or by the
engine (GGUF Jinja templates, llama-server --jinja), for the same conversation.

    .venv/bin/python -m bench.template_cost [--turns 1,10,50] [--n 2000]

gateway-go   enginehouse.api.gotemplate.render_chat with Ollama's ChatML template, in-process
engine-jinja llama-server's /apply-template round trip on loopback (includes HTTP: an upper bound)
Both produce the same prompt for these messages (checked before timing).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import httpx

from bench.common import free_port
from enginehouse.api.gotemplate import render_chat
from enginehouse.config import Config
from enginehouse.engines.llama_install import require_llama_server
from enginehouse.engines.llama_server import LlamaServerSettings, build_argv
from enginehouse.store import bundled_model_file

CHATML = (
    "{{- if .Messages }}{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 -}}"
    "<|im_start|>{{ .Role }}\n{{ .Content }}{{ if not $last }}<|im_end|>\n{{ end }}"
    '{{ if and $last (ne .Role "assistant") }}<|im_end|>\n<|im_start|>assistant\n{{ end }}{{- end }}'
    "{{- else }}{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ end }}"
    "{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"
)


def conversation(turns: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"Question number {i}: what is {i} plus {i}?"})
        if i < turns - 1:
            messages.append({"role": "assistant", "content": f"{i} plus {i} is {2 * i}."})
    return messages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", default="1,10,50")
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    gguf = bundled_model_file()
    assert gguf is not None
    port = free_port()
    settings = LlamaServerSettings(gguf, "bench", ctx_per_slot=512, num_parallel=1, cache_ram_mib=0)
    engine = subprocess.Popen(
        build_argv(require_llama_server(Config.from_env()).path, settings, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/apply-template"
    try:
        with httpx.Client() as client:
            for _ in range(300):
                try:
                    if client.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            print(f"{'turns':>5}{'gateway-go':>14}{'engine-jinja':>15}   same prompt")
            for turns in (int(t) for t in args.turns.split(",")):
                messages = conversation(turns)
                ours = render_chat(CHATML, messages)
                theirs = client.post(url, json={"messages": messages}).json()["prompt"]
                go_times, jinja_times = [], []
                for _ in range(args.n):
                    t = time.perf_counter()
                    render_chat(CHATML, messages)
                    go_times.append(time.perf_counter() - t)
                for _ in range(max(1, args.n // 10)):
                    t = time.perf_counter()
                    client.post(url, json={"messages": messages})
                    jinja_times.append(time.perf_counter() - t)
                print(
                    f"{turns:>5}{statistics.median(go_times) * 1e6:>12.0f}us"
                    f"{statistics.median(jinja_times) * 1e6:>13.0f}us   {ours == theirs}"
                )
    finally:
        engine.terminate()
        engine.wait(30)


if __name__ == "__main__":
    main()
