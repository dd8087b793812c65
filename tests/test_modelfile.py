from __future__ import annotations

import pytest

from enginehouse.errors import InvalidRequest
from enginehouse.store.modelfile import (
    Modelfile,
    ModelfileError,
    parameter_value,
    parse,
    quote,
    render,
    validate_messages,
    validate_parameters,
)

FULL = '''# A Modelfile with every instruction
from ./model.gguf

  # indented comment
PARAMETER temperature 0.7
parameter num_ctx 4096
PARAMETER stop <|im_end|>
PARAMETER stop "<|endoftext|>"
Parameter seed -1
TEMPLATE """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}# not a comment inside quotes
{{ .Prompt }}"""
SYSTEM You are "Mario" from Super Mario Bros.
ADAPTER ./lora.gguf
LICENSE """MIT License
Copyright (c) 2024"""
license Apache-2.0
MESSAGE user Is Toronto in Canada?
MESSAGE assistant "yes"
message system """be
brief"""
'''


def test_parse_every_instruction():
    mf = parse(FULL)
    assert mf.from_ == "./model.gguf"
    assert mf.parameters == {
        "temperature": 0.7,
        "num_ctx": 4096,
        "stop": ["<|im_end|>", "<|endoftext|>"],
        "seed": -1,
    }
    assert isinstance(mf.parameters["num_ctx"], int)
    assert mf.template == (
        "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        "# not a comment inside quotes\n{{ .Prompt }}"
    )
    assert mf.system == 'You are "Mario" from Super Mario Bros.'
    assert mf.adapters == ["./lora.gguf"]
    assert mf.license == ["MIT License\nCopyright (c) 2024", "Apache-2.0"]
    assert mf.messages == [
        {"role": "user", "content": "Is Toronto in Canada?"},
        {"role": "assistant", "content": "yes"},
        {"role": "system", "content": "be\nbrief"},
    ]


def test_values_bare_quoted_and_triple_quoted():
    mf = parse(
        'FROM "./my model.gguf"\nSYSTEM "  padded  "\nTEMPLATE """{{ .Prompt }}"""\n'
        'PARAMETER stop " "\nPARAMETER stop "\n"\n'
    )
    assert mf.from_ == "./my model.gguf"
    assert mf.system == "  padded  "
    assert mf.template == "{{ .Prompt }}"
    assert mf.parameters["stop"] == [" ", "\n"]


def test_later_instructions_win_and_a_hash_after_a_keyword_is_text():
    mf = parse("FROM m # not a comment\nSYSTEM a\nSYSTEM b\nPARAMETER top_k 1\nPARAMETER top_k 2\n")
    assert mf.from_ == "m # not a comment"
    assert mf.system == "b"
    assert mf.parameters == {"top_k": 2}


def test_crlf_bom_and_tabs():
    mf = parse('\ufeffFROM\tm\r\nSYSTEM """a\tb\r\nc"""\r\nPARAMETER\ttop_p\t0.5\r\n')
    assert mf.from_ == "m"
    assert mf.system == "a\tb\r\nc"  # kept as written, like Ollama (which drops the tab)
    assert mf.parameters == {"top_p": 0.5}


def test_deprecated_parameters_are_ignored():
    assert parse("FROM m\nPARAMETER mirostat 2\nPARAMETER use_mlock true\n").parameters == {}


def test_float_fields_take_integers_and_ints_refuse_fractions():
    assert parse("FROM m\nPARAMETER temperature 0\n").parameters == {"temperature": 0.0}
    with pytest.raises(ModelfileError, match=r"num_ctx: '4096\.5' is not an integer"):
        parse("FROM m\nPARAMETER num_ctx 4096.5\n")


