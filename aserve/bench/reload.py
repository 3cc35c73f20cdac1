"""The reload scenario: how long after a save a development server answers with the new code,
and how many requests it refuses or fails on the way.

A fresh `django-admin startproject` gets a one-line view; each save rewrites that view and,
from the instant of the write, the page is requested every millisecond until the new version
answers. `aserve-bench --scenarios reload` and `benchmarks/reload_latency.py` both run this.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from aserve.bench.peers import HOST, PLUGIN_SETTINGS, Peer
from aserve.bench.stats import foreign_share
from aserve.bench.system import Ticks, pinned, tree_cpu_s, wait_until_quiet

URL_PATH = "/version/"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
# Children may still be finishing their own shutdown after the server exits; whatever outlives
# this grace period is reported and killed.
LEFTOVER_GRACE = 3.0
PROBE_TIMEOUT = 10.0

VIEW_SOURCE = """\
from django.http import HttpResponse

VERSION = {version}


def version(request):
    {imports}return HttpResponse(f"version={{VERSION}};", content_type="text/plain")
"""
URLS_SUFFIX = """
from mysite import views  # noqa: E402

urlpatterns += [path("version/", views.version)]
"""
# The runserver-aserve peer's settings: the project's, with "aserve.django" first, as the
# README tells a Django user to add it.
PLUGIN_SETTINGS_SOURCE = """from mysite.settings import *  # noqa: F403

INSTALLED_APPS = ["aserve.django", *INSTALLED_APPS]  # noqa: F405
"""

Say = Callable[[str], None]


def _silent(line: str) -> None:
    pass


@dataclass(frozen=True)
class ReloadSettings:
    """The size and pace of a reload run (`benchmarks/reload_latency.py --help` describes
    each)."""

    edits: int = 20
    gap: float = 0.5
    # A random extra wait of up to this many seconds before each save. Without it the saves
    # fall into step with a reloader that polls on a clock (runserver's StatReloader looks once
    # a second): every save then lands at the same point of its period, and its latency is
    # that one point's instead of an average over the period, as a developer's saves are.
    jitter: float = 1.0
    interval: float = 0.001
    edit_timeout: float = 20.0
    settle: float = 1.0
    machine_settle: float = 10.0
    machine_quiet: float = 0.15
    view_import: str = ""


# -- the project -----------------------------------------------------------------------------


def view_source(version: int, view_import: str = "") -> str:
    """The view at `version`; with `view_import`, the view imports that module when first
    called, as a view that pulls in a library lazily does."""
    imports = f"import {view_import}  # noqa: F401\n    " if view_import else ""
    return VIEW_SOURCE.format(version=version, imports=imports)


def django_admin() -> list[str]:
    candidate = Path(sys.executable).parent / "django-admin"
    return [str(candidate)] if candidate.exists() else [sys.executable, "-m", "django"]


def make_project(directory: Path, view_import: str = "") -> Path:
    """`django-admin startproject mysite .` plus the view the benchmark edits; its path."""
    subprocess.run(
        [*django_admin(), "startproject", "mysite", "."],
        cwd=directory,
        check=True,
        capture_output=True,
    )
    view = directory / "mysite" / "views.py"
    view.write_text(view_source(0, view_import))
    with (directory / "mysite" / "urls.py").open("a") as urls:
        urls.write(URLS_SUFFIX)
    (directory / "mysite" / f"{PLUGIN_SETTINGS}.py").write_text(PLUGIN_SETTINGS_SOURCE)
    return view


class ViewEditor:
    """Rewrites the view in place, as an editor saving the file does.

    Each write moves the mtime forward by at least a second: Django's StatReloader restarts
    only on a later mtime, and Python trusts a .pyc whose recorded mtime (whole seconds) and
    source size match, which same-size versions written within one second would.
    """

    def __init__(self, path: Path, view_import: str = "") -> None:
        self.path = path
        self.view_import = view_import
        self.mtime_ns = path.stat().st_mtime_ns

    def write(self, version: int) -> None:
        with self.path.open("w") as source:
            source.write(view_source(version, self.view_import))
        self.mtime_ns = max(time.time_ns(), self.mtime_ns + 1_000_000_000)
        os.utime(self.path, ns=(self.mtime_ns, self.mtime_ns))


@contextlib.contextmanager
def project(view_import: str = "") -> Iterator[tuple[Path, ViewEditor]]:
    """A fresh project in a temporary directory, deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="reload-latency-") as temp:
        directory = Path(temp).resolve()
        yield directory, ViewEditor(make_project(directory, view_import), view_import)


