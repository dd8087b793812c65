"""One health mechanism for everything the gateway can send to: models, upstreams, runners, replicas.

A target is *available* until it fails ``failures`` times within ``window`` seconds (a success in
between starts the count again, so in practice: consecutive failures). It is then *cooled down* for
``cooldown * 2**ejections`` seconds, capped at ``max_cooldown``, where ``ejections`` counts the
cool-downs since its last success. When the cool-down has passed the target is *half-open*: it is
available again, but the next result decides. A success closes it (everything reset); a failure
cools it down at once with the doubled back-off. ``begin`` marks the one request sent while
half-open as the trial, so that others wait for its answer instead of all piling onto a target that
may still be broken.

One incident is counted once: a runner that dies fails every request it had in flight, and those
failures say the same thing. A failure that gives ``sent_at`` (when its request was sent) counts only
if the request was sent after the last failure that counted; the others were already on their way
when the target failed.

Times are ``clock()`` seconds (``time.time`` by default, so that ``cooled_until`` can be shown as a
wall-clock time); tests pass a fake clock. Pure and synchronous: no tasks, no I/O.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class TargetHealth:
    key: str
    failures: int  # failures in the current window, none of them older than `window`
    cooled_until: float | None  # clock() seconds; None when not cooled down
    reason: str  # the last failure's reason
    ejections: int  # consecutive cool-downs (back-off exponent); reset by a success
    probing: bool  # cool-down passed, one trial request allowed, not yet answered


@dataclass
class _State:
    times: deque[float] = field(default_factory=deque)  # when the failures in the window happened
    cooled_until: float | None = None
    reason: str = ""
    ejections: int = 0
    probing: bool = False
    trial_at: float | None = None  # when the half-open trial request was sent
    counted_at: float | None = None  # when the last failure that counted happened


class Health:
    def __init__(
        self,
        *,
        failures: int = 3,
        window: float = 30.0,
        cooldown: float = 10.0,
        max_cooldown: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if failures < 1 or window <= 0 or cooldown <= 0 or max_cooldown < cooldown:
            raise ValueError("health: failures >= 1, window > 0, 0 < cooldown <= max_cooldown")
        self.failures = failures
        self.window = window
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.clock = clock
        self._states: dict[str, _State] = {}

    def available(self, key: str) -> bool:
        """False while cooled down, and while half-open with the trial request not answered yet."""
        st = self._states.get(key)
        if st is None:
            return True
        now = self.clock()
        self._settle(st, now)
        if st.cooled_until is not None:
            return False
        # A trial that never got its answer (caller lost it) must not keep the target out for ever.
        return st.trial_at is None or now - st.trial_at >= self.window

    def begin(self, key: str) -> None:
        """A request is being sent to ``key``; while half-open it is the trial that decides."""
        st = self._states.get(key)
        if st is not None:
            now = self.clock()
            self._settle(st, now)
            if st.probing and st.trial_at is None:
                st.trial_at = now

    def success(self, key: str) -> None:
        """The target answered: failures, cool-down and back-off are all forgotten (also for a request
        that was sent before a cool-down began: the target works again)."""
        self._states.pop(key, None)

    def failure(self, key: str, reason: str, sent_at: float | None = None) -> bool:
        """Count one failure; True when it started a cool-down. ``sent_at``: when the failed request
        was sent (``clock()`` seconds), so that the requests one incident fails together count once."""
        st = self._states.setdefault(key, _State())
        now = self.clock()
        self._settle(st, now)
        st.reason = reason
        if st.cooled_until is not None:
            return False  # a request sent before the cool-down began: one incident, one cool-down
        if sent_at is not None and st.counted_at is not None and sent_at <= st.counted_at:
            return False  # in flight when an earlier failure was counted: the same incident
        st.counted_at = now
        if st.probing:
            self._cool(st, now)
            return True
        st.times.append(now)
        self._prune(st, now)
        if len(st.times) >= self.failures:
            self._cool(st, now)
            return True
        return False

    def eject(self, key: str, reason: str) -> None:
        """Cool down now, whatever the count (an active probe failed); a no-op while cooled down."""
        st = self._states.setdefault(key, _State())
        now = self.clock()
        self._settle(st, now)
        st.reason = reason
        if st.cooled_until is None:
            self._cool(st, now)

    def state(self, key: str) -> TargetHealth | None:
        st = self._states.get(key)
        if st is None:
            return None
        now = self.clock()
        self._settle(st, now)
        self._prune(st, now)
        return TargetHealth(key, len(st.times), st.cooled_until, st.reason, st.ejections, st.probing)

    def cooled(self) -> dict[str, TargetHealth]:
        """The targets cooled down now (for ps, doctor and metrics)."""
        out: dict[str, TargetHealth] = {}
        for key in list(self._states):
            th = self.state(key)
            if th is not None and th.cooled_until is not None:
                out[key] = th
        return out

    def _cool(self, st: _State, now: float) -> None:
        # 2**ejections overflows float for a long-dead target; the cap is reached long before.
        st.cooled_until = now + min(self.max_cooldown, self.cooldown * 2 ** min(st.ejections, 64))
        st.ejections += 1
        st.times.clear()
        st.probing = False
        st.trial_at = None

    def _settle(self, st: _State, now: float) -> None:
        """A cool-down that has run out becomes half-open."""
        if st.cooled_until is not None and now >= st.cooled_until:
            st.cooled_until = None
            st.probing = True

    def _prune(self, st: _State, now: float) -> None:
        while st.times and now - st.times[0] > self.window:
            st.times.popleft()
