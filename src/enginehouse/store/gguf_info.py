"""What a GGUF file says about itself: architecture, sizes, quantization, chat template.

Model files are untrusted input. The file is checked for the GGUF magic before the parser sees
it, every parser failure becomes :class:`InvalidModelFile`, and every tensor must lie inside the
file (the reader maps the file and would not notice a truncated download on its own).
"""

from __future__ import annotations

import contextlib
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType, LlamaFileType

from enginehouse.errors import InvalidModelFile

# Arrays longer than this are left out of model_info (Ollama omits the big token arrays too), and
# the reader skips over them instead of building one numpy view per element: that is most of the
# parse time on a real model (~100k tokens and merges).
MAX_ARRAY_ITEMS = 16

EMBEDDING_ARCHITECTURES = frozenset(
    {
        "bert",
        "modern-bert",
        "nomic-bert",
        "nomic-bert-moe",
        "neo-bert",
        "jina-bert-v2",
        "jina-bert-v3",
        "eurobert",
        "t5encoder",
    }
)

POOLING_RANK = 4  # llama.cpp's LLAMA_POOLING_TYPE_RANK: one relevance score per (query, document) pair


class _Reader(GGUFReader):
    """GGUFReader that steps over long metadata arrays without materialising their items."""

    def _get_field_parts(
        self, orig_offs: int, raw_type: int
    ) -> tuple[int, list[np.ndarray[Any, Any]], list[int], list[GGUFValueType]]:
        if raw_type != GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        raw_itype = self._get(orig_offs, np.uint32)
        alen = self._get(orig_offs + 4, np.uint64)
        if len(raw_itype) != 1 or len(alen) != 1:
            raise ValueError("metadata array header runs past the end of the file")
        count = int(alen[0])
        itype = GGUFValueType(int(raw_itype[0]))
        start = orig_offs + 12
        if count <= MAX_ARRAY_ITEMS:
            return super()._get_field_parts(orig_offs, raw_type)
        if itype == GGUFValueType.STRING:
            end = self._skip_strings(start, count)
        elif itype in self.gguf_scalar_to_np:
            end = start + count * np.dtype(self.gguf_scalar_to_np[itype]).itemsize
        else:  # nested arrays: rare, let the stock parser walk them
            return super()._get_field_parts(orig_offs, raw_type)
        if end > len(self.data):
            raise ValueError("metadata array runs past the end of the file")
        # One part spanning the skipped bytes keeps offsets right; no data indices means "omitted".
        return end - orig_offs, [raw_itype, alen, self.data[start:end]], [], [GGUFValueType.ARRAY, itype]

    def _skip_strings(self, offs: int, count: int) -> int:
        buf = memoryview(self.data)  # type: ignore[arg-type]
        size = len(buf)
        unpack = struct.Struct(">Q" if self.byte_order == "S" else "<Q").unpack_from
        for _ in range(count):
            if offs + 8 > size:
                raise ValueError("metadata string array runs past the end of the file")
            offs += 8 + unpack(buf, offs)[0]
        return offs


@dataclass
class GGUFInfo:
    architecture: str
    name: str | None
    parameter_count: int
    context_length: int | None
    embedding_length: int | None
    block_count: int | None
    head_count: int | None
    head_count_kv: int | None
    key_length: int | None
    value_length: int | None
    file_type: str
    chat_template: str | None
    size: int
    tensor_bytes: int
    pooling_type: int | None = None
    is_embedding: bool = False
    is_reranker: bool = False
    model_info: dict[str, object] = field(default_factory=dict)

    @property
    def parameter_size(self) -> str:
        return parameter_size_label(self.parameter_count)


def parameter_size_label(n: int) -> str:
    """Parameter count as Ollama prints it (its ``format.HumanNumber``).

    >= 1e9: ``B`` with one decimal (``7.2B``, ``8.0B``), no decimals when exactly whole (``8B``);
    >= 1e6: ``M`` with two decimals (``134.52M``), none when whole (``135M``);
    >= 1e3: ``K`` rounded to a whole number (``12K``); below that the plain integer.
    """
    if n >= 1_000_000_000:
        v = n / 1e9
        return f"{v:.0f}B" if v == int(v) else f"{v:.1f}B"
    if n >= 1_000_000:
        v = n / 1e6
        return f"{v:.0f}M" if v == int(v) else f"{v:.2f}M"
    if n >= 1_000:
        return f"{n / 1e3:.0f}K"
    return str(n)


def _scalar(part: np.ndarray[Any, Any], vtype: GGUFValueType) -> object:
    if vtype == GGUFValueType.STRING:
        return bytes(part).decode("utf-8", errors="replace")
    value = part.tolist()[0]
    return bool(value) if vtype == GGUFValueType.BOOL else value


def _field_value(f: Any) -> tuple[bool, object]:
    """(included, value) for one metadata field; long arrays are not included."""
    if not f.types:
        return False, None
    if f.types[0] == GGUFValueType.ARRAY:
        # parts: key length, key, value type, item type, item count, items...
        count = int(f.parts[4][0]) if len(f.parts) > 4 and len(f.parts[4]) == 1 else -1
        if count > MAX_ARRAY_ITEMS or len(f.data) != count:
            return False, None
        sub = f.types[-1]
        if sub == GGUFValueType.ARRAY:
            return False, None
        return True, [_scalar(f.parts[i], sub) for i in f.data]
    return True, _scalar(f.parts[f.data[0]], f.types[0])


