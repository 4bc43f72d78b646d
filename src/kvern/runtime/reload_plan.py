"""What `kvern reload` may change on a running instance: the running spec against the edited one, field by field.

Pure: `plan_reload(running, edited)` lists the changes it can apply live and refuses the others, naming each
field, before anything is touched. A refusal is a field fixed while the instance runs:

- where the instance lives and what it is: the spec file, `app.name`, `app.tasks` (the tasks module's name),
  `broker.url`, `store.url`, `web.port` (the front door address every command reads from runtime.json);
- what the broker was set up with at `up`: the pools themselves and their queues (topology and the worker
  user's permissions), `max_backlog` (a queue's arguments cannot change), and a task time limit longer than
  any the instance started with (Supervisor's stop wait and the private broker's consumer timeout);
- `web.app` added or removed: the app heads' programs exist only when the instance started with an app (a
  change from one app to another, or of its interface, is live: an app head reads both when it starts);
- a broker host added, removed or changed in `[hosts]`: every process connected to the cluster it started with.

A change of the other hosts (a web host added or removed, a weight) is live: on the front host it rewrites
nginx's upstreams and reloads nginx gracefully, and nothing else (`ReloadPlan.upstreams_only`).

Everything else is live: the web tier's fields are nginx's config and the heads' (rewritten, then new heads),
the pools' sizes and recycling are read by fresh workers and the restarted controller, task policies, limits
and retention by every fresh process.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

from kvern.spec import HostSpec, PoolSpec, Spec, TaskPolicy, WebSpec

# Field (as the spec file names it) -> why it cannot change while the instance runs.
FIXED_FIELDS: Mapping[str, str] = {
    "spec file": "the instance runs its processes from that file's folder",
    "app.name": "the instance's name is in its runtime config and process names",
    "app.tasks": "the tasks module's name is part of every task's name",
    "broker.url": "every process is connected to the broker it started with",
    "store.url": "every process keeps its jobs in the store it started with",
    "web.port": "every kvern command reaches the instance through it",
}
APP_ADDED_OR_REMOVED = "the app heads' programs exist only when the instance started with an app"
FIXED_POOL_FIELDS: Mapping[str, str] = {
    "queues": "queues and the workers' broker permissions are set up at `up`",
    "max_backlog": "a queue's length limit is one of its arguments, fixed when it is declared",
}
BROKER_HOST = "the instance's processes are connected to the broker cluster they started with"
NEEDS_RESTART = "needs `kvern down` + `kvern up`"


@dataclass(frozen=True)
class Change:
    """One field applied live."""

    field: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.field}: {_shown(self.old)} -> {_shown(self.new)}"


@dataclass(frozen=True)
class Refusal:
    """One field that cannot change while the instance runs, and why."""

    field: str
    why: str

    def __str__(self) -> str:
        return f"{self.field} changed ({self.why}): {NEEDS_RESTART}"


@dataclass(frozen=True)
class ReloadPlan:
    changes: tuple[Change, ...]
    refusals: tuple[Refusal, ...]

    @property
    def refused(self) -> bool:
        return bool(self.refusals)

    @property
    def upstreams_only(self) -> bool:
        """Only `[hosts]` changed: the front door's upstreams are all there is to change."""
        return bool(self.changes) and all(change.field.startswith("hosts.") for change in self.changes)

    def pool_changes(self, pool: str) -> tuple[Change, ...]:
        return tuple(change for change in self.changes if change.field.startswith(f"pools.{pool}."))


def plan_reload(running: Spec, edited: Spec) -> ReloadPlan:
    """The live changes from `running` to `edited`, and the refusals (fields that need `down` + `up`)."""
    differences = [
        *_top_level(running, edited),
        *_dataclass_fields("web", running.web, edited.web, skip=("tls", "app")),
        *_web_app(running.web, edited.web),
        *_tls(running.web, edited.web),
        *_pools(running.pools, edited.pools),
        *_tasks(running, edited),
        *_dataclass_fields("limits", running.limits, edited.limits),
        *_dataclass_fields("store", running.retention, edited.retention),
        *_hosts(running.hosts, edited.hosts),
    ]
    changes = tuple(d for d in differences if isinstance(d, Change) and d.field not in FIXED_FIELDS)
    refusals = [d for d in differences if isinstance(d, Refusal)]
    refusals += [Refusal(d.field, FIXED_FIELDS[d.field]) for d in differences if d.field in FIXED_FIELDS]
    return ReloadPlan(changes, tuple(refusals))


