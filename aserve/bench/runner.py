"""Running the plan: start each server pinned to its CPU, check its answer, load it, read its
CPU time and memory, stop it. Rounds alternate the servers; contended runs are measured again.
The reload scenario runs each server's own reloading command on a fresh Django project
(`bench.reload`)."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Protocol

from aserve.bench import reload
from aserve.bench.loadgen import Generator
from aserve.bench.peers import HOST, Launch, Peer
from aserve.bench.reload import ReloadRun, ReloadSettings
from aserve.bench.results import MemoryRun, Results, Run, Transfer
from aserve.bench.scenarios import Scenario
from aserve.bench.stats import foreign_share
from aserve.bench.system import (
    Ticks,
    children_cpu_s,
    pinned,
    process_tree,
    reset_peak,
    tree_cpu_s,
    tree_memory,
    wait_until_quiet,
)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
TRANSFER_TIMEOUT = 120.0
_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    duration: int = 3
    warmup: int = 1
    rounds: int = 1
    server_cpu: int | None = 0
    load_cpu: int | None = 1
    settle: float = 10.0
    max_foreign: float = 0.10
    retries: int = 2
    # Where user apps are imported from (the directory aserve-bench was started in).
    cwd: str = "."
    # Saves per server and round in the reload scenario.
    edits: int = 10


class ServerFailed(RuntimeError):
    """A server did not start, or did not answer the check request as expected."""


@dataclass(frozen=True)
class Started:
    port: int
    pid: int


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _tail(log: IO[bytes], limit: int = 1500) -> str:
    log.flush()
    log.seek(0, os.SEEK_END)
    log.seek(max(0, log.tell() - limit))
    text = log.read().decode("utf-8", "replace").strip()
    return f"; its output ends:\n{text}" if text else ""


def wait_accepting(port: int, process: subprocess.Popen[bytes]) -> None:
    """Return once `port` accepts; ServerFailed if `process` exits or does not in time."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise ServerFailed(f"exited with code {process.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise ServerFailed(
                    f"not accepting on port {port} after {START_TIMEOUT:.0f}s"
                ) from None
            time.sleep(0.05)


def check(port: int, scenario: Scenario) -> None:
    """One request like the scenario's own (a small download for the memory scenario): the
    server must answer 2xx or 3xx, with the expected body where the scenario has one."""
    request = scenario.request
    method, path, body_size = request.method, request.path, request.body_size
    if scenario.kind == "memory":
        method, path, body_size = "GET", "/?size=1024", 0
    conn = http.client.HTTPConnection(HOST, port, timeout=30.0)
    try:
        headers = {"Content-Type": "application/octet-stream"} if body_size else {}
        conn.request(method, path, body=b"x" * body_size if body_size else None, headers=headers)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise ServerFailed(f"check request failed: {exc!r}") from exc
    finally:
        conn.close()
    if not 200 <= response.status < 400:
        raise ServerFailed(f"answered {response.status} to {method} {path}: {body[:200]!r}")
    if scenario.expect is not None and body != scenario.expect:
        raise ServerFailed(f"answered {body[:100]!r}, not {scenario.expect[:100]!r}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    members = process_tree(process.pid) if process.poll() is None else []
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # Workers that outlived their parent (a killed master), if still in the server's session.
    for pid in members[1:]:
        with contextlib.suppress(OSError):
            if os.getsid(pid) == process.pid:
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def serving(
    peer: Peer, scenario: Scenario, settings: Settings, log: IO[bytes]
) -> Iterator[Started]:
    """Start `peer` on `scenario`'s app pinned to the server CPU; yield once it answered the
    check request; stop it with SIGTERM (SIGKILL after 10 s) afterwards."""
    port = free_port()
    env = dict(os.environ)
    # The same buffering for every server: Python's defaults.
    env.pop("PYTHONUNBUFFERED", None)
    extra = peer.env(scenario.app)
    # A peer's own path goes first (aserve-pure's sources), then the app's directory.
    paths = (extra.pop("PYTHONPATH", None), settings.cwd, env.get("PYTHONPATH"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.update(extra)
    process = subprocess.Popen(
        pinned(settings.server_cpu, peer.command(scenario.app, Launch(port, scenario.connections))),
        cwd=settings.cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        # Its own session: a Ctrl-C meant for aserve-bench does not reach it half-way.
        start_new_session=True,
    )
    try:
        wait_accepting(port, process)
        check(port, scenario)
        yield Started(port, process.pid)
    except ServerFailed as exc:
        # What the server printed usually says why (a traceback, a refused option).
        raise ServerFailed(f"{exc}{_tail(log)}") from None
    finally:
        _stop(process)


def _busy(before: Ticks, cpu: int | None) -> tuple[float, float]:
    return Ticks.read(cpu).busy_since(before) if cpu is not None else (0.0, 0.0)


def measure_load(
    peer: Peer, scenario: Scenario, settings: Settings, generator: Generator, round_no: int
) -> Run:
    run = Run(scenario.name, peer.name, round_no)
    with tempfile.TemporaryFile() as log:
        try:
            with serving(peer, scenario, settings, log) as server:
                base = f"http://{HOST}:{server.port}"
                load = (scenario.request, scenario.connections)
                run_load = (
                    generator.run_websocket if scenario.protocol == "websocket" else generator.run
                )
                if settings.warmup > 0:
                    run_load(base, *load, settings.warmup, scenario.timeout)
                server_before = tree_cpu_s(server.pid)
                load_before = children_cpu_s()
                ticks_server = Ticks.read(settings.server_cpu)
                ticks_load = Ticks.read(settings.load_cpu)
                run.result = run_load(base, *load, settings.duration, scenario.timeout)
                server_busy, server_elapsed = _busy(ticks_server, settings.server_cpu)
                load_busy, load_elapsed = _busy(ticks_load, settings.load_cpu)
                run.server_cpu_s = tree_cpu_s(server.pid) - server_before
                run.peak_rss = tree_memory(server.pid).peak
        except (ServerFailed, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
            run.error = str(exc)
            return run
    if run.result is not None and run.result.requests == 0:
        run.error = "no response completed within the measured run"
    load_used = children_cpu_s() - load_before
    run.foreign_server_cpu = foreign_share(server_busy, run.server_cpu_s, server_elapsed)
    run.foreign_load_cpu = foreign_share(load_busy, load_used, load_elapsed)
    run.contended = max(run.foreign_server_cpu, run.foreign_load_cpu) > settings.max_foreign
    return run


def upload(port: int, size: int) -> int:
    """POST `size` bytes in 1 MiB writes; the length the server says it read."""
    block = memoryview(b"x" * _BLOCK)

    def body() -> Iterator[memoryview]:
        remaining = size
        while remaining > 0:
            piece = block[: min(_BLOCK, remaining)]
            remaining -= len(piece)
            yield piece

    conn = http.client.HTTPConnection(HOST, port, timeout=TRANSFER_TIMEOUT)
    try:
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        conn.request("POST", "/", body=body(), headers=headers)
        response = conn.getresponse()
        answer = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"answered {response.status}: {answer[:100]!r}")
    return int(answer)


def download(port: int, size: int) -> int:
    """GET a `size`-byte streamed response into one reused buffer; the bytes received."""
    buffer = bytearray(_BLOCK)
    conn = http.client.HTTPConnection(HOST, port, timeout=TRANSFER_TIMEOUT)
    try:
        conn.request("GET", f"/?size={size}")
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"answered {response.status}")
        received = 0
        while count := response.readinto(buffer):
            received += count
    finally:
        conn.close()
    return received


def _transfer(pid: int, size: int, send: bool, port: int) -> Transfer:
    baseline = tree_memory(pid).rss
    reset_peak(pid)
    started = time.perf_counter()
    try:
        moved = upload(port, size) if send else download(port, size)
    except (OSError, RuntimeError, ValueError, http.client.HTTPException) as exc:
        # The exception's class says enough in a table cell ("ConnectionResetError").
        return Transfer(error=type(exc).__name__ if isinstance(exc, OSError) else str(exc)[:80])
    seconds = time.perf_counter() - started
    growth = max(0, tree_memory(pid).peak - baseline)
    if moved != size:
        return Transfer(seconds, growth, f"moved {moved} of {size} bytes")
    return Transfer(seconds, growth)


def measure_memory(peer: Peer, scenario: Scenario, settings: Settings) -> MemoryRun:
    size = scenario.payload
    run = MemoryRun(scenario.name, peer.name, size)
    with tempfile.TemporaryFile() as log:
        try:
            with serving(peer, scenario, settings, log) as server:
                run.rss_before = tree_memory(server.pid).rss
                run.upload = _transfer(server.pid, size, True, server.port)
                run.download = _transfer(server.pid, size, False, server.port)
        except ServerFailed as exc:
            run.error = str(exc)
    return run


def django_in_process(cpu: int | None) -> float | None:
    """Calls/s of the Django project's WSGIHandler with no server, on the server CPU."""
    code = "from aserve.bench.django_app import in_process_rate; print(in_process_rate(2.0))"
    try:
        done = subprocess.run(
            pinned(cpu, [sys.executable, "-c", code]),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return float(done.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


class Observer(Protocol):
    """Told about every step, for the progress display."""

    def begin(self, scenario: Scenario, server: str, round_no: int, waited: float) -> None: ...

    def end(self, outcome: Run | MemoryRun | ReloadRun, again: bool) -> None:
        """`again`: the run was contended and is measured once more."""


@dataclass(frozen=True)
class Step:
    scenario: Scenario
    peers: list[Peer]


def count_runs(plan: Sequence[Step], rounds: int) -> int:
    """Runs the plan takes without retries: the memory scenario runs once per server, the
    reload scenario once per server and round (each run `Settings.edits` saves)."""
    return sum(len(s.peers) * (1 if s.scenario.kind == "memory" else rounds) for s in plan)


def measure_reload(step: Step, settings: Settings, observer: Observer, results: Results) -> None:
    """Every round, each server's saves on one project; no retry: each save waits for a quiet
    machine instead, and records how much of it others took."""
    scenario, peers = step.scenario, step.peers
    plan = ReloadSettings(edits=settings.edits, machine_settle=settings.settle)
    with contextlib.ExitStack() as stack:
        try:
            directory, view = stack.enter_context(reload.project())
        except (OSError, subprocess.CalledProcessError) as exc:
            output = getattr(exc, "stderr", None) or b""
            reason = f"no Django project: {exc} {output.decode(errors='replace')}".strip()
            for peer in peers:
                failed = ReloadRun(scenario.name, peer.name, 0, error=reason)
                results.reload.append(failed)
                observer.end(failed, again=False)
            return
        for round_no in range(settings.rounds):
            shift = round_no % len(peers)
            for peer in [*peers[shift:], *peers[:shift]]:
                waited = wait_until_quiet(settings.settle) if settings.settle > 0 else 0.0
                observer.begin(scenario, peer.name, round_no, waited)
                run = reload.measure(
                    peer,
                    directory,
                    view,
                    plan,
                    scenario=scenario.name,
                    round_no=round_no,
                    cpu=settings.server_cpu,
                )
                results.reload.append(run)
                observer.end(run, again=False)


def execute(
    plan: Sequence[Step],
    settings: Settings,
    generator: Generator,
    observer: Observer,
    results: Results,
) -> None:
    """Run the plan, appending to `results` as it goes (so an interrupted run keeps its
    measurements)."""
    for step in plan:
        scenario, peers = step.scenario, step.peers
        if scenario.app.name == "django" and results.django_in_process is None:
            results.django_in_process = django_in_process(settings.server_cpu)
        if scenario.kind == "reload":
            measure_reload(step, settings, observer, results)
            continue
        if scenario.kind == "memory":
            for peer in peers:
                waited = wait_until_quiet(settings.settle) if settings.settle > 0 else 0.0
                observer.begin(scenario, peer.name, 0, waited)
                memory = measure_memory(peer, scenario, settings)
                results.memory.append(memory)
                observer.end(memory, again=False)
            continue
        for round_no in range(settings.rounds):
            # Rotate the starting server each round so that none always goes first.
            shift = round_no % len(peers)
            for peer in [*peers[shift:], *peers[:shift]]:
                for attempt in range(settings.retries + 1):
                    waited = wait_until_quiet(settings.settle) if settings.settle > 0 else 0.0
                    observer.begin(scenario, peer.name, round_no, waited)
                    run = measure_load(peer, scenario, settings, generator, round_no)
                    results.runs.append(run)
                    # A contended run, or a failed one (a server that did not start can be
                    # a passing hiccup of the machine), is measured again.
                    retry = run.contended or run.error is not None
                    again = retry and attempt < settings.retries
                    observer.end(run, again)
                    if not again:
                        break
