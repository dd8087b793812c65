"""Structured-output inputs checked before an engine compiles them: JSON schemas, regexes, grammars.

llama-server turns a schema (Ollama's ``format``, OpenAI's ``response_format``, its own ``json_schema``,
every tool's ``parameters``) or a GBNF ``grammar`` into a grammar while holding its HTTP thread, and then
samples each token against it: a big enum, an invalid regex or a malformed grammar could hold that
runner for everyone. So each is checked here, as the client's error, against the bounds in
:mod:`enginehouse.api.limits` (picked with ``bench/schema_compile.py``).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from enginehouse.api import limits
from enginehouse.api.gbnf import GrammarError, check_grammar
from enginehouse.errors import InvalidRequest

# Keywords whose values are data, not schemas: a pattern-looking key inside them means nothing.
_DATA_KEYWORDS = frozenset({"const", "default", "examples", "enum", "description", "title", "$comment"})
_LENGTH_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_REPEAT = re.compile(r"\{(\d*)(?:,(\d*))?\}")


def check_json_schema(schema: Any, param: str) -> None:
    """Refuse a schema that is not one (draft 2020-12) or is over the bounds; ``param`` names it."""
    if not isinstance(schema, dict):
        raise InvalidRequest(f"'{param}' must be a JSON schema object", param=param)
    limits.check_depth(schema, limits.MAX_SCHEMA_DEPTH, param)
    size = len(orjson.dumps(schema))
    if size > limits.MAX_SCHEMA_BYTES:
        raise InvalidRequest(
            f"'{param}' is {size} bytes; schemas are limited to {limits.MAX_SCHEMA_BYTES}", param=param
        )
    _check_schema_nodes(schema, param)
    from jsonschema import Draft202012Validator  # imported on first use: `import enginehouse` stays fast
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = limits.param_path([param, *exc.path])
        raise InvalidRequest(f"'{where}' is not a valid JSON schema: {exc.message}", param=where) from None


def _check_schema_nodes(schema: dict[str, Any], param: str) -> None:
    """Count properties and enum values over the whole schema; check every pattern and length."""
    properties = enum_values = 0
    stack: list[tuple[Any, tuple[Any, ...]]] = [(schema, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, list):
            stack.extend((child, (*path, i)) for i, child in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        if isinstance(node.get("properties"), dict):
            properties += len(node["properties"])
        if isinstance(node.get("enum"), list):
            enum_values += len(node["enum"])
        if isinstance(node.get("pattern"), str):
            check_pattern(node["pattern"], limits.param_path([param, *path, "pattern"]))
        if isinstance(node.get("patternProperties"), dict):
            for key in node["patternProperties"]:
                check_pattern(key, limits.param_path([param, *path, "patternProperties"]))
        for keyword in _LENGTH_KEYWORDS:
            value = node.get(keyword)
            if isinstance(value, int | float) and value > limits.MAX_REPEAT:
                where = limits.param_path([param, *path, keyword])
                raise InvalidRequest(f"'{where}' is over {limits.MAX_REPEAT}", param=where)
        stack.extend((v, (*path, k)) for k, v in node.items() if k not in _DATA_KEYWORDS)
    if properties > limits.MAX_SCHEMA_PROPERTIES:
        raise InvalidRequest(
            f"'{param}' declares {properties} properties; at most {limits.MAX_SCHEMA_PROPERTIES} are allowed",
            param=param,
        )
    if enum_values > limits.MAX_SCHEMA_ENUM:
        raise InvalidRequest(
            f"'{param}' lists {enum_values} enum values; at most {limits.MAX_SCHEMA_ENUM} are allowed",
            param=param,
        )


def check_pattern(pattern: str, param: str) -> None:
    """A regex llama.cpp's schema converter can take: valid, short, no lookaround, backreference,
    named group or inline flag (which it cannot express), bounded groups and repetitions."""
    if len(pattern) > limits.MAX_PATTERN_CHARS:
        raise InvalidRequest(f"'{param}' is longer than {limits.MAX_PATTERN_CHARS} characters", param=param)
    unsupported = _unsupported_syntax(pattern)  # first: JavaScript's (?<name>) is no Python regex
    if unsupported:
        raise InvalidRequest(f"'{param}': {unsupported} is not supported in schema patterns", param=param)
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise InvalidRequest(f"'{param}' is not a valid regular expression: {exc}", param=param) from None
    for low, high in _REPEAT.findall(pattern):
        if any(n and int(n[:12]) > limits.MAX_REPEAT for n in (low, high)):
            raise InvalidRequest(f"'{param}' repeats more than {limits.MAX_REPEAT} times", param=param)


def _unsupported_syntax(pattern: str) -> str | None:
    groups, i, in_class = 0, 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1 : i + 2]
            if not in_class and nxt and nxt in "123456789k":
                return "a backreference"
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            i += 1 if pattern[i + 1 : i + 2] != "]" else 2  # "[]...]": a leading ']' is a character
            continue
        elif c == "(":
            groups += 1
            if groups > limits.MAX_PATTERN_GROUPS:
                return f"more than {limits.MAX_PATTERN_GROUPS} groups"
            if pattern[i + 1 : i + 2] == "?" and pattern[i + 2 : i + 3] != ":":
                return "a lookaround, named group or inline flag '(?'"
        i += 1
    return None


def check_grammar_text(grammar: Any, param: str = "grammar") -> None:
    if not isinstance(grammar, str):
        raise InvalidRequest(f"'{param}' must be a string (a GBNF grammar)", param=param)
    try:
        check_grammar(grammar)
    except GrammarError as exc:
        raise InvalidRequest(f"'{param}' is not a valid GBNF grammar: {exc}", param=param) from None


def check_tools(tools: Any, param: str = "tools") -> None:
    """Each tool's ``function.parameters`` is a schema llama-server compiles into a grammar too."""
    if tools is None:
        return
    if not isinstance(tools, list):
        raise InvalidRequest(f"'{param}' must be a list", param=param)
    limits.check_count(tools, limits.MAX_TOOLS, param, "tools")
    for i, tool in enumerate(tools):
        where = f"{param}[{i}]"
        if not isinstance(tool, dict):
            raise InvalidRequest(f"'{where}' must be an object", param=where)
        function = tool.get("function")
        if function is None:
            continue
        if not isinstance(function, dict):
            raise InvalidRequest(f"'{where}.function' must be an object", param=f"{where}.function")
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise InvalidRequest(f"'{where}.function.name' must be a string", param=f"{where}.function.name")
        if function.get("parameters") is not None:
            check_json_schema(function["parameters"], f"{where}.function.parameters")


def check_response_format(response_format: Any, param: str = "response_format") -> None:
    """OpenAI's ``response_format`` (and llama-server's ``schema`` beside ``json_object``)."""
    if response_format is None:
        return
    if not isinstance(response_format, dict):
        raise InvalidRequest(f"'{param}' must be an object", param=param)
    kind = response_format.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        raise InvalidRequest(
            f"'{param}.type' must be one of 'text', 'json_object', 'json_schema'", param=f"{param}.type"
        )
    if kind == "json_schema":
        inner = response_format.get("json_schema")
        if not isinstance(inner, dict):
            raise InvalidRequest(f"'{param}.json_schema' must be an object", param=f"{param}.json_schema")
        if "schema" in inner:
            check_json_schema(inner["schema"], f"{param}.json_schema.schema")
    elif kind == "json_object" and "schema" in response_format:
        check_json_schema(response_format["schema"], f"{param}.schema")
