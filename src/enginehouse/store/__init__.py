"""The content-addressed model store (Ollama's on-disk layout) and what feeds it."""

from enginehouse.store.bundled import BUNDLED_NAME, bundled_minilm_dir, bundled_model_file, ensure_bundled
from enginehouse.store.fsio import atomic_write_bytes
from enginehouse.store.gguf_info import GGUFInfo, parameter_size_label, read_gguf_info
from enginehouse.store.names import (
    DEFAULT_HOST,
    DEFAULT_NAMESPACE,
    DEFAULT_TAG,
    ModelName,
    as_model_name,
    digest_filename,
    parse_digest,
)
from enginehouse.store.ollama_import import ImportReport, default_ollama_models_dir, import_ollama_store
from enginehouse.store.store import ModelRecord, Store, manifest_digests

__all__ = [
    "BUNDLED_NAME",
    "DEFAULT_HOST",
    "DEFAULT_NAMESPACE",
    "DEFAULT_TAG",
    "GGUFInfo",
    "ImportReport",
    "ModelName",
    "ModelRecord",
    "Store",
    "as_model_name",
    "atomic_write_bytes",
    "bundled_minilm_dir",
    "bundled_model_file",
    "default_ollama_models_dir",
    "digest_filename",
    "ensure_bundled",
    "import_ollama_store",
    "manifest_digests",
    "parameter_size_label",
    "parse_digest",
    "read_gguf_info",
]
