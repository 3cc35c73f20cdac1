"""The WSGI runner over real sockets: the environ, streaming wsgi.input, responses, close(),
backpressure, the thread pool, Django's WSGIHandler and the streaming example."""

from __future__ import annotations

import contextvars
import hashlib
import importlib.util
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import IO, Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment
from wsgiref.validate import validator

import pytest

import aserve.protocols.target
import aserve.runners.wsgi
from tests.support.client import connect, raw_exchange
from tests.support.django_config import configure_django
from tests.support.http import Response
from tests.support.logs import LogRecords
from tests.support.polling import wait_until
from tests.support.servers import running

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TEXT = ("Content-Type", "text/plain")

# The Django test points ROOT_URLCONF at this module and fills this list.
urlpatterns: list[Any] = []

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


# -- helpers ----------------------------------------------------------------------------------


def build(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    version: str = "1.1",
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: test"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body and not any(name.lower() == "transfer-encoding" for name, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


def fetch(
    port: int,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    truncated_ok: bool = False,
) -> Response:
    """The one response to a request on a fresh connection that the client half-closes."""
    data = build(method, target, headers, body)
    (reply,) = raw_exchange(port, data, truncated_ok=truncated_ok)
    return reply


def fetch_over_open_connection(port: int, target: str) -> Response:
    """One GET answered on a connection the client keeps open while it waits (a client that
    half-closes, then has to wait for a busy pool, counts as gone)."""
    with connect(port, timeout=10) as client:
        client.sendall(build("GET", target))
        return client.response()


def respond(
    start_response: StartResponse,
    body: bytes,
    status: str = "200 OK",
    content_type: str = "text/plain",
) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def max_send_buffer() -> int:
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as limits:
            return int(limits.read().split()[2])
    except OSError:
        return 4 * 1024 * 1024


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class TrackedBody:
    """A response iterable with a close() that counts its calls."""

    def __init__(
        self, chunks: Iterable[bytes], *, fail_at: int | None = None, pause: float = 0.0
    ) -> None:
        self.chunks = chunks
        self.fail_at = fail_at
        self.pause = pause
        self.sent = 0
        self.closes = 0
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        for index, chunk in enumerate(self.chunks):
            if index == self.fail_at:
                raise RuntimeError(f"the body broke at chunk {index}")
            if self.pause:
                time.sleep(self.pause)
            self.sent += 1
            yield chunk

    def close(self) -> None:
        self.closes += 1
        self.closed.set()


# -- the environ ------------------------------------------------------------------------------


def _environ_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    length = environ.get("CONTENT_LENGTH")
    body = environ["wsgi.input"].read(int(length)) if length else b""
    info = {key: value for key, value in environ.items() if isinstance(value, str)}
    info["body"] = body.decode("latin-1")
    extras = {
        "wsgi.version": list(environ["wsgi.version"]),
        "wsgi.multithread": environ["wsgi.multithread"],
        "wsgi.multiprocess": environ["wsgi.multiprocess"],
        "wsgi.run_once": environ["wsgi.run_once"],
        "wsgi.input_terminated": environ.get("wsgi.input_terminated"),
    }
    payload = json.dumps({**info, **extras}).encode("ascii")
    return respond(start_response, payload, content_type="application/json")


environ_app = validator(_environ_app)


def test_environ_has_cgi_variables_as_strings() -> None:
    with running(environ_app) as server, connect(server.port) as client:
        client.sendall(
            build(
                "POST",
                "/caf%C3%A9/x?q=%20y&name=caf%C3%A9&empty=",
                [("Content-Type", "application/json"), ("User-Agent", "probe/1")],
                b"{}",
            )
        )
        reply = client.response()
        client_port = client.local_port
        server_port = server.port
    assert reply.status == 200
    env = json.loads(reply.body)
    assert env["REQUEST_METHOD"] == "POST"
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PORT"] == str(server_port)
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/caf\xc3\xa9/x"
    assert env["QUERY_STRING"] == "q=%20y&name=caf%C3%A9&empty="
    assert env["CONTENT_TYPE"] == "application/json"
    assert env["CONTENT_LENGTH"] == "2"
    assert "HTTP_CONTENT_TYPE" not in env
    assert "HTTP_CONTENT_LENGTH" not in env
    assert env["HTTP_HOST"] == "test"
    assert env["HTTP_USER_AGENT"] == "probe/1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(client_port)
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.version"] == [1, 0]
    assert env["wsgi.multithread"] is True
    assert env["wsgi.multiprocess"] is False
    assert env["wsgi.run_once"] is False
    assert env["wsgi.input_terminated"] is True
    assert env["body"] == "{}"


@pytest.mark.parametrize(
    ("target", "path_info"),
    [
        ("/plain/path", "/plain/path"),
        ("/caf%C3%A9", "/caf\xc3\xa9"),  # UTF-8 bytes, each seen as one latin-1 character
        ("/%FF", "/\xff"),  # not UTF-8 at all: still one character per byte
        ("/a%2Fb", "/a/b"),  # PEP 3333 decodes %2F too; the raw path is lost
        ("/%41%42", "/AB"),
        ("/%", "/%"),  # a stray percent sign stays as it is
        ("/sp%20ace", "/sp ace"),
    ],
)
def test_path_info_is_latin1_of_the_decoded_bytes(target: str, path_info: str) -> None:
    with running(environ_app) as server:
        reply = fetch(server.port, "GET", target + "?keep=%2F")
    env = json.loads(reply.body)
    assert env["PATH_INFO"] == path_info
    assert env["QUERY_STRING"] == "keep=%2F"


def test_repeated_and_many_targets_keep_their_own_path_and_query(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # PATH_INFO and QUERY_STRING are remembered per target, in a memo emptied when full.
    monkeypatch.setattr(aserve.protocols.target, "TARGET_MEMO_MAX", 2)
    targets = ["/a?x=1", "/caf%C3%A9?y", "/a?x=1", "/b", "/c?z=%20", "/a?x=1", "/caf%C3%A9?y"]
    expected = {
        "/a?x=1": ("/a", "x=1"),
        "/caf%C3%A9?y": ("/caf\xc3\xa9", "y"),
        "/b": ("/b", ""),
        "/c?z=%20": ("/c", "z=%20"),
    }
    with running(environ_app) as server:
        for target in targets:
            env = json.loads(fetch(server.port, "GET", target).body)
            assert (env["PATH_INFO"], env["QUERY_STRING"]) == expected[target], target


def test_request_headers_become_http_variables() -> None:
    headers = [
        ("X-Multi", "first"),
        ("Accept", "text/html"),
        ("x-multi", "second"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X_Forwarded_For", "6.6.6.6"),  # an underscore twin: dropped, never merged
        ("X_Only_Underscores", "dropped"),
        ("X-Latin", "caf\xe9"),  # one byte 0xE9 on the wire
        ("X-Empty", ""),
    ]
    with running(environ_app) as server:
        env = json.loads(fetch(server.port, "GET", "/", headers).body)
    assert env["HTTP_X_MULTI"] == "first,second"
    assert env["HTTP_ACCEPT"] == "text/html"
    assert env["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"
    assert not any("UNDERSCORES" in key for key in env)
    assert env["HTTP_X_LATIN"] == "caf\xe9"
    assert env["HTTP_X_EMPTY"] == ""
    assert env.get("CONTENT_LENGTH", "") == ""
    assert "CONTENT_TYPE" not in env


def test_script_name_comes_from_root_path() -> None:
    with running(environ_app, root_path="/mounted") as server:
        env = json.loads(fetch(server.port, "GET", "/inner/page?x=1").body)
    assert env["SCRIPT_NAME"] == "/mounted"
    assert env["PATH_INFO"] == "/inner/page"
    assert env["QUERY_STRING"] == "x=1"


def test_server_protocol_follows_the_request_version() -> None:
    with running(environ_app) as server:
        (reply,) = raw_exchange(server.port, b"GET /old HTTP/1.0\r\n\r\n")
    assert reply.head.startswith(b"HTTP/1.1 200 OK\r\n")
    env = json.loads(reply.body)
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert "HTTP_HOST" not in env


# -- wsgi.input -------------------------------------------------------------------------------


def _reading_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    stream = environ["wsgi.input"]
    steps: list[Any] = [
        stream.readline(),
        stream.read(3),
        stream.readline(1),
        stream.readline(),
        stream.readline(4),
        stream.readlines(),
        stream.read(10),
        stream.readline(),
    ]
    payload = json.dumps(
        [[s.decode() for s in step] if isinstance(step, list) else step.decode() for step in steps]
    ).encode()
    return respond(start_response, payload, content_type="application/json")


READ_BODY = b"alpha\nbeta\ngamma-gamma\ndelta\nend"
READ_STEPS = [
    "alpha\n",
    "bet",
    "a",
    "\n",
    "gamm",
    ["a-gamma\n", "delta\n", "end"],
    "",
    "",
]


def test_input_read_readline_readlines() -> None:
    with running(validator(_reading_app)) as server:
        reply = fetch(server.port, "POST", "/", body=READ_BODY)
    assert reply.status == 200
    assert json.loads(reply.body) == READ_STEPS


def test_input_in_small_chunked_pieces() -> None:
    # Chunk boundaries fall inside lines: readline must stitch pieces across reads.
    pieces = [READ_BODY[i : i + 4] for i in range(0, len(READ_BODY), 4)]
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    with running(validator(_reading_app)) as server, connect(server.port) as client:
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.sendall(build("POST", "/", [("Transfer-Encoding", "chunked")]))
        for index in range(0, len(body), 7):
            client.sendall(body[index : index + 7])
            time.sleep(0.002)
        reply = client.response()
    assert reply.status == 200
    assert json.loads(reply.body) == READ_STEPS


def test_input_iteration_and_a_line_longer_than_the_flow_buffer() -> None:
    long_line = b"x" * 300_000 + b"\n"
    body = b"first\n" + long_line + b"last line without newline"

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        lengths = [len(line) for line in environ["wsgi.input"]]
        return respond(start_response, json.dumps(lengths).encode())

    with running(validator(app), limit_body_buffer=65536) as server:
        reply = fetch(server.port, "PUT", "/", body=body)
    assert json.loads(reply.body) == [6, len(long_line), 25]


def test_chunked_request_body_reads_to_the_end() -> None:
    seen: list[WSGIEnvironment] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        seen.append(dict(environ))
        pieces = []
        while piece := environ["wsgi.input"].read(5):
            pieces.append(piece)
        return respond(start_response, b"|".join(pieces))

    chunked = b"3\r\nabc\r\n1;ext=1\r\nd\r\na\r\nefghijklmn\r\n0\r\n\r\n"
    with running(validator(app)) as server:
        reply = fetch(server.port, "POST", "/", [("Transfer-Encoding", "chunked")], chunked)
    assert reply.status == 200
    assert reply.body == b"abcde|fghij|klmn"
    assert seen[0].get("CONTENT_LENGTH", "") == ""
    assert seen[0]["HTTP_TRANSFER_ENCODING"] == "chunked"


def test_large_upload_streams_through_a_bounded_buffer() -> None:
    # Measured from outside the server, so that it holds for the compiled build too (whose
    # methods a monkeypatch does not reach): while the app has read nothing, the client can
    # send only what the server's body buffer and the kernel's socket buffers hold. A server
    # that kept reading would take the whole upload into memory and let the client finish.
    total = 32 * 1024 * 1024
    block = 65536
    sent = 0
    sent_before_reading = -1
    rss_growth = 0

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        nonlocal rss_growth, sent_before_reading
        baseline = rss_bytes()
        # The client's thread may not have sent a byte yet on a busy machine: a stall is only
        # a stall once the upload has begun.
        wait_until(lambda: sent > 0, 10.0)
        last = -1
        while sent != last and sent < total:  # until the client is stalled (or done)
            last = sent
            time.sleep(0.3)
        sent_before_reading = sent
        digest = hashlib.sha256()
        received = 0
        while piece := environ["wsgi.input"].read(block):
            digest.update(piece)
            received += len(piece)
            rss_growth = max(rss_growth, rss_bytes() - baseline)
        return respond(start_response, f"{received} {digest.hexdigest()}".encode())

    expected = hashlib.sha256()
    with running(validator(app)) as server, connect(server.port, timeout=20) as client:

        def upload() -> None:
            nonlocal sent
            for index in range(total // block):
                # Generated on the fly: the client never holds the upload either.
                piece = index.to_bytes(4, "big") * (block // 4)
                expected.update(piece)
                client.sendall(piece)
                sent += block

        client.sendall(build("POST", "/upload", [("Content-Length", str(total))]))
        uploader = threading.Thread(target=upload)
        uploader.start()
        uploader.join(30)
        reply = client.response()
    assert reply.status == 200
    assert reply.body.decode() == f"{total} {expected.hexdigest()}"
    # The body buffer (1 MiB) and one read (uvloop reads 256 KiB) in the server, and the two
    # kernel socket buffers, a few MiB on loopback: far from the 32 MiB sent.
    assert 0 < sent_before_reading < total // 2, sent_before_reading
    assert rss_growth < 16 * 1024 * 1024, rss_growth


def test_expect_continue_is_sent_when_the_app_first_reads() -> None:
    go = threading.Event()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        go.wait(5)
        body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        return respond(start_response, b"got " + body)

    with running(validator(app)) as server, connect(server.port) as client:
        client.sendall(build("POST", "/", [("Content-Length", "5"), ("Expect", "100-continue")]))
        assert client.nothing_arrives()  # the app has not touched wsgi.input yet
        go.set()
        assert client.response().head == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.sendall(b"hello")
        reply = client.response()
        assert (reply.status, reply.body) == (200, b"got hello")
        # The connection stays usable, and the next request gets its own interim response.
        client.sendall(build("POST", "/", [("Content-Length", "5"), ("Expect", "100-continue")]))
        assert client.response().head == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.sendall(b"again")
        assert client.response().body == b"got again"


def test_expect_continue_is_not_sent_when_the_app_answers_without_reading() -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return respond(start_response, b"too big\n", "413 Content Too Large")

    with running(validator(app)) as server, connect(server.port) as client:
        head = build("PUT", "/", [("Content-Length", "50000000"), ("Expect", "100-continue")])
        client.sendall(head)
        reply = client.response()
        # The body never came: the server must close, not wait for it.
        rest = client.until_closed()
    assert (reply.status, reply.body) == (413, b"too big\n")
    assert reply.header(b"connection") == b"close"
    assert rest == []


# -- the response -----------------------------------------------------------------------------


def test_write_callable_comes_before_the_iterable() -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", [TEXT])
        write(b"one,")
        write(b"")
        write(b"two,")
        return iter([b"three"])

    with running(validator(app)) as server:
        reply = fetch(server.port, "GET", "/")
    assert (reply.status, reply.body) == (200, b"one,two,three")
    assert reply.header(b"transfer-encoding") == b"chunked"


def test_start_response_with_exc_info_before_headers_replaces_the_response() -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [TEXT, ("X-First", "yes")])
        try:
            raise ValueError("changed my mind")
        except ValueError:
            start_response("503 Service Unavailable", [TEXT, ("X-Second", "yes")], sys.exc_info())
        return [b"sorry"]

    with running(validator(app)) as server:
        reply = fetch(server.port, "GET", "/")
    assert (reply.status, reply.body) == (503, b"sorry")
    assert reply.header(b"x-second") == b"yes"
    assert b"x-first" not in reply.names


def test_start_response_with_exc_info_after_headers_reraises(error_log: LogRecords) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [TEXT])
        yield b"partial"
        try:
            raise KeyError("too late")
        except KeyError:
            start_response("500 Internal Server Error", [TEXT], sys.exc_info())
        yield b"never"

    with running(validator(app)) as server:
        reply = fetch(server.port, "GET", "/", truncated_ok=True)
        record = error_log.wait_for_error()
    assert reply.status == 200
    assert reply.body == b"partial"

    assert not reply.complete  # no last chunk: the client can tell the body is truncated
    assert record.exc_info is not None
    assert record.exc_info[0] is KeyError


def test_start_response_twice_without_exc_info_is_an_error(error_log: LogRecords) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [TEXT])
        start_response("201 Created", [TEXT])
        return [b"x"]

    with running(validator(app)) as server:
        reply = fetch(server.port, "GET", "/")
    assert reply.status == 500
    assert "start_response" in str(error_log.wait_for_error().exc_info)


def test_returning_without_start_response_is_an_error(error_log: LogRecords) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return []

    with running(validator(app)) as server:
        reply = fetch(server.port, "GET", "/")
    assert reply.status == 500
    assert "without calling start_response" in str(error_log.wait_for_error().exc_info)


def test_the_apps_reason_phrase_is_sent() -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return respond(start_response, b"x", "299 Custom Phrase")

    with running(validator(app)) as server, connect(server.port) as client:
        client.sendall(build("GET", "/"))
        reply = client.response()
    assert (reply.status, reply.reason) == (299, b"Custom Phrase")


@pytest.mark.parametrize(
    ("status", "line"),
    [
        ("200 OK", b"HTTP/1.1 200 OK\r\n"),
        ("404 Not Found", b"HTTP/1.1 404 Not Found\r\n"),
        ("200 Fine", b"HTTP/1.1 200 Fine\r\n"),  # a known code, a phrase of its own
        ("200 ok", b"HTTP/1.1 200 ok\r\n"),
        ("299 Custom", b"HTTP/1.1 299 Custom\r\n"),
        ("200 OK ", b"HTTP/1.1 200 OK \r\n"),
    ],
)
def test_status_line_is_the_apps_status(status: str, line: bytes) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return respond(start_response, b"x", status)

    with running(app) as server:
        reply = fetch(server.port, "GET", "/")
    assert reply.head.startswith(line)


@pytest.mark.parametrize("status", ["2000 OK", "20x OK", "OK", "200 \u20ac", "200 a\r\nX: y"])
def test_invalid_status_is_a_500(status: str, error_log: LogRecords) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return respond(start_response, b"x", status)

    with running(app) as server:
        reply = fetch(server.port, "GET", "/")
        error_log.wait_for_error()
    assert reply.status == 500


# Response fields by request path, each request on one connection (see test below).
_FIELDS_BY_PATH: dict[str, list[tuple[str, str]]] = {
    "/a": [("X-Seen", "one"), ("Content-Type", "text/plain")],
    "/b": [("X-Seen", "two"), ("Content-Type", "text/plain")],
    "/latin": [("X-Seen", "caf\xe9"), ("Content-Type", "text/plain")],
    "/bad-value": [("X-Seen", "one\r\nX-Injected: 1")],
    "/bad-name": [("X-Seen ", "one")],
    "/not-latin": [("X-Seen", "\u20ac")],
    "/not-str": [("X-Seen", 1)],  # type: ignore[list-item]
}


def _fields_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    fields = _FIELDS_BY_PATH[environ["PATH_INFO"]]
    start_response("200 OK", [*fields, ("Content-Length", str(len(environ["PATH_INFO"])))])
    return [environ["PATH_INFO"].encode("ascii")]


def test_repeated_response_fields_go_out_as_the_app_gives_them_each_time(
    error_log: LogRecords,
) -> None:
    # The runner and http11 remember the fields they have encoded and checked: a field sent
    # again, with another value, or made invalid after it was valid, is still what goes out.
    expected = {
        "/a": b"\r\nX-Seen: one\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n",
        "/b": b"\r\nX-Seen: two\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n",
        "/latin": b"\r\nX-Seen: caf\xe9\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n",
    }
    with running(_fields_app) as server:
        with connect(server.port) as client:
            for path in ["/a", "/a", "/b", "/a", "/latin", "/b", "/latin"]:
                client.sendall(build("GET", path))
                reply = client.response()
                assert reply.status == 200
                assert expected[path] in reply.head
                assert reply.body == path.encode("ascii")
        for path in ["/bad-value", "/bad-name", "/not-latin", "/not-str"]:
            reply = fetch(server.port, "GET", path)
            error_log.wait_for_error()
            assert reply.status == 500
            assert b"x-seen" not in reply.names
            assert b"x-injected" not in reply.names
        reply = fetch(server.port, "GET", "/a")
        assert expected["/a"] in reply.head


def test_response_fields_beyond_a_full_memo_are_encoded_and_checked(
    monkeypatch: pytest.MonkeyPatch, error_log: LogRecords
) -> None:
    monkeypatch.setattr(aserve.runners.wsgi, "FIELD_MEMO_NAMES", 1)
    monkeypatch.setattr(aserve.runners.wsgi, "FIELD_MEMO_VALUES", 1)
    fields = [("X-A", "1"), ("X-B", "2"), ("X-A", "3"), ("X-Long", "v" * 300)]
    memo: dict[str, dict[str, object]] = {}
    assert aserve.runners.wsgi._encode_fields(fields, memo) == [
        (b"X-A", b"1"),
        (b"X-B", b"2"),
        (b"X-A", b"3"),
        (b"X-Long", b"v" * 300),
    ]
    assert memo == {"X-A": {"1": (b"X-A", b"1")}}

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        bad = [("X-B", "2\r\nX-Injected: 1")] if environ["PATH_INFO"] == "/bad" else []
        start_response("200 OK", [*fields, *bad, ("Content-Length", "2")])
        return [b"ok"]

    with running(app) as server:
        for _ in range(3):
            reply = fetch(server.port, "GET", "/")
            assert b"\r\nX-A: 1\r\nX-B: 2\r\nX-A: 3\r\nX-Long: vvv" in reply.head
        reply = fetch(server.port, "GET", "/bad")
        error_log.wait_for_error()
        assert reply.status == 500
        assert b"x-injected" not in reply.names


def test_headers_wait_for_the_first_non_empty_chunk() -> None:
    go = threading.Event()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [TEXT])
        yield b""
        yield b""
        go.wait(5)
        yield b""
        yield b"data"
        yield b""
        yield b"more"

    with running(validator(app)) as server, connect(server.port) as client:
        client.sendall(build("GET", "/"))
        assert client.nothing_arrives()  # PEP 3333: no head before the first non-empty chunk
        go.set()
        reply = client.response()
    assert (reply.status, reply.body) == (200, b"datamore")
    # Empty chunks are never framed: a zero-size chunk would end the body early.
    assert reply.wire_body in (
        b"4\r\ndata\r\n4\r\nmore\r\n0\r\n\r\n",
        b"8\r\ndatamore\r\n0\r\n\r\n",
    )


def test_empty_iterables_still_get_a_status_line_and_headers() -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if path == "/nothing":
            start_response("204 No Content", [("X-Kind", "empty")])
            return []
        if path == "/moved":
            start_response("302 Found", [("Location", "/elsewhere"), ("Content-Type", "text/html")])
            return iter(())
        return respond(start_response, b"third")

    with running(validator(app)) as server, connect(server.port) as client:
        for path in ("/nothing", "/moved", "/third"):
            client.sendall(build("GET", path))
        nothing, moved, third = client.response(), client.response(), client.response()
    assert (nothing.status, nothing.reason) == (204, b"No Content")
    assert nothing.header(b"x-kind") == b"empty"
    assert b"content-length" not in nothing.names
    assert b"transfer-encoding" not in nothing.names
    assert (moved.status, moved.header(b"location")) == (302, b"/elsewhere")
    assert moved.body == b""
    assert moved.wire_body == b"0\r\n\r\n" or moved.header(b"content-length") == b"0"
    assert (third.status, third.body) == (200, b"third")


@pytest.mark.parametrize(
    ("fail_at", "status", "body", "complete"),
    [
        (None, 200, b"abc", True),
        (0, 500, b"Internal Server Error\n", True),
        (2, 200, b"ab", False),
    ],
    ids=["complete", "raises-before-any-chunk", "raises-midway"],
)
def test_close_is_called_once(
    fail_at: int | None, status: int, body: bytes, complete: bool, error_log: LogRecords
) -> None:
    bodies: list[TrackedBody] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [TEXT])
        bodies.append(TrackedBody([b"a", b"b", b"c"], fail_at=fail_at))
        return bodies[-1]

    with running(validator(app)) as server:
        reply = fetch(server.port, "GET", "/", truncated_ok=True)
        assert bodies[0].closed.wait(2)
    assert (reply.status, reply.body) == (status, body)
    assert reply.complete is complete
    assert bodies[0].closes == 1
    if fail_at is None:
        assert error_log.errors == []
    else:
        assert "broke at chunk" in str(error_log.wait_for_error().exc_info)


@pytest.mark.parametrize(
    ("chunk", "pause", "stall"),
    [(b"tick\n" * 200, 0.01, 0.0), (b"tick\n" * 200_000, 0.0, 0.3)],
    ids=["slow-generator", "blocked-by-backpressure"],
)
def test_close_is_called_when_the_client_disconnects(
    chunk: bytes, pause: float, stall: float, error_log: LogRecords
) -> None:
    bodies: list[TrackedBody] = []

    def endless() -> Iterator[bytes]:
        while True:
            yield chunk

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/after":
            return respond(start_response, b"still serving")
        start_response("200 OK", [TEXT])
        bodies.append(TrackedBody(endless(), pause=pause))
        return bodies[-1]

    with running(validator(app), threads=1) as server:
        with connect(server.port) as client:
            client.sendall(build("GET", "/endless"))
            assert client.head().status == 200
            assert b"tick\n" in client.part().data
            if stall:
                # Stop reading: the fast generator fills the buffers and its thread blocks.
                time.sleep(stall)
                sent = bodies[0].sent
                time.sleep(stall)
                assert bodies[0].sent == sent
        left = time.monotonic()
        assert bodies[0].closed.wait(1.0)
        assert time.monotonic() - left < 1.0
        # The only pool thread is free again.
        assert fetch(server.port, "GET", "/after").body == b"still serving"
    assert bodies[0].closes == 1
    assert error_log.errors == []


def test_exception_before_start_response_is_a_500(error_log: LogRecords) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        raise LookupError("no such thing")

    with running(validator(app)) as server:
        reply = fetch(server.port, "GET", "/")
        record = error_log.wait_for_error()
    assert reply.status == 500
    assert reply.header(b"connection") == b"close"
    assert reply.body == b"Internal Server Error\n"
    assert "no such thing" not in reply.body.decode()  # no traceback leaks to the client
    assert record.getMessage() == "Exception in WSGI application"
    assert record.exc_info is not None
    assert record.exc_info[0] is LookupError


def test_exception_after_the_first_chunk_closes_the_connection(error_log: LogRecords) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [TEXT])
        yield b"first"
        raise OSError("disk on fire")

    with running(validator(app)) as server, connect(server.port) as client:
        client.sendall(build("GET", "/"))
        reply = client.response(truncated_ok=True)
        rest = client.until_closed()
        record = error_log.wait_for_error()
    assert (reply.status, reply.body, reply.complete) == (200, b"first", False)
    assert rest == []
    assert record.exc_info is not None
    assert record.exc_info[0] is OSError


