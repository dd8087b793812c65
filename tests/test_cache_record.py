"""Recording and replaying answers: recorded streams of both doors (tests/data/cache, made by
``record_streams.py`` there against a real gateway) come back event for event."""

from __future__ import annotations

import asyncio
import itertools
import random
from pathlib import Path

import orjson
import pytest

from enginehouse.cache import (
    CacheRequest,
    CacheSettings,
    CorruptEntry,
    Entry,
    Framing,
    MemoryBackend,
    Recorder,
    ResponseCache,
    decode,
    encode,
    replay,
)
from enginehouse.cache.record import MAGIC

DATA = Path(__file__).parent / "data" / "cache"
NDJSON, SSE, JSON = "application/x-ndjson", "text/event-stream", "application/json"

OLLAMA_STREAM = ("ollama", NDJSON, Framing.NDJSON)
OPENAI_STREAM = ("openai", SSE, Framing.SSE)
USAGE = {"stream_options": {"include_usage": True}}
T0 = {"temperature": 0}
TOOLS = {"tools": [{"type": "function"}]}


def _case(kind: tuple[str, str, Framing], endpoint: str, body: dict) -> tuple[str, str, dict, str, Framing]:
    door, content_type, framing = kind
    return door, endpoint, body, content_type, framing


# file -> (door, endpoint, request body, content type, framing)
RECORDED: dict[str, tuple[str, str, dict, str, Framing]] = {
    "ollama-chat-stream.ndjson": _case(OLLAMA_STREAM, "/api/chat", {"options": T0}),
    "ollama-chat-toolcall-stream.ndjson": _case(OLLAMA_STREAM, "/api/chat", {"options": T0, **TOOLS}),
    "ollama-generate-stream.ndjson": _case(OLLAMA_STREAM, "/api/generate", {"options": {"seed": 7}}),
    "ollama-chat.json": ("ollama", "/api/chat", {"stream": False, "options": T0}, JSON, Framing.JSON),
    "openai-chat-stream.sse": _case(OPENAI_STREAM, "/v1/chat/completions", {**T0, "stream": True, **USAGE}),
    "openai-chat-toolcall-stream.sse": _case(
        OPENAI_STREAM, "/v1/chat/completions", {**T0, "stream": True, **USAGE, **TOOLS}
    ),
    "openai-completion-stream.sse": _case(OPENAI_STREAM, "/v1/completions", {"seed": 7, "stream": True}),
    "openai-chat.json": ("openai", "/v1/chat/completions", T0, JSON, Framing.JSON),
}


def events_of(data: bytes, framing: Framing) -> list[bytes]:
    """The events of a recorded answer, split independently of the Recorder."""
    if framing is Framing.JSON:
        return [data]
    sep = b"\n" if framing is Framing.NDJSON else b"\n\n"
    return [part + sep for part in data.split(sep)[:-1]]


def chunkings(data: bytes) -> list[list[bytes]]:
    """The same bytes cut as a handler might write them: whole, per event, per byte, at random."""
    rng = random.Random(len(data))
    cuts = sorted(rng.sample(range(1, len(data)), min(40, len(data) - 1)))
    bounds = [0, *cuts, len(data)]
    return [
        [data],
        [data[i : i + 1] for i in range(len(data))],
        [data[a:b] for a, b in itertools.pairwise(bounds)],
    ]


def record(chunks: list[bytes], framing: Framing, content_type: str) -> Entry | None:
    recorder = Recorder(framing, content_type)
    for chunk in chunks:
        recorder.feed(chunk)
    return recorder.finish(200)


async def replayed(entry: Entry) -> list[bytes]:
    out: list[bytes] = []

    async def write(data: bytes) -> None:
        out.append(data)

    await replay(entry, write)
    return out


