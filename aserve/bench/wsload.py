"""The WebSocket load generator: each connection completes the opening handshake, then sends
one message and waits for its echo, again and again (closed loop, like the HTTP generators);
a message and its echo count as one request in the `LoadResult`.

`python -m aserve.bench.wsload URL ...` prints its result as JSON; the harness starts it that
way so it can be pinned to its own CPU. Frames are built once and parsed by hand: no
WebSocket library in the client, so that the client costs far less than the servers it
loads, and none of them is favoured by sharing code with it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import cast
from urllib.parse import urlsplit

from aserve.bench.loadgen import LoadClient, LoadResult, LoadRun, drive

_TEXT, _BINARY, _CLOSE = 0x1, 0x2, 0x8


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A final frame from a client: masked, as RFC 6455 §5.3 requires. The key is zero, so
    the payload goes out as it is; servers unmask it all the same."""
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return head + b"\0\0\0\0" + payload


def server_frame_size(buffer: bytearray | bytes, start: int) -> int:
    """The size of the (unmasked) frame that begins at `start`, or 0 when its head is not
    all there yet."""
    available = len(buffer) - start
    if available < 2:
        return 0
    length = buffer[start + 1] & 0x7F
    if length == 126:
        if available < 4:
            return 0
        return 4 + int.from_bytes(buffer[start + 2 : start + 4], "big")
    if length == 127:
        if available < 10:
            return 0
        return 10 + int.from_bytes(buffer[start + 2 : start + 10], "big")
    return 2 + length


class _Run(LoadRun):
    def __init__(self, host: str, path: str, message: bytes, deadline: float, timeout: float):
        super().__init__(deadline, timeout)
        key = base64.b64encode(os.urandom(16))
        self.handshake = (
            b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (path.encode(), host.encode(), key)
        )
        self.frame = message


class _Client(LoadClient):
    """One WebSocket: the handshake, then one message in flight at a time."""

    run: _Run

    def __init__(self, run: _Run, closed: asyncio.Future[None]) -> None:
        super().__init__(run, closed)
        self.buffer = bytearray()
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.run.clients.add(self)
        self.transport.write(self.run.handshake)

    def send(self) -> None:
        assert self.transport is not None
        self.in_flight = True
        self.sent_at = time.perf_counter()
        self.transport.write(self.run.frame)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                # A refused handshake is the WebSocket's non-2xx answer.
                self.run.non_2xx_3xx += 1
                self._abort()
                return
            del buffer[: end + 4]
            self.open = True
            self.send()
        start = 0
        while size := server_frame_size(buffer, start):
            if len(buffer) - start < size:
                break
            opcode = buffer[start] & 0x0F
            start += size
            if opcode == _CLOSE:
                self._abort()
                return
            self._echoed()
        if start:
            del buffer[:start]

    def _echoed(self) -> None:
        now = time.perf_counter()
        run = self.run
        self.in_flight = False
        if now > run.deadline or run.stopping:
            return
        run.latencies.append(now - self.sent_at)
        self.send()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def generate(
    url: str,
    connections: int,
    duration: float,
    size: int = 1024,
    text: bool = True,
    timeout: float = 2.0,
) -> LoadResult:
    """Echo `size`-byte messages over `connections` WebSockets to `url` for `duration` s."""
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    message = client_frame(_TEXT if text else _BINARY, b"x" * size)
    started = time.perf_counter()
    run = _Run(parts.netloc, path, message, started + duration, timeout)
    return await drive(run, url, connections, functools.partial(_Client, run), started)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m aserve.bench.wsload",
        description="The WebSocket echo load generator; prints a JSON result.",
    )
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--binary", action="store_true", help="binary messages, not text")
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    import uvloop

    result = uvloop.run(
        generate(
            args.url, args.connections, args.duration, args.size, not args.binary, args.timeout
        )
    )
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
