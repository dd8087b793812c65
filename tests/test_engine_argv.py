"""Command lines: llama-server flags from a model's entry, the ``-ngl`` arithmetic, and ``vllm serve``
for one GPU, tensor parallelism and a Ray cluster. Pure: no process is started."""

from __future__ import annotations

from pathlib import Path

import pytest

from enginehouse.config import Config
from enginehouse.config_file import parse_config_text
from enginehouse.engines.base import RunnerSpec
from enginehouse.engines.choose import InstalledEngine
from enginehouse.engines.factory import EngineFactory
from enginehouse.engines.llama_server import LlamaServerSettings, build_argv, input_limit
from enginehouse.engines.offload import LayerSizes, layers_that_fit, read_layer_sizes
from enginehouse.engines.vllm import API_SERVER_MODULE, VllmSettings, find_vllm, runner_env
from enginehouse.engines.vllm import build_argv as vllm_argv
from enginehouse.errors import EngineNotInstalled, InvalidRequest
from enginehouse.hardware import CPU, GPU, Hardware, Memory
from enginehouse.store import BUNDLED_NAME, Store, ensure_bundled
from tests.fakes.vision_projector import write_projector

GiB = 1 << 30
MiB = 1 << 20
CPU_ONLY = Hardware("Linux", "x86_64", CPU("cpu", 2, 2), Memory(8 * GiB, 6 * GiB))


def gpu_box(free: int) -> Hardware:
    return Hardware(
        "Linux",
        "x86_64",
        CPU("cpu", 16, 32),
        Memory(128 * GiB, 100 * GiB),
        (GPU(0, "NVIDIA H100", 80 * GiB, free),),
    )


CUDA_BUILD = {"llama-server": InstalledEngine("llama-server", "b1", "/x", "built", ("CUDA0: NVIDIA H100",))}
CPU_BUILD = {"llama-server": InstalledEngine("llama-server", "b1", "/x", "built", ())}


def flags_after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


# ---- llama-server ------------------------------------------------------------------------------


def test_default_argv_is_unchanged_by_the_new_options() -> None:
    argv = build_argv(Path("/bin/llama-server"), LlamaServerSettings(Path("/m.gguf"), "m:latest"), 8080)
    assert "--jinja" in argv and "--no-jinja" not in argv
    for flag in (
        "--n-gpu-layers",
        "--flash-attn",
        "--cache-type-k",
        "--model-draft",
        "--batch-size",
        "--mmproj",
    ):
        assert flag not in argv


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"n_gpu_layers": 20}, ["--n-gpu-layers", "20"]),
        ({"n_gpu_layers": -1}, ["--n-gpu-layers", "all"]),
        ({"n_gpu_layers": 0}, ["--n-gpu-layers", "0"]),
        ({"flash_attn": "on"}, ["--flash-attn", "on"]),
        (
            {"cache_type_k": "q8_0", "cache_type_v": "q4_0"},
            ["--cache-type-k", "q8_0", "--cache-type-v", "q4_0"],
        ),
        ({"batch_size": 1024, "ubatch_size": 256}, ["--batch-size", "1024", "--ubatch-size", "256"]),
        ({"draft_model": Path("/d.gguf")}, ["--model-draft", "/d.gguf"]),
        ({"mmproj": Path("/p.gguf")}, ["--mmproj", "/p.gguf"]),
    ],
)
def test_llama_server_option_flags(settings: dict, expected: list[str]) -> None:
    argv = build_argv(Path("/bin/ls"), LlamaServerSettings(Path("/m.gguf"), "m", **settings), 1)
    joined = " ".join(argv)
    assert " ".join(expected) in joined


def test_penalties_run_after_top_k_and_a_users_order_wins() -> None:
    argv = build_argv(Path("/bin/ls"), LlamaServerSettings(Path("/m.gguf"), "m"), 1)
    order = flags_after(argv, "--samplers").split(";")
    assert order.index("top_k") < order.index("penalties") < order.index("top_p")
    assert order.index("penalties") < order.index("temperature")
    mine = ("--samplers", "penalties;top_k;temperature")
    argv = build_argv(Path("/bin/ls"), LlamaServerSettings(Path("/m.gguf"), "m", extra_args=mine), 1)
    assert argv[-2:] == list(mine)  # llama.cpp's parser keeps the last occurrence


def test_jinja_off_is_no_jinja() -> None:
    argv = build_argv(Path("/bin/ls"), LlamaServerSettings(Path("/m.gguf"), "m", jinja=False), 1)
    assert "--no-jinja" in argv and "--jinja" not in argv


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "models")
    assert ensure_bundled(store) is not None
    return store


