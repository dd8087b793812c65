"""The browser guard: what stops a web page from driving the server.

A page in the user's browser can reach a server on loopback in two ways. DNS rebinding: a name the page
controls is re-pointed at 127.0.0.1, so its requests arrive with ``Host: evil.example``; on a loopback bind
only loopback Host names are served. Cross-site requests: a page may send "simple" requests (GET, or a POST
with a text/plain, form or multipart body) without a CORS preflight; the browser always names the page in
``Origin`` then, so a request from an origin outside the allowlist is refused whatever its method, and a
write from any page must be JSON (which needs a preflight, answered only for allowed origins).

Clients that are not browsers (the CLI, SDKs, curl) send no Origin and are not affected. Ollama does the
same (``allowedHostsMiddleware`` and ``OLLAMA_ORIGINS``); this guard is stricter on Host names (loopback
only, no private or unspecified addresses), never allows the ``null`` origin and never answers ``*``.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web

from enginehouse.config import Config
from enginehouse.errors import Forbidden
from enginehouse.server.bodies import is_blob_upload

__all__ = ["OriginPattern", "allowed_host", "browser_guard", "cors_headers_hook", "is_loopback_name"]

#: Always allowed: local pages, and desktop apps and editors that embed a web view (as Ollama).
DEFAULT_ORIGINS = (
    "http://localhost",
    "https://localhost",
    "http://localhost:*",
    "https://localhost:*",
    "http://127.0.0.1",
    "https://127.0.0.1",
    "http://127.0.0.1:*",
    "https://127.0.0.1:*",
    "http://[::1]",
    "https://[::1]",
    "http://[::1]:*",
    "https://[::1]:*",
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
    # Browser extensions, which only the user installs (Ollama allows them too).
    "chrome-extension://*",
    "moz-extension://*",
    "safari-web-extension://*",
)

WRITE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
ALLOWED_METHODS = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"
#: Request headers a page may send (answered in a preflight); OpenAI's SDKs add x-stainless-* ones.
ALLOWED_HEADERS = frozenset(
    {
        "authorization",
        "content-type",
        "accept",
        "user-agent",
        "x-requested-with",
        "x-api-key",
        "openai-beta",
        "openai-organization",
        "openai-project",
        "anthropic-version",
        "x-enginehouse-route",
    }
)
EXPOSED_HEADERS = ", ".join(
    ["Retry-After"]
    + [f"X-Enginehouse-{n}" for n in ("Model", "Route", "Fallback", "Cache", "Cache-TTL", "Num-Ctx")]
)

ALLOWED_ORIGIN = web.RequestKey("enginehouse.allowed_origin", str)


def split_host_port(value: str) -> tuple[str, str] | None:
    """``host[:port]`` or ``[v6][:port]`` -> (host, port); None when malformed (a port that is not digits)."""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    else:
        host, _, port = value.partition(":")
    if port and not (port.isdigit() or port == "*"):
        return None
    return host, port


def is_loopback_name(host: str) -> bool:
    """localhost, a name under .localhost (RFC 6761), or an address in 127.0.0.0/8 or ::1."""
    host = host.lower()
    if host == "localhost" or (host.endswith(".localhost") and host != ".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_host(header: str | None) -> bool:
    """Whether a Host header names this machine's loopback (a missing one, from HTTP/1.0, does too)."""
    if not header:
        return True
    parts = split_host_port(header.strip())
    return parts is not None and parts[1] != "*" and is_loopback_name(parts[0])


@dataclass(frozen=True)
class OriginPattern:
    """``scheme://host[:port]``, with ``*`` wildcards in host and port, as ``OLLAMA_ORIGINS`` writes them.

    A pattern without a port matches only an origin without one (the scheme's default port).
    """

    scheme: str
    host: str
    port: str

    @classmethod
    def parse(cls, text: str) -> OriginPattern | None:
        text = text.strip().strip("\"'").rstrip("/").lower()
        if text == "*":
            return cls("*", "*", "*")
        scheme, sep, rest = text.partition("://")
        if not sep or not scheme or "/" in rest or "@" in rest:
            return None
        if rest == "*":
            return cls(scheme, "*", "*")
        parts = split_host_port(rest)
        return None if parts is None else cls(scheme, parts[0], parts[1])

    def matches(self, origin: tuple[str, str, str]) -> bool:
        scheme, host, port = origin
        if self.scheme not in ("*", scheme):
            return False
        if self.port != "*" and self.port != port:
            return False
        return fnmatch.fnmatchcase(host, self.host)


