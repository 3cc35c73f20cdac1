"""`--server wsgiref`: the stdlib threaded server behind aserve's CLI, logs and signals, and
runserver's serving model over real sockets: keep-alive, HEAD, 204/304, 100-continue, chunked
bodies, unread bodies, request limits and timeouts, app errors, the access log."""

from __future__ import annotations

import contextvars
import logging
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.validate import validator

import pytest

from aserve.config import Config
from aserve.fallback import ThreadingWSGIServer
from aserve.logs import ACCESS
from aserve.sockets import bind_socket
from aserve.types import WSGIApp
from tests.support.apps import echo_wsgi, wsgi_apps
from tests.support.client import (
    Client,
    closed_after,
    connect,
    http_get,
    raw_exchange,
    refused,
    trickle,
)
from tests.support.http import Response
from tests.support.logs import LogRecords
from tests.support.polling import wait_until
from tests.support.procs import ServerProcess, run_cli

WSGI_APP = "tests.support.apps.wsgi_apps:app"


@pytest.fixture
def wsgiref_server() -> Iterator[tuple[ServerProcess, int]]:
    with ServerProcess("--server", "wsgiref", "--port", "0", WSGI_APP) as server:
        yield server, server.wait_listening()


def test_startup_line_names_wsgiref(wsgiref_server: tuple[ServerProcess, int]) -> None:
    server, port = wsgiref_server
    line = server.wait_for(r"serving WSGI app .* with wsgiref on").string
    assert f"{WSGI_APP} with wsgiref on http://127.0.0.1:{port}; quit with CONTROL-C" in line


def test_serves_validated_app(wsgiref_server: tuple[ServerProcess, int]) -> None:
    server, port = wsgiref_server
    assert http_get(port, "/") == (200, b"hello")
    assert http_get(port, "/sleep/0") == (200, wsgi_apps.BODY)
    server.send_signal(signal.SIGTERM)
    assert server.wait() == 0
    # wsgiref.validate found nothing to complain about.
    assert "Traceback" not in server.stderr
    assert "Warning" not in server.stderr


def test_writes_access_log_lines(wsgiref_server: tuple[ServerProcess, int]) -> None:
    server, port = wsgiref_server
    assert http_get(port, "/") == (200, b"hello")
    assert http_get(port, "/missing-is-fine?x=1") == (200, b"hello")
    # wsgiref logs after the response is sent, from the request's thread: in either order.
    server.wait_for(r'INFO +127\.0\.0\.1:\d+ - "GET / HTTP/1\.1" 200 5 \d+\.\dms$')
    server.wait_for(r'"GET /missing-is-fine\?x=1 HTTP/1\.1" 200 5 ')
    server.send_signal(signal.SIGTERM)
    assert server.wait() == 0
    assert sum('"GET ' in line for line in server.lines) == 2


def test_no_access_log() -> None:
    args = ("--server", "wsgiref", "--port", "0", "--no-access-log", WSGI_APP)
    with ServerProcess(*args) as server:
        port = server.wait_listening()
        assert http_get(port, "/") == (200, b"hello")
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert '"GET /' not in server.stderr


def test_concurrent_requests_run_in_threads(wsgiref_server: tuple[ServerProcess, int]) -> None:
    # Each /together request waits at a two-party barrier: both succeed only if they overlap.
    _, port = wsgiref_server
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: http_get(port, "/together"), range(2)))
    assert results == [(200, b"together"), (200, b"together")]


def test_drops_headers_with_underscores(wsgiref_server: tuple[ServerProcess, int]) -> None:
    _, port = wsgiref_server
    (response,) = raw_exchange(
        port,
        b"GET /headers HTTP/1.1\r\n"
        b"Host: example.test\r\n"
        b"X-Auth-User: alice\r\n"
        b"X_Auth_User: mallory\r\n"
        b"X_Other: dropped\r\n"
        b"Connection: close\r\n"
        b"\r\n",
        timeout=10,
    )
    assert response.head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.body.split(b"\n") == [
        b"HTTP_CONNECTION=close",
        b"HTTP_HOST=example.test",
        b"HTTP_X_AUTH_USER=alice",
    ]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_signal_exits_zero(wsgiref_server: tuple[ServerProcess, int], sig: signal.Signals) -> None:
    server, port = wsgiref_server
    assert http_get(port, "/") == (200, b"hello")
    server.send_signal(sig)
    assert server.wait() == 0
    assert "aserve (wsgiref) stopped" in server.stderr
    assert "Traceback" not in server.stderr
    assert refused(port)


