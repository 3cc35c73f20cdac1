"""The "physical limit" row: a uvloop + httptools server that answers every request with the
same canned bytes, no app, no scope, no log. Nothing written in Python serves faster."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence
from typing import cast

import httptools
import uvloop

from aserve.bench.apps import BODY

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)


class CannedProtocol(asyncio.Protocol):
    """Parses requests only to find where each ends; the answer is always `RESPONSE`."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending = 0
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()
            return
        if self.pending:
            # Every request completed by this read answered in one write.
            self.transport.write(RESPONSE * self.pending)
            self.pending = 0
            if self.close_after:
                self.transport.close()

    def on_message_complete(self) -> None:
        self.pending += 1
        # Asked here: once the next request has begun, the answer is about that one.
        self.close_after = not self.parser.should_keep_alive()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(CannedProtocol, host, port, backlog=2048)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m aserve.bench.ceiling", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
