"""Timeouts and limits over real sockets: slow heads and bodies, body size, connection and
pipelining limits, a saturated WSGI pool, running out of descriptors, SIGTERM under load."""

from __future__ import annotations

import asyncio
import http.client
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.validate import validator

import pytest

from aserve.errors import ClientDisconnected
from aserve.types import Message, Receive, Scope, Send
from tests.support.apps import asgi_apps, wsgi_apps
from tests.support.client import Client, closed_after, connect, raw_exchange, trickle
from tests.support.logs import LogRecords
from tests.support.polling import wait_until
from tests.support.procs import ServerProcess
from tests.support.servers import running

HELLO = b"hello"


# -- apps ------------------------------------------------------------------------------------


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"%d" % len(HELLO))],
        }
    )
    await send({"type": "http.response.body", "body": HELLO})


@dataclass
class BodyReader:
    """An ASGI app that reads the request body (after `delay`), records every message it
    receives, and echoes the body; `stream_first` starts the response before reading."""

    delay: float = 0.0
    stream_first: bool = False
    messages: list[Message] = field(default_factory=list)
    calls: int = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.stream_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"early", "more_body": True})
        body = b""
        while True:
            message = await receive()
            self.messages.append(message)
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if not self.stream_first:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body))],
                }
            )
        await send({"type": "http.response.body", "body": body})

    @property
    def types(self) -> list[str]:
        return [str(message["type"]) for message in self.messages]


class Gate:
    """An ASGI app whose requests to /block wait until `release()`; others answer at once."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.entered = 0

    def release(self) -> None:
        self.opened.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/block":
            self.entered += 1
            while not self.opened.is_set():
                await asyncio.sleep(0.01)
        await hello(scope, receive, send)


def wsgi_reader(seen: list[str]) -> Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]:
    """A WSGI app that reads its whole body; `seen` gets what it read or the error it got."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        body = b""
        try:
            while chunk := stream.read(8192):
                body += chunk
        except ClientDisconnected:
            seen.append("ClientDisconnected")
            raise
        seen.append(f"read {len(body)}")
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]

    return app


# -- socket helpers --------------------------------------------------------------------------


GET = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"
SLOW_HEAD = b"GET / HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"s" * 200


# -- 1. the request head timeout ---------------------------------------------------------------


def test_trickled_first_head_gets_408_when_its_time_is_up() -> None:
    with (
        running(hello, lifespan="off", timeout_request_head=0.6) as server,
        connect(server.port) as client,
    ):
        (response,), elapsed = trickle(client, SLOW_HEAD, 0.05)
    # A byte every 50 ms kept coming, and the head was still cut off on time.
    assert response.head.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), response
    assert b"connection: close\r\n" in response.head
    assert 0.5 < elapsed < 1.3, elapsed


def test_trickled_head_on_a_keep_alive_connection_is_not_cut_by_the_idle_timer() -> None:
    with (
        running(hello, lifespan="off", timeout_keep_alive=0.3, timeout_request_head=0.8) as server,
        connect(server.port) as client,
    ):
        client.sendall(GET)
        assert client.response().body == HELLO
        # The head begins within the keep-alive period; from its first byte it has 0.8 s,
        # which bytes trickling in do not extend and the 0.3 s idle period does not cut.
        (response,), elapsed = trickle(client, SLOW_HEAD, 0.05)
    assert response.head.startswith(b"HTTP/1.1 408 "), response
    assert 0.7 < elapsed < 1.5, elapsed


def test_empty_lines_do_not_extend_the_keep_alive_period() -> None:
    with (
        running(hello, lifespan="off", timeout_keep_alive=0.3) as server,
        connect(server.port) as client,
    ):
        client.sendall(GET)
        assert client.response().body == HELLO
        responses, elapsed = trickle(client, b"\r\n" * 100, 0.05)
    # Bytes that start no request are no activity: a silent close, as for any idle connection.
    assert responses == []
    assert elapsed < 0.6, elapsed


