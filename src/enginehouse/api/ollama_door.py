"""Pure converters between Ollama's dialect and the OpenAI dialect that every engine speaks.

Engines only ever see OpenAI-shaped bodies (plus llama.cpp's sampling extensions, which vLLM accepts
too). Everything here is a pure function or a small stateful stream translator, tested with tables.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson

from enginehouse.api.gotemplate import render, render_chat
from enginehouse.api.ollama import ChatRequest, GenerateRequest, Message, Options
from enginehouse.api.toolcalls import ToolCallSplitter, ToolFormat, forcing_schema, tool_format

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


def sampling_fields(options: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name, value in options.items():
        field = SAMPLING_OPTIONS.get(name)
        if field is None:
            continue
        if name == "num_predict" and value < 0:  # -1 infinite, -2 fill the context: the engine's default
            continue
        body[field] = value
    return body


def response_format(fmt: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """Ollama ``format`` -> OpenAI ``response_format``; the engine enforces it with a grammar."""
    if not fmt:
        return None
    if fmt == "json":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt, "strict": True}}


def message_to_openai(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": msg.role, "content": msg.content}
    if msg.tool_calls:
        out["tool_calls"] = [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {
                    "name": c.function.name,
                    "arguments": orjson.dumps(c.function.arguments).decode(),
                },
            }
            for i, c in enumerate(msg.tool_calls)
        ]
    if msg.role == "tool" and msg.tool_name:
        out["name"] = msg.tool_name
    if msg.thinking and msg.role == "assistant":
        out["reasoning_content"] = msg.thinking
    return out


def chat_body(
    req: ChatRequest, served_model: str, defaults: dict[str, Any], system: str | None = None
) -> dict[str, Any]:
    """An Ollama chat request as an OpenAI chat-completions body for the engine."""
    messages = [message_to_openai(m) for m in req.messages]
    if system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    body: dict[str, Any] = {
        "model": served_model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        **sampling_fields(merge_options(defaults, req.options)),
    }
    if fmt := response_format(req.format):
        body["response_format"] = fmt
    if req.tools:
        body["tools"] = req.tools
    if req.logprobs:
        body["logprobs"] = True
        if req.top_logprobs:
            body["top_logprobs"] = req.top_logprobs
    if req.think is not None:
        body["chat_template_kwargs"] = {"enable_thinking": bool(req.think)}
    return body


def generate_body(
    req: GenerateRequest, served_model: str, defaults: dict[str, Any], system: str | None = None
) -> tuple[str, dict[str, Any]]:
    """An Ollama generate request as (engine path, body): raw prompts go to /v1/completions, the rest
    through the model's chat template via /v1/chat/completions."""
    sampling = sampling_fields(merge_options(defaults, req.options))
    common: dict[str, Any] = {
        "model": served_model,
        "stream": True,
        "stream_options": {"include_usage": True},
        **sampling,
    }
    if fmt := response_format(req.format):
        common["response_format"] = fmt
    if req.logprobs:
        common["logprobs"] = True
        if req.top_logprobs:
            common["top_logprobs"] = req.top_logprobs
    if req.raw:
        if schema := raw_json_schema(common.pop("response_format", None)):
            common["json_schema"] = schema
        return "/v1/completions", {**common, "prompt": req.prompt}
    messages: list[dict[str, Any]] = []
    if req.system or system:
        messages.append({"role": "system", "content": req.system or system})
    messages.append({"role": "user", "content": req.prompt})
    if req.think is not None:
        common["chat_template_kwargs"] = {"enable_thinking": bool(req.think)}
    return "/v1/chat/completions", {**common, "messages": messages}


def is_jinja(template: str) -> bool:
    """GGUF chat templates are Jinja; Ollama's TEMPLATE layers are Go templates."""
    return "{%" in template


def go_template(template: str | None) -> str | None:
    return template if template and not is_jinja(template) else None


def gateway_template(template: str | None, tools: bool, engine_tools: bool) -> str | None:
    """The Go template the gateway renders a chat with, or None when the engine renders it itself.

    A chat with tools whose Go template cannot write a call goes to an engine that can take tools for
    any template (llama-server's --jinja generic tool format), rather than being refused."""
    template = go_template(template)
    if template and tools and engine_tools and tool_format(template) is None:
        return None
    return template


