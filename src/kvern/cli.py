"""The `kvern` command. Exit codes are the RET_* constants in `kvern.constants`."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from kvern import constants as c
from kvern.autoscale.pins import write_pin
from kvern.broker.relay import publish_jobs
from kvern.client import submit_and_follow
from kvern.errors import (
    AlreadyRunning,
    JobNotFound,
    KvernError,
    NotRunning,
    ReloadRefused,
    RuntimeStateError,
    SpecError,
    StartError,
)
from kvern.jobs import retention
from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.keys import SCOPES, SqlKeyStore
from kvern.jobs.states import REPLAYABLE, JobStatus
from kvern.jobs.store import JobStore
from kvern.jobs.views import history_view, job_body
from kvern.report import collect_status, render_status
from kvern.runtime import service as systemd_unit
from kvern.runtime.hosts import HostInstance, front_door_refusal, reload_refusal, running_host, scale_refusal
from kvern.runtime.instance import (
    ROLES,
    Instance,
    auth_off_warning,
    consumer_timeout_warning,
    default_state_dir,
    front_door_url,
    root_warning,
)
from kvern.runtime.reload import reload_instance
from kvern.runtime.run_as import BROKER_DIR
from kvern.runtime.shared_secrets import ENV_SECRETS, SharedSecrets
from kvern.runtime.stopping import reload_on_hangup, stop_on_signals
from kvern.runtime.supervisor import Supervisor
from kvern.runtime.web_scaling import scale_web
from kvern.runtime_config import local_key
from kvern.spec import PoolSpec, Tiers, load_spec, parse_duration, unsafe_character

F = TypeVar("F", bound=Callable[..., Any])

MIN_ID_PREFIX = 4  # shorter prefixes of a job id are refused: they would match too many jobs to be useful
MATCHES_SHOWN = 5  # an ambiguous prefix lists this many of the ids it matches


def _fail(message: str, code: int) -> None:
    click.echo(f"kvern: {message}", err=True)
    sys.exit(code)


def handle_errors(func: F) -> F:
    """Turn kvern's errors into one line on stderr and the matching exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SpecError as exc:
            _fail(f"invalid spec: {exc}", c.RET_SPEC)
        except AlreadyRunning as exc:
            _fail(str(exc), c.RET_ALREADY_RUNNING)
        except RuntimeStateError as exc:  # NotRunning, or a state dir that never ran
            _fail(str(exc), c.RET_NOT_RUNNING)
        except StartError as exc:
            _fail(str(exc), c.RET_START)
        except KvernError as exc:
            _fail(str(exc), c.RET_FAILURE)

    return wrapper  # type: ignore[return-value]


def state_dir_of(ctx: click.Context) -> Path:
    return Path(ctx.obj["state"] or default_state_dir(ctx.obj["spec"])).resolve()


def instance_from(ctx: click.Context) -> Instance:
    """The instance of the state dir: while it runs, with the spec it was started with (its snapshot), so a
    command acts on what runs; otherwise with the spec file."""
    state = state_dir_of(ctx)
    if Supervisor(state).is_running():
        with contextlib.suppress(RuntimeStateError, TypeError):  # TypeError: started by a kvern without snapshots
            return Instance.started(state)
    return spec_file_instance(ctx)


def spec_file_instance(ctx: click.Context) -> Instance:
    return Instance(load_spec(ctx.obj["spec"]), state_dir_of(ctx))


def running_instance(ctx: click.Context) -> Instance:
    return require_running(instance_from(ctx))


def require_running(instance: Instance) -> Instance:
    if not instance.is_running():
        raise NotRunning(f"no kvern instance is running with state dir {instance.state_dir}")
    return instance


