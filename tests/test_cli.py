"""The `aserve` command: version, help, usage errors as one line and exit code 2, binding."""

from __future__ import annotations

import http.client
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aserve import __version__, exchange
from aserve.cli import parse
from aserve.config import Config
from tests.support.client import UnixHTTPConnection
from tests.support.procs import ROOT, ServerProcess, assert_usage_error, run_cli

ASGI_APP = "tests.support.apps.asgi_apps:app"
WSGI_APP = "tests.support.apps.wsgi_apps:app"
CONSOLE_SCRIPT = Path(sys.executable).with_name("aserve")


def test_version_names_the_build_that_runs() -> None:
    # `python -m aserve` from the root imports the package the tests import: compiled in the
    # compiled run (make test-compiled), whose modules are then extensions.
    compiled = not exchange.__file__.endswith(".py")
    result = run_cli("--version")
    assert result.returncode == 0
    build = "compiled" if compiled else "pure Python"
    assert result.stdout == f"aserve {__version__} ({build})\n"
    assert result.stderr == ""


def test_console_script_version() -> None:
    completed = subprocess.run(
        [str(CONSOLE_SCRIPT), "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert completed.returncode == 0
    # The installed package's build, which need not be the one the tests import.
    pattern = rf"aserve {re.escape(__version__)} \((compiled|pure Python)\)\n"
    assert re.fullmatch(pattern, completed.stdout), completed.stdout


HELP_OPTIONS = [
    "--host",
    "--port",
    "--uds",
    "--fd",
    "--interface",
    "--server",
    "--threads",
    "--lifespan",
    "--root-path",
    "--access-log",
    "--no-access-log",
    "--log-level",
    "--timeout-keep-alive",
    "--timeout-graceful-shutdown",
    "--loop",
    "--factory",
    "--version",
]


def test_help_lists_every_option() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert result.stderr == ""
    assert result.stdout.startswith("usage: aserve ")
    for option in HELP_OPTIONS:
        assert re.search(rf"(^\s+|, ){re.escape(option)}\b(?!-)", result.stdout, re.M), option
    assert "APP" in result.stdout
    # Choices are listed for the enumerated settings.
    assert "{auto,asgi,wsgi}" in result.stdout
    assert "{aserve,wsgiref}" in result.stdout


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--bogus", ASGI_APP], ["unrecognized arguments: --bogus"]),
        (["--port", "abc", ASGI_APP], ["--port", "'abc'"]),
        (["--port", "70000", ASGI_APP], ["--port must be between 0 and 65535, not 70000"]),
        (["--port", "-1", ASGI_APP], ["--port must be between 0 and 65535, not -1"]),
        (["--threads", "0", ASGI_APP], ["--threads must be at least 1, not 0"]),
        (["--interface", "foo", ASGI_APP], ["--interface", "'foo'"]),
        (["--timeout-keep-alive", "-1", ASGI_APP], ["--timeout-keep-alive cannot be negative"]),
        (["--root-path", "app/", ASGI_APP], ["--root-path must start with '/'"]),
        ([], ["required: APP"]),
        (["--port", "0"], ["required: APP"]),
        (
            ["tests.support.apps.no_such_module:app"],
            ["module 'tests.support.apps.no_such_module' not found"],
        ),
        (["no_colon_here"], ["APP must look like 'module:attribute'"]),
        (["tests.support.apps.loadable:missing"], ["has no attribute 'missing'"]),
        (["tests.support.apps.loadable:NUMBER"], ["not a callable app"]),
        (["tests.support.apps.loadable:no_arguments"], ["neither an ASGI nor a WSGI app"]),
        (["tests.support.apps.loadable:four_arguments"], ["neither an ASGI nor a WSGI app"]),
        (
            ["--factory", "tests.support.apps.loadable:broken_factory"],
            ["RuntimeError: settings missing"],
        ),
        (["--server", "wsgiref", ASGI_APP], ["ASGI app", "WSGI apps only"]),
        (["--server", "wsgiref", "--interface", "asgi", ASGI_APP], ["WSGI apps only"]),
    ],
    ids=[
        "unknown-option",
        "port-abc",
        "port-70000",
        "port-negative",
        "threads-0",
        "interface-foo",
        "negative-timeout",
        "root-path",
        "no-app",
        "no-app-with-options",
        "module-not-found",
        "malformed-app",
        "attribute-missing",
        "not-callable",
        "neither-zero-args",
        "neither-four-args",
        "factory-raises",
        "wsgiref-asgi-app",
        "wsgiref-explicit-asgi",
    ],
)
def test_usage_errors(args: list[str], needles: list[str]) -> None:
    assert_usage_error(args, *needles)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    "app",
    [WSGI_APP, "tests.support.apps.asgi_apps:plain", ASGI_APP],
    ids=["wsgi", "asgi", "lifespan"],
)
def test_port_already_in_use(busy_port: int, app: str) -> None:
    line = assert_usage_error(["--port", str(busy_port), app], "cannot bind")
    assert line.endswith(f"http://127.0.0.1:{busy_port}: Address already in use")


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