@pytest.mark.parametrize("name", list(RECORDED))
def test_replay_gives_back_the_recorded_events_in_order(name: str) -> None:
    data = (DATA / name).read_bytes()
    _, _, _, content_type, framing = RECORDED[name]
    original = events_of(data, framing)
    for chunks in chunkings(data):
        entry = record(chunks, framing, content_type)
        assert entry is not None
        stored = decode(encode(entry))
        assert stored == entry
        events = asyncio.run(replayed(stored))
        assert events == original  # the same events, in the same order, each one whole
        assert b"".join(events) == data
        assert stored.content_type == content_type


@pytest.mark.parametrize("coalesce", [1, 300, 4096, 1 << 20])
def test_coalesced_replay_writes_whole_events(coalesce: int) -> None:
    data = (DATA / "openai-chat-toolcall-stream.sse").read_bytes()
    entry = record([data], Framing.SSE, SSE)
    assert entry is not None
    writes: list[bytes] = []

    async def write(chunk: bytes) -> None:
        writes.append(chunk)

    asyncio.run(replay(entry, write, coalesce_bytes=coalesce))
    assert b"".join(writes) == data
    assert all(w.endswith(b"\n\n") for w in writes)  # no event cut across writes
    assert [e for w in writes for e in events_of(w, Framing.SSE)] == list(entry.events)
    if coalesce == 1:  # smaller than any event: one write per event
        assert len(writes) == len(entry.events)
    if coalesce >= len(data):
        assert len(writes) == 1


def _semantics(events: list[bytes], framing: Framing) -> list[str]:
    """What a client sees, event by event: content, tool calls, usage, finish reason, end."""
    seen = []
    for event in events:
        if framing is Framing.SSE:
            payload = event.removeprefix(b"data: ").strip()
            if payload == b"[DONE]":
                seen.append("done")
                continue
            chunk = orjson.loads(payload)
            for choice in chunk["choices"]:
                delta = choice.get("delta") or {}
                if delta.get("content") or choice.get("text"):
                    seen.append("content")
                if delta.get("tool_calls"):
                    seen.append("tool_calls")
                if choice.get("finish_reason"):
                    seen.append("finish:" + choice["finish_reason"])
            if chunk.get("usage"):
                seen.append("usage")
        else:
            line = orjson.loads(event)
            message = line.get("message") or {}
            if message.get("content") or line.get("response"):
                seen.append("content")
            if message.get("tool_calls"):
                seen.append("tool_calls")
            if line.get("done"):
                seen.append("finish:" + line["done_reason"])
    return seen


@pytest.mark.parametrize(
    ("name", "must_see"),
    [
        ("openai-chat-toolcall-stream.sse", ["tool_calls", "finish:tool_calls", "usage", "done"]),
        ("openai-chat-stream.sse", ["content", "finish:stop", "usage", "done"]),
        ("ollama-chat-toolcall-stream.ndjson", ["tool_calls", "finish:stop"]),
        ("ollama-chat-stream.ndjson", ["content", "finish:stop"]),
    ],
)
def test_a_hit_replays_content_tool_calls_usage_and_finish_as_separate_events(
    name: str, must_see: list[str]
) -> None:
    door, endpoint, body, content_type, framing = RECORDED[name]
    data = (DATA / name).read_bytes()

    async def scenario() -> list[bytes]:
        cache = ResponseCache(CacheSettings(url="memory"))
        req = CacheRequest(door, endpoint, {"model": "m", **body}, model_digest="sha256:1")  # type: ignore[arg-type]
        plan = cache.plan(req)
        assert plan is not None and plan.framing is framing
        assert await cache.lookup(plan) is None
        recorder = cache.recorder(plan, content_type)
        for event in events_of(data, framing):
            recorder.feed(event)  # type: ignore[union-attr]
        cache.keep(plan, recorder)
        await asyncio.sleep(0)  # the store runs in the background
        entry = await cache.lookup(plan)
        assert entry is not None
        assert cache.stats.hits == 1 and cache.stats.misses == 1 and cache.stats.stores == 1
        return await replayed(entry)

    events = asyncio.run(scenario())
    original = events_of(data, framing)
    assert events == original
    seen = _semantics(events, framing)
    assert seen == _semantics(original, framing)
    assert list(dict.fromkeys(s for s in seen if s in must_see)) == must_see  # all, in this order


