"""Blocking client sockets to a server on 127.0.0.1: raw bytes out, and what comes back read
with the one response parser (tests.support.http)."""

from __future__ import annotations

import http.client
import select
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.http import Closed, End, Event, FramingError, Part, Response, ResponseParser
from tests.support.polling import wait_until


class Client:
    """One connection: what is sent on it, and the responses read off it in order."""

    def __init__(self, sock: socket.socket, *, reset_is_close: bool = False) -> None:
        self.sock = sock
        self.parser = ResponseParser()
        # Every response read so far, kept when a later read fails or times out.
        self.received: list[Response] = []
        self._reset_is_close = reset_is_close

    @property
    def local_port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    @property
    def buffered(self) -> bytes:
        """Bytes that have arrived and that no read has used yet."""
        return self.parser.buffered

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def half_close(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def nothing_arrives(self, seconds: float = 0.3) -> bool:
        """True when the server sends nothing more for `seconds`."""
        previous = self.sock.gettimeout()
        self.sock.settimeout(seconds)
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(previous)
        return False

    def response(self, method: bytes = b"GET", *, truncated_ok: bool = False) -> Response:
        """The next response, or the rest of the one whose head `head()` read; an interim
        (1xx) response counts as one."""
        result = self._next_response(method, truncated_ok)
        if isinstance(result, Closed):
            raise FramingError("the connection closed before a response")
        self.received.append(result)
        return result

    def until_closed(self, *, truncated_ok: bool = False) -> list[Response]:
        """The responses (to GETs) until the server closes the connection; only the last may
        be cut short, and only if `truncated_ok`."""
        responses: list[Response] = []
        while True:
            result = self._next_response(b"GET", truncated_ok)
            if isinstance(result, Closed):
                return responses
            self.received.append(result)
            responses.append(result)

    def exchange(self, data: bytes, *, truncated_ok: bool = False) -> list[Response]:
        """Send `data`, half-close, and read the responses until the server closes."""
        self.sendall(data)
        self.half_close()
        return self.until_closed(truncated_ok=truncated_ok)

    def head(self, method: bytes = b"GET") -> Response:
        """The head of the next response; its body is read by `part()`, `parts()`,
        `rest_of_body()` or `response()`, and gathered in the Response returned here."""
        if self.parser.current is not None:
            raise AssertionError("the body of the previous response has not been read")
        event = self._next(method)
        if not isinstance(event, Response):
            raise FramingError(f"expected a response head, not {event}")
        return event

    def part(self) -> Part:
        """The next piece of the body being read; the body must not end first."""
        event = self._next()
        if not isinstance(event, Part):
            raise FramingError(f"expected more of the body, not {event}")
        return event

    def parts(self) -> Iterator[Part]:
        """The pieces of the body being read, until it ends (whole or cut short)."""
        while True:
            event = self._next()
            if isinstance(event, End):
                self.received.append(event.response)
                return
            if not isinstance(event, Part):
                raise FramingError(f"expected more of the body, not {event}")
            yield event

    def rest_of_body(self) -> bytes:
        """The framed bytes of the current body from where reading stopped to its end."""
        current = self.parser.current
        if current is None:
            raise AssertionError("no response is being read")
        start = len(current.wire_body)
        return self.response().wire_body[start:]

    def _next(self, method: bytes = b"GET") -> Event:
        while (event := self.parser.next_event(method)) is None:
            self._receive()
        return event

    def _next_response(self, method: bytes, truncated_ok: bool) -> Response | Closed:
        while (result := self.parser.next_response(method, truncated_ok=truncated_ok)) is None:
            self._receive()
        return result

    def _receive(self) -> None:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            if not self._reset_is_close:
                raise
            data = b""
        if data:
            self.parser.feed(data)
        else:
            self.parser.feed_eof()


@contextmanager
def connect(
    port: int, *, timeout: float = 5.0, receive_buffer: int = 0, reset_is_close: bool = False
) -> Iterator[Client]:
    """A connection to 127.0.0.1:`port`; `reset_is_close` reads a reset as the end of it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if receive_buffer:
            # A fixed size turns off the kernel's receive-buffer autotuning.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        yield Client(sock, reset_is_close=reset_is_close)


def raw_exchange(
    port: int, data: bytes, *, timeout: float = 5.0, truncated_ok: bool = False
) -> list[Response]:
    """Send `data` on a new connection, half-close, and read the responses until the server
    closes."""
    with connect(port, timeout=timeout) as client:
        return client.exchange(data, truncated_ok=truncated_ok)


def refused(port: int) -> bool:
    """Nothing listens on 127.0.0.1:`port` any more: a connection is refused."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        # The connection was in the backlog of a listening socket that closed under it: the
        # kernel resets it, and a connect() that waits with a timeout can read that reset.
        return True
    return False


def refused_soon(port: int, within: float = 2.0) -> bool:
    """Connections to 127.0.0.1:`port` are refused within `within` seconds. A listening socket
    can outlive the last process that held it by a moment: seen under load, still listening
    after every server process had exited, with no process holding it. The likely holder is
    uvloop's libuv, which batches epoll_ctl through an io_uring whose requests the kernel
    releases only when it tears the ring down, after the exit. Until then the kernel completes
    handshakes into a backlog that nobody reads. A process still serving fails this."""
    return wait_until(lambda: refused(port), within)


def http_get(port: int, path: str = "/") -> tuple[int, bytes]:
    """Status and body of one GET over a fresh connection (http.client: a second opinion)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def get_pid(port: int, path: str = "/") -> int:
    """The pid that answered one GET over a fresh connection, from an app of
    `tests.support.apps.pid_apps` (several worker processes)."""
    status, body = http_get(port, path)
    assert status == 200, body
    return int(body)


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self.unix_path)
        self.sock = sock


def trickle(client: Client, data: bytes, interval: float) -> tuple[list[Response], float]:
    """Send `data` a byte every `interval` until the server answers or closes: the responses
    it then sends, and how long after the first byte its answer came."""
    start = time.monotonic()
    for byte in data:
        client.sendall(bytes([byte]))
        readable, _, _ = select.select([client.sock], [], [], interval)
        if readable:
            break
    else:
        raise AssertionError("the server let the whole trickle through")
    return client.until_closed(), time.monotonic() - start


def closed_after(client: Client, *, truncated_ok: bool = False) -> tuple[list[Response], float]:
    """The responses the server sends until it closes, and how long that took."""
    start = time.monotonic()
    responses = client.until_closed(truncated_ok=truncated_ok)
    return responses, time.monotonic() - start
