"""Slowloris: how 1000 connections trickling a request head one byte per second affect a
normal client's latency. Latency is measured for a while before the attack and again during it.

Not part of the test suite; only ever targets 127.0.0.1 and stops by itself. Run from
anywhere: `.venv/bin/python benchmarks/slowloris.py`; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soak  # benchmarks/soak.py, beside this script; it puts the repository root on sys.path

from tests.support.http import FramingError, Response, ResponseParser

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
HELLO = b"Hello, world!"
# What a trickling connection sends at once, then the endless part one byte at a time: whole
# header lines, so the server parses each field as it completes and the head never ends.
OPENING = b"GET /hello HTTP/1.1\r\nHost: slowloris\r\n"
TRICKLE = b"X-Slow: a\r\n"
READY_TIMEOUT = 60.0
EXIT_FAILED = 1


# -- the trickling side (a child process, so its bursts do not disturb the measuring loop) ----


@dataclass
class TrickleStats:
    connected: int = 0
    failed_connects: int = 0
    closed_by_server: int = 0
    replies: Counter[str] = field(default_factory=Counter)
    lifetimes: list[float] = field(default_factory=list)
    bytes_sent: int = 0


async def trickle_one(
    port: int, stats: TrickleStats, stop: asyncio.Event, reconnect: bool, interval: float
) -> None:
    """One slow client. When the server cuts it off it comes back one interval later, as a
    real attack would; coming back at once would turn the test into a connection flood."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            stats.failed_connects += 1
            await asyncio.sleep(interval)
            continue
        stats.connected += 1
        opened = time.monotonic()
        read = asyncio.ensure_future(reader.read(4096))
        try:
            writer.write(OPENING)
            position = 0
            while not stop.is_set():
                await asyncio.wait([read], timeout=interval)
                if read.done():
                    break
                writer.write(TRICKLE[position : position + 1])
                stats.bytes_sent += 1
                position = (position + 1) % len(TRICKLE)
            if read.done():
                try:
                    status = status_of(read.result())
                except OSError:
                    status = "reset"
                stats.closed_by_server += 1
                stats.lifetimes.append(time.monotonic() - opened)
                stats.replies[status] += 1
        except OSError:
            stats.closed_by_server += 1
            stats.lifetimes.append(time.monotonic() - opened)
            stats.replies["reset"] += 1
        finally:
            read.cancel()
            writer.close()
        if not reconnect:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def trickler(port: int, count: int, reconnect: bool, interval: float, limit: float) -> None:
    """Open `count` slow connections, say "ready", trickle until stdin closes or `limit` s."""
    stats = TrickleStats()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []
    for _ in range(count):
        tasks.append(asyncio.create_task(trickle_one(port, stats, stop, reconnect, interval)))
        if len(tasks) % 50 == 0:
            await asyncio.sleep(0.01)  # stay within the listen backlog while connecting
    deadline = loop.time() + READY_TIMEOUT
    while stats.connected < count and loop.time() < deadline:
        await asyncio.sleep(0.05)
    print("ready", stats.connected, flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limit):
            await reader.read()  # until the parent closes our stdin
    stop.set()
    await asyncio.wait(tasks, timeout=interval + 2)
    for task in tasks:
        task.cancel()
    # Not asdict(): it rebuilds a Counter from (key, value) pairs, counting the pairs.
    figures = {**vars(stats), "replies": dict(stats.replies)}
    print(json.dumps(figures), flush=True)


# -- the measuring side ---------------------------------------------------------------------


@dataclass
class Latencies:
    name: str
    seconds: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        values = sorted(self.seconds)
        if not values:
            return {"requests": 0, "errors": dict(self.errors)}
        p99 = statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]
        return {
            "requests": len(values),
            "p50_ms": round(statistics.median(values) * 1000, 3),
            "p99_ms": round(p99 * 1000, 3),
            "max_ms": round(values[-1] * 1000, 3),
            "errors": dict(self.errors),
        }


def status_of(reply: bytes) -> str:
    """The status of the response `reply` begins with, for the tally of what slow
    connections got back."""
    if not reply:
        return "close"
    parser = ResponseParser()
    parser.feed(reply)
    try:
        head = parser.next_event()
    except FramingError:
        return "garbled"
    return str(head.status) if isinstance(head, Response) else "partial"


async def read_reply(responses: soak.Responses) -> bytes:
    response = await responses.next()
    if not response.head.startswith(b"HTTP/1.1 200") or response.body != HELLO:
        raise ValueError(f"unexpected reply {response.head[:40]!r}")
    return response.body


async def keep_alive_client(port: int, until: float, out: Latencies) -> None:
    """One connection, one GET at a time, as a browser tab on a dev server would."""
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError as exc:
            out.errors[type(exc).__name__] += 1
            await asyncio.sleep(0.05)
            continue
        responses = soak.Responses(reader)
        try:
            while loop.time() < until:
                began = time.perf_counter()
                writer.write(b"GET /hello HTTP/1.1\r\nHost: normal\r\n\r\n")
                await read_reply(responses)
                out.seconds.append(time.perf_counter() - began)
        except (OSError, soak.Unexpected, ValueError) as exc:
            out.errors[type(exc).__name__] += 1
        finally:
            writer.close()


