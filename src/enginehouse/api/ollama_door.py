"""Ollama's door: its wire requests as canonical calls, and canonical events as its NDJSON lines.

Pure functions and one small stateful encoder, tested with tables (tests/test_ollama_door.py). Ollama's
option names become the canonical (OpenAI/llama.cpp) field names here, once.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson

from enginehouse.api.ollama import ChatRequest, EmbeddingsRequest, EmbedRequest, GenerateRequest, Options
from enginehouse.canonical import (
    ChatCall,
    CompletionCall,
    EmbedCall,
    Event,
    Message,
    ReasoningDelta,
    Tally,
    TextDelta,
    ToolCall,
    ToolCallDelta,
)
from enginehouse.config_values import parse_keep_alive
from enginehouse.errors import EnginehouseError, ollama_error_body
from enginehouse.wire import ndjson

# Ollama option -> request field understood by llama-server (and vLLM's OpenAI server).
SAMPLING_OPTIONS: dict[str, str] = {
    "num_predict": "max_tokens",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "seed": "seed",
    "stop": "stop",
    "num_keep": "n_keep",
}
# Options that shape the runner rather than one request (context, threads, GPU layers).
LOAD_OPTIONS = frozenset({"num_ctx", "num_thread", "num_gpu"})


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def merge_options(defaults: dict[str, Any], options: Options | None) -> dict[str, Any]:
    """Model defaults (Modelfile PARAMETERs) overlaid with the request's options."""
    merged = dict(defaults)
    if options is not None:
        merged.update(options.model_dump(exclude_none=True))
    return merged


def sampling_fields(options: dict[str, Any], *, unset: bool = False) -> dict[str, Any]:
    """Ollama options as canonical sampling fields. A negative ``num_predict`` (-1 infinite, -2 fill the
    context) means the engine's default: dropped, or with ``unset`` kept as ``None`` so that it also
    overrides a model default when layered over one (:func:`with_defaults`)."""
    body: dict[str, Any] = {}
    for name, value in options.items():
        field = SAMPLING_OPTIONS.get(name)
        if field is None:
            continue
        if name == "num_predict" and value < 0:
            if unset:
                body[field] = None
            continue
        body[field] = value
    return body


def with_defaults(sampling: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A call's sampling over a model's Modelfile PARAMETERs (Ollama names): the call wins; a ``None``
    (see :func:`sampling_fields`) removes the field."""
    merged = {**sampling_fields(params), **sampling}
    return {k: v for k, v in merged.items() if v is not None}


def response_format(fmt: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """Ollama ``format`` -> OpenAI ``response_format``; the engine enforces it with a grammar."""
    if not fmt:
        return None
    if fmt == "json":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt, "strict": True}}


def canonical_message(m: Any) -> Message:
    return Message(
        role=m.role,
        content=m.content,
        images=list(m.images or []),
        tool_calls=[ToolCall(c.function.name, c.function.arguments) for c in m.tool_calls or []],
        tool_name=m.tool_name,
        thinking=m.thinking,
    )


def _generation(req: ChatRequest | GenerateRequest) -> dict[str, Any]:
    options = req.options.model_dump(exclude_none=True) if req.options is not None else {}
    return {
        "model": req.model,
        "sampling": sampling_fields(options, unset=True),
        "response_format": response_format(req.format),
        "logprobs": (req.top_logprobs or 0) if req.logprobs else None,
        "think": req.think,
        "stream": req.stream,
        "num_ctx": req.options.num_ctx if req.options is not None else None,
        "keep_alive": parse_keep_alive(req.keep_alive),
    }


def chat_call(req: ChatRequest) -> ChatCall:
    """``/api/chat``. Ollama's API has no ``tool_choice``: the model's entry may set one."""
    return ChatCall(
        **_generation(req), messages=[canonical_message(m) for m in req.messages], tools=req.tools or None
    )


def generate_call(req: GenerateRequest) -> CompletionCall:
    """``/api/generate``: a raw prompt, or a user turn for the model's (or the request's) template."""
    return CompletionCall(
        **_generation(req),
        prompt=req.prompt or "",
        suffix=req.suffix,
        images=list(req.images or []),
        raw=req.raw,
        system=req.system,
        template=req.template,
    )


def embed_call(req: EmbedRequest) -> EmbedCall:
    inputs = [req.input] if isinstance(req.input, str) else list(req.input)
    return EmbedCall(
        req.model,
        [] if inputs == [""] else inputs,
        dimensions=req.dimensions,
        truncate=req.truncate,
        num_ctx=req.options.num_ctx if req.options is not None else None,
        keep_alive=parse_keep_alive(req.keep_alive),
    )


def embeddings_call(req: EmbeddingsRequest) -> EmbedCall:
    """The older ``/api/embeddings``: one prompt, one vector."""
    return EmbedCall(
        req.model,
        [req.prompt] if req.prompt else [],
        num_ctx=req.options.num_ctx if req.options is not None else None,
        keep_alive=parse_keep_alive(req.keep_alive),
    )


def ollama_logprob(lp: dict[str, Any]) -> dict[str, Any]:
    """One OpenAI token logprob in Ollama's shape (token, logprob, bytes, top_logprobs)."""
    out = {"token": lp.get("token", ""), "logprob": lp.get("logprob", 0.0), "bytes": lp.get("bytes")}
    if top := lp.get("top_logprobs"):
        out["top_logprobs"] = [
            {"token": t.get("token", ""), "logprob": t.get("logprob", 0.0), "bytes": t.get("bytes")}
            for t in top
        ]
    return out


