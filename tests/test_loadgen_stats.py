"""The bench metrics as vllm bench serve defines them: input/output tables, no servers."""

from __future__ import annotations

import math

import pytest

from enginehouse.loadgen.stats import (
    RequestResult,
    compare,
    level_metrics,
    meets_slos,
    parse_slo,
    percentile,
    summarize,
    tpot,
)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0], 50, 5.0),
        ([5.0], 99, 5.0),
        ([1.0, 2.0], 50, 1.5),
        ([3.0, 1.0, 2.0], 50, 2.0),  # unsorted input
        ([1.0, 2.0, 3.0, 4.0], 90, 3.7),  # numpy: 1 + (3 * 0.9) -> between 3 and 4
        ([1.0, 2.0, 3.0, 4.0], 99, 3.97),
        (list(range(1, 101)), 50, 50.5),
        (list(range(1, 101)), 99, 99.01),
        ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
    ],
)
def test_percentile_interpolates_like_numpy(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 50))


@pytest.mark.parametrize(
    ("e2e", "ttft", "tokens", "expected"),
    [
        (1.0, 0.1, 10, 0.1),  # 0.9 s for the 9 tokens after the first
        (0.5, 0.5, 1, None),  # one token: undefined, excluded from TPOT
        (0.5, 0.5, 0, None),
        (2.1, 0.1, 3, 1.0),
    ],
)
def test_tpot_excludes_the_first_token(e2e: float, ttft: float, tokens: int, expected: float | None) -> None:
    assert tpot(e2e, ttft, tokens) == (pytest.approx(expected) if expected is not None else None)


def test_summarize_reports_mean_and_percentiles_in_ms() -> None:
    s = summarize([0.010, 0.020, 0.030, 0.040])
    assert s is not None
    assert s["mean"] == pytest.approx(25.0)
    assert s["p50"] == pytest.approx(25.0)
    assert s["p90"] == pytest.approx(37.0)
    assert s["p99"] == pytest.approx(39.7)
    assert summarize([]) is None


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("ttft_ms=500", ("ttft", 0.5)),
        ("tpot_ms=50", ("tpot", 0.05)),
        ("TTFT=250", ("ttft", 0.25)),
        ("e2el=2000", ("e2e", 2.0)),
        ("itl_ms=100", ("itl", 0.1)),
    ],
)
def test_parse_slo(spec: str, expected: tuple[str, float]) -> None:
    key, bound = parse_slo(spec)
    assert (key, bound) == (expected[0], pytest.approx(expected[1]))


@pytest.mark.parametrize("spec", ["ttft", "ttft_ms=", "ttft_ms=fast", "latency=5", "ttft_ms=0", "tpot_ms=-1"])
def test_parse_slo_refuses(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_slo(spec)


def ok(ttft: float, e2e: float, tokens: int, itl: list[float] | None = None, **kw: object) -> RequestResult:
    return RequestResult(ok=True, ttft=ttft, e2e=e2e, output_tokens=tokens, itl=itl or [], **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("result", "slos", "good"),
    [
        (ok(0.2, 1.2, 11), {"ttft": 0.5}, True),
        (ok(0.6, 1.2, 11), {"ttft": 0.5}, False),
        (ok(0.2, 1.2, 11), {"ttft": 0.5, "tpot": 0.1}, True),  # tpot = 1.0 / 10 = 0.1: on the bound
        (ok(0.2, 1.3, 11), {"ttft": 0.5, "tpot": 0.1}, False),
        (ok(0.2, 0.2, 1), {"tpot": 0.001}, True),  # TPOT undefined for one token: not held against it
        (ok(0.1, 1.0, 3, itl=[0.1, 0.8]), {"itl": 0.5}, False),  # the worst gap counts
        (ok(0.1, 1.0, 3), {"e2e": 0.9}, False),
        (RequestResult(ok=False, error="boom"), {"ttft": 10}, False),
    ],
)
def test_meets_slos(result: RequestResult, slos: dict[str, float], good: bool) -> None:
    assert meets_slos(result, slos) is good


def test_level_metrics_table() -> None:
    results = [
        ok(0.1, 1.1, 11, itl=[0.1] * 10, input_tokens=20, token_source="server"),
        ok(0.3, 2.3, 21, itl=[0.1] * 20, input_tokens=20, token_source="server"),
        RequestResult(ok=False, e2e=5.0, error="timed out after 5s"),
        RequestResult(ok=False, e2e=0.0, error="timed out after 5s"),
    ]
    m = level_metrics(results, duration=4.0, slos={"ttft": 0.2})
    assert m["completed"] == 2
    assert m["errors"] == 2
    assert m["error_kinds"] == {"timed out after 5s": 2}
    assert m["total_output_tokens"] == 32
    assert m["request_throughput"] == pytest.approx(0.5)
    assert m["output_throughput"] == pytest.approx(8.0)
    assert m["total_token_throughput"] == pytest.approx(18.0)
    assert m["mean_input_tokens"] == pytest.approx(20.0)
    assert m["mean_output_tokens"] == pytest.approx(16.0)
    assert m["output_tokens_from"] == ["server"]
    assert m["ttft_ms"]["mean"] == pytest.approx(200.0)
    assert m["ttft_ms"]["p50"] == pytest.approx(200.0)
    assert m["tpot_ms"]["mean"] == pytest.approx(100.0)  # both requests decode at 0.1 s/token
    assert m["itl_ms"]["p99"] == pytest.approx(100.0)
    assert m["e2e_ms"]["p90"] == pytest.approx(2180.0)
    assert m["good_requests"] == 1  # only the first meets ttft <= 200 ms
    assert m["goodput"] == pytest.approx(0.25)


def test_level_metrics_with_nothing_completed() -> None:
    m = level_metrics([RequestResult(ok=False, error="HTTP 500: boom")], duration=0.0)
    assert m["completed"] == 0
    assert m["errors"] == 1
    assert m["request_throughput"] == 0.0
    assert m["ttft_ms"] is None and m["tpot_ms"] is None and m["itl_ms"] is None
    assert "goodput" not in m  # no SLOs given


def test_compare_against_the_first_target() -> None:
    base = {"output_throughput": 100.0, "request_throughput": 2.0, "ttft_ms": {"p50": 20.0}}
    other = {"output_throughput": 95.0, "request_throughput": 1.9, "ttft_ms": {"p50": 25.0}}
    c = compare(base, other)
    assert c["output_throughput_ratio"] == pytest.approx(0.95)
    assert c["request_throughput_ratio"] == pytest.approx(0.95)
    assert c["ttft_p50_diff_ms"] == pytest.approx(5.0)
    assert c["ttft_p50_ratio"] == pytest.approx(1.25)
    empty = compare({"output_throughput": 0.0, "ttft_ms": None}, other)
    assert empty["output_throughput_ratio"] is None and empty["ttft_p50_diff_ms"] is None
