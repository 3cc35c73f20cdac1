"""Interoperability: real HTTP clients (ab, h2load, wrk, curl, requests, httpx, aiohttp, Node)
against aserve's three modes, every response checked, and a matrix of what failed.

Not part of the test suite; only ever targets 127.0.0.1 and every step has a time bound. Run
from anywhere: `.venv/bin/python benchmarks/interop.py`; see benchmarks/README.md. The server
runs the apps of `benchmarks/interop_apps.py`, a fresh process for each cell of the matrix.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import importlib
import json
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

# interop_apps sits beside this script (on sys.path when it runs); the server imports the same
# file as benchmarks.interop_apps from the repository root.
from interop_apps import BIG_SIZE, CHUNK, HEAD_CHUNKS, HELLO, IGNORED, STREAM_CHUNKS

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
KIB = 1024
MIB = 1024 * KIB
# aserve drains up to --limit-drain (256 KiB) of a body the app left unread; the uploads to
# /ignore straddle it.
SMALL = 100 * KIB
LARGE = 300 * KIB
HUGE = 5 * 1000 * 1000
# curl asks for 100-continue above 1 MiB (and for every upload of unknown size).
EXPECT_SIZE = 2 * MIB
PIPELINE_DEPTH = 64
READY_TIMEOUT = 20.0
TOOL_TIMEOUT = 90.0
REQUEST_TIMEOUT = 10.0
# How long the app may take to notice that a download was aborted before it counts as missed.
STREAM_STOP_TIMEOUT = 5.0
EXIT_FAILED = 1

MODES: dict[str, list[str]] = {
    "asgi": ["benchmarks.interop_apps:asgi_app", "--factory"],
    "wsgi": ["benchmarks.interop_apps:wsgi_app", "--factory"],
    "wsgiref": ["benchmarks.interop_apps:wsgi_app", "--factory", "--server", "wsgiref"],
}


# -- results ---------------------------------------------------------------------------------


@dataclass
class Tally:
    """What one scenario saw against one mode: checks made, and why the failed ones failed."""

    total: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)  # worth a look though nothing failed
    counts: dict[str, int] = field(default_factory=dict)  # connections and the like, for --json

    def passed(self, count: int = 1) -> None:
        self.total += count

    def fail(self, reason: str, count: int = 1) -> None:
        self.total += count
        self.failures[reason] += count

    def flag(self, reason: str) -> None:
        """A failure found in something already counted (a request that itself passed)."""
        self.failures[reason] += 1


@dataclass
class Cell:
    status: str  # "ok", "FAIL", "n/a" or "missing"
    failed: int = 0
    total: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    log: list[str] = field(default_factory=list)

    def text(self) -> str:
        if self.status != "FAIL":
            return self.status
        top = max(self.reasons, key=lambda r: self.reasons[r])
        more = f"; +{len(self.reasons) - 1} more" if len(self.reasons) > 1 else ""
        return f"FAIL ({self.failed}/{self.total}: {top}{more})"


def cell_from(tally: Tally, seconds: float, log: list[str]) -> Cell:
    reasons = dict(tally.failures)
    if tally.total == 0 and not reasons:
        reasons = {"nothing was checked": 1}
    failed = sum(reasons.values())
    status = "FAIL" if failed else "ok"
    total = max(tally.total, failed)
    return Cell(status, failed, total, reasons, tally.notes, tally.counts, seconds, log)


def describe(exc: BaseException) -> str:
    """An exception and its root cause in one line: clients wrap the socket error two or three
    times, and the innermost one says what the server did."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {REQUEST_TIMEOUT:.0f} s ({type(exc).__name__})"
    root = exc
    for _ in range(10):  # a chain can loop back on itself
        inner = root.__cause__ or root.__context__
        if inner is None or inner is root:
            break
        root = inner
    text = f"{type(exc).__name__}"
    if root is not exc and str(root):
        text += f" ({type(root).__name__}: {root})"
    elif str(exc):
        text += f": {exc}"
    return text[:160]


# -- the server ------------------------------------------------------------------------------


@dataclass
class Target:
    mode: str
    port: int
    work: Path  # bodies and scripts, shared by every cell
    quick: bool

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


