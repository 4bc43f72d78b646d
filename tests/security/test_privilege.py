"""Least privilege on a running instance: what each broker role may do, read back from the broker and tried.

One instance (private RabbitMQ, SQLite store) is shared by the module. Its state dir exists before `up`, with
the loose mode a user's `mkdir` gives it, so the file-mode checks see what `up` makes of an existing dir.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import amqp
import pytest
from kombu.connection import Connection

from kvern.broker.topology import dead_letter_queue
from kvern.constants import (
    ROLE_CONTROLLER,
    ROLE_WEB,
    ROLE_WORKER,
    RUNTIME_FILE,
    SPEC_SNAPSHOT,
    SQLITE_FILE,
    SUPERVISOR_SOCK,
    VHOST,
)
from kvern.runtime import nginx
from kvern.runtime.instance import Instance, owned_pids
from kvern.spec import load_spec
from tests.integration.conftest import Running, wait_for_outcome

pytestmark = pytest.mark.integration

TASKS = '''
from pathlib import Path

from celery import Celery

app = Celery("privilege")


def _fail_first_attempt(flag):
    if not Path(flag).exists():
        Path(flag).write_text("failed once")
        raise RuntimeError("first attempt fails on purpose")
    return "second attempt"


@app.task
def fails_once(flag):
    """Fails its first attempt, succeeds on the retry: proves retries still reach the worker."""
    return _fail_first_attempt(flag)


@app.task
def fails_once_at_once(flag):
    return _fail_first_attempt(flag)
'''

SPEC = """
[app]
tasks = "tasks"

[web]
heads = 1

[[pools]]
name = "main"
queues = ["main", "extra.q-1"]
concurrency = 1
min = 1
max = 1

[tasks."tasks.fails_once"]
retries = 2
backoff = 1
backoff_max = 1
"""

# A task whose retry has no delay goes straight back through its queue's exchange, not the delay chain.
SPEC_NO_BACKOFF = """
[tasks."tasks.fails_once_at_once"]
retries = 2
backoff = 0
backoff_max = 0
"""


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    folder = tmp_path_factory.mktemp("privilege")
    (folder / "tasks.py").write_text(TASKS)
    spec = folder / "kvern.toml"
    spec.write_text(SPEC + SPEC_NO_BACKOFF)
    state = (folder / ".kvern").resolve()
    state.mkdir(mode=0o755)
    state.chmod(0o755)  # as a user's own `mkdir` under umask 022 leaves it
    instance = Instance(load_spec(spec), state)
    config = instance.up()
    try:
        yield Running(instance, config)
    finally:
        instance.down()
        leftover = owned_pids(state)
        assert not leftover, f"kvern down left processes behind: {leftover}"


def permissions(running: Running) -> dict[str, dict[str, str]]:
    """The permissions on kvern's vhost as the broker itself reports them (rabbitmqctl list_permissions)."""
    node = running.instance.private_node(running.config)
    assert node is not None
    listed = json.loads(node.ctl("-q", "list_permissions", "-p", VHOST, "--formatter", "json"))
    return {entry["user"]: entry for entry in listed}


def test_the_broker_reports_each_role_with_only_what_it_needs(running: Running) -> None:
    listed = permissions(running)
    dead_letters = dead_letter_queue(running.config.store_url).name.replace(".", "\\.")
    expected = {
        "kvern-web": ("^$", "^amq\\.default$", "^$"),
        "kvern-worker": ("^$", "^(main|extra\\.q\\-1|celery_delayed_27)$", "^(main|extra\\.q\\-1)$"),
        "kvern-controller": ("^$", "^amq\\.default$", f"^({dead_letters})$"),
        "kvern-admin": (".*", ".*", ".*"),
    }
    assert {user: (p["configure"], p["write"], p["read"]) for user, p in listed.items()} == expected


Operation = Callable[[amqp.Channel], Any]


def refused(url: str, operation: Operation) -> bool:
    """Whether the broker refuses `operation` (ACCESS_REFUSED) on a fresh channel with these credentials."""
    with Connection(url, connect_timeout=5) as conn:
        channel = conn.channel()
        try:
            operation(channel)
        except amqp.exceptions.AccessRefused:
            return True
    return False


def delete_queue(name: str) -> Operation:
    return lambda channel: channel.queue_delete(name)


def declare_queue(name: str) -> Operation:
    return lambda channel: channel.queue_declare(name, durable=True, auto_delete=False)


def purge(name: str) -> Operation:
    return lambda channel: channel.queue_purge(name)


def consume(name: str) -> Operation:
    return lambda channel: channel.basic_get(name)


def delete_exchange(name: str) -> Operation:
    return lambda channel: channel.exchange_delete(name)


def test_a_worker_cannot_delete_declare_or_empty_what_it_does_not_consume(running: Running) -> None:
    worker = running.config.broker_urls[ROLE_WORKER]
    dead_letters = dead_letter_queue(running.config.store_url).name
    forbidden = {
        "delete its work queue": delete_queue("main"),
        "delete the dead-letter queue": delete_queue(dead_letters),
        "delete a delay queue (pending retries)": delete_queue("celery_delayed_0"),
        "delete its queue's exchange": delete_exchange("main"),
        "delete the delay chain's entry": delete_exchange("celery_delayed_27"),
        "declare a queue named evil": declare_queue("evil"),
        "purge a delay queue (pending retries)": purge("celery_delayed_3"),
        "purge the dead-letter queue": purge(dead_letters),
        "read the dead letters": consume(dead_letters),
    }
    allowed = [what for what, operation in forbidden.items() if not refused(worker, operation)]
    assert allowed == []