@pytest.mark.parametrize(
    ("keep_alive", "head"), [(0.3, 5.0), (5.0, 0.3)], ids=["keep-alive-first", "head-first"]
)
def test_a_connection_that_sends_nothing_is_closed_silently(keep_alive: float, head: float) -> None:
    with (
        running(
            hello, lifespan="off", timeout_keep_alive=keep_alive, timeout_request_head=head
        ) as server,
        connect(server.port) as client,
    ):
        responses, elapsed = closed_after(client)
    # Nothing was asked, so nothing is answered (a browser's preconnected socket looks so).
    assert responses == []
    assert 0.2 < elapsed < 1.0, elapsed


def test_a_head_sent_in_pieces_within_the_timeout_is_served() -> None:
    with (
        running(hello, lifespan="off", timeout_request_head=0.8) as server,
        connect(server.port) as client,
    ):
        for piece in (b"GET / HT", b"TP/1.1\r\nHo", b"st: test\r\n", b"\r\n"):
            client.sendall(piece)
            time.sleep(0.15)
        assert client.response().head.startswith(b"HTTP/1.1 200 OK\r\n")


def test_head_timeout_counts_from_the_end_of_the_response_for_a_pipelined_head() -> None:
    gate = Gate()
    with (
        running(gate, lifespan="off", timeout_request_head=0.5) as server,
        connect(server.port) as client,
    ):
        # The start of the next head arrives while /block is answered (for 0.7 s).
        client.sendall(b"GET /block HTTP/1.1\r\nHost: test\r\n\r\nGET / HT")
        time.sleep(0.7)
        gate.release()
        assert client.response().body == HELLO
        time.sleep(0.2)
        # 0.9 s after its first byte, but 0.2 s after the server was ready for it.
        client.sendall(b"TP/1.1\r\nHost: test\r\n\r\n")
        assert client.response().body == HELLO
        # The next head that stops half-way is cut off in turn.
        client.sendall(b"GET / HTTP/1.1\r\nHost: te")
        (response,), elapsed = closed_after(client)
    assert response.head.startswith(b"HTTP/1.1 408 "), response
    assert 0.4 < elapsed < 1.2, elapsed


# -- 2. the request body timeout ---------------------------------------------------------------


def test_stalled_body_ends_with_408_and_an_asgi_disconnect() -> None:
    app = BodyReader()
    with (
        running(app, lifespan="off", timeout_request_body=0.4) as server,
        connect(server.port) as client,
    ):
        client.sendall(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nabc")
        (response,), elapsed = closed_after(client)
    assert response.head.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), response
    assert 0.3 < elapsed < 1.2, elapsed
    assert app.types == ["http.request", "http.disconnect"]
    assert app.messages[0]["body"] == b"abc"


def test_stalled_body_raises_client_disconnected_in_a_wsgi_app(error_log: LogRecords) -> None:
    seen: list[str] = []
    with (
        running(validator(wsgi_reader(seen)), timeout_request_body=0.4) as server,
        connect(server.port) as client,
    ):
        client.sendall(b"PUT / HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nabc")
        (response,), elapsed = closed_after(client)
        wait_until(lambda: bool(seen), 2)
    assert response.head.startswith(b"HTTP/1.1 408 "), response
    assert 0.3 < elapsed < 1.2, elapsed
    assert seen == ["ClientDisconnected"]
    assert error_log.messages() == []  # the client's fault, not the app's


