"""Hello-world requests/s of aserve side by side with peers, measured with wrk in one run.

Every server runs the same app objects (benchmarks/apps.py) pinned to one CPU, wrk to another;
servers alternate round-robin across rounds, runs that other processes disturbed are measured
again, and each server's median is reported with ratios to aserve's WSGI and ASGI figures.
Run from anywhere: `.venv/bin/python benchmarks/hello.py`; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import resource
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

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BODY = b"Hello, world!"
HOST = "127.0.0.1"
EXIT_NO_WRK = 2
EXIT_SERVER_FAILED = 1
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

WSGI_REF = "aserve-wsgi"
ASGI_REF = "aserve-asgi"
LOG_ON = "aserve-wsgi+log"
ASGI_LOG_ON = "aserve-asgi+log"
WAITRESS = "waitress-4t"
UVICORN = "uvicorn-asgi"
A2WSGI = "uvicorn+a2wsgi"


@dataclass(frozen=True)
class ServerSpec:
    name: str
    description: str
    command: Callable[[int], list[str]]


def _tool(name: str) -> str:
    """A console script of the running interpreter's environment (the venv), else on PATH."""
    candidate = BIN / name
    if candidate.exists():
        return str(candidate)
    return shutil.which(name) or name


def _aserve(app: str, *extra: str) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        return [_tool("aserve"), app, "--host", HOST, "--port", str(port), *extra]

    return command


def _uvicorn(app: str, *extra: str) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        return [
            _tool("uvicorn"),
            app,
            *extra,
            "--host",
            HOST,
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--workers",
            "1",
            "--no-access-log",
        ]

    return command


def _waitress(port: int) -> list[str]:
    return [
        _tool("waitress-serve"),
        "--threads=4",
        f"--listen={HOST}:{port}",
        "benchmarks.apps:wsgi_app",
    ]


SERVERS: tuple[ServerSpec, ...] = (
    ServerSpec(
        WSGI_REF,
        "aserve, WSGI hello, --no-access-log",
        _aserve("benchmarks.apps:wsgi_app", "--no-access-log"),
    ),
    ServerSpec(
        ASGI_REF,
        "aserve, ASGI hello, --no-access-log",
        _aserve("benchmarks.apps:asgi_app", "--no-access-log"),
    ),
    ServerSpec(
        LOG_ON,
        "aserve, WSGI hello, access log on (stderr to a file)",
        _aserve("benchmarks.apps:wsgi_app", "--access-log"),
    ),
    ServerSpec(
        ASGI_LOG_ON,
        "aserve, ASGI hello, access log on (stderr to a file)",
        _aserve("benchmarks.apps:asgi_app", "--access-log"),
    ),
    ServerSpec(
        UVICORN,
        "uvicorn, ASGI hello, httptools + uvloop, 1 worker, --no-access-log",
        _uvicorn("benchmarks.apps:asgi_app"),
    ),
    ServerSpec(
        A2WSGI,
        "uvicorn (same options) + a2wsgi WSGIMiddleware around the WSGI hello",
        _uvicorn("benchmarks.apps:a2wsgi_app", "--factory"),
    ),
    ServerSpec(WAITRESS, "waitress, WSGI hello, 4 threads", _waitress),
)


@dataclass
class WrkResult:
    requests_per_s: float
    requests: int
    p50_ms: float
    p99_ms: float
    non_2xx_3xx: int
    socket_errors: dict[str, int]

    @property
    def errors(self) -> int:
        return self.non_2xx_3xx + sum(self.socket_errors.values())


@dataclass
class Run:
    server: str
    round: int
    result: WrkResult
    log_lines: int
    # CPU seconds the server process used during the measured run, all threads together.
    server_cpu_s: float
    # Shares of the server's and wrk's CPUs used by anything else (other processes, interrupts)
    # during the measured run; above `max_foreign` the run is marked contended.
    foreign_server_cpu: float
    foreign_wrk_cpu: float
    steal_ticks: int
    contended: bool

    @property
    def requests_per_cpu_s(self) -> float:
        return self.result.requests / self.server_cpu_s if self.server_cpu_s else float("nan")


