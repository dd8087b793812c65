"""Canonical calls and events: what every door turns its wire format into, and what every engine answers.

A door is two pure functions per endpoint: its wire body -> a call here, and the events here -> its wire
format (``api/ollama_door.py``, ``api/openai_door.py``). Routing reads a call (:meth:`ChatCall.routing_text`),
the scheduler leases an engine for it, and the engine turns it into its own request and its answer into
events (``engines/openai_wire.py`` for every engine that speaks OpenAI's HTTP API). Nothing here knows a
wire format or an engine.

Field names follow the OpenAI/llama.cpp request fields where a choice had to be made (``max_tokens``,
``top_k``, ``repeat_penalty``...): they are what every engine behind the gateway takes, so the engine
side adds no renaming table of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

#: The sampling fields a call may carry (OpenAI/llama.cpp names); engines take them as they are.
SAMPLING = (
    "max_tokens",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "repeat_last_n",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "n_keep",
    "logit_bias",
)

Think = bool | Literal["low", "medium", "high"] | None


@dataclass(slots=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] | str  # parsed where the door had an object, else the JSON text
    id: str | None = None


@dataclass(slots=True)
class Message:
    role: str  # system, user, assistant, tool ("developer" arrives as system)
    content: str = ""
    images: list[str] = field(default_factory=list)  # base64 data
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    tool_name: str | None = None
    thinking: str | None = None


@dataclass(slots=True)
class Generation:
    """What every generating call shares."""

    model: str  # the name the client asked for (a model, alias, instance or router)
    sampling: dict[str, Any] = field(default_factory=dict)  # SAMPLING names only
    response_format: dict[str, Any] | None = None  # OpenAI's shape: json_object or json_schema
    logprobs: int | None = None  # None: off; else candidates per token (0: the sampled token only)
    think: Think = None
    stream: bool = True
    include_usage: bool = True
    num_ctx: int | None = None  # the context per slot the request asks for
    keep_alive: float | None = None  # seconds; None: the model's default
    extra: dict[str, Any] = field(default_factory=dict)  # engine fields a door passes through as they are


@dataclass(slots=True)
class ChatCall(Generation):
    messages: list[Message] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None  # OpenAI function tools
    tool_choice: str | dict[str, Any] | None = None  # auto, none, required, {"type":"function",...}
    system: str | None = None  # a default system prompt (the model's), used when messages have none
    n: int = 1  # choices asked for

    def routing_text(self) -> tuple[str, str]:
        """(system prompt, last user turn): what a router classifies."""
        system = "\n".join(m.content for m in self.messages if m.role == "system")
        user = next((m.content for m in reversed(self.messages) if m.role == "user"), "")
        return system, user

    def affinity_text(self) -> str:
        """The whole conversation as one text, for pools that balance on shared prefixes: roles and texts
        in order, so a later turn's text extends an earlier turn's."""
        return "".join(f"{m.role}\n{m.content}\n" for m in self.messages)

    @property
    def images(self) -> bool:
        return any(m.images for m in self.messages)


@dataclass(slots=True)
class CompletionCall(Generation):
    prompt: str = ""
    suffix: str | None = None
    images: list[str] = field(default_factory=list)
    raw: bool = True  # False: the prompt is a user turn, to go through the model's template
    system: str | None = None  # with raw False: the system prompt for the template
    template: str | None = None  # with raw False: a per-request Go template instead of the model's

    def routing_text(self) -> tuple[str, str]:
        return "", self.prompt

    def affinity_text(self) -> str:
        return self.prompt


@dataclass(slots=True)
class EmbedCall:
    model: str
    inputs: list[str] = field(default_factory=list)
    dimensions: int | None = None
    truncate: bool = True
    num_ctx: int | None = None
    keep_alive: float | None = None

    def routing_text(self) -> tuple[str, str]:
        return "", self.inputs[0] if self.inputs else ""

    def affinity_text(self) -> str:
        return self.inputs[0] if self.inputs else ""


@dataclass(slots=True)
class RerankCall:
    model: str
    query: str
    documents: list[str] = field(default_factory=list)
    top_n: int | None = None
    keep_alive: float | None = None  # seconds; None: the model's default

    def routing_text(self) -> tuple[str, str]:
        return "", self.query

    def affinity_text(self) -> str:
        return self.query


Call = ChatCall | CompletionCall | EmbedCall | RerankCall


@dataclass(frozen=True, slots=True)
class Ranked:
    index: int  # the document's position in the call's ``documents``
    score: float  # the engine's relevance score: higher is more relevant (its scale is the model's)


@dataclass(frozen=True, slots=True)
class RerankResult:
    """A rerank call's answer: the documents' scores, best first (at most ``top_n`` of them)."""

    ranked: list[Ranked]
    total_tokens: int = 0


# ---- the events an answer is --------------------------------------------------------------------------
@dataclass(slots=True)
class TextDelta:
    text: str
    logprobs: list[dict[str, Any]] | None = None  # OpenAI's per-token shape


@dataclass(slots=True)
class ReasoningDelta:
    text: str


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of tool call ``index``: its name comes with the first piece, the arguments in pieces."""

    index: int
    name: str = ""
    arguments: str = ""
    id: str | None = None


