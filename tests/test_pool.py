"""`aserve APP --workers N` as a real process: several workers share the socket, a dead one is
replaced (later and later when they die at once), SIGTERM drains them, SIGHUP restarts them one
by one without refusing a request, SIGTTIN/SIGTTOU change their number."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.client import get_pid, refused_soon
from tests.support.procs import ROOT, ServerProcess, answer_across, assert_usage_error

SUPERVISOR_ON = r"aserve supervisor on http://127\.0\.0\.1:(\d+), (\d+) workers"
READY = r"Worker (\d+) ready in \d+ ms"
WAIT = 10.0
WSGI = "tests.support.apps.pid_apps:wsgi"
ASGI = "tests.support.apps.pid_apps:asgi"


class Pool(ServerProcess):
    """`python -m aserve APP --workers N --port 0`; stderr lines collected."""

    def __init__(self, *args: str, app: str = WSGI, workers: int = 2, cwd: Path = ROOT) -> None:
        super().__init__(
            app, "--workers", str(workers), "--port", "0", "--no-access-log", *args, cwd=cwd
        )
        self.port = int(self.wait_for(SUPERVISOR_ON, timeout=WAIT).group(1))

    def ready(self, count: int) -> list[int]:
        """The pids of the first `count` workers to get ready, once they are."""
        self.wait_for(READY, count, timeout=WAIT)
        return [int(m.group(1)) for m in self.matches(READY)][:count]

    def close(self) -> None:
        pids = [int(m.group(1)) for m in self.matches(READY)]
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        super().close()
        deadline = time.monotonic() + 5.0
        while (left := [pid for pid in pids if _state(pid) != "Z"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        for pid in left:  # never leave a worker behind for the next test
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def pool() -> Iterator[Callable[..., Pool]]:
    started: list[Pool] = []

    def start(*args: str, app: str = WSGI, workers: int = 2, cwd: Path = ROOT) -> Pool:
        started.append(Pool(*args, app=app, workers=workers, cwd=cwd))
        return started[-1]

    yield start
    for process in started:
        process.close()


def pids_serving(port: int, expected: set[int], attempts: int = 400) -> set[int]:
    """The pids seen answering until all of `expected` were (or `attempts` requests)."""
    seen: set[int] = set()
    for _ in range(attempts):
        seen.add(get_pid(port))
        if expected <= seen:
            break
    return seen


@pytest.mark.parametrize("app", [WSGI, ASGI], ids=["wsgi", "asgi"])
def test_two_workers_serve_from_two_processes(pool: Callable[..., Pool], app: str) -> None:
    server = pool(app=app)
    assert server.wait_for(SUPERVISOR_ON).group(2) == "2"
    pids = server.ready(2)
    assert len(set(pids)) == 2
    assert server.proc.pid not in pids
    assert pids_serving(server.port, set(pids)) == set(pids)
    # The first worker says where it serves, as a single process does.
    assert len(server.matches(r"serving (WSGI|ASGI) app .* on http://127\.0\.0\.1:\d+")) == 1


def test_spawned_workers_serve_and_are_replaced_after_sighup(pool: Callable[..., Pool]) -> None:
    """--reload-worker spawn (macOS's and Windows' way) makes the pool's workers fresh
    interpreters, none of them the supervisor's fork."""
    server = pool("--reload-worker", "spawn")
    old = set(server.ready(2))
    assert pids_serving(server.port, old) == old
    server.send_signal(signal.SIGHUP)
    server.wait_for(r"Restarted 2 workers in \d+ ms", timeout=WAIT)
    new = {int(m.group(1)) for m in server.matches(READY)} - old
    assert len(new) == 2
    for pid in new:
        # A spawned worker runs `python -m aserve.reload.spawn`, not the supervisor's command.
        assert "aserve.reload.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes().decode()


def test_workers_answer_an_app_error_with_a_plain_500(pool: Callable[..., Pool]) -> None:
    """No development error page: the traceback goes to the log, not to the client."""
    server = pool()
    server.ready(2)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT)
    try:
        conn.request("GET", "/raise")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 500
    assert b"a bug in the view" not in body
    assert b"Traceback" not in body
    server.wait_for("RuntimeError: a bug in the view")


def test_access_lines_of_every_worker_reach_the_supervisors_stderr() -> None:
    with ServerProcess(WSGI, "--workers", "2", "--port", "0") as server:
        port = int(server.wait_for(SUPERVISOR_ON, timeout=WAIT).group(1))
        server.wait_for(READY, 2)
        pids = {int(m.group(1)) for m in server.matches(READY)}
        assert pids_serving(port, pids) == pids
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert len(server.matches(r'"GET / HTTP/1\.1" 200')) >= 2


def test_a_killed_worker_is_replaced_later_each_time_it_dies_at_once(
    pool: Callable[..., Pool],
) -> None:
    server = pool()
    first, second = server.ready(2)
    os.kill(first, signal.SIGKILL)
    server.wait_for(rf"Worker {first} exited unexpectedly \(killed by SIGKILL\)")
    # It died within seconds of starting: its replacement waits, a little.
    server.wait_for(r"Starting a worker in 0\.1 s")
    third = server.ready(3)[2]
    assert third not in (first, second)
    # Requests go on being answered, by the survivor and the replacement.
    assert pids_serving(server.port, {second, third}) == {second, third}
    os.kill(third, signal.SIGKILL)
    server.wait_for(r"Starting a worker in 0\.2 s")  # the back-off doubles
    fourth = server.ready(4)[3]
    assert pids_serving(server.port, {second, fourth}) == {second, fourth}


