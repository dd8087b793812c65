"""OpenAI's Responses door, events side: canonical events as a response object (``stream: false``) or
its stream of typed events.

The answer is a list of output items: a ``reasoning`` item while the model thinks (its text as a
summary part, as Ollama's door gives it), a ``message`` with one ``output_text`` part, a
``function_call`` per tool call. The stream says each step as an SSE event with ``event:`` and
``sequence_number``: ``response.created``, ``response.in_progress``, per item ``output_item.added``,
its part's ``added``, deltas, ``done``s and ``output_item.done``, then ``response.completed``
(``response.incomplete`` when the token limit cut it; ``error`` then ``response.failed`` when the
engine failed mid-answer). The response object carries the request's echoed fields (:func:`echo`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from enginehouse.api.responses_door import new_id
from enginehouse.canonical import Event, ReasoningDelta, Tally, TextDelta, ToolCallDelta, Usage
from enginehouse.errors import EnginehouseError, openai_error_body


class ResponsesEncoder:
    """Canonical events in, Responses stream events out; the last one carries the whole response, which
    is also the ``stream: false`` answer and what ``on_final`` gets (to be stored)."""

    content_type = "text/event-stream"
    closing_bytes = b""  # the stream ends with response.completed; there is no [DONE]

    def __init__(
        self,
        model: str,
        echoed: dict[str, Any],
        started: float,
        on_final: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.model = model
        self.echoed = echoed
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self.tally = Tally(started)
        self.on_final = on_final
        self.output: list[dict[str, Any]] = []  # items, in order
        self.usage: dict[str, Any] | None = None
        self.final: dict[str, Any] | None = None
        self._seq = 0
        self._began = False
        self._open: dict[str, Any] | None = None  # the item deltas go to
        self._text: list[str] = []  # the open message's or reasoning item's text so far
        self._calls: dict[int, dict[str, Any]] = {}  # tool call index -> its function_call item

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def response(self, status: str, error: dict[str, Any] | None = None) -> dict[str, Any]:
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": incomplete,
            "model": self.model,
            "output": self.output,
            **self.echoed,
            "usage": self._usage() if status != "in_progress" else None,
        }

    def _usage(self) -> dict[str, Any]:
        if self.usage is None:
            prompt, _, output, _ = self.tally.counts(time.monotonic())
        else:
            prompt, output = self.usage["input"], self.usage["output"]
        return {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + output,
        }

    def _begin(self) -> list[dict[str, Any]]:
        if self._began:
            return []
        self._began = True
        snapshot = {**self.response("in_progress"), "output": []}
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def objects(self, event: Event) -> list[dict[str, Any]]:
        out = self._begin()
        if isinstance(event, TextDelta):
            if event.text:
                out += self._delta("message", event.text)
        elif isinstance(event, ReasoningDelta):
            if event.text:
                out += self._delta("reasoning", event.text)
        elif isinstance(event, ToolCallDelta):
            out += self._tool_call(event)
        elif isinstance(event, Usage) and event.prompt_tokens is not None:
            self.usage = {"input": event.prompt_tokens, "output": event.completion_tokens or 0}
        return out

    def _delta(self, kind: str, text: str) -> list[dict[str, Any]]:
        out = [] if self._open is not None and self._open["type"] == kind else self._opening(kind)
        self._text.append(text)
        item, index = self._open, len(self.output) - 1
        assert item is not None
        if kind == "message":
            out.append(
                self._event(
                    "response.output_text.delta",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    delta=text,
                    logprobs=[],
                )
            )
        else:
            out.append(
                self._event(
                    "response.reasoning_summary_text.delta",
                    item_id=item["id"],
                    output_index=index,
                    summary_index=0,
                    delta=text,
                )
            )
        return out

    def _opening(self, kind: str) -> list[dict[str, Any]]:
        out = self._close("completed")
        index = len(self.output)
        if kind == "message":
            item = {"id": new_id("msg"), "type": "message", "status": "in_progress", "role": "assistant"}
            added: dict[str, Any] = {**item, "content": []}
            follow, at = "response.content_part.added", {"content_index": 0}
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        else:
            item = {"id": new_id("rs"), "type": "reasoning", "status": "in_progress"}
            added = {**item, "summary": []}
            follow, at = "response.reasoning_summary_part.added", {"summary_index": 0}
            part = {"type": "summary_text", "text": ""}
        out.append(self._event("response.output_item.added", output_index=index, item=dict(added)))
        out.append(self._event(follow, item_id=item["id"], output_index=index, **at, part=part))
        self.output.append(added)
        self._open, self._text = added, []
        return out

    def _tool_call(self, event: ToolCallDelta) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        item = self._calls.get(event.index)
        if item is None:
            out += self._close("completed")
            item = {
                "id": new_id("fc"),
                "type": "function_call",
                "status": "in_progress",
                "call_id": event.id or new_id("call"),
                "name": event.name,
                "arguments": "",
            }
            added = self._event("response.output_item.added", output_index=len(self.output), item=dict(item))
            out.append(added)
            self.output.append(item)
            self._calls[event.index] = item
            self._open = item
        elif event.name and not item["name"]:
            item["name"] = event.name
        if event.arguments:
            item["arguments"] += event.arguments
            if item is self._open:
                out.append(
                    self._event(
                        "response.function_call_arguments.delta",
                        item_id=item["id"],
                        output_index=self.output.index(item),
                        delta=event.arguments,
                    )
                )
        return out

    def _close(self, status: str) -> list[dict[str, Any]]:
        """The open item's closing events; its final shape goes into :attr:`output`."""
        item = self._open
        if item is None:
            return []
        self._open = None
        index = self.output.index(item)
        item["status"] = status
        out: list[dict[str, Any]] = []
        if item["type"] == "message":
            text = "".join(self._text)
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            item["content"] = [part]
            ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
            out.append(self._event("response.output_text.done", **ids, text=text, logprobs=[]))
            out.append(self._event("response.content_part.done", **ids, part=part))
        elif item["type"] == "reasoning":
            text = "".join(self._text)
            part = {"type": "summary_text", "text": text}
            item["summary"] = [part]
            ids = {"item_id": item["id"], "output_index": index, "summary_index": 0}
            out.append(self._event("response.reasoning_summary_text.done", **ids, text=text))
            out.append(self._event("response.reasoning_summary_part.done", **ids, part=part))
        else:
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
        out.append(self._event("response.output_item.done", output_index=index, item=dict(item)))
        return out

    def closing(self) -> list[dict[str, Any]]:
        cut = self.tally.finish == "length"
        out = self._begin()
        # Calls are closed in order after the text: each is whole by now.
        out += self._close("incomplete" if cut else "completed")
        for item in self._calls.values():
            if item["status"] == "in_progress":
                self._open = item
                out += self._close("completed")
        status = "incomplete" if cut else "completed"
        self.final = self.response(status)
        out.append(self._event(f"response.{status}", response=self.final))
        if self.on_final is not None:
            self.on_final(self.final)
        return out

    def fold(self, objects: list[dict[str, Any]]) -> dict[str, Any]:
        """The non-streamed answer: the response object, after :meth:`closing`."""
        assert self.final is not None
        return self.final

    @staticmethod
    def frame(obj: dict[str, Any]) -> bytes:
        return b"event: " + obj["type"].encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"

    def error(self, exc: EnginehouseError) -> bytes:
        """A failure mid-stream: an ``error`` event, then ``response.failed`` with what came before."""
        body = openai_error_body(exc)["error"]
        out = self._begin()
        if self._open is not None:
            self._open["status"] = "incomplete"
            if self._open["type"] == "message":
                text = "".join(self._text)
                self._open["content"] = [{"type": "output_text", "text": text, "annotations": []}]
        out.append(self._event("error", code=body["code"], message=body["message"], param=body["param"]))
        self.final = self.response("failed", {"code": "server_error", "message": body["message"]})
        out.append(self._event("response.failed", response=self.final))
        if self.on_final is not None:
            self.on_final(self.final)
        return b"".join(self.frame(o) for o in out)
