from __future__ import annotations

import importlib.util

import pytest
from bench.template_cost import CHATML  # the template Ollama ships for SmolLM2 (ChatML)

from enginehouse.api import gotemplate
from enginehouse.api.gotemplate import TemplateError, identifiers, render, render_chat
from enginehouse.errors import InvalidRequest
from enginehouse.store import bundled_model_file, read_gguf_info

LLAMA2 = "[INST] <<SYS>>{{ .System }}<</SYS>> {{ .Prompt }} [/INST]"
LEGACY = (
    "{{ if .System }}<|system|>\n{{ .System }}</s>\n{{ end }}"
    "{{ if .Prompt }}<|user|>\n{{ .Prompt }}</s>\n{{ end }}<|assistant|>\n{{ .Response }}</s>\n"
)
# Llama 3.1's template as Ollama ships it: tools, tool calls, else-if chains.
LLAMA31 = """{{- if or .System .Tools }}<|start_header_id|>system<|end_header_id|>
{{- if .System }}

{{ .System }}
{{- end }}
{{- if .Tools }}

You are a helpful assistant with tool calling capabilities.
{{- end }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>
{{- if and $.Tools $last }}

Given the following functions, please respond with a JSON for a function call.

{{ range $.Tools }}
{{- . }}
{{ end }}
Question: {{ .Content }}<|eot_id|>
{{- else }}

{{ .Content }}<|eot_id|>
{{- end }}{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>
{{- if .ToolCalls }}

{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}
{{- else }}

{{ .Content }}
{{- end }}{{ if not $last }}<|eot_id|>{{ end }}
{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- end }}"""

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
USER = {"role": "user", "content": "What is the capital of France?"}
# What llama-server's /apply-template printed for [SYSTEM, USER] with the bundled model.
EXPECTED_CHATML = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
)
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather <now> & later",
        "parameters": {
            "type": "object",
            "required": ["city"],
            "properties": {"unit": {"type": "string", "enum": ["c", "f"]}, "city": {"type": "string"}},
        },
    },
}


