"""The reload IPC: every message between the supervisor, the template and the workers, and the
one place that knows how they travel (a JSON object per SOCK_SEQPACKET packet where there is
SOCK_SEQPACKET, else per length-prefixed frame on a stream socket; descriptors passed with
SCM_RIGHTS, or as sockets shared with socket.share() on Windows)."""

from __future__ import annotations

import array
import asyncio
import json
import select
import socket
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, Generic, TypeAlias, TypeVar, cast, get_args, get_origin, get_type_hints

from aserve.errors import AserveError
from aserve.process import portable_forced

# The largest messages are Ready (Django with its contrib apps: 640 module names, 14 KiB) and
# Failed (a traceback). Linux refuses a packet larger than the sender's SO_SNDBUF (208 KiB by
# default, net.core.wmem_default) before this limit is reached.
MAX_MESSAGE = 1 << 20
# A Fork passes two descriptors, an EventStream one; any beyond this limit are closed by the
# kernel rather than leaked.
MAX_FDS = 4
# A stream frame's header: the length of its JSON, then of the sockets shared with it (Windows).
_HEADER = struct.Struct("!II")
_BLOB = struct.Struct("!I")
# socket.share()'s blob is a WSAPROTOCOL_INFOW structure, under 1 KiB.
_MAX_SHARED = MAX_FDS * 4096
# SOCK_SEQPACKET is absent on macOS and Windows, SCM_RIGHTS on Windows.
_SEQPACKET: int | None = getattr(socket, "SOCK_SEQPACKET", None)
_SCM_RIGHTS = hasattr(socket, "SCM_RIGHTS")
_FD_SIZE = array.array("i").itemsize
# The key of the message type in the JSON object; no message has a field of this name.
TAG = "type"


class IPCError(AserveError):
    """A reload IPC message that is malformed, of an unknown type, too long, or that arrived at
    the wrong end of a channel."""


# -- the messages -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Preload:
    """To a new template: import these modules before forking anything."""

    modules: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Fork:
    """To the template: fork a worker. Two descriptors travel with it: the worker's channel,
    and the pipe its stacks are dumped to when it hangs; `config` is `dataclasses.asdict()` of
    its `Config`. Or the first message to a spawned worker (aserve.reload.spawn), with the
    listening socket and the dump pipe (none on Windows). `announce`: whether the worker logs
    the line saying where it serves, which the first worker does, and a restarted one does not
    (the supervisor says it reloaded)."""

    app: str
    config: dict[str, Any]
    announce: bool


@dataclass(frozen=True, slots=True)
class TemplateReady:
    """From the template once it preloaded; `threads` names the threads alive in it, whose
    locks every fork copies in whatever state they are."""

    threads: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Exited:
    """From the template: a worker it forked exited with `code` (negative: killed by that
    signal)."""

    pid: int
    code: int


@dataclass(frozen=True, slots=True)
class Hello:
    """From a worker as soon as it is forked."""

    pid: int


@dataclass(frozen=True, slots=True)
class Ready:
    """From a worker that accepts: the modules it imported that are not project code."""

    modules: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Modules:
    """From a ready worker, later: the preloadable modules, now that the first requests
    imported more (Django imports its URLconf, views and their libraries lazily)."""

    modules: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Draining:
    """From a worker told to stop: it accepts nothing more and closed its idle connections,
    so the next request a browser makes reaches the new worker."""


@dataclass(frozen=True, slots=True)
class EventStream:
    """From a worker under --reload-browser: a browser asked for the refresh event stream; its
    connection travels with this message as a descriptor, now the supervisor's to serve."""


@dataclass(frozen=True, slots=True)
class Failed:
    """From a worker that could not start: what the error page shows."""

    title: str
    summary: str
    details: str


@dataclass(frozen=True, slots=True)
class Watch:
    """From a worker whose app asked for more to be watched (Django's `watch_dir` and
    `extra_files`): each directory with its glob, and single files; and whether the app wants
    to hear of changes before a restart (`Changed`)."""

    dirs: tuple[str, ...]
    globs: tuple[str, ...]
    files: tuple[str, ...]
    changes: bool


@dataclass(frozen=True, slots=True)
class Handled:
    """From a worker told of `Changed` files: whether the app dealt with them all itself (a
    template cache reset, say), so that no restart is needed."""

    all: bool