def test_serves_over_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "wsgiref.sock")
    with ServerProcess("--server", "wsgiref", "--uds", path, WSGI_APP) as server:
        server.wait_for(r"with wsgiref on unix:")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            (response,) = Client(sock).until_closed()
        assert response.head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert response.body == b"hello"
        # A Unix socket peer has no address: the access line says so as the main mode does.
        server.wait_for(r'INFO +- - "GET / HTTP/1\.1" 200 5 ')
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert "Traceback" not in server.stderr


def test_asgi_app_is_refused() -> None:
    result = run_cli("--server", "wsgiref", "--port", "0", "tests.support.apps.asgi_apps:app")
    assert result.returncode == 2
    assert result.stderr == (
        "aserve: error: tests.support.apps.asgi_apps:app is an ASGI app; "
        "--server wsgiref serves WSGI apps only\n"
    )


def test_explicit_asgi_interface_is_refused() -> None:
    result = run_cli("--server", "wsgiref", "--interface", "asgi", WSGI_APP)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "--server wsgiref serves WSGI apps only" in result.stderr


# -- runserver's serving model, in-process -----------------------------------------------------


@contextmanager
def fallback(app: WSGIApp = echo_wsgi.app, /, **settings: Any) -> Iterator[int]:
    """The wsgiref server on a thread and a free port, with `settings` over the defaults."""
    config = Config(port=0, server="wsgiref", **settings)
    server = ThreadingWSGIServer(bind_socket(config), app, config)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield server.socket.getsockname()[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def access_records() -> Iterator[LogRecords]:
    """The access lines of the servers started in the block."""
    logger = logging.getLogger(ACCESS)
    records = LogRecords()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(records)
    try:
        yield records
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)


def request(line: str, *fields: str, body: bytes = b"") -> bytes:
    """A request head with `Host`, the fields given, and `body` after it."""
    return "\r\n".join((line, "Host: test", *fields, "", "")).encode("latin-1") + body


GET = request("GET /echo HTTP/1.1")


def echoed(response: Response) -> tuple[dict[str, str], bytes]:
    """What the echo app saw: its environ lines, and the body it read."""
    head, _, body = response.body.partition(b"\n\n")
    lines = head.decode("latin-1").split("\n")
    return dict(line.split("=", 1) for line in lines), body


def assert_refusal(response: Response, status: int, reason: str) -> None:
    assert response.status == status
    assert response.header(b"content-type") == b"text/plain; charset=utf-8"
    assert response.close
    assert response.body == reason.encode() + b"\n"


# -- keep-alive ---------------------------------------------------------------------------------


def test_keep_alive_serves_requests_in_turn_on_one_connection() -> None:
    with fallback() as port, connect(port) as client:
        client.sendall(GET)
        first = client.response()
        client.sendall(GET + GET)  # pipelined: answered in order
        responses = [client.response(), client.response()]
    for response in (first, *responses):
        assert response.head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert response.keeps_alive
        assert response.header(b"connection") is None
        assert echoed(response)[0]["REQUEST_METHOD"] == "GET"


def test_idle_keep_alive_connection_is_closed_after_the_timeout() -> None:
    with fallback(timeout_keep_alive=0.2) as port, connect(port) as client:
        client.sendall(GET)
        assert client.response().keeps_alive
        responses, elapsed = closed_after(client, truncated_ok=True)
    assert responses == []
    assert 0.15 < elapsed < 1.5, elapsed


@pytest.mark.parametrize(
    ("keep_alive", "head"), [(0.2, 5.0), (5.0, 0.2)], ids=["keep-alive-first", "head-first"]
)
def test_a_connection_that_sends_nothing_is_closed_silently(keep_alive: float, head: float) -> None:
    settings = {"timeout_keep_alive": keep_alive, "timeout_request_head": head}
    with fallback(**settings) as port, connect(port) as client:
        responses, elapsed = closed_after(client, truncated_ok=True)
    assert responses == []
    assert 0.15 < elapsed < 1.5, elapsed


