"""Service definitions for ``enginehouse service``: a systemd unit (Linux) or a launchd plist (macOS).

Pure: a :class:`ServiceSpec` in, text or a plist dict out, and where each file goes. No files are
written and no process is started here; ``cli/service.py`` does that.

One service is one gateway: ``serve`` with its own home and bind address. A named instance
(``--name NAME``) is another gateway beside the default one, with a home and a port of its own: the
systemd unit ``enginehouse@NAME.service`` (a concrete instance file, not a template, so each carries
its own settings) or the launchd label ``dev.enginehouse.NAME``.
"""

from __future__ import annotations

import plistlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from enginehouse.config import SETTINGS

SCOPES = ("user", "system")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# The gateway stops its runners itself on SIGTERM (each gets 10 s, vLLM 30 s, before SIGKILL) and
# aiohttp's shutdown takes 5 s more; stragglers are SIGKILLed by the service manager after this.
STOP_TIMEOUT_S = 90

# Settings the unit bakes from its own options, never copied from the installing shell.
OWN = {"ENGINEHOUSE_HOME", "ENGINEHOUSE_HOST", "ENGINEHOUSE_CONFIG"}
SECRET = "ENGINEHOUSE_API_KEY"  # never written into a unit file (mode 644): service.env holds it


def check_name(name: str | None) -> str | None:
    if name is not None and not NAME.fullmatch(name):
        raise ValueError(
            f"instance name {name!r}: use letters, digits, '.', '_' or '-' (64 at most), starting with "
            "a letter or digit"
        )
    return name


@dataclass(frozen=True)
class ServiceSpec:
    python: Path  # the interpreter that runs ``-m enginehouse`` (the one installing the service)
    home: Path
    host: str
    name: str | None = None  # a named instance; None: the default one
    scope: str = "user"  # "user" or "system" (systemd); launchd agents are per user
    config_file: Path | None = None
    environment: Mapping[str, str] = field(default_factory=dict)  # other ENGINEHOUSE_* settings
    run_as: str | None = None  # system units: User=

    @property
    def unit_name(self) -> str:
        return f"enginehouse@{self.name}.service" if self.name else "enginehouse.service"

    @property
    def label(self) -> str:
        return f"dev.enginehouse.{self.name}" if self.name else "dev.enginehouse"

    @property
    def env_file(self) -> Path:
        """Optional settings the unit file should not hold (ENGINEHOUSE_API_KEY), mode 600."""
        return self.home / "service.env"

    @property
    def log_file(self) -> Path:
        """launchd has no journal: the gateway's output goes here."""
        return self.home / "logs" / "service.log"

    def argv(self) -> list[str]:
        return [str(self.python), "-m", "enginehouse", "serve", "--host", self.host]

    def env(self) -> dict[str, str]:
        env = {"ENGINEHOUSE_HOME": str(self.home)}
        if self.config_file is not None:
            env["ENGINEHOUSE_CONFIG"] = str(self.config_file)
        env.update(sorted(self.environment.items()))
        env["PYTHONUNBUFFERED"] = "1"  # log lines reach the journal as they happen
        return env