@dataclass(frozen=True, slots=True)
class Stop:
    """To a worker: stop accepting, drain, exit. `replaced`: a new worker takes over (a
    reload), which the worker's WebSockets are told with 1012 rather than 1001 (RFC 6455
    §7.4.1, the IANA registry's "service restart")."""

    replaced: bool = False


@dataclass(frozen=True, slots=True)
class Changed:
    """To a worker that asked (`Watch.changes`): these files changed; answer `Handled`."""

    paths: tuple[str, ...]


# A new message is a dataclass added to one of these unions: `decode` learns it from them.
ToTemplate: TypeAlias = Preload | Fork
FromTemplate: TypeAlias = TemplateReady | Exited
ToWorker: TypeAlias = Fork | Stop | Changed
FromWorker: TypeAlias = Hello | Ready | Failed | Watch | Handled | Modules | EventStream | Draining
Message: TypeAlias = ToTemplate | FromTemplate | ToWorker | FromWorker


# -- the wire format --------------------------------------------------------------------------


def _members(union: object) -> tuple[type[Any], ...]:
    return get_args(union) or (cast(type[Any], union),)


def _scalar(kind: type[Any]) -> Callable[[object], object]:
    def check(value: object) -> object:
        # Exact types: JSON's true is not an int field's 1, nor 1 a bool field's true.
        if type(value) is not kind:
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    return check


def _tuple_of(kind: type[Any]) -> Callable[[object], object]:
    def check(value: object) -> object:
        if not isinstance(value, list) or any(type(item) is not kind for item in value):
            raise TypeError(f"expected a list of {kind.__name__}")
        return tuple(value)

    return check


def _object(value: object) -> object:
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise TypeError("expected an object")
    return value


_SCALARS = (str, int, float, bool)


def _converter(hint: object) -> Callable[[object], object]:
    """What turns a decoded JSON value into a field of type `hint`, or says it cannot."""
    if hint in _SCALARS:
        return _scalar(cast(type[Any], hint))
    args = get_args(hint)
    if get_origin(hint) is tuple and len(args) == 2 and args[1] is ... and args[0] in _SCALARS:
        return _tuple_of(args[0])
    if get_origin(hint) is dict and args == (str, Any):
        return _object
    raise TypeError(f"the reload IPC cannot carry a field of type {hint}")


class _Codec:
    """Builds one message class from the fields of a decoded JSON object, checking each."""

    def __init__(self, cls: type[Any]) -> None:
        self.cls = cls
        hints = get_type_hints(cls)
        self.converters = {field.name: _converter(hints[field.name]) for field in fields(cls)}
        if TAG in self.converters:
            raise TypeError(f"{cls.__name__} has a field named {TAG!r}, the type tag")

    def build(self, values: dict[str, object]) -> Message:
        name = self.cls.__name__
        if values.keys() != self.converters.keys():
            missing = sorted(self.converters.keys() - values.keys())
            unexpected = sorted(values.keys() - self.converters.keys())
            raise IPCError(f"{name} message: missing {missing}, unexpected {unexpected}")
        converted = {}
        for field, convert in self.converters.items():
            try:
                converted[field] = convert(values[field])
            except TypeError as exc:
                raise IPCError(f"{name} message, field {field!r}: {exc}") from None
        message: Message = self.cls(**converted)
        return message


_CODECS: Mapping[str, _Codec] = MappingProxyType(
    {cls.__name__: _Codec(cls) for cls in _members(Message)}
)


