"""A cached answer is the bytes the door sent, event by event: recorded on a miss, replayed on a hit.

Keeping the door's own bytes (Ollama NDJSON lines, OpenAI SSE events, or one JSON body) makes a replay
identical to the original: the same content, tool-call, usage and finish events in the same order, with
the same framing, and no per-event parsing on the hot path. The timestamps and ids inside them
(``created_at`` and durations on Ollama's door, ``id``/``created`` on OpenAI's) are the original
answer's: refreshing them would mean parsing every event of every hit.

The stored form is length-prefixed binary with a magic, a format version and a CRC32, so a truncated,
corrupt or older entry fails :func:`decode` (and is treated as a miss, never as an error).
"""

from __future__ import annotations

import enum
import struct
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

FORMAT_VERSION = 1
MAGIC = b"EHc" + bytes([FORMAT_VERSION])
# magic, framing, status, stored_at (unix seconds), content-type length, number of events
_HEADER = struct.Struct(">4sBHdHI")
_CRC = struct.Struct(">I")


class Framing(enum.IntEnum):
    JSON = 0  # one body (non-streamed answers)
    NDJSON = 1  # Ollama's streams: one JSON object per line
    SSE = 2  # OpenAI's streams (``data: ...`` events ending in ``data: [DONE]``) and Anthropic's


_SEPARATOR = {Framing.NDJSON: b"\n", Framing.SSE: b"\n\n"}
_ERROR_PREFIX = {
    Framing.JSON: (b'{"error"',),
    Framing.NDJSON: (b'{"error"',),
    Framing.SSE: (b'data: {"error"', b"event: error"),  # OpenAI's error event, Anthropic's
}
# The last event of a whole SSE answer: OpenAI's end marker, Anthropic's message_stop.
_SSE_ENDS = (b"data: [DONE]", b"event: message_stop")


class CorruptEntry(ValueError):
    """Stored bytes that are not a complete entry of this format version."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One answer as the door sent it."""

    status: int
    content_type: str
    framing: Framing
    events: tuple[bytes, ...]
    stored_at: float = 0.0

    @property
    def streamed(self) -> bool:
        return self.framing is not Framing.JSON

    @property
    def body(self) -> bytes:
        return b"".join(self.events)

    @property
    def size(self) -> int:
        return sum(map(len, self.events))


class Recorder:
    """Collects what a handler writes and splits it into events at the framing's separator.

    Gives up (``finish`` returns None) once the answer passes ``max_bytes``, so a huge answer costs no
    memory beyond the limit.
    """

    __slots__ = ("_events", "_framing", "_max", "_over", "_pending", "_size", "content_type")

    def __init__(self, framing: Framing, content_type: str, max_bytes: int = 1 << 20) -> None:
        self._framing = framing
        self.content_type = content_type
        self._max = max_bytes
        self._events: list[bytes] = []
        self._pending = b""
        self._size = 0
        self._over = False

    def feed(self, data: bytes) -> None:
        if self._over:
            return
        self._size += len(data)
        if self._size > self._max:
            self._over = True
            self._events.clear()
            self._pending = b""
            return
        if self._framing is Framing.JSON:
            self._events.append(data)  # joined into one body by finish()
            return
        buf = self._pending + data if self._pending else data
        sep = _SEPARATOR[self._framing]
        start = 0
        while (found := buf.find(sep, start)) != -1:
            end = found + len(sep)
            self._events.append(buf[start:end])
            start = end
        self._pending = buf[start:]

    def finish(self, status: int = 200) -> Entry | None:
        """The recorded answer, or None when it must not be cached: too large, not a 200, an error
        reported in-band, or a stream that did not reach its end (engine crash, client gone)."""
        if self._over or status != 200:
            return None
        if self._framing is Framing.JSON:
            events = [b"".join(self._events)] if self._events else []
        else:
            events = [*self._events, self._pending] if self._pending else list(self._events)
        if not events or events == [b""] or not complete(self._framing, events):
            return None
        return Entry(status, self.content_type, self._framing, tuple(events), time.time())


def complete(framing: Framing, events: list[bytes]) -> bool:
    """Whether a recorded answer is whole and error-free."""
    prefix = _ERROR_PREFIX[framing]
    if any(event.startswith(prefix) for event in events):
        return False
    last = events[-1]
    if framing is Framing.SSE:
        return last.strip() == _SSE_ENDS[0] or last.startswith(_SSE_ENDS[1])
    if framing is Framing.NDJSON:
        try:
            return orjson.loads(last).get("done") is True
        except (orjson.JSONDecodeError, AttributeError):
            return False
    return True


async def replay(entry: Entry, write: Callable[[bytes], Awaitable[object]], coalesce_bytes: int = 0) -> None:
    """Write the entry back event by event, as the original answer was written. With ``coalesce_bytes``
    whole events are grouped into writes of up to that size: the same events and bytes in fewer writes
    (each write is a syscall and an HTTP chunk: about 15 µs per event on loopback)."""
    if coalesce_bytes <= 0:
        for event in entry.events:
            await write(event)
        return
    batch: list[bytes] = []
    size = 0
    for event in entry.events:
        if batch and size + len(event) > coalesce_bytes:
            await write(b"".join(batch))
            batch, size = [], 0
        batch.append(event)
        size += len(event)
    if batch:
        await write(b"".join(batch))


def encode(entry: Entry) -> bytes:
    content_type = entry.content_type.encode()
    n = len(entry.events)
    head = _HEADER.pack(MAGIC, entry.framing, entry.status, entry.stored_at, len(content_type), n)
    lengths = struct.pack(f">{n}I", *map(len, entry.events))
    blob = b"".join((head, content_type, lengths, *entry.events))
    return blob + _CRC.pack(zlib.crc32(blob))


def decode(blob: bytes) -> Entry:
    """The entry in ``blob``; :class:`CorruptEntry` for anything else."""
    try:
        if len(blob) < _HEADER.size + _CRC.size:
            raise CorruptEntry("too short")
        body = memoryview(blob)[: -_CRC.size]
        if zlib.crc32(body) != _CRC.unpack_from(blob, len(blob) - _CRC.size)[0]:
            raise CorruptEntry("checksum mismatch")
        magic, framing, status, stored_at, ct_len, n = _HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise CorruptEntry("not an entry of this format version")
        offset = _HEADER.size
        content_type = bytes(body[offset : offset + ct_len]).decode()
        offset += ct_len
        lengths = struct.unpack_from(f">{n}I", blob, offset)
        offset += 4 * n
        events = []
        for length in lengths:
            events.append(blob[offset : offset + length])
            offset += length
        if offset != len(body):
            raise CorruptEntry("length mismatch")
        return Entry(status, content_type, Framing(framing), tuple(events), stored_at)
    except CorruptEntry:
        raise
    except (struct.error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise CorruptEntry(str(exc)) from None
