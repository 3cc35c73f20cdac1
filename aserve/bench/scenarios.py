"""The scenarios: which app, which request, how many connections, which servers; the standard
set `aserve-bench` runs by default, and the user's own app. A scenario is a load (requests/s
under wrk or the built-in generator), a memory check (RSS during 1 GiB transfers), or the
reload scenario (`bench.reload`: latency from a save to the new code's answer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from aserve.bench.loadgen import Request
from aserve.bench.peers import ASERVE, CEILING, RELOAD_APP, AppSpec, Interface

ScenarioKind = Literal["load", "memory", "reload"]
# What the load is: HTTP requests (wrk or the built-in generator), or WebSocket messages
# echoed (`bench.wsload`; a message and its echo count as one request).
LoadProtocol = Literal["http", "websocket"]
MiB = 1024 * 1024
GiB = 1024 * MiB

HELLO_WSGI = AppSpec("hello-wsgi", "aserve.bench.apps:hello_wsgi", "wsgi")
HELLO_ASGI = AppSpec("hello-asgi", "aserve.bench.apps:hello_asgi", "asgi")
DJANGO = AppSpec("django", "aserve.bench.django_app:application", "wsgi")
TRANSFER = AppSpec("transfer", "aserve.bench.apps:transfer_wsgi", "wsgi")
WS_ECHO = AppSpec("ws-echo", "aserve.bench.apps:ws_echo", "asgi")
# Made by `bench.reload.make_project` for the run; each peer's own reload command serves it.
RELOAD_PROJECT = AppSpec(RELOAD_APP, "mysite.wsgi:application", "wsgi")
USER = "user"

# Display order; a scenario runs those of its servers that are installed.
# The same aserve without its compiled modules, where the one that runs is compiled.
PURE = "aserve-pure"
_WSGI_PEERS = ("waitress", "gunicorn", "granian", "uvicorn+a2wsgi", "hypercorn")
_ASGI_PEERS = ("uvicorn", "uvicorn-zttp", "granian", "hypercorn")


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    app: AppSpec
    servers: tuple[str, ...]
    request: Request = field(default_factory=Request)
    connections: int = 50
    # Bytes each request moves (response or upload), for the MiB/s column; 0 for small ones.
    payload: int = 0
    # Per-request timeout of the load generator (wrk's default is 2 s).
    timeout: float = 2.0
    kind: ScenarioKind = "load"
    # The body every server must answer the check request with (None: any 2xx/3xx).
    expect: bytes | None = None
    protocol: LoadProtocol = "http"


HELLO = b"Hello, world!"

STANDARD: tuple[Scenario, ...] = (
    Scenario(
        "hello-wsgi",
        "WSGI hello world, 50 connections",
        HELLO_WSGI,
        (CEILING, ASERVE, PURE, "aserve+log", "aserve-wsgiref", *_WSGI_PEERS),
        expect=HELLO,
    ),
    Scenario(
        "hello-asgi",
        "ASGI hello world, 50 connections",
        HELLO_ASGI,
        (CEILING, ASERVE, PURE, "aserve+log", *_ASGI_PEERS),
        expect=HELLO,
    ),
    Scenario(
        "ws-echo",
        "WebSocket echo of 1 KiB text messages (messages/s), 100 connections",
        WS_ECHO,
        (ASERVE, "uvicorn", "hypercorn"),
        connections=100,
        payload=1024,
        expect=HELLO,
        protocol="websocket",
    ),
    Scenario(
        "django",
        "Django view through WSGIHandler (startproject middleware), 50 connections",
        DJANGO,
        (ASERVE, PURE, "runserver", "runserver-aserve", "aserve-wsgiref", *_WSGI_PEERS),
        expect=HELLO,
    ),
    Scenario(
        "stream-1mib",
        "WSGI response of 1 MiB streamed in 64 KiB chunks, 50 connections",
        TRANSFER,
        (ASERVE, PURE, *_WSGI_PEERS),
        request=Request("GET", f"/?size={MiB}"),
        payload=MiB,
        timeout=10.0,
    ),
    Scenario(
        "upload-16mib",
        "16 MiB upload read through wsgi.input in 64 KiB reads, 8 connections",
        TRANSFER,
        (ASERVE, PURE, *_WSGI_PEERS),
        request=Request("POST", "/", 16 * MiB),
        # 50 uploads of 16 MiB at once would take seconds each: a run would complete none.
        connections=8,
        payload=16 * MiB,
        timeout=10.0,
        expect=b"%d" % (16 * MiB),
    ),
    Scenario(
        "hello-wsgi-c1000",
        "WSGI hello world, 1000 concurrent keep-alive connections",
        HELLO_WSGI,
        (ASERVE, PURE, *_WSGI_PEERS),
        connections=1000,
        expect=HELLO,
    ),
    Scenario(
        "memory-1gib",
        "one 1 GiB upload through wsgi.input, then one 1 GiB streamed response: RSS growth",
        TRANSFER,
        (ASERVE, "aserve-wsgiref", *_WSGI_PEERS),
        request=Request("POST", "/", GiB),
        payload=GiB,
        kind="memory",
    ),
    Scenario(
        "reload",
        "save of a Django view -> its new answer: latency over --edits saves, failed requests",
        RELOAD_PROJECT,
        (ASERVE, "runserver", "runserver-aserve", "uvicorn"),
        kind="reload",
    ),
)
BY_NAME = {scenario.name: scenario for scenario in STANDARD}


def user_scenario(
    app: str, interface: Interface, path: str, connections: int, method: str = "GET"
) -> Scenario:
    """The user's own app (`--app module:attr --path /x`) under every server that speaks its
    interface, with the ceiling as the physical-limit row."""
    peers = _ASGI_PEERS if interface == "asgi" else ("aserve-wsgiref", *_WSGI_PEERS)
    return Scenario(
        USER,
        f"{app} {method} {path}, {connections} connections",
        AppSpec(USER, app, interface),
        (CEILING, ASERVE, PURE, *peers),
        request=Request(method, path),
        connections=connections,
    )
