"""Finding and building llama-server, against a local package index and fake tools (no network, no
compiler, no real llama-server)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from enginehouse.config import Config
from enginehouse.engines import llama_install as li
from enginehouse.errors import EngineBuildFailed, EngineNotInstalled

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
PREFIX = f"llama_cpp_python-{li.SDIST_VERSION}/vendor/llama.cpp/"
FAKE_SDIST = b"not the pinned sdist, just some bytes " * 1000


# -- a tiny package index ---------------------------------------------------------------------------


@dataclass
class Index:
    """What the local index serves; tests change it before calling the code under test."""

    port: int = 0
    files: list[dict[str, Any]] | None = None  # None: the project page is a 404
    body: bytes | None = None  # raw project page, instead of ``files``
    blobs: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Accept)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/simple"

    def file_url(self, name: str = "x.tar.gz") -> str:
        return f"http://127.0.0.1:{self.port}/files/{name}"

    def serve_sdist(self, data: bytes = FAKE_SDIST, url: str | None = None) -> None:
        self.blobs["/files/x.tar.gz"] = data
        self.files = [
            {"filename": "llama_cpp_python-0.0.1.tar.gz", "url": self.file_url("old.tar.gz"), "hashes": {}},
            {
                "filename": li.SDIST_FILENAME,
                "url": url or self.file_url(),
                "hashes": {"sha256": hashlib.sha256(data).hexdigest()},
            },
        ]


def make_handler(index: Index) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            accept = self.headers.get("Accept", "")
            index.requests.append((self.path, accept))
            if self.path == f"/simple/{li.SDIST_PACKAGE}/":
                if JSON_TYPE not in accept:
                    self.send(200, b"<html><body>PEP 503 page</body></html>", "text/html")
                elif index.body is not None:
                    self.send(200, index.body, JSON_TYPE)
                elif index.files is None:
                    self.send(404, b"not found", "text/plain")
                else:
                    page = {"meta": {"api-version": "1.1"}, "name": li.SDIST_PACKAGE, "files": index.files}
                    self.send(200, json.dumps(page).encode(), JSON_TYPE)
            elif self.path in index.blobs:
                self.send(200, index.blobs[self.path], "application/octet-stream")
            else:
                self.send(404, b"not found", "text/plain")

    return Handler


@pytest.fixture(scope="module")
def _server() -> Iterator[tuple[ThreadingHTTPServer, Index]]:
    index = Index()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(index))
    index.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, index
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def index(_server: tuple[ThreadingHTTPServer, Index]) -> Index:
    idx = _server[1]
    idx.files, idx.body = None, None
    idx.blobs.clear()
    idx.requests.clear()
    return idx


@pytest.fixture
def config(tmp_path: Path, index: Index) -> Config:
    return Config.from_env({}, home=tmp_path / "home", pypi_index=index.url)


def cache_files(config: Config) -> list[str]:
    if not config.cache.exists():
        return []
    return sorted(str(p.relative_to(config.cache)) for p in config.cache.rglob("*") if p.is_file())


# -- fetch_sdist ------------------------------------------------------------------------------------


def test_fetch_refuses_wrong_sha256_and_leaves_nothing(config: Config, index: Index) -> None:
    index.serve_sdist()
    seen: list[tuple[str, float, float | None]] = []
    with pytest.raises(EngineBuildFailed) as info:
        li.fetch_sdist(config, lambda *a: seen.append(a))
    msg = info.value.message
    assert li.SDIST_FILENAME in msg and li.SDIST_SHA256 in msg
    assert hashlib.sha256(FAKE_SDIST).hexdigest() in msg
    assert "refusing" in msg
    assert cache_files(config) == []  # no .part, no final file
    assert not (config.cache / "sources" / li.SDIST_FILENAME).exists()
    # the index was asked for the JSON form, then the file named in it was fetched
    assert index.requests[0] == (f"/simple/{li.SDIST_PACKAGE}/", JSON_TYPE)
    assert index.requests[1][0] == "/files/x.tar.gz"
    assert seen and seen[-1] == ("download", len(FAKE_SDIST), len(FAKE_SDIST))


def test_fetch_redownloads_a_corrupt_cached_file(config: Config, index: Index) -> None:
    index.serve_sdist()
    dest = config.cache / "sources" / li.SDIST_FILENAME
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"corrupt")
    with pytest.raises(EngineBuildFailed):
        li.fetch_sdist(config)
    assert any(path == "/files/x.tar.gz" for path, _ in index.requests)  # not trusted as is
    assert not dest.with_suffix(".part").exists()


def test_index_without_the_file(config: Config, index: Index) -> None:
    index.files = [{"filename": "llama_cpp_python-0.0.1.tar.gz", "url": index.file_url(), "hashes": {}}]
    with pytest.raises(EngineBuildFailed) as info:
        li.fetch_sdist(config)
    assert li.SDIST_FILENAME in info.value.message
    assert "not listed" in info.value.message
    assert cache_files(config) == []


def test_index_with_no_files(config: Config, index: Index) -> None:
    index.files = []
    with pytest.raises(EngineBuildFailed, match="not listed"):
        li.fetch_sdist(config)


@pytest.mark.parametrize(
    "body",
    [b"<html>not json</html>", b'{"name": "llama-cpp-python"}', b"[1, 2"],
    ids=["html", "no-files-key", "truncated"],
)
def test_index_with_a_bad_page(config: Config, index: Index, body: bytes) -> None:
    index.body = body
    with pytest.raises(EngineBuildFailed, match="could not read the package index"):
        li.fetch_sdist(config)
    assert cache_files(config) == []


def test_index_404(config: Config, index: Index) -> None:
    with pytest.raises(EngineBuildFailed) as info:
        li.fetch_sdist(config)
    assert "could not read the package index" in info.value.message
    assert f"{index.url}/{li.SDIST_PACKAGE}/" in info.value.message


def test_unreachable_index(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a free port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = Config.from_env({}, home=tmp_path, pypi_index=f"http://127.0.0.1:{port}/simple")
    with pytest.raises(EngineBuildFailed) as info:
        li.fetch_sdist(config)
    assert f"127.0.0.1:{port}" in info.value.message
    assert cache_files(config) == []


def test_file_url_404(config: Config, index: Index) -> None:
    index.serve_sdist()
    index.files[1]["url"] = index.file_url("missing.tar.gz")  # type: ignore[index]
    with pytest.raises(EngineBuildFailed, match="could not download"):
        li.fetch_sdist(config)
    assert cache_files(config) == []


def test_index_url_trailing_slash(tmp_path: Path, index: Index) -> None:
    index.serve_sdist()
    config = Config.from_env({}, home=tmp_path, pypi_index=index.url + "/")
    with pytest.raises(EngineBuildFailed, match="refusing"):
        li.fetch_sdist(config)
    assert index.requests[0][0] == f"/simple/{li.SDIST_PACKAGE}/"


def test_relative_file_url_is_resolved_against_the_index(config: Config, index: Index) -> None:
    index.serve_sdist(url="../../files/x.tar.gz")
    with pytest.raises(EngineBuildFailed) as info:
        li.fetch_sdist(config)
    assert any(path == "/files/x.tar.gz" for path, _ in index.requests)
    assert "refusing" in info.value.message  # got as far as the hash check


# -- extract_source ---------------------------------------------------------------------------------


def add_file(tar: tarfile.TarFile, name: str, data: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def add_link(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    tar.addfile(info)


def make_sdist(path: Path, extra: list[tuple[str, str, str]] = ()) -> Path:  # type: ignore[assignment]
    """A gzip tarball shaped like the llama-cpp-python sdist; ``extra``: (kind, name, data/target)."""
    with tarfile.open(path, "w:gz") as tar:
        add_file(tar, f"llama_cpp_python-{li.SDIST_VERSION}/setup.py", b"print('outside vendor')")
        add_file(tar, f"llama_cpp_python-{li.SDIST_VERSION}/vendor/other/keep-out.txt")
        add_file(tar, PREFIX + "CMakeLists.txt", b"cmake_minimum_required(VERSION 3.14)\n")
        add_file(tar, PREFIX + "tools/server/server.cpp", b"int main() { return 0; }\n")
        add_file(tar, "unrelated/top.txt")
        for kind, name, value in extra:
            if kind == "file":
                add_file(tar, name, value.encode())
            else:
                add_link(tar, name, value)
    return path


def test_extract_only_the_vendored_tree(tmp_path: Path, config: Config) -> None:
    sdist = make_sdist(tmp_path / li.SDIST_FILENAME)
    seen: list[tuple[str, float, float | None]] = []
    source = li.extract_source(config, sdist, lambda *a: seen.append(a))
    root = config.cache / "src" / f"llama_cpp_python-{li.SDIST_VERSION}"
    assert source == root / "vendor" / "llama.cpp"
    assert (source / "CMakeLists.txt").read_bytes().startswith(b"cmake_minimum_required")
    assert (source / "tools" / "server" / "server.cpp").is_file()
    assert (root / ".extracted").read_text() == li.LLAMA_CPP_COMMIT
    assert cache_files(config) == [
        f"src/llama_cpp_python-{li.SDIST_VERSION}/.extracted",
        f"src/llama_cpp_python-{li.SDIST_VERSION}/vendor/llama.cpp/CMakeLists.txt",
        f"src/llama_cpp_python-{li.SDIST_VERSION}/vendor/llama.cpp/tools/server/server.cpp",
    ]
    assert seen == [("extract", 1, 2), ("extract", 2, 2)]
    # done once: a second call does not open the sdist again
    sdist.unlink()
    assert li.extract_source(config, sdist) == source


ESCAPES = [
    ("file", PREFIX + "../../../../escaped.txt", "pwned"),
    ("link", PREFIX + "abs-link", "/etc/passwd"),
    ("link", PREFIX + "up-link", "../../../../../.."),
    ("file", "/tmp/escaped-absolute.txt", "pwned"),
    ("file", f"../llama_cpp_python-{li.SDIST_VERSION}/vendor/llama.cpp/../../../../escaped.txt", "pwned"),
]


@pytest.mark.parametrize("member", ESCAPES, ids=["dotdot", "abs-symlink", "up-symlink", "abs", "lead-dotdot"])
def test_extract_refuses_or_skips_escaping_members(
    tmp_path: Path, config: Config, member: tuple[str, str, str]
) -> None:
    sdist = make_sdist(tmp_path / li.SDIST_FILENAME, [member])
    before = set(os.listdir(tmp_path))
    try:
        li.extract_source(config, sdist)
    except (tarfile.FilterError, EngineBuildFailed):
        refused = True
    else:
        refused = False
    src = config.cache / "src"
    for p in [config.cache, *config.cache.rglob("*")]:
        assert p == src or p.is_relative_to(src) or p in src.parents, p
        assert not p.is_symlink(), p
    assert not (config.cache / "escaped.txt").exists()
    assert not (config.home / "escaped.txt").exists()
    assert set(os.listdir(tmp_path)) - before <= {"home"}
    if refused:  # an interrupted extraction is not marked finished
        assert not (src / f"llama_cpp_python-{li.SDIST_VERSION}" / ".extracted").exists()


def test_extract_dotdot_back_out_of_vendor(tmp_path: Path, config: Config) -> None:
    member = ("file", PREFIX + "../../outside-vendor.txt", "sneaky")
    sdist = make_sdist(tmp_path / li.SDIST_FILENAME, [member])
    with contextlib.suppress(tarfile.FilterError, EngineBuildFailed):
        li.extract_source(config, sdist)
    root = config.cache / "src" / f"llama_cpp_python-{li.SDIST_VERSION}"
    assert not (root / "outside-vendor.txt").exists()


# -- find / require ---------------------------------------------------------------------------------


def fake_exe(path: Path, body: str = 'echo "version: 0 (abc)"') -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def record_build(config: Config, native: bool = False, version: str = "0 (abc)", rpc: bool = True) -> Path:
    target = li.installed_dir(config, native)
    binary = fake_exe(target / "llama-server")
    if rpc:
        fake_exe(target / li.RPC_SERVER_NAME, "exit 0")
    (target / "build.json").write_text(json.dumps({"version": version, "native": native}))
    return binary


@pytest.fixture
def empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH holds only an empty directory: no llama-server, no cmake."""
    bindir = tmp_path / "emptybin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", str(bindir))
    return bindir


