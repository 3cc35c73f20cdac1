"""The tests' own HTTP/1.1 response parser (tests/support/http.py): every test that reads a
response relies on it to frame responses right and to refuse what a server must not send."""

from __future__ import annotations

import pytest

from tests.support.http import CLOSED, Closed, FramingError, Part, Response, ResponseParser


def parse(
    data: bytes, methods: tuple[bytes, ...] = (), *, pieces: int = 0, truncated_ok: bool = False
) -> list[Response]:
    """Every response in `data` (then the close), fed whole or `pieces` bytes at a time."""
    parser = ResponseParser()
    step = pieces or len(data) or 1
    for start in range(0, len(data), step):
        parser.feed(data[start : start + step])
    parser.feed_eof()
    responses: list[Response] = []
    while True:
        method = methods[len(responses)] if len(responses) < len(methods) else b"GET"
        result = parser.next_response(method, truncated_ok=truncated_ok)
        assert result is not None, "undecided after the end of the input"
        if isinstance(result, Closed):
            return responses
        responses.append(result)


PIPELINE = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Case: Kept\r\n\r\nhello"
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"
    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n"  # answers a HEAD: no body follows
    b"HTTP/1.1 204 No Content\r\n\r\n"
    b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n"
    b"HTTP/1.1 404 \r\nconnection: close\r\n\r\nnot found"
)


@pytest.mark.parametrize("pieces", [0, 1, 7])
def test_every_framing_whole_or_in_pieces(pieces: int) -> None:
    methods = (b"GET", b"GET", b"GET", b"HEAD")
    responses = parse(PIPELINE, methods, pieces=pieces)
    assert [(r.status, r.reason, r.body) for r in responses] == [
        (100, b"Continue", b""),
        (200, b"OK", b"hello"),
        (200, b"OK", b"hello world"),
        (200, b"OK", b""),
        (204, b"No Content", b""),
        (304, b"Not Modified", b""),
        (404, b"", b"not found"),
    ]
    assert all(r.complete for r in responses)
    interim, sized, chunked, head, *_, last = responses
    assert interim.head == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert sized.headers == [(b"Content-Length", b"5"), (b"X-Case", b"Kept")]
    assert sized.header(b"x-case") == b"Kept"
    assert chunked.wire_body == (
        b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"
    )
    assert chunked.trailers == [(b"x-trailer", b"t")]
    assert head.header(b"content-length") == b"3"
    assert last.close
    assert not last.keeps_alive


def test_a_close_delimited_body_ends_with_the_connection() -> None:
    (response,) = parse(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
    assert (response.version, response.body, response.complete) == (
        b"HTTP/1.0",
        b"until the end",
        True,
    )


def test_events_show_a_body_as_it_comes() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nab")
    head = parser.next_event()
    assert isinstance(head, Response)
    assert parser.next_event() is None  # a chunk is given whole
    parser.feed(b"c\r\n")
    assert parser.next_event() == Part(b"abc", b"3\r\nabc\r\n")
    assert head.body == b"abc"
    assert parser.current is head
    parser.feed(b"0\r\n\r\n")
    assert parser.next_response() is head
    assert head.complete
    assert parser.next_event() is None
    parser.feed_eof()
    assert parser.next_event() is CLOSED


@pytest.mark.parametrize(
    ("data", "body"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", b"abc"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n7\r\npartial\r\n", b"partial"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n7\r\npart", b"part"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx-t: 1\r\n", b""),
    ],
    ids=["length", "no-last-chunk", "in-a-chunk", "in-the-trailers"],
)
def test_a_body_cut_short_is_an_error_unless_allowed(data: bytes, body: bytes) -> None:
    with pytest.raises(FramingError, match="closed in the body"):
        parse(data)
    (response,) = parse(data, truncated_ok=True)
    assert (response.body, response.complete) == (body, False)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabcdef", "not a status line: b'def'"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 2", "closed in a response head"),
        (b"hello", "not a status line"),
        (b"HTTP/1.1 200\r\n\r\n", "not a status line"),
        (b"HTTP/2 200 OK\r\n\r\n", "not a status line"),
        (b"HTTP/1.1 200 OK\r\nx-bad: a\nb\r\n\r\n", "not a header field line"),
        (b"HTTP/1.1 200 OK\r\nBad Name: v\r\n\r\n", "not a header field line"),
        (b"HTTP/1.1 200 OK\r\n folded\r\n\r\n", "not a header field line"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            "both Content-Length and Transfer-Encoding",
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc", "not one"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: -3\r\n\r\n", "not one"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", "other than chunked"),
        (b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n", "a 204 response with"),
        (b"HTTP/1.1 100 Continue\r\ntransfer-encoding: chunked\r\n\r\n", "a 100 response with"),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
            "not followed by CRLF",
        ),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nz\r\n", "not a chunk size"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcd", "not followed by"),
        (
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nokHTTP/1.1",
            "after a response that ends the connection",
        ),
        (
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.0 200 OK\r\n\r\n",
            "after a response that ends the connection",
        ),
    ],
)
def test_what_a_server_must_not_send_is_refused(data: bytes, error: str) -> None:
    with pytest.raises(FramingError, match=error):
        parse(data)


def test_http10_keep_alive_allows_another_response() -> None:
    data = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\ncontent-length: 2\r\n\r\nok" * 2
    assert [r.body for r in parse(data)] == [b"ok", b"ok"]
