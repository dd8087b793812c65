"""Routing: which models answer a request, in which order, and what happens when one fails.

- ``dispatch``: a request's plan and failover between its candidates; ``plan``: the Plan itself;
- ``pools`` and ``balance``: replica pools and the choice of a replica; ``health``: the one
  failure/cool-down mechanism for models and replicas;
- ``embedding``: the gateway's embedding runner for the routers' second tier;
- ``classify``: Rule, Route, Router, Decision and the Classifier (keyword tier, embedding tier,
  default route), pure but for the injected ``embed`` coroutine;
- ``default_routes``: the built-in ``auto`` router (code, math, writing, general) and
  ``resolve_router`` for config tables;
- ``minilm``: the bundled MiniLM as a GGUF, its pinned llama-server runner, and ``RunnerEmbedder``
  for any OpenAI-compatible ``/v1/embeddings``; ``tables``: routers from config tables.
"""

from enginehouse.routing.classify import ABSTAIN, Classifier, Decision, Embed, Route, Router, Rule
from enginehouse.routing.default_routes import default_router, resolve_router
from enginehouse.routing.tables import router_from_table

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
