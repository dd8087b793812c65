"""The names in enginehouse.toml must agree: aliases, routers, fallbacks and route candidates.

Two passes:

- :func:`check_names`, while the file is parsed (no store): an alias that shadows a model or a
  router, an alias or fallback cycle, a router table that does not build, a route with no
  candidates, a candidate or fallback that is a router.
- :func:`check_references`, at start-up and from ``enginehouse config check``, with a predicate that
  says whether a model exists (store, declared or discovered): a fallback, alias target or route
  candidate the file names that nothing serves. The built-in ``auto`` router's own candidates are
  exempt: they are suggestions, taken when installed.

Errors are :class:`~enginehouse.config_errors.KeyedValueError` (absolute keys) so the loader can say
``file:line: key: reason``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from enginehouse.config_auto_router import resolve_router
from enginehouse.config_errors import ConfigFileError, KeyedValueError, line_of
from enginehouse.config_routers import Router
from enginehouse.errors import InvalidRequest

if TYPE_CHECKING:  # FileConfig's validator runs check_names: config_file imports this module
    from enginehouse.config_file import FileConfig

BUILT_IN_ROUTERS = ("auto",)


def _error(keys: list[str], message: str) -> Exception:
    return KeyedValueError(keys, message, absolute=True)


def routers_of(fc: FileConfig) -> dict[str, Router]:
    """Every router the file gives (``auto`` always, changed by ``[routers.auto]`` when present)."""
    out: dict[str, Router] = {}
    for name in (*BUILT_IN_ROUTERS, *fc.routers):
        try:
            out[name] = resolve_router(name, fc.routers)
        except InvalidRequest as exc:
            raise _error(["routers", name], exc.message) from None
    return out


def _file_routes(fc: FileConfig, name: str) -> Iterator[tuple[str, list[str]]]:
    """(route, keys) of the routes the file itself writes for router ``name``."""
    routes = fc.routers.get(name, {}).get("routes", {})
    if isinstance(routes, dict):
        for route in routes:
            yield route, ["routers", name, "routes", route]


def check_names(fc: FileConfig) -> None:
    routers = routers_of(fc)
    alias_owner: dict[str, list[str]] = {}
    target: dict[str, str] = dict(fc.aliases)
    for alias in fc.aliases:
        alias_owner[alias] = ["aliases", alias]
    for key, entry in fc.models.items():
        for alias in entry.aliases:
            where = ["models", key, "aliases"]
            if target.setdefault(alias, key) != key:
                raise _error(where, f"alias {alias!r} is already an alias of {target[alias]!r}")
            alias_owner[alias] = where
    for alias, where in alias_owner.items():
        if alias in fc.models:
            raise _error(where, f"alias {alias!r} shadows the model of the same name")
        if alias in routers:
            raise _error(where, f"alias {alias!r} shadows the router of the same name")
    for key in fc.models:
        if key in routers:
            raise _error(["models", key], f"model {key!r} has the name of a router")
    aliases = fc.alias_map
    for alias, where in alias_owner.items():
        seen = [alias]
        name = aliases[alias]
        while name in aliases:
            if name in seen:
                raise _error(where, "alias cycle: " + " -> ".join([*seen, name]))
            seen.append(name)
            name = aliases[name]
    # fallbacks: no router, no cycle
    graph: dict[str, list[str]] = {}
    for key, entry in fc.models.items():
        for fallback in entry.fallbacks:
            target = fc.canonical(fallback)
            if target in routers:
                raise _error(["models", key, "fallbacks"], f"fallback {fallback!r} is a router, not a model")
            graph.setdefault(key, []).append(target)
    for start in graph:
        _no_cycle(start, graph, [start])
    for name, router in routers.items():
        for route, where in _file_routes(fc, name):
            candidates = router.route(route).candidates
            if not candidates:
                raise _error(where, f"route {route!r} of router {name!r} has no candidates")
            for candidate in (*candidates, *router.route(route).fallbacks):
                if fc.canonical(candidate) in routers:
                    raise _error(where, f"candidate {candidate!r} is a router, not a model")


def _no_cycle(node: str, graph: dict[str, list[str]], path: list[str]) -> None:
    for nxt in graph.get(node, ()):
        if nxt in path:
            raise _error(["models", path[0], "fallbacks"], "fallback cycle: " + " -> ".join([*path, nxt]))
        _no_cycle(nxt, graph, [*path, nxt])


def missing_references(fc: FileConfig, exists: Callable[[str], bool]) -> list[tuple[list[str], str]]:
    """(keys, reason) for each name the file uses that no model answers to."""
    problems: list[tuple[list[str], str]] = []
    routers = routers_of(fc)
    aliases = fc.alias_map

    def missing(name: str) -> bool:
        target = fc.canonical(name)
        return target not in fc.models and not exists(target)

    for alias, target in aliases.items():
        if missing(target):
            keys = ["aliases", alias] if alias in fc.aliases else ["models", target, "aliases"]
            problems.append((keys, f"alias {alias!r} points at {target!r}, which is not a model"))
    for key, entry in fc.models.items():
        for fallback in entry.fallbacks:
            if missing(fallback):
                problems.append((["models", key, "fallbacks"], f"fallback {fallback!r} is not a model"))
    for name, router in routers.items():
        for route, where in _file_routes(fc, name):
            r = router.route(route)
            for candidate in (*r.candidates, *r.fallbacks):
                if missing(candidate):
                    problems.append((where, f"candidate {candidate!r} is not a model"))
    return problems


def check_references(path: Path | str | None, fc: FileConfig, exists: Callable[[str], bool]) -> None:
    """Raise ConfigFileError (file:line: key: reason) for the first name nothing serves."""
    problems = missing_references(fc, exists)
    if not problems:
        return
    keys, message = problems[0]
    line = None
    if path is not None:
        with contextlib.suppress(OSError):
            line = line_of(Path(path).read_text(encoding="utf-8"), keys)
    raise ConfigFileError(path or "enginehouse.toml", message, line, ".".join(keys))
