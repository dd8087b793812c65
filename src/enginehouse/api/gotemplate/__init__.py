"""A small, safe renderer for the Go ``text/template`` subset that Ollama's model templates use.

Supported: text with ``{{ }}`` actions and ``{{-`` / ``-}}`` whitespace trimming; ``{{/* comments */}}``;
fields (``.System``, ``.Function.Name``), ``.`` and variables (``$``, ``$x``, ``$.Messages``, ``$m.Role``);
string (``"..."`` with Go escapes, raw backquotes), number, ``true``/``false``/``nil`` literals;
parentheses and ``|`` pipelines; ``$x := ...`` / ``$x = ...``; ``if`` / ``else if`` / ``else`` / ``end``;
``range`` (``$i, $e :=``, ``$e :=``, over lists, maps in key order and integers) with ``else``,
``break``, ``continue``; ``with`` / ``else with``; the functions ``eq ne lt le gt ge and or not len
index slice print json``.

Anything else (``define``, ``template``, ``block``, ``printf``, method calls, character constants ...)
is refused with :class:`TemplateError` naming it, when the template is parsed. Nothing here can run
code: evaluation only reads the values it is given, and output size, loop iterations and nesting
depth are bounded.

:func:`render` executes a template with the given values. :func:`render_chat` is what Ollama's
``Template.Execute`` does with a list of messages (collation, templates without ``.Messages``
rendered turn by turn, the last one cut after ``.Response``).

Modules: :mod:`.lexer` (tokens), :mod:`.nodes` and :mod:`.parser` (the tree), :mod:`.values`
(Ollama's structs, printing), :mod:`.functions` (built-ins), :mod:`.execute` (evaluation),
:mod:`.render` (``render``, ``render_chat``), :mod:`.limits` and :mod:`.errors`.
"""

from enginehouse.api.gotemplate.errors import TemplateError
from enginehouse.api.gotemplate.lexer import Tok
from enginehouse.api.gotemplate.limits import MAX_DEPTH, MAX_ITERATIONS, MAX_OUTPUT_CHARS, MAX_TEMPLATE_CHARS
from enginehouse.api.gotemplate.nodes import Action, If, Loop, Operand, Pipeline, Range, Template, Text
from enginehouse.api.gotemplate.parser import FUNCTIONS, UNSUPPORTED, identifiers, parse
from enginehouse.api.gotemplate.render import collate, render, render_chat
from enginehouse.api.gotemplate.values import GoStruct, JsonMap

__all__ = [
    "FUNCTIONS",
    "MAX_DEPTH",
    "MAX_ITERATIONS",
    "MAX_OUTPUT_CHARS",
    "MAX_TEMPLATE_CHARS",
    "UNSUPPORTED",
    "Action",
    "GoStruct",
    "If",
    "JsonMap",
    "Loop",
    "Operand",
    "Pipeline",
    "Range",
    "Template",
    "TemplateError",
    "Text",
    "Tok",
    "collate",
    "identifiers",
    "parse",
    "render",
    "render_chat",
]