def _as_int(v: object) -> int | None:
    # Some architectures store per-layer values (head counts) as arrays: the largest one is what
    # sizes buffers.
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, list):
        ints = [x for x in v if isinstance(x, int) and not isinstance(x, bool)]
        return max(ints) if ints else None
    return None


def _file_type_name(value: object, tensor_types: Counter[str]) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            name = LlamaFileType(value & ~LlamaFileType.GUESSED).name
        except ValueError:
            name = ""
        for prefix in ("MOSTLY_", "ALL_"):
            if name.startswith(prefix):
                return name[len(prefix) :]
    # No (known) general.file_type: name the tensor type that holds the most elements.
    return tensor_types.most_common(1)[0][0] if tensor_types else "unknown"


def _check_magic(path: Path) -> int:
    # Messages name the file, not its directory: a blob's name is its digest, and the store's location
    # is the server's business, not its clients'.
    try:
        if not path.is_file():
            raise InvalidModelFile(f"{path.name} is not a GGUF file (not a regular file)")
        with path.open("rb") as fh:
            magic = fh.read(4)
            size = path.stat().st_size
    except OSError as e:
        raise InvalidModelFile(f"{path.name} is not a GGUF file ({e.strerror or 'unreadable'})") from e
    if magic != b"GGUF":
        raise InvalidModelFile(f"{path.name} is not a GGUF file")
    return size


def read_gguf_info(path: Path | str) -> GGUFInfo:
    """Read and sanity-check a GGUF file's metadata and tensor table (tensor data is not read)."""
    path = Path(path)
    size = _check_magic(path)
    try:
        try:
            reader: GGUFReader = _Reader(path, "r")
        except (TypeError, AttributeError):
            # The fast path leans on a private reader method; if gguf changed it, parse the slow way.
            reader = GGUFReader(path, "r")
        try:
            return _extract(reader, path, size)
        finally:
            # Drop the mapping now rather than whenever the reader is collected.
            mm = getattr(reader.data, "_mmap", None)
            del reader
            if mm is not None:
                with contextlib.suppress(BufferError, ValueError):  # still referenced: GC closes it
                    mm.close()
    except InvalidModelFile:
        raise
    except Exception as e:  # untrusted input: any parse failure means "not a usable model file"
        raise InvalidModelFile(f"{path.name} is not a valid GGUF file: {e}") from e


def _extract(reader: GGUFReader, path: Path, size: int) -> GGUFInfo:
    meta: dict[str, object] = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):  # header pseudo-fields, not metadata
            continue
        included, value = _field_value(f)
        if included:
            meta[key] = value

    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise InvalidModelFile(f"{path.name} is not a valid GGUF file: no general.architecture")

    parameter_count = 0
    tensor_bytes = 0
    by_type: Counter[str] = Counter()
    tensor_names: set[str] = set()
    for t in reader.tensors:
        tensor_names.add(t.name)
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise InvalidModelFile(
                f"{path.name} is truncated: tensor {t.name} ends at byte {end} but the file has {size} bytes"
            )
        parameter_count += int(t.n_elements)
        tensor_bytes += int(t.n_bytes)
        by_type[t.tensor_type.name] += int(t.n_elements)
    if not reader.tensors:
        raise InvalidModelFile(f"{path.name} is not a valid GGUF file: it holds no tensors")

    def arch_int(key: str) -> int | None:
        return _as_int(meta.get(f"{arch}.{key}"))

    embedding = arch_int("embedding_length")
    heads = arch_int("attention.head_count")
    default_head_dim = embedding // heads if embedding and heads else None
    key_length = arch_int("attention.key_length") or default_head_dim
    value_length = arch_int("attention.value_length") or default_head_dim
    pooling = arch_int("pooling_type")
    template = meta.get("tokenizer.chat_template")
    name = meta.get("general.name")

    meta["general.parameter_count"] = parameter_count
    return GGUFInfo(
        architecture=arch,
        name=name if isinstance(name, str) else None,
        parameter_count=parameter_count,
        context_length=arch_int("context_length"),
        embedding_length=embedding,
        block_count=arch_int("block_count"),
        head_count=heads,
        head_count_kv=arch_int("attention.head_count_kv"),
        key_length=key_length,
        value_length=value_length,
        file_type=_file_type_name(meta.get("general.file_type"), by_type),
        chat_template=template if isinstance(template, str) and template else None,
        size=size,
        tensor_bytes=tensor_bytes,
        pooling_type=pooling,
        # pooling_type 0 is "none"; any other pooling means the model outputs embeddings.
        is_embedding=arch in EMBEDDING_ARCHITECTURES or bool(pooling),
        is_reranker=_is_reranker(reader, arch, pooling, tensor_names),
        model_info=meta,
    )


def _is_reranker(reader: GGUFReader, arch: str, pooling: int | None, tensors: set[str]) -> bool:
    """A cross-encoder that scores (query, document) pairs, as llama.cpp's converter writes one: rank
    pooling (Qwen3 rerankers), a rerank prompt template, or a one-output classification head
    (``cls.output``: BGE/XLM-RoBERTa and BERT ``...ForSequenceClassification`` with one label; a head
    with more labels is a classifier, not a reranker)."""
    if pooling == POOLING_RANK or "tokenizer.chat_template.rerank" in reader.fields:
        return True
    if "cls.output.weight" not in tensors:
        return False
    labels = reader.fields.get(f"{arch}.classifier.output_labels")
    if labels is None:
        return True
    # parts: key length, key, value type, item type, item count, items (long arrays are skipped)
    return len(labels.parts) > 4 and len(labels.parts[4]) == 1 and int(labels.parts[4][0]) <= 1
