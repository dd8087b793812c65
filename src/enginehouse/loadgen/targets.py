"""Targets (a labelled URL speaking one dialect) and the two streaming chat clients.

``--target [LABEL:]DIALECT=URL``: ``openai=http://127.0.0.1:8080/v1`` or
``direct:openai=http://127.0.0.1:8080`` (``/v1`` is added to a bare host) or
``ollama=http://127.0.0.1:11434``. Stream parsing is split from I/O (``parse_openai_payload`` after
the package's one SSE parser, ``parse_ollama_line``) so recorded bytes can be tested without a server.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import orjson

from enginehouse.loadgen.stats import RequestResult
from enginehouse.wire import DONE, SSEParser, ndjson_lines

Dialect = Literal["openai", "ollama"]
DIALECTS: tuple[Dialect, ...] = ("openai", "ollama")
_LABEL = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class Target:
    label: str
    dialect: Dialect
    url: str  # as given, normalised: the OpenAI base (…/v1) or the Ollama root
    model: str = ""

    @property
    def root(self) -> str:
        """scheme://host:port, where llama-server and vLLM serve /tokenize."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def chat_url(self) -> str:
        return self.url + ("/chat/completions" if self.dialect == "openai" else "/api/chat")


def parse_target(spec: str) -> Target:
    """``[LABEL:]DIALECT=URL`` -> Target (model filled in later); ValueError with the reason."""
    head, sep, url = spec.partition("=")
    if not sep:
        raise ValueError(
            f"target {spec!r}: expected [LABEL:]DIALECT=URL, e.g. openai=http://127.0.0.1:8080/v1"
        )
    label, _, dialect = head.rpartition(":")
    dialect = dialect.strip().lower()
    if dialect not in DIALECTS:
        raise ValueError(f"target {spec!r}: dialect must be one of {', '.join(DIALECTS)}, not {dialect!r}")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"target {spec!r}: {url!r} is not an http(s) URL")
    path = parts.path.rstrip("/")
    if dialect == "openai" and not path:
        path = "/v1"  # a bare host: the usual place of the OpenAI API
    if dialect == "ollama" and path.endswith("/api"):
        path = path[: -len("/api")]
    base = f"{parts.scheme}://{parts.netloc}{path}"
    label = label.strip()
    if not label:
        label = f"{dialect}@{parts.netloc}"
    elif not _LABEL.match(label):
        raise ValueError(f"target {spec!r}: label {label!r} may use letters, digits, '.', '_' and '-'")
    return Target(label, dialect, base)  # type: ignore[arg-type]


def parse_targets(specs: list[str]) -> list[Target]:
    targets = [parse_target(s) for s in specs]
    seen: set[str] = set()
    for t in targets:
        if t.label in seen:
            raise ValueError(f"two targets are labelled {t.label!r}: give each a label (LABEL:DIALECT=URL)")
        seen.add(t.label)
    return targets


def model_overrides(specs: tuple[str, ...] | list[str]) -> tuple[str | None, dict[str, str]]:
    """``--model NAME`` (all targets) and ``--model LABEL=NAME`` (one target)."""
    default: str | None = None
    per: dict[str, str] = {}
    for spec in specs:
        label, sep, name = spec.partition("=")
        if sep:
            per[label.strip()] = name.strip()
        else:
            default = spec.strip()
    return default, per


# One parsed stream line: content text (may be ""), server token counts, an error, or the end.
@dataclass
class Event:
    content: str = ""
    output_tokens: int | None = None
    input_tokens: int | None = None
    error: str | None = None
    done: bool = False


def _error_message(err: Any) -> str:
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err)


def parse_openai_payload(payload: bytes) -> Event | None:
    """One SSE event's data (wire.SSEParser cuts the stream) of a chat completion stream."""
    payload = payload.strip()
    if not payload:
        return None
    if payload == DONE:
        return Event(done=True)
    data = orjson.loads(payload)
    if "error" in data:
        return Event(error=_error_message(data["error"]))
    event = Event()
    for choice in data.get("choices") or ():
        delta = choice.get("delta") or {}
        # Reasoning models stream their thinking first; it is generated tokens all the same.
        event.content += (delta.get("content") or "") + (delta.get("reasoning_content") or "")
    usage = data.get("usage")
    if usage:
        event.output_tokens = usage.get("completion_tokens")
        event.input_tokens = usage.get("prompt_tokens")
    return event


