"""One WSGI app served by wsgiref.simple_server and by aserve: same requests, same answers."""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment
from wsgiref.validate import validator

from tests.support.servers import running

LARGE_VALUE = "v" * 6000
RESPONSE_HEADER = "h" * 20000

# Response headers left out of the comparison, and why each may legitimately differ.
EXCLUDED = {
    # The time of the response.
    "date",
    # Each server names itself.
    "server",
    # A body of unknown length: aserve chunks it for an HTTP/1.1 client, wsgiref answers as
    # HTTP/1.0 and ends the body by closing the connection.
    "transfer-encoding",
    # aserve keeps HTTP/1.1 connections open; wsgiref closes after every response.
    "connection",
}
# Content-Length is compared, except for one wsgiref habit: when the app set none and sent no
# body, wsgiref adds "Content-Length: 0" (BaseHandler.finish_content), to a 204 as well although
# RFC 9110 §8.6 forbids it there; aserve frames such a body with chunking, or not at all for 204.
SYNTHESIZED_BY_WSGIREF = ("content-length", "0")


def _text(start_response: StartResponse, body: bytes, status: str = "200 OK") -> list[bytes]:
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _streamed() -> Iterator[bytes]:
    yield b""
    for number in range(5):
        yield b"chunk %d;" % number
        yield b""
    yield b"x" * 100_000


def _app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/hello":
        return _text(start_response, b"Hello, world!\n")
    if path.startswith("/echo"):
        length = environ.get("CONTENT_LENGTH") or "0"
        body = environ["wsgi.input"].read(int(length))
        report = {
            "method": environ["REQUEST_METHOD"],
            "path": path,
            "query": environ["QUERY_STRING"],
            "script_name": environ["SCRIPT_NAME"],
            "protocol": environ["SERVER_PROTOCOL"],
            "scheme": environ["wsgi.url_scheme"],
            "content_length": environ.get("CONTENT_LENGTH", ""),
            # wsgiref invents CONTENT_TYPE=text/plain for a request without one (PEP 3333 lets
            # it be absent): only requests with a body, which all name their type, report it.
            "content_type": environ.get("CONTENT_TYPE", "") if body else "",
            "x_thing": environ.get("HTTP_X_THING", ""),
            "large": hashlib.sha256(environ.get("HTTP_X_LARGE", "").encode()).hexdigest(),
            "body": hashlib.sha256(body).hexdigest(),
            "body_length": len(body),
        }
        start_response("200 OK", [("Content-Type", "application/json"), ("X-Echo", "1")])
        return [json.dumps(report, sort_keys=True).encode("ascii")]
    if path == "/redirect":
        start_response("302 Found", [("Location", "/hello"), ("Content-Type", "text/html")])
        return []
    if path == "/moved":
        return _text(start_response, b"moved for good\n", "301 Moved Permanently")
    if path == "/empty":
        start_response("204 No Content", [("X-Why", "nothing to say")])
        return []
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        write(b"then ")
        return [b"returned"]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _streamed()
    if path == "/cookies":
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/plain"),
                ("Set-Cookie", "a=1; Path=/"),
                ("Set-Cookie", "b=2; HttpOnly"),
                ("Content-Length", "0"),
            ],
        )
        return []
    if path == "/large-header":
        start_response(
            "200 OK",
            [("Content-Type", "text/plain"), ("X-Large", RESPONSE_HEADER), ("Content-Length", "2")],
        )
        return [b"ok"]
    return _text(start_response, b"no such page\n", "404 Not Found")


APP = validator(_app)


@dataclass(frozen=True)
class Case:
    method: str
    target: str
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()


CASES = [
    Case("GET", "/hello"),
    Case("HEAD", "/hello"),
    Case("GET", "/echo?a=1&b=%20two&c=caf%C3%A9&d"),
    Case("GET", "/echo/caf%C3%A9"),
    Case("GET", "/echo/%FF%FE"),
    Case("GET", "/echo/a%2Fb%3Fc"),
    Case("GET", "/echo", headers=(("X-Thing", "one"),)),
    Case("GET", "/echo", headers=(("X-Large", LARGE_VALUE),)),
    Case(
        "POST",
        "/echo",
        b"name=value&other=thing",
        (("Content-Type", "application/x-www-form-urlencoded"),),
    ),
    Case(
        "POST",
        "/echo/upload",
        bytes(range(256)) * 1024,
        (("Content-Type", "application/octet-stream"),),
    ),
    Case("PUT", "/echo", b""),
    Case("DELETE", "/echo?id=7"),
    Case("GET", "/redirect"),
    Case("GET", "/moved"),
    Case("GET", "/empty"),
    Case("GET", "/missing/page"),
    Case("HEAD", "/missing/page"),
    Case("GET", "/write"),
    Case("GET", "/stream"),
    Case("GET", "/cookies"),
    Case("GET", "/large-header"),
]


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def wsgiref_server(app: WSGIApplication) -> Iterator[int]:
    server: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


def ask(port: int, case: Case) -> Answer:
    with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=5)) as conn:
        conn.request(case.method, case.target, body=case.body, headers=dict(case.headers))
        response = conn.getresponse()
        body = response.read()
        headers = tuple((name, value) for name, value in response.getheaders())
        return Answer(response.status, response.reason, headers, body)


def comparable(answer: Answer, other: Answer) -> Answer:
    """`answer` without the headers EXCLUDED, nor a Content-Length: 0 only it has."""
    other_names = {name.lower() for name, _ in other.headers}
    kept = tuple(
        (name, value)
        for name, value in answer.headers
        if name.lower() not in EXCLUDED
        and not (
            (name.lower(), value) == SYNTHESIZED_BY_WSGIREF and name.lower() not in other_names
        )
    )
    return Answer(answer.status, answer.reason, kept, answer.body)


def test_aserve_answers_like_wsgiref() -> None:
    with wsgiref_server(APP) as reference_port, running(APP) as server:
        pairs = [(case, ask(reference_port, case), ask(server.port, case)) for case in CASES]
    for case, reference, ours in pairs:
        assert comparable(ours, reference) == comparable(reference, ours), case
    # The table really exercises what it claims to.
    by_target = {(case.method, case.target): ours for case, _, ours in pairs}
    assert by_target["GET", "/redirect"].status == 302
    assert by_target["GET", "/empty"].status == 204
    assert by_target["GET", "/missing/page"].status == 404
    assert by_target["HEAD", "/hello"].body == b""
    assert by_target["GET", "/stream"].body.endswith(b"chunk 4;" + b"x" * 100_000)
    assert by_target["GET", "/write"].body == b"written then returned"
    echoed = json.loads(by_target["GET", "/echo/caf%C3%A9"].body)
    assert echoed["path"] == "/echo/caf\xc3\xa9"
    # The exclusions are needed: the servers do frame some responses differently.
    assert any("transfer-encoding" in dict(ours.headers) for _, _, ours in pairs)