def resolve_job_id(store: JobStoreProtocol, given: str) -> str:
    """The full id of the one job whose id is `given` or starts with it (the short id `submit --wait` shows)."""
    if len(given) < MIN_ID_PREFIX:
        raise click.BadParameter(f"{given!r}: give at least {MIN_ID_PREFIX} characters of the id", param_hint="JOB_ID")
    matches = store.job_ids_starting_with(given, MATCHES_SHOWN + 1)
    if given in matches:
        return given
    if not matches:
        raise JobNotFound(f"no job with id {given!r}")
    if len(matches) == 1:
        return matches[0]
    shown = ", ".join(matches[:MATCHES_SHOWN]) + (", ..." if len(matches) > MATCHES_SHOWN else "")
    raise click.BadParameter(f"{given!r} matches several jobs ({shown}): give more of the id", param_hint="JOB_ID")


@click.group()
@click.option("-f", "spec", type=click.Path(path_type=Path), default=Path("kvern.toml"), help="Spec file.")
@click.option("--state", type=click.Path(path_type=Path), default=None, help="State dir (default .kvern/).")
@click.pass_context
def main(ctx: click.Context, spec: Path, state: Path | None) -> None:
    """kvern: nginx, web heads, RabbitMQ and elastic Celery pools from one spec file."""
    ctx.ensure_object(dict)
    ctx.obj.update(spec=spec, state=state)


@main.command()
@click.option("-d", "detach", is_flag=True, help="Return once every part is healthy.")
@click.option("--only", default="all", help="Run a subset: web, pools, or one pool's name.")
@click.option("--host", default=None, help="Run what the spec's [hosts] gives this machine.")
@click.option(
    "--secrets",
    envvar=ENV_SECRETS,
    type=click.Path(path_type=Path),
    default=None,
    help=f"With --host: the shared secrets file (kvern secrets init; or ${ENV_SECRETS}).",
)
@click.pass_context
@handle_errors
def up(ctx: click.Context, detach: bool, only: str, host: str | None, secrets: Path | None) -> None:
    """Start the platform (foreground: Ctrl-C stops everything)."""
    hangup = reload_on_hangup()  # a SIGHUP while starting is kept for after: it must not end the process
    instance = spec_file_instance(ctx)  # `up` starts from the spec file as it is now (and snapshots it)
    if host is not None:
        _up_host(instance, host, secrets, detach)
        return
    unsafe = unsafe_character(str(instance.state_dir)) if ctx.obj["state"] else None
    if unsafe is not None:  # the state dir is written into every config file
        raise click.BadParameter(
            f"{instance.state_dir} contains {unsafe!r}, which no config file can hold", param_hint="--state"
        )
    tiers = Tiers.parse(only).check(instance.spec)
    if instance.is_running():
        _already_running(ctx, instance)
    for warning in filter(None, [consumer_timeout_warning(instance.spec), auth_off_warning(instance.spec)]):
        click.echo(f"kvern: {warning}", err=True)
    config = instance.up(tiers, report=_progress)
    click.echo(f"kvern is up: {front_door_url(config)}" if tiers.web else "kvern pools are up")
    if (root := root_warning(instance.spec)) is not None:  # once up: a refusal stays one line
        click.echo(f"kvern: {root}", err=True)
    if detach:
        return
    if not _wait_for_interrupt(ctx, instance, hangup):
        _lost_supervisor(instance)
        return
    click.echo("stopping (running jobs finish first)...")
    instance.down(report=_progress)
    click.echo("kvern is down")


def _lost_supervisor(instance: Instance) -> None:
    """supervisord is gone: after `kvern down` from elsewhere that is the end asked for; otherwise it died, and
    the foreground `up` must fail (a service manager restarts it) instead of watching nothing."""
    if instance.stopped_by_down():
        click.echo("kvern is down (stopped by kvern down)")
        return
    click.echo("kvern: supervisord is gone: the instance stopped unexpectedly; stopping what is left", err=True)
    instance.down(report=_progress)
    sys.exit(c.RET_FAILURE)