@contextlib.contextmanager
def server(mode: str, log_path: Path) -> Iterator[int]:
    """A fresh server for one cell, on a socket bound here and passed as `--fd`: its port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((HOST, 0))
    listener.listen(1024)
    port: int = listener.getsockname()[1]
    command = [sys.executable, "-m", "aserve", *MODES[mode], "--fd", str(listener.fileno())]
    command += ["--no-access-log", "--timeout-graceful-shutdown", "2"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=log, stderr=log, pass_fds=(listener.fileno(),)
        )
    listener.close()
    try:
        wait_ready(port, process)
        yield port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} at startup")
        with contextlib.suppress(OSError, http.client.HTTPException):
            connection = http.client.HTTPConnection(HOST, port, timeout=2)
            try:
                connection.request("GET", "/")
                if connection.getresponse().read() == HELLO:
                    return
            finally:
                connection.close()
        time.sleep(0.1)
    raise RuntimeError(f"the server did not answer within {READY_TIMEOUT:.0f} s")


def log_problems(path: Path) -> list[str]:
    """Server log lines past the startup banner: warnings, errors, tracebacks."""
    lines = path.read_text(errors="replace").splitlines()
    keep = [line for line in lines if not re.search(r" INFO ", line)]
    return keep[:20]


# -- running tools ---------------------------------------------------------------------------


@dataclass
class Run:
    code: int | None  # None: killed at the time limit
    stdout: str
    stderr: str


def run_tool(command: list[str], timeout: float = TOOL_TIMEOUT, stdin: Path | None = None) -> Run:
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(stdin.open("rb")) if stdin else subprocess.DEVNULL
        try:
            done = subprocess.run(
                command, stdin=source, capture_output=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            return Run(None, _text(exc.stdout), _text(exc.stderr))
    return Run(done.returncode, _text(done.stdout), _text(done.stderr))


def _text(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:160] if lines else "(no output)"


def number(pattern: str, text: str) -> int | None:
    found = re.search(pattern, text, re.M)
    return int(found.group(1)) if found else None


def body_file(target: Target, size: int) -> Path:
    """A file of `size` random bytes in the work directory, made once."""
    path = target.work / f"body-{size}"
    if not path.exists():
        path.write_bytes(secrets.token_bytes(size))
    return path


def size_label(size: int) -> str:
    if size >= MIB and size % MIB == 0:
        return f"{size // MIB} MiB"
    if size % 1000_000 == 0:
        return f"{size // 1000_000} MB"
    return f"{size // KIB} KiB"


# -- ab --------------------------------------------------------------------------------------


def ab(target: Target, tally: Tally, path: str, upload: int | None) -> None:
    count = 200 if target.quick else 2000
    command = ["ab", "-k", "-n", str(count), "-c", "8", "-s", "10"]
    label = "GET" if upload is None else f"POST {size_label(upload)}"
    if upload is not None:
        command += ["-p", str(body_file(target, upload)), "-T", "application/octet-stream"]
    result = run_tool([*command, target.url + path])
    complete = number(r"^Complete requests:\s+(\d+)", result.stdout) or 0
    failed = number(r"^Failed requests:\s+(\d+)", result.stdout) or 0
    non_2xx = number(r"^Non-2xx responses:\s+(\d+)", result.stdout) or 0
    if result.code is None:
        tally.fail(f"{label}: ab killed after {TOOL_TIMEOUT:.0f} s", count)
        return
    if result.code != 0:
        # ab gives up on the first error it cannot count (a reset, its own timeout) and says
        # which on its last line; the requests it had not finished count as failed.
        tally.passed(complete)
        tally.fail(
            f"{label}: ab gave up after {complete} responses: {last_line(result.stderr)}",
            count - complete,
        )
        return
    keep_alive = number(r"^Keep-Alive requests:\s+(\d+)", result.stdout) or 0
    # A GET of a small fixed body gives the server no reason to refuse keep-alive; after an
    # upload the server may close (and say so), which ab handles.
    lost = complete - keep_alive if upload is None else 0
    if failed:
        detail = re.search(r"^\s+\(Connect.*\)$", result.stdout, re.M)
        tally.fail(f"{label}: failed requests {detail.group(0).strip() if detail else ''}", failed)
    if non_2xx:
        tally.fail(f"{label}: non-2xx responses", non_2xx)
    if lost:
        tally.fail(f"{label}: not kept alive (ab -k reused {keep_alive} of {complete})", lost)
    tally.passed(max(count - failed - non_2xx - lost, 0))
    tally.counts.update(complete=complete, kept_alive=keep_alive)


# -- h2load ----------------------------------------------------------------------------------


def h2load(target: Target, tally: Tally, path: str, extra: list[str], label: str) -> None:
    count = 400 if target.quick else 4000
    command = ["h2load", "--h1", "-n", str(count), "-c", "4", "-T", "10", *extra]
    result = run_tool([*command, target.url + path])
    if result.code is None:
        tally.fail(f"{label}: h2load killed after {TOOL_TIMEOUT:.0f} s", count)
        return
    found = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        result.stdout,
    )
    if not found:
        tally.fail(f"{label}: h2load printed no summary: {last_line(result.stderr)}", count)
        return
    total, _, done, succeeded, failed, errored, timeouts = map(int, found.groups())
    two_xx = number(r"^status codes: (\d+) 2xx", result.stdout) or 0
    tally.passed(min(succeeded, two_xx))
    if errored or timeouts or done < total:
        tally.fail(
            f"{label}: {errored} errored, {timeouts} timed out, {total - done} not done",
            total - min(succeeded, two_xx),
        )
    elif failed or two_xx < succeeded:
        tally.fail(f"{label}: {failed} failed, {succeeded - two_xx} not 2xx", total - two_xx)


def h2load_uploads(target: Target, tally: Tally) -> None:
    for size in (SMALL, LARGE):
        extra = ["-d", str(body_file(target, size))]
        h2load(target, tally, "/ignore", extra, f"-d {size_label(size)}")


# -- wrk -------------------------------------------------------------------------------------

WRK_SCRIPT = """\
-- {depth} requests written at once on each connection (pipelining), counted per thread.
local threads = {{}}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local requests = {{}}
  for i = 1, {depth} do
    requests[i] = wrk.format("GET", "/")
  end
  pipeline = table.concat(requests)
  closes = 0