def test_chatml_with_messages():
    assert render(CHATML, messages=[SYSTEM, USER]) == EXPECTED_CHATML
    out = render(CHATML, messages=[SYSTEM, USER, {"role": "assistant", "content": "Paris."}])
    assert out == EXPECTED_CHATML + "Paris."
    two = render(CHATML, messages=[USER, {"role": "assistant", "content": "Paris."}, USER])
    assert two == (
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nParis.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chatml_without_messages_uses_system_prompt_response():
    assert render(CHATML, system="S", prompt="P") == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nP<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render(CHATML, prompt="P", response="R") == (
        "<|im_start|>user\nP<|im_end|>\n<|im_start|>assistant\nR<|im_end|>"
    )


def test_chatml_matches_the_ggufs_own_jinja_template():
    expected = EXPECTED_CHATML
    path = bundled_model_file()
    if importlib.util.find_spec("jinja2") is not None and path is not None:
        import jinja2

        source = read_gguf_info(path).chat_template
        assert source
        env = jinja2.Environment()
        expected = env.from_string(source).render(messages=[SYSTEM, USER], add_generation_prompt=True)
    assert render(CHATML, messages=[SYSTEM, USER]) == expected
    assert render_chat(CHATML, [SYSTEM, USER]) == expected


def test_llama2_style():
    assert render(LLAMA2, system="Be brief.", prompt="Hi") == "[INST] <<SYS>>Be brief.<</SYS>> Hi [/INST]"
    # Ollama appends {{ .Response }} to templates that use neither .Messages nor .Response.
    assert render(LLAMA2, prompt="Hi", response="Hello") == "[INST] <<SYS>><</SYS>> Hi [/INST]Hello"


def test_legacy_if_form():
    assert (
        render(LEGACY, system="S", prompt="P") == "<|system|>\nS</s>\n<|user|>\nP</s>\n<|assistant|>\n</s>\n"
    )
    assert render(LEGACY, prompt="P", response="R") == "<|user|>\nP</s>\n<|assistant|>\nR</s>\n"
    assert (
        render("{{ if .System }}[{{ .System }}]{{ end }}{{ if .Prompt }}{{ .Prompt }}{{ end }}", prompt="x")
        == "x"
    )


def test_render_chat_legacy_turns_are_cut_after_the_last_response():
    msgs = [SYSTEM, USER, {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "Spain?"}]
    assert render_chat(LEGACY, msgs) == (
        "<|system|>\nYou are a helpful assistant.</s>\n<|user|>\nWhat is the capital of France?</s>\n"
        "<|assistant|>\nParis.</s>\n<|user|>\nSpain?</s>\n<|assistant|>\n"
    )


def test_render_chat_collates_messages_and_handles_fill_in_the_middle():
    msgs = [SYSTEM, {"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert render_chat("{{ .System }}|{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}", msgs) == (
        "You are a helpful assistant.|system=You are a helpful assistant.;user=a\n\nb;"
    )
    fim = "<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>"
    assert render_chat(fim, [], prompt="def f(", suffix="return x") == "<PRE> def f( <SUF>return x <MID>"


def test_llama31_with_tools_and_tool_calls():
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}
    msgs = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "sunny"},
    ]
    out = render(LLAMA31, messages=msgs, tools=[TOOL], system="Sys")
    assert out == (
        "<|start_header_id|>system<|end_header_id|>\n\nSys\n\n"
        "You are a helpful assistant with tool calling capabilities.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWeather?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_weather", "parameters": {"city":"Paris","days":2}}<|eot_id|>'
        "<|start_header_id|>ipython<|end_header_id|>\n\nsunny<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    last_user = render(LLAMA31, messages=[USER], tools=[TOOL])
    assert (
        '{"type":"function","function":{"name":"get_weather","description":"Weather \\u003cnow\\u003e'
        ' \\u0026 later","parameters":{"type":"object","required":["city"],"properties":'
        '{"city":{"type":"string"},"unit":{"type":"string","enum":["c","f"]}}}}}\n' in last_user
    )
    assert last_user.endswith(
        "Question: What is the capital of France?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("a  {{- 1 -}}  \n b", "a1b"),
        ("a {{- /* a comment */ -}} b{{/* another */}}", "ab"),
        ("{{ if eq 1 2 }}x{{ else if eq 2 2 }}y{{ else }}z{{ end }}", "y"),
        ("{{ if .Prompt }}x{{ else }}z{{ end }}", "z"),
        ('{{ eq "b" "a" "b" }} {{ ne 1 2 }} {{ lt 1 2 }} {{ ge "a" "b" }}', "true true true false"),
        ('{{ and 1 "" 2 }}|{{ or 0 "" "x" }}|{{ not 0 }}|{{ or 0 false }}', "|x|true|false"),
        ('{{ len "héllo" }} {{ len .Messages }}', "6 0"),
        ('{{ slice "abcdef" 1 3 }} {{ index "ab" 1 }}', "bc 98"),
        ('{{ print 1 2 "x" 3 }}', "1 2x3"),
        ('{{ json "<a&b>" }}', '"\\u003ca\\u0026b\\u003e"'),
        ("{{ range 3 }}{{ . }}{{ end }}", "012"),
        ("{{ range $x := 2 }}{{ $x }}{{ end }}", "01"),
        ("{{ range .Messages }}x{{ else }}none{{ end }}", "none"),
        ("{{ $x := 1 }}{{ range 3 }}{{ $x = . }}{{ end }}{{ $x }}", "2"),
        (
            "{{ range 5 }}{{ if eq . 1 }}{{ continue }}{{ end }}"
            "{{ if eq . 3 }}{{ break }}{{ end }}{{ . }}{{ end }}",
            "02",
        ),
        ("{{ with .System }}<{{ . }}>{{ else with .Prompt }}[{{ . }}]{{ else }}-{{ end }}", "-"),
        ("{{ 1.5 }} {{ 0.0001 }} {{ 1e21 }} {{ 1e3 }} {{ -7 }} {{ 0x1F }}", "1.5 0.0001 1e+21 1000 -7 31"),
        ('{{ "tab\\tquote\\"" }} {{ `raw\\n` }}', 'tab\tquote" raw\\n'),
        ("{{ .Nope }} {{ .Think }} {{ .Suffix | len }}", "<no value> false 0"),
        ("{{ (slice .Tools 0 0) | len }}", "0"),
        ("{{ .Prompt | print }}", ""),
    ],
)
def test_constructs(template, expected):
    assert render(template) == expected


