"""The project's one HTTP client library, aiohttp, for everything but the engine hot path
(``engines/engine_http.py`` keeps its own lean client there).

Why aiohttp: the server already depends on it (pinned), its HTTP parser is in C, the bench's load
generator must stay cheap on 2 cores (it runs beside the server it measures), and one async stack
means one connection, timeout and TLS model. No second client library is a runtime dependency
(tests and bench scripts may use one as a client; tests/test_http_client.py holds src/ to this).

- :func:`session` builds every :class:`aiohttp.ClientSession` outside server/ (tests/test_http_client.py
  checks that no other module does): a ``User-Agent: enginehouse/<version>``, orjson for ``json=``
  bodies, the default timeouts below, and TLS that trusts the system's roots plus certifi's bundle.
- :func:`request`, :func:`stream` and :func:`get_json` are SYNC helpers for the CLI. Each call runs
  its own event loop (:class:`asyncio.Runner`), so they must not be called from a running loop. On
  Ctrl-C the runner cancels the pending read and re-raises :class:`KeyboardInterrupt`; the
  connection is then closed, which is how a server learns that its client went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import Coroutine, Iterator, Mapping
from typing import Any, TypeVar

import aiohttp
import orjson

from enginehouse import __version__

__all__ = [
    "DEFAULT_TIMEOUT",
    "USER_AGENT",
    "HttpError",
    "Reply",
    "Stream",
    "get_json",
    "request",
    "session",
    "ssl_context",
    "stream",
]

USER_AGENT = f"enginehouse/{__version__}"
# A peer gets 30 s to accept the connection and may then stay silent for 5 minutes at a time; no
# cap on the whole exchange, so a long stream is never cut short by the client.
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)

T = TypeVar("T")


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """The system's CA roots plus certifi's bundle where it is installed (one context, shared)."""
    ctx = ssl.create_default_context()
    try:
        import certifi

        ctx.load_verify_locations(cafile=certifi.where())
    except (ImportError, OSError):  # pragma: no cover - no certifi: the system's roots only
        pass
    return ctx


def _timeout(timeout: aiohttp.ClientTimeout | float | None) -> aiohttp.ClientTimeout:
    """A number bounds the whole exchange; None means no limit at all."""
    if isinstance(timeout, aiohttp.ClientTimeout):
        return timeout
    return aiohttp.ClientTimeout(total=timeout)


def session(
    *,
    timeout: aiohttp.ClientTimeout | float | None = DEFAULT_TIMEOUT,
    headers: Mapping[str, str] | None = None,
    connector_args: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> aiohttp.ClientSession:
    """A ClientSession with the project's defaults; call it inside a running event loop.

    ``connector_args`` holds :class:`aiohttp.TCPConnector` arguments (``limit``, ``force_close``, ...);
    other keyword arguments go to the session as they are (``trust_env``, ``auto_decompress``, ...).
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(**{"ssl": ssl_context(), **(connector_args or {})}),
        timeout=_timeout(timeout),
        headers={"User-Agent": USER_AGENT, **(headers or {})},
        json_serialize=_dumps,
        **kwargs,
    )


# -- sync helpers for the CLI ------------------------------------------------------------------------


class HttpError(Exception):
    """A request that failed (no connection, a timeout, a broken body, or an error status when the
    caller asked for one to raise); the message says what happened, with the URL."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return str(exc) or "timed out"
    return str(exc) or type(exc).__name__


class _Head:
    status: int
    headers: Mapping[str, str]
    url: str  # the last one, after any redirects

    def raise_for_status(self) -> None:
        if self.status >= 400:
            raise HttpError(f"HTTP {self.status} from {self.url}")


class Reply(_Head):
    """A whole response: status, headers, final URL and body."""

    def __init__(self, status: int, headers: Mapping[str, str], url: str, body: bytes) -> None:
        self.status, self.headers, self.url, self.body = status, headers, url, body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON (a ValueError when it is not)."""
        return orjson.loads(self.body)


class Stream(_Head):
    """A response whose body is read as it arrives, from inside :func:`stream`'s ``with``."""

    def __init__(self, run: _Runner, resp: aiohttp.ClientResponse) -> None:
        self._run, self._resp = run, resp
        self.status, self.headers, self.url = resp.status, resp.headers, str(resp.url)

    def read(self) -> bytes:
        return self._run(self._resp.read(), str(self._resp.url))

    def iter_chunks(self) -> Iterator[bytes]:
        """The body in the pieces it arrives in (decoded when it was compressed)."""
        read, url = self._resp.content.readany, str(self._resp.url)
        while chunk := self._run(read(), url):
            yield chunk

    def iter_lines(self) -> Iterator[bytes]:
        """The body line by line, without the line ends, of any length."""
        buf = bytearray()
        for chunk in self.iter_chunks():
            buf += chunk
            if b"\n" in chunk:
                *lines, rest = bytes(buf).split(b"\n")
                yield from (line.removesuffix(b"\r") for line in lines)
                buf = bytearray(rest)
        if buf:
            yield bytes(buf).removesuffix(b"\r")


class _Runner:
    """Runs one coroutine at a time on a private loop; network failures become :class:`HttpError`."""

    def __init__(self, runner: asyncio.Runner) -> None:
        self._runner = runner

    def __call__(self, coro: Coroutine[Any, Any, T], url: str) -> T:
        try:
            return self._runner.run(coro)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise HttpError(f"{url}: {_describe(exc)}") from exc


@contextlib.contextmanager
def stream(
    method: str,
    url: str,
    *,
    json: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = 10.0,
    follow_redirects: bool = False,
) -> Iterator[Stream]:
    """Send a request; yield the response with its body unread. ``timeout`` bounds the connect and
    each read (not the whole exchange); None waits for ever. Failures raise :class:`HttpError`."""
    limit = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)

    async def open_session() -> aiohttp.ClientSession:
        return session(timeout=limit, trust_env=True)  # proxies from the environment, as curl

    async def send(http: aiohttp.ClientSession) -> aiohttp.ClientResponse:
        return await http.request(method, url, json=json, headers=headers, allow_redirects=follow_redirects)

    with asyncio.Runner() as runner:
        run = _Runner(runner)
        http = runner.run(open_session())
        try:
            resp = run(send(http), url)
            try:
                yield Stream(run, resp)
            finally:
                resp.close()  # at once, body read or not: an abandoned stream tells the server
        finally:
            runner.run(http.close())


def request(
    method: str,
    url: str,
    *,
    json: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = 10.0,
    follow_redirects: bool = False,
) -> Reply:
    """One whole request, as :func:`stream` sends it: status, headers, final URL and body."""
    with stream(
        method, url, json=json, headers=headers, timeout=timeout, follow_redirects=follow_redirects
    ) as resp:
        return Reply(resp.status, resp.headers, resp.url, resp.read())


def get_json(url: str, *, headers: Mapping[str, str] | None = None, timeout: float | None = 10.0) -> Any:
    """GET ``url`` and parse its JSON; an error status raises :class:`HttpError`, a body that is not
    JSON a ValueError."""
    reply = request("GET", url, headers=headers, timeout=timeout)
    reply.raise_for_status()
    return reply.json()
