"""``enginehouse service`` end to end in a temporary HOME: the real CLI in a subprocess, with a fake
``systemctl`` on PATH that records its calls and keeps the unit's state (systemd cannot run in this
container), with no systemctl at all, and with a systemctl that cannot reach systemd."""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from enginehouse.cli import service as service_cli
from enginehouse.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent

# Enable/disable leave state files behind, which is-active/is-enabled read back, as systemd would.
FAKE_SYSTEMCTL = """\
#!/bin/sh
echo "$*" >> "$FAKE_SYSTEMCTL_DIR/calls"
unit=""; for a in "$@"; do unit="$a"; done
case "$*" in
  *"enable --now"*)
    if [ -n "$FAKE_SYSTEMCTL_FAIL" ]; then echo "Job for $unit failed: $FAKE_SYSTEMCTL_FAIL" >&2; exit 1; fi
    echo active > "$FAKE_SYSTEMCTL_DIR/$unit.active"; echo enabled > "$FAKE_SYSTEMCTL_DIR/$unit.enabled" ;;
  *"disable --now"*)
    rm -f "$FAKE_SYSTEMCTL_DIR/$unit.active" "$FAKE_SYSTEMCTL_DIR/$unit.enabled" ;;
  *is-active*)
    cat "$FAKE_SYSTEMCTL_DIR/$unit.active" 2>/dev/null && exit 0; echo inactive; exit 3 ;;
  *is-enabled*)
    cat "$FAKE_SYSTEMCTL_DIR/$unit.enabled" 2>/dev/null && exit 0; echo disabled; exit 1 ;;
esac
exit 0
"""


class Box:
    """A temporary HOME with its own XDG_CONFIG_HOME, and the CLI run inside it."""

    def __init__(self, tmp_path: Path, path: str) -> None:
        self.tmp = tmp_path
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.units = tmp_path / "xdg" / "systemd" / "user"
        self.fake = tmp_path / "systemctl-state"
        self.fake.mkdir()
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("ENGINEHOUSE_", "OLLAMA_", "SUDO_"))
        }
        self.env.update(
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(tmp_path / "xdg"),
            ENGINEHOUSE_CACHE_DIR=str(tmp_path / "cache"),
            PYTHONPATH=str(ROOT / "src"),
            PATH=path,
            FAKE_SYSTEMCTL_DIR=str(self.fake),
        )

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "enginehouse", "service", *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def calls(self) -> list[str]:
        path = self.fake / "calls"
        calls = path.read_text().splitlines() if path.exists() else []
        path.unlink(missing_ok=True)
        return calls

    def status(self, *args: str) -> list[dict[str, object]]:
        done = self.run("status", "--json", *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stdout + done.stderr


@pytest.fixture
def box(tmp_path: Path) -> Box:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bindir / "systemctl").chmod(0o755)
    return Box(tmp_path, f"{bindir}:/usr/bin:/bin")


def test_install_status_update_uninstall(box: Box) -> None:
    assert box.status() == []
    assert "no enginehouse service installed" in box.run("status").stdout

    done = box.run("install", "--host", "127.0.0.1:11999")
    assert done.returncode == 0, done.stderr
    unit = box.units / "enginehouse.service"
    assert f"installed {unit}" in done.stdout and "journalctl --user -u enginehouse.service" in done.stdout
    assert "loginctl enable-linger" in done.stdout
    text = unit.read_text()
    assert f'Environment="ENGINEHOUSE_HOME={box.home}/.enginehouse"' in text
    assert f"ExecStart={Path(sys.executable).absolute()} -m enginehouse serve --host 127.0.0.1:11999" in text
    assert f'Environment="PYTHONPATH={ROOT / "src"}"' in text  # so a checkout's service imports the same code
    assert oct(unit.stat().st_mode & 0o777) == "0o644"
    assert not list(box.units.glob(".*.tmp"))
    assert box.calls() == ["--user daemon-reload", "--user enable --now enginehouse.service"]

    [row] = box.status()
    assert row == {
        "name": "default",
        "unit": "enginehouse.service",
        "path": str(unit),
        "installed": True,
        "active": "active",
        "enabled": "enabled",
        "host": "127.0.0.1:11999",
        "scope": "user",
    }
    assert "--user show-environment" in box.calls()  # status only looks: no daemon-reload

    again = box.run("install", "--host", "127.0.0.1:11999")
    assert f"unchanged {unit}" in again.stdout
    assert box.calls() == ["--user daemon-reload", "--user enable --now enginehouse.service"]
    moved = box.run("install", "--host", "127.0.0.1:12001")
    assert f"updated {unit}" in moved.stdout and "127.0.0.1:12001" in unit.read_text()
    assert box.calls()[-1] == "--user try-restart enginehouse.service"  # new settings take effect

    done = box.run("uninstall")
    assert done.returncode == 0 and f"removed {unit}" in done.stdout
    assert not unit.exists()
    assert box.calls() == [
        "--user daemon-reload",
        "--user disable --now enginehouse.service",
        "--user daemon-reload",
    ]
    assert box.status() == []
    gone = box.run("uninstall")
    assert gone.returncode == 0 and "not installed" in gone.stdout and box.calls() == []


