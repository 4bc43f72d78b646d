"""Settings of the reports site, made to run behind kvern's nginx front door.

- nginx serves the ``static`` folder at ``/`` (STATIC_URL) before asking the web heads.
- The host names come from kvern.toml's ``[web] server_name`` (plus the loopback names nginx always answers).
- nginx tells the heads the request's scheme in X-Forwarded-Proto.
- No database: the site keeps nothing itself, its jobs live in kvern. The CSRF token lives in a cookie.
"""

from __future__ import annotations

import os
from pathlib import Path

from reportsite.deployment import allowed_hosts, read_spec, secret_key, serves_https

PROJECT_DIR = Path(__file__).resolve().parent.parent  # the spec's folder: kvern.toml, tasks.py, static/
SPEC = read_spec(PROJECT_DIR / "kvern.toml")

# Never committed (.gitignore): made on first use unless $DJANGO_SECRET_KEY gives one.
SECRET_KEY = secret_key(PROJECT_DIR / ".django-secret-key")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = allowed_hosts(SPEC)

INSTALLED_APPS = ["reportsite"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "reportsite.urls"
WSGI_APPLICATION = "reportsite.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
DATABASES: dict[str, dict[str, str]] = {}

# Behind nginx: the scheme the browser used, and Secure cookies when the front door speaks HTTPS.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CSRF_COOKIE_SECURE = serves_https(SPEC)
CSRF_COOKIE_HTTPONLY = True  # the form carries the token; no script needs the cookie
CSRF_COOKIE_SAMESITE = "Strict"
X_FRAME_OPTIONS = "DENY"
# nginx does both at the front door when [web.tls] is set: HSTS, and the redirect of plain HTTP to HTTPS.
SILENCED_SYSTEM_CHECKS = ["security.W004", "security.W008"]

# Warnings and errors (a 500's traceback, a refused CSRF check) go to stderr: the head's log (`kvern logs`).
# Django's default sends them nowhere unless DEBUG is on.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "reportsite": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
    },
}

STATIC_URL = "/"  # nginx serves the static folder at the site's root
USE_TZ = True
LANGUAGE_CODE = "en"
