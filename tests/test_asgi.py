"""The ASGI runner over real sockets: the http scope, receive(), send() and its checks."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import importlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from aserve.errors import ClientDisconnected
from aserve.types import Message, Receive, Scope, Send
from tests.support.client import connect, raw_exchange
from tests.support.django_config import configure_django
from tests.support.logs import LogRecords
from tests.support.servers import ServeFactory, running

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# The Django end-to-end test points ROOT_URLCONF at this module and fills this list.
urlpatterns: list[Any] = []


# -- helpers ----------------------------------------------------------------------------------


def request(
    path: bytes = b"/", *, method: bytes = b"GET", version: bytes = b"1.1", extra: bytes = b""
) -> bytes:
    host = b"host: test\r\n" if version == b"1.1" else b""
    return b"%s %s HTTP/%s\r\n%s%s\r\n" % (method, path, version, host, extra)


async def respond(send: Send, body: bytes = b"", status: int = 200) -> None:
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def wait_for(event: threading.Event, timeout: float = 5.0) -> bool:
    """From the app: wait for the test thread to set `event`."""
    return await asyncio.to_thread(event.wait, timeout)


# -- the http scope -----------------------------------------------------------------------------


def test_http_scope_follows_the_spec(serve: ServeFactory) -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scopes.append(dict(scope))
            await respond(send)

    server = serve(app)
    with connect(server.port) as client:
        client.sendall(
            b"GET /caf%C3%A9/a%2Fb?x=1&y=%20z HTTP/1.1\r\nHost: example.test\r\n"
            b"X-Custom: One\r\nx-custom: two\r\nUser-Agent: Test/1\r\n\r\n"
        )
        assert client.response().status == 200
        client.sendall(b"POST /plain HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        assert client.response().status == 200
        address = client.sock.getsockname()[:2]

    first, second = scopes
    assert first["type"] == "http"
    assert first["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert first["http_version"] == "1.1"
    assert first["method"] == "GET"
    assert first["scheme"] == "http"
    assert first["path"] == "/café/a/b"
    assert first["raw_path"] == b"/caf%C3%A9/a%2Fb"
    assert first["query_string"] == b"x=1&y=%20z"
    assert first["root_path"] == ""
    assert first["headers"] == [
        (b"host", b"example.test"),
        (b"x-custom", b"One"),
        (b"x-custom", b"two"),
        (b"user-agent", b"Test/1"),
    ]
    assert first["client"] == (address[0], address[1])
    assert first["server"] == ("127.0.0.1", server.port)
    assert first["state"] == {}

    assert second["http_version"] == "1.0"
    assert second["method"] == "POST"
    assert second["path"] == "/plain"
    assert second["raw_path"] == b"/plain"
    assert second["query_string"] == b""
    assert second["headers"] == [(b"content-length", b"0")]


def test_absolute_form_target_keeps_only_path_and_query(serve: ServeFactory) -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scopes.append(scope)
            await respond(send)

    server = serve(app)
    (response,) = raw_exchange(
        server.port, b"GET http://example.test/abs/p?q=1 HTTP/1.1\r\nHost: example.test\r\n\r\n"
    )
    assert response.head.startswith(b"HTTP/1.1 200 ")
    assert scopes[0]["path"] == "/abs/p"
    assert scopes[0]["raw_path"] == b"/abs/p"
    assert scopes[0]["query_string"] == b"q=1"


def test_root_path_is_prefixed_onto_path_and_raw_path(serve: ServeFactory) -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scopes.append(scope)
            await respond(send)

    server = serve(app, root_path="/mount")
    response = httpx.get(f"{server.url}/a%20b?k=v")
    assert response.status_code == 200
    scope = scopes[0]
    assert scope["root_path"] == "/mount"
    assert scope["path"] == "/mount/a b"
    assert scope["raw_path"] == b"/mount/a%20b"
    assert scope["query_string"] == b"k=v"


def test_state_is_a_copy_of_lifespan_state_per_request(serve: ServeFactory) -> None:
    states: list[dict[str, Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    scope["state"]["greeting"] = "hello"
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        states.append(dict(scope["state"]))
        scope["state"]["leaked"] = scope["path"]
        scope["state"]["greeting"] = "changed"
        await respond(send)

    server = serve(app, lifespan="on")
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/one").status_code == 200
        assert client.get("/two").status_code == 200
    assert states == [{"greeting": "hello"}, {"greeting": "hello"}]


# -- receive() ----------------------------------------------------------------------------------


def test_chunked_upload_arrives_in_pieces_with_more_body(serve: ServeFactory) -> None:
    messages: list[Message] = []
    first_read = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            messages.append(message)
            first_read.set()
            if not message.get("more_body"):
                break
        await respond(send, b"".join(m["body"] for m in messages))

    server = serve(app)
    with connect(server.port) as client:
        client.sendall(request(b"/up", method=b"POST", extra=b"transfer-encoding: chunked\r\n"))
        client.sendall(b"5\r\nhello\r\n")
        assert first_read.wait(5)
        client.sendall(b"6\r\n world\r\n0\r\n\r\n")
        response = client.response()
    assert response.body == b"hello world"
    assert messages[0] == {"type": "http.request", "body": b"hello", "more_body": True}
    assert all(m["type"] == "http.request" for m in messages)
    assert [m["more_body"] for m in messages] == [True] * (len(messages) - 1) + [False]


def test_expect_continue_is_sent_when_the_app_first_reads(serve: ServeFactory) -> None:
    go = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await wait_for(go)
        message = await receive()
        await respond(send, message["body"])

    server = serve(app)
    with connect(server.port) as client:
        client.sendall(
            request(b"/", method=b"POST", extra=b"expect: 100-continue\r\ncontent-length: 5\r\n")
        )
        assert client.nothing_arrives(0.3)
        go.set()
        assert client.response().head == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.sendall(b"hello")
        response = client.response()
    assert response.status == 200
    assert response.body == b"hello"


def test_expect_continue_is_never_sent_when_the_app_does_not_read(serve: ServeFactory) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await respond(send, b"no thanks", status=417)

    server = serve(app)
    with connect(server.port) as client:
        client.sendall(
            request(b"/", method=b"PUT", extra=b"expect: 100-continue\r\ncontent-length: 9999\r\n")
        )
        responses = client.until_closed()
    # The client may still send the body it announced: the connection cannot be reused.
    assert [r.status for r in responses] == [417]  # and no 100 Continue
    assert responses[0].head.startswith(b"HTTP/1.1 417 ")
    assert responses[0].body == b"no thanks"
    assert b"connection: close\r\n" in responses[0].head


def test_receive_after_the_response_is_http_disconnect(serve: ServeFactory) -> None:
    after: list[Message] = []
    listened: list[Message] = []
    done = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        assert (await receive())["more_body"] is False

        async def listen() -> None:
            listened.append(await receive())

        # Django's pattern: a task waits for http.disconnect while the view answers.
        listener = asyncio.ensure_future(listen())
        await asyncio.sleep(0.01)
        await respond(send, b"ok")
        await asyncio.wait_for(listener, 2)
        after.append(await receive())
        done.set()

    server = serve(app)
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/").text == "ok"
        assert done.wait(5)
    assert listened == [{"type": "http.disconnect"}]
    assert after == [{"type": "http.disconnect"}]


def test_long_poll_sees_disconnect_soon_after_the_client_closes(
    serve: ServeFactory, error_log: LogRecords
) -> None:
    seen: list[Message] = []
    waiting = threading.Event()
    disconnected = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        seen.append(await receive())
        waiting.set()
        seen.append(await receive())
        disconnected.set()

    server = serve(app)
    with connect(server.port) as client:
        client.sendall(request(b"/poll"))
        assert waiting.wait(5)
        time.sleep(0.05)
        assert not disconnected.is_set()
    assert disconnected.wait(1.0)
    assert seen == [
        {"type": "http.request", "body": b"", "more_body": False},
        {"type": "http.disconnect"},
    ]
    # Returning after http.disconnect is what a long-poll app does: no error for it.
    time.sleep(0.05)
    assert error_log.messages() == []


def test_half_close_in_the_middle_of_the_body_ends_the_request(
    serve: ServeFactory, error_log: LogRecords
) -> None:
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "http.disconnect":
                return

    server = serve(app)
    with connect(server.port, timeout=2.0) as client:
        client.sendall(request(b"/", method=b"POST", extra=b"content-length: 10\r\n") + b"abc")
        client.half_close()
        # The body can never be completed: the app is told, and the connection does not linger.
        client.until_closed()
    assert seen[-1] == {"type": "http.disconnect"}
    assert b"".join(m.get("body", b"") for m in seen) == b"abc"
    assert error_log.errors == []


# -- send() -------------------------------------------------------------------------------------


async def hello_world_unsized(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello", "more_body": True})
    await send({"type": "http.response.body", "body": b" world", "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def test_response_without_length_is_chunked_on_http11(serve: ServeFactory) -> None:
    server = serve(hello_world_unsized)
    with connect(server.port) as client:
        client.sendall(request())
        response = client.response()
        assert response.header(b"transfer-encoding") == b"chunked"
        assert response.header(b"content-length") is None
        assert response.wire_body == b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        # Still keep-alive: a second request on the same connection is answered.
        client.sendall(request())
        assert client.response().body == b"hello world"


def test_response_without_length_is_close_delimited_on_http10(serve: ServeFactory) -> None:
    server = serve(hello_world_unsized)
    (response,) = raw_exchange(server.port, request(version=b"1.0"))
    assert response.head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in response.head.lower()
    assert b"connection: close" in response.head
    assert response.body == b"hello world"


def test_streaming_body_reaches_the_client_before_the_app_finishes(serve: ServeFactory) -> None:
    more = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        start = {"type": "http.response.start", "status": 200, "headers": []}
        await send(start | {"headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await wait_for(more)
        for word in (b"second", b"third"):
            await send({"type": "http.response.body", "body": word, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    server = serve(app)
    with connect(server.port) as client:
        client.sendall(request())
        response = client.head()
        assert b"transfer-encoding: chunked\r\n" in response.head
        assert client.part().wire == b"5\r\nfirst\r\n"
        more.set()
        assert client.rest_of_body() == b"6\r\nsecond\r\n5\r\nthird\r\n0\r\n\r\n"


def test_head_goes_out_while_the_app_awaits_before_its_body(serve: ServeFactory) -> None:
    # The head waits to share a write with the body, but not for whatever the app awaits.
    body_now = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await wait_for(body_now)
        await send({"type": "http.response.body", "body": b"late"})

    server = serve(app)
    with connect(server.port) as client:
        for _ in range(2):  # and again on the same connection
            client.sendall(request())
            assert client.head().head.startswith(b"HTTP/1.1 200 OK\r\n")
            body_now.set()
            assert client.rest_of_body() == b"4\r\nlate\r\n0\r\n\r\n"
            body_now.clear()


def test_head_response_has_headers_but_no_body(serve: ServeFactory) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/sized":
            await respond(send, b"hello")
        else:
            await hello_world_unsized(scope, receive, send)

    server = serve(app)
    with connect(server.port) as client:
        client.sendall(request(b"/sized", method=b"HEAD"))
        sized = client.response(b"HEAD")
        client.sendall(request(b"/unsized", method=b"HEAD"))
        unsized = client.response(b"HEAD")
        client.sendall(request(b"/sized"))
        after = client.response()
    assert sized.status == 200
    assert sized.header(b"content-length") == b"5"
    # The field a GET would get (RFC 9110 §9.3.2), though no chunk follows.
    assert unsized.header(b"transfer-encoding") == b"chunked"
    # Nothing was written for the HEAD bodies: the next response follows the head directly.
    assert after.body == b"hello"
    assert client.buffered == b""


# -- what apps send, in each form the spec allows --------------------------------------------
# A compiled build refuses, where a type is declared, what the pure build takes: these forms
# gave 500s there until the runner normalised them where they enter (exchange.as_fields).

ARRAY_FIELDS = [(bytearray(b"content-type"), bytearray(b"text/plain")), (b"x-form", b"x")]


@pytest.mark.parametrize(
    "headers",
    [
        [[b"content-type", b"text/plain"], [b"x-form", b"x"]],  # the ASGI spec's own form
        ((b"content-type", b"text/plain"), (b"x-form", b"x")),
        ARRAY_FIELDS,
        [(memoryview(b"content-type"), b"text/plain"), (b"x-form", memoryview(b"x"))],
        ([b"content-type", bytearray(b"text/plain")], (b"x-form", b"x")),
    ],
    ids=["lists", "tuples", "bytearray", "memoryview", "mixed"],
)
def test_response_fields_in_every_form_an_app_sends(serve: ServeFactory, headers: Any) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"ok"})

    server = serve(app)
    with connect(server.port) as client:
        client.sendall(request() + request())  # pipelined: the first must keep the connection
        first = client.response()
        second = client.response()
    for response in (first, second):
        assert response.status == 200
        assert response.header(b"content-type") == b"text/plain"
        assert response.header(b"x-form") == b"x"
        assert response.body == b"ok"


@pytest.mark.parametrize("kind", [bytearray, memoryview], ids=["bytearray", "memoryview"])
def test_response_body_may_be_a_bytearray_or_a_memoryview(
    serve: ServeFactory, kind: Callable[[bytes], Any]
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": kind(b"hello "), "more_body": True})
            await send({"type": "http.response.body", "body": kind(b"world")})

    server = serve(app)
    with connect(server.port) as client:
        client.sendall(request())
        response = client.response()
    assert response.status == 200
    assert response.body == b"hello world"


def test_a_memoryview_body_counts_bytes_not_items(serve: ServeFactory) -> None:
    wide = memoryview(b"\x00\x01\x02\x03").cast("H")  # 2 items, 4 bytes

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": wide})

    server = serve(app)
    with connect(server.port) as client:
        client.sendall(request())
        response = client.response()
    assert response.body == b"\x00\x01\x02\x03"


Script = Callable[[Send], Any]


async def _double_start(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.start", "status": 200, "headers": []})


async def _body_before_start(send: Send) -> None:
    await send({"type": "http.response.body", "body": b"early"})


async def _unknown_type(send: Send) -> None:
    await send({"type": "http.response.bogus"})


async def _invalid_header(send: Send) -> None:
    headers = [(b"x-bad", b"x\r\ny")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"never"})


async def _str_header(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [("x-str", "v")]})
    await send({"type": "http.response.body", "body": b"never"})


async def _str_body(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": "text"})


async def _raise_before_start(send: Send) -> None:
    raise RuntimeError("boom before start")


async def _return_without_response(send: Send) -> None:
    return


@pytest.mark.parametrize(
    ("script", "logged"),
    [
        (_double_start, "Exception in ASGI application"),
        (_body_before_start, "Exception in ASGI application"),
        (_unknown_type, "Exception in ASGI application"),
        (_invalid_header, "Exception in ASGI application"),
        (_str_header, "Exception in ASGI application"),
        (_str_body, "Exception in ASGI application"),
        (_raise_before_start, "Exception in ASGI application"),
        (_return_without_response, "ASGI app returned without starting a response"),
    ],
    ids=[
        "double-start",
        "body-before-start",
        "unknown-type",
        "invalid-header",
        "str-header",
        "str-body",
        "raise",
        "no-response",
    ],
)
def test_failure_before_the_response_is_sent_gives_500(
    serve: ServeFactory, error_log: LogRecords, script: Script, logged: str
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await script(send)

    server = serve(app)
    with connect(server.port) as client:
        client.sendall(request())
        response = client.response()
        assert client.until_closed() == []
    assert response.status == 500
    assert response.header(b"connection") == b"close"
    assert b"x\r\ny" not in response.body
    assert error_log.messages() == [logged]
    if logged.startswith("Exception"):
        assert error_log.errors[0].exc_info is not None


async def _start_twice_after_body(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    await asyncio.sleep(0.05)
    await send({"type": "http.response.start", "status": 200, "headers": []})


async def _raise_after_body(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    await asyncio.sleep(0.05)
    raise RuntimeError("boom after start")


async def _return_mid_body(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})


@pytest.mark.parametrize(
    ("script", "logged"),
    [
        (_start_twice_after_body, "Exception in ASGI application"),
        (_raise_after_body, "Exception in ASGI application"),
        (_return_mid_body, "ASGI app returned without completing its response"),
    ],
    ids=["start-after-body", "raise", "return-mid-body"],
)
def test_failure_after_the_response_started_closes_the_connection(
    serve: ServeFactory, error_log: LogRecords, script: Script, logged: str
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await script(send)

    server = serve(app)
    with connect(server.port) as client:
        client.sendall(request())
        (response,) = client.until_closed(truncated_ok=True)
    assert response.head.startswith(b"HTTP/1.1 200 ")
    # The chunked body is cut short: no last chunk tells the client it was complete.
    assert response.wire_body == b"7\r\npartial\r\n"
    assert not response.complete
    assert error_log.messages() == [logged]


def test_body_after_the_response_ended_is_refused_and_logged(
    serve: ServeFactory, error_log: LogRecords
) -> None:
    errors: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await respond(send, b"done")
        try:
            await send({"type": "http.response.body", "body": b"extra"})
        except Exception as exc:
            errors.append(exc)
            raise

    server = serve(app)
    # Well under the keep-alive timeout: only an explicit close ends this read in time.
    with connect(server.port, timeout=2.0) as client:
        client.sendall(request())
        response = client.response()
        rest = client.until_closed()
    assert response.status == 200
    assert response.body == b"done"
    # Nothing of the refused message reaches the client, and the connection ends.
    assert rest == []

    assert len(errors) == 1
    assert error_log.messages() == ["Exception in ASGI application"]


# -- apps, contexts, flow control ---------------------------------------------------------------


class LegacyApp:
    """An ASGI 2 (double-callable) app."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def __call__(self, receive: Receive, send: Send) -> None:
        if self.scope["type"] == "http":
            await respond(send, b"legacy " + self.scope["path"].encode())