def factory_for(tmp_path: Path, store: Store, toml: str, **kw: object) -> EngineFactory:
    config = Config.from_env({}, home=tmp_path, num_parallel=2, ctx_size=1024)
    kw.setdefault("hardware", CPU_ONLY)
    kw.setdefault("installed", CPU_BUILD)
    return EngineFactory(config, parse_config_text(toml), store=store, **kw)  # type: ignore[arg-type]


def test_entry_options_reach_the_argv(tmp_path: Path, store: Store) -> None:
    toml = f"""
[models."{BUNDLED_NAME}"]
flags = ["--top-k", "5"]
[models."{BUNDLED_NAME}".llama_server]
n_gpu_layers = 12
flash_attn = "off"
cache_type_k = "q8_0"
cache_type_v = "q8_0"
threads = 2
batch_size = 512
ubatch_size = 128
draft_model = "{BUNDLED_NAME}"
jinja = false
"""
    factory = factory_for(tmp_path, store, toml)
    record = store.resolve(BUNDLED_NAME)
    s = factory.settings_for(record)
    argv = build_argv(Path("/bin/llama-server"), s, 9)
    assert flags_after(argv, "--n-gpu-layers") == "12"
    assert flags_after(argv, "--flash-attn") == "off"
    assert flags_after(argv, "--cache-type-k") == "q8_0" and flags_after(argv, "--cache-type-v") == "q8_0"
    assert flags_after(argv, "--threads") == "2"
    assert flags_after(argv, "--batch-size") == "512" and flags_after(argv, "--ubatch-size") == "128"
    assert flags_after(argv, "--model-draft") == str(record.model_path)  # a store name -> its GGUF
    assert "--no-jinja" in argv
    assert argv[-2:] == ["--top-k", "5"]  # flags last, as given
    # the estimate follows the options: q8_0 KV is smaller than f16, the draft's weights are added
    plain = factory_for(tmp_path, store, "").estimate_for(record)
    tuned = factory.estimate_for(record)
    assert tuned.kv_cache < plain.kv_cache
    assert tuned.weights == 2 * plain.weights


def test_draft_model_by_path(tmp_path: Path, store: Store, bundled_gguf: Path) -> None:
    toml = f'[models."{BUNDLED_NAME}".llama_server]\ndraft_model = "{bundled_gguf}"\n'
    s = factory_for(tmp_path, store, toml).settings_for(store.resolve(BUNDLED_NAME))
    assert s.draft_model == bundled_gguf


def test_rerank_runner_argv(tmp_path: Path, store: Store, tiny_reranker: Path) -> None:
    record = store.import_gguf(tiny_reranker, "tiny-reranker")
    factory = factory_for(tmp_path, store, "")
    s = factory.settings_for(record, RunnerSpec(rerank=True))
    argv = build_argv(Path("/bin/llama-server"), s, 9)
    assert "--rerank" in argv and "--embeddings" not in argv  # --rerank turns embeddings on itself
    # ctx 1024 asked, 512 trained: a (query, document) pair up to the context goes in one micro-batch
    assert flags_after(argv, "--ctx-size") == str(512 * 2)
    assert flags_after(argv, "--batch-size") == "512" and flags_after(argv, "--ubatch-size") == "512"
    assert RunnerSpec(rerank=True).key("tiny-reranker:latest") == "tiny-reranker:latest (rerank)"
    assert factory.estimate_for(record, RunnerSpec(rerank=True)) is not None


def test_rerank_and_embedding_runners_refuse_the_wrong_model(
    tmp_path: Path, store: Store, tiny_reranker: Path
) -> None:
    factory = factory_for(tmp_path, store, "")
    with pytest.raises(InvalidRequest, match="not a reranking model"):
        factory.settings_for(store.resolve(BUNDLED_NAME), RunnerSpec(rerank=True))
    reranker = store.import_gguf(tiny_reranker, "tiny-reranker")
    with pytest.raises(InvalidRequest, match="is a reranking model: use /api/rerank"):
        factory.settings_for(reranker, RunnerSpec(embedding=True))


def test_no_gpu_no_ngl_flag(tmp_path: Path, store: Store) -> None:
    s = factory_for(tmp_path, store, "").settings_for(store.resolve(BUNDLED_NAME))
    assert s.n_gpu_layers is None


