"""`aserve APP --reload` as a real process in a scratch project: edits restart the worker
without refusing a request, broken code shows the error page, signals and a killed supervisor
leave no process behind. Tests marked `both` run twice: as the platform does it, and through
the paths of macOS and Windows (ASERVE_PORTABLE=1: spawned workers, stream IPC, signal.signal
handlers, the asyncio loop); `ASERVE_PORTABLE=1 pytest` runs them all that way."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aserve.config import Config
from aserve.process import PORTABLE_ENV
from aserve.reload.ipc import Fork
from aserve.reload.spawn import worker_kind
from aserve.reload.supervisor import BASE_PRELOAD, Template
from tests.support.client import connect, refused_soon
from tests.support.procs import ServerProcess

# The supervisor's first line: "aserve supervisor on http://127.0.0.1:PORT, watching DIR".
SUPERVISOR_ON = r"aserve supervisor on http://127\.0\.0\.1:(\d+), watching "
# A worker ready: the first one's line, then one line per reload naming the changed files.
READY = r"(?:Worker |Reloaded in \d+ ms \(files: .*; worker )(\d+)(?: ready in \d+ ms|\))"
RELOADED = r"Reloaded in \d+ ms \(files: (.*); worker \d+\)$"
POLLERS = 3  # client threads hammering the port while files change
WAIT = 10.0  # generous deadline for anything the happy path does in well under a second
# ---------------------------------------------------------------- the scratch project


def wsgi_source(body: str, marker: str = "") -> str:
    """A validated WSGI app answering `body`; /slow streams for a second, /crash kills the
    process. `marker` is an extra comment line (a same-size edit keeps it the same length)."""
    return textwrap.dedent(
        f"""\
        import os
        import sys
        import time
        from wsgiref.validate import validator

        BODY = {body.encode()!r}
        # {marker}


        def _app(environ, start_response):
            path = environ["PATH_INFO"]
            if path == "/crash":
                os._exit(17)
            if path == "/slow":
                print("app: slow started", file=sys.stderr, flush=True)
                start_response("200 OK", [("Content-Type", "text/plain")])
                return _slow()
            headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]
            start_response("200 OK", headers)
            return [BODY]


        def _slow():
            yield b"first-"
            time.sleep(1.0)
            print("app: slow finished", file=sys.stderr, flush=True)
            yield b"last-" + BODY


        app = validator(_app)
        """
    )


def asgi_source(body: str) -> str:
    """An ASGI app answering `body`; /events is a server-sent event stream that never ends."""
    return textwrap.dedent(
        f"""\
        import asyncio
        import sys

        BODY = {body.encode()!r}


        async def app(scope, receive, send):
            if scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.startup":
                        await send({{"type": "lifespan.startup.complete"}})
                    elif message["type"] == "lifespan.shutdown":
                        await send({{"type": "lifespan.shutdown.complete"}})
                        return
            if scope["path"] == "/events":
                headers = [(b"content-type", b"text/event-stream")]
                await send({{"type": "http.response.start", "status": 200, "headers": headers}})
                print("app: events started", file=sys.stderr, flush=True)
                while True:
                    chunk = {{"type": "http.response.body", "body": b"data: tick\\n\\n"}}
                    await send({{**chunk, "more_body": True}})
                    await asyncio.sleep(0.1)
            headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(BODY))]
            await send({{"type": "http.response.start", "status": 200, "headers": headers}})
            await send({{"type": "http.response.body", "body": BODY}})
        """
    )


def save_atomically(path: Path, text: str) -> None:
    """Save like vim or PyCharm: write a temporary file, then rename it over the original."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "app.py").write_text(wsgi_source("v1"))
    return root