def encode(message: Message) -> bytes:
    """`message` as one packet: a JSON object with its type under TAG and its fields."""
    codec = _CODECS.get(type(message).__name__)
    if codec is None or codec.cls is not type(message):
        raise IPCError(f"{message!r} is not a reload IPC message")
    values = {field: getattr(message, field) for field in codec.converters}
    data = json.dumps({TAG: codec.cls.__name__, **values}, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise IPCError(f"{codec.cls.__name__} message of {len(data)} bytes: over MAX_MESSAGE")
    return data


def decode(data: bytes) -> Message:
    """The message in one packet; IPCError if it is not one `encode` could have written."""
    if len(data) > MAX_MESSAGE:
        raise IPCError(f"a message of more than MAX_MESSAGE ({MAX_MESSAGE}) bytes")
    try:
        values = json.loads(data)
    # A UnicodeDecodeError is a ValueError; deep nesting exhausts the C scanner's recursion.
    except (ValueError, RecursionError) as exc:
        raise IPCError(f"not a JSON message: {exc}") from None
    if not isinstance(values, dict):
        raise IPCError(f"not a JSON object: {type(values).__name__}")
    tag = values.pop(TAG, None)
    codec = _CODECS.get(tag) if isinstance(tag, str) else None
    if codec is None:
        raise IPCError(f"unknown message type {tag!r}")
    return codec.build(values)


# -- channels ---------------------------------------------------------------------------------

Down = TypeVar("Down", bound=Message)
Up = TypeVar("Up", bound=Message)
Receives = TypeVar("Receives", bound=Message)
Sends = TypeVar("Sends", bound=Message)
_Read = TypeVar("_Read")


@dataclass(frozen=True)
class Link(Generic[Down, Up]):
    """The supervisor's channel to a template or a worker: `Down` messages travel from the
    supervisor, `Up` messages back."""

    down: tuple[type[Any], ...]
    up: tuple[type[Any], ...]


TEMPLATE_LINK: Link[ToTemplate, FromTemplate] = Link(_members(ToTemplate), _members(FromTemplate))
WORKER_LINK: Link[ToWorker, FromWorker] = Link(_members(ToWorker), _members(FromWorker))


class Channel(Generic[Receives, Sends]):
    """One end of a link. `recv()` and `recv_fds()` block; `receive()` is for an event loop and
    leaves the socket non-blocking, after which `send()` raises BlockingIOError rather than
    wait for room (on a stream, once part of a frame went, the rest waits). Every receive
    returns None once the other end is gone.

    Over SOCK_SEQPACKET a message is one packet. Over a stream socket (macOS has no
    SOCK_SEQPACKET, Windows no AF_UNIX socketpair) it is a frame: a header with the lengths
    of the JSON and of the shared sockets (Windows), then both. Each frame is read in pieces
    never longer than what is left of it, so the descriptors SCM_RIGHTS attaches to a frame's
    first byte arrive with a read of that frame and no other."""

    def __init__(self, sock: socket.socket, receives: tuple[type[Any], ...]) -> None:
        self._sock = sock
        self._receives = receives
        self._stream = sock.type != _SEQPACKET
        # A stream frame read so far, and the descriptors that came with it: a non-blocking
        # read resumes where the last one stopped.
        self._partial = bytearray()
        self._partial_fds: list[int] = []
        self._buffer: bytearray | None = None
        # While a receive waits on a loop: the loop, the descriptor it watches, and what wakes
        # the receive (see `close`).
        self._watch: tuple[asyncio.AbstractEventLoop, int, Callable[[], None]] | None = None
        # Windows: the process a socket sent through this channel is shared with
        # (socket.share() names the receiving process).
        self.peer: int | None = None

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, message: Sends, fds: Sequence[int] = ()) -> None:
        """Send `message`, and duplicates of `fds` for the other end's `recv_fds()` (on
        Windows `fds` must be sockets, shared with `peer`)."""
        data = encode(message)
        if not self._stream:
            if fds:
                socket.send_fds(self._sock, [data], fds)
            else:
                self._sock.send(data)
            return
        shared = _share(fds, self.peer) if not _SCM_RIGHTS else b""
        frame = _HEADER.pack(len(data), len(shared)) + data + shared
        if fds and _SCM_RIGHTS:
            sent = socket.send_fds(self._sock, [frame], fds)
        else:
            sent = self._sock.send(frame)
        if sent < len(frame):
            # A stream takes part of a frame when its buffer is nearly full: the rest must
            # follow, or the other end reads garbage from then on.
            _send_rest(self._sock, memoryview(frame)[sent:])

    def recv(self) -> Receives | None:
        if self._stream:
            return self._from_frame(self._read_frame())
        try:
            size = self._sock.recv_into(self._packet_buffer())
        except OSError:
            return None
        return self._message(self._packet(size))

    def recv_fds(self) -> tuple[Receives, list[int]] | None:
        """The next message and the descriptors that came with it, now the caller's to close."""
        return self._recv_fds()

    def recv_fds_nowait(self) -> tuple[Receives, list[int]] | None:
        """`recv_fds()` for a message that has arrived whole; BlockingIOError when none has.
        On a channel an event loop reads, while no `receive` waits."""
        self._nonblocking()
        return self._recv_fds()

    async def receive(self) -> Receives | None:
        self._nonblocking()
        if self._stream:
            return self._from_frame(await self._when_readable(self._read_frame))
        try:
            size = await self._when_readable(lambda: self._sock.recv_into(self._packet_buffer()))
        except OSError:
            return None
        return self._message(self._packet(size))

    async def receive_fds(self) -> tuple[Receives, list[int]] | None:
        """`recv_fds()` for an event loop."""
        self._nonblocking()
        return await self._when_readable(self._recv_fds)

    def _nonblocking(self) -> None:
        if self._sock.getblocking():
            # The loop reads when the socket is readable: a blocking one would stall it
            # (asyncio refuses one in debug mode).
            self._sock.setblocking(False)

    def _recv_fds(self) -> tuple[Receives, list[int]] | None:
        """BlockingIOError when the socket is non-blocking and nothing waits."""
        if self._stream:
            return self._with_fds(self._read_frame())
        try:
            size, ancillary, _, _ = self._sock.recvmsg_into(
                [self._packet_buffer()], socket.CMSG_SPACE(MAX_FDS * _FD_SIZE)
            )
        except BlockingIOError:
            raise
        except OSError:
            return None
        return self._with_fds((self._packet(size), _passed_fds(ancillary)))

    def _packet_buffer(self) -> bytearray:
        """Where packets are read: one byte more than a message may have, since
        SOCK_SEQPACKET cuts a longer packet to the buffer's size without a word and `decode`
        rejects one that fills it. Kept, not made per packet: allocating a MiB for each
        message doubled a round trip's time."""
        if self._buffer is None:
            self._buffer = bytearray(MAX_MESSAGE + 1)
        return self._buffer

    def _packet(self, size: int) -> bytes:
        assert self._buffer is not None
        return bytes(memoryview(self._buffer)[:size])

    def _with_fds(self, frame: tuple[bytes, list[int]] | None) -> tuple[Receives, list[int]] | None:
        if frame is None:
            return None
        data, fds = frame
        try:
            message = self._message(data)
        except IPCError:
            _close(fds)
            raise
        if message is None:
            _close(fds)
            return None
        return message, fds

    def _from_frame(self, frame: tuple[bytes, list[int]] | None) -> Receives | None:
        """The message of a frame read where no descriptor is expected (any are closed)."""
        received = self._with_fds(frame)
        if received is None:
            return None
        message, fds = received
        _close(fds)
        return message

    def _read_frame(self) -> tuple[bytes, list[int]] | None:
        """The next stream frame's JSON and descriptors; None at the end of the stream (or a
        frame cut short by it). BlockingIOError when non-blocking and the frame is not whole:
        what was read is kept for the next call."""
        partial = self._partial
        while True:
            if len(partial) < _HEADER.size:
                want = _HEADER.size - len(partial)
            else:
                length, shared = _HEADER.unpack_from(partial)
                if length > MAX_MESSAGE or shared > _MAX_SHARED:
                    raise IPCError(f"a message of more than MAX_MESSAGE ({MAX_MESSAGE}) bytes")
                want = _HEADER.size + length + shared - len(partial)
                if want == 0:
                    data = bytes(partial[_HEADER.size : _HEADER.size + length])
                    fds = self._partial_fds + _unshare(partial[_HEADER.size + length :])
                    self._partial = bytearray()
                    self._partial_fds = []
                    return data, fds
            try:
                chunk = self._read_some(want)
            except BlockingIOError:
                raise
            except OSError:
                chunk = b""
            if not chunk:
                _close(self._partial_fds)
                self._partial_fds = []
                partial.clear()
                return None
            partial += chunk

    def _read_some(self, size: int) -> bytes:
        if not _SCM_RIGHTS:
            return self._sock.recv(size)
        data, fds, _, _ = socket.recv_fds(self._sock, size, MAX_FDS)
        self._partial_fds += fds
        return data

    async def _when_readable(self, read: Callable[[], _Read]) -> _Read:
        """`read()`, once the socket has something for it: the loop waits, never the socket
        (`read` raises BlockingIOError while there is nothing)."""
        while True:
            try:
                return read()
            except BlockingIOError:
                await self._readable()

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        fd = self._sock.fileno()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        self._watch = (loop, fd, wake)
        try:
            await ready
        finally:
            if self._watch is not None:
                self._watch = None
                loop.remove_reader(fd)

    def close(self) -> None:
        """Close this end; a receive waiting on a loop then returns None."""
        watch, self._watch = self._watch, None
        if watch is not None:
            # The loop stops watching the descriptor before its number is free: a socket made
            # next (the next worker's channel) may get it, and a watch left on it from this
            # one would keep the loop deaf to the new socket (asyncio's selector takes the
            # new add_reader for a change of callback and never tells epoll).
            loop, fd, wake = watch
            if not loop.is_closed():
                loop.remove_reader(fd)
            wake()
        _close(self._partial_fds)
        self._partial_fds = []
        self._sock.close()

    def handoff(self, pid: int) -> bytes:
        """Windows: this end, for process `pid` to take with `channel_from_handoff` (a spawned
        worker reads it from its standard input, as Windows passes no descriptor on)."""
        if sys.platform != "win32":
            raise IPCError("a channel is handed off with socket.share() on Windows only")
        return self._sock.share(pid)

    def _message(self, data: bytes) -> Receives | None:
        if not data:
            return None
        message = decode(data)
        if not isinstance(message, self._receives):
            raise IPCError(f"{type(message).__name__} arrived at the wrong end of a channel")
        return cast(Receives, message)


