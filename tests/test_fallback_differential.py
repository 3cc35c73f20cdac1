"""One table of raw requests, sent to Django's runserver classes (basehttp's ThreadedWSGIServer
and WSGIRequestHandler, in a thread) and to `aserve --server wsgiref` (a subprocess), both
serving the echo app: status, header fields other than Date and Server, and bodies must be
the same, except where the table lists a difference, with its reason and what aserve sends
instead."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import pytest

from tests.support.apps import echo_wsgi
from tests.support.client import connect
from tests.support.django_config import configure_django
from tests.support.http import FramingError
from tests.support.procs import ServerProcess

ECHO_APP = "tests.support.apps.echo_wsgi:app"
_NOT_COMPARED = (b"date", b"server")


@dataclass(frozen=True)
class Seen:
    """A response as compared: status, fields (but Date and Server) in order, body."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes = b""
    complete: bool = True


@dataclass(frozen=True)
class Broken:
    """What came next was not a well-framed response: why the shared parser refused it."""

    error: str


Outcome = tuple[Seen | Broken, ...]


@dataclass(frozen=True)
class Differs:
    """A listed difference: why aserve answers otherwise, and its answer given Django's."""

    why: str
    aserve: Callable[[Outcome], Outcome]


@dataclass(frozen=True)
class Row:
    name: str
    data: bytes
    differs: Differs | None = None
    # The methods of the first requests, which decide how their responses are framed
    # (a response to HEAD has no body); the rest are GETs.
    methods: tuple[bytes, ...] = ()


def request(line: str, *fields: str, body: bytes = b"") -> bytes:
    return "\r\n".join((line, "Host: test", *fields, "", "")).encode("latin-1") + body


GET = request("GET /echo HTTP/1.1")
CLOSE = (b"Connection", b"close")


def changed(
    seen: Seen | Broken,
    *,
    add: tuple[tuple[bytes, bytes], ...] = (),
    drop: tuple[bytes, ...] = (),
    read: bytes = b"",
) -> Seen:
    """`seen` with fields added or dropped, or with `read` added to the body the echo app
    read (and its Content-Length grown to match)."""
    assert isinstance(seen, Seen), seen
    headers = tuple(pair for pair in seen.headers if pair[0].lower() not in drop) + add
    if read:
        headers = tuple(
            (name, b"%d" % (int(value) + len(read)) if name.lower() == b"content-length" else value)
            for name, value in headers
        )
    return replace(seen, headers=headers, body=seen.body + read)


def each(
    *, add: tuple[tuple[bytes, bytes], ...] = (), drop: tuple[bytes, ...] = ()
) -> Callable[[Outcome], Outcome]:
    """Every response of Django's with fields added or dropped."""
    return lambda django: tuple(changed(seen, add=add, drop=drop) for seen in django)


def refused(status: int, reason: str) -> Callable[[Outcome], Outcome]:
    """aserve's short plain-text refusal, whatever Django did."""
    body = reason.encode() + b"\n"
    headers = (
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", b"%d" % len(body)),
        CLOSE,
    )
    return lambda django: (Seen(status, headers, body),)


LIMITS = "aserve's request limits (the README gives each default and its reason)"
REFUSED = "aserve refuses it in its plain-text format; runserver"

