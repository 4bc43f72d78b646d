"""`[app] user`: when kvern runs as root, every program of the instance but nginx's master runs as that account.

Supervisord stays root (it switches each program to the account with its `user=` option); nginx's master stays
root (it binds :80 and :443 and reads the TLS key) and its workers are `nobody`. The web heads, the workers,
the controller and the private broker run as the account, so the team's code never runs as root.

What the account may write, and what stays root's (the state dir is handed over on every `up`, since an older
run as root may have left root's files there):

- The state dir is root's, group the account's primary group, mode 1770: the account's processes create files
  in it (SQLite's journal, the autoscaler's wishes), and the sticky bit keeps them from renaming or removing
  root's entries: `supervisord.conf` (what supervisord, as root, runs), `nginx/` (what nginx's root master
  reads), `logs/` (written by supervisord). A program cannot rewrite what root runs.
- The account owns what its processes read and write: `runtime.json`, the spec snapshot, the SQLite store and
  its journal files, `pins.json`, `autoscale.json` and the private broker's folder (0600/0700 as before).
  Root replacing one of them later (`kvern scale`, `kvern reload`) leaves it the account's (`atomic_write`).
- The control socket is the account's too (the controller starts and stops workers through it).
- The web heads' socket folder under /run/kvern is the account's, group nginx's workers' group, so the heads
  can bind there and nginx's workers can connect.

A symlink where the account's files belong is refused before root writes anything there: the account could
otherwise point root's writes at a file of its choosing.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from kvern.constants import DESIRED_FILE, PINS_FILE, PROGRAM_NGINX, RUNTIME_FILE, SPEC_SNAPSHOT, SQLITE_FILE
from kvern.errors import SpecError, StartError
from kvern.runtime import nginx
from kvern.runtime.supervisor import ProgramConfig
from kvern.spec import Spec

STATE_DIR_MODE = 0o1770
KVERN_PACKAGE = Path(__file__).resolve().parents[1]  # src/kvern: every program imports it
BROKER_DIR = "rabbitmq"
# Files of the state dir the account's processes read or write (SQLite's journal files follow its store).
ACCOUNT_FILES = (
    RUNTIME_FILE,
    SPEC_SNAPSHOT,
    PINS_FILE,
    DESIRED_FILE,
    SQLITE_FILE,
    *(f"{SQLITE_FILE}{suffix}" for suffix in ("-wal", "-shm", "-journal")),
)
ACCESS_CHECK_TIMEOUT_S = 30
# Run as the account: the first path it cannot use as asked (R_OK/X_OK), or nothing.
ACCESS_CHECK = (
    "import os, sys\n"
    "for path, mode in zip(sys.argv[1::2], sys.argv[2::2]):\n"
    "    if not os.access(path, int(mode)):\n"
    "        print(path)\n"
    "        break\n"
)


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def named(cls, name: str) -> Account:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise SpecError(f"app.user: no account named {name!r} on this machine") from None
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)

    @property
    def groups(self) -> list[int]:
        return os.getgrouplist(self.name, self.gid)

    @property
    def environment(self) -> dict[str, str]:
        """What a login would set: supervisord passes its own (root's) HOME and USER on otherwise."""
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}

    def run(self, command: Sequence[str], **options: object) -> subprocess.CompletedProcess[str]:
        """Run `command` as the account (from root), with its groups and its environment."""
        env = {**os.environ, **self.environment}
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            list(command),
            user=self.uid,
            group=self.gid,
            extra_groups=self.groups,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            **options,
        )


def account_of(spec: Spec) -> Account | None:
    """The account the programs switch to: only when kvern runs as root and the spec names another one."""
    if spec.user is None or os.geteuid() != 0:
        return None
    account = Account.named(spec.user)
    return None if account.uid == 0 else account


# -- what the account must be able to read -------------------------------------------------------------------


def _needed_paths(spec: Spec) -> Iterator[tuple[Path, int, str]]:
    """Every folder on the way in (entered), the project and kvern's own code (read), the interpreter (run)."""
    for target, mode, what in (
        (spec.path, os.R_OK, "the project"),
        (spec.root, os.R_OK | os.X_OK, "the project"),
        (KVERN_PACKAGE, os.R_OK | os.X_OK, "kvern's code"),
        # A virtualenv's python links to one that may be under /root (pyenv, say).
        (Path(sys.executable).resolve(), os.X_OK, f"kvern's Python ({sys.executable})"),
        (Path(sys.executable), os.X_OK, f"kvern's Python ({sys.executable})"),
    ):
        for folder in reversed(target.parents):
            yield folder, os.X_OK, what
        yield target, mode, what