def channel_pair(link: Link[Down, Up]) -> tuple[Channel[Up, Down], Channel[Down, Up]]:
    """A new channel: the supervisor's end, and the end to hand to a template or worker."""
    ours, theirs = _socketpair()
    return Channel(ours, link.up), Channel(theirs, link.down)


def inherit_channel(fd: int, link: Link[Down, Up]) -> Channel[Down, Up]:
    """The template's or worker's end of `link`, from the descriptor it was handed; its type
    says how messages travel on it."""
    return Channel(socket.socket(fileno=fd), link.down)


def channel_from_handoff(data: bytes, link: Link[Down, Up]) -> Channel[Down, Up]:
    """Windows: the end of `link` another process handed off (`Channel.handoff`)."""
    if sys.platform != "win32":
        raise IPCError("a channel is handed off with socket.share() on Windows only")
    return Channel(socket.fromshare(data), link.down)


def stream_forced() -> bool:
    """Whether new channels are stream sockets where SOCK_SEQPACKET exists: under
    ASERVE_PORTABLE=1, to run on Linux the framing macOS and Windows need."""
    return portable_forced()


def _socketpair() -> tuple[socket.socket, socket.socket]:
    if _SEQPACKET is not None and not stream_forced():
        return socket.socketpair(socket.AF_UNIX, _SEQPACKET)
    if hasattr(socket, "AF_UNIX"):
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    # Windows: socketpair() connects two loopback TCP sockets.
    return socket.socketpair()


