"""``keep_alive`` as the scheduler and the doors read it: the parser is the config's
(:mod:`enginehouse.config_values`), because enginehouse.toml takes the same values."""

from enginehouse.config_values import format_duration, parse_keep_alive

__all__ = ["format_duration", "parse_keep_alive"]
