"""`manage.py runserver` on aserve over a real copy of the example Django project, in real
processes: runserver's banner and notices, static files, the admin, access lines on
`django.server`, RUN_MAIN, signals, call_command, and streaming over WSGI and ASGI."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

import django
import pytest
from django.utils.version import get_docs_version

import aserve
from tests.support.client import connect, http_get, refused_soon
from tests.support.djangoproject import (
    ASGI_ENV,
    Runserver,
    access_line,
    copy_of,
    create_superuser,
    environment,
    fetch,
    served_pid,
    settings_module,
    unmigrated_copy,
)
from tests.support.http import Response
from tests.support.polling import wait_until

ADMIN = "admin"
PASSWORD = "a-password-for-the-tests"
# The example's streamed responses (notes/views.py): which one each interface streams.
STREAMS = {"WSGI": "/stream/sync/", "ASGI": "/stream/"}
CHUNKS = 5
STYLESHEET = "notes/static/notes/style.css"
WARNING = (
    "WARNING: This is a development server. Do not use it in a production setting. "
    "Use a production WSGI or ASGI server instead."
)
MORE_INFORMATION = (
    "For more information on production servers see: "
    f"https://docs.djangoproject.com/en/{get_docs_version()}/howto/deployment/"
)
# runserver's date line (datetime's "%B %d, %Y - %X").
DATE_LINE = r"^[A-Z][a-z]+ \d{2}, \d{4} - \d{2}:\d{2}:\d{2}$"


def cookies(*responses: Response) -> dict[str, str]:
    """The cookies the responses set, later ones winning."""
    jar: SimpleCookie = SimpleCookie()
    for response in responses:
        for value in response.values(b"set-cookie"):
            jar.load(value.decode("latin-1"))
    return {name: morsel.value for name, morsel in jar.items()}


def cookie_header(jar: dict[str, str]) -> str:
    return "; ".join(f"{name}={value}" for name, value in jar.items())


# ---------------------------------------------------------------- the example site, served


@dataclass
class Site:
    """runserver as a user starts it (the reloader on), over WSGI or ASGI."""

    server: Runserver
    port: int
    interface: str
    project: Path


@pytest.fixture(scope="module", params=["WSGI", "ASGI"])
def site(
    request: pytest.FixtureRequest,
    migrated_project: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Site]:
    interface: str = request.param
    project = copy_of(migrated_project, tmp_path_factory.mktemp(interface.lower()) / "site")
    create_superuser(project, ADMIN, PASSWORD)
    env = environment(**ASGI_ENV) if interface == "ASGI" else environment()
    with Runserver(project, "127.0.0.1:0", env=env) as server:
        yield Site(server, server.wait_started(), interface, project)


def test_banner(site: Site) -> None:
    site.server.wait_for(re.escape(MORE_INFORMATION))
    lines = site.server.output
    date = next(i for i, line in enumerate(lines) if re.match(DATE_LINE, line))
    assert lines[date : date + 6] == [
        lines[date],
        f"Django version {django.get_version()}, using settings 'mysite.settings'",
        f"Starting aserve {aserve.__version__} ({site.interface}) development server at "
        f"http://127.0.0.1:{site.port}/",
        "Quit the server with CONTROL-C.",
        WARNING,
        MORE_INFORMATION,
    ]
    printed = datetime.strptime(lines[date], "%B %d, %Y - %X")
    assert abs((datetime.now() - printed).total_seconds()) < 300
    # The system checks come first, with their count; a migrated project has no notice.
    checks = lines.index("Performing system checks...")
    assert checks < lines.index("System check identified no issues (0 silenced).") < date
    assert not any("unapplied migration" in line for line in lines)
    assert site.port != 0
    assert http_get(site.port, "/")[0] == 200


def test_static_file_with_304_and_head(site: Site) -> None:
    stylesheet = (site.project / STYLESHEET).read_bytes()
    served = fetch(site.port, "/static/notes/style.css")
    assert served.status == 200
    assert served.header(b"content-type") == b"text/css"
    assert served.body == stylesheet
    last_modified = served.header(b"last-modified")
    assert last_modified is not None

    unchanged = fetch(
        site.port,
        "/static/notes/style.css",
        headers={"If-Modified-Since": last_modified.decode()},
    )
    assert unchanged.status == 304
    assert unchanged.body == b""

    head = fetch(site.port, "/static/notes/style.css", method="HEAD")
    assert head.status == 200
    assert head.header(b"content-length") == str(len(stylesheet)).encode()
    assert head.body == b""


def test_admin_login_round_trip(site: Site) -> None:
    anonymous = fetch(site.port, "/admin/")
    assert anonymous.status == 302
    assert anonymous.header(b"location") == b"/admin/login/?next=/admin/"

    login = fetch(site.port, "/admin/login/?next=/admin/")
    assert login.status == 200
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', login.body)
    assert token is not None
    jar = cookies(login)
    assert "csrftoken" in jar
    form = urlencode(
        {
            "csrfmiddlewaretoken": token.group(1).decode(),
            "username": ADMIN,
            "password": PASSWORD,
            "next": "/admin/",
        }
    ).encode()
    posted = fetch(
        site.port,
        "/admin/login/?next=/admin/",
        method="POST",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": cookie_header(jar),
        },
        body=form,
    )
    assert posted.status == 302, posted.body[-2000:]
    assert posted.header(b"location") == b"/admin/"
    jar = cookies(login, posted)
    assert "sessionid" in jar

    dashboard = fetch(site.port, "/admin/", headers={"Cookie": cookie_header(jar)})
    assert dashboard.status == 200
    assert b"Site administration" in dashboard.body
    assert b"<strong>" + ADMIN.encode() + b"</strong>" in dashboard.body
    assert b'href="/admin/notes/note/"' in dashboard.body


def test_access_lines_in_runserver_format(site: Site) -> None:
    path = f"/pid/?access-line={site.interface}"
    served = fetch(site.port, path)
    line = site.server.wait_for(access_line(f"GET {path} HTTP/1.1", 200))
    assert int(line.group(2)) == len(served.body)
    missing = fetch(site.port, "/no-such-page/")
    assert missing.status == 404
    line = site.server.wait_for(access_line("GET /no-such-page/ HTTP/1.1", 404))
    assert int(line.group(2)) == len(missing.body)


def test_run_main_is_set_under_the_reloader(site: Site) -> None:
    assert http_get(site.port, "/run-main/") == (200, b"true")


def test_async_view_runs_under_the_interface(site: Site) -> None:
    status, body = http_get(site.port, "/async/")
    assert status == 200
    assert f"served over {site.interface}.".encode() in body


def test_streamed_chunks_arrive_as_they_are_produced(site: Site) -> None:
    """Each chunk of the interface's streaming view comes half a second after the one before:
    read as it arrives, the next one must not be there yet."""
    path = STREAMS[site.interface]
    with connect(site.port, timeout=10) as client:
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        response = client.head()
        assert response.status == 200
        for n in range(1, CHUNKS + 1):
            assert client.part().data == f"chunk {n} of {CHUNKS}\n".encode()
            if n < CHUNKS:
                # A server that collected the body first would have sent the rest with it.
                assert not response.complete
                assert b"chunk" not in client.buffered
        client.response()
    assert response.complete


# ---------------------------------------------------------------- runserver without options


@pytest.fixture(scope="module")
def bare(migrated_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """runserver --noreload --nostatic, with Django's variable that hides the warning."""
    project = copy_of(migrated_project, tmp_path_factory.mktemp("bare") / "site")
    env = environment(DJANGO_RUNSERVER_HIDE_WARNING="true")
    with Runserver(project, "127.0.0.1:0", "--noreload", "--nostatic", env=env) as server:
        yield Site(server, server.wait_started(), "WSGI", project)


