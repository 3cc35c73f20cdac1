"""Load generators: wrk (run and parsed), and a built-in closed-loop generator on uvloop and
httptools for machines without wrk. Both return a `LoadResult`.

`python -m aserve.bench.loadgen URL ...` runs the built-in one and prints its result as JSON;
the harness starts it that way so it can be pinned to its own CPU like wrk.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import functools
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlsplit

import httptools

from aserve.bench.stats import percentile
from aserve.bench.system import pinned

GeneratorKind = Literal["wrk", "builtin"]
SOCKET_ERRORS = ("connect", "read", "write", "timeout")


@dataclass(frozen=True)
class Request:
    """The one request every connection sends again and again."""

    method: str = "GET"
    path: str = "/"
    body_size: int = 0

    def head(self, host: str) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}"]
        if self.body_size or self.method in ("POST", "PUT"):
            lines += ["Content-Type: application/octet-stream", f"Content-Length: {self.body_size}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass
class LoadResult:
    requests: int
    duration_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx_3xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SOCKET_ERRORS, 0))

    @property
    def errors(self) -> int:
        return self.non_2xx_3xx + sum(self.socket_errors.values())


# -- wrk -------------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_LATENCY = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.MULTILINE)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.MULTILINE
)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def parse_wrk(output: str) -> LoadResult:
    """wrk's `--latency` report as a `LoadResult`; ValueError when it is not one."""
    rps = _RPS.search(output)
    total = _TOTAL.search(output)
    if rps is None or total is None:
        raise ValueError(f"unexpected wrk output: {output.strip()[:500]!r}")
    latency = {m[1]: float(m[2]) * _UNITS_MS[m[3]] for m in _LATENCY.finditer(output)}
    errors = _SOCKET_ERRORS.search(output)
    socket_errors = dict.fromkeys(SOCKET_ERRORS, 0)
    if errors is not None:
        socket_errors = dict(zip(SOCKET_ERRORS, map(int, errors.groups()), strict=True))
    non_2xx = _NON_2XX.search(output)
    return LoadResult(
        requests=int(total[1]),
        duration_s=float(total[2]) * _UNITS_MS[total[3]] / 1000,
        requests_per_s=float(rps[1]),
        p50_ms=latency.get("50", math.nan),
        p99_ms=latency.get("99", math.nan),
        non_2xx_3xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=socket_errors,
    )


def wrk_script(request: Request) -> str | None:
    """The Lua script wrk needs for anything but a plain GET, else None."""
    if request.method == "GET" and not request.body_size:
        return None
    lines = [f'wrk.method = "{request.method}"']
    if request.body_size:
        lines.append(f'wrk.body = string.rep("x", {request.body_size})')
        lines.append('wrk.headers["Content-Type"] = "application/octet-stream"')
    return "\n".join(lines) + "\n"


def wrk_command(
    url: str, connections: int, duration: int, timeout: float, script: str | None = None
) -> list[str]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", f"--timeout={timeout:g}s"]
    if script is not None:
        command += ["-s", script]
    return [*command, "--latency", url]


def wrk_version() -> str:
    try:
        done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    except OSError:
        return "not installed"
    banner = (done.stdout or done.stderr).strip()
    # "wrk 4.1.0 [epoll] Copyright (C) 2012 Will Glozer": the name and version suffice.
    return " ".join(banner.split()[:2]) if banner else "wrk"


# -- the built-in generator ------------------------------------------------------------------


class LoadRun:
    """Shared state of one closed-loop load run: HTTP requests here, WebSocket messages in
    `bench.wsload`."""

    def __init__(self, deadline: float, timeout: float) -> None:
        self.deadline = deadline
        self.timeout = timeout
        self.latencies = array.array("d")
        self.non_2xx_3xx = 0
        self.errors = dict.fromkeys(SOCKET_ERRORS, 0)
        self.clients: set[LoadClient] = set()
        self.stopping = False