# ---------------------------------------------------------------- processes


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def wait_gone(pids: set[int], timeout: float = WAIT) -> set[int]:
    """The pids still running after `timeout`."""
    deadline = time.monotonic() + timeout
    while (left := {pid for pid in pids if alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both") is not None:
        metafunc.parametrize("portable", [False, True], ids=["native", "portable"])


@pytest.fixture
def portable() -> bool:
    """Whether the test's reloader takes the portable paths (see `both`)."""
    return False


class Reloader(ServerProcess):
    """`python -m aserve APP --reload --port 0` run in `project`; stderr lines collected.
    `portable`: with ASERVE_PORTABLE=1 (which the test session may have set already)."""

    def __init__(
        self, project: Path, *args: str, app: str = "app:app", portable: bool = False
    ) -> None:
        # Bytecode caching on, as for a user: the test runner's environment turns it off.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        if portable:
            env[PORTABLE_ENV] = "1"
        # Whether workers are spawned, not forked from a template process.
        given = args[args.index("--reload-worker") + 1] if "--reload-worker" in args else None
        self.spawns = given == "spawn" or (
            given is None and (portable or worker_kind(Config()) == "spawn")
        )
        super().__init__(
            app,
            "--reload",
            "--port",
            "0",
            "--no-access-log",
            "--timeout-graceful-shutdown",
            "2",
            *args,
            cwd=project,
            env=env,
        )
        self.descendants: set[int] = set()
        self.port = int(self.wait_for(SUPERVISOR_ON, timeout=WAIT).group(1))

    @property
    def log(self) -> str:
        return self.stderr

    def wait_ready(self, count: int = 1) -> int:
        """The pid of the `count`-th worker to get ready."""
        pid = int(self.wait_for(READY, count).group(1))
        self.track()
        return pid

    def workers(self) -> list[int]:
        return [int(m.group(1)) for m in self.matches(READY)]

    def track(self) -> None:
        """Remember the template processes and workers, to check they are gone later."""
        templates = children(self.proc.pid)
        self.descendants |= templates | set(self.workers())
        for template in templates:
            self.descendants |= children(template)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.track()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5.0)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        # Never leave a worker or template behind for the next test, whatever happened.
        for pid in wait_gone(self.descendants, 5.0):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def reloader(project: Path, portable: bool) -> Iterator[Callable[..., Reloader]]:
    started: list[Reloader] = []

    def start(*args: str, app: str = "app:app") -> Reloader:
        started.append(Reloader(project, *args, app=app, portable=portable))
        return started[-1]

    yield start
    for process in started:
        process.close()


# ---------------------------------------------------------------- HTTP


class Reply:
    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        self.status = status
        self.content_type = content_type
        self.body = body
        self.text = body.decode("utf-8", "replace")


def get(port: int, path: str = "/", accept: str | None = None, timeout: float = 5.0) -> Reply:
    """One GET over a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": accept} if accept else {})
        response = conn.getresponse()
        body = response.read()
        return Reply(response.status, response.getheader("content-type", ""), body)
    finally:
        conn.close()


def wait_for_body(port: int, expected: bytes, timeout: float = WAIT) -> None:
    """Poll until the app answers `expected` (a restart is under way); every request must be
    answered, by the old code or the new."""
    deadline = time.monotonic() + timeout
    seen = b""
    while True:
        reply = get(port)
        if reply.status == 200 and reply.body == expected:
            return
        seen = reply.body
        assert time.monotonic() < deadline, f"still {seen!r}, not {expected!r}"
        time.sleep(0.02)


# ---------------------------------------------------------------- editing restarts


def test_supervisor_logs_the_port_it_bound(reloader: Callable[..., Reloader]) -> None:
    server = reloader()
    assert server.port != 0
    worker_line = server.wait_for(r"serving WSGI app app:app on http://127\.0\.0\.1:(\d+);")
    assert int(worker_line.group(1)) == server.port
    server.wait_ready()
    assert get(server.port).body == b"v1"


@pytest.mark.both
def test_edit_serves_new_code_and_names_the_changed_file(
    project: Path, reloader: Callable[..., Reloader]
) -> None:
    """The edit comes right after the first "ready" line: the watcher is already running."""
    (project / "pkg").mkdir()
    server = reloader()
    first = server.wait_ready()
    (project / "app.py").write_text(wsgi_source("v2"))
    wait_for_body(server.port, b"v2")
    assert server.wait_for(RELOADED).group(1) == "app.py"
    second = server.wait_ready(2)
    assert second != first
    # The old worker drained and exited.
    assert wait_gone({first}) == set()

    (project / "pkg" / "settings.toml").write_text("debug = true\n")
    assert server.wait_for(RELOADED, 2).group(1) == "pkg/settings.toml"
    server.wait_ready(3)


def test_package_moved_into_the_project_restarts(
    project: Path, tmp_path: Path, reloader: Callable[..., Reloader]
) -> None:
    """`git switch`, `mv` or `startapp`: a directory arrives with its files already inside."""
    staging = tmp_path / "staging" / "blog"
    staging.mkdir(parents=True)
    (staging / "__init__.py").write_text("")
    (staging / "views.py").write_text("X = 1\n")
    server = reloader()
    server.wait_ready()
    staging.rename(project / "blog")
    assert server.wait_for(RELOADED).group(1) == "blog"
    server.wait_ready(2)


def test_same_size_edit_in_the_same_second_is_not_served_from_stale_bytecode(
    project: Path, reloader: Callable[..., Reloader]
) -> None:
    """Python trusts a .pyc whose recorded source mtime (in whole seconds) and size match the
    source: a quick one-character fix would run the old code without care."""
    server = reloader()
    server.wait_ready()
    app = project / "app.py"
    app.write_text(wsgi_source("v2", marker="a"))
    wait_for_body(server.port, b"v2")  # the worker imported v2 and cached its bytecode
    before = app.stat()
    app.write_text(wsgi_source("v3", marker="a"))
    os.utime(app, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert app.stat().st_size == before.st_size
    wait_for_body(server.port, b"v3")


@pytest.mark.both
def test_asgi_app_reloads(project: Path, reloader: Callable[..., Reloader]) -> None:
    (project / "app.py").write_text(asgi_source("one"))
    server = reloader()
    server.wait_for(r"serving ASGI app app:app on ")
    server.wait_ready()
    assert get(server.port).body == b"one"
    (project / "app.py").write_text(asgi_source("two"))
    wait_for_body(server.port, b"two")


@pytest.mark.parametrize("spread", ["one-file", "many-files"])
def test_burst_of_writes_restarts_once(
    project: Path, reloader: Callable[..., Reloader], spread: str
) -> None:
    """A formatter or a `git switch` writes many times in a few milliseconds: one restart."""
    for index in range(19):
        (project / f"module_{index}.py").write_text("VALUE = 0\n")
    server = reloader()
    server.wait_ready()
    app = str(project / "app.py")
    if spread == "one-file":
        writes = [(app, wsgi_source("v1", marker=str(n))) for n in range(19)]
    else:
        writes = [(str(project / f"module_{n}.py"), f"VALUE = {n}\n") for n in range(19)]
    writes.append((app, wsgi_source("v2")))
    # In a millisecond or so, like the tools it stands for; a test process stalled longer
    # than --reload-delay (50 ms) between two writes would rightly see two restarts.
    prepared = [(path, text.encode()) for path, text in writes]
    for path, data in prepared:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    wait_for_body(server.port, b"v2")
    server.wait_ready(2)
    time.sleep(1.0)  # a second restart would have begun by now
    assert len(server.matches(RELOADED)) == 1, server.log
    assert len(server.workers()) == 2, server.log
    if spread == "many-files":
        assert "(files: app.py, module_0.py, module_1.py and 17 more; worker" in server.log


def test_ignored_changes_do_not_restart(project: Path, reloader: Callable[..., Reloader]) -> None:
    server = reloader()
    server.wait_ready()
    (project / "static").mkdir()
    (project / "static" / "site.css").write_text("body {}\n")
    (project / ".app.py.swp").write_bytes(b"\0" * 64)
    (project / "__pycache__").mkdir(exist_ok=True)
    (project / "__pycache__" / "notes.txt").write_text("x\n")
    time.sleep(0.3)  # six watcher steps: these would have restarted by now
    (project / "app.py").write_text(wsgi_source("v2"))
    assert server.wait_for(RELOADED).group(1) == "app.py"
    wait_for_body(server.port, b"v2")


def test_output_redirected_into_the_project_does_not_restart(project: Path) -> None:
    """`aserve app:app --reload > out.txt 2>&1` from the project: each line it logs is a change
    to a *.txt file in a watched directory, which would restart it forever."""
    output = project / "out.txt"
    with output.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aserve", "app:app", "--reload", "--port", "0"],
            cwd=project,
            stdout=sink,
            stderr=sink,
        )
    try:
        deadline = time.monotonic() + WAIT
        while not re.search(READY, output.read_text()):
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.05)
        port = int(re.findall(SUPERVISOR_ON, output.read_text())[0])
        for _ in range(5):  # each request logs an access line into out.txt
            assert get(port).body == b"v1"
        time.sleep(1.0)  # twenty watcher steps: a restart would have begun by now
        assert len(re.findall(READY, output.read_text())) == 1, output.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(WAIT)


def test_reload_exclude_relative_glob(project: Path, reloader: Callable[..., Reloader]) -> None:
    (project / "generated").mkdir()
    server = reloader("--reload-exclude", "generated/*", "--reload-exclude", "docs")
    server.wait_ready()
    (project / "generated" / "models.py").write_text("X = 1\n")
    (project / "docs").mkdir()
    (project / "docs" / "conf.py").write_text("X = 1\n")
    time.sleep(0.3)
    (project / "app.py").write_text(wsgi_source("v2"))
    assert server.wait_for(RELOADED).group(1) == "app.py"
    wait_for_body(server.port, b"v2")


def test_reload_include_restarts_on_another_suffix(
    project: Path, reloader: Callable[..., Reloader]
) -> None:
    """--reload-include replaces the default set (CLI help, README): `*.py` is passed again."""
    server = reloader("--reload-include", "*.py", "--reload-include", "*.sql")
    server.wait_ready()
    (project / "schema.sql").write_text("create table t (id integer);\n")
    assert server.wait_for(RELOADED).group(1) == "schema.sql"
    server.wait_ready(2)
    (project / "app.py").write_text(wsgi_source("v2"))
    assert server.wait_for(RELOADED, 2).group(1) == "app.py"
    wait_for_body(server.port, b"v2")


# ---------------------------------------------------------------- the error page


def assert_error_page(port: int, *expected: str) -> None:
    """500 with the error as HTML for a browser, as plain text for anything else."""
    html = get(port, accept="text/html,application/xhtml+xml,*/*;q=0.8")
    assert html.status == 500
    assert html.content_type == "text/html; charset=utf-8"
    assert html.text.startswith("<!DOCTYPE html>")
    plain = get(port)
    assert plain.status == 500
    assert plain.content_type == "text/plain; charset=utf-8"
    as_json = get(port, accept="application/json")
    assert as_json.content_type == "text/plain; charset=utf-8"
    for text in expected:
        assert text in plain.text, plain.text
        assert text.replace("'", "&#x27;") in html.text, html.text


@pytest.mark.both
def test_syntax_error_shows_error_page_then_recovers(
    project: Path, reloader: Callable[..., Reloader]
) -> None:
    server = reloader()
    first = server.wait_ready()
    (project / "app.py").write_text("import os\n\ndef app(environ, start_response:\n")
    server.wait_for(r"ERROR +The application could not be imported: ")
    assert_error_page(
        server.port,
        "The application could not be imported",
        "SyntaxError",
        f"{project / 'app.py'}, line 3",
    )
    assert wait_gone({first}) == set()
    (project / "app.py").write_text(wsgi_source("fixed"))
    wait_for_body(server.port, b"fixed")
    server.wait_ready(2)


@pytest.mark.both
@pytest.mark.parametrize(
    ("source", "error"),
    [
        (
            "import os\n\nraise RuntimeError('database is down')\n",
            "RuntimeError: database is down",
        ),
        (
            "import os\nimport missing_dependency_xyz\n",
            "ModuleNotFoundError: No module named 'missing_dependency_xyz'",
        ),
        ("from os import no_such_name\n", "ImportError: cannot import name 'no_such_name'"),
    ],
    ids=["exception", "missing-module", "import-error"],
)
def test_import_time_errors_show_error_page(
    project: Path, reloader: Callable[..., Reloader], source: str, error: str
) -> None:
    (project / "app.py").write_text(source)
    server = reloader()
    server.wait_for(r"ERROR +The application could not be imported: ")
    assert_error_page(server.port, "The application could not be imported", error, "app.py")
    plain = get(server.port).text
    assert "Traceback" in plain
    assert 'File "' in plain
    assert "importlib" not in plain  # the loader's frames are left out
    (project / "app.py").write_text(wsgi_source("fixed"))
    wait_for_body(server.port, b"fixed")


@pytest.mark.both
def test_crashed_worker_shows_crash_page_until_next_save(
    project: Path, reloader: Callable[..., Reloader]
) -> None:
    server = reloader()
    pid = server.wait_ready()
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        get(server.port, "/crash")
    server.wait_for(rf"ERROR +Worker {pid} exited unexpectedly \(exit code ")
    assert wait_gone({pid}) == set()
    assert_error_page(server.port, "The worker exited unexpectedly", "save a file to restart it")
    (project / "app.py").write_text(wsgi_source("v2"))
    wait_for_body(server.port, b"v2")


@pytest.mark.both
def test_crash_page_names_the_exit_code(reloader: Callable[..., Reloader]) -> None:
    """The first worker's template is replaced once it reports the app's modules: retired, it
    stays to reap its worker and report the exit code, then exits."""
    server = reloader()
    pid = server.wait_ready()
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        get(server.port, "/crash")
    server.wait_for(rf"ERROR +Worker {pid} exited unexpectedly \(exit code 17\)")
    assert_error_page(server.port, "exit code 17")
    if server.spawns:
        return  # the supervisor's own child: no template
    # One template left: a retired one exits after its last worker.
    deadline = time.monotonic() + WAIT
    while len(templates := children(server.proc.pid)) > 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(templates) == 1


HANGING_IMPORT = """\
import os
import sys
import time


def wait_for_the_database():
    print("app: hanging", os.getpid(), file=sys.stderr, flush=True)
    time.sleep(3600)


wait_for_the_database()
"""


def test_save_replaces_a_worker_whose_import_hangs(
    project: Path, reloader: Callable[..., Reloader]
) -> None:
    """An import that never ends (a loop, a network call without a timeout): the next save
    does not wait for it. The old worker serves meanwhile."""
    server = reloader()
    first = server.wait_ready()
    (project / "app.py").write_text(HANGING_IMPORT)
    hanging = int(server.wait_for(r"app: hanging (\d+)").group(1))
    assert get(server.port).body == b"v1"
    (project / "app.py").write_text(wsgi_source("v3"))
    wait_for_body(server.port, b"v3")
    assert wait_gone({hanging, first}) == set()
    assert server.matches(RELOADED)[-1].group(1) == "app.py"


@pytest.mark.both
def test_worker_start_timeout_shows_where_the_import_hangs(
    project: Path, reloader: Callable[..., Reloader]
) -> None:
    (project / "app.py").write_text(HANGING_IMPORT)
    server = reloader("--timeout-worker-start", "1")
    hanging = int(server.wait_for(r"app: hanging (\d+)").group(1))
    server.wait_for(
        r"ERROR +The app took too long to start: it was not serving after 1 s "
        r"\(--timeout-worker-start\)"
    )
    assert wait_gone({hanging}) == set()
    # faulthandler's dump: the frame the import was in, with its file and function.
    assert_error_page(
        server.port, "The app took too long to start", "app.py", "in wait_for_the_database"
    )
    (project / "app.py").write_text(wsgi_source("fixed"))
    wait_for_body(server.port, b"fixed")


LIFESPAN_FAILS = """\
async def app(scope, receive, send):
    assert scope["type"] == "lifespan"
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "no route to db.internal:5432"})
"""


@pytest.mark.both
def test_lifespan_startup_failure_is_shown_with_its_message(
    project: Path, reloader: Callable[..., Reloader]
) -> None:
    (project / "app.py").write_text(LIFESPAN_FAILS)
    server = reloader()
    server.wait_for(r"ERROR +The application failed to start: ")
    assert_error_page(server.port, "The application failed to start", "no route to db.internal")
    (project / "app.py").write_text(asgi_source("fixed"))
    wait_for_body(server.port, b"fixed")


LATE_IMPORT = """\
import sys

