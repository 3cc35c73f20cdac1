"""--reload-browser: the refresh script in the app's HTML pages (and only there), the paths under
/__aserve__/ that never reach the app, and, under the real reloader, the event stream that
tells the pages to reload after an edit and survives the worker's restarts."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aserve.config import Config
from aserve.refresh import TAG
from aserve.runners.browser import SEARCH_LIMIT, _csp_blocks
from aserve.types import Environ
from tests.support.client import raw_exchange
from tests.support.procs import ServerProcess
from tests.support.servers import ServeFactory, serving

PAGE = b"<!doctype html>\n<html><head><title>t</title></head><body><h1>Hello</h1></body></html>\n"
WITH_SCRIPT = PAGE.replace(b"</body>", TAG + b"</body>")
HTML = "text/html; charset=utf-8"


@pytest.fixture
def serve() -> Iterator[ServeFactory]:
    with serving() as factory:
        yield factory


def wsgi_app(
    chunks: list[bytes],
    content_type: str = HTML,
    length: bool = True,
    extra: dict[str, str] | None = None,
) -> Callable[..., Any]:
    """A WSGI app answering `chunks` (a Content-Length with them unless `length` is false)."""
    seen: list[str] = []

    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        seen.append(environ["PATH_INFO"])
        headers = [("Content-Type", content_type), *(extra or {}).items()]
        if length:
            headers.append(("Content-Length", str(sum(map(len, chunks)))))
        start_response("200 OK", headers)
        return chunks

    app.seen = seen  # type: ignore[attr-defined]
    return app


def asgi_app(chunks: list[bytes], content_type: str = HTML, length: bool = True) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", content_type.encode())]
        if length:
            headers.append((b"content-length", b"%d" % sum(map(len, chunks))))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for index, chunk in enumerate(chunks):
            more = index < len(chunks) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})
            await asyncio.sleep(0.01)  # each chunk its own write

    return app


def fetch(port: int, path: str = "/", method: str = "GET", **headers: str) -> httpx.Response:
    return httpx.request(method, f"http://127.0.0.1:{port}{path}", headers=headers, timeout=10)


# ---------------------------------------------------------------- the script in pages


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_page_with_a_content_length_gets_the_script_and_a_longer_length(
    serve: ServeFactory, kind: str
) -> None:
    app = wsgi_app([PAGE]) if kind == "wsgi" else asgi_app([PAGE])
    port = serve(app, reload_browser=True).port
    response = fetch(port)
    assert response.content == WITH_SCRIPT
    assert response.headers["content-length"] == str(len(PAGE) + len(TAG))


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_page_streamed_in_pieces_gets_the_script_where_its_body_ends(
    serve: ServeFactory, kind: str
) -> None:
    """`</body>` cut in two by a chunk boundary, with and without a Content-Length."""
    at = PAGE.index(b"</body>") + 3
    chunks = [PAGE[:10], PAGE[10:at], PAGE[at:]]
    for length in (True, False):
        app = wsgi_app(chunks, length=length) if kind == "wsgi" else asgi_app(chunks, length=length)
        port = serve(app, reload_browser=True).port
        response = fetch(port)
        assert response.content == WITH_SCRIPT
        if length:
            assert response.headers["content-length"] == str(len(WITH_SCRIPT))
        else:
            assert response.headers["transfer-encoding"] == "chunked"


def test_the_last_body_end_of_a_complete_page_is_used(serve: ServeFactory) -> None:
    """A `</body>` in a script or a comment before the real one is no place for the tag."""
    page = b"<html><body><script>let s = '</body>';</script><p>x</p></BODY >\n</html>"
    port = serve(wsgi_app([page]), reload_browser=True).port
    assert fetch(port).content == page.replace(b"</BODY >", TAG + b"</BODY >")


def test_stream_without_a_body_end_in_its_first_mebibyte_is_left_alone(
    serve: ServeFactory,
) -> None:
    filler = b"<p>" + b"x" * 65_536 + b"</p>\n"
    chunks = [b"<html><body>"] + [filler] * (SEARCH_LIMIT // len(filler) + 2) + [b"</body></html>"]
    port = serve(wsgi_app(chunks, length=False), reload_browser=True).port
    assert fetch(port).content == b"".join(chunks)


@pytest.mark.parametrize(
    ("content_type", "extra"),
    [
        ("text/plain", {}),
        ("application/json", {}),
        (HTML, {"Content-Encoding": "gzip"}),
        (HTML, {"Content-Security-Policy": "default-src 'none'"}),
        (HTML, {"Content-Security-Policy": "script-src 'nonce-abc' 'strict-dynamic'"}),
        (HTML, {"Content-Security-Policy": "script-src 'self'; connect-src https://api.test"}),
    ],
    ids=["text", "json", "gzip", "csp-none", "csp-strict-dynamic", "csp-connect"],
)
def test_responses_the_script_cannot_go_into_are_untouched(
    serve: ServeFactory, content_type: str, extra: dict[str, str]
) -> None:
    # Bytes that would be a page's end, in bodies that are no page the script may join.
    port = serve(wsgi_app([PAGE], content_type, extra=extra), reload_browser=True).port
    (response,) = raw_exchange(port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert response.body == PAGE
    assert response.header(b"content-length") == b"%d" % len(PAGE)


def test_a_blocking_policy_is_logged_once(
    serve: ServeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = wsgi_app([PAGE], extra={"Content-Security-Policy": "script-src 'none'"})
    port = serve(app, reload_browser=True).port
    with caplog.at_level(logging.WARNING, logger="aserve.error"):
        for _ in range(3):
            assert fetch(port, "/page").content == PAGE
    warnings = [r.getMessage() for r in caplog.records if "--reload-browser" in r.getMessage()]
    assert len(warnings) == 1
    assert "/page" in warnings[0] and "Content-Security-Policy" in warnings[0]


@pytest.mark.parametrize(
    ("policy", "blocks"),
    [
        (b"default-src 'self'", False),
        (b"script-src 'self' https://cdn.test; img-src *", False),
        (b"default-src 'none'; script-src 'self'; connect-src 'self'", False),
        (b"default-src *", False),
        (b"img-src 'none'", False),
        (b"default-src 'none'", True),
        (b"script-src https://cdn.test", True),
        (b"script-src 'self'; script-src-elem 'none'", True),
        (b"default-src 'self'; connect-src 'none'", True),
        (b"script-src 'self' 'strict-dynamic' 'nonce-x'", True),
    ],
)
def test_which_policies_block_the_script(policy: bytes, blocks: bool) -> None:
    assert (_csp_blocks(policy) is not None) is blocks


def test_fragment_without_a_body_end_is_untouched(serve: ServeFactory) -> None:
    """htmx and Turbo swap in HTML fragments: no `</body>`, no script."""
    fragment = b'<li class="note">A new note</li>\n'
    port = serve(wsgi_app([fragment]), reload_browser=True).port
    assert fetch(port).content == fragment


def test_without_the_flag_nothing_changes(serve: ServeFactory) -> None:
    app = wsgi_app([PAGE])
    port = serve(app, reload=True).port
    assert fetch(port).content == PAGE
    assert fetch(port, "/__aserve__/reload.js").content == PAGE  # the app's answer
    assert app.seen == ["/", "/__aserve__/reload.js"]  # type: ignore[attr-defined]


def test_aserve_paths_never_reach_the_app(serve: ServeFactory) -> None:
    app = wsgi_app([PAGE])
    port = serve(app, reload_browser=True).port
    script = fetch(port, "/__aserve__/reload.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert b"EventSource" in script.content
    assert fetch(port, "/__aserve__/reload-worker.js").status_code == 200
    for path in ("/__aserve__/", "/__aserve__/events", "/__aserve__/admin?x=1"):
        # Served outside the reloader: no supervisor takes the event stream.
        assert fetch(port, path).status_code == 404
    assert fetch(port, "/__aserve__/reload.js", method="HEAD").content == b""
    assert app.seen == []  # type: ignore[attr-defined]


def test_request_error_page_carries_the_script(serve: ServeFactory) -> None:
    def broken(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        raise RuntimeError("the view broke")

    port = serve(broken, reload_browser=True).port
    page = fetch(port, Accept="text/html")
    assert page.status_code == 500
    assert b"the view broke" in page.content
    assert TAG in page.content
    text = fetch(port, Accept="*/*")
    assert TAG not in text.content


# ---------------------------------------------------------------- the event stream, reloading

APP = """\
def app(environ, start_response):
    body = b"<html><body><h1>{text}</h1></body></html>"
    start_response("200 OK", [("Content-Type", "text/html"), ("Content-Length", str(len(body)))])
    return [body]
