"""Sans-IO HTTP/1.1 server connection over httptools: bytes in, events out, bytes to write.

No sockets, no event loop, no clock: the caller feeds received bytes, pulls events, and asks
for the bytes of a response head, body chunks and end; it supplies the Date/Server lines.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus

import httptools

from aserve.errors import AppProtocolError, ProtocolError
from aserve.protocols.forwarded import FIELDS as FORWARDED_FIELDS
from aserve.types import Headers

# The request fields the parser looks at, found with one dict lookup per field: the chain of
# comparisons it replaced cost every other field one comparison per name. With the proxy
# fields among the names (callgrind, benchmarks/hotpath.py): a browser's 10-field head 169.3k
# instructions per request before, 167.2k after; a Host-only head (wrk's) 123.9k, 124.8k.
_HOST, _EXPECT, _TRANSFER_ENCODING, _CONTENT_LENGTH, _FORWARDED = "host", "expect", "te", "cl", "fw"
_FIELD_KINDS: dict[bytes, str] = {
    b"host": _HOST,
    b"expect": _EXPECT,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"content-length": _CONTENT_LENGTH,
    **dict.fromkeys(FORWARDED_FIELDS, _FORWARDED),
}


@dataclass(frozen=True, slots=True)
class Limits:
    """Byte and count limits on what a client may send.

    Each field is the `Config` setting named `limit_` + its name, which gives its default and
    the reason for it; the server builds these from the settings. `request_body` 0 means no
    limit on the request body.
    """

    request_line: int
    request_fields: int
    request_field_size: int
    request_head: int
    request_body: int
    pipeline: int
    drain: int


class Request:
    """A request head: method, target and lower-cased header names, as the client sent them."""

    __slots__ = (
        "expect_continue",
        "forwarded",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "target",
        "upgrade",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        http_version: str,
        headers: Headers,
        keep_alive: bool,
        expect_continue: bool,
        upgrade: bytes | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        self.headers = headers
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        # The protocols a bodiless request asks to switch to (its Upgrade field, lower-cased;
        # RFC 9110 §7.8); the bytes after it are not parsed until it is answered.
        self.upgrade = upgrade
        # It carries a proxy field (protocols.forwarded.FIELDS): only then are they looked for.
        self.forwarded = False

    def __repr__(self) -> str:
        return f"<Request {self.method!r} {self.target!r} HTTP/{self.http_version}>"


class Data:
    """A piece of the request body (de-chunked)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"<Data {len(self.data)} bytes>"


