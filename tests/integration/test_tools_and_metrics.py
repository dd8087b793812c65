"""Tool calls end to end with the official clients on a Go-template model (the bundled weights with a
ChatML tools template), structured output on the raw path, and /metrics agreeing with Ollama's own
timing fields."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from enginehouse.config import Config
from enginehouse.server.runtime import BackgroundServer
from tests.conftest import MODEL
from tests.templates import CHATML_TOOLS

pytestmark = pytest.mark.slow

TOOLY = "tooly:latest"
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Current weather of a city", "parameters": CITY},
}
CLOCK = {
    "type": "function",
    "function": {"name": "get_time", "description": "Local time of a city", "parameters": CITY},
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def srv(server_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    home: Path = tmp_path_factory.mktemp("tools-home")
    (home / "enginehouse.toml").write_text(f'[models."{TOOLY}"]\ntool_choice = "user-turn"\n')
    with BackgroundServer(server_config.with_(home=home)) as server:
        ollama.Client(host=server.base_url).create(
            model=TOOLY, from_=MODEL, template=CHATML_TOOLS, system="You are a weather assistant."
        )
        yield server


def test_openai_forced_tool_call_then_the_answer(srv: BackgroundServer) -> None:
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused")
    first = client.chat.completions.create(
        model=TOOLY,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=60,
        temperature=0,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), CITY)
    result = {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 C"}
    history = [*ASK, choice.message.model_dump(exclude_none=True), result]
    answer = client.chat.completions.create(model=TOOLY, messages=history, tools=[WEATHER], max_tokens=30)
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls


def test_openai_named_tool_choice_streamed(srv: BackgroundServer) -> None:
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused")
    stream = client.chat.completions.create(
        model=TOOLY,
        messages=[{"role": "user", "content": "What time is it in Tokyo?"}],
        tools=[WEATHER, CLOCK],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=60,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    calls = [c for ch in chunks if ch.choices for c in ch.choices[0].delta.tool_calls or []]
    assert [c.function.name for c in calls] == ["get_time"]
    jsonschema.validate(json.loads(calls[0].function.arguments), CITY)
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_ollama_tool_call_round_trip(srv: BackgroundServer) -> None:
    client = ollama.Client(host=srv.base_url)
    first = client.chat(
        model=TOOLY, messages=ASK, tools=[WEATHER], options={"num_predict": 60, "temperature": 0}
    )
    calls = first.message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    jsonschema.validate(dict(calls[0].function.arguments), CITY)
    history = [*ASK, first.message, {"role": "tool", "content": "Sunny, 24 C", "tool_name": "get_weather"}]
    answer = client.chat(model=TOOLY, messages=history, tools=[WEATHER], options={"num_predict": 30})
    assert answer.message.content and not answer.message.tool_calls
    streamed = list(client.chat(model=TOOLY, messages=ASK, tools=[WEATHER], stream=True))
    assert [c.function.name for part in streamed for c in part.message.tool_calls or []] == ["get_weather"]
    assert streamed[-1].done


def test_format_is_enforced_on_the_rendered_path(srv: BackgroundServer) -> None:
    schema = {
        "type": "object",
        "properties": {
            "capital": {"type": "string", "maxLength": 24},
            "population_millions": {"type": "integer", "minimum": 0, "maximum": 1000},
        },
        "required": ["capital", "population_millions"],
    }
    # Bounded fields and greedy decoding: the grammar holds every token, but a budget too small for
    # the document would cut it short (the model inherits the bundled sampling defaults).
    reply = ollama.Client(host=srv.base_url).chat(
        model=TOOLY,
        messages=[{"role": "user", "content": "France?"}],
        format=schema,
        options={"num_predict": 120, "temperature": 0},
    )
    jsonschema.validate(json.loads(reply.message.content), schema)
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused")
    out = client.chat.completions.create(
        model=TOOLY,
        messages=[{"role": "user", "content": "France?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "country", "schema": schema}},
        max_tokens=120,
        temperature=0,
    )
    jsonschema.validate(json.loads(out.choices[0].message.content), schema)


def scrape(srv: BackgroundServer) -> dict[str, float]:
    text = httpx.get(srv.base_url + "/metrics", timeout=30).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            values[f"{s.name}{{{labels}}}"] = s.value
    return values


def test_metrics_agree_with_ollamas_timing_fields(srv: BackgroundServer) -> None:
    client = ollama.Client(host=srv.base_url)
    client.generate(model=MODEL, prompt="Hi", options={"num_predict": 2})  # loaded and counted
    before = scrape(srv)
    reply = client.generate(model=MODEL, prompt="Name three colours.", options={"num_predict": 12})
    after = scrape(srv)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    model = f"model={MODEL}"
    assert delta(f"enginehouse_output_tokens_total{{{model}}}") == reply.eval_count
    assert delta(f"enginehouse_prompt_tokens_total{{{model}}}") == reply.prompt_eval_count
    door = f"door=ollama,{model}"
    assert delta(f"enginehouse_time_to_first_token_seconds_count{{{door}}}") == 1
    ttft = delta(f"enginehouse_time_to_first_token_seconds_sum{{{door}}}")
    assert 0 < ttft <= reply.total_duration / 1e9
    tpot = delta(f"enginehouse_time_per_output_token_seconds_sum{{{door}}}")
    assert tpot == pytest.approx(reply.eval_duration / 1e9 / (reply.eval_count - 1), rel=1e-6)
    key = f"door=ollama,endpoint=/api/generate,engine=llama-server,{model},status=200"
    assert delta(f"enginehouse_requests_total{{{key}}}") == 1
    assert after[f"enginehouse_model_loaded{{engine=llama-server,{model}}}"] == 1
    assert after[f"enginehouse_model_memory_estimated_bytes{{{model}}}"] > 0
    # The runner's own metrics, under the model's label, in the same scrape.
    runner = [k for k in after if k.startswith("llamacpp:") and f"model={MODEL}" in k]
    assert runner, "llama-server's /metrics should be re-exposed"

    openai_client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused")
    stream = openai_client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=8, stream=True, stream_options={"include_usage": True}
    )
    usage = [c.usage for c in stream if c.usage][-1]
    final = scrape(srv)
    assert (
        final[f"enginehouse_output_tokens_total{{{model}}}"]
        - after[f"enginehouse_output_tokens_total{{{model}}}"]
        == usage.completion_tokens
    )
    assert final.get(f"enginehouse_time_to_first_token_seconds_count{{door=openai,{model}}}", 0) >= 1
    assert final.get("enginehouse_gateway_overhead_seconds_count{door=openai}", 0) >= 1
