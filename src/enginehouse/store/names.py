"""Model names and blob digests: the strict gate between client input and paths on disk.

A model name becomes four directory levels under ``manifests/`` and a digest becomes a file
name under ``blobs/``, so nothing here is lenient: every part must match an allow-list, and
anything else is refused with :class:`InvalidName` / :class:`InvalidDigest` before a path is
ever built from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from enginehouse.errors import InvalidDigest, InvalidName

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

# Starting with a letter or digit rules out "", ".", ".." and hidden files in one go.
_HOST_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,252}(?::[0-9]{1,5})?")
_PART_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,79}")
_TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
_DIGEST_RE = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")


def _check(kind: str, value: str, pattern: re.Pattern[str], limit: int) -> None:
    if not value:
        raise InvalidName(f"invalid model name: the {kind} is empty")
    if len(value) > limit:
        raise InvalidName(f"invalid model name: the {kind} is longer than {limit} characters")
    if value in (".", ".."):
        raise InvalidName(f"invalid model name: '{value}' is not allowed as the {kind}")
    if not pattern.fullmatch(value):
        raise InvalidName(
            f"invalid model name: the {kind} '{value}' may hold only letters, digits, '_', '.' and '-'"
            " and must start with a letter or digit"
        )


@dataclass(frozen=True)
class ModelName:
    """A fully qualified model name; constructing one validates it (host/namespace/model lowercase)."""

    host: str
    namespace: str
    model: str
    tag: str

    def __post_init__(self) -> None:
        for kind, value in (("host", self.host), ("namespace", self.namespace), ("model", self.model)):
            if not isinstance(value, str):
                raise InvalidName(f"invalid model name: the {kind} is not a string")
            if value != value.lower():
                raise InvalidName(f"invalid model name: the {kind} '{value}' must be lowercase")
        if not isinstance(self.tag, str):
            raise InvalidName("invalid model name: the tag is not a string")
        _check("host", self.host, _HOST_RE, 253 + 6)
        _check("namespace", self.namespace, _PART_RE, 80)
        _check("model", self.model, _PART_RE, 80)
        _check("tag", self.tag, _TAG_RE, 80)

    @classmethod
    def parse(cls, s: str) -> ModelName:
        """Parse ``model``, ``model:tag``, ``ns/model:tag`` or ``host[:port]/ns/model:tag``.

        Host, namespace and model are case-insensitive (stored lowercase); the tag keeps its case
        because Hugging Face quant tags such as ``Q4_K_M`` are written that way.
        """
        if not isinstance(s, str):
            raise InvalidName("invalid model name: not a string")
        if not s:
            raise InvalidName("invalid model name: the name is empty")
        if len(s) > 512:
            raise InvalidName("invalid model name: longer than 512 characters")
        for ch in s:
            if ch == "\\":
                raise InvalidName("invalid model name: backslashes are not allowed")
            if ch.isspace():
                raise InvalidName("invalid model name: whitespace is not allowed")
            if ord(ch) < 32 or ord(ch) == 127 or not ch.isprintable():
                raise InvalidName("invalid model name: control characters are not allowed")
        if not s.isascii():
            raise InvalidName("invalid model name: only ASCII letters, digits, '_', '.', '-' are allowed")
        if s.startswith("/"):
            raise InvalidName("invalid model name: it must not start with '/'")
        parts = s.split("/")
        for part in (*parts[:-1], parts[-1].partition(":")[0]):
            if part in (".", ".."):
                raise InvalidName(f"invalid model name: '{part}' is not allowed as a name part")
        if len(parts) > 3:
            raise InvalidName("invalid model name: at most host/namespace/model:tag (two '/')")
        last = parts[-1]
        model, sep, tag = last.partition(":")
        if sep and not tag:
            raise InvalidName("invalid model name: the tag after ':' is empty")
        tag = tag or DEFAULT_TAG
        if len(parts) == 3:
            host, namespace = parts[0], parts[1]
        elif len(parts) == 2:
            host, namespace = DEFAULT_HOST, parts[0]
        else:
            host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
        # Validate before lowercasing so messages quote what the user typed.
        _check("host", host.lower(), _HOST_RE, 253 + 6)
        _check("namespace", namespace.lower(), _PART_RE, 80)
        _check("model", model.lower(), _PART_RE, 80)
        _check("tag", tag, _TAG_RE, 80)
        return cls(host.lower(), namespace.lower(), model.lower(), tag)

    @property
    def display(self) -> str:
        """The shortest form Ollama prints: default host and namespace left out, tag always shown."""
        base = f"{self.model}:{self.tag}"
        if self.host != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{base}"
        if self.namespace != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{base}"
        return base

    @property
    def full(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def manifest_parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)

    def __str__(self) -> str:
        return self.display


def as_model_name(name: ModelName | str) -> ModelName:
    """Accept either a parsed name or a string (parsed strictly)."""
    return name if isinstance(name, ModelName) else ModelName.parse(name)


def parse_digest(s: str) -> str:
    """``sha256:<hex>`` or ``sha256-<hex>`` (any hex case) -> canonical ``sha256:<lowercase hex>``."""
    if not isinstance(s, str):
        raise InvalidDigest("invalid digest: not a string")
    m = _DIGEST_RE.fullmatch(s)
    if not m:
        shown = s if len(s) <= 80 and s.isprintable() else repr(s[:80])
        raise InvalidDigest(f"invalid digest '{shown}': expected sha256:<64 hex digits>")
    return "sha256:" + m.group(1).lower()


def digest_filename(d: str) -> str:
    """The blob file name for a digest: ``sha256-<hex>`` (validated)."""
    return parse_digest(d).replace(":", "-", 1)