def test_asgi2_class_app_is_served(serve: ServeFactory) -> None:
    server = serve(LegacyApp)
    response = httpx.get(f"{server.url}/v2")
    assert response.status_code == 200
    assert response.text == "legacy /v2"


request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def test_each_request_runs_in_a_fresh_context(serve: ServeFactory) -> None:
    seen: list[str | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        seen.append(request_id.get())
        request_id.set(scope["path"])
        await respond(send)

    server = serve(app)
    with httpx.Client(base_url=server.url) as client:
        for path in ("/a", "/b", "/c"):
            assert client.get(path).status_code == 200
    assert seen == [None, None, None]


def test_send_waits_while_the_client_does_not_read(serve: ServeFactory) -> None:
    chunk = b"x" * 65536
    count = 512  # 32 MiB, far more than every buffer between the app and the client
    total = len(chunk) * count
    # The server's socket send buffer may grow to 4 MiB (tcp_wmem), the client's receive
    # buffer is pinned small below, and the transport queues ~64 KiB before pausing.
    bound = 6 * 1024 * 1024
    sent = [0]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-length", b"%d" % total)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for _ in range(count):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent[0] += len(chunk)
        await send({"type": "http.response.body", "body": b""})

    server = serve(app)
    with connect(server.port, timeout=10, receive_buffer=65536) as client:
        client.sendall(request())
        time.sleep(0.5)
        stalled = sent[0]
        time.sleep(0.2)
        assert sent[0] == stalled, "the app kept sending to a client that does not read"
        assert 0 < stalled <= bound
        response = client.head()
        received = 0
        worst = 0
        for part in client.parts():
            received += len(part.data)
            worst = max(worst, sent[0] - received)
    assert response.complete, "connection closed early"
    assert received == total
    assert sent[0] == total
    assert worst <= bound


def test_send_after_the_client_left_raises_oserror_quietly(error_log: LogRecords) -> None:
    raised: list[BaseException] = []
    gave_up = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        deadline = time.monotonic() + 5
        try:
            while time.monotonic() < deadline:
                await send({"type": "http.response.body", "body": b"tick", "more_body": True})
                await asyncio.sleep(0.01)
        except BaseException as exc:
            raised.append(exc)
            gave_up.set()
            raise

    with running(app) as server:
        with connect(server.port) as client:
            client.sendall(request())
            client.head()
            assert client.part().wire == b"4\r\ntick\r\n"
        assert gave_up.wait(2)
    # The server has finished every request when `running` returns: anything logged is in.
    assert len(raised) == 1
    assert isinstance(raised[0], OSError)
    assert isinstance(raised[0], ClientDisconnected)
    assert error_log.errors == []


# -- Django -------------------------------------------------------------------------------------


def test_django_asgi_handler_end_to_end(serve: ServeFactory) -> None:
    configure_django()
    from django.core.handlers.asgi import ASGIHandler
    from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
    from django.test.utils import override_settings
    from django.urls import path

    def echo(request: HttpRequest, name: str) -> HttpResponse:
        text = f"{request.method} {request.path} {name} {len(request.body)}"
        response = HttpResponse(text, content_type="text/plain")
        response["X-Query"] = request.GET.get("q", "")
        return response

    async def stream(request: HttpRequest) -> StreamingHttpResponse:
        async def parts() -> Any:
            for n in range(3):
                yield f"part{n};"
                await asyncio.sleep(0)

        return StreamingHttpResponse(parts(), content_type="text/plain")

    urlpatterns[:] = [path("echo/<str:name>", echo), path("stream", stream)]
    with override_settings(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], MIDDLEWARE=[]):
        server = serve(ASGIHandler())
        with httpx.Client(base_url=server.url) as client:
            posted = client.post("/echo/bob?q=1", content=b"z" * 1000)
            streamed = client.get("/stream")
            missing = client.get("/nowhere")
    assert posted.status_code == 200
    assert posted.text == "POST /echo/bob bob 1000"
    assert posted.headers["x-query"] == "1"
    assert streamed.status_code == 200
    assert streamed.text == "part0;part1;part2;"
    assert streamed.headers["transfer-encoding"] == "chunked"
    assert missing.status_code == 404


