"""WSGI streaming both ways: a response that trickles out line by line, and an upload that is
hashed as it arrives. Run `aserve stream_wsgi:app` from this directory, then try
`curl -N http://127.0.0.1:8000/stream` and `curl -T some.iso http://127.0.0.1:8000/upload`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from wsgiref.types import StartResponse, WSGIEnvironment

# Seconds between two lines of /stream, and how many lines it sends.
INTERVAL = 0.5
LINES = 10
# Bytes asked of wsgi.input at a time: the upload is never held whole in memory.
BLOCK = 65536


def _text(
    start_response: StartResponse, status: str, body: bytes, *extra: tuple[str, str]
) -> list[bytes]:
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *extra,
        ],
    )
    return [body]


def _ticks() -> Iterator[bytes]:
    for number in range(1, LINES + 1):
        if number > 1:
            # A blocking sleep is fine here: each WSGI response has a pool thread to itself.
            time.sleep(INTERVAL)
        yield f"line {number} of {LINES}\n".encode("ascii")


def _stream(start_response: StartResponse) -> Iterable[bytes]:
    # No Content-Length: the server frames the body with chunked encoding and sends every
    # yielded line as soon as it is produced.
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return _ticks()


def _upload(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH", "")
    remaining = int(length) if length else None
    if remaining is None and not environ.get("wsgi.input_terminated"):
        # Without a length, reading to the end is safe only where the server marks the end.
        return _text(start_response, "411 Length Required", b"send a Content-Length\n")
    digest = hashlib.sha256()
    total = 0
    while remaining is None or remaining > 0:
        block = stream.read(BLOCK if remaining is None else min(BLOCK, remaining))
        if not block:
            break
        digest.update(block)
        total += len(block)
        if remaining is not None:
            remaining -= len(block)
    report = f"{total} bytes, sha256 {digest.hexdigest()}\n".encode("ascii")
    return _text(start_response, "200 OK", report)


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    method = environ["REQUEST_METHOD"]
    if path == "/stream":
        if method not in ("GET", "HEAD"):
            return _text(
                start_response, "405 Method Not Allowed", b"GET only\n", ("Allow", "GET, HEAD")
            )
        return _stream(start_response)
    if path == "/upload":
        if method not in ("POST", "PUT"):
            return _text(
                start_response, "405 Method Not Allowed", b"POST or PUT\n", ("Allow", "POST, PUT")
            )
        return _upload(environ, start_response)
    if path == "/":
        index = (
            f"GET  /stream  {LINES} lines, one every {INTERVAL} s, each sent when produced\n"
            "POST /upload  (or PUT) answers with the byte count and sha256 of the body\n"
        )
        return _text(start_response, "200 OK", index.encode("ascii"))
    return _text(start_response, "404 Not Found", b"not found\n")
