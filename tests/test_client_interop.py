"""What real clients rely on, over real sockets: a keep-alive promise is kept, an Upgrade request
is served with its body, a send after a reset raises, the access log tells the bytes that went
out, and a request whose client gave up never runs."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Literal

import pytest

from aserve.errors import ClientDisconnected, RequestBodyTooLarge
from aserve.types import Environ, Receive, Scope, Send, StartResponse, WSGIApp
from tests.support.client import Client, connect
from tests.support.http import Response
from tests.support.logs import LogRecords, access_records, error_records
from tests.support.polling import wait_until
from tests.support.servers import running

Interface = Literal["asgi", "wsgi"]
DRAIN = 262144  # the default --limit-drain


# -- apps --------------------------------------------------------------------------------------


async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
    """/ignore answers without reading the body; /echo returns it; anything else: its path."""
    if scope["type"] != "http":
        return
    body = scope["path"].encode()
    if scope["path"] == "/echo":
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def wsgi_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    body = environ["PATH_INFO"].encode()
    if environ["PATH_INFO"] == "/echo":
        body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


APPS: dict[Interface, object] = {"asgi": asgi_app, "wsgi": wsgi_app}


def post(path: bytes, size: int, *, chunked: bool, version: bytes = b"1.1") -> tuple[bytes, bytes]:
    """The head of a POST and its body as sent: `size` bytes, sized or in 64 KiB chunks."""
    head = b"POST %s HTTP/%s\r\nHost: test\r\n" % (path, version)
    if version == b"1.0":
        head += b"Connection: keep-alive\r\n"
    payload = b"x" * size
    if not chunked:
        return head + b"Content-Length: %d\r\n\r\n" % size, payload
    pieces = [payload[i : i + 65536] for i in range(0, size, 65536)]
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    return head + b"Transfer-Encoding: chunked\r\n\r\n", body


def send_in_background(client: Client, data: bytes) -> threading.Thread:
    """Send `data` while the test reads: a server that answers early stops reading, and a
    blocked sendall must not stop the test from seeing the response."""

    def target() -> None:
        with contextlib.suppress(OSError):  # the server closed, as it may once it said so
            client.sendall(data)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def promised_keep_alive(response: Response, version: bytes) -> bool:
    connection = (response.header(b"connection") or b"").lower()
    if version == b"1.0":
        return connection == b"keep-alive"
    return connection != b"close"


def closes_without_another_response(client: Client) -> bool:
    client.sock.settimeout(5)
    try:
        return client.until_closed(truncated_ok=True) == []
    except ConnectionResetError:
        return True  # a close with unread bytes is a reset: still no second response


# -- 1. a keep-alive promise is kept --------------------------------------------------------------


@pytest.mark.parametrize("interface", ["asgi", "wsgi"])
@pytest.mark.parametrize(
    ("version", "chunked"),
    # HTTP/1.0 has no chunked bodies.
    [(b"1.1", False), (b"1.1", True), (b"1.0", False)],
    ids=["http11-sized", "http11-chunked", "http10-keep-alive-sized"],
)
@pytest.mark.parametrize("size", [0, 1000, 100_000, DRAIN + 50_000, 5_000_000])
def test_a_response_that_promises_keep_alive_keeps_the_connection(
    interface: Interface, version: bytes, chunked: bool, size: int
) -> None:
    # An endpoint that ignores the body: below the drain limit the rest is read and dropped,
    # above it the response says close. Either way, what it says is what happens next.
    head, body = post(b"/ignore", size, chunked=chunked, version=version)
    with running(APPS[interface], lifespan="off") as server, connect(server.port) as client:
        client.sendall(head)
        sender = send_in_background(client, body)
        response = client.response()
        assert response.status == 200
        assert response.body == b"/ignore"
        if promised_keep_alive(response, version):
            sender.join(10)
            client.sendall(b"GET /after HTTP/1.1\r\nHost: test\r\n\r\n")
            assert client.response().body == b"/after"
        else:
            assert closes_without_another_response(client)
        if not chunked and size <= DRAIN:
            # Whatever the timing, all that can be left is within the drain limit.
            assert promised_keep_alive(response, version)
        if size >= 5_000_000:
            assert not promised_keep_alive(response, version)


# -- 2. an Upgrade nobody accepts is ignored, with the request's body ----------------------------


@pytest.mark.parametrize("interface", ["asgi", "wsgi"])
@pytest.mark.parametrize("chunked", [False, True], ids=["sized", "chunked"])
def test_an_h2c_upgrade_with_a_body_is_served_as_http11(
    interface: Interface, chunked: bool
) -> None:
    # curl --http2 -d on http:// sends this; the smuggled-looking body is just a body.
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: test\r\n\r\n"
    head, body = post(b"/echo", 0, chunked=chunked)
    head = head.replace(
        b"Host: test\r\n",
        b"Host: test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    )
    if chunked:
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    else:
        head = head.replace(b"Content-Length: 0", b"Content-Length: %d" % len(smuggled))
        body = smuggled
    with running(APPS[interface], lifespan="off") as server, connect(server.port) as client:
        client.sendall(head + body + b"GET /next HTTP/1.1\r\nHost: test\r\n\r\n")
        echoed = client.response()
        after = client.response()
    assert echoed.status == 200
    assert echoed.body == smuggled
    assert after.body == b"/next"


# -- 3. a send after a reset raises, and the loop stays free --------------------------------------


def test_asgi_send_after_a_reset_raises_and_the_loop_stays_free() -> None:
    chunk = b"z" * 65536
    total = 1 << 34  # 16 GiB: the app would stream for minutes if nothing stopped it
    outcome: dict[str, object] = {}
    done = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/probe":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"probe"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        sent = 0
        try:
            while sent < total:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += len(chunk)
        except OSError as exc:
            outcome["error"] = exc
        finally:
            outcome["sent"] = sent
            done.set()

    with running(app, lifespan="off") as server:
        with connect(server.port) as client:
            client.sendall(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
            assert client.head().status == 200
            client.part()
            # A reset: close with SO_LINGER 0.
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # Another client is answered at once: the loop is not held by a producer that would
        # take minutes to finish (the probe's socket times out after 5 s).
        with connect(server.port) as probe:
            probe.sendall(b"GET /probe HTTP/1.1\r\nHost: test\r\n\r\n")
            assert probe.response().body == b"probe"
        assert done.wait(10), "the app kept streaming to a client that was gone"
    assert isinstance(outcome["error"], ClientDisconnected)
    assert isinstance(outcome["sent"], int) and outcome["sent"] < total // 1000


# -- 4. the access log tells what went out --------------------------------------------------------


def head_generator_app(iterated: list[int]) -> WSGIApp:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        for index in range(100_000):
            iterated.append(index)
            yield b"y" * 65536

    return app


def one_line(records: LogRecords) -> str:
    assert wait_until(lambda: bool(records.records)), "no access line"
    (line,) = [record.getMessage() for record in records.records]
    return line


def test_a_head_response_logs_no_body_and_stops_a_wsgi_generator() -> None:
    iterated: list[int] = []
    with (
        access_records() as lines,
        running(head_generator_app(iterated), access_log=True) as server,
        connect(server.port) as client,
    ):
        client.sendall(b"HEAD / HTTP/1.1\r\nHost: test\r\n\r\n")
        response = client.response(b"HEAD")
        assert response.status == 200
        assert client.nothing_arrives(0.2)
        assert '"HEAD / HTTP/1.1" 200 0 ' in one_line(lines)
    # PEP 3333 lets a server stop iterating: a 6 GiB generator is not produced for a HEAD.
    assert len(iterated) <= 2


async def head_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x", b"1")]})
    await send({"type": "http.response.body", "body": b"body the client never sees"})


def test_an_asgi_head_response_logs_no_body() -> None:
    with (
        access_records() as lines,
        running(head_asgi, access_log=True, lifespan="off") as server,
        connect(server.port) as client,
    ):
        client.sendall(b"HEAD / HTTP/1.1\r\nHost: test\r\n\r\n")
        assert client.response(b"HEAD").body == b""
        assert '"HEAD / HTTP/1.1" 200 0 ' in one_line(lines)


def failing_wsgi(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/204":
        start_response("204 No Content", [("Content-Length", "0")])
        return [b""]
    if path == "/short":
        start_response("200 OK", [("Content-Length", "10")])
        return [b"12345"]
    raise RuntimeError("the app broke")


@pytest.mark.parametrize(
    ("target", "status", "size", "note"),
    [
        (b"/boom", 500, len(b"Internal Server Error\n"), ""),
        (b"/204", 204, 0, ""),
        (b"/short", 200, 5, " (response cut short)"),
    ],
)
def test_the_access_log_counts_the_body_bytes_sent(
    target: bytes, status: int, size: int, note: str
) -> None:
    with (
        access_records() as lines,
        error_records() as errors,
        running(failing_wsgi, access_log=True) as server,
        connect(server.port) as client,
    ):
        client.sendall(b"GET %s HTTP/1.1\r\nHost: test\r\n\r\n" % target)
        response = client.response(truncated_ok=True)
        assert response.status == status
        line = one_line(lines)
        assert f'"GET {target.decode()} HTTP/1.1" {status} {size} ' in line
        assert line.endswith("ms" + note)
        if target == b"/short":
            # The client waits for bytes that never come: only the close can tell it.
            assert closes_without_another_response(client)
            assert any("short of its Content-Length" in m for m in errors.messages())


def test_a_request_refused_before_the_app_is_logged() -> None:
    head = b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 2000\r\n\r\n"
    with (
        access_records() as lines,
        running(asgi_app, access_log=True, lifespan="off", limit_request_body=1000) as server,
        connect(server.port) as client,
    ):
        client.sendall(head)
        assert client.response().status == 413
        line = one_line(lines)
    assert '"POST /upload HTTP/1.1" 413 ' in line
    assert "request body larger than the limit" in line


def stream_forever(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    while True:
        yield b"s" * 65536


def test_a_wsgi_stream_the_client_aborts_is_logged_with_the_bytes_sent() -> None:
    with access_records() as lines, running(stream_forever, access_log=True) as server:
        with connect(server.port) as client:
            client.sendall(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
            assert client.head().status == 200
            client.part()
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        line = one_line(lines)
    assert '"GET /stream HTTP/1.1" 200 ' in line
    assert line.endswith("(client went away)")
    sent = int(line.split('" 200 ')[1].split()[0])
    assert sent >= 65536


# -- 5. a chunked upload over the limit says why it ended -----------------------------------------


def test_a_chunked_upload_over_the_limit_raises_a_distinct_error_in_a_wsgi_app() -> None:
    seen: list[BaseException] = []
    reading = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        reading.set()
        try:
            environ["wsgi.input"].read()
        except OSError as exc:
            seen.append(exc)
            raise
        start_response("200 OK", [])
        return [b"read it all"]

    head, body = post(b"/upload", 300_000, chunked=True)
    with (
        running(app, limit_request_body=100_000) as server,
        connect(server.port, reset_is_close=True) as client,
    ):
        # The app reads before the body passes the limit, as an upload view would.
        client.sendall(head + body[:1000])
        assert reading.wait(5)
        send_in_background(client, body[1000:])
        assert client.response().status == 413
        assert wait_until(lambda: bool(seen))
    assert isinstance(seen[0], RequestBodyTooLarge)
    assert "--limit-request-body" in str(seen[0])


def test_a_chunked_upload_over_the_limit_is_a_disconnect_to_an_asgi_app() -> None:
    messages: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            messages.append(message["type"])
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                return

    head, body = post(b"/upload", 300_000, chunked=True)
    with (
        running(app, lifespan="off", limit_request_body=100_000) as server,
        connect(server.port, reset_is_close=True) as client,
    ):
        client.sendall(head)
        send_in_background(client, body)
        assert client.response().status == 413
        assert wait_until(lambda: "http.disconnect" in messages)


# -- 6. a queued request whose client gave up never runs -----------------------------------------


def test_a_queued_wsgi_request_whose_client_left_is_skipped() -> None:
    release = threading.Event()
    ran: list[str] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        ran.append(environ["PATH_INFO"])
        if environ["PATH_INFO"] == "/busy":
            release.wait(10)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    with (
        access_records() as lines,
        running(app, threads=1, access_log=True) as server,
        connect(server.port) as busy,
    ):
        busy.sendall(b"GET /busy HTTP/1.1\r\nHost: test\r\n\r\n")
        assert wait_until(lambda: ran == ["/busy"])
        # A client that times out while its request waits for the busy pool, and closes.
        with connect(server.port) as impatient:
            impatient.sendall(b"GET /abandoned HTTP/1.1\r\nHost: test\r\n\r\n")
        # Nothing shows when the server has read the close; on loopback it takes microseconds.
        time.sleep(0.3)
        release.set()
        assert busy.response().body == b"ok"
        busy.sendall(b"GET /after HTTP/1.1\r\nHost: test\r\n\r\n")
        assert busy.response().body == b"ok"
        assert wait_until(lambda: len(lines.records) == 3)
    assert ran == ["/busy", "/after"]
    abandoned = [r.getMessage() for r in lines.records if "/abandoned" in r.getMessage()]
    assert len(abandoned) == 1
    assert '"GET /abandoned HTTP/1.1" 499 0 ' in abandoned[0]
    assert abandoned[0].endswith("(client went away before the app ran)")


def test_a_request_taken_at_once_is_served_to_a_client_that_half_closed() -> None:
    with running(wsgi_app) as server, connect(server.port) as client:
        client.sendall(b"GET /half HTTP/1.1\r\nHost: test\r\n\r\n")
        client.half_close()
        assert client.until_closed()[0].body == b"/half"
