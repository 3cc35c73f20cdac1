"""A WSGI app that shows what the server made of each request (method, target, headers and
the body it read) and answers the ways a server must frame: no body, no length, an unread
body, an error. The `--server wsgiref` tests serve it there and on Django's runserver."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.validate import validator

_TEXT = ("Content-Type", "text/plain")
# The environ keys echoed besides the HTTP_* ones.
_KEYS = (
    "REQUEST_METHOD",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_PROTOCOL",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
)


def read_body(environ: WSGIEnvironment) -> bytes:
    """All of wsgi.input, read in blocks (each server ends the stream at the body's end)."""
    stream = environ["wsgi.input"]
    pieces: list[bytes] = []
    while piece := stream.read(65536):
        pieces.append(piece)
    return b"".join(pieces)


def _respond(start_response: StartResponse, body: bytes, status: str = "200 OK") -> list[bytes]:
    start_response(status, [_TEXT, ("Content-Length", str(len(body)))])
    return [body]


def _echo(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    body = read_body(environ)
    keys = [*_KEYS, *sorted(key for key in environ if key.startswith("HTTP_"))]
    lines = [f"{key}={environ.get(key, '-')}" for key in keys]
    return _respond(start_response, "\n".join(lines).encode("latin-1") + b"\n\n" + body)


def _status(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """/status/NNN: an empty response with that status (and no Content-Type for 204 and 304,
    whose lack of content wsgiref.validate checks)."""
    code = environ["PATH_INFO"].rpartition("/")[2]
    start_response(f"{code} Status", [] if code in ("204", "304") else [_TEXT])
    return []


def _stream(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
    """Chunks with no Content-Length: the server cannot know the length in advance."""
    start_response("200 OK", [_TEXT])
    yield from (b"one\n", b"two\n", b"three\n")


def _unread(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """Answers without reading the request body."""
    return _respond(start_response, b"unread")


def _raise(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    raise RuntimeError("the view failed")


def _short(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """Announces 10 bytes and sends 5."""
    start_response("200 OK", [_TEXT, ("Content-Length", "10")])
    return [b"short"]


def _long(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """Announces 3 bytes and sends 10."""
    start_response("200 OK", [_TEXT, ("Content-Length", "3")])
    return [b"too long!\n"]


def _read_then_fail(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """Reads the body and answers 200 whatever reading it raised (as an app that catches
    everything would)."""
    try:
        body = read_body(environ)
    except Exception as exc:
        body = f"reading failed: {exc}".encode()
    return _respond(start_response, body)


_Route = Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]
_ROUTES: dict[str, _Route] = {
    "/stream": _stream,
    "/unread": _unread,
    "/raise": _raise,
    "/short": _short,
    "/long": _long,
    "/read-then-fail": _read_then_fail,
}


def _app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path: str = environ["PATH_INFO"]
    if path.startswith("/status/"):
        return _status(environ, start_response)
    return _ROUTES.get(path, _echo)(environ, start_response)


app = validator(_app)