def test_no_keep_alive_says_so_in_the_response() -> None:
    with fallback(timeout_keep_alive=0) as port, connect(port) as client:
        time.sleep(0.1)  # a new connection still waits for its first request
        client.sendall(GET)
        response = client.response()
        assert client.until_closed() == []
    assert response.close


@pytest.mark.parametrize(
    ("head", "connection"),
    [
        (request("GET /echo HTTP/1.1", "Connection: close"), b"close"),
        (request("GET /echo HTTP/1.0"), b"close"),
        (request("GET /echo HTTP/1.0", "Connection: keep-alive"), b"keep-alive"),
    ],
    ids=["1.1-close", "1.0", "1.0-keep-alive"],
)
def test_connection_header_of_the_request_is_honoured(head: bytes, connection: bytes) -> None:
    with fallback() as port, connect(port) as client:
        client.sendall(head)
        response = client.response()
        # The status line says HTTP/1.1 either way, so the response says what happens next.
        assert response.header(b"connection") == connection
        if connection == b"close":
            assert client.until_closed() == []
        else:
            client.sendall(head)
            assert client.response().status == 200


def test_response_without_a_length_ends_with_the_connection() -> None:
    with fallback() as port, connect(port) as client:
        client.sendall(request("GET /stream HTTP/1.1"))
        response = client.response()
        assert client.until_closed() == []
    assert response.body == b"one\ntwo\nthree\n"
    assert response.close
    assert response.header(b"content-length") is None


def test_each_request_runs_in_a_fresh_context() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="fresh")

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        previous = var.get()
        var.set("used")
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [previous.encode()]

    with fallback(validator(app)) as port, connect(port) as client:
        client.sendall(GET + GET)
        assert [client.response().body, client.response().body] == [b"fresh", b"fresh"]


# -- responses without a body -------------------------------------------------------------------


def test_head_gets_the_length_but_no_body() -> None:
    with fallback() as port, connect(port) as client:
        # Were a byte of body sent, the next response would not parse.
        client.sendall(request("HEAD /unread HTTP/1.1") + request("GET /unread HTTP/1.1"))
        head = client.response(b"HEAD")
        get = client.response()
    assert head.status == 200
    assert head.body == b""
    assert head.header(b"content-length") == b"6"
    assert head.keeps_alive
    assert get.body == b"unread"


def test_head_of_a_stream_stops_it_and_keeps_the_connection() -> None:
    with fallback() as port, connect(port) as client:
        client.sendall(request("HEAD /stream HTTP/1.1") + GET)
        head = client.response(b"HEAD")
        get = client.response()
    assert head.header(b"content-length") is None
    assert head.keeps_alive
    assert get.status == 200


@pytest.mark.parametrize("status", [204, 304])
def test_no_content_statuses_have_no_length_and_no_body(status: int) -> None:
    with fallback() as port, connect(port) as client:
        client.sendall(request(f"GET /status/{status} HTTP/1.1") + GET)
        response = client.response()
        after = client.response()
    assert response.status == status
    assert response.header(b"content-length") is None
    assert response.header(b"transfer-encoding") is None
    assert response.keeps_alive
    assert after.status == 200


# -- request bodies -----------------------------------------------------------------------------


def test_100_continue_goes_out_when_the_app_reads_the_body() -> None:
    with fallback() as port, connect(port) as client:
        client.sendall(request("POST /echo HTTP/1.1", "Expect: 100-continue", "Content-Length: 5"))
        # The client holds its body back until told to send it.
        interim = client.response()
        client.sendall(b"hello")
        final = client.response()
    assert interim.head == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert echoed(final)[1] == b"hello"
    assert final.keeps_alive


def test_no_100_continue_when_the_app_answers_without_reading() -> None:
    with fallback() as port, connect(port) as client:
        client.sendall(
            request("POST /unread HTTP/1.1", "Expect: 100-continue", "Content-Length: 5")
        )
        response = client.response()
        # The body never came and is not waited for: the connection ends, as announced.
        assert client.until_closed() == []
    assert response.status == 200
    assert response.close


