"""HTTP for downloads: :class:`HttpSession` follows redirects itself and asks a
:class:`~enginehouse.store.download.auth.BearerAuth` for the ``Authorization`` header of every hop,
so a token goes only to the origin it was issued for (a registry's 307 to a CDN loses it), and
refuses plain http except to hosts pulled with ``insecure=True``.

Control requests (manifests, tokens, listings) and blob bodies share one aiohttp session from
:func:`enginehouse.http_client.session`: its C parser moves bytes at hundreds of MB/s with few copies.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import yarl

from enginehouse import http_client
from enginehouse.errors import UpstreamUnavailable
from enginehouse.store.download import tuning
from enginehouse.store.download.auth import BearerAuth, shown_url

__all__ = ["NET_ERRORS", "USER_AGENT", "HttpSession", "Response", "TransientError"]

USER_AGENT = http_client.USER_AGENT
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class TransientError(Exception):
    """A network failure worth retrying (connection dropped, stalled, 5xx)."""


def _is_tls_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ssl.SSLError | ssl.CertificateError | aiohttp.ClientSSLError):
            return True
        e = e.__cause__ or e.__context__
    return False


NET_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, TimeoutError, ConnectionError)


class Response:
    """A response with its body not yet read."""

    def __init__(self, r: aiohttp.ClientResponse, url: str) -> None:
        self._r, self.status, self.headers, self.url = r, r.status, r.headers, url

    async def chunks(self) -> AsyncIterator[bytes]:
        # readchunk hands over buffered chunks one by one; readany would join them (a copy).
        read = self._r.content.readchunk
        while True:
            chunk, end_of_http_chunk = await read()
            if chunk:
                yield chunk
            elif not end_of_http_chunk:
                return

    async def aclose(self) -> None:
        if self._r.content.at_eof():
            self._r.release()  # body complete: the connection goes back to the pool
        else:
            self._r.close()

    async def read(self, limit: int) -> bytes:
        """Up to ``limit`` bytes of the body (the caller decides whether more was too many)."""
        out = bytearray()
        async for chunk in self.chunks():
            out += chunk
            if len(out) >= limit:
                break
        return bytes(out[:limit])


def check_scheme(url: str, allow_http_hosts: frozenset[str], why_not_http: str) -> None:
    """https always; plain http only to the hosts given (a registry used with insecure=True)."""
    p = urlsplit(url)
    scheme = p.scheme.lower()
    if scheme == "https" or (scheme == "http" and (p.hostname or "").lower() in allow_http_hosts):
        return
    if scheme == "http":
        raise UpstreamUnavailable(f"refusing plain-http URL {shown_url(url)}: {why_not_http}")
    raise UpstreamUnavailable(f"refusing URL {shown_url(url)}: not http(s)")


class HttpSession:
    """Requests that follow redirects by hand, bind tokens to origins and refuse plain http except
    to ``allow_http_hosts`` (host names, without port). Use as ``async with``."""

    def __init__(
        self,
        *,
        auth: BearerAuth | None = None,
        allow_http_hosts: frozenset[str] | set[str] = frozenset(),
        stall_timeout: float = 30.0,
    ) -> None:
        self.auth = auth or BearerAuth()
        self.stall_timeout = stall_timeout
        self.allow_http_hosts = frozenset(h.lower() for h in allow_http_hosts)
        self._aio: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=tuning.CONNECT_TIMEOUT, sock_read=stall_timeout
        )

    async def __aenter__(self) -> HttpSession:
        self._aio = http_client.session(
            timeout=self._timeout,
            connector_args={"limit": 64},
            auto_decompress=False,  # blob bytes are hashed as sent
            trust_env=True,
            cookie_jar=aiohttp.DummyCookieJar(),
            read_bufsize=1 << 20,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._aio is not None:
            await self._aio.close()
            self._aio = None

    def check_url(self, url: str) -> None:
        check_scheme(url, self.allow_http_hosts, "only hosts pulled with insecure=True may use http")

    async def _send(self, url: str, headers: dict[str, str], params: Any = None) -> Response:
        if self._aio is None:
            raise RuntimeError("HttpSession used outside 'async with'")
        try:
            target = yarl.URL(url, encoded=True)
            if params:
                target = target.update_query(params)
            r = await self._aio.get(target, headers=headers, allow_redirects=False)
            return Response(r, url)
        except NET_ERRORS as e:
            raise self._net_error(url, e) from e

    def _net_error(self, url: str, e: BaseException) -> Exception:
        detail = str(e) or type(e).__name__
        if _is_tls_failure(e):
            hint = ""
            if urlsplit(url).scheme == "https":
                hint = " (if it serves plain http, pull it with insecure=True)"
            return UpstreamUnavailable(f"TLS failure talking to {shown_url(url)}: {detail}{hint}")
        if isinstance(e, TimeoutError):
            return TransientError(f"no data from {shown_url(url)} for {self.stall_timeout:g}s ({detail})")
        return TransientError(f"connection to {shown_url(url)} failed: {detail}")

    async def open(
        self, url: str, headers: Mapping[str, str] | None = None, *, params: Any = None
    ) -> Response:
        """GET ``url``: redirects followed (the token re-chosen per hop), one Bearer challenge
        answered. Returns the final response unread; the caller must ``aclose`` it. Network
        failures raise :class:`TransientError` (retry) or :class:`UpstreamUnavailable`."""
        base = dict(headers or {})
        challenged = 0
        for _ in range(tuning.MAX_REDIRECTS + 3):
            self.check_url(url)
            resp = await self._send(url, {**base, **self.auth.headers_for(url)}, params)
            if resp.status in _REDIRECTS:
                location = resp.headers.get("location")
                await resp.aclose()
                if not location:
                    raise UpstreamUnavailable(f"{shown_url(url)} redirected without a Location")
                url, params = urljoin(url, location), None
                continue
            if resp.status == 401 and challenged < 2:
                header = resp.headers.get("www-authenticate", "")
                if header.lower().startswith("bearer"):
                    await resp.aclose()
                    if await self.auth.challenge(self, url, header):
                        challenged += 1
                        continue
                    resp = await self._send(url, {**base, **self.auth.headers_for(url)}, params)
            return resp
        raise UpstreamUnavailable(f"too many redirects fetching {shown_url(url)}")

    async def get_small(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Any = None,
        limit: int,
        auth: bool = True,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """A whole small response: (status, headers, at most limit+1 bytes)."""
        if not auth:  # a token service: one plain request, no tokens, no redirects
            self.check_url(url)
            resp = await self._send(url, dict(headers or {}), params)
        else:
            resp = await self.open(url, headers, params=params)
        try:
            data = await resp.read(limit + 1)
        except NET_ERRORS as e:
            raise self._net_error(url, e) from e
        finally:
            await resp.aclose()
        return resp.status, resp.headers, data
