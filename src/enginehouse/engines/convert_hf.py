"""``enginehouse convert``: a Hugging Face model (config.json + safetensors) to a GGUF model in the store.

The conversion is llama.cpp's own ``convert_hf_to_gguf.py`` from the pinned source, run in the venv
that ``enginehouse engines install converter`` made (:mod:`enginehouse.engines.converter`); it is never
installed or run as a silent step of something else.

The input is untrusted: a directory must hold a ``config.json`` naming its ``architectures``, and
safetensors weights (pickled ``.bin`` weights are refused); nothing in it may be a link that leads out
of it; and code shipped with the model (``*.py``, an ``auto_map``) is refused unless the caller trusts
it, because the converter loads tokenizers with ``trust_remote_code=True``. The converter runs offline
(``HF_HUB_OFFLINE``) and writes to a temporary file in the store's ``tmp/``, which becomes a blob
(hard link) and then a model through :func:`~enginehouse.store.create.create_model`: a failed or killed
conversion leaves no model, and at worst a ``tmp/`` file that ``enginehouse prune`` removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enginehouse import process
from enginehouse.child_output import output_lines, wait_exit
from enginehouse.config import Config
from enginehouse.engines.converter import Converter, require_converter
from enginehouse.errors import ConversionFailed, InvalidRequest, ModelNotFound
from enginehouse.store.create import create_model
from enginehouse.store.fsio import make_dirs, make_readable
from enginehouse.store.gguf_info import read_gguf_info
from enginehouse.store.hf.hub import COMMIT_RE
from enginehouse.store.hf.names import HF_HOSTS, REPO_PART_RE
from enginehouse.store.hf.snapshot import hf_repo_root
from enginehouse.store.modelfile import Modelfile
from enginehouse.store.names import ModelName, as_model_name
from enginehouse.store.store import ModelRecord, Store

__all__ = ["OUTTYPES", "ConversionFailed", "HfModelDir", "check_hf_dir", "convert_hf", "resolve_source"]

OUTTYPES = ("auto", "f16", "bf16", "f32", "q8_0")
MAX_CONFIG_BYTES = 4 << 20
_ARCH_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Files that may carry code for transformers' auto classes.
_AUTO_MAP_FILES = (
    "config.json",
    "tokenizer_config.json",
    "processor_config.json",
    "preprocessor_config.json",
)

Log = Callable[[str], None]


@dataclass(frozen=True)
class HfModelDir:
    path: Path  # resolved
    architectures: tuple[str, ...]
    weights: tuple[str, ...]  # safetensors files, relative to path


def _noop(_: str) -> None:
    pass


# -- where the model is --------------------------------------------------------------------------


def _store_snapshot(store: Store, source: str) -> Path:
    """``hf.co/owner/repo[@commit]``: a whole repository pulled into the store's ``hf/``."""
    ref, _, commit = source.partition("@")
    host, _, rest = ref.partition("/")
    parts = rest.split("/")
    if host.lower() not in HF_HOSTS or len(parts) != 2:
        raise InvalidRequest(f"{source!r} is not a Hugging Face repository name (hf.co/owner/repo[@commit])")
    for part in parts:
        if not REPO_PART_RE.fullmatch(part) or ".." in part:
            raise InvalidRequest(f"{source!r} does not name a Hugging Face repository (owner/repo)")
    if commit and not re.fullmatch(r"[0-9a-f]{7,40}", commit):
        raise InvalidRequest(f"{source!r}: {commit!r} is not a commit id")
    root = hf_repo_root(store)
    repo_dir = _child_ci(_child_ci(root, parts[0]), parts[1]) if root.is_dir() else None
    snapshots = (
        [d for d in repo_dir.iterdir() if d.is_dir() and COMMIT_RE.fullmatch(d.name)] if repo_dir else []
    )
    if commit:
        snapshots = [d for d in snapshots if d.name.startswith(commit)]
    if not snapshots:
        raise ModelNotFound(source)
    # The newest snapshot when several commits were pulled.
    chosen = max(snapshots, key=lambda d: d.stat().st_mtime)
    if not chosen.resolve().is_relative_to(root.resolve()):
        raise InvalidRequest(f"{source!r} leads out of the store")
    return chosen


def _child_ci(parent: Path | None, name: str) -> Path | None:
    """``parent/name``, matched case-insensitively as the hub matches repository names."""
    if parent is None or not parent.is_dir():
        return None
    exact = parent / name
    if exact.is_dir():
        return exact
    return next((d for d in parent.iterdir() if d.is_dir() and d.name.lower() == name.lower()), None)


def resolve_source(store: Store, source: str) -> Path:
    """SOURCE as a directory: a local path, or ``hf.co/owner/repo[@commit]`` pulled as a whole repo."""
    if not isinstance(source, str) or not source.strip() or "\0" in source:
        raise InvalidRequest("the source is empty")
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InvalidRequest(f"{source}: not a directory (a Hugging Face model is a directory)")
        return path
    if source.split("/", 1)[0].lower() in HF_HOSTS:
        return _store_snapshot(store, source)
    raise InvalidRequest(
        f"{source}: no such directory, and not a repository pulled into the store (hf.co/owner/repo)"
    )


# -- what is in it -------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> Any:
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise InvalidRequest(f"{what} is larger than {MAX_CONFIG_BYTES >> 20} MiB: not a model config")
        return json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InvalidRequest(f"{what} is not readable JSON ({e})") from None


