"""Choosing the GGUF of a repository: the file whose name carries the quant asked for
(case-insensitive); without one, Q4_K_M if there is one, else the only GGUF. Anything else is an
InvalidRequest that lists the choices. Split GGUFs (``-00001-of-00003.gguf``) are not pulled (yet).
A vision model's ``mmproj*.gguf`` projector comes with it (:func:`choose_projector`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from enginehouse.errors import EnginehouseError, InvalidRequest
from enginehouse.store.hf.hub import HfFile
from enginehouse.store.hf.names import HF_STORE_HOST
from enginehouse.store.names import DEFAULT_TAG, ModelName

__all__ = ["DEFAULT_QUANT", "choose_gguf", "choose_projector"]

DEFAULT_QUANT = "Q4_K_M"

_SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})$", re.IGNORECASE)
# Quantisation labels as they appear in GGUF file names (Q4_K_M, IQ2_XXS, Q4_0_4_4, F16, BF16, ...).
_QUANT_LABEL_RE = re.compile(
    r"(?<![A-Za-z0-9])((?:UD-)?(?:I?Q\d+(?:_[A-Za-z0-9]+)*|TQ\d+_\d+|MXFP4(?:_MOE)?|BF16|FP16|F16|FP32|F32))"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class _Gguf:
    file: HfFile  # the file itself, or the first part of a split model
    stem: str  # the base name without .gguf and without the split suffix
    parts: int  # 1, or how many files a split model has

    @property
    def label(self) -> str:
        found = _QUANT_LABEL_RE.findall(self.stem)
        return found[-1] if found else self.file.path

    def shown(self) -> str:
        extra = f", split in {self.parts} files" if self.parts > 1 else ""
        return (
            f"{self.label} ({self.file.path}{extra})"
            if self.label != self.file.path
            else self.file.path + extra
        )


def _ggufs(files: list[HfFile]) -> list[_Gguf]:
    out: list[_Gguf] = []
    for f in files:
        base = f.path.rsplit("/", 1)[-1]
        if not base.lower().endswith(".gguf") or "mmproj" in base.lower():
            continue
        stem = f.path[: -len(".gguf")]
        m = _SPLIT_RE.search(stem)
        if m:
            if int(m.group(1)) != 1:
                continue  # listed once, by its first part
            out.append(_Gguf(f, stem[: m.start()], int(m.group(2))))
        else:
            out.append(_Gguf(f, stem, 1))
    out.sort(key=lambda g: (g.label.lower(), g.file.path))
    return out


def choose_projector(files: list[HfFile]) -> HfFile | None:
    """The repository's vision projector (``mmproj*.gguf``), or None: the F16 one where there are
    several (the precision llama.cpp's converter writes by default), else the first by name."""
    base = [(f, f.path.rsplit("/", 1)[-1].lower()) for f in files]
    found = sorted((f for f, b in base if b.endswith(".gguf") and "mmproj" in b), key=lambda f: f.path)
    preferred = [f for f in found if "f16" in f.path.lower() and "bf16" not in f.path.lower()]
    return (preferred or found or [None])[0]


def _matches(quant: str, stem: str, exact: bool) -> bool:
    q, s = quant.lower(), stem.lower()
    if exact:
        return re.search(rf"(?<![a-z0-9]){re.escape(q)}(?![a-z0-9_])", s) is not None
    return q in s


def choose_gguf(files: list[HfFile], quant: str | None, label: str) -> tuple[HfFile, str]:
    """The GGUF to pull and the tag to register it under; InvalidRequest listing the choices if
    there is no single answer."""
    ggufs = _ggufs(files)
    if not ggufs:
        raise InvalidRequest(
            f"{label} has no GGUF file to pull (only {len(files)} other files): pull a GGUF repository,"
            " or fetch this one whole for an engine that reads the Hugging Face layout"
        )
    choices = "; ".join(g.shown() for g in ggufs)
    if quant is None:
        picked = [g for g in ggufs if _matches(DEFAULT_QUANT, g.stem, exact=True)]
        if len(picked) != 1:
            picked = ggufs if len(ggufs) == 1 else []
        if not picked:
            raise InvalidRequest(
                f"{label} has several GGUF files and no single {DEFAULT_QUANT}: name one as"
                f" {label}:<quant>, one of: {choices}"
            )
    else:
        picked = [g for g in ggufs if _matches(quant, g.stem, exact=True)]
        if not picked:
            picked = [g for g in ggufs if _matches(quant, g.stem, exact=False)]
        if len(picked) > 1:
            raise InvalidRequest(
                f"quantisation '{quant}' is ambiguous in {label}: it matches "
                + "; ".join(g.shown() for g in picked)
                + f". Choose one of: {choices}"
            )
        if not picked:
            raise InvalidRequest(
                f"{label} has no GGUF file for quantisation '{quant}'; choose one of: {choices}"
            )
    g = picked[0]
    if g.parts > 1:
        raise InvalidRequest(
            f"{g.file.path} of {label} is split in {g.parts} files; split GGUFs cannot be pulled yet"
            " (merge them with llama-gguf-split --merge and import the result)"
        )
    if quant is not None:
        tag = quant
    else:
        tag = g.label if g.label != g.file.path else DEFAULT_TAG
        try:
            ModelName(HF_STORE_HOST, "x", "x", tag)
        except EnginehouseError:
            tag = DEFAULT_TAG
    return g.file, tag