@pytest.mark.parametrize(
    "header",
    [("X-Bad", "a\r\nInjected: yes"), ("X-Bad", "line\nfeed"), ("Bad Name", "v")],
)
def test_invalid_header_from_the_app_is_a_500(
    header: tuple[str, str], error_log: LogRecords
) -> None:
    # Not wrapped in the validator: it would reject these headers before aserve saw them.
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [TEXT, header])
        return [b"body"]

    with running(app) as server:
        reply = fetch(server.port, "GET", "/")
        record = error_log.wait_for_error()
    assert reply.status == 500
    assert b"injected" not in reply.names
    assert "Invalid WSGI response" in record.getMessage()


def test_body_longer_than_content_length_before_the_head_is_a_500(
    error_log: LogRecords,
) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [TEXT, ("Content-Length", "5")])
        return [b"0123456789"]

    with running(validator(app)) as server:
        reply = fetch(server.port, "GET", "/")
        record = error_log.wait_for_error()
    assert reply.status == 500
    assert "Content-Length" in record.getMessage()


def test_body_longer_than_content_length_midway_is_cut_off(error_log: LogRecords) -> None:
    go = threading.Event()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [TEXT, ("Content-Length", "5")])
        yield b"abc"
        go.wait(5)
        yield b"defgh"

    with running(validator(app)) as server, connect(server.port) as client:
        client.sendall(build("GET", "/"))
        reply = client.head()
        assert reply.header(b"content-length") == b"5"
        while len(reply.body) < 3:
            client.part()
        assert reply.body == b"abc"
        go.set()
        # None of the overflowing chunk, then the close.
        assert client.until_closed(truncated_ok=True) == [reply]
        assert reply.body == b"abc"
        record = error_log.wait_for_error()
    assert "longer than its Content-Length" in record.getMessage()