@dataclass(slots=True)
class Usage:
    prompt_tokens: int | None = None  # None: not reported by this event
    completion_tokens: int | None = None
    timings: dict[str, Any] = field(default_factory=dict)  # llama-server's (prompt_ms, predicted_ms...)
    cached_tokens: int | None = None  # of the prompt, served from the engine's prompt cache


@dataclass(slots=True)
class Finish:
    reason: str  # stop, length, tool_calls
    stop_sequence: str | None = (
        None  # the client's stop sequence that ended the text, where a door matched it
    )


@dataclass(slots=True)
class Failure:
    """The engine failed mid-answer; the door reports it in its dialect."""

    message: str


Event = TextDelta | ReasoningDelta | ToolCallDelta | Usage | Finish | Failure


class Step(Protocol):
    """A stateful step over an answer's events, applied as they stream (thinking or tool calls split out of
    a Go template's text, a door's stop sequences). Plain functions, not generators: the relay runs them
    in the engine connection's own callback, one engine piece at a time."""

    done: bool  # the step wants no more events (a stop sequence was met): the answer ends here

    def feed(self, event: Event) -> list[Event]:
        """What goes on for one event (none while text is held back, several when held text is let go)."""
        ...

    def end(self) -> list[Event]:
        """What is still held once the events before this step ended."""
        ...


class Tally:
    """What an answer's events say about it: the door's closing numbers and the metrics read the same.

    Counts and durations are the engine's own where it reports them (llama-server's ``timings``), and
    our clock otherwise."""

    __slots__ = ("completion_tokens", "finish", "first_at", "pieces", "prompt_tokens", "started", "timings")

    def __init__(self, started: float) -> None:
        self.started = started
        self.first_at: float | None = None
        self.pieces = 0  # text and reasoning deltas seen
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.timings: dict[str, Any] = {}
        self.finish: str | None = None

    def see(self, event: Event, now: float) -> None:
        if isinstance(event, TextDelta | ReasoningDelta):
            if event.text:
                self.pieces += 1
                if self.first_at is None:
                    self.first_at = now
        elif isinstance(event, Usage):
            if event.prompt_tokens is not None:
                self.prompt_tokens = event.prompt_tokens
            if event.completion_tokens is not None:
                self.completion_tokens = event.completion_tokens
            if event.timings:
                self.timings = event.timings
        elif isinstance(event, Finish):
            self.finish = event.reason

    def counts(self, end: float) -> tuple[int, int, int, int]:
        """(prompt tokens, prompt ns, output tokens, output ns)."""
        t = self.timings
        prompt_n = t.get("prompt_n", self.prompt_tokens or 0)
        eval_n = t.get(
            "predicted_n", self.completion_tokens if self.completion_tokens is not None else self.pieces
        )
        first = self.first_at or end
        prompt_ns = int(t["prompt_ms"] * 1e6) if "prompt_ms" in t else int((first - self.started) * 1e9)
        eval_ns = int(t["predicted_ms"] * 1e6) if "predicted_ms" in t else int((end - first) * 1e9)
        return prompt_n, prompt_ns, eval_n, eval_ns

    def summary(self, end: float) -> dict[str, Any]:
        """What the metrics record of this generation: the same numbers as the door's closing line."""
        prompt_n, _, eval_n, eval_ns = self.counts(end)
        ttft = self.first_at - self.started if self.first_at is not None else None
        return {
            "ttft": ttft,
            "prompt_tokens": prompt_n,
            "output_tokens": eval_n,
            "decode_seconds": eval_ns / 1e9,
        }