# -- examples/stream_asgi.py --------------------------------------------------------------------


@pytest.fixture
def stream_example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    module = importlib.import_module("stream_asgi")
    monkeypatch.setattr(module, "INTERVAL", 0.05)
    return module


def test_example_events_stream_until_the_client_leaves(
    serve: ServeFactory, stream_example: ModuleType, error_log: LogRecords
) -> None:
    received: list[Message] = []
    finished = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        async def watched_receive() -> Message:
            message = await receive()
            received.append(message)
            return message

        await stream_example.app(scope, watched_receive, send)
        if scope["type"] == "http":
            finished.set()

    server = serve(app)
    with connect(server.port) as client:
        client.sendall(request(b"/events"))
        response = client.head()
        started = time.monotonic()
        events = [client.part().data for _ in range(3)]
        elapsed = time.monotonic() - started
    assert response.head.startswith(b"HTTP/1.1 200 ")
    assert b"content-type: text/event-stream" in response.head
    assert events == [
        b"id: 1\ndata: tick 1\n\n",
        b"id: 2\ndata: tick 2\n\n",
        b"id: 3\ndata: tick 3\n\n",
    ]
    # Two intervals of 0.05 s passed between the first and the third event, not 0.5 s each.
    assert elapsed < 0.5
    assert finished.wait(1.0)
    assert {"type": "http.disconnect"} in received
    assert error_log.messages() == []


def test_example_upload_reports_size_and_sha256(
    serve: ServeFactory, stream_example: ModuleType
) -> None:
    payload = os.urandom(300_000)

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(payload), 70_000):
            yield payload[start : start + 70_000]

    server = serve("stream_asgi:app")
    with httpx.Client(base_url=server.url) as client:
        uploaded = client.post("/upload", content=pieces())
        wrong = client.get("/upload")
        unknown = client.get("/elsewhere")
    assert uploaded.status_code == 200
    assert uploaded.json() == {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    assert wrong.status_code == 405
    assert unknown.status_code == 404