def test_body_timeout_is_an_idle_timeout_not_a_total() -> None:
    app = BodyReader()
    with (
        running(app, lifespan="off", timeout_request_body=0.4) as server,
        connect(server.port) as client,
    ):
        client.sendall(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\n")
        # 1 s in all, never 0.4 s without a byte.
        for piece in (b"01", b"23", b"45", b"67", b"89"):
            time.sleep(0.2)
            client.sendall(piece)
        response = client.response()
    assert response.head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.body == b"0123456789"


def test_body_timeout_waits_until_the_app_asks_for_the_body() -> None:
    # With Expect: 100-continue the client sends nothing until the app reads: the app taking
    # longer than the body timeout to get there is not the client stalling.
    app = BodyReader(delay=0.6)
    with (
        running(app, lifespan="off", timeout_request_body=0.3) as server,
        connect(server.port) as client,
    ):
        client.sendall(
            b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        assert client.response().head == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.sendall(b"body")
        response = client.response()
    assert response.head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.body == b"body"


def test_body_timeout_after_the_response_started_closes_without_a_408() -> None:
    app = BodyReader(stream_first=True)
    with (
        running(app, lifespan="off", timeout_request_body=0.3) as server,
        connect(server.port) as client,
    ):
        client.sendall(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nabc")
        (response,), _ = closed_after(client, truncated_ok=True)
    assert response.head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.wire_body.endswith(b"5\r\nearly\r\n")  # cut off, and the close says so
    assert not response.complete
    assert b"408" not in response.head + response.wire_body
    assert app.types == ["http.request", "http.disconnect"]


# -- 3. the request body limit -----------------------------------------------------------------


def test_content_length_over_the_limit_gets_413_before_the_app_runs() -> None:
    app = BodyReader()
    with running(app, lifespan="off", limit_request_body=100) as server:
        (fits,) = raw_exchange(
            server.port, b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
        )
        (too_big,) = raw_exchange(
            server.port, b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 101\r\n\r\n"
        )
    assert fits.head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert too_big.head.startswith(b"HTTP/1.1 413 "), too_big
    assert b"connection: close\r\n" in too_big.head
    assert app.calls == 1


def test_413_reaches_a_client_that_keeps_sending_its_body() -> None:
    # Closing on unread bytes would reset the connection and could destroy the 413 before the
    # client reads it: the server half-closes and drains instead (RFC 9112 §9.6).
    app = BodyReader()
    body = b"x" * (4 * 1024 * 1024)
    with (
        running(app, lifespan="off", limit_request_body=1024) as server,
        connect(server.port) as client,
    ):
        head = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
        client.sendall(head + body)
        (response,) = client.until_closed()
    assert response.head.startswith(b"HTTP/1.1 413 "), response
    assert app.calls == 0


async def failing(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("broken before reading the body")


def test_500_reaches_a_client_whose_body_the_failing_app_never_read(
    error_log: LogRecords,
) -> None:
    body = b"x" * (4 * 1024 * 1024)
    with (
        running(failing, lifespan="off") as server,
        connect(server.port) as client,
    ):
        client.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body))
        client.sendall(body)
        (response,) = client.until_closed()
    assert response.head.startswith(b"HTTP/1.1 500 "), response
    assert error_log.messages() == ["Exception in ASGI application"]


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)


CHUNKED_POST = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_chunked_body_over_the_limit_disconnects_the_asgi_app_and_gets_413() -> None:
    app = BodyReader()
    with (
        running(app, lifespan="off", limit_request_body=100) as server,
        connect(server.port) as client,
    ):
        client.sendall(CHUNKED_POST + chunked(b"a" * 60))
        time.sleep(0.1)  # the app has the first chunk
        client.sendall(chunked(b"b" * 60) + b"0\r\n\r\n")
        (response,) = client.until_closed()
    assert response.head.startswith(b"HTTP/1.1 413 "), response
    assert app.types == ["http.request", "http.disconnect"]
    assert app.messages[0]["body"] == b"a" * 60


def test_chunked_body_over_the_limit_raises_client_disconnected_in_a_wsgi_app(
    error_log: LogRecords,
) -> None:
    seen: list[str] = []
    with (
        running(validator(wsgi_reader(seen)), limit_request_body=100) as server,
        connect(server.port) as client,
    ):
        client.sendall(CHUNKED_POST + chunked(b"a" * 60))
        time.sleep(0.1)  # the app is reading
        client.sendall(chunked(b"b" * 60) + b"0\r\n\r\n")
        (response,) = client.until_closed()
        wait_until(lambda: bool(seen), 2)
    assert response.head.startswith(b"HTTP/1.1 413 "), response
    assert seen == ["ClientDisconnected"]
    assert error_log.messages() == []


def test_chunked_body_over_the_limit_after_the_response_started_cuts_it_off() -> None:
    app = BodyReader(stream_first=True)
    with (
        running(app, lifespan="off", limit_request_body=100) as server,
        connect(server.port) as client,
    ):
        client.sendall(CHUNKED_POST + chunked(b"a" * 60))
        time.sleep(0.1)
        client.sendall(chunked(b"b" * 60) + b"0\r\n\r\n")
        (response,) = client.until_closed(truncated_ok=True)
    assert response.head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.wire_body.endswith(b"5\r\nearly\r\n")
    assert not response.complete
    assert b"413" not in response.head + response.wire_body
    assert app.types == ["http.request", "http.disconnect"]


def test_chunked_body_within_the_limit_is_served() -> None:
    app = BodyReader()
    with running(app, lifespan="off", limit_request_body=100) as server:
        (response,) = raw_exchange(
            server.port, CHUNKED_POST + chunked(b"a" * 60, b"b" * 40) + b"0\r\n\r\n"
        )
    assert response.head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.body == b"a" * 60 + b"b" * 40


# -- 4. the connection limit -------------------------------------------------------------------


def get_on(client: Client, path: bytes = b"/") -> None:
    client.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path)


