"""Reload latency: how long after a save a development server answers with the new code.

A fresh `django-admin startproject` gets a one-line view; the script rewrites that view N times
and, from the instant of each write, polls the page until the new version answers, counting the
refused, failed and non-200 requests on the way. aserve --reload, uvicorn --reload and Django's
runserver take turns in one run. `.venv/bin/python benchmarks/reload_latency.py`; see
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

# Run as a script, this file has benchmarks/ first on sys.path, not the repository root that
# holds the tests' response parser.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.client import Client  # noqa: E402
from tests.support.http import FramingError  # noqa: E402

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
URL_PATH = "/version/"
REFERENCE = "aserve"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
LEFTOVER_GRACE = 3.0
PROBE_TIMEOUT = 10.0
EXIT_SERVER_FAILED = 1
EXIT_USAGE = 2

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
PLUGIN_SETTINGS = "settings_aserve"
PLUGIN_SETTINGS_SOURCE = """from mysite.settings import *  # noqa: F403

INSTALLED_APPS = ["aserve.django", *INSTALLED_APPS]  # noqa: F405
"""


# -- the servers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    name: str
    command: Callable[[int], list[str]]
    missing: Callable[[], str | None]


def _tool(name: str) -> str | None:
    """A console script of the running interpreter's environment (the venv), else on PATH."""
    candidate = BIN / name
    if candidate.exists():
        return str(candidate)
    return shutil.which(name)


def _needs(tool: str) -> Callable[[], str | None]:
    def missing() -> str | None:
        return None if _tool(tool) else f"{tool} is not installed"

    return missing


def _django_missing() -> str | None:
    try:
        metadata.version("django")
    except metadata.PackageNotFoundError:
        return "Django is not installed"
    return None


def _aserve(port: int) -> list[str]:
    return [
        _tool("aserve") or "aserve",
        "mysite.wsgi:application",
        "--reload",
        "--host",
        HOST,
        "--port",
        str(port),
    ]


def _aserve_spawn(port: int) -> list[str]:
    """aserve --reload with each worker a fresh interpreter, as on macOS and Windows."""
    return [*_aserve(port), "--reload-worker", "spawn"]


def _uvicorn(port: int) -> list[str]:
    return [
        _tool("uvicorn") or "uvicorn",
        "mysite.wsgi:application",
        "--reload",
        "--interface",
        "wsgi",
        "--host",
        HOST,
        "--port",
        str(port),
    ]


def _runserver(port: int) -> list[str]:
    return [sys.executable, "manage.py", "runserver", f"{HOST}:{port}"]


def _runserver_aserve(port: int) -> list[str]:
    """The same `manage.py runserver`, with aserve's Django plugin first in INSTALLED_APPS."""
    settings = f"--settings=mysite.{PLUGIN_SETTINGS}"
    return [sys.executable, "manage.py", "runserver", settings, f"{HOST}:{port}"]


SERVERS = {
    spec.name: spec
    for spec in (
        ServerSpec("aserve", _aserve, _needs("aserve")),
        ServerSpec("aserve-spawn", _aserve_spawn, _needs("aserve")),
        ServerSpec("uvicorn", _uvicorn, _needs("uvicorn")),
        ServerSpec("runserver", _runserver, _django_missing),
        ServerSpec("runserver-aserve", _runserver_aserve, _django_missing),
    )
}


# -- the project -----------------------------------------------------------------------------


def view_source(version: int, view_import: str) -> str:
    """The view at `version`; with `view_import`, the view imports that module when first
    called, as a view that pulls in a library lazily does."""
    imports = f"import {view_import}  # noqa: F401\n    " if view_import else ""
    return VIEW_SOURCE.format(version=version, imports=imports)