def test_sigterm_lets_the_request_in_flight_finish_and_exits_0(pool: Callable[..., Pool]) -> None:
    server = pool()
    pids = server.ready(2)
    status, body = answer_across(server, server.port, lambda: server.send_signal(signal.SIGTERM))
    assert status == 200
    assert int(body) in pids
    assert server.wait() == 0, server.stderr
    assert "SIGTERM received: stopping the workers" in server.stderr
    assert server.stderr.rstrip().endswith("aserve supervisor stopped")
    assert "Traceback" not in server.stderr
    assert refused_soon(server.port)


def test_second_sigint_stops_at_once(pool: Callable[..., Pool]) -> None:
    server = pool("--timeout-graceful-shutdown", "30")
    server.ready(2)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT)
    try:
        conn.request("GET", "/slow")
        server.wait_for("app: slow started")
        began = time.monotonic()
        server.send_signal(signal.SIGINT)
        server.wait_for("SIGINT received")
        server.send_signal(signal.SIGINT)
        assert server.wait() == 0, server.stderr
        assert time.monotonic() - began < 5.0
    finally:
        conn.close()


def test_sighup_restarts_every_worker_without_refusing_a_request(
    pool: Callable[..., Pool],
) -> None:
    """Clients polling with a new connection per request while SIGHUP replaces the workers
    one by one: every request is answered, and afterwards only new workers answer."""
    server = pool()
    old = set(server.ready(2))
    answered: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                answered.append(get_pid(server.port))
            except (OSError, AssertionError, ValueError) as exc:
                failures.append(repr(exc))

    pollers = [threading.Thread(target=poll) for _ in range(3)]
    for poller in pollers:
        poller.start()
    try:
        time.sleep(0.2)
        server.send_signal(signal.SIGHUP)
        server.wait_for(r"Restarted 2 workers in \d+ ms", timeout=WAIT)
        time.sleep(0.3)
    finally:
        stop.set()
        for poller in pollers:
            poller.join(WAIT)
    assert failures == []
    new = {int(m.group(1)) for m in server.matches(READY)} - old
    assert len(new) == 2
    assert wait_gone(old)
    before = len(answered)
    assert pids_serving(server.port, new) == new  # the old ones answer no more
    assert len(answered) == before
    assert server.proc.poll() is None


def test_sighup_with_code_that_cannot_be_imported_keeps_the_old_workers(
    pool: Callable[..., Pool], tmp_path: Path
) -> None:
    """A deploy that broke the app: the restart stops at the first new worker, the old ones
    go on serving, and the next SIGHUP, once the code is fixed, restarts them all."""
    source = (
        "import os\nfrom wsgiref.validate import validator\n\n@validator\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [str(os.getpid()).encode()]\n"
    )
    (tmp_path / "deployed.py").write_text(source)
    server = pool(app="deployed:app", cwd=tmp_path)
    old = set(server.ready(2))
    (tmp_path / "deployed.py").write_text("raise RuntimeError('database is down')\n" + source)
    server.send_signal(signal.SIGHUP)
    server.wait_for("Restart abandoned: the workers not replaced yet go on serving")
    assert server.matches(r"A worker could not start \(exit code 1\): .*database is down")
    assert pids_serving(server.port, old) == old
    (tmp_path / "deployed.py").write_text(source)
    server.send_signal(signal.SIGHUP)
    server.wait_for(r"Restarted 2 workers in \d+ ms")
    assert wait_gone(old)  # replaced, they finish what they accepted and exit
    new = {int(m.group(1)) for m in server.matches(READY)} - old
    assert pids_serving(server.port, new) == new, server.stderr


def test_sigttin_adds_a_worker_and_sigttou_removes_one(pool: Callable[..., Pool]) -> None:
    server = pool()
    server.ready(2)
    server.send_signal(signal.SIGTTIN)
    server.wait_for("SIGTTIN received: 3 workers")
    pids = server.ready(3)
    assert pids_serving(server.port, set(pids)) == set(pids)
    server.send_signal(signal.SIGTTOU)
    server.wait_for("SIGTTOU received: 2 workers")
    gone = pids[2]  # the newest goes
    assert wait_gone({gone})
    assert gone not in pids_serving(server.port, set(pids[:2]))


def wait_gone(pids: set[int]) -> bool:
    """Whether every one of `pids` exits (or is a zombie) within WAIT."""
    deadline = time.monotonic() + WAIT
    while any(_state(pid) != "Z" for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0]
    except OSError:
        return "Z"


def test_workers_with_reload_is_a_usage_error() -> None:
    assert_usage_error([WSGI, "--workers", "2", "--reload"], "--workers", "--reload")


def test_an_app_that_cannot_be_imported_is_one_line_and_exit_2() -> None:
    assert_usage_error(
        ["no_such_module_xyz:app", "--workers", "2", "--port", "0"], "no_such_module_xyz"
    )