def test_values_and_fields():
    msgs = [
        {
            "role": "assistant",
            "content": "c",
            "tool_calls": [{"function": {"name": "f", "arguments": '{"a": 1}'}}],
        }
    ]
    assert (
        render(
            "{{ range .Messages }}{{ range .ToolCalls }}{{ .Function.Arguments }}{{ end }}{{ end }}",
            messages=msgs,
        )
        == '{"a":1}'
    )
    assert (
        render(
            "{{ range $k, $v := (index .Tools 0).Function.Parameters.Properties }}"
            "{{ $k }}:{{ $v.Type }} {{ end }}",
            tools=[TOOL],
        )
        == "city:string unit:string "
    )
    assert (
        render("{{ $m := index .Messages 0 }}{{ $m.Role }} {{ $.System }}", messages=[USER], system="s")
        == "user s"
    )
    assert render("{{ with index .Messages 0 }}{{ .Content }}{{ end }}", messages=[USER]) == USER["content"]
    assert render("{{ (index .Messages 0).ToolCalls }}", messages=[USER]) == "[]"
    assert render("{{ .Think }} {{ .IsThinkSet }}", think=True) == "true true"
    assert {"messages", "role", "$", "content"} <= identifiers(CHATML)


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ('{{ template "x" }}', r"\{\{template\}\} is not supported"),
        ('{{ define "x" }}y{{ end }}', r"\{\{define\}\} is not supported"),
        ('{{ block "x" . }}y{{ end }}', r"\{\{block\}\} is not supported"),
        ('{{ printf "%s" .Prompt }}', "printf function is not supported"),
        ("{{ call .Prompt }}", "call function is not supported"),
        ("{{ html .Prompt }}", "html function is not supported"),
        ("{{ exec .Prompt }}", 'function "exec" is not supported'),
        ("{{ 'a' }}", "character constants are not supported"),
        ("{{ .Prompt.Method 1 }}", "method calls are not supported"),
        ("{{ if .System }}x", r"\{\{if\}\} has no \{\{end\}\}"),
        ("a\nb\n{{ end }}", r"line 3: unexpected \{\{end\}\}"),
        ("{{ else }}", r"unexpected \{\{else\}\}"),
        ("{{ $x }}", 'undefined variable "\\$x"'),
        ("{{ range .Messages }}{{ $y := 1 }}{{ end }}{{ $y }}", 'undefined variable "\\$y"'),
        ("{{ break }}", r"\{\{break\}\} outside \{\{range\}\}"),
        ("{{ .Prompt ", r"unclosed action"),
        ("{{/* open ", "unclosed comment"),
        ('{{ "abc }}', "unterminated quoted string"),
        ("{{ nil }}", "nil is not a command"),
        ("{{ ( .Prompt }}", "unclosed left paren"),
        ("{{ if }}{{ end }}", "missing value for if"),
        ("{{ range $a, $b = .Messages }}{{ end }}", "':='"),
        ("{{ 1 | 2 }}", "can't give an argument to a non-function"),
        ("{{ .Prompt & }}", "unexpected '&'"),
    ],
)
def test_unsupported_or_malformed_templates_raise(template, match):
    with pytest.raises(TemplateError, match=match) as info:
        render(template)
    assert isinstance(info.value, InvalidRequest) and info.value.status == 400


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("{{ range .Messages }}{{ .Bogus }}{{ end }}", "can't evaluate field Bogus in type api.Message"),
        ("{{ range .Messages }}{{ .__class__ }}{{ end }}", "can't evaluate field __class__"),
        ("{{ .Prompt.__class__ }}", "can't evaluate field __class__ in type str"),
        ("{{ .Messages.__len__ }}", "can't evaluate field __len__"),
        ('{{ eq 1 "1" }}', "incompatible types for comparison"),
        ("{{ eq .Messages .Messages }}", "non-comparable"),
        ("{{ lt true false }}", "incompatible types"),
        ("{{ slice .Messages 0 5 }}", "slice index out of range"),
        ("{{ index .Messages 3 }}", "index out of range"),
        ("{{ len 3 }}", "len of number"),
        ("{{ range .Prompt }}{{ end }}", "range can't iterate over"),
        ("{{ not }}", "wrong number of args for not"),
    ],
)
def test_execution_errors(template, match):
    with pytest.raises(TemplateError, match=match):
        render(template, messages=[USER], prompt="p")


def test_limits():
    with pytest.raises(TemplateError, match="loop iterations"):
        render("{{ range 1000000 }}{{ end }}")
    with pytest.raises(TemplateError, match="output larger than 1000 characters"):
        render("{{ range 100 }}xxxxxxxxxxxxxxxxxxxx{{ end }}", max_output=1000)
    with pytest.raises(TemplateError, match="nesting deeper"):
        render("{{ if 1 }}" * 100 + "{{ end }}" * 100)
    with pytest.raises(TemplateError, match="longer than"):
        render("x" * (gotemplate.MAX_TEMPLATE_CHARS + 1))
    nested = "{{ range 100 }}{{ range 100 }}{{ range 100 }}{{ end }}{{ end }}{{ end }}"
    with pytest.raises(TemplateError, match="loop iterations"):
        render(nested)


def test_deep_parentheses_are_bounded():
    with pytest.raises(TemplateError, match="parentheses nested deeper"):
        render("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}")
    assert render("{{ " + "(" * 10 + "1" + ")" * 10 + " }}") == "1"
