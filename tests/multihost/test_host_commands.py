"""`kvern status`, `logs`, `scale` and `submit` run on each kind of host of the shared stack, as an operator
would: each shows what its host runs, or refuses in one line naming where to run the command instead."""

from __future__ import annotations

import json

from tests.multihost.kvern_hosts import KVERN
from tests.multihost.stack import WORK_QUEUE, Stack

# host -> whether it runs the front door, the pools it runs
LAYOUT = {"a1": (True, ["main"]), "h2": (False, []), "w2": (False, ["main"]), "b1": (False, [])}


def test_each_host_shows_what_it_runs(stack: Stack) -> None:
    project = stack.project
    for name, (front, pools) in LAYOUT.items():
        shown = json.loads(project.kvern(project.hosts[name], "status", "--json"))
        assert shown["host"]["name"] == name, shown
        assert (shown["front_door"] is not None) == front, shown
        assert [pool["name"] for pool in shown["pools"]] == pools, shown
        assert shown["broker_error"] is None and shown["queues"][WORK_QUEUE] is not None, shown
    b1 = project.hosts["b1"]
    assert f"==> rabbitmq/kvern@{b1.address}.log <==" in project.kvern(b1, "logs", "-n", "5")


def test_what_a_host_does_not_run_is_refused_in_one_line(stack: Stack) -> None:
    project = stack.project
    for name, args in [("b1", ("scale", "main", "1")), ("h2", ("scale", "web", "2")), ("w2", ("submit", "work"))]:
        host = project.hosts[name]
        command = [*KVERN, "-f", str(project.folder / "kvern.toml"), "--state", str(project.state(host)), *args]
        done = host.run(command, check=False)
        assert done.returncode != 0 and done.stdout == "", done
        assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("kvern: "), done.stderr
