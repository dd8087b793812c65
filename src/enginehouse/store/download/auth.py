"""Tokens bound to origins, and the URL and error-body wording shared by the HTTP layer.

A Bearer token goes only to the origin it was issued for: static ones (e.g. a Hugging Face token)
are given up front, others are fetched from a registry's token realm after a ``401`` challenge.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from enginehouse.errors import UpstreamUnavailable

if TYPE_CHECKING:
    from enginehouse.store.download.http import HttpSession

__all__ = ["BearerAuth", "error_text", "origin", "shown_url"]


def origin(url: str) -> str:
    """``scheme://host:port`` (default port spelled out): the unit a token is bound to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


def shown_url(url: str) -> str:
    """A URL without its query string (signed CDN URLs carry credentials there)."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}{p.path}"


_CHALLENGE_RE = re.compile(r'([A-Za-z_]+)\s*=\s*"([^"]*)"')


class BearerAuth:
    """Bearer tokens, each bound to one origin: static ones given up front (e.g. a Hugging Face
    token for ``https://huggingface.co``) and ones fetched from a registry's token realm after a
    ``401`` with ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``."""

    def __init__(self, static: Mapping[str, str] | None = None) -> None:
        self._tokens: dict[str, str] = {origin(o): t for o, t in (static or {}).items()}
        self.realm_requests = 0

    def headers_for(self, url: str) -> dict[str, str]:
        token = self._tokens.get(origin(url))
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def challenge(self, http: HttpSession, url: str, header: str) -> bool:
        """Fetch a token for ``url``'s origin as ``header`` asks; False when it is no Bearer challenge."""
        scheme, _, rest = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        params = {k.lower(): v for k, v in _CHALLENGE_RE.findall(rest)}
        realm = params.get("realm")
        if not realm:
            return False
        http.check_url(realm)
        query = {k: params[k] for k in ("service", "scope") if k in params}
        self.realm_requests += 1
        status, _, body = await http.get_small(realm, params=query, limit=1 << 20, auth=False)
        if status != 200:
            raise UpstreamUnavailable(
                f"the registry's token service {shown_url(realm)} answered HTTP {status}: {error_text(body)}"
            )
        try:
            data = json.loads(body)
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise UpstreamUnavailable(f"the registry's token service {shown_url(realm)} sent no token")
        self._tokens[origin(url)] = token
        return True


def error_text(body: bytes, limit: int = 300) -> str:
    """A registry error body in plain words: ``message (CODE)`` items of ``{"errors": [...]}``, or text."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    items: list[str] = []
    if isinstance(data, dict):
        errs = data.get("errors")
        if isinstance(errs, list):
            for e in errs:
                if isinstance(e, dict):
                    msg, code = e.get("message"), e.get("code")
                    text = str(msg) if msg else str(code or "")
                    if msg and code:
                        text += f" ({code})"
                    if text:
                        items.append(text)
        elif isinstance(data.get("error"), str):
            items.append(data["error"])
    text = "; ".join(items) if items else body.decode("utf-8", errors="replace").strip()
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return (text[:limit] + "...") if len(text) > limit else (text or "(empty body)")
