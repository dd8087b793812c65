"""HTTP for pushes, on aiohttp: any method, a body made afresh for each try, and the registry's Bearer
challenge answered through the same :class:`~enginehouse.store.download.auth.BearerAuth` pulls use (a
token bound to the origin it was issued for, so an upload URL on a storage host never sees it).

Redirects are not followed: a registry answers uploads with ``202``/``201`` and a ``Location``, and the
caller decides what a ``3xx`` means (for ``HEAD`` of a blob: it exists).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl

from enginehouse import http_client
from enginehouse.errors import UpstreamUnavailable
from enginehouse.store.download import tuning
from enginehouse.store.download.auth import BearerAuth, shown_url
from enginehouse.store.download.http import check_scheme

__all__ = ["Body", "RegistryClient", "Reply", "TransientError"]

NET_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, TimeoutError, ConnectionError)

#: Makes a request body: called again for each try, so a retried request sends the same bytes.
Body = Callable[[], AsyncIterator[bytes]]


class TransientError(Exception):
    """A failure worth retrying: the connection dropped or stalled, or the registry answered 5xx."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes  # at most the ``limit`` asked for
    url: str


def _client_session() -> aiohttp.ClientSession:
    """The project's session (http_client: its TLS roots, timeouts and User-Agent), as an upload needs it."""
    return http_client.session(
        connector_args={"limit": 8},
        auto_decompress=False,
        trust_env=True,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def _is_tls_failure(e: BaseException) -> bool:
    while e is not None:
        if isinstance(e, ssl.SSLError | ssl.CertificateError | aiohttp.ClientSSLError):
            return True
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return False


class RegistryClient:
    """Requests to one registry (and the hosts its upload URLs name); use as ``async with``.

    Plain http goes only to ``allow_http_hosts``. A body upload that makes no progress for
    ``stall_timeout`` seconds, or a reply that does not start within it, is a :class:`TransientError`.
    """

    def __init__(
        self,
        *,
        auth: BearerAuth | None = None,
        allow_http_hosts: frozenset[str] | set[str] = frozenset(),
        stall_timeout: float = 30.0,
    ) -> None:
        self.auth = auth or BearerAuth()
        self.allow_http_hosts = frozenset(h.lower() for h in allow_http_hosts)
        self.stall_timeout = stall_timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RegistryClient:
        self._session = _client_session()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def check_url(self, url: str) -> None:
        check_scheme(
            url,
            self.allow_http_hosts,
            "only a name's own registry host pushed with insecure=True may use http",
        )

    def _net_error(self, url: str, e: BaseException) -> Exception:
        detail = str(e) or type(e).__name__
        if _is_tls_failure(e):
            hint = " (if it serves plain http, push with insecure=True)" if url.startswith("https:") else ""
            return UpstreamUnavailable(f"TLS failure talking to {shown_url(url)}: {detail}{hint}")
        if isinstance(e, TimeoutError):
            return TransientError(f"no progress with {shown_url(url)} for {self.stall_timeout:g}s")
        return TransientError(f"connection to {shown_url(url)} failed: {detail}")

    async def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body | None,
        params: Mapping[str, str] | None,
        limit: int,
        reply_timeout: float,
    ) -> Reply:
        if self._session is None:
            raise RuntimeError("RegistryClient used outside 'async with'")
        target = yarl.URL(url, encoded=True)
        if params:
            target = target.update_query(params)
        last = [time.monotonic()]
        sending = [body is not None]

        async def counted() -> AsyncIterator[bytes]:
            assert body is not None
            async for piece in body():
                last[0] = time.monotonic()
                yield piece
            sending[0] = False

        async def exchange() -> Reply:
            async with self._session.request(  # type: ignore[union-attr]
                method,
                target,
                headers=headers,
                data=counted() if body is not None else None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=tuning.CONNECT_TIMEOUT, sock_read=reply_timeout
                ),
            ) as r:
                data = b"" if method == "HEAD" else await r.content.read(limit)
                return Reply(r.status, r.headers, data, url)

        task = asyncio.ensure_future(exchange())
        try:
            # aiohttp times the reply, not the body: a peer that stops reading the body is caught here.
            while True:
                done, _ = await asyncio.wait({task}, timeout=max(0.05, self.stall_timeout / 4))
                if done:
                    return task.result()
                if sending[0] and time.monotonic() - last[0] > self.stall_timeout:
                    task.cancel()
                    raise TransientError(
                        f"the upload to {shown_url(url)} made no progress for {self.stall_timeout:g}s"
                    )
        except NET_ERRORS as e:
            raise self._net_error(url, e) from e
        finally:
            if not task.done():
                task.cancel()

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: Body | None = None,
        params: Mapping[str, str] | None = None,
        limit: int = 64 << 10,
        auth: bool = True,
        reply_timeout: float | None = None,
    ) -> Reply:
        """One request; a ``401`` Bearer challenge is answered once (a fresh token, then one retry).
        A 5xx answer is a :class:`TransientError`; other statuses are the caller's to judge."""
        self.check_url(url)
        timeout = reply_timeout if reply_timeout is not None else self.stall_timeout
        base = dict(headers or {})

        async def send() -> Reply:
            token = self.auth.headers_for(url) if auth else {}
            return await self._send(method, url, {**base, **token}, body, params, limit, timeout)

        reply = await send()
        if auth and reply.status == 401:
            challenge = reply.headers.get("www-authenticate", "")
            # BearerAuth asks only check_url and get_small of its client, which this class offers
            if challenge.lower().startswith("bearer") and await self.auth.challenge(self, url, challenge):  # type: ignore[arg-type]
                reply = await send()
        if reply.status >= 500:
            raise TransientError(f"{shown_url(url)} answered HTTP {reply.status}")
        return reply

    async def get_small(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Any = None,
        limit: int,
        auth: bool = True,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """A small GET (the token realm's answer): what :meth:`BearerAuth.challenge` asks of a client."""
        try:
            reply = await self.request("GET", url, headers=headers, params=params, limit=limit, auth=auth)
        except TransientError as e:
            raise UpstreamUnavailable(f"the registry's token service failed: {e}") from e
        return reply.status, reply.headers, reply.body
