"""The Engine contract: a model served behind an OpenAI-compatible HTTP endpoint.

The gateway never links an engine into its own process. A local engine is a managed runner process
(llama-server, vLLM) on loopback; a remote one (another Ollama, any OpenAI-compatible URL) is attached to.
Either way the gateway talks HTTP to ``base_url``, so the same code path serves a runner on this machine
and one across the room. Engine modules keep heavy imports inside themselves so ``import enginehouse``
stays fast.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class EngineInfo:
    """What ``ps`` and ``/api/ps`` show about a running engine."""

    engine: str
    state: str
    base_url: str
    pid: int | None = None
    restarts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunnerSpec:
    """What a request needs from a runner beyond the model itself."""

    embedding: bool = False  # an embedding runner (llama-server --embeddings) rather than a chat one
    num_ctx: int | None = None  # the context per slot the request asks for (Ollama's num_ctx)

    def key(self, model: str) -> str:
        return f"{model} (embedding)" if self.embedding else model


class Engine(abc.ABC):
    """One model on one engine. Implementations: one module each under ``enginehouse.engines``."""

    kind: ClassVar[str]
    #: "completion", "embedding", "tools", "vision", "insert", "thinking": Ollama's capability names.
    capabilities: frozenset[str] = frozenset({"completion"})

    @property
    @abc.abstractmethod
    def base_url(self) -> str:
        """Root URL of the engine's OpenAI-compatible API (without ``/v1``)."""

    @property
    def served_model(self) -> str:
        """The ``model`` value the engine expects in requests."""
        return "default"

    @property
    def request_headers(self) -> dict[str, str]:
        """Headers every request to this engine carries (an upstream's API key); sent to it only."""
        return {}

    async def idle(self) -> bool:
        """The model's keep_alive expired with no request in flight. Return True when the engine
        released its memory without stopping (vLLM's sleep mode) and should be stopped only at the next
        expiry; False (the default) to be stopped now. A later ``ensure_ready`` wakes it."""
        return False

    @property
    def ready(self) -> bool:
        """True when ``ensure_ready`` would return at once: the scheduler's warm path skips the call.
        False (the default) always takes it."""
        return False

    @abc.abstractmethod
    async def ensure_ready(self, timeout: float | None = None) -> None:
        """Start (or attach to) the engine and return once it answers requests."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop a local runner (waiting for it to exit) or detach from a remote one."""

    @abc.abstractmethod
    def info(self) -> EngineInfo:
        """A snapshot for ``ps``."""
