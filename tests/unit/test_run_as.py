"""`[app] user`: the spec field, the programs' user in supervisord.conf, and the state dir handed over."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest
from supervisor.datatypes import name_to_uid
from supervisor.options import ServerOptions, UnhosedConfigParser

from kvern.constants import PINS_FILE, PROGRAM_BROKER, PROGRAM_CONTROLLER, PROGRAM_NGINX, RUNTIME_FILE, SQLITE_FILE
from kvern.errors import SpecError, StartError
from kvern.files import atomic_write
from kvern.runtime import run_as
from kvern.runtime.run_as import Account
from kvern.runtime.supervisor import ProgramConfig, render_supervisord_conf
from kvern.spec import load_spec

AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files to another account")
# An account every Debian system has, that owns no files: what the state dir is handed to in these tests.
OTHER = "nobody"


def spec_with(tmp_path: Path, app_lines: str) -> Path:
    path = tmp_path / "kvern.toml"
    path.write_text(f'[app]\ntasks = "tasks"\n{app_lines}\n[[pools]]\nname = "main"\n')
    return path


def test_app_user_defaults_to_none_and_names_an_account(tmp_path: Path) -> None:
    assert load_spec(spec_with(tmp_path, "")).user is None
    own = pwd.getpwuid(os.geteuid()).pw_name
    assert load_spec(spec_with(tmp_path, f'user = "{own}"')).user == own


def test_an_account_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"app\.user: no account named 'no-such-kvern-account'"):
        load_spec(spec_with(tmp_path, 'user = "no-such-kvern-account"'))


def test_only_root_may_name_another_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given kvern running as an unprivileged account
    monkeypatch.setattr(os, "geteuid", lambda: pwd.getpwnam(OTHER).pw_uid)
    # then another account is refused, its own accepted (its programs read the same spec)
    with pytest.raises(SpecError, match=r"app\.user: only root can run the instance as 'daemon'"):
        load_spec(spec_with(tmp_path, 'user = "daemon"'))
    assert load_spec(spec_with(tmp_path, f'user = "{OTHER}"')).user == OTHER


def test_no_account_is_switched_to_unless_kvern_runs_as_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(spec_with(tmp_path, f'user = "{OTHER}"'))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert run_as.account_of(spec) == Account.named(OTHER)
    assert run_as.account_of(load_spec(spec_with(tmp_path, 'user = "root"'))) is None
    monkeypatch.setattr(os, "geteuid", lambda: pwd.getpwnam(OTHER).pw_uid)
    assert run_as.account_of(spec) is None


def test_every_program_but_nginx_runs_as_the_account_with_its_login_environment() -> None:
    # given the programs of an instance
    programs = [
        ProgramConfig(PROGRAM_BROKER, ["/bin/true"], environment={"HOME": "/state/rabbitmq"}),
        ProgramConfig("pool-main-0", ["/bin/true"], environment={"KVERN_STATE_DIR": "/state"}),
        ProgramConfig(PROGRAM_CONTROLLER, ["/bin/true"]),
        ProgramConfig(PROGRAM_NGINX, ["/usr/sbin/nginx"]),
    ]
    account = Account.named(OTHER)

    # when they are given to the account
    given = {program.name: program for program in run_as.programs_as(programs, account)}

    # then nginx's master stays root's; the others switch, with the account's HOME and USER (the broker keeps
    # its own HOME, where its Erlang cookie is)
    assert given[PROGRAM_NGINX] == programs[3]
    assert {given[name].user for name in (PROGRAM_BROKER, "pool-main-0", PROGRAM_CONTROLLER)} == {OTHER}
    assert given[PROGRAM_BROKER].environment["HOME"] == "/state/rabbitmq"
    assert given["pool-main-0"].environment == {"KVERN_STATE_DIR": "/state", **account.environment}
    assert run_as.programs_as(programs, None) == programs


def test_supervisord_reads_back_the_programs_user_and_the_sockets_owner(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    program = ProgramConfig("p-0", ["/bin/true"], user=OTHER)
    parser = UnhosedConfigParser()
    parser.read_string(render_supervisord_conf(tmp_path, "kvern-x", [program], socket_owner=OTHER))
    options = ServerOptions()
    options.here = str(tmp_path)
    (read,) = options.processes_from_section(parser, "program:p-0", "p")
    assert read.uid == name_to_uid(OTHER)
    assert parser.get("unix_http_server", "chown") == OTHER
    assert parser.get("unix_http_server", "chmod") == "0600"


@pytest.mark.parametrize("name", ["root\n[program:x]", "a b", "Bad"])
def test_an_account_name_supervisord_would_misread_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(StartError, match=r"cannot be written into supervisord\.conf"):
        render_supervisord_conf(tmp_path, "kvern-x", [ProgramConfig("p-0", ["/bin/true"], user=name)])
    with pytest.raises(StartError, match=r"cannot be written into supervisord\.conf"):
        render_supervisord_conf(tmp_path, "kvern-x", [], socket_owner=name)


def mode_and_owner(path: Path) -> tuple[int, int, int]:
    info = path.lstat()
    return stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid


@AS_ROOT
def test_the_state_dir_is_handed_over_and_root_keeps_what_root_runs(tmp_path: Path) -> None:
    # given a state dir an older run as root left behind
    state = tmp_path / "state"
    (state / "nginx").mkdir(parents=True, mode=0o700)
    (state / "rabbitmq" / "mnesia").mkdir(parents=True, mode=0o700)
    (state / "rabbitmq" / "mnesia" / "data").write_text("x")
    for name in (RUNTIME_FILE, "supervisord.conf"):
        atomic_write(state / name, "{}")
    account = Account.named(OTHER)

    # when it is handed over to the account
    run_as.hand_over(state, account, sqlite=True)

    # then the dir is root's and sticky, its group the account's; the account owns its files (the store and
    # pins made empty, so root's later writes keep them the account's); root keeps what it runs
    assert mode_and_owner(state) == (0o1770, 0, account.gid)
    for name in (RUNTIME_FILE, SQLITE_FILE, PINS_FILE, "rabbitmq", "rabbitmq/mnesia/data"):
        assert mode_and_owner(state / name)[1:] == (account.uid, account.gid), name
    assert mode_and_owner(state / SQLITE_FILE)[0] == 0o600
    assert (state / PINS_FILE).read_text() == "{}"
    assert mode_and_owner(state / "supervisord.conf") == (0o600, 0, 0)
    assert mode_and_owner(state / "nginx") == (0o700, 0, 0)


@AS_ROOT
def test_root_replacing_a_file_of_the_account_leaves_it_the_accounts(tmp_path: Path) -> None:
    account = Account.named(OTHER)
    path = tmp_path / "pins.json"
    atomic_write(path, "{}")
    os.chown(path, account.uid, account.gid)

    atomic_write(path, '{"main": 2}')

    assert mode_and_owner(path) == (0o600, account.uid, account.gid)
    atomic_write(tmp_path / "new.json", "{}")
    assert mode_and_owner(tmp_path / "new.json")[1:] == (0, 0)


@AS_ROOT
@pytest.mark.parametrize("name", [RUNTIME_FILE, SQLITE_FILE, "rabbitmq"])
def test_a_symlink_where_the_accounts_files_go_is_refused(tmp_path: Path, name: str) -> None:
    # given a link the account could have left where root is about to write
    state = tmp_path / "state"
    state.mkdir()
    target = tmp_path / "elsewhere"
    target.write_text("root's file")
    (state / name).symlink_to(target)

    # then nothing is written through it
    with pytest.raises(StartError, match="symbolic link"):
        run_as.hand_over(state, Account.named(OTHER), sqlite=True)
    assert mode_and_owner(target)[1:] == (0, 0)


@AS_ROOT
def test_a_project_the_account_cannot_enter_is_refused_naming_the_folder(tmp_path: Path) -> None:
    # given a project in a folder only root may enter (pytest's own tmp folders are such folders too)
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    (closed / "tasks.py").write_text("")
    spec = load_spec(spec_with(closed, ""))

    # then the account is refused, naming the folder and its mode
    with pytest.raises(SpecError, match=r"cannot enter /\S+ \(mode 0700, owner root\), on the way to the project"):
        run_as.check_readable(spec, Account.named(OTHER))