class EndOfMessage:
    """The request body is complete."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<EndOfMessage>"


END_OF_MESSAGE = EndOfMessage()


class ProtocolFailure:
    """The client broke the protocol: answer `status` (when `respond`) and close.
    `request_line` is what was understood of the offending request, for the log."""

    __slots__ = ("reason", "request_line", "respond", "status")

    def __init__(
        self, status: int, reason: str, respond: bool = True, request_line: str = ""
    ) -> None:
        self.status = status
        self.reason = reason
        self.respond = respond
        self.request_line = request_line

    def __repr__(self) -> str:
        return f"<ProtocolFailure {self.status} {self.reason!r}>"


Event = Request | Data | EndOfMessage | ProtocolFailure

# RFC 9110 §5.6.2: a field name is a token.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.5: CR, LF and NUL are never allowed in a field value.
_FORBIDDEN_IN_VALUE = re.compile(rb"[\x00\r\n]")
# RFC 9112 §4: reason-phrase = *( HTAB / SP / VCHAR / obs-text ).
_FORBIDDEN_IN_REASON = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_PHRASES = {int(s): s.phrase.encode("ascii") for s in HTTPStatus}
# How much of what arrived is fed to httptools at once outside a request body. httptools
# parses all it is fed, and one read can hold thousands of tiny pipelined requests: fed in
# slices, parsing stops soon after the pipeline is full (see `_parsing_waits`), the rest of
# the read waiting in `_held`.
_SLICE = 2048
# The longest chunk-size line, extensions included (RFC 9112 §7.1.1): llhttp does not buffer
# extensions, but a body could trickle them forever without a bound; 4 KiB is Node's.
CHUNK_LINE_MAX = 4096
_STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, phrase) for code, phrase in _PHRASES.items()}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_FRAMING_FIELDS = (b"content-length", b"transfer-encoding")
# Response field names that response_head() treats specially; every other field is copied.
_SPECIAL_FIELDS = frozenset((*_FRAMING_FIELDS, b"connection", b"server", b"date"))
# Response fields already validated and formatted, by name then value, for the fields copied
# as they are: apps send the same few over and over (Content-Type, Vary...), and two dict
# lookups cost a fifth of the checks. By name then value rather than by (name, value): no
# tuple to build and hash per field, and bytes objects an app (or the WSGI runner) sends again
# are found by their cached hashes. Bounded: once full, new fields are only checked; and long
# values (cookies, tokens), which rarely repeat, are never kept: at most ~1.2 MiB.
FieldMemo = dict[bytes, dict[bytes, bytes]]
FIELD_MEMO_NAMES = 64
FIELD_MEMO_VALUES = 64
FIELD_MEMO_VALUE_MAX = 256
# Content-Length as apps spell it: its value differs per response, so it is never memoised.
_LENGTH_NAMES = frozenset((b"content-length", b"Content-Length", b"Content-length"))


def status_line(status: int, reason: bytes | None = None) -> bytes:
    """The status line of a final response; `reason` replaces the standard phrase."""
    if not isinstance(status, int) or not 200 <= status <= 599:
        # A 1xx is interim: as the final status it would leave the client waiting.
        raise AppProtocolError(f"invalid final response status {status!r}")
    status = int(status)  # an IntEnum such as HTTPStatus.OK formats as its name
    if reason is None or reason == _PHRASES.get(status):
        line = _STATUS_LINES.get(status)
        if line is not None:
            return line
        reason = b""
    elif _FORBIDDEN_IN_REASON.search(reason) is not None:
        raise AppProtocolError(f"invalid reason phrase {reason!r}")
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


class _Part(enum.Enum):
    """Which part of a request message the parser is in."""

    BETWEEN = "between messages"
    HEAD = "head"
    BODY = "body"
    # After a chunk-size line: trailer fields may follow, buffered by httptools like a head.
    TRAILERS = "trailers"


# The parts as plain names: an enum member's attribute lookup costs more than the test.
_BETWEEN, _HEAD, _BODY, _TRAILERS = _Part.BETWEEN, _Part.HEAD, _Part.BODY, _Part.TRAILERS


class _Message:
    """What the head of the request message being parsed has said so far; a new one per
    message, so nothing of the previous message leaks into the next."""

    __slots__ = (
        "body_size",
        "declared_length",
        "expect",
        "fields_size",
        "forwarded",
        "has_body",
        "headers",
        "host_count",
        "length",
        "raw",
        "unsupported_coding",
        "url",
    )

    def __init__(self, first_feed: bytes) -> None:
        # The bytes the head arrived in (the first feed may also hold the end of the message
        # before): where its request line is checked (see `on_headers_complete`).
        self.raw = [first_feed]
        self.url = b""
        self.headers: Headers = []
        self.fields_size = 0
        self.host_count = 0
        self.expect = False
        self.forwarded = False
        self.has_body = False
        self.declared_length = b""
        # The Content-Length once the head is complete (None: chunked, or no body).
        self.length: int | None = None
        self.body_size = 0
        self.unsupported_coding: bytes | None = None


class _AppFraming:
    """What the app's response fields other than a plain Content-Length say of the framing."""

    __slots__ = ("chunked", "close", "content_length", "replaced")

    def __init__(self) -> None:
        self.content_length: int | None = None
        self.chunked = False
        self.close = False
        # Default fields (Date, Server) the app gave itself.
        self.replaced: list[bytes] = []


# How a response body is delimited: whether there is one, chunked, its Content-Length, the
# connection's keep-alive, and the fields that say so (see body_framing).
Framing = tuple[bool, bool, int | None, bool, bytes]


def body_framing(
    status: int,
    head: bool,
    http_version: str,
    content_length: int | None,
    chunked: bool,
    keep_alive: bool,
) -> Framing:
    """Decide the framing of a response (RFC 9112 §6.1-6.3) to a request of `http_version` (a
    HEAD request when `head`), from what the app's fields asked for."""
    if chunked and content_length is not None:
        raise AppProtocolError("response has both Content-Length and Transfer-Encoding")
    # RFC 9112 §6.3: 1xx, 204 and 304 responses never carry content.
    body = status >= 200 and status not in (204, 304)
    fields = b""
    if not body:
        chunked = False
    elif content_length is None and not chunked:
        if http_version == "1.1":
            # Also for HEAD: RFC 9110 §9.3.2 wants the fields a GET would get, and a HEAD
            # response with no framing field makes some clients (Node's) drop the connection.
            chunked = True
            fields = b"transfer-encoding: chunked\r\n"
        elif not head:
            # HTTP/1.0 has no chunking: the end of the body is the end of the connection.
            keep_alive = False
    if keep_alive:
        if http_version == "1.0":
            fields += b"connection: keep-alive\r\n"
    else:
        fields += b"connection: close\r\n"
    body = body and not head
    return body, chunked and body, content_length if body else None, keep_alive, fields