@dataclass
class Summary:
    server: str
    description: str
    runs: int
    clean_runs: int
    requests_per_s: float
    min_requests_per_s: float
    max_requests_per_s: float
    requests_per_cpu_s: float
    p50_ms: float
    p99_ms: float
    non_2xx_3xx: int
    socket_errors: int
    vs_aserve_wsgi: float | None = None
    vs_aserve_asgi: float | None = None
    rounds: list[float] = field(default_factory=list)


# -- wrk -------------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_LATENCY = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.MULTILINE
)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def parse_wrk(output: str) -> WrkResult:
    rps = _RPS.search(output)
    total = _TOTAL.search(output)
    if rps is None or total is None:
        raise ValueError(f"unexpected wrk output:\n{output}")
    latency = {m[1]: float(m[2]) * _UNITS_MS[m[3]] for m in _LATENCY.finditer(output)}
    errors = _SOCKET_ERRORS.search(output)
    socket_errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    if errors is not None:
        socket_errors = dict(zip(socket_errors, map(int, errors.groups()), strict=True))
    non_2xx = _NON_2XX.search(output)
    return WrkResult(
        requests_per_s=float(rps[1]),
        requests=int(total[1]),
        p50_ms=latency.get("50", float("nan")),
        p99_ms=latency.get("99", float("nan")),
        non_2xx_3xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=socket_errors,
    )


def _pinned(cpu: int, command: list[str]) -> list[str]:
    # taskset sets the affinity before exec, so every thread the program starts inherits it.
    return ["taskset", "-c", str(cpu), *command]


def run_wrk(url: str, duration: int, connections: int, cpu: int) -> WrkResult:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url]
    done = subprocess.run(
        _pinned(cpu, command),
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=False,
    )
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()
        raise RuntimeError(f"wrk failed ({done.returncode}): {output}")
    return parse_wrk(done.stdout)


# -- servers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _tail(log: IO[bytes], limit: int = 2000) -> str:
    log.flush()
    log.seek(0, os.SEEK_END)
    size = log.tell()
    log.seek(max(0, size - limit))
    return log.read().decode("utf-8", "replace")


def _count_lines(log: IO[bytes]) -> int:
    log.flush()
    log.seek(0)
    lines = 0
    while chunk := log.read(1 << 20):
        lines += chunk.count(b"\n")
    return lines


