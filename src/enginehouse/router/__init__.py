"""Request routing. The ``auto`` router's classifier, in three modules:

- ``classify``: Rule, Route, Router, Decision and the Classifier (keyword tier, embedding tier,
  default route), pure but for the injected ``embed`` coroutine;
- ``default_routes``: the built-in ``auto`` router (code, math, writing, general) and
  ``resolve_router`` for config tables;
- ``embedder``: the bundled MiniLM as a GGUF, its pinned llama-server runner, and ``RunnerEmbedder``
  for any OpenAI-compatible ``/v1/embeddings``; ``tables``: routers from config tables.
"""

from enginehouse.router.classify import ABSTAIN, Classifier, Decision, Embed, Route, Router, Rule
from enginehouse.router.default_routes import default_router, resolve_router
from enginehouse.router.tables import router_from_table

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