@pytest.mark.parametrize(
    ("framing", "data"),
    [
        (Framing.SSE, b'data: {"choices":[]}\n\n'),  # no [DONE]: the engine died or the client left
        (Framing.SSE, b'data: {"choices":[]}\n\ndata: {"error": {"message": "boom"}}\n\ndata: [DONE]\n\n'),
        # Anthropic's stream: cut before message_stop, or an error event
        (Framing.SSE, b'event: message_start\ndata: {"type":"message_start"}\n\n'),
        (Framing.SSE, b'event: ping\ndata: {"type":"ping"}\n\nevent: error\ndata: {"type":"error"}\n\n'),
        (Framing.NDJSON, b'{"response":"a","done":false}\n'),
        (Framing.NDJSON, b'{"response":"a","done":false}\n{"error":"the engine closed the stream early"}\n'),
        (Framing.NDJSON, b'{"response":"a","done":false}\n{"response":"", "do'),
        (Framing.JSON, b'{"error":"model not found"}'),
        (Framing.JSON, b""),
    ],
)
def test_incomplete_or_failed_answers_are_not_kept(framing: Framing, data: bytes) -> None:
    assert record([data], framing, "x") is None


def test_a_whole_anthropic_stream_is_kept() -> None:
    data = (
        b'event: message_start\ndata: {"type":"message_start"}\n\nevent: ping\ndata: {"type":"ping"}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta"}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    entry = record([data], Framing.SSE, "x")
    assert entry is not None and entry.body == data and len(entry.events) == 4


def test_only_a_200_is_kept_and_a_large_answer_is_dropped() -> None:
    data = (DATA / "openai-chat.json").read_bytes()
    recorder = Recorder(Framing.JSON, JSON)
    recorder.feed(data)
    assert recorder.finish(500) is None
    small = Recorder(Framing.JSON, JSON, max_bytes=len(data) - 1)
    small.feed(data[:10])
    small.feed(data[10:])
    assert small.finish(200) is None


def _entry() -> Entry:
    data = (DATA / "openai-chat-stream.sse").read_bytes()
    entry = record([data], Framing.SSE, SSE)
    assert entry is not None
    return entry


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-1],
        lambda b: b[: len(b) // 2],
        lambda b: b[:10],
        lambda b: b"",
        lambda b: b[:100] + bytes([b[100] ^ 0x40]) + b[101:],
        lambda b: b"EHc\x02" + b[4:],  # another format version
        lambda b: b + b"x",
        lambda b: orjson.dumps({"not": "an entry"}),
    ],
)
def test_corrupt_or_foreign_bytes_do_not_decode(damage) -> None:  # type: ignore[no-untyped-def]
    blob = encode(_entry())
    assert blob.startswith(MAGIC)
    with pytest.raises(CorruptEntry):
        decode(damage(blob))


def test_a_corrupt_entry_is_a_miss_never_an_error() -> None:
    async def scenario() -> None:
        backend = MemoryBackend(1 << 20)
        cache = ResponseCache(CacheSettings(url="memory"), backend)
        req = CacheRequest(
            "openai", "/v1/chat/completions", {"model": "m", "seed": 1, "stream": True}, model_digest="d"
        )
        plan = cache.plan(req)
        assert plan is not None
        await backend.set(plan.key, encode(_entry())[:-7], None)
        assert await cache.lookup(plan) is None
        await backend.set(plan.key, b"\x00garbage", None)
        assert await cache.lookup(plan) is None
        assert cache.stats.corrupt == 2 and cache.stats.misses == 2 and cache.stats.hits == 0
        await backend.set(plan.key, encode(_entry()), None)  # a good one after: served
        assert await cache.lookup(plan) is not None

    asyncio.run(scenario())
