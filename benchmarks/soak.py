"""Soak test: a million requests mixed across keep-alive, pipelined, aborted and erroring
connections against one aserve process, watching its RSS and open file descriptors.

Not part of the test suite. Run from anywhere: `.venv/bin/python benchmarks/soak.py`; see
benchmarks/README.md. The server runs this module's `wsgi_app` / `asgi_app` in a subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any
from wsgiref.validate import validator

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file has benchmarks/ first on sys.path, not the repository root that
# holds the tests' response parser (the server imports this module as benchmarks.soak from it).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aserve.bench.apps import answer_lifespan  # noqa: E402
from aserve.types import Environ, Message, Receive, Scope, Send, StartResponse  # noqa: E402
from tests.support.client import raw_exchange  # noqa: E402
from tests.support.http import Closed, FramingError, Response, ResponseParser  # noqa: E402

HOST = "127.0.0.1"
HELLO = b"Hello, world!"
BIG_CHUNK = b"x" * 16384
BIG_CHUNKS = 64  # /big is 1 MiB, far more than a socket buffer: the abort lands mid-response
UPLOAD_SIZE = 65536  # Content-Length announced by the uploads that are cut off
JOB_TIMEOUT = 15.0
EXIT_FAILED = 1


class SoakError(RuntimeError):
    """Raised on purpose by the /raise* routes: the only tracebacks the log should hold."""


# -- the apps the server runs ---------------------------------------------------------------


def _wsgi_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/hello":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
        return [HELLO]
    if path == "/echo":
        stream = environ["wsgi.input"]
        body = b"".join(iter(lambda: stream.read(65536), b""))
        start_response("200 OK", [("Content-Type", "application/octet-stream"), _length(body)])
        return [body]
    if path == "/big":
        size = len(BIG_CHUNK) * BIG_CHUNKS
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(size))])
        return (BIG_CHUNK for _ in range(BIG_CHUNKS))
    if path == "/_stats":
        stats = _stats()
        start_response("200 OK", [("Content-Type", "application/json"), _length(stats)])
        return [stats]
    if path == "/raise":
        raise SoakError("before start_response")
    if path == "/raise-late":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _fail_after_first_chunk()
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "0")])
    return []


def _stats() -> bytes:
    """Python's own view of the heap: memory blocks held and objects tracked by the GC.

    RSS also moves with allocator fragmentation; these two only grow with a real leak. Garbage
    is collected first, or the cycles an exception leaves (traceback, frames) would count.
    """
    gc.collect()
    return json.dumps(
        {"blocks": sys.getallocatedblocks(), "objects": len(gc.get_objects())}
    ).encode()


def _length(body: bytes) -> tuple[str, str]:
    return ("Content-Length", str(len(body)))


def _fail_after_first_chunk() -> Iterator[bytes]:
    yield b"partial"
    raise SoakError("in the response iterator")


wsgi_app = validator(_wsgi_app)


async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    path = scope["path"]
    if path == "/hello":
        await _start(send, 200, [(b"content-type", b"text/plain"), (b"content-length", b"13")])
        await send({"type": "http.response.body", "body": HELLO})
    elif path == "/echo":
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        await _start(send, 200, [(b"content-length", b"%d" % len(body))])
        await send({"type": "http.response.body", "body": body})
    elif path == "/big":
        await _start(send, 200, [(b"content-length", b"%d" % (len(BIG_CHUNK) * BIG_CHUNKS))])
        for _ in range(BIG_CHUNKS):
            await send({"type": "http.response.body", "body": BIG_CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/_stats":
        stats = _stats()
        await _start(send, 200, [(b"content-length", b"%d" % len(stats))])
        await send({"type": "http.response.body", "body": stats})
    elif path == "/raise":
        raise SoakError("before the response start")
    elif path == "/raise-late":
        await _start(send, 200, [(b"content-type", b"text/plain")])
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise SoakError("after the response start")
    else:
        await _start(send, 404, [(b"content-length", b"0")])
        await send({"type": "http.response.body", "body": b""})


async def _start(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    message: Message = {"type": "http.response.start", "status": status, "headers": headers}
    await send(message)


# -- the server process and what /proc says about it ------------------------------------------


@dataclass
class Sample:
    label: str
    seconds: float
    requests: int
    rss_kib: int
    fds: int
    threads: int
    blocks: int = 0
    objects: int = 0


def probe(pid: int, label: str, seconds: float, requests: int) -> Sample:
    """RSS, open descriptors and threads of `pid`, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return Sample(label, round(seconds, 1), requests, rss, fds, threads)


