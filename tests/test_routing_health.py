"""Health: failures in a window, cool-down with back-off, half-open trial, reset by success (fake clock)."""

from __future__ import annotations

import pytest

from enginehouse.routing.health import Health, TargetHealth


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def state(h: Health, key: str = "a") -> TargetHealth:
    st = h.state(key)
    assert st is not None
    return st


def make(**kw: float) -> tuple[Health, Clock]:
    clock = Clock()
    return Health(clock=clock, **kw), clock


def test_n_failures_within_the_window_cool_down() -> None:
    h, _ = make(failures=3, window=30, cooldown=10)
    assert h.available("a") and h.state("a") is None
    assert not h.failure("a", "boom")
    assert not h.failure("a", "boom")
    assert h.available("a")
    assert h.failure("a", "timeout")  # the third starts the cool-down
    assert not h.available("a")
    st = h.state("a")
    assert st is not None
    assert (st.cooled_until, st.reason, st.ejections, st.probing) == (1010.0, "timeout", 1, False)
    assert set(h.cooled()) == {"a"}
    assert h.available("b")  # keys are independent


def test_failures_older_than_the_window_do_not_count() -> None:
    h, clock = make(failures=3, window=30)
    h.failure("a", "x")
    clock.now += 20
    h.failure("a", "x")
    clock.now += 11  # the first is now 31 s old
    assert not h.failure("a", "x")
    assert state(h).failures == 2
    assert h.available("a")
    assert h.failure("a", "x")


def test_success_clears_the_count() -> None:
    h, _ = make(failures=2)
    h.failure("a", "x")
    h.success("a")
    assert h.state("a") is None
    assert not h.failure("a", "x")


def test_half_open_then_success_resets_back_off() -> None:
    h, clock = make(failures=1, cooldown=10)
    h.failure("a", "x")
    clock.now += 9.9
    assert not h.available("a")
    clock.now += 0.1
    assert h.available("a")  # cool-down over: half-open
    st = h.state("a")
    assert st is not None and st.probing and st.cooled_until is None and st.ejections == 1
    assert h.cooled() == {}
    h.success("a")
    assert h.state("a") is None
    h.failure("a", "x")  # a fresh incident starts at the base cool-down again
    assert state(h).cooled_until == clock.now + 10


def test_failure_while_half_open_re_ejects_with_doubled_back_off_capped() -> None:
    h, clock = make(failures=3, cooldown=10, max_cooldown=35)
    for _ in range(3):
        h.failure("a", "x")
    expected = [20, 35, 35]  # 10 was the first; then doubled, capped at 35
    for seconds in expected:
        until = state(h).cooled_until
        assert until is not None
        clock.now = until
        assert h.available("a")
        assert h.failure("a", "still down")  # one failure is enough while half-open
        assert state(h).cooled_until == clock.now + seconds
    assert state(h).ejections == 4


def test_half_open_without_asking_available_first() -> None:
    """The first result after the cool-down decides even if nobody called available() in between."""
    h, clock = make(failures=2, cooldown=10)
    h.failure("a", "x")
    h.failure("a", "x")
    clock.now += 15
    assert h.failure("a", "x")
    assert state(h).cooled_until == clock.now + 20


def test_failures_while_cooled_are_one_incident() -> None:
    h, clock = make(failures=1, cooldown=10)
    assert h.failure("a", "first")
    clock.now += 5
    assert not h.failure("a", "straggler")  # sent before the cool-down began
    st = h.state("a")
    assert st is not None and st.cooled_until == 1010 and st.ejections == 1 and st.reason == "straggler"


def test_one_trial_while_half_open() -> None:
    h, clock = make(failures=1, cooldown=10, window=30)
    h.failure("a", "x")
    clock.now += 10
    assert h.available("a")
    h.begin("a")  # the trial is out: others wait for its answer
    assert not h.available("a")
    h.success("a")
    assert h.available("a")
    h.begin("a")  # no effect when healthy
    assert h.available("a")


def test_a_lost_trial_expires_after_the_window() -> None:
    h, clock = make(failures=1, cooldown=10, window=30)
    h.failure("a", "x")
    clock.now += 10
    h.begin("a")
    clock.now += 29
    assert not h.available("a")
    clock.now += 1
    assert h.available("a")


def test_eject_cools_at_once_with_back_off() -> None:
    h, clock = make(failures=5, cooldown=10)
    h.eject("a", "probe failed")
    assert not h.available("a")
    h.eject("a", "probe failed again")  # while cooled: no longer, no deeper
    st = h.state("a")
    assert st is not None and st.cooled_until == 1010 and st.ejections == 1
    assert st.reason == "probe failed again"
    clock.now = 1010
    h.eject("a", "probe failed")  # half-open: doubled
    assert state(h).cooled_until == 1030
    assert h.cooled()["a"].ejections == 2


def test_cooled_lists_only_those_cooled_now() -> None:
    h, clock = make(failures=1, cooldown=10)
    h.failure("a", "x")
    clock.now += 5
    h.failure("b", "y")
    h.failure("c", "z")
    h.success("c")
    assert set(h.cooled()) == {"a", "b"}
    clock.now += 5
    assert set(h.cooled()) == {"b"}
    assert h.cooled()["b"].reason == "y"


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        Health(failures=0)
    with pytest.raises(ValueError):
        Health(cooldown=10, max_cooldown=5)


def test_requests_failed_together_by_one_incident_count_once() -> None:
    h, clock = make(failures=3, window=30, cooldown=10)
    sent = clock.now  # five requests in flight on one runner
    clock.now += 2  # it dies: each of them fails
    assert [h.failure("a", "died", sent_at=sent) for _ in range(5)] == [False] * 5
    assert state(h).failures == 1 and h.available("a")
    clock.now += 1  # requests sent after that failure count again: a model that keeps failing cools
    assert not h.failure("a", "died", sent_at=clock.now - 0.5)
    clock.now += 1
    assert h.failure("a", "died", sent_at=clock.now - 0.5)
    assert not h.available("a")


def test_a_failure_without_its_send_time_always_counts() -> None:
    h, clock = make(failures=2)
    sent = clock.now
    h.failure("a", "x", sent_at=sent)
    assert h.failure("a", "x")  # the balancer's own reports give no send time