def _up_host(instance: Instance, name: str, secrets: Path | None, detach: bool) -> None:
    """One host's part of a several-machine instance (runtime/hosts.py)."""
    if secrets is None:
        raise click.BadParameter(f"--host needs the shared secrets file (or ${ENV_SECRETS})", param_hint="--secrets")
    HostInstance.load(instance, name, secrets).up(report=_progress)
    click.echo(f"kvern host {name} is up")
    if detach:
        return
    stop = stop_on_signals()
    while not stop.wait(0.2):
        pass
    click.echo("stopping...")
    instance.down(report=_progress)
    click.echo("kvern is down")


def _progress(line: str) -> None:
    click.echo(f"  {line}")


def _already_running(ctx: click.Context, instance: Instance) -> None:
    """Say where it runs and what to do with it (on stderr, as for any refusal), exit RET_ALREADY_RUNNING."""
    config = instance.runtime()
    host = running_host(instance.spec, config)
    if host is not None:  # started with --host: a web host's heads have no front door at 127.0.0.1
        where = f"host {host.name} (roles: {', '.join(sorted(host.roles))})"
    else:
        where = front_door_url(config) if config.only.web else f"pools only ({config.only})"
    command = _command_prefix(ctx)
    click.echo(f"kvern is already running: {where}", err=True)
    click.echo(f"  {command} status    what runs, queue depths, jobs", err=True)
    click.echo(f"  {command} logs      the tail of every process's log", err=True)
    click.echo(f"  {command} down      stop it (running jobs finish first)", err=True)
    sys.exit(c.RET_ALREADY_RUNNING)


def _command_prefix(ctx: click.Context) -> str:
    """`kvern` with the -f/--state options this command was given, so the suggestions can be pasted."""
    words = ["kvern"]
    if ctx.obj["spec"] != Path("kvern.toml"):
        words += ["-f", str(ctx.obj["spec"])]
    if ctx.obj["state"] is not None:
        words += ["--state", str(ctx.obj["state"])]
    return " ".join(words)


SUPERVISOR_CHECK_S = 2.0  # how often the foreground `up` makes sure supervisord still runs


def _wait_for_interrupt(ctx: click.Context, instance: Instance, hangup: threading.Event) -> bool:
    """Until Ctrl-C or SIGTERM (True), or until supervisord is gone (False); each SIGHUP reloads, one at a time
    (a SIGHUP during a reload: one more after)."""
    stop = stop_on_signals()
    next_check = time.monotonic() + SUPERVISOR_CHECK_S
    while not stop.wait(0.2):
        if time.monotonic() >= next_check:
            if not instance.is_running():
                return False
            next_check = time.monotonic() + SUPERVISOR_CHECK_S
        if hangup.is_set():
            hangup.clear()
            click.echo("SIGHUP: reloading")
            _reload_in_foreground(ctx, instance.state_dir)
            if hangup.is_set():
                click.echo("a SIGHUP came during the reload: reloading again")
    return True


def _reload_in_foreground(ctx: click.Context, state_dir: Path) -> None:
    """A failed reload is told and the instance keeps running as it was."""
    try:
        reload_instance(state_dir, load_spec(ctx.obj["spec"]), report=_progress)
    except ReloadRefused as exc:
        for line in exc.lines:
            click.echo(f"kvern: reload refused: {line}", err=True)
    except KvernError as exc:
        click.echo(f"kvern: reload failed: {exc}", err=True)
    else:
        click.echo("kvern reloaded")


@main.command()
@click.pass_context
@handle_errors
def reload(ctx: click.Context) -> None:
    """Apply the spec file and the project's new code to the running instance, without downtime."""
    instance = running_instance(ctx)
    started = time.monotonic()
    refusal = reload_refusal(instance.spec, instance.runtime())
    try:
        if refusal is not None:
            raise ReloadRefused([refusal])
        reload_instance(instance.state_dir, load_spec(ctx.obj["spec"]), report=_progress)
    except ReloadRefused as exc:  # one line per field, nothing changed
        for line in exc.lines:
            click.echo(f"kvern: reload refused: {line}", err=True)
        sys.exit(c.RET_SPEC)
    click.echo(f"kvern reloaded ({time.monotonic() - started:.1f}s)")


