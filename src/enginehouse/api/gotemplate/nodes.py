"""The parse tree: text, actions, if/with, range, break/continue and the parsed template."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Text:
    text: str


@dataclass
class Operand:
    kind: str  # field var dot lit ident pipe
    value: Any = None
    names: tuple[str, ...] = ()  # field chain applied to the operand


@dataclass
class Pipeline:
    decl: list[str]
    assign: bool  # "=" (assign to an existing variable) rather than ":="
    cmds: list[list[Operand]]
    line: int


@dataclass
class Action:
    pipe: Pipeline


@dataclass
class If:
    branches: list[tuple[Pipeline, list[Any]]]
    else_body: list[Any] | None = None
    kind: str = "if"  # or "with": the branch value becomes the dot


@dataclass
class Range:
    pipe: Pipeline
    body: list[Any]
    else_body: list[Any] | None = None


@dataclass
class Loop:
    kind: str  # break / continue
    line: int


@dataclass
class Template:
    nodes: list[Any]
    identifiers: frozenset[str] = field(default_factory=frozenset)
