"""``enginehouse service install|uninstall|status``: run the gateway under systemd (Linux) or launchd
(macOS), started at boot or login and restarted after a failure.

The unit is rendered by :mod:`enginehouse.service_units`; this module writes it, and drives
``systemctl``/``launchctl``. Where those are missing or cannot reach a service manager (a container),
the file is still written and the commands to run are printed.
"""

from __future__ import annotations

import getpass
import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from enginehouse import service_units as su
from enginehouse.config import Config

TIMEOUT_S = 120  # enable --now waits for the start; daemon-reload can be slow on a busy machine


def _launchd() -> bool:
    return sys.platform == "darwin"


@dataclass(frozen=True)
class Target:
    """Where one service's file lives and how its manager is told."""

    spec: su.ServiceSpec
    path: Path

    @property
    def launchd(self) -> bool:
        return self.path.suffix == ".plist"

    def render(self) -> bytes:
        return su.render_launchd(self.spec) if self.launchd else su.render_systemd(self.spec).encode()

    def systemctl(self, *args: str) -> list[str]:
        return ["systemctl", *([] if self.spec.scope == "system" else ["--user"]), *args]

    @property
    def domain(self) -> str:
        return f"gui/{os.getuid()}"

    def install_commands(self, updated: bool) -> list[list[str]]:
        if self.launchd:
            return [["launchctl", "bootstrap", self.domain, str(self.path)]]
        commands = [self.systemctl("daemon-reload"), self.systemctl("enable", "--now", self.spec.unit_name)]
        if updated:  # enable --now leaves a running service on its old settings
            commands.append(self.systemctl("try-restart", self.spec.unit_name))
        return commands

    def stop_commands(self) -> list[list[str]]:
        if self.launchd:
            return [["launchctl", "bootout", f"{self.domain}/{self.spec.label}"]]
        return [self.systemctl("disable", "--now", self.spec.unit_name)]

    @property
    def journal(self) -> str:
        if self.launchd:
            return f"tail -f {shlex.quote(str(self.spec.log_file))}"
        return f"journalctl {'' if self.spec.scope == 'system' else '--user '}-u {self.spec.unit_name} -f"


# -- options shared by the three commands ----------------------------------------------------------


def _scope_options(fn):  # type: ignore[no-untyped-def]
    fn = click.option(
        "--name",
        help="A named instance: another gateway beside the default one, with its own home and port "
        "(systemd unit enginehouse@NAME.service, launchd label dev.enginehouse.NAME).",
    )(fn)
    fn = click.option(
        "--system",
        "scope",
        flag_value="system",
        help="A system unit in /etc/systemd/system, started at boot (needs root).",
    )(fn)
    fn = click.option(
        "--user",
        "scope",
        flag_value="user",
        default=True,
        help="A user unit in ~/.config/systemd/user, started at login (the default).",
    )(fn)
    return fn


def _check_scope(scope: str, needs_root: bool) -> None:
    if scope != "system":
        return
    if _launchd():
        raise click.UsageError("--system is for systemd; on macOS the service is a LaunchAgent of yours")
    if needs_root and os.geteuid() != 0:
        raise click.ClickException(
            f"--system writes {su.SYSTEM_UNIT_DIR} and runs systemctl for the whole machine, which needs "
            "root: run it with sudo (sudo -E keeps your ENGINEHOUSE_* settings), or leave --system out "
            "for a user unit"
        )


def _unit_dir(scope: str) -> Path:
    if _launchd():
        return su.launch_agents_dir(Path.home())
    return su.SYSTEM_UNIT_DIR if scope == "system" else su.user_unit_dir(os.environ, Path.home())


def _target(spec: su.ServiceSpec) -> Target:
    directory = _unit_dir(spec.scope)
    return Target(spec, directory / (f"{spec.label}.plist" if _launchd() else spec.unit_name))