CHUNKED = request(
    "POST /echo HTTP/1.1",
    "Transfer-Encoding: chunked",
    body=b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: dropped\r\n\r\n",
)


def test_chunked_body_is_decoded_for_the_app() -> None:
    with fallback() as port, connect(port) as client:
        client.sendall(CHUNKED + GET)
        response = client.response()
        after = client.response()
    fields, body = echoed(response)
    assert body == b"hello world"
    assert "HTTP_X_TRAILER" not in fields
    assert response.keeps_alive
    assert after.status == 200


def test_wsgi_input_terminated_lets_an_app_read_to_the_end() -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        flag = str(environ["wsgi.input_terminated"]).encode()
        body = flag + b" " + b"".join(environ["wsgi.input"])  # iterated by lines
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    head = request("PUT / HTTP/1.1", "Transfer-Encoding: chunked")
    with fallback(validator(app)) as port:
        (response,) = raw_exchange(port, head + b"3\r\none\r\n4\r\n\ntwo\r\n0\r\n\r\n")
    assert response.body == b"True one\ntwo"


def test_chunked_body_over_the_limit_gets_413(error_log: LogRecords) -> None:
    with fallback(limit_request_body=10) as port, connect(port) as client:
        client.sendall(CHUNKED)
        (response,) = client.until_closed()
    assert_refusal(response, 413, "request body larger than the limit")
    assert error_log.messages() == []  # the client's doing, not the app's


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"x\r\nhello\r\n0\r\n\r\n", "invalid chunk size line"),
        (b"5\r\nhelloXY0\r\n\r\n", "chunk data not followed by CRLF"),
        (b"5\nhello\r\n0\r\n\r\n", "bare LF in chunked framing"),
    ],
    ids=["size", "data-crlf", "bare-lf"],
)
def test_malformed_chunked_body_gets_400(body: bytes, reason: str) -> None:
    data = request("POST /echo HTTP/1.1", "Transfer-Encoding: chunked", body=body)
    with fallback() as port:
        (response,) = raw_exchange(port, data)
    assert_refusal(response, 400, reason)


def test_app_that_swallows_a_body_error_still_ends_the_connection() -> None:
    data = request("POST /read-then-fail HTTP/1.1", "Transfer-Encoding: chunked", body=b"zz\r\n")
    with fallback() as port, connect(port) as client:
        client.sendall(data + GET)
        (response,) = client.until_closed()
    assert response.body == b"reading failed: invalid chunk size line"
    assert response.close  # what follows the broken body cannot be parsed as a request


def test_unread_body_within_the_drain_limit_keeps_the_connection() -> None:
    with fallback(limit_drain=1000) as port, connect(port) as client:
        post = request("POST /unread HTTP/1.1", "Content-Length: 1000", body=b"x" * 1000)
        client.sendall(post + GET)
        first = client.response()
        second = client.response()
    assert first.keeps_alive
    assert echoed(second)[0]["PATH_INFO"] == "/echo"


def test_unread_body_beyond_the_drain_limit_closes_and_says_so() -> None:
    with fallback(limit_drain=1000) as port, connect(port) as client:
        post = request("POST /unread HTTP/1.1", "Content-Length: 1001", body=b"x" * 1001)
        client.sendall(post + GET)
        (response,) = client.until_closed()
    assert response.body == b"unread"
    assert response.close


def test_stalled_body_gets_408() -> None:
    with fallback(timeout_request_body=0.3) as port, connect(port) as client:
        client.sendall(request("POST /echo HTTP/1.1", "Content-Length: 10", body=b"abc"))
        (response,), elapsed = closed_after(client, truncated_ok=True)
    assert_refusal(response, 408, "request body not received in time")
    assert 0.25 < elapsed < 1.5, elapsed


# -- limits and the head timeout ----------------------------------------------------------------


def fields(count: int, size: int) -> list[str]:
    """`count` header fields, each line `size` bytes long."""
    return [f"X-F{i:03}: ".ljust(size, "v") for i in range(count)]


