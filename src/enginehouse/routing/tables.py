"""Routers from config tables: ``[routers.NAME]`` with ``[routers.NAME.routes.ROUTE]`` sub-tables.

```toml
[routers.auto]
threshold = 0.15
[routers.auto.routes.code]
candidates = ["qwen2.5-coder:7b", "smollm2:135m"]
keywords = ['\\bpython\\b']                 # rules of weight 1
rules = [{ pattern = '```', weight = 2 }]
```

Errors are InvalidRequest naming the router and the route; the config file loader adds file:line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from enginehouse.errors import InvalidRequest
from enginehouse.routing.classify import Route, Router, Rule

_ROUTER_KEYS = {
    "routes", "default", "threshold", "keyword_min", "keyword_ratio", "top_k", "system_weight",
    "max_tokens", "min_words", "abstain_examples", "abstain_max_words", "head_weight",
}  # fmt: skip
_ROUTE_KEYS = {"description", "examples", "keywords", "rules", "candidates", "prefer", "fallbacks"}


def _rules(value: Any, where: str) -> tuple[Rule, ...]:
    out = []
    for item in value:
        if isinstance(item, str):
            out.append(Rule(item))
        elif isinstance(item, Mapping) and isinstance(item.get("pattern"), str):
            out.append(Rule(item["pattern"], float(item.get("weight", 1.0))))
        else:
            raise InvalidRequest(f"{where}: a rule is a regex string or {{pattern = ..., weight = ...}}")
    return tuple(out)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{where}: expected a list of strings")
    return tuple(value)


def route_from_table(name: str, table: Mapping[str, Any], base: Route | None = None) -> Route:
    """A route from a config table; keys it leaves out keep ``base``'s values (a default route's).
    ``keywords`` are rules of weight 1; ``rules`` are ``{pattern, weight}`` tables; both add to base's
    rules only if ``base`` has none, otherwise they replace them."""
    unknown = set(table) - _ROUTE_KEYS
    if unknown:
        raise InvalidRequest(f"route {name!r}: unknown key(s) {', '.join(sorted(unknown))}")
    route = base or Route(name)
    changes: dict[str, Any] = {}
    if "description" in table:
        changes["description"] = str(table["description"])
    if "examples" in table:
        changes["examples"] = _strings(table["examples"], f"route {name!r} examples")
    if "keywords" in table or "rules" in table:
        kws = _rules(_strings(table.get("keywords", []), f"route {name!r} keywords"), name)
        changes["rules"] = kws + _rules(table.get("rules", []), f"route {name!r} rules")
    if "candidates" in table:
        changes["candidates"] = _strings(table["candidates"], f"route {name!r} candidates")
    if "fallbacks" in table:
        changes["fallbacks"] = _strings(table["fallbacks"], f"route {name!r} fallbacks")
    if "prefer" in table:
        changes["prefer"] = str(table["prefer"])
    return replace(route, name=name, **changes)


def router_from_table(name: str, table: Mapping[str, Any], base: Router | None = None) -> Router:
    """A router from a config table such as ``[routers.auto]`` with ``[routers.auto.routes.code]``
    sub-tables. With ``base`` (the default ``auto`` router), a route named like one of base's keeps
    base's examples and rules unless it gives its own; base's other routes stay."""
    unknown = set(table) - _ROUTER_KEYS
    if unknown:
        raise InvalidRequest(f"router {name!r}: unknown key(s) {', '.join(sorted(unknown))}")
    routes_table = table.get("routes", {})
    if not isinstance(routes_table, Mapping):
        raise InvalidRequest(f"router {name!r}: routes must be a table of route tables")
    base_routes = {r.name: r for r in base.routes} if base else {}
    routes: dict[str, Route] = dict(base_routes)
    for rname, rtable in routes_table.items():
        if not isinstance(rtable, Mapping):
            raise InvalidRequest(f"router {name!r}: route {rname!r} must be a table")
        routes[rname] = route_from_table(rname, rtable, base_routes.get(rname))
    knobs: dict[str, Any] = {k: table[k] for k in _ROUTER_KEYS - {"routes", "default"} if k in table}
    if "abstain_examples" in knobs:
        knobs["abstain_examples"] = _strings(knobs["abstain_examples"], f"router {name!r} abstain_examples")
    default = table.get("default", base.default_route if base else None)
    if default is None:
        raise InvalidRequest(f"router {name!r}: no default route")
    start = base or Router(name, tuple(routes.values()), str(default))
    return replace(start, name=name, routes=tuple(routes.values()), default_route=str(default), **knobs)
