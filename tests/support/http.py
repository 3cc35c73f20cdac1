"""The one HTTP/1.1 response parser of the tests and benchmarks, sans-IO: fed what a server sent,
it gives back the responses, and fails on any framing a correct server does not produce."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

_STATUS_LINE = re.compile(rb"(HTTP/1\.[01]) ([1-9][0-9][0-9]) ([\t \x21-\x7e\x80-\xff]*)")
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# RFC 9110 §5.5: a value is visible characters with spaces and tabs only between them; a CR,
# LF or NUL in one is how a header injection shows.
_FIELD_LINE = re.compile(
    rb"(" + _TOKEN + rb"):[ \t]*"
    rb"((?:[\x21-\x7e\x80-\xff](?:[ \t\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?)[ \t]*"
)
# RFC 9112 §7.1.1: chunk extensions are read and ignored.
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]+)(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:=[^\r\n]*)?)*")
_STATUS_START = b"HTTP/1."


class FramingError(AssertionError):
    """What the server sent is not a well-framed HTTP/1.1 response (a failed test, not a
    client bug)."""


@dataclass(eq=False)
class Response:
    """One response; while its body is being read, `body` holds what has come so far."""

    version: bytes
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    head: bytes
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    # False until the framing says the body is over; stays False if the connection closed first.
    complete: bool = False
    _body: list[bytes] = field(default_factory=list, repr=False)
    _wire: list[bytes] = field(default_factory=list, repr=False)

    @property
    def body(self) -> bytes:
        return _joined(self._body)

    @property
    def wire_body(self) -> bytes:
        """The body as framed on the wire: chunk sizes, the last chunk and trailers included."""
        return _joined(self._wire)

    def header(self, name: bytes) -> bytes | None:
        """The first value of the field `name` (any case), or None."""
        values = self.values(name)
        return values[0] if values else None

    def values(self, name: bytes) -> list[bytes]:
        name = name.lower()
        return [value for key, value in self.headers if key.lower() == name]

    @property
    def names(self) -> list[bytes]:
        return [key.lower() for key, _ in self.headers]

    @property
    def close(self) -> bool:
        """The server said `connection: close`."""
        return b"close" in self._connection_options

    @property
    def keeps_alive(self) -> bool:
        """The connection may carry another response after this one (RFC 9112 §9.3)."""
        if self.close:
            return False
        return self.version == b"HTTP/1.1" or b"keep-alive" in self._connection_options

    @property
    def _connection_options(self) -> set[bytes]:
        return {
            option.strip().lower()
            for value in self.values(b"connection")
            for option in value.split(b",")
        }

    def _add(self, data: bytes, wire: bytes) -> None:
        if data:
            self._body.append(data)
        if wire:
            self._wire.append(wire)


def _joined(pieces: list[bytes]) -> bytes:
    if len(pieces) > 1:
        pieces[:] = [b"".join(pieces)]
    return pieces[0] if pieces else b""


@dataclass(frozen=True)
class Part:
    """A piece of a body: a whole chunk of a chunked one, else whatever bytes had come."""

    data: bytes
    wire: bytes


@dataclass(frozen=True)
class End:
    """The end of `response`: complete, or cut short by the server closing the connection."""

    response: Response


class Closed:
    """The server closed the connection between two responses."""

    def __repr__(self) -> str:
        return "Closed()"


CLOSED = Closed()

# What `next_event` gives: a Response when its head has been read, then its Parts, then End.
Event = Response | Part | End | Closed

State = Literal["head", "length", "chunk", "trailers", "until-close", "end", "closing", "closed"]


class ResponseParser:
    """The responses on one connection, from the bytes fed to it.

    `next_event()` and `next_response()` return None until enough bytes have come; after
    `feed_eof()` they never do. Any byte a correct server would not send raises FramingError.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._eof = False
        self._state: State = "head"
        self._remaining = 0
        self._current: Response | None = None
        self._last_chunk = b""

    @property
    def buffered(self) -> bytes:
        """What has been fed and not parsed yet."""
        return bytes(self._buffer)

    @property
    def current(self) -> Response | None:
        """The response whose head has been read and whose body has not ended."""
        return self._current

    def feed(self, data: bytes) -> None:
        if self._eof:
            raise RuntimeError("fed bytes after the end of the connection")
        self._buffer += data

    def feed_eof(self) -> None:
        """The server closed the connection."""
        self._eof = True

    def next_response(
        self, method: bytes = b"GET", *, truncated_ok: bool = False
    ) -> Response | Closed | None:
        """The next whole response (or the rest of the current one), CLOSED once the server
        has closed between responses. `method` is that of the request it answers; a response
        cut short raises unless `truncated_ok`."""
        while (event := self.next_event(method)) is not None:
            if isinstance(event, End):
                if not (event.response.complete or truncated_ok):
                    raise FramingError(f"the connection closed in the body of {event.response}")
                return event.response
            if isinstance(event, Closed):
                return event
        return None

    def next_event(self, method: bytes = b"GET") -> Event | None:
        """The next event; `method` (of the request being answered) matters for a head."""
        if self._state == "head":
            return self._head(method)
        if self._state == "end":
            return self._end(complete=True)
        if self._state == "length":
            return self._length()
        if self._state == "chunk":
            return self._chunk()
        if self._state == "trailers":
            return self._trailers()
        if self._state == "until-close":
            return self._until_close()
        if self._state == "closing":
            if self._buffer:
                raise FramingError(
                    f"bytes after a response that ends the connection: {self.buffered[:200]!r}"
                )
            if not self._eof:
                return None
            self._state = "closed"
        return CLOSED

    # -- heads ------------------------------------------------------------------------------

    def _head(self, method: bytes) -> Response | Closed | None:
        start = bytes(self._buffer[: len(_STATUS_START)])
        if not _STATUS_START.startswith(start):
            raise FramingError(f"not a status line: {self.buffered[:200]!r}")
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if not self._eof:
                return None
            if self._buffer:
                raise FramingError(f"the connection closed in a response head: {self.buffered!r}")
            self._state = "closed"
            return CLOSED
        head = self._take(end + 4)
        response = _parse_head(head)
        self._current = response
        self._state = _framing(response, method)
        if self._state == "length":
            self._remaining = int(response.values(b"content-length")[0])
            if not self._remaining:
                self._state = "end"
        return response

    # -- bodies -----------------------------------------------------------------------------

    def _length(self) -> Part | End | None:
        if not self._buffer:
            return self._end(complete=False) if self._eof else None
        data = self._take(min(self._remaining, len(self._buffer)))
        self._remaining -= len(data)
        if not self._remaining:
            self._state = "end"
        return self._part(data, data)

    def _chunk(self) -> Part | End | None:
        line_end = self._buffer.find(b"\r\n")
        if line_end < 0:
            if self._eof:
                if not re.fullmatch(rb"[0-9A-Fa-f]*(;[^\r\n]*)?\r?", self._buffer):
                    raise FramingError(f"not a chunk size: {self.buffered[:200]!r}")
                return self._end(complete=False, wire=self._take(len(self._buffer)))
            return None
        line = bytes(self._buffer[:line_end])
        match = _CHUNK_SIZE.fullmatch(line)
        if match is None:
            raise FramingError(f"not a chunk size line: {line[:200]!r}")
        size = int(match.group(1), 16)
        if not size:
            self._last_chunk = self._take(line_end + 2)
            self._state = "trailers"
            return self._trailers()
        whole = line_end + 2 + size + 2
        if len(self._buffer) < whole:
            if not self._eof:
                return None
            wire = self._take(len(self._buffer))
            data = wire[line_end + 2 :]
            if not b"\r\n".startswith(data[size:]):
                raise FramingError(f"chunk data not followed by CRLF: {wire[-200:]!r}")
            assert self._current is not None
            self._current._add(data[:size], b"")
            return self._end(complete=False, wire=wire)
        if self._buffer[whole - 2 : whole] != b"\r\n":
            raise FramingError(
                f"a chunk of {size} bytes not followed by CRLF: {self.buffered[: whole + 20]!r}"
            )
        wire = self._take(whole)
        return self._part(wire[line_end + 2 : -2], wire)

    def _trailers(self) -> End | None:
        if self._buffer.startswith(b"\r\n"):
            return self._end(complete=True, wire=self._last_chunk + self._take(2))
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if self._eof:
                wire = self._last_chunk + self._take(len(self._buffer))
                return self._end(complete=False, wire=wire)
            return None
        section = self._take(end + 4)
        assert self._current is not None
        self._current.trailers = [_field(line) for line in section[:-4].split(b"\r\n")]
        return self._end(complete=True, wire=self._last_chunk + section)

    def _until_close(self) -> Part | End | None:
        if self._buffer:
            data = self._take(len(self._buffer))
            return self._part(data, data)
        return self._end(complete=True) if self._eof else None

    def _part(self, data: bytes, wire: bytes) -> Part:
        assert self._current is not None
        self._current._add(data, wire)
        return Part(data, wire)

    def _end(self, *, complete: bool, wire: bytes = b"") -> End:
        response = self._current
        assert response is not None
        response._add(b"", wire)
        response.complete = complete
        self._current = None
        if not complete:
            self._state = "closed"
        elif 100 <= response.status < 200 or response.keeps_alive:
            self._state = "head"
        else:
            self._state = "closing"
        return End(response)

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


