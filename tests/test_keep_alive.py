"""Ollama's keep_alive: Go durations, plain seconds, 0 for now, negative for forever."""

from __future__ import annotations

import math

import pytest

from enginehouse.config_values import format_duration, parse_keep_alive
from enginehouse.errors import InvalidRequest


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("300ms", 0.3),
        ("1.5h", 5400.0),
        ("30s", 30.0),
        ("1h", 3600.0),
        ("2m30s", 150.0),
        ("1500us", 0.0015),
        ("1500µs", 0.0015),
        ("10ns", 1e-8),
        (".5h", 1800.0),
        ("+5m", 300.0),
        (" 5m ", 300.0),
        (300, 300.0),
        (2.5, 2.5),
        ("300", 300.0),
        ("2.5", 2.5),
        ("0", 0.0),
        (0, 0.0),
        (0.0, 0.0),
        ("0s", 0.0),
        ("0m", 0.0),
    ],
)
def test_parse(value: object, seconds: float) -> None:
    assert parse_keep_alive(value) == pytest.approx(seconds)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["-1", -1, -1.0, "-5m", "-1s", "-0.5h", -300])
def test_negative_is_forever(value: object) -> None:
    assert parse_keep_alive(value) == math.inf  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [None, ""])
def test_missing_gives_default(value: object) -> None:
    assert parse_keep_alive(value, 123.0) == 123.0  # type: ignore[arg-type]
    assert parse_keep_alive(value) is None  # type: ignore[arg-type]


def test_zero_is_not_default() -> None:
    assert parse_keep_alive(0, 300.0) == 0
    assert parse_keep_alive("0", 300.0) == 0


@pytest.mark.parametrize(
    "value", ["5x", "m", "abc", "5 m", "1h 30m", "5m30", "1d", "-", "+", "5mm", "h1", "1h-5m", True, False]
)
def test_invalid(value: object) -> None:
    with pytest.raises(InvalidRequest):
        parse_keep_alive(value)  # type: ignore[arg-type]


def test_invalid_message_names_value_and_examples() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_keep_alive("5x")
    assert "'5x'" in info.value.message
    assert "5m" in info.value.message
    assert info.value.status == 400


def test_nan_is_invalid() -> None:
    with pytest.raises(InvalidRequest):
        parse_keep_alive("nan")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.4, "0s"),
        (1, "1s"),
        (59.9, "59s"),
        (60, "1m"),
        (300, "5m"),
        (330, "5m30s"),
        (3600, "1h"),
        (5400, "1h30m"),
        (3661, "1h1m1s"),
        (90000, "25h"),
        (math.inf, "forever"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["5m", "1h30m", "30s", "1h1m1s"])
def test_format_parse_round_trip(text: str) -> None:
    seconds = parse_keep_alive(text)
    assert seconds is not None
    assert format_duration(seconds) == text
