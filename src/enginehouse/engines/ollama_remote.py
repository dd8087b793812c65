"""An existing Ollama server as an engine (``[upstreams.NAME] engine = "ollama"``): for migrating to
enginehouse without moving the models at once.

Nothing to start or stop: ``ensure_ready`` checks once that ``GET /api/version`` answers. The Ollama door
passes ``/api/chat``, ``/api/generate``, ``/api/embed`` and ``/api/embeddings`` through as they are (only
``model`` is rewritten to the upstream's name, and back in the answer), so every Ollama feature the
upstream has works; the OpenAI door goes to the upstream's own ``/v1``.
"""

from __future__ import annotations

from typing import Any

from enginehouse.engines.openai_remote import HEALTH_PATHS, RemoteEngine, auth_headers, get_json


async def list_ollama_models(
    url: str, api_key: str | None = None, *, timeout: float = 5.0
) -> list[dict[str, Any]]:
    """The upstream's ``/api/tags`` entries (``name``, ``size``, ``digest``, ``details``...)."""
    data = await get_json(f"{url}/api/tags", headers=auth_headers(api_key), timeout=timeout)
    items = data.get("models") if isinstance(data, dict) else None
    return [m for m in items or [] if isinstance(m, dict) and m.get("name")]


class OllamaRemoteEngine(RemoteEngine):
    kind = "ollama"
    dialects = frozenset({"ollama", "openai"})
    health_path = HEALTH_PATHS["ollama"]
