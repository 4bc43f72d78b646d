"""Loading the user's tasks module: a broken module or a spec naming a missing task is one line, exit 3."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kvern.catalog import load_user_app
from kvern.cli import main
from kvern.constants import RET_SPEC
from kvern.errors import SpecError
from kvern.spec import load_spec

GOOD_TASKS = """
from celery import Celery

app = Celery("billing")


@app.task(shared=False)  # other tests create Celery apps in this process too
def charge(amount):
    return amount


@app.task(shared=False)  # other tests create Celery apps in this process too
def refund(amount):
    return -amount
"""


def write_project(folder: Path, tasks_source: str, tasks_table: str = "") -> tuple[Path, str]:
    """A project whose tasks module has a name of its own (no earlier test's import is reused); MODULE in
    `tasks_table` stands for that name."""
    module = f"tasks_{uuid.uuid4().hex[:8]}"
    (folder / f"{module}.py").write_text(textwrap.dedent(tasks_source))
    spec = folder / "kvern.toml"
    pools = '[[pools]]\nname = "main"\nqueues = ["main"]\n'
    spec.write_text(f'[app]\ntasks = "{module}"\n{pools}{tasks_table.replace("MODULE", module)}')
    return spec, module


def kvern_up(spec_path: Path) -> Result:
    """`kvern up -d`, expected to refuse; should it start something after all, that is stopped again."""
    runner = CliRunner()
    try:
        return runner.invoke(main, ["-f", str(spec_path), "up", "-d"])
    finally:
        if (spec_path.parent / ".kvern").exists():
            runner.invoke(main, ["-f", str(spec_path), "down"])


def load_error(spec_path: Path) -> str:
    with pytest.raises(SpecError) as caught:
        load_user_app(load_spec(spec_path))
    return str(caught.value)


# -- item 10: a broken tasks module ---------------------------------------------------------------------------


def test_a_syntax_error_names_the_file_line_and_message(tmp_path: Path) -> None:
    spec, module = write_project(tmp_path, "from celery import Celery\napp = Celery('x')\ndef broken(:\n    pass\n")
    message = load_error(spec)
    assert f"{tmp_path / module}.py:3" in message
    assert "SyntaxError: invalid syntax" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("statement", "error"),
    [
        ("undefined_name + 1", "NameError: name 'undefined_name' is not defined"),
        ("1 / 0", "ZeroDivisionError: division by zero"),
        ("import no_such_helper_module_xyz", "ModuleNotFoundError: No module named 'no_such_helper_module_xyz'"),
        ("raise SystemExit('set BILLING_KEY')", "SystemExit: set BILLING_KEY"),
        ("raise RuntimeError()", "RuntimeError"),
    ],
)
def test_an_error_raised_at_import_names_the_line_of_the_users_code(tmp_path: Path, statement: str, error: str) -> None:
    spec, module = write_project(tmp_path, f"from celery import Celery\n\napp = Celery('x')\n{statement}\n")
    message = load_error(spec)
    assert f"{tmp_path / module}.py:4" in message
    assert message.endswith(error)


def test_an_error_in_a_module_the_tasks_module_imports_names_that_module(tmp_path: Path) -> None:
    helper = f"helper_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{helper}.py").write_text("RATE = 1\nFACTOR = RATE / 0\n")
    spec, _ = write_project(tmp_path, f"import {helper}\n")
    message = load_error(spec)
    assert f"{tmp_path / helper}.py:2: ZeroDivisionError" in message


def test_a_missing_tasks_module_is_still_a_cannot_import(tmp_path: Path) -> None:
    spec, module = write_project(tmp_path, GOOD_TASKS)
    (tmp_path / f"{module}.py").unlink()
    assert f"cannot import '{module}' from {tmp_path}" in load_error(spec)


def test_kvern_up_refuses_a_broken_tasks_module_in_one_line_with_exit_3(tmp_path: Path) -> None:
    spec, module = write_project(tmp_path, "x = 1\ny = x / 0\n")
    result = kvern_up(spec)
    assert result.exit_code == RET_SPEC, result.output
    assert result.output.strip().count("\n") == 0, result.output
    assert f"{module}.py:2: ZeroDivisionError: division by zero" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / ".kvern").exists()  # refused before anything was started or written


# -- item 11: a spec naming a task the app does not have ------------------------------------------------------


def test_a_misspelt_task_is_refused_naming_the_field_the_closest_and_the_known_tasks(tmp_path: Path) -> None:
    spec, module = write_project(tmp_path, GOOD_TASKS, '[tasks."MODULE.chrage"]\nretries = 1\n')
    message = load_error(spec)
    assert message.startswith(f'tasks."{module}.chrage": ')
    assert f'did you mean "{module}.charge"?' in message
    assert "known tasks: " in message
    assert f"{module}.charge, {module}.refund" in message  # (with other tests' shared tasks before them)


def test_a_short_task_name_in_the_spec_asks_for_the_full_name(tmp_path: Path) -> None:
    spec, module = write_project(tmp_path, GOOD_TASKS, '[tasks."charge"]\nretries = 1\n')
    assert load_error(spec) == f'tasks."charge": use the task\'s full name: [tasks."{module}.charge"]'


def test_tasks_the_app_has_are_accepted(tmp_path: Path) -> None:
    spec, module = write_project(tmp_path, GOOD_TASKS, '[tasks."MODULE.charge"]\nretries = 1\n')
    _, catalog = load_user_app(load_spec(spec))
    assert {f"{module}.charge", f"{module}.refund"} <= set(catalog.names())


def test_kvern_up_refuses_an_unknown_task_with_exit_3(tmp_path: Path) -> None:
    spec, module = write_project(tmp_path, GOOD_TASKS, '[tasks."MODULE.chrage"]\nretries = 1\n')
    result = kvern_up(spec)
    assert result.exit_code == RET_SPEC, result.output
    assert f'invalid spec: tasks."{module}.chrage"' in result.output
    assert not (tmp_path / ".kvern").exists()


def test_a_second_project_with_a_same_named_tasks_module_gets_its_own_module(tmp_path: Path) -> None:
    # Given two projects whose tasks modules are both called `tasks`, loaded one after the other in one process
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, task in ((first, "charge"), (second, "ship")):
        folder.mkdir()
        source = f"from celery import Celery\napp = Celery('{task}')\n\n"
        source += f"@app.task(shared=False)\ndef {task}(n):\n    return n\n"
        (folder / "tasks.py").write_text(source)
        (folder / "kvern.toml").write_text(
            f'[app]\ntasks = "tasks"\n\n[[pools]]\nname = "main"\n\n[tasks."tasks.{task}"]\nretries = 1\n'
        )
    _, catalog = load_user_app(load_spec(first / "kvern.toml"))
    assert catalog.names() == ["tasks.charge"]
    # When the second project is loaded, then its own module is imported, not the first one's cached module
    _, catalog = load_user_app(load_spec(second / "kvern.toml"))
    assert catalog.names() == ["tasks.ship"]
