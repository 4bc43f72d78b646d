"""`kvern status`, `logs`, `scale` and `down` on each kind of host of a several-machine instance: what the host
runs is shown, or the command is refused in one line saying where to run it instead. Each host's runtime config
is the one `up --host` would write (nothing is started); supervisord and the broker are stood in for."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from amqp.exceptions import AccessRefused
from click.testing import CliRunner, Result

from kvern import cli, report
from kvern.constants import PINS_FILE, RET_ALREADY_RUNNING, RET_FAILURE, RET_OK, RET_SPEC, SPEC_SNAPSHOT
from kvern.jobs.store import JobStore
from kvern.processes import ProcessInfo, ProcessState
from kvern.runtime.hosts import HostInstance
from kvern.runtime.instance import ROLES, Instance
from kvern.runtime.shared_secrets import SharedSecrets
from kvern.runtime.supervisor import Supervisor
from kvern.runtime.web_heads import publish_live
from kvern.runtime_config import snapshot_spec
from kvern.spec import load_spec

SPEC = """
[app]
tasks = "tasks"

[store]
url = "postgresql://kvern@10.0.3.1:5432/kvern"

[[pools]]
name = "main"

[[pools]]
name = "bulk"

[hosts.front]
address = "10.0.0.10"
roles = ["front", "web"]

[hosts.web2]
address = "10.0.0.11"
roles = ["web"]

[hosts.b1]
address = "10.0.1.1"
roles = ["broker"]

[hosts.w1]
address = "10.0.2.1"
roles = ["workers"]
pools = ["bulk"]

[hosts.w2]
address = "10.0.2.2"
roles = ["workers"]
pools = ["main"]
"""
TASKS = """
from celery import Celery

app = Celery("tasks")


@app.task
def add(x):
    return x
"""
PROGRAMS = {
    "front": [("nginx", "nginx"), ("web-0", "web"), ("controller", "controller")],
    "web2": [("web-0", "web"), ("controller", "controller")],
    "b1": [("rabbitmq", "rabbitmq")],
    "w1": [("bulk-0", "pool-bulk"), ("controller", "controller")],
}


def _host_state(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """The spec file and the state dir of host `name` as `up --host` leaves them (a local store stands in)."""
    project = tmp_path / name
    project.mkdir()
    (project / "tasks.py").write_text(TASKS)
    spec_path = project / "kvern.toml"
    spec_path.write_text(SPEC)
    secrets = project / "secrets.json"
    SharedSecrets.generate(ROLES).save(secrets)
    state = project / ".kvern"
    state.mkdir()
    spec = load_spec(spec_path)
    host = HostInstance.load(Instance(spec, state), name, secrets)
    config = host.runtime_config(snapshot_spec(spec, state))
    replace(config, store_url=f"sqlite:///{state / 'jobs.sqlite3'}").save()
    JobStore(f"sqlite:///{state / 'jobs.sqlite3'}").create_schema()
    if host.host.runs("web"):
        publish_live(state, Instance(spec, state).first_heads)
    return spec_path, state


@pytest.fixture
def running(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every state dir's supervisord runs the programs of its host; the broker answers queue depths."""

    def processes(supervisor: Supervisor) -> list[ProcessInfo]:
        host = supervisor.state_dir.parent.name
        return [ProcessInfo.of(group, name, ProcessState.RUNNING, 100) for name, group in PROGRAMS[host]]

    monkeypatch.setattr(Supervisor, "is_running", lambda _self: True)
    monkeypatch.setattr(Supervisor, "processes", processes)
    monkeypatch.setattr(report, "queue_depths", lambda _url, queues: dict.fromkeys(queues))


def kvern(spec_path: Path, *args: str) -> Result:
    return CliRunner().invoke(cli.main, ["-f", str(spec_path), *args])


@pytest.mark.parametrize(
    ("name", "front_door", "pools"),
    [
        ("front", "http://127.0.0.1:", []),
        ("web2", "(not on this host: front at 10.0.0.10)", []),
        ("b1", "(not on this host: front at 10.0.0.10)", []),
        ("w1", "(not on this host: front at 10.0.0.10)", ["bulk"]),
    ],
)
def test_status_shows_each_host_what_it_runs(
    tmp_path: Path, running: None, name: str, front_door: str, pools: list[str]
) -> None:
    spec_path, _state = _host_state(tmp_path, name)
    text = kvern(spec_path, "status")
    assert text.exit_code == RET_OK, text.output
    assert text.output.splitlines()[0].startswith(f"host: {name} ")
    assert f"front door: {front_door}" in text.output
    assert ("web heads: 2 serving on 10.0.0.11:8100, 10.0.0.11:8101" in text.output) == (name == "web2")
    assert ("pools: (none run here)" in text.output) == (not pools)
    shown = json.loads(kvern(spec_path, "status", "--json").output)
    assert shown["host"]["name"] == name
    assert (shown["front_door"] or "").startswith("http") == (name == "front")
    assert [pool["name"] for pool in shown["pools"]] == pools