def check_hf_dir(path: Path, *, trust_remote_code: bool = False) -> HfModelDir:
    """Validate an untrusted Hugging Face model directory before any converter sees it."""
    root = path.resolve()
    if not root.is_dir():
        raise InvalidRequest(f"{path} is not a directory")
    weights: list[str] = []
    code: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in (*dirnames, *filenames):
            p = Path(dirpath) / entry
            rel = p.relative_to(root).as_posix()
            if p.is_symlink() and not p.resolve().is_relative_to(root):
                raise InvalidRequest(f"{path}: {rel} is a link that leads out of the model directory")
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # .cache/ of huggingface_hub
        for name in filenames:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if name.endswith(".safetensors"):
                weights.append(rel)
            elif name.endswith(".py"):
                code.append(rel)
    config_path = root / "config.json"
    if not config_path.is_file():
        raise InvalidRequest(f"{path} has no config.json: not a Hugging Face model directory")
    config = _read_json(config_path, f"{path}/config.json")
    if not isinstance(config, dict):
        raise InvalidRequest(f"{path}/config.json is not a JSON object")
    archs = config.get("architectures")
    if not (
        isinstance(archs, list) and archs and all(isinstance(a, str) and _ARCH_RE.fullmatch(a) for a in archs)
    ):
        raise InvalidRequest(
            f'{path}/config.json names no architectures (e.g. "architectures": ["BertModel"])'
        )
    if not any("/" not in w for w in weights):
        bins = sorted(p.name for p in root.glob("*.bin"))
        raise InvalidRequest(
            f"{path} has no .safetensors weights"
            + (" (pickled .bin weights can run code when loaded and are not accepted)" if bins else "")
        )
    for name in _AUTO_MAP_FILES:
        doc = config if name == "config.json" else None
        if name != "config.json" and (root / name).is_file():
            doc = _read_json(root / name, f"{path}/{name}")
        if isinstance(doc, dict) and doc.get("auto_map"):
            code.append(f"{name} (auto_map)")
    if code and not trust_remote_code:
        raise InvalidRequest(
            f"{path} ships code ({', '.join(sorted(code)[:5])}) that the converter would run: "
            "refused (pass --trust-remote-code if you trust this model's authors)"
        )
    return HfModelDir(root, tuple(archs), tuple(sorted(weights)))


# -- running the converter -----------------------------------------------------------------------


def _converter_error(lines: deque[str]) -> str:
    """The converter's own reason: its ERROR line, else the exception's last line."""
    for line in reversed(lines):
        if line.startswith("ERROR:"):
            return line.split(":", 2)[-1].strip()
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_.]+(Error|Exception)\b", line):
            return line.strip()
    return lines[-1].strip() if lines else "no output"


def run_converter(
    converter: Converter, model: HfModelDir, outfile: Path, outtype: str, log_path: Path, log: Log = _noop
) -> None:
    """Run ``convert_hf_to_gguf.py`` offline; its lines to ``log`` and ``log_path``. ConversionFailed."""
    argv = converter.argv(str(model.path), "--outfile", str(outfile), "--outtype", outtype)
    env = {
        **os.environ,
        "NO_LOCAL_GGUF": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PYTHONUNBUFFERED": "1",
    }
    tail: deque[str] = deque(maxlen=60)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as fh:
        fh.write(f"$ {' '.join(argv)}\n")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
            cwd=str(converter.script.parent),
            preexec_fn=process.child_preexec(os.getpid()),  # it dies with us (Linux), as runners do
        )
        assert proc.stdout is not None
        try:
            for line in output_lines(proc):  # text mode turns tqdm's \r into line ends
                fh.write(line)
                if line := line.rstrip():
                    tail.append(line)
                    log(line)
            code = wait_exit(proc)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if code != 0:
        raise ConversionFailed(
            f"converting {model.path} failed: {_converter_error(tail)} (converter log: {log_path})"
        )
    if not outfile.is_file() or outfile.stat().st_size == 0:
        raise ConversionFailed(f"the converter wrote no GGUF for {model.path} (converter log: {log_path})")


def convert_hf(
    config: Config,
    store: Store,
    source: str,
    name: str | ModelName,
    *,
    outtype: str = "auto",
    trust_remote_code: bool = False,
    log: Log = _noop,
) -> ModelRecord:
    """Convert SOURCE (a Hugging Face directory, or ``hf.co/owner/repo`` pulled whole) into model ``name``.

    Checks, in order: the name, the source (see :func:`check_hf_dir`), the outtype, the converter's
    install (EngineNotInstalled names the command). Then converts into ``tmp/``, checks the result is
    a GGUF, and creates the model from it; the temporary file goes in every case.
    """
    mn = as_model_name(name)
    model = check_hf_dir(resolve_source(store, source), trust_remote_code=trust_remote_code)
    if outtype not in OUTTYPES:
        raise InvalidRequest(f"outtype {outtype!r}: expected one of {', '.join(OUTTYPES)}")
    converter = require_converter(config)
    make_dirs(store.tmp_dir)
    fd, tmp_name = tempfile.mkstemp(dir=store.tmp_dir, prefix="convert.", suffix=".gguf.partial")
    make_readable(fd)  # the converter writes into this inode, which becomes the blob (a hard link)
    os.close(fd)
    tmp = Path(tmp_name)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", mn.display)
    log_path = config.logs / f"convert-{safe}.log"
    try:
        started = time.monotonic()
        log(f"converting {model.path} ({', '.join(model.architectures)}) to {outtype}")
        run_converter(converter, model, tmp, outtype, log_path, log)
        info = read_gguf_info(tmp)  # refuses a truncated or foreign file before it enters the store
        log(f"converted in {time.monotonic() - started:.1f}s: {info.architecture}, {info.file_type}")
        return create_model(store, mn, Modelfile(from_=str(tmp)), allow_paths=True, progress=_status(log))
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _status(log: Log) -> Callable[[dict[str, Any]], None]:
    return lambda event: log(str(event.get("status", "")))
