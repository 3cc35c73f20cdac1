"""The ASGI http extensions aserve offers in `scope["extensions"]`: pathsend (a file by path,
as Django's and Starlette's FileResponse send it), trailers, and 103 Early Hints."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import FileResponse
from starlette.routing import Route

from aserve.types import Receive, Scope, Send
from tests.support.client import connect, raw_exchange
from tests.support.logs import LogRecords
from tests.support.servers import ServeFactory

GET = b"GET / HTTP/1.1\r\nhost: test\r\n\r\n"


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(1024 * 1024 + 7))
    return path


def test_extensions_are_listed_in_the_http_scope(serve: ServeFactory) -> None:
    seen: list[dict[str, object]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["extensions"])
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    server = serve(app, lifespan="off")
    raw_exchange(server.port, GET)
    expected = {"http.response.pathsend", "http.response.trailers", "http.response.early_hint"}
    if hasattr(os, "sendfile"):
        expected.add("http.response.zerocopysend")
    assert set(seen[0]) == expected


def test_pathsend_streams_the_file(serve: ServeFactory, data_file: Path) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        size = b"%d" % data_file.stat().st_size
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", size)]}
        )
        await send({"type": "http.response.pathsend", "path": str(data_file)})

    server = serve(app, lifespan="off")
    with httpx.Client(base_url=server.url) as client:
        first = client.get("/")
        second = client.get("/")  # the connection is still good
    assert first.content == data_file.read_bytes() == second.content


def test_pathsend_of_a_missing_file_is_an_app_error(
    serve: ServeFactory, error_log: LogRecords
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.pathsend", "path": "/nonexistent/file"})

    server = serve(app, lifespan="off")
    (response,) = raw_exchange(server.port, GET)
    assert response.status == 500
    assert "pathsend" in str(error_log.wait_for_error().exc_info)


def test_starlette_file_response_uses_pathsend(serve: ServeFactory, data_file: Path) -> None:
    async def download(request: object) -> FileResponse:
        return FileResponse(data_file)

    server = serve(Starlette(routes=[Route("/f", download)]), lifespan="off")
    with httpx.Client(base_url=server.url) as client:
        response = client.get("/f")
    assert response.content == data_file.read_bytes()


def test_trailers_follow_a_chunked_body(serve: ServeFactory) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "trailers": True}
        await send({**start, "headers": [(b"trailer", b"x-checksum, x-count")]})
        await send({"type": "http.response.body", "body": b"part one, ", "more_body": True})
        await send({"type": "http.response.body", "body": b"part two"})
        trailers = {"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc")]}
        await send({**trailers, "more_trailers": True})
        await send({"type": "http.response.trailers", "headers": [(b"x-count", b"2")]})

    server = serve(app, lifespan="off")
    with connect(server.port) as client:
        client.sendall(GET)
        response = client.response()
        client.sendall(GET)
        again = client.response()
    assert response.body == b"part one, part two"
    assert response.header(b"transfer-encoding") == b"chunked"
    assert response.trailers == [(b"x-checksum", b"abc"), (b"x-count", b"2")]
    assert again.trailers == response.trailers


def test_trailers_and_early_hints_in_the_forms_apps_send(serve: ServeFactory) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        links = [bytearray(b"</a.css>; rel=preload")]
        await send({"type": "http.response.early_hint", "links": links})
        start = {"type": "http.response.start", "status": 200, "trailers": True}
        await send({**start, "headers": ((b"trailer", b"x-checksum"),)})
        await send({"type": "http.response.body", "body": b"body"})
        await send({"type": "http.response.trailers", "headers": [[b"x-checksum", b"abc"]]})

    server = serve(app, lifespan="off")
    with connect(server.port) as client:
        client.sendall(GET)
        hint = client.response()
        response = client.response()
    assert hint.status == 103
    assert hint.header(b"link") == b"</a.css>; rel=preload"
    assert response.body == b"body"
    assert response.trailers == [(b"x-checksum", b"abc")]


def test_framing_fields_are_refused_as_trailers(serve: ServeFactory, error_log: LogRecords) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "trailers": True})
        await send({"type": "http.response.body", "body": b"x"})
        headers = [(b"content-length", b"1")]
        await send({"type": "http.response.trailers", "headers": headers})

    server = serve(app, lifespan="off")
    (response,) = raw_exchange(server.port, GET, truncated_ok=True)
    assert not response.complete  # cut short: the client sees no well-formed end
    error_log.wait_for_error()


def test_early_hints_go_out_before_the_response(serve: ServeFactory) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        links = [b"</style.css>; rel=preload; as=style", b"</app.js>; rel=preload; as=script"]
        await send({"type": "http.response.early_hint", "links": links})
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"page"})

    server = serve(app, lifespan="off")
    hint, final = raw_exchange(server.port, GET)
    assert hint.status == 103
    assert hint.values(b"link") == [
        b"</style.css>; rel=preload; as=style",
        b"</app.js>; rel=preload; as=script",
    ]
    assert (final.status, final.body) == (200, b"page")
    # An HTTP/1.0 client may not understand a 1xx (RFC 9110 §15.2): it gets none.
    (only,) = raw_exchange(server.port, b"GET / HTTP/1.0\r\n\r\n")
    assert (only.status, only.body) == (200, b"page")