def _field_lines(
    headers: Headers, status: int, http_version: str, memo: FieldMemo, lines: list[bytes]
) -> tuple[int | None, _AppFraming | None]:
    """Check the app's response fields (RFC 9110 §5.5, §5.6.2) and append their lines to
    `lines`, leaving out those the framing decides. Returns a plain Content-Length, and what
    the other fields the framing depends on said (None when there were none)."""
    content_length: int | None = None
    special: _AppFraming | None = None
    # RFC 9110 §8.6, RFC 9112 §6.1: no Content-Length or Transfer-Encoding in a 1xx or 204.
    framing_allowed = status >= 200 and status != 204
    for name, value in headers:
        try:
            values = memo.get(name)
            line = values.get(value) if values is not None else None
        except TypeError:  # unhashable (a bytearray): checked like a new field below
            line = None
        if line is not None:
            lines.append(line)
            continue
        # Content-Length of ASCII digits only: nothing else to check.
        if (
            type(name) is bytes
            and name in _LENGTH_NAMES
            and type(value) is bytes
            and value.isdigit()
        ):
            if framing_allowed:
                content_length = int(value)
                lines.append(b"%s: %s\r\n" % (name, value))
            continue
        check_field(name, value)
        lname = bytes(name).lower()
        if lname not in _SPECIAL_FIELDS:
            lines.append(_remember_field(memo, name, value))
            continue
        if special is None:
            special = _AppFraming()
        if _special_field(special, lname, value, framing_allowed, http_version):
            lines.append(b"%s: %s\r\n" % (name, value))
    return content_length, special


def check_field(name: bytes, value: bytes) -> None:
    """Raise AppProtocolError unless `name: value` may be written as a response field line."""
    if _TOKEN.fullmatch(name) is None:
        raise AppProtocolError(f"invalid response header name {name!r}")
    if _FORBIDDEN_IN_VALUE.search(value) is not None:
        raise AppProtocolError(f"invalid response header value {value!r}")


def _trailer_lines(trailers: Headers) -> bytes:
    """The checked lines of a trailer section (RFC 9110 §6.5.1: none that frames the message
    or routes the connection)."""
    lines = []
    for name, value in trailers:
        check_field(name, value)
        lname = bytes(name).lower()
        if lname in _SPECIAL_FIELDS or lname == b"trailer":
            raise AppProtocolError(f"{name!r} is not allowed in a trailer section")
        lines.append(b"%s: %s\r\n" % (name, value))
    return b"".join(lines)


def _remember_field(memo: FieldMemo, name: bytes, value: bytes) -> bytes:
    line = b"%s: %s\r\n" % (name, value)
    if type(name) is bytes and type(value) is bytes and len(value) <= FIELD_MEMO_VALUE_MAX:
        values = memo.get(name)
        if values is None:
            if len(memo) < FIELD_MEMO_NAMES:
                memo[name] = {value: line}
        elif len(values) < FIELD_MEMO_VALUES:
            values[value] = line
    return line


def _upgrade_tokens(headers: Headers) -> bytes:
    """The Upgrade field's protocols, lower-cased (b"" for a CONNECT, which has none)."""
    return b",".join(value.lower() for name, value in headers if name == b"upgrade")


def _special_field(
    framing: _AppFraming, lname: bytes, value: bytes, framing_allowed: bool, http_version: str
) -> bool:
    """Note what a field the framing depends on says; whether its line is sent as it is."""
    if lname == b"connection":
        if b"close" in value.lower():
            framing.close = True
        return False  # the framing decides this field
    if lname in (b"server", b"date"):
        framing.replaced.append(lname)
        return True
    if not framing_allowed:
        return False
    if lname == b"content-length":
        # RFC 9110 §8.6: 1*DIGIT; int() would also take "+1", "-0" or "1_0".
        if not value.strip(b" \t").isdigit():
            raise AppProtocolError(f"invalid Content-Length {value!r}")
        framing.content_length = int(value)
        return True
    # Transfer-Encoding: the app asked for chunking by name; aserve encodes the chunks.
    if value.lower() != b"chunked":
        raise AppProtocolError(f"unsupported Transfer-Encoding {value!r}")
    # RFC 9112 §6.1: not to an HTTP/1.0 client; the close ends the body instead.
    framing.chunked = http_version != "1.0"
    return framing.chunked