@main.command()
@click.pass_context
@handle_errors
def down(ctx: click.Context) -> None:
    """Stop everything; workers finish their running job first."""
    instance = instance_from(ctx)
    started = time.monotonic()
    if instance.down(report=_progress):
        click.echo(f"kvern is down ({time.monotonic() - started:.1f}s)")
    else:
        click.echo("kvern was not running")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@handle_errors
def status(ctx: click.Context, as_json: bool) -> None:
    """Front door, processes, queue depths, job counts, pools."""
    try:
        instance = instance_from(ctx)
    except SpecError as exc:
        if as_json:  # scripts parse stdout whatever the exit code
            click.echo(json.dumps({"running": False, "error": f"invalid spec: {exc}"}, indent=2))
        raise
    if as_json and not instance.is_running():
        # Scripts parse stdout whatever the exit code: say "not running" there too.
        click.echo(json.dumps({"running": False, "state_dir": str(instance.state_dir)}, indent=2))
    report = collect_status(require_running(instance))
    click.echo(json.dumps({"running": True, **report}, indent=2) if as_json else render_status(report))


@main.command()
@click.argument("task")
@click.option("--arg", "args", multiple=True, help="Positional argument (JSON, or a plain string).")
@click.option("--kwarg", "kwargs", multiple=True, help="Keyword argument NAME=VALUE (VALUE as JSON or string).")
@click.option("--wait", is_flag=True, help="Wait for the outcome, with a progress bar.")
@click.option("--idempotency-key", default=None)
@click.option("--subject", default=None, help="Whom the job is about (e.g. user:42), for kvern jobs delete --subject.")
@click.pass_context
@handle_errors
def submit(
    ctx: click.Context,
    task: str,
    args: tuple[str, ...],
    kwargs: tuple[str, ...],
    wait: bool,
    idempotency_key: str | None,
    subject: str | None,
) -> None:
    """Submit a job through the front door."""
    instance = running_instance(ctx)
    refusal = front_door_refusal(instance.spec, instance.runtime(), "submit")
    if refusal is not None:  # not "front door unreachable" where there is none
        raise KvernError(refusal)
    url = front_door_url(instance.runtime())
    token = local_key(instance.state_dir)
    code = submit_and_follow(
        url, task, args, kwargs, wait, idempotency_key, subject, token, instance.spec.web.api_prefix
    )
    sys.exit(code)


@main.command()
@click.argument("program", required=False)
@click.option("-n", "lines", default=40, help="Lines per log.")
@click.pass_context
@handle_errors
def logs(ctx: click.Context, program: str | None, lines: int) -> None:
    """Show the tail of every process's log (or one program's)."""
    instance = instance_from(ctx)
    log_dir = instance.state_dir / c.LOG_DIR
    every = _log_files(instance.state_dir)
    if not every:
        raise RuntimeStateError(f"no logs in {log_dir}")
    files = {name: path for name, path in every.items() if name.startswith(program)} if program else every
    if not files:
        names = ", ".join(sorted({name.removesuffix(".log") for name in every}))
        raise click.BadParameter(f"no log of a program named {program!r} (logs: {names})", param_hint="PROGRAM")
    for name, path in files.items():
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        if tail:
            click.echo(f"==> {name} <==")
            click.echo("\n".join(tail))


def _log_files(state_dir: Path) -> dict[str, Path]:
    """Each program's output as supervisord keeps it, then the RabbitMQ node's own log (its output says little;
    RABBITMQ_LOG_BASE is the node dir's `log`), shown as `rabbitmq/<node>.log`."""
    found = {path.name: path for path in sorted((state_dir / c.LOG_DIR).glob("*.log"))}
    node_logs = sorted((state_dir / BROKER_DIR / "log").glob("*.log"))
    return found | {f"{BROKER_DIR}/{path.name}": path for path in node_logs}


