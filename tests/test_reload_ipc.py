"""aserve.reload.ipc: every message through encode/decode and a real channel pair, descriptor
passing, input that is not a message, and that no other reload module knows the wire format."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import dataclasses
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast, get_args

import pytest
import uvloop

from aserve.config import Config
from aserve.errors import AserveError
from aserve.process import PORTABLE_ENV
from aserve.reload import ipc
from aserve.reload.ipc import (
    MAX_MESSAGE,
    TEMPLATE_LINK,
    WORKER_LINK,
    Changed,
    Channel,
    Draining,
    EventStream,
    Exited,
    Failed,
    Fork,
    Handled,
    Hello,
    IPCError,
    Link,
    Modules,
    Preload,
    Ready,
    Stop,
    TemplateReady,
    Watch,
    channel_pair,
    decode,
    encode,
    inherit_channel,
)
from aserve.reload.supervisor import Worker

FORK = Fork(app="app:app", config={"port": 8000, "reload_dirs": ["."]}, announce=True)
TO_TEMPLATE: list[ipc.ToTemplate] = [Preload(("django", "uvloop")), Preload(()), FORK]
FROM_TEMPLATE: list[ipc.FromTemplate] = [TemplateReady(("pydevd.Reader",)), Exited(4242, -9)]
TO_WORKER: list[ipc.ToWorker] = [
    Stop(),
    Stop(replaced=True),
    Changed(("/srv/site/templates/a.html",)),
    Changed(()),
]
FROM_WORKER: list[ipc.FromWorker] = [
    Hello(pid=4243),
    Ready(modules=("django", "django.db", "é")),
    Failed(title="The application could not be imported", summary="boom", details="line\n"),
    Watch(dirs=("/srv/site/templates",), globs=("**/*",), files=("/srv/.env",), changes=True),
    Watch(dirs=(), globs=(), files=(), changes=False),
    Handled(all=True),
    Handled(all=False),
    Modules(modules=("django", "rest_framework")),
    EventStream(),
    Draining(),
]
MESSAGES: list[ipc.Message] = [*TO_TEMPLATE, *FROM_TEMPLATE, *TO_WORKER, *FROM_WORKER]


def test_every_message_type_has_a_sample() -> None:
    assert {type(message) for message in MESSAGES} == set(get_args(ipc.Message))


@pytest.mark.parametrize("message", MESSAGES, ids=repr)
def test_encode_decode_round_trip(message: ipc.Message) -> None:
    assert decode(encode(message)) == message


def test_config_travels_as_a_dict_the_worker_rebuilds() -> None:
    config = Config(port=0, reload_dirs=["src", "lib"], reload_excludes=["static/*"])
    fork = Fork(app="site.wsgi:application", config=dataclasses.asdict(config), announce=False)
    received = decode(encode(fork))
    assert isinstance(received, Fork)
    assert Config(**received.config) == config


# ---------------------------------------------------------------- channels


Down = TypeVar("Down", bound=ipc.Message)
Up = TypeVar("Up", bound=ipc.Message)


@contextmanager
def ends(link: Link[Down, Up]) -> Iterator[tuple[Channel[Up, Down], Channel[Down, Up]]]:
    """A new channel on `link`: the supervisor's end and the other, closed afterwards."""
    supervisor, other = channel_pair(link)
    try:
        yield supervisor, other
    finally:
        supervisor.close()
        other.close()


def cross(
    supervisor: Channel[Up, Down], other: Channel[Down, Up], down: list[Down], up: list[Up]
) -> None:
    """Send `down` from the supervisor's end and `up` back, one at a time."""
    for message in down:
        supervisor.send(message)
        assert other.recv() == message
    for reply in up:
        other.send(reply)
        assert supervisor.recv() == reply


