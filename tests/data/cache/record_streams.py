"""Record the answers of a real gateway (the bundled model on a real llama-server) on both doors, as the
client received them, for the response-cache tests. Run once; the files are checked in:

The bundled model makes no tool calls, so the tool-call streams are written by hand in llama-server's
shape (``openai-chat-toolcall-stream.sse``) and put through the Ollama door's own translator for
``ollama-chat-toolcall-stream.ndjson``.

    .venv/bin/python tests/data/cache/record_streams.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from enginehouse.api.ollama_door import OllamaEncoder
from enginehouse.config import Config
from enginehouse.engines import llama_install
from enginehouse.engines.openai_wire import events_of
from enginehouse.server.runtime import BackgroundServer

HERE = Path(__file__).parent
MODEL = "smollm2:135m"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
ASK = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]
HELLO = [{"role": "user", "content": "Say hello in five words."}]

# file name -> (path, body)
REQUESTS: dict[str, tuple[str, dict]] = {
    "ollama-chat-stream.ndjson": (
        "/api/chat",
        {"model": MODEL, "messages": HELLO, "options": {"temperature": 0, "num_predict": 24}},
    ),
    "ollama-chat.json": (
        "/api/chat",
        {
            "model": MODEL,
            "messages": HELLO,
            "stream": False,
            "options": {"temperature": 0, "num_predict": 24},
        },
    ),
    "ollama-generate-stream.ndjson": (
        "/api/generate",
        {"model": MODEL, "prompt": "Count to five:", "options": {"seed": 7, "num_predict": 16}},
    ),
    "openai-chat-stream.sse": (
        "/v1/chat/completions",
        {
            "model": MODEL,
            "messages": HELLO,
            "temperature": 0,
            "max_tokens": 24,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    "openai-chat.json": (
        "/v1/chat/completions",
        {"model": MODEL, "messages": HELLO, "temperature": 0, "max_tokens": 24},
    ),
    "openai-completion-stream.sse": (
        "/v1/completions",
        {"model": MODEL, "prompt": "Count to five:", "seed": 7, "max_tokens": 16, "stream": True},
    ),
}


def _chunk(delta: dict, finish: str | None = None, **extra: object) -> dict:
    return {
        "choices": [{"finish_reason": finish, "index": 0, "delta": delta}] if delta is not None else [],
        "created": 1795495784,
        "id": "chatcmpl-i1wIzsAXS0ebAN2kyqlRZLK9N2zkyZa6",
        "model": MODEL,
        "system_fingerprint": "b0-0c1e570",
        "object": "chat.completion.chunk",
        **extra,
    }


def tool_call_streams() -> None:
    call = {"index": 0, "id": "call_Xq3MPBZ1", "type": "function"}
    chunks = [
        _chunk({"role": "assistant", "content": None}),
        _chunk({"tool_calls": [{**call, "function": {"name": "get_weather", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ': "Paris"}'}}]}),
        _chunk({}, "tool_calls"),
        _chunk(
            None,
            usage={"completion_tokens": 12, "prompt_tokens": 31, "total_tokens": 43},
            timings={"prompt_n": 31, "prompt_ms": 70.5, "predicted_n": 12, "predicted_ms": 410.2},
        ),
    ]
    sse = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    (HERE / "openai-chat-toolcall-stream.sse").write_bytes(sse)
    encoder = OllamaEncoder(MODEL, "chat", started=time.monotonic() - 0.5, load_duration=0.0)
    lines = []
    for chunk in chunks:
        for event in events_of(chunk):
            encoder.tally.see(event, time.monotonic())
            lines += encoder.objects(event)
    lines += encoder.closing()
    ndjson = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    (HERE / "ollama-chat-toolcall-stream.ndjson").write_bytes(ndjson)


def main() -> int:
    tool_call_streams()
    if "--tool-calls-only" in sys.argv:
        return 0
    user = Config.from_env()
    binary = llama_install.find_llama_server(user) or llama_install.install(user)
    with tempfile.TemporaryDirectory() as home:
        config = Config.from_env(
            {}, home=Path(home), llama_server=binary.path, num_parallel=1, ctx_size=1024, cache_ram_mib=64
        )
        with BackgroundServer(config) as srv, httpx.Client(base_url=srv.base_url, timeout=300) as http:
            for name, (path, body) in REQUESTS.items():
                resp = http.post(path, json=body)
                if resp.status_code != 200:
                    print(f"{name}: {resp.status_code} {resp.text[:300]}")
                    continue
                (HERE / name).write_bytes(resp.content)
                print(f"{name}: {len(resp.content)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
