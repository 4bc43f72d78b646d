"""The front door: nginx's config rendered from a template (its upstreams of web heads: runtime/upstreams.py)."""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from kvern.constants import MAX_BODY_BYTES
from kvern.errors import StartError
from kvern.spec import WebSpec, check_config_path, check_static_dir

NGINX_BINARY_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
# nginx's own limit sits a little above the app's, so the app answers 413 with its JSON error first.
FRONT_DOOR_BODY_LIMIT = f"{MAX_BODY_BYTES // 1024 + 64}k"
NGINX_WORKER_PROCESSES = 2
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
# Always answered: a browser sends these only for a page loaded from this machine itself.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
# Accounts nginx's workers may switch to when kvern runs as root, in order of preference: nobody owns no files.
WORKER_USERS = ("nobody", "www-data")
RUN_BASE = Path("/run/kvern")


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in NGINX_BINARY_CANDIDATES if os.path.exists(p)), None)
    if found is None:
        raise StartError("nginx is not installed (run `make install` or `apt-get install nginx`)")
    return found


@dataclass(frozen=True)
class WorkerAccount:
    """Who nginx's workers run as when kvern runs as root."""

    user: str
    group: str
    gid: int


def worker_account() -> WorkerAccount | None:
    """nginx's workers never run as root: as root, they switch to `nobody` (or `www-data`); None when kvern
    is not root (the workers stay kvern's own user)."""
    if os.geteuid() != 0:
        return None
    for name in WORKER_USERS:
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return WorkerAccount(entry.pw_name, grp.getgrgid(entry.pw_gid).gr_name, entry.pw_gid)
    raise StartError(f"kvern runs as root, but none of {', '.join(WORKER_USERS)} exists for nginx's workers")


def front_dir(state_dir: Path) -> Path:
    """What nginx's workers use: the web heads' sockets, nginx's temp files and, as root, the static copy.

    As root it is a folder under /run that only the workers' group may enter, so the state dir (broker
    passwords, the job store) stays root's alone; otherwise it is the state dir itself.
    """
    if os.geteuid() != 0:
        return state_dir
    return RUN_BASE / hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:12]


def socket_dir(state_dir: Path) -> Path:
    """Where the web heads listen (nginx reaches them by these sockets)."""
    return front_dir(state_dir) / "run"


def web_socket(state_dir: Path, index: int) -> Path:
    return socket_dir(state_dir) / f"web-{index}.sock"


def config_path(state_dir: Path) -> Path:
    """nginx's main config (also how a leftover nginx is recognised: it shows in its command line)."""
    return state_dir / "nginx" / "nginx.conf"


def _checked(path: Path, what: str = "state dir") -> Path:
    """A path that can be written between double quotes in nginx.conf (the spec and `up` refuse the others)."""
    return check_config_path(path, what, StartError)


# The static site's headers. The CSP allows the page's own scripts, styles and API calls only: no inline
# script or style, no framing (clickjacking), no plugins, no <base> rewriting, forms post to this origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = "\n".join(
    f"            add_header {name} {value} always;"
    for name, value in (
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
        ("Content-Security-Policy", f'"{CONTENT_SECURITY_POLICY}"'),
    )
)


def _static_block(static_dir: Path | None) -> str:
    if static_dir is None:
        return (
            "        location / {\n            default_type application/json;\n"
            '            return 404 \'{"error": {"code": "not_found", "message": "no static folder"}}\';\n'
            "        }"
        )
    return (
        f'        location / {{\n            root "{_checked(static_dir, "app.static")}";\n'
        f"            index index.html;\n"
        f"            try_files $uri $uri/ =404;\n{SECURITY_HEADERS}\n        }}"
    )


# Over a limit: the JSON error shape, and when to try again (the rate refills every second).
TOO_MANY = """        error_page 429 = @too_many;
        location @too_many {
            default_type application/json;
            add_header Retry-After 1 always;
            return 429 '{"error": {"code": "too_many_requests", "message": "too many requests from this address"}}';
        }"""

# Requests nginx refuses before any server or web head sees them (a malformed path such as `/../x` or a NUL,
# headers or URL over its buffers), in both servers: such a request may never get as far as its Host header.
# The pages are URIs, not named locations: a request whose URI could not be parsed has none to redirect with.
REFUSED = """        error_page 400 494 /_kvern/bad_request;
        location = /_kvern/bad_request {
            internal;
            default_type application/json;
            return 400 '{"error": {"code": "bad_request", "message": "malformed or oversized request head"}}';
        }
        error_page 414 /_kvern/uri_too_long;
        location = /_kvern/uri_too_long {
            internal;
            default_type application/json;
            return 414 '{"error": {"code": "uri_too_long", "message": "request URI is too long"}}';
        }"""


