"""enginehouse.toml: valid files parse to typed entries; invalid ones name the file, line and key."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from enginehouse.config import Config
from enginehouse.config_file import ConfigFileError, load_config_file, parse_config_text

MINIMAL = """
[models."smollm2:135m"]
num_parallel = 8
pinned = true
"""

FULL = """
[defaults]
num_parallel = 2
keep_alive = "10m"

[models."smollm2:135m"]
keep_alive = "1h"
group = "big"
flags = ["--flash-attn", "on"]

[models."smollm2:135m".llama_server]
cache_type_k = "q8_0"

[models.office-llama]
engine = "ollama"
upstream = "office"
remote_model = "llama3.2:3b"

[upstreams.office]
engine = "ollama"
url = "http://10.0.0.5:11434/"

[groups.big]
exclusive = true

[aliases]
chat = "smollm2:135m"
"""


def test_minimal_file() -> None:
    cfg = parse_config_text(MINIMAL)
    entry = cfg.entry("smollm2:135m")
    assert entry is not None and entry.num_parallel == 8 and entry.pinned
    assert entry.keep_alive_seconds == math.inf  # a pin keeps the model loaded
    assert cfg.entry("other:latest") is None


def test_full_file() -> None:
    cfg = parse_config_text(FULL)
    entry = cfg.entry("chat")  # through the alias
    assert entry is not None and entry.keep_alive_seconds == 3600
    assert entry.flags == ("--flash-attn", "on") and entry.llama_server.cache_type_k == "q8_0"
    assert cfg.exclusive_group("smollm2:135m") == "big" and cfg.exclusive_group("office-llama") is None
    assert cfg.defaults.num_parallel == 2
    assert cfg.upstreams["office"].url == "http://10.0.0.5:11434"
    assert cfg.models["office-llama"].remote_model == "llama3.2:3b"


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        ('[models."a:b"]\npined = true\n', 2, "models.a:b.pined", "unknown key"),
        (
            '[models."a:b"]\nnum_parallel = 8\nkeep_alive = "5 minutes"\n',
            3,
            "models.a:b.keep_alive",
            "duration",
        ),
        ('[models."a:b"]\nnum_parallel = -1\n', 2, "models.a:b.num_parallel", "greater than or equal to 1"),
        ('[models."a:b"]\nengine = "tgi"\n', 2, "models.a:b.engine", "'auto'"),
        ('[models."a:b"]\nengine = "ollama"\n', 1, "models.a:b", "needs upstream"),
        ('[models."a:b"]\ngroup = "big"\n', 1, "models.a:b", "no [groups.big]"),
        ('[upstreams.x]\nengine = "openai"\nurl = "ftp://x"\n', 3, "upstreams.x.url", "http://"),
        ('[models."a:b"\nnum_parallel = 8\n', 1, "", "Expected ']'"),
        ("[modles]\n", 1, "modles", "unknown key"),
    ],
)
def test_invalid_files_name_line_and_key(text: str, line: int, key: str, message: str) -> None:
    with pytest.raises(ConfigFileError) as err:
        parse_config_text(text, "/etc/eh.toml")
    assert err.value.line == line, str(err.value)
    assert err.value.key == key
    assert message in str(err.value)
    assert str(err.value).startswith(f"/etc/eh.toml:{line}: ")


def test_file_location(tmp_path: Path) -> None:
    config = Config.from_env({}, home=tmp_path)
    assert config.config_path is None and load_config_file(None).models == {}
    (tmp_path / "enginehouse.toml").write_text(MINIMAL)
    assert config.config_path == tmp_path / "enginehouse.toml"
    named = Config.from_env({"ENGINEHOUSE_CONFIG": str(tmp_path / "other.toml")}, home=tmp_path)
    assert named.config_path == tmp_path / "other.toml"
    with pytest.raises(ConfigFileError, match="cannot read"):
        load_config_file(named.config_path)


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="batch or fifo"):
        Config.from_env({"ENGINEHOUSE_SCHED_POLICY": "lifo"})


def test_config_check_command(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from enginehouse.cli.config_cmd import config as config_command
    from enginehouse.cli.main import cli

    cli.add_command(config_command)
    bad = tmp_path / "bad.toml"
    bad.write_text('[models."a:b"]\npined = true\n')
    env = {"ENGINEHOUSE_HOME": str(tmp_path)}
    result = CliRunner().invoke(cli, ["config", "check", str(bad)], env=env)
    assert result.exit_code == 1 and f"{bad}:2: models.a:b.pined: unknown key" in result.output
    good = tmp_path / "enginehouse.toml"
    good.write_text(MINIMAL)
    result = CliRunner().invoke(cli, ["config", "check"], env=env)
    assert result.exit_code == 0 and "ok (1 models" in result.output


def test_config_check_finds_names_nothing_serves(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from enginehouse.cli.config_cmd import config as config_command
    from enginehouse.cli.main import cli

    cli.add_command(config_command)
    env = {"ENGINEHOUSE_HOME": str(tmp_path)}  # an empty store: only the bundled model counts
    path = tmp_path / "routes.toml"
    path.write_text('[models.live]\nsource = "smollm2:135m"\nfallbacks = ["smollm2:135m", "ghost:7b"]\n')
    result = CliRunner().invoke(cli, ["config", "check", str(path)], env=env)
    assert result.exit_code == 1
    assert f"{path}:3: models.live.fallbacks: fallback 'ghost:7b' is not a model" in result.output
    path.write_text('[models.live]\nsource = "smollm2:135m"\nfallbacks = ["smollm2:135m"]\n')
    assert CliRunner().invoke(cli, ["config", "check", str(path)], env=env).exit_code == 0