async def sample(pid: int, port: int, label: str, seconds: float, requests: int) -> Sample:
    """`probe()` plus the heap figures the app itself reports on /_stats."""
    figures = probe(pid, label, seconds, requests)
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(b"GET /_stats HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
        response = await Responses(reader).next()
    finally:
        writer.close()
    stats = json.loads(response.body)
    figures.blocks, figures.objects = stats["blocks"], stats["objects"]
    return figures


@contextlib.contextmanager
def server(
    interface: str,
    cpu: int | None,
    log: IO[bytes],
    extra: Sequence[str] = ("--timeout-graceful-shutdown", "5"),
) -> Iterator[tuple[int, int]]:
    """An aserve process serving this module's app on a socket bound here: (pid, port).

    `extra` are more aserve options; benchmarks/slowloris.py serves the same apps through it.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((HOST, 0))
    listener.listen(2048)
    port = listener.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "aserve",
        f"benchmarks.soak:{interface}_app",
        "--fd",
        str(listener.fileno()),
        "--interface",
        interface,
        "--no-access-log",
        *extra,
    ]
    if cpu is not None and shutil.which("taskset"):
        command = ["taskset", "-c", str(cpu), *command]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=log, stderr=log, pass_fds=(listener.fileno(),)
    )
    listener.close()
    try:
        wait_ready(port, process)
        yield process.pid, port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode} at startup")
        with contextlib.suppress(OSError):
            request = b"GET /hello HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n"
            if answers_hello(raw_exchange(port, request, timeout=1)):
                return
        time.sleep(0.1)
    raise SystemExit("the server did not answer within 20 s")


# -- the client: connection scenarios ---------------------------------------------------------


class Unexpected(Exception):
    """The server answered something the scenario does not allow."""


@dataclass
class Tally:
    requests: int = 0
    jobs: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)


class Responses:
    """The responses on one connection, parsed as its StreamReader delivers the bytes."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._parser = ResponseParser()

    async def next(self, *, truncated_ok: bool = False) -> Response:
        result = await self._next(truncated_ok)
        if isinstance(result, Closed):
            raise Unexpected("closed instead of answering")
        return result

    async def closed(self) -> bool:
        """The server closed the connection without sending anything more."""
        return isinstance(await self._next(False), Closed)

    async def _next(self, truncated_ok: bool) -> Response | Closed:
        try:
            while (result := self._parser.next_response(truncated_ok=truncated_ok)) is None:
                if data := await self._reader.read(65536):
                    self._parser.feed(data)
                else:
                    self._parser.feed_eof()
        except FramingError as exc:
            raise Unexpected(f"bad framing: {exc}") from exc
        return result


def request_bytes(rng: random.Random, last: bool = False) -> tuple[bytes, bytes]:
    """A GET /hello or a POST /echo (Content-Length or chunked) and the body expected back."""
    close = b"Connection: close\r\n" if last else b""
    if rng.random() < 0.75:
        return b"GET /hello HTTP/1.1\r\nHost: soak\r\n" + close + b"\r\n", HELLO
    body = rng.randbytes(rng.choice((0, 10, 1000, 20000)))
    if rng.random() < 0.5:
        head = b"POST /echo HTTP/1.1\r\nHost: soak\r\nContent-Length: %d\r\n" % len(body)
        return head + close + b"\r\n" + body, body
    head = b"POST /echo HTTP/1.1\r\nHost: soak\r\nTransfer-Encoding: chunked\r\n" + close
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:7], body[7:]) if p)
    return head + b"\r\n" + chunks + b"0\r\n\r\n", body


def abort(writer: asyncio.StreamWriter, reset: bool) -> None:
    """Drop the connection: with a TCP RST (SO_LINGER 0) or a plain FIN."""
    if reset:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def expect(responses: Responses, status: int, body: bytes | None) -> None:
    response = await responses.next()
    if response.status != status or (body is not None and response.body != body):
        raise Unexpected(f"status {response.status}, {len(response.body)} body bytes")


async def keep_alive(port: int, rng: random.Random, tally: Tally) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    responses = Responses(reader)
    try:
        count = rng.randint(1, 20)
        close_last = rng.random() < 0.3
        for index in range(count):
            last = close_last and index == count - 1
            data, body = request_bytes(rng, last)
            writer.write(data)
            tally.requests += 1
            await expect(responses, 200, body)
        if close_last and not await responses.closed():
            raise Unexpected("open after Connection: close")
    finally:
        writer.close()


