"""`--server wsgiref`: runserver's serving model (a thread per connection on the standard
library's HTTP server and wsgiref's handler, HTTP/1.1 keep-alive, as Django's basehttp) with
aserve's request limits and timeouts, decoded chunked bodies, access log and signals."""

from __future__ import annotations

import contextlib
import contextvars
import email.parser
import http.client
import io
import logging
import math
import re
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, NoReturn
from wsgiref import simple_server
from wsgiref.handlers import SimpleHandler, format_date_time
from wsgiref.headers import Headers

from aserve import __version__
from aserve.config import Config
from aserve.errors import AppLoadError, AppProtocolError, ClientDisconnected, ProtocolError
from aserve.loader import LoadedApp, load
from aserve.logs import ThreadedAccessLog, configure
from aserve.signals import StopSignals
from aserve.sockets import bound, listening_url
from aserve.types import Environ, WSGIApp

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

logger = logging.getLogger("aserve.error")

# After a refusal, or a close with request body unread, how long to read and drop what the
# client still sends, so that closing does not reset the connection under the response
# (RFC 9112 §9.6): the main mode's 2 s, Apache's SECONDS_TO_LINGER.
LINGER = 2.0

_BUFFER = 65536
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_HTTP_VERSION = re.compile(r"HTTP/[0-9]\.[0-9]")
# RFC 9110 §8.6: 1*DIGIT (str.isdigit() would also take other scripts' digits).
_DIGITS = re.compile(r"[0-9]+")
# RFC 9112 §7.1: chunk-size [ chunk-ext ]; extensions are ignored, 16 hex digits are 64 bits.
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")


class _Stop(BaseException):
    """Raised by the signal handler to leave serve_forever()."""


class ThreadingWSGIServer(socketserver.ThreadingMixIn, simple_server.WSGIServer):
    """wsgiref's server with a thread per connection, as `django.core.servers.basehttp`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, sock: socket.socket, app: WSGIApp, config: Config) -> None:
        super().__init__(sock.getsockname(), WSGIRequestHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        sock.setblocking(True)
        address = sock.getsockname()
        # Not socket.getfqdn(): a DNS lookup at start-up buys nothing on a dev server.
        self.server_name = address[0] if isinstance(address, tuple) else "localhost"
        self.server_port = address[1] if isinstance(address, tuple) else 0
        self.setup_environ()
        self.app = app
        self.config = config
        # Each request runs in a fresh copy of this, as in the main mode: one request's
        # context variables never leak into the next on a keep-alive connection's thread.
        self.context = contextvars.copy_context()
        self.access_log = ThreadedAccessLog.create(config.access_log, config.access_log_style)
        # Requests between their first byte and their response, for a stop that lets them
        # finish (`WSGIRefServer.stop`); once stopping, connections close after the response.
        self.busy = 0
        self.stopping = False
        self._idle = threading.Condition()

    def begin_request(self) -> None:
        with self._idle:
            self.busy += 1

    def end_request(self) -> None:
        with self._idle:
            self.busy -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is being served; False when `timeout` ran out first."""
        with self._idle:
            return bool(self._idle.wait_for(lambda: self.busy == 0, timeout))

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            # A client that left (a broken pipe, a reset) is no error of the server's.
            logger.debug("Connection from %s ended: %s", client_address, error)
            return
        logger.exception("Error on the connection from %s", client_address)