class OllamaEncoder:
    """Canonical events in, Ollama's chat or generate lines out.

    Tool-call fragments are gathered and sent whole, as Ollama does. The final line carries Ollama's
    timing fields in nanoseconds, from the engine's own timings where it reports them (llama-server
    does) and from our clock otherwise (:class:`~enginehouse.canonical.Tally`).
    """

    content_type = "application/x-ndjson"
    closing_bytes = b""

    def __init__(self, model: str, kind: str, *, started: float, load_duration: float) -> None:
        self.model = model  # the name the client asked for (an alias, a router)
        self.kind = kind  # "chat" or "generate"
        self.load_duration = load_duration
        self.tally = Tally(started)
        self._tool_calls: dict[int, dict[str, Any]] = {}

    def _line(self, content: str, thinking: str | None = None, tool_calls: list | None = None) -> dict:
        line: dict[str, Any] = {"model": self.model, "created_at": now_rfc3339()}
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            if tool_calls:
                message["tool_calls"] = tool_calls
            line["message"] = message
        else:
            line["response"] = content
            if thinking:
                line["thinking"] = thinking
        line["done"] = False
        return line

    def objects(self, event: Event) -> list[dict[str, Any]]:
        """The lines one event makes (often one, none while a tool call is gathered)."""
        if isinstance(event, TextDelta):
            if not event.text:
                return []
            line = self._line(event.text)
            if event.logprobs:
                line["logprobs"] = [ollama_logprob(lp) for lp in event.logprobs]
            return [line]
        if isinstance(event, ReasoningDelta):
            return [self._line("", event.text)] if event.text else []
        if isinstance(event, ToolCallDelta):
            slot = self._tool_calls.setdefault(event.index, {"name": "", "args": ""})
            slot["name"] += event.name
            slot["args"] += event.arguments
        return []

    def tool_calls(self) -> list[dict[str, Any]]:
        calls = []
        for index, slot in sorted(self._tool_calls.items()):
            try:
                arguments = orjson.loads(slot["args"]) if slot["args"] else {}
            except orjson.JSONDecodeError:
                arguments = {"_raw": slot["args"]}
            calls.append({"function": {"index": index, "name": slot["name"], "arguments": arguments}})
        return calls

    def closing(self) -> list[dict[str, Any]]:
        """The closing line(s): gathered tool calls, then ``done: true`` with the metrics."""
        lines = []
        if self._tool_calls:
            lines.append(self._line("", tool_calls=self.tool_calls()))
        end = time.monotonic()
        prompt_n, prompt_ns, eval_n, eval_ns = self.tally.counts(end)
        done = self._line("")
        reason = {"length": "length"}.get(self.tally.finish or "stop", "stop")
        done.update(
            done=True,
            done_reason=reason,
            total_duration=int((end - self.tally.started) * 1e9),
            load_duration=int(self.load_duration * 1e9),
            prompt_eval_count=prompt_n,
            prompt_eval_duration=prompt_ns,
            eval_count=eval_n,
            eval_duration=eval_ns,
        )
        lines.append(done)
        return lines

    def fold(self, lines: list[dict[str, Any]]) -> dict[str, Any]:
        return collapse(lines, self.kind)

    frame = staticmethod(ndjson)

    def error(self, exc: EnginehouseError) -> bytes:
        return ndjson(ollama_error_body(exc))


def collapse(lines: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """``stream: false``: all lines folded into the final one, as Ollama answers."""
    final = dict(lines[-1])
    key = "message" if kind == "chat" else "response"
    logprobs = [lp for ln in lines for lp in ln.get("logprobs") or []]
    if logprobs:
        final["logprobs"] = logprobs
    if kind == "chat":
        message = {"role": "assistant", "content": "".join(ln["message"]["content"] for ln in lines)}
        thinking = "".join(ln["message"].get("thinking") or "" for ln in lines)
        if thinking:
            message["thinking"] = thinking
        calls = [c for ln in lines for c in ln["message"].get("tool_calls") or []]
        if calls:
            message["tool_calls"] = calls
        final[key] = message
    else:
        final[key] = "".join(ln["response"] for ln in lines)
        thinking = "".join(ln.get("thinking") or "" for ln in lines)
        if thinking:
            final["thinking"] = thinking
    return final