def test_body_shorter_than_content_length_closes_the_connection() -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [TEXT, ("Content-Length", "10")])
        return [b"abc"]

    with running(validator(app)) as server, connect(server.port) as client:
        client.sendall(build("GET", "/"))
        # The client was not half-closed: only the server can end this.
        (reply,) = client.until_closed(truncated_ok=True)
    assert (reply.status, reply.header(b"content-length"), reply.body) == (200, b"10", b"abc")


def test_file_wrapper_serves_a_file_and_closes_it(tmp_path: Path) -> None:
    content = hashlib.sha256(b"seed").digest() * 10_000  # 320,000 bytes
    path = tmp_path / "blob.bin"
    path.write_bytes(content)
    opened: list[IO[bytes]] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        handle = path.open("rb")
        opened.append(handle)
        start_response(
            "200 OK",
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(content)))],
        )
        wrapper: Callable[[IO[bytes], int], Iterable[bytes]] = environ["wsgi.file_wrapper"]
        return wrapper(handle, 8192)

    with running(validator(app)) as server:
        reply = fetch(server.port, "GET", "/blob.bin")
        assert wait_until(lambda: opened[0].closed)
    assert reply.status == 200
    assert reply.body == content


def test_response_backpressure_keeps_the_app_near_the_reader() -> None:
    chunk = 65536
    total = 64 * 1024 * 1024
    produced = 0
    block = bytes(range(256)) * (chunk // 256)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        nonlocal produced
        start_response(
            "200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(total))]
        )
        for _ in range(total // chunk):
            produced += chunk
            yield block

    gaps = []
    received = 0
    with (
        running(validator(app)) as server,
        connect(server.port, timeout=10, receive_buffer=262144) as client,
    ):
        client.sendall(build("GET", "/big"))
        reply = client.head()
        assert reply.status == 200
        parts = client.parts()
        for checkpoint in (1, 24, 48):
            while received < checkpoint * 1024 * 1024:
                received += len(next(parts).data)
            time.sleep(0.3)  # a slow reader: the app must stall, not run ahead
            gaps.append(produced - received)
        for part in parts:
            received += len(part.data)
    assert reply.complete
    assert received == total
    # The kernel's send buffer (autotuned up to tcp_wmem's maximum, 4 MiB by default) plus the
    # client's fixed receive buffer let the app run that far ahead, and a few chunks more;
    # without backpressure it would be some 60 MiB ahead.
    assert max(gaps) < max_send_buffer() + 4 * 1024 * 1024, gaps


def test_thread_pool_bounds_concurrency_and_the_loop_stays_responsive() -> None:
    release = threading.Event()
    lock = threading.Lock()
    active = peak = entered = 0

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        nonlocal active, peak, entered
        if environ["PATH_INFO"] == "/quick":
            return respond(start_response, b"quick")
        with lock:
            active += 1
            entered += 1
            peak = max(peak, active)
        try:
            release.wait(5)
        finally:
            with lock:
                active -= 1
        return respond(start_response, b"slow")

    with running(validator(app), threads=2) as server, ThreadPoolExecutor(5) as pool:
        try:
            slow = [pool.submit(fetch_over_open_connection, server.port, "/slow") for _ in range(4)]
            assert wait_until(lambda: entered == 2)
            quick = pool.submit(fetch_over_open_connection, server.port, "/quick")
            # The loop answers what needs no thread while both threads block.
            (garbage,) = raw_exchange(server.port, b"NOT A REQUEST\r\n\r\n")
            assert garbage.head.startswith(b"HTTP/1.1 400 ")
            time.sleep(0.3)
            assert entered == 2
            assert not quick.done()  # queued behind the two slow requests
        finally:
            release.set()
        assert quick.result(5).body == b"quick"
        assert [future.result(5).body for future in slow] == [b"slow"] * 4
    assert peak == 2
    assert entered == 4


def test_each_request_runs_in_a_fresh_context() -> None:
    seen: list[tuple[str | None, int]] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        seen.append((REQUEST_ID.get(), threading.get_ident()))
        REQUEST_ID.set(environ["PATH_INFO"])
        return respond(start_response, b"ok")

    with running(validator(app), threads=1) as server:
        for path in ("/one", "/two", "/three"):
            assert fetch(server.port, "GET", path).status == 200
    assert [value for value, _ in seen] == [None, None, None]
    assert len({thread for _, thread in seen}) == 1  # same thread, still no leak


# -- Django -----------------------------------------------------------------------------------


def _django_hello(request: Any) -> Any:
    from django.http import HttpResponse

    return HttpResponse(
        f"hello {request.GET.get('name', 'nobody')} at {request.path}",
        content_type="text/plain; charset=utf-8",
    )


def _django_echo(request: Any) -> Any:
    from django.http import JsonResponse

    body: bytes = request.body
    return JsonResponse(
        {
            "method": request.method,
            "length": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "content_type": request.content_type,
            "script_name": request.META["SCRIPT_NAME"],
        }
    )


def _django_stream(request: Any) -> Any:
    from django.http import StreamingHttpResponse

    return StreamingHttpResponse((b"part%d;" % i for i in range(3)), content_type="text/plain")


@pytest.fixture
def django_app() -> Iterator[WSGIApplication]:
    pytest.importorskip("django")
    configure_django()
    from django.test.utils import override_settings
    from django.urls import path

    urlpatterns[:] = [
        path("café/", _django_hello),
        path("hello/", _django_hello),
        path("echo/", _django_echo),
        path("stream/", _django_stream),
    ]
    # The settings are the whole process's: override what matters here.
    with override_settings(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["test"], MIDDLEWARE=[]):
        from django.core.wsgi import get_wsgi_application

        yield get_wsgi_application()


def test_django_wsgi_handler_end_to_end(django_app: WSGIApplication) -> None:
    from django.core.signals import request_finished

    finished: list[object] = []

    def on_finished(sender: object, **kwargs: object) -> None:
        finished.append(sender)

    request_finished.connect(on_finished)
    upload = os.urandom(1024 * 1024)
    try:
        with running(validator(django_app)) as server:
            hello = fetch(server.port, "GET", "/hello/?name=ada")
            unicode_path = fetch(server.port, "GET", "/caf%C3%A9/")
            echo = fetch(
                server.port, "POST", "/echo/", [("Content-Type", "application/x-thing")], upload
            )
            stream = fetch(server.port, "GET", "/stream/")
            missing = fetch(server.port, "GET", "/missing/")
            # request_finished fires from close(), which may run just after the client has
            # the whole response.
            assert wait_until(lambda: len(finished) == 5)
    finally:
        request_finished.disconnect(on_finished)
    assert (hello.status, hello.body) == (200, b"hello ada at /hello/")
    assert hello.header(b"content-type") == b"text/plain; charset=utf-8"
    assert (unicode_path.status, unicode_path.body) == (200, "hello nobody at /café/".encode())
    assert echo.status == 200
    assert json.loads(echo.body) == {
        "method": "POST",
        "length": len(upload),
        "sha256": hashlib.sha256(upload).hexdigest(),
        "content_type": "application/x-thing",
        "script_name": "",
    }
    assert (stream.status, stream.body) == (200, b"part0;part1;part2;")
    assert stream.header(b"transfer-encoding") == b"chunked"
    assert missing.status == 404


# -- examples/stream_wsgi.py ------------------------------------------------------------------


@pytest.fixture
def stream_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "stream_wsgi_example", EXAMPLES / "stream_wsgi.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_stream_sends_every_line(
    stream_example: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_example, "INTERVAL", 0.01)
    with running(validator(stream_example.app)) as server:
        reply = fetch(server.port, "GET", "/stream")
    assert reply.status == 200
    assert reply.header(b"transfer-encoding") == b"chunked"
    lines = [f"line {n} of 10\n".encode() for n in range(1, 11)]
    assert reply.body == b"".join(lines)


def test_example_stream_delivers_a_line_before_the_next_exists(
    stream_example: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_example, "INTERVAL", 0.4)
    monkeypatch.setattr(stream_example, "LINES", 2)
    with running(validator(stream_example.app)) as server, connect(server.port) as client:
        client.sendall(build("GET", "/stream"))
        assert client.head().status == 200
        assert client.part().data == b"line 1 of 2\n"
        # The first line is out while the app sleeps before producing the second.
        assert client.buffered == b""
        assert client.nothing_arrives(0.1)
        assert client.part().data == b"line 2 of 2\n"
        assert client.response().complete


def test_example_upload_counts_and_hashes(stream_example: ModuleType) -> None:
    data = os.urandom(3 * 65536 + 123)
    expected = f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}\n".encode()
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(piece), piece)
        for piece in (data[i : i + 50_000] for i in range(0, len(data), 50_000))
    )
    with running(validator(stream_example.app)) as server:
        plain = fetch(server.port, "POST", "/upload", body=data)
        streamed = fetch(
            server.port,
            "PUT",
            "/upload",
            [("Transfer-Encoding", "chunked")],
            chunked + b"0\r\n\r\n",
        )
        wrong_method = fetch(server.port, "GET", "/upload")
        missing = fetch(server.port, "GET", "/nope")
        index = fetch(server.port, "GET", "/")
    assert (plain.status, plain.body) == (200, expected)
    assert (streamed.status, streamed.body) == (200, expected)
    assert (wrong_method.status, wrong_method.header(b"allow")) == (405, b"POST, PUT")
    assert missing.status == 404
    assert b"/stream" in index.body and b"/upload" in index.body