async def pipelined(port: int, rng: random.Random, tally: Tally) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    responses = Responses(reader)
    try:
        pairs = [request_bytes(rng) for _ in range(rng.randint(2, 16))]
        writer.write(b"".join(data for data, _ in pairs))
        tally.requests += len(pairs)
        for _, body in pairs:
            await expect(responses, 200, body)
    finally:
        writer.close()


async def aborted_request(port: int, rng: random.Random, tally: Tally) -> None:
    """An upload cut off part way: the app is reading a body that never completes."""
    _, writer = await asyncio.open_connection(HOST, port)
    head = b"POST /echo HTTP/1.1\r\nHost: soak\r\nContent-Length: %d\r\n\r\n" % UPLOAD_SIZE
    writer.write(head + b"u" * rng.randint(0, UPLOAD_SIZE - 1))
    tally.requests += 1
    await writer.drain()
    await asyncio.sleep(rng.random() * 0.01)
    abort(writer, reset=rng.random() < 0.5)


async def aborted_response(port: int, rng: random.Random, tally: Tally) -> None:
    """A download dropped part way: the app is still producing the body."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"GET /big HTTP/1.1\r\nHost: soak\r\n\r\n")
    tally.requests += 1
    await reader.readexactly(rng.randint(1, 200_000))
    abort(writer, reset=rng.random() < 0.7)


async def erroring(port: int, rng: random.Random, tally: Tally) -> None:
    """The app raises before its response (500, then close) or in the middle of it (close)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    responses = Responses(reader)
    try:
        warm = rng.randint(0, 3)  # a few good requests first, on the same connection
        for _ in range(warm):
            data, body = request_bytes(rng)
            writer.write(data)
            await expect(responses, 200, body)
        late = rng.random() < 0.5
        writer.write(b"GET /raise%s HTTP/1.1\r\nHost: soak\r\n\r\n" % (b"-late" if late else b""))
        tally.requests += warm + 1
        if late:
            # Up to the close: the body must be cut short, without its last chunk.
            response = await responses.next(truncated_ok=True)
            if not response.head.startswith(b"HTTP/1.1 200") or response.complete:
                raise Unexpected("a failed response was not cut short")
        else:
            await expect(responses, 500, None)
            if not await responses.closed():
                raise Unexpected("open after a 500")
    finally:
        writer.close()


async def malformed(port: int, rng: random.Random, tally: Tally) -> None:
    """A request the server must refuse with 400 and a close."""
    reader, writer = await asyncio.open_connection(HOST, port)
    responses = Responses(reader)
    try:
        writer.write(
            rng.choice(
                (
                    b"GET / HTTP/1.1\r\nHost: soak\r\nContent-Length: 1\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                    b"GET / HTTP/1.1\r\nHost: soak\r\nX: a\x00b\r\n\r\n",
                    b"GET /hello HTTP/1.1\r\n\r\n",
                    b"GET\x01/ HTTP/1.1\r\n\r\n",
                )
            )
        )
        tally.requests += 1
        await expect(responses, 400, None)
        if not await responses.closed():
            raise Unexpected("open after a 400")
    finally:
        writer.close()


SCENARIOS = {
    "keep-alive": (keep_alive, 35),
    "pipelined": (pipelined, 25),
    "aborted-request": (aborted_request, 10),
    "aborted-response": (aborted_response, 10),
    "erroring": (erroring, 12),
    "malformed": (malformed, 8),
}


