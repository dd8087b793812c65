"""Targets and the two stream dialects, parsed from bytes recorded from a real llama-server
(OpenAI SSE with include_usage) and a real enginehouse gateway (Ollama NDJSON)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from enginehouse.loadgen.runner import run_fixed, run_poisson
from enginehouse.loadgen.stats import RequestResult
from enginehouse.loadgen.targets import (
    Event,
    Target,
    chat_body,
    model_overrides,
    parse_ollama_line,
    parse_openai_payload,
    parse_target,
    parse_targets,
    stream_chat,
)
from enginehouse.loadgen.workload import WorkItem, exact_prompt, load_prompts, synthetic
from enginehouse.wire import SSEParser

DATA = Path(__file__).parent / "data" / "loadgen"
# llama-server 0c1e570, POST /v1/chat/completions, stream with stream_options.include_usage, max_tokens 6.
LLAMA_SERVER_SSE = tuple((DATA / "llama-server-chat.sse").read_bytes().splitlines(keepends=True))
# enginehouse /api/chat (Ollama door) in front of the same llama-server, num_predict 6.
ENGINEHOUSE_NDJSON = tuple((DATA / "enginehouse-ollama-chat.ndjson").read_bytes().splitlines(keepends=True))


@pytest.mark.parametrize(
    ("spec", "label", "dialect", "url"),
    [
        ("openai=http://127.0.0.1:8080/v1", "openai@127.0.0.1:8080", "openai", "http://127.0.0.1:8080/v1"),
        ("openai=http://127.0.0.1:8080", "openai@127.0.0.1:8080", "openai", "http://127.0.0.1:8080/v1"),
        ("openai=http://127.0.0.1:8080/", "openai@127.0.0.1:8080", "openai", "http://127.0.0.1:8080/v1"),
        ("direct:openai=http://h:1/v1/", "direct", "openai", "http://h:1/v1"),
        ("vllm:OpenAI=https://gpu.lan/prefix/v1", "vllm", "openai", "https://gpu.lan/prefix/v1"),
        ("ollama=http://127.0.0.1:11434", "ollama@127.0.0.1:11434", "ollama", "http://127.0.0.1:11434"),
        ("eh-ollama:ollama=http://127.0.0.1:9/api", "eh-ollama", "ollama", "http://127.0.0.1:9"),
    ],
)
def test_parse_target(spec: str, label: str, dialect: str, url: str) -> None:
    t = parse_target(spec)
    assert (t.label, t.dialect, t.url) == (label, dialect, url)


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("http://127.0.0.1:8080/v1", "DIALECT=URL"),
        ("grpc=http://127.0.0.1:8080", "dialect must be"),
        ("openai=127.0.0.1:8080", "not an http"),
        ("openai=ftp://h/v1", "not an http"),
        ("a b:openai=http://h:1", "label"),
    ],
)
def test_parse_target_refuses(spec: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_target(spec)


def test_targets_need_distinct_labels() -> None:
    with pytest.raises(ValueError, match="labelled"):
        parse_targets(["openai=http://h:1/v1", "openai=http://h:1"])
    assert [t.label for t in parse_targets(["a:openai=http://h:1", "b:openai=http://h:1"])] == ["a", "b"]


def test_target_urls() -> None:
    t = parse_target("openai=http://h:8000/v1")
    assert (t.chat_url, t.root) == ("http://h:8000/v1/chat/completions", "http://h:8000")
    o = parse_target("ollama=http://h:11434")
    assert o.chat_url == "http://h:11434/api/chat"


def test_model_overrides() -> None:
    assert model_overrides(["m1", "direct=m2"]) == ("m1", {"direct": "m2"})
    assert model_overrides([]) == (None, {})


def parse_openai_line(line: bytes) -> Event | None:
    """A recorded SSE line through the package's SSE parser (a blank line ends its event)."""
    parser = SSEParser()
    payloads = [*parser.feed(line), *parser.feed(b"\n")]
    return parse_openai_payload(payloads[0]) if payloads else None


def test_openai_stream_from_llama_server() -> None:
    events = [e for line in LLAMA_SERVER_SSE for e in [parse_openai_line(line)] if e is not None]
    text = "".join(e.content for e in events)
    assert text == "Hello, welcome to my little"
    assert sum(bool(e.content) for e in events) == 6
    usage = [e for e in events if e.output_tokens is not None]
    assert [(e.output_tokens, e.input_tokens) for e in usage] == [(6, 36)]
    assert events[-1].done and not any(e.done for e in events[:-1])
    assert parse_openai_line(b"\n") is None and parse_openai_line(b": keep-alive\n") is None


def test_openai_stream_error_event() -> None:
    event = parse_openai_line(b'data: {"error": {"message": "slot unavailable", "type": "server_error"}}\n')
    assert event is not None and event.error == "slot unavailable"


def test_ollama_stream_from_enginehouse() -> None:
    events = [e for line in ENGINEHOUSE_NDJSON for e in [parse_ollama_line(line)] if e is not None]
    assert "".join(e.content for e in events) == "Hello, hello, hello!"
    assert sum(bool(e.content) for e in events) == 6
    assert events[-1].done and (events[-1].output_tokens, events[-1].input_tokens) == (6, 26)
    error = parse_ollama_line(b'{"error":"model nope:1 not found"}\n')  # as the gateway answers a 404
    assert error is not None and error.error == "model nope:1 not found"