async def fresh_connection_client(port: int, until: float, out: Latencies) -> None:
    """A new connection per request: shows whether the server still accepts promptly."""
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        began = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError as exc:
            out.errors[type(exc).__name__] += 1
            await asyncio.sleep(0.05)
            continue
        try:
            writer.write(b"GET /hello HTTP/1.1\r\nHost: normal\r\nConnection: close\r\n\r\n")
            await read_reply(soak.Responses(reader))
            out.seconds.append(time.perf_counter() - began)
        except (OSError, soak.Unexpected, ValueError) as exc:
            out.errors[type(exc).__name__] += 1
        finally:
            writer.close()


async def measure(port: int, seconds: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    kept, fresh = Latencies("keep-alive"), Latencies("new connection")
    async with asyncio.timeout(seconds + 30):
        await asyncio.gather(
            keep_alive_client(port, until, kept), fresh_connection_client(port, until, fresh)
        )
    return {"keep_alive": kept.summary(), "new_connection": fresh.summary()}


def server_figures(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return {"rss_kib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


@contextlib.contextmanager
def server(
    interface: str, cpu: int | None, extra: list[str], log_path: Path
) -> Iterator[tuple[int, int]]:
    """aserve serving the apps of benchmarks/soak.py (their /hello): (pid, port)."""
    with log_path.open("wb") as log, soak.server(interface, cpu, log, extra) as ready:
        yield ready


def start_trickler(args: argparse.Namespace, port: int) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--role",
        "trickle",
        "--port",
        str(port),
        "--connections",
        str(args.connections),
        "--interval",
        str(args.interval),
        "--limit",
        str(args.seconds + READY_TIMEOUT + 30),
    ]
    if not args.reconnect:
        command.append("--no-reconnect")
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def run_interface(args: argparse.Namespace, interface: str) -> dict[str, Any]:
    print(
        f"\n{interface.upper()}: {args.connections} trickling connections, {args.seconds} s phases"
    )
    with (
        tempfile.TemporaryDirectory(prefix="slowloris-") as tmp,
        server(interface, args.server_cpu, args.server_arg or [], Path(tmp) / "log") as (pid, port),
    ):
        idle = server_figures(pid)
        before = asyncio.run(measure(port, args.seconds))
        show("before", before)
        trickle = start_trickler(args, port)
        assert trickle.stdin is not None and trickle.stdout is not None
        try:
            ramp_began = time.monotonic()
            ready = trickle.stdout.readline().split()
            ramp = time.monotonic() - ramp_began
            print(f"  {ready[1] if len(ready) > 1 else '?'} trickling connections in {ramp:.1f} s")
            under_attack = server_figures(pid)
            during = asyncio.run(measure(port, args.seconds))
            show("during", during)
            at_end = server_figures(pid)
            trickle.stdin.close()
            stats = json.loads(trickle.stdout.readline() or "{}")
            trickle.wait(args.interval + 10)
        finally:
            if trickle.poll() is None:
                trickle.kill()
                trickle.wait()
        lifetimes = stats.pop("lifetimes", [])
        stats["median_lifetime_s"] = round(statistics.median(lifetimes), 1) if lifetimes else None
        print(f"  trickling side: {stats}")
        print(f"  server: idle {idle}, attack start {under_attack}, attack end {at_end}")
        log = [
            line
            for line in (Path(tmp) / "log").read_text(errors="replace").splitlines()
            if " INFO " not in line
        ]
        if log:
            print(f"  server log ({len(log)} lines beyond INFO): {log[:5]}")
    return {
        "interface": interface,
        "before": before,
        "during": during,
        "trickle": stats,
        "ramp_seconds": round(ramp, 1),
        "server_idle": idle,
        "server_attack_start": under_attack,
        "server_attack_end": at_end,
        "server_args": args.server_arg or [],
        "server_log": log[:50],
    }


def show(label: str, phase: dict[str, Any]) -> None:
    for name in ("keep_alive", "new_connection"):
        figures = phase[name]
        print(
            f"  {label:6} {name:14} {figures['requests']:>7,} req  "
            f"p50 {figures.get('p50_ms', '-'):>7} ms  p99 {figures.get('p99_ms', '-'):>7} ms  "
            f"max {figures.get('max_ms', '-'):>8} ms  errors {figures['errors'] or 0}"
        )


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--connections", type=int, default=1000, help="trickling connections")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between bytes")
    parser.add_argument("--interfaces", default="asgi,wsgi", help="comma-separated: asgi,wsgi")
    parser.add_argument(
        "--no-reconnect",
        dest="reconnect",
        action="store_false",
        help="a trickling connection the server cuts off stays gone",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        help="extra aserve option (repeatable), e.g. --server-arg=--timeout-keep-alive=5",
    )
    parser.add_argument("--server-cpu", type=int, default=0, help="pin the server (taskset)")
    parser.add_argument("--client-cpu", type=int, default=1, help="pin the measuring client")
    parser.add_argument("--json", type=Path, help="write the figures here")
    # The trickling child process.
    parser.add_argument(
        "--role", choices=["main", "trickle"], default="main", help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=float, default=120.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    raise_fd_limit(args.connections * 2 + 256)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.role == "trickle":
        asyncio.run(
            trickler(args.port, args.connections, args.reconnect, args.interval, args.limit)
        )
        return 0
    if (os.cpu_count() or 1) < 2:
        args.server_cpu = args.client_cpu = None
    if args.client_cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {args.client_cpu})
    results = [run_interface(args, n.strip()) for n in args.interfaces.split(",") if n.strip()]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