def test_config_path_not_executable(tmp_path: Path, empty_path: Path) -> None:
    plain = tmp_path / "llama-server"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    for path in (plain, tmp_path / "missing", tmp_path):
        config = Config.from_env({}, home=tmp_path / "home", llama_server=path)
        with pytest.raises(EngineNotInstalled) as info:
            li.find_llama_server(config)
        assert str(path) in info.value.message
        assert info.value.status == 503


def test_config_path_wins(tmp_path: Path, empty_path: Path) -> None:
    exe = fake_exe(tmp_path / "custom" / "llama-server")
    config = Config.from_env({}, home=tmp_path / "home", llama_server=exe)
    record_build(config)
    fake_exe(empty_path / "llama-server")
    found = li.find_llama_server(config)
    assert found is not None
    assert (found.path, found.source, found.version, found.build) == (exe, "config", "0 (abc)", None)


def test_recorded_build_before_path(tmp_path: Path, empty_path: Path) -> None:
    config = Config.from_env({}, home=tmp_path / "home")
    binary = record_build(config, version="0 (recorded)")
    fake_exe(empty_path / "llama-server")
    found = li.find_llama_server(config)
    assert found is not None
    assert (
        found.path
        == binary
        == config.engines / "llama-server" / f"{li.SDIST_VERSION}-cpu-rpc" / "llama-server"
    )
    assert found.source == "built"
    assert found.version == "0 (recorded)"  # from build.json, the binary is not run
    assert found.build == {"version": "0 (recorded)", "native": False}