def test_ngl_computed_from_free_vram_on_a_cuda_build(tmp_path: Path, store: Store) -> None:
    record = store.resolve(BUNDLED_NAME)
    roomy = factory_for(tmp_path, store, "", hardware=gpu_box(40 * GiB), installed=CUDA_BUILD)
    blocks = len(read_layer_sizes(record.model_path).blocks)
    assert roomy.settings_for(record).n_gpu_layers == blocks + 1  # everything, output layer included
    tight = factory_for(tmp_path, store, "", hardware=gpu_box(800 * MiB), installed=CUDA_BUILD)
    assert 0 <= tight.settings_for(record).n_gpu_layers < blocks + 1  # type: ignore[operator]
    cpu_build = factory_for(tmp_path, store, "", hardware=gpu_box(40 * GiB), installed=CPU_BUILD)
    assert cpu_build.settings_for(record).n_gpu_layers is None  # the build cannot use the GPU
    explicit = f'[models."{BUNDLED_NAME}".llama_server]\nn_gpu_layers = 3\n'
    given = factory_for(tmp_path, store, explicit, hardware=gpu_box(40 * GiB), installed=CUDA_BUILD)
    assert given.settings_for(record).n_gpu_layers == 3


@pytest.mark.parametrize(
    ("free", "kv", "compute", "expected"),
    [
        (10 * GiB, 0, 0, 5),  # everything: 4 blocks + the output layer
        (1 * GiB + 250 * MiB, 0, 0, 2),  # 1 GiB reserve, then 2 blocks of 100 MiB (the output needs 300)
        (1 * GiB + 250 * MiB, 50 * MiB, 0, 1),  # with its KV cache a block needs 150 MiB
        (1 * GiB + 50 * MiB, 0, 0, 0),  # not one block
        (1 * GiB + 450 * MiB, 0, 100 * MiB, 3),  # the compute buffer comes first
        (512 * MiB, 0, 0, 0),  # below the reserve
    ],
)
def test_layers_that_fit(free: int, kv: int, compute: int, expected: int) -> None:
    sizes = LayerSizes((100 * MiB,) * 4, other=300 * MiB)
    assert layers_that_fit(free, sizes, kv_per_layer=kv, compute=compute, reserve=1 * GiB) == expected


def test_read_layer_sizes_of_the_bundled_model(bundled_gguf: Path) -> None:
    sizes = read_layer_sizes(bundled_gguf)
    assert len(sizes.blocks) == 30  # SmolLM2-135M
    assert len(set(sizes.blocks)) == 1 and sizes.other > sizes.blocks[0]  # tied 49k-token embeddings


# ---- vLLM --------------------------------------------------------------------------------------

SERVE = ("/usr/bin/vllm", "serve")


@pytest.mark.parametrize(
    ("case", "settings", "expected"),
    [
        (
            "single GPU",
            VllmSettings("/models/qwen", "qwen", max_model_len=8192, gpu_memory_utilization=0.85),
            "/usr/bin/vllm serve /models/qwen --host 127.0.0.1 --port 8000 --served-model-name qwen"
            " --max-model-len 8192 --gpu-memory-utilization 0.85 --enable-sleep-mode",
        ),
        (
            "tensor parallel",
            VllmSettings(
                "meta-llama/Llama-3.1-70B-Instruct",
                "llama70b",
                tensor_parallel_size=4,
                enable_prefix_caching=True,
                max_num_seqs=64,
                sleep_mode=False,
            ),
            "/usr/bin/vllm serve meta-llama/Llama-3.1-70B-Instruct --host 127.0.0.1 --port 8000"
            " --served-model-name llama70b --max-num-seqs 64 --tensor-parallel-size 4"
            " --enable-prefix-caching",
        ),
        (
            "Ray multi-node",
            VllmSettings(
                "deepseek-ai/DeepSeek-V3",
                "deepseek",
                tensor_parallel_size=8,
                pipeline_parallel_size=2,
                distributed_executor_backend="ray",
                enable_prefix_caching=False,
                api_key="k",
                api_key_in_env=False,
                extra_args=("--trust-remote-code",),
            ),
            "/usr/bin/vllm serve deepseek-ai/DeepSeek-V3 --host 127.0.0.1 --port 8000 --served-model-name"
            " deepseek --api-key k --tensor-parallel-size 8 --pipeline-parallel-size 2"
            " --distributed-executor-backend ray --no-enable-prefix-caching --enable-sleep-mode"
            " --trust-remote-code",
        ),
    ],
)
def test_vllm_argv(case: str, settings: VllmSettings, expected: str) -> None:
    assert " ".join(vllm_argv(SERVE, settings, 8000)) == expected, case