end

function request()
  return pipeline
end

function response(status, headers, body)
  if headers["Connection"] == "close" or headers["connection"] == "close" then
    closes = closes + 1
  end
end

function done(summary, latency, requests)
  local closes = 0
  for _, thread in ipairs(threads) do
    closes = closes + thread:get("closes")
  end
  local e = summary.errors
  io.write(string.format(
    "interop: requests=%d connect=%d read=%d write=%d status=%d timeout=%d closes=%d\\n",
    summary.requests, e.connect, e.read, e.write, e.status, e.timeout, closes))
end
"""


def wrk(target: Target, tally: Tally) -> None:
    script = target.work / "pipeline.lua"
    script.write_text(WRK_SCRIPT.format(depth=PIPELINE_DEPTH))
    seconds = 1 if target.quick else 3
    command = ["wrk", "-t", "2", "-c", "8", "-d", f"{seconds}s", "--timeout", "5s"]
    result = run_tool([*command, "-s", str(script), target.url + "/"])
    found = re.search(r"^interop: (.*)$", result.stdout, re.M)
    if result.code != 0 or not found:
        tally.fail(f"wrk exited {result.code}: {last_line(result.stderr or result.stdout)}")
        return
    figures = {k: int(v) for k, v in (pair.split("=") for pair in found.group(1).split())}
    errors = {k: figures[k] for k in ("connect", "read", "write", "timeout") if figures[k]}
    tally.passed(figures["requests"] - figures["status"])
    if figures["requests"] == 0:
        tally.fail("no response")
    if errors:
        listed = ", ".join(f"{k} {v}" for k, v in errors.items())
        tally.fail(f"socket errors: {listed}", sum(errors.values()))
    if figures["status"]:
        tally.fail("responses not 2xx or 3xx", figures["status"])
    tally.counts.update(requests=figures["requests"], closes=figures["closes"])


# -- curl ------------------------------------------------------------------------------------


def curl(
    target: Target,
    tally: Tally,
    label: str,
    options: list[str],
    path: str,
    expect: bytes,
    stdin: Path | None = None,
) -> str:
    """One curl transfer checked for its status and body; curl's verbose trace is returned."""
    output = target.work / "curl.out"
    output.unlink(missing_ok=True)
    command = ["curl", "-sS", "-v", "--max-time", "30", "-o", str(output)]
    command += ["-w", "%{http_code}", *options, target.url + path]
    result = run_tool(command, timeout=40, stdin=stdin)
    if result.code != 0:
        tally.fail(f"{label}: curl exit {result.code}: {curl_error(result.stderr)}")
        return result.stderr
    body = output.read_bytes() if output.exists() else b""
    if result.stdout.strip() != "200":
        tally.fail(f"{label}: status {result.stdout.strip()}")
    elif body != expect:
        tally.fail(f"{label}: {len(body)} body bytes, expected {len(expect)}")
    else:
        tally.passed()
    return result.stderr


def curl_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("curl:")]
    return errors[-1][:160] if errors else last_line(stderr)


def waited_for_100(trace: str) -> bool:
    """curl asked for 100-continue and gave up waiting (its 1 s timeout) before sending."""
    return "Done waiting for 100-continue" in trace


def curl_chunked(target: Target, tally: Tally) -> None:
    for size in (KIB, LARGE, 3 * MIB):
        source = body_file(target, size)
        label = f"PUT -T - {size_label(size)}"
        trace = curl(target, tally, label, ["-T", "-"], "/echo", source.read_bytes(), stdin=source)
        if waited_for_100(trace):
            tally.flag(f"{label}: no 100 Continue, curl waited 1 s before sending")


def curl_upgrade(target: Target, tally: Tally) -> None:
    for size in (KIB, 64 * KIB):
        source = body_file(target, size)
        options = ["--http2", "--data-binary", f"@{source}"]
        label = f"POST --http2 {size_label(size)}"
        curl(target, tally, label, options, "/echo", source.read_bytes())


def curl_expect(target: Target, tally: Tally) -> None:
    source = body_file(target, EXPECT_SIZE)
    for path, expect in (("/echo", source.read_bytes()), ("/ignore", IGNORED)):
        label = f"POST {size_label(EXPECT_SIZE)} {path}"
        trace = curl(target, tally, label, ["--data-binary", f"@{source}"], path, expect)
        if "Expect: 100-continue" not in trace:
            tally.notes.append(f"{label}: curl did not send Expect: 100-continue")
        elif waited_for_100(trace):
            tally.flag(f"{label}: no 100 Continue, curl waited 1 s before sending")


# -- Python clients --------------------------------------------------------------------------


