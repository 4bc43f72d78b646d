"""Starting on boot: the systemd unit of one instance (`kvern service install` / `uninstall`).

The unit runs the foreground `kvern up` (Type=simple: it stays attached while the instance runs) and stops the
instance through `kvern down`, which drains it in tiers: nginx first, then web heads and workers (a running job
finishes), the broker last. Why not let systemd signal the processes itself: its default KillMode sends SIGTERM
to every process of the unit at once, so the broker would stop while workers still need it to acknowledge, and
nginx would drop the requests in flight. With `KillMode=mixed` only `kvern up` gets SIGTERM (after `ExecStop=`
has drained everything, it finds nothing left and exits 0); SIGKILL reaches what remains only after
`TimeoutStopSec`, which is longer than the longest task may run.

Every value written into the unit is checked and escaped for systemd's unit syntax: a control character (a
line break would start a new setting) is refused, `%` (specifiers) is doubled, command words are quoted with
`\\` and `"` escaped and `$` (variable expansion) doubled.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kvern.errors import ServiceError
from kvern.files import atomic_write
from kvern.spec import Spec, check_config_path

UNIT_PREFIX = "kvern-"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
USER_UNIT_DIR = Path(".config/systemd/user")  # under the home directory
STATE_DIR_MARK = "# kvern state dir: "  # how uninstall (and a later install) finds the unit of a state dir
RESTART_SEC = 5
# Stopping drains in tiers, each bounded on its own: nginx (30 s), then workers (their longest task plus a
# margin), then the broker (60 s). The unit waits for all of them before it resorts to SIGKILL.
STOP_MARGIN_S = 180
PRIVILEGED_PORT_MAX = 1023
# systemd's strict user name rules (also useradd's default): anything else is refused rather than guessed at.
USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,30}\$?$")
# Command words that need no quotes in an Exec line.
BARE_WORD = re.compile(r"^[A-Za-z0-9_./:@+=,-]+$")
EXECUTABLE_REFUSED = frozenset("\"'\\")  # systemd: "Executable name contains special characters"
SYSTEMCTL_TIMEOUT_S = 600  # `disable --now` waits for the instance to drain


@dataclass(frozen=True)
class UnitFile:
    """What one instance's unit says; `render_unit` writes it, every value checked and escaped."""

    instance: str  # the spec's app name
    kvern: Path  # the kvern executable, absolute
    spec_path: Path
    state_dir: Path
    working_dir: Path
    stop_timeout_s: int
    user: str | None = None
    system: bool = True  # a unit of the system manager (else of the user's own manager)
    bind_privileged_ports: bool = False  # an unprivileged User= must still bind :80 and :443

    def command(self, action: str) -> list[str]:
        return [str(self.kvern), "-f", str(self.spec_path), "--state", str(self.state_dir), action]


def render_unit(unit: UnitFile) -> str:
    """The unit file's text; a value systemd would read differently from what is meant raises ServiceError."""
    exec_lines = {action: exec_line(unit.command(action), f"kvern {action}") for action in ("up", "down", "reload")}
    lines = [
        "# Written by `kvern service install`; `kvern service uninstall` removes it. Edits are lost at the",
        "# next install. Stopping goes through `kvern down`: running jobs finish first.",
        f"{STATE_DIR_MARK}{_plain(str(unit.state_dir), 'state dir')}",
        "[Unit]",
        f"Description=kvern instance {_plain(unit.instance, 'app name')}",
        *(["After=network-online.target", "Wants=network-online.target"] if unit.system else []),
        "",
        "[Service]",
        "Type=simple",
        *([f"User={_user_value(unit.user)}"] if unit.user else []),
        f"WorkingDirectory={_path(unit.working_dir, 'spec folder')}",
        "Environment=PYTHONUNBUFFERED=1",
        f"ExecStart={exec_lines['up']}",
        f"ExecStop={exec_lines['down']}",
        f"ExecReload={exec_lines['reload']}",
        "KillMode=mixed",
        f"TimeoutStopSec={unit.stop_timeout_s}",
        # A reload replaces workers warm (each finishes its running job); systemd times reloads by this one.
        f"TimeoutStartSec={unit.stop_timeout_s}",
        "Restart=on-failure",
        f"RestartSec={RESTART_SEC}",
        "RestartPreventExitStatus=3",  # an invalid spec: restarting cannot help (fix it, then systemctl start)
        *(["AmbientCapabilities=CAP_NET_BIND_SERVICE"] if unit.bind_privileged_ports else []),
        "",
        "[Install]",
        f"WantedBy={'multi-user.target' if unit.system else 'default.target'}",
    ]
    return "\n".join(lines) + "\n"