ROWS = [
    # -- the same on both ---------------------------------------------------------------------
    Row("query and percent-decoded path", request("GET /a%20b/%C3%A9?x=1&y=%20 HTTP/1.1")),
    Row("leading // in the path", request("GET //evil.example/x HTTP/1.1")),
    Row("keep-alive, pipelined", GET + request("GET /echo?second HTTP/1.1")),
    Row(
        "body with Content-Length",
        request("POST /echo HTTP/1.1", "Content-Length: 5", body=b"hello"),
    ),
    Row("repeated fields", request("GET /echo HTTP/1.1", "Accept: a", "Accept: b")),
    Row(
        "fields with underscores", request("GET /echo HTTP/1.1", "X-User: a", "X_User: b", "X_Y: c")
    ),
    Row("HTTP/1.1 without Host", b"GET /echo HTTP/1.1\r\n\r\n"),
    Row("HEAD", request("HEAD /echo HTTP/1.1") + GET, methods=(b"HEAD",)),
    Row("HEAD of a stream", request("HEAD /stream HTTP/1.1") + GET, methods=(b"HEAD",)),
    Row("stream without a length", request("GET /stream HTTP/1.1") + GET),
    Row("app raises: 500", request("GET /raise HTTP/1.1") + GET),
    Row(
        "unread body, drained",
        request("POST /unread HTTP/1.1", "Content-Length: 5", body=b"hello") + GET,
    ),
    Row(
        "Expect: 100-continue, body read",
        request("POST /echo HTTP/1.1", "Expect: 100-continue", "Content-Length: 5", body=b"hello"),
    ),
    # -- listed differences -------------------------------------------------------------------
    Row(
        "204",
        request("GET /status/204 HTTP/1.1"),
        Differs(
            "RFC 9110 §8.6 forbids Content-Length in a 204; runserver sends wsgiref's default of "
            "0, which the shared parser refuses",
            lambda django: (Seen(204, ()),),
        ),
    ),
    Row(
        "304",
        request("GET /status/304 HTTP/1.1"),
        Differs(
            "a 304 may only carry the length of the 200 it stands for (RFC 9110 §8.6), which "
            "wsgiref's default of 0 is not",
            each(drop=(b"content-length",)),
        ),
    ),
    Row(
        "Connection: close",
        request("GET /echo HTTP/1.1", "Connection: close") + GET,
        Differs(
            "a server closing on the client's close option should say so in its response "
            "(RFC 9112 §9.6), as the main mode does",
            each(add=(CLOSE,)),
        ),
    ),
    Row(
        "response shorter than its length",
        request("GET /short HTTP/1.1") + GET,
        Differs(
            "only a close tells the client that the rest will not come; runserver goes on, "
            "and the client reads the next response as the rest of the body",
            lambda django: (replace(changed(django[0]), body=b"short", complete=False),),
        ),
    ),
    Row(
        "HTTP/1.0",
        request("GET /echo HTTP/1.0"),
        Differs(
            "the status line says HTTP/1.1, which a client takes as persistent unless told "
            "otherwise (RFC 9112 §9.3); runserver closes without saying so",
            each(add=(CLOSE,)),
        ),
    ),
    Row(
        "HTTP/1.0 keep-alive",
        request("GET /echo HTTP/1.0", "Connection: keep-alive") * 2,
        Differs(
            "an HTTP/1.0 client (ApacheBench -k) reuses the connection only when told so",
            each(add=((b"Connection", b"keep-alive"),)),
        ),
    ),
    Row(
        "chunked body",
        request(
            "POST /echo HTTP/1.1",
            "Transfer-Encoding: chunked",
            body=b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        ),
        Differs(
            "chunked bodies are decoded into wsgi.input (wsgi.input_terminated); runserver "
            "gives the app no body and parses the chunks as the next request",
            lambda django: (changed(django[0], read=b"hello world"),),
        ),
    ),
    Row(
        "malformed chunk",
        request("POST /echo HTTP/1.1", "Transfer-Encoding: chunked", body=b"zz\r\n"),
        Differs(
            "a malformed chunked body is refused; runserver gives the app no body and parses "
            "the rest as a request",
            refused(400, "invalid chunk size line"),
        ),
    ),
    Row(
        "Expect: 100-continue, body unread",
        request("POST /unread HTTP/1.1", "Expect: 100-continue", "Content-Length: 5", body=b"hello")
        + GET,
        Differs(
            "100 Continue goes out when the app reads the body, as in the main mode, so that an "
            "app can refuse an upload before it is sent; the client then must not send it, so "
            "the connection closes (RFC 9110 §10.1.1). runserver sends 100 with the head",
            lambda django: (changed(django[1], add=(CLOSE,)),),
        ),
    ),
    Row(
        "unread body beyond --limit-drain",
        request("POST /unread HTTP/1.1", "Content-Length: 300000", body=b"x" * 300000) + GET,
        Differs(
            "past --limit-drain (256 KiB) closing costs less than reading an upload nobody "
            "wants; runserver reads it all",
            lambda django: (changed(django[0], add=(CLOSE,)),),
        ),
    ),
    Row(
        "request line over the limit",
        request("GET /" + "a" * 8190 + " HTTP/1.1"),
        Differs(f"{LIMITS}; runserver allows 64 KiB", refused(414, "request line too long")),
    ),
    Row(
        "field over the limit",
        request("GET /echo HTTP/1.1", "X-Big: " + "b" * 8190),
        Differs(
            f"{LIMITS}; runserver allows 64 KiB", refused(431, "request header field too large")
        ),
    ),
    Row(
        "head over the limit",
        request("GET /echo HTTP/1.1", *(f"X-{i}: " + "h" * 8000 for i in range(9))),
        Differs(
            f"{LIMITS}; runserver has no limit on the head",
            refused(431, "request header section too large"),
        ),
    ),
    Row(
        "101 fields",
        request("GET /echo HTTP/1.1", *(f"X-{i}: x" for i in range(100))),
        Differs(
            f"{REFUSED} answers with the standard library's HTML page",
            refused(431, "too many request header fields"),
        ),
    ),
    Row(
        "Content-Length over the limit",
        request("POST /echo HTTP/1.1", f"Content-Length: {2 << 30}"),
        Differs(
            f"{LIMITS}; runserver has none and waits for the body",
            refused(413, "request body larger than the limit"),
        ),
    ),
    Row(
        "Transfer-Encoding and Content-Length",
        request(
            "POST /echo HTTP/1.1",
            "Transfer-Encoding: chunked",
            "Content-Length: 5",
            body=b"0\r\n\r\n",
        ),
        Differs(
            "both framings in one request is how request smuggling starts (RFC 9112 §6.1); "
            "runserver goes by Content-Length and hands the app the chunk framing as its body",
            refused(400, "Transfer-Encoding with Content-Length or in HTTP/1.0"),
        ),
    ),
    Row(
        "invalid Content-Length",
        request("POST /echo HTTP/1.1", "Content-Length: 5x", body=b"hello"),
        Differs(
            "a length that is not 1*DIGIT leaves the body's end unknown (RFC 9110 §8.6); "
            "runserver hands it to the app (whose wsgiref.validate wrapper fails: 500) and "
            "takes the body for the next request",
            refused(400, "invalid Content-Length"),
        ),
    ),
    Row(
        "HTTP/2.0",
        request("GET /echo HTTP/2.0"),
        Differs(
            f"{REFUSED} answers with the standard library's HTML page, and without a status "
            "line (an unsupported version leaves it answering as to HTTP/0.9)",
            refused(505, "unsupported HTTP version HTTP/2.0"),
        ),
    ),
]