def test_new_connection_beyond_the_limit_gets_503_when_all_are_busy() -> None:
    gate = Gate()
    with (
        running(gate, lifespan="off", limit_concurrency=2) as server,
        connect(server.port) as first,
        connect(server.port) as second,
    ):
        get_on(first, b"/block")
        get_on(second, b"/block")
        wait_until(lambda: gate.entered >= 2, 2)
        with connect(server.port) as third:
            get_on(third)
            (refused,) = third.until_closed()
        gate.release()
        assert first.response().body == HELLO
        assert second.response().body == HELLO
        # Room again once the busy connections are gone.
        (again,) = raw_exchange(server.port, GET)
    assert refused.head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), refused
    assert b"connection: close\r\n" in refused.head
    assert again.head.startswith(b"HTTP/1.1 200 OK\r\n")


def test_at_the_limit_the_longest_idle_connection_makes_room() -> None:
    with (
        running(hello, lifespan="off", limit_concurrency=2, timeout_keep_alive=30) as server,
        connect(server.port) as oldest,
        connect(server.port) as newer,
    ):
        for client in (oldest, newer):
            get_on(client)
            assert client.response().body == HELLO
        with connect(server.port) as third:
            get_on(third)
            assert third.response().body == HELLO
            # The idle connection used longest ago was closed, silently, between requests.
            assert oldest.until_closed() == []
            get_on(newer)
            assert newer.response().body == HELLO


def test_a_busy_connection_is_never_evicted_for_a_new_one() -> None:
    gate = Gate()
    with (
        running(gate, lifespan="off", limit_concurrency=2, timeout_keep_alive=30) as server,
        connect(server.port) as busy,
        connect(server.port) as idle,
    ):
        get_on(busy, b"/block")
        get_on(idle)
        assert idle.response().body == HELLO
        with connect(server.port) as third:
            get_on(third)
            assert third.response().body == HELLO
            assert idle.until_closed() == []
            with connect(server.port) as fourth:
                # Now both are busy or in use: third is idle, so it goes.
                get_on(fourth)
                assert fourth.response().body == HELLO
                assert third.until_closed() == []
        gate.release()
        assert busy.response().body == HELLO


def test_connections_closing_after_an_error_do_not_count_against_the_limit() -> None:
    with (
        running(hello, lifespan="off", limit_concurrency=1) as server,
        connect(server.port) as bad,
    ):
        bad.sendall(b"BAD REQUEST\r\n\r\n")
        # Answered and half-closed by the server; this client has not closed its side.
        (answer,) = bad.until_closed()
        assert answer.head.startswith(b"HTTP/1.1 400 ")
        with connect(server.port) as good:
            get_on(good)
            assert good.response().body == HELLO