def server_environment() -> dict[str, str]:
    env = dict(os.environ)
    # Bytecode caching on, as on a developer's machine: the servers' __pycache__ writes are
    # part of what a file watcher sees after each restart.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- probing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One request on a new connection: `outcome` is ok, refused or error; `status` and `body`
    are set when a response arrived."""

    outcome: str
    status: int = 0
    body: bytes = b""


def probe(port: int) -> Probe:
    connection = http.client.HTTPConnection(HOST, port, timeout=PROBE_TIMEOUT)
    try:
        connection.request("GET", URL_PATH, headers={"Connection": "close"})
        response = connection.getresponse()
        body = response.read()
    except ConnectionRefusedError:
        return Probe("refused")
    except (OSError, http.client.HTTPException):
        # Reset, closed without a response, or a response cut short.
        return Probe("error")
    finally:
        connection.close()
    return Probe("ok", response.status, body)


def marker(version: int) -> bytes:
    return b"version=%d;" % version


@dataclass
class Edit:
    """One save and the polling until the new version answered."""

    version: int
    latency_ms: float | None = None
    polls: int = 0
    stale: int = 0
    # The share of the machine's CPUs that processes other than the server and the harness
    # used meanwhile: contention, when far from 0.
    other_load: float = 0.0
    refused: int = 0
    errors: int = 0
    non_200: int = 0


def poll_until(port: int, version: int, started: float, interval: float, timeout: float) -> Edit:
    edit = Edit(version)
    expected = marker(version)
    while True:
        result = probe(port)
        now = time.perf_counter()
        edit.polls += 1
        if result.outcome == "refused":
            edit.refused += 1
        elif result.outcome == "error":
            edit.errors += 1
        elif result.status != 200:
            edit.non_200 += 1
        elif expected in result.body:
            edit.latency_ms = (now - started) * 1e3
            return edit
        else:
            edit.stale += 1
        if now - started > timeout:
            return edit
        time.sleep(interval)


# -- processes -------------------------------------------------------------------------------


def wait_idle(root: int, limit: float, threshold: float = 0.1, window: float = 0.1) -> None:
    """Wait (at most `limit` seconds) until the server's processes use less than `threshold`
    of a CPU over `window` seconds: old workers drained, caches warmed, templates refreshed."""
    deadline = time.monotonic() + limit
    before = tree_cpu_s(root, reaped=True)
    while time.monotonic() < deadline:
        time.sleep(window)
        after = tree_cpu_s(root, reaped=True)
        if after - before < threshold * window:
            return
        before = after


def processes_in(directory: Path) -> list[int]:
    """Processes whose working directory is `directory`: what a server left behind."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if Path(os.readlink(entry / "cwd")) == directory:
                    found.append(int(entry.name))
    return found


def tail(log: IO[bytes], limit: int = 3000) -> str:
    log.flush()
    log.seek(0, os.SEEK_END)
    log.seek(max(0, log.tell() - limit))
    return log.read().decode("utf-8", "replace")


def stop(process: subprocess.Popen[bytes]) -> None:
    """As a terminal's Ctrl-C stops a server: SIGINT to its process group, SIGKILL after
    `STOP_TIMEOUT`."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def running(
    name: str,
    command: list[str],
    directory: Path,
    log: IO[bytes],
    say: Say = _silent,
    cpu: int | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """The server in a process group of its own (on `cpu` only, when given), stopped by
    `stop`; its leftovers killed."""
    process = subprocess.Popen(
        pinned(cpu, command),
        cwd=directory,
        env=server_environment(),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        stop(process)
        deadline = time.monotonic() + LEFTOVER_GRACE
        while (leftovers := processes_in(directory)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in leftovers:
            with contextlib.suppress(OSError):
                leftover = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                say(f"  {name}: killing leftover {pid}: {leftover.decode()}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True)
class CpuSnapshot:
    """What the machine, the server's processes and this process had used at one instant."""

    machine: Ticks
    server: float
    own: float

    @classmethod
    def take(cls, server: int) -> CpuSnapshot:
        return cls(Ticks.read(None), tree_cpu_s(server, reaped=True), time.process_time())

    def other_load(self, later: CpuSnapshot) -> float:
        """The share of the machine's CPUs that other processes used in between."""
        busy, elapsed = later.machine.busy_since(self.machine)
        ours = (later.server - self.server) + (later.own - self.own)
        return min(1.0, foreign_share(busy, ours, elapsed))


