"""One entry point for pulls, whatever the source: the name decides the protocol."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from enginehouse.errors import InvalidRequest
from enginehouse.store.names import ModelName
from enginehouse.store.pull_ollama import pull_ollama
from enginehouse.store.store import ModelRecord, Store

HF_HOSTS = frozenset({"hf.co", "huggingface.co"})

PullProgress = Callable[[dict[str, Any]], Awaitable[None] | None]


async def pull_model(
    store: Store, name: str, *, insecure: bool = False, progress: PullProgress | None = None
) -> ModelRecord:
    """Pull ``name``: ``hf.co/{owner}/{repo}[:{quant}]`` from Hugging Face, anything else from an
    Ollama registry (``registry.ollama.ai`` unless the name carries a host)."""
    model_name = ModelName.parse(name)
    if model_name.host in HF_HOSTS:
        raise InvalidRequest(
            "pulling from Hugging Face is not available yet: download the GGUF and `enginehouse import` it"
        )
    return await pull_ollama(store, name, progress=progress, insecure=insecure)