def rendered_chat_body(
    req: ChatRequest,
    served_model: str,
    defaults: dict[str, Any],
    system: str | None,
    template: str,
    force: ToolFormat | None = None,
) -> dict[str, Any]:
    """A chat for a model with a Go template: the gateway renders the prompt exactly as Ollama would and
    the engine completes it raw, so every engine sees the same prompt."""
    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    if system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    prompt = render_chat(
        template, messages, tools=req.tools, think=req.think if req.think is None else bool(req.think)
    )
    body = _raw_body(served_model, prompt, defaults, req.options, req.format, raw_logprobs(req))
    if force is not None:  # a forced call: its opening in the prompt, the rest held to the tools' schema
        body["prompt"] += force.prefix
        body["json_schema"] = forcing_schema(req.tools or [], force)
    return body


def rendered_generate_body(
    req: GenerateRequest, served_model: str, defaults: dict[str, Any], system: str | None, template: str
) -> dict[str, Any]:
    prompt = render(template, system=req.system or system or "", prompt=req.prompt, suffix=req.suffix)
    return _raw_body(served_model, prompt, defaults, req.options, req.format, raw_logprobs(req))


def raw_logprobs(req: ChatRequest | GenerateRequest) -> int | None:
    """Ollama's ``logprobs``/``top_logprobs`` as raw completions' ``logprobs``: the number of candidates
    per token (at least one, the sampled token's own)."""
    return max(req.top_logprobs or 0, 1) if req.logprobs else None


def _raw_body(
    served_model: str,
    prompt: str,
    defaults: dict[str, Any],
    options: Options | None,
    fmt: str | dict[str, Any] | None,
    logprobs: int | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": served_model,
        "prompt": prompt,
        "stream": True,
        "stream_options": {"include_usage": True},
        **sampling_fields(merge_options(defaults, options)),
    }
    if schema := raw_json_schema(response_format(fmt)):
        body["json_schema"] = schema
    if logprobs:
        body["logprobs"] = logprobs
    return body


def raw_json_schema(response: dict[str, Any] | None) -> dict[str, Any] | None:
    """An OpenAI ``response_format`` as the top-level ``json_schema`` that llama-server's raw
    ``/v1/completions`` enforces (it ignores ``response_format`` there)."""
    if not response:
        return None
    if response.get("type") == "json_object":
        return {"type": "object"}
    if response.get("type") == "json_schema":
        return (response.get("json_schema") or {}).get("schema") or {"type": "object"}
    return None


def ollama_logprob(lp: dict[str, Any]) -> dict[str, Any]:
    """One OpenAI token logprob in Ollama's shape (token, logprob, bytes, top_logprobs)."""
    out = {"token": lp.get("token", ""), "logprob": lp.get("logprob", 0.0), "bytes": lp.get("bytes")}
    if top := lp.get("top_logprobs"):
        out["top_logprobs"] = [
            {"token": t.get("token", ""), "logprob": t.get("logprob", 0.0), "bytes": t.get("bytes")}
            for t in top
        ]
    return out