def _wait_accepting(port: int, process: subprocess.Popen[bytes], log: IO[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"exited with code {process.returncode}:\n{_tail(log)}")
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {port} not accepting after {START_TIMEOUT}s") from None
            time.sleep(0.05)


def _check_response(port: int) -> None:
    """Every server must answer the same 200 with the same 13 bytes before it is measured."""
    conn = http.client.HTTPConnection(HOST, port, timeout=5.0)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200 or body != BODY:
        raise RuntimeError(f"unexpected response: {response.status} {body!r}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


@dataclass(frozen=True)
class Ticks:
    """Counters of one CPU (or all, `cpu` None) from /proc/stat."""

    total: int
    idle: int
    steal: int

    @classmethod
    def read(cls, cpu: int | None) -> Ticks:
        prefix = "cpu " if cpu is None else f"cpu{cpu} "
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(prefix):
                values = [int(v) for v in line.split()[1:]]
                # user nice system idle iowait irq softirq steal; guest is inside user already.
                return cls(sum(values[:8]), values[3] + values[4], values[7])
        raise RuntimeError(f"no {prefix.strip()} line in /proc/stat")

    def busy_since(self, before: Ticks) -> tuple[float, float]:
        """(busy share, elapsed CPU seconds) between `before` and this sample."""
        total = max(1, self.total - before.total)
        return 1 - (self.idle - before.idle) / total, total / _TICK


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_until_quiet(limit: float, threshold: float) -> float:
    """Wait (at most `limit` s) until the whole machine is below `threshold` busy over half a
    second, so a run does not start in the middle of someone else's burst; the seconds waited.
    """
    started = time.monotonic()
    while True:
        before = Ticks.read(None)
        time.sleep(0.5)
        busy, _ = Ticks.read(None).busy_since(before)
        waited = time.monotonic() - started
        if busy < threshold or waited >= limit:
            return waited


@contextlib.contextmanager
def serving(spec: ServerSpec, cpu: int, log: IO[bytes]) -> Iterator[tuple[int, int]]:
    """Start `spec` pinned to `cpu`; yield (port, pid) once it answers; stop it afterwards."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # The same buffering for every server: Python's defaults.
    env.pop("PYTHONUNBUFFERED", None)
    process = subprocess.Popen(
        _pinned(cpu, spec.command(port)),
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        _wait_accepting(port, process, log)
        _check_response(port)
        # taskset execs the server, so this pid is the server's own.
        yield port, process.pid
    finally:
        _stop(process)


# -- the benchmark ---------------------------------------------------------------------------


@dataclass
class Settings:
    duration: int
    warmup: int
    connections: int
    rounds: int
    server_cpu: int
    wrk_cpu: int
    servers: list[str]
    settle: float
    max_foreign: float
    retries: int
    json: str | None


def measure(spec: ServerSpec, settings: Settings, round_no: int) -> Run:
    with tempfile.TemporaryFile() as log:
        with serving(spec, settings.server_cpu, log) as (port, pid):
            url = f"http://{HOST}:{port}/"
            if settings.warmup > 0:
                run_wrk(url, settings.warmup, settings.connections, settings.wrk_cpu)
            server_before = process_cpu_s(pid)
            wrk_before = children_cpu_s()
            ticks_server = Ticks.read(settings.server_cpu)
            ticks_wrk = Ticks.read(settings.wrk_cpu)
            result = run_wrk(url, settings.duration, settings.connections, settings.wrk_cpu)
            server_busy, server_elapsed = Ticks.read(settings.server_cpu).busy_since(ticks_server)
            wrk_busy, wrk_elapsed = Ticks.read(settings.wrk_cpu).busy_since(ticks_wrk)
            server_used = process_cpu_s(pid) - server_before
            wrk_used = children_cpu_s() - wrk_before
        foreign_server = max(0.0, server_busy - server_used / server_elapsed)
        foreign_wrk = max(0.0, wrk_busy - wrk_used / wrk_elapsed)
        return Run(
            server=spec.name,
            round=round_no,
            result=result,
            log_lines=_count_lines(log),
            server_cpu_s=server_used,
            foreign_server_cpu=foreign_server,
            foreign_wrk_cpu=foreign_wrk,
            steal_ticks=Ticks.read(settings.server_cpu).steal - ticks_server.steal,
            contended=max(foreign_server, foreign_wrk) > settings.max_foreign,
        )


def summarise(specs: Sequence[ServerSpec], runs: Sequence[Run]) -> list[Summary]:
    """Medians per server, over its uncontended runs when it has any, else over all."""
    summaries: list[Summary] = []
    for spec in specs:
        own = [r for r in runs if r.server == spec.name]
        if not own:
            continue
        clean = [r for r in own if not r.contended]
        chosen = clean or own
        mine = [r.result for r in chosen]
        rps = [r.requests_per_s for r in mine]
        summaries.append(
            Summary(
                server=spec.name,
                description=spec.description,
                runs=len(own),
                clean_runs=len(clean),
                requests_per_s=statistics.median(rps),
                min_requests_per_s=min(rps),
                max_requests_per_s=max(rps),
                requests_per_cpu_s=statistics.median(r.requests_per_cpu_s for r in chosen),
                p50_ms=statistics.median(r.p50_ms for r in mine),
                p99_ms=statistics.median(r.p99_ms for r in mine),
                non_2xx_3xx=sum(r.result.non_2xx_3xx for r in own),
                socket_errors=sum(sum(r.result.socket_errors.values()) for r in own),
                rounds=[r.result.requests_per_s for r in own],
            )
        )
    by_name = {s.server: s for s in summaries}
    for summary in summaries:
        for ref, attr in ((WSGI_REF, "vs_aserve_wsgi"), (ASGI_REF, "vs_aserve_asgi")):
            if ref in by_name:
                setattr(summary, attr, summary.requests_per_s / by_name[ref].requests_per_s)
    return summaries


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_table(summaries: Sequence[Summary]) -> str:
    header = (
        "server",
        "clean",
        "req/s",
        "min-max",
        "req/CPU-s",
        "p50 ms",
        "p99 ms",
        "non-2xx",
        "sock err",
        "/aserve-wsgi",
        "/aserve-asgi",
    )
    rows = [header]
    for s in summaries:
        rows.append(
            (
                s.server,
                f"{s.clean_runs}/{s.runs}",
                f"{s.requests_per_s:,.0f}",
                f"{s.min_requests_per_s:,.0f}-{s.max_requests_per_s:,.0f}",
                f"{s.requests_per_cpu_s:,.0f}",
                f"{s.p50_ms:.2f}",
                f"{s.p99_ms:.2f}",
                str(s.non_2xx_3xx),
                str(s.socket_errors),
                _ratio(s.vs_aserve_wsgi),
                _ratio(s.vs_aserve_asgi),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
        if n == 0:
            rules = ["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]
            lines.append("|" + "|".join(rules) + "|")
    return "\n".join(lines)


def key_ratios(summaries: Sequence[Summary]) -> list[str]:
    by_name = {s.server: s for s in summaries}
    lines: list[str] = []
    pairs = (
        (WSGI_REF, WAITRESS, "aserve WSGI vs waitress (4 threads)"),
        (WSGI_REF, A2WSGI, "aserve WSGI vs uvicorn + a2wsgi"),
        (ASGI_REF, UVICORN, "aserve ASGI vs uvicorn"),
    )
    for mine, theirs, label in pairs:
        if mine in by_name and theirs in by_name:
            ratio = by_name[mine].requests_per_s / by_name[theirs].requests_per_s
            lines.append(f"{label}: {ratio:.2f}x")
    for with_log, without, label in (
        (LOG_ON, WSGI_REF, "aserve WSGI access log"),
        (ASGI_LOG_ON, ASGI_REF, "aserve ASGI access log"),
    ):
        if with_log in by_name and without in by_name:
            on = by_name[with_log].requests_per_s
            off = by_name[without].requests_per_s
            cost_us = (1 / on - 1 / off) * 1e6
            lines.append(
                f"{label}: on {on:,.0f} req/s, off {off:,.0f} req/s "
                f"({(on / off - 1) * 100:+.1f}%, {cost_us:+.1f} us per request)"
            )
    return lines


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    versions: dict[str, str] = {}
    for package in ("aserve", "uvicorn", "uvloop", "httptools", "waitress", "a2wsgi"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    banner = (wrk.stdout or wrk.stderr).strip()
    versions["wrk"] = banner.splitlines()[0] if banner else "unknown"
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "versions": versions,
    }


def parse_args(argv: Sequence[str] | None) -> Settings:
    names = [s.name for s in SERVERS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    # wrk takes whole seconds only.
    parser.add_argument("--duration", type=int, default=5, help="Seconds of each measured run.")
    parser.add_argument(
        "--warmup", type=int, default=1, help="Seconds of wrk before each (0: none)."
    )
    parser.add_argument("--connections", type=int, default=50, help="wrk connections.")
    parser.add_argument("--rounds", type=int, default=3, help="Round-robin rounds.")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU the server runs on.")
    parser.add_argument("--wrk-cpu", type=int, default=1, help="CPU wrk runs on.")
    parser.add_argument(
        "--servers",
        default=",".join(names),
        help=f"Comma-separated subset of: {', '.join(names)}.",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=20.0,
        help="Before each server starts, wait up to this many seconds for the machine to be "
        "quiet (other processes under 10%% of all CPUs).",
    )
    parser.add_argument(
        "--max-foreign",
        type=float,
        default=0.10,
        help="A run where other processes took more than this share of the server's or wrk's "
        "CPU is marked contended; medians use uncontended runs when a server has any.",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="Measure a contended run again, up to this many times.",
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="Also write results here.")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.servers.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown server(s): {', '.join(unknown)}")
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1:
        parser.error("--rounds, --duration and --connections must be positive")
    if args.warmup < 0 or args.retries < 0:
        parser.error("--warmup and --retries cannot be negative")
    return Settings(
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        rounds=args.rounds,
        server_cpu=args.server_cpu,
        wrk_cpu=args.wrk_cpu,
        servers=chosen,
        settle=args.settle,
        max_foreign=args.max_foreign,
        retries=args.retries,
        json=args.json,
    )


def _progress(run: Run, settings: Settings, waited: float) -> str:
    r = run.result
    line = (
        f"  round {run.round + 1} {run.server:<16} {r.requests_per_s:>10,.0f} req/s  "
        f"p50 {r.p50_ms:.2f} ms  p99 {r.p99_ms:.2f} ms  errors {r.errors}  "
        f"server CPU {run.server_cpu_s / settings.duration:.0%}  others: "
        f"{run.foreign_server_cpu:.0%} of server CPU, {run.foreign_wrk_cpu:.0%} of wrk CPU "
        f"(waited {waited:.1f}s)"
    )
    if run.contended:
        line += "  CONTENDED"
    if run.server in (LOG_ON, ASGI_LOG_ON):
        line += f"  log lines {run.log_lines}"
    return line


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed (Debian: apt-get install -y wrk); this script needs it as the "
            "load generator.",
            file=sys.stderr,
        )
        return EXIT_NO_WRK
    if shutil.which("taskset") is None:
        print("taskset (util-linux) is not installed; it pins the processes.", file=sys.stderr)
        return EXIT_NO_WRK
    specs = [s for s in SERVERS if s.name in settings.servers]
    info = machine()
    print(
        f"{len(specs)} servers x {settings.rounds} rounds: {settings.warmup}s warm-up + "
        f"{settings.duration}s measured, {settings.connections} connections, wrk -t1 on CPU "
        f"{settings.wrk_cpu}, servers on CPU {settings.server_cpu}"
    )
    print(
        f"machine: {info['nproc']} CPUs, {info['cpu_model']}, Python {info['python']}",
        flush=True,
    )
    load_before = os.getloadavg()
    runs: list[Run] = []
    for round_no in range(settings.rounds):
        # Rotate the starting server each round so no server always goes first.
        order = specs[round_no % len(specs) :] + specs[: round_no % len(specs)]
        for spec in order:
            # A contended run is kept (JSON, "clean" column) and measured again.
            for _attempt in range(settings.retries + 1):
                waited = wait_until_quiet(settings.settle, 0.10) if settings.settle > 0 else 0.0
                try:
                    run = measure(spec, settings, round_no)
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                    print(f"{spec.name}: failed: {exc}", file=sys.stderr)
                    return EXIT_SERVER_FAILED
                runs.append(run)
                print(_progress(run, settings, waited), flush=True)
                if not run.contended:
                    break
    load_after = os.getloadavg()
    summaries = summarise(specs, runs)
    print()
    print(format_table(summaries))
    print()
    for line in key_ratios(summaries):
        print(line)
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    if settings.json is not None:
        document = {
            "machine": info,
            "settings": asdict(settings),
            "load_average": {"before": load_before, "after": load_after},
            "summary": [asdict(s) for s in summaries],
            "key_ratios": key_ratios(summaries),
            "runs": [{**asdict(r), "requests_per_cpu_s": r.requests_per_cpu_s} for r in runs],
        }
        Path(settings.json).write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