def test_recorded_build_under_engines_dir(tmp_path: Path, empty_path: Path) -> None:
    config = Config.from_env({}, home=tmp_path / "home", engines_dir=tmp_path / "shared-engines")
    binary = record_build(config, native=True)
    assert binary.is_relative_to(tmp_path / "shared-engines")
    found = li.find_llama_server(config)  # native_build is off, yet a native build is used
    assert found is not None and found.path == binary and found.source == "built"


def test_one_build_serves_every_home(tmp_path: Path, empty_path: Path) -> None:
    shared = tmp_path / "cache"
    first = Config.from_env({}, home=tmp_path / "one", cache_dir=shared)
    binary = record_build(first)
    assert binary.is_relative_to(shared / "engines")  # built into the machine's cache, not the home
    second = Config.from_env({}, home=tmp_path / "two", cache_dir=shared)
    found = li.find_llama_server(second)
    assert found is not None and found.path == binary and found.source == "built"
    assert li.find_rpc_server(second) is not None
    assert li.find_llama_server(second.with_(cache_dir=tmp_path / "elsewhere")) is None


def test_a_build_in_the_old_place_under_home_is_still_found(tmp_path: Path, empty_path: Path) -> None:
    home = tmp_path / "home"
    config = Config.from_env({}, home=home, cache_dir=tmp_path / "cache")
    old = record_build(config.with_(engines_dir=home / "engines"))  # where builds went before
    found = li.find_llama_server(config)
    assert found is not None and found.path == old
    assert li.find_rpc_server(config) is not None
    assert not config.engines.exists()  # found, not rebuilt or copied


