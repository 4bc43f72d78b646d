"""nginx.conf as rendered for every shape of `[web]`: the local door, public addresses, HTTPS, the job API's
prefix and the team's app. Each variant is checked by the real `nginx -t`; values that would break out of a
directive are refused, by the spec with the field's name and again when rendering."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trustme

from kvern.errors import KvernError, SpecError, StartError
from kvern.runtime import nginx, upstreams
from kvern.spec import Address, TlsSpec, WebSpec, parse_address, parse_spec

PORT = 18000
REFUSED_TLS = r"web\.tls: nginx cannot use the certificate and key: "


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert = trustme.CA().issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "state"
    folder.mkdir()
    yield folder
    nginx.remove_front_dir(folder)


@pytest.fixture
def static(tmp_path: Path) -> Path:
    folder = tmp_path / "project" / "static"
    folder.mkdir(parents=True)
    (folder / "index.html").write_text("<h1>hi</h1>")
    return folder


def tls(certificate: tuple[Path, Path], *listen: str) -> TlsSpec:
    return TlsSpec(certificate[0], certificate[1], tuple(parse(a) for a in listen))


def parse(text: str) -> Address:
    return parse_address(text, "test")


def written(state: Path, static: Path | None, web: WebSpec) -> str:
    """write_config, which runs `nginx -t` on what it renders before it keeps it (with the upstreams `up` writes
    first: two heads, and their app heads when there is an app)."""
    upstreams.write_upstream(state, range(2), app=web.app is not None)
    path = nginx.write_config(state, PORT, static, web)
    return path.read_text()


Variant = Callable[[tuple[Path, Path]], WebSpec]
VARIANTS: dict[str, Variant] = {
    "today": lambda _: WebSpec(),
    "public addresses": lambda _: WebSpec(listen=(parse("0.0.0.0:18080"), parse("[::]:18080"))),
    "the local door among them": lambda _: WebSpec(listen=(parse(f"127.0.0.1:{PORT}"), parse("*:18081"))),
    "tls": lambda c: WebSpec(
        listen=(parse("0.0.0.0:18080"), parse("[::]:18080")), tls=tls(c, "0.0.0.0:18443", "[::]:18443")
    ),
    "tls on 443 only": lambda c: WebSpec(tls=tls(c, "127.0.0.1:443")),
    "api prefix": lambda _: WebSpec(api_prefix="/_kvern/api"),
    "per-key limit only": lambda _: WebSpec(rate=0, connections=0),
    "no limits": lambda _: WebSpec(rate=0, connections=0, key_rate=0),
    "app": lambda _: WebSpec(app="mysite.wsgi:application"),
    "app, tls and a prefix": lambda c: WebSpec(
        app="mysite.asgi:app",
        api_prefix="/_kvern/api",
        listen=(parse("0.0.0.0:18080"),),
        tls=tls(c, "0.0.0.0:443"),
        server_name=("shop.example",),
    ),
}


@pytest.mark.parametrize("with_static", [True, False], ids=["static", "no static"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_passes_nginx_t(
    state: Path, static: Path, certificate: tuple[Path, Path], variant: str, with_static: bool
) -> None:
    text = written(state, static if with_static else None, VARIANTS[variant](certificate))
    assert f"listen 127.0.0.1:{PORT} default_server;" in text  # the local door, always plain HTTP
    assert f"listen 127.0.0.1:{PORT};" in text


def test_today_is_unchanged_without_the_new_fields(state: Path, static: Path) -> None:
    text = written(state, static, WebSpec())
    assert "location ^~ /api/ {" in text and "proxy_pass http://kvern_web_heads;" in text
    assert "ssl_certificate" not in text and "return 301" not in text and "kvern_app_heads" not in text
    assert "Content-Security-Policy" in text and "location ~ /\\. {" in text
    assert text.count("listen ") == 2


def test_public_addresses_share_the_421_server_and_ipv6_keeps_to_itself(state: Path) -> None:
    text = written(state, None, WebSpec(listen=(parse("0.0.0.0:18080"), parse("[::]:18080"))))
    assert "listen 0.0.0.0:18080 default_server;" in text
    assert "listen [::]:18080 default_server ipv6only=on;" in text
    assert "listen 0.0.0.0:18080;\n" in text and "listen [::]:18080;\n" in text


def test_the_local_door_is_listed_once_even_when_web_listen_names_it(state: Path) -> None:
    text = written(state, None, WebSpec(listen=(parse(f"127.0.0.1:{PORT}"), parse("*:18081"))))
    assert text.count(f"listen 127.0.0.1:{PORT}") == 2  # the 421 server and the site
    assert "listen *:18081;" in text


def test_tls_serves_https_with_the_mozilla_intermediate_settings(state: Path, certificate: tuple[Path, Path]) -> None:
    text = written(state, None, VARIANTS["tls"](certificate))
    assert f'ssl_certificate "{certificate[0]}";' in text and f'ssl_certificate_key "{certificate[1]}";' in text
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in text and "ssl_prefer_server_ciphers off;" in text
    assert "ssl_session_tickets off;" in text and ":DHE-" not in text and "ssl_dhparam" not in text
    assert 'map $scheme $kvern_hsts { https "max-age=63072000"; default ""; }' in text
    assert "listen 0.0.0.0:18443 ssl http2 default_server;" in text
    assert "listen [::]:18443 ssl http2 default_server ipv6only=on;" in text
    assert "listen 0.0.0.0:18443 ssl http2;\n" in text


def test_with_tls_web_listen_redirects_to_https_but_the_local_door_does_not(
    state: Path, certificate: tuple[Path, Path]
) -> None:
    text = written(state, None, VARIANTS["tls"](certificate))
    redirect = text.split("return 301 ")[1].split(";")[0]
    assert redirect == "https://$host:18443$request_uri"
    redirect_server = text.split("return 301")[0].rsplit("server {", 1)[1]
    assert "listen 0.0.0.0:18080;" in redirect_server and f"127.0.0.1:{PORT}" not in redirect_server
    assert "https://$host$request_uri" in written(state, None, VARIANTS["app, tls and a prefix"](certificate))


def test_every_location_with_its_own_headers_repeats_hsts(state: Path, static: Path) -> None:
    for web in (WebSpec(), WebSpec(app="a:b")):
        text = written(state, static, web)
        for location in text.split("location ")[1:]:
            block = location.split("}")[0]
            if "add_header" in block:
                assert nginx.HSTS_HEADER in block, block


def test_the_api_prefix_is_mapped_onto_the_heads_api(state: Path) -> None:
    text = written(state, None, WebSpec(api_prefix="/_kvern/api"))
    api = text.split("location ^~ /_kvern/api/ {")[1].split("}")[0]
    assert "proxy_pass http://kvern_web_heads/api/;" in api
    assert "location ^~ /api/" not in text


def test_an_app_gets_what_static_does_not_serve_with_its_own_errors(state: Path, static: Path) -> None:
    text = written(state, static, WebSpec(app="mysite.wsgi:application"))
    site = text.split("        location / {")[-1].split("}")[0]  # the site's, after the 421 server's
    assert "try_files $uri $uri/index.html @app;" in site
    assert "X-Content-Type-Options nosniff" in site and "Content-Security-Policy" not in text
    app = text.split("location @app {")[1].split("}")[0]
    assert "proxy_pass http://kvern_app_heads;" in app and "proxy_read_timeout 60s;" in app
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in app and "proxy_intercept_errors" not in text
    assert "proxy_next_upstream error timeout;" in app and "non_idempotent" not in text
    assert "error_page 502 503 504 = @app_unavailable;" in app
    unavailable = text.split("location @app_unavailable {")[1].split("}")[0]
    assert "return 503" in unavailable and "Retry-After 2" in unavailable and "text/plain" in unavailable


def test_without_static_everything_outside_the_api_goes_to_the_app(state: Path) -> None:
    text = written(state, None, WebSpec(app="mysite.wsgi:application"))
    site = text.split("        location / {")[-1].split("}")[0]  # the site's, after the 421 server's
    assert "proxy_pass http://kvern_app_heads;" in site and "try_files" not in text
    dotfiles = text.split("location ~ /\\. {")[1].split("}")[0]
    assert "proxy_pass http://kvern_app_heads;" in dotfiles  # /.well-known/ is the app's


def test_a_bad_certificate_fails_in_one_line_and_keeps_the_old_config(
    state: Path, tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    good = written(state, None, WebSpec())
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    with pytest.raises(
        StartError, match=r"^web\.tls: nginx cannot use the certificate and key: cannot load certificate"
    ) as refused:
        written(state, None, WebSpec(tls=TlsSpec(broken, certificate[1], (parse("127.0.0.1:18443"),))))
    assert "\n" not in str(refused.value)
    assert nginx.config_path(state).read_text() == good
    assert not (nginx.config_path(state).parent / "nginx.conf.new").exists()


def test_a_key_that_is_not_the_certificates_fails(state: Path, tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    other = trustme.CA().issue_cert("localhost")
    other.private_key_pem.write_to_path(str(tmp_path / "other-key.pem"))
    with pytest.raises(
        StartError, match=r"^web\.tls: nginx cannot use the certificate and key: SSL_CTX_use_PrivateKey.*mismatch"
    ):
        written(state, None, WebSpec(tls=TlsSpec(certificate[0], tmp_path / "other-key.pem", (parse("[::1]:1443"),))))


def test_https_on_the_local_door_is_refused(state: Path, certificate: tuple[Path, Path]) -> None:
    with pytest.raises(StartError, match=r"web\.tls\.listen: 127\.0\.0\.1:18000 is kvern's own"):
        written(state, None, WebSpec(tls=tls(certificate, f"127.0.0.1:{PORT}")))


# -- injection ------------------------------------------------------------------------------------------------


def spec_of(web: str, root: Path) -> Any:
    raw = tomllib.loads(f'[app]\ntasks = "tasks"\n[web]\n{web}\n[[pools]]\nname = "p"\n')
    return parse_spec(raw, root / "kvern.toml")


@pytest.mark.parametrize(
    ("web", "field"),
    [
        ('api_prefix = "/api; return 200 x"', "web.api_prefix"),
        ('api_prefix = "/api/ { }"', "web.api_prefix"),
        ('api_prefix = "/a\\nb"', "web.api_prefix"),
        ('api_prefix = "api"', "web.api_prefix"),
        ('listen = ["0.0.0.0:80; include /etc/passwd"]', "web.listen"),
        ('listen = ["0.0.0.0:80 ssl"]', "web.listen"),
        ('listen = ["[::]:80 ipv6only=off"]', "web.listen"),
        ('listen = ["example.com:80"]', "web.listen"),
        ('listen = ["unix:/tmp/x.sock"]', "web.listen"),
        ('app = "m:app; x"', "web.app"),
    ],
)
def test_new_fields_cannot_open_a_directive(tmp_path: Path, web: str, field: str) -> None:
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        spec_of(web, tmp_path)


@pytest.mark.parametrize("name", ['cert"; include /etc/shadow; "', "cert;pem", "cert{pem}", "cert$pem", "c\nert"])
def test_certificate_paths_cannot_open_a_directive(tmp_path: Path, name: str) -> None:
    (tmp_path / "key.pem").write_text("k")
    with pytest.raises(SpecError, match=r"web\.tls\.cert"):
        spec_of(f'[web.tls]\ncert = {json.dumps(name)}\nkey = "key.pem"', tmp_path)


@pytest.mark.parametrize(
    "web",
    [
        WebSpec(api_prefix="/api; return 200"),
        WebSpec(listen=(Address("0.0.0.0;", 80),)),
        WebSpec(listen=(Address("0.0.0.0", "80 ssl"),)),  # type: ignore[arg-type]
    ],
)
def test_rendering_refuses_what_the_spec_would_have(state: Path, web: WebSpec) -> None:
    with pytest.raises(KvernError):
        nginx.render_config(state, PORT, None, web)


def test_rendering_refuses_certificate_paths_that_would_break_out(state: Path, certificate: tuple[Path, Path]) -> None:
    web = WebSpec(tls=replace(tls(certificate, "127.0.0.1:18443"), cert=Path('/x"; include /etc/shadow; "')))
    with pytest.raises(StartError, match=r"web\.tls\.cert"):
        nginx.render_config(state, PORT, None, web)


@pytest.mark.skipif(nginx.worker_account() is None, reason="nginx's workers switch user only when kvern is root")
def test_the_shared_run_folder_lets_the_workers_through_whatever_made_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "run-kvern"
    base.mkdir(mode=0o700)  # as a umask of 077, or an older run, leaves it
    monkeypatch.setattr(nginx, "RUN_BASE", base)
    state = tmp_path / "state"
    state.mkdir()
    upstreams.write_upstream(state, range(1), app=False)
    nginx.write_config(state, PORT, None, WebSpec())
    assert base.stat().st_mode & 0o777 == 0o711
    assert nginx.socket_dir(state).stat().st_mode & 0o7777 == 0o2750


@pytest.mark.parametrize("prefix", ["/api", "/_kvern/api"])
def test_job_event_streams_are_not_buffered_under_any_api_prefix(state: Path, prefix: str) -> None:
    text = written(state, None, WebSpec(api_prefix=prefix))
    api = text.split(f"location ^~ {prefix}/ {{")[1].split("        }")[0]
    events = api.split(f"location ~ ^{prefix}/v1/jobs/[^/]+/events$ {{")[1].split("}")[0]
    assert "proxy_buffering off;" in events and "proxy_read_timeout 1h;" in events
    assert "proxy_pass http://kvern_web_heads;" in events
    assert ("rewrite" in events) is (prefix != "/api")


def test_the_dashboard_prefix_is_mapped_onto_the_heads_dashboard(state: Path) -> None:
    text = written(state, None, WebSpec(dashboard_prefix="/ops/kvern"))
    dashboard = text.split("location ^~ /ops/kvern/ {")[1].split("}")[0]
    assert "proxy_pass http://kvern_web_heads/_kvern/;" in dashboard and "proxy_buffering off;" in dashboard
    assert "X-Real-IP $remote_addr" in dashboard


def test_the_dashboard_prefix_is_checked(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"web\.dashboard_prefix"):
        parse_spec({"app": {"tasks": "t"}, "pools": [{"name": "p"}], "web": {"dashboard_prefix": "/a b"}}, tmp_path)
