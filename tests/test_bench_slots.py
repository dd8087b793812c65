"""bench.slots' paired figures and verdict: pure functions over per-round samples."""

from __future__ import annotations

import pytest
from bench.slots import paired, report, rotated, verdict


def test_paired_ratio_and_ttft_difference_are_taken_per_round() -> None:
    hand_rates = [100.0, 50.0, 100.0, 50.0]  # the machine drifts between rounds
    rates = [99.0, 49.5, 99.0, 49.5]  # 0.99x in every round
    hand_ttfts = [[0.010, 0.020, 0.030]] * 4
    ttfts = [[0.012, 0.022, 0.032]] * 4  # 2 ms later in every round
    out = paired(rates, hand_rates, ttfts, hand_ttfts)
    assert out["round_ratio_median"] == pytest.approx(0.99)
    assert out["round_ratio_ci"] == pytest.approx((0.99, 0.99))
    assert out["ttft_delta_ms"] == pytest.approx(2.0)
    lo, hi = out["ttft_delta_ci"]
    assert lo == pytest.approx(2.0) and hi == pytest.approx(2.0)
    assert out["ratio"] == pytest.approx(74.25 / 75.0)


def test_paired_skips_rounds_where_a_path_had_no_stream() -> None:
    out = paired([1.0, 1.0], [1.0, 1.0], [[0.1], []], [[0.1], [0.2]])
    assert out["ttft_delta_ms"] == pytest.approx(0.0)
    assert "ttft_delta_ms" not in paired([1.0], [1.0], [[]], [[0.1]])


@pytest.mark.parametrize(
    ("value", "ci", "expected"),
    [
        (1.01, (0.99, 1.03), "meets"),
        (0.95, (0.93, 0.97), "misses"),
        (0.99, (0.96, 1.02), "meets (within noise)"),
        (0.97, (0.95, 1.01), "misses (within noise)"),
    ],
)
def test_verdict_says_when_the_interval_decides(value: float, ci: tuple[float, float], expected: str) -> None:
    assert verdict(value, ci, 0.98) == expected


def test_rotation_puts_each_path_first_once_with_the_runner_path() -> None:
    names = ("hand", "router", "enginehouse", "eh-runner")
    firsts = [rotated(rnd, names)[0] for rnd in range(4)]
    assert sorted(firsts) == sorted(names)
    assert all(sorted(rotated(rnd, names)) == sorted(names) for rnd in range(4))


def _row(rate: float, ttft: float, **extra: object) -> dict:
    row = {"tokens_per_s": rate, "ttft_p50_ms": ttft, "ttft_p95_ms": ttft, "failed": 0, "rss_mib": 1.0}
    return row | {"slots": ""} | extra


def test_report_puts_the_gap_on_the_gateway_or_the_engine(capsys: pytest.CaptureFixture[str]) -> None:
    # the same figures against hand and against the runner: the runner path matches hand here
    vs_hand = hop = paired([95.0, 96.0], [100.0, 100.0], [[0.021], [0.022]], [[0.020], [0.020]])
    per = {
        "hand": _row(100.0, 20.0),
        "router": _row(100.0, 20.0, **vs_hand),
        "enginehouse": _row(95.5, 21.5, **vs_hand, vs_runner=hop),
        "eh-runner": _row(
            100.0, 20.0, **paired([100.0, 100.0], [100.0, 100.0], [[0.02], [0.02]], [[0.02], [0.02]])
        ),
        "load": [0.5, 0.6],
    }
    report({"rounds": 2, "tokens": 128, "ctx": 4096, "min_streams": 8, "levels": {1: per}})
    out = capsys.readouterr().out
    assert "eh-runner" in out
    assert "against its own runner" in out
    assert "0.955x" in out and "+1.5 ms" in out