def test_chat_bodies_per_dialect() -> None:
    messages = [{"role": "user", "content": "hi"}]
    sampling = {"temperature": 0.0, "seed": 1, "ignore_eos": True}
    openai = chat_body(Target("a", "openai", "http://h/v1", "m"), messages, 16, sampling)
    assert openai["max_tokens"] == 16 and openai["stream"] and openai["ignore_eos"]
    assert openai["stream_options"] == {"include_usage": True}
    ollama = chat_body(Target("b", "ollama", "http://h", "m"), messages, 16, sampling)
    assert ollama["options"] == {"num_predict": 16, "temperature": 0.0, "seed": 1}
    assert ollama["stream"] and ollama["model"] == "m"


async def replay(lines: tuple[bytes, ...], content_type: str, gap: float = 0.01) -> web.AppRunner:
    """A server that replays recorded stream lines with a gap between them (as tokens arrive)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        for line in lines:
            await resp.write(line)
            await asyncio.sleep(gap)
        return resp

    async def fail(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "model not loaded"}}, status=500)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    app.router.add_post("/api/chat", handler)
    app.router.add_post("/fail/v1/chat/completions", fail)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def _port(runner: web.AppRunner) -> int:
    return runner.addresses[0][1]


@pytest.mark.parametrize(
    ("dialect", "lines", "ctype", "inputs"),
    [
        ("openai", LLAMA_SERVER_SSE, "text/event-stream", 36),
        ("ollama", ENGINEHOUSE_NDJSON, "application/x-ndjson", 26),
    ],
)
def test_stream_chat_times_a_replayed_stream(
    dialect: str, lines: tuple[bytes, ...], ctype: str, inputs: int
) -> None:
    async def main() -> RequestResult:
        runner = await replay(lines, ctype)
        base = f"http://127.0.0.1:{_port(runner)}" + ("/v1" if dialect == "openai" else "")
        try:
            async with aiohttp.ClientSession() as session:
                target = Target("t", dialect, base, "m")  # type: ignore[arg-type]
                return await stream_chat(session, target, {"model": "m"}, timeout=10)
        finally:
            await runner.cleanup()

    r = asyncio.run(main())
    assert r.ok, r.error
    assert (r.output_tokens, r.input_tokens, r.token_source) == (6, inputs, "server")
    assert len(r.itl) == 5 and all(gap > 0.005 for gap in r.itl)
    assert 0 < r.ttft < r.e2e < 5
    assert r.tpot == pytest.approx((r.e2e - r.ttft) / 5)


def test_stream_chat_reports_http_errors_and_refused_connections() -> None:
    async def main() -> tuple[RequestResult, RequestResult]:
        runner = await replay((), "text/plain")
        try:
            async with aiohttp.ClientSession() as session:
                failing = Target("f", "openai", f"http://127.0.0.1:{_port(runner)}/fail/v1", "m")
                refused = Target("r", "openai", "http://127.0.0.1:9/v1", "m")
                return (
                    await stream_chat(session, failing, {}, timeout=5),
                    await stream_chat(session, refused, {}, timeout=5),
                )
        finally:
            await runner.cleanup()

    failed, refused = asyncio.run(main())
    assert not failed.ok and failed.error == "HTTP 500: model not loaded"
    assert not refused.ok and refused.error


def test_load_prompts(tmp_path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"prompt": "hi"}\n\n{"messages": [{"role": "user", "content": "yo"}], "max_tokens": 7}\n'
    )
    w = load_prompts(path, 32)
    assert [i.messages for i in w.items] == [
        [{"role": "user", "content": "hi"}],
        [{"role": "user", "content": "yo"}],
    ]
    assert [i.max_tokens for i in w.items] == [32, 7]
    path.write_text('{"text": "no"}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:1"):
        load_prompts(path, 32)


def test_exact_prompt_corrects_the_word_count() -> None:
    async def two_tokens_a_word(text: str) -> int:
        return 2 * len(text.split())

    async def main() -> tuple[str, int | None]:
        return await exact_prompt(random.Random(0), 64, two_tokens_a_word)

    text, count = asyncio.run(main())
    assert count == 64 and len(text.split()) == 32


def test_synthetic_without_a_tokenizer_says_it_is_approximate() -> None:
    w = asyncio.run(synthetic(3, 20, 8, 0, None, None))
    assert len(w.items) == 3 and not w.exact and w.tokenizer is None
    assert len({i.messages[0]["content"] for i in w.items}) == 3  # distinct: no prompt-cache hits
    assert all(i.max_tokens == 8 and i.input_tokens is None for i in w.items)
    assert any("approximate" in n for n in w.notes)


def test_fixed_concurrency_keeps_the_width_and_the_count() -> None:
    in_flight = peak = 0

    async def send(item: WorkItem) -> RequestResult:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.005)
        in_flight -= 1
        return RequestResult(ok=True)

    items = iter([WorkItem([], 1)] * 100)
    results, wall = asyncio.run(run_fixed(send, items, 10, 3, None, lambda: None))
    assert len(results) == 10 and peak == 3 and wall > 0


def test_poisson_arrivals_follow_the_rate() -> None:
    async def send(item: WorkItem) -> RequestResult:
        return RequestResult(ok=True)

    items = iter([WorkItem([], 1)] * 100)
    results, wall = asyncio.run(
        run_poisson(send, items, 20, 200.0, None, None, random.Random(1), lambda: None)
    )
    assert len(results) == 20
    assert 0.03 < wall < 0.5  # 19 gaps of 5 ms on average
