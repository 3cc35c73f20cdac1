"""Sans-IO WebSocket server side (RFC 6455, RFC 7692) over the `websockets` library's
`ServerProtocol`: the opening handshake checked before the app runs and answered when it
accepts; then bytes in and whole messages out, messages in and frames out."""

from __future__ import annotations

import codecs
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ProtocolError as LibraryProtocolError
from websockets.extensions.base import ServerExtensionFactory
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.http11 import Request as LibraryRequest
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

try:
    from websockets.speedups import apply_mask
except ImportError:  # a platform the library ships no C extension for
    from websockets.utils import apply_mask

from aserve.errors import AppProtocolError
from aserve.protocols.http11 import check_field
from aserve.types import Headers

_TEXT, _BINARY, _CONT, _CLOSE = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.CLOSE
# Fields the handshake itself decides (RFC 6455 §4.2.2): an app's own would contradict it.
_HANDSHAKE_FIELDS = frozenset(
    (
        b"upgrade",
        b"connection",
        b"sec-websocket-accept",
        b"sec-websocket-extensions",
        b"content-length",
        b"transfer-encoding",
    )
)
# RFC 6455 §5.5: a control frame's payload is at most 125 bytes, two of them the close code.
_MAX_REASON = 123
_UTF8 = codecs.getincrementaldecoder("utf-8")


class _LibraryLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The library's records on aserve's error log, without its INFO line for every
    connection opened and closed: the access log has one line per WebSocket."""

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Settings:
    """What every WebSocket of a server shares (the `ws_*` settings)."""

    max_size: int
    per_message_deflate: bool
    logger: logging.LoggerAdapter = field(  # type: ignore[type-arg]
        default_factory=lambda: _LibraryLog(logging.getLogger("aserve.error"), {})
    )

    def extensions(self) -> list[ServerExtensionFactory]:
        if not self.per_message_deflate:
            return []
        # The settings websockets' own server uses. zlib's defaults cost a connection about
        # 300 KiB (the deflate state alone is 2^(15+2) + 2^(8+9) bytes); 4 KiB windows and
        # memLevel 5 bring it to about 70 KiB (the library's memory guide), for a slightly
        # lower ratio on the short messages WebSockets mostly carry.
        return [
            ServerPerMessageDeflateFactory(
                server_max_window_bits=12,
                client_max_window_bits=12,
                compress_settings={"memLevel": 5},
            )
        ]


@dataclass(frozen=True, slots=True)
class Closed:
    """The WebSocket is over: the peer's close code and reason, 1005 when its close frame
    had none and 1006 when the connection ended without one (RFC 6455 §7.1.5)."""

    code: int
    reason: str


Event = str | bytes | Closed


class _ServerProtocol(ServerProtocol):
    """The library's protocol, but a close frame in the middle of a fragmented message
    closes normally: RFC 6455 §5.4 lets control frames interleave with the fragments, and
    the library fails such a close with 1002 (Autobahn case 7.1.5). The unfinished message is
    dropped, as any message cut by a close is."""

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is _CLOSE:
            self.current_size = None
        super().recv_frame(frame)


class Handshake:
    """A request asking to become a WebSocket, checked by the library up front; `refusal`
    is its answer when the request is no valid handshake (400, 405, 426, 505)."""

    __slots__ = ("_protocol", "_response", "subprotocols")

    def __init__(
        self, method: bytes, target: bytes, http_version: str, headers: Headers, settings: Settings
    ) -> None:
        self.subprotocols: list[str] = []

        def offered(protocol: ServerProtocol, subprotocols: Sequence[Subprotocol]) -> None:
            # The library binds this to the protocol; the app chooses once it accepts.
            self.subprotocols = list(subprotocols)

        protocol = _ServerProtocol(
            extensions=settings.extensions(),
            select_subprotocol=offered,
            max_size=settings.max_size,
            logger=settings.logger,
        )
        # The library parses the head itself (it checks it, and its parser then reads the
        # frames that follow): it is given the head as httptools understood it.
        protocol.receive_data(
            b"%s %s HTTP/%s\r\n%s\r\n"
            % (
                method,
                target,
                http_version.encode("ascii"),
                b"".join(b"%s: %s\r\n" % field for field in headers),
            )
        )
        request = next(
            (event for event in protocol.events_received() if type(event) is LibraryRequest),
            None,
        )
        self._protocol = protocol
        # The library negotiates the extensions here; the subprotocol waits for the app.
        self._response = (
            protocol.accept(request)
            if request is not None
            else protocol.reject(400, "Failed to open a WebSocket connection: invalid request.\n")
        )

    @property
    def refusal(self) -> tuple[int, Headers, bytes] | None:
        """The status, fields and body of the library's answer to an invalid handshake."""
        response = self._response
        if response.status_code == 101:
            return None
        headers = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in response.headers.raw_items()
            # The HTTP/1.1 layer frames the response and adds Date itself.
            if name.lower() not in ("content-length", "date")
        ]
        return response.status_code, headers, bytes(response.body)

    def accept(self, subprotocol: str | None, headers: Headers) -> tuple[bytes, Session]:
        """The bytes of the 101 response, and the open WebSocket. Raises AppProtocolError,
        nothing sent, for a subprotocol the client did not offer or an invalid field."""
        protocol = self._protocol
        response = self._response
        extra = []
        for name, value in headers:
            check_field(name, value)
            lname = name.lower()
            if lname == b"sec-websocket-protocol":
                # Apps written before ASGI had `subprotocol` name it this way.
                chosen = value.decode("latin-1")
                if subprotocol not in (None, chosen):
                    raise AppProtocolError("two subprotocols chosen")
                subprotocol = chosen
            elif lname in _HANDSHAKE_FIELDS:
                raise AppProtocolError(f"{name!r} is decided by the WebSocket handshake")
            else:
                extra.append((name.decode("latin-1"), value.decode("latin-1")))
        if subprotocol is not None:
            # RFC 6455 §4.1: a client fails a connection whose subprotocol it did not offer.
            if subprotocol not in self.subprotocols:
                raise AppProtocolError(f"subprotocol {subprotocol!r} was not offered")
            response.headers["Sec-WebSocket-Protocol"] = subprotocol
            protocol.subprotocol = Subprotocol(subprotocol)
        if not any(name.lower() == "server" for name, _ in extra):
            response.headers["Server"] = "aserve"
        response.headers.update(extra)
        protocol.send_response(response)
        return b"".join(protocol.data_to_send()), Session(protocol)