def optional(name: str) -> ModuleType | None:
    """A client that may not be installed. Imported by name so that mypy, which runs where
    only the test extra is installed, treats it as untyped either way."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


@dataclass
class Answer:
    status: int
    body: bytes
    closing: bool  # the response said the connection would not be kept


@dataclass
class Step:
    label: str
    call: Callable[[], Answer]
    status: int = 200
    body: bytes = HELLO


class Reuse:
    """Connections a keep-alive client had no reason to open. A new one is expected only
    after a response that said it would close (or an error); any other means the server closed
    a connection it had promised to keep, and the client quietly reconnected."""

    def __init__(self) -> None:
        self.allowed = 1
        self.connections = 0
        self.closes = 0

    def after(self, tally: Tally, label: str, connections: int, closing: bool) -> None:
        if connections > self.allowed:
            tally.flag(f"{label}: sent on a new connection, the last response had kept it open")
            self.allowed = connections
        self.connections = connections
        if closing:
            self.allowed += 1
            self.closes += 1

    def lost(self, connections: int) -> None:
        self.connections = connections
        self.allowed = connections + 1

    def record(self, tally: Tally) -> None:
        tally.counts.update(connections=self.connections, not_kept=self.closes)


def drive(tally: Tally, steps: list[Step], connections: Callable[[], int]) -> None:
    """Each step in turn on one keep-alive client: its status, its body, the connection."""
    reuse = Reuse()
    for step in steps:
        try:
            answer = step.call()
        except Exception as exc:  # every client has its own hierarchy; each is a failure here
            tally.fail(f"{step.label}: {describe(exc)}")
            reuse.lost(connections())
            continue
        if answer.status != step.status:
            tally.fail(f"{step.label}: status {answer.status}")
        elif answer.body != step.body:
            tally.fail(f"{step.label}: {len(answer.body)} body bytes, expected {len(step.body)}")
        else:
            tally.passed()
        reuse.after(tally, step.label, connections(), answer.closing)
    reuse.record(tally)


def closing(version: int, connection: str) -> bool:
    """`version` as 10 or 11; `connection` the Connection header, or ""."""
    value = connection.lower()
    return "close" in value or (version == 10 and "keep-alive" not in value)


def chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


# Uploads to /ignore on both sides of the drain limit, with each framing.
UPLOADS = [(size, chunked) for size in (SMALL, LARGE, HUGE) for chunked in (False, True)]
HEAD_BODY = b"".join(HEAD_CHUNKS)
BIG = b"x" * BIG_SIZE


def upload_label(size: int, chunked: bool) -> str:
    return f"POST /ignore {size_label(size)} {'chunked' if chunked else 'Content-Length'}"


def upload_steps(
    target: Target, post: Callable[[bytes, bool], Answer], get: Callable[[str], Answer]
) -> list[Step]:
    """Each upload to /ignore, then a GET on the connection it leaves, for several rounds."""
    steps: list[Step] = []
    for _ in range(2 if target.quick else 4):
        for size, chunked in UPLOADS:
            data = body_file(target, size).read_bytes()
            label = upload_label(size, chunked)
            steps.append(Step(label, partial(post, data, chunked), body=IGNORED))
            steps.append(Step(f"GET / after {label}", lambda: get("/")))
    return steps


def head_steps(head: Callable[[str], Answer], get: Callable[[str], Answer]) -> list[Step]:
    """HEADs, each followed by a GET that a stray HEAD body would corrupt."""
    return [
        Step("HEAD /head", lambda: head("/head"), body=b""),
        Step("GET /head after HEAD", lambda: get("/head"), body=HEAD_BODY),
        Step("HEAD /", lambda: head("/"), body=b""),
        Step("GET / after HEAD", lambda: get("/")),
        Step("GET /status/204", lambda: get("/status/204"), status=204, body=b""),
        Step("GET / after 204", lambda: get("/")),
    ]


def requests_session(target: Target, tally: Tally, requests: Any) -> None:
    session = requests.Session()
    # urllib3 reconnects a closed connection object in place, so its pool's num_connections
    # does not move; connect() runs for every TCP connection.
    connections = 0
    urllib3 = importlib.import_module("urllib3")
    plain = urllib3.connection.HTTPConnection

    def connect(connection: Any) -> None:
        nonlocal connections
        connections += 1
        plain.connect(connection)

    counting = type("CountingConnection", (plain,), {"connect": connect})
    pool = type("CountingPool", (urllib3.HTTPConnectionPool,), {"ConnectionCls": counting})
    manager = session.get_adapter(target.url).poolmanager
    manager.pool_classes_by_scheme = {**manager.pool_classes_by_scheme, "http": pool}
    timeout = (5, REQUEST_TIMEOUT)

    def answer(response: Any) -> Answer:
        said = closing(response.raw.version, response.headers.get("Connection", ""))
        return Answer(response.status_code, response.content, said)

    def post(data: bytes, chunked: bool) -> Answer:
        body = chunks(data) if chunked else data
        return answer(session.post(target.url + "/ignore", data=body, timeout=timeout))

    def get(path: str) -> Answer:
        return answer(session.get(target.url + path, timeout=timeout))

    def head(path: str) -> Answer:
        return answer(session.head(target.url + path, timeout=timeout))

    with session:
        steps = upload_steps(target, post, get) + head_steps(head, get)
        drive(tally, steps, lambda: connections)


def httpx_client(target: Target, tally: Tally, httpx: Any) -> None:
    connects = 0

    def trace(event: str, info: object) -> None:
        nonlocal connects
        if event == "connection.connect_tcp.complete":
            connects += 1

    client = httpx.Client(base_url=target.url, timeout=REQUEST_TIMEOUT)
    extensions = {"trace": trace}

    def answer(response: Any) -> Answer:
        version = 10 if response.http_version == "HTTP/1.0" else 11
        said = closing(version, response.headers.get("Connection", ""))
        return Answer(response.status_code, response.content, said)

    def post(data: bytes, chunked: bool) -> Answer:
        body = chunks(data) if chunked else data
        return answer(client.post("/ignore", content=body, extensions=extensions))

    def get(path: str) -> Answer:
        return answer(client.get(path, extensions=extensions))

    def head(path: str) -> Answer:
        return answer(client.head(path, extensions=extensions))

    with client:
        drive(tally, upload_steps(target, post, get) + head_steps(head, get), lambda: connects)


def aiohttp_expect(target: Target, tally: Tally, aiohttp: Any) -> None:
    """Uploads with `Expect: 100-continue`, for which aiohttp waits before sending a byte."""
    with asyncio.Runner() as runner, AiohttpClient(runner, aiohttp) as client:
        steps: list[Step] = []
        for _ in range(2 if target.quick else 4):
            for path, size in (("/echo", EXPECT_SIZE), ("/echo", SMALL), ("/ignore", LARGE)):
                data = body_file(target, size).read_bytes()
                expected = data if path == "/echo" else IGNORED
                label = f"POST {path} {size_label(size)} expect100"
                call = partial(client.post, target.url + path, data)
                steps.append(Step(label, call, body=expected))
                steps.append(Step(f"GET / after {path}", lambda: client.get(target.url + "/")))
        drive(tally, steps, lambda: client.connections)


def aiohttp_abort(target: Target, tally: Tally, aiohttp: Any) -> None:
    """Downloads dropped part way, then more requests on the session, and whether the app
    learnt that each of its endless /streams had lost its client.

    aiohttp's `close()` resets the connection only when unread bytes are still in the kernel's
    buffer, which depends on timing; each drop is made as aiohttp does it and with a reset for
    certain (SO_LINGER 0), as a client killed mid-download does. Drops come early (after the
    first 64 KiB) and late (after 1 MiB), several times: how a server misses a drop can depend
    on where its writes stand when the reset lands.
    """
    drops = [
        (how, after, secrets.token_hex(8))
        for how in ("closed", "reset")
        for after in (CHUNK, MIB)
        for _ in range(2 if target.quick else 4)
    ]
    with asyncio.Runner() as runner, AiohttpClient(runner, aiohttp) as client:
        steps: list[Step] = []
        for how, after, stream in drops:
            url = f"{target.url}/stream?id={stream}"
            reset = how == "reset"
            label = f"GET /stream, {how} after {size_label(after)}"
            steps.append(Step(label, partial(client.abort, url, after, reset), body=b""))
            steps.append(Step(f"GET / after {label}", partial(client.get, target.url + "/")))
        for how in ("closed", "reset"):
            big = partial(client.abort, target.url + "/big", 2 * MIB, how == "reset")
            steps.append(Step(f"GET /big, {how} after 2 MiB", big, body=b""))
            whole = partial(client.get, target.url + "/big")
            steps.append(Step(f"GET /big whole after {how}", whole, body=BIG))
        drive(tally, steps, lambda: client.connections)
    for how, after, stream in drops:
        outcome, sent = stream_outcome(target, stream)
        where = f"/stream {how} after {size_label(after)}"
        if outcome.startswith("stopped"):
            tally.passed()
        elif outcome == "completed":
            tally.fail(f"{where}: send() kept returning, the app sent all {STREAM_CHUNKS} chunks")
        else:
            tally.fail(f"{where}: the app still {outcome} {STREAM_STOP_TIMEOUT:.0f} s later")
            tally.notes.append(f"{where}: {sent} chunks handed over by then")


def stream_outcome(target: Target, stream: str) -> tuple[str, int]:
    deadline = time.monotonic() + STREAM_STOP_TIMEOUT
    while True:
        connection = http.client.HTTPConnection(HOST, target.port, timeout=5)
        try:
            connection.request("GET", f"/stream-state?id={stream}")
            state = json.loads(connection.getresponse().read())
        finally:
            connection.close()
        if state["outcome"] != "running" or time.monotonic() > deadline:
            return str(state["outcome"]), int(state["chunks"])
        time.sleep(0.1)


class AiohttpClient:
    """An aiohttp session driven one request at a time from synchronous code, counting the
    connections it opens."""

    def __init__(self, runner: asyncio.Runner, aiohttp: Any) -> None:
        self.runner = runner
        self.aiohttp = aiohttp
        self.connections = 0
        self.session: Any = None

    def __enter__(self) -> AiohttpClient:
        trace = self.aiohttp.TraceConfig()

        async def created(*_: object) -> None:
            self.connections += 1

        trace.on_connection_create_end.append(created)

        async def open_session() -> Any:
            return self.aiohttp.ClientSession(
                connector=self.aiohttp.TCPConnector(limit=1),
                timeout=self.aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
                trace_configs=[trace],
            )

        self.session = self.runner.run(open_session())
        return self

    def __exit__(self, *_: object) -> None:
        self.runner.run(self.session.close())

    def _answer(self, response: Any, body: bytes) -> Answer:
        version = response.version.major * 10 + response.version.minor
        return Answer(
            response.status, body, closing(version, response.headers.get("Connection", ""))
        )

    def get(self, url: str) -> Answer:
        async def get() -> Answer:
            async with self.session.get(url) as response:
                return self._answer(response, await response.read())

        return self.runner.run(get())

    def post(self, url: str, data: bytes) -> Answer:
        async def post() -> Answer:
            async with self.session.post(url, data=data, expect100=True) as response:
                return self._answer(response, await response.read())

        return self.runner.run(post())

    def abort(self, url: str, after: int, reset: bool) -> Answer:
        """Read `after` bytes of the response, then drop the connection (with a RST if
        `reset`). The answer's body is empty: the bytes read are not the point."""

        async def abort() -> Answer:
            async with self.session.get(url) as response:
                received = 0
                while received < after:
                    part = await response.content.read(CHUNK)
                    if not part:
                        raise ConnectionError(f"the response ended after {received} bytes")
                    received += len(part)
                if reset:
                    sock = response.connection.transport.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                response.close()
                return Answer(response.status, b"", True)

        return self.runner.run(abort())


