"""The ASGI websocket scope over real sockets, with real clients (websockets, aiohttp): the
handshake and its denial, messages both ways, close codes, limits, pings, flow control."""

from __future__ import annotations

import asyncio
import base64
import math
import os
import re
import socket
import struct
import threading
import time
from typing import Any

import aiohttp
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from aserve.cli import parse
from aserve.config import Config
from aserve.errors import ConfigError
from aserve.types import Receive, Scope, Send
from tests.support.apps.websocket_apps import echo
from tests.support.client import connect, raw_exchange
from tests.support.logs import LogRecords, access_records
from tests.support.polling import wait_until
from tests.support.servers import ServeFactory

MiB = 1024 * 1024


def url(port: int, path: str = "/chat?room=1") -> str:
    return f"ws://127.0.0.1:{port}{path}"


def dial(port: int, path: str = "/chat?room=1", **options: Any) -> websockets.connect:
    options.setdefault("open_timeout", 5)
    options.setdefault("close_timeout", 5)
    return websockets.connect(url(port, path), **options)


def handshake(path: bytes = b"/", extra: bytes = b"") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET %s HTTP/1.1\r\nhost: test\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-key: %s\r\nsec-websocket-version: 13\r\n%s\r\n" % (path, key, extra)
    )


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """The opcode and payload of the next (unmasked, server) frame."""
    head = _read_exactly(sock, 2)
    length = head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", _read_exactly(sock, 2))[0]
    elif length == 127:
        length = struct.unpack("!Q", _read_exactly(sock, 8))[0]
    return head[0] & 0x0F, _read_exactly(sock, length)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (masked with a zero key: the XOR changes nothing, the framing is
    what RFC 6455 §5.2 asks for)."""
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return head + b"\0\0\0\0" + payload


def close_code(payload: bytes) -> int:
    code: int = struct.unpack("!H", payload[:2])[0]
    return code


# -- the settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ws_max_size": 0}, "--ws-max-size and --ws-max-queue must be at least 1"),
        ({"ws_max_queue": 0}, "--ws-max-size and --ws-max-queue must be at least 1"),
        ({"ws_ping_interval": -1.0}, "--ws-ping-interval cannot be negative"),
        ({"ws_ping_interval": math.nan}, "--ws-ping-interval cannot be negative"),
        ({"ws_ping_timeout": 0.0}, "--ws-ping-timeout must be more than 0"),
    ],
)
def test_invalid_ws_settings_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config(**changes)


def test_ws_options_on_the_command_line() -> None:
    options = "--ws off --ws-max-size 1048576 --ws-max-queue 4 --ws-ping-interval 0"
    _, config = parse(["app:app", *options.split(), "--ws-ping-timeout", "5"])
    _, off = parse(["app:app", "--no-ws-per-message-deflate"])
    assert (config.ws, config.ws_max_size, config.ws_max_queue) == ("off", 1048576, 4)
    assert (config.ws_ping_interval, config.ws_ping_timeout) == (0.0, 5.0)
    assert config.ws_per_message_deflate is True
    assert off.ws_per_message_deflate is False
    assert Config().ws_max_size == 16 * MiB


# -- the handshake and the scope ---------------------------------------------------------------


async def test_echo_of_text_and_bytes_and_the_scope(serve: ServeFactory) -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await echo(scope, receive, send)

    server = serve(app, lifespan="off", root_path="/api")
    async with dial(server.port, "/chat?room=1", additional_headers={"X-Who": "me"}) as ws:
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        await ws.send(b"\x00\xff")
        assert await ws.recv() == b"\x00\xff"
        await ws.send("")
        assert await ws.recv() == ""
    (scope,) = [scope for scope in scopes if scope["type"] != "lifespan"]
    assert scope["type"] == "websocket"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/api/chat"
    assert scope["raw_path"] == b"/api/chat"
    assert scope["root_path"] == "/api"
    assert scope["query_string"] == b"room=1"
    assert scope["http_version"] == "1.1"
    assert scope["subprotocols"] == []
    assert scope["asgi"]["version"] == "3.0"
    assert "websocket.http.response" in scope["extensions"]
    assert "method" not in scope
    assert (b"x-who", b"me") in scope["headers"]
    assert scope["client"][0] == "127.0.0.1"


async def test_aiohttp_client_echo_and_subprotocol(serve: ServeFactory) -> None:
    server = serve(echo)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url(server.port), protocols=("graphql-ws", "chat")) as ws,
    ):
        assert ws.protocol == "graphql-ws"
        await ws.send_str("text")
        assert (await ws.receive(timeout=5)).data == "text"
        await ws.send_bytes(b"bytes")
        assert (await ws.receive(timeout=5)).data == b"bytes"
        await ws.send_str("close 4001 done")
        closing = await ws.receive(timeout=5)
        assert closing.type == aiohttp.WSMsgType.CLOSE
        assert closing.data == 4001


async def test_subprotocol_chosen_by_the_app(serve: ServeFactory) -> None:
    chosen: list[list[str]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        chosen.append(scope["subprotocols"])
        await receive()
        await send({"type": "websocket.accept", "subprotocol": "b"})
        await receive()

    server = serve(app, lifespan="off")
    async with dial(server.port, subprotocols=["a", "b"]) as ws:
        assert ws.subprotocol == "b"
    assert chosen == [["a", "b"]]


async def test_subprotocol_the_client_did_not_offer_is_an_app_error(
    serve: ServeFactory, error_log: LogRecords
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept", "subprotocol": "mine"})

    server = serve(app, lifespan="off")
    with pytest.raises(InvalidStatus) as caught:
        async with dial(server.port, subprotocols=["theirs"]):
            pass
    assert caught.value.response.status_code == 500
    assert "'mine' was not offered" in error_log.wait_for_error().getMessage() + str(
        error_log.wait_for_error().exc_info
    )


async def test_accept_headers_are_sent_and_checked(
    serve: ServeFactory, error_log: LogRecords
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        value = b"ok" if scope["path"] == "/good" else b"bad\r\nset-cookie: x=1"
        await send({"type": "websocket.accept", "headers": [(b"x-extra", value)]})
        await receive()

    server = serve(app, lifespan="off")
    async with dial(server.port, "/good") as ws:
        assert ws.response is not None
        assert ws.response.headers["x-extra"] == "ok"
    with pytest.raises(InvalidStatus) as caught:
        async with dial(server.port, "/bad"):
            pass
    assert caught.value.response.status_code == 500
    assert "set-cookie" not in caught.value.response.headers
    error_log.wait_for_error()


def test_invalid_handshake_is_refused_without_the_app(serve: ServeFactory) -> None:
    called: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope)

    server = serve(app, lifespan="off")
    request = handshake().replace(b"sec-websocket-version: 13", b"sec-websocket-version: 8")
    (response,) = raw_exchange(server.port, request)
    assert response.status == 400
    assert b"Sec-WebSocket-Version" in response.body
    assert called == []


def test_ws_off_serves_the_upgrade_as_plain_http(serve: ServeFactory) -> None:
    server = serve(echo, ws="off")
    (response,) = raw_exchange(server.port, handshake())
    assert (response.status, response.body) == (200, b"plain")


def test_a_wsgi_app_gets_the_upgrade_as_plain_http(serve: ServeFactory) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["HTTP_UPGRADE"].encode()]

    server = serve(app, lifespan="off")
    (response,) = raw_exchange(server.port, handshake())
    assert (response.status, response.body) == (200, b"websocket")


# -- denial -------------------------------------------------------------------------------------


async def test_close_before_accept_is_a_403(serve: ServeFactory) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.close"})

    server = serve(app, lifespan="off")
    with pytest.raises(InvalidStatus) as caught:
        async with dial(server.port):
            pass
    assert caught.value.response.status_code == 403


def test_denial_response_and_http_after_it(serve: ServeFactory) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await echo(scope, receive, send)
            return
        await receive()
        headers = [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")]
        start = {"type": "websocket.http.response.start", "status": 401, "headers": headers}
        await send(start)
        await send({"type": "websocket.http.response.body", "body": b"who ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"are you?"})

    server = serve(app, lifespan="off")
    # The bytes after the refused upgrade are HTTP again.
    pipelined = handshake() + b"GET /next HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
    denied, following = raw_exchange(server.port, pipelined)
    assert (denied.status, denied.body) == (401, b"who are you?")
    assert denied.header(b"www-authenticate") == b"Bearer"
    assert (following.status, following.body) == (200, b"plain")


async def test_returning_before_accept_is_a_500(serve: ServeFactory, error_log: LogRecords) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()

    server = serve(app, lifespan="off")
    with pytest.raises(InvalidStatus) as caught:
        async with dial(server.port):
            pass
    assert caught.value.response.status_code == 500
    assert "without accepting" in error_log.wait_for_error().getMessage()


# -- closing --------------------------------------------------------------------------------------


async def test_app_close_code_and_reason_reach_the_client(serve: ServeFactory) -> None:
    server = serve(echo)
    async with dial(server.port) as ws:
        await ws.send("close 4001 see you")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert (ws.close_code, ws.close_reason) == (4001, "see you")


async def test_client_close_code_and_reason_reach_the_app(serve: ServeFactory) -> None:
    heard: list[dict[str, Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        heard.append(dict(await receive()))
        with pytest.raises(OSError):
            await send({"type": "websocket.send", "text": "too late"})

    server = serve(app, lifespan="off")
    async with dial(server.port) as ws:
        await ws.close(4002, "bye")
    assert await asyncio.to_thread(wait_until, lambda: bool(heard))
    assert heard == [{"type": "websocket.disconnect", "code": 4002, "reason": "bye"}]


async def test_app_error_after_accept_closes_with_1011(
    serve: ServeFactory, error_log: LogRecords
) -> None:
    server = serve(echo)
    async with dial(server.port) as ws:
        await ws.send("raise")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1011
    assert error_log.wait_for_error().getMessage() == "Exception in ASGI application"


async def test_message_order_error_is_logged_and_closes_with_1011(
    serve: ServeFactory, error_log: LogRecords
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.accept"})

    server = serve(app, lifespan="off")
    async with dial(server.port) as ws:
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1011
    record = error_log.wait_for_error()
    assert record.exc_info is not None
    assert "'websocket.accept' sent after websocket.accept" in str(record.exc_info[1])


async def test_returning_after_accept_closes_with_1000(serve: ServeFactory) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "only this"})

    server = serve(app, lifespan="off")
    async with dial(server.port) as ws:
        assert await ws.recv() == "only this"
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1000


# -- limits, pings, compression ------------------------------------------------------------------


async def test_message_over_max_size_closes_with_1009(serve: ServeFactory) -> None:
    server = serve(echo, ws_max_size=MiB)
    async with dial(server.port, max_size=None) as ws:
        await ws.send("x" * 100)
        assert await ws.recv() == "x" * 100
        with pytest.raises(ConnectionClosed):
            await ws.send(b"x" * (16 * MiB))
            await ws.recv()
    assert ws.close_code == 1009


def test_dead_peer_is_closed_after_the_ping_timeout(serve: ServeFactory) -> None:
    server = serve(echo, ws_ping_interval=0.2, ws_ping_timeout=0.3)
    with connect(server.port) as client:
        client.sendall(handshake())
        response = client.head()
        assert response.status == 101
        started = time.monotonic()
        sock = client.sock
        opcode, _ = read_frame(sock)
        assert opcode == 0x9  # a ping, left unanswered
        opcode, payload = read_frame(sock)
        assert opcode == 0x8
        assert close_code(payload) == 1011
        assert sock.recv(1) == b""
        assert 0.4 < time.monotonic() - started < 2.0


def test_an_answering_peer_is_not_closed(serve: ServeFactory) -> None:
    server = serve(echo, ws_ping_interval=0.1, ws_ping_timeout=0.1)
    with connect(server.port) as client:
        client.sendall(handshake())
        assert client.head().status == 101
        for _ in range(3):
            opcode, payload = read_frame(client.sock)
            assert opcode == 0x9
            client.sendall(masked(0xA, payload))
        client.sendall(masked(0x1, b"still here"))
        while (frame := read_frame(client.sock))[0] == 0x9:
            client.sendall(masked(0xA, frame[1]))
        assert frame == (0x1, b"still here")


@pytest.mark.parametrize("deflate", [True, False])
async def test_per_message_deflate(serve: ServeFactory, deflate: bool) -> None:
    server = serve(echo, ws_per_message_deflate=deflate)
    async with dial(server.port, compression="deflate") as ws:
        names = [extension.name for extension in ws.protocol.extensions]
        assert names == (["permessage-deflate"] if deflate else [])
        message = "compressible " * 10000
        await ws.send(message)
        assert await ws.recv() == message
        await ws.send("big 100000")
        assert await ws.recv() == b"x" * 100000


async def test_fragmented_text_is_reassembled_and_checked(serve: ServeFactory) -> None:
    server = serve(echo)
    async with dial(server.port) as ws:
        await ws.send(["frag", "mented ", "é"])
        assert await ws.recv() == "fragmented é"
    with connect(server.port) as client:
        client.sendall(handshake())
        assert client.head().status == 101
        # A text message that is not UTF-8 fails the connection with 1007 (RFC 6455 §8.1).
        client.sendall(masked(0x1, b"\xff\xfe"))
        opcode, payload = read_frame(client.sock)
        assert (opcode, close_code(payload)) == (0x8, 1007)


# -- flow control ---------------------------------------------------------------------------------


async def test_fast_client_is_paused_while_the_app_does_not_receive(
    serve: ServeFactory,
) -> None:
    release = threading.Event()
    received: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await asyncio.to_thread(release.wait, 10)
        while (message := await receive())["type"] == "websocket.receive":
            received.append(len(message["bytes"]))

    server = serve(app, lifespan="off", ws_max_queue=4)
    frame = masked(0x2, b"x" * 65536)
    with connect(server.port) as client:
        client.sendall(handshake())
        assert client.head().status == 101
        client.sock.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 3.0
        # Until the kernel's buffers are full: the server stopped reading.
        while time.monotonic() < deadline:
            try:
                sent += client.sock.send(frame[sent % len(frame) :])
            except BlockingIOError:
                time.sleep(0.05)
                try:
                    sent += client.sock.send(frame[sent % len(frame) :])
                except BlockingIOError:
                    break
        assert sent < 64 * MiB, "the server read everything the client sent"
        release.set()
        client.sock.setblocking(True)
        whole = sent // len(frame)
        if sent % len(frame):
            client.sendall(frame[sent % len(frame) :])
            whole += 1
        client.sendall(masked(0x8, struct.pack("!H", 1000)))
        assert await asyncio.to_thread(wait_until, lambda: len(received) == whole)


async def test_slow_reader_makes_the_app_wait(serve: ServeFactory) -> None:
    sent: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        for count in range(200):
            await send({"type": "websocket.send", "bytes": b"x" * MiB})
            sent.append(count)

    server = serve(app, lifespan="off")
    with connect(server.port, receive_buffer=65536) as client:
        client.sendall(handshake())
        assert client.head().status == 101
        await asyncio.sleep(0.5)
        # 200 MiB were to be sent; a few MiB of buffers hold what the client does not read.
        assert len(sent) < 50


# -- the server's side ----------------------------------------------------------------------------


async def test_access_log_has_one_line_per_websocket(serve: ServeFactory) -> None:
    with access_records() as records:
        server = serve(echo, access_log=True)
        async with dial(server.port, "/chat?room=1") as ws:
            await ws.send("hi")
            await ws.recv()
        assert await asyncio.to_thread(wait_until, lambda: bool(records.records))
    (line,) = [record.getMessage() for record in records.records]
    assert '"GET /chat?room=1 HTTP/1.1" 101 2 ' in line
    assert line.endswith("(WebSocket closed 1000)")


async def test_open_websockets_count_against_limit_concurrency(serve: ServeFactory) -> None:
    server = serve(echo, limit_concurrency=2)
    async with dial(server.port) as first, dial(server.port) as second:
        await first.send("1")
        await second.send("2")
        assert [await first.recv(), await second.recv()] == ["1", "2"]
        (response,) = await asyncio.to_thread(
            raw_exchange, server.port, b"GET / HTTP/1.1\r\nhost: test\r\n\r\n"
        )
        assert response.status == 503


@pytest.mark.parametrize(("restart", "code"), [(False, 1001), (True, 1012)])
async def test_stopping_closes_open_websockets(
    serve: ServeFactory, restart: bool, code: int
) -> None:
    server = serve(echo, timeout_graceful_shutdown=5.0)
    async with dial(server.port) as ws:
        await ws.send("open")
        assert await ws.recv() == "open"
        started = time.monotonic()
        server.request_stop(restart=restart)
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert time.monotonic() - started < 1.0
    assert ws.close_code == code
    assert ws.close_reason == "server shutting down"
