"""Find or build llama.cpp's ``llama-server`` (and its ``rpc-server``).

No package registry ships a ``llama-server`` binary for every system, but PyPI does ship llama.cpp's
source: the ``llama-cpp-python`` sdist vendors it under ``vendor/llama.cpp``. So the fallback that always
works is: fetch that pinned sdist from the package index, verify its sha256, extract only the vendored
llama.cpp, and build the ``llama-server`` target with cmake. The build directory is kept, so a rebuild
after an interrupted build, or for a new enginehouse version with the same pin, is incremental.

The build has llama.cpp's RPC backend on (``-DGGML_RPC=ON``): llama-server then takes ``--rpc host:port,...``
and the same build makes ``rpc-server`` (upstream's ``ggml-rpc-server`` target), the worker that
``enginehouse rpc-worker`` runs on other hosts so one model can be split across machines.

Order of preference in :func:`find_llama_server`: the path named in config, a build recorded under the
engines directory, a ``llama-server`` on PATH. :func:`find_rpc_server` looks in the same places.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin

from enginehouse import http_client
from enginehouse.child_output import output_lines, wait_exit
from enginehouse.config import Config
from enginehouse.errors import EngineBuildFailed, EngineNotInstalled

# The pin: one sdist, its digest, and the llama.cpp commit it vendors.
SDIST_PACKAGE = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
SDIST_FILENAME = f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
LLAMA_CPP_COMMIT = "0c1e570"

# LLAMA_USE_PREBUILT_UI=OFF: otherwise the build downloads its web UI and fails offline.
BASE_CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    f"-DLLAMA_BUILD_COMMIT={LLAMA_CPP_COMMIT}",
    "-DLLAMA_BUILD_NUMBER=0",
    "-DGGML_RPC=ON",  # llama-server's --rpc, and the rpc-server target (see build_id)
)

LLAMA_SERVER_TARGET = "llama-server"
RPC_SERVER_TARGET = "ggml-rpc-server"  # tools/rpc in the vendored tree; built only with GGML_RPC=ON
RPC_SERVER_NAME = "rpc-server"  # what we install it as, beside llama-server
RPC_SERVER_NAMES = (RPC_SERVER_NAME, RPC_SERVER_TARGET)  # looked for beside a configured binary, on PATH

# stage, completed, total (None when unknown)
Progress = Callable[[str, float, float | None], None]


@dataclass(frozen=True)
class LlamaServerBinary:
    path: Path
    source: str  # "config", "built", "path"
    version: str  # what `llama-server --version` says, or the recorded build version
    build: dict | None = None  # the recorded build facts, for builds we made


@dataclass(frozen=True)
class RpcServerBinary:
    path: Path
    source: str  # "config" (beside ENGINEHOUSE_LLAMA_SERVER), "built", "path"
    build: dict | None = None


def _noop(stage: str, completed: float, total: float | None) -> None:
    pass


def build_id(native: bool) -> str:
    """The flavour's directory name. "-rpc" marks builds made with GGML_RPC=ON: builds from before it
    (``0.3.36-cpu``) have no ``--rpc`` and no rpc-server, so they are not picked up: one rebuild follows."""
    return f"{SDIST_VERSION}-cpu-rpc" + ("-native" if native else "")


def installed_dir(config: Config, native: bool | None = None) -> Path:
    """Where this flavour is built (the shared engines folder)."""
    return config.engines / "llama-server" / build_id(config.native_build if native is None else native)


def _recorded_builds(config: Config) -> Iterator[Path]:
    """Build folders to look in, best first: each flavour in the shared engines folder, then in
    HOME/engines (builds from before the shared cache)."""
    for root in config.engine_dirs:
        for native in dict.fromkeys((config.native_build, False, True)):
            yield root / "llama-server" / build_id(native)


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def binary_version(path: Path) -> str:
    """``llama-server --version`` prints e.g. ``version: 0 (0c1e570)``; return that line."""
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc.__class__.__name__})"
    for line in (out.stdout + out.stderr).splitlines():
        if line.startswith("version:"):
            return line.removeprefix("version:").strip()
    return "unknown"


def find_llama_server(config: Config) -> LlamaServerBinary | None:
    """The llama-server to use, or None when there is none yet (then :func:`install` builds one)."""
    if config.llama_server is not None:
        if not _is_executable(config.llama_server):
            raise EngineNotInstalled(
                f"ENGINEHOUSE_LLAMA_SERVER names {config.llama_server}, which is not an executable file"
            )
        return LlamaServerBinary(config.llama_server, "config", binary_version(config.llama_server))
    for folder in _recorded_builds(config):
        record = folder / "build.json"
        binary = record.parent / "llama-server"
        if record.is_file() and _is_executable(binary):
            build = json.loads(record.read_text())
            return LlamaServerBinary(binary, "built", build.get("version", "unknown"), build)
    on_path = shutil.which("llama-server")
    if on_path:
        return LlamaServerBinary(Path(on_path), "path", binary_version(Path(on_path)))
    return None


def find_rpc_server(config: Config) -> RpcServerBinary | None:
    """The rpc-server to use, or None. Same order as :func:`find_llama_server`: beside the configured
    llama-server (one build makes both), then a recorded build of ours, then PATH."""
    if config.llama_server is not None:
        for name in RPC_SERVER_NAMES:
            beside = config.llama_server.parent / name
            if _is_executable(beside):
                return RpcServerBinary(beside, "config")
    for folder in _recorded_builds(config):
        record = folder / "build.json"
        binary = record.parent / RPC_SERVER_NAME
        if record.is_file() and _is_executable(binary):
            return RpcServerBinary(binary, "built", json.loads(record.read_text()))
    for name in RPC_SERVER_NAMES:
        if on_path := shutil.which(name):
            return RpcServerBinary(Path(on_path), "path")
    return None


def require_rpc_server(config: Config) -> RpcServerBinary:
    found = find_rpc_server(config)
    if found is None:
        raise EngineNotInstalled(
            "rpc-server is not installed: run `enginehouse engines install llama-server` (builds "
            "llama-server and rpc-server from source, about 7 minutes on 2 cores), or put an rpc-server "
            "built with -DGGML_RPC=ON beside ENGINEHOUSE_LLAMA_SERVER or on PATH"
        )
    return found


def supports_rpc(binary: Path) -> bool:
    """Whether this llama-server was built with GGML_RPC=ON. Every build lists ``--rpc`` in its help, so
    ask it to use a worker on a closed loopback port: an RPC build tries and fails to connect, any other
    says "RPC not supported in this build"."""
    with socket.socket() as s:  # a port nobody listens on: bound, never listened
        s.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{s.getsockname()[1]}"
        try:
            out = subprocess.run(
                [str(binary), "--rpc", endpoint, "--version"],
                capture_output=True,
                text=True,
                timeout=30,
                env={**os.environ, "GGML_NO_BACKTRACE": "1"},
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
    return f"Failed to connect to {endpoint}" in out.stdout + out.stderr


def supports_shared_kv(binary: Path) -> bool:
    """Whether this llama-server caps each slot of a unified KV pool (``--kv-unified-per-slot``, which the
    pinned build has and upstream builds may lack). Read from its ``--help`` once per binary version."""
    try:
        stat = binary.stat()
    except OSError:
        return False
    return _lists_flag(binary, stat.st_mtime_ns, stat.st_size, "--kv-unified-per-slot")


@lru_cache(maxsize=8)
def _lists_flag(binary: Path, mtime_ns: int, size: int, flag: str) -> bool:  # mtime, size: a rebuild re-reads
    try:
        out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return flag in out.stdout + out.stderr


def require_llama_server(config: Config) -> LlamaServerBinary:
    found = find_llama_server(config)
    if found is None:
        raise EngineNotInstalled(
            "llama-server is not installed: run `enginehouse engines install llama-server` "
            "(builds it from source, about 6 minutes on 2 cores) or set ENGINEHOUSE_LLAMA_SERVER"
        )
    return found


def fetch_sdist(config: Config, progress: Progress = _noop) -> Path:
    """Download the pinned sdist into the cache (once) and verify its sha256."""
    dest = config.cache / "sources" / SDIST_FILENAME
    if dest.is_file() and _sha256(dest) == SDIST_SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = _sdist_url(config.pypi_index)
    tmp = dest.with_suffix(".part")
    digest = hashlib.sha256()
    try:
        with http_client.stream("GET", url, follow_redirects=True, timeout=60) as resp:
            resp.raise_for_status()
            total = float(resp.headers.get("content-length") or 0) or None
            done = 0
            with tmp.open("wb") as fh:
                for chunk in resp.iter_chunks():
                    fh.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    progress("download", done, total)
                fh.flush()
                os.fsync(fh.fileno())
    except http_client.HttpError as exc:
        tmp.unlink(missing_ok=True)
        raise EngineBuildFailed(f"could not download {SDIST_FILENAME} from {url}: {exc}") from exc
    if digest.hexdigest() != SDIST_SHA256:
        tmp.unlink(missing_ok=True)
        raise EngineBuildFailed(
            f"{SDIST_FILENAME} has sha256 {digest.hexdigest()}, expected {SDIST_SHA256}: refusing to build it"
        )
    os.replace(tmp, dest)
    return dest


def _sdist_url(index: str) -> str:
    """Find the sdist's URL through the index's PEP 691 JSON API (works for PyPI and its mirrors)."""
    listing = f"{index.rstrip('/')}/{SDIST_PACKAGE}/"
    try:
        resp = http_client.request(
            "GET",
            listing,
            headers={"Accept": "application/vnd.pypi.simple.v1+json"},
            follow_redirects=True,
            timeout=30,
        )
        resp.raise_for_status()
        files = resp.json()["files"]
    except (http_client.HttpError, ValueError, KeyError, TypeError) as exc:
        raise EngineBuildFailed(f"could not read the package index at {listing}: {exc}") from exc
    for entry in files:
        if entry.get("filename") == SDIST_FILENAME:
            return urljoin(resp.url, entry["url"])  # PEP 691 allows URLs relative to the page
    raise EngineBuildFailed(f"{SDIST_FILENAME} is not listed at {listing}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def extract_source(config: Config, sdist: Path, progress: Progress = _noop) -> Path:
    """Extract only ``vendor/llama.cpp`` from the sdist; a marker file says the extraction finished."""
    root = config.cache / "src" / f"llama_cpp_python-{SDIST_VERSION}"
    source = root / "vendor" / "llama.cpp"
    marker = root / ".extracted"
    if marker.is_file() and (source / "CMakeLists.txt").is_file():
        return source
    prefix = PurePosixPath(f"llama_cpp_python-{SDIST_VERSION}/vendor/llama.cpp")
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            # Only the vendored tree; ".." anywhere is refused outright rather than resolved.
            members = [
                m
                for m in tar.getmembers()
                if PurePosixPath(m.name).is_relative_to(prefix) and ".." not in PurePosixPath(m.name).parts
            ]
            for i, member in enumerate(members, 1):
                # The "data" filter refuses absolute paths, links out of the tree and device files.
                tar.extract(member, root.parent, filter="data")
                progress("extract", i, len(members))
    except (tarfile.TarError, OSError) as exc:
        raise EngineBuildFailed(f"could not extract {sdist.name}: {exc}") from exc
    marker.write_text(LLAMA_CPP_COMMIT)
    return source


_PERCENT = re.compile(r"^\[\s*(\d+)%\]")


def build(
    config: Config, source: Path, *, native: bool, progress: Progress = _noop, jobs: int | None = None
) -> Path:
    """Configure and build the llama-server and rpc-server targets; return the built llama-server (the
    rpc-server is :func:`built_rpc_server` beside it). Logs go to a file."""
    build_dir = config.cache / "build" / f"llama.cpp-{build_id(native)}"
    log_path = config.cache / "build" / f"llama.cpp-{build_id(native)}.log"
    build_dir.mkdir(parents=True, exist_ok=True)
    flags = [*BASE_CMAKE_FLAGS, f"-DGGML_NATIVE={'ON' if native else 'OFF'}"]
    jobs = jobs or os.cpu_count() or 2
    steps = [
        ("configure", ["cmake", "-S", str(source), "-B", str(build_dir), *flags]),
        (
            "build",
            [
                "cmake",
                "--build",
                str(build_dir),
                "--target",
                LLAMA_SERVER_TARGET,
                RPC_SERVER_TARGET,
                "-j",
                str(jobs),
            ],
        ),
    ]
    if shutil.which("cmake") is None:
        raise EngineBuildFailed("cmake is not installed; install cmake and a C++ compiler, then retry")
    with log_path.open("a") as log:
        for stage, argv in steps:
            log.write(f"\n$ {' '.join(argv)}\n")
            log.flush()
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            progress(stage, 0, 100)
            for line in output_lines(proc):  # Ctrl-C stays prompt (see child_output)
                log.write(line)
                if match := _PERCENT.match(line):
                    progress(stage, float(match.group(1)), 100)
            if wait_exit(proc) != 0:
                log.flush()
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
                raise EngineBuildFailed(f"llama-server {stage} failed (log: {log_path}):\n{tail}")
            progress(stage, 100, 100)
    return build_dir / "bin" / LLAMA_SERVER_TARGET


def built_rpc_server(llama_server: Path) -> Path:
    """Where :func:`build` leaves rpc-server: beside the llama-server it returned."""
    return llama_server.parent / RPC_SERVER_TARGET


def install(
    config: Config, *, native: bool | None = None, progress: Progress = _noop, force: bool = False
) -> LlamaServerBinary:
    """Build llama-server and rpc-server from the pinned source unless an equal build is already installed."""
    native = config.native_build if native is None else native
    target = installed_dir(config, native)
    record = target / "build.json"
    complete = _is_executable(target / "llama-server") and _is_executable(target / RPC_SERVER_NAME)
    if record.is_file() and complete and not force:
        facts = json.loads(record.read_text())
        return LlamaServerBinary(target / "llama-server", "built", facts.get("version", "unknown"), facts)
    started = time.monotonic()
    sdist = fetch_sdist(config, progress)
    source = extract_source(config, sdist, progress)
    built = build(config, source, native=native, progress=progress)
    target.mkdir(parents=True, exist_ok=True)
    for source_path, name in ((built_rpc_server(built), RPC_SERVER_NAME), (built, "llama-server")):
        tmp = target / f"{name}.tmp"
        shutil.copy2(source_path, tmp)
        os.replace(tmp, target / name)
    facts = {
        "package": f"{SDIST_PACKAGE}=={SDIST_VERSION}",
        "sdist_sha256": SDIST_SHA256,
        "llama_cpp_commit": LLAMA_CPP_COMMIT,
        "native": native,
        "backend": "cpu",
        "cmake_flags": [*BASE_CMAKE_FLAGS, f"-DGGML_NATIVE={'ON' if native else 'OFF'}"],
        "version": binary_version(target / "llama-server"),
        "rpc_server": RPC_SERVER_NAME,
        "build_seconds": round(time.monotonic() - started, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp_record = target / "build.json.tmp"
    tmp_record.write_text(json.dumps(facts, indent=2))
    os.replace(tmp_record, record)
    return LlamaServerBinary(target / "llama-server", "built", facts["version"], facts)


__all__ = [
    "LlamaServerBinary",
    "RpcServerBinary",
    "find_llama_server",
    "find_rpc_server",
    "install",
    "require_llama_server",
    "require_rpc_server",
    "supports_rpc",
]
