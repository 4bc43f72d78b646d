"""`kvern service`: the systemd unit's rendering and escaping, its name, and the install/uninstall commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kvern import cli
from kvern.errors import ServiceError
from kvern.runtime import service
from kvern.runtime.service import UnitFile, exec_line, render_unit
from kvern.spec import load_spec

SPEC = """
[app]
name = "shop"
tasks = "tasks"

[[pools]]
name = "reports"

[tasks."tasks.generate_heavy_report"]
time_limit = 900
"""

PUBLIC = """
[web]
listen = ["0.0.0.0:80"]
"""


def unit_file(tmp_path: Path, **changes: object) -> UnitFile:
    values: dict[str, object] = {
        "instance": "shop",
        "kvern": tmp_path / "venv" / "bin" / "kvern",
        "spec_path": tmp_path / "shop" / "kvern.toml",
        "state_dir": tmp_path / "shop" / ".kvern",
        "working_dir": tmp_path / "shop",
        "stop_timeout_s": 480,
        **changes,
    }
    return UnitFile(**values)  # type: ignore[arg-type]


def settings(text: str) -> dict[str, list[str]]:
    """Key -> values of a unit file, as systemd reads lines (comments and section headers aside)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def systemd_words(line: str) -> list[str]:
    """How systemd reads an Exec line: specifiers first (`%%` is `%`), then words with double quotes and C
    escapes, then `$$` is `$` in the arguments (a lone `%` or `$` would be expanded: the test refuses it)."""
    assert not re.search(r"%[^%]", line.replace("%%", "")), f"an unescaped specifier in {line!r}"
    text, words, index = line.replace("%%", "%"), [], 0
    while index < len(text):
        if text[index] == " ":
            index += 1
            continue
        word, quoted = "", text[index] == '"'
        index += quoted
        while index < len(text) and (quoted or text[index] != " "):
            char = text[index]
            if quoted and char == '"':
                index += 1
                break
            if char == "\\":
                index += 1
                char = text[index]
            word += char
            index += 1
        words.append(word)
    for word in words[1:]:
        assert "$" not in word.replace("$$", ""), f"an unescaped variable in {word!r}"
    return words[:1] + [word.replace("$$", "$") for word in words[1:]]


def test_the_unit_runs_the_foreground_up_and_stops_through_kvern_down(tmp_path: Path) -> None:
    # given an instance's unit
    unit = unit_file(tmp_path, user="www-data")

    # when it is rendered
    values = settings(render_unit(unit))

    # then systemd starts the foreground `up` and stops through `down` (SIGTERM to `up` alone), restarts it
    # on failure, waits as long as the drain may take, and starts it after the network
    kvern, spec, state = str(unit.kvern), str(unit.spec_path), str(unit.state_dir)
    assert values["Type"] == ["simple"]
    assert systemd_words(values["ExecStart"][0]) == [kvern, "-f", spec, "--state", state, "up"]
    assert systemd_words(values["ExecStop"][0]) == [kvern, "-f", spec, "--state", state, "down"]
    assert systemd_words(values["ExecReload"][0]) == [kvern, "-f", spec, "--state", state, "reload"]
    assert values["KillMode"] == ["mixed"]
    assert values["TimeoutStopSec"] == ["480"]
    assert values["Restart"] == ["on-failure"]
    assert values["RestartSec"] == [str(service.RESTART_SEC)]
    assert values["User"] == ["www-data"]
    assert values["WorkingDirectory"] == [str(tmp_path / "shop")]
    assert values["After"] == values["Wants"] == ["network-online.target"]
    assert values["WantedBy"] == ["multi-user.target"]
    assert "AmbientCapabilities" not in values


def test_a_unit_of_the_users_own_manager_has_no_user_and_is_wanted_by_default_target(tmp_path: Path) -> None:
    values = settings(render_unit(unit_file(tmp_path, system=False)))
    assert values["WantedBy"] == ["default.target"]
    assert "User" not in values
    assert "Wants" not in values


@pytest.mark.parametrize(
    "folder",
    ["with space", "100%", "$HOME", "${PATH}", 'q"uote', "back\\slash", "it's", "semi;colon", "accent\u00e9", "-dash"],
)
def test_every_argument_reaches_kvern_as_written(tmp_path: Path, folder: str) -> None:
    # given paths holding what systemd would otherwise split, expand or unescape
    root = tmp_path / folder
    unit = unit_file(tmp_path, spec_path=root / "kvern.toml", state_dir=root / ".kvern")

    # when the unit is rendered
    values = settings(render_unit(unit))

    # then systemd reads back exactly these words
    expected = [str(unit.kvern), "-f", str(root / "kvern.toml"), "--state", str(root / ".kvern"), "up"]
    assert systemd_words(values["ExecStart"][0]) == expected