def test_vllm_module_launcher_uses_model_flag() -> None:
    launcher = ("/venv/bin/python", "-m", API_SERVER_MODULE)
    argv = vllm_argv(launcher, VllmSettings("/m", "m", sleep_mode=False), 1)
    assert argv[:5] == ["/venv/bin/python", "-m", API_SERVER_MODULE, "--model", "/m"]


def test_vllm_env_dev_mode_and_key() -> None:
    s = VllmSettings("/m", "m", api_key="secret")
    assert runner_env(s) == {"VLLM_SERVER_DEV_MODE": "1", "VLLM_API_KEY": "secret"}
    assert "secret" not in vllm_argv(SERVE, s, 1)  # not on a command line every local user can read
    assert runner_env(VllmSettings("/m", "m", sleep_mode=False)) == {}


def test_find_vllm_order(tmp_path: Path) -> None:
    assert find_vllm(tmp_path / "vllm") == (str(tmp_path / "vllm"), "serve")
    assert find_vllm(None, which=lambda _: "/bin/vllm") == ("/bin/vllm", "serve")
    assert find_vllm(None, which=lambda _: None, importable=lambda _: True, python="/py") == (
        "/py",
        "-m",
        API_SERVER_MODULE,
    )
    with pytest.raises(EngineNotInstalled, match="pip install vllm"):
        find_vllm(None, which=lambda _: None, importable=lambda _: False)


def test_vllm_settings_from_the_entry(tmp_path: Path, store: Store) -> None:
    hf = tmp_path / "hf-model"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    toml = f"""
[models."qwen-hf"]
source = "{hf}"
engine = "vllm"
num_ctx = 4096
num_parallel = 32
flags = ["--dtype", "bfloat16"]
[models."qwen-hf".vllm]
gpu_memory_utilization = 0.5
tensor_parallel_size = 2
distributed_executor_backend = "ray"
enable_prefix_caching = true
sleep_mode = false
"""
    from enginehouse.catalog import Catalog

    factory = factory_for(tmp_path, store, toml)
    record = Catalog(store, factory.file_config).resolve("qwen-hf")
    assert factory.engine_for(record) == "vllm"
    s = factory.vllm_settings(record)
    assert (s.model, s.served_name, s.max_model_len, s.max_num_seqs) == (str(hf), "qwen-hf", 4096, 32)
    assert (s.gpu_memory_utilization, s.tensor_parallel_size, s.distributed_executor_backend) == (
        0.5,
        2,
        "ray",
    )
    assert (
        s.enable_prefix_caching is True and s.sleep_mode is False and s.extra_args == ("--dtype", "bfloat16")
    )
    assert s.api_key and len(s.api_key) > 20
    assert factory.estimate_for(record) is None  # GPU memory: not planned in the host budget


def test_auto_hf_directory_without_gpu_is_refused_with_the_reason(tmp_path: Path, store: Store) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    from enginehouse.catalog import Catalog

    factory = factory_for(tmp_path, store, f'[models.hf]\nsource = "{hf}"\n')
    record = Catalog(store, factory.file_config).resolve("hf")
    with pytest.raises(EngineNotInstalled, match="NVIDIA GPU"):
        factory.engine_for(record)


def test_a_projector_layer_is_the_runners_mmproj(tmp_path: Path, store: Store, bundled_gguf: Path) -> None:
    projector = write_projector(tmp_path / "mmproj.gguf")
    seer = store.import_gguf(bundled_gguf, "seer:1", projector=projector)
    factory = factory_for(tmp_path, store, "")
    argv = build_argv(Path("/x"), factory.settings_for(seer), 9)
    assert flags_after(argv, "--mmproj") == str(seer.projectors[0])
    assert factory.settings_for(store.resolve(BUNDLED_NAME)).mmproj is None
    embedding = factory.settings_for(seer, RunnerSpec(embedding=True))
    assert embedding.mmproj is None  # an embedding runner needs no projector


@pytest.mark.parametrize(
    ("message", "limit"),
    [
        # an encoder (can_split false) longer than its micro-batch, then than its context
        (
            "input (900 tokens) is too large to process. increase the physical batch size "
            "(current batch size: 512)",
            512,
        ),
        ("input (900 tokens) is larger than the max context size (512 tokens). skipping", 512),
        # a decoder: the prompt must leave one token of the context free
        ("request (5000 tokens) exceeds the available context size (4096 tokens), try increasing it", 4095),
        ("Context size has been exceeded.", None),
        ("model is loading", None),
    ],
)
def test_an_embedding_inputs_limit_is_read_from_llama_servers_refusal(
    message: str, limit: int | None
) -> None:
    assert input_limit(message) == limit