class _SocketReader(io.RawIOBase):
    """Raw reads off a connection. While a deadline is set (an idle keep-alive wait, a
    request head), each read waits only for what is left of it, so that a head trickled in a
    byte at a time still ends on time; otherwise the socket timeout bounds each wait."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        super().__init__()
        self._sock = sock
        self._timeout = timeout
        self._deadline: float | None = None
        sock.settimeout(timeout)

    def readable(self) -> bool:
        return True

    def set_deadline(self, deadline: float | None) -> None:
        self._deadline = deadline
        if deadline is None:
            # Also what bounds each send of the response.
            self._sock.settimeout(self._timeout)

    def readinto(self, buffer: WriteableBuffer) -> int:
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out")
            self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class RequestBody(io.BufferedIOBase):
    """`wsgi.input`: the request body off the connection as the app reads it, up to its
    Content-Length or its chunks decoded (RFC 9112 §7.1). `on_first_read` runs before the
    first read that needs the socket (it sends `100 Continue`). `io` supplies readlines()
    and iteration on top of readline()."""

    def __init__(
        self,
        rfile: io.BufferedIOBase,
        length: int | None,
        config: Config,
        on_first_read: Callable[[], None] | None,
    ) -> None:
        super().__init__()
        self._rfile = rfile
        self._chunked = length is None
        # What is left of the Content-Length, or of the chunk being read.
        self._left = length or 0
        self._done = length == 0
        self._chunk_open = False
        self._received = 0
        self._limit = config.limit_request_body
        self._line_limit = config.limit_request_field_size
        self._fields_limit = config.limit_request_fields
        self._on_first_read = on_first_read
        self.failed = False

    @property
    def complete(self) -> bool:
        return self._done

    def reusable(self, drain: int) -> bool:
        """Whether the connection can carry another request once what is left of this body
        (`drain` bytes at most) is read and dropped. Not when the client waits for a
        `100 Continue` it was never sent (it sends the body only if told to, RFC 9110
        §10.1.1), nor when how much is left is unknown (chunked)."""
        if self._done:
            return True
        if self.failed or self._chunked or self._on_first_read is not None:
            return False
        return self._left <= drain

    def drain(self, drain: int) -> bool:
        """Read and drop the rest of the body if `reusable(drain)`; whether it ended."""
        if self.reusable(drain) and not self._done:
            try:
                self._read(-1)
            except (ProtocolError, OSError):
                return False
        return self._done

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        return self._guarded(self._read, -1 if size is None else size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._guarded(self._readline, -1 if size is None else size)

    def _guarded(self, step: Callable[[int], bytes], size: int) -> bytes:
        if self.failed:
            raise ClientDisconnected("the request body was cut off by an earlier error")
        try:
            if self._on_first_read is not None and not self._done:
                hook, self._on_first_read = self._on_first_read, None
                hook()
            return step(size)
        except Exception:
            self.failed = True
            raise

    def _read(self, size: int) -> bytes:
        pieces: list[bytes] = []
        while size and self._advance():
            count = self._left if size < 0 else min(size, self._left)
            pieces.append(self._take(count))
            self._consumed(count)
            if size > 0:
                size -= count
        return b"".join(pieces)

    def _readline(self, size: int) -> bytes:
        pieces: list[bytes] = []
        while size and self._advance():
            count = self._left if size < 0 else min(size, self._left)
            line = self._io(self._rfile.readline, count)
            if len(line) < count and not line.endswith(b"\n"):
                raise ClientDisconnected("client disconnected while sending the request body")
            self._consumed(len(line))
            pieces.append(line)
            if line.endswith(b"\n"):
                break
            if size > 0:
                size -= len(line)
        return b"".join(pieces)

    def _advance(self) -> bool:
        """Bring the next bytes of the body within reach; False at its end."""
        while not self._left:
            if self._done:
                return False
            self._next_chunk()
        return True

    def _consumed(self, count: int) -> None:
        self._left -= count
        if not self._left and not self._chunked:
            self._done = True

    def _next_chunk(self) -> None:
        if self._chunk_open:
            if self._take(2) != b"\r\n":
                raise ProtocolError("chunk data not followed by CRLF", 400)
            self._chunk_open = False
        match = _CHUNK_SIZE.fullmatch(self._line())
        if match is None:
            raise ProtocolError("invalid chunk size line", 400)
        size = int(match.group(1), 16)
        self._received += size
        if self._limit and self._received > self._limit:
            raise ProtocolError("request body larger than the limit", 413)
        if size:
            self._left = size
            self._chunk_open = True
            return
        # RFC 9112 §7.1.2: trailer fields are read and dropped; RFC 9110 §6.5.1 forbids
        # merging them into the header section, which the app already has.
        fields = 0
        while self._line():
            fields += 1
            if fields > self._fields_limit:
                raise ProtocolError("too many trailer fields", 431)
        self._done = True

    def _line(self) -> bytes:
        """A chunk-size or trailer line, without its CRLF."""
        bound = self._line_limit + 2
        raw = self._io(self._rfile.readline, bound)
        if raw.endswith(b"\r\n"):
            return raw[:-2]
        if len(raw) == bound:
            raise ProtocolError("chunk size or trailer line too long", 400)
        if raw.endswith(b"\n"):
            # RFC 9112 §7.1 frames chunks with CRLF; a bare LF is where request smuggling
            # between lenient and strict parsers begins.
            raise ProtocolError("bare LF in chunked framing", 400)
        raise ClientDisconnected("client disconnected while sending the request body")

    def _take(self, size: int) -> bytes:
        data = self._io(self._rfile.read, size)
        if len(data) < size:
            raise ClientDisconnected("client disconnected while sending the request body")
        return data

    @staticmethod
    def _io(read: Callable[[int], bytes], size: int) -> bytes:
        try:
            return read(size)
        except TimeoutError as exc:
            raise ProtocolError("request body not received in time", 408) from exc
        except OSError as exc:
            raise ClientDisconnected("client disconnected while sending the request body") from exc


def _refusal(status: int, reason: str) -> tuple[bytes, int]:
    """A short plain-text response refusing a request and ending the connection: its bytes
    and the size of its body."""
    body = f"{reason}\n".encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
        f"Date: {format_date_time(time.time())}\r\n"
        f"Server: {simple_server.software_version}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body, len(body)


class ServerHandler(SimpleHandler):
    """One request's exchange with the app: wsgiref's handler as Django's runserver sets it
    up (an HTTP/1.1 status line, keep-alive when the response length is known, no body for
    HEAD), with what runserver gets wrong put right: no Content-Length or body with a 204 or
    304, a response shorter or longer than its Content-Length ends the connection, a body
    error from `wsgi.input` is answered for the client, and the app's errors are logged."""

    http_version = "1.1"
    server_software = simple_server.software_version
    # wsgiref's per-request state, which typeshed leaves out.
    status: str | None
    headers: Headers | None
    result: Iterable[bytes] | None
    environ: Environ
    headers_sent: bool
    bytes_sent: int

    def __init__(
        self,
        body: RequestBody,
        out: io.BufferedWriter,
        environ: Environ,
        *,
        close_requested: bool,
        limit_drain: int,
    ) -> None:
        super().__init__(body, out, sys.stderr, environ, multithread=True, multiprocess=False)
        self.body = body
        self.close_requested = close_requested
        self.limit_drain = limit_drain
        self.keep_alive = False
        self.body_allowed = True
        self.length: int | None = None
        # For the access log: the status sent, and the bytes of body written.
        self.code: int | str = "-"
        self.sent = 0

    def setup_environ(self) -> None:
        super().setup_environ()
        # The PEP 3333 extension of gunicorn, uWSGI and aserve's main mode: reading to the
        # end is safe, so an app can take a chunked body, which has no CONTENT_LENGTH.
        self.environ["wsgi.input_terminated"] = True

    def run(self, application: WSGIApp) -> None:
        try:
            self.setup_environ()
            self.result = application(self.environ, self.start_response)
            self._send(self.result)
        except Exception as exc:
            self._fail(exc)

    def _send(self, result: Iterable[bytes]) -> None:
        try:
            for data in result:
                self.write(data)
                if self.headers_sent and not self.body_allowed:
                    break  # HEAD, 204, 304: the rest would be dropped (and a stream may not end)
            self.finish_content()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _fail(self, exc: Exception) -> None:
        self.keep_alive = False
        if isinstance(exc, ClientDisconnected):
            return
        if isinstance(exc, ProtocolError):
            # wsgi.input met a late, oversized or malformed body: the client's doing.
            if not self.headers_sent:
                data, self.sent = _refusal(exc.status, str(exc))
                self.code = exc.status
                with contextlib.suppress(ClientDisconnected):
                    self._write(data)
                    self._flush()
            return
        if isinstance(exc, AppProtocolError):
            logger.error("Invalid WSGI response: %s", exc)
        else:
            logger.error("Exception in WSGI application", exc_info=exc)
        if self.headers_sent:
            return  # the response is cut short: only the close can tell the client
        # wsgiref's 500, as runserver sends it; the connection may then go on.
        with contextlib.suppress(ClientDisconnected):
            self.result = self.error_output(self.environ, self.start_response)
            self._send(self.result)

    def cleanup_headers(self) -> None:
        headers = self.headers
        assert headers is not None and self.status is not None
        status = int(self.status[:3])
        self.code = status
        no_content = status < 200 or status in (204, 304)
        if no_content:
            # RFC 9110 §8.6 forbids Content-Length in a 204; in a 304 it may only repeat the
            # length a 200 would have, which wsgiref's default of 0 is not.
            del headers["Content-Length"]
        elif "Content-Length" not in headers:
            self.set_content_length()
        self.body_allowed = not no_content and self.environ["REQUEST_METHOD"] != "HEAD"
        length = headers.get("Content-Length")
        if length is not None and _DIGITS.fullmatch(length) is None:
            raise AppProtocolError(f"invalid Content-Length {length!r}")
        self.length = int(length) if length is not None else None
        framed = self.length is not None or not self.body_allowed
        self.keep_alive = (
            framed and not self.close_requested and self.body.reusable(self.limit_drain)
        )
        if not self.keep_alive:
            # The status line says HTTP/1.1, which a client takes as persistent unless told
            # otherwise (RFC 9112 §9.3), also after an HTTP/1.0 request.
            headers["Connection"] = "close"
        elif self.environ["SERVER_PROTOCOL"] == "HTTP/1.0":
            # An HTTP/1.0 client (ApacheBench -k) reuses the connection only when told so.
            headers["Connection"] = "keep-alive"

    def write(self, data: bytes) -> None:
        if type(data) is not bytes:
            raise AppProtocolError(f"response body chunks must be bytes, not {type(data)}")
        if not self.status:
            raise AppProtocolError("write() or response body before start_response()")
        if self.headers_sent:
            self.bytes_sent += len(data)
        else:
            self.bytes_sent = len(data)  # wsgiref's set_content_length() reads it
            self.send_headers()
        if self.body_allowed and data:
            if self.length is not None and self.bytes_sent > self.length:
                raise AppProtocolError("response body longer than its Content-Length")
            self._write(data)
            self.sent += len(data)
        self._flush()

    def finish_content(self) -> None:
        if self.headers is None:
            raise AppProtocolError("WSGI app returned without calling start_response()")
        if not self.headers_sent:
            # Not for HEAD, as Django: RFC 9110 §9.3.2 lets a HEAD response leave the length
            # out, and 0 would misstate the body a GET gets.
            if self.environ["REQUEST_METHOD"] != "HEAD":
                self.headers.setdefault("Content-Length", "0")
            self.send_headers()
            self._flush()
        elif self.body_allowed and self.length is not None and self.bytes_sent < self.length:
            self.keep_alive = False  # the client waits for the rest: only a close ends that

    def _write(self, data: bytes) -> None:
        try:
            self.stdout.write(data)
        except OSError as exc:
            raise ClientDisconnected("client disconnected during the response") from exc

    def _flush(self) -> None:
        try:
            self.stdout.flush()
        except OSError as exc:
            raise ClientDisconnected("client disconnected during the response") from exc


