"""Thinking controls: each door's knob as the canonical ``think``, and a model's ``<think>`` output as
reasoning events for the Go-template models whose prompt the gateway renders.

The doors' knobs: Ollama's ``think`` (true/false or "low"/"medium"/"high") is the canonical value as it
is; OpenAI's ``reasoning_effort`` (or ``reasoning: {effort}``) maps onto it ("none" is off). Engines that
render their own templates get it as ``chat_template_kwargs.enable_thinking`` plus ``reasoning_effort``
and split the reasoning themselves (``engines/openai_wire.think_fields``). A Go template renders
``.Think``, and its model writes its thoughts between the tags the template uses, which
:class:`ThinkingStep` turns into :class:`~enginehouse.canonical.ReasoningDelta` events as they stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from enginehouse.canonical import Event, Failure, Finish, ReasoningDelta, TextDelta, Think

#: OpenAI's reasoning efforts -> Ollama's levels (the canonical ones); "none" turns thinking off.
EFFORTS: dict[str, Think] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
}


def think_from_openai(data: dict[str, Any]) -> Think:
    """A chat body's ``reasoning_effort`` (or the ``reasoning: {effort}`` spelling) as ``think``."""
    effort = data.get("reasoning_effort")
    if effort is None and isinstance(data.get("reasoning"), dict):
        effort = data["reasoning"].get("effort")
    return EFFORTS.get(effort) if isinstance(effort, str) else None


@dataclass(frozen=True)
class ThinkTags:
    open: str
    close: str


_TAG = re.compile(r"<(think|thinking|reasoning)>")


@lru_cache(maxsize=64)
def think_tags(template: str) -> ThinkTags | None:
    """The tags a Go template writes thoughts between (``<think>``...``</think>`` and its kin), or None
    when it has no thinking section."""
    m = _TAG.search(template)
    if m is None or f"</{m.group(1)}>" not in template:
        return None
    return ThinkTags(m.group(0), f"</{m.group(1)}>")


def opens_inside(prompt: str, tags: ThinkTags) -> bool:
    """Whether the rendered prompt ends inside a thinking section (the template opened it for the model)."""
    tail = prompt.rstrip()
    return tail.endswith(tags.open)


def _held(text: str, tag: str) -> int:
    """How many trailing characters of ``text`` may be the start of ``tag`` (held until more arrives)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ThinkingSplitter:
    """Feeds text pieces, returns (reasoning, content) for each; tags split across pieces are held back.
    One thinking section, at the start of the answer (blanks before it allowed), as Ollama parses it."""

    def __init__(self, tags: ThinkTags, inside: bool) -> None:
        self.tags = tags
        self.state = "thinking" if inside else "start"  # start -> thinking -> content
        self.buffer = ""
        self.trim = True  # blanks right after a tag (and before the first) are the template's, not text

    def feed(self, text: str) -> tuple[str, str]:
        self.buffer += text
        reasoning = content = ""
        while self.buffer:
            if self.trim and self.state != "start":
                self.buffer = self.buffer.lstrip()
                if not self.buffer:
                    break
                self.trim = False
            if self.state == "content":
                content, self.buffer = content + self.buffer, ""
            elif self.state == "start":
                stripped = self.buffer.lstrip()
                if stripped.startswith(self.tags.open):
                    self.buffer = stripped[len(self.tags.open) :]
                    self.state, self.trim = "thinking", True
                elif self.tags.open.startswith(stripped):
                    break  # maybe the opening tag, still arriving
                else:
                    self.state, self.trim = "content", False
            else:  # thinking
                at = self.buffer.find(self.tags.close)
                if at >= 0:
                    reasoning += self.buffer[:at]
                    self.buffer = self.buffer[at + len(self.tags.close) :]
                    self.state, self.trim = "content", True
                else:
                    keep = _held(self.buffer, self.tags.close)
                    reasoning += self.buffer[: len(self.buffer) - keep]
                    self.buffer = self.buffer[len(self.buffer) - keep :]
                    break
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        """What is still held at the end: an unclosed section's tail is reasoning, anything else text."""
        rest, self.buffer = self.buffer, ""
        return (rest, "") if self.state == "thinking" else ("", rest)


class ThinkingStep:
    """A :class:`~enginehouse.canonical.Step`: text through :class:`ThinkingSplitter`, its reasoning as
    :class:`~enginehouse.canonical.ReasoningDelta` events; what is held goes out before the finish."""

    done = False

    def __init__(self, tags: ThinkTags, inside: bool) -> None:
        self.splitter = ThinkingSplitter(tags, inside)

    def feed(self, event: Event) -> list[Event]:
        if isinstance(event, TextDelta):
            reasoning, content = self.splitter.feed(event.text)
            return self._pieces(reasoning, content, event.logprobs)
        if isinstance(event, Finish | Failure):  # the end: what is held goes out first
            return [*self.end(), event]
        return [event]

    def end(self) -> list[Event]:
        return self._pieces(*self.splitter.finish())

    @staticmethod
    def _pieces(reasoning: str, content: str, logprobs: Any = None) -> list[Event]:
        out: list[Event] = [ReasoningDelta(reasoning)] if reasoning else []
        if content:
            out.append(TextDelta(content, logprobs))
        return out
