"""Proxy headers: what `Forwarded` and `X-Forwarded-*` from a trusted peer make of the client,
the scheme and the host, in the WSGI environ and the ASGI scope, and that an untrusted
peer's are ignored and passed on untouched. The parsing itself, byte for byte, first."""

from __future__ import annotations

import json
import wsgiref.validate
from collections.abc import Iterable

import httpx
import pytest
import websockets

from aserve.cli import parse
from aserve.config import Config
from aserve.errors import ConfigError
from aserve.protocols.forwarded import Forwarded, Trusted, forwarded
from aserve.protocols.http11 import Connection, Limits, Request
from aserve.types import Environ, Headers, Receive, Scope, Send, StartResponse
from tests.support.logs import access_records
from tests.support.polling import wait_until
from tests.support.servers import ServeFactory

LOCAL = Trusted("127.0.0.1")


def said(*fields: tuple[str, str], trusted: Trusted = LOCAL) -> Forwarded:
    headers: Headers = [(name.encode(), value.encode()) for name, value in fields]
    return forwarded(headers, trusted)


# -- parsing -----------------------------------------------------------------------------------


def test_x_forwarded_for_takes_the_right_most_untrusted_address() -> None:
    trusted = Trusted("127.0.0.1, 10.0.0.0/8")
    chain = ("x-forwarded-for", "203.0.113.7, 198.51.100.2, 10.1.2.3")
    assert said(chain, trusted=trusted).client == ("198.51.100.2", 0)
    # Every hop trusted: the left-most, the first client.
    assert said(("x-forwarded-for", "10.0.0.1, 10.0.0.2"), trusted=trusted).client == (
        "10.0.0.1",
        0,
    )
    # Several fields are one list (RFC 9110 §5.3).
    two = said(("x-forwarded-for", "203.0.113.7"), ("x-forwarded-for", "10.9.9.9"), trusted=trusted)
    assert two.client == ("203.0.113.7", 0)


def test_x_forwarded_proto_and_host_follow_the_client_entry() -> None:
    trusted = Trusted("10.0.0.0/8")
    result = said(
        ("x-forwarded-for", "203.0.113.7, 10.0.0.5"),
        ("x-forwarded-proto", "https, http"),
        ("x-forwarded-host", "example.com, internal:8080"),
        trusted=trusted,
    )
    assert result == Forwarded(("203.0.113.7", 0), "https", "example.com")
    # Without a parallel list, the nearest proxy's value.
    alone = said(("x-forwarded-proto", "HTTPS"), ("x-forwarded-host", "example.org:8443"))
    assert alone == Forwarded(None, "https", "example.org:8443")


def test_forwarded_rfc_7239() -> None:
    trusted = Trusted("10.0.0.0/8")
    result = said(
        (
            "forwarded",
            'for="[2001:db8:cafe::17]:4711";proto=https;host="example.com",for=10.0.0.3;proto=http',
        ),
        trusted=trusted,
    )
    assert result == Forwarded(("2001:db8:cafe::17", 4711), "https", "example.com")
    # Forwarded wins over the X-Forwarded fields.
    both = said(("x-forwarded-for", "198.51.100.1"), ("forwarded", "for=192.0.2.60;proto=http"))
    assert both.client == ("192.0.2.60", 0)
    # Case of the names, a quoted comma, an IPv4 node with a port.
    odd = said(("forwarded", 'For="192.0.2.43:80";HOST="a,b";Proto=HTTPS'))
    assert odd == Forwarded(("192.0.2.43", 80), "https", None)


@pytest.mark.parametrize(
    "fields",
    [
        [("x-forwarded-for", "not-an-address")],
        [("x-forwarded-for", "unknown")],
        [("x-forwarded-for", "192.0.2.1:99999")],
        [("x-forwarded-proto", "gopher")],
        [("x-forwarded-host", "evil.com/path")],
        [("x-forwarded-host", "a b")],
        [("forwarded", "for=_hidden;proto=ftp")],
        [("forwarded", "for=unknown")],
        [("forwarded", "garbage without pairs")],
        [("forwarded", 'for="[2001:db8::1"')],
    ],
)
def test_invalid_values_are_ignored(fields: list[tuple[str, str]]) -> None:
    assert said(*fields) == Forwarded(None, None, None)


def test_trusted_peers() -> None:
    trusted = Trusted("127.0.0.1, 10.0.0.0/8, ::1")
    assert trusted.trusts(("10.200.0.1", 1))
    assert trusted.trusts(("::1", 1))
    assert not trusted.trusts(("192.0.2.1", 1))
    assert trusted.trusts(None)  # a Unix socket peer
    assert Trusted("*").trusts(("192.0.2.1", 1))
    with pytest.raises(ConfigError, match="not an IP address"):
        Config(forwarded_allow_ips="127.0.0.1, localhost")


def parsed_request(head: bytes) -> Request:
    connection = Connection(Limits(8190, 100, 8190, 65536, 1 << 20, 1024, 1024))
    connection.receive_data(head)
    event = connection.next_event()
    assert isinstance(event, Request)
    return event


