"""runserver on aserve takes Django's arguments as Django parses them (addrport, -6, its
errors), aserve's options on top (--asgi/--wsgi, --server wsgiref, the reload and shutdown
settings), is also `manage.py aserve`, warns when staticfiles' runserver wins, and serves
under FORCE_SCRIPT_NAME."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from tests.support.client import http_get
from tests.support.djangoproject import (
    ASGI_ENV,
    RESTARTING,
    STARTING,
    Runserver,
    access_line,
    environment,
    fetch,
    free_port,
    manage,
    served_pid,
    settings_module,
    wait_for_another_pid,
)


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(
    not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1) to bind"
)


# ---------------------------------------------------------------- addrport, as Django parses it


@pytest.mark.parametrize(
    ("form", "shown", "host"),
    [
        ("PORT", "127.0.0.1", "127.0.0.1"),
        ("0:PORT", "0.0.0.0", "127.0.0.1"),
        ("127.0.0.1:PORT", "127.0.0.1", "127.0.0.1"),
        ("localhost:PORT", "localhost", "127.0.0.1"),
        pytest.param("[::1]:PORT", "[::1]", "::1", marks=needs_ipv6),
        pytest.param("-6 PORT", "[::1]", "::1", marks=needs_ipv6),
    ],
)
def test_addrport_forms(django_project: Path, form: str, shown: str, host: str) -> None:
    """Each form binds the address Django would and the banner names it as Django's does."""
    port = free_port(host)
    args = form.replace("PORT", str(port)).split()
    with Runserver(django_project, *args, "--noreload") as server:
        assert server.wait_started() == port
        line = server.wait_for(STARTING).string
        assert f"development server at http://{shown}:{port}/\n" in line
        assert fetch(port, "/run-main/", host=host).status == 200


def test_bad_addrport_is_djangos_error(django_project: Path) -> None:
    result = manage(django_project, "runserver", "abc")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        'CommandError: "abc" is not a valid port number or address:port pair.'
    ]


def test_debug_off_needs_allowed_hosts(django_project: Path) -> None:
    settings = settings_module(
        django_project, "settings_production", "DEBUG = False\nALLOWED_HOSTS = []\n"
    )
    result = manage(django_project, "runserver", "127.0.0.1:0", "--settings", settings)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "CommandError: You must set settings.ALLOWED_HOSTS if DEBUG is False."
    ]


# ---------------------------------------------------------------- aserve's options


@pytest.mark.parametrize(
    ("flag", "asgi_application", "interface"),
    [("--asgi", False, "ASGI"), ("--wsgi", True, "WSGI")],
)
def test_interface_option_overrides_the_settings(
    django_project: Path, flag: str, asgi_application: bool, interface: str
) -> None:
    """--asgi serves Django's ASGI handler though ASGI_APPLICATION is unset; --wsgi serves
    WSGI_APPLICATION though it is set."""
    env = environment(**ASGI_ENV) if asgi_application else environment()
    with Runserver(django_project, "127.0.0.1:0", flag, env=env) as server:
        port = server.wait_started()
        assert server.wait_for(STARTING).group(1) == interface
        status, body = http_get(port, "/async/")
        assert status == 200
        assert f"served over {interface}.".encode() in body


def test_wsgiref_server_without_the_reloader(django_project: Path) -> None:
    with Runserver(django_project, "127.0.0.1:0", "--server", "wsgiref", "--noreload") as server:
        port = server.wait_started()
        page = fetch(port, "/")
        assert page.status == 200
        assert (page.header(b"server") or b"").startswith(b"WSGIServer/")
        stylesheet = fetch(port, "/static/notes/style.css")
        assert stylesheet.status == 200
        assert stylesheet.body == (django_project / "notes/static/notes/style.css").read_bytes()


def test_wsgiref_server_logs_access_lines_on_django_server(django_project: Path) -> None:
    with Runserver(django_project, "127.0.0.1:0", "--server", "wsgiref", "--noreload") as server:
        port = server.wait_started()
        assert fetch(port, "/pid/?wsgiref").status == 200
        line = server.wait_for(r'"GET /pid/\?wsgiref HTTP/1\.1" 200 ').string
    assert re.match(access_line("GET /pid/?wsgiref HTTP/1.1", 200), line)


def test_wsgiref_server_with_the_reloader(django_project: Path) -> None:
    with Runserver(django_project, "127.0.0.1:0", "--server", "wsgiref") as server:
        port = server.wait_started()
        page = fetch(port, "/")
    assert page.status == 200
    assert (page.header(b"server") or b"").startswith(b"WSGIServer/")