# -- measuring -------------------------------------------------------------------------------


@dataclass
class ReloadRun:
    """One server's saves in one round; `error` when it did not start or missed a version."""

    scenario: str
    server: str
    round: int
    command: list[str] = field(default_factory=list)
    startup_s: float | None = None
    edits: list[Edit] = field(default_factory=list)
    error: str | None = None

    def latencies(self) -> list[float]:
        return [e.latency_ms for e in self.edits if e.latency_ms is not None]


def edit_line(edit: Edit) -> str:
    latency = "missed" if edit.latency_ms is None else f"{edit.latency_ms:7.1f} ms"
    extras = [
        f"{count} {name}"
        for name, count in (
            ("refused", edit.refused),
            ("errors", edit.errors),
            ("non-200", edit.non_200),
        )
        if count
    ]
    extra = f" ({', '.join(extras)})" if extras else ""
    return (
        f"edit {edit.version:2d}: {latency}, {edit.polls} polls, "
        f"other CPU {edit.other_load:.0%}{extra}"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def measure(
    peer: Peer,
    directory: Path,
    view: ViewEditor,
    settings: ReloadSettings,
    say: Say = _silent,
    scenario: str = "reload",
    round_no: int = 0,
    cpu: int | None = None,
) -> ReloadRun:
    """Start `peer`'s reloading server in the project (on `cpu` only, when given), wait for
    version 0, then save the view `settings.edits` times, measuring each save; the view is back
    at version 0 afterwards."""
    if peer.reload is None:
        raise ValueError(f"{peer.name} has no reload command")
    port = _free_port()
    run = ReloadRun(scenario, peer.name, round_no, peer.reload(port))
    say(f"{peer.name}: {' '.join(run.command)}")
    try:
        with (
            tempfile.TemporaryFile() as log,
            running(peer.name, run.command, directory, log, say, cpu) as process,
        ):
            _edits(run, port, process, view, settings, say, log)
    finally:
        # The next server starts from version 0 again.
        view.write(0)
    return run


def _edits(
    run: ReloadRun,
    port: int,
    process: subprocess.Popen[bytes],
    view: ViewEditor,
    settings: ReloadSettings,
    say: Say,
    log: IO[bytes],
) -> None:
    started = time.perf_counter()
    while True:
        if process.poll() is not None:
            run.error = f"exited with code {process.returncode}:\n{tail(log)}"
            return
        answer = probe(port)
        if answer.outcome == "ok" and answer.status == 200 and marker(0) in answer.body:
            break
        if time.perf_counter() - started > START_TIMEOUT:
            run.error = f"no version 0 after {START_TIMEOUT:.0f} s:\n{tail(log)}"
            return
        time.sleep(0.02)
    run.startup_s = time.perf_counter() - started
    say(f"  {run.server}: serving after {run.startup_s:.2f} s")
    time.sleep(settings.settle)
    wait_idle(process.pid, limit=5.0)
    # The same waits for every server.
    jitter = random.Random(0)
    for version in range(1, settings.edits + 1):
        time.sleep(jitter.uniform(0, settings.jitter))
        wait_until_quiet(settings.machine_settle, settings.machine_quiet, window=0.3)
        before = CpuSnapshot.take(process.pid)
        begun = time.perf_counter()
        view.write(version)
        edit = poll_until(port, version, begun, settings.interval, settings.edit_timeout)
        edit.other_load = before.other_load(CpuSnapshot.take(process.pid))
        run.edits.append(edit)
        say(f"  {run.server}: {edit_line(edit)}")
        if edit.latency_ms is None:
            run.error = f"version {version} never answered:\n{tail(log)}"
            return
        time.sleep(settings.gap)
        wait_idle(process.pid, limit=3.0)