def _check_head(message: _Message, method: bytes, version: str, upgrade: bool) -> None:
    """Refuse a head llhttp accepted that HTTP/1.1 does not (raises ProtocolError)."""
    if version not in ("1.1", "1.0"):
        raise ProtocolError(f"unsupported HTTP version {version}", 400)
    # llhttp also takes RTSP/x.x and ICE/x.x request lines, and reports their version as an
    # HTTP one: only the bytes tell the protocol apart (llhttp allows several spaces). The
    # substring tests come first: they cost less than any regular expression call.
    raw = message.raw[0] if len(message.raw) == 1 else b"".join(message.raw)
    if (b" RTSP/" in raw or b" ICE/" in raw) and re.search(
        re.escape(message.url) + rb" +(?:RTSP|ICE)/", raw
    ):
        raise ProtocolError("not an HTTP/1.x request line", 400)
    # RFC 9112 §3.2: a 1.1 request without Host, and any request with several, gets 400.
    if message.host_count > 1 or (message.host_count == 0 and version == "1.1"):
        raise ProtocolError("missing or duplicate Host header", 400)
    # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty (§6.3: 400).
    if version == "1.0" and any(name == b"transfer-encoding" for name, _ in message.headers):
        raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request", 400)
    # RFC 9112 §3.2.4: the asterisk-form is only for a server-wide OPTIONS.
    if message.url == b"*" and method != b"OPTIONS":
        raise ProtocolError("asterisk-form target outside OPTIONS", 400)
    if message.unsupported_coding is not None:
        # Checked once the head is complete, so that llhttp's 400 for Transfer-Encoding beside
        # Content-Length comes first. llhttp refuses codings after chunked; one before it
        # (gzip, chunked) it passes on, and aserve decodes none (RFC 9112 §6.1: 501).
        raise ProtocolError(f"unsupported Transfer-Encoding {message.unsupported_coding!r}", 501)
    if upgrade and message.has_body and method == b"CONNECT":
        # RFC 9110 §9.3.6: a CONNECT request has no content, and llhttp would take what
        # follows the head for the tunnel's bytes.
        raise ProtocolError("request body with CONNECT", 400)