@main.command()
@click.argument("target")
@click.argument("processes")
@click.pass_context
@handle_errors
def scale(ctx: click.Context, target: str, processes: str) -> None:
    """Pin POOL to N processes (`auto` gives it back to the autoscaler), or set the number of web heads."""
    instance = instance_from(ctx)  # the command line is checked against the spec before the instance
    if target == "web":
        count = _count(processes)
        if not 1 <= count <= c.MAX_WEB_HEADS:
            raise click.BadParameter(f"web heads must be between 1 and {c.MAX_WEB_HEADS}", param_hint="PROCESSES")
        _refuse_scale_elsewhere(require_running(instance), target, processes)
        before, after = scale_web(instance.supervisor, instance.state_dir, count)
        click.echo(f"web heads: {before} -> {after}")
        return
    pool = _pool(instance, target)
    pin = None if processes == "auto" else _count(processes)
    if pin is not None and pin > pool.max:
        raise click.BadParameter(f"{pin} is above pool {pool.name}'s max ({pool.max})", param_hint="PROCESSES")
    _refuse_scale_elsewhere(require_running(instance), target, processes)
    write_pin(instance.state_dir, pool.name, pin)
    if pin is None:
        click.echo(f"pool {pool.name}: autoscaled ({pool.min}..{pool.max})")
    else:
        click.echo(f"pool {pool.name}: pinned to {pin} processes (`kvern scale {pool.name} auto` to release)")


def _refuse_scale_elsewhere(instance: Instance, target: str, processes: str) -> None:
    """A host (or an --only instance) that does not run TARGET, or whose scaling nobody would see, says where to
    scale it instead: a pin no process here follows would look done and change nothing."""
    refusal = scale_refusal(instance.spec, instance.runtime(), target, processes)
    if refusal is not None:
        raise KvernError(refusal)


def _count(text: str) -> int:
    if not text.isdigit():
        raise click.BadParameter(f"{text!r} is not a number of processes")
    return int(text)


def _pool(instance: Instance, name: str) -> PoolSpec:
    try:
        return instance.spec.pool(name)
    except KeyError:
        pools = ", ".join(p.name for p in instance.spec.pools)
        raise click.BadParameter(f"no pool named {name!r} (pools: {pools}, or web)", param_hint="TARGET") from None


@main.group()
def dlq() -> None:
    """Inspect and re-drive dead (and failed) jobs."""


@dlq.command("list")
@click.option("--limit", default=50)
@click.pass_context
@handle_errors
def dlq_list(ctx: click.Context, limit: int) -> None:
    store = JobStore(running_instance(ctx).runtime().store_url)
    for status in REPLAYABLE:
        for job in store.list_jobs(status, limit):
            error = (job.error or "").splitlines()[0][:80] if job.error else ""
            click.echo(f"{job.id}  {job.status.value:<6}  {job.task}  attempts {job.attempts}  {error}")


@dlq.command("show")
@click.argument("job_id")
@click.pass_context
@handle_errors
def dlq_show(ctx: click.Context, job_id: str) -> None:
    store = JobStore(running_instance(ctx).runtime().store_url)
    job_id = resolve_job_id(store, job_id)
    job = store.get(job_id)
    if job is None:
        raise JobNotFound(f"no job with id {job_id!r}")
    click.echo(json.dumps({**job_body(job), "history": history_view(store.history(job_id))}, indent=2))


@dlq.command("replay")
@click.argument("job_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead and failed job.")
@click.pass_context
@handle_errors
def dlq_replay(ctx: click.Context, job_id: str | None, replay_all: bool) -> None:
    if bool(job_id) == replay_all:
        raise click.UsageError("give a JOB_ID or --all")
    config = running_instance(ctx).runtime()
    store = JobStore(config.store_url)
    ids = [resolve_job_id(store, job_id)] if job_id else [j.id for s in REPLAYABLE for j in store.list_jobs(s, 10_000)]
    replayed = [job for job in (store.replay(i) for i in ids) if job is not None]
    publish_jobs(config.broker_urls[c.ROLE_ADMIN], replayed, store)
    click.echo(f"replayed {len(replayed)} job(s)")
    if job_id and not replayed:
        _fail(f"job {ids[0]} is {_status_of(store, ids[0])}: only dead or failed jobs can be replayed", c.RET_FAILURE)


