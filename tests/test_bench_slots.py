"""bench.slots' paired figures and verdict: pure functions over per-round samples."""

from __future__ import annotations

import pytest
from bench.slots import paired, verdict


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