def stop(server: ServerProcess) -> None:
    server.send_signal(signal.SIGTERM)
    assert server.wait() == 0, server.stderr


def test_serves_over_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "aserve.sock")
    with ServerProcess("--uds", path, WSGI_APP) as server:
        server.wait_for(rf"on unix:{re.escape(path)}; quit")
        conn = UnixHTTPConnection(path)
        try:
            assert get(conn, "/") == (200, b"hello")
            assert get(conn, "/") == (200, b"hello")  # kept alive
        finally:
            conn.close()
        stop(server)


def test_serves_on_inherited_fd() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        fd = sock.fileno()
        with ServerProcess("--fd", str(fd), ASGI_APP, pass_fds=[fd]) as server:
            server.wait_for(rf"on fd://{fd}; quit")
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                status, body = get(conn, "/")
            finally:
                conn.close()
            assert (status, body) == (200, b"hello")
            stop(server)


def test_console_script_serves() -> None:
    with ServerProcess("--port", "0", WSGI_APP, command=[str(CONSOLE_SCRIPT)]) as server:
        port = server.wait_listening()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            assert get(conn, "/") == (200, b"hello")
        finally:
            conn.close()
        stop(server)
    assert re.search(r'"GET / HTTP/1.1" 200', server.stderr), server.stderr


def test_no_access_log() -> None:
    with ServerProcess("--port", "0", "--no-access-log", WSGI_APP) as server:
        port = server.wait_listening()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            assert get(conn, "/") == (200, b"hello")
        finally:
            conn.close()
        stop(server)
    assert "GET /" not in server.stderr


# ---------------------------------------------------------------- parse() in process


def test_parse_defaults() -> None:
    assert parse(["main:app"]) == ("main:app", Config())


def test_web_concurrency_is_the_default_number_of_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert parse(["main:app"])[1].workers == 3
    assert parse(["main:app", "--workers", "2"])[1].workers == 2
    # The machine's hint gives way to --reload, which runs one worker.
    assert parse(["main:app", "--reload"])[1].workers == 1
    monkeypatch.setenv("WEB_CONCURRENCY", "many")
    with pytest.raises(SystemExit) as exit_info:
        parse(["main:app"])
    assert exit_info.value.code == 2


def test_parse_every_kind_of_option() -> None:
    argv = [
        "--host",
        "::1",
        "--port",
        "0",
        "--interface",
        "wsgi",
        "--factory",
        "--threads",
        "4",
        "--lifespan",
        "off",
        "--root-path",
        "/app",
        "--no-access-log",
        "--log-level",
        "debug",
        "--timeout-keep-alive",
        "1.5",
        "--timeout-graceful-shutdown",
        "0",
        "--loop",
        "asyncio",
        "--reload-dir",
        "src",
        "--reload-dir",
        "lib",
        "mysite.wsgi:make_app",
    ]
    expected = Config(
        host="::1",
        port=0,
        interface="wsgi",
        factory=True,
        threads=4,
        lifespan="off",
        root_path="/app",
        access_log=False,
        log_level="debug",
        timeout_keep_alive=1.5,
        timeout_graceful_shutdown=0.0,
        loop="asyncio",
        reload_dirs=["src", "lib"],
    )
    assert parse(argv) == ("mysite.wsgi:make_app", expected)


def test_parse_uds_and_server() -> None:
    app, config = parse(["--uds", "/tmp/a.sock", "--server", "wsgiref", "m:a"])
    assert app == "m:a"
    assert config == Config(uds="/tmp/a.sock", server="wsgiref")
    assert config.bind_description == "unix:/tmp/a.sock"


def test_parse_access_log_flag_pair() -> None:
    assert parse(["--no-access-log", "--access-log", "m:a"])[1].access_log is True


def test_parse_error_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse(["--uds", "/tmp/a.sock", "--fd", "3", "m:a"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == "aserve: error: --uds and --fd cannot be used together (see aserve --help)\n"
