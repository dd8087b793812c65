"""The connection layer under the middlewares: what aiohttp refuses by itself, in the door's shape.

aiohttp answers a request it cannot parse (a request line or header over the limits, a bad request line, a
broken chunked body) before any middleware runs, with its own text/plain message that echoes the bytes.
:class:`DoorRequestHandler` answers those in the door's error shape instead: paths under ``/v1`` in
OpenAI's, everything else (and what cannot be parsed at all) in Ollama's, always closing the connection.
It also ends a request whose body breaks while a handler reads it: aiohttp queues that parse error behind
the request and leaves the handler waiting for the rest of a body that will never come.

aiohttp has no setting for the connection class; :class:`GatewayRunner` is an ``AppRunner`` whose server
builds this one.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, RequestPayloadError, _ErrInfo

from enginehouse.errors import (
    InvalidRequest,
    anthropic_error_body,
    anthropic_status,
    ollama_error_body,
    openai_error_body,
)

__all__ = ["HANDLER_ARGS", "DoorRequestHandler", "GatewayRunner", "door_of", "is_openai_target"]

log = logging.getLogger("enginehouse.server")

#: The parser's limits, explicit so that an aiohttp upgrade does not move them; compressed bodies are
#: never decoded (refused with 415 by the body guard), so no decompression bomb reaches memory.
HANDLER_ARGS: dict[str, Any] = {
    "max_line_size": 8190,
    "max_field_size": 8190,
    "max_headers": 128,
    "auto_decompress": False,
}

HEAD_BYTES = 24  # enough of the request line to see "OPTIONS /v1/messages/"


def is_openai_target(head: bytes) -> bool:
    """Whether the start of a request line targets the OpenAI door (``/v1``)."""
    target = head.partition(b" ")[2]
    return target[:3] == b"/v1" and target[3:4] in (b"", b"/", b"?", b" ")


def door_of(path: str) -> str:
    """The door a path belongs to, for its error shape and its metrics label."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    # /rerank (Jina's and Cohere's path, outside /v1) speaks OpenAI's errors too (server/rerank_routes.py)
    return "openai" if path.startswith("/v1") or path == "/rerank" else "ollama"


def door_of_target(head: bytes) -> str:
    """The door a request line's start targets: anthropic (``/v1/messages``), openai (``/v1``), ollama."""
    target = head.partition(b" ")[2]
    if target[:12] == b"/v1/messages" and target[12:13] in (b"", b"/", b"?", b" "):
        return "anthropic"
    return "openai" if is_openai_target(head) else "ollama"


def error_body(door: str, error: BaseException, status: int) -> tuple[int, dict[str, Any]]:
    """(status, body) of a refusal in ``door``'s shape."""
    if door == "anthropic":
        status = anthropic_status(error, status)
        return status, anthropic_error_body(error, status)
    return status, openai_error_body(error) if door == "openai" else ollama_error_body(error)


class DoorRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol, with door-shaped refusals and prompt ends for broken bodies."""

    __slots__ = ("_body", "_head", "_line_len", "_parse_failed", "_received")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head = b""  # the first bytes of the request being parsed, for its door
        self._received = 0  # bytes of it seen so far, while its request line is incomplete
        self._line_len: int | None = None  # the length of its request line, once complete
        self._body: StreamReader | None = None  # the body of the last request parsed
        self._parse_failed = False

    def data_received(self, data: bytes) -> None:
        if not self._messages and not self._request_in_progress:  # between requests: a new one starts
            if len(self._head) < HEAD_BYTES:
                self._head += data[: HEAD_BYTES - len(self._head)]
            if self._line_len is None:
                end = data.find(b"\n")
                self._line_len = None if end < 0 else self._received + end
                self._received += len(data)
        queued = len(self._messages)
        super().data_received(data)
        for index in range(queued, len(self._messages)):
            message, payload = self._messages[index]
            if isinstance(message, _ErrInfo):
                self._on_parse_error(message)
            else:
                self._body, self._head, self._line_len, self._received = payload, b"", None, 0

    def _on_parse_error(self, error: _ErrInfo) -> None:
        body = self._body
        if body is None or body.is_eof():
            self._parse_failed = True  # answered by handle_error, in the door of self._head
            return
        # The body being read broke (a bad chunk): its handler gets the error now and the connection
        # closes after its answer, instead of waiting for the rest of the body forever.
        self.close()
        body.set_exception(RequestPayloadError(f"malformed request body: {_first_line(error.message)}"))
        body.feed_eof()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started: no room for an error")
        if status >= 500:
            self.log_exception("error handling %s %s", request.method, request.path, exc_info=exc)
            door = door_of(request.path)
            error: BaseException = RuntimeError()
        else:
            door = door_of_target(self._head) if self._parse_failed else door_of(request.path)
            status, text = self._describe(status, exc)
            log.debug("refused a malformed request from %s: %d %s", request.remote, status, text)
            error = InvalidRequest(text)
        status, body = error_body(door, error, status)
        response = web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
        response.force_close()
        return response

    def _describe(self, status: int, exc: BaseException | None) -> tuple[int, str]:
        """The status and a message that names the limit, never the offending bytes."""
        if isinstance(exc, LineTooLong):
            if self._line_len is None or self._line_len > self.max_line_size:
                return 414, f"request line too long: the limit is {self.max_line_size} bytes"
            return 431, f"request header too large: the limit is {self.max_field_size} bytes a line"
        if isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
            return 431, f"too many request headers: the limit is {self.max_headers}"
        return status, "malformed HTTP request: " + _first_line(getattr(exc, "message", "") or "")


def _first_line(text: str) -> str:
    """The parser's reason without the echoed bytes that follow it on later lines."""
    return text.strip().splitlines()[0].rstrip(":")[:120] if text.strip() else "unreadable"


class _DoorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return DoorRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An ``AppRunner`` whose connections are :class:`DoorRequestHandler`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _DoorServer  # the same server; only the protocol it builds per connection differs
        return server