def make_project(directory: Path, view_import: str = "") -> Path:
    """`django-admin startproject mysite .` plus the view the benchmark edits; its path."""
    admin = _tool("django-admin")
    command = [admin] if admin else [sys.executable, "-m", "django"]
    subprocess.run(
        [*command, "startproject", "mysite", "."],
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
    request = (
        f"GET {URL_PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode()
    )
    try:
        sock = socket.create_connection((HOST, port), timeout=PROBE_TIMEOUT)
    except ConnectionRefusedError:
        return Probe("refused")
    except OSError:
        return Probe("error")
    with sock:
        try:
            sock.sendall(request)
            responses = Client(sock).until_closed()
        except (OSError, FramingError):
            return Probe("error")
    if len(responses) != 1:
        return Probe("error")
    return Probe("ok", responses[0].status, responses[0].body)


def marker(version: int) -> bytes:
    return b"version=%d;" % version


@dataclass
class Edit:
    """One save and the polling until the new version answered."""

    version: int
    latency_ms: float | None = None
    polls: int = 0
    stale: int = 0
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


# -- process handling ------------------------------------------------------------------------


_TICK = os.sysconf("SC_CLK_TCK")
CPUS = os.cpu_count() or 1


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def descendants(root: int) -> list[int]:
    """`root` and every process below it (aserve's template runs in a session of its own, but
    it stays the supervisor's child)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found


def tree_cpu_s(root: int) -> float:
    total = 0
    for pid in descendants(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = _stat_fields(pid)
            # utime, stime, and the times of reaped children: a worker that exits during the
            # measurement stays counted through its parent.
            total += sum(int(value) for value in fields[11:15])
    return total / _TICK


def wait_quiet(root: int, limit: float, threshold: float = 0.1, window: float = 0.1) -> None:
    """Wait (at most `limit` seconds) until the server's processes use less than `threshold`
    of a CPU over `window` seconds: old workers drained, caches warmed, templates refreshed."""
    deadline = time.monotonic() + limit
    before = tree_cpu_s(root)
    while time.monotonic() < deadline:
        time.sleep(window)
        after = tree_cpu_s(root)
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


@contextlib.contextmanager
def running(
    spec: ServerSpec, port: int, project: Path, log: IO[bytes]
) -> Iterator[subprocess.Popen[bytes]]:
    """The server in a process group of its own, stopped as a terminal's Ctrl-C would: SIGINT
    to the group, SIGKILL after `STOP_TIMEOUT`."""
    process = subprocess.Popen(
        spec.command(port),
        cwd=project,
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
        # Children may still be finishing their own shutdown; whatever outlives this grace
        # period is reported and killed.
        deadline = time.monotonic() + LEFTOVER_GRACE
        while (leftovers := processes_in(project)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in leftovers:
            with contextlib.suppress(OSError):
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                print(f"  {spec.name}: killing leftover {pid}: {command.decode()}", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def stop(process: subprocess.Popen[bytes]) -> None:
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


def machine_busy_s() -> float:
    """CPU seconds all CPUs of the machine spent busy since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / _TICK


@dataclass(frozen=True)
class CpuSnapshot:
    """What the machine, the server's processes and this script had used at one instant."""

    wall: float
    machine: float
    server: float
    own: float

    @classmethod
    def take(cls, server: int) -> CpuSnapshot:
        return cls(time.monotonic(), machine_busy_s(), tree_cpu_s(server), time.process_time())

    def other_load(self, later: CpuSnapshot) -> float:
        """The share of the machine's CPUs that other processes used in between."""
        wall = later.wall - self.wall
        if wall <= 0:
            return 0.0
        ours = (later.server - self.server) + (later.own - self.own)
        other = max(0.0, later.machine - self.machine - ours)
        return min(1.0, other / (wall * CPUS))


def wait_machine_quiet(limit: float, threshold: float, window: float = 0.3) -> None:
    """Wait (at most `limit` seconds) until the whole machine is under `threshold` busy over
    `window` seconds: other processes (test suites on a shared machine) skew latencies."""
    deadline = time.monotonic() + limit
    while True:
        before, started = machine_busy_s(), time.monotonic()
        time.sleep(window)
        busy = (machine_busy_s() - before) / ((time.monotonic() - started) * CPUS)
        if busy < threshold or time.monotonic() > deadline:
            return


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# -- measuring -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    servers: list[str]
    edits: int
    gap: float
    interval: float
    edit_timeout: float
    settle: float
    machine_settle: float
    machine_quiet: float
    json_path: Path | None
    view_import: str = ""


@dataclass
class Result:
    name: str
    command: list[str]
    startup_s: float | None = None
    edits: list[Edit] = field(default_factory=list)
    failure: str | None = None

    def latencies(self) -> list[float]:
        return [e.latency_ms for e in self.edits if e.latency_ms is not None]

    def total(self, counter: str) -> int:
        return sum(int(getattr(e, counter)) for e in self.edits)

    @property
    def missed(self) -> int:
        return sum(1 for e in self.edits if e.latency_ms is None)

    def percentile(self, fraction: float) -> float | None:
        values = sorted(self.latencies())
        if not values:
            return None
        if len(values) == 1:
            return values[0]
        # Linear interpolation between the closest ranks (numpy's default).
        rank = fraction * (len(values) - 1)
        low = int(rank)
        high = min(low + 1, len(values) - 1)
        return values[low] + (values[high] - values[low]) * (rank - low)

    def summary(self) -> dict[str, Any]:
        values = self.latencies()
        return {
            "p50_ms": self.percentile(0.5),
            "p90_ms": self.percentile(0.9),
            "max_ms": max(values) if values else None,
            "mean_ms": statistics.fmean(values) if values else None,
            "refused": self.total("refused"),
            "errors": self.total("errors"),
            "non_200": self.total("non_200"),
            "missed": self.missed,
            "edits_with_refused": sum(1 for e in self.edits if e.refused),
            "other_load": statistics.median(e.other_load for e in self.edits)
            if self.edits
            else None,
        }


def measure(spec: ServerSpec, project: Path, view: ViewEditor, settings: Settings) -> Result:
    port = free_port()
    result = Result(spec.name, spec.command(port))
    print(f"{spec.name}: {' '.join(result.command)}", file=sys.stderr)
    with tempfile.TemporaryFile() as log, running(spec, port, project, log) as process:
        started = time.perf_counter()
        while True:
            if process.poll() is not None:
                result.failure = f"exited with code {process.returncode}:\n{tail(log)}"
                return result
            answer = probe(port)
            if answer.outcome == "ok" and answer.status == 200 and marker(0) in answer.body:
                break
            if time.perf_counter() - started > START_TIMEOUT:
                result.failure = f"no version 0 after {START_TIMEOUT:.0f} s:\n{tail(log)}"
                return result
            time.sleep(0.02)
        result.startup_s = time.perf_counter() - started
        print(f"  {spec.name}: serving after {result.startup_s:.2f} s", file=sys.stderr)
        time.sleep(settings.settle)
        wait_quiet(process.pid, limit=5.0)
        for version in range(1, settings.edits + 1):
            wait_machine_quiet(settings.machine_settle, settings.machine_quiet)
            before = CpuSnapshot.take(process.pid)
            begun = time.perf_counter()
            view.write(version)
            edit = poll_until(port, version, begun, settings.interval, settings.edit_timeout)
            edit.other_load = before.other_load(CpuSnapshot.take(process.pid))
            result.edits.append(edit)
            print(f"  {spec.name}: {_edit_line(edit)}", file=sys.stderr)
            if edit.latency_ms is None:
                result.failure = f"version {version} never answered:\n{tail(log)}"
                break
            time.sleep(settings.gap)
            wait_quiet(process.pid, limit=3.0)
    # The next server starts from version 0 again.
    view.write(0)
    return result


def _edit_line(edit: Edit) -> str:
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
    tail_text = f" ({', '.join(extras)})" if extras else ""
    return (
        f"edit {edit.version:2d}: {latency}, {edit.polls} polls, "
        f"other CPU {edit.other_load:.0%}{tail_text}"
    )


# -- reporting -------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def format_table(results: Sequence[Result]) -> str:
    reference = next((r for r in results if r.name == REFERENCE), None)
    base = reference.percentile(0.5) if reference else None
    header = [
        "server",
        "edits",
        "p50 ms",
        "p90 ms",
        "max ms",
        "refused",
        "errors",
        "non-200",
        "missed",
        "start s",
        "other CPU",
        "p50 / aserve",
    ]
    rows = []
    for result in results:
        stats = result.summary()
        p50 = stats["p50_ms"]
        ratio = "-" if base is None or p50 is None else f"{p50 / base:.2f}x"
        start = "-" if result.startup_s is None else f"{result.startup_s:.2f}"
        rows.append(
            [
                result.name,
                str(len(result.latencies())),
                _ms(p50),
                _ms(stats["p90_ms"]),
                _ms(stats["max_ms"]),
                f"{stats['refused']:,}",
                str(stats["errors"]),
                str(stats["non_200"]),
                str(stats["missed"]),
                start,
                "-" if stats["other_load"] is None else f"{stats['other_load']:.0%}",
                ratio,
            ]
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                model = text.partition(":")[2].strip()
                break
    versions: dict[str, str] = {}
    for package in ("aserve", "django", "uvicorn", "watchfiles", "uvloop", "a2wsgi"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    loadavg = "unknown"
    with contextlib.suppress(OSError):
        loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": loadavg,
        "versions": versions,
    }


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        description="Reload latency of aserve --reload, uvicorn --reload and runserver on a "
        "fresh Django project.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--edits", type=int, default=20, help="Saves per server.")
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"Comma-separated, run in this order; from {', '.join(SERVERS)}.",
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write all figures here.")
    parser.add_argument(
        "--gap", type=float, default=0.5, help="Seconds between an answer and the next save."
    )
    parser.add_argument("--interval", type=float, default=0.001, help="Seconds between two polls.")
    parser.add_argument(
        "--edit-timeout",
        type=float,
        default=20.0,
        help="Seconds to wait for a version before counting it missed.",
    )
    parser.add_argument(
        "--settle", type=float, default=1.0, help="Seconds between first answer and first save."
    )
    parser.add_argument(
        "--machine-settle",
        type=float,
        default=10.0,
        help="Before each save, wait at most this long for the machine to be quiet.",
    )
    parser.add_argument(
        "--machine-quiet",
        type=float,
        default=0.15,
        help="Quiet means under this share of all CPUs busy.",
    )
    parser.add_argument(
        "--view-import",
        default="",
        metavar="MODULE",
        help="The view imports this module on its first call (a heavy library: hypothesis).",
    )
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.servers.split(",") if name.strip()]
    unknown = [name for name in names if name not in SERVERS]
    if unknown or not names:
        parser.error(f"unknown server(s) {', '.join(unknown)}; choose from {', '.join(SERVERS)}")
    if args.edits < 1:
        parser.error("--edits must be at least 1")
    return Settings(
        servers=names,
        edits=args.edits,
        gap=args.gap,
        interval=args.interval,
        edit_timeout=args.edit_timeout,
        settle=args.settle,
        machine_settle=args.machine_settle,
        machine_quiet=args.machine_quiet,
        json_path=args.json,
        view_import=args.view_import,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    specs = []
    for name in settings.servers:
        reason = SERVERS[name].missing()
        if reason:
            print(f"skipping {name}: {reason}", file=sys.stderr)
        else:
            specs.append(SERVERS[name])
    if not specs:
        print("no server to measure", file=sys.stderr)
        return EXIT_USAGE
    host = machine()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="reload-latency-") as temp:
        project = Path(temp).resolve()
        view = ViewEditor(make_project(project, settings.view_import), settings.view_import)
        for spec in specs:
            results.append(measure(spec, project, view, settings))
    print(format_table(results))
    for result in results:
        if result.failure:
            print(f"\n{result.name} FAILED: {result.failure}", file=sys.stderr)
    if settings.json_path is not None:
        report = {
            "machine": host,
            "settings": {k: v for k, v in asdict(settings).items() if k != "json_path"},
            "results": [
                {
                    "name": r.name,
                    "command": r.command,
                    "startup_s": r.startup_s,
                    "failure": r.failure,
                    **r.summary(),
                    "edits": [asdict(e) for e in r.edits],
                }
                for r in results
            ],
        }
        settings.json_path.write_text(json.dumps(report, indent=2) + "\n")
    return EXIT_SERVER_FAILED if any(r.failure for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
