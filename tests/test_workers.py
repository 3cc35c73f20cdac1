"""gunicorn's arbiter with `aserve.workers.AserveWorker`, as real processes: it serves WSGI and
ASGI apps, gunicorn kills and replaces a worker whose loop stops beating, SIGTERM lets requests
finish, --max-requests recycles workers, an app that cannot load stops the arbiter; and
gunicorn's settings as aserve reads them."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trustme

pytest.importorskip("gunicorn")

from gunicorn.config import KNOWN_SETTINGS
from gunicorn.config import Config as GunicornConfig

from aserve.config import Config
from aserve.workers import config_from
from tests.support.client import get_pid
from tests.support.procs import ServerProcess, answer_across

LISTENING = r"Listening at: https?://127\.0\.0\.1:(\d+)"
BOOTED = r"Booting worker with pid: (\d+)"
WAIT = 10.0
WSGI = "tests.support.apps.pid_apps:wsgi"
ASGI = "tests.support.apps.pid_apps:asgi"
# gunicorn 24 and later open a control socket in the home directory unless told not to: tests
# running side by side would share it.
QUIET = (
    ["--no-control-socket"]
    if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS)
    else []
)


class Gunicorn(ServerProcess):
    """`gunicorn -k aserve.workers.AserveWorker -b 127.0.0.1:0 ARGS APP`; its log collected."""

    def __init__(self, app: str, *args: str) -> None:
        super().__init__(
            *QUIET,
            "-k",
            "aserve.workers.AserveWorker",
            "-b",
            "127.0.0.1:0",
            *args,
            app,
            command=[sys.executable, "-m", "gunicorn"],
        )
        self.port = int(self.wait_for(LISTENING, timeout=WAIT).group(1))

    def booted(self) -> list[int]:
        return [int(m.group(1)) for m in self.matches(BOOTED)]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(WAIT)
        super().close()


@pytest.fixture
def gunicorn() -> Iterator[Callable[..., Gunicorn]]:
    started: list[Gunicorn] = []

    def start(app: str, *args: str) -> Gunicorn:
        started.append(Gunicorn(app, *args))
        return started[-1]

    yield start
    for process in started:
        process.close()


def first_answer(port: int) -> int:
    """The pid of the first worker to answer, once one does (workers boot after the bind)."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return get_pid(port)
        except OSError:
            assert time.monotonic() < deadline, "no worker answered"
            time.sleep(0.05)


# ---------------------------------------------------------------- serving


@pytest.mark.parametrize("app", [WSGI, ASGI], ids=["wsgi", "asgi"])
def test_serves_wsgi_and_asgi_from_every_worker(
    gunicorn: Callable[..., Gunicorn], app: str
) -> None:
    server = gunicorn(app, "-w", "2", "--access-logfile", "-")
    first_answer(server.port)
    server.wait_for(BOOTED, 2)
    pids = set(server.booted())
    seen: set[int] = set()
    for _ in range(400):
        seen.add(get_pid(server.port))
        if seen == pids:
            break
    assert seen == pids


def test_a_worker_whose_loop_stops_beating_is_replaced(gunicorn: Callable[..., Gunicorn]) -> None:
    """--timeout 2: an idle worker lives on (its loop tells the arbiter every second), one
    whose loop an app holds for longer is killed, and a new one serves."""
    server = gunicorn(ASGI, "-w", "1", "--timeout", "2")
    pid = first_answer(server.port)
    time.sleep(3.0)
    assert get_pid(server.port) == pid
    assert not server.matches("WORKER TIMEOUT")

    def block() -> None:
        with contextlib.suppress(OSError, AssertionError):  # the worker is killed under it
            get_pid(server.port, "/block?30")

    blocker = threading.Thread(target=block)
    blocker.start()
    server.wait_for(rf"WORKER TIMEOUT \(pid:{pid}\)", timeout=WAIT)
    blocker.join(WAIT)
    assert first_answer(server.port) not in (pid, 0)


def test_sigterm_lets_the_request_in_flight_finish(gunicorn: Callable[..., Gunicorn]) -> None:
    server = gunicorn(WSGI, "-w", "1", "--graceful-timeout", "10")
    pid = first_answer(server.port)
    status, body = answer_across(server, server.port, lambda: server.send_signal(signal.SIGTERM))
    assert status == 200
    assert int(body) == pid
    assert server.wait(WAIT) == 0, server.stderr
    assert "Traceback" not in server.stderr


def test_sigint_stops_a_worker_at_once(gunicorn: Callable[..., Gunicorn]) -> None:
    """gunicorn's quick stop: the request in flight is not waited for; the arbiter, which was
    not told to stop, boots a new worker."""
    server = gunicorn(WSGI, "-w", "1", "--graceful-timeout", "20")
    pid = first_answer(server.port)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT)
    try:
        conn.request("GET", "/slow")
        server.wait_for("app: slow started")
        os.kill(pid, signal.SIGINT)
        with pytest.raises((http.client.HTTPException, OSError)):
            conn.getresponse().read()
    finally:
        conn.close()
    server.wait_for(r"Cancelling 1 request\(s\) still running after 0\.0s")
    assert first_answer(server.port) != pid