def test_aserve_options_are_taken(django_project: Path) -> None:
    """aserve's own options are accepted (--threads, --timeout-graceful-shutdown) and the
    --reload-* ones reach the reloader: with `*.sql` included, editing one restarts."""
    args = ["--threads", "4", "--timeout-graceful-shutdown", "2", "--reload-delay", "0.1"]
    args += ["--reload-include", "*.py", "--reload-include", "*.sql"]
    with Runserver(django_project, "127.0.0.1:0", *args) as server:
        port = server.wait_started()
        first = served_pid(port)
        (django_project / "schema.sql").write_text("create table t (id integer);\n")
        assert server.wait_for(RESTARTING).group(1) == "schema.sql"
        wait_for_another_pid(port, first)


def test_manage_py_aserve_is_runserver(django_project: Path) -> None:
    runserver_help = manage(django_project, "help", "runserver")
    aserve_help = manage(django_project, "help", "aserve")
    # Past the usage lines, which name the command, the help is the same.
    assert runserver_help.stdout.split("\n\n", 1)[1] == aserve_help.stdout.split("\n\n", 1)[1]
    command = ("manage.py", "aserve")
    with Runserver(django_project, "127.0.0.1:0", "--noreload", command=command) as server:
        port = server.wait_started()
        assert fetch(port, "/static/notes/style.css").status == 200


# ---------------------------------------------------------------- INSTALLED_APPS order


STATICFILES_FIRST = """
    INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "aserve.django"] + ["aserve.django"]
"""


def test_w001_when_listed_after_staticfiles(django_project: Path) -> None:
    assert manage(django_project, "check").stdout == (
        "System check identified no issues (0 silenced).\n"
    )
    settings = settings_module(django_project, "settings_late", STATICFILES_FIRST)
    check = manage(django_project, "check", "--settings", settings)
    assert check.returncode == 0
    assert (
        "?: (aserve.W001) aserve.django is listed after django.contrib.staticfiles in "
        "INSTALLED_APPS, so `manage.py runserver` is staticfiles' and not aserve's.\n"
        "\tHINT: Move 'aserve.django' to the top of INSTALLED_APPS.\n"
    ) in check.stderr

    with Runserver(django_project, "127.0.0.1:0", "--noreload", "--settings", settings) as server:
        port = int(server.wait_for(r"Starting development server at http://[^:]+:(\d+)/").group(1))
        page = fetch(port, "/")
        assert page.status == 200
        assert (page.header(b"server") or b"").startswith(b"WSGIServer/")
        assert not server.matches("Starting aserve")


# ---------------------------------------------------------------- FORCE_SCRIPT_NAME


WHERE_URLS = '''
"""A URLconf for the test: the example's, and /where/, which says where Django thinks the
request is, and what the server said of the mount point."""

import json

from django.http import HttpResponse
from django.urls import include, path, reverse


def where(request):
    scope = getattr(request, "scope", None)
    seen = {
        "path": request.path,
        "path_info": request.path_info,
        "mount": scope["root_path"] if scope is not None else request.environ["SCRIPT_NAME"],
        "reversed": reverse("notes:pid"),
    }
    return HttpResponse(json.dumps(seen), content_type="application/json")


urlpatterns = [path("where/", where), path("", include("mysite.urls"))]
'''


@pytest.mark.parametrize("flag", ["--wsgi", "--asgi"])
def test_force_script_name_is_the_root_path(django_project: Path, flag: str) -> None:
    """The server mounts the project at FORCE_SCRIPT_NAME, as a proxy in front of it would:
    WSGI's SCRIPT_NAME, ASGI's root_path; Django routes the rest and reverses with it."""
    (django_project / "mysite" / "where.py").write_text(WHERE_URLS)
    settings = settings_module(
        django_project,
        "settings_mounted",
        'FORCE_SCRIPT_NAME = "/mounted"\nROOT_URLCONF = "mysite.where"\n',
    )
    args = ["127.0.0.1:0", flag, "--noreload", "--settings", settings]
    with Runserver(django_project, *args) as server:
        port = server.wait_started()
        status, body = http_get(port, "/where/")
    assert status == 200
    assert json.loads(body) == {
        "path": "/mounted/where/",
        "path_info": "/where/",
        "mount": "/mounted",
        "reversed": "/mounted/pid/",
    }