def test_slowloris_connections_cannot_lock_out_a_normal_client() -> None:
    with running(hello, lifespan="off", limit_concurrency=5, timeout_request_head=30) as server:
        slow = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(5)]
        try:
            for sock in slow:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            time.sleep(0.1)
            with connect(server.port) as normal:
                get_on(normal)
                assert normal.response().body == HELLO
            # A connection still sending its head counts as idle: the oldest one made room.
            (evicted,) = Client(slow[0]).until_closed()
            assert evicted.head.startswith(b"HTTP/1.1 503 "), evicted
        finally:
            for sock in slow:
                sock.close()


# -- 5. pipelined requests ---------------------------------------------------------------------


async def echo_path(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = scope["path"].encode()
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("limit", [0, 2, 32])
def test_a_thousand_pipelined_requests_are_answered_in_order(limit: int) -> None:
    # Beyond the limit, parsing and reading wait for answers: nothing is refused (h2load
    # -m 64, wrk with a pipelining script, uvicorn answering 1000 in a row).
    requests = b"".join(b"GET /%d HTTP/1.1\r\nHost: test\r\n\r\n" % i for i in range(1000))
    with running(echo_path, lifespan="off", limit_pipeline=limit) as server:
        responses = raw_exchange(server.port, requests, timeout=30)
    assert [r.status for r in responses] == [200] * 1000
    assert [r.body for r in responses] == [b"/%d" % i for i in range(1000)]
    assert not any(r.header(b"connection") for r in responses)


# -- 6. a saturated WSGI pool ------------------------------------------------------------------


def test_saturated_pool_queues_requests_without_timing_them_out() -> None:
    lock = threading.Lock()
    running_now = peak = 0

    def slow_echo(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        nonlocal running_now, peak
        with lock:
            running_now += 1
            peak = max(peak, running_now)
        time.sleep(0.1)
        body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        with lock:
            running_now -= 1
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]

    def post(port: int, index: int) -> bytes:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("POST", "/", body=b"%05d" % index * 4000)
            response = conn.getresponse()
            assert response.status == 200
            return response.read()
        finally:
            conn.close()

    # Each request waits up to 0.6 s for a thread: longer than both timeouts, which must
    # not count that wait against the client.
    with (
        running(
            validator(slow_echo), threads=2, timeout_request_body=0.3, timeout_request_head=0.3
        ) as server,
        ThreadPoolExecutor(12) as pool,
    ):
        futures = [pool.submit(post, server.port, i) for i in range(12)]
        time.sleep(0.15)
        # Meanwhile the loop answers what needs no thread.
        start = time.monotonic()
        (bad,) = raw_exchange(server.port, b"BAD\r\n\r\n")
        assert bad.head.startswith(b"HTTP/1.1 400 ")
        assert time.monotonic() - start < 0.3
        bodies = [future.result(10) for future in futures]
    assert bodies == [b"%05d" % i * 4000 for i in range(12)]
    assert peak == 2


# -- 7. running out of file descriptors --------------------------------------------------------

# Serve with the soft and hard descriptor limits lowered to argv[1].
LOW_FD_SERVER = (
    "import resource, sys\n"
    "limit = int(sys.argv.pop(1))\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))\n"
    "from aserve.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_running_out_of_descriptors_pauses_accepting_and_recovers(loop: str) -> None:
    server = ServerProcess(
        "48",
        "--loop",
        loop,
        "--port",
        "0",
        "--timeout-keep-alive",
        "30",
        "tests.support.apps.asgi_apps:app",
        command=[sys.executable, "-c", LOW_FD_SERVER],
    )
    with server:
        port = server.wait_listening()
        clients = [
            Client(socket.create_connection(("127.0.0.1", port), timeout=5)) for _ in range(80)
        ]
        try:
            server.wait_for("Cannot accept connections: Too many open files")
            # Those accepted are served; the rest wait in the listen backlog, not dropped.
            get_on(clients[0])
            assert clients[0].response().body == HELLO
            for client in clients[:-1]:
                client.sock.close()
            get_on(clients[-1])
            assert clients[-1].response().body == HELLO
            server.wait_for("Accepting connections again")
            with connect(port) as late:
                get_on(late)
                assert late.response().body == HELLO
        finally:
            for client in clients:
                client.sock.close()
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0, server.stderr
    assert server.stderr.count("Cannot accept connections") == 1, server.stderr
    assert "Traceback" not in server.stderr


# -- 8. SIGTERM under load ---------------------------------------------------------------------


@dataclass
class Outcome:
    complete: int = 0
    completed_after_signal: int = 0
    errors: list[str] = field(default_factory=list)


def hammer(
    port: int, path: str, body: bytes, stop: threading.Event, signalled: list[float]
) -> Outcome:
    """Requests over keep-alive connections until the server goes away.

    A response whose status line arrived must arrive whole; only a request that got no
    response at all may fail (the server closed or refused the connection)."""
    outcome = Outcome()
    conn: http.client.HTTPConnection | None = None
    while not stop.is_set():
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
        except (ConnectionError, http.client.RemoteDisconnected, BrokenPipeError):
            conn.close()
            conn = None
            if signalled:
                break  # refused or closed before answering: allowed once shutting down
            continue
        try:
            data = response.read()
        except (http.client.IncompleteRead, ConnectionError) as exc:
            outcome.errors.append(f"truncated {type(exc).__name__}")
            break
        if response.status != 200 or data != body:
            outcome.errors.append(f"wrong response {response.status} {len(data)} bytes")
            break
        outcome.complete += 1
        if signalled and time.monotonic() > signalled[0]:
            outcome.completed_after_signal += 1
        if response.getheader("connection") == "close":
            conn.close()
            conn = None
    if conn is not None:
        conn.close()
    return outcome


@pytest.mark.parametrize(
    ("app", "path", "body"),
    [
        ("tests.support.apps.asgi_apps:app", "/stream/0.2", asgi_apps.BODY),
        ("tests.support.apps.wsgi_apps:app", "/sleep/0.2", wsgi_apps.BODY),
    ],
    ids=["asgi-mid-body", "wsgi-before-start"],
)
def test_sigterm_under_load_truncates_nothing(app: str, path: str, body: bytes) -> None:
    with ServerProcess("--port", "0", "--no-access-log", app) as server:
        port = server.wait_listening()
        stop = threading.Event()
        signalled: list[float] = []
        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(hammer, port, path, body, stop, signalled) for _ in range(12)]
            time.sleep(0.5)
            signalled.append(time.monotonic())
            server.send_signal(signal.SIGTERM)
            code = server.wait(10)
            stop.set()
            outcomes = [future.result(10) for future in futures]
    assert code == 0, server.stderr
    assert [o.errors for o in outcomes if o.errors] == []
    assert sum(o.complete for o in outcomes) >= 12
    # Responses under way when the signal came were finished, not dropped.
    assert sum(o.completed_after_signal for o in outcomes) >= 1
    assert "Cancelling" not in server.stderr


def test_sigterm_past_the_grace_period_closes_what_it_cuts_off() -> None:
    with ServerProcess(
        "--port", "0", "--timeout-graceful-shutdown", "0.3", "tests.support.apps.asgi_apps:app"
    ) as server:
        port = server.wait_listening()
        with connect(port) as client:
            get_on(client, b"/stream/5")
            server.wait_for("app: started /stream/5")
            server.send_signal(signal.SIGTERM)
            (response,), elapsed = closed_after(client, truncated_ok=True)
        assert server.wait(5) == 0, server.stderr
    # Half the body, then the connection ends: the client can tell it was cut off.
    assert response.head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(response.body) == len(asgi_apps.BODY) // 2
    assert elapsed < 2.0, elapsed
