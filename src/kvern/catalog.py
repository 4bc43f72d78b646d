"""The user's task catalog: their tasks module, its Celery app, the tasks by name, and binding arguments.

The web heads (to validate a submission), the workers (to run it) and `kvern up` (to refuse a broken module
before starting anything) all load the same catalog, so it lives below all of them.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from celery import Celery, Task

from kvern.constants import ORIGINAL_RUN_ATTR
from kvern.errors import SpecError
from kvern.spec import Spec

BUILTIN_TASK_PREFIX = "celery."
KNOWN_TASKS_SHOWN = 20  # an error message lists at most this many of the app's tasks


@dataclass(frozen=True)
class TaskCatalog:
    """The user's tasks by name; a short name (the function's) works too when it is unambiguous."""

    tasks: dict[str, Task]

    def resolve(self, name: str) -> Task | None:
        if name in self.tasks:
            return self.tasks[name]
        matches = [task for full, task in self.tasks.items() if full.rsplit(".", 1)[-1] == name]
        return matches[0] if len(matches) == 1 else None

    def names(self) -> list[str]:
        return sorted(self.tasks)


def import_tasks_module(spec: Spec) -> ModuleType:
    root = str(spec.root)
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)  # first: the spec's folder wins over a same-named module elsewhere on the path
    _forget_module_from_elsewhere(spec.tasks_module, spec.root)
    try:
        return importlib.import_module(spec.tasks_module)
    except ModuleNotFoundError as exc:
        if not _is_the_tasks_module(exc.name, spec.tasks_module):
            raise  # an import inside the user's code: reported with its file and line
        raise SpecError(f"app.tasks: cannot import {spec.tasks_module!r} from {spec.root}: {exc}") from exc


def _forget_module_from_elsewhere(name: str, root: Path) -> None:
    """A module of that name loaded earlier in this process from another project's folder is not this spec's.

    Standard-library and installed modules are left alone: shadowing them is not ours to undo.
    """
    top = name.split(".", maxsplit=1)[0]
    cached = sys.modules.get(top)
    location = getattr(cached, "__file__", None)
    if cached is None or location is None or top in sys.stdlib_module_names:
        return
    path = Path(location).resolve()
    if path.is_relative_to(root.resolve()) or {"site-packages", "dist-packages"} & set(path.parts):
        return
    for loaded in [key for key in sys.modules if key == top or key.startswith(f"{top}.")]:
        del sys.modules[loaded]
    importlib.invalidate_caches()


def _is_the_tasks_module(missing: str | None, tasks_module: str) -> bool:
    """True when the module not found is the tasks module itself or one of its parent packages."""
    return missing is not None and (tasks_module == missing or tasks_module.startswith(f"{missing}."))


@contextmanager
def user_code_errors(spec: Spec) -> Iterator[None]:
    """Any error raised by the user's code while kvern loads it becomes one line: file, line and message."""
    try:
        yield
    except SpecError:
        raise
    except (Exception, SystemExit) as exc:  # a module may call sys.exit("set FOO") when it lacks a setting
        where = _error_location(exc, spec.root)
        message = (str(exc).strip().splitlines() or [""])[0]
        if isinstance(exc, SyntaxError) and exc.msg:
            message = exc.msg  # str(exc) repeats the file and line
        error = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        raise SpecError(f"app.tasks: loading {spec.tasks_module!r} failed at {where}: {error}") from exc


def _error_location(exc: BaseException, root: Path) -> str:
    """`file:line` of the error in the user's code (the deepest frame under the project's folder)."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    if not frames:
        return "(unknown location)"
    mine = [f for f in frames if _inside(Path(f.filename), root) and "site-packages" not in f.filename]
    frame = (mine or frames)[-1]  # else the deepest frame outside importlib
    return f"{frame.filename}:{frame.lineno}"


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def find_celery_app(module: ModuleType) -> Celery:
    for attr in ("app", "celery"):
        candidate = getattr(module, attr, None)
        if isinstance(candidate, Celery):
            return candidate
    for candidate in vars(module).values():
        if isinstance(candidate, Celery):
            return candidate
    raise SpecError(f"app.tasks: module {module.__name__!r} defines no Celery app (app = Celery(...))")


def load_user_app(spec: Spec) -> tuple[Celery, TaskCatalog]:
    """The user's Celery app and its tasks; any problem (in the code, or a spec naming no task) is a SpecError."""
    with user_code_errors(spec):
        module = import_tasks_module(spec)
        app = find_celery_app(module)
        app.loader.import_default_modules()
        tasks = {name: task for name, task in app.tasks.items() if not name.startswith(BUILTIN_TASK_PREFIX)}
    if not tasks:
        raise SpecError(f"app.tasks: module {spec.tasks_module!r} declares no tasks")
    catalog = TaskCatalog(tasks)
    check_spec_tasks(spec, catalog)
    return app, catalog


def check_spec_tasks(spec: Spec, catalog: TaskCatalog) -> None:
    """Every `[tasks."NAME"]` of the spec must name a task of the app (by its full name), or it would be ignored."""
    for name in spec.tasks:
        if name not in catalog.tasks:
            raise SpecError(unknown_task_message(name, catalog))


def unknown_task_message(name: str, catalog: TaskCatalog) -> str:
    field = f'tasks."{name}"'
    task = catalog.resolve(name)
    if task is not None:
        return f'{field}: use the task\'s full name: [tasks."{task.name}"]'
    names = catalog.names()
    close = difflib.get_close_matches(name, names, n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    shown = ", ".join(names[:KNOWN_TASKS_SHOWN]) + (", ..." if len(names) > KNOWN_TASKS_SHOWN else "")
    return f"{field}: the app has no such task{hint}; known tasks: {shown}"


class BindingError(Exception):
    """The arguments of a submission do not fit the task's signature; the message shows the signature."""


def original_run(task: Task) -> Callable[..., Any]:
    """The user's function, for binding arguments against its signature."""
    return getattr(task, ORIGINAL_RUN_ATTR, task.run)  # type: ignore[no-any-return]


def check_binding(task: Task, args: list[Any], kwargs: dict[str, Any]) -> None:
    """Raise BindingError when `task(*args, **kwargs)` would fail on its signature alone."""
    function = original_run(task)
    try:
        inspect.signature(function).bind(*args, **kwargs)
    except TypeError as exc:
        raise BindingError(f"arguments do not fit {task.name}{signature_text(function)}: {exc}") from None


def signature_text(function: Any) -> str:
    """The signature as the user wrote it, without the quotes postponed annotations add."""
    try:
        return str(inspect.signature(function, eval_str=True))
    except Exception:  # an annotation that does not evaluate here: show it as written
        try:
            return str(inspect.signature(function))
        except (TypeError, ValueError):
            return "(...)"
