"""The front door: nginx's config rendered from a template (its upstreams of web heads: runtime/upstreams.py)."""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from kvern.constants import DASHBOARD_PREFIX, MAX_BODY_BYTES, SERVED_API_PREFIX
from kvern.errors import StartError
from kvern.spec import (
    API_PREFIX_PATTERN,
    HTTPS_PORT,
    Address,
    WebSpec,
    check_config_path,
    check_static_dir,
    parse_address,
)

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


# HSTS on every HTTPS answer (Mozilla's value, two years). A map, not a server-level add_header alone: a location
# with an add_header of its own inherits none from its server, so each of those repeats this line; on plain HTTP
# (the local door) the value is empty and nginx sends no header.
HSTS_MAX_AGE = "max-age=63072000"
HSTS_HEADER = "add_header Strict-Transport-Security $kvern_hsts always;"

# The static site's headers. The CSP allows the page's own scripts, styles and API calls only: no inline
# script or style, no framing (clickjacking), no plugins, no <base> rewriting, forms post to this origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
STATIC_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", f'"{CONTENT_SECURITY_POLICY}"'),
)
# With the team's app, its static files (CSS, JS, images) get only what is safe for any site: the page's CSP
# and referrer policy are the app's to set (its templates may need inline scripts or other origins), and a CSP
# on the static files would not protect its pages anyway.
APP_STATIC_HEADERS = STATIC_HEADERS[:2]


def _headers(pairs: tuple[tuple[str, str], ...], indent: str = "            ") -> str:
    return "\n".join([*(f"{indent}add_header {name} {value} always;" for name, value in pairs), indent + HSTS_HEADER])


SECURITY_HEADERS = _headers(STATIC_HEADERS)


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


NO_DOTFILES = """\
        # Dotfiles and dot-folders (.git, .env, .kvern) are never served, whatever the static folder holds.
        location ~ /\\. {
            default_type application/json;
            return 404 '{"error": {"code": "not_found", "message": "not found"}}';
        }"""

# The team's app behind its heads. Its own answers, errors included, go to the browser as they are (no
# proxy_intercept_errors); only when no head answers does nginx say so, as a plain page. A request is retried
# on another head only on a connection error or timeout, and a POST (not idempotent) never once it was sent:
# nginx's default without `non_idempotent`.
APP_PROXY = """            proxy_pass http://kvern_app_heads;
            proxy_http_version 1.1;
            # WebSockets (an ASGI app's) pass through; other requests keep the heads' connections alive.
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $kvern_app_connection;
            # $http_host keeps the port, so the app's absolute URLs (redirects, build_absolute_uri) keep it too.
            proxy_set_header Host $http_host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            # Django: SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https"); nginx always overwrites it.
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_connect_timeout 2s;
            proxy_send_timeout 60s;
            proxy_read_timeout 60s;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 3;
            # A location's error_page replaces its server's: the front door's own refusals are repeated here.
            error_page 413 = @too_large;
            error_page 429 = @too_many;
            error_page 502 503 504 = @app_unavailable;"""

APP_UNAVAILABLE = f"""        location @app_unavailable {{
            default_type text/plain;
            add_header Retry-After 2 always;
            {HSTS_HEADER}
            return 503 "The site is unavailable for a moment; please try again shortly.\\n";
        }}"""


def _app_proxy(web: WebSpec) -> str:
    # The app takes bodies of its own size (uploads); the job API keeps the server's 1 MiB.
    return f"            client_max_body_size {web.app_max_body_mb}m;\n{APP_PROXY}"


def _app_block(static_dir: Path | None, web: WebSpec) -> str:
    """`location /` when the team's app runs: static files first (when there is a static folder), then the app;
    paths with a dotfile or dot-folder go to the app (e.g. /.well-known/), never to the static folder."""
    proxy = _app_proxy(web)
    if static_dir is None:
        site = f"        location / {{\n{proxy}\n        }}"
    else:
        site = (
            f'        location / {{\n            root "{_checked(static_dir, "app.static")}";\n'
            f"            client_max_body_size {web.app_max_body_mb}m;  # checked here, before try_files\n"
            f"            try_files $uri $uri/index.html @app;\n{_headers(APP_STATIC_HEADERS)}\n        }}\n"
            f"        location @app {{\n{proxy}\n        }}"
        )
    dotfiles = f"        location ~ /\\. {{\n{proxy}\n        }}"
    return f"{dotfiles}\n\n{site}\n{APP_UNAVAILABLE}"


