"""The Engine contract: a model served behind an OpenAI-compatible HTTP endpoint, lifecycle and traffic.

The gateway never links an engine into its own process. A local engine is a managed runner process
(llama-server, vLLM) on loopback; a remote one (another Ollama, any OpenAI-compatible URL) is attached to.
Either way the gateway talks HTTP to ``base_url``, so the same code path serves a runner on this machine
and one across the room. Engine modules keep heavy imports inside themselves so ``import enginehouse``
stays fast.

Traffic: :meth:`Engine.stream` takes a canonical call and answers with canonical events;
:meth:`Engine.embed` answers an embedding call; where a client's dialect is one the engine speaks
(:attr:`Engine.dialects`) and nothing must be rewritten, :meth:`Engine.forward` sends the client's body
as it came and the door streams the engine's bytes back untouched. The doors never ask which engine
they talk to.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp
import orjson

from enginehouse.canonical import (
    ChatCall,
    CompletionCall,
    EmbedCall,
    Event,
    Ranked,
    RerankCall,
    RerankResult,
    Step,
)
from enginehouse.engines.engine_http import Flow
from enginehouse.engines.openai_wire import EventDecoder, request_for
from enginehouse.engines.upstream import EngineAnswer, Upstream, pump, raise_for_engine
from enginehouse.errors import ContextOverflow, EnginehouseError, InvalidRequest, RunnerError

#: What a broken engine stream looks like from the clients' side: reported as "closed early".
STREAM_BROKEN = (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class EventStream:
    """An engine's answer as canonical events: each piece of the engine's bytes decoded, then passed
    through the steps (:meth:`through`), and handed to the consumer by :meth:`run`. ``close()`` drops the
    engine's stream, which cancels its generation (also when the client left)."""

    def __init__(self, resp: EngineAnswer, decoder: EventDecoder | None = None) -> None:
        self._resp = resp
        self._decoder = decoder or EventDecoder()
        self._steps: list[Step] = []

    def through(self, step: Step) -> EventStream:
        """The same answer with ``step`` applied to its events, after the steps before it."""
        self._steps.append(step)
        return self

    def _piece(self, chunk: bytes) -> list[Event]:
        events = self._decoder.feed(chunk)
        for step in self._steps:
            events = [out for event in events for out in step.feed(event)]
        return events

    def _ending(self) -> list[Event]:
        events = self._decoder.end()
        for step in self._steps:
            events = [out for event in events for out in step.feed(event)] + step.end()
        return events

    async def run(self, deliver: Callable[[list[Event]], bool], drain: Callable[[], Awaitable[None]]) -> None:
        """Hand the answer's events to ``deliver``, one engine piece's worth at a time, until the engine's
        ``[DONE]`` or a step's end (a stop sequence). ``deliver`` returns True when its client reads
        slower than the engine writes: the engine is then not read until ``drain()`` returned.

        Where the engine's connection can push (:func:`~enginehouse.engines.upstream.pump`), the
        pieces are decoded and delivered in that connection's own callback. An exception ``deliver``
        raises ends the answer and is raised here."""
        steps = self._steps

        def sink(chunk: bytes) -> Flow:
            events = self._piece(chunk)
            slow = deliver(events) if events else False
            if self._decoder.done or (steps and any(step.done for step in steps)):
                return "stop"
            return "wait" if slow else "go"

        try:
            await pump(self._resp, sink, drain)
        except STREAM_BROKEN as exc:
            raise RunnerError("the engine closed the stream early") from exc
        if rest := self._ending():
            deliver(rest)

    def close(self) -> None:
        self._resp.close()


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


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
    rerank: bool = False  # a reranking runner (llama-server --rerank: rank pooling, /v1/rerank)

    def key(self, model: str) -> str:
        if self.rerank:
            return f"{model} (rerank)"
        return f"{model} (embedding)" if self.embedding else model


_TOO_LARGE = re.compile(r"input \((\d+) tokens\) is too large to process.*batch size: (\d+)", re.S)


def too_long(exc: RunnerError) -> ContextOverflow | None:
    """llama-server's 500 for an encoder's input longer than its micro-batch, which a rerank runner sizes
    to the context (engines/factory.py): the client's too-long pair, not a failing engine."""
    found = _TOO_LARGE.search(exc.message)
    if found is None:
        return None
    tokens, context = found.groups()
    return ContextOverflow(
        f"a query and document together are {tokens} tokens, more than the reranker's context ({context})"
    )


