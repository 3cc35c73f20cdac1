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
import array
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

from aserve.bench.loadgen import SOCKET_ERRORS, LoadResult
from aserve.bench.stats import percentile

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


class _Run:
    def __init__(self, host: str, path: str, message: bytes, deadline: float) -> None:
        key = base64.b64encode(os.urandom(16))
        self.handshake = (
            b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (path.encode(), host.encode(), key)
        )
        self.frame = message
        self.deadline = deadline
        self.latencies = array.array("d")
        self.errors = dict.fromkeys(SOCKET_ERRORS, 0)
        self.failed_handshakes = 0
        self.clients: set[_Client] = set()
        self.stopping = False


class _Client(asyncio.Protocol):
    """One WebSocket: the handshake, then one message in flight at a time."""

    def __init__(self, run: _Run, closed: asyncio.Future[None]) -> None:
        self.run = run
        self.closed = closed
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.open = False
        self.sent_at = 0.0
        self.in_flight = False

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
                self.run.failed_handshakes += 1
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

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.clients.discard(self)
        if self.in_flight and not self.run.stopping:
            self.run.errors["read"] += 1
        if not self.closed.done():
            self.closed.set_result(None)


async def _connection(run: _Run, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    while time.perf_counter() < run.deadline and not run.stopping:
        closed: asyncio.Future[None] = loop.create_future()
        try:
            await loop.create_connection(functools.partial(_Client, run, closed), host, port)
        except OSError:
            run.errors["connect"] += 1
            await asyncio.sleep(0.01)
            continue
        await closed


async def _watchdog(run: _Run, timeout: float) -> None:
    while not run.stopping:
        await asyncio.sleep(min(0.1, timeout / 4))
        now = time.perf_counter()
        for client in list(run.clients):
            if client.in_flight and now - client.sent_at > timeout:
                run.errors["timeout"] += 1
                client.in_flight = False
                client._abort()


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
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    message = client_frame(_TEXT if text else _BINARY, b"x" * size)
    started = time.perf_counter()
    run = _Run(parts.netloc, path, message, started + duration)
    tasks = [asyncio.create_task(_connection(run, host, port)) for _ in range(connections)]
    watchdog = asyncio.create_task(_watchdog(run, timeout))
    await asyncio.sleep(max(0.0, run.deadline - time.perf_counter()))
    elapsed = time.perf_counter() - started
    run.stopping = True
    for client in list(run.clients):
        client._abort()
    for task in [*tasks, watchdog]:
        task.cancel()
    await asyncio.gather(*tasks, watchdog, return_exceptions=True)
    await asyncio.sleep(0)
    ordered = sorted(run.latencies)
    return LoadResult(
        requests=len(ordered),
        duration_s=elapsed,
        requests_per_s=len(ordered) / elapsed,
        p50_ms=percentile(ordered, 50) * 1000,
        p99_ms=percentile(ordered, 99) * 1000,
        # A refused handshake is the WebSocket's non-2xx answer.
        non_2xx_3xx=run.failed_handshakes,
        socket_errors=run.errors,
    )


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