def test_the_web_role_only_publishes_and_the_controller_only_relays(running: Running) -> None:
    urls = running.config.broker_urls
    dead_letters = dead_letter_queue(running.config.store_url).name
    forbidden = {
        "web consumes a work queue": (urls[ROLE_WEB], consume("main")),
        "web deletes a work queue": (urls[ROLE_WEB], delete_queue("main")),
        "web declares a queue": (urls[ROLE_WEB], declare_queue("evil")),
        "controller consumes a work queue": (urls[ROLE_CONTROLLER], consume("main")),
        "controller deletes a work queue": (urls[ROLE_CONTROLLER], delete_queue("main")),
        "controller deletes the dead-letter queue": (urls[ROLE_CONTROLLER], delete_queue(dead_letters)),
        "controller declares a queue": (urls[ROLE_CONTROLLER], declare_queue("evil")),
    }
    allowed = [what for what, (url, operation) in forbidden.items() if not refused(url, operation)]
    assert allowed == []
    # what the autoscaler needs of the controller role: a passive declare reads a queue's depth
    with Connection(urls[ROLE_CONTROLLER], connect_timeout=5) as conn:
        assert conn.channel().queue_declare("main", passive=True).consumer_count == 1


def test_long_running_processes_connect_with_their_own_role_never_admin(running: Running) -> None:
    node = running.instance.private_node(running.config)
    assert node is not None
    listed = json.loads(node.ctl("-q", "list_connections", "user", "--formatter", "json"))
    # the controller's dead-letter watcher and the worker's consumer hold connections all the time
    assert {entry["user"] for entry in listed} >= {"kvern-controller", "kvern-worker"}
    assert "kvern-admin" not in {entry["user"] for entry in listed}


@pytest.mark.parametrize("task", ["tasks.fails_once", "tasks.fails_once_at_once"])
def test_a_retried_job_still_goes_through_with_the_narrow_roles(running: Running, tmp_path: Path, task: str) -> None:
    with running.client() as client:
        response = client.post("/api/v1/jobs", json={"task": task, "args": [str(tmp_path / "flag")]})
        assert response.status_code == 202, response.text
        job = wait_for_outcome(client, response.json()["id"], timeout=60)
    assert (job["status"], job["attempts"], job["result"]) == ("succeeded", 2, "second attempt")


# -- file modes ------------------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_the_state_dir_that_existed_0755_is_0700_and_its_secrets_0600(running: Running) -> None:
    state = running.instance.state_dir
    expected = {
        state: 0o700,
        state / RUNTIME_FILE: 0o600,  # broker passwords
        state / SPEC_SNAPSHOT: 0o600,  # may hold the store's URL with its password
        state / SQLITE_FILE: 0o600,  # job args and results
        state / SUPERVISOR_SOCK: 0o600,  # whoever reaches it controls every process
    }
    assert {path.name: oct(mode(path)) for path in expected} == {path.name: oct(m) for path, m in expected.items()}
    # the web heads' sockets: nginx's workers (another user of the folder's group, when run as root) may connect
    sockets = nginx.socket_dir(state)
    assert mode(sockets) & 0o007 == 0 and mode(sockets / "web-0.sock") == 0o660


# The web heads' socket dir and nginx's dir are open to the group (nginx workers may be another user of it).
GROUP_MAY_ENTER = {"run", "nginx"}


def test_nothing_in_the_state_dir_is_open_to_others_and_only_the_front_door_to_the_group(
    running: Running, tmp_path: Path
) -> None:
    state = running.instance.state_dir
    with running.client() as client:  # a job written by the web head and a worker: the store's -wal and -shm too
        job = client.post("/api/v1/jobs", json={"task": "tasks.fails_once", "args": [str(tmp_path / "flag")]})
        wait_for_outcome(client, job.json()["id"], timeout=60)
    paths = [Path(root) / name for root, dirs, files in os.walk(state) for name in dirs + files]
    assert len(paths) > 20  # logs, broker data, nginx temp dirs, the store
    open_to_others = [str(p.relative_to(state)) for p in paths if mode(p) & 0o007 and not p.is_symlink()]
    assert open_to_others == []
    open_to_group = {
        str(p.relative_to(state))
        for p in paths
        if mode(p) & 0o070 and not p.is_symlink() and p.relative_to(state).parts[0] not in GROUP_MAY_ENTER
    }
    assert open_to_group == set()


# -- last: takes the instance down ---------------------------------------------------------------------------


def test_a_restart_with_another_queue_gives_the_worker_that_queue_and_nothing_more(running: Running) -> None:
    # The node imports kvern's definitions at every boot: permissions follow the spec, not the first run.
    instance = running.instance
    instance.down()
    instance.spec.path.write_text(SPEC.replace('queues = ["main", "extra.q-1"]', 'queues = ["main", "later"]'))
    restarted = Running(Instance(load_spec(instance.spec.path), instance.state_dir), running.config)
    restarted.config = restarted.instance.up()
    worker = permissions(restarted)["kvern-worker"]
    assert (worker["write"], worker["read"]) == ("^(main|later|celery_delayed_27)$", "^(main|later)$")
