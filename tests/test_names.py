from __future__ import annotations

import pytest

from enginehouse.errors import InvalidDigest, InvalidName
from enginehouse.store.names import (
    DEFAULT_HOST,
    DEFAULT_NAMESPACE,
    ModelName,
    digest_filename,
    parse_digest,
)

HEX = "ab" * 32


@pytest.mark.parametrize(
    ("text", "parts", "display"),
    [
        ("smollm2", (DEFAULT_HOST, DEFAULT_NAMESPACE, "smollm2", "latest"), "smollm2:latest"),
        ("smollm2:135m", (DEFAULT_HOST, DEFAULT_NAMESPACE, "smollm2", "135m"), "smollm2:135m"),
        ("myns/foo", (DEFAULT_HOST, "myns", "foo", "latest"), "myns/foo:latest"),
        ("library/llama3.2:1b", (DEFAULT_HOST, DEFAULT_NAMESPACE, "llama3.2", "1b"), "llama3.2:1b"),
        ("hf.co/owner/repo:Q4_K_M", ("hf.co", "owner", "repo", "Q4_K_M"), "hf.co/owner/repo:Q4_K_M"),
        ("localhost:5000/ns/m:t", ("localhost:5000", "ns", "m", "t"), "localhost:5000/ns/m:t"),
        ("registry.ollama.ai/library/x:y", (DEFAULT_HOST, DEFAULT_NAMESPACE, "x", "y"), "x:y"),
        ("registry.ollama.ai/other/x:y", (DEFAULT_HOST, "other", "x", "y"), "other/x:y"),
        (
            "HF.co/Bartowski/Llama-3.2-1B-GGUF:Q4_K_M",
            ("hf.co", "bartowski", "llama-3.2-1b-gguf", "Q4_K_M"),
            "hf.co/bartowski/llama-3.2-1b-gguf:Q4_K_M",
        ),
        ("a_b-c.d:v1.0_x-y", (DEFAULT_HOST, DEFAULT_NAMESPACE, "a_b-c.d", "v1.0_x-y"), "a_b-c.d:v1.0_x-y"),
    ],
)
def test_parse_and_display(text: str, parts: tuple[str, str, str, str], display: str) -> None:
    name = ModelName.parse(text)
    assert name.manifest_parts == parts
    assert name.display == display
    assert str(name) == display
    assert ModelName.parse(name.display) == name  # round trip
    assert ModelName.parse(name.full) == name


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        (":tag", "model is empty"),
        ("model:", "tag after ':' is empty"),
        ("ns/", "model is empty"),
        ("/etc/passwd", "must not start with '/'"),
        ("../x", "'..' is not allowed"),
        ("./x", "'.' is not allowed"),
        ("ns/../x", "'..'"),
        ("a/b/../x", "'..'"),
        ("..", "'..'"),
        ("a\\b", "backslash"),
        ("a\x00b", "control"),
        ("a\nb", "whitespace"),
        ("a\x1bb", "control"),
        ("a b", "whitespace"),
        (" model", "whitespace"),
        ("a/b/c/d", "two '/'"),
        ("a/b/c/d/e:t", "two '/'"),
        ("a//b", "namespace is empty"),
        (".hidden", "'.hidden' may hold only"),
        ("-x", "may hold only"),
        ("m:-t", "tag '-t'"),
        ("m:a:b", "tag 'a:b'"),
        ("m@sha256:" + HEX, "may hold only"),
        ("x" * 81, "longer than 80"),
        ("m:" + "t" * 81, "longer than 80"),
        ("modèle", "ASCII"),
        ("ns:1/m", "namespace"),
    ],
)
def test_parse_refuses(text: str, why: str) -> None:
    with pytest.raises(InvalidName) as exc:
        ModelName.parse(text)
    assert why in exc.value.message


def test_parse_refuses_non_string() -> None:
    with pytest.raises(InvalidName):
        ModelName.parse(None)  # type: ignore[arg-type]


def test_direct_construction_is_validated() -> None:
    with pytest.raises(InvalidName):
        ModelName(DEFAULT_HOST, DEFAULT_NAMESPACE, "..", "latest")
    with pytest.raises(InvalidName):
        ModelName(DEFAULT_HOST, "a/b", "m", "latest")
    with pytest.raises(InvalidName):
        ModelName(DEFAULT_HOST, DEFAULT_NAMESPACE, "Upper", "latest")
    assert ModelName(DEFAULT_HOST, DEFAULT_NAMESPACE, "m", "T").tag == "T"


def test_case_insensitive_except_tag() -> None:
    assert ModelName.parse("SmolLM2:135M") == ModelName(DEFAULT_HOST, DEFAULT_NAMESPACE, "smollm2", "135M")


def test_parse_digest() -> None:
    assert parse_digest("sha256:" + HEX) == "sha256:" + HEX
    assert parse_digest("sha256-" + HEX.upper()) == "sha256:" + HEX
    assert digest_filename("sha256:" + HEX.upper()) == "sha256-" + HEX


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sha256:",
        "sha256:" + HEX[:-1],
        "sha256:" + HEX + "0",
        "sha512:" + HEX,
        HEX,
        "sha256:../../x",
        "sha256:" + "g" * 64,
        "sha256:" + HEX + "\n",
        " sha256:" + HEX,
        "sha256-../../etc/passwd",
        "SHA256:" + HEX,
    ],
)
def test_parse_digest_refuses(bad: str) -> None:
    with pytest.raises(InvalidDigest):
        parse_digest(bad)
    with pytest.raises(InvalidDigest):
        digest_filename(bad)