def parse_origin(value: str) -> tuple[str, str, str] | None:
    """A browser's serialised origin -> (scheme, host, port), or None (``null``, or not an origin)."""
    value = value.strip().lower()
    scheme, sep, rest = value.partition("://")
    if not sep or not scheme or "/" in rest or "@" in rest or "*" in rest:
        return None
    parts = split_host_port(rest)
    return None if parts is None else (scheme, parts[0], parts[1])


def origin_patterns(configured: str) -> tuple[OriginPattern, ...]:
    """The user's patterns (ENGINEHOUSE_ORIGINS / OLLAMA_ORIGINS) plus the local defaults."""
    found = []
    for text in [*configured.split(","), *DEFAULT_ORIGINS]:
        if text.strip() and (pattern := OriginPattern.parse(text)) is not None:
            found.append(pattern)
    return tuple(found)


def origin_allowed(origin: str, patterns: Iterable[OriginPattern]) -> bool:
    parsed = parse_origin(origin)  # "null" (sandboxed frames, file: pages, redirects) never parses
    return parsed is not None and any(p.matches(parsed) for p in patterns)


def is_loopback_bind(host: str) -> bool:
    """Whether a bind address reaches this machine only: a loopback name or address, or a host name all of
    whose addresses are loopback ("" and 0.0.0.0 are every interface)."""
    host = host.strip("[]")
    if not host:
        return False
    if is_loopback_name(host):
        return True
    try:
        ipaddress.ip_address(host)
        return False  # an address that is not loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def _preflight(request: web.Request, origin: str) -> web.Response:
    asked = request.headers.get("Access-Control-Request-Headers", "")
    names = [h.strip().lower() for h in asked.split(",") if h.strip()]
    allowed = [h for h in names if h in ALLOWED_HEADERS or h.startswith("x-stainless-")]
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": ALLOWED_METHODS,
        "Access-Control-Allow-Headers": ", ".join(allowed or sorted(ALLOWED_HEADERS)),
        "Access-Control-Max-Age": "600",
        "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    }
    if request.headers.get("Access-Control-Request-Private-Network", "").lower() == "true":
        headers["Access-Control-Allow-Private-Network"] = "true"  # Chrome's check for pages reaching loopback
    return web.Response(status=204, headers=headers)


def browser_guard(config: Config):  # type: ignore[no-untyped-def]
    """The middleware: Host check on a loopback bind, then the Origin allowlist, preflights, and JSON-only
    writes from pages. It runs before the API-key check (a preflight carries no key)."""
    check_host = is_loopback_bind(config.bind[0])
    patterns = origin_patterns(config.origins)

    @web.middleware
    async def guard(request: web.Request, handler):  # type: ignore[no-untyped-def]
        if check_host and not allowed_host(request.headers.get("Host")):
            raise Forbidden(
                "host not allowed: this server listens on loopback and answers only to localhost, "
                "127.0.0.1 and [::1] (bind another address with ENGINEHOUSE_HOST to serve other names)"
            )
        origin = request.headers.get("Origin")
        if origin is None:
            return await handler(request)
        if not origin_allowed(origin, patterns):
            raise Forbidden(
                "origin not allowed: add it to ENGINEHOUSE_ORIGINS to call this server from that page"
            )
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return _preflight(request, origin)
        if request.method in WRITE_METHODS and request.content_type != "application/json":
            blob = is_blob_upload(request) and request.content_type == "application/octet-stream"
            if not blob:
                raise Forbidden(
                    "a request from a web page that writes must send Content-Type: application/json"
                )
        request[ALLOWED_ORIGIN] = origin
        return await handler(request)

    return guard


async def cors_headers_hook(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer to an allowed page (errors and streams included) names its origin,
    so the page can read it; never ``*``, never with credentials (the API key travels in a header)."""
    origin = request.get(ALLOWED_ORIGIN)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        response.headers.add("Vary", "Origin")