"""
EVENT = re.compile(rb"event: (\w+)\ndata: \w+\n\n")


class Events:
    """A browser's event stream, read from a raw connection."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(
            b"GET /__aserve__/events HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n"
        )
        self.data = b""
        head = self._until(lambda: b"\r\n\r\n" in self.data)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
        assert b"content-type: text/event-stream" in head.lower()
        self._until(lambda: b"retry: " in self.data)
        self.seen = 0

    def _until(self, done: Callable[[], bool], timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while not done():
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"event stream closed; got {self.data!r}")
            self.data += chunk
        return self.data

    def next(self, timeout: float = 10.0) -> str:
        """The type of the next event."""
        self._until(lambda: len(EVENT.findall(self.data)) > self.seen, timeout)
        self.seen += 1
        kind: bytes = EVENT.findall(self.data)[self.seen - 1]
        return kind.decode()

    def nothing_within(self, seconds: float) -> bool:
        try:
            self._until(lambda: len(EVENT.findall(self.data)) > self.seen, seconds)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP.format(text="one"))
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "site.css").write_text("h1 { color: red }\n")
    return tmp_path


@pytest.fixture
def reloader(site: Path) -> Iterator[ServerProcess]:
    with ServerProcess(
        "app:app", "--reload-browser", "--port", "0", "--no-access-log", cwd=site
    ) as server:
        server.wait_for(r"Worker \d+ ready")
        yield server


def port_of(server: ServerProcess) -> int:
    return int(server.wait_for(r"on http://127\.0\.0\.1:(\d+)").group(1))


