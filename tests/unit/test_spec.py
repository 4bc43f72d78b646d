"""`load_spec`: a valid spec becomes typed dataclasses; every invalid one is refused naming the field."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from kvern.constants import DEFAULT_TIME_LIMIT_S
from kvern.errors import SpecError
from kvern.runtime.instance import consumer_timeout_warning, root_warning
from kvern.spec import Address, LimitsSpec, PoolSpec, Spec, TaskPolicy, WebSpec, load_spec

FULL_SPEC = """
[app]
name = "reports"
tasks = "tasks"
static = "static"

[web]
heads = 3
port = 8080

[broker]
url = "amqp://user:pass@127.0.0.1:5672/vhost"

[store]
url = "postgresql://127.0.0.1:5432/test"

[[pools]]
name = "reports"
queues = ["reports", "reports.slow"]
concurrency = 2
min = 1
max = 6
idle_after = 10
target_backlog = 8
max_wait = 2.5

[[pools]]
name = "mail"

[tasks."tasks.generate_heavy_report"]
queue = "reports.slow"
retries = 5
backoff = 2
backoff_max = 30.0
soft_time_limit = 60
time_limit = 90

[tasks."tasks.notify"]
"""

MINIMAL_SPEC = """
[app]
tasks = "tasks"

[[pools]]
name = "default"
"""


def write_spec(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kvern.toml"
    path.write_text(text, encoding="utf-8")
    return path


def assert_spec_error(path: Path, *fragments: str) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# -- valid specs ----------------------------------------------------------------------------------------------


def test_full_spec_parses_into_typed_dataclasses(tmp_path: Path) -> None:
    # given a spec that sets every section, and its static folder
    (tmp_path / "static").mkdir()
    path = write_spec(tmp_path, FULL_SPEC)

    # when it is loaded
    spec = load_spec(path)

    # then every value lands in the right dataclass, with the right type
    assert isinstance(spec, Spec)
    assert spec.path == path.resolve()
    assert spec.root == tmp_path.resolve()
    assert spec.name == "reports"
    assert spec.tasks_module == "tasks"
    assert spec.static_dir == (tmp_path / "static").resolve()
    assert spec.web == WebSpec(heads=3, port=8080)
    assert spec.broker_url == "amqp://user:pass@127.0.0.1:5672/vhost"
    assert spec.store_url == "postgresql://127.0.0.1:5432/test"
    assert spec.pools[0] == PoolSpec(
        name="reports",
        queues=("reports", "reports.slow"),
        concurrency=2,
        min=1,
        max=6,
        idle_after=10.0,
        target_backlog=8,
        max_wait=2.5,
    )
    assert isinstance(spec.pools[0].idle_after, float)
    assert spec.tasks["tasks.generate_heavy_report"] == TaskPolicy(
        queue="reports.slow", retries=5, backoff=2.0, backoff_max=30.0, soft_time_limit=60.0, time_limit=90.0
    )
    assert isinstance(spec.tasks["tasks.generate_heavy_report"].backoff, float)


def test_omitted_values_get_their_defaults(tmp_path: Path) -> None:
    # given a spec with a bare pool and a bare task table
    path = write_spec(tmp_path, FULL_SPEC)
    (tmp_path / "static").mkdir()

    # when it is loaded
    spec = load_spec(path)

    # then the bare pool consumes the queue named after it, with default sizing
    assert spec.pools[1] == PoolSpec(name="mail", queues=("mail",))
    assert (spec.pools[1].concurrency, spec.pools[1].min, spec.pools[1].max) == (2, 0, 4)
    # and the bare task goes to the first pool's first queue with the default delivery rules
    assert spec.tasks["tasks.notify"] == TaskPolicy(
        queue="reports", retries=3, backoff=1.0, backoff_max=60.0, soft_time_limit=None, time_limit=300.0
    )


def test_minimal_spec_defaults_name_web_broker_store_and_static(tmp_path: Path) -> None:
    # given the smallest valid spec, in a folder with a capitalised name
    path = write_spec(tmp_path / "My Reports", MINIMAL_SPEC)

    # when it is loaded
    spec = load_spec(path)

    # then the name comes from the folder, and every optional part is at its default
    assert spec.name == "my-reports"
    assert spec.web == WebSpec(heads=2, port=None)
    assert spec.broker_url is None
    assert spec.store_url is None
    assert spec.static_dir is None
    assert spec.tasks == {}
    assert spec.pools == (PoolSpec(name="default", queues=("default",)),)


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("reports", "reports"),
        ("Nightly Reports!", "nightly-reports"),
        ("2024_reports", "reports"),
        ("a" * 40, "a" * 32),
        ("___", "kvern"),
    ],
)
def test_default_name_is_a_valid_name_derived_from_the_folder(tmp_path: Path, folder: str, expected: str) -> None:
    # given a spec without app.name in a folder whose name is not itself a valid app name
    path = write_spec(tmp_path / folder, MINIMAL_SPEC)

    # when it is loaded
    spec = load_spec(path)

    # then the default name is derived from the folder, instead of blaming an app.name the user never set
    assert spec.name == expected


def test_spec_helpers_route_unnamed_tasks_to_the_default_queue(tmp_path: Path) -> None:
    # given the full spec
    (tmp_path / "static").mkdir()
    spec = load_spec(write_spec(tmp_path, FULL_SPEC))

    # then named tasks use their policy, others the defaults on the first queue
    assert spec.default_queue == "reports"
    assert spec.queue_for("tasks.generate_heavy_report") == "reports.slow"
    assert spec.queue_for("tasks.unknown") == "reports"
    assert spec.policy("tasks.unknown") == TaskPolicy(queue="reports")
    assert spec.all_queues == ("reports", "reports.slow", "mail")
    assert spec.pool("mail").name == "mail"
    assert spec.longest_time_limit == DEFAULT_TIME_LIMIT_S
    with pytest.raises(KeyError):
        spec.pool("nope")


def test_limits_default_to_safe_bounds_and_can_be_set(tmp_path: Path) -> None:
    default = load_spec(write_spec(tmp_path / "a", MINIMAL_SPEC)).limits
    assert default == LimitsSpec() == LimitsSpec(args_bytes=256 * 1024, args_depth=32, args_items=10_000)
    text = MINIMAL_SPEC + "\n[limits]\nargs_bytes = 4096\nargs_depth = 8\nargs_items = 50\n"
    assert load_spec(write_spec(tmp_path / "b", text)).limits == LimitsSpec(4096, 8, 50)
    partial = MINIMAL_SPEC + "\n[limits]\nargs_depth = 4\n"
    assert load_spec(write_spec(tmp_path / "c", partial)).limits == LimitsSpec(args_depth=4)


# -- invalid specs: each error names the field ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        pytest.param(
            MINIMAL_SPEC.replace('name = "default"', 'name = "default"\nmax = 0'),
            ("pools[0].max", "between 1 and 64"),
            id="pool-max-zero",
        ),
        pytest.param(
            MINIMAL_SPEC.replace('name = "default"', 'name = "default"\nmax = 65'),
            ("pools[0].max",),
            id="pool-max-too-big",
        ),
        pytest.param(
            MINIMAL_SPEC + '\n[[pools]]\nname = "second"\nmax = 100\n',
            ("pools[1].max",),
            id="second-pool-max-names-its-index",
        ),
        pytest.param(
            MINIMAL_SPEC.replace('name = "default"', 'name = "default"\nmin = 5\nmax = 2'),
            ("pools[0].min", "greater than max"),
            id="pool-min-greater-than-max",
        ),
        pytest.param(
            MINIMAL_SPEC.replace('name = "default"', 'name = "default"\nconcurrency = 0'),
            ("pools[0].concurrency",),
            id="pool-concurrency-zero",
        ),
        pytest.param(MINIMAL_SPEC + "\n[web]\nheads = 0\n", ("web.heads", "between 1 and 16"), id="web-heads-0"),
        pytest.param(MINIMAL_SPEC + "\n[web]\nheads = 17\n", ("web.heads", "between 1 and 16"), id="web-heads-17"),
        pytest.param(MINIMAL_SPEC + "\n[web]\nheads = 65\n", ("web.heads",), id="web-heads-65"),
        pytest.param(MINIMAL_SPEC + "\n[web]\nport = 70000\n", ("web.port",), id="web-port-out-of-range"),
        pytest.param(
            MINIMAL_SPEC.replace('tasks = "tasks"', ""),
            ("app.tasks", "required"),
            id="app-tasks-missing",
        ),
        pytest.param(
            MINIMAL_SPEC.replace('tasks = "tasks"', 'tasks = "my-app.tasks"'),
            ("app.tasks", "dotted module name"),
            id="app-tasks-not-a-module",
        ),
        pytest.param(
            MINIMAL_SPEC.replace('tasks = "tasks"', 'tasks = "tasks"\nname = "Bad Name"'),
            ("app.name",),
            id="app-name-invalid",
        ),
        pytest.param(MINIMAL_SPEC + "\n[extra]\nx = 1\n", ("extra", "unknown field"), id="unknown-top-level"),
        pytest.param(
            MINIMAL_SPEC.replace('tasks = "tasks"', 'tasks = "tasks"\ncolour = "red"'),
            ("app.colour", "unknown field"),
            id="unknown-app-field",
        ),
        pytest.param(
            MINIMAL_SPEC.replace('name = "default"', 'name = "default"\nworkers = 3'),
            ("pools[0].workers", "unknown field"),
            id="unknown-pool-field",
        ),
        pytest.param(
            MINIMAL_SPEC + '\n[tasks."tasks.x"]\nretry = 2\n',
            ('tasks."tasks.x".retry', "unknown field"),
            id="unknown-task-field",
        ),
        pytest.param(
            MINIMAL_SPEC + '\n[web]\nheads = "2"\n',
            ("web.heads", "expected int", "got str"),
            id="wrong-type-str-for-int",
        ),
        pytest.param(
            MINIMAL_SPEC + "\n[web]\nheads = true\n",
            ("web.heads", "expected int", "got bool"),
            id="wrong-type-bool-for-int",
        ),
        pytest.param(
            MINIMAL_SPEC.replace('name = "default"', 'name = "default"\nqueues = "default"'),
            ("pools[0].queues", "expected list"),
            id="wrong-type-str-for-list",
        ),
        pytest.param(
            MINIMAL_SPEC.replace('name = "default"', 'name = "default"\nidle_after = "30s"'),
            ("pools[0].idle_after", "expected float"),
            id="wrong-type-str-for-float",
        ),
        pytest.param("web = 3\n" + MINIMAL_SPEC, ("web", "must be a table"), id="wrong-type-table"),
        pytest.param(
            MINIMAL_SPEC + '\n[tasks."tasks.x"]\nqueue = "elsewhere"\n',
            ('tasks."tasks.x".queue', "no pool consumes queue 'elsewhere'"),
            id="task-queue-not-consumed",
        ),
        pytest.param(
            MINIMAL_SPEC + '\n[tasks."tasks.x"]\nsoft_time_limit = 100\ntime_limit = 50\n',
            ('tasks."tasks.x".soft_time_limit',),
            id="soft-limit-above-hard-limit",
        ),
        pytest.param(
            MINIMAL_SPEC + '\n[tasks."tasks.x"]\nbackoff = 10\nbackoff_max = 5\n',
            ('tasks."tasks.x".backoff',),
            id="backoff-above-backoff-max",
        ),
        pytest.param(
            MINIMAL_SPEC + '\n[tasks."tasks.x"]\nretries = -1\n',
            ('tasks."tasks.x".retries',),
            id="negative-retries",
        ),
        pytest.param(
            MINIMAL_SPEC + '\n[broker]\nurl = "redis://127.0.0.1:6379/0"\n',
            ("broker.url", "amqp://"),
            id="broker-url-scheme",
        ),
        pytest.param(
            MINIMAL_SPEC + '\n[store]\nurl = "mysql://127.0.0.1/db"\n',
            ("store.url", "postgresql://"),
            id="store-url-scheme",
        ),
        pytest.param("[app]\ntasks = 'tasks'\n", ("pools", "at least one"), id="no-pools"),
        pytest.param(
            MINIMAL_SPEC + '\n[[pools]]\nname = "default"\n',
            ("pools", "'default' is used twice"),
            id="duplicate-pool-name",
        ),
        pytest.param(
            MINIMAL_SPEC.replace('name = "default"', 'name = "web"'),
            ("pools[0].name", "not a valid pool name"),
            id="pool-named-web",
        ),
        pytest.param(
            MINIMAL_SPEC.replace('name = "default"', 'name = "default"\nqueues = ["kvern.control"]'),
            ("pools[0].queues", "reserved"),
            id="reserved-queue-name",
        ),
        pytest.param(MINIMAL_SPEC + "\n[limits]\nargs_depth = 0\n", ("limits.args_depth",), id="args-depth-0"),
        pytest.param(
            MINIMAL_SPEC + "\n[limits]\nargs_depth = 500\n", ("limits.args_depth", "1 and 100"), id="args-depth-500"
        ),
        pytest.param(
            MINIMAL_SPEC + "\n[limits]\nargs_bytes = 2000000\n", ("limits.args_bytes",), id="args-bytes-over-body"
        ),
        pytest.param(MINIMAL_SPEC + "\n[limits]\nargs_items = -1\n", ("limits.args_items",), id="args-items-neg"),
        pytest.param(
            MINIMAL_SPEC + '\n[limits]\nargs_items = "many"\n', ("limits.args_items", "expected int"), id="items-str"
        ),
        pytest.param(
            MINIMAL_SPEC + "\n[limits]\nargs_size = 10\n", ("limits.args_size", "unknown field"), id="limits-unknown"
        ),
    ],
)
def test_invalid_spec_is_refused_naming_the_field(tmp_path: Path, text: str, fragments: tuple[str, ...]) -> None:
    # given a spec with one mistake
    path = write_spec(tmp_path, text)

    # when / then loading it raises SpecError naming the field and the problem
    assert_spec_error(path, *fragments)


def test_missing_static_folder_is_refused(tmp_path: Path) -> None:
    # given a spec naming a static folder that does not exist
    path = write_spec(tmp_path, MINIMAL_SPEC.replace('tasks = "tasks"', 'tasks = "tasks"\nstatic = "public"'))

    # when / then
    assert_spec_error(path, "app.static", str((tmp_path / "public").resolve()), "does not exist")


def test_static_that_is_a_file_is_refused(tmp_path: Path) -> None:
    # given a static path naming a file, not a folder
    (tmp_path / "public").write_text("not a folder")
    path = write_spec(tmp_path, MINIMAL_SPEC.replace('tasks = "tasks"', 'tasks = "tasks"\nstatic = "public"'))

    # when / then
    assert_spec_error(path, "app.static")


def test_invalid_toml_is_refused_with_the_path(tmp_path: Path) -> None:
    # given a file that is not TOML
    path = write_spec(tmp_path, "[app\ntasks = ")

    # when / then the error names the file and says it is not TOML
    message = assert_spec_error(path, "not valid TOML")
    assert str(path.resolve()) in message


def test_non_utf8_file_is_refused_as_invalid_toml(tmp_path: Path) -> None:
    # given a file with bytes that are not UTF-8
    path = tmp_path / "kvern.toml"
    path.write_bytes(b"[app]\ntasks = '\xff\xfe'\n")

    # when / then it is a SpecError, not a UnicodeDecodeError
    assert_spec_error(path, "not valid TOML")


def test_missing_file_is_refused(tmp_path: Path) -> None:
    # given a path with no file
    path = tmp_path / "nope" / "kvern.toml"

    # when / then
    message = assert_spec_error(path, "spec file not found")
    assert str(path.resolve()) in message


def test_a_folder_instead_of_a_file_is_refused(tmp_path: Path) -> None:
    # given the path of a folder
    # when / then it is reported as a missing spec file, not an IsADirectoryError
    assert_spec_error(tmp_path, "spec file not found")


def test_an_external_broker_with_long_tasks_gets_a_consumer_timeout_warning(tmp_path: Path) -> None:
    base = '[app]\ntasks = "t"\n[[pools]]\nname = "p"\n'
    long_task = '[tasks."t.long"]\nqueue = "p"\ntime_limit = 3600\n'
    external = '[broker]\nurl = "amqp://u:p@127.0.0.1:5672//"\n'
    for text, warned in ((base + long_task, False), (base + external, False), (base + external + long_task, True)):
        path = tmp_path / "kvern.toml"
        path.write_text(text)
        warning = consumer_timeout_warning(load_spec(path))
        assert (warning is not None) is warned
        if warning:
            assert "consumer_timeout >= 3660000" in warning


@pytest.mark.parametrize(("euid", "user", "warned"), [(0, None, True), (0, "nobody", False), (1000, None, False)])
def test_root_without_an_app_user_is_warned_that_the_teams_code_runs_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, euid: int, user: str | None, warned: bool
) -> None:
    path = tmp_path / "kvern.toml"
    path.write_text('[app]\ntasks = "t"\n[[pools]]\nname = "p"\n')
    spec = load_spec(path)
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    warning = root_warning(replace(spec, user=user))
    assert (warning is not None) is warned
    assert warning is None or "[app] user" in warning


@pytest.mark.parametrize(
    ("cls", "name", "read"),
    [
        (PoolSpec, "concurrency", lambda spec: spec.pools[0].concurrency),
        (PoolSpec, "max_wait", lambda spec: spec.pools[0].max_wait),
        (TaskPolicy, "retries", lambda spec: spec.tasks["tasks.t"].retries),
        (TaskPolicy, "time_limit", lambda spec: spec.tasks["tasks.t"].time_limit),
        (WebSpec, "heads", lambda spec: spec.web.heads),
        (LimitsSpec, "args_depth", lambda spec: spec.limits.args_depth),
    ],
)
def test_the_parser_takes_each_default_from_the_dataclass_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cls: type, name: str, read: Callable[[Spec], object]
) -> None:
    # given a field's default changed in its dataclass alone
    monkeypatch.setattr(cls.__dataclass_fields__[name], "default", 7)  # type: ignore[attr-defined]
    # when a spec that does not set it is parsed, then the parser gives the new default (no copy of the old one)
    spec = load_spec(write_spec(tmp_path, MINIMAL_SPEC + '\n[tasks."tasks.t"]\nqueue = "default"\n'))
    assert read(spec) == 7


# -- the web tier: the team's app, public addresses, TLS ----------------------------------------------------


def test_web_app_listen_and_tls_are_read(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("cert")
    (tmp_path / "key.pem").write_text("key")
    spec = write_and_load(
        tmp_path,
        MINIMAL_SPEC
        + '\n[web]\napp = "mysite.wsgi:application"\ninterface = "wsgi"\napi_prefix = "/_kvern/api"\n'
        + 'listen = ["0.0.0.0:80", "[::]:80"]\n[web.tls]\ncert = "cert.pem"\nkey = "key.pem"\n',
    )
    assert spec.web.app == "mysite.wsgi:application"
    assert spec.web.interface == "wsgi"
    assert spec.web.api_prefix == "/_kvern/api"
    assert spec.web.listen == (Address("0.0.0.0", 80), Address("::", 80))
    assert spec.web.tls is not None
    assert spec.web.tls.cert == tmp_path / "cert.pem"
    assert [str(a) for a in spec.web.tls.listen] == ["0.0.0.0:443", "[::]:443"]


def test_web_defaults_keep_the_job_api_alone(tmp_path: Path) -> None:
    spec = write_and_load(tmp_path, MINIMAL_SPEC)
    assert (spec.web.app, spec.web.interface, spec.web.api_prefix) == (None, None, "/api")
    assert (spec.web.listen, spec.web.tls) == ((), None)


@pytest.mark.parametrize(
    ("web", "expected"),
    [
        pytest.param('app = "mysite.wsgi"', "web.app", id="app-without-attribute"),
        pytest.param('app = "my site:app"', "web.app", id="app-with-space"),
        pytest.param('interface = "cgi"', "web.interface", id="unknown-interface"),
        pytest.param('api_prefix = "api"', "web.api_prefix", id="prefix-not-absolute"),
        pytest.param('api_prefix = "/"', "web.api_prefix", id="prefix-root"),
        pytest.param('api_prefix = "/a;b"', "web.api_prefix", id="prefix-config-breaking"),
        pytest.param('listen = ["example.com:80"]', "web.listen", id="listen-name"),
        pytest.param('listen = ["0.0.0.0"]', "web.listen", id="listen-without-port"),
        pytest.param('listen = ["0.0.0.0:70000"]', "web.listen", id="listen-port-range"),
        pytest.param('listen = ["0.0.0.0:80", "0.0.0.0:80"]', "web.listen", id="listen-twice"),
        pytest.param('listen = ["999.1.1.1:80"]', "web.listen", id="listen-bad-ip"),
        pytest.param('[web.tls]\ncert = "nope.pem"\nkey = "nope.pem"', "web.tls.cert", id="tls-missing-file"),
        pytest.param('[web.tls]\nkey = "k.pem"', "web.tls.cert", id="tls-without-cert"),
        pytest.param('[web.tls]\ncert = "c.pem"\nkey = "c.pem"\nciphers = "x"', "web.tls.ciphers", id="tls-unknown"),
    ],
)
def test_bad_web_fields_are_refused_by_name(tmp_path: Path, web: str, expected: str) -> None:
    (tmp_path / "c.pem").write_text("x")
    with pytest.raises(SpecError, match=re.escape(expected)):
        write_and_load(tmp_path, MINIMAL_SPEC + "\n[web]\n" + web + "\n")


def test_tls_listen_may_not_reuse_an_http_address(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("x")
    text = (
        '\n[web]\nlisten = ["127.0.0.1:8443"]\n[web.tls]\ncert = "c.pem"\nkey = "c.pem"\nlisten = ["127.0.0.1:8443"]\n'
    )
    with pytest.raises(SpecError, match=r"web\.tls\.listen"):
        write_and_load(tmp_path, MINIMAL_SPEC + text)


def write_and_load(folder: Path, text: str) -> Spec:
    return load_spec(write_spec(folder, text))


def test_auth_off_is_refused_for_a_public_address(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"web\.auth"):
        write_and_load(tmp_path, MINIMAL_SPEC + '\n[web]\nauth = "off"\nlisten = ["0.0.0.0:8080"]\n')
    loopback = write_and_load(
        tmp_path, MINIMAL_SPEC + '\n[web]\nauth = "off"\nlisten = ["127.0.0.1:8080", "[::1]:8080"]\n'
    )
    assert loopback.web.auth == "off"
    with pytest.raises(SpecError, match=r"web\.auth"):
        write_and_load(tmp_path, MINIMAL_SPEC + '\n[web]\nauth = "none"\n')
