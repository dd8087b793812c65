"""Tools on the bundled model, as Open WebUI, ollama-python's tools example and the OpenAI SDK send them.

The bundled model's own template has a tool section (store/bundled.py); a model whose Go template has
none still takes tools through llama-server's generic tool format. The 135M model may or may not call
a tool when free to choose, so those answers are checked for shape (no refusal, content or parsed
calls); where a call is forced (``tool_choice``), a parsed call is asserted.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import ollama
import openai
import orjson
import pytest

from enginehouse.server.runtime import BackgroundServer
from tests.conftest import MODEL

pytestmark = pytest.mark.slow

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Current weather of a city", "parameters": CITY},
}
# What Open WebUI's chat sends to an Ollama connection: its own system prompt, the user's message,
# stream on, options from the model's settings, and the tools the user enabled.
OPEN_WEBUI_CHAT = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "What is the weather like in Paris today?"}],
    "stream": True,
    "options": {},
    "tools": [WEATHER],
}
# Its background tasks: one user message holding the task's instructions and the chat so far, no tools,
# stream off, a token cap (`max_tokens` 1000, `num_predict` on an Ollama connection).
CHAT_SO_FAR = "USER: What is the capital of France?\nASSISTANT: The capital of France is Paris."
SEED = 1  # the background tasks' draw
TITLE_TASK = (
    "### Task:\nWrite a short title of 3 to 5 words, with an emoji, for the chat history below.\n"
    '### Output:\nJSON: { "title": "the title" }\n### Chat History:\n<chat_history>\n'
    f"{CHAT_SO_FAR}\n</chat_history>"
)
TAGS_TASK = (
    "### Task:\nGive 1 to 3 broad tags and 1 to 3 narrower tags for the chat history below.\n"
    '### Output:\nJSON: { "tags": ["tag1", "tag2"] }\n### Chat History:\n<chat_history>\n'
    f"{CHAT_SO_FAR}\n</chat_history>"
)
# A Go template without a tool section (ChatML, as the GGUF's own): tools then go to llama-server.
PLAIN = "plain-chatml:latest"
PLAIN_TEMPLATE = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)


def add_two_numbers(a: int, b: int) -> int:
    """
    Add two numbers

    Args:
      a (int): The first number
      b (int): The second number

    Returns:
      int: The sum of the two numbers
    """
    return a + b


def assert_message_shape(message: dict, tools: list[dict]) -> None:
    """Content, or tool calls naming a tool that was offered with object arguments."""
    names = {t["function"]["name"] for t in tools}
    calls = message.get("tool_calls") or []
    assert isinstance(message.get("content", ""), str)
    assert calls or message.get("content"), message
    for call in calls:
        assert call["function"]["name"] in names
        assert isinstance(call["function"]["arguments"], dict)


def test_show_lists_tools_and_the_tool_template(server: BackgroundServer) -> None:
    shown = ollama.Client(host=server.base_url).show(MODEL)
    assert "tools" in (shown.capabilities or [])
    assert "<tool_call>" in (shown.template or "") and ".Tools" in (shown.template or "")


def test_open_webui_chat_with_tools_streams(server: BackgroundServer) -> None:
    lines = []
    with httpx.stream("POST", server.base_url + "/api/chat", json=OPEN_WEBUI_CHAT, timeout=120) as resp:
        assert resp.status_code == 200, resp.read()
        lines = [orjson.loads(raw) for raw in resp.iter_lines() if raw]
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] in ("stop", "length")
    assert all("error" not in line for line in lines)
    message = {
        "content": "".join(line["message"].get("content", "") for line in lines),
        "tool_calls": [c for line in lines for c in line["message"].get("tool_calls") or []],
    }
    assert_message_shape(message, [WEATHER])


@pytest.mark.parametrize("task", [TITLE_TASK, TAGS_TASK], ids=["title", "tags"])
def test_open_webui_background_tasks_on_both_doors(server: BackgroundServer, task: str) -> None:
    messages = [{"role": "user", "content": task}]
    # A fixed seed: at the model's temperature an answer to these tasks runs to the cap now and then (1
    # of 140 tags tasks in a scratch run, and once in the full suite); this checks one reproducible draw.
    body = {
        "model": MODEL,
        "messages": messages,
        "stream": False,
        "options": {"num_predict": 1000, "seed": SEED},
    }
    resp = httpx.post(server.base_url + "/api/chat", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["done"] and answer["message"]["content"].strip()
    assert answer["done_reason"] == "stop"  # ended by the model, not the cap
    oai = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused")
    out = oai.chat.completions.create(
        model=MODEL, messages=messages, stream=False, max_tokens=1000, seed=SEED
    )
    assert out.choices[0].message.content and out.choices[0].finish_reason == "stop"


def test_ollama_python_tools_example(server: BackgroundServer) -> None:
    """The shape of ollama-python's examples/tools.py: a Python function and a dict as tools."""
    client = ollama.Client(host=server.base_url)
    tools = [add_two_numbers, WEATHER]
    response = client.chat(
        model=MODEL, messages=[{"role": "user", "content": "What is three plus one?"}], tools=tools
    )
    offered = [{"function": {"name": "add_two_numbers"}}, WEATHER]
    assert_message_shape(response.message.model_dump(exclude_none=True), offered)
    for call in response.message.tool_calls or []:
        if call.function.name == "add_two_numbers":
            assert set(call.function.arguments) <= {"a", "b"}


def test_openai_sdk_tool_call_forced_and_free(server: BackgroundServer) -> None:
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused")
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    forced = client.chat.completions.create(
        model=MODEL,
        messages=ask,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=60,
        temperature=0,
    )
    choice = forced.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), CITY)
    free = client.chat.completions.create(
        model=MODEL, messages=ask, tools=[WEATHER], max_tokens=200, temperature=0
    )
    message = free.choices[0].message
    assert free.choices[0].finish_reason in ("stop", "tool_calls", "length")
    assert message.content or message.tool_calls
    for c in message.tool_calls or []:
        assert c.function.name == "get_weather" and isinstance(json.loads(c.function.arguments), dict)


def test_a_template_without_tools_takes_them_through_the_engine(server: BackgroundServer) -> None:
    client = ollama.Client(host=server.base_url)
    client.create(model=PLAIN, from_=MODEL, template=PLAIN_TEMPLATE)
    assert "tools" in (client.show(PLAIN).capabilities or [])  # llama-server --jinja takes them
    response = client.chat(
        model=PLAIN, messages=OPEN_WEBUI_CHAT["messages"], tools=[WEATHER], options={"num_predict": 200}
    )
    assert_message_shape(response.message.model_dump(exclude_none=True), [WEATHER])
    oai = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused")
    out = oai.chat.completions.create(
        model=PLAIN, messages=OPEN_WEBUI_CHAT["messages"], tools=[WEATHER], max_tokens=200
    )
    assert out.choices[0].message.content or out.choices[0].message.tool_calls
    # (a forced call on this path came back as content on this llama.cpp build: not asserted here)