def outcome(port: int, row: Row) -> Outcome:
    """What the server at `port` answers to the row's bytes, sent at once and half-closed."""
    with connect(port, timeout=10) as client:
        client.sendall(row.data)
        client.half_close()
        broken: tuple[Broken, ...] = ()
        try:
            for method in row.methods:
                client.response(method)
            client.until_closed(truncated_ok=True)
        except FramingError as exc:
            broken = (Broken(str(exc)),)
        except ConnectionResetError:
            broken = (Broken("connection reset"),)
        seen = tuple(
            Seen(
                response.status,
                tuple(pair for pair in response.headers if pair[0].lower() not in _NOT_COMPARED),
                response.body,
                response.complete,
            )
            for response in client.received
        )
    return seen + broken


@pytest.fixture(scope="module")
def runserver() -> Iterator[int]:
    """Django's runserver classes, as `django.core.servers.basehttp.run()` puts them together."""
    configure_django()
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    server = ThreadedWSGIServer(("127.0.0.1", 0), WSGIRequestHandler)
    server.set_app(echo_wsgi.app)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def wsgiref_mode() -> Iterator[int]:
    with ServerProcess("--server", "wsgiref", "--port", "0", ECHO_APP) as server:
        yield server.wait_listening()


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_answers_as_runserver_does(row: Row, runserver: int, wsgiref_mode: int) -> None:
    django = outcome(runserver, row)
    aserve = outcome(wsgiref_mode, row)
    if row.differs is None:
        assert aserve == django
    else:
        assert aserve != django, f"no longer differs ({row.differs.why}): unlist it"
        assert aserve == row.differs.aserve(django), row.differs.why