# Whether the template this worker was forked from had imported it already.
PRELOADED = "xml.dom.minidom" in sys.modules
# {marker}


def app(environ, start_response):
    import xml.dom.minidom  # first imported by a request, as Django imports views

    body = str(PRELOADED).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


def test_modules_the_first_requests_import_are_preloaded_for_the_next_worker(
    project: Path, reloader: Callable[..., Reloader]
) -> None:
    (project / "app.py").write_text(LATE_IMPORT.format(marker="one"))
    server = reloader("--log-level", "debug")
    if server.spawns:
        pytest.skip("spawned workers import everything afresh: no template preloads")
    server.wait_ready()
    assert get(server.port).body == b"False"
    # The worker reports it a second after it is ready; a new template imports it.
    server.wait_for(r"A new template preloads \d+ modules more: .*\bxml\.dom\.minidom\b")
    (project / "app.py").write_text(LATE_IMPORT.format(marker="two"))
    wait_for_body(server.port, b"True")


def test_project_code_outside_the_watched_directory_is_never_preloaded(
    project: Path, reloader: Callable[..., Reloader]
) -> None:
    """With --reload-dir src, a module of the project outside src/ is not watched; it is still
    imported afresh by each new worker, never kept from an older one by the template."""
    (project / "src").mkdir()
    (project / "helper.py").write_text('VALUE = b"old"\n')
    (project / "app.py").write_text(
        "import helper\n\n\ndef app(environ, start_response):\n"
        '    start_response("200 OK", [])\n    return [helper.VALUE]\n'
    )
    server = reloader("--reload-dir", "src", "--log-level", "debug")
    if server.spawns:
        pytest.skip("spawned workers import everything afresh: no template preloads")
    server.wait_ready()
    assert get(server.port).body == b"old"
    server.wait_for(r"A new template preloads")
    (project / "helper.py").write_text('VALUE = b"newer"\n')
    (project / "src" / "touch.py").write_text("")
    wait_for_body(server.port, b"newer")
    for refresh in server.matches(r"A new template preloads \d+ modules more: (.*)"):
        assert "helper" not in refresh.group(1).split(", ")