def rerank_result(data: Any, count: int, top_n: int | None) -> RerankResult:
    """An engine's Jina-shaped rerank answer, checked (a result naming a document that was not sent is the
    engine's fault) and put in order here: engines sort, but the order is the gateway's promise."""
    try:
        ranked = [Ranked(int(r["index"]), float(r["relevance_score"])) for r in data["results"]]
        tokens = int((data.get("usage") or {}).get("total_tokens", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise RunnerError(f"the engine's rerank answer is malformed: {exc!s:.100}") from exc
    if any(not 0 <= r.index < count for r in ranked):
        raise RunnerError("the engine's rerank answer names a document that was not sent")
    ranked.sort(key=lambda r: -r.score)
    return RerankResult(ranked[:top_n] if top_n is not None else ranked, tokens)


class Engine(abc.ABC):
    """One model on one engine. Implementations: one module each under ``enginehouse.engines``."""

    kind: ClassVar[str]
    #: "completion", "embedding", "tools", "vision", "insert", "thinking": Ollama's capability names.
    capabilities: frozenset[str] = frozenset({"completion"})
    #: Client dialects this engine takes as clients send them ("openai": ``/v1/*``; "ollama": ``/api/*``).
    dialects: ClassVar[frozenset[str]] = frozenset({"openai"})
    #: Another gateway or server across the network: requests carry the loop guard's header to it.
    forwards: ClassVar[bool] = False
    #: What the engine's 500 raises. A RunnerError counts against the model's health; a runner whose
    #: liveness the gateway judges itself (process, watchdog) says EngineRefused: its 500 is about the
    #: request, so a client's bad input cannot cool the model down for others.
    refused: ClassVar[type[RunnerError]] = RunnerError

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

    # ---- traffic ----------------------------------------------------------------------------------------
    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**self.request_headers, **extra} if extra else self.request_headers

    async def stream(
        self, call: ChatCall | CompletionCall, http: Upstream, extra: dict[str, str] | None = None
    ) -> EventStream:
        """Send a generating call; returns once the engine accepted it (its refusal raises here, before
        the client saw a byte), and the answer follows as events."""
        path, body = request_for(call, self.served_model)
        resp = await http.post(self.base_url + path, body, self.headers(extra))
        try:
            await raise_for_engine(resp, self.refused)
        except BaseException:
            resp.close()
            raise
        return EventStream(resp)

    async def embed(self, call: EmbedCall, http: Upstream, extra: dict[str, str] | None = None) -> Embeddings:
        """Embeddings; an input longer than the engine takes (when it says how long that is, see
        :meth:`input_limit`) is cut to fit, Ollama's ``truncate`` default, or refused with 400."""
        if not call.inputs:
            return Embeddings([], 0)
        try:
            return await self.embeddings(call.inputs, http, extra)
        except (InvalidRequest, RunnerError) as exc:
            limit = self.input_limit(exc)
            if limit is None:
                raise
            if not call.truncate:
                raise ContextOverflow(
                    f"input length exceeds the model's maximum context length ({limit} tokens)"
                ) from exc
        return await self.embeddings(await self.fit_inputs(call.inputs, limit, http, extra), http, extra)

    def input_limit(self, refusal: EnginehouseError) -> int | None:
        """The most tokens one embedding input may have, when ``refusal`` says an input was longer;
        None when it says something else or the engine does not tell."""
        return None

    async def fit_inputs(
        self,
        inputs: Sequence[str | list[int]],
        limit: int,
        http: Upstream,
        extra: dict[str, str] | None = None,
    ) -> list[str | list[int]]:
        """Embedding inputs cut to ``limit`` tokens each (only engines with an :meth:`input_limit` are
        asked), one :meth:`fit_input` each."""
        return [await self.fit_input(x, limit, http, extra) for x in inputs]

    async def fit_input(
        self, item: str | list[int], limit: int, http: Upstream, extra: dict[str, str] | None
    ) -> str | list[int]:
        """One input cut to ``limit`` tokens: token ids (the client's own) are cut, nothing added; texts
        are left as they are here, and an engine that can tokenize cuts them too."""
        return item if isinstance(item, str) else item[:limit]

    async def embeddings(
        self, inputs: Sequence[str | list[int]], http: Upstream, extra: dict[str, str] | None = None
    ) -> Embeddings:
        """One vector per input, each text or the model's own token ids, from ``/v1/embeddings``."""
        body = {"model": self.served_model, "input": list(inputs)}
        data = await http.post_json(self.base_url + "/v1/embeddings", body, self.headers(extra), self.refused)
        vectors = [d["embedding"] for d in sorted(data["data"], key=lambda d: d.get("index", 0))]
        return Embeddings(vectors, int((data.get("usage") or {}).get("prompt_tokens", 0)))

    async def count_tokens(
        self, call: ChatCall | CompletionCall, http: Upstream, extra: dict[str, str] | None = None
    ) -> int:
        """The prompt's length in the model's own tokens, as this engine would see ``call`` (after the
        gateway prepared it). Engines that cannot count without generating refuse it."""
        raise InvalidRequest(f"counting tokens is not supported by this model's engine ({self.kind})")

    async def rerank(
        self, call: RerankCall, http: Upstream, extra: dict[str, str] | None = None
    ) -> RerankResult:
        """Score the call's documents against its query with the engine's ``/v1/rerank`` (llama-server's
        and vLLM's, Jina's shape); best first, at most ``top_n``."""
        if not call.documents:
            return RerankResult([])
        body: dict[str, Any] = {"model": self.served_model, "query": call.query, "documents": call.documents}
        if call.top_n is not None:
            body["top_n"] = call.top_n
        try:
            data = await http.post_json(self.base_url + "/v1/rerank", body, self.headers(extra), self.refused)
        except RunnerError as exc:
            raise too_long(exc) or exc from exc
        return rerank_result(data, len(call.documents), call.top_n)

    async def forward(
        self, path: str, body: dict[str, Any] | bytes, http: Upstream, extra: dict[str, str] | None = None
    ) -> EngineAnswer:
        """Send a client's body in one of :attr:`dialects` as it is; the caller checks the status and
        releases or closes the answer."""
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        return await http.post(self.base_url + path, data, self.headers(extra))