@main.group()
def jobs() -> None:
    """Erase jobs: one by id, everything about one subject, or what is older than a retention period."""


@jobs.command("delete")
@click.argument("job_id", required=False)
@click.option("--subject", default=None, help="Erase every job tagged with this subject (e.g. user:42).")
@click.pass_context
@handle_errors
def jobs_delete(ctx: click.Context, job_id: str | None, subject: str | None) -> None:
    """Erase a job, its attempt history and its artifacts, or every job of one subject (a running attempt is
    told through kvern.cancelled)."""
    if (job_id is None) == (subject is None):
        raise click.UsageError("give a JOB_ID or --subject")
    store = JobStore(running_instance(ctx).runtime().store_url)
    if subject is not None:
        click.echo(f"erased {store.erase_subject(subject)} job(s) of subject {subject!r}")
        return
    job_id = resolve_job_id(store, job_id or "")
    if not store.erase(job_id):
        raise JobNotFound(f"no job with id {job_id!r}")
    click.echo(f"erased job {job_id}")


@jobs.command("purge")
@click.option("--older-than", "older_than", required=True, help="Finished longer ago than this: 90s, 15m, 12h, 7d.")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in retention.FINISHED]),
    help="Only jobs that ended so (repeatable); default: every finished job.",
)
@click.pass_context
@handle_errors
def jobs_purge(ctx: click.Context, older_than: str, statuses: tuple[str, ...]) -> None:
    """Erase finished jobs older than a period now, as the retention settings do every minute."""
    try:
        age_s = parse_duration(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    store = JobStore(running_instance(ctx).runtime().store_url)
    chosen = [JobStatus(s) for s in statuses] or list(retention.FINISHED)
    erased = retention.purge(store, chosen, time.time() - age_s)
    click.echo(f"erased {erased} job(s)")


@main.group()
def keys() -> None:
    """API keys of the job API: who may submit, read, administer or scrape metrics."""


def _key_store(ctx: click.Context) -> SqlKeyStore:
    """The keys of the instance's store; the instance need not run, but must have run once (its store)."""
    store = JobStore(instance_from(ctx).runtime().store_url)
    store.create_schema()  # a store made by an older kvern gets the keys table
    return SqlKeyStore(store.engine)


@keys.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    default="submit,read",
    show_default=True,
    help=f"Comma-separated: {', '.join(SCOPES)} (admin: every job, every action).",
)
@click.pass_context
@handle_errors
def keys_create(ctx: click.Context, name: str, scopes: str) -> None:
    """Make a key; its token is printed once (only a hash of it is kept)."""
    chosen = [scope.strip() for scope in scopes.split(",") if scope.strip()]
    issued = _key_store(ctx).create_key(name, chosen)
    click.echo(issued.token)
    click.echo(
        f"key {name!r} ({', '.join(sorted(issued.key.scopes))}): keep the token now, it is not shown again", err=True
    )


@keys.command("list")
@click.pass_context
@handle_errors
def keys_list(ctx: click.Context) -> None:
    """Every key: name, id, scopes, creation time (never a token)."""
    for key in _key_store(ctx).list_keys():
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(key.created_at))
        click.echo(f"{key.name:<32} {key.id}  {','.join(sorted(key.scopes)):<24} {created}")


@keys.command("revoke")
@click.argument("name")
@click.pass_context
@handle_errors
def keys_revoke(ctx: click.Context, name: str) -> None:
    """Remove a key: requests with it get 401 within seconds; its jobs stay (admin keys see them)."""
    if not _key_store(ctx).revoke(name):
        _fail(f"no key named {name!r}", c.RET_FAILURE)
    click.echo(f"revoked key {name!r}")


def _status_of(store: JobStoreProtocol, job_id: str) -> str:
    job = store.get(job_id)
    return job.status.value if job is not None else "gone"