# Each limit: the settings, a request just within them (served) and one just past (refused).
LIMITS = [
    (
        {"limit_request_line": 100},
        request("GET /" + "a" * 86 + " HTTP/1.1"),
        request("GET /" + "a" * 87 + " HTTP/1.1"),
        414,
        "request line too long",
    ),
    (
        {"limit_request_fields": 5},
        request("GET / HTTP/1.1", *fields(4, 20)),
        request("GET / HTTP/1.1", *fields(5, 20)),
        431,
        "too many request header fields",
    ),
    (
        {"limit_request_field_size": 100},
        request("GET / HTTP/1.1", *fields(1, 100)),
        request("GET / HTTP/1.1", *fields(1, 101)),
        431,
        "request header field too large",
    ),
    (
        # 14 + 2 (request line) + 10 + 2 (Host) + 2 * (100 + 2) + 2 (the blank line) = 234
        {"limit_request_head": 234},
        request("GET / HTTP/1.1", *fields(2, 100)),
        request("GET / HTTP/1.1", *fields(2, 101)),
        431,
        "request header section too large",
    ),
    (
        {"limit_request_body": 10},
        request("POST / HTTP/1.1", "Content-Length: 10", body=b"x" * 10),
        request("POST / HTTP/1.1", "Content-Length: 11", body=b"x" * 11),
        413,
        "request body larger than the limit",
    ),
]


@pytest.mark.parametrize(
    ("settings", "within", "past", "status", "reason"),
    LIMITS,
    ids=["line", "fields", "field-size", "head", "body"],
)
def test_limits_refuse_what_passes_them(
    settings: dict[str, int], within: bytes, past: bytes, status: int, reason: str
) -> None:
    with fallback(**settings) as port:
        (served,) = raw_exchange(port, within)
        (response,) = raw_exchange(port, past)
        # The refusal ends that connection only.
        assert http_get(port, "/echo")[0] == 200
    assert served.status == 200
    assert_refusal(response, status, reason)


def test_no_body_limit_at_0() -> None:
    huge = request("POST /unread HTTP/1.1", f"Content-Length: {1 << 40}")
    with fallback(limit_request_body=0) as port, connect(port) as client:
        client.sendall(huge)
        response = client.response()
    assert response.body == b"unread"
    assert response.close  # a terabyte is more than is worth draining


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (request("GET / HTTP/2.0"), 505, "unsupported HTTP version HTTP/2.0"),
        (request("GET / HTTP/1.1 extra"), 400, "malformed request line"),
        (request("GET / HTTX/1.1"), 400, "malformed HTTP version"),
        (
            request("POST / HTTP/1.1", "Transfer-Encoding: chunked", "Content-Length: 3"),
            400,
            "Transfer-Encoding with Content-Length or in HTTP/1.0",
        ),
        (
            request("POST / HTTP/1.0", "Transfer-Encoding: chunked"),
            400,
            "Transfer-Encoding with Content-Length or in HTTP/1.0",
        ),
        (
            request("POST / HTTP/1.1", "Transfer-Encoding: gzip, chunked"),
            501,
            "unsupported Transfer-Encoding 'gzip, chunked'",
        ),
        (request("POST / HTTP/1.1", "Content-Length: 1, 2"), 400, "invalid Content-Length"),
        (request("POST / HTTP/1.1", "Content-Length: +1"), 400, "invalid Content-Length"),
    ],
    ids=["version", "line", "protocol", "te-and-cl", "te-in-1.0", "gzip", "two-lengths", "sign"],
)
def test_malformed_heads_are_refused(data: bytes, status: int, reason: str) -> None:
    with fallback() as port:
        (response,) = raw_exchange(port, data)
    assert_refusal(response, status, reason)


def test_repeated_identical_content_length_is_one() -> None:
    data = request("POST /echo HTTP/1.1", "Content-Length: 2", "Content-Length: 2", body=b"ok")
    with fallback() as port:
        (response,) = raw_exchange(port, data)
    assert echoed(response)[1] == b"ok"


def test_trickled_head_gets_408_when_its_time_is_up() -> None:
    slow_head = b"GET / HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"s" * 200
    with fallback(timeout_request_head=0.3) as port, connect(port) as client:
        (response,), elapsed = trickle(client, slow_head, 0.03)
    # A byte every 30 ms kept coming, and the head was still cut off on time.
    assert_refusal(response, 408, "request head not received in time")
    assert 0.25 < elapsed < 1.2, elapsed


