"""Images at the doors: bounds on both doors, the OpenAI door's check for image parts (only those bodies
are checked for vision), and the projector that makes a model a vision model."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from enginehouse.api import limits
from enginehouse.api.ollama import ChatRequest, GenerateRequest
from enginehouse.api.openai import ChatCompletionRequest
from enginehouse.api.prepare import ModelFacts, prepare_chat, prepare_completion
from enginehouse.canonical import ChatCall, CompletionCall, Message
from enginehouse.errors import InvalidRequest
from enginehouse.server.openai_routes import has_images
from enginehouse.store.bundled import BUNDLED_TEMPLATE

IMAGE = "iVBORw0KGgo="
URL = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + IMAGE}}


def openai_body(content: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}]}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("plain text", False),
        ([{"type": "text", "text": "hi"}], False),
        ([{"type": "text", "text": "hi"}, URL], True),
        ([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}], True),
    ],
)
def test_openai_bodies_with_image_parts(content: Any, expected: bool) -> None:
    assert has_images(openai_body(content), "/v1/chat/completions") is expected
    assert has_images(openai_body(content), "/v1/completions") is False


def test_image_count_is_bounded_on_every_door() -> None:
    many = [IMAGE] * (limits.MAX_IMAGES + 1)
    with pytest.raises(InvalidRequest, match=f"at most {limits.MAX_IMAGES} images"):
        ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "images": many}]})
    with pytest.raises((InvalidRequest, ValidationError), match=f"at most {limits.MAX_IMAGES} images"):
        GenerateRequest.model_validate({"model": "m", "prompt": "x", "images": many})
    with pytest.raises(InvalidRequest, match=f"at most {limits.MAX_IMAGES} images"):
        ChatCompletionRequest.model_validate(openai_body([URL] * (limits.MAX_IMAGES + 1)))
    ChatCompletionRequest.model_validate(openai_body([URL] * limits.MAX_IMAGES))


def test_image_size_is_bounded() -> None:
    big = "A" * (limits.MAX_IMAGE_CHARS + 4)
    with pytest.raises(InvalidRequest, match="larger than 20 MiB"):
        ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "images": [big]}]})


FACTS = ModelFacts(params={}, template=BUNDLED_TEMPLATE)


def test_go_template_models_send_images_through_the_engines_template() -> None:
    call = ChatCall(model="m", messages=[Message("user", "what is this?", [IMAGE])])
    prepared = prepare_chat(call, FACTS)
    assert isinstance(prepared.call, ChatCall) and prepared.call.messages[0].images == [IMAGE]
    gen = prepare_completion(CompletionCall(model="m", prompt="what?", raw=False, images=[IMAGE]), FACTS)
    assert isinstance(gen.call, ChatCall) and gen.call.messages[-1].images == [IMAGE]
    with pytest.raises(InvalidRequest, match="without raw"):
        prepare_completion(CompletionCall(model="m", prompt="what?", raw=True, images=[IMAGE]), FACTS)
