"""`python -m kvern.runtime.app_head SOCKET`: one app head, the team's own web app (`[web] app`) on a unix socket.

A WSGI app (Django's `application`, Flask's `app`) runs under gunicorn, the server most Python teams already
run such apps on, with its `gthread` worker: one worker process with a pool of threads, so one slow view does
not hold up the head's other requests, and kept-alive connections from nginx wait in the worker's poller
instead of taking a thread. An ASGI app (FastAPI, Starlette, Django's ASGI handler) runs under uvicorn, as the
job API's heads do. Either way the socket is bound here, owner and group only (runtime/web_head.py's
`bind_socket`), and handed to the server already bound: neither server's own bind would keep it that narrow.
On a web host without the front door it listens on TCP at the host's own address (`tcp:ADDRESS:PORT`).
On SIGTERM both stop taking connections and finish the requests in flight (`HEAD_GRACEFUL_SHUTDOWN_S`).
Before the app is imported, the tasks' `.delay()` and `.apply_async()` are routed through kvern's durable
submission (`kvern.enqueue.install_in_web_head`): a view that calls them gets a kvern job, recorded and confirmed.

`python -m kvern.runtime.app_head --check SPEC` is what `kvern up` runs in a child process first: it imports
the app as a head would and says in one line, after `ERROR_MARKER`, why it cannot be served.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import socket
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from gunicorn.app.base import BaseApplication
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from kvern.constants import HEAD_GRACEFUL_SHUTDOWN_S, RET_SPEC
from kvern.enqueue import install_in_web_head
from kvern.errors import SpecError
from kvern.runtime.head_endpoints import parse_argument
from kvern.runtime.head_peers import AsgiPeers, WsgiPeers, allowed_peers
from kvern.runtime.web_head import HEAD_KEEPALIVE_S, bind_endpoint, remove_socket
from kvern.runtime_config import RuntimeConfig
from kvern.spec import Spec, load_spec
from kvern.worker.check import ERROR_MARKER

WSGI, ASGI = "wsgi", "asgi"
# One process per head (kvern runs several heads), threads inside it for views that wait on I/O.
WSGI_WORKERS = 1
WORKER_TIMEOUT_S = 60  # gunicorn replaces a worker whose main loop stops for this long (gthread: not a slow view)
KEEPALIVE_S = HEAD_KEEPALIVE_S  # longer than nginx keeps an idle connection to a head (runtime/web_head.py)


def load_web_app(spec: Spec) -> tuple[Any, str]:
    """The object `web.app` names and its interface (from the spec, else detected); a `SpecError` naming the field
    when it cannot be served."""
    assert spec.web.app is not None
    module_name, _, attribute = spec.web.app.partition(":")
    root = str(spec.root)
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)  # first: the spec's folder wins over a same-named module elsewhere
    with _user_code_errors(spec):
        app: Any = importlib.import_module(module_name)
    for name in attribute.split("."):
        try:
            app = getattr(app, name)
        except AttributeError:
            raise SpecError(f"web.app: {spec.web.app!r}: {module_name!r} has no attribute {attribute!r}") from None
    if not callable(app):
        raise SpecError(f"web.app: {spec.web.app!r} is a {type(app).__name__}, not a WSGI or ASGI application")
    if spec.web.interface is not None:
        _check_interface(app, spec.web.interface, spec.web.app)
    return app, spec.web.interface or detect_interface(app)


# What each interface calls the app with: WSGI (environ, start_response), ASGI (scope, receive, send).
INTERFACE_ARGUMENTS = {WSGI: 2, ASGI: 3}


def _check_interface(app: Any, interface: str, name: str) -> None:
    """Refuse a `web.interface` the app plainly is not (every request would be a 500): an ASGI coroutine
    function named "wsgi", or a callable that takes the other interface's number of arguments. Where the
    signature cannot tell, the spec's word stands."""
    call = app if inspect.isroutine(app) else getattr(app, "__call__", None)  # noqa: B004
    if interface == WSGI and inspect.iscoroutinefunction(call):
        raise SpecError(f'web.interface: "wsgi", but {name!r} is an ASGI application (an async callable)')
    try:
        parameters = inspect.signature(call).parameters.values()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
        return
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = len([p for p in positional if p.default is p.empty])
    if not required <= INTERFACE_ARGUMENTS[interface] <= len(positional):
        other = "an ASGI" if interface == WSGI else "a WSGI"
        raise SpecError(
            f"web.interface: {interface!r}, but {name!r} takes {len(positional)} argument(s), as {other}"
            " application does"
        )