def test_recorded_build_prefers_configured_flavour(tmp_path: Path, empty_path: Path) -> None:
    config = Config.from_env({}, home=tmp_path / "home", native_build=True)
    record_build(config, native=False)
    native = record_build(config, native=True)
    found = li.find_llama_server(config)
    assert found is not None and found.path == native


@pytest.mark.parametrize("broken", ["no-record", "not-executable"])
def test_incomplete_build_falls_through_to_path(tmp_path: Path, empty_path: Path, broken: str) -> None:
    config = Config.from_env({}, home=tmp_path / "home")
    binary = record_build(config)
    if broken == "no-record":
        (binary.parent / "build.json").unlink()
    else:
        binary.chmod(0o644)
    on_path = fake_exe(empty_path / "llama-server", 'echo "version: 7 (onpath)"')
    found = li.find_llama_server(config)
    assert found is not None
    assert (found.path, found.source, found.version) == (on_path, "path", "7 (onpath)")


def test_nothing_found(tmp_path: Path, empty_path: Path) -> None:
    config = Config.from_env({}, home=tmp_path / "home")
    assert li.find_llama_server(config) is None
    with pytest.raises(EngineNotInstalled) as info:
        li.require_llama_server(config)
    assert "enginehouse engines install llama-server" in info.value.message
    assert "ENGINEHOUSE_LLAMA_SERVER" in info.value.message
    assert info.value.status == 503


def test_require_returns_what_find_finds(tmp_path: Path, empty_path: Path) -> None:
    exe = fake_exe(empty_path / "llama-server")
    found = li.require_llama_server(Config.from_env({}, home=tmp_path))
    assert found.path == exe and found.source == "path"