@pytest.mark.both
def test_wsgiref_fallback_reloads(project: Path, reloader: Callable[..., Reloader]) -> None:
    server = reloader("--server", "wsgiref")
    server.wait_for(r"serving WSGI app app:app with wsgiref on ")
    first = server.wait_ready()
    assert get(server.port).body == b"v1"
    (project / "app.py").write_text(wsgi_source("v2"))
    wait_for_body(server.port, b"v2")
    assert wait_gone({first}) == set()
    server.proc.send_signal(signal.SIGINT)
    assert server.wait() == 0, server.log


def reload_under_a_slow_request(server: Reloader, project: Path) -> int:
    """Save a new version while the worker serves /slow: the new worker answers meanwhile, and
    the slow response still arrives whole. The old worker's pid."""
    old = server.wait_ready()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT)
    try:
        conn.request("GET", "/slow")
        response = conn.getresponse()
        assert response.status == 200
        server.wait_for("app: slow started")
        (project / "app.py").write_text(wsgi_source("v2"))
        server.wait_ready(2)
        wait_for_body(server.port, b"v2")
        assert response.read() == b"first-last-v1"
    finally:
        conn.close()
    return old


def test_wsgiref_worker_finishes_its_request_before_it_exits(
    project: Path, reloader: Callable[..., Reloader]
) -> None:
    """The fallback's connection threads are daemons: without the wait in its stop, the old
    worker's exit would cut the request it is serving."""
    server = reloader("--server", "wsgiref")
    old = reload_under_a_slow_request(server, project)
    assert wait_gone({old}) == set()
    server.proc.send_signal(signal.SIGINT)
    assert server.wait() == 0, server.log