def _site_block(static_dir: Path | None, web: WebSpec) -> str:
    """Everything outside the job API: the static site (as before the app existed), or the team's app."""
    if web.app is None:
        return f"{NO_DOTFILES}\n\n{_static_block(static_dir)}"
    return _app_block(static_dir, web)


# Over a limit: the JSON error shape, and when to try again (the rate refills every second).
TOO_MANY = """        error_page 429 = @too_many;
        location @too_many {
            default_type application/json;
            add_header Retry-After 1 always;
            add_header Strict-Transport-Security $kvern_hsts always;
            return 429 '{"error": {"code": "too_many_requests", "message": "too many requests; try again shortly"}}';
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


# A request's API key as nginx can see it: the whole token, never checked here (the web heads verify it). A
# bucket per token rather than per key id: key ids are not secret, so an id-keyed bucket would let anyone who
# knows one throttle its owner; a made-up token only fills a bucket of its own, and the per-address one. `~*`: the
# scheme in any case, as the API takes it (else `bearer <token>` would be counted nowhere).
KEY_TOKEN_MAP = """    map $http_authorization $kvern_limit_token {
        default "";
        "~*^Bearer[ \\t]+(?<token>kvern_[0-9a-f]{12}_[A-Za-z0-9_-]{43})$" $token;
    }"""


def _limit_zones(web: WebSpec) -> str:
    lines = ["    limit_req_status 429;", "    limit_conn_status 429;"]
    if web.rate:
        lines.append(f"    limit_req_zone $binary_remote_addr zone=kvern_api:10m rate={web.rate}r/s;")
    if web.key_rate:
        lines.append(KEY_TOKEN_MAP)
        # An empty key (no token) is not counted in this zone: such requests are limited per address only.
        lines.append(f"    limit_req_zone $kvern_limit_token zone=kvern_key:10m rate={web.key_rate}r/s;")
    if web.connections:
        lines.append("    limit_conn_zone $binary_remote_addr zone=kvern_conn:10m;")
    return "\n".join(lines)


def _limit_req(web: WebSpec) -> str:
    # nodelay: a burst within the allowance is served at once instead of being queued behind the rate.
    lines = []
    if web.rate:
        lines.append(f"            limit_req zone=kvern_api burst={web.burst} nodelay;")
    if web.key_rate:
        lines.append(f"            limit_req zone=kvern_key burst={web.key_burst} nodelay;")
    return "\n".join(lines)


def _limit_conn(web: WebSpec) -> str:
    return f"        limit_conn kvern_conn {web.connections};" if web.connections else ""


def _user_directive() -> str:
    # Only a master running as root may (and must) name the user its workers switch to.
    account = worker_account()
    return f"user {account.user} {account.group};" if account else ""


# Mozilla's "intermediate" TLS configuration (ssl-config.mozilla.org, nginx 1.22, OpenSSL 3): TLS 1.2 and 1.3,
# AEAD ciphers with forward secrecy, the client's order (each picks what its hardware does fastest), no session
# tickets (their key never rotates in nginx). ECDHE only: the generator's DHE suites would need a dhparam file,
# and every client the intermediate profile targets has ECDHE. No OCSP stapling: it needs a DNS resolver in
# nginx, and Let's Encrypt, where most certificates come from, no longer runs OCSP.
TLS_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


def _tls_settings(web: WebSpec) -> str:
    """http-level: every server listening on an HTTPS address (the app's and the 421 one) has the certificate."""
    if web.tls is None:
        return ""
    lines = (
        f'ssl_certificate "{_checked(web.tls.cert, "web.tls.cert")}";',
        f'ssl_certificate_key "{_checked(web.tls.key, "web.tls.key")}";',
        "ssl_protocols TLSv1.2 TLSv1.3;",
        "ssl_ecdh_curve X25519:prime256v1:secp384r1;",
        f"ssl_ciphers {TLS_CIPHERS};",
        "ssl_prefer_server_ciphers off;",
        "ssl_session_cache shared:kvern_tls:10m;",
        "ssl_session_timeout 1d;",
        "ssl_session_tickets off;",
    )
    return "\n".join(f"    {line}" for line in lines)


def local_door(port: int) -> Address:
    """Where kvern itself (health checks, `kvern submit`, tests) reaches the front door: plain HTTP on loopback."""
    return Address("127.0.0.1", port)


@dataclass(frozen=True)
class Listeners:
    """The front door's addresses by role: `app` serves the site and the API, `redirect` only sends browsers to
    HTTPS (web.listen, when there is TLS), `tls` are the HTTPS ones among `app`."""

    app: tuple[Address, ...]
    redirect: tuple[Address, ...]
    tls: tuple[Address, ...]

    @property
    def every(self) -> tuple[Address, ...]:
        return (*self.app, *self.redirect)


def listeners(web: WebSpec, port: int) -> Listeners:
    door = local_door(port)
    public = tuple(a for a in web.listen if a != door)  # the local door is always there, once
    if web.tls is None:
        return Listeners((door, *public), (), ())
    if door in web.tls.listen:
        raise StartError(f"web.tls.listen: {door} is kvern's own plain HTTP address (web.port); use another port")
    return Listeners((door, *web.tls.listen), public, web.tls.listen)


def _listen(address: Address, tls: bool, default: bool = False) -> str:
    params = " ssl http2" if tls else ""
    if default:
        # Options of the socket itself go on one listen per address. [::] with ipv6only never clashes with
        # 0.0.0.0 on the same port (nginx's default, written out since both may be listed).
        params += " default_server" + (" ipv6only=on" if address.host == "::" else "")
    return f"        listen {address}{params};"


def _default_listens(where: Listeners) -> str:
    return "\n".join(_listen(a, a in where.tls, default=True) for a in where.every)


def _app_listens(where: Listeners) -> str:
    return "\n".join(_listen(a, a in where.tls) for a in where.app)


def _redirect_server(where: Listeners, server_names: str, web: WebSpec) -> str:
    """With TLS, web.listen answers every request of a known Host with a permanent redirect to HTTPS."""
    if not where.redirect:
        return ""
    https_port = where.tls[0].port
    suffix = "" if https_port == HTTPS_PORT else f":{https_port}"
    listens = "\n".join(_listen(a, tls=False) for a in where.redirect)
    return f"""
    server {{
{listens}
        server_name {server_names};
{_limit_conn(web)}
        location / {{
            return 301 https://$host{suffix}$request_uri;
        }}
{REFUSED}
    }}
"""


def _api_proxy_pass(web: WebSpec) -> str:
    """The API heads serve under /api/. Under that prefix nginx passes the request URI as the client sent it;
    under another one it replaces the prefix (in the normalized URI, escaped again: the API's ids and artifact
    names hold no `/`, so nothing is lost)."""
    if web.api_prefix == SERVED_API_PREFIX:
        return "proxy_pass http://kvern_web_heads;"
    return f"proxy_pass http://kvern_web_heads{SERVED_API_PREFIX}/;"


def _events_location(web: WebSpec) -> str:
    """Job event streams (Server-Sent Events, api/events.py): each event is passed on as it comes (no buffering)
    and a stream stays open up to an hour (the heads send a keepalive every 15 s). The rest is inherited."""
    rewrite = (
        ""
        if web.api_prefix == SERVED_API_PREFIX
        else f"                rewrite ^{web.api_prefix}/(.*)$ /api/$1 break;\n"
    )
    return (
        f"            location ~ ^{web.api_prefix}/v1/jobs/[^/]+/events$ {{\n{rewrite}"
        "                proxy_pass http://kvern_web_heads;\n"
        "                proxy_buffering off;\n"
        "                proxy_read_timeout 1h;\n"
        "            }"
    )


def _dashboard_location(web: WebSpec) -> str:
    """The dashboard (api/dashboard): the heads serve it under /_kvern/, the front door under web.dashboard_prefix;
    its live feed is a Server-Sent Events stream, so nothing is buffered."""
    return f"""        location ^~ {web.dashboard_prefix}/ {{
{_limit_req(web)}
            proxy_pass http://kvern_web_heads{DASHBOARD_PREFIX}/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_connect_timeout 2s;
            proxy_buffering off;
            proxy_read_timeout 1h;
        }}"""


def _check_rendered(web: WebSpec, where: Listeners) -> None:
    """What goes into nginx.conf unquoted is checked again here, whoever built the WebSpec (the spec parser
    refuses the same values with the field's name): an address or prefix must not open a directive."""
    for name, prefix in (("api_prefix", web.api_prefix), ("dashboard_prefix", web.dashboard_prefix)):
        if not API_PREFIX_PATTERN.match(prefix):
            raise StartError(f"web.{name}: {prefix!r} cannot be written into nginx.conf")
    for address in where.every:
        if not isinstance(address.port, int):
            raise StartError(f"web.listen: {address!r} has no port number")
        parse_address(str(address), "web.listen")


def render_config(state_dir: Path, port: int, static_dir: Path | None, web: WebSpec | None = None) -> str:
    web = web or WebSpec()
    where = listeners(web, port)
    _check_rendered(web, where)
    server_names = " ".join(dict.fromkeys([*LOOPBACK_NAMES, *web.server_name]))
    template = Template(resources.files("kvern.runtime").joinpath("templates/nginx.conf").read_text())
    return template.substitute(
        user_directive=_user_directive(),
        worker_processes=NGINX_WORKER_PROCESSES,
        state_dir=_checked(state_dir),
        temp_dir=_checked(front_dir(state_dir) / "nginx"),
        tls_settings=_tls_settings(web),
        hsts=HSTS_MAX_AGE,
        hsts_header=HSTS_HEADER,
        default_listens=_default_listens(where),
        app_listens=_app_listens(where),
        redirect_server=_redirect_server(where, server_names, web),
        server_names=server_names,
        api_prefix=web.api_prefix,
        api_proxy_pass=_api_proxy_pass(web),
        events_location=_events_location(web),
        dashboard_location=_dashboard_location(web),
        limit_zones=_limit_zones(web),
        limit_req=_limit_req(web),
        limit_conn=_limit_conn(web),
        too_many=TOO_MANY,
        refused=REFUSED,
        client_max_body_size=FRONT_DOOR_BODY_LIMIT,
        site_block=_site_block(static_dir, web),
    )


def write_config(state_dir: Path, port: int, static_dir: Path | None, web: WebSpec | None = None) -> Path:
    """Write nginx.conf and make the web heads' socket dir; returns the main config's path.

    The upstream.conf it includes is runtime/upstreams.py's to write, before this (`nginx -t` reads it).
    The new nginx.conf replaces the old one only once `nginx -t` accepts it (a certificate that does not parse
    or a key that does not match it is refused here, in one line, before anything starts or is reloaded)."""
    if static_dir is not None:
        check_static_dir(static_dir, state_dir.resolve(), "the state dir")
    path = config_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    (state_dir / "logs").mkdir(exist_ok=True)  # nginx -t opens the error log
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
    candidate = path.with_name("nginx.conf.new")
    candidate.write_text(render_config(state_dir, port, static_dir, web))
    try:
        check_config(candidate, web or WebSpec())
    except StartError:
        candidate.unlink()
        raise
    candidate.replace(path)
    return path


NGINX_TEST_TIMEOUT_S = 30
# "2026/12/01 08:25:10 [emerg] 27275#27275: cannot load certificate ..." -> what follows the pid.
NGINX_REFUSAL = re.compile(r"\[(?:emerg|alert|crit)\] [0-9#]+: (.*)$")


def check_config(config: Path, web: WebSpec) -> None:
    """`nginx -t` on a rendered config; StartError with nginx's own reason (one line) if it refuses it."""
    try:
        done = subprocess.run(
            [*nginx_command(config), "-t", "-q"],
            capture_output=True,
            text=True,
            timeout=NGINX_TEST_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise StartError(f"nginx -t did not finish in {NGINX_TEST_TIMEOUT_S}s") from None
    if done.returncode == 0:
        return
    found = (NGINX_REFUSAL.search(line) for line in done.stderr.splitlines())
    reason = next((match.group(1) for match in found if match), "") or done.stderr.strip().replace("\n", " ")
    tls = web.tls
    if tls is not None and (str(tls.cert) in reason or str(tls.key) in reason or "SSL" in reason):
        raise StartError(f"web.tls: nginx cannot use the certificate and key: {reason}")
    raise StartError(f"front door: nginx refuses its config: {reason or f'exit code {done.returncode}'}")


def _make_group_dir(folder: Path, account: WorkerAccount | None, parents: bool = False) -> None:
    """A folder nginx's workers enter through their group; setgid, so sockets made in it get that group."""
    if parents:
        folder.parent.mkdir(parents=True, exist_ok=True)
        # Set, not only asked of mkdir: a umask of 077 (or an older run's) would leave the workers unable to
        # pass through to their own folder. 0711: they may enter it, not list the other instances' folders.
        folder.parent.chmod(0o711)
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