# -- Node ------------------------------------------------------------------------------------

NODE_SCRIPT = r"""'use strict';
// One keep-alive client against the server: fetch (undici) or http.Agent({keepAlive: true}).
// Prints one JSON line: {total, failures: {reason: count}, notes, counts}.
const http = require('node:http');
const crypto = require('node:crypto');
const diagnostics = require('node:diagnostics_channel');

const [scenario, configText] = process.argv.slice(2);
const config = JSON.parse(configText);
const [hello, ignored, headBody] = [config.hello, config.ignored, config.head].map(Buffer.from);
const tally = { total: 0, failures: {}, notes: [], counts: {} };

function count(reason, request) {
  tally.failures[reason] = (tally.failures[reason] || 0) + 1;
  if (request) tally.total += 1;
}

function describe(error) {
  let text = `${error.name}: ${error.message}`;
  const cause = error.cause;
  if (cause) text += ` (${cause.code || cause.name}: ${cause.message})`;
  else if (error.code) text += ` (${error.code})`;
  return text.slice(0, 160);
}

function closing(version, connection) {
  const value = (connection || '').toLowerCase();
  return value.includes('close') || (version === '1.0' && !value.includes('keep-alive'));
}

function sizeLabel(size) {
  return size % 1000000 === 0 ? `${size / 1000000} MB` : `${size / 1024} KiB`;
}

// Every step's status and body. With `reuse`, a new connection is expected only after a
// response the client would not keep (it said close, or its framing needs the close) or an
// error; fetch goes without: its pool opens a second connection whenever the first is still
// busy finishing the previous response.
async function drive(steps, connections, reuse) {
  let allowed = 1;
  let closes = 0;
  for (const step of steps) {
    let answer;
    try {
      answer = await step.call();
    } catch (error) {
      count(`${step.label}: ${describe(error)}`, true);
      allowed = connections() + 1;
      continue;
    }
    const [status, body] = [step.status ?? 200, step.body ?? hello];
    if (answer.status !== status) {
      count(`${step.label}: status ${answer.status}`, true);
    } else if (!answer.body.equals(body)) {
      count(`${step.label}: ${answer.body.length} body bytes, expected ${body.length}`, true);
    } else {
      tally.total += 1;
    }
    if (reuse && connections() > allowed) {
      count(`${step.label}: sent on a new connection, the last response had kept it open`);
      allowed = connections();
    }
    if (answer.closing) {
      allowed += 1;
      closes += 1;
    }
    if (answer.dropped) tally.notes.push(`${step.label}: ${answer.dropped}`);
  }
  Object.assign(tally.counts, { connections: connections(), not_kept: closes });
}

function uploadSteps(post, get) {
  const steps = [];
  for (let round = 0; round < config.rounds; round += 1) {
    for (const size of config.sizes) {
      for (const chunked of [false, true]) {
        const data = crypto.randomBytes(size);
        const label = `POST /ignore ${sizeLabel(size)} ${chunked ? 'chunked' : 'Content-Length'}`;
        steps.push({ label, call: () => post('/ignore', data, chunked), body: ignored });
        steps.push({ label: `GET / after ${label}`, call: () => get('/') });
      }
    }
  }
  return steps;
}

function headSteps(head, get) {
  const empty = Buffer.alloc(0);
  return [
    { label: 'HEAD /head', call: () => head('/head'), body: empty },
    { label: 'GET /head after HEAD', call: () => get('/head'), body: headBody },
    { label: 'HEAD /', call: () => head('/'), body: empty },
    { label: 'GET / after HEAD', call: () => get('/') },
    { label: 'GET /status/204', call: () => get('/status/204'), status: 204, body: empty },
    { label: 'GET / after 204', call: () => get('/') },
  ];
}

async function viaFetch() {
  let connections = 0;
  diagnostics.subscribe('undici:client:connected', () => { connections += 1; });
  const answer = async (response) => ({
    status: response.status,
    body: Buffer.from(await response.arrayBuffer()),
    closing: closing('1.1', response.headers.get('connection')),
  });
  const timeout = () => AbortSignal.timeout(config.timeout * 1000);
  const get = async (path) => answer(await fetch(config.base + path, { signal: timeout() }));
  const head = async (path) =>
    answer(await fetch(config.base + path, { method: 'HEAD', signal: timeout() }));
  const post = async (path, data, chunked) => {
    const body = chunked ? new Blob([data]).stream() : data;
    const init = { method: 'POST', body, duplex: 'half', signal: timeout() };
    return answer(await fetch(config.base + path, init));
  };
  const echo = crypto.randomBytes(2 * 1024 * 1024);
  await drive([
    { label: 'GET /', call: () => get('/') },
    ...headSteps(head, get),
    { label: 'POST /echo 2 MiB', call: () => post('/echo', echo, false), body: echo },
    { label: 'POST /echo 2 MiB chunked', call: () => post('/echo', echo, true), body: echo },
    ...uploadSteps(post, get),
  ], () => connections, false);
}

async function viaAgent() {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  let connections = 0;
  const request = (method, path, data, chunked) => new Promise((resolve, reject) => {
    const headers = data && !chunked ? { 'content-length': data.length } : {};
    const req = http.request(config.base + path, { method, agent, headers }, (response) => {
      const parts = [];
      response.on('data', (part) => parts.push(part));
      response.on('error', reject);
      response.on('end', () => {
        const said = closing(response.httpVersion, response.headers.connection);
        // llhttp decides keep-alive before it learns the response is to a HEAD: without a
        // Content-Length or Transfer-Encoding it wants the close to end the (absent) body.
        const dropped = !req.shouldKeepAlive && !said
          ? 'Node closed the connection itself (response without Content-Length or '
            + 'Transfer-Encoding)'
          : '';
        resolve({
          status: response.statusCode,
          body: Buffer.concat(parts),
          closing: !req.shouldKeepAlive || said,
          dropped,
        });
      });
    });
    req.on('socket', (socket) => {
      if (!socket.interopCounted) {
        socket.interopCounted = true;
        connections += 1;
      }
    });
    req.setTimeout(config.timeout * 1000, () => req.destroy(new Error('no answer in time')));
    req.on('error', reject);
    if (data && chunked) {
      for (let at = 0; at < data.length; at += 65536) req.write(data.subarray(at, at + 65536));
      req.end();
    } else {
      req.end(data);
    }
  });
  const get = (path) => request('GET', path);
  const head = (path) => request('HEAD', path);
  const post = (path, data, chunked) => request('POST', path, data, chunked);
  await drive([...uploadSteps(post, get), ...headSteps(head, get)], () => connections, true);
  agent.destroy();
}

(scenario === 'fetch' ? viaFetch() : viaAgent()).then(
  () => {},
  (error) => count(`node: ${describe(error)}`, true),
).finally(() => {
  process.stdout.write(`${JSON.stringify(tally)}\n`);
  process.exit(0);
});
"""


