"""``/ui``: the console, a page for people, served from files shipped in the package (no CDN, no build).

The page and its assets are the only paths besides ``/`` and ``/api/version`` that the API key does not
guard: a browser cannot send a header when it navigates, and the files hold nothing but code. Everything
the page shows comes from the API, called same-origin with the key the page asks for (``Authorization:
Bearer``), so the key and Origin rules are those of any client. The Host guard covers the page too.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from aiohttp import web

PACKAGE = "enginehouse.console"
PREFIX = "/ui"
#: The asset types shipped; any other file in the folder is not served.
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
#: Only our own files run; nothing may frame the page (clickjacking); no referrer leaves it.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated by ETag: an upgraded server serves its own page
}


def _assets() -> dict[str, tuple[bytes, str]]:
    """File name -> (bytes, content type), read once: the assets are small (tens of KiB)."""
    out: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files(PACKAGE).iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in TYPES and not entry.name.startswith("."):
            out[entry.name] = (entry.read_bytes(), TYPES[suffix] + "; charset=utf-8")
    return out


ASSETS = _assets()
#: The paths the key check lets through (app.py adds them to its open paths).
PUBLIC_PATHS = frozenset({PREFIX, PREFIX + "/", *(f"{PREFIX}/{name}" for name in ASSETS)})


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:16] + '"'


ETAGS = {name: _etag(body) for name, (body, _) in ASSETS.items()}


def _serve(request: web.Request, name: str) -> web.Response:
    found = ASSETS.get(name)
    if found is None:
        raise web.HTTPNotFound(reason="no such console file")
    body, ctype = found
    headers = {**HEADERS, "Content-Type": ctype, "ETag": ETAGS[name]}
    if request.headers.get("If-None-Match") == ETAGS[name]:
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers=headers)


async def index(request: web.Request) -> web.Response:
    return _serve(request, "index.html")


async def asset(request: web.Request) -> web.Response:
    return _serve(request, request.match_info["name"])


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(PREFIX, index)
    r.add_get(PREFIX + "/", index)
    r.add_get(PREFIX + "/{name}", asset)