@pytest.fixture(params=["packet", "stream"])
def framing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Channels made in the test are SOCK_SEQPACKET ones (Linux's), or the stream sockets with
    length-prefixed frames of macOS and Windows (ASERVE_PORTABLE=1)."""
    if request.param == "stream":
        monkeypatch.setenv(PORTABLE_ENV, "1")
    else:
        monkeypatch.delenv(PORTABLE_ENV, raising=False)
    return str(request.param)


# The supervisor reads its channels on uvloop, or on asyncio's loop where uvloop is missing.
each_loop = pytest.mark.parametrize(
    "new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)


@pytest.mark.usefixtures("framing")
def test_every_message_crosses_its_link() -> None:
    with ends(TEMPLATE_LINK) as (supervisor, template):
        cross(supervisor, template, TO_TEMPLATE, FROM_TEMPLATE)
    with ends(WORKER_LINK) as (supervisor, worker):
        cross(supervisor, worker, TO_WORKER, FROM_WORKER)


@pytest.mark.usefixtures("framing")
@each_loop
def test_async_receive_until_the_other_end_closes(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    supervisor, worker = channel_pair(WORKER_LINK)

    async def exchange() -> list[ipc.FromWorker | None]:
        worker.send(Hello(pid=1))
        worker.send(Ready(modules=("a",)))
        first = await supervisor.receive()
        second = await supervisor.receive()
        worker.close()
        return [first, second, await supervisor.receive()]

    try:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            assert runner.run(exchange()) == [Hello(pid=1), Ready(modules=("a",)), None]
    finally:
        supervisor.close()


@pytest.mark.usefixtures("framing")
def test_recv_returns_none_once_the_other_end_is_gone() -> None:
    with ends(WORKER_LINK) as (supervisor, worker):
        worker.close()
        assert supervisor.recv() is None
        assert supervisor.recv_fds() is None


@pytest.mark.usefixtures("framing")
def test_fork_passes_a_descriptor_that_works_at_the_other_end() -> None:
    read_end, write_end = os.pipe()
    with ends(TEMPLATE_LINK) as (supervisor, template):
        supervisor.send(FORK, fds=[write_end])
        os.close(write_end)
        received = template.recv_fds()
        assert received is not None
        message, fds = received
        assert message == FORK
        assert len(fds) == 1
        os.write(fds[0], b"through the passed descriptor")
        os.close(fds[0])
    assert os.read(read_end, 100) == b"through the passed descriptor"
    assert os.read(read_end, 100) == b""  # no copy of the write end left open
    os.close(read_end)


@pytest.mark.usefixtures("framing")
async def test_a_browser_connection_reaches_the_supervisor_on_its_loop() -> None:
    """--reload-browser: a worker hands a client's connection over; the supervisor's loop
    receives it without blocking, and the connection is still the client's."""
    client, served = socket.socketpair()
    with ends(WORKER_LINK) as (supervisor, worker):
        waiting = asyncio.ensure_future(supervisor.receive_fds())
        await asyncio.sleep(0.05)
        assert not waiting.done()  # nothing sent yet: it waits, the loop runs
        worker.send(EventStream(), fds=[served.fileno()])
        served.close()
        received = await asyncio.wait_for(waiting, 5)
        assert received is not None
        message, fds = received
        assert message == EventStream()
        with socket.socket(fileno=fds[0]) as handed:
            handed.sendall(b"event: reload\n\n")
        assert client.recv(100) == b"event: reload\n\n"
        worker.close()
        assert await supervisor.receive_fds() is None
    client.close()


@pytest.mark.usefixtures("framing")
@each_loop
def test_the_next_channel_on_a_closed_channels_descriptor_is_heard(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """A retired template's channel is closed while the supervisor's loop waits on it (the
    reader cancelled, then the channel closed); the next worker's channel may get the same
    descriptor number, and its Ready must wake the loop, or the supervisor never learns the
    worker serves and kills it, requests and all, at the next edit."""

    async def scenario() -> tuple[ipc.FromWorker, list[int]] | None:
        retired, template = channel_pair(TEMPLATE_LINK)
        reader = asyncio.ensure_future(retired.receive())
        await asyncio.sleep(0.05)
        number = retired.fileno()
        reader.cancel()
        retired.close()
        await asyncio.wait([reader])
        template.close()
        with ends(WORKER_LINK) as (supervisor, worker):
            assert supervisor.fileno() == number  # the lowest free number, as in the reloader
            waiting = asyncio.ensure_future(supervisor.receive_fds())
            await asyncio.sleep(0.05)
            worker.send(Ready(modules=("a",)))
            return await asyncio.wait_for(waiting, 5)

    with asyncio.Runner(loop_factory=new_loop) as runner:
        assert runner.run(scenario()) == (Ready(modules=("a",)), [])


@pytest.mark.usefixtures("framing")
@each_loop
def test_a_receive_waiting_when_its_channel_closes_returns_none(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def scenario() -> list[object]:
        received: list[object] = []
        for fds in (False, True):
            with ends(WORKER_LINK) as (supervisor, _):
                waiting = asyncio.ensure_future(
                    supervisor.receive_fds() if fds else supervisor.receive()
                )
                await asyncio.sleep(0.05)
                supervisor.close()
                received.append(await asyncio.wait_for(waiting, 5))
        return received

    with asyncio.Runner(loop_factory=new_loop) as runner:
        assert runner.run(scenario()) == [None, None]


def test_descriptors_with_a_bad_message_are_closed() -> None:
    raw, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    template = inherit_channel(theirs.detach(), TEMPLATE_LINK)
    read_end, write_end = os.pipe()
    try:
        socket.send_fds(raw, [b"{not json"], [write_end])
        os.close(write_end)
        with pytest.raises(IPCError, match="not a JSON message"):
            template.recv_fds()
        assert os.read(read_end, 1) == b""  # every write end is closed
    finally:
        os.close(read_end)
        raw.close()
        template.close()


def test_a_message_at_the_wrong_end_is_refused() -> None:
    raw, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    worker = inherit_channel(theirs.detach(), WORKER_LINK)
    try:
        raw.send(encode(Hello(pid=1)))
        with pytest.raises(IPCError, match="Hello arrived at the wrong end"):
            worker.recv()
    finally:
        raw.close()
        worker.close()


def stream_ends(link: Link[Down, Up]) -> tuple[socket.socket, Channel[Down, Up]]:
    """A raw stream socket to write frames by hand, and a channel reading them."""
    raw, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return raw, inherit_channel(theirs.detach(), link)


def frame(message: ipc.Message) -> bytes:
    data = encode(message)
    return len(data).to_bytes(4, "big") + bytes(4) + data


async def test_a_stream_frame_read_in_pieces_keeps_its_descriptors() -> None:
    """A frame that arrives a few bytes at a time: each non-blocking read resumes the last, and
    the descriptors sent with its first byte come with the message, not the next one."""
    raw, template = stream_ends(TEMPLATE_LINK)
    read_end, write_end = os.pipe()
    data = frame(FORK)
    try:
        waiting = asyncio.ensure_future(template.receive_fds())
        socket.send_fds(raw, [data[:3]], [write_end])
        os.close(write_end)
        for start in range(3, len(data), 7):
            await asyncio.sleep(0.001)
            assert not waiting.done()
            raw.send(data[start : start + 7])
        raw.send(frame(Preload(("x",))))
        received = await asyncio.wait_for(waiting, 5)
        assert received is not None
        assert received[0] == FORK
        assert len(received[1]) == 1
        os.close(received[1][0])
        assert await template.receive_fds() == (Preload(("x",)), [])
        assert os.read(read_end, 1) == b""  # no copy of the write end left
    finally:
        os.close(read_end)
        raw.close()
        template.close()


def test_a_stream_frame_cut_short_is_the_end() -> None:
    raw, worker = stream_ends(WORKER_LINK)
    raw.send(frame(Stop())[:-2])
    raw.close()
    assert worker.recv() is None
    worker.close()


def test_a_stream_frame_longer_than_max_message_is_refused() -> None:
    raw, worker = stream_ends(WORKER_LINK)
    raw.send((MAX_MESSAGE + 1).to_bytes(4, "big") + bytes(4))
    with pytest.raises(IPCError, match="more than MAX_MESSAGE"):
        worker.recv()
    raw.close()
    worker.close()


def test_a_large_message_on_a_full_non_blocking_stream_arrives_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A frame larger than the socket's buffer: the part the kernel did not take follows."""
    monkeypatch.setenv(PORTABLE_ENV, "1")
    supervisor, worker = channel_pair(WORKER_LINK)
    big = Ready(modules=tuple(f"module_{i:06d}" for i in range(50_000)))
    assert len(encode(big)) < MAX_MESSAGE
    received: list[object] = []
    reader = threading.Thread(target=lambda: received.append(supervisor.recv()))
    try:
        worker._sock.setblocking(False)
        reader.start()
        worker.send(big)
        worker.send(Draining())
        reader.join(5)
        assert received == [big]
        assert supervisor.recv() == Draining()
    finally:
        supervisor.close()
        worker.close()


# ---------------------------------------------------------------- what is not a message


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "not a JSON message"),
        (b"stop", "not a JSON message"),
        (b'{"type": "Stop"', "not a JSON message"),
        (b"\xff\xfe\x00", "not a JSON message"),
        (b"[" * 100_000, "not a JSON message"),
        (b'["Stop"]', "not a JSON object"),
        (b'{"command": "stop"}', "unknown message type None"),
        (b'{"type": "Restart"}', "unknown message type 'Restart'"),
        (b'{"type": 3}', "unknown message type 3"),
        (b'{"type": "Exited", "pid": 1}', r"Exited message: missing \['code'\], unexpected \[\]"),
        (
            b'{"type": "Stop", "now": true}',
            r"Stop message: missing \['replaced'\], unexpected \['now'\]",
        ),
        (b'{"type": "Hello", "pid": "12"}', "Hello message, field 'pid': expected int, got str"),
        (b'{"type": "Hello", "pid": true}', "field 'pid': expected int, got bool"),
        (b'{"type": "Hello", "pid": 1.0}', "field 'pid': expected int, got float"),
        (b'{"type": "Ready", "modules": "django"}', "field 'modules': expected a list of str"),
        (b'{"type": "Ready", "modules": ["a", 1]}', "field 'modules': expected a list of str"),
        (
            b'{"type": "Fork", "app": "a", "config": [], "announce": true}',
            "'config': expected an obj",
        ),
    ],
)
def test_malformed_input_raises_ipc_error(data: bytes, error: str) -> None:
    with pytest.raises(IPCError, match=error):
        decode(data)


