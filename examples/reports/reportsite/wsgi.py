"""The WSGI application the web heads serve: ``[web] app = "reportsite.wsgi:application"`` in kvern.toml."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reportsite.settings")

application = get_wsgi_application()