async def worker(port: int, seed: int, total: int, deadline: float, tally: Tally) -> None:
    rng = random.Random(seed)
    names = list(SCENARIOS)
    weights = [SCENARIOS[name][1] for name in names]
    loop = asyncio.get_running_loop()
    while tally.requests < total and loop.time() < deadline:
        name = rng.choices(names, weights)[0]
        tally.jobs[name] += 1
        try:
            async with asyncio.timeout(JOB_TIMEOUT):
                await SCENARIOS[name][0](port, rng, tally)
        except (Unexpected, OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            tally.problems[f"{name}: {type(exc).__name__}: {exc}"[:120]] += 1


async def drive(args: argparse.Namespace, pid: int, port: int) -> tuple[Tally, list[Sample]]:
    tally = Tally()
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + args.max_seconds if args.max_seconds else float("inf")
    samples = [await sample(pid, port, "start", 0.0, 0)]
    report(samples[-1])
    workers = [
        asyncio.create_task(worker(port, args.seed + i, args.requests, deadline, tally))
        for i in range(args.concurrency)
    ]
    warm_at = args.requests // 10
    while not all(w.done() for w in workers):
        await asyncio.wait(workers, timeout=args.interval)
        label = "sample"
        if warm_at and tally.requests >= warm_at and not any(s.label == "warm" for s in samples):
            label = "warm"
        samples.append(await sample(pid, port, label, loop.time() - started, tally.requests))
        report(samples[-1])
    for task in workers:
        task.result()
    # Every client socket is closed; give the server a moment to see the last FINs.
    end = loop.time() + 5
    while loop.time() < end:
        await asyncio.sleep(0.2)
        last = probe(pid, "end", loop.time() - started, tally.requests)
        if last.fds <= samples[0].fds:
            break
    last = await sample(pid, port, "end", last.seconds, tally.requests)
    samples.append(last)
    report(samples[-1])
    return tally, samples


def report(figures: Sample) -> None:
    print(
        f"  {figures.label:6} {figures.seconds:7.1f}s {figures.requests:>10,} req  "
        f"RSS {figures.rss_kib / 1024:7.1f} MiB  fds {figures.fds:4}  threads {figures.threads:3}  "
        f"blocks {figures.blocks:8,}  objects {figures.objects:7,}",
        flush=True,
    )


# -- verdicts ---------------------------------------------------------------------------------


def slope_per_100k(samples: list[Sample], attribute: str) -> float:
    """Least-squares growth of `attribute` per 100,000 requests over `samples`."""
    points = [(s.requests, float(getattr(s, attribute))) for s in samples]
    if len(points) < 3:
        return 0.0
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if not var:
        return 0.0
    cov = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return cov / var * 100_000


def verdict(samples: list[Sample]) -> dict[str, Any]:
    """Figures at start, after warm-up (10% of the requests) and at the end, with verdicts.

    Stable means: the Python heap (blocks held, objects tracked) grew by under 2% after the
    warm-up, RSS by under 4 MiB or 5%, and the descriptors are back to their idle count. A leak
    of one object per request would be 900,000 objects by the end of a million requests.
    """
    start, end = samples[0], samples[-1]
    warm = next((s for s in samples if s.label == "warm"), samples[min(1, len(samples) - 1)])
    after_warm = [s for s in samples if s.requests >= warm.requests and s.label != "end"]
    rss_growth = end.rss_kib - warm.rss_kib
    blocks_growth = end.blocks - warm.blocks
    objects_growth = end.objects - warm.objects
    return {
        "rss_start_kib": start.rss_kib,
        "rss_warm_kib": warm.rss_kib,
        "rss_end_kib": end.rss_kib,
        "rss_peak_kib": max(s.rss_kib for s in samples),
        "rss_growth_after_warmup_kib": rss_growth,
        "rss_slope_kib_per_100k_requests": round(slope_per_100k(after_warm, "rss_kib"), 1),
        "rss_stable": rss_growth <= max(4096, warm.rss_kib // 20),
        "blocks_start": start.blocks,
        "blocks_warm": warm.blocks,
        "blocks_end": end.blocks,
        "objects_start": start.objects,
        "objects_warm": warm.objects,
        "objects_end": end.objects,
        "blocks_slope_per_100k_requests": round(slope_per_100k(after_warm, "blocks")),
        "heap_stable": blocks_growth <= warm.blocks // 50 and objects_growth <= warm.objects // 50,
        "fds_start": start.fds,
        "fds_end": end.fds,
        "fds_max": max(s.fds for s in samples),
        "fds_stable": end.fds <= start.fds,
        "threads_start": start.threads,
        "threads_end": end.threads,
    }


_RECORD = re.compile(rb"\d\d:\d\d:\d\d (\w+)\s+(.*)")
_EXCEPTION = re.compile(rb"([\w.]+(?:Error|Exception|Exit|Interrupt|Disconnected))(?::|$)")
_EXPECTED_RECORDS = re.compile(r"INFO |ERROR Exception in (WSGI|ASGI) application$")


def log_summary(path: Path) -> dict[str, Any]:
    """What the server logged: records and traceback exceptions counted, and the unexpected:
    any warning or error other than the app's own exceptions, any other exception type."""
    records: Counter[str] = Counter()
    exceptions: Counter[str] = Counter()
    other: Counter[str] = Counter()
    with path.open("rb") as log:
        for raw in log:
            line = raw.rstrip()
            if record := _RECORD.match(line):
                text = re.sub(r"\d+", "N", (b"%s %s" % record.groups()).decode("utf-8", "replace"))
                records[text[:160]] += 1
            elif exception := _EXCEPTION.match(line):
                exceptions[exception.group(1).decode()] += 1
            elif line and not line.startswith((b"Traceback", b"  ")):
                other[line.decode("utf-8", "replace")[:160]] += 1
    unexpected = [r for r in records if not _EXPECTED_RECORDS.match(r)]
    unexpected += [e for e in exceptions if not e.endswith("SoakError")]
    unexpected += list(other)
    return {
        "records": dict(records.most_common(20)),
        "exceptions": dict(exceptions),
        "other_lines": dict(other.most_common(20)),
        "unexpected": unexpected[:20],
    }


def soak(args: argparse.Namespace, interface: str) -> dict[str, Any]:
    print(f"\n{interface.upper()}: {args.requests:,} requests, {args.concurrency} connections")
    with tempfile.NamedTemporaryFile(prefix=f"soak-{interface}-", suffix=".log") as log:
        with server(interface, args.server_cpu, log) as (pid, port):
            began = time.monotonic()
            tally, samples = asyncio.run(drive(args, pid, port), debug=False)
            elapsed = time.monotonic() - began
            alive = check_alive(port)
        log.flush()
        result: dict[str, Any] = {
            "interface": interface,
            "requests": tally.requests,
            "seconds": round(elapsed, 1),
            "requests_per_second": round(tally.requests / elapsed),
            "jobs": dict(tally.jobs),
            "problems": dict(tally.problems.most_common(20)),
            "alive_after": alive,
            **verdict(samples),
            "log": log_summary(Path(log.name)),
            "samples": [asdict(s) for s in samples],
        }
    print_result(result)
    return result


def check_alive(port: int) -> bool:
    request = b"GET /hello HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n"
    try:
        return answers_hello(raw_exchange(port, request))
    except FramingError:
        return False


def answers_hello(responses: list[Response]) -> bool:
    """One response: a 200 with the hello body."""
    return (
        len(responses) == 1
        and responses[0].head.startswith(b"HTTP/1.1 200")
        and responses[0].body == HELLO
    )


def print_result(result: dict[str, Any]) -> None:
    mib = 1024.0
    print(
        f"  {result['requests']:,} requests in {result['seconds']} s "
        f"({result['requests_per_second']:,}/s); jobs {result['jobs']}"
    )
    print(
        f"  RSS start {result['rss_start_kib'] / mib:.1f} MiB, after warm-up "
        f"{result['rss_warm_kib'] / mib:.1f}, end {result['rss_end_kib'] / mib:.1f}, peak "
        f"{result['rss_peak_kib'] / mib:.1f}; slope after warm-up "
        f"{result['rss_slope_kib_per_100k_requests']} KiB per 100k requests: "
        f"{'stable' if result['rss_stable'] else 'GROWING'}"
    )
    print(
        f"  Python heap: blocks {result['blocks_start']:,} -> {result['blocks_warm']:,} -> "
        f"{result['blocks_end']:,}, objects {result['objects_start']:,} -> "
        f"{result['objects_warm']:,} -> {result['objects_end']:,}: "
        f"{'stable' if result['heap_stable'] else 'GROWING'}"
    )
    print(
        f"  fds start {result['fds_start']}, end {result['fds_end']}, max {result['fds_max']}: "
        f"{'stable' if result['fds_stable'] else 'LEAKING'}; threads "
        f"{result['threads_start']} -> {result['threads_end']}"
    )
    print(f"  client-side problems: {result['problems'] or 'none'}")
    print(f"  server log: {result['log']}")
    print(f"  answers normally afterwards: {result['alive_after']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=1_000_000, help="per interface")
    parser.add_argument("--interfaces", default="wsgi,asgi", help="comma-separated: wsgi,asgi")
    parser.add_argument("--concurrency", type=int, default=50, help="client connections")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--max-seconds", type=float, default=0.0, help="stop each run after this long (0: never)"
    )
    parser.add_argument("--server-cpu", type=int, default=0, help="pin the server (taskset)")
    parser.add_argument("--client-cpu", type=int, default=1, help="pin this client")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every figure and sample here")
    args = parser.parse_args(argv)
    if (os.cpu_count() or 1) < 2:
        args.server_cpu = args.client_cpu = None
    if args.client_cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {args.client_cpu})
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    results = [soak(args, name.strip()) for name in args.interfaces.split(",") if name.strip()]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    ok = all(
        r["rss_stable"]
        and r["heap_stable"]
        and r["fds_stable"]
        and r["alive_after"]
        and not r["log"]["unexpected"]
        for r in results
    )
    print("\nverdict:", "stable" if ok else "NOT STABLE (see above)")
    return 0 if ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