def test_hide_warning_variable(bare: Site) -> None:
    # The banner, warning included, is out before the first request is served.
    fetch(bare.port, "/pid/?hide-warning")
    bare.server.wait_for(access_line("GET /pid/?hide-warning HTTP/1.1", 200))
    lines = bare.server.output
    assert "Quit the server with CONTROL-C." in lines
    assert WARNING not in lines
    assert MORE_INFORMATION not in lines


def test_run_main_is_unset_without_the_reloader(bare: Site) -> None:
    assert http_get(bare.port, "/run-main/") == (200, b"")


def test_nostatic_leaves_static_files_unserved(bare: Site) -> None:
    assert fetch(bare.port, "/static/notes/style.css").status == 404


# ---------------------------------------------------------------- notices, logging, signals


def test_unapplied_migrations_notice(tmp_path: Path) -> None:
    project = unmigrated_copy(tmp_path / "site")
    with Runserver(project) as server:
        server.wait_started()
        lines = server.output
    notice = lines.index("Run 'python manage.py migrate' to apply them.")
    assert re.fullmatch(
        r"You have \d+ unapplied migration\(s\)\. Your project may not work properly until "
        r"you apply the migrations for app\(s\): admin, auth, contenttypes, notes, sessions\.",
        lines[notice - 1],
    )


