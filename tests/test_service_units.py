"""Service units rendered from a spec: systemd quoting, user and system units, launchd plists, and
the units checked by systemd's own ``systemd-analyze verify``."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from enginehouse import service_units as su

PY = Path(sys.executable).absolute()


def spec(**kw: object) -> su.ServiceSpec:
    values: dict[str, object] = {
        "python": PY,
        "home": Path("/home/al/.enginehouse"),
        "host": "127.0.0.1:11434",
    }
    values.update(kw)
    return su.ServiceSpec(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "unit", "label"),
    [
        (None, "enginehouse.service", "dev.enginehouse"),
        ("code", "enginehouse@code.service", "dev.enginehouse.code"),
    ],
)
def test_names(name: str | None, unit: str, label: str) -> None:
    assert (spec(name=name).unit_name, spec(name=name).label) == (unit, label)


@pytest.mark.parametrize("name", ["code", "a.b-c_1", "9", "x" * 64])
def test_good_instance_names(name: str) -> None:
    assert su.check_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", ".x", "a b", "a/b", "a@b", "x" * 65, "é"])
def test_bad_instance_names(name: str) -> None:
    with pytest.raises(ValueError, match="instance name"):
        su.check_name(name)


@pytest.mark.parametrize(
    ("word", "quoted"),
    [
        ("/usr/bin/python3", "/usr/bin/python3"),
        ("127.0.0.1:11434", "127.0.0.1:11434"),
        ("/home/a b/py", '"/home/a b/py"'),
        ("100%", "100%%"),
        ("$HOME", "$$HOME"),
        ('say "hi"', '"say \\"hi\\""'),
        ("a\\b", '"a\\\\b"'),
        ("a;b", '"a;b"'),
        ("", '""'),
    ],
)
def test_exec_words(word: str, quoted: str) -> None:
    assert su.quote_word(word) == quoted


@pytest.mark.parametrize(
    ("key", "value", "quoted"),
    [
        ("ENGINEHOUSE_HOME", "/srv/eh", '"ENGINEHOUSE_HOME=/srv/eh"'),
        ("ENGINEHOUSE_HOME", "/srv/a b", '"ENGINEHOUSE_HOME=/srv/a b"'),
        ("ENGINEHOUSE_ORIGINS", "https://*.x:*", '"ENGINEHOUSE_ORIGINS=https://*.x:*"'),
        ("K", '50%"$x', '"K=50%%\\"$x"'),  # no variable expansion in Environment=; specifiers doubled
    ],
)
def test_environment_assignments(key: str, value: str, quoted: str) -> None:
    assert su.quote_assignment(key, value) == quoted


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x00b", "a\tb"])
def test_control_characters_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="control character"):
        su.render_systemd(spec(home=Path(f"/h/{value}")))


def lines(text: str) -> set[str]:
    return set(text.splitlines())


@pytest.mark.parametrize(
    ("scope", "present", "absent"),
    [
        (
            "user",
            {"WantedBy=default.target", "NoNewPrivileges=yes", "KillMode=mixed", "Restart=on-failure"},
            {"PrivateTmp=yes", "User=al", "After=network-online.target", "ProtectSystem=full"},
        ),
        (
            "system",
            {
                "WantedBy=multi-user.target",
                "User=al",
                "Wants=network-online.target",
                "After=network-online.target",
                "NoNewPrivileges=yes",
                "PrivateTmp=yes",
                "ProtectSystem=full",
                "KillMode=mixed",
            },
            {"WantedBy=default.target"},
        ),
    ],
)
def test_user_and_system_units(scope: str, present: set[str], absent: set[str]) -> None:
    text = su.render_systemd(spec(scope=scope, run_as="al"))
    assert present <= lines(text)
    assert not absent & lines(text)
    assert "ProtectHome" not in text  # the store and engine builds live in the home
    assert f"TimeoutStopSec={su.STOP_TIMEOUT_S}" in lines(text) and su.STOP_TIMEOUT_S >= 45
    assert f"ExecStart={PY} -m enginehouse serve --host 127.0.0.1:11434" in lines(text)
    assert "EnvironmentFile=-/home/al/.enginehouse/service.env" in lines(text)


def test_environment_lines_in_order() -> None:
    text = su.render_systemd(
        spec(config_file=Path("/etc/eh.toml"), environment={"ENGINEHOUSE_NUM_PARALLEL": "8", "A": "1"})
    )
    env = [line for line in text.splitlines() if line.startswith("Environment=")]
    assert env == [
        'Environment="ENGINEHOUSE_HOME=/home/al/.enginehouse"',
        'Environment="ENGINEHOUSE_CONFIG=/etc/eh.toml"',
        'Environment="A=1"',
        'Environment="ENGINEHOUSE_NUM_PARALLEL=8"',
        'Environment="PYTHONUNBUFFERED=1"',
    ]


@pytest.mark.parametrize(
    ("environ", "baked"),
    [
        ({}, {}),
        ({"ENGINEHOUSE_NUM_PARALLEL": "8", "PATH": "/bin"}, {"ENGINEHOUSE_NUM_PARALLEL": "8"}),
        ({"OLLAMA_ORIGINS": "http://x"}, {"ENGINEHOUSE_ORIGINS": "http://x"}),  # the Ollama fallback
        ({"ENGINEHOUSE_ORIGINS": "a", "OLLAMA_ORIGINS": "b"}, {"ENGINEHOUSE_ORIGINS": "a"}),
        (  # the unit sets these from its own options; the key never goes into a unit file
            {
                "ENGINEHOUSE_HOME": "/x",
                "ENGINEHOUSE_HOST": "h:1",
                "OLLAMA_HOST": "h:2",
                "ENGINEHOUSE_API_KEY": "k",
            },
            {},
        ),
    ],
)
def test_baked_settings(environ: dict[str, str], baked: dict[str, str]) -> None:
    assert su.baked_settings(environ) == baked


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({}, "/home/al/.config/systemd/user"), ({"XDG_CONFIG_HOME": "/x/cfg"}, "/x/cfg/systemd/user")],
)
def test_user_unit_dir(environ: dict[str, str], expected: str) -> None:
    assert su.user_unit_dir(environ, Path("/home/al")) == Path(expected)


@pytest.mark.parametrize("name", [None, "code"])
def test_launchd_plist_round_trip(name: str | None) -> None:
    s = spec(name=name, environment={"ENGINEHOUSE_NUM_PARALLEL": "8"})
    data = su.render_launchd(s)
    assert data.startswith(b"<?xml")
    loaded = plistlib.loads(data)
    assert loaded == su.launchd_plist(s)
    assert loaded["Label"] == s.label
    assert loaded["ProgramArguments"] == [str(PY), "-m", "enginehouse", "serve", "--host", "127.0.0.1:11434"]
    assert loaded["KeepAlive"] == {"SuccessfulExit": False} and loaded["RunAtLoad"] is True
    assert (
        loaded["StandardOutPath"] == loaded["StandardErrorPath"] == "/home/al/.enginehouse/logs/service.log"
    )
    assert loaded["EnvironmentVariables"]["ENGINEHOUSE_HOME"] == "/home/al/.enginehouse"
    assert loaded["EnvironmentVariables"]["ENGINEHOUSE_NUM_PARALLEL"] == "8"
    assert su.host_of(data.decode()) == "127.0.0.1:11434"


@pytest.mark.parametrize("host", ["127.0.0.1:11434", "0.0.0.0:8080", "[::1]:11434"])
def test_host_read_back(host: str) -> None:
    assert su.host_of(su.render_systemd(spec(host=host))) == host


# -- systemd's own check --------------------------------------------------------------------------


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        pytest.fail("systemd-analyze is missing: scripts/setup.sh installs it (apt-get install -y systemd)")
    pytest.skip("systemd-analyze is missing and cannot be installed here (no apt-get, or not root)")


@pytest.mark.parametrize(
    ("scope", "name", "home"),
    [
        ("user", None, "/home/al/.enginehouse"),
        ("user", "code", "/home/al/odd home 100%/$x"),
        ("system", None, "/srv/enginehouse"),
        ("system", "code", "/srv/eh code"),
    ],
)
def test_systemd_analyze_verify(tmp_path: Path, scope: str, name: str | None, home: str) -> None:
    tool = systemd_analyze()
    s = spec(
        scope=scope,
        name=name,
        home=Path(home),
        run_as="root",
        config_file=Path(home) / "enginehouse.toml",
        environment={"ENGINEHOUSE_ORIGINS": "https://*.example.com,http://app:*"},
    )
    unit = tmp_path / s.unit_name
    unit.write_text(su.render_systemd(s))
    runtime = tmp_path / "run"  # a user manager's runtime directory, which a container lacks
    runtime.mkdir(mode=0o700)
    argv = [tool, *(["--user"] if scope == "user" else []), "verify", str(unit)]
    done = subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # verify only warns (exit 0) about unknown keys and bad values: no line may name the unit
    complaints = [
        line for line in (done.stdout + done.stderr).splitlines() if s.unit_name in line or "ignoring" in line
    ]
    assert complaints == []


def test_systemd_analyze_catches_a_missing_interpreter(tmp_path: Path) -> None:
    """The check above would see a wrong ExecStart: verify looks for the binary."""
    tool = systemd_analyze()
    unit = tmp_path / "enginehouse.service"
    unit.write_text(su.render_systemd(spec(python=tmp_path / "no-such-python", scope="system")))
    done = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True)
    assert done.returncode != 0 and "no-such-python" in done.stderr