def test_max_requests_recycles_the_worker(gunicorn: Callable[..., Gunicorn]) -> None:
    server = gunicorn(WSGI, "-w", "1", "--max-requests", "3")
    pid = first_answer(server.port)
    assert [get_pid(server.port) for _ in range(2)] == [pid, pid]  # three in all
    server.wait_for("Autorestarting worker after current request")
    assert first_answer(server.port) != pid
    server.wait_for(BOOTED, 2)


@pytest.mark.parametrize(
    "app",
    ["tests.support.apps.no_such_module:app", "tests.support.apps.asgi_apps:failing_startup"],
    ids=["import-error", "lifespan-startup-fails"],
)
def test_a_worker_that_cannot_boot_stops_the_arbiter(app: str) -> None:
    # One worker: with two that both fail, gunicorn 27's arbiter may meet the second boot
    # error while it halts for the first, and exit with 1 from that traceback instead.
    with Gunicorn(app, "-w", "1") as server:
        assert server.wait(WAIT) == 3, server.stderr  # gunicorn's WORKER_BOOT_ERROR
    assert "Worker failed to boot" in server.stderr


def test_sigusr1_reopens_the_access_log(gunicorn: Callable[..., Gunicorn], tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    server = gunicorn(WSGI, "-w", "1", "--access-logfile", str(log))
    first_answer(server.port)
    # aserve's access lines go through gunicorn's --access-logfile.
    wait_for_line(log, server.port)
    log.rename(tmp_path / "access.log.1")
    server.send_signal(signal.SIGUSR1)  # the arbiter reopens its files, then its workers'
    wait_for_line(log, server.port)


def wait_for_line(log: Path, port: int) -> None:
    """Make requests until `log` exists and holds an access line."""
    deadline = time.monotonic() + WAIT
    while not log.exists() or "GET / HTTP/1.1" not in log.read_text():
        assert time.monotonic() < deadline, f"no access line in {log}"
        get_pid(port)
        time.sleep(0.1)


# ---------------------------------------------------------------- gunicorn's settings


def gunicorn_config(**settings: object) -> GunicornConfig:
    cfg = GunicornConfig()
    for name, value in settings.items():
        cfg.set(name, value)
    return cfg


def test_gunicorn_settings_become_aserves() -> None:
    config = config_from(
        gunicorn_config(
            threads=4,
            keepalive=7,
            graceful_timeout=20,
            limit_request_line=1000,
            limit_request_fields=50,
            limit_request_field_size=2000,
            worker_connections=300,
            loglevel="debug",
            workers=3,
        )
    )
    assert config.threads == 4
    assert config.timeout_keep_alive == 7
    assert config.timeout_graceful_shutdown == 19  # a second kept for lifespan shutdown
    assert (config.limit_request_line, config.limit_request_fields) == (1000, 50)
    assert config.limit_request_field_size == 2000
    assert config.limit_concurrency == 300
    assert config.workers == 3  # the processes sharing the socket, which accept by turns
    assert config.log_level == "debug"
    assert config.access_log is False  # no --access-logfile


def test_gunicorn_defaults_that_aserve_reads_its_own_way() -> None:
    config = config_from(gunicorn_config(limit_request_line=0, limit_request_field_size=0))
    # One thread would serve one WSGI request at a time: aserve's pool size stays.
    assert config.threads == Config().threads
    # 0 is no limit to gunicorn; the head as a whole stays bounded.
    assert config.limit_request_line == config.limit_request_head
    assert config.limit_request_field_size == config.limit_request_head
    assert config.timeout_keep_alive == 2  # gunicorn's own default, not aserve's


def test_gunicorn_tls_and_proxy_settings_become_aserves() -> None:
    config = config_from(
        gunicorn_config(
            certfile="/c.pem", keyfile="/k.pem", ca_certs="/ca.pem", cert_reqs=2,
            ciphers="ECDHE+AESGCM", forwarded_allow_ips="10.0.0.1,10.0.0.0/8",
        )
    )  # fmt: skip
    assert (config.ssl_certfile, config.ssl_keyfile, config.ssl_ca_certs) == (
        "/c.pem",
        "/k.pem",
        "/ca.pem",
    )
    assert config.ssl_cert_reqs == "required"
    assert config.ssl_ciphers == "ECDHE+AESGCM"
    assert config.proxy_headers is True
    assert config.forwarded_allow_ips == "10.0.0.1,10.0.0.0/8"


def test_serves_https_and_reads_a_trusted_proxys_headers(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path
) -> None:
    """gunicorn's --certfile/--keyfile: aserve's loop does the TLS, and the scope says https;
    X-Forwarded-For from 127.0.0.1 (gunicorn's default --forwarded-allow-ips) is believed."""
    ca = trustme.CA()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf = ca.issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    server = gunicorn(ASGI, "--certfile", str(cert), "--keyfile", str(key))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    deadline = time.monotonic() + WAIT
    while True:
        try:
            response = httpx.get(
                f"https://127.0.0.1:{server.port}/where",
                headers={"x-forwarded-for": "203.0.113.7"},
                verify=context,
            )
            break
        except httpx.ConnectError:
            assert time.monotonic() < deadline, "no worker answered"
            time.sleep(0.05)
    assert response.status_code == 200
    assert response.text == "https 203.0.113.7"