def _limit_zones(web: WebSpec) -> str:
    # The key is a map so per-key limits can key on the API key later; today each client address is a bucket.
    lines = [
        "    map $binary_remote_addr $kvern_limit_key { default $binary_remote_addr; }",
        "    limit_req_status 429;",
        "    limit_conn_status 429;",
    ]
    if web.rate:
        lines.append(f"    limit_req_zone $kvern_limit_key zone=kvern_api:10m rate={web.rate}r/s;")
    if web.connections:
        lines.append("    limit_conn_zone $kvern_limit_key zone=kvern_conn:10m;")
    return "\n".join(lines)


def _limit_req(web: WebSpec) -> str:
    # nodelay: a burst within the allowance is served at once instead of being queued behind the rate.
    return f"            limit_req zone=kvern_api burst={web.burst} nodelay;" if web.rate else ""


def _limit_conn(web: WebSpec) -> str:
    return f"        limit_conn kvern_conn {web.connections};" if web.connections else ""


def _user_directive() -> str:
    # Only a master running as root may (and must) name the user its workers switch to.
    account = worker_account()
    return f"user {account.user} {account.group};" if account else ""


def render_config(state_dir: Path, port: int, static_dir: Path | None, web: WebSpec | None = None) -> str:
    web = web or WebSpec()
    template = Template(resources.files("kvern.runtime").joinpath("templates/nginx.conf").read_text())
    return template.substitute(
        user_directive=_user_directive(),
        worker_processes=NGINX_WORKER_PROCESSES,
        state_dir=_checked(state_dir),
        temp_dir=_checked(front_dir(state_dir) / "nginx"),
        port=port,
        server_names=" ".join(dict.fromkeys([*LOOPBACK_NAMES, *web.server_name])),
        limit_zones=_limit_zones(web),
        limit_req=_limit_req(web),
        limit_conn=_limit_conn(web),
        too_many=TOO_MANY,
        refused=REFUSED,
        client_max_body_size=FRONT_DOOR_BODY_LIMIT,
        static_block=_static_block(static_dir),
    )


def write_config(state_dir: Path, port: int, static_dir: Path | None, web: WebSpec | None = None) -> Path:
    """Write nginx.conf and make the web heads' socket dir; returns the main config's path.

    The upstream.conf it includes is runtime/upstreams.py's to write."""
    if static_dir is not None:
        check_static_dir(static_dir, state_dir.resolve(), "the state dir")
    path = config_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    account = worker_account()
    front = front_dir(state_dir)
    if account is not None:
        _make_group_dir(front, account, parents=True)
    for folder in (front / "nginx", socket_dir(state_dir)):
        _make_group_dir(folder, account)
    for name in TEMP_DIRS:  # nginx gives these to the workers' user itself
        (front / "nginx" / name).mkdir(exist_ok=True)
    if account is not None and static_dir is not None:
        static_dir = _publish_static(static_dir, front / "static", account)
    path.write_text(render_config(state_dir, port, static_dir, web))
    return path


def _make_group_dir(folder: Path, account: WorkerAccount | None, parents: bool = False) -> None:
    """A folder nginx's workers enter through their group; setgid, so sockets made in it get that group."""
    if parents:
        folder.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    folder.mkdir(exist_ok=True)
    if account is not None:
        os.chown(folder, 0, account.gid)
        folder.chmod(0o2750)


def _publish_static(static_dir: Path, copy: Path, account: WorkerAccount) -> Path:
    """The static folder as the workers will serve it: a copy they can read through their group, made at
    every `up` (the project's own folder may sit under one only root can enter, e.g. /root). Symlinks stay
    links, so one pointing outside the folder is followed with the workers' rights, not root's. Dotfiles
    (`.env`, `.git`) are left out: nginx never serves them, so its workers need not read them either."""
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(static_dir, copy, symlinks=True, ignore=shutil.ignore_patterns(".*"))
    for folder, _dirs, files in os.walk(copy):
        os.chown(folder, 0, account.gid)
        os.chmod(folder, 0o2750)
        for name in files:
            file = Path(folder) / name
            if not file.is_symlink():
                os.chown(file, 0, account.gid)
                file.chmod(0o640)
    return copy


def remove_front_dir(state_dir: Path) -> None:
    """After `down`: the folder under /run (sockets, temp files, static copy) goes too."""
    front = front_dir(state_dir)
    if front != state_dir:
        shutil.rmtree(front, ignore_errors=True)


def nginx_command(config: Path) -> list[str]:
    return [nginx_binary(), "-c", str(config), "-p", str(config.parent), "-e", "stderr"]