def test_system_checks_come_before_the_banner_into_a_pipe(django_project: Path) -> None:
    env = environment()
    del env["PYTHONUNBUFFERED"]
    with Runserver(django_project, env=env) as server:
        server.wait_started()
        server.wait_for(re.escape(MORE_INFORMATION))
        lines = server.output
    date = next(i for i, line in enumerate(lines) if re.match(DATE_LINE, line))
    assert "System check identified no issues (0 silenced)." in lines[:date]


LOG_TO_A_FILE = """
    LOGGING = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"bare": {"format": "{levelname} {status_code} {message}", "style": "{"}},
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "filename": str(BASE_DIR / "access.log"),
                "formatter": "bare",
            },
        },
        "loggers": {"django.server": {"handlers": ["file"], "level": "INFO", "propagate": False}},
    }
"""


def test_project_logging_redirects_the_access_lines(django_project: Path) -> None:
    """A LOGGING setting that sends django.server to a file gets every line, with the
    status code runserver's records carry; the console gets none."""
    settings = settings_module(django_project, "settings_logfile", LOG_TO_A_FILE)
    log = django_project / "access.log"
    with Runserver(django_project, "127.0.0.1:0", "--settings", settings) as server:
        port = server.wait_started()
        assert server.matches(rf"using settings '{settings}'")
        served = fetch(port, "/pid/?to-the-file")
        assert fetch(port, "/no-such-page/").status == 404
        assert wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= 2)
        # Django's "Not Found: /no-such-page/" is django.request's and stays on the console.
        assert not server.matches(r'"GET /(pid/\?to-the-file|no-such-page/) HTTP/1\.1"')
    first, second = log.read_text().splitlines()[:2]
    assert re.fullmatch(
        rf'INFO 200 "GET /pid/\?to-the-file HTTP/1\.1" 200 {len(served.body)} \d+\.\dms', first
    )
    assert re.fullmatch(r'WARNING 404 "GET /no-such-page/ HTTP/1\.1" 404 \d+ \d+\.\dms', second)


def test_port_in_use(django_project: Path) -> None:
    with Runserver(django_project, "127.0.0.1:0", "--noreload") as holder:
        port = holder.wait_started()
        with Runserver(django_project, f"127.0.0.1:{port}") as second:
            assert second.wait(30) == 1
            assert "Error: That port is already in use." in second.output
        assert http_get(port, "/run-main/") == (200, b"")


@pytest.mark.parametrize("reloader", [True, False], ids=["reloader", "noreload"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_exits_0(django_project: Path, sig: int, reloader: bool) -> None:
    args = () if reloader else ("--noreload",)
    with Runserver(django_project, "127.0.0.1:0", *args) as server:
        port = server.wait_started()
        assert served_pid(port) is not None
        assert server.stop(sig) == 0
    # Nothing it started holds the socket any more.
    assert refused_soon(port)


CALL_COMMAND = """
import sys

import django
from django.core.management import call_command

django.setup()
call_command(
    "runserver",
    sys.argv[1],
    use_reloader=False,
    shutdown_message="Shut down by the test.",
    use_threading=False,
    skip_checks=True,
)
"""


def test_call_command(django_project: Path) -> None:
    """runserver called from Python, as scripts and tools do: the options that only
    call_command gives (the shutdown message, no checks) are honoured."""
    env = environment(DJANGO_SETTINGS_MODULE="mysite.settings")
    with Runserver(django_project, "127.0.0.1:0", command=("-c", CALL_COMMAND), env=env) as server:
        port = server.wait_started()
        assert http_get(port, "/run-main/") == (200, b"")
        assert server.stop(signal.SIGINT) == 0
        lines = server.output
    assert "Shut down by the test." in lines
    assert "Performing system checks..." not in lines