# ---------------------------------------------------------------- requests across restarts


@pytest.mark.both
def test_request_in_flight_during_reload_completes(
    project: Path, reloader: Callable[..., Reloader]
) -> None:
    server = reloader("--log-level", "debug")  # a worker's "aserve stopped" is a debug line
    old = reload_under_a_slow_request(server, project)
    assert wait_gone({old}) == set()
    assert "Cancelling" not in server.log
    # The restart happened while the request was held open, not after it.
    server.wait_for(r"DEBUG +aserve stopped")
    log = server.log
    assert log.index("aserve stopped") > log.index("app: slow finished")
    assert log.index("app: slow finished") > log.index(server.wait_for(READY, 2).group(0))


@pytest.mark.both
def test_open_event_stream_does_not_hold_up_reload(
    project: Path, reloader: Callable[..., Reloader]
) -> None:
    """An endless response (SSE, a long poll) on the old worker: the new worker serves at
    once, and the old one cancels the stream after --timeout-graceful-shutdown."""
    (project / "app.py").write_text(asgi_source("one"))
    server = reloader("--timeout-graceful-shutdown", "0.5")
    old = server.wait_ready()
    with connect(server.port, timeout=WAIT) as client:
        client.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.head().status == 200
        assert b"data: tick" in client.part().data
        (project / "app.py").write_text(asgi_source("two"))
        wait_for_body(server.port, b"two")
        # Then the old worker gives up on the stream: the connection ends.
        deadline = time.monotonic() + WAIT
        for _ in client.parts():
            assert time.monotonic() < deadline, "the event stream was never closed"
        assert client.until_closed() == []
    assert wait_gone({old}) == set()
    server.wait_for(r"Cancelling 1 request\(s\) still running after 0\.5s")


