"""The developer's error page: HTML for a browser, text for anything else; in development a
request whose app raised gets it, when its client is on this machine."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import cast

import pytest

from aserve.errorpage import for_exception, is_local, render, user_traceback
from aserve.exchange import ConnectionInfo, Cycle, RequestBody, ResponseSink
from aserve.protocols.http11 import Request
from aserve.types import Environ, Receive, Scope, Send, StartResponse
from tests.support.client import connect
from tests.support.servers import running


class Broken(Exception):
    pass


def raise_broken() -> None:
    raise Broken("the <view> broke")


def test_html_for_a_browser_with_everything_escaped() -> None:
    page = render("T<1>", "S&2", "D\"3'", "F>4", b"text/html,application/xhtml+xml")
    assert page.content_type == b"text/html; charset=utf-8"
    for escaped in (b"T&lt;1&gt;", b"S&amp;2", b"D&quot;3&#x27;", b"F&gt;4"):
        assert escaped in page.body
    assert b"<1>" not in page.body


def test_text_for_anything_else() -> None:
    page = render("Title", "Summary", "Details", "footer", b"*/*")
    assert page.content_type == b"text/plain; charset=utf-8"
    assert page.body == b"Title\n\nSummary\n\nDetails\n"


def test_the_page_of_an_exception_names_it_and_its_frames() -> None:
    with pytest.raises(Broken) as caught:
        raise_broken()
    page = for_exception(caught.value, "GET /x", b"")
    text = page.body.decode()
    assert text.startswith("Exception in the app: GET /x\n\nBroken: the <view> broke\n")
    assert "raise_broken" in text
    assert 'raise Broken("the <view> broke")' in text


def test_the_users_traceback_leaves_out_aserves_frames() -> None:
    from aserve.loader import import_from_string

    with pytest.raises(Exception) as caught:
        import_from_string("tests.support.apps.no_such_module:app")
    assert "aserve/loader.py" not in user_traceback(caught.value)


@pytest.mark.parametrize(
    ("client", "local"),
    [
        (("127.0.0.1", 5), True),
        (("127.8.0.1", 5), True),
        (("::1", 5), True),
        (None, True),  # a Unix socket's peer
        (("10.0.0.2", 5), False),
        (("192.168.1.9", 5), False),
        (("2001:db8::1", 5), False),
        (("not-an-address", 5), False),
    ],
)
def test_only_clients_on_this_machine_count_as_local(
    client: tuple[str, int] | None, local: bool
) -> None:
    assert is_local(client) is local


class NoSink:
    """The page is chosen before anything is sent; no sink is needed to choose it."""


def cycle_from(
    loop: asyncio.AbstractEventLoop, client: tuple[str, int] | None, accept: bytes
) -> Cycle:
    request = Request(b"GET", b"/page", "1.1", [(b"accept", accept)], True, False)
    body = RequestBody(loop, lambda body: None)
    return Cycle(request, ConnectionInfo(client, None), cast(ResponseSink, NoSink()), body)


async def test_a_remote_client_never_gets_a_traceback() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(Broken) as caught:
        raise_broken()
    assert cycle_from(loop, ("203.0.113.7", 4000), b"text/html").error_page(caught.value) is None
    page = cycle_from(loop, ("127.0.0.1", 4000), b"text/html").error_page(caught.value)
    assert page is not None and page.content_type.startswith(b"text/html")


async def failing_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        raise_broken()


def failing_wsgi(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    raise_broken()
    return []


@pytest.mark.parametrize("app", [failing_asgi, failing_wsgi], ids=["asgi", "wsgi"])
@pytest.mark.parametrize("accept", [b"text/html", b"*/*"], ids=["browser", "curl"])
def test_in_development_a_failed_request_shows_the_traceback(app: object, accept: bytes) -> None:
    with running(app, reload=True, lifespan="off") as server, connect(server.port) as client:
        client.sendall(b"GET /page HTTP/1.1\r\nHost: t\r\nAccept: %s\r\n\r\n" % accept)
        response = client.response()
    assert response.status == 500
    assert response.header(b"connection") == b"close"
    html = accept == b"text/html"
    assert response.header(b"content-type") == (
        b"text/html; charset=utf-8" if html else b"text/plain; charset=utf-8"
    )
    assert b"Broken: the " in response.body
    assert b"raise_broken" in response.body
    assert (b"&lt;view&gt;" in response.body) is html


@pytest.mark.parametrize("app", [failing_asgi, failing_wsgi], ids=["asgi", "wsgi"])
def test_outside_development_a_failed_request_is_a_plain_500(app: object) -> None:
    with running(app, lifespan="off") as server, connect(server.port) as client:
        client.sendall(b"GET /page HTTP/1.1\r\nHost: t\r\nAccept: text/html\r\n\r\n")
        response = client.response()
    assert response.status == 500
    assert response.body == b"Internal Server Error\n"
