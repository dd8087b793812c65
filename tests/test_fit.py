"""fit_context: the largest context a runner may have within a budget."""

from __future__ import annotations

from enginehouse.sched.fit import fit_context

MiB = 1 << 20


def linear(base_mib: int, mib_per_token: float):
    calls: list[int] = []

    def estimate(ctx: int) -> int:
        calls.append(ctx)
        return int((base_mib + mib_per_token * ctx) * MiB)

    return estimate, calls


def test_fits_at_the_context_wanted() -> None:
    estimate, calls = linear(100, 0.1)
    fit = fit_context(estimate, wanted_ctx=4096, slots=4, budget=1000 * MiB)
    assert fit.fits and fit.ctx_per_slot == 4096 and fit.total_ctx == 16384
    assert fit.needed == estimate(4096) and calls[0] == 4096
    assert "4 slots x 4096 tokens" in fit.reason


def test_too_big_gives_the_largest_multiple_of_256_that_fits() -> None:
    estimate, calls = linear(100, 0.1)  # 100 MiB + 0.1 MiB per token: 300 MiB holds 2000 tokens
    fit = fit_context(estimate, wanted_ctx=8192, slots=2, budget=300 * MiB)
    assert not fit.fits and fit.ctx_per_slot == 1792 and fit.total_ctx == 3584
    assert estimate(1792) <= 300 * MiB < estimate(2048)
    assert "fits at 2 x 1792 tokens" in fit.reason and "ENGINEHOUSE_CONTEXT_LENGTH=1792" in fit.reason
    assert len(calls) <= 2 + 6  # bisection, not a walk


def test_nothing_fits_when_the_weights_alone_are_too_big() -> None:
    estimate, _ = linear(5000, 0.1)
    fit = fit_context(estimate, wanted_ctx=4096, slots=1, budget=4096 * MiB)
    assert not fit.fits and fit.ctx_per_slot == 0 and fit.total_ctx == 0
    assert "even at 1 x 256 tokens" in fit.reason


def test_an_exact_fit_fits_and_a_context_below_one_step_is_searched_down_to_zero() -> None:
    estimate, _ = linear(0, 1)
    assert fit_context(estimate, wanted_ctx=1000, slots=1, budget=1000 * MiB).fits
    small = fit_context(estimate, wanted_ctx=200, slots=1, budget=100 * MiB)
    assert not small.fits and small.ctx_per_slot == 0