@pytest.mark.parametrize(
    ("body", "version"),
    [
        ('echo "version: 0 (abc)"', "0 (abc)"),
        ('echo "load_backend: x" >&2; echo "version: 5 (def)" >&2', "5 (def)"),
        ('echo "hello"', "unknown"),
        ("exit 3", "unknown"),
    ],
)
def test_binary_version(tmp_path: Path, body: str, version: str) -> None:
    assert li.binary_version(fake_exe(tmp_path / "llama-server", body)) == version


def test_binary_version_of_unrunnable_file(tmp_path: Path) -> None:
    assert li.binary_version(tmp_path / "missing").startswith("unknown (")


def test_install_reuses_a_recorded_build_offline(tmp_path: Path, empty_path: Path) -> None:
    config = Config.from_env({}, home=tmp_path / "home", pypi_index="http://127.0.0.1:9/simple")
    binary = record_build(config)
    found = li.install(config)
    assert found.path == binary and found.source == "built" and found.version == "0 (abc)"
    with pytest.raises(EngineBuildFailed):  # force: it goes to the (unreachable) index
        li.install(config, force=True)


def test_build_ids_and_dirs(tmp_path: Path) -> None:
    config = Config.from_env({}, home=tmp_path)
    assert li.build_id(False) == f"{li.SDIST_VERSION}-cpu-rpc"
    assert li.build_id(True) == f"{li.SDIST_VERSION}-cpu-rpc-native"
    assert li.installed_dir(config) == config.cache_dir / "engines" / "llama-server" / li.build_id(False)
    assert li.installed_dir(config.with_(native_build=True)).name == li.build_id(True)


# -- build ------------------------------------------------------------------------------------------

FAILING_CMAKE = """\
echo "$@" >> "{argv_log}"
echo "-- The C compiler identification is GNU"
echo "[ 10%] Building C object ggml/src/ggml.c.o"
echo "[ 50%] Building CXX object tools/server/server.cpp.o"
echo "server.cpp:1:1: error: something went wrong"
exit 1
"""

WORKING_CMAKE = """\
echo "$@" >> "{argv_log}"
echo "[ 25%] Building C object a.o"
echo "[100%] Linking CXX executable bin/llama-server"
exit 0
"""


def fake_cmake(bindir: Path, script: str, argv_log: Path) -> None:
    fake_exe(bindir / "cmake", script.format(argv_log=argv_log))


def test_build_failure_reports_log_tail_and_progress(tmp_path: Path, empty_path: Path) -> None:
    argv_log = tmp_path / "argv.txt"
    fake_cmake(empty_path, FAILING_CMAKE, argv_log)
    config = Config.from_env({}, home=tmp_path / "home")
    seen: list[tuple[str, float, float | None]] = []
    with pytest.raises(EngineBuildFailed) as info:
        li.build(config, tmp_path / "src", native=False, progress=lambda *a: seen.append(a))
    msg = info.value.message
    assert "configure failed" in msg
    assert "error: something went wrong" in msg
    assert "[ 50%] Building CXX object" in msg
    log_path = config.cache / "build" / f"llama.cpp-{li.build_id(False)}.log"
    assert str(log_path) in msg and log_path.is_file()
    assert ("configure", 50.0, 100) in seen
    assert ("configure", 10.0, 100) in seen
    assert not any(stage == "build" for stage, *_ in seen)  # stopped after the failed step
    argv = argv_log.read_text().splitlines()
    assert len(argv) == 1
    assert "-DGGML_NATIVE=OFF" in argv[0] and "-DLLAMA_USE_PREBUILT_UI=OFF" in argv[0]
    assert f"-S {tmp_path / 'src'}" in argv[0]


def test_build_log_tail_is_bounded(tmp_path: Path, empty_path: Path) -> None:
    script = 'i=1\nwhile [ $i -le 200 ]; do echo "line $i"; i=$((i + 1)); done\nexit 2'
    fake_exe(empty_path / "cmake", script)
    config = Config.from_env({}, home=tmp_path / "home")
    with pytest.raises(EngineBuildFailed) as info:
        li.build(config, tmp_path / "src", native=True)
    msg = info.value.message
    assert "line 200" in msg and "line 176" in msg
    assert "line 150\n" not in msg


