"""`kvern service install` writes a unit that systemd accepts as written; `uninstall` takes it away."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import reports_spec, write_project
from tests.unit.test_service import settings, systemd_words

pytestmark = pytest.mark.integration

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
KVERN = Path(sys.executable).parent / "kvern"
# Folder names systemd would split, expand (% specifiers, $ variables) or unescape if kvern wrote them raw
# (systemd refuses quotes and backslashes in an executable's path, whatever the escaping).
AWKWARD_BIN = "bin %n $USER"
AWKWARD_PROJECT = 'shop 100%i "q" $HOME \\b it\'s'


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    """systemd's own check of a unit file: syntax, values, and that each command's executable exists.

    --man=no: the container has no man pages. A setting systemd cannot parse is only a warning naming the
    file (the unit would still load, without it), so callers check the output as well as the exit code.
    """
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )


def complaints(result: subprocess.CompletedProcess[str], unit: Path) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if unit.name in line]


def kvern(executable: Path, spec: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(executable), "-f", str(spec), *args], capture_output=True, text=True, timeout=120, check=False
    )


@dataclass
class Project:
    spec: Path
    command: Path  # the kvern command, reached through a folder whose name systemd would misread
    state: Path
    units: Path

    def kvern(self, *args: str) -> subprocess.CompletedProcess[str]:
        return kvern(self.command, self.spec, "--state", str(self.state), *args)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A project in a folder whose name systemd would misread (no static folder: kvern refuses such a name
    for one, since it reaches nginx's config), and the kvern command behind a link in another."""
    spec = write_project(tmp_path / AWKWARD_PROJECT, reports_spec().replace('static = "static"', 'name = "project"'))
    command = tmp_path / AWKWARD_BIN / "kvern"
    command.parent.mkdir()
    command.symlink_to(KVERN)
    return Project(spec, command, tmp_path / "state dir", tmp_path / "units")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)")
def test_the_installed_unit_passes_systemd_analyze_verify_and_uninstall_removes_it(project: Project) -> None:
    # when the unit is installed, for an unprivileged account
    installed = project.kvern("service", "install", "--unit-dir", str(project.units), "--user", "daemon")

    # then systemd finds every executable and parses every setting of it
    assert installed.returncode == 0, installed.stderr
    unit = project.units / "kvern-project.service"
    result = verify(unit)
    assert result.returncode == 0 and not complaints(result, unit), result.stdout + result.stderr
    # ...and the stop command, as systemd reads it, is a working kvern command (nothing runs: nothing to stop)
    stop = systemd_words(settings(unit.read_text())["ExecStop"][0])
    assert stop == [str(project.command), "-f", str(project.spec), "--state", str(project.state), "down"]
    stopped = subprocess.run(stop, capture_output=True, text=True, timeout=120, check=False)
    assert stopped.returncode == 0 and "kvern was not running" in stopped.stdout, stopped.stderr

    # when the unit is uninstalled, twice
    removed = project.kvern("service", "uninstall", "--unit-dir", str(project.units))
    again = project.kvern("service", "uninstall", "--unit-dir", str(project.units))

    # then it is gone, and the second time says there is nothing to remove
    assert removed.returncode == 0, removed.stderr
    assert not unit.exists()
    assert again.returncode == 0 and "nothing to remove" in again.stdout


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)")
def test_systemd_analyze_verify_refuses_a_unit_whose_specifiers_are_not_escaped(project: Project) -> None:
    """The check above means something here: the same unit with its `%%` written as `%` fails it."""
    assert project.kvern("service", "install", "--unit-dir", str(project.units)).returncode == 0
    good = project.units / "kvern-project.service"
    broken = project.units / "kvern-broken.service"
    broken.write_text(good.read_text().replace("%%", "%"))

    result = verify(broken)

    assert result.returncode != 0, result.stdout + result.stderr
    assert verify(good).returncode == 0
