"""Thinking and images end to end, through the official SDKs and a real llama-server.

The thinking model is the bundled SmolLM2 with a Go template that has a ``<think>`` section (the gateway
renders it and splits the reasoning out); the vision model is the bundled SmolLM2 with a tiny random
LLaVA-style projector (``tests/fakes/vision_projector.py``) started as ``--mmproj``. Both answer
nonsense: what is checked is where each part of the answer lands and that the image reaches the runner
(its tokens are counted in the prompt)."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from enginehouse.server.runtime import BackgroundServer
from enginehouse.store.bundled import BUNDLED_TEMPLATE
from tests.conftest import MODEL
from tests.fakes.vision_projector import IMAGE_SIZE, PATCH_SIZE, tiny_png, write_projector
from tests.templates import CHATML_THINK

pytestmark = pytest.mark.slow

THINKER = "thinker:test"
SEER = "seer:test"
OPTIONS = {"temperature": 0, "seed": 1, "num_predict": 12}
PNG = tiny_png()
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2


@pytest.fixture(scope="module")
def models(server: BackgroundServer, bundled_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    store = server.gateway.store
    store.import_gguf(bundled_gguf, THINKER, template=CHATML_THINK)
    projector = write_projector(tmp_path_factory.mktemp("vision") / "mmproj.gguf")
    store.import_gguf(bundled_gguf, SEER, template=BUNDLED_TEMPLATE, projector=projector)


def test_capabilities_name_thinking_and_vision(server: BackgroundServer, models: None) -> None:
    client = ollama.Client(host=server.base_url)
    assert "thinking" in client.show(THINKER).capabilities
    assert "vision" in client.show(SEER).capabilities
    assert "vision" not in client.show(MODEL).capabilities


def test_ollama_think_true_puts_the_answer_in_thinking(server: BackgroundServer, models: None) -> None:
    client = ollama.Client(host=server.base_url)
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    on = client.chat(model=THINKER, messages=messages, think=True, options=OPTIONS)
    assert on.message.thinking  # the template opened <think>: the model is inside it
    off = client.chat(model=THINKER, messages=messages, think=False, options=OPTIONS)
    assert off.message.content and not off.message.thinking
    streamed = list(client.chat(model=THINKER, messages=messages, think=True, options=OPTIONS, stream=True))
    thinking = [part.message.thinking for part in streamed if part.message.thinking]
    assert len(thinking) > 1 and "".join(thinking) == on.message.thinking  # streamed as it arrives
    gen = client.generate(model=THINKER, prompt="Why is the sky blue?", think="low", options=OPTIONS)
    assert gen.thinking


def test_openai_reasoning_effort_gives_reasoning_content(server: BackgroundServer, models: None) -> None:
    oai = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    args = {"model": THINKER, "messages": messages, "max_tokens": 12, "temperature": 0, "seed": 1}
    on = oai.chat.completions.create(reasoning_effort="low", **args)
    assert on.choices[0].message.model_extra.get("reasoning_content")
    off = oai.chat.completions.create(reasoning_effort="none", **args)
    assert off.choices[0].message.content and not off.choices[0].message.model_extra.get("reasoning_content")
    stream = oai.chat.completions.create(reasoning_effort="high", stream=True, **args)
    pieces = [c.choices[0].delta.model_extra.get("reasoning_content") for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 1


def test_images_reach_the_runner_on_both_doors(server: BackgroundServer, models: None) -> None:
    client = ollama.Client(host=server.base_url)
    text = [{"role": "user", "content": "What is in this picture?"}]
    plain = client.chat(model=SEER, messages=text, options=OPTIONS)
    seen = client.chat(model=SEER, messages=[{**text[0], "images": [PNG]}], options=OPTIONS)
    assert seen.prompt_eval_count >= plain.prompt_eval_count + IMAGE_TOKENS
    gen = client.generate(model=SEER, prompt="Describe it.", images=[PNG], options=OPTIONS)
    assert gen.response is not None and gen.prompt_eval_count >= IMAGE_TOKENS

    oai = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
    parts = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": DATA_URL}},
    ]
    resp = oai.chat.completions.create(
        model=SEER, messages=[{"role": "user", "content": parts}], max_tokens=8, temperature=0
    )
    assert resp.usage is not None and resp.usage.prompt_tokens >= IMAGE_TOKENS
    assert resp.choices[0].finish_reason in ("stop", "length")


def test_images_are_refused_without_a_projector(server: BackgroundServer, models: None) -> None:
    oai = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
    parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": DATA_URL}}]
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": parts}], max_tokens=4)
    assert "does not support vision" in str(err.value)
    client = ollama.Client(host=server.base_url)
    with pytest.raises(ollama.ResponseError, match="does not support vision"):
        client.chat(model=MODEL, messages=[{"role": "user", "content": "What?", "images": [PNG]}])


def test_image_bounds(server: BackgroundServer, models: None) -> None:
    too_many = [base64.b64encode(PNG).decode()] * 17
    resp = httpx.post(
        f"{server.base_url}/api/chat",
        json={"model": SEER, "messages": [{"role": "user", "content": "x", "images": too_many}]},
    )
    assert resp.status_code == 400 and "at most 16 images" in resp.json()["error"]