@pytest.mark.parametrize(
    ("text", "line", "why"),
    [
        ("FROM m\nFOO bar\n", 2, "unknown instruction 'FOO'"),
        ("FROM m\n\nPARAMETER warmth 1\n", 3, "unknown parameter 'warmth'"),
        ("FROM m\nPARAMETER temperature hot\n", 2, "temperature: 'hot' is not a number"),
        ("FROM m\nPARAMETER temperature nan\n", 2, "temperature: 'nan' is not a finite number"),
        ("FROM m\nPARAMETER top_p 2\n", 2, "top_p: Input should be less than or equal to 1"),
        ("FROM m\nPARAMETER num_ctx 0\n", 2, "num_ctx: Input should be greater than or equal to 1"),
        ("FROM m\nMESSAGE tool hi\n", 2, "message role 'tool' must be one of"),
        ("FROM m\nSYSTEM\n", 2, "SYSTEM needs a value"),
        ("FROM m\nPARAMETER temperature\n", 2, "PARAMETER needs a value"),
        ('FROM m\n# c\nTEMPLATE """{{ .Prompt }}\nnever closed\n', 3, 'unterminated """ quote'),
        ('FROM m\nSYSTEM "open\n', 2, 'unterminated " quote'),
        ("FROM a\nFROM b\n", 2, "more than one FROM"),
        ("FROM: m\n", 1, "unknown instruction 'FROM:'"),
    ],
)
def test_errors_name_the_line_and_the_reason(text, line, why):
    with pytest.raises(ModelfileError) as info:
        parse(text)
    err = info.value
    assert isinstance(err, InvalidRequest) and err.status == 400
    assert err.line == line
    assert why in err.reason
    assert err.message.startswith(f"(line {line}): ")


def test_missing_from():
    with pytest.raises(ModelfileError, match="no FROM line") as info:
        parse("# only a comment\nSYSTEM hi\n")
    assert info.value.line is None


def test_round_trip_of_a_parsed_modelfile():
    mf = parse(FULL)
    assert parse(render(mf)) == mf


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "",
        " leading",
        "trailing ",
        "multi\nline",
        '"quoted"',
        '"',
        '""',
        'say "hi"\nthen "bye"',
        'x"\ny',
        "\n",
        "tab\there",
        "ends with newline\n",
        '"""',
        "# hash",
        "{{ .Prompt }}",
    ],
)
def test_round_trip_of_awkward_strings(value):
    mf = Modelfile(
        from_="m",
        system=value,
        template=value,
        license=[value, value],
        messages=[{"role": "user", "content": value}],
        parameters={"stop": [value, "x"]} if value else {},
    )
    assert parse(render(mf)) == mf


def test_round_trip_of_every_parameter_type():
    mf = Modelfile(
        from_="/abs/path with space/model.gguf",
        parameters={
            "num_ctx": 8192,
            "temperature": 1e-05,
            "top_p": 0.95,
            "seed": 42,
            "presence_penalty": -1.5,
            "stop": ["</s>", " ", "USER:"],
        },
        adapters=["a.gguf", "@sha256:" + "a" * 64],
    )
    text = render(mf)
    assert "PARAMETER stop USER:\n" in text
    assert parse(text) == mf


def test_quote_refuses_what_a_modelfile_cannot_hold():
    with pytest.raises(ModelfileError, match="cannot be written"):
        quote('a"""\nb')


def test_parameter_and_message_validation_for_requests():
    assert validate_parameters({"temperature": 1, "stop": "x", "num_ctx": "2048", "mirostat": 1}) == {
        "temperature": 1.0,
        "stop": ["x"],
        "num_ctx": 2048,
    }
    with pytest.raises(ModelfileError, match="unknown parameter 'bogus'"):
        validate_parameters({"bogus": 1})
    with pytest.raises(ModelfileError, match="num_ctx: 'true' is not an integer"):
        validate_parameters({"num_ctx": True})
    with pytest.raises(ModelfileError, match="stop"):
        validate_parameters({"stop": [1, 2]})
    with pytest.raises(ModelfileError, match="must be a JSON object"):
        validate_parameters(["temperature"])  # type: ignore[arg-type]
    assert parameter_value("top_k", "40") == 40
    assert validate_messages([{"role": "user", "content": "hi", "images": None}]) == [
        {"role": "user", "content": "hi"}
    ]
    with pytest.raises(ModelfileError, match="role must be one of"):
        validate_messages([{"role": "tool", "content": "x"}])


def test_bool_values_follow_go():
    from enginehouse.store.modelfile import _convert

    assert _convert("x", "bool", "True", 1) is True
    assert _convert("x", "bool", "0", 1) is False
    with pytest.raises(ModelfileError, match="x: 'yes' is not true or false"):
        _convert("x", "bool", "yes", 1)