class Session:
    """An open WebSocket: bytes in, whole messages (text as str) and the close out; messages
    and the close in, bytes to write out.

    The library parses and builds every frame but the commonest: a whole data message in one
    unfragmented, uncompressed frame, which `_fast_messages` reads (under 64 KiB) and `frame`
    writes directly. The library's generator-based parser and its Frame objects were about a
    third of the time a 1 KiB echo spent in the server (ws-echo went from 54k to 82k
    messages/s without them); the frames left to it are exactly those whose rules it knows
    (control frames, fragments, compression, limits, errors), and it is handed them at a
    frame boundary, with nothing of its own buffered.
    """

    __slots__ = ("_decoder", "_max_size", "_parts", "_protocol", "_reader", "_text", "closed")

    def __init__(self, protocol: ServerProtocol) -> None:
        self._protocol = protocol
        self._reader = protocol.reader
        self._max_size = protocol.max_message_size or 0
        # A fragmented message under way (RFC 6455 §5.4): its pieces, and for text the
        # decoder that checks each as it comes (a bad one fails at once, §8.1).
        self._parts: list[bytes] | None = None
        self._text: list[str] | None = None
        self._decoder: codecs.IncrementalDecoder | None = None
        self.closed: Closed | None = None

    @property
    def open(self) -> bool:
        return self._protocol.state is OPEN

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer: the messages they complete, and the close."""
        protocol = self._protocol
        events: list[Event] = []
        if (
            self._parts is None
            and self._text is None
            # Nothing of a frame buffered in the library (its reader's buffer, which it
            # keeps as a plain attribute): the data begins at a frame boundary.
            and not self._reader.buffer
            and protocol.state is OPEN
        ):
            data = self._fast_messages(data, events)
            if not data:
                return events
        protocol.receive_data(data)
        for frame in protocol.events_received():
            # A server's protocol yields only frames once the handshake is over.
            opcode = frame.opcode  # type: ignore[union-attr]
            if opcode is _TEXT or opcode is _BINARY or opcode is _CONT:
                if not self._data_frame(opcode, frame.fin, frame.data, events):  # type: ignore[union-attr]
                    break
            elif opcode is _CLOSE:
                break
        self._note_close(events)
        return events

    def _fast_messages(self, data: bytes, events: list[Event]) -> bytes:
        """Append the messages of the leading frames that need none of the library's rules
        (RFC 6455 §5.2: FIN set, no RSV bit, masked, text or binary, a 7- or 16-bit length
        within `--ws-max-size`); the bytes left from the first frame that does."""
        offset = 0
        end = len(data)
        max_size = self._max_size
        while end - offset >= 6:
            first = data[offset]
            second = data[offset + 1]
            opcode = first & 0x0F
            if first & 0xF0 != 0x80 or second & 0x80 == 0 or opcode not in (1, 2):
                break
            length = second & 0x7F
            start = offset + 2
            if length == 126:
                length = int.from_bytes(data[start : start + 2], "big")
                start += 2
            elif length == 127:
                break
            stop = start + 4 + length
            if stop > end or (max_size and length > max_size):
                break
            payload = apply_mask(data[start + 4 : stop], data[start : start + 4])
            if opcode == 1:
                try:
                    events.append(payload.decode())
                except UnicodeDecodeError:
                    break  # the library's path fails it with 1007 (see `_data_frame`)
            else:
                events.append(payload)
            offset = stop
        return data[offset:] if offset else data

    def frame(self, message: str | bytes) -> bytes | None:
        """The bytes of `message` as one frame, or None when the library must send it (the
        connection is closing, or an extension such as permessage-deflate applies)."""
        protocol = self._protocol
        if protocol.state is not OPEN or protocol.extensions:
            return None
        if type(message) is str:
            payload = message.encode()
            first = 0x81
        else:
            payload = message  # type: ignore[assignment]
            first = 0x82
        length = len(payload)
        if length < 126:
            return bytes((first, length)) + payload
        if length < 65536:
            return bytes((first, 126)) + length.to_bytes(2, "big") + payload
        return bytes((first, 127)) + length.to_bytes(8, "big") + payload

    def _data_frame(self, opcode: Opcode, fin: bool, data: Any, events: list[Event]) -> bool:
        """Add what a data frame completes to `events`; False when it failed the
        connection."""
        if type(data) is not bytes:
            data = bytes(data)
        try:
            if opcode is _TEXT:
                if fin:
                    events.append(data.decode())
                else:
                    self._decoder = _UTF8()
                    self._text = [self._decoder.decode(data)]
            elif opcode is _BINARY:
                if fin:
                    events.append(data)
                else:
                    self._parts = [data]
            elif self._decoder is not None and self._text is not None:
                self._text.append(self._decoder.decode(data, fin))
                if fin:
                    events.append("".join(self._text))
                    self._text = self._decoder = None
            elif self._parts is not None:
                self._parts.append(data)
                if fin:
                    events.append(b"".join(self._parts))
                    self._parts = None
        except UnicodeDecodeError as exc:
            # RFC 6455 §8.1: invalid UTF-8 in a text message fails the connection with 1007.
            self._protocol.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
            return False
        return True

    def receive_eof(self) -> list[Event]:
        """The peer closed its side: the close, if it was not there before."""
        self._protocol.receive_eof()
        events: list[Event] = []
        self._note_close(events)
        return events

    def _note_close(self, events: list[Event]) -> None:
        protocol = self._protocol
        if self.closed is not None or protocol.state is OPEN:
            return
        received = protocol.close_rcvd
        if received is None:
            # The connection failed (a protocol error, a message too big, an EOF): what the
            # app hears is the code sent, or 1006 when none was (RFC 6455 §7.1.5).
            sent = protocol.close_sent
            received = sent if sent is not None else Close(CloseCode.ABNORMAL_CLOSURE, "")
        self.closed = Closed(int(received.code), received.reason)
        events.append(self.closed)

    def send_text(self, text: str) -> None:
        self._protocol.send_text(text.encode())

    def send_bytes(self, data: bytes) -> None:
        self._protocol.send_binary(data)

    def ping(self, data: bytes) -> None:
        self._protocol.send_ping(data)

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake (RFC 6455 §7.1.2). Raises AppProtocolError for a code
        an endpoint may not send (§7.4)."""
        if self._protocol.state is not OPEN:
            return
        encoded = reason.encode()
        if len(encoded) > _MAX_REASON:
            # Cut at a character boundary: the reason is only ever shown to people.
            reason = encoded[:_MAX_REASON].decode(errors="ignore")
        try:
            Close(code, reason).check()
        except LibraryProtocolError as exc:
            raise AppProtocolError(f"invalid WebSocket close code {code!r}") from exc
        self._protocol.send_close(code, reason)

    def fail(self, code: int, reason: str) -> None:
        """Close at once with `code` (a ping unanswered, an app broken): no further frame is
        read."""
        if self._protocol.state is OPEN:
            self._protocol.fail(code, reason)
            self._note_close([])

    def data_to_send(self) -> list[bytes]:
        """Bytes to write; an empty one means: half-close the connection."""
        return self._protocol.data_to_send()

    def close_expected(self) -> bool:
        return self._protocol.close_expected()