def test_connection_opened_before_restart_is_answered(
    project: Path, reloader: Callable[..., Reloader]
) -> None:
    """A socket accepted by the old worker whose request comes just after the restart: the
    old worker answers it rather than close it unanswered (within worker.REPLACED_GRACE; a
    browser's spare connection left idle longer is closed, or the next page load would get
    the old code)."""
    server = reloader()
    server.wait_ready()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT)
    try:
        conn.connect()
        time.sleep(0.1)  # accepted by the only worker listening
        (project / "app.py").write_text(wsgi_source("v2"))
        server.wait_ready(2)
        time.sleep(0.02)  # the old worker has been told to stop
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 200
        assert response.read() in (b"v1", b"v2")
    finally:
        conn.close()


@pytest.mark.both
def test_no_request_refused_or_reset_while_editing(
    project: Path, reloader: Callable[..., Reloader]
) -> None:
    """Clients polling with a new connection per request across five restarts: every request
    is answered, by the old code or the new."""
    server = reloader()
    server.wait_ready()
    seen: list[bytes] = []  # each body, in the order first served
    failures: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                reply = get(server.port)
            except OSError as exc:  # refused, reset, closed without a response, timed out
                failures.append(repr(exc))
                continue
            if reply.status != 200:
                failures.append(f"{reply.status} {reply.text}")
            elif reply.body not in seen:
                seen.append(reply.body)

    pollers = [threading.Thread(target=poll) for _ in range(POLLERS)]
    for poller in pollers:
        poller.start()
    try:
        for version in range(2, 7):
            body = f"v{version}".encode()
            save_atomically(project / "app.py", wsgi_source(body.decode()))
            deadline = time.monotonic() + WAIT
            while body not in seen:
                assert time.monotonic() < deadline, f"{body!r} never served; saw {seen}"
                time.sleep(0.01)
    finally:
        stop.set()
        for poller in pollers:
            poller.join(WAIT)
    assert failures == []
    assert seen == [b"v1", b"v2", b"v3", b"v4", b"v5", b"v6"]
    # A worker serves a moment before the supervisor reads its Ready and logs "Reloaded".
    server.wait_ready(6)
    assert len(server.workers()) == 6