def test_build_success_runs_configure_then_build(tmp_path: Path, empty_path: Path) -> None:
    argv_log = tmp_path / "argv.txt"
    fake_cmake(empty_path, WORKING_CMAKE, argv_log)
    config = Config.from_env({}, home=tmp_path / "home")
    seen: list[tuple[str, float, float | None]] = []
    out = li.build(config, tmp_path / "src", native=True, progress=lambda *a: seen.append(a), jobs=3)
    assert out == config.cache / "build" / f"llama.cpp-{li.build_id(True)}" / "bin" / "llama-server"
    configure, build = argv_log.read_text().splitlines()
    assert configure.startswith("-S ") and "-DGGML_NATIVE=ON" in configure
    assert "-DGGML_RPC=ON" in configure
    assert build.startswith("--build ") and build.endswith("--target llama-server ggml-rpc-server -j 3")
    assert ("configure", 100, 100) in seen and ("build", 100, 100) in seen
    assert ("build", 25.0, 100) in seen


def test_build_without_cmake(tmp_path: Path, empty_path: Path) -> None:
    config = Config.from_env({}, home=tmp_path / "home")
    with pytest.raises(EngineBuildFailed, match="cmake is not installed"):
        li.build(config, tmp_path / "src", native=False)


# -- RPC: rpc-server beside llama-server, and builds from before GGML_RPC=ON ---------------------------


def test_a_build_from_before_rpc_is_not_used(tmp_path: Path, empty_path: Path) -> None:
    """0.3.36-cpu (no GGML_RPC) has no --rpc and no rpc-server: not found, so setup rebuilds once."""
    config = Config.from_env({}, home=tmp_path / "home")
    old = config.engines / "llama-server" / f"{li.SDIST_VERSION}-cpu"
    fake_exe(old / "llama-server")
    (old / "build.json").write_text(json.dumps({"version": "0 (old)"}))
    assert li.find_llama_server(config) is None
    assert li.find_rpc_server(config) is None


def test_find_rpc_server_order(tmp_path: Path, empty_path: Path) -> None:
    config = Config.from_env({}, home=tmp_path / "home")
    with pytest.raises(EngineNotInstalled) as info:
        li.require_rpc_server(config)
    assert "enginehouse engines install llama-server" in info.value.message
    on_path = fake_exe(empty_path / "ggml-rpc-server")  # upstream's name, on PATH
    assert li.find_rpc_server(config) == li.RpcServerBinary(on_path, "path")
    record_build(config)
    found = li.find_rpc_server(config)
    assert found is not None and found.source == "built"
    assert found.path == li.installed_dir(config) / li.RPC_SERVER_NAME
    custom = fake_exe(tmp_path / "custom" / "llama-server")
    beside = fake_exe(tmp_path / "custom" / "rpc-server")
    assert li.require_rpc_server(config.with_(llama_server=custom)) == li.RpcServerBinary(beside, "config")


def test_install_copies_both_binaries_and_a_build_without_rpc_server_is_redone(
    tmp_path: Path, empty_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = Config.from_env({}, home=tmp_path / "home")
    record_build(config, rpc=False)  # e.g. interrupted between the copies
    bindir = tmp_path / "build" / "bin"
    calls: list[bool] = []

    def fake_build(config: Config, source: Path, *, native: bool, progress=None, jobs=None) -> Path:  # type: ignore[no-untyped-def]
        calls.append(native)
        fake_exe(bindir / "ggml-rpc-server", "exit 0")
        return fake_exe(bindir / "llama-server", 'echo "version: 9 (new)"')

    monkeypatch.setattr(li, "fetch_sdist", lambda config, progress=None: tmp_path / "sdist.tar.gz")
    monkeypatch.setattr(li, "extract_source", lambda config, sdist, progress=None: tmp_path / "src")
    monkeypatch.setattr(li, "build", fake_build)
    built = li.install(config)
    assert calls == [False] and built.version == "9 (new)"
    target = li.installed_dir(config)
    assert (target / "rpc-server").read_text() == (bindir / "ggml-rpc-server").read_text()
    facts = json.loads((target / "build.json").read_text())
    assert facts["rpc_server"] == "rpc-server" and "-DGGML_RPC=ON" in facts["cmake_flags"]
    li.install(config)  # complete now: reused
    assert calls == [False]