def _named(name: str | None) -> str | None:
    try:
        return su.check_name(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from None


# -- running the service manager -------------------------------------------------------------------


def _run(argv: list[str]) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, f"{argv[0]}: {exc}"
    return done.returncode, (done.stdout + done.stderr).strip()


def _manager(target: Target, probe: str = "daemon-reload") -> tuple[bool, str]:
    """Whether the service manager can be driven here: (True, "") or (False, why not). The probe is a
    systemctl verb that needs a running systemd: daemon-reload before a change, show-environment to
    only look."""
    tool = "launchctl" if target.launchd else "systemctl"
    if shutil.which(tool) is None:
        return False, f"{tool} is not installed here"
    if target.launchd:
        return True, ""
    code, out = _run(target.systemctl(probe))
    if code == 0:
        return True, ""
    return False, f"systemd cannot be reached ({out.splitlines()[0] if out else f'exit code {code}'})"


def _tell(commands: list[list[str]]) -> None:
    for argv in commands:
        click.echo(f"  {shlex.join(argv)}")


# -- install ----------------------------------------------------------------------------------------


def _home_for(config: Config, name: str | None, run_as: str | None, explicit: Path | None) -> Path:
    """The default instance uses this shell's ENGINEHOUSE_HOME; a named one NAME beside it
    (~/.enginehouse-NAME). A system unit for another user uses that user's home, unless told."""
    if explicit is not None:
        return explicit.expanduser().absolute()
    home = config.home
    if run_as and run_as != getpass.getuser() and "ENGINEHOUSE_HOME" not in os.environ:
        home = Path(pwd.getpwnam(run_as).pw_dir) / ".enginehouse"
    if name:
        home = home.with_name(f"{home.name}-{name}")
    return home.absolute()


def _run_as(scope: str, run_as: str | None) -> str | None:
    if scope != "system":
        return None
    user = run_as or os.environ.get("SUDO_USER") or getpass.getuser()
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise click.BadParameter(f"no such user: {user}", param_hint="--run-as") from None
    return user


def _spec(
    config: Config,
    *,
    name: str | None,
    scope: str,
    host: str | None,
    home: Path | None,
    config_file: Path | None,
    run_as: str | None,
) -> su.ServiceSpec:
    from enginehouse.config_file import load_config_file
    from enginehouse.engines.llama_install import find_llama_server

    if name and not host:
        raise click.UsageError(
            f"a named instance needs its own --host HOST:PORT ({config.host} belongs to the default one)"
        )
    user = _run_as(scope, run_as)
    home = _home_for(config, name, user, home)
    instance = config.with_(home=home, config_file=config_file or config.config_file)
    path = instance.config_path  # the file named, else HOME/enginehouse.toml when it exists
    if path is not None:
        path = path.expanduser().absolute()
        load_config_file(path)  # a broken file is refused now (file:line: key), not at every restart
    settings = su.baked_settings(os.environ)
    if pythonpath := os.environ.get("PYTHONPATH"):  # e.g. a checkout run with PYTHONPATH=src
        settings["PYTHONPATH"] = os.pathsep.join(
            str(Path(p).absolute()) for p in pythonpath.split(os.pathsep)
        )
    found = find_llama_server(config)
    if found is not None and found.source == "path":  # a service's PATH is not this shell's
        settings["ENGINEHOUSE_LLAMA_SERVER"] = str(found.path)
    try:
        spec = su.ServiceSpec(
            python=Path(sys.executable).absolute(),
            home=home,
            host=host or config.host,
            name=name,
            scope=scope,
            config_file=path,
            environment=settings,
            run_as=None if user == "root" else user,
        )
        spec.argv(), su.render_systemd(spec)  # refuses control characters in any value
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    return spec


def _write(path: Path, data: bytes) -> None:
    """Atomically: a half-written unit is never loaded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.chmod(0o644)
    os.replace(tmp, path)


@click.group()
def service() -> None:
    """Run the server as a service: systemd on Linux (a user unit, or --system), launchd on macOS.

    \b
    enginehouse service install                  # enginehouse.service, 127.0.0.1:11434, started now
    enginehouse service install --host 0.0.0.0:11434 --system   # at boot, for the network (sudo)
    enginehouse service install --name code --host 127.0.0.1:11435   # a second gateway
    enginehouse service status [--json]
    enginehouse service uninstall [--name code]
    """


@service.command()
@_scope_options
@click.option("--host", help="host:port the service binds (default ENGINEHOUSE_HOST, 127.0.0.1:11434).")
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    help="Its ENGINEHOUSE_HOME (default: this shell's; for --name NAME, the same with -NAME appended).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Its enginehouse.toml (default ENGINEHOUSE_CONFIG, else HOME/enginehouse.toml when present).",
)
@click.option("--run-as", help="--system: the user it runs as (default: the one who ran sudo).")
@click.option("--no-start", is_flag=True, help="Write the unit only: no daemon-reload, enable or start.")
@click.option("--dry-run", "--print", "dry_run", is_flag=True, help="Print the unit instead of writing it.")
@click.pass_obj
def install(
    config: Config,
    name: str | None,
    scope: str,
    host: str | None,
    home: Path | None,
    config_file: Path | None,
    run_as: str | None,
    no_start: bool,
    dry_run: bool,
) -> None:
    """Write the service's unit (or plist) and start it now and at every boot or login.

    The unit runs `python -m enginehouse serve --host HOST` with this Python, and bakes in
    ENGINEHOUSE_HOME, the config file and every ENGINEHOUSE_* setting of this shell except
    ENGINEHOUSE_API_KEY: put that in HOME/service.env (mode 600), which the unit reads.
    Run it again to change the settings: the unit is replaced and a running service restarted.
    """
    name = _named(name)
    _check_scope(scope, needs_root=not dry_run)
    spec = _spec(config, name=name, scope=scope, host=host, home=home, config_file=config_file, run_as=run_as)
    target = _target(spec)
    data = target.render()
    if dry_run:
        click.echo(data.decode(), nl=False)
        return
    before = target.path.read_bytes() if target.path.is_file() else None
    _write(target.path, data)
    if target.launchd:
        spec.log_file.parent.mkdir(parents=True, exist_ok=True)  # launchd creates the file, not its folder
    verb = "installed" if before is None else ("updated" if before != data else "unchanged")
    click.echo(f"{verb} {target.path}")
    click.echo(f"  serves http://{spec.host} from {spec.home}")
    if os.environ.get(su.SECRET):
        click.secho(
            f"  ENGINEHOUSE_API_KEY is set here but not written to the unit: put it in {spec.env_file}"
            " (chmod 600)",
            fg="yellow",
        )
    commands = target.install_commands(updated=verb == "updated")
    if target.launchd and before is not None:  # bootstrap refuses a label that is loaded
        commands.insert(0, target.stop_commands()[0])
    if no_start:
        click.echo("not started (--no-start); to start it now and at every " + _when(spec) + ":")
        _tell(commands)
        return
    usable, why = _manager(target)
    if not usable:
        click.echo(f"not started: {why}. Where it can be, run:")
        _tell(commands)
        return
    for argv in commands:
        if argv[-1] == "daemon-reload":  # done by _manager
            continue
        code, out = _run(argv)
        if code != 0 and not (target.launchd and argv[1] == "bootout"):
            raise click.ClickException(f"`{shlex.join(argv)}` failed: {out}\n  its log: {target.journal}")
    click.echo(f"started and enabled at every {_when(spec)}; logs: {target.journal}")
    if spec.scope == "user" and not target.launchd:
        click.echo(
            "  a user unit runs while you are logged in; to keep it running after logout and start it at"
            f" boot: loginctl enable-linger {getpass.getuser()}"
        )


def _when(spec: su.ServiceSpec) -> str:
    return "boot" if spec.scope == "system" else "login"


# -- uninstall ---------------------------------------------------------------------------------------


def _existing(config: Config, name: str | None, scope: str) -> Target:
    """The target of an installed service (its settings do not matter for uninstall and status)."""
    spec = su.ServiceSpec(
        python=Path(sys.executable), home=config.home, host=config.host, name=name, scope=scope
    )
    return _target(spec)


@service.command()
@_scope_options
@click.pass_obj
def uninstall(config: Config, name: str | None, scope: str) -> None:
    """Stop the service, disable it and remove its unit (or plist). The home and its models stay."""
    name = _named(name)
    _check_scope(scope, needs_root=True)
    target = _existing(config, name, scope)
    if not target.path.exists():
        click.echo(f"not installed: {target.path} does not exist")
        return
    usable, why = _manager(target)
    if usable:
        for argv in target.stop_commands():
            code, out = _run(argv)
            if code != 0 and not target.launchd:  # launchd: not loaded is fine
                raise click.ClickException(f"`{shlex.join(argv)}` failed: {out}")
    target.path.unlink()
    if usable and not target.launchd:
        _run(target.systemctl("daemon-reload"))
    click.echo(f"removed {target.path}")
    if not usable:
        click.echo(f"{why}: if it still runs somewhere this file was copied to, stop it there with:")
        _tell(target.stop_commands())


# -- status -----------------------------------------------------------------------------------------


def _installed(scope: str) -> list[str | None]:
    """The instances with a unit in this scope: None for the default one, then the named ones."""
    directory = _unit_dir(scope)
    if not directory.is_dir():
        return []
    if _launchd():
        names = [p.stem.removeprefix("dev.enginehouse") for p in directory.glob("dev.enginehouse*.plist")]
        return sorted(
            (n.removeprefix(".") or None for n in names if n == "" or n.startswith(".")), key=_order
        )
    found = [None] if (directory / "enginehouse.service").exists() else []
    named = sorted(
        p.name[len("enginehouse@") : -len(".service")] for p in directory.glob("enginehouse@?*.service")
    )
    return [*found, *named]


def _order(name: str | None) -> str:
    return "" if name is None else "~" + name


def _state(target: Target, usable: bool) -> tuple[str | None, str | None]:
    """(active, enabled) as the service manager says, None when it cannot be asked."""
    if not usable:
        return None, None
    if target.launchd:
        code, out = _run(["launchctl", "print", f"{target.domain}/{target.spec.label}"])
        if code != 0:
            return "inactive", "disabled"
        running = any(line.strip() == "state = running" for line in out.splitlines())
        return ("active" if running else "inactive"), "enabled"
    active = _run(target.systemctl("is-active", target.spec.unit_name))[1].splitlines()
    enabled = _run(target.systemctl("is-enabled", target.spec.unit_name))[1].splitlines()
    return (active[0] if active else "unknown"), (enabled[0] if enabled else "unknown")


@service.command()
@_scope_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
def status(config: Config, name: str | None, scope: str, as_json: bool) -> None:
    """List the installed services (or the one --name names): installed, active, enabled, address."""
    name = _named(name)
    _check_scope(scope, needs_root=False)
    names = [name] if name else _installed(scope)
    rows = []
    usable, why = False, ""
    for n in names:
        target = _existing(config, n, scope)
        installed = target.path.is_file()
        if installed and not why and not usable:
            usable, why = _manager(target, probe="show-environment")
        active, enabled = _state(target, usable) if installed else ("inactive", "not-found")
        rows.append(
            {
                "name": n or "default",
                "unit": target.path.name,
                "path": str(target.path),
                "installed": installed,
                "active": active,
                "enabled": enabled,
                "host": su.host_of(target.path.read_text()) if installed else None,
                "scope": scope,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no enginehouse service installed ({scope}); `enginehouse service install` adds one")
        return
    click.echo(f"{'NAME':<14}{'INSTALLED':<11}{'ACTIVE':<11}{'ENABLED':<11}{'HOST':<22}UNIT")
    for r in rows:
        click.echo(
            f"{r['name']:<14}{'yes' if r['installed'] else 'no':<11}{r['active'] or 'unknown':<11}"
            f"{r['enabled'] or 'unknown':<11}{r['host'] or '':<22}{r['path']}"
        )
    if why:
        click.echo(f"(active and enabled unknown: {why})")


COMMANDS = (service,)