class WSGIRequestHandler(simple_server.WSGIRequestHandler):
    """One connection: its requests in turn, as Django's runserver handler serves them, each
    head read within aserve's limits and timeouts."""

    server: ThreadingWSGIServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        sock: socket.socket = self.request
        self.connection = sock
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # A response goes out in one write per chunk; Nagle would hold back the next one
            # until the client's delayed ACK (40 ms) on a keep-alive connection.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        config = self.server.config
        self.reader = _SocketReader(sock, config.timeout_request_body)
        self.rfile = self.input = io.BufferedReader(self.reader, _BUFFER)
        self.wfile = self.out = sock.makefile("wb")
        if isinstance(self.client_address, tuple):
            self.client = f"{self.client_address[0]}:{self.client_address[1]}"
        else:
            # A Unix socket peer has no address, but wsgiref indexes one.
            self.client_address = ("", 0)
            self.client = "-"
        self.requestline = ""
        self._connected = time.monotonic()
        self._started = time.perf_counter()
        self._served = False
        self._expect_continue = False
        self._linger = False
        self._exchange: ServerHandler | None = None

    def handle(self) -> None:
        while self._serve_one():
            pass
        self._close()

    def _serve_one(self) -> bool:
        """Serve the next request; whether the connection may carry another."""
        if not self._await_head():
            return False
        server = self.server
        server.begin_request()
        try:
            return self._serve_request() and not server.stopping
        finally:
            server.end_request()

    def _serve_request(self) -> bool:
        self._started = time.perf_counter()
        self.requestline = ""
        try:
            length = self._read_head()
        except TimeoutError:
            self._refuse(408, "request head not received in time")
            return False
        except ProtocolError as exc:
            self._refuse(exc.status, str(exc))
            return False
        except OSError:
            return False  # the client left in the middle of its head
        self._served = True
        self.reader.set_deadline(None)
        return self._respond(length)

    def _await_head(self) -> bool:
        """Wait for the first byte of a request: False when the client leaves, or stays
        silent past the keep-alive timeout (past the head timeout, if shorter, on a new
        connection). Then the head must be complete within the head timeout, counted from
        the connection for the first request, as in the main mode."""
        config = self.server.config
        if self._served:
            self.reader.set_deadline(time.monotonic() + config.timeout_keep_alive)
        else:
            # With no keep-alive (0), a new connection still waits for its first request.
            wait = min(config.timeout_keep_alive or math.inf, config.timeout_request_head)
            self.reader.set_deadline(self._connected + wait)
        try:
            if not self.input.peek(1):
                return False
        except OSError:
            return False
        since = time.monotonic() if self._served else self._connected
        self.reader.set_deadline(since + config.timeout_request_head)
        return True

    def _read_head(self) -> int | None:
        """Read and parse a request head within the limits; the length of its body (None:
        chunked). The standard library's parser allows 64 KiB lines and 100 fields whatever
        the settings, so the head is read here and only its fields parsed by `email`."""
        config = self.server.config
        line = self._line(config.limit_request_line)
        if line == b"":
            line = self._line(config.limit_request_line)  # RFC 9112 §2.2: one may be skipped
        if line is None:
            raise ProtocolError("request line too long", 414)
        if not line:
            # Blank lines are no request: closed without an answer, as runserver does.
            raise ClientDisconnected("blank lines instead of a request")
        size = len(line) + 2
        fields: list[bytes] = []
        while True:
            field = self._line(config.limit_request_field_size)
            if field is None:
                raise ProtocolError("request header field too large", 431)
            size += len(field) + 2
            if size > config.limit_request_head:
                raise ProtocolError("request header section too large", 431)
            if not field:
                break
            if len(fields) == config.limit_request_fields:
                raise ProtocolError("too many request header fields", 431)
            fields.append(field)
        self._parse_request_line(line)
        text = b"\r\n".join(fields).decode("latin-1") + "\r\n\r\n"
        self.headers = email.parser.Parser(_class=http.client.HTTPMessage).parsestr(text)
        return self._framing()

    def _line(self, most: int) -> bytes | None:
        """The next line of the head without its line ending; None when longer than `most`."""
        raw = self.input.readline(most + 2)
        if raw.endswith(b"\n"):
            line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            return line if len(line) <= most else None
        if len(raw) == most + 2:
            return None
        raise ClientDisconnected("the client left in a request head")

    def _parse_request_line(self, line: bytes) -> None:
        self.requestline = line.decode("latin-1")
        # Split as bytes: str.split() would also split at a latin-1 NBSP (0xA0) in a target.
        words = [word.decode("latin-1") for word in line.split()]
        if len(words) != 3:
            raise ProtocolError("malformed request line", 400)
        self.command, path, self.request_version = words
        if _HTTP_VERSION.fullmatch(self.request_version) is None:
            raise ProtocolError("malformed HTTP version", 400)
        if self.request_version not in ("HTTP/1.0", "HTTP/1.1"):
            raise ProtocolError(f"unsupported HTTP version {self.request_version}", 505)
        # As the standard library's parse_request (gh-87389), which runserver inherits: a
        # path starting with // would be a scheme-relative URL in a redirect built from it.
        self.path = "/" + path.lstrip("/") if path.startswith("//") else path

    def _framing(self) -> int | None:
        """The body length the head announces (None: chunked); what it asks of the
        connection and of `100 Continue` is noted on the way."""
        headers = self.headers
        version = self.request_version
        tokens = {
            token.strip().lower()
            for value in headers.get_all("Connection", [])
            for token in value.split(",")
        }
        self.close_connection = "close" in tokens or (
            version == "HTTP/1.0" and "keep-alive" not in tokens
        )
        # RFC 9110 §10.1.1: an expectation in an HTTP/1.0 request is ignored.
        expect = headers.get("Expect", "").strip().lower()
        self._expect_continue = version == "HTTP/1.1" and expect == "100-continue"
        codings = headers.get_all("Transfer-Encoding", [])
        lengths = headers.get_all("Content-Length", [])
        if codings:
            # RFC 9112 §6.1: beside Content-Length or in HTTP/1.0 it is how request smuggling
            # starts; aserve decodes no coding but chunked (501).
            if lengths or version == "HTTP/1.0":
                raise ProtocolError("Transfer-Encoding with Content-Length or in HTTP/1.0", 400)
            if ",".join(codings).strip().lower() != "chunked":
                raise ProtocolError(f"unsupported Transfer-Encoding {','.join(codings)!r}", 501)
            return None
        # RFC 9110 §8.6: a list of one repeated value stands for that value.
        values = {value.strip() for field in lengths for value in field.split(",")}
        if not values:
            return 0
        length = values.pop()
        if values or _DIGITS.fullmatch(length) is None:
            raise ProtocolError("invalid Content-Length", 400)
        limit = self.server.config.limit_request_body
        if limit and int(length) > limit:
            raise ProtocolError("request body larger than the limit", 413)
        return int(length)

    def _respond(self, length: int | None) -> bool:
        """Run the app on the request whose head was read; whether the connection goes on."""
        config = self.server.config
        hook = self._send_continue if self._expect_continue else None
        body = RequestBody(self.input, length, config, hook)
        exchange = ServerHandler(
            body,
            self.out,
            self.get_environ(),
            # With no keep-alive, the response says it closes rather than close under a
            # client that was not told.
            close_requested=self.close_connection or not config.timeout_keep_alive,
            limit_drain=config.limit_drain,
        )
        self._exchange = exchange
        self.server.context.copy().run(exchange.run, self.server.app)
        self._exchange = None
        self._log(exchange.code, exchange.sent)
        if exchange.keep_alive and body.drain(config.limit_drain):
            return True
        self._linger = not body.complete
        return False

    def _send_continue(self) -> None:
        # aserve's main mode sends it when the app first reads the body, Django's runserver as
        # soon as the head is read. Waiting lets an app refuse an upload (401, 413) before the
        # client sends it, which is what the expectation is for (RFC 9110 §10.1.1).
        exchange = self._exchange
        if exchange is not None and exchange.headers_sent:
            return  # RFC 9110 §15.2: no interim response once the final one has begun
        try:
            self.out.write(_CONTINUE)
            self.out.flush()
        except OSError as exc:
            raise ClientDisconnected("client disconnected before 100 Continue") from exc

    def get_environ(self) -> Environ:
        # Like Django's runserver: drop headers with underscores, which would be confused
        # with their dashed twins once turned into HTTP_* keys.
        for name in [k for k in self.headers if "_" in k]:
            del self.headers[name]
        environ: Environ = super().get_environ()
        return environ

    def _refuse(self, status: int, reason: str) -> None:
        self.reader.set_deadline(None)
        data, size = _refusal(status, reason)
        with contextlib.suppress(OSError):
            self.out.write(data)
            self.out.flush()
        self._log(status, size)
        self._linger = True

    def _log(self, status: int | str, size: int) -> None:
        log = self.server.access_log
        if log is not None:
            elapsed = (time.perf_counter() - self._started) * 1000.0
            log.log(self.client, self.requestline, status, size, elapsed)

    def finish(self) -> None:
        # The last flush meets a client that already left (wrk stopping mid-pipeline).
        with contextlib.suppress(ConnectionError):
            super().finish()

    def _close(self) -> None:
        """After a refusal, or with request body unread, shut the sending side and read what
        the client still sends for a while: a close with unread bytes resets the connection,
        and the reset can discard the response before the client reads it (RFC 9112 §9.6)."""
        if not self._linger:
            return
        with contextlib.suppress(OSError):
            self.out.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.reader.set_deadline(time.monotonic() + LINGER)
            while self.input.read1(_BUFFER):
                pass


