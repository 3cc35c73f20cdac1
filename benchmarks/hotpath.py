"""The request path in one process, without sockets: HttpProtocol fed GET requests on 50
keep-alive connections, answered by an app, the response writes discarded.

    python benchmarks/hotpath.py 200000              # microseconds per request
    valgrind --tool=callgrind python benchmarks/hotpath.py 5000    # then 25000: the difference
                                                     # of the two totals / 20000 = instructions
                                                     # per request, repeatable on a busy machine

`--app` picks the app: the ASGI hello (the default), the WSGI hello, or aserve-bench's Django
view (aserve.bench.django_app); a WSGI app runs on aserve's WSGI runner and its thread pool.
`--direct` calls a WSGI app itself, a prebuilt environ per request, without the server: the
baseline that the server's share of a request is measured against. `--tune-gc` does what the
server does once the app is loaded (process.tune_gc); without it, a full collection that
falls in one run and not the other moves a Django figure by ~10k instructions.

    valgrind --tool=callgrind python benchmarks/hotpath.py 1000 --app django --tune-gc
    # then 3000, and the same two with --direct: aserve's share of a Django request
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import uvloop

import aserve
from aserve import server
from aserve.bench.apps import hello_asgi, hello_wsgi
from aserve.config import Config
from aserve.loader import LoadedApp
from aserve.net.connection import HttpProtocol, ServerState
from aserve.process import tune_gc
from aserve.runners import make_runner
from aserve.runners.wsgi import FileWrapper
from aserve.server import request_limits
from aserve.types import WSGIApp

APPS = ("asgi", "wsgi", "django")

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
# What a browser sends: more fields, each going through http11's tests of names.
BROWSER_REQUEST = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Connection: keep-alive\r\nCookie: csrftoken=abcdef0123456789; sessionid=0123456789\r\n"
    b"Upgrade-Insecure-Requests: 1\r\nSec-Fetch-Dest: document\r\n\r\n"
)

# Absent from a checkout from before proxy headers, measured side by side.
trusted_proxies: Callable[[Config], Any] | None = getattr(server, "trusted_proxies", None)


class Written:
    """Counts the responses written on every connection (one write each) and wakes the
    driver once a round's are all out: a WSGI app answers on a pool thread, and its response
    reaches the transport later, on the loop."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.waiter: asyncio.Future[None] | None = None

    def add(self) -> None:
        self.count += 1
        waiter = self.waiter
        if self.count >= self.target and waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def reach(self, target: int) -> None:
        if self.count < target:
            self.target = target
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
            self.waiter = None


class NullTransport:
    """Just enough of asyncio.Transport for HttpProtocol; counts the writes."""

    def __init__(self, written: Written | None = None) -> None:
        self.writes = 0
        self.written = written
        self.closing = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.writes += 1
        if self.written is not None:
            self.written.add()

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def is_reading(self) -> bool:
        return self.reading

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (16384, 65536)

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closing = True


def wsgi_app(app: str) -> WSGIApp:
    if app == "django":
        from aserve.bench.django_app import application

        return application
    return hello_wsgi


async def run(
    requests: int,
    connections: int,
    request: bytes = REQUEST,
    app: str = "asgi",
    gc_tuned: bool = False,
) -> float:
    """Microseconds per request."""
    loop = asyncio.get_running_loop()
    # As the server makes its runner; the ASGI hello has no lifespan to run.
    config = Config(lifespan="off")
    loaded = (
        LoadedApp(kind="asgi", app=hello_asgi, name="hello_asgi")
        if app == "asgi"
        else LoadedApp(kind="wsgi", app=wsgi_app(app), name=app)
    )
    runner = make_runner(loaded, config)
    await runner.startup()
    state = ServerState(
        loop,
        runner,
        limits=request_limits(config),
        limit_body_buffer=config.limit_body_buffer,
        limit_concurrency=config.limit_concurrency,
        keep_alive_timeout=config.timeout_keep_alive,
        head_timeout=config.timeout_request_head,
        body_timeout=config.timeout_request_body,
        access_log=None,
    )
    if trusted_proxies is not None:
        # As the server sets it by default: the peer, 127.0.0.1, is a trusted proxy.
        state.proxies = trusted_proxies(config)
    written = Written() if app != "asgi" else None
    pairs = []
    for _ in range(connections):
        protocol, transport = HttpProtocol(state), NullTransport(written)
        protocol.connection_made(cast(asyncio.Transport, transport))
        pairs.append((protocol, transport))
    rounds = max(1, requests // connections)
    if gc_tuned:
        tune_gc()
    started = time.perf_counter()
    for done in range(connections, (rounds + 1) * connections, connections):
        for protocol, _ in pairs:
            protocol.data_received(request)
        if written is not None:
            await written.reach(done)  # the pool's threads answer, the loop writes
        else:
            await asyncio.sleep(0)  # the request tasks run
            await asyncio.sleep(0)  # the head flusher runs
    elapsed = time.perf_counter() - started
    await runner.shutdown(1.0)
    answered = sum(transport.writes for _, transport in pairs)
    if answered != rounds * connections:
        raise SystemExit(f"{answered} responses to {rounds * connections} requests")
    return elapsed / answered * 1e6


def direct(requests: int, app: str, gc_tuned: bool = False) -> float:
    """Microseconds per call of the WSGI app itself on a GET / environ, as aserve's would be
    for REQUEST, without the server; the body joined and the result closed, as aserve does."""

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return None

    base: dict[str, Any] = {
        "wsgi.version": (1, 0),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": FileWrapper,
        "wsgi.input_terminated": True,
        "SERVER_SOFTWARE": "aserve",
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "HTTP_HOST": "127.0.0.1",
    }
    application = wsgi_app(app)
    if gc_tuned:
        tune_gc()
    started = time.perf_counter()
    for _ in range(requests):
        environ = base.copy()
        environ["wsgi.input"] = io.BytesIO()
        result = application(environ, start_response)
        b"".join(result)
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return (time.perf_counter() - started) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("requests", type=int, nargs="?", default=200_000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--browser", action="store_true", help="a browser's request head, 11 fields"
    )
    parser.add_argument("--app", choices=APPS, default="asgi", help="the app that answers")
    parser.add_argument("--direct", action="store_true", help="call the WSGI app itself, no server")
    parser.add_argument(
        "--tune-gc",
        action="store_true",
        help="freeze what exists once the app is loaded, young collections every 5,000 "
        "allocations: what the server does (--tune-gc, on by default)",
    )
    args = parser.parse_args()
    if args.direct:
        if args.app == "asgi":
            parser.error("--direct calls a WSGI app: --app wsgi or django")
        per_request = direct(args.requests, args.app, args.tune_gc)
    else:
        request = BROWSER_REQUEST if args.browser else REQUEST
        per_request = uvloop.run(
            run(args.requests, args.connections, request, args.app, args.tune_gc)
        )
    print(f"{per_request:.2f} us per request ({aserve.build()} aserve)")


if __name__ == "__main__":
    main()