def _passed_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors of SCM_RIGHTS ancillary data (what socket.recv_fds returns)."""
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % _FD_SIZE])
    return list(fds)


def _send_rest(sock: socket.socket, rest: memoryview) -> None:
    while rest:
        try:
            sent = sock.send(rest)
        except BlockingIOError:
            select.select([], [sock], [])
            continue
        rest = rest[sent:]


def _share(fds: Sequence[int], pid: int | None) -> bytes:
    """Windows: `fds` (socket handles) shared with process `pid`, each blob length-prefixed."""
    if not fds:
        return b""
    if sys.platform != "win32" or pid is None:
        raise IPCError("descriptors travel on this channel only as sockets shared with its peer")
    blobs = []
    for fd in fds:
        sock = socket.socket(fileno=fd)
        try:
            blob = sock.share(pid)
        finally:
            sock.detach()  # the handle stays the sender's, to close as it sees fit
        blobs.append(_BLOB.pack(len(blob)) + blob)
    return b"".join(blobs)


def _unshare(data: bytes | bytearray) -> list[int]:
    """Windows: the sockets of a frame's shared part, as handles now this process's."""
    fds: list[int] = []
    view = memoryview(data)
    while view:
        (length,) = _BLOB.unpack_from(view)
        blob = bytes(view[_BLOB.size : _BLOB.size + length])
        view = view[_BLOB.size + length :]
        if sys.platform == "win32":
            fds.append(socket.fromshare(blob).detach())
    return fds


def _close(fds: Sequence[int]) -> None:
    for fd in fds:
        socket.close(fd)