def node(target: Target, tally: Tally, scenario: str) -> None:
    script = target.work / "interop-client.cjs"
    script.write_text(NODE_SCRIPT)
    config = {
        "base": target.url,
        "rounds": 2 if target.quick else 4,
        "sizes": [SMALL, LARGE, HUGE],
        "timeout": REQUEST_TIMEOUT,
        "hello": HELLO.decode(),
        "ignored": IGNORED.decode(),
        "head": HEAD_BODY.decode(),
    }
    result = run_tool(["node", str(script), scenario, json.dumps(config)])
    lines = result.stdout.strip().splitlines()
    if result.code != 0 or not lines:
        tally.fail(f"node exited {result.code}: {last_line(result.stderr)}")
        return
    report = json.loads(lines[-1])
    tally.total += report["total"]
    tally.failures.update(report["failures"])
    tally.notes.extend(report["notes"])
    tally.counts.update(report["counts"])


# -- the scenarios ---------------------------------------------------------------------------

Runner = Callable[[Target, Tally, Any], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    client: str  # what --clients names, and what must be installed: a program or a module
    run: Runner
    python: bool = False  # `client` is a Python module, handed to `run`
    modes: tuple[str, ...] = tuple(MODES)


SCENARIOS = [
    Scenario("ab -k GET /", "ab", lambda t, r, _: ab(t, r, "/", None)),
    Scenario("ab -k -p 100 KiB /ignore", "ab", lambda t, r, _: ab(t, r, "/ignore", SMALL)),
    Scenario("ab -k -p 300 KiB /ignore", "ab", lambda t, r, _: ab(t, r, "/ignore", LARGE)),
    Scenario(
        f"h2load --h1 -m {PIPELINE_DEPTH} GET /",
        "h2load",
        lambda t, r, _: h2load(t, r, "/", ["-m", str(PIPELINE_DEPTH)], "GET"),
    ),
    Scenario(
        "h2load --h1 -d 100 KiB, 300 KiB /ignore", "h2load", lambda t, r, _: h2load_uploads(t, r)
    ),
    Scenario(f"wrk, {PIPELINE_DEPTH} pipelined GET /", "wrk", lambda t, r, _: wrk(t, r)),
    Scenario("curl -T - /echo (chunked)", "curl", lambda t, r, _: curl_chunked(t, r)),
    Scenario("curl --http2 -d /echo (Upgrade, body)", "curl", lambda t, r, _: curl_upgrade(t, r)),
    Scenario("curl 2 MiB POST (100-continue)", "curl", lambda t, r, _: curl_expect(t, r)),
    Scenario("requests: uploads, reuse, HEAD", "requests", requests_session, python=True),
    Scenario("httpx: uploads, reuse, HEAD", "httpx", httpx_client, python=True),
    Scenario("aiohttp: expect100 uploads", "aiohttp", aiohttp_expect, python=True),
    Scenario("aiohttp: downloads dropped", "aiohttp", aiohttp_abort, python=True),
    Scenario("node fetch: GET, HEAD, POST", "node", lambda t, r, _: node(t, r, "fetch")),
    Scenario("node http.Agent keepAlive", "node", lambda t, r, _: node(t, r, "agent")),
]
CLIENTS = sorted({scenario.client for scenario in SCENARIOS})


def run_cell(scenario: Scenario, mode: str, work: Path, quick: bool) -> Cell:
    if mode not in scenario.modes:
        return Cell("n/a")
    module = None
    if scenario.python:
        module = optional(scenario.client)
        if module is None:
            return Cell("missing")
    elif shutil.which(scenario.client) is None:
        return Cell("missing")
    log_path = work / f"server-{mode}.log"
    tally = Tally()
    started = time.monotonic()
    try:
        with server(mode, log_path) as port:
            scenario.run(Target(mode, port, work, quick), tally, module)
    except Exception as exc:
        # Not the server's doing as far as anyone can tell: shown as such, not as a client's.
        tally.fail(f"interop script error: {describe(exc)}")
    problems = log_problems(log_path)
    if problems:
        tally.flag(f"server logged: {problems[0][:120]}")
    return cell_from(tally, time.monotonic() - started, problems)


# -- the matrix ------------------------------------------------------------------------------


def table(modes: list[str], rows: dict[str, dict[str, Cell]]) -> str:
    """The matrix as a Markdown table: a row per client scenario, a column per mode."""
    lines = ["| client scenario | " + " | ".join(modes) + " |"]
    lines.append("|---|" + "---|" * len(modes))
    for name, cells in rows.items():
        lines.append(f"| {name} | " + " | ".join(cells[m].text() for m in modes) + " |")
    return "\n".join(lines)


def details(modes: list[str], rows: dict[str, dict[str, Cell]]) -> str:
    """Every reason behind each FAIL with its count, what the server logged, and the notes of
    the cells that passed."""
    out: list[str] = []
    for name, cells in rows.items():
        for mode in modes:
            cell = cells[mode]
            if cell.status == "FAIL":
                out.append(f"{name} / {mode}: {cell.failed} of {cell.total} failed")
                out += [f"    {count:>5} x {reason}" for reason, count in cell.reasons.items()]
            elif cell.notes:
                out.append(f"{name} / {mode}: ok")
            out += [f"    note: {note}" for note in dict.fromkeys(cell.notes)]
            out += [f"    server log: {line}" for line in cell.log]
    return "\n".join(out)


def choose(text: str, known: list[str], what: str) -> list[str]:
    picked = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in picked if item not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return picked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: %(default)s")
    parser.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated: %(default)s")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    args = parser.parse_args(argv)
    modes = choose(args.modes, list(MODES), "mode")
    clients = choose(args.clients, CLIENTS, "client")
    rows: dict[str, dict[str, Cell]] = {}
    with tempfile.TemporaryDirectory(prefix="aserve-interop-") as directory:
        for scenario in SCENARIOS:
            if scenario.client not in clients:
                continue
            cells = rows.setdefault(scenario.name, {})
            for mode in modes:
                cell = run_cell(scenario, mode, Path(directory), args.quick)
                cells[mode] = cell
                print(
                    f"{mode:8} {scenario.name:44} {cell.text()}  ({cell.seconds:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    print(table(modes, rows))
    if failures := details(modes, rows):
        print("\n" + failures)
    if args.json:
        payload = {
            name: {mode: asdict(cell) for mode, cell in cells.items()}
            for name, cells in rows.items()
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    failed = any(cell.status == "FAIL" for cells in rows.values() for cell in cells.values())
    return EXIT_FAILED if failed else 0


if __name__ == "__main__":
    sys.exit(main())
