"""The one SSE parser and the one NDJSON/SSE writer of the package.

Streams arrive in arbitrary pieces (a TCP read may hold half an event or ten); :class:`SSEParser` keeps
the unfinished tail and hands back whole events' ``data`` payloads. Writers frame one JSON object.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import Any

import orjson

DONE = b"[DONE]"


def ndjson(obj: Any) -> bytes:
    """One NDJSON line (Ollama's streams)."""
    return orjson.dumps(obj) + b"\n"


def sse(obj: Any, event: str | None = None) -> bytes:
    """One SSE event carrying ``obj`` as JSON, named when ``event`` is given (Anthropic's streams)."""
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class SSEParser:
    """Incremental: ``feed(bytes)`` yields the ``data`` payload of each event completed by those bytes
    (multi-line data joined with newlines, comments and other fields skipped)."""

    __slots__ = ("_data", "_pending")

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        self._pending += chunk
        while (cut := self._pending.find(b"\n")) >= 0:
            line = self._pending[:cut].rstrip(b"\r")
            self._pending = self._pending[cut + 1 :]
            if not line:  # a blank line ends the event
                if self._data:
                    yield b"\n".join(self._data)
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)

    def close(self) -> Iterator[bytes]:
        """The last event when the stream ended without its blank line."""
        if self._pending.startswith(b"data:"):
            value = self._pending[5:].rstrip(b"\r")
            self._data.append(value[1:] if value.startswith(b" ") else value)
        self._pending = b""
        if self._data:
            yield b"\n".join(self._data)
            self._data = []


def last_sse_payloads(tail: bytes) -> list[bytes]:
    """The ``data`` payloads found in the end of a stream, last first (for counts read once, at the end)."""
    parser = SSEParser()
    found = [*parser.feed(tail), *parser.close()]
    return [p for p in reversed(found) if p != DONE]


async def ndjson_lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Whole lines of an NDJSON byte stream (without their newline; blank lines skipped)."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        while (cut := pending.find(b"\n")) >= 0:
            line, pending = pending[:cut].strip(), pending[cut + 1 :]
            if line:
                yield line
    if pending.strip():
        yield pending.strip()