def _parse_head(head: bytes) -> Response:
    status_line, *lines = head[:-4].split(b"\r\n")
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise FramingError(f"not a status line: {status_line!r}")
    version, status, reason = match.groups()
    return Response(version, int(status), reason, [_field(line) for line in lines], head)


def _field(line: bytes) -> tuple[bytes, bytes]:
    match = _FIELD_LINE.fullmatch(line)
    if match is None:
        raise FramingError(f"not a header field line: {line!r}")
    return match.group(1), match.group(2)


def _framing(response: Response, method: bytes) -> State:
    """How the body of `response` is delimited (RFC 9112 §6.3)."""
    status = response.status
    lengths = response.values(b"content-length")
    codings = response.values(b"transfer-encoding")
    # RFC 9110 §8.6 and RFC 9112 §6.1: a server sends neither field with these.
    if (100 <= status < 200 or status == 204) and (lengths or codings):
        raise FramingError(f"a {status} response with a Content-Length or Transfer-Encoding")
    if lengths and codings:
        raise FramingError("a response with both Content-Length and Transfer-Encoding")
    if len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
        raise FramingError(f"not one Content-Length: {lengths}")
    if codings and [c.lower() for c in codings] != [b"chunked"]:
        raise FramingError(f"a transfer coding other than chunked alone: {codings}")
    if 100 <= status < 200 or status in (204, 304) or method == b"HEAD":
        return "end"
    if codings:
        return "chunk"
    if lengths:
        return "length"
    return "until-close"
