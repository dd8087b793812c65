"""Routing: which models answer a request, in which order, and what happens when one fails.

- ``dispatch``: a request's plan and failover between its candidates; ``plan``: the Plan itself;
- ``pools`` and ``balance``: replica pools and the choice of a replica; ``health``: the one
  failure/cool-down mechanism for models and replicas;
- ``embedding``: the gateway's embedding runner for the routers' second tier;
- ``classify``: Decision and the Classifier (keyword tier, embedding tier, default route), pure but
  for the injected ``embed`` coroutine;
- ``minilm``: the bundled MiniLM as a GGUF, its pinned llama-server runner, and ``RunnerEmbedder``
  for any OpenAI-compatible ``/v1/embeddings``.

The routers themselves (Rule, Route, Router, routers from config tables, the built-in ``auto`` router)
are configuration, checked when enginehouse.toml is read: :mod:`enginehouse.config_routers` and
:mod:`enginehouse.config_auto_router`; they are re-exported here.
"""

from enginehouse.config_auto_router import default_router, resolve_router
from enginehouse.config_routers import Route, Router, Rule, router_from_table
from enginehouse.routing.classify import ABSTAIN, Classifier, Decision, Embed

__all__ = [
    "ABSTAIN",
    "Classifier",
    "Decision",
    "Embed",
    "Route",
    "Router",
    "Rule",
    "default_router",
    "resolve_router",
    "router_from_table",
]