@pytest.mark.parametrize("folder", ["with space", "100%", "$HOME", "semi;colon", "accent\u00e9"])
def test_the_executable_reaches_systemd_as_written(tmp_path: Path, folder: str) -> None:
    unit = unit_file(tmp_path, kvern=tmp_path / folder / "kvern")
    assert systemd_words(settings(render_unit(unit))["ExecStop"][0])[0] == str(tmp_path / folder / "kvern")


@pytest.mark.parametrize("folder", ['q"uote', "it's", "back\\slash"])
def test_an_executable_systemd_refuses_is_refused_with_a_clear_message(tmp_path: Path, folder: str) -> None:
    with pytest.raises(ServiceError, match="systemd refuses an executable path"):
        render_unit(unit_file(tmp_path, kvern=tmp_path / folder / "kvern"))


def test_the_percent_sign_of_a_working_directory_is_doubled(tmp_path: Path) -> None:
    values = settings(render_unit(unit_file(tmp_path, working_dir=tmp_path / "100%")))
    assert values["WorkingDirectory"] == [f"{tmp_path}/100%%"]


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"state_dir": Path("/srv/a\nExecStartPre=/bin/evil")}, "cannot be written into a systemd unit"),
        ({"kvern": Path("/opt/k\rvern")}, "cannot be written into a systemd unit"),
        ({"working_dir": Path("/srv/shop\n[Service]")}, "cannot be written into a systemd unit"),
        ({"working_dir": Path("/srv/shop ")}, "starts or ends with a blank"),
        ({"working_dir": Path("/srv/shop\\")}, "backslash"),
        ({"working_dir": Path("srv/shop")}, "not an absolute path"),
        ({"kvern": Path("bin/kvern")}, "absolute path"),
        ({"state_dir": Path("/srv/\udcff")}, "not valid UTF-8"),
        ({"user": "bad user"}, "not a user name"),
        ({"user": "x\nExecStartPre=/bin/evil"}, "not a user name"),
    ],
)
def test_a_value_systemd_would_misread_is_refused(tmp_path: Path, changes: dict[str, object], fragment: str) -> None:
    with pytest.raises(ServiceError, match=re.escape(fragment)):
        render_unit(unit_file(tmp_path, **changes))


def test_an_exec_line_needs_an_absolute_executable() -> None:
    with pytest.raises(ServiceError, match="absolute"):
        exec_line(["kvern", "up"], "kvern up")


def write_spec(folder: Path, text: str = SPEC) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tasks.py").write_text("")
    path = folder / "kvern.toml"
    path.write_text(text)
    return path


def test_the_unit_waits_for_the_longest_task_and_lets_an_unprivileged_user_bind_port_80(tmp_path: Path) -> None:
    # given a spec whose longest task may run 900 s and whose front door listens on port 80
    spec = load_spec(write_spec(tmp_path / "shop", SPEC + PUBLIC))

    # when its unit is made for an unprivileged account, and for root
    as_daemon = service.unit_for(spec, tmp_path / "state", user="daemon", system=True)
    as_root = service.unit_for(spec, tmp_path / "state", system=True)

    # then stopping may take the longest task plus the margin, and only the unprivileged one gets the capability
    assert as_daemon.stop_timeout_s == 900 + service.STOP_MARGIN_S
    assert settings(render_unit(as_daemon))["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert "AmbientCapabilities" not in settings(render_unit(as_root))


@pytest.mark.parametrize(
    ("user", "system", "fragment"),
    [
        ("no-such-account-kvern", True, "no account named"),
        ("daemon", False, "--user needs root"),
        ("Bad Name", True, "not a user name"),
    ],
)
def test_a_user_that_cannot_run_the_unit_is_refused(tmp_path: Path, user: str, system: bool, fragment: str) -> None:
    spec = load_spec(write_spec(tmp_path / "shop"))
    with pytest.raises(ServiceError, match=re.escape(fragment)):
        service.unit_for(spec, tmp_path / "state", user=user, system=system)


def test_a_state_dir_that_up_would_refuse_is_refused_at_install(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path / "shop"))
    with pytest.raises(ServiceError, match="state dir"):
        service.unit_for(spec, tmp_path / "100%", system=True)


