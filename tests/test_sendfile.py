"""Files sent by the kernel (sendfile) over real sockets: `wsgi.file_wrapper` over a regular
file, ASGI pathsend and zerocopysend; the fallbacks where sendfile cannot be used (an
in-memory file, chunked framing, HEAD, TLS, the browser-refresh sink holding a page); a client
that stops reading under it. Whether the kernel sent the bytes is read from the sink's debug
line ("sendfile: N of M bytes sent")."""

from __future__ import annotations

import io
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest
import trustme

from aserve.types import Environ, Receive, Scope, Send, StartResponse
from tests.support.client import connect
from tests.support.logs import LogRecords, access_records
from tests.support.polling import wait_until
from tests.support.servers import ServeFactory

pytestmark = pytest.mark.skipif(not hasattr(os, "sendfile"), reason="no os.sendfile here")

SIZE = 3 * 1024 * 1024 + 11


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sendfile") / "data.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


def sendfile_lines(log: LogRecords) -> list[str]:
    return [m for m in log.at(10) if m.startswith("sendfile:")]


def awaited_sendfile_lines(log: LogRecords, count: int) -> list[str]:
    """The sink logs once the kernel has taken the last byte, which the client may have read
    already: wait for `count` lines before they are compared."""
    wait_until(lambda: len(sendfile_lines(log)) >= count)
    return sendfile_lines(log)


def sent_of(line: str) -> int:
    return int(line.split()[1])


def file_app(
    path: Path, *, length: bool = True, seek: int = 0, in_memory: bool = False
) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    opened: list[IO[bytes]] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        handle: IO[bytes] = io.BytesIO(path.read_bytes()) if in_memory else path.open("rb")
        handle.seek(seek)
        opened.append(handle)
        headers = [("Content-Type", "application/octet-stream")]
        if length:
            headers.append(("Content-Length", str(SIZE - seek)))
        start_response("200 OK", headers)
        # The server closes the wrapper, which closes the file (PEP 3333).
        return environ["wsgi.file_wrapper"](handle)  # type: ignore[no-any-return]

    app.opened = opened  # type: ignore[attr-defined]
    return app


def closed_files(app: object) -> int:
    return sum(handle.closed for handle in app.opened)  # type: ignore[attr-defined]


def test_file_wrapper_over_a_file_goes_out_by_sendfile(
    serve: ServeFactory, data_file: Path, error_log: LogRecords
) -> None:
    app = file_app(data_file, seek=5)
    server = serve(app, log_level="debug")
    with httpx.Client(base_url=server.url) as client:
        first = client.get("/")
        second = client.get("/")  # the connection is still good after it
    expected = data_file.read_bytes()[5:]
    assert first.content == expected == second.content
    assert first.headers["content-length"] == str(SIZE - 5)
    assert (
        awaited_sendfile_lines(error_log, 2)
        == [f"sendfile: {SIZE - 5} of {SIZE - 5} bytes sent"] * 2
    )
    assert wait_until(lambda: closed_files(app) == 2)


@pytest.mark.parametrize(
    ("label", "settings", "length", "in_memory"),
    [
        ("in-memory file", {}, True, True),
        ("chunked framing", {}, False, False),
    ],
)
def test_file_wrapper_falls_back_to_reading(
    serve: ServeFactory,
    data_file: Path,
    error_log: LogRecords,
    label: str,
    settings: dict[str, object],
    length: bool,
    in_memory: bool,
) -> None:
    server = serve(file_app(data_file, length=length, in_memory=in_memory), log_level="debug")
    with httpx.Client(base_url=server.url) as client:
        reply = client.get("/")
    assert reply.content == data_file.read_bytes(), label
    assert ("content-length" in reply.headers) is length
    assert sendfile_lines(error_log) == []


def test_head_of_a_file_wrapper_sends_no_body(
    serve: ServeFactory, data_file: Path, error_log: LogRecords
) -> None:
    server = serve(file_app(data_file), log_level="debug")
    with connect(server.port) as client:
        client.sendall(b"HEAD / HTTP/1.1\r\nhost: t\r\n\r\nGET / HTTP/1.1\r\nhost: t\r\n\r\n")
        head = client.response(b"HEAD")
        get = client.response()
    assert head.header(b"content-length") == str(SIZE).encode()
    assert head.body == b""
    assert get.body == data_file.read_bytes()
    # The GET after it still goes out by sendfile: the HEAD left nothing behind.
    assert awaited_sendfile_lines(error_log, 1) == [f"sendfile: {SIZE} of {SIZE} bytes sent"]


def tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A certificate for 127.0.0.1, its key and the CA that signed it, written to files."""
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return cert, key, ca_file


def test_tls_falls_back_to_reading(
    serve: ServeFactory, data_file: Path, error_log: LogRecords, tmp_path: Path
) -> None:
    cert, key, ca_file = tls_files(tmp_path)
    server = serve(
        file_app(data_file), log_level="debug", ssl_certfile=str(cert), ssl_keyfile=str(key)
    )
    context = ssl.create_default_context(cafile=str(ca_file))
    with httpx.Client(verify=context) as client:
        reply = client.get(f"https://127.0.0.1:{server.port}/")
    assert reply.content == data_file.read_bytes()
    assert sendfile_lines(error_log) == []


def test_a_client_that_stops_reading_mid_sendfile(
    serve: ServeFactory, tmp_path: Path, error_log: LogRecords
) -> None:
    big = tmp_path / "big.bin"
    size = 64 * 1024 * 1024
    with big.open("wb") as out:
        out.truncate(size)
    app = file_app(big)

    def sized(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> object:
            headers = [(n, str(size) if n == "Content-Length" else v) for n, v in headers]
            return start_response(status, headers)

        return app(environ, start)  # type: ignore[arg-type]

    with access_records() as access:
        server = serve(sized, log_level="debug", access_log=True)
        with connect(server.port) as client:
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            client.sendall(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
            client.head()
            client.part()
            # The server is stuck in the middle: the socket takes nothing more.
            time.sleep(0.3)
            assert sendfile_lines(error_log) == []
            # A reset, not a close: the server's next send fails at once.
            linger = struct.pack("ii", 1, 0)
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        assert wait_until(lambda: bool(sendfile_lines(error_log)))
        assert wait_until(lambda: bool(access.records))
    (line,) = sendfile_lines(error_log)
    (logged,) = access.records
    # The access line counts the bytes the kernel took, and says why they stop there.
    assert f" {sent_of(line)} " in logged.getMessage()
    assert "client went away" in logged.getMessage()
    sent = sent_of(line)
    assert 0 < sent < size
    assert line.endswith(f"of {size} bytes sent (gone)")
    assert wait_until(lambda: closed_files(app) == 1)
    assert error_log.errors == []


def pathsend_app(path: Path) -> Callable[[Scope, Receive, Send], object]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        size = b"%d" % path.stat().st_size
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", size)]}
        )
        await send({"type": "http.response.pathsend", "path": str(path)})

    return app


def test_pathsend_goes_out_by_sendfile(
    serve: ServeFactory, data_file: Path, error_log: LogRecords
) -> None:
    server = serve(pathsend_app(data_file), lifespan="off", log_level="debug")
    with httpx.Client(base_url=server.url) as client:
        first = client.get("/")
        second = client.get("/")
    assert first.content == data_file.read_bytes() == second.content
    assert awaited_sendfile_lines(error_log, 2) == [f"sendfile: {SIZE} of {SIZE} bytes sent"] * 2


def test_pathsend_without_a_content_length_is_read(
    serve: ServeFactory, data_file: Path, error_log: LogRecords
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.pathsend", "path": str(data_file)})

    server = serve(app, lifespan="off", log_level="debug")
    with httpx.Client(base_url=server.url) as client:
        reply = client.get("/")
    assert reply.content == data_file.read_bytes()
    assert reply.headers["transfer-encoding"] == "chunked"
    assert sendfile_lines(error_log) == []


def zerocopy_app(path: Path, pieces: list[tuple[int | None, int | None]], total: int) -> object:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert "http.response.zerocopysend" in scope["extensions"]
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % total)],
            }
        )
        with path.open("rb") as handle:
            handle.seek(100)
            for index, (offset, count) in enumerate(pieces):
                message: dict[str, object] = {
                    "type": "http.response.zerocopysend",
                    "file": handle,
                    "more_body": index < len(pieces) - 1,
                }
                if offset is not None:
                    message["offset"] = offset
                if count is not None:
                    message["count"] = count
                await send(message)

    return app


def test_zerocopysend_sends_the_pieces_asked_for(
    serve: ServeFactory, data_file: Path, error_log: LogRecords
) -> None:
    content = data_file.read_bytes()
    # From the file's position (100), then an offset and a count, then a count from 0.
    pieces: list[tuple[int | None, int | None]] = [(None, 1000), (5000, 70000), (0, 10)]
    expected = content[100:1100] + content[5000:75000] + content[:10]
    server = serve(
        zerocopy_app(data_file, pieces, len(expected)), lifespan="off", log_level="debug"
    )
    with httpx.Client(base_url=server.url) as client:
        reply = client.get("/")
    assert reply.content == expected
    assert awaited_sendfile_lines(error_log, 3) == [
        "sendfile: 1000 of 1000 bytes sent",
        "sendfile: 70000 of 70000 bytes sent",
        "sendfile: 10 of 10 bytes sent",
    ]


def test_zerocopysend_over_tls_is_read(
    serve: ServeFactory, data_file: Path, error_log: LogRecords, tmp_path: Path
) -> None:
    cert, key, ca_file = tls_files(tmp_path)
    content = data_file.read_bytes()
    pieces: list[tuple[int | None, int | None]] = [(None, None)]
    expected = content[100:]
    server = serve(
        zerocopy_app(data_file, pieces, len(expected)),
        lifespan="off",
        log_level="debug",
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    )
    context = ssl.create_default_context(cafile=str(ca_file))
    with httpx.Client(verify=context) as client:
        reply = client.get(f"https://127.0.0.1:{server.port}/")
    assert reply.content == expected
    assert sendfile_lines(error_log) == []


def test_a_streamed_wsgi_response_arrives_whole_in_batches(serve: ServeFactory) -> None:
    """Many small pieces, with and without a Content-Length: batched writes keep every byte
    in order, and chunked framing around a batch stays valid."""
    pieces = [os.urandom(n) for n in (1, 70000, 0, 3, 65536, 200000, 17) * 20]
    whole = b"".join(pieces)

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        headers = [("Content-Type", "application/octet-stream")]
        if environ["PATH_INFO"] == "/length":
            headers.append(("Content-Length", str(len(whole))))
        start_response("200 OK", headers)
        yield from pieces

    server = serve(app)
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/length").content == whole
        chunked = client.get("/chunked")
    assert chunked.headers["transfer-encoding"] == "chunked"
    assert chunked.content == whole