# ---------------------------------------------------------------- stopping


@pytest.mark.both
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_worker_and_supervisor(
    reloader: Callable[..., Reloader], sig: signal.Signals
) -> None:
    server = reloader("--log-level", "debug")  # a worker's "aserve stopped" is a debug line
    worker = server.wait_ready()
    assert get(server.port).body == b"v1"
    server.track()
    processes = set(server.descendants)
    assert worker in processes
    assert len(processes) >= (1 if server.spawns else 2)  # the template and the worker
    server.proc.send_signal(sig)
    assert server.wait() == 0, server.log
    assert wait_gone(processes, 5.0) == set()
    log = server.log
    assert f"{sig.name} received: stopping" in log
    assert re.search(r"DEBUG +aserve stopped$", log, re.MULTILINE)  # the worker drained
    assert log.rstrip().endswith("aserve supervisor stopped")
    assert "Traceback" not in log
    assert refused_soon(server.port)


def test_signal_lets_request_in_flight_finish(reloader: Callable[..., Reloader]) -> None:
    server = reloader()
    server.wait_ready()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT)
    try:
        conn.request("GET", "/slow")
        response = conn.getresponse()
        server.wait_for("app: slow started")
        server.proc.send_signal(signal.SIGTERM)
        assert response.read() == b"first-last-v1"
    finally:
        conn.close()
    assert server.wait() == 0, server.log


@pytest.mark.both
def test_second_ctrl_c_stops_at_once(reloader: Callable[..., Reloader]) -> None:
    """The first Ctrl-C waits for the request in flight (up to 30 s here); a second does not."""
    server = reloader("--timeout-graceful-shutdown", "30")
    worker = server.wait_ready()
    with connect(server.port, timeout=WAIT) as client:
        client.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        server.wait_for("app: slow started")
        server.proc.send_signal(signal.SIGINT)
        server.wait_for("SIGINT received: stopping")
        server.proc.send_signal(signal.SIGINT)
        assert server.wait() == 0, server.log
    assert wait_gone({worker}, 5.0) == set()


@pytest.mark.both
def test_stopping_refuses_new_connections_at_once(reloader: Callable[..., Reloader]) -> None:
    """While the last requests finish, a new client is refused rather than left waiting in a
    backlog nobody will accept from."""
    server = reloader()
    server.wait_ready()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT)
    try:
        conn.request("GET", "/slow")
        response = conn.getresponse()
        server.wait_for("app: slow started")
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for("SIGTERM received: stopping")
        assert refused_soon(server.port, 0.5), "still accepting connections while stopping"
        assert response.read() == b"first-last-v1"
    finally:
        conn.close()
    assert server.wait() == 0, server.log


@pytest.mark.both
def test_worker_never_outlives_a_killed_supervisor(reloader: Callable[..., Reloader]) -> None:
    server = reloader()
    worker = server.wait_ready()
    assert get(server.port).body == b"v1"
    server.track()
    processes = set(server.descendants)
    assert worker in processes
    server.proc.kill()
    assert server.wait() == -signal.SIGKILL
    assert wait_gone(processes, 5.0) == set()


