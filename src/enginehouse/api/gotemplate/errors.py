"""The error every template problem raises: parsing, an unsupported feature or execution."""

from __future__ import annotations

from enginehouse.errors import InvalidRequest


class TemplateError(InvalidRequest):
    """A template that uses something this renderer does not support, or fails to execute."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        super().__init__(f"template: line {line}: {message}" if line else f"template: {message}")