def test_named_instances_are_separate_units_with_own_home_and_port(box: Box) -> None:
    refused = box.run("install", "--name", "code")
    assert refused.returncode == 2 and "a named instance needs its own --host" in refused.stderr
    no_traceback(refused)
    bad = box.run("install", "--name", "a/b", "--host", "127.0.0.1:1")
    assert bad.returncode == 2 and "instance name" in bad.stderr

    assert box.run("install", "--host", "127.0.0.1:11434").returncode == 0
    done = box.run("install", "--name", "code", "--host", "127.0.0.1:11435")
    assert done.returncode == 0, done.stderr
    code_unit = box.units / "enginehouse@code.service"
    assert f'Environment="ENGINEHOUSE_HOME={box.home}/.enginehouse-code"' in code_unit.read_text()
    assert box.calls()[-1] == "--user enable --now enginehouse@code.service"

    rows = box.status()
    assert [(r["name"], r["unit"], r["host"], r["active"]) for r in rows] == [
        ("default", "enginehouse.service", "127.0.0.1:11434", "active"),
        ("code", "enginehouse@code.service", "127.0.0.1:11435", "active"),
    ]
    table = box.run("status").stdout.splitlines()
    assert table[0].split() == ["NAME", "INSTALLED", "ACTIVE", "ENABLED", "HOST", "UNIT"]
    assert table[2].split()[:5] == ["code", "yes", "active", "enabled", "127.0.0.1:11435"]
    [one] = box.status("--name", "code")
    assert one["unit"] == "enginehouse@code.service"

    box.calls()
    assert box.run("uninstall", "--name", "code").returncode == 0
    assert "--user disable --now enginehouse@code.service" in box.calls()
    assert [r["name"] for r in box.status()] == ["default"]  # the other one is untouched


def test_settings_are_baked_but_not_the_key(box: Box) -> None:
    config = box.tmp / "eh.toml"
    config.write_text('[models."smollm2:135m"]\nnum_parallel = 8\n')
    done = box.run(
        "install",
        "--config",
        str(config),
        ENGINEHOUSE_NUM_PARALLEL="6",
        ENGINEHOUSE_API_KEY="sekrit",
    )
    assert done.returncode == 0, done.stderr
    text = (box.units / "enginehouse.service").read_text()
    assert f'Environment="ENGINEHOUSE_CONFIG={config}"' in text
    assert 'Environment="ENGINEHOUSE_NUM_PARALLEL=6"' in text
    assert "sekrit" not in text and "API_KEY" not in text
    assert "ENGINEHOUSE_API_KEY is set here but not written to the unit" in done.stdout
    assert f"{box.home}/.enginehouse/service.env" in done.stdout


def test_a_broken_config_is_refused_before_anything_is_written(box: Box) -> None:
    config = box.tmp / "eh.toml"
    config.write_text('[models."x"]\nnum_parallel = "many"\n')
    done = box.run("install", "--config", str(config))
    assert done.returncode == 1 and "eh.toml" in done.stderr
    no_traceback(done)
    assert not box.units.exists() and box.calls() == []


def test_a_failed_start_says_why_and_where_the_log_is(box: Box) -> None:
    done = box.run("install", FAKE_SYSTEMCTL_FAIL="exit-code")
    assert done.returncode == 1
    assert "failed: Job for enginehouse.service failed: exit-code" in done.stderr
    assert "journalctl --user -u enginehouse.service" in done.stderr
    no_traceback(done)


def test_no_start_and_dry_run(box: Box) -> None:
    printed = box.run("install", "--print")
    assert printed.returncode == 0 and printed.stdout.startswith("# Written by `enginehouse service install`")
    assert not box.units.exists() and box.calls() == []
    done = box.run("install", "--no-start")
    assert done.returncode == 0 and (box.units / "enginehouse.service").is_file()
    assert box.calls() == []
    assert "systemctl --user enable --now enginehouse.service" in done.stdout