class LoadClient(asyncio.Protocol):
    """One connection of a closed-loop run: its request in flight, and its end (`closed`)."""

    def __init__(self, run: LoadRun, closed: asyncio.Future[None]) -> None:
        self.run = run
        self.closed = closed
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0
        self.in_flight = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.clients.discard(self)
        if self.in_flight and not self.run.stopping:
            self.run.errors["read"] += 1
        if not self.closed.done():
            self.closed.set_result(None)


class _Run(LoadRun):
    def __init__(self, request: Request, host: str, deadline: float, timeout: float) -> None:
        super().__init__(deadline, timeout)
        self.head = request.head(host)
        self.body = b"x" * request.body_size


class _Client(LoadClient):
    """One keep-alive connection: send, wait for the whole response, send again."""

    run: _Run

    def __init__(self, run: _Run, closed: asyncio.Future[None]) -> None:
        super().__init__(run, closed)
        self.parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.run.clients.add(self)
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.in_flight = True
        self.sent_at = time.perf_counter()
        self.transport.write(self.run.head)
        if self.run.body:
            self.transport.write(self.run.body)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.run.errors["read"] += 1
            self.in_flight = False
            assert self.transport is not None
            self.transport.abort()

    def on_message_complete(self) -> None:
        now = time.perf_counter()
        run = self.run
        self.in_flight = False
        if now > run.deadline or run.stopping:
            return  # wrk counts only what completes within the duration
        run.latencies.append(now - self.sent_at)
        if not 200 <= self.parser.get_status_code() < 400:
            run.non_2xx_3xx += 1
        assert self.transport is not None
        if self.parser.should_keep_alive():
            self.send()
        else:
            self.transport.close()


async def _connection(
    run: LoadRun, host: str, port: int, client: Callable[[asyncio.Future[None]], asyncio.Protocol]
) -> None:
    loop = asyncio.get_running_loop()
    while time.perf_counter() < run.deadline and not run.stopping:
        closed: asyncio.Future[None] = loop.create_future()
        try:
            await loop.create_connection(functools.partial(client, closed), host, port)
        except OSError:
            run.errors["connect"] += 1
            await asyncio.sleep(0.01)
            continue
        await closed


async def _watchdog(run: LoadRun) -> None:
    """Abort requests older than the timeout (counted, like wrk's timeouts); they reconnect."""
    while not run.stopping:
        await asyncio.sleep(min(0.1, run.timeout / 4))
        now = time.perf_counter()
        for client in list(run.clients):
            if client.in_flight and now - client.sent_at > run.timeout:
                run.errors["timeout"] += 1
                client.in_flight = False
                if client.transport is not None:
                    client.transport.abort()