# -- kvern service: the systemd unit that starts the instance on boot ---------------------------------------


@main.group()
def secrets() -> None:
    """The secrets a several-machine instance's hosts share."""


@secrets.command("init")
@click.argument("path", type=click.Path(path_type=Path))
@handle_errors
def secrets_init(path: Path) -> None:
    """Make the shared secrets file (0600): copy it to every host, give it to `kvern up --host ... --secrets`."""
    SharedSecrets.generate(ROLES).save(path)
    click.echo(f"wrote {path}: copy it to each host (it stays 0600), never into the spec or version control")


@main.group()
def service() -> None:
    """Start the instance on boot: a systemd unit that runs `kvern up` and stops it through `kvern down`."""


UNIT_DIR_OPTION = click.option(
    "--unit-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the unit goes (default: /etc/systemd/system as root, ~/.config/systemd/user otherwise).",
)


@service.command("install")
@click.option("--user", default=None, help="Account kvern runs as (default: the one installing).")
@UNIT_DIR_OPTION
@click.option("--enable/--no-enable", default=False, help="Run systemctl daemon-reload and enable (start on boot).")
@click.pass_context
@handle_errors
def service_install(ctx: click.Context, user: str | None, unit_dir: Path | None, enable: bool) -> None:
    """Write the instance's unit, kvern-<app name>.service (written again when it is there)."""
    instance = spec_file_instance(ctx)
    system = systemd_unit.running_as_root()
    default_dir = systemd_unit.default_unit_dir(system)
    directory = (unit_dir or default_dir).absolute()
    installed = systemd_unit.install(systemd_unit.unit_for(instance.spec, instance.state_dir, user, system), directory)
    click.echo(f"{'rewrote' if installed.replaced else 'wrote'} {installed.path}")
    commands = systemd_unit.enable_commands(installed, system, directory == default_dir)
    if _systemctl_or_advise(commands, enable, "to start it on boot"):
        start = " ".join(systemd_unit.systemctl(system, "start", installed.name))
        click.echo(f"enabled: it starts on boot; start it now with: {start}")
    if instance.is_running():
        click.echo("note: this instance runs now, started by hand: `kvern down` it before systemd starts it")


@service.command("uninstall")
@UNIT_DIR_OPTION
@click.pass_context
@handle_errors
def service_uninstall(ctx: click.Context, unit_dir: Path | None) -> None:
    """Disable and stop the instance's unit (it drains through `kvern down`), then remove it.

    No unit for this state dir is not an error (exit 0), as `kvern down` of a stopped instance is not."""
    state = state_dir_of(ctx)  # the spec file is not needed: it may be gone already
    system = systemd_unit.running_as_root()
    directory = (unit_dir or systemd_unit.default_unit_dir(system)).absolute()
    path = systemd_unit.installed_unit(directory, state)
    if path is None:
        click.echo(f"no kvern unit for state dir {state} in {directory}: nothing to remove")
        return
    if not systemd_unit.systemd_running():
        systemd_unit.remove(path)
        click.echo(f"removed {path} (systemd is not running on this machine: nothing to stop or disable)")
        return
    systemd_unit.run_systemctl(systemd_unit.disable_commands(path.name, system))
    systemd_unit.remove(path)
    systemd_unit.run_systemctl([systemd_unit.systemctl(system, "daemon-reload")])
    click.echo(f"stopped, disabled and removed {path}")


def _systemctl_or_advise(commands: list[list[str]], run: bool, purpose: str) -> bool:
    """Run the systemctl commands when asked to and systemd runs this machine; else print them. True: ran."""
    if run and systemd_unit.systemd_running():
        systemd_unit.run_systemctl(commands)
        return True
    if run:
        click.echo(f"systemd is not running on this machine; where it runs, {purpose}:")
    else:
        click.echo(f"{purpose}, run:")
    for command in commands:
        click.echo(f"  {' '.join(command)}")
    return False


if __name__ == "__main__":
    main()