def detect_interface(app: Any) -> str:
    """ASGI when the app (or its `__call__`) is a coroutine function, as Starlette, FastAPI and Django's ASGI
    handler are; otherwise WSGI, a plain callable(environ, start_response)."""
    call = app if inspect.isroutine(app) else getattr(app, "__call__", None)  # noqa: B004
    return ASGI if inspect.iscoroutinefunction(call) else WSGI


@contextlib.contextmanager
def _user_code_errors(spec: Spec) -> Iterator[None]:
    """Whatever the app's import raises becomes one line: the field, where in the user's code, and the error."""
    try:
        yield
    except (Exception, SystemExit) as exc:  # a settings module may sys.exit("set FOO") when it lacks a value
        message = (str(exc).strip().splitlines() or [""])[0]
        if isinstance(exc, SyntaxError) and exc.msg:
            message = exc.msg  # str(exc) repeats the file and line
        error = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        raise SpecError(f"web.app: importing {spec.web.app!r} failed{_where(exc, spec.root)}: {error}") from exc


def _where(exc: BaseException, root: Path) -> str:
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" at {exc.filename}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).is_relative_to(root)]
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


class GunicornServer(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    """gunicorn run from Python, on a socket already bound, with kvern's settings only (no argv, no config file)."""

    def __init__(self, app: Any, sock: socket.socket, threads: int) -> None:
        self.application = app
        self.options: dict[str, Any] = {
            "bind": [f"fd://{sock.detach()}"],  # gunicorn adopts the bound socket and closes our descriptor
            "workers": WSGI_WORKERS,
            "worker_class": "gthread",
            "threads": threads,
            "graceful_timeout": HEAD_GRACEFUL_SHUTDOWN_S,
            "timeout": WORKER_TIMEOUT_S,
            "keepalive": KEEPALIVE_S,
            "accesslog": None,  # nginx keeps the access log
            "errorlog": "-",
            "loglevel": "warning",
            "umask": 0o077,  # gunicorn's own files (the worker's heartbeat file) are the owner's only
            # Only nginx can reach the head (the socket's mode, or on TCP the peer check): its X-Forwarded-Proto
            # is to be trusted.
            "forwarded_allow_ips": "*",
            "control_socket_disable": True,  # gunicorn >= 25 would open one under $HOME
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self.application


def serve(app: Any, interface: str, sock: socket.socket, threads: int, peers: frozenset[str] | None = None) -> None:
    """Serve `app` on `sock`; with `peers` (a head on TCP), only to connections from those addresses."""
    if interface == WSGI:
        GunicornServer(app if peers is None else WsgiPeers(app, peers), sock, threads).run()
        return
    # As for gunicorn: the client nginx names in X-Forwarded-For is the client. On TCP the peer check comes first:
    # it must see the connection's own address, not the one X-Forwarded-For names.
    proxied = {"proxy_headers": True, "forwarded_allow_ips": "*"}
    if peers is not None:
        app, proxied = AsgiPeers(ProxyHeadersMiddleware(app, trusted_hosts="*"), peers), {"proxy_headers": False}
    config = uvicorn.Config(
        app,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=HEAD_GRACEFUL_SHUTDOWN_S,
        timeout_keep_alive=KEEPALIVE_S,
        **proxied,  # type: ignore[arg-type]
    )
    uvicorn.Server(config).run(sockets=[sock])


def main(argv: list[str]) -> None:
    if argv[:1] == ["--check"]:
        check(Path(argv[1]))
        return
    endpoint = parse_argument(argv[0])
    # First, so the tasks the app imports are already routed: their .delay() records and publishes with confirm.
    # Connections are made on first use, in each process (gunicorn's worker makes its own after the fork).
    install_in_web_head()
    spec = RuntimeConfig.from_environment().spec()
    app, interface = load_web_app(spec)
    sock = bind_endpoint(endpoint)
    try:
        peers = None if endpoint.unix is not None else allowed_peers(spec, endpoint.address)
        serve(app, interface, sock, spec.web.app_threads, peers)
    finally:
        remove_socket(endpoint)


def check(spec_path: Path) -> None:
    try:
        load_web_app(load_spec(spec_path))
    except SpecError as exc:
        print(f"{ERROR_MARKER}{exc}", file=sys.stderr)
        sys.exit(RET_SPEC)


if __name__ == "__main__":
    main(sys.argv[1:])
