"""Metrics as ``vllm bench serve`` defines them, as pure functions over finished requests.

TTFT: send to first content token. TPOT: (e2e - ttft) / (output_tokens - 1), the first token excluded,
only for requests with more than one output token. ITL: the gaps between consecutive content events,
pooled over all requests. E2E: send to end of stream. Throughputs divide by the wall time the level
ran for (the sum of its rounds), so several rounds of one level add up to one measurement.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (50, 90, 95, 99)
# --slo names (vllm's ttft/tpot/e2el are accepted too), each a bound in milliseconds.
SLO_KEYS = {"ttft_ms": "ttft", "ttft": "ttft", "tpot_ms": "tpot", "tpot": "tpot", "e2e_ms": "e2e"}
SLO_KEYS |= {"e2el": "e2e", "e2el_ms": "e2e", "e2e": "e2e", "itl_ms": "itl", "itl": "itl"}


@dataclass
class RequestResult:
    """One request as the client saw it; times in seconds."""

    ok: bool
    ttft: float = 0.0
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    input_tokens: int | None = None
    # "server" when the count came from usage / eval_count, "events" when we counted content events.
    token_source: str = "events"
    error: str | None = None

    @property
    def tpot(self) -> float | None:
        return tpot(self.e2e, self.ttft, self.output_tokens)


def tpot(e2e: float, ttft: float, output_tokens: int) -> float | None:
    """Time per output token after the first; None where it is undefined (one token or none)."""
    if output_tokens <= 1:
        return None
    return (e2e - ttft) / (output_tokens - 1)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default, which vllm uses)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: Sequence[float], scale: float = 1000.0) -> dict[str, float] | None:
    """mean and percentiles, scaled (seconds to milliseconds by default); None for no values."""
    if not values:
        return None
    out = {"mean": sum(values) / len(values) * scale}
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(values, q) * scale
    return out


def parse_slo(spec: str) -> tuple[str, float]:
    """``ttft_ms=500`` -> ("ttft", 0.5): the metric and its bound in seconds."""
    name, sep, value = spec.partition("=")
    key = SLO_KEYS.get(name.strip().lower())
    if not sep or key is None:
        raise ValueError(f"SLO {spec!r}: expected NAME=MS with NAME one of ttft_ms, tpot_ms, itl_ms, e2e_ms")
    try:
        bound = float(value)
    except ValueError:
        raise ValueError(f"SLO {spec!r}: {value!r} is not a number of milliseconds") from None
    if bound <= 0:
        raise ValueError(f"SLO {spec!r}: the bound must be positive")
    return key, bound / 1000


def meets_slos(r: RequestResult, slos: dict[str, float]) -> bool:
    """A request counts toward goodput when it succeeded and met every bound. TPOT is undefined for
    one-token answers, which pass that bound (vllm does the same); ITL uses the request's worst gap."""
    if not r.ok:
        return False
    values = {"ttft": r.ttft, "e2e": r.e2e, "tpot": r.tpot, "itl": max(r.itl, default=None)}
    return all(values[k] is None or values[k] <= bound for k, bound in slos.items())


def error_kinds(results: Iterable[RequestResult], limit: int = 5) -> dict[str, int]:
    """The most frequent error messages with their counts, for the report."""
    counts = Counter(r.error or "unknown error" for r in results if not r.ok)
    return dict(counts.most_common(limit))


def level_metrics(
    results: Sequence[RequestResult], duration: float, slos: dict[str, float] | None = None
) -> dict[str, Any]:
    """Everything the report shows for one target at one load level."""
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    in_known = [r.input_tokens for r in ok if r.input_tokens is not None]
    per_s = (lambda n: n / duration) if duration > 0 else (lambda n: 0.0)
    metrics: dict[str, Any] = {
        "completed": len(ok),
        "errors": len(results) - len(ok),
        "error_kinds": error_kinds(results),
        "duration_s": duration,
        "total_output_tokens": out_tokens,
        "total_input_tokens": sum(in_known),
        "mean_input_tokens": sum(in_known) / len(in_known) if in_known else None,
        "mean_output_tokens": out_tokens / len(ok) if ok else None,
        "output_tokens_from": sorted({r.token_source for r in ok}),
        "request_throughput": per_s(len(ok)),
        "output_throughput": per_s(out_tokens),
        "total_token_throughput": per_s(out_tokens + sum(in_known)),
        "ttft_ms": summarize([r.ttft for r in ok]),
        "tpot_ms": summarize([t for r in ok if (t := r.tpot) is not None]),
        "itl_ms": summarize([gap for r in ok for gap in r.itl]),
        "e2e_ms": summarize([r.e2e for r in ok]),
    }
    if slos:
        good = sum(meets_slos(r, slos) for r in ok)
        metrics["good_requests"] = good
        metrics["goodput"] = per_s(good)
    return metrics


def compare(base: dict[str, Any], other: dict[str, Any]) -> dict[str, float | None]:
    """``other`` against ``base`` (the first target): throughput ratio, p50 TTFT difference and ratio."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def p(m: dict[str, Any], key: str, q: str) -> float | None:
        return (m.get(key) or {}).get(q)

    b50, o50 = p(base, "ttft_ms", "p50"), p(other, "ttft_ms", "p50")
    return {
        "output_throughput_ratio": ratio(other.get("output_throughput"), base.get("output_throughput")),
        "request_throughput_ratio": ratio(other.get("request_throughput"), base.get("request_throughput")),
        "ttft_p50_diff_ms": o50 - b50 if o50 is not None and b50 is not None else None,
        "ttft_p50_ratio": ratio(o50, b50),
    }
