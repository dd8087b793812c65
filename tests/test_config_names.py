"""enginehouse.toml's names must agree: each mistake is refused with file:line: key and the reason."""

from __future__ import annotations

import pytest

from enginehouse.config_file import ConfigFileError, parse_config_text
from enginehouse.config_names import check_references, missing_references

CASES = [
    (
        "alias shadows a model",
        '[models.a]\nsource = "x:1"\n[models.b]\nsource = "x:1"\naliases = ["a"]\n',
        5,
        "models.b.aliases",
        "alias 'a' shadows the model",
    ),
    (
        "alias shadows a router",
        '[aliases]\nauto = "smollm2:135m"\n',
        2,
        "aliases.auto",
        "shadows the router",
    ),
    ("alias cycle", '[aliases]\na = "b"\nb = "a"\n', 2, "aliases.a", "alias cycle: a -> b -> a"),
    (
        "alias given twice",
        '[aliases]\nchat = "m:1"\n[models.n]\nsource = "x:1"\naliases = ["chat"]\n',
        5,
        "models.n.aliases",
        "already an alias of 'm:1'",
    ),
    (
        "fallback cycle",
        '[models.a]\nfallbacks = ["b"]\n[models.b]\nfallbacks = ["c"]\n[models.c]\nfallbacks = ["a"]\n',
        2,
        "models.a.fallbacks",
        "fallback cycle: a -> b -> c -> a",
    ),
    (
        "fallback cycle through an alias",
        '[aliases]\nbee = "b"\n[models.a]\nfallbacks = ["bee"]\n[models.b]\nfallbacks = ["a"]\n',
        4,
        "models.a.fallbacks",
        "fallback cycle: a -> b -> a",
    ),
    (
        "fallback is a router",
        '[models.a]\nfallbacks = ["auto"]\n',
        2,
        "models.a.fallbacks",
        "is a router",
    ),
    (
        "route with no candidates",
        '[routers.chat]\ndefault = "any"\n[routers.chat.routes.any]\nexamples = ["hi"]\n',
        3,
        "routers.chat.routes.any",
        "has no candidates",
    ),
    (
        "route candidate is a router",
        '[routers.r]\ndefault = "x"\n[routers.r.routes.x]\ncandidates = ["auto"]\n',
        3,
        "routers.r.routes.x",
        "is a router, not a model",
    ),
    (
        "router without a default",
        '[routers.r.routes.x]\ncandidates = ["m:1"]\n',
        1,
        "routers.r",
        "no default route",
    ),
    (
        "bad prefer",
        '[routers.r]\ndefault = "x"\n[routers.r.routes.x]\ncandidates = ["m:1"]\nprefer = "speed"\n',
        1,
        "routers.r",
        "prefer must be one of latency, quality",
    ),
    (
        "model named like a router",
        '[models.auto]\nsource = "x:1"\n',
        1,
        "models.auto",
        "has the name of a router",
    ),
    (
        "llama_server options on a remote engine",
        '[upstreams.o]\nengine = "openai"\nurl = "http://h"\n'
        '[models.m]\nengine = "openai"\nupstream = "o"\n[models.m.llama_server]\nthreads = 2\n',
        8,
        "models.m.llama_server.threads",
        "does not take llama_server options",
    ),
    (
        "vllm options on llama-server",
        '[models.m]\nengine = "llama-server"\n[models.m.vllm]\ntensor_parallel_size = 2\n',
        4,
        "models.m.vllm.tensor_parallel_size",
        "does not take vllm options",
    ),
    (
        "a KV cache type llama-server does not know",
        '[models.m.llama_server]\ncache_type_k = "q3"\n',
        2,
        "models.m.llama_server.cache_type_k",
        "'q3' is not one of",
    ),
    (
        "a replica that is no upstream or node",
        '[models.m]\nreplicas = ["local", "gpu-b"]\n',
        2,
        "models.m.replicas",
        "replica 'gpu-b' is not 'local', an [upstreams.NAME] or a [[nodes]] name",
    ),
    (
        "two nodes with one name",
        '[[nodes]]\nurl = "http://10.0.0.2:11434"\nname = "b"\n'
        '[[nodes]]\nurl = "http://10.0.0.3:11434"\nname = "b"\n',
        None,
        "nodes",
        "node name 'b' is taken",
    ),
    (
        "an RPC worker without a port",
        '[models.m.llama_server]\nrpc = ["10.0.0.2"]\n',
        2,
        "models.m.llama_server.rpc",
        "",
    ),
    (
        "num_ctx on a remote engine",
        '[upstreams.o]\nengine = "ollama"\nurl = "http://h"\n[models.m]\nengine = "ollama"\nupstream = "o"\n'
        "num_ctx = 4096\n",
        7,
        "models.m.num_ctx",
        "sets its own context",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "key", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_name_error_points_at_its_line(text: str, line: int, key: str, message: str) -> None:
    with pytest.raises(ConfigFileError) as err:
        parse_config_text(text, "eh.toml")
    assert err.value.line == line and err.value.key == key, err.value.message
    assert message in err.value.message
    assert err.value.message.startswith(f"eh.toml{f':{line}' if line else ''}: {key}: ")


GOOD = """
[models."smollm2:135m"]
aliases = ["gpt-4o-mini", "llama3"]
fallbacks = ["backup"]

[models.live]
source = "smollm2:135m"
num_ctx = 2048
num_parallel = 4
pinned = true

[models.code]
source = "smollm2:135m"
num_ctx = 8192
num_parallel = 1
llama_server = { cache_type_k = "q8_0" }

[aliases]
chat = "llama3"          # a chain: chat -> llama3 -> smollm2:135m

[routers.auto.routes.code]
candidates = ["code", "live"]
prefer = "quality"
fallbacks = ["smollm2:135m"]
"""


def test_a_consistent_file_parses_and_follows_alias_chains() -> None:
    fc = parse_config_text(GOOD)
    assert fc.canonical("chat") == "smollm2:135m" and fc.canonical("gpt-4o-mini") == "smollm2:135m"
    assert fc.entry("llama3") is fc.models["smollm2:135m"]


def test_references_to_nothing_are_found_with_the_store() -> None:
    fc = parse_config_text(GOOD)
    exists = {"smollm2:135m"}.__contains__
    problems = missing_references(fc, exists)
    assert problems == [(["models", "smollm2:135m", "fallbacks"], "fallback 'backup' is not a model")]
    assert missing_references(fc, {"smollm2:135m", "backup"}.__contains__) == []


def test_check_references_names_file_line_and_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "enginehouse.toml"
    path.write_text(GOOD)
    with pytest.raises(ConfigFileError) as err:
        check_references(path, parse_config_text(GOOD, path), {"smollm2:135m"}.__contains__)
    assert err.value.line == 4 and err.value.key == "models.smollm2:135m.fallbacks"
    assert "fallback 'backup' is not a model" in err.value.message


def test_nodes_are_discovered_upstreams_and_replicas_may_name_them() -> None:
    fc = parse_config_text(
        '[[nodes]]\nurl = "http://127.0.0.2:11434"\n[[nodes]]\nname = "c"\nurl = "http://127.0.0.3:11434/"\n'
        'api_key = "k"\n[models."smollm2:135m"]\nreplicas = ["local", "127.0.0.2:11434", "c"]\n'
        'balance = "prefix"\n'
    )
    ups = fc.node_upstreams
    assert set(ups) == {"127.0.0.2:11434", "c"} and ups["c"].url == "http://127.0.0.3:11434"
    assert ups["c"].engine == "ollama" and ups["c"].api_key == "k" and ups["c"].models is None


def test_a_route_candidate_that_does_not_exist() -> None:
    fc = parse_config_text('[routers.r]\ndefault = "x"\n[routers.r.routes.x]\ncandidates = ["ghost:1"]\n')
    assert missing_references(fc, lambda n: False) == [
        (["routers", "r", "routes", "x"], "candidate 'ghost:1' is not a model")
    ]
