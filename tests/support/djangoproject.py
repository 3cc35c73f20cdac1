"""The example Django project (examples/djangoproject) in a scratch directory of a test's own,
migrated, and `manage.py runserver` run in it as a real process; requests to it read with the
one response parser."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.client import Client, http_get
from tests.support.http import Response
from tests.support.polling import wait_until
from tests.support.procs import ROOT, ServerProcess

EXAMPLE = ROOT / "examples" / "djangoproject"
# The banner line runserver on aserve prints once it listens (an IPv6 address in brackets).
STARTING = (
    r"Starting aserve \S+ \((WSGI|ASGI)\) development server at "
    r"https?://(?:\[[0-9a-f:]+\]|[^:/]+):(\d+)/"
)
# The supervisor's line once a reload worker serves (the first, then one per reload), and
# the two outcomes of a change.
WORKER_READY = r"(?:Worker |Reloaded in \d+ ms \(files: .*; worker )(\d+)(?: ready in \d+ ms|\))"
RESTARTING = r"Reloaded in \d+ ms \(files: (.*); worker \d+\)$"
TAKEN_IN = r"Changed: (.*); the app took it in without a restart$"
# Selects the example's ASGI_APPLICATION (its settings read it from the environment).
ASGI_ENV = {"EXAMPLE_ASGI_APPLICATION": "mysite.asgi.application"}
# What the copy leaves out: the example's own database and caches.
_LEFT_OUT = shutil.ignore_patterns("db.sqlite3*", "__pycache__", "*.pyc")
# How long a stopped runserver (supervisor, template and workers) may take to exit.
STOP_WAIT = 10.0


def environment(**extra: str) -> dict[str, str]:
    """The environment of a manage.py process: this one's, with bytecode caching on (as a
    user has it; the test runner turns it off), no settings module of the tests', and
    unbuffered output."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONDONTWRITEBYTECODE", "DJANGO_SETTINGS_MODULE")
    }
    # A user's terminal makes stdout line-buffered; the pipe the tests read would make it
    # block-buffered, and what each process prints would come in the order of their exits.
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def manage(
    project: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """`python manage.py ARGS` in `project`, run to completion."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project,
        env=dict(env) if env is not None else environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def access_line(request_line: str, status: int) -> str:
    """A pattern for runserver's access line for `request_line`, as django.server's default
    formatter writes it (aserve adds the milliseconds): its groups are the time and the size
    of the body."""
    return (
        r"^\[(\d{2}/[A-Z][a-z]{2}/\d{4} \d{2}:\d{2}:\d{2})\] "
        + re.escape(f'"{request_line}" {status} ')
        + r"(\d+) \d+\.\dms$"
    )


def unmigrated_copy(destination: Path) -> Path:
    """A copy of the example project at `destination`, without a database."""
    shutil.copytree(EXAMPLE, destination, ignore=_LEFT_OUT)
    return destination


def migrated_copy(destination: Path) -> Path:
    """A copy of the example project at `destination`, its database migrated."""
    unmigrated_copy(destination)
    result = manage(destination, "migrate", "--noinput", "-v", "0")
    assert result.returncode == 0, result.stderr
    return destination


def copy_of(migrated: Path, destination: Path) -> Path:
    """Another copy of a migrated project (cheaper than migrating again)."""
    shutil.copytree(migrated, destination, ignore=shutil.ignore_patterns("__pycache__"))
    return destination


def create_superuser(project: Path, username: str, password: str) -> None:
    """An admin user in the project's database, made as the example's README says: no
    prompts, the password from the environment."""
    env = environment(
        DJANGO_SUPERUSER_USERNAME=username,
        DJANGO_SUPERUSER_PASSWORD=password,
        DJANGO_SUPERUSER_EMAIL=f"{username}@example.com",
    )
    result = manage(project, "createsuperuser", "--noinput", env=env)
    assert result.returncode == 0, result.stderr


def settings_module(project: Path, name: str, body: str) -> str:
    """`mysite/NAME.py`: the example's settings with `body` added below them; the dotted
    name, for --settings."""
    source = "from mysite.settings import *\n\n" + textwrap.dedent(body)
    (project / "mysite" / f"{name}.py").write_text(source)
    return f"mysite.{name}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at `host` right now, for the forms of addrport that name
    one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def fetch(
    port: int,
    path: str = "/",
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    host: str = "127.0.0.1",
) -> Response:
    """One request over a fresh connection to `host` (an IPv6 address too), its response read
    whole by the one parser."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {_authority(host, port)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection((host, port), timeout=10) as sock:
        client = Client(sock)
        client.sendall(head + body)
        return client.response(method.encode("ascii"))


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def served_pid(port: int) -> int | None:
    """The id of the process serving the example's /pid/; None while something else answers
    (the error page)."""
    status, body = http_get(port, "/pid/")
    return int(body) if status == 200 and body.isdigit() else None


def wait_for_another_pid(port: int, previous: int | None, timeout: float = 15.0) -> int:
    """The pid /pid/ reports once a worker other than `previous` serves it."""
    seen: list[int | None] = [previous]

    def changed() -> bool:
        seen.append(served_pid(port))
        return seen[-1] not in (previous, None)

    assert wait_until(changed, timeout), f"/pid/ says {seen[-1]}; a worker other than {previous}?"
    pid = seen[-1]
    assert pid is not None
    return pid


class Runserver(ServerProcess):
    """`python manage.py runserver ARGS` in a project, its output (stdout and stderr) read as
    it comes; `port` once the banner is printed. `command` replaces `manage.py runserver`
    (`manage.py aserve`, or `-c SCRIPT`)."""

    def __init__(
        self,
        project: Path,
        *args: str,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = ("manage.py", "runserver"),
    ) -> None:
        super().__init__(
            *(args or ("127.0.0.1:0",)),
            command=[sys.executable, *command],
            cwd=project,
            env=env if env is not None else environment(),
            with_stdout=True,
        )
        self.project = project

    def wait_started(self, timeout: float = 30.0) -> int:
        """The port from the banner, once printed."""
        return int(self.wait_for(STARTING, timeout=timeout).group(2))

    @property
    def output(self) -> list[str]:
        """The lines printed so far, without their line ends."""
        with self._changed:
            return [line.rstrip("\n") for line in self.lines]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send `sig` and wait for the exit code."""
        self.send_signal(sig)
        return self.wait(STOP_WAIT)

    def close(self) -> None:
        # SIGTERM first: the supervisor stops its template and workers in order, where a
        # SIGKILL would leave them to notice on their own.
        if self.proc.poll() is None:
            self.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_WAIT)
        super().close()
