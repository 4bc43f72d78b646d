"""Remote web heads: a1's front door balances its own head (unix socket) and web host h2's head (TCP).

4. Under steady submits through the front door, every process of h2 is killed (SIGKILL): nginx routes around
   it, a 5xx only for a request that was in flight on h2, nothing lost or stuck; h2 is started again under load
   and comes back into the upstream with no 5xx at all.
Then the web host is removed from the spec and added back, each time with `kvern reload` on the front host under
load: no failed request, and h2 gets requests again once it is back in the spec.
The load and its counting are scenario 1-3's (test_failover_under_load.py).
"""

from __future__ import annotations

import threading
import time

import httpx

from kvern.constants import MAX_WEB_HEADS
from kvern.spec import WebSpec
from tests.multihost.netns import Host
from tests.multihost.stack import Stack, web_host_table
from tests.multihost.test_failover_under_load import SUBMITTERS, Load, _count, _kill, _under_load

HEAD_PORT = WebSpec().head_port  # the stack's spec keeps the default
COMEBACK_TAIL_S = 2.0  # load kept up after the web host serves again
# nginx leaves a head out for fail_timeout (10 s, runtime/upstreams.py) after max_fails failed tries, then
# tries it again: a web host that is back gets requests within that, plus the time its head takes to answer.
SERVING_AGAIN_S = 20.0
RELOAD_LOAD_S = 4.0  # load before and after each reload


def _front_connections(web: Host) -> int:
    """Established connections to the web host's heads (from the front door's nginx)."""
    ports = range(HEAD_PORT, HEAD_PORT + 2 * MAX_WEB_HEADS)
    done = web.run(["ss", "-Htn", "state", "established"], check=False)
    return sum(1 for line in done.stdout.splitlines() if int(line.split()[2].rpartition(":")[2]) in ports)


def _submitting(stack: Stack, during: float) -> tuple[Load, list[threading.Thread]]:
    load = Load(stack.url, stack.headers(), stack.effects)
    threads = [threading.Thread(target=load.run, args=(i,)) for i in range(SUBMITTERS)]
    for thread in threads:
        thread.start()
    time.sleep(during)
    return load, threads


def _stop(load: Load, threads: list[threading.Thread]) -> None:
    load.stop.set()
    for thread in threads:
        thread.join(timeout=120)


def test_a_web_heads_port_answers_only_the_front_door(stack: Stack) -> None:
    web = stack.project.hosts["h2"]
    # From the bridge's own address (not a host of the spec): refused by the head itself.
    response = httpx.get(f"http://{web.address}:{HEAD_PORT}/api/openapi.json", timeout=5)
    assert response.status_code == 403, response.text
    # Through the front door the same head answers.
    assert httpx.get(f"{stack.url}/api/health", timeout=5).status_code == 200


def test_killing_a_web_host_under_load(stack: Stack) -> None:
    project = stack.project
    web = project.hosts["h2"]
    serving: list[int] = []

    def die() -> None:
        serving.append(_front_connections(web))
        _kill(web)

    load, killed_at = _under_load(stack, die)
    row = _count(stack, "4: SIGKILL of a web host", load, killed_at)
    assert serving[0] > 0, f"the web host took no share of the load, so its death proved nothing: {row}"
    # Each submitter has one request in flight at a time: only those on h2 at the kill may fail.
    assert load.answers_5xx <= SUBMITTERS, load.why_5xx
    # Only a1's head answers now; its health tells the web host's head is not listening.
    health = httpx.get(f"{stack.url}/api/health", timeout=5).json()
    assert health["web_hosts"] == {"listening": 0, "expected": 1}, health

    # It comes back under load: nginx takes it into the upstream again with no failed request.
    comeback, threads = _submitting(stack, during=1.0)
    try:
        back_at = time.monotonic()
        project.up(web)
        up_after = time.monotonic() - back_at
        serving_after = _until_serving(web)
        time.sleep(COMEBACK_TAIL_S)
    finally:
        _stop(comeback, threads)
    row = _count(stack, "4: the web host started again (kvern up --host)", comeback, back_at)
    print(f"web host: up in {up_after:.1f} s, serving again {serving_after:.1f} s after that")
    assert comeback.answers_5xx == 0 and comeback.no_answer == 0, (row, comeback.why_5xx)


def _until_serving(web: Host) -> float:
    """Seconds until nginx sends the web host requests again: up to fail_timeout after its last failed try."""
    started = time.monotonic()
    while _front_connections(web) == 0:
        assert time.monotonic() - started < SERVING_AGAIN_S, "the web host that came back got no requests"
        time.sleep(0.2)
    return time.monotonic() - started


def test_removing_and_adding_a_web_host_with_reload_under_load(stack: Stack) -> None:
    project, front = stack.project, stack.front
    web = project.hosts["h2"]
    spec_file = project.folder / "kvern.toml"
    with_web_host = spec_file.read_text()
    table = web_host_table(web)
    assert table in with_web_host
    load, threads = _submitting(stack, during=RELOAD_LOAD_S)
    changed_at = time.monotonic()
    try:
        spec_file.write_text(with_web_host.replace(table, ""))
        removed = project.kvern(front, "reload")
        time.sleep(RELOAD_LOAD_S)
        left = _front_connections(web)  # nginx's old workers, which held connections to h2, have exited
        spec_file.write_text(with_web_host)
        added = project.kvern(front, "reload")
        time.sleep(RELOAD_LOAD_S)
        back = _front_connections(web)
    finally:
        spec_file.write_text(with_web_host)
        _stop(load, threads)
    assert "upstreams reloaded: 1 local head(s), 0 on 0 web host(s)" in removed, removed
    assert "upstreams reloaded: 1 local head(s), 1 on 1 web host(s)" in added, added
    row = _count(stack, "web host removed, then added back, with `kvern reload` on the front host", load, changed_at)
    assert load.answers_5xx == 0 and load.no_answer == 0, (row, load.why_5xx)
    assert left == 0, "the front door still sends requests to the web host removed from the spec"
    assert back > 0, "the web host added back to the spec gets no requests"