async def drive(
    run: LoadRun,
    url: str,
    connections: int,
    client: Callable[[asyncio.Future[None]], asyncio.Protocol],
    started: float,
) -> LoadResult:
    """Keep `connections` made by `client` (given a future to resolve when it is lost) busy
    until the run's deadline; what completed."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    tasks = [asyncio.create_task(_connection(run, host, port, client)) for _ in range(connections)]
    watchdog = asyncio.create_task(_watchdog(run))
    await asyncio.sleep(max(0.0, run.deadline - time.perf_counter()))
    elapsed = time.perf_counter() - started
    run.stopping = True
    for each in list(run.clients):
        if each.transport is not None:
            each.transport.abort()
    for task in [*tasks, watchdog]:
        task.cancel()
    await asyncio.gather(*tasks, watchdog, return_exceptions=True)
    # Let the aborted transports deliver connection_lost before the loop closes.
    await asyncio.sleep(0)
    ordered = sorted(run.latencies)
    return LoadResult(
        requests=len(ordered),
        duration_s=elapsed,
        requests_per_s=len(ordered) / elapsed,
        p50_ms=percentile(ordered, 50) * 1000,
        p99_ms=percentile(ordered, 99) * 1000,
        non_2xx_3xx=run.non_2xx_3xx,
        socket_errors=run.errors,
    )


async def generate(
    url: str,
    request: Request,
    connections: int,
    duration: float,
    timeout: float = 2.0,
) -> LoadResult:
    """Load `url` from `connections` keep-alive connections for `duration` seconds."""
    started = time.perf_counter()
    run = _Run(request, urlsplit(url).netloc, started + duration, timeout)
    return await drive(run, url, connections, functools.partial(_Client, run), started)


# -- running either --------------------------------------------------------------------------


@dataclass(frozen=True)
class Generator:
    """The load generator of a benchmark run, pinned to `cpu` (None: not pinned)."""

    kind: GeneratorKind
    cpu: int | None

    @staticmethod
    def pick(choice: str) -> GeneratorKind:
        """`auto` means wrk when it is installed, else the built-in generator."""
        if choice == "auto":
            return "wrk" if shutil.which("wrk") else "builtin"
        return "wrk" if choice == "wrk" else "builtin"

    def describe(self) -> str:
        if self.kind == "wrk":
            return f"{wrk_version()}, one thread (-t1)"
        return "built-in (uvloop + httptools, one process, closed loop)"

    def run(
        self, base_url: str, request: Request, connections: int, duration: int, timeout: float
    ) -> LoadResult:
        """Load `base_url` + `request.path` (wrk needs whole seconds)."""
        url = base_url + request.path
        if self.kind == "wrk":
            return self._wrk(url, request, connections, duration, timeout)
        return self._builtin(
            "aserve.bench.loadgen",
            url,
            connections,
            duration,
            timeout,
            f"--method={request.method}",
            f"--body-size={request.body_size}",
        )

    def run_websocket(
        self, base_url: str, request: Request, connections: int, duration: int, timeout: float
    ) -> LoadResult:
        """WebSocket echo at `base_url` + `request.path` (`bench.wsload`, wrk or not)."""
        url = base_url.replace("http://", "ws://", 1) + request.path
        return self._builtin("aserve.bench.wsload", url, connections, duration, timeout)

    def _builtin(
        self,
        module: str,
        url: str,
        connections: int,
        duration: int,
        timeout: float,
        *options: str,
    ) -> LoadResult:
        """Run one of the built-in generators, `python -m MODULE`, and read its JSON."""
        command = [
            sys.executable,
            "-m",
            module,
            url,
            f"--connections={connections}",
            f"--duration={duration}",
            f"--timeout={timeout:g}",
            *options,
        ]
        output = self._execute(command, duration)
        try:
            return LoadResult(**json.loads(output))
        except (ValueError, TypeError) as exc:
            raise RuntimeError(f"{module} printed {output[:200]!r}") from exc

    def _wrk(
        self, url: str, request: Request, connections: int, duration: int, timeout: float
    ) -> LoadResult:
        script = wrk_script(request)
        with tempfile.TemporaryDirectory(prefix="aserve-bench-") as scratch:
            path = None
            if script is not None:
                path = str(Path(scratch) / "request.lua")
                Path(path).write_text(script)
            output = self._execute(wrk_command(url, connections, duration, timeout, path), duration)
        return parse_wrk(output)

    def _execute(self, command: list[str], duration: int) -> str:
        done = subprocess.run(
            pinned(self.cpu, command),
            capture_output=True,
            text=True,
            timeout=duration + 60,
            check=False,
        )
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip()
            raise RuntimeError(f"{command[0]} failed ({done.returncode}): {output[-500:]}")
        return done.stdout


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m aserve.bench.loadgen",
        description="The built-in closed-loop load generator; prints a JSON result.",
    )
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body-size", type=int, default=0)
    args = parser.parse_args(argv)
    parts = urlsplit(args.url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = Request(method=args.method, path=target, body_size=args.body_size)
    import uvloop

    result = uvloop.run(generate(args.url, request, args.connections, args.duration, args.timeout))
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
