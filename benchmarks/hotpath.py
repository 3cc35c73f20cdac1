"""The ASGI request path in one process, without sockets: HttpProtocol fed GET requests on
50 keep-alive connections, answered by the hello app, the response writes discarded.

    python benchmarks/hotpath.py 200000              # microseconds per request
    valgrind --tool=callgrind python benchmarks/hotpath.py 5000    # then 25000: the difference
                                                     # of the two totals / 20000 = instructions
                                                     # per request, repeatable on a busy machine
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any, cast

import uvloop

from aserve import server
from aserve.bench.apps import hello_asgi
from aserve.config import Config
from aserve.net.connection import HttpProtocol, ServerState
from aserve.runners.asgi import ASGIRunner
from aserve.server import request_limits

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


class NullTransport:
    """Just enough of asyncio.Transport for HttpProtocol; counts the writes."""

    def __init__(self) -> None:
        self.writes = 0
        self.closing = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.writes += 1

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


async def run(requests: int, connections: int, request: bytes = REQUEST) -> float:
    """Microseconds per request."""
    loop = asyncio.get_running_loop()
    config = Config()
    state = ServerState(
        loop,
        ASGIRunner(hello_asgi, loop, root_path=config.root_path, lifespan="off"),
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
    pairs = []
    for _ in range(connections):
        protocol, transport = HttpProtocol(state), NullTransport()
        protocol.connection_made(cast(asyncio.Transport, transport))
        pairs.append((protocol, transport))
    rounds = max(1, requests // connections)
    started = time.perf_counter()
    for _ in range(rounds):
        for protocol, _ in pairs:
            protocol.data_received(request)
        await asyncio.sleep(0)  # the request tasks run
        await asyncio.sleep(0)  # the head flusher runs
    elapsed = time.perf_counter() - started
    answered = sum(transport.writes for _, transport in pairs)
    if answered != rounds * connections:
        raise SystemExit(f"{answered} responses to {rounds * connections} requests")
    return elapsed / answered * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("requests", type=int, nargs="?", default=200_000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--browser", action="store_true", help="a browser's request head, 11 fields"
    )
    args = parser.parse_args()
    request = BROWSER_REQUEST if args.browser else REQUEST
    per_request = uvloop.run(run(args.requests, args.connections, request))
    print(f"{per_request:.2f} us per request")


if __name__ == "__main__":
    main()