def test_http11_flags_only_requests_with_a_proxy_field() -> None:
    plain = parsed_request(b"GET / HTTP/1.1\r\nhost: a\r\nx-forwarded-fort: 1\r\n\r\n")
    assert not plain.forwarded
    proxied = parsed_request(b"GET / HTTP/1.1\r\nhost: a\r\nX-Forwarded-Proto: https\r\n\r\n")
    assert proxied.forwarded


def test_the_options() -> None:
    assert parse(["app"])[1].proxy_headers is True
    assert parse(["--no-proxy-headers", "app"])[1].proxy_headers is False
    assert parse(["--forwarded-allow-ips", "*", "app"])[1].forwarded_allow_ips == "*"


# -- served ------------------------------------------------------------------------------------


async def scope_app(scope: Scope, receive: Receive, send: Send) -> None:
    described = {
        "scheme": scope["scheme"],
        "client": scope["client"],
        "host": [v.decode() for k, v in scope["headers"] if k == b"host"],
        "xff": [v.decode() for k, v in scope["headers"] if k == b"x-forwarded-for"],
    }
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps(described)})
        await send({"type": "websocket.close"})
    elif scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps(described).encode()})


def _environ_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    keys = ("wsgi.url_scheme", "REMOTE_ADDR", "HTTP_HOST", "HTTP_X_FORWARDED_FOR")
    return [json.dumps({key: environ.get(key) for key in keys}).encode()]


environ_app = wsgiref.validate.validator(_environ_app)

PROXIED = {
    "x-forwarded-for": "203.0.113.9, 127.0.0.1",
    "x-forwarded-proto": "https",
    "x-forwarded-host": "example.com",
}


def test_asgi_scope_from_a_trusted_proxy(serve: ServeFactory) -> None:
    server = serve(scope_app)
    answer = httpx.get(server.url, headers=PROXIED).json()
    assert answer["client"] == ["203.0.113.9", 0]
    assert answer["scheme"] == "https"
    assert answer["host"] == ["example.com"]
    assert answer["xff"] == ["203.0.113.9, 127.0.0.1"]  # the fields stay for the app
    standard = httpx.get(
        server.url, headers={"forwarded": 'for="[2001:db8::5]:1234";proto=https;host=a.example'}
    ).json()
    assert standard["client"] == ["2001:db8::5", 1234]
    assert standard["host"] == ["a.example"]
    # A request without them: the socket's view.
    bare = httpx.get(server.url).json()
    assert bare["scheme"] == "http"
    assert bare["client"][0] == "127.0.0.1"
    assert bare["host"] == [f"127.0.0.1:{server.port}"]


def test_wsgi_environ_from_a_trusted_proxy(serve: ServeFactory) -> None:
    server = serve(environ_app)
    answer = httpx.get(server.url, headers=PROXIED).json()
    assert answer["REMOTE_ADDR"] == "203.0.113.9"
    assert answer["wsgi.url_scheme"] == "https"
    assert answer["HTTP_HOST"] == "example.com"


@pytest.mark.parametrize(
    "settings", [{"forwarded_allow_ips": "10.0.0.1"}, {"proxy_headers": False}]
)
@pytest.mark.parametrize("app", [scope_app, environ_app], ids=["asgi", "wsgi"])
def test_untrusted_peers_headers_are_ignored_and_passed_on(
    serve: ServeFactory, settings: dict[str, object], app: object
) -> None:
    server = serve(app, **settings)
    answer = httpx.get(server.url, headers=PROXIED).json()
    if app is scope_app:
        assert answer["client"][0] == "127.0.0.1"
        assert answer["scheme"] == "http"
        assert answer["host"] == [f"127.0.0.1:{server.port}"]
        assert answer["xff"] == ["203.0.113.9, 127.0.0.1"]
    else:
        assert answer["REMOTE_ADDR"] == "127.0.0.1"
        assert answer["wsgi.url_scheme"] == "http"
        assert answer["HTTP_HOST"] == f"127.0.0.1:{server.port}"
        assert answer["HTTP_X_FORWARDED_FOR"] == "203.0.113.9, 127.0.0.1"


def test_forwarded_allow_ips_from_the_environment(
    serve: ServeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "192.0.2.1")
    untrusted = serve(scope_app)
    assert httpx.get(untrusted.url, headers=PROXIED).json()["scheme"] == "http"
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    trusted = serve(scope_app)
    assert httpx.get(trusted.url, headers=PROXIED).json()["scheme"] == "https"


async def test_websocket_behind_a_tls_proxy_is_wss(serve: ServeFactory) -> None:
    server = serve(scope_app)
    async with websockets.connect(
        f"ws://127.0.0.1:{server.port}/",
        additional_headers={"x-forwarded-proto": "https", "x-forwarded-for": "192.0.2.8"},
        open_timeout=5,
    ) as ws:
        answer = json.loads(await ws.recv())
    assert answer["scheme"] == "wss"
    assert answer["client"] == ["192.0.2.8", 0]


def test_the_access_line_names_the_forwarded_client(serve: ServeFactory) -> None:
    with access_records() as records:
        server = serve(scope_app, access_log=True)
        httpx.get(server.url, headers=PROXIED)
        httpx.get(server.url)
        assert wait_until(lambda: len(records.records) == 2)
    forwarded_line, direct_line = (r.getMessage() for r in records.records)
    assert forwarded_line.startswith("203.0.113.9:0 - ")
    assert direct_line.startswith("127.0.0.1:")
