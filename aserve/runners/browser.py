"""`--reload-browser`: a runner around the app's that injects the refresh script into the HTML
pages the app sends, and answers the paths under `/__aserve__/` itself (the app never sees
them). The event stream the script listens to is handed over to whoever sends the events:
the reload supervisor, which outlives every worker."""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Callable

from aserve.errorpage import Page
from aserve.exchange import AppRunner, Cycle, ResponseSink
from aserve.refresh import EVENTS_PATH, PREFIX, RELOAD_JS, SCRIPT_PATH, TAG, WORKER_JS, WORKER_PATH
from aserve.types import Headers

logger = logging.getLogger("aserve.error")

_BODY_END = re.compile(rb"</body\s{0,8}>", re.IGNORECASE)
# Bytes of one chunk kept to find a `</body>` that the next chunk completes.
_OVERLAP = 16
# How much of a streamed page is searched for its </body> before it is left alone: a page is
# far smaller; a stream this long (a log tail, a report) is no page to refresh.
SEARCH_LIMIT = 1 << 20


class BrowserReload:
    """The `AppRunner` under `--reload-browser`: `hand_over` receives the socket of each
    client that asks for the event stream (None: there is nobody to send events, and the
    stream is refused with a 404)."""

    def __init__(self, inner: AppRunner, hand_over: Callable[[socket.socket], None] | None) -> None:
        self.inner = inner
        self.hand_over = hand_over
        # Say once, not per page, why a page went without the script.
        self._csp_logged = False
        self.websockets = inner.websockets

    async def startup(self) -> None:
        await self.inner.startup()

    async def shutdown(self, timeout: float) -> None:
        await self.inner.shutdown(timeout)

    def handle(self, cycle: Cycle) -> None:
        path = cycle.request.target.partition(b"?")[0]
        if path.startswith(PREFIX):
            self._answer(cycle, path)
            return
        cycle.sink = _Injecting(cycle.sink, cycle, self)
        self.inner.handle(cycle)

    def _answer(self, cycle: Cycle, path: bytes) -> None:
        if path == EVENTS_PATH and self.hand_over is not None:
            sock = cycle.sink.detach()
            if sock is not None:
                cycle.done = True
                self.hand_over(sock)
                return
        if path in (SCRIPT_PATH, WORKER_PATH):
            body = RELOAD_JS if path == SCRIPT_PATH else WORKER_JS
            status, content_type = 200, b"text/javascript; charset=utf-8"
        else:
            body, status, content_type = b"Not Found\n", 404, b"text/plain; charset=utf-8"
        cycle.send_start(
            status,
            [
                (b"content-type", content_type),
                (b"content-length", b"%d" % len(body)),
                (b"cache-control", b"no-store"),
            ],
        )
        cycle.send_end(b"" if cycle.request.method == b"HEAD" else body)

    def csp_blocks(self, headers: Headers, path: bytes) -> bool:
        for name, value in headers:
            if name.lower() == b"content-security-policy":
                why = _csp_blocks(value)
                if why is not None:
                    if not self._csp_logged:
                        self._csp_logged = True
                        logger.warning(
                            "--reload-browser: no refresh script in %s (nor in other pages "
                            "like it): its Content-Security-Policy %s",
                            path.decode("latin-1"),
                            why,
                        )
                    return True
        return False


def _csp_blocks(policy: bytes) -> str | None:
    """Why a Content-Security-Policy would keep the script from loading or from opening its
    event stream, or None when it allows both (CSP3: the most specific directive present
    applies; 'strict-dynamic' makes host and 'self' sources ignored)."""
    directives: dict[bytes, list[bytes]] = {}
    for part in policy.split(b";"):
        tokens = part.split()
        if tokens:
            directives.setdefault(tokens[0].lower(), [t.lower() for t in tokens[1:]])
    for needs, chain in (
        ("load scripts from the server", (b"script-src-elem", b"script-src", b"default-src")),
        ("connect to the server", (b"connect-src", b"default-src")),
    ):
        sources = next((directives[name] for name in chain if name in directives), None)
        if sources is None:
            continue
        if b"'strict-dynamic'" in sources:
            return f"does not let it {needs} ('strict-dynamic')"
        if not any(s in (b"'self'", b"*", b"http:", b"https:") for s in sources):
            return f"does not let it {needs} (no 'self')"
    return None