class OllamaStream:
    """Turns an engine's OpenAI stream chunks into Ollama's chat or generate lines.

    Tool-call fragments are accumulated and sent whole, as Ollama does. The final line carries Ollama's
    timing fields in nanoseconds, from the engine's own timings where it reports them (llama-server does)
    and from our clock otherwise.
    """

    def __init__(
        self,
        model: str,
        kind: str,
        *,
        started: float,
        load_duration: float,
        tool_format: ToolFormat | None = None,
        forced: bool = False,
    ) -> None:
        self.model = model
        self.kind = kind  # "chat" or "generate"
        self.started = started
        self.load_duration = load_duration
        self.first_token_at: float | None = None
        self.sent_at: float | None = None  # when the engine got the request (for the overhead metric)
        self.finish_reason: str | None = None
        self.timings: dict[str, Any] = {}
        self.usage: dict[str, Any] = {}
        self.chunks = 0
        self._tool_calls: dict[int, dict[str, Any]] = {}
        # A Go-template model's calls are in its raw text: split them out as the template writes them.
        self._splitter = ToolCallSplitter(tool_format, forced) if tool_format else None

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

    def feed(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """One parsed upstream chunk -> one Ollama line, or None when there is nothing to send yet."""
        if "timings" in chunk:
            self.timings = chunk["timings"]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        choices = chunk.get("choices") or []
        if not choices:
            return None
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta")
        if delta is not None:  # a chat-completions chunk (also behind Ollama's generate)
            content = delta.get("content") or ""
            thinking = delta.get("reasoning_content") or None
            for call in delta.get("tool_calls") or []:
                self._merge_tool_call(call)
        else:  # a raw completions chunk
            content, thinking = choice.get("text") or "", None
            if self._splitter is not None:
                content = self._splitter.feed(content)
        if not content and not thinking:
            return None
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.chunks += 1
        line = self._line(content, thinking)
        if logprobs := (choice.get("logprobs") or {}).get("content"):
            line["logprobs"] = [ollama_logprob(lp) for lp in logprobs]
        return line

    def _merge_tool_call(self, call: dict[str, Any]) -> None:
        slot = self._tool_calls.setdefault(call.get("index", len(self._tool_calls)), {"name": "", "args": ""})
        fn = call.get("function") or {}
        slot["name"] += fn.get("name") or ""
        slot["args"] += fn.get("arguments") or ""

    def tool_calls(self) -> list[dict[str, Any]]:
        calls = []
        for index, slot in sorted(self._tool_calls.items()):
            try:
                arguments = orjson.loads(slot["args"]) if slot["args"] else {}
            except orjson.JSONDecodeError:
                arguments = {"_raw": slot["args"]}
            calls.append({"function": {"index": index, "name": slot["name"], "arguments": arguments}})
        return calls

    def counts(self, end: float) -> tuple[int, int, int, int]:
        """(prompt tokens, prompt ns, output tokens, output ns): the engine's timings where it reports
        them (llama-server does), our clock otherwise."""
        t = self.timings
        prompt_n = t.get("prompt_n", self.usage.get("prompt_tokens", 0))
        eval_n = t.get("predicted_n", self.usage.get("completion_tokens", self.chunks))
        first = self.first_token_at or end
        prompt_ns = int(t["prompt_ms"] * 1e6) if "prompt_ms" in t else int((first - self.started) * 1e9)
        eval_ns = int(t["predicted_ms"] * 1e6) if "predicted_ms" in t else int((end - first) * 1e9)
        return prompt_n, prompt_ns, eval_n, eval_ns

    def summary(self) -> dict[str, Any]:
        """What the metrics record of this generation: the same numbers as the last line."""
        prompt_n, _, eval_n, eval_ns = self.counts(time.monotonic())
        ttft = self.first_token_at - self.started if self.first_token_at is not None else None
        return {
            "ttft": ttft,
            "prompt_tokens": prompt_n,
            "output_tokens": eval_n,
            "decode_seconds": eval_ns / 1e9,
        }

    def final(self) -> list[dict[str, Any]]:
        """The closing line(s): pending tool calls, then ``done: true`` with the metrics."""
        lines = []
        if self._splitter is not None:
            rest, calls = self._splitter.finish()
            if rest:
                lines.append(self._line(rest))
            for call in calls:
                self._tool_calls[len(self._tool_calls)] = {
                    "name": call["name"],
                    "args": orjson.dumps(call["arguments"]).decode(),
                }
        if self._tool_calls:
            lines.append(self._line("", tool_calls=self.tool_calls()))
        end = time.monotonic()
        prompt_n, prompt_ns, eval_n, eval_ns = self.counts(end)
        done = self._line("")
        reason = {"length": "length"}.get(self.finish_reason or "stop", "stop")
        done.update(
            done=True,
            done_reason=reason,
            total_duration=int((end - self.started) * 1e9),
            load_duration=int(self.load_duration * 1e9),
            prompt_eval_count=prompt_n,
            prompt_eval_duration=prompt_ns,
            eval_count=eval_n,
            eval_duration=eval_ns,
        )
        lines.append(done)
        return lines


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
