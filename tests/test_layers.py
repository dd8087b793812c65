"""The shape of the imports: layers point down, no import cycles, config is a leaf, aiohttp's web objects stay
in server/ and cli/.

The graph is grimp's (the engine of import-linter): every import, function-local ones included, except those
under ``if TYPE_CHECKING:`` (they never run). The layer order is :data:`LAYERS`, written once, here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grimp
import pytest

import enginehouse

PKG = "enginehouse"
SRC = Path(enginehouse.__file__).parent

#: The config side: imports nothing of the project but errors.
CONFIG = (
    "config", "config_file", "config_names", "config_errors", "config_values", "config_cache",
    "config_routers", "config_auto_router", "config_auto_examples",
)  # fmt: skip
#: Top first; a module may import from its own layer's members only where the layer says so (``independent``
#: False) and from any layer below it. Every module and package directly under enginehouse is in one layer.
LAYERS: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("__main__",), True),  # ``python -m enginehouse``
    (("cli",), True),  # commands: start the server, bench, manage models and engines
    (
        ("server", "loadgen", "console"),
        True,
    ),  # the HTTP gateway (doors, routes); the load generator behind `bench`
    (("routing",), True),  # which model answers: routers, plans, failover, pools, the router's embedder
    (("metrics",), True),  # Prometheus families (it reads the scheduler and engines, typed only)
    (("sched", "catalog"), True),  # loaded runners, memory, keep_alive | names -> records, upstream discovery
    (("engines",), True),  # one module per engine, the factory, installs, the llama-server memory model
    # blobs+manifests; subprocesses; the machine; child output; the response cache; service units; logs
    (("store", "process", "hardware", "child_output", "cache", "service_units", "runner_logs"), True),
    (("api",), True),  # each door's wire types and converters, the model's prompt (templates, tools)
    (("canonical", "wire", "http_client"), True),  # calls and events; SSE/NDJSON framing; the HTTP client
    (CONFIG, False),  # settings, enginehouse.toml and everything it needs to check itself
    (("errors", "redact"), False),  # the exception tree and what a client may read of a message
)

#: Known exceptions, each with its reason; the test fails on a stale one. None today.
PENDING_SPINE: frozenset[tuple[str, str]] = frozenset()
#: Where aiohttp's web objects (requests, responses, the app) may be used.
WEB_ALLOWED = ("__main__", "server", "cli")
_PENDING_IMPORTS = {p for p in PENDING_SPINE if p[1].startswith(PKG + ".")}
_PENDING_WEB = PENDING_SPINE - _PENDING_IMPORTS


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    g = grimp.build_graph(PKG, exclude_type_checking_imports=True, cache_dir=None)
    for importer, imported in _PENDING_IMPORTS:
        if g.direct_import_exists(importer=importer, imported=imported):
            g.remove_import(importer=importer, imported=imported)
    return g


def _top(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def _cycles(g: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(g.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(g.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(g.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_top_level_module_has_a_layer(graph: grimp.ImportGraph) -> None:
    placed = [name for names, _ in LAYERS for name in names]
    assert len(placed) == len(set(placed)), "a name is in two layers"
    tops = {_top(m) for m in graph.modules if m.startswith(PKG + ".")}
    assert tops - set(placed) == set(), "add these to LAYERS (tests/test_layers.py)"
    assert set(placed) - tops == set(), "LAYERS names modules that do not exist"


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    cycles = [c for c in _cycles(graph) if all(m.startswith(PKG) for m in c)]
    assert not cycles, (
        "import cycles (function-local imports count, TYPE_CHECKING ones do not):\n"
        + "\n".join(" <-> ".join(c) for c in cycles)
    )


def test_layers_point_down(graph: grimp.ImportGraph) -> None:
    layers = [grimp.Layer(*names, independent=independent) for names, independent in LAYERS]
    illegal = graph.find_illegal_dependencies_for_layers(layers=layers, containers={PKG})
    found = sorted(
        " -> ".join([min(route.heads), *route.middle, min(route.tails)])
        for dep in illegal
        for route in dep.routes
    )
    assert not found, "imports of a higher layer or of an independent sibling:\n" + "\n".join(found)


def test_config_is_a_leaf(graph: grimp.ImportGraph) -> None:
    """Config imports only itself and errors; errors only redact; redact nothing of the project."""
    allowed = {f"{PKG}.{name}" for name in (*CONFIG, "errors")}
    rules = {f"{PKG}.{name}": allowed for name in CONFIG}
    rules |= {f"{PKG}.errors": {f"{PKG}.redact"}, f"{PKG}.redact": set()}
    found = sorted(
        f"{module} -> {imported}"
        for module, ok in rules.items()
        for imported in graph.find_modules_directly_imported_by(module)
        if imported.startswith(PKG) and imported not in ok | {module}
    )
    assert not found, "config imports the project:\n" + "\n".join(found)


_WEB_TEXT = re.compile(r"\baiohttp\.web\b")


def _uses_web(path: Path) -> bool:
    """``from aiohttp import web``, ``from aiohttp.web import ...``, ``import aiohttp.web`` or ``aiohttp.web``
    written out, anywhere in the file (type-only uses included: web objects have no place below server/)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (
            (node.module or "").startswith("aiohttp.web")
            or (node.module == "aiohttp" and any(a.name == "web" for a in node.names))
        ):
            return True
        if isinstance(node, ast.Import) and any(a.name.startswith("aiohttp.web") for a in node.names):
            return True
    return bool(_WEB_TEXT.search(path.read_text(encoding="utf-8")))


def _web_users() -> set[tuple[str, str]]:
    out = set()
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if _top(module) not in WEB_ALLOWED and _uses_web(path):
            out.add((module, "aiohttp.web"))
    return out


def test_no_aiohttp_web_below_server() -> None:
    assert _web_users() - _PENDING_WEB == set(), (
        "aiohttp.web below server/: take plain data, return plain data"
    )


def test_pending_spine_is_still_pending() -> None:
    """An exception that no longer happens is removed from PENDING_SPINE, so it cannot come back unseen."""
    g = grimp.build_graph(PKG, exclude_type_checking_imports=True, cache_dir=None)
    stale = {p for p in _PENDING_IMPORTS if not g.direct_import_exists(importer=p[0], imported=p[1])}
    stale |= _PENDING_WEB - _web_users()
    assert not stale, f"no longer needed, delete from PENDING_SPINE: {sorted(stale)}"
