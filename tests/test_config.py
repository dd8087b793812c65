"""The settings table and Config: one Setting per field, explicit environments, host parsing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from enginehouse.config import SETTINGS, Config, parse_host, settings_help
from enginehouse.config_errors import SettingError


def test_every_setting_is_a_field() -> None:
    fields = {f.name for f in dataclasses.fields(Config)}
    names = [s.name for s in SETTINGS]
    assert len(set(names)) == len(names)
    assert set(names) <= fields


def test_every_field_has_a_setting() -> None:
    fields = [f.name for f in dataclasses.fields(Config)]
    names = [s.name for s in SETTINGS]
    assert sorted(fields) == sorted(names)


def test_env_names_unique_and_prefixed() -> None:
    envs = [s.env for s in SETTINGS]
    assert len(set(envs)) == len(envs)
    assert all(e.startswith("ENGINEHOUSE_") for e in envs)
    assert all(s.fallback_env is None or s.fallback_env.startswith("OLLAMA_") for s in SETTINGS)
    assert all(s.description for s in SETTINGS)


def test_setting_defaults_match_dataclass_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real table, without conftest's private engine cache
    from_table = Config.from_env({})
    plain = Config()
    for f in dataclasses.fields(Config):
        assert getattr(from_table, f.name) == getattr(plain, f.name), f.name


def test_from_env_ignores_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINEHOUSE_NUM_PARALLEL", "99")
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0:1")
    cfg = Config.from_env({})
    assert cfg.num_parallel == 0  # auto: slots share a KV pool
    assert cfg.host == "127.0.0.1:11434"
    assert Config.from_env().num_parallel == 99  # None means os.environ


def test_from_env_parses_types(tmp_path: Path) -> None:
    env = {
        "ENGINEHOUSE_HOME": str(tmp_path / "home"),
        "ENGINEHOUSE_HOST": "127.0.0.1:8080",
        "ENGINEHOUSE_LLAMA_SERVER": str(tmp_path / "bin" / "llama-server"),
        "ENGINEHOUSE_ENGINES_DIR": str(tmp_path / "engines"),
        "ENGINEHOUSE_NATIVE_BUILD": "yes",
        "ENGINEHOUSE_CONTEXT_LENGTH": "2048",
        "ENGINEHOUSE_NUM_PARALLEL": "2",
        "ENGINEHOUSE_THREADS": "3",
        "ENGINEHOUSE_CACHE_RAM_MIB": "64",
        "ENGINEHOUSE_KEEP_ALIVE": "10m",
        "ENGINEHOUSE_LOAD_TIMEOUT": "1.5",
        "ENGINEHOUSE_MODELS": str(tmp_path / "models"),
        "ENGINEHOUSE_LOG_LEVEL": "debug",
        "ENGINEHOUSE_PYPI_INDEX": "http://127.0.0.1:1/simple",
    }
    cfg = Config.from_env(env)
    assert cfg.home == tmp_path / "home" and isinstance(cfg.home, Path)
    assert cfg.host == "127.0.0.1:8080" and cfg.bind == ("127.0.0.1", 8080)
    assert cfg.llama_server == tmp_path / "bin" / "llama-server"
    assert cfg.engines_dir == tmp_path / "engines" and cfg.engines == tmp_path / "engines"
    assert cfg.native_build is True
    assert cfg.ctx_size == 2048 and isinstance(cfg.ctx_size, int)
    assert cfg.num_parallel == 2 and cfg.threads == 3 and cfg.cache_ram_mib == 64
    assert cfg.keep_alive == "10m"
    assert cfg.load_timeout == 1.5 and isinstance(cfg.load_timeout, float)
    assert cfg.models_dir == tmp_path / "models" and cfg.models == tmp_path / "models"
    assert cfg.log_level == "debug"
    assert cfg.pypi_index == "http://127.0.0.1:1/simple"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        (" on ", True),
        ("0", False),
        ("no", False),
        ("", False),
        ("off", False),
        ("maybe", False),
    ],
)
def test_bool_parsing(raw: str, expected: bool) -> None:
    assert Config.from_env({"ENGINEHOUSE_NATIVE_BUILD": raw}).native_build is expected


@pytest.mark.parametrize(
    "name", ["ENGINEHOUSE_LLAMA_SERVER", "ENGINEHOUSE_ENGINES_DIR", "ENGINEHOUSE_MODELS"]
)
def test_empty_optional_path_is_none(name: str) -> None:
    cfg = Config.from_env({name: ""})
    assert cfg.llama_server is None and cfg.engines_dir is None and cfg.models_dir is None


def test_paths_expand_user() -> None:
    cfg = Config.from_env({"ENGINEHOUSE_HOME": "~/eh", "ENGINEHOUSE_LLAMA_SERVER": "~/bin/ls"})
    assert cfg.home == Path("~/eh").expanduser()
    assert cfg.llama_server == Path("~/bin/ls").expanduser()
    assert "~" not in str(Config.from_env({}).home)


def test_bad_number_raises() -> None:
    with pytest.raises(ValueError):
        Config.from_env({"ENGINEHOUSE_NUM_PARALLEL": "four"})


def test_derived_locations(tmp_path: Path) -> None:
    cfg = Config.from_env({}, home=tmp_path, cache_dir=tmp_path / "shared")
    assert cfg.models == tmp_path / "models"
    assert cfg.engines == tmp_path / "shared" / "engines"  # engine builds: one per machine, not per home
    assert cfg.engine_dirs == (tmp_path / "shared" / "engines", tmp_path / "engines")  # and the old place
    assert cfg.cache == tmp_path / "cache"
    assert cfg.logs == tmp_path / "logs"


def test_engine_cache_defaults_to_the_users_cache_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real table, without conftest's private engine cache
    assert Config.from_env({}).cache_dir == Path("~/.cache/enginehouse").expanduser()
    assert Config.from_env({"ENGINEHOUSE_CACHE_DIR": "/srv/eh"}).engines == Path("/srv/eh/engines")
    assert Config.from_env({"ENGINEHOUSE_ENGINES_DIR": "/srv/e"}).engine_dirs[0] == Path("/srv/e")


def test_overrides_win_and_none_is_ignored(tmp_path: Path) -> None:
    cfg = Config.from_env(
        {"ENGINEHOUSE_NUM_PARALLEL": "2", "ENGINEHOUSE_LLAMA_SERVER": "/x/llama-server"},
        num_parallel=7,
        home=tmp_path,
        llama_server=None,
    )
    assert cfg.num_parallel == 7 and cfg.home == tmp_path
    assert cfg.llama_server == Path("/x/llama-server")  # None leaves the environment's value
    assert cfg.with_(num_parallel=1).num_parallel == 1
    assert cfg.num_parallel == 7  # frozen: with_ makes a copy


@pytest.mark.parametrize(
    ("ours", "theirs", "field", "expected"),
    [
        ("ENGINEHOUSE_HOST", "OLLAMA_HOST", "host", ("127.0.0.1:1111", "0.0.0.0:2222")),
        ("ENGINEHOUSE_KEEP_ALIVE", "OLLAMA_KEEP_ALIVE", "keep_alive", ("1m", "-1")),
        ("ENGINEHOUSE_CONTEXT_LENGTH", "OLLAMA_CONTEXT_LENGTH", "ctx_size", ("1024", "8192")),
        ("ENGINEHOUSE_NUM_PARALLEL", "OLLAMA_NUM_PARALLEL", "num_parallel", ("1", "8")),
    ],
)
def test_ollama_fallbacks_only_when_ours_unset(
    ours: str, theirs: str, field: str, expected: tuple[str, str]
) -> None:
    mine, ollama = expected
    setting = next(s for s in SETTINGS if s.name == field)
    assert setting.env == ours and setting.fallback_env == theirs
    only_theirs = Config.from_env({theirs: ollama})
    assert getattr(only_theirs, field) == setting.parse(ollama)
    both = Config.from_env({ours: mine, theirs: ollama})
    assert getattr(both, field) == setting.parse(mine)
    # set-but-empty still counts as set: the Ollama variable is not consulted
    if field == "host":
        assert Config.from_env({ours: "", theirs: ollama}).host == ""


def test_no_fallback_for_settings_without_one() -> None:
    assert Config.from_env({"OLLAMA_MODELS": "/elsewhere"}).models_dir is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.0.0.0", ("0.0.0.0", 11434)),
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("http://h:1/", ("h", 1)),
        ("https://example.com:443", ("example.com", 443)),
        ("http://localhost", ("localhost", 11434)),
        ("[::1]:11434", ("::1", 11434)),
        ("[::1]", ("::1", 11434)),
        ("[::]:9", ("::", 9)),
        (":1234", ("127.0.0.1", 1234)),
        ("", ("127.0.0.1", 11434)),
        ("  myhost:7  ", ("myhost", 7)),
    ],
)
def test_parse_host(value: str, expected: tuple[str, int]) -> None:
    assert parse_host(value) == expected


def test_parse_host_default_port() -> None:
    assert parse_host("example.org", default_port=80) == ("example.org", 80)


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0:8080", "http://127.0.0.1:8080"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        ("[::]:5", "http://127.0.0.1:5"),
        (":7", "http://127.0.0.1:7"),
        ("127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("[::1]:11434", "http://[::1]:11434"),
        ("http://box.lan:99/", "http://box.lan:99"),
    ],
)
def test_base_url(host: str, url: str) -> None:
    assert Config.from_env({}, host=host).base_url == url


def test_default_bind_is_loopback() -> None:
    assert Config().bind == ("127.0.0.1", 11434)
    assert Config.from_env({}).bind[0] == "127.0.0.1"
    host_setting = next(s for s in SETTINGS if s.name == "host")
    assert parse_host(host_setting.default)[0] == "127.0.0.1"


def test_settings_help_mentions_everything() -> None:
    text = settings_help()
    for s in SETTINGS:
        assert s.env in text
        assert s.description in text
        if s.fallback_env:
            assert s.fallback_env in text
    assert "[default: unset]" in text  # empty defaults are shown as unset
    assert "[default: 5m]" in text


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("ENGINEHOUSE_NUM_PARALLEL", "four", "must be a whole number"),
        ("ENGINEHOUSE_LOAD_TIMEOUT", "soon", "must be a number"),
        ("ENGINEHOUSE_RUNNER_NICE", "25", "must be 0 to 19"),
        ("ENGINEHOUSE_RUNNER_NICE", "-1", "must be 0 to 19"),
        ("ENGINEHOUSE_HOST", "localhost:abc", "port up to 65535"),
        ("ENGINEHOUSE_HOST", "localhost:70000", "port up to 65535"),
        ("OLLAMA_HOST", "[::1]:x", "port up to 65535"),
    ],
)
def test_a_bad_setting_names_its_variable_and_value(name: str, value: str, says: str) -> None:
    with pytest.raises(SettingError) as caught:
        Config.from_env({name: value})
    assert caught.value.message.startswith(f"{name}={value!r}: ")  # the variable the value came from
    assert says in caught.value.message and "Traceback" not in caught.value.message


def test_the_cli_reports_a_bad_setting_in_one_line() -> None:
    from click.testing import CliRunner

    from enginehouse.cli.config_cmd import config as config_command
    from enginehouse.cli.main import cli

    cli.add_command(config_command)
    result = CliRunner().invoke(cli, ["config", "check"], env={"ENGINEHOUSE_THREADS": "two"})
    assert result.exit_code == 1
    assert result.output.strip() == "Error: ENGINEHOUSE_THREADS='two': must be a whole number"