@pytest.mark.parametrize(
    ("name", "args", "refusal"),
    [
        ("b1", ("web", "2"), "host b1 runs no web heads (roles: broker): run `kvern scale web` on the front host"),
        ("w1", ("web", "2"), "host w1 runs no web heads (roles: workers): run `kvern scale web` on the front host"),
        ("web2", ("web", "3"), "the front host's nginx lists [web] heads of web host web2, not the heads running"),
        ("front", ("main", "2"), "host front runs no pool 'main' (it runs on w2): run `kvern scale main 2` there"),
        ("b1", ("bulk", "auto"), "host b1 runs no pool 'bulk' (it runs on w1): run `kvern scale bulk auto` there"),
        ("w1", ("main", "1"), "host w1 runs no pool 'main' (it runs on w2): run `kvern scale main 1` there"),
    ],
)
def test_scale_of_what_a_host_does_not_run_is_refused_saying_where_to_run_it(
    tmp_path: Path, running: None, name: str, args: tuple[str, str], refusal: str
) -> None:
    spec_path, state = _host_state(tmp_path, name)
    result = kvern(spec_path, "scale", *args)
    assert result.exit_code == RET_FAILURE, result.output
    assert result.output.startswith(f"kvern: {refusal}")
    assert len(result.output.splitlines()) == 1
    assert not (state / PINS_FILE).exists()  # nothing pinned that no process of this host would follow


def test_scale_of_a_pool_a_worker_host_runs_pins_it(tmp_path: Path, running: None) -> None:
    spec_path, state = _host_state(tmp_path, "w1")
    result = kvern(spec_path, "scale", "bulk", "2")
    assert result.exit_code == RET_OK, result.output
    assert json.loads((state / PINS_FILE).read_text()) == {"bulk": 2}


@pytest.mark.parametrize("failure", [ConnectionRefusedError(111, "Connection refused"), AccessRefused("login refused")])
def test_status_with_no_broker_node_answering_still_shows_the_host(
    tmp_path: Path, running: None, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    # e.g. the broker host first in the failover list and the next one both down, or the cluster paused
    def unreachable(_url: str, _queues: tuple[str, ...]) -> None:
        raise failure

    monkeypatch.setattr(report, "queue_depths", unreachable)
    spec_path, _state = _host_state(tmp_path, "w1")
    text = kvern(spec_path, "status")
    assert text.exit_code == RET_OK, text.output
    assert f"queues: the broker did not answer ({failure})" in text.output
    assert "bulk-0" in text.output
    shown = json.loads(kvern(spec_path, "status", "--json").output)
    assert shown["queues"] == {"main": None, "bulk": None} and shown["broker_error"] == str(failure)


@pytest.mark.parametrize("name", ["web2", "b1", "w1"])
def test_submit_on_a_host_without_the_front_door_says_where_it_is(tmp_path: Path, running: None, name: str) -> None:
    spec_path, _state = _host_state(tmp_path, name)
    result = kvern(spec_path, "submit", "tasks.add", "--arg", "1")
    assert result.exit_code == RET_FAILURE, result.output
    assert result.output == f"kvern: host {name} runs no front door: run `kvern submit` on front (10.0.0.10)\n"


def test_logs_on_a_broker_host_include_the_nodes_own_log(tmp_path: Path) -> None:
    # supervisord captures the node's stdout, nearly empty: RabbitMQ writes its log to a file of its own
    spec_path, state = _host_state(tmp_path, "b1")
    (state / "logs").mkdir()
    (state / "logs" / "rabbitmq.log").write_text("")
    (state / "logs" / "supervisord.log").write_text("supervisord started\n")
    (state / "rabbitmq" / "log").mkdir(parents=True)
    (state / "rabbitmq" / "log" / "kvern@10.0.1.1.log").write_text("node kvern@10.0.1.1 joined the cluster\n")
    every = kvern(spec_path, "logs")
    assert every.exit_code == RET_OK, every.output
    assert "==> rabbitmq/kvern@10.0.1.1.log <==\nnode kvern@10.0.1.1 joined the cluster" in every.output
    broker = kvern(spec_path, "logs", "rabbitmq")
    assert "joined the cluster" in broker.output and "supervisord" not in broker.output


def test_reload_on_a_broker_host_is_refused_saying_where_to_reload(tmp_path: Path, running: None) -> None:
    # it restarted the controller a broker host does not have: supervisord's BAD_NAME, as a traceback
    spec_path, state = _host_state(tmp_path, "b1")
    spec_path.write_text(SPEC.replace('name = "bulk"', 'name = "bulk"\nmax = 6'))
    result = kvern(spec_path, "reload")
    assert result.exit_code == RET_SPEC, result.output
    assert result.output == (
        "kvern: reload refused: host b1 runs only a RabbitMQ node, which a reload does not change: run "
        "`kvern reload` on the other hosts (a change of the broker hosts needs `kvern down` and `kvern up --host`)\n"
    )
    assert "max = 6" not in (state / SPEC_SNAPSHOT).read_text()


@pytest.mark.parametrize(("name", "where"), [("web2", "host web2 (roles: web)"), ("b1", "host b1 (roles: broker)")])
def test_up_on_a_running_host_names_the_host_not_a_front_door(
    tmp_path: Path, running: None, name: str, where: str
) -> None:
    spec_path, _state = _host_state(tmp_path, name)
    result = kvern(spec_path, "up", "-d")
    assert result.exit_code == RET_ALREADY_RUNNING, result.output
    assert result.stderr.splitlines()[0] == f"kvern is already running: {where}"