def test_an_edit_sends_reload_within_two_seconds(site: Path, reloader: ServerProcess) -> None:
    port = port_of(reloader)
    assert TAG in fetch(port).content
    events = Events(port)
    try:
        for text in ("two", "three"):  # the stream outlives each worker
            saved = time.monotonic()
            (site / "app.py").write_text(APP.format(text=text))
            assert events.next() == "reload"
            assert time.monotonic() - saved < 2.0
            assert f"<h1>{text}</h1>".encode() in fetch(port).content
    finally:
        events.close()


def test_a_stylesheet_edit_swaps_styles_without_a_restart(
    site: Path, reloader: ServerProcess
) -> None:
    events = Events(port_of(reloader))
    try:
        (site / "static" / "site.css").write_text("h1 { color: blue }\n")
        assert events.next() == "css"
        (site / "static" / "app.js").write_text("console.log(1)\n")
        assert events.next() == "reload"
    finally:
        events.close()
    assert not reloader.matches(r"Reloaded in")
    assert reloader.wait_for(r"site\.css; no restart, the browser swaps its stylesheets")


def test_a_broken_save_reloads_into_the_error_page_and_back(
    site: Path, reloader: ServerProcess
) -> None:
    port = port_of(reloader)
    events = Events(port)
    try:
        (site / "app.py").write_text("def app(:\n")
        assert events.next() == "reload"
        page = fetch(port, Accept="text/html")
        assert page.status_code == 500 and b"SyntaxError" in page.content
        assert TAG in page.content  # the error page refreshes itself too
        # A page opened on the error page listens as well: the supervisor serves it.
        late = Events(port)
        try:
            (site / "app.py").write_text(APP.format(text="fixed"))
            assert events.next() == "reload"
            assert late.next() == "reload"
        finally:
            late.close()
        assert b"<h1>fixed</h1>" in fetch(port).content
    finally:
        events.close()


def test_a_file_nothing_cares_about_sends_nothing(site: Path, reloader: ServerProcess) -> None:
    events = Events(port_of(reloader))
    try:
        (site / "notes.bak").write_text("x\n")
        assert events.nothing_within(0.5)
    finally:
        events.close()


def test_reload_browser_implies_reload_and_refuses_wsgiref(site: Path) -> None:
    assert Config(reload_browser=True).reload
    with ServerProcess("app:app", "--reload-browser", "--server", "wsgiref", cwd=site) as server:
        assert server.wait() == 2
    assert server.stderr.strip().splitlines() == [
        "aserve: error: --reload-browser needs --server aserve, not wsgiref (see aserve --help)"
    ]


def test_module_text_is_what_browsers_run() -> None:
    """The script parses as JavaScript (node checks it when it is installed)."""
    import shutil
    import subprocess

    from aserve.refresh import RELOAD_JS, WORKER_JS

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the script's syntax is checked where it is")
    for source in (RELOAD_JS, WORKER_JS):
        checked = subprocess.run(
            [node, "--check", "-"], input=source, capture_output=True, timeout=30, check=False
        )
        assert checked.returncode == 0, checked.stderr.decode()


# ---------------------------------------------------------------- files and batched streams


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_a_page_sent_as_a_file_gets_the_script_and_other_files_go_whole(
    serve: ServeFactory, tmp_path: Path, kind: str
) -> None:
    """A file the kernel would send (file_wrapper, pathsend) is read instead when it is a page:
    the script must go in; any other file goes out as it is."""
    page, blob = tmp_path / "page.html", tmp_path / "blob.bin"
    page.write_bytes(PAGE)
    blob.write_bytes(b"</body>" * 50_000)

    def pick(path: str) -> tuple[Path, str]:
        return (page, HTML) if path == "/page" else (blob, "application/octet-stream")

    def wsgi(environ: Environ, start_response: Callable[..., Any]) -> Any:
        path, content_type = pick(environ["PATH_INFO"])
        size = str(path.stat().st_size)
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", size)])
        return environ["wsgi.file_wrapper"](path.open("rb"))

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path, content_type = pick(scope["path"])
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", b"%d" % path.stat().st_size),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.pathsend", "path": str(path)})

    port = serve(wsgi if kind == "wsgi" else asgi, reload_browser=True).port
    response = fetch(port, "/page")
    assert response.content == WITH_SCRIPT
    assert response.headers["content-length"] == str(len(WITH_SCRIPT))
    assert fetch(port, "/blob").content == blob.read_bytes()


def test_a_page_streamed_by_a_generator_in_large_batches_gets_the_script(
    serve: ServeFactory,
) -> None:
    """A generator's pieces reach the sink as batches (`send_parts`): the page is still
    searched across them."""
    filler = b"<p>" + b"x" * 100_000 + b"</p>"
    body = PAGE.replace(b"<h1>", filler * 5 + b"<h1>")
    pieces = [body[i : i + 30_000] for i in range(0, len(body), 30_000)]

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", HTML)])
        yield from pieces

    port = serve(app, reload_browser=True).port
    response = fetch(port)
    assert response.content == body.replace(b"</body>", TAG + b"</body>")