Difference = Change | Refusal


def _top_level(running: Spec, edited: Spec) -> Iterator[Difference]:
    pairs = {
        "spec file": (running.path, edited.path),
        "app.name": (running.name, edited.name),
        "app.tasks": (running.tasks_module, edited.tasks_module),
        "app.static": (running.static_dir, edited.static_dir),
        "broker.url": (running.broker_url, edited.broker_url),
        "store.url": (running.store_url, edited.store_url),
    }
    for name, (old, new) in pairs.items():
        if old != new:
            yield (
                Change(name, _no_password(old), _no_password(new)) if name.endswith(".url") else Change(name, old, new)
            )


def _dataclass_fields(prefix: str, old: object, new: object, skip: tuple[str, ...] = ()) -> Iterator[Difference]:
    assert type(old) is type(new)
    for item in fields(old):  # type: ignore[arg-type]
        before, after = getattr(old, item.name), getattr(new, item.name)
        if item.name not in skip and before != after:
            yield Change(f"{prefix}.{item.name}", before, after)


def _web_app(old: WebSpec, new: WebSpec) -> Iterator[Difference]:
    if (old.app is None) != (new.app is None):
        yield Refusal("web.app", APP_ADDED_OR_REMOVED)
    elif old.app != new.app:
        yield Change("web.app", old.app, new.app)


def _tls(old: WebSpec, new: WebSpec) -> Iterator[Difference]:
    """Certificate paths and addresses are nginx's (rewritten, reloaded); the files are reread at every reload."""
    if old.tls != new.tls:
        yield Change("web.tls", old.tls, new.tls)


def _pools(old: tuple[PoolSpec, ...], new: tuple[PoolSpec, ...]) -> Iterator[Difference]:
    before, after = {p.name: p for p in old}, {p.name: p for p in new}
    for name in before.keys() - after.keys():
        yield Refusal(f"pools.{name}", "pool removed (or renamed): its programs and queues are set up at `up`")
    for name in after.keys() - before.keys():
        yield Refusal(f"pools.{name}", "pool added (or renamed): its programs and queues are set up at `up`")
    for name in before.keys() & after.keys():
        for difference in _dataclass_fields(f"pools.{name}", before[name], after[name]):
            fixed = FIXED_POOL_FIELDS.get(difference.field.rpartition(".")[2])
            yield Refusal(difference.field, fixed) if fixed else difference


def _tasks(running: Spec, edited: Spec) -> Iterator[Difference]:
    default = TaskPolicy()
    for name in sorted(running.tasks.keys() | edited.tasks.keys()):
        old, new = running.tasks.get(name, default), edited.tasks.get(name, default)
        yield from _dataclass_fields(f'tasks."{name}"', old, new)
    if edited.longest_time_limit > running.longest_time_limit:
        yield Refusal(
            "tasks.*.time_limit",
            f"longer than {running.longest_time_limit:g}s, the longest the instance started with: "
            "Supervisor's stop wait and the broker's consumer timeout are set from it",
        )


def _hosts(old: tuple[HostSpec, ...], new: tuple[HostSpec, ...]) -> Iterator[Difference]:
    before, after = {h.name: h for h in old}, {h.name: h for h in new}
    for name in sorted(before.keys() | after.keys()):
        was, now = before.get(name), after.get(name)
        if was == now:
            continue
        if any(host is not None and host.runs("broker") for host in (was, now)):
            yield Refusal(f"hosts.{name}", BROKER_HOST)
        else:
            yield Change(f"hosts.{name}", _host_shown(was), _host_shown(now))


def _host_shown(host: HostSpec | None) -> str | None:
    if host is None:
        return None
    return f"{host.address} {'+'.join(sorted(host.roles))} weight {host.weight}"


def _no_password(url: object) -> object:
    """A URL as a line may show it: never with its password."""
    if not isinstance(url, str) or "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    credentials, _, host = rest.rpartition("@")
    return f"{scheme}://{credentials.partition(':')[0]}:***@{host}"


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return "none" if value is None else str(value)
