"""Model management through the Ollama door: create (from a model, from an uploaded blob), blobs,
Modelfile round trip, and a custom TEMPLATE honoured in generation, with the official client."""

from __future__ import annotations

import hashlib

import httpx
import ollama
import pytest

from tests.conftest import MODEL

pytestmark = pytest.mark.slow

FRANCE_TEMPLATE = (
    "<|im_start|>system\n{{ .System }}<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def client(server) -> ollama.Client:
    return ollama.Client(host=server.base_url)


def test_create_from_a_model_with_system_and_parameters(client: ollama.Client) -> None:
    progress = list(
        client.create(
            model="pirate",
            from_=MODEL,
            system="You are a pirate.",
            parameters={"temperature": 0, "num_predict": 16},
            stream=True,
        )
    )
    assert progress[-1].status == "success"
    info = client.show("pirate")
    assert "temperature" in info.parameters and "num_predict" in info.parameters
    assert "FROM " in info.modelfile and "SYSTEM You are a pirate." in info.modelfile
    assert 'stop                           "<|im_end|>"' in info.parameters  # Ollama's layout
    # Same weights, no copy: the model layer digest is shared.
    assert client.show(MODEL).modelinfo == info.modelinfo
    client.delete("pirate")
    assert "pirate:latest" not in [m.model for m in client.list().models]
    assert MODEL in [m.model for m in client.list().models]  # the shared blob stayed


def test_custom_go_template_is_honoured(client: ollama.Client) -> None:
    client.create(
        model="france", from_=MODEL, template=FRANCE_TEMPLATE, system="You are a helpful assistant."
    )
    resp = client.generate(model="france", prompt="Hello!", options={"temperature": 0, "num_predict": 20})
    assert "Paris" in resp.response  # the template, not the prompt, asked the question
    chat = client.chat(
        model="france",
        messages=[{"role": "user", "content": "Hi"}],
        options={"temperature": 0, "num_predict": 20},
    )
    assert "Paris" in chat.message.content
    client.delete("france")


def test_per_request_template_on_generate(client: ollama.Client) -> None:
    resp = client.generate(
        model=MODEL,
        prompt="ignored",
        template=FRANCE_TEMPLATE,
        system="You are a helpful assistant.",
        options={"temperature": 0, "num_predict": 20},
    )
    assert "Paris" in resp.response


def test_blob_upload_then_create_from_files(server, client: ollama.Client, bundled_gguf) -> None:
    data = bundled_gguf.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert httpx.head(f"{server.base_url}/api/blobs/{digest}").status_code == 200  # the bundled blob
    small = b"not the blob you announced"
    wrong = "sha256:" + "0" * 64
    r = httpx.post(f"{server.base_url}/api/blobs/{wrong}", content=small)
    assert r.status_code == 400 and "error" in r.json()
    assert httpx.head(f"{server.base_url}/api/blobs/{wrong}").status_code == 404
    r = httpx.head(f"{server.base_url}/api/blobs/sha256:../../etc")
    assert r.status_code == 400
    done = client.create(model="from-files", files={"model.gguf": digest}, stream=False)
    assert done.status == "success"
    assert client.show("from-files").details.family == "llama"
    client.delete("from-files")


def test_create_refuses_bad_input(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.create(model="x", from_="no-such-model:1b")
    assert err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as err:
        client.create(model="x", from_=MODEL, parameters={"temperature": "hot"})
    assert err.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as err:
        client.create(model="../escape", from_=MODEL)
    assert err.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as err:  # server-side paths are not the client's to name
        client.create(model="x", from_="/etc/passwd")
    assert err.value.status_code in (400, 403)


def test_bundled_prompt_matches_llama_cpp_rendering(server) -> None:
    """Ollama's ChatML template, rendered by the gateway, gives llama.cpp's own prompt for the bundled
    model's GGUF template: a model keeps its prompt whichever side renders it."""
    from bench.template_cost import CHATML, conversation

    from enginehouse.api.gotemplate import render_chat

    ollama.Client(host=server.base_url).generate(model=MODEL, prompt="")  # load the runner
    runner = server.gateway.scheduler.get(MODEL)
    assert runner is not None
    for turns in (1, 3):
        messages = conversation(turns)
        url, key = runner.engine.base_url + "/apply-template", runner.engine.request_headers
        theirs = httpx.post(url, json={"messages": messages}, headers=key).json()
        assert render_chat(CHATML, messages) == theirs["prompt"]