def _header(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _html_page(status: int, headers: Headers, method: bytes) -> bool:
    if method == b"HEAD" or status < 200 or status in (204, 304):
        return False
    content_type = _header(headers, b"content-type")
    if content_type is None or not content_type.lower().lstrip().startswith(b"text/html"):
        return False
    encoding = _header(headers, b"content-encoding")
    return encoding is None or encoding.strip().lower() == b"identity"


def _with_length(headers: Headers, length: int) -> Headers:
    return [
        (name, b"%d" % length if name.lower() == b"content-length" else value)
        for name, value in headers
    ]


def inject(body: bytes, within: int | None = None) -> bytes | None:
    """`body` with the script tag before its last `</body>`; None if it has none (or none
    that starts within the first `within` bytes)."""
    at = -1
    for match in _BODY_END.finditer(body, 0, len(body) if within is None else within + 16):
        at = match.start()
    if at < 0 or (within is not None and at > within):
        return None
    return body[:at] + TAG + body[at:]


class _Injecting:
    """A `ResponseSink` in front of the connection's that puts the script into an HTML page.

    A page's head is held until its body shows where `</body>` is: its Content-Length grows
    by the tag's length. The bytes before it are held too (up to SEARCH_LIMIT); a page
    whose `</body>` is not among them goes out untouched, as does any other response.
    """

    __slots__ = ("_cycle", "_held", "_runner", "_scanned", "_waiting", "inner")

    def __init__(self, inner: ResponseSink, cycle: Cycle, runner: BrowserReload) -> None:
        self.inner = inner
        self._cycle = cycle
        self._runner = runner
        # The head of a page being searched, and its body so far.
        self._held: tuple[int, Headers, bytes | None] | None = None
        self._waiting: list[bytes] = []
        self._scanned = 0

    @property
    def write_paused(self) -> bool:
        return self.inner.write_paused

    @property
    def backlogged(self) -> bool:
        return self.inner.backlogged

    @property
    def closing(self) -> bool:
        return self.inner.closing

    def start_response(self, status: int, headers: Headers, reason: bytes | None) -> None:
        request = self._cycle.request
        if _html_page(status, headers, request.method) and not self._runner.csp_blocks(
            headers, request.target.partition(b"?")[0]
        ):
            self._held = (status, headers, reason)
        else:
            self.inner.start_response(status, headers, reason)

    def flush_head(self) -> None:
        # A page's head waits for its body (its Content-Length may change).
        if self._held is None:
            self.inner.flush_head()

    def send_body(self, data: bytes) -> None:
        if self._held is None:
            self.inner.send_body(data)
            return
        # Only the new bytes are searched, with the end of the ones before (a tag cut in two).
        tail = self._waiting[-1][-_OVERLAP:] if self._waiting else b""
        self._waiting.append(data)
        self._scanned += len(data)
        if _BODY_END.search(tail + data) is not None:
            body = b"".join(self._waiting)
            injected = inject(body)
            assert injected is not None
            self._release(injected, grew=True)
        elif self._scanned > SEARCH_LIMIT:
            self._release(b"".join(self._waiting), grew=False)

    def send_parts(self, parts: list[bytes]) -> None:
        if self._held is None:
            self.inner.send_parts(parts)
        else:
            self.send_body(b"".join(parts))

    def send_file(self, fd: int, offset: int, count: int, done: Callable[[int], None]) -> bool:
        # A page being searched for its </body> must be read: the caller falls back to that.
        if self._held is not None:
            return False
        return self.inner.send_file(fd, offset, count, done)

    def end_response(self, data: bytes, trailers: Headers | None = None) -> None:
        if self._held is None:
            self.inner.end_response(data, trailers)
            return
        body = b"".join([*self._waiting, data])
        status, headers, reason = self._held
        # Without a Content-Length the body was streamed, however it was batched on the way.
        streamed = _header(headers, b"content-length") is None
        injected = inject(body, SEARCH_LIMIT if streamed else None)
        self._held = None
        self._waiting = []
        if injected is not None:
            headers = _with_length(headers, _length(headers, body) + len(TAG))
            body = injected
        self.inner.start_response(status, headers, reason)
        self.inner.end_response(body, trailers)

    def send_interim(self, status: int, headers: Headers) -> None:
        self.inner.send_interim(status, headers)

    def _release(self, body: bytes, grew: bool) -> None:
        """Send the held head and body, the rest of the page passing straight through."""
        assert self._held is not None
        status, headers, reason = self._held
        self._held = None
        self._waiting = []
        if grew and _header(headers, b"content-length") is not None:
            headers = _with_length(headers, _length(headers, body) + len(TAG))
        self.inner.start_response(status, headers, reason)
        self.inner.send_body(body)

    def response_done(self, cycle: Cycle) -> None:
        self.inner.response_done(cycle)

    def fail_response(self, cycle: Cycle, page: Page | None) -> None:
        if self._held is not None:
            # Nothing went out: the connection answers 500, as if no head had been given.
            self._held = None
            self._waiting = []
            cycle.status = 0
        if page is not None and page.content_type.startswith(b"text/html"):
            injected = inject(page.body)
            if injected is not None:
                page = Page(page.content_type, injected)
        self.inner.fail_response(cycle, page)

    def close_after_response(self) -> None:
        self.inner.close_after_response()

    def abandon(self, cycle: Cycle) -> None:
        self.inner.abandon(cycle)

    def on_writable(self, callback: Callable[[], None]) -> None:
        self.inner.on_writable(callback)

    def detach(self) -> socket.socket | None:
        return self.inner.detach()


def _length(headers: Headers, body: bytes) -> int:
    """The page's Content-Length before the tag: the field's value, or the body's length."""
    value = _header(headers, b"content-length")
    try:
        return int(value) if value is not None else len(body)
    except ValueError:
        return len(body)