def check_readable(spec: Spec, account: Account) -> None:
    """Refuse, naming the path and how to fix it, a project (or a kvern install) the account cannot read: a
    project under /root, say, which only root may enter."""
    paths = {(path, mode): what for path, mode, what in _needed_paths(spec)}
    arguments = [str(part) for path, mode in paths for part in (path, mode)]
    # The system's own interpreter runs the check: the account may not be able to run kvern's.
    try:
        result = account.run(
            ["/usr/bin/env", "python3", "-I", "-S", "-c", ACCESS_CHECK, *arguments], timeout=ACCESS_CHECK_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StartError(f"app.user: cannot check what {account.name!r} may read: {exc}") from None
    blocked = Path(result.stdout.strip())
    if result.returncode != 0 or not result.stdout.strip():
        return  # no python3 on PATH: the user-app check, run as the account, still says what fails
    mode, what = next((mode, what) for (path, mode), what in paths.items() if path == blocked)
    verb = "read" if mode & os.R_OK else "enter" if blocked.is_dir() else "run"
    raise SpecError(
        f"app.user: account {account.name!r} cannot {verb} {blocked} ({_describe(blocked)}), on the way to "
        f"{what}: put it where {account.name!r} can read it (e.g. under /srv or /opt), or open that folder to it"
    )


def _describe(path: Path) -> str:
    try:
        info = path.stat()
    except OSError as exc:
        return exc.strerror or str(exc)
    with contextlib.suppress(KeyError):
        return f"mode {stat.S_IMODE(info.st_mode):04o}, owner {pwd.getpwuid(info.st_uid).pw_name}"
    return f"mode {stat.S_IMODE(info.st_mode):04o}, owner uid {info.st_uid}"


# -- the programs --------------------------------------------------------------------------------------------


def programs_as(programs: Sequence[ProgramConfig], account: Account | None) -> list[ProgramConfig]:
    """Every program but nginx (its master binds the ports and switches its own workers) runs as `account`."""
    if account is None:
        return list(programs)
    return [
        program
        if program.name == PROGRAM_NGINX
        else replace(program, user=account.name, environment={**program.environment, **_login_of(program, account)})
        for program in programs
    ]


def _login_of(program: ProgramConfig, account: Account) -> dict[str, str]:
    # The broker's HOME is its own folder (its Erlang cookie is there): keep it.
    return {key: value for key, value in account.environment.items() if key not in program.environment}


# -- the state dir -------------------------------------------------------------------------------------------


def refuse_symlinks(state_dir: Path) -> None:
    """Before root writes into the state dir: none of the account's entries may be a symlink."""
    for name in (*ACCOUNT_FILES, BROKER_DIR):
        path = state_dir / name
        if path.is_symlink():
            raise StartError(f"{path} is a symbolic link; kvern writes there as root and will not follow it")


def hand_over(state_dir: Path, account: Account, sqlite: bool) -> None:
    """Give the account what its processes use (see the module's docstring); root keeps the rest.

    `sqlite`: the job store is the state dir's SQLite file (root's `up` makes its schema: the account must
    own it first)."""
    refuse_symlinks(state_dir)
    os.chown(state_dir, 0, account.gid)
    state_dir.chmod(STATE_DIR_MODE)
    # Files root writes later (the store's schema, `kvern scale`) must exist first, so that they are the account's.
    if sqlite:
        _ensure_file(state_dir / SQLITE_FILE, b"")  # SQLite takes an empty file as a new database
    _ensure_file(state_dir / PINS_FILE, b"{}")
    for name in ACCOUNT_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.chown(state_dir / name, account.uid, account.gid, follow_symlinks=False)
    broker = state_dir / BROKER_DIR
    if broker.is_dir():
        _chown_tree(broker, account)
    _open_socket_dir(state_dir, account)


def _ensure_file(path: Path, content: bytes) -> None:
    """Make `path` with `content` unless it is there (never through a symlink). SQLite, run as root on a
    database the account owns, gives its journal files to that owner too; `atomic_write` keeps the owner."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as out:
        out.write(content)


def _chown_tree(top: Path, account: Account) -> None:
    os.chown(top, account.uid, account.gid, follow_symlinks=False)
    for folder, dirs, files in os.walk(top):  # os.walk does not descend into symlinked folders
        for name in (*dirs, *files):
            os.chown(Path(folder) / name, account.uid, account.gid, follow_symlinks=False)


def _open_socket_dir(state_dir: Path, account: Account) -> None:
    """The heads bind their sockets as the account; nginx's workers reach them through the folder's group."""
    sockets = nginx.socket_dir(state_dir)
    front = nginx.front_dir(state_dir)
    if not sockets.is_dir() or front == state_dir:
        return
    os.chown(sockets, account.uid, -1, follow_symlinks=False)  # the group stays nginx's workers'
    front.chmod(front.stat().st_mode | stat.S_IXOTH)  # the account passes through; only the groups' folders open
