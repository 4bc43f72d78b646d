"""A running instance keeps the spec it was started with: editing kvern.toml reaches none of its processes."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

import pytest

from kvern.api.app import WebHead
from kvern.constants import MAX_WEB_HEADS, ROLE_WEB, RUNTIME_FILE, WEB_COLORS, WEB_GROUP
from kvern.errors import SpecError
from kvern.runtime.programs import build_programs
from kvern.runtime_config import RuntimeConfig, snapshot_spec
from kvern.spec import Tiers, load_spec, parse_spec


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A spec folder with a tasks module (a name of its own: Python caches modules by name) and a static folder."""
    module = f"snap_tasks_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "project"
    (folder / "static").mkdir(parents=True)
    (folder / f"{module}.py").write_text(
        textwrap.dedent(
            """
            from celery import Celery
            app = Celery("snap")

            @app.task(shared=False)
            def charge(amount):
                return amount
            """
        )
    )
    spec = folder / "kvern.toml"
    spec.write_text(spec_text(module, retries=2))
    return spec


def spec_text(module: str, retries: int) -> str:
    return textwrap.dedent(
        f"""
        [app]
        tasks = "{module}"
        static = "static"
        [[pools]]
        name = "main"
        queues = ["main"]
        [tasks."{module}.charge"]
        retries = {retries}
        """
    )


def started(spec_path: Path, state_dir: Path, only: str = "all") -> RuntimeConfig:
    """What `kvern up` leaves in the state dir: the snapshot of the spec it validated, and runtime.json."""
    state_dir.mkdir()
    spec = load_spec(spec_path)
    config = RuntimeConfig(
        spec_path=str(spec.path),
        spec_snapshot=str(snapshot_spec(spec, state_dir)),
        state_dir=str(state_dir),
        instance="snap",
        front_door_port=1,
        store_url=f"sqlite:///{state_dir / 'jobs.sqlite3'}",
        broker_urls={ROLE_WEB: "amqp://guest:guest@127.0.0.1:5672/"},
        management_url=None,
        management_auth=None,
        private_broker=False,
        only=Tiers.parse(only),
    )
    config.save()
    return config


# Celery hands every new app the shared tasks of the apps other tests made before (some under one name).
@pytest.mark.filterwarnings("ignore::celery.exceptions.DuplicateTaskNameWarning")
def test_an_edited_spec_file_does_not_reach_a_running_instance(project: Path, tmp_path: Path) -> None:
    # given an instance started with retries = 2
    started(project, tmp_path / "state")
    module = load_spec(project).tasks_module
    # when the user edits kvern.toml while it runs
    project.write_text(spec_text(module, retries=7))
    # then what its processes load (web heads, workers and the controller all call RuntimeConfig.spec) keeps 2
    config = RuntimeConfig.load(tmp_path / "state")
    assert config.spec().policy(f"{module}.charge").retries == 2
    head = WebHead.from_runtime(config)
    try:
        assert head.spec.policy(f"{module}.charge").retries == 2
    finally:
        head.store.close()
    assert load_spec(project).policy(f"{module}.charge").retries == 7  # the file did change


def test_the_snapshot_finds_the_tasks_module_and_static_folder_in_the_original_folder(
    project: Path, tmp_path: Path
) -> None:
    config = started(project, tmp_path / "state")
    spec = config.spec()
    assert Path(config.spec_snapshot).parent == tmp_path / "state"
    assert spec.root == project.parent.resolve() == config.spec_root.resolve()
    assert spec.static_dir == (project.parent / "static").resolve()
    assert spec.name == "project"  # the default name is the original folder's, not the state dir's


@pytest.mark.parametrize("only", ["all", "web", "pools", "main"])
def test_only_is_stored_as_given_and_read_back_typed(project: Path, tmp_path: Path, only: str) -> None:
    started(project, tmp_path / "state", only)
    assert json.loads((tmp_path / "state" / RUNTIME_FILE).read_text())["only"] == only
    config = RuntimeConfig.load(tmp_path / "state")
    assert config.only == Tiers.parse(only)
    assert str(config.only) == only


def test_only_names_a_pool_of_the_spec(project: Path) -> None:
    spec = load_spec(project)
    assert Tiers.parse("main").check(spec).pools_of(spec) == spec.pools
    assert Tiers.parse("web").pools_of(spec) == ()
    with pytest.raises(SpecError, match="--only: 'mian'"):
        Tiers.parse("mian").check(spec)


def test_every_web_head_the_spec_allows_has_a_rendered_program(project: Path, tmp_path: Path) -> None:
    config = started(project, tmp_path / "state", "web")
    raw = {"app": {"tasks": "t"}, "web": {"heads": MAX_WEB_HEADS}, "pools": [{"name": "main"}]}
    spec = parse_spec(raw, project)
    rendered = [p for p in build_programs(spec, config, None) if p.name.startswith(f"{WEB_GROUP}-")]
    # every head of both colors (blue/green reloads)
    assert len(rendered) == spec.web.heads * WEB_COLORS == MAX_WEB_HEADS * WEB_COLORS
    with pytest.raises(SpecError, match=r"web\.heads"):
        parse_spec(raw | {"web": {"heads": MAX_WEB_HEADS + 1}}, project)