# ---------------------------------------------------------------- the app's own part in reloading

LINKED_APP = """\
import os
from pathlib import Path

from aserve.reload.worker import current_link

PAGES = Path(__file__).parent / "pages"


def make():
    link = current_link()
    if link is not None:
        link.watch_dir(str(PAGES), "**/*.page")
        # As Django's template receiver: a page edit needs no restart, only a fresh read.
        link.on_change(lambda paths: all(path.endswith(".page") for path in paths))

    def app(environ, start_response):
        body = (PAGES / "index.page").read_bytes() + b" " + str(os.getpid()).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    return app
"""


@pytest.mark.both
@pytest.mark.parametrize("dirs", [[], ["--reload-dir", "src"]], ids=["project", "elsewhere"])
def test_an_app_that_takes_in_its_own_changes_is_not_restarted(
    project: Path, reloader: Callable[..., Reloader], dirs: list[str]
) -> None:
    # "elsewhere": only src/ is watched, so the pages directory the app asks for is a new root.
    (project / "src").mkdir()
    (project / "pages").mkdir()
    (project / "pages" / "index.page").write_text("first")
    (project / "linked.py").write_text(LINKED_APP)
    server = reloader("--factory", *dirs, app="linked:make")
    pid = server.wait_ready()
    if dirs:
        server.wait_for(r"Also watching .*pages, as the app asked")
    assert get(server.port).body == b"first %d" % pid
    # *.page is no default include: it is watched because the app asked.
    save_atomically(project / "pages" / "index.page", "second")
    server.wait_for(r"Changed: .*index\.page; the app took it in without a restart")
    assert get(server.port).body == b"second %d" % pid
    assert server.workers() == [pid]
    # A change the app does not take in restarts as usual.
    save_atomically(project / "src" / "other.py", "X = 1\n")
    server.wait_ready(2)
    assert server.workers()[-1] != pid


def test_forked_workers_over_stream_ipc(project: Path) -> None:
    """macOS with --reload-worker fork: a template and its workers on stream sockets, the
    template's exit codes and module reports on them too."""
    (project / "app.py").write_text(LATE_IMPORT.format(marker="one"))
    server = Reloader(project, "--reload-worker", "fork", "--log-level", "debug", portable=True)
    try:
        assert not server.spawns
        pid = server.wait_ready()
        assert parent(parent(pid)) == server.proc.pid  # the worker is a template's child
        assert get(server.port).body == b"False"
        server.wait_for(r"A new template preloads \d+ modules more: .*\bxml\.dom\.minidom\b")
        (project / "app.py").write_text(LATE_IMPORT.format(marker="two"))
        wait_for_body(server.port, b"True")
        (project / "app.py").write_text(wsgi_source("v2"))
        wait_for_body(server.port, b"v2")
        # The third worker: it may answer before the supervisor has logged it ready.
        crashed = server.wait_ready(3)
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            get(server.port, "/crash")
        server.wait_for(rf"ERROR +Worker {crashed} exited unexpectedly \(exit code 17\)")
    finally:
        server.close()


def test_a_worker_forked_after_a_template_retired_is_heard(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A template retired while the supervisor's loop waits on its channel (stream framing,
    asyncio's loop: macOS with --reload-worker fork), then a worker forked whose channel gets
    the same descriptor number: its Ready must reach the supervisor. It once did not: the
    supervisor never saw the worker ready while it served, and the next edit killed it with
    requests in flight."""
    monkeypatch.setenv(PORTABLE_ENV, "1")
    monkeypatch.chdir(project)  # where the template's workers import the app from

    async def scenario() -> bool:
        with socket.create_server(("127.0.0.1", 0)) as listen:
            listen.set_inheritable(True)
            config = Config(port=listen.getsockname()[1], reload=True, loop="asyncio")
            current = await Template.start(BASE_PRELOAD, listen)
            retired = await Template.start(BASE_PRELOAD, listen)
            await asyncio.sleep(0.1)  # its reader waits on the channel
            number = retired.control.fileno()
            await retired.retire()  # no worker of its own: it exits now
            worker = current.fork(Fork("app:app", dataclasses.asdict(config), announce=False))
            try:
                assert worker.channel.fileno() == number
                return await asyncio.wait_for(worker.started(), WAIT)
            finally:
                worker.abandon()  # a worker the loop cannot hear would never be seen to exit
                await current.close()

    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        assert runner.run(scenario())