def baked_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings of the installing shell a service keeps: every ENGINEHOUSE_* (or the Ollama variable
    it falls back on) that is set, except those the unit sets itself and the API key."""
    baked = {}
    for s in SETTINGS:
        if s.env in OWN or s.env == SECRET:
            continue
        value = environ.get(s.env)
        if value is None and s.fallback_env:
            value = environ.get(s.fallback_env)
        if value is not None:
            baked[s.env] = value
    return baked


# -- systemd ----------------------------------------------------------------------------------------


def user_unit_dir(environ: Mapping[str, str], home: Path) -> Path:
    """Where ``systemctl --user`` looks first: $XDG_CONFIG_HOME/systemd/user, else ~/.config/..."""
    base = environ.get("XDG_CONFIG_HOME") or str(home / ".config")
    return Path(base) / "systemd" / "user"


SYSTEM_UNIT_DIR = Path("/etc/systemd/system")


def _plain(value: str, what: str) -> str:
    if any(ord(c) < 32 or c == "\x7f" for c in value):
        raise ValueError(f"{what} {value!r} holds a control character; a unit file cannot carry it")
    return value


def quote_word(word: str) -> str:
    """One ExecStart= word: ``%`` and ``$`` doubled (specifiers, variables), quoted when it has to be."""
    word = _plain(word, "argument").replace("%", "%%").replace("$", "$$")
    if word and not re.search(r"[\s\"'\\;]", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_assignment(key: str, value: str) -> str:
    """One Environment= assignment, always quoted; ``%`` doubled (specifiers are expanded there)."""
    text = f"{key}={_plain(value, key)}".replace("%", "%%")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_systemd(spec: ServiceSpec) -> str:
    system = spec.scope == "system"
    instance = f" ({spec.name})" if spec.name else ""
    lines = [
        "# Written by `enginehouse service install`; `enginehouse service uninstall` removes it.",
        "[Unit]",
        f"Description=enginehouse LLM gateway{instance} on {_plain(spec.host, 'host')}".replace("%", "%%"),
    ]
    if system:  # a user manager has no network-online.target
        lines += ["Wants=network-online.target", "After=network-online.target"]
    lines += [
        "",
        "[Service]",
        "Type=exec",
        "ExecStart=" + " ".join(quote_word(w) for w in spec.argv()),
        *(f"Environment={quote_assignment(k, v)}" for k, v in spec.env().items()),
        f"EnvironmentFile=-{_plain(str(spec.env_file), 'home').replace('%', '%%')}",
    ]
    if system and spec.run_as:
        lines.append(f"User={_plain(spec.run_as, 'user')}")
    lines += [
        "Restart=on-failure",
        "RestartSec=5",
        "# SIGTERM to the gateway alone: it stops its runners (llama-server, vLLM) itself; whatever is",
        "# left after TimeoutStopSec is killed.",
        "KillMode=mixed",
        f"TimeoutStopSec={STOP_TIMEOUT_S}",
        "# Output goes to the journal: journalctl " + ("" if system else "--user ") + f"-u {spec.unit_name}",
        "NoNewPrivileges=yes",
    ]
    if system:
        # Namespaces need privileges a user manager lacks (there they imply PrivateUsers=, which
        # fails to start the unit where user namespaces are off), so only system units get them.
        # No ProtectHome=: the store and the engine builds live in the user's home.
        lines += [
            "PrivateTmp=yes",
            "ProtectSystem=full",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectControlGroups=yes",
            "RestrictSUIDSGID=yes",
        ]
    lines += ["", "[Install]", f"WantedBy={'multi-user.target' if system else 'default.target'}", ""]
    return "\n".join(lines)


# -- launchd ----------------------------------------------------------------------------------------


def launch_agents_dir(home: Path) -> Path:
    return home / "Library" / "LaunchAgents"


def launchd_plist(spec: ServiceSpec) -> dict[str, object]:
    return {
        "Label": spec.label,
        "ProgramArguments": spec.argv(),
        "EnvironmentVariables": spec.env(),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # restarted after a failure, not after a clean stop
        "ThrottleInterval": 5,
        "ExitTimeOut": STOP_TIMEOUT_S,
        "ProcessType": "Interactive",  # not throttled like a background job: it serves requests
        "StandardOutPath": str(spec.log_file),
        "StandardErrorPath": str(spec.log_file),
    }


def render_launchd(spec: ServiceSpec) -> bytes:
    return plistlib.dumps(launchd_plist(spec), sort_keys=False)


# -- reading back -----------------------------------------------------------------------------------

_HOST = re.compile(r"^ExecStart=.*\s--host\s+\"?([^\s\"]+)", re.MULTILINE)


def host_of(text: str) -> str | None:
    """The bind address an installed unit (or plist) serves on, for ``service status``."""
    if text.lstrip().startswith("<?xml"):
        args = plistlib.loads(text.encode()).get("ProgramArguments", [])
        return args[args.index("--host") + 1] if "--host" in args[:-1] else None
    match = _HOST.search(text)
    return match.group(1) if match else None