def test_without_systemctl_the_unit_is_written_and_the_commands_shown(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    box = Box(tmp_path, str(empty))
    done = box.run("install")
    assert done.returncode == 0, done.stderr
    assert (box.units / "enginehouse.service").is_file()
    assert "not started: systemctl is not installed here" in done.stdout
    assert "  systemctl --user daemon-reload" in done.stdout
    assert "  systemctl --user enable --now enginehouse.service" in done.stdout
    [row] = box.status()
    assert (row["installed"], row["active"], row["enabled"]) == (True, None, None)
    assert "unknown: systemctl is not installed here" in box.run("status").stdout
    assert box.run("uninstall").returncode == 0 and not (box.units / "enginehouse.service").exists()


@pytest.mark.skipif(not Path("/usr/bin/systemctl").exists(), reason="no real systemctl here")
@pytest.mark.skipif(
    Path("/run/systemd/system").is_dir(), reason="systemd runs here: a real install would start"
)
def test_a_systemctl_that_cannot_reach_systemd(tmp_path: Path) -> None:
    box = Box(tmp_path, "/usr/bin:/bin")
    done = box.run("install", "--name", "x", "--host", "127.0.0.1:1")
    assert done.returncode == 0, done.stderr
    assert "not started: systemd cannot be reached (" in done.stdout
    assert (box.units / "enginehouse@x.service").is_file()


# -- in process: root and platforms this machine is not --------------------------------------------


@pytest.fixture
def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    for key in [k for k in os.environ if k.startswith(("ENGINEHOUSE_", "SUDO_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    cli.add_command(service_cli.service)

    def run(*args: str) -> object:
        return CliRunner().invoke(cli, ["service", *args])

    return run


def test_system_needs_root(invoke, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = invoke("install", "--system")
    assert result.exit_code == 1
    assert "--system writes /etc/systemd/system" in result.output and "needs root" in result.output
    assert "sudo" in result.output
    assert invoke("uninstall", "--system").exit_code == 1
    printed = invoke("install", "--system", "--print")  # printing needs no root
    assert printed.exit_code == 0 and "WantedBy=multi-user.target" in printed.output


def test_system_unit_runs_as_the_sudo_user(invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("writes a system unit as root (into a temporary folder)")
    monkeypatch.setattr(service_cli.su, "SYSTEM_UNIT_DIR", tmp_path / "etc-systemd")
    monkeypatch.setenv("SUDO_USER", "nobody")
    result = invoke("install", "--system", "--host", "0.0.0.0:11434")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "etc-systemd" / "enginehouse.service").read_text()
    import pwd

    nobody_home = pwd.getpwnam("nobody").pw_dir
    assert "User=nobody" in text.splitlines()
    assert f'Environment="ENGINEHOUSE_HOME={nobody_home}/.enginehouse"' in text  # the user's home, not root's
    assert "not started: systemctl is not installed here" in result.output
    assert "  systemctl enable --now enginehouse.service" in result.output


def test_macos_writes_a_launch_agent(invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(service_cli, "_launchd", lambda: True)
    result = invoke("install", "--name", "code", "--host", "127.0.0.1:11435", "--no-start")
    assert result.exit_code == 0, result.output
    plist = tmp_path / "Library" / "LaunchAgents" / "dev.enginehouse.code.plist"
    loaded = plistlib.loads(plist.read_bytes())
    assert loaded["Label"] == "dev.enginehouse.code"
    assert loaded["StandardOutPath"] == str(tmp_path / ".enginehouse-code" / "logs" / "service.log")
    assert (tmp_path / ".enginehouse-code" / "logs").is_dir()
    assert f"launchctl bootstrap gui/{os.getuid()} {plist}" in result.output
    status = invoke("status", "--json")
    assert [(r["name"], r["host"]) for r in json.loads(status.output)] == [("code", "127.0.0.1:11435")]
    assert invoke("install", "--system").exit_code == 2  # launchd agents are per user


def test_help_explains(invoke) -> None:  # type: ignore[no-untyped-def]
    for args in (["--help"], ["install", "--help"], ["uninstall", "--help"], ["status", "--help"]):
        result = invoke(*args)
        assert result.exit_code == 0 and "Usage:" in result.output
    assert "--json" in invoke("status", "--help").output
    assert shutil.which("systemctl") is None  # PATH was emptied for these
