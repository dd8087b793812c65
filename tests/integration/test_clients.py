"""The two front doors, spoken to by the official ``ollama`` and ``openai`` clients, with a real
llama-server running the bundled model behind them."""

from __future__ import annotations

import httpx
import ollama
import openai
import pytest

from tests.conftest import MODEL

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 24, "seed": 1}


@pytest.fixture(scope="module")
def oclient(server) -> ollama.Client:
    return ollama.Client(host=server.base_url)


@pytest.fixture(scope="module")
def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")


def test_root_version_and_head(server) -> None:
    assert httpx.get(server.base_url + "/").text == "Ollama is running"
    assert httpx.head(server.base_url + "/").status_code == 200
    assert httpx.get(server.base_url + "/api/version").json()["version"]


def test_tags_lists_the_bundled_model_with_real_details(oclient: ollama.Client) -> None:
    models = {m.model: m for m in oclient.list().models}
    assert MODEL in models
    m = models[MODEL]
    assert m.size > 90_000_000
    assert m.details.family == "llama"
    assert m.details.quantization_level == "Q4_1"
    assert m.details.format == "gguf"
    assert len(m.digest) == 64


def test_chat_answers_sensibly(oclient: ollama.Client) -> None:
    resp = oclient.chat(model=MODEL, messages=QUESTION, options=GREEDY)
    assert "Paris" in resp.message.content
    assert resp.done and resp.done_reason in ("stop", "length")
    assert resp.eval_count > 0 and resp.eval_duration > 0
    assert resp.prompt_eval_count > 0
    assert resp.total_duration >= resp.eval_duration


def test_chat_streams_ndjson_with_final_metrics(oclient: ollama.Client) -> None:
    parts = list(oclient.chat(model=MODEL, messages=QUESTION, options=GREEDY, stream=True))
    assert len(parts) > 2
    assert all(not p.done for p in parts[:-1])
    final = parts[-1]
    assert final.done and final.eval_count >= len(parts) - 2
    assert "Paris" in "".join(p.message.content for p in parts)


def test_generate_uses_the_chat_template(oclient: ollama.Client) -> None:
    resp = oclient.generate(model=MODEL, prompt="What is the capital of France?", options=GREEDY)
    assert "Paris" in resp.response


def test_generate_format_json_is_enforced(oclient: ollama.Client) -> None:
    import json

    resp = oclient.generate(
        model=MODEL,
        prompt="Give a JSON object with a key 'city' for France's capital.",
        format="json",
        options={"temperature": 0, "num_predict": 40},
    )
    assert isinstance(json.loads(resp.response), dict)


def test_show_reports_gguf_metadata(oclient: ollama.Client) -> None:
    info = oclient.show(MODEL)
    assert info.modelinfo["general.architecture"] == "llama"
    assert info.modelinfo["llama.context_length"] == 8192
    assert "completion" in info.capabilities
    assert "<|im_start|>" in info.template


def test_unknown_model_is_a_404_naming_close_matches(oclient: ollama.Client, server) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        oclient.chat(model="smollm2:136m", messages=QUESTION)
    assert err.value.status_code == 404
    assert "smollm2:135m" in err.value.error


def test_openai_chat_non_streaming(oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24)
    assert "Paris" in resp.choices[0].message.content
    assert resp.usage.completion_tokens > 0


def test_openai_chat_streaming(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=24, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert "Paris" in text


def test_openai_models_and_errors(oai: openai.OpenAI) -> None:
    assert MODEL in [m.id for m in oai.models.list()]
    with pytest.raises(openai.NotFoundError) as err:
        oai.chat.completions.create(model="nope:1b", messages=QUESTION)
    assert err.value.body["type"] == "invalid_request_error"


def test_bad_json_gets_each_dialects_error_shape(server) -> None:
    r = httpx.post(server.base_url + "/api/chat", content=b"{not json")
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    r = httpx.post(server.base_url + "/v1/chat/completions", content=b"[]")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(server.base_url + "/api/chat", json={"model": MODEL, "messages": [{"role": "wizard"}]})
    assert r.status_code == 400 and "role" in r.json()["error"]


def test_ps_shows_the_loaded_model(oclient: ollama.Client) -> None:
    oclient.generate(model=MODEL, prompt="Hi", options={"num_predict": 2})
    loaded = {m.model: m for m in oclient.ps().models}
    assert MODEL in loaded
    assert loaded[MODEL].context_length >= 1024  # 1024 per slot, more once a request asked for more


def test_empty_prompt_loads_and_keep_alive_zero_unloads(oclient: ollama.Client) -> None:
    loaded = oclient.generate(model=MODEL, prompt="")
    assert loaded.done_reason == "load"
    unloaded = oclient.generate(model=MODEL, prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert MODEL not in [m.model for m in oclient.ps().models]


CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
    },
    "required": ["city", "country"],
}


def test_structured_output_follows_the_schema_on_both_doors(
    oclient: ollama.Client, oai: openai.OpenAI
) -> None:
    import json

    import jsonschema

    question = [{"role": "user", "content": "Which city is the capital of France? Answer in JSON."}]
    resp = oclient.chat(
        model=MODEL, messages=question, format=CITY_SCHEMA, options={"num_predict": 120, "temperature": 0}
    )
    jsonschema.validate(json.loads(resp.message.content), CITY_SCHEMA)
    completion = oai.chat.completions.create(
        model=MODEL,
        messages=question,
        max_tokens=120,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA}},
    )
    jsonschema.validate(json.loads(completion.choices[0].message.content), CITY_SCHEMA)


def test_openai_completions_and_stop(oai: openai.OpenAI) -> None:
    resp = oai.completions.create(
        model=MODEL, prompt="One, two, three,", max_tokens=12, temperature=0, stop=["six"]
    )
    assert resp.choices[0].text
    assert "six" not in resp.choices[0].text
    stream = oai.completions.create(model=MODEL, prompt="One, two, three,", max_tokens=8, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices)


def test_logprobs_on_the_ollama_door(server) -> None:
    body = {
        "model": MODEL,
        "messages": QUESTION,
        "stream": False,
        "logprobs": True,
        "top_logprobs": 2,
        "options": {"num_predict": 4},
    }
    resp = httpx.post(server.base_url + "/api/chat", json=body, timeout=60).json()
    assert len(resp["logprobs"]) == resp["eval_count"]
    first = resp["logprobs"][0]
    assert first["logprob"] <= 0 and len(first["top_logprobs"]) == 2
    assert "".join(lp["token"] for lp in resp["logprobs"]) == resp["message"]["content"]