def refuse_asgi(loaded: LoadedApp) -> None:
    """wsgiref has no ASGI: said before any socket is bound, so that the one-line error is the
    same whether or not the port is free."""
    if loaded.kind != "wsgi":
        raise AppLoadError(f"{loaded.name} is an ASGI app; --server wsgiref serves WSGI apps only")


class WSGIRefServer:
    """The wsgiref mode on a listening socket: `serve()` blocks until `stop()` is called from
    another thread (a reload worker's) or a signal's exception leaves it."""

    def __init__(self, loaded: LoadedApp, config: Config, sock: socket.socket) -> None:
        refuse_asgi(loaded)
        self.loaded = loaded
        self.config = config
        self.sock = sock
        self._server = ThreadingWSGIServer(sock, loaded.wsgi, config)

    def serve(self, announce: bool = True) -> None:
        # Under runserver, its banner says where the server listens, once.
        quiet = self.config.access_log_style == "runserver" or not announce
        logger.log(
            logging.DEBUG if quiet else logging.INFO,
            "aserve %s serving WSGI app %s with wsgiref on %s; quit with CONTROL-C",
            __version__,
            self.loaded.name,
            listening_url(self.config, self.sock),
        )
        server = self._server
        try:
            server.serve_forever()
        finally:
            # A reload worker's stop: the requests under way finish (their connection threads
            # are daemons, which the process's exit would cut off), as in the main mode.
            if server.stopping and not server.wait_idle(self.config.timeout_graceful_shutdown):
                logger.warning("Cancelling %d request(s) still running", server.busy)
            server.server_close()

    def stop(self) -> None:
        """Stop accepting, from another thread; `serve()` returns once the requests under way
        are answered (within the graceful shutdown timeout)."""
        self._server.stopping = True
        self._server.shutdown()


def serve_wsgiref(app: object, config: Config, sock: socket.socket | None = None) -> int:
    """Serve `app` on the wsgiref server until SIGINT/SIGTERM; exit code 0. `sock` listens
    already (else one is bound from the config)."""
    configure(config.log_level)
    loaded = load(app, factory=config.factory, interface=config.interface)
    refuse_asgi(loaded)
    with contextlib.nullcontext(sock) if sock is not None else bound(config) as listening:
        server = WSGIRefServer(loaded, config, listening)
        # Connection threads are daemons: leaving serve_forever() is the whole shutdown, so
        # a second signal has nothing more to force.
        signals = StopSignals(_stop, _stop, "stopping")
        try:
            with signals.installed():
                server.serve()
        except _Stop:
            logger.info("aserve (wsgiref) stopped")
    return 0


def _stop(sig: int) -> NoReturn:
    raise _Stop