def test_two_state_dirs_of_one_app_get_units_of_their_own(tmp_path: Path) -> None:
    # given the unit of one state dir installed
    units = tmp_path / "units"
    first = service.install(unit_file(tmp_path, state_dir=tmp_path / "a"), units)

    # when the same app is installed with another state dir, and the first again
    second = service.install(unit_file(tmp_path, state_dir=tmp_path / "b"), units)
    again = service.install(unit_file(tmp_path, state_dir=tmp_path / "a"), units)

    # then the second gets a name of its own; the first is rewritten in place, and each is found by its state dir
    assert first.name == "kvern-shop.service" and not first.replaced
    assert re.fullmatch(r"kvern-shop-[0-9a-f]{6}\.service", second.name)
    assert again.path == first.path and again.replaced
    assert service.installed_unit(units, tmp_path / "a") == first.path
    assert service.installed_unit(units, tmp_path / "b") == second.path
    assert service.installed_unit(units, tmp_path / "c") is None
    assert first.path.stat().st_mode & 0o777 == 0o644


def test_the_kvern_executable_is_the_one_running_symlinks_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "venv" / "kvern"
    target.parent.mkdir()
    target.write_text("#!/bin/sh\n")
    target.chmod(0o755)
    link = tmp_path / "bin" / "kvern"
    link.parent.mkdir()
    link.symlink_to(target)
    monkeypatch.setattr("sys.argv", [str(link), "service", "install"])
    assert service.kvern_executable() == link


# -- the command line ------------------------------------------------------------------------------------


def kvern(spec: Path, *args: str) -> Result:
    return CliRunner().invoke(cli.main, ["-f", str(spec), *args])


@pytest.fixture
def systemctl_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """systemd runs this machine, and every systemctl command is recorded instead of run."""
    calls: list[list[str]] = []
    monkeypatch.setattr(service, "systemd_running", lambda: True)
    monkeypatch.setattr(service, "run_systemctl", lambda commands: calls.extend(list(c) for c in commands))
    return calls


def test_install_without_systemd_says_what_to_run_where_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "systemd_running", lambda: False)
    spec = write_spec(tmp_path / "shop")
    result = kvern(spec, "service", "install", "--unit-dir", str(tmp_path / "units"), "--enable")
    assert result.exit_code == 0, result.output
    unit = tmp_path / "units" / "kvern-shop.service"
    assert unit.is_file()
    assert "systemd is not running on this machine" in result.output
    assert f"systemctl enable {unit}" in result.output


def test_install_enable_reloads_systemd_and_enables_the_unit(tmp_path: Path, systemctl_calls: list[list[str]]) -> None:
    spec = write_spec(tmp_path / "shop")
    units = tmp_path / "units"
    result = kvern(spec, "service", "install", "--unit-dir", str(units), "--enable")
    assert result.exit_code == 0, result.output
    system = ["systemctl"] if service.running_as_root() else ["systemctl", "--user"]
    assert systemctl_calls == [[*system, "daemon-reload"], [*system, "enable", str(units / "kvern-shop.service")]]
    assert "systemctl" in result.output and "start kvern-shop.service" in result.output


def test_install_without_enable_runs_no_systemctl(tmp_path: Path, systemctl_calls: list[list[str]]) -> None:
    result = kvern(write_spec(tmp_path / "shop"), "service", "install", "--unit-dir", str(tmp_path / "units"))
    assert result.exit_code == 0, result.output
    assert systemctl_calls == []
    assert "to start it on boot, run:" in result.output


def test_uninstall_stops_disables_and_removes_the_unit(tmp_path: Path, systemctl_calls: list[list[str]]) -> None:
    spec = write_spec(tmp_path / "shop")
    units = tmp_path / "units"
    assert kvern(spec, "service", "install", "--unit-dir", str(units)).exit_code == 0

    result = kvern(spec, "service", "uninstall", "--unit-dir", str(units))

    assert result.exit_code == 0, result.output
    assert not (units / "kvern-shop.service").exists()
    system = ["systemctl"] if service.running_as_root() else ["systemctl", "--user"]
    assert systemctl_calls == [[*system, "disable", "--now", "kvern-shop.service"], [*system, "daemon-reload"]]


def test_uninstall_of_a_unit_that_is_not_there_says_so_and_succeeds(tmp_path: Path) -> None:
    result = kvern(tmp_path / "gone" / "kvern.toml", "service", "uninstall", "--unit-dir", str(tmp_path / "units"))
    assert result.exit_code == 0, result.output
    assert "nothing to remove" in result.output


def test_install_refuses_an_unknown_user_and_writes_nothing(tmp_path: Path) -> None:
    units = tmp_path / "units"
    result = kvern(write_spec(tmp_path / "shop"), "service", "install", "--unit-dir", str(units), "--user", "nosuchx")
    assert result.exit_code == 1
    assert "no account named 'nosuchx'" in result.output
    assert not units.exists() or not list(units.iterdir())