def parse_ollama_line(line: bytes) -> Event | None:
    """One NDJSON line of an /api/chat stream; the last one (done) carries eval counts."""
    line = line.strip()
    if not line:
        return None
    data = orjson.loads(line)
    if "error" in data:
        return Event(error=_error_message(data["error"]))
    message = data.get("message") or {}
    event = Event(content=(message.get("content") or "") + (message.get("thinking") or ""))
    if data.get("done"):
        event.done = True
        event.output_tokens = data.get("eval_count")
        event.input_tokens = data.get("prompt_eval_count")
    return event


def chat_body(
    target: Target, messages: list[dict[str, Any]], max_tokens: int, sampling: dict[str, Any]
) -> dict:
    """The streamed chat request in the target's dialect, asking for token counts where that is an
    option (OpenAI's include_usage; Ollama always sends eval_count)."""
    if target.dialect == "openai":
        body = {"model": target.model, "messages": messages, "stream": True, "max_tokens": max_tokens}
        body["stream_options"] = {"include_usage": True}
        return body | sampling
    options = {"num_predict": max_tokens} | {k: v for k, v in sampling.items() if k != "ignore_eos"}
    return {"model": target.model, "messages": messages, "stream": True, "options": options}


async def _error_body(resp: aiohttp.ClientResponse) -> str:
    text = (await resp.text(errors="replace")).strip()
    try:
        data = orjson.loads(text)
        if isinstance(data, dict) and "error" in data:
            text = _error_message(data["error"])
    except orjson.JSONDecodeError:
        pass
    return f"HTTP {resp.status}: {text[:200]}"


async def _sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Every event's data, ``[DONE]`` included (its arrival ends the answer)."""
    parser = SSEParser()
    async for chunk in chunks:
        for payload in parser.feed(chunk):
            yield payload


async def _consume(resp: aiohttp.ClientResponse, dialect: str, start: float) -> RequestResult:
    result = RequestResult(ok=False)
    last = 0.0
    events = 0
    openai = dialect == "openai"
    units = _sse_data(resp.content.iter_any()) if openai else ndjson_lines(resp.content.iter_any())
    parse = parse_openai_payload if openai else parse_ollama_line
    async for raw in units:
        event = parse(raw)
        if event is None:
            continue
        if event.error:
            result.error = event.error[:200]
            return result
        if event.content:
            now = time.perf_counter()
            if events == 0:
                result.ttft = now - start
            else:
                result.itl.append(now - last)
            last = now
            events += 1
        if event.output_tokens is not None:
            result.output_tokens = event.output_tokens
            result.token_source = "server"
        if event.input_tokens is not None:
            result.input_tokens = event.input_tokens
        if event.done:
            break  # [DONE] or done: true; do not wait for the server to close the stream
    result.e2e = time.perf_counter() - start
    if result.token_source != "server":
        result.output_tokens = events
    result.ok = events > 0
    if not result.ok:
        result.error = "no tokens in the answer"
    return result


async def stream_chat(
    session: aiohttp.ClientSession, target: Target, body: dict[str, Any], timeout: float
) -> RequestResult:
    """One streamed chat, timed from just before sending; every failure becomes an error result
    (never an exception), a stall included: the whole request is bounded by ``timeout``."""
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            async with session.post(target.chat_url, data=orjson.dumps(body), headers=_JSON) as resp:
                if resp.status != 200:
                    return RequestResult(
                        ok=False, e2e=time.perf_counter() - start, error=await _error_body(resp)
                    )
                return await _consume(resp, target.dialect, start)
    except TimeoutError:
        return RequestResult(ok=False, e2e=time.perf_counter() - start, error=f"timed out after {timeout:g}s")
    except (aiohttp.ClientError, ValueError, OSError) as exc:
        message = str(exc) or type(exc).__name__
        return RequestResult(ok=False, e2e=time.perf_counter() - start, error=message[:200])


_JSON = {"Content-Type": "application/json"}


async def discover_model(session: aiohttp.ClientSession, target: Target, timeout: float = 10) -> str | None:
    """The first model the target lists (/v1/models or /api/tags), for when --model was not given."""
    url = target.url + ("/models" if target.dialect == "openai" else "/api/tags")
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                return None
            data = orjson.loads(await resp.read())
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, OSError):
        return None
    items = data.get("data") if target.dialect == "openai" else data.get("models")
    if not items:
        return None
    return items[0].get("id") or items[0].get("name") or items[0].get("model")
