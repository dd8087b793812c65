"""A router's shape (:class:`Rule`, :class:`Route`, :class:`Router`) and routers from config tables:
``[routers.NAME]`` with ``[routers.NAME.routes.ROUTE]`` sub-tables.

It lives on the config side because enginehouse.toml is checked when it is read (a router that does not
build, a route with no candidates); :mod:`enginehouse.routing.classify` decides with these routers.

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

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from enginehouse.errors import InvalidRequest

PREFER = ("latency", "quality")
_ESCAPE = re.compile(r"\\.")


@dataclass(frozen=True)
class Rule:
    """A keyword-tier regex (case-insensitive unless it says ``(?-i:...)``) and the weight it adds.

    A pattern without upper-case letters (escapes aside) is matched against the lower-cased text
    without ``re.IGNORECASE``, which is about twice as fast in CPython's ``re``; the others keep the
    flag and read the original text.
    """

    pattern: str
    weight: float = 1.0
    compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)
    lowered: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lowered = not any(c.isupper() for c in _ESCAPE.sub("", self.pattern))
        try:
            compiled = re.compile(self.pattern, 0 if lowered else re.IGNORECASE)
        except re.error as exc:
            raise InvalidRequest(f"rule {self.pattern!r} is not a valid regular expression: {exc}") from exc
        object.__setattr__(self, "compiled", compiled)
        object.__setattr__(self, "lowered", lowered)

    def search(self, text: str, lowered: str) -> re.Match[str] | None:
        return self.compiled.search(lowered if self.lowered else text)


@dataclass(frozen=True)
class Route:
    """A kind of request and the models that serve it, best first.

    ``prefer`` tells the gateway how to pick among ``candidates``: ``latency`` (the cheapest that can
    serve: loaded with a free slot costs nothing, an unloaded one its load time and what it would
    evict) or ``quality`` (the first that can serve, even if it must load). ``fallbacks`` are tried
    after every candidate failed.
    """

    name: str
    description: str = ""
    examples: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    candidates: tuple[str, ...] = ()
    prefer: str = "latency"
    fallbacks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Router:
    """Routes plus the knobs of both tiers; ``default_route`` takes what no tier claims."""

    name: str
    routes: tuple[Route, ...]
    default_route: str
    threshold: float = 0.15  # best embedding score below this: default route
    keyword_min: float = 1.0  # keyword tier: the best route needs at least this score...
    keyword_ratio: float = 2.0  # ...and this many times the runner-up's
    top_k: int = 3  # embedding score: mean of the k best example similarities (1: max)
    system_weight: float = 0.25  # share of the system prompt's similarity in the embedding score
    max_tokens: int = 64  # the user turn is cut to about this many word pieces before embedding
    min_words: int = 2  # fewer words (2+ letters, or numbers) than this: too little to classify
    # Requests with nothing to classify ("go on", "the other one", keyboard mash): when the closest
    # examples are these, the default route is taken even above the threshold.
    abstain_examples: tuple[str, ...] = ()
    # The abstain examples are short; a turn of more words than this always asks something, so the
    # abstain examples are not consulted for it (0: always consulted).
    abstain_max_words: int = 0
    # Weight of a softmax classifier trained on the route examples (routing/softmax_head.py): its
    # probability for each route is added, times this, to the route's score (0: no classifier).
    head_weight: float = 0.0

    def __post_init__(self) -> None:
        names = [r.name for r in self.routes]
        if not names:
            raise InvalidRequest(f"router {self.name!r} has no routes")
        if len(set(names)) != len(names):
            raise InvalidRequest(f"router {self.name!r} names a route twice")
        if self.default_route not in names:
            raise InvalidRequest(f"router {self.name!r}: default route {self.default_route!r} is not a route")
        for r in self.routes:
            if r.prefer not in PREFER:
                raise InvalidRequest(f"route {r.name!r}: prefer must be one of {', '.join(PREFER)}")
        if self.top_k < 1 or self.max_tokens < 8:
            raise InvalidRequest(f"router {self.name!r}: top_k must be >= 1 and max_tokens >= 8")
        if self.head_weight < 0 or self.abstain_max_words < 0:
            raise InvalidRequest(f"router {self.name!r}: head_weight and abstain_max_words must be >= 0")

    def route(self, name: str) -> Route:
        for r in self.routes:
            if r.name == name:
                return r
        raise KeyError(name)


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