def test_head_timeout_of_a_later_request_counts_from_its_first_byte() -> None:
    settings = {"timeout_keep_alive": 0.2, "timeout_request_head": 0.5}
    with fallback(**settings) as port, connect(port) as client:
        client.sendall(GET)
        client.response()
        time.sleep(0.1)
        # Past the keep-alive period, within the head timeout from its first byte.
        (response,), elapsed = trickle(client, b"GET / HTTP/1.1\r\nX: " + b"s" * 100, 0.03)
    assert response.status == 408
    assert 0.45 < elapsed < 1.4, elapsed


def test_blank_lines_are_no_request() -> None:
    with fallback() as port:
        assert raw_exchange(port, b"\r\n\r\n\r\n") == []
        # One blank line before a request is skipped (RFC 9112 §2.2).
        (response,) = raw_exchange(port, b"\r\n" + GET)
    assert response.status == 200


# -- app errors and the access log --------------------------------------------------------------


def test_app_exception_gets_500_and_the_connection_goes_on(error_log: LogRecords) -> None:
    with fallback() as port, connect(port) as client:
        client.sendall(request("GET /raise HTTP/1.1") + GET)
        failed = client.response()
        after = client.response()
    assert failed.status == 500
    assert failed.keeps_alive
    assert after.status == 200
    record = error_log.wait_for_error()
    assert record.getMessage() == "Exception in WSGI application"
    assert record.exc_info is not None and str(record.exc_info[1]) == "the view failed"


def test_response_shorter_than_its_length_ends_the_connection() -> None:
    with fallback() as port, connect(port) as client:
        client.sendall(request("GET /short HTTP/1.1") + GET)
        (response,) = client.until_closed(truncated_ok=True)
    assert response.body == b"short"
    assert not response.complete


def test_response_longer_than_its_length_is_cut_and_logged(error_log: LogRecords) -> None:
    with fallback() as port, connect(port) as client:
        client.sendall(request("GET /long HTTP/1.1") + GET)
        (response,) = client.until_closed(truncated_ok=True)
    assert not response.complete
    assert error_log.wait_for_error().getMessage() == (
        "Invalid WSGI response: response body longer than its Content-Length"
    )


def test_access_log_counts_the_body_bytes_sent() -> None:
    with access_records() as records, fallback() as port, connect(port) as client:
        client.sendall(
            request("GET /unread HTTP/1.1")
            + request("HEAD /unread HTTP/1.1")
            + request("GET /status/204 HTTP/1.1")
        )
        client.response()
        client.response(b"HEAD")
        client.response()
        assert wait_until(lambda: len(records.records) == 3)
        local = f"127.0.0.1:{client.local_port}"
    lines = [" ".join(line.split(" ")[1:-1]) for line in records.at(logging.INFO)]
    assert lines == [
        '- "GET /unread HTTP/1.1" 200 6',
        '- "HEAD /unread HTTP/1.1" 200 0',
        '- "GET /status/204 HTTP/1.1" 204 0',
    ]
    assert records.at(logging.INFO)[0].split(" ")[0] == local


def test_access_log_has_refusals() -> None:
    with access_records() as records, fallback(limit_request_body=1) as port:
        raw_exchange(port, request("POST /echo HTTP/1.1", "Content-Length: 2", body=b"ab"))
        assert wait_until(lambda: len(records.records) == 1)
    (line,) = records.at(logging.INFO)
    assert '- "POST /echo HTTP/1.1" 413 35 ' in line


def test_a_client_that_leaves_mid_pipeline_is_no_traceback(
    wsgiref_server: tuple[ServerProcess, int],
) -> None:
    # wrk stopping: requests pipelined, responses (64 KiB each) left unread, then a reset.
    server, port = wsgiref_server
    for _ in range(5):
        with connect(port) as client:
            client.sendall(b"GET /sleep/0 HTTP/1.1\r\nHost: t\r\n\r\n" * 50)
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert http_get(port, "/") == (200, b"hello")
    server.send_signal(signal.SIGTERM)
    assert server.wait() == 0
    assert "Traceback" not in server.stderr
    assert "Error on the connection" not in server.stderr
