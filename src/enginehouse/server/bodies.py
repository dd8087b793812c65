"""Request bodies: refused when compressed, bounded in size, and given a time to arrive.

The body middleware reads a request's body once, before its handler, within ``body_timeout`` seconds
(aiohttp keeps it, so the handler's ``request.read()`` costs nothing): a client that sends headers and then
trickles or stops its body gets 408 and its connection is closed, instead of holding a handler forever.
Uploads to ``/api/blobs`` stream instead (:func:`read_chunk`, with the timeout between two chunks).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from enginehouse.config import Config
from enginehouse.errors import InvalidRequest, RequestTimeout, RequestTooLarge, UnsupportedMediaType
from enginehouse.sched.memory import MiB

__all__ = ["body_guard", "end_connection", "is_blob_upload", "read_chunk"]


def is_blob_upload(request: web.Request) -> bool:
    """An upload to /api/blobs: streamed into the store by its handler, not read whole here."""
    return request.method == "POST" and request.path.startswith("/api/blobs/")


def end_connection(request: web.Request) -> None:
    """Close the connection after this answer without waiting for (or reading) the rest of its body."""
    request.protocol.close()  # type: ignore[attr-defined]  # no more requests on it
    if not request.content.is_eof():
        request.content.feed_eof()  # aiohttp would otherwise drain the body for up to 10 s first


@contextmanager
def _body_errors(request: web.Request, stalled: str) -> Iterator[None]:
    """A body read that ran out of time (408, ``stalled``) or broke its framing (400) ends the connection."""
    try:
        yield
    except TimeoutError:
        end_connection(request)
        raise RequestTimeout(stalled) from None
    except RequestPayloadError as exc:
        end_connection(request)
        raise InvalidRequest(str(exc)) from None


async def read_chunk(request: web.Request, size: int, timeout: float) -> bytes:
    """The next piece of a streamed body (b"" at its end), within ``timeout`` seconds."""
    with _body_errors(request, f"the request body stalled: no data for {timeout:g} s"):
        async with asyncio.timeout(timeout or None):
            return await request.content.read(size)


def body_guard(config: Config):  # type: ignore[no-untyped-def]
    """The middleware: 415 for a Content-Encoding, 413 for a Content-Length over the limit (before reading
    anything), then the whole body read within ``config.body_timeout`` seconds."""
    limit = config.max_body_mib * MiB
    timeout = config.body_timeout

    def too_large() -> RequestTooLarge:
        return RequestTooLarge(f"request body too large: the limit is {config.max_body_mib} MiB")

    @web.middleware
    async def bodies(request: web.Request, handler):  # type: ignore[no-untyped-def]
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            raise UnsupportedMediaType(
                f"compressed request bodies are not accepted (Content-Encoding: {encoding[:40]}): "
                "send the body uncompressed"
            )
        if not request.body_exists or is_blob_upload(request):
            return await handler(request)
        if limit and (request.content_length or 0) > limit:
            raise too_large()
        try:
            with _body_errors(request, f"the request body did not arrive within {timeout:g} s"):
                async with asyncio.timeout(timeout or None):
                    await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large() from None
        return await handler(request)

    return bodies