def _text(value: str, what: str) -> str:
    """Refuse what no quoting can carry in a unit file: a control character (a line break starts a new
    setting) or bytes that are not UTF-8 (systemd refuses the whole line)."""
    bad = next((c for c in value if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ServiceError(f"{what}: {value!r} contains {bad!r}, which cannot be written into a systemd unit")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ServiceError(f"{what}: {value!r} is not valid UTF-8, which a systemd unit requires") from None
    return value


def _plain(value: str, what: str) -> str:
    """A value systemd takes as written, specifiers aside: it strips surrounding blanks and joins a line ending
    in a backslash to the next one, so those are refused."""
    _text(value, what)
    if value != value.strip() or value.endswith("\\"):
        raise ServiceError(f"{what}: {value!r} starts or ends with a blank or a backslash, which systemd would lose")
    return value.replace("%", "%%")


def _path(path: Path, what: str) -> str:
    if not path.is_absolute():
        raise ServiceError(f"{what}: {path} is not an absolute path")
    return _plain(str(path), what)


def exec_word(word: str, what: str) -> str:
    """One argument of an Exec line: specifiers (`%`) and variables (`$`) doubled; quoted, with `\\` and `"`
    escaped, when it holds anything but plain path characters."""
    _text(word, what)
    escaped = word.replace("%", "%%").replace("$", "$$")
    if BARE_WORD.match(word):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_executable(path: str, what: str) -> str:
    """The executable of an Exec line: absolute; systemd expands no variable in it and refuses quotes and
    backslashes in it whatever the escaping."""
    _text(path, what)
    if not Path(path).is_absolute():
        raise ServiceError(f"{what}: the executable {path!r} must be an absolute path")
    bad = next((c for c in path if c in EXECUTABLE_REFUSED), None)
    if bad is not None:
        raise ServiceError(f"{what}: systemd refuses an executable path holding {bad!r}: {path!r}")
    escaped = path.replace("%", "%%")
    return escaped if BARE_WORD.match(path) else f'"{escaped}"'


def exec_line(command: Sequence[str], what: str) -> str:
    if not command:
        raise ServiceError(f"{what}: no command")
    return " ".join([exec_executable(command[0], what), *(exec_word(word, what) for word in command[1:])])


def _user_value(user: str) -> str:
    if not USER_NAME.match(user):
        raise ServiceError(f"--user: {user!r} is not a user name systemd accepts (lowercase, digits, '_', '-')")
    return user


# -- the unit of an instance -------------------------------------------------------------------------------


def running_as_root() -> bool:
    return os.geteuid() == 0


def default_unit_dir(system: bool) -> Path:
    """Where systemd looks for units an administrator wrote: the system's, or the user's own."""
    return SYSTEM_UNIT_DIR if system else Path.home() / USER_UNIT_DIR


def kvern_executable() -> Path:
    """The `kvern` command to write into the unit: the one running now, else the one beside this Python (a
    virtualenv's bin), else the first on PATH. Absolute, symlinks kept: a link into a virtualenv works."""
    invoked = Path(sys.argv[0]) if sys.argv else None
    if invoked is not None and invoked.name == "kvern" and os.access(invoked, os.X_OK):
        return Path(os.path.abspath(invoked))
    beside = Path(sys.executable).parent / "kvern"
    if os.access(beside, os.X_OK):
        return Path(os.path.abspath(beside))
    found = shutil.which("kvern")
    if found is None:
        raise ServiceError("cannot find the kvern executable (run this command as `kvern`, from its virtualenv)")
    return Path(os.path.abspath(found))


def stop_timeout_s(spec: Spec) -> int:
    return math.ceil(spec.longest_time_limit) + STOP_MARGIN_S


def listens_on_privileged_port(spec: Spec) -> bool:
    addresses = [*spec.web.listen, *(spec.web.tls.listen if spec.web.tls else ())]
    return any(address.port <= PRIVILEGED_PORT_MAX for address in addresses)


def checked_user(user: str | None, system: bool) -> str | None:
    """The account User= names: it must exist; a user's own manager cannot switch to another account."""
    if user is None:
        return None
    _user_value(user)
    if not system:
        raise ServiceError("--user needs root: a unit of your own systemd instance always runs as you")
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise ServiceError(f"--user: no account named {user!r} on this machine") from None
    return user


def unit_for(spec: Spec, state_dir: Path, user: str | None = None, system: bool | None = None) -> UnitFile:
    """The unit of the instance of `spec` and `state_dir`, as whoever runs this command would install it."""
    check_config_path(state_dir, "state dir", ServiceError)  # `up` refuses it otherwise: the unit could not start
    system = running_as_root() if system is None else system
    user = checked_user(user, system)
    return UnitFile(
        instance=spec.name,
        kvern=kvern_executable(),
        spec_path=spec.path,
        state_dir=state_dir,
        working_dir=spec.root,
        stop_timeout_s=stop_timeout_s(spec),
        user=user,
        system=system,
        bind_privileged_ports=user not in (None, "root") and listens_on_privileged_port(spec),
    )


def installed_unit(unit_dir: Path, state_dir: Path) -> Path | None:
    """The unit file in `unit_dir` that runs the instance of `state_dir`, if there is one."""
    mark = f"{STATE_DIR_MARK}{str(state_dir).replace('%', '%%')}"
    for path in sorted(unit_dir.glob(f"{UNIT_PREFIX}*.service")):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if mark in path.read_text(encoding="utf-8").splitlines():
                return path
    return None


def unit_name(unit_dir: Path, instance: str, state_dir: Path) -> str:
    """`kvern-<app name>.service`; when that name is taken by another state dir's unit (two instances of one
    app on a machine), the state dir's short hash follows the app name."""
    current = installed_unit(unit_dir, state_dir)
    if current is not None:
        return current.name
    plain = f"{UNIT_PREFIX}{instance}.service"
    if not (unit_dir / plain).exists():
        return plain
    digest = hashlib.sha1(str(state_dir).encode()).hexdigest()[:6]
    return f"{UNIT_PREFIX}{instance}-{digest}.service"


@dataclass(frozen=True)
class Installed:
    path: Path
    replaced: bool  # a unit of this state dir was there already (it is rewritten)

    @property
    def name(self) -> str:
        return self.path.name


def install(unit: UnitFile, unit_dir: Path) -> Installed:
    """Write the unit (rendered first, so a value that cannot be written leaves nothing behind)."""
    text = render_unit(unit)
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
        path = unit_dir / unit_name(unit_dir, unit.instance, unit.state_dir)
        replaced = path.exists()
        atomic_write(path, text, mode=0o644)  # systemd reads units as any user; nothing secret is in it
    except OSError as exc:
        raise ServiceError(f"cannot write the unit into {unit_dir}: {exc.strerror or exc}") from None
    return Installed(path, replaced)


def remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ServiceError(f"cannot remove {path}: {exc.strerror or exc}") from None


# -- systemctl -----------------------------------------------------------------------------------------------


def systemd_running() -> bool:
    """Whether this machine was booted with systemd (sd_booted's test); in a container it often is not."""
    return Path("/run/systemd/system").is_dir()


def systemctl(system: bool, *args: str) -> list[str]:
    return ["systemctl", *(() if system else ("--user",)), *args]


def enable_commands(installed: Installed, system: bool, default_dir: bool) -> list[list[str]]:
    # A unit outside systemd's search path is enabled by its full path (systemctl links it in).
    target = installed.name if default_dir else str(installed.path)
    return [systemctl(system, "daemon-reload"), systemctl(system, "enable", target)]


def disable_commands(name: str, system: bool) -> list[list[str]]:
    # --now: a unit whose file is gone must not keep running unmanaged; stopping it drains through kvern down.
    return [systemctl(system, "disable", "--now", name)]


def run_systemctl(commands: Sequence[Sequence[str]]) -> None:
    for command in commands:
        try:
            result = subprocess.run(
                list(command), capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceError(f"`{' '.join(command)}` failed: {exc}") from None
        if result.returncode != 0:
            detail = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
            raise ServiceError(f"`{' '.join(command)}` failed: {detail}")