class Connection:
    """One server-side HTTP/1.1 connection: a request parser and a response serializer.

    `receive_data()` then `next_event()` until None. While a response is in progress
    (`response_pending`), a pipelined request waits in the queue and `next_event()` returns
    None at it; `start_next_cycle()` after the response releases it.
    """

    def __init__(self, limits: Limits, field_memo: FieldMemo | None = None) -> None:
        self.limits = limits
        # See FieldMemo: a server shares one among its connections.
        self._field_memo: FieldMemo = {} if field_memo is None else field_memo
        self._parser = httptools.HttpRequestParser(self)
        self._events: deque[Event] = deque()
        self._broken = False
        # Receiving: where the parser is, and the message being parsed.
        self._part = _BETWEEN
        self._message = _Message(b"")
        # What is being fed to httptools (a callback learns where its message began).
        self._feeding = b""
        # While a chunk-size line is under way: the bytes fed for it (see `CHUNK_LINE_MAX`).
        self._in_chunk_line = False
        self._fresh_chunk_line = False
        self._chunk_line_bytes = 0
        # Bytes fed since the current head (or trailer section) began, and whether the feed
        # that began it is still to be counted (see `_check_fed`).
        self._head_bytes = 0
        self._fresh_head = False
        # Bytes received but not parsed yet: parsing waits while the pipeline is full, or an
        # upgrade request (`_upgrade`) is not answered.
        self._held = b""
        self._upgrade: Request | None = None
        # An Upgrade request with a body is served as plain HTTP, and llhttp skips such a body
        # (it completes the message at the head): a fresh parser is fed a head with only its
        # framing, silently, and parses the body (see `_after_upgrade`).
        self._body_after_upgrade = False
        self._silent = False
        # Requests parsed and not yet handed out by `next_event()`.
        self._queued = 0
        self._discarding = False
        self._discard_left = 0
        # The request being answered and the state of its response.
        self.request: Request | None = None
        self._request_done = False
        self._continue_sent = False
        self.response_pending = False
        self.response_started = False
        self._chunked = False
        self._body_allowed = True
        self._length_left: int | None = None
        # Body bytes of the response sent so far (what the access log reports), and those its
        # Content-Length announced that never came.
        self.body_sent = 0
        self.body_missing = 0
        self.keep_alive = True

    # -- receiving --------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; events become available from `next_event()`."""
        held = self._held
        if held:
            data = held + data
            self._held = b""
        if self._broken:
            return  # nothing after a failure is parsed
        if (
            len(data) <= _SLICE
            and not self._queued
            and self._upgrade is None
            and self._part is not _BODY
        ):
            # The common read: one request, nothing waiting to be parsed.
            unparsed = self._feed(data)
            if unparsed:
                self._parse(unparsed)
            return
        self._parse(data)

    def _parsing_waits(self) -> bool:
        """Whether parsing must stop until a response: an upgrade request is not answered yet
        (nothing after it is parsed), or the requests parsed ahead of the one being answered
        fill the pipeline. httptools keeps its place in a message cut short."""
        if self._upgrade is not None:
            return self._part is _BETWEEN
        queued = self._queued
        # With none queued, the message being parsed is the one to answer next: never held.
        return queued > 0 and queued >= self.limits.pipeline + (self.request is None)

    def _parse(self, data: bytes) -> None:
        while data and not self._broken:
            if self._parsing_waits():
                self._held = data
                return
            piece = data
            if self._part is _BODY:
                message = self._message
                size = message.length - message.body_size if message.length is not None else 0
                if size > 0:
                    # The rest of a sized body, as received (compiled code copies on any
                    # slice, even of the whole); what follows it in slices.
                    if size >= len(data):
                        piece, data = data, b""
                    else:
                        piece, data = data[:size], data[size:]
                    self._sized_body(piece)
                    continue
            elif len(data) > _SLICE:
                piece = data[:_SLICE]
            data = data[len(piece) :] if piece is not data else b""
            unparsed = self._feed(piece)
            if unparsed:
                data = unparsed + data if data else unparsed

    def _feed(self, data: bytes) -> bytes:
        """Give `data` to httptools; what it did not parse (after an upgrade request)."""
        self._feeding = data
        if self._part is _HEAD:
            self._message.raw.append(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            self._after_upgrade()
            return data[offset:]
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if not self._broken:
                if isinstance(cause, ProtocolError):
                    self._fail(cause.status, str(cause))
                else:
                    self._fail(400, f"invalid request: {cause or exc}")
            return b""
        except httptools.HttpParserInvalidMethodError:
            self._fail(400, "invalid request method")
            return b""
        except httptools.HttpParserError as exc:
            self._fail(400, f"invalid request: {exc}")
            return b""
        self._check_fed(data)
        return b""

    def _sized_body(self, data: bytes) -> None:
        """Bytes of a Content-Length body that arrived after its head, handed on without
        httptools, which would copy them into a new bytes object per callback: an upload
        reaches the app in the very objects the transport read. httptools is left in the
        middle of the body, so the message ends with a fresh parser, as after an upgrade."""
        try:
            self._body(data)
        except ProtocolError as exc:
            if not self._broken:
                self._fail(exc.status, str(exc))
            return
        message = self._message
        if message.body_size == message.length:
            self._parser = httptools.HttpRequestParser(self)
            self.on_message_complete()

    def _after_upgrade(self) -> None:
        """llhttp stops after the head of a request that asks to switch protocols and treats
        what follows as the new protocol. aserve switches only when the app accepts (a
        WebSocket): until the request is answered, what follows waits; then it is HTTP again
        (RFC 9110 §7.8 lets a server ignore Upgrade)."""
        self._parser = httptools.HttpRequestParser(self)
        if not self._body_after_upgrade:
            return
        self._body_after_upgrade = False
        message = self._message
        # llhttp skipped the body: parse it as the body of a plain request, never as what
        # follows, by feeding a fresh parser a head with the same framing, silently.
        framing = (
            b"content-length: %d" % message.length
            if message.length is not None
            else b"transfer-encoding: chunked"
        )
        self._silent = True
        try:
            self._parser.feed_data(b"POST / HTTP/1.1\r\n%s\r\n\r\n" % framing)
        finally:
            self._silent = False
        self._part = _BODY

    def _check_fed(self, data: bytes) -> None:
        """Limits that only the bytes fed can tell, after the parser took `data`."""
        if self._part is not _BODY:
            # httptools keeps a partial field in memory without bound: cap the head by bytes
            # fed too. The feed that began this head may hold the previous body, so skip it.
            if self._fresh_head:
                self._fresh_head = False
            else:
                self._head_bytes += len(data)
                if self._head_bytes > self.limits.request_head + self.limits.request_field_size:
                    self._fail_head_too_large()
        elif self._in_chunk_line:
            # Likewise for a chunk-size line, skipping the feed that began it.
            if self._fresh_chunk_line:
                self._fresh_chunk_line = False
            else:
                self._chunk_line_bytes += len(data)
                if self._chunk_line_bytes > CHUNK_LINE_MAX:
                    self._fail(400, "chunk size line too long")

    @property
    def head_in_progress(self) -> bool:
        """Part of a request head has arrived and the rest has not."""
        return self._part is _HEAD and not self._broken

    def _fail_head_too_large(self) -> None:
        # on_url refuses a target over its limit as it arrives, so the excess is in the fields
        # unless the request line limit is set above the head's.
        if len(self._message.url) >= self.limits.request_head:
            self._fail(414, "request line too long")
        else:
            self._fail(431, "request header section too large")

    def _fail(self, status: int, reason: str) -> None:
        self._broken = True
        # In a body drained after its response, a failure ends the connection silently: a
        # second response to the same request would desynchronise the client.
        self._events.append(
            ProtocolFailure(status, reason, not self._discarding, self._request_line())
        )

    def _request_line(self) -> str:
        """What was understood of the request being parsed, for the log ("" for nothing)."""
        url = self._message.url
        if not url or self._part is _BETWEEN:
            return ""
        parser = self._parser
        method = parser.get_method().decode("ascii", "replace")
        return f"{method} {url.decode('ascii', 'replace')} HTTP/{parser.get_http_version()}"

    def next_event(self) -> Event | None:
        """The next event, or None when nothing is ready (or a pipelined request must wait)."""
        events = self._events
        if not events:
            return None
        event = events[0]
        if type(event) is Request:
            if self.request is not None:
                # Still in the previous cycle until `start_next_cycle()`, whose verdict on
                # keep-alive the next request must not overwrite.
                return None
            events.popleft()
            self._queued -= 1
            self._begin_cycle(event)
            return event
        if type(event) is ProtocolFailure and self.request is not None and self._request_done:
            # The failure is in a later pipelined message: answer the current request first.
            return None
        events.popleft()
        if event is END_OF_MESSAGE:
            self._request_done = True
        return event

    @property
    def has_queued_request(self) -> bool:
        """Input waits for the current response: a pipelined request (or a failure) is parsed,
        or received bytes are held unparsed. Reading more can wait too."""
        # A failure is always the last event queued (parsing stops there), so while `_broken`
        # with events left, it is among them.
        return self.response_pending and (
            ((self._queued > 0 or self._broken) and bool(self._events)) or bool(self._held)
        )

    # httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._silent:
            return
        self._part = _HEAD
        self._message = _Message(self._feeding)
        self._fresh_head = True
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        if self._silent:
            return
        message = self._message
        message.url += url
        if len(message.url) > self.limits.request_line:
            raise ProtocolError("request target too long", 414)

    # One flat function: it runs for every field of every request, and a helper would add a
    # call per field.
    def on_header(self, name: bytes, value: bytes) -> None:  # noqa: PLR0912
        if self._silent:
            return
        limits = self.limits
        message = self._message
        size = len(name) + len(value)
        if size > limits.request_field_size:
            raise ProtocolError("request header field too large", 431)
        message.fields_size += size + 4
        if message.fields_size > limits.request_head:
            raise ProtocolError("request header section too large", 431)
        if len(message.headers) >= limits.request_fields:
            raise ProtocolError("too many request header fields", 431)
        if self._part is not _HEAD:
            # A trailer field: RFC 9110 §6.5.1 forbids merging it into the header section.
            return
        name = name.lower()
        kind = _FIELD_KINDS.get(name)
        if kind is None:
            # RFC 9112 §5: OWS around a field value is not part of it (httptools keeps the
            # trailing).
            message.headers.append((name, value.rstrip(b" \t")))
            return
        if kind is _TRANSFER_ENCODING:
            if b"\t" in value:
                # llhttp skips only spaces around codings and would fail the body later, after
                # the app had the request: refuse the request itself.
                raise ProtocolError("tab in Transfer-Encoding", 400)
            value = value.rstrip(b" ")
            if value.lower() != b"chunked":
                message.unsupported_coding = value
            message.has_body = True
        else:
            value = value.rstrip(b" \t")
            if kind is _HOST:
                message.host_count += 1
            elif kind is _EXPECT:
                message.expect = value.lower() == b"100-continue"
            elif kind is _CONTENT_LENGTH:
                if value not in (b"0", b""):
                    message.has_body = True
                    message.declared_length = value
            else:
                message.forwarded = True
        message.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._silent:
            return
        self._fresh_head = False
        message = self._message
        parser = self._parser
        version = parser.get_http_version()
        method = parser.get_method()
        upgrade = parser.should_upgrade()
        _check_head(message, method, version, upgrade)
        if message.declared_length:
            # llhttp has already checked that it is 1*DIGIT.
            message.length = int(message.declared_length)
            limit = self.limits.request_body
            if limit and message.length > limit:
                raise ProtocolError("request body larger than the limit", 413)
        self._queued += 1
        request = Request(
            method,
            message.url,
            version,
            message.headers,
            parser.should_keep_alive(),
            message.expect and version == "1.1",
        )
        if message.forwarded:
            request.forwarded = True
        if message.has_body and message.length is None:
            self._start_chunk_line()
        if upgrade and message.has_body:
            self._body_after_upgrade = True  # served as plain HTTP (see _after_upgrade)
        elif upgrade:
            # It may be switched: nothing after it is parsed until it is answered.
            request.upgrade = _upgrade_tokens(message.headers)
            self._upgrade = request
        self._events.append(request)
        # Only a head found valid moves on: a refused one is no body's start (see
        # `_more_body_than_drained`).
        self._part = _BODY

    def on_chunk_header(self) -> None:
        # Trailer fields may follow, buffered by httptools like head fields: cap the bytes fed
        # until this chunk's data (or the end of the trailers) shows up.
        self._part = _TRAILERS
        self._fresh_head = True
        self._head_bytes = 0
        self._in_chunk_line = False

    def on_chunk_complete(self) -> None:
        self._part = _BODY
        self._start_chunk_line()

    def _start_chunk_line(self) -> None:
        self._in_chunk_line = True
        self._fresh_chunk_line = True
        self._chunk_line_bytes = 0

    def on_body(self, body: bytes) -> None:
        self._part = _BODY
        self._body(body)

    def _body(self, body: bytes) -> None:
        message = self._message
        message.body_size += len(body)
        if self._discarding:
            self._discard_left -= len(body)
            if self._discard_left < 0:
                # The response is already out: close without another one.
                self.keep_alive = False
                self._broken = True
                self._events.append(ProtocolFailure(413, "unread body too large", False))
                raise ProtocolError("unread body too large", 413)
            return
        limit = self.limits.request_body
        # A chunked body has no declared length: count it as it arrives.
        if limit and message.body_size > limit:
            raise ProtocolError("request body larger than the limit", 413)
        self._events.append(Data(body))

    def on_message_complete(self) -> None:
        self._in_chunk_line = False
        if self._body_after_upgrade:
            return  # llhttp's end of an upgrade request at its head: its body is still to come
        # Bytes that follow before the next message begins count towards its head; the feed
        # that completed this one may hold much body, so it is not counted.
        self._part = _BETWEEN
        self._fresh_head = True
        self._head_bytes = 0
        if self._discarding:
            self._discarding = False
            return
        self._events.append(END_OF_MESSAGE)

    # -- sending ----------------------------------------------------------------------------

    def _begin_cycle(self, request: Request) -> None:
        self.request = request
        self._request_done = False
        self._continue_sent = False
        self.response_pending = True
        self.response_started = False
        self.body_sent = 0
        self.body_missing = 0
        self.keep_alive = request.keep_alive

    def continue_bytes(self) -> bytes:
        """The interim 100 response, the first time the app wants a body that was held back."""
        request = self.request
        if (
            request is None
            or not request.expect_continue
            or self._continue_sent
            or self.response_started
            or self._request_done
        ):
            return b""
        self._continue_sent = True
        return _CONTINUE

    def response_head(
        self, status: int, headers: Headers, default_headers: bytes, reason: bytes | None = None
    ) -> bytes:
        """Bytes of the status line and fields; `default_headers` holds Date and Server lines
        (one of which the app may replace), `reason` the app's own reason phrase.

        Raises AppProtocolError for a header that is not valid HTTP; nothing is then sent.
        """
        request = self.request
        if request is None or not self.response_pending:
            raise AppProtocolError("no request to respond to")
        if self.response_started:
            raise AppProtocolError("response already started")
        version = request.http_version
        lines = [status_line(status, reason)]
        content_length, special = _field_lines(headers, status, version, self._field_memo, lines)
        keep_alive = self.keep_alive
        chunked = False
        if special is not None:
            if special.content_length is not None:
                content_length = special.content_length
            chunked = special.chunked
            keep_alive = keep_alive and not special.close
        if request.expect_continue and not self._continue_sent and not self._request_done:
            # The announced body may still come: `start_next_cycle` will close, so say so now
            # (RFC 9110 §10.1.1).
            keep_alive = False
        elif keep_alive and not self._request_done and self._more_body_than_drained():
            # Never promise a connection that the close after an undrained body would break.
            keep_alive = False
        body, chunked, length, keep_alive, fields = body_framing(
            status, request.method == b"HEAD", version, content_length, chunked, keep_alive
        )
        lines.append(fields)
        if special is not None and special.replaced:
            replaced = special.replaced
            lines.extend(
                line + b"\r\n"
                for line in default_headers.split(b"\r\n")
                if line and line.partition(b":")[0].lower() not in replaced
            )
        else:
            lines.append(default_headers)
        lines.append(b"\r\n")
        self.keep_alive = keep_alive
        self.response_started = True
        self._chunked = chunked
        self._body_allowed = body
        self._length_left = length
        return b"".join(lines)

    def body_bytes(self, data: bytes) -> bytes:
        """Bytes that carry `data` as the next piece of the response body."""
        if not self.response_started:
            raise AppProtocolError("response body before the response start")
        if not data or not self._body_allowed:
            return b""
        self.body_sent += len(data)
        if self._length_left is not None:
            self._length_left -= len(data)
            if self._length_left < 0:
                raise AppProtocolError("response body longer than its Content-Length")
        if self._chunked:
            return b"%x\r\n%s\r\n" % (len(data), data)
        return data

    def body_parts(self, parts: list[bytes]) -> list[bytes]:
        """Buffers that carry `parts`, in order, as the next piece of the response body: a
        writev of them copies nothing, where joining them first copies every byte."""
        if not self.response_started:
            raise AppProtocolError("response body before the response start")
        size = 0
        for part in parts:
            size += len(part)
        if not size or not self._body_allowed:
            return []
        self.body_sent += size
        if self._length_left is not None:
            self._length_left -= size
            if self._length_left < 0:
                raise AppProtocolError("response body longer than its Content-Length")
        if self._chunked:
            # One chunk for the lot; an empty part inside it is harmless.
            return [b"%x\r\n" % size, *parts, b"\r\n"]
        return parts

    def count_body(self, size: int) -> None:
        """Count `size` body bytes that go out by another path (sendfile) in a response with a
        Content-Length (see `body_left`)."""
        left = self.body_left
        if left is None or size > left:
            raise AppProtocolError("no room in the response's Content-Length for a file")
        self.body_sent += size
        self._length_left = left - size

    @property
    def body_left(self) -> int | None:
        """Body bytes the response's Content-Length still announces (None: not framed by one,
        or a response without a body, such as one to HEAD: see `body_allowed`)."""
        return self._length_left if self._body_allowed and not self._chunked else None

    def end_bytes(self, trailers: Headers | None = None) -> bytes:
        """Bytes that end the response body, with `trailers` after it when it is chunked (RFC
        9112 §7.1.2; otherwise they are dropped, as RFC 9110 §6.5 allows); the cycle is then
        over (see `start_next_cycle`). Raises AppProtocolError for an invalid trailer field."""
        if not self.response_started:
            raise AppProtocolError("response end before the response start")
        if trailers:
            # Checked before anything changes: an invalid one leaves the response unended.
            lines = _trailer_lines(trailers)
            if self._chunked:  # (and so no Content-Length to fall short of)
                self.response_pending = False
                return b"0\r\n%s\r\n" % lines
        if self._length_left:
            # The app sent less than it announced: the client can only see that by a close.
            self.keep_alive = False
            self.body_missing = self._length_left
        self.response_pending = False
        if self._chunked:
            return b"0\r\n\r\n"
        return b""

    def interim_response(self, status: int, headers: Headers) -> bytes:
        """An informational response before the final one (103 Early Hints, RFC 8297); b""
        to an HTTP/1.0 client, which may not understand one (RFC 9110 §15.2)."""
        request = self.request
        if request is None or self.response_started:
            raise AppProtocolError("an interim response after the final one began")
        if not isinstance(status, int) or not 100 <= status <= 199 or status == 101:
            raise AppProtocolError(f"invalid interim response status {status!r}")
        if request.http_version == "1.0":
            return b""
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _PHRASES.get(status, b""))]
        for name, value in headers:
            check_field(name, value)
            lines.append(b"%s: %s\r\n" % (name, value))
        lines.append(b"\r\n")
        return b"".join(lines)

    def start_next_cycle(self) -> bool:
        """After a response: release a pipelined request. False when the connection must close.

        Body left unread by the app is discarded up to `Limits.drain` bytes so the connection
        can be reused; a client still waiting for `100 Continue` is never sent one, so the
        connection closes instead (RFC 9110 §10.1.1).
        """
        if self.response_pending:
            raise AppProtocolError("the response is not complete")
        if not self.keep_alive:
            return False
        events = self._events
        while events and type(events[0]) in (Data, EndOfMessage):
            if events.popleft() is END_OF_MESSAGE:
                self._request_done = True
        request = self.request
        if not self._request_done:
            if request is not None and request.expect_continue and not self._continue_sent:
                self.keep_alive = False
                return False
            self._discarding = True
            self._discard_left = self.limits.drain
        if self._upgrade is request:
            self._upgrade = None  # it was answered without a switch: what follows is HTTP
        self.request = None
        held = self._held
        if held:
            self._held = b""
            self._parse(held)
        return True

    def switch_protocols(self) -> bytes:
        """The upgrade request being answered was answered with a 101: the connection is no
        longer HTTP. The bytes received after that request, which are the new protocol's
        (RFC 9110 §15.2.2); nothing more is parsed."""
        request = self.request
        if request is None or self._upgrade is not request or self.response_started:
            raise AppProtocolError("no upgrade request waits for its answer")
        held, self._held = self._held, b""
        self._upgrade = None
        self._broken = True
        self.response_started = True
        self.response_pending = False
        self.keep_alive = False
        return held

    def _more_body_than_drained(self) -> bool:
        """Whether more of the current request's body may still arrive than `Limits.drain`
        lets `start_next_cycle` read and discard (RFC 9112 §9.3: the connection is reusable
        only once the request is read whole)."""
        if (
            self._request_done
            or self._queued
            or (self._part is not _BODY and self._part is not _TRAILERS)
        ):
            return False  # its message is parsed to the end
        message = self._message
        if message.length is None:
            return True  # chunked: there is no telling how much is left
        return message.length - message.body_size > self.limits.drain

    def error_response(
        self,
        status: int,
        default_headers: bytes,
        message: str = "",
        *,
        body: bytes | None = None,
        content_type: bytes = b"text/plain; charset=utf-8",
    ) -> bytes:
        """A complete error response that ends the connection: `message` as plain text (the
        status's phrase by default), or `body` of `content_type`."""
        if body is None:
            body = (message or HTTPStatus(status).phrase).encode("utf-8", "replace") + b"\n"
        self.keep_alive = False
        self.response_started = True
        self.response_pending = False
        self.body_sent = len(body)
        return b"".join(
            (
                status_line(status),
                b"content-type: %s\r\n" % content_type,
                b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n",
                default_headers,
                b"\r\n",
                body,
            )
        )
