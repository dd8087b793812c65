"""Values that enginehouse.toml, requests and the command line share, parsed one way.

Ollama's ``keep_alive``: a Go duration string ("5m", "1h30m", "300ms"), or a number of seconds.

Zero unloads at once; a negative value keeps the model loaded forever (returned as ``math.inf``), and so
does anything at or past Go's longest duration (about 292 years), where Ollama's own parsing overflows:
"9999999999h" or 1e20 mean "keep it", so they are clamped to forever rather than refused.

An RPC worker's ``host:port`` (:func:`parse_endpoint`): a model entry's ``llama_server.rpc`` and
``enginehouse rpc-worker`` take the same rules.
"""

from __future__ import annotations

import math
import re

from enginehouse.errors import InvalidRequest

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
#: Go's time.Duration tops out at 2^63 ns; past that Ollama overflows, we clamp to forever.
MAX_SECONDS = 2**63 / 1e9
_MAX_TEXT = 64  # characters: no real duration is longer
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: str | float | int | None, default: float | None = None) -> float | None:
    """Seconds to stay loaded after the last request; ``math.inf`` for forever; ``default`` for None."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise InvalidRequest(f"invalid keep_alive {value!r}", param="keep_alive")
    if isinstance(value, str) and len(value) > _MAX_TEXT:
        raise InvalidRequest(f"invalid keep_alive: longer than {_MAX_TEXT} characters", param="keep_alive")
    if isinstance(value, int) and abs(value) >= MAX_SECONDS:  # float() of a huge int would overflow
        seconds = MAX_SECONDS if value > 0 else -MAX_SECONDS
    elif isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        try:
            seconds = float(text)  # "300" means seconds, as in Ollama
        except ValueError:
            seconds = _parse_go_duration(text)
    if not math.isfinite(seconds):  # "nan" would never expire, "inf" is a typo for -1
        raise InvalidRequest(
            f"invalid keep_alive {value!r}: use e.g. 5m, 1h, 30s, 0 or -1", param="keep_alive"
        )
    return math.inf if seconds < 0 or seconds >= MAX_SECONDS else seconds


def _parse_go_duration(text: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    pos, total = 0, 0.0
    while pos < len(body):
        match = _PART.match(body, pos)
        if not match:
            raise InvalidRequest(
                f"invalid keep_alive duration {text!r}: use e.g. 5m, 1h, 30s, 0 or -1", param="keep_alive"
            )
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not body:
        raise InvalidRequest(f"invalid keep_alive duration {text!r}", param="keep_alive")
    return sign * total


def format_duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "forever"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((hours, "h"), (minutes, "m"), (secs, "s")) if v) or "0s"


#: The port of a llama.cpp RPC worker (``rpc-server``'s own default).
RPC_DEFAULT_PORT = 50052


def parse_endpoint(value: str) -> tuple[str, int]:
    """``"host:port"`` as llama-server's ``--rpc`` takes it: an IPv4 address or host name, and a port.

    llama.cpp splits at the first ":" and connects over IPv4, so IPv6 addresses cannot be used; a comma
    would split the ``--rpc`` list. Raises ValueError with a message for the user."""
    host, sep, port_text = value.strip().partition(":")
    if not sep or not host or not port_text:
        raise ValueError(f"RPC worker {value!r} is not host:port (e.g. 10.0.0.2:{RPC_DEFAULT_PORT})")
    if any(c.isspace() or c in ",[]/" for c in host) or ":" in port_text:
        raise ValueError(f"RPC worker {value!r}: the host must be an IPv4 address or a host name")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"RPC worker {value!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)
