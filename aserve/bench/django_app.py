"""A one-view Django project configured in-process: the settings, the URLconf and
`application` (Django's `WSGIHandler`), which every WSGI server in the Django scenario runs."""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse
from django.urls import path

from aserve.types import WSGIApp

BODY = b"Hello, world!"
_MODULE = "aserve.bench.django_app"
# Set (to anything) by the `runserver-aserve` peer: the project lists aserve's Django plugin
# first, as its users do, so that `runserver` is aserve's. By name only: the harness imports
# nothing of the server.
PLUGIN_VARIABLE = "ASERVE_BENCH_DJANGO_PLUGIN"


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse(BODY, content_type="text/plain")


urlpatterns = [path("", hello)]


def configure() -> None:
    """`startproject`'s middleware and apps, no database query on the request path."""
    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY="aserve-bench-not-secret",
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF=_MODULE,
        WSGI_APPLICATION=f"{_MODULE}.application",
        INSTALLED_APPS=[
            *(["aserve.django"] if os.environ.get(PLUGIN_VARIABLE) else []),
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
        ],
        MIDDLEWARE=[
            "django.middleware.security.SecurityMiddleware",
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
            "django.middleware.clickjacking.XFrameOptionsMiddleware",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        USE_TZ=True,
        # No access log from runserver either: every server is measured without one.
        LOGGING={
            "version": 1,
            "disable_existing_loggers": False,
            "loggers": {"django.server": {"level": "WARNING", "propagate": False}},
        },
    )


configure()
application: WSGIApp = get_wsgi_application()


def runserver(argv: Sequence[str] | None = None) -> None:
    """`runserver ADDR:PORT --noreload` on this project (threaded, its default): Django's own,
    or aserve's when PLUGIN_VARIABLE is set."""
    from django.core.management import call_command

    args = list(sys.argv[1:] if argv is None else argv)
    call_command("runserver", *args, use_reloader=False)


def in_process_rate(seconds: float) -> float:
    """Calls per second of `application` on a GET / environ, no server or socket involved."""

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return None

    def environ() -> dict[str, Any]:
        return {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "SCRIPT_NAME": "",
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": "127.0.0.1",
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }

    calls = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(100):
            result = application(environ(), start_response)
            b"".join(result)
            close = getattr(result, "close", None)
            if close is not None:
                close()
        calls += 100
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - started)