def test_oversized_messages_are_refused_both_ways() -> None:
    with pytest.raises(IPCError, match="over MAX_MESSAGE"):
        encode(Failed(title="t", summary="s", details="x" * MAX_MESSAGE))
    with pytest.raises(IPCError, match="more than MAX_MESSAGE"):
        decode(encode(Stop()) + b" " * MAX_MESSAGE)


def test_ipc_error_is_an_aserve_error() -> None:
    assert issubclass(IPCError, AserveError)


# ---------------------------------------------------------------- one owner of the wire format

WIRE_MODULES = {"json", "pickle", "marshal"}
# socket.X for these X, and loop or socket methods that read or write packets.
SOCKET_FUNCTIONS = {"send_fds", "recv_fds", "socketpair", "SOCK_SEQPACKET", "SCM_RIGHTS"}
PACKET_METHODS = {"sock_recv", "sock_recv_into", "sock_sendall", "recvmsg", "sendmsg"}


def wire_uses(path: Path) -> list[str]:
    """The serialisation modules `path` imports and the packet calls it makes itself."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name in WIRE_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module in WIRE_MODULES | {"socket"}:
            found.append(node.module)
        elif isinstance(node, ast.Attribute) and (
            node.attr in PACKET_METHODS
            or (
                node.attr in SOCKET_FUNCTIONS
                and isinstance(node.value, ast.Name)
                and node.value.id == "socket"
            )
        ):
            found.append(node.attr)
    return found


def test_only_ipc_knows_the_wire_format() -> None:
    package = Path(ipc.__file__).parent
    modules = sorted(package.glob("*.py"))
    assert package / "ipc.py" in modules
    assert wire_uses(package / "ipc.py")  # the scan sees what it looks for
    uses = {path.name: wire_uses(path) for path in modules if path.name != "ipc.py"}
    assert uses == {name: [] for name in uses}


@pytest.mark.usefixtures("framing")
async def test_a_start_cancelled_as_the_worker_said_ready_finds_the_ready() -> None:
    """A save cancels a worker's start just as the worker sends Ready, which the supervisor
    has not read: it accepts from then on, so the supervisor must find the Ready and stop it
    as a serving worker, not kill it with a request in hand (supervisor._restart)."""
    ours, theirs = channel_pair(WORKER_LINK)
    worker = Worker(ours, None, cast(Any, None))
    try:
        starting = asyncio.ensure_future(worker.started())
        theirs.send(Hello(pid=4321))
        await asyncio.sleep(0.05)
        assert worker.pid == 4321 and not starting.done()
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        assert not worker.heard_ready()  # nothing more has come
        theirs.send(Watch(dirs=("d",), globs=("*.py",), files=(), changes=False))
        theirs.send(Ready(modules=("m",)))
        assert worker.heard_ready()
        assert worker.modules == ("m",)
        assert worker.watch is not None and worker.watch.dirs == ("d",)
        # Watched as a ready worker is from there: its exit is seen.
        theirs.close()
        await asyncio.wait_for(worker.exited.wait(), 5)
    finally:
        worker.close()
        theirs.close()
