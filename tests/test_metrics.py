"""Metrics without a server: runner expositions relabelled and merged, generation observations."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from enginehouse.metrics import Metrics, relabel

LLAMA = """# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 120
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
"""

VLLM = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 2.0
"""


def test_runner_metrics_gain_model_labels_and_headers_appear_once() -> None:
    text = relabel(
        [("a:latest", "llama-server", LLAMA), ("b:latest", "llama-server", LLAMA), ("v", "vllm", VLLM)]
    )
    assert text.count("# TYPE llamacpp:prompt_tokens_total counter") == 1
    assert 'llamacpp:prompt_tokens_total{model="a:latest",engine="llama-server"} 120' in text
    assert 'llamacpp:prompt_tokens_total{model="b:latest",engine="llama-server"} 120' in text
    assert 'vllm:num_requests_running{model="v",engine="vllm",model_name="m"} 2.0' in text
    families = {f.name: f for f in text_string_to_metric_families(text)}  # valid exposition text
    assert len(families["llamacpp:prompt_tokens"].samples) == 2
    assert relabel([("x", "llama-server", "")]) == ""


def test_generation_observations() -> None:
    metrics = Metrics()
    metrics.observe_generation(
        "ollama", "m", ttft=0.2, prompt_tokens=10, output_tokens=11, decode_seconds=1.0
    )
    metrics.observe_generation("ollama", "m", ttft=None, prompt_tokens=0, output_tokens=1, decode_seconds=0.0)
    get = metrics.registry.get_sample_value
    assert get("enginehouse_output_tokens_total", {"model": "m"}) == 12
    assert get("enginehouse_prompt_tokens_total", {"model": "m"}) == 10
    assert get("enginehouse_time_to_first_token_seconds_count", {"door": "ollama", "model": "m"}) == 1
    # TPOT excludes the first token: 1.0 s over 10 tokens; a one-token answer has no TPOT.
    assert get("enginehouse_time_per_output_token_seconds_sum", {"door": "ollama", "model": "m"}) == 0.1
    assert get("enginehouse_time_per_output_token_seconds_count", {"door": "ollama", "model": "m"}) == 1
