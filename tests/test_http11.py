"""Byte-in/byte-out tests of `aserve.protocols.http11.Connection`: no sockets, no event loop."""

from __future__ import annotations

import itertools
from http import HTTPStatus
from typing import cast

import pytest

from aserve.errors import AppProtocolError
from aserve.protocols import http11
from aserve.protocols.http11 import (
    Connection,
    Data,
    EndOfMessage,
    Event,
    ProtocolFailure,
    Request,
    status_line,
)
from aserve.types import Headers
from tests.support import limits_with
from tests.support.http11_events import Summary, feed, pull, summary

DEFAULTS = b"date: Sun, 06 Nov 1994 08:49:37 GMT\r\nserver: aserve\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# -- helpers -------------------------------------------------------------------------------


def only_request(events: list[Event]) -> Request:
    requests = [e for e in events if isinstance(e, Request)]
    assert len(requests) == 1, events
    return requests[0]


def failure(events: list[Event]) -> ProtocolFailure:
    assert events, "expected a ProtocolFailure, got no event"
    last = events[-1]
    assert isinstance(last, ProtocolFailure), events
    return last


def body_of(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Data))


def respond(
    conn: Connection, status: int = 200, headers: Headers | None = None, body: bytes = b""
) -> bytes:
    """A complete response; the bytes that would go on the wire."""
    if headers is None:
        headers = [(b"content-length", b"%d" % len(body))]
    out = conn.response_head(status, headers, DEFAULTS)
    if body:
        out += conn.body_bytes(body)
    return out + conn.end_bytes()


def head_lines(head: bytes) -> list[bytes]:
    assert head.endswith(b"\r\n\r\n"), head
    return head[:-4].split(b"\r\n")


# -- requests --------------------------------------------------------------------------------


def test_simple_get_round_trip() -> None:
    conn = Connection(limits_with())
    events = feed(conn, b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert summary(events) == [
        (
            "request",
            b"GET",
            b"/index.html?q=1",
            "1.1",
            ((b"host", b"example.com"),),
            True,
            False,
        ),
        ("end",),
    ]
    assert conn.response_pending
    head = conn.response_head(
        200, [(b"content-type", b"text/plain"), (b"content-length", b"5")], DEFAULTS
    )
    assert head == (
        b"HTTP/1.1 200 OK\r\n"
        b"content-type: text/plain\r\n"
        b"content-length: 5\r\n"
        b"date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
        b"server: aserve\r\n"
        b"\r\n"
    )
    assert conn.body_bytes(b"hello") == b"hello"
    assert conn.end_bytes() == b""
    assert not conn.response_pending
    assert conn.start_next_cycle() is True
    assert conn.keep_alive
    assert pull(conn) == []


def test_header_names_lower_cased_and_values_kept() -> None:
    conn = Connection(limits_with())
    request = only_request(
        feed(
            conn,
            b"GET / HTTP/1.1\r\nHOST: Example.COM\r\nX-Mixed-Case:   Some Value  With  Gaps"
            b" \t\r\nAccept-Encoding:gzip\r\nx-dup: 1\r\nX-Dup: 2\r\n\r\n",
        )
    )
    # Names lower-cased, order and duplicates kept; values keep their case and inner spaces
    # but lose the surrounding optional whitespace (RFC 9112 §5).
    assert request.headers == [
        (b"host", b"Example.COM"),
        (b"x-mixed-case", b"Some Value  With  Gaps"),
        (b"accept-encoding", b"gzip"),
        (b"x-dup", b"1"),
        (b"x-dup", b"2"),
    ]


BODY = b"The quick brown fox jumps over the lazy dog." * 3
POST_HEAD = b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(BODY)


@pytest.mark.parametrize("piece", [1, 2, 7, 50])
def test_content_length_body_in_pieces(piece: int) -> None:
    conn = Connection(limits_with())
    raw = POST_HEAD + BODY
    events: list[Event] = []
    for start in range(0, len(raw), piece):
        events += feed(conn, raw[start : start + piece])
    assert isinstance(events[0], Request)
    assert isinstance(events[-1], EndOfMessage)
    assert sum(isinstance(e, EndOfMessage) for e in events) == 1
    assert body_of(events) == BODY


def test_a_sized_body_arriving_after_its_head_is_handed_on_as_received() -> None:
    """The transport's bytes objects themselves, not copies: a 16 MiB upload is copied once
    less on its way to the app. What follows the body is parsed by a fresh parser."""
    conn = Connection(limits_with())
    size = 3 * 65536
    head = b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % size
    first = bytes(range(256)) * 64
    second = b"b" * (size - 2 * len(first))
    events = feed(conn, head + first)
    assert summary(events)[1:] == [("data", first)]
    pieces = [bytes(first), second]
    events = feed(conn, pieces[0]) + feed(conn, pieces[1] + b"GET /next HTTP/1.1\r\nHost: h")
    data = [e for e in events if isinstance(e, Data)]
    assert data[0].data is pieces[0]
    assert data[1].data == second
    assert isinstance(events[-1], EndOfMessage)
    respond(conn)
    assert conn.start_next_cycle() is True
    events = feed(conn, b"\r\n\r\n")
    assert [s[:3] for s in summary(events)] == [("request", b"GET", b"/next"), ("end",)]
    # And one more request that carries a body the same way.
    respond(conn)
    assert conn.start_next_cycle() is True
    events = feed(conn, b"PUT /p HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\n")
    events += feed(conn, b"ab") + feed(conn, b"cd")
    assert summary(events)[1:] == [("data", b"abcd"), ("end",)]


def test_a_sized_body_drained_in_pieces_leaves_the_next_request_intact() -> None:
    conn = Connection(limits_with(drain=100_000))
    feed(conn, b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 70000\r\n\r\nab")
    respond(conn, body=b"early")
    assert conn.start_next_cycle() is True
    assert feed(conn, b"x" * 40_000) == []
    events = feed(conn, b"y" * 29_998 + b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    assert [s[:3] for s in summary(events)] == [("request", b"GET", b"/b"), ("end",)]


def test_chunked_request_body_is_dechunked() -> None:
    conn = Connection(limits_with())
    events = feed(
        conn,
        b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1;ext=val\r\n \r\nA\r\n0123456789\r\n0\r\n\r\n",
    )
    assert isinstance(events[0], Request)
    assert body_of(events) == b"hello 0123456789"
    assert isinstance(events[-1], EndOfMessage)


def test_request_trailers_are_not_merged_into_headers() -> None:
    # RFC 9110 §6.5.1; before the fix a trailing "Host" was appended to the Request's list.
    conn = Connection(limits_with())
    events = feed(
        conn,
        b"POST /t HTTP/1.1\r\nHost: good\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nHost: evil\r\nX-Checksum: 1\r\n\r\n",
    )
    request = only_request(events)
    assert request.headers == [(b"host", b"good"), (b"transfer-encoding", b"chunked")]
    assert summary(events)[1:] == [("data", b"abc"), ("end",)]


def test_endless_trailer_field_is_capped() -> None:
    # httptools buffers a field until its end: without a cap this grew without bound.
    conn = Connection(limits_with(request_head=1024, request_field_size=256))
    feed(conn, b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: ")
    events: list[Event] = []
    for _ in range(10):
        events += feed(conn, b"a" * 512)
    assert summary(events) == [("failure", 431, True)]


def test_many_small_chunks_are_not_mistaken_for_trailers() -> None:
    conn = Connection(limits_with(request_head=256, request_field_size=64))
    events = feed(conn, b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    # Each feed ends right after a chunk header; its data only comes with the next feed.
    for _ in range(200):
        events += feed(conn, b"4\r\n")
        events += feed(conn, b"abcd\r\n")
    events += feed(conn, b"0\r\n\r\n")
    assert body_of(events) == b"abcd" * 200
    assert isinstance(events[-1], EndOfMessage)


PIPELINE = (
    b"POST /one HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
    b"PUT /two HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n"
    b"GET /three HTTP/1.1\r\nHost: h\r\n\r\n"
)


def serve_all(conn: Connection, raw: bytes, splits: list[int]) -> list[Summary]:
    """Feed `raw` cut at `splits`, answering each request at once; the events seen."""
    events: list[Event] = []
    bounds = [0, *splits, len(raw)]
    for start, end in itertools.pairwise(bounds):
        conn.receive_data(raw[start:end])
        while True:
            events += pull(conn)
            if not (conn.response_pending and conn.request is not None):
                break
            if not any(isinstance(e, EndOfMessage) for e in events[-1:]):
                break
            respond(conn, body=b"ok")
            assert conn.start_next_cycle()
    return summary(events)


def test_pipeline_events_do_not_depend_on_how_bytes_arrive() -> None:
    whole = serve_all(Connection(limits_with()), PIPELINE, [])
    assert [s[:3] for s in whole if s[0] == "request"] == [
        ("request", b"POST", b"/one"),
        ("request", b"PUT", b"/two"),
        ("request", b"GET", b"/three"),
    ]
    for cut in range(1, len(PIPELINE)):
        assert serve_all(Connection(limits_with()), PIPELINE, [cut]) == whole, cut
    assert serve_all(Connection(limits_with()), PIPELINE, list(range(1, len(PIPELINE)))) == whole


def test_pipelined_request_waits_for_the_response() -> None:
    conn = Connection(limits_with())
    events = feed(
        conn,
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    assert [s[:3] for s in summary(events)] == [("request", b"GET", b"/a"), ("end",)]
    assert conn.next_event() is None
    assert conn.has_queued_request
    conn.response_head(200, [(b"content-length", b"0")], DEFAULTS)
    assert conn.next_event() is None
    assert conn.has_queued_request
    assert conn.end_bytes() == b""
    # The response is over but the cycle is not: the next request still waits.
    assert conn.next_event() is None
    assert conn.start_next_cycle()
    events = pull(conn)
    assert [s[:3] for s in summary(events)] == [("request", b"GET", b"/b"), ("end",)]
    assert conn.request is events[0]
    assert not conn.has_queued_request


# -- keep-alive ------------------------------------------------------------------------------


def test_http10_closes_unless_keep_alive_asked() -> None:
    conn = Connection(limits_with())
    request = only_request(feed(conn, b"GET / HTTP/1.0\r\n\r\n"))
    assert not request.keep_alive
    head = conn.response_head(200, [(b"content-length", b"2")], DEFAULTS)
    assert b"connection: close" in head_lines(head)
    conn.body_bytes(b"hi")
    conn.end_bytes()
    assert conn.start_next_cycle() is False
    assert not conn.keep_alive


def test_http10_keep_alive_is_confirmed() -> None:
    conn = Connection(limits_with())
    request = only_request(feed(conn, b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"))
    assert request.keep_alive
    head = conn.response_head(200, [(b"content-length", b"0")], DEFAULTS)
    assert head == (
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: keep-alive\r\n" + DEFAULTS + b"\r\n"
    )
    conn.end_bytes()
    assert conn.start_next_cycle() is True
    assert summary(feed(conn, b"GET /next HTTP/1.0\r\n\r\n"))[0][:3] == (
        "request",
        b"GET",
        b"/next",
    )


def test_http11_connection_close_from_client() -> None:
    conn = Connection(limits_with())
    feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    head = conn.response_head(200, [(b"content-length", b"0")], DEFAULTS)
    assert b"connection: close" in head_lines(head)
    conn.end_bytes()
    assert conn.start_next_cycle() is False


def test_app_connection_close_header_ends_the_connection() -> None:
    conn = Connection(limits_with())
    feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    head = conn.response_head(200, [(b"Connection", b"Close"), (b"content-length", b"0")], DEFAULTS)
    lines = head_lines(head)
    assert b"Connection: Close" not in lines
    assert lines.count(b"connection: close") == 1
    conn.end_bytes()
    assert conn.start_next_cycle() is False


# -- response framing ------------------------------------------------------------------------


def test_http11_response_without_length_is_chunked() -> None:
    conn = Connection(limits_with())
    feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    head = conn.response_head(200, [(b"content-type", b"text/plain")], DEFAULTS)
    assert head == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n"
        + DEFAULTS
        + b"\r\n"
    )
    assert conn.body_bytes(b"hello world") == b"b\r\nhello world\r\n"
    assert conn.body_bytes(b"") == b""  # an empty chunk would end the body
    assert conn.body_bytes(b"!") == b"1\r\n!\r\n"
    assert conn.end_bytes() == b"0\r\n\r\n"
    assert conn.start_next_cycle() is True


def test_body_parts_frame_a_batch_without_joining_it() -> None:
    conn = Connection(limits_with())
    feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    conn.response_head(200, [], DEFAULTS)
    parts = [b"hello", b"", b" world"]
    framed = conn.body_parts(parts)
    assert framed == [b"b\r\n", b"hello", b"", b" world", b"\r\n"]
    assert framed[1] is parts[0]
    assert conn.body_parts([b"", b""]) == []  # an empty chunk would end the body
    assert conn.body_sent == 11


def test_body_parts_and_counted_bytes_keep_to_the_content_length() -> None:
    conn = Connection(limits_with())
    feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    conn.response_head(200, [(b"content-length", b"10")], DEFAULTS)
    parts = [b"abc", b"de"]
    assert conn.body_parts(parts) == parts
    assert conn.body_left == 5
    conn.count_body(4)  # sent by sendfile
    assert (conn.body_left, conn.body_sent) == (1, 9)
    with pytest.raises(AppProtocolError):
        conn.count_body(2)
    with pytest.raises(AppProtocolError):
        conn.body_parts([b"xy"])


def test_nothing_is_left_for_sendfile_without_a_content_length_or_a_body() -> None:
    conn = Connection(limits_with())
    feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\n\r\nHEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
    conn.response_head(200, [], DEFAULTS)
    assert conn.body_left is None  # chunked
    with pytest.raises(AppProtocolError):
        conn.count_body(1)
    conn.end_bytes()
    assert conn.start_next_cycle()
    pull(conn)
    conn.response_head(200, [(b"content-length", b"10")], DEFAULTS)
    assert conn.body_left is None  # HEAD: no body goes out
    assert conn.body_parts([b"abc"]) == []


def test_app_chunked_transfer_encoding_is_encoded_by_aserve() -> None:
    conn = Connection(limits_with())
    feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    head = conn.response_head(200, [(b"Transfer-Encoding", b"chunked")], DEFAULTS)
    assert head_lines(head)[1] == b"Transfer-Encoding: chunked"
    assert b"transfer-encoding: chunked" not in head_lines(head)
    assert conn.body_bytes(b"abc") == b"3\r\nabc\r\n"
    assert conn.end_bytes() == b"0\r\n\r\n"


def test_http10_response_without_length_is_close_delimited() -> None:
    conn = Connection(limits_with())
    feed(conn, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    head = conn.response_head(200, [(b"content-type", b"text/plain")], DEFAULTS)
    assert head == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n" + DEFAULTS + b"\r\n"
    )
    assert conn.body_bytes(b"hello") == b"hello"
    assert conn.end_bytes() == b""
    assert conn.start_next_cycle() is False


def test_no_transfer_encoding_in_a_response_to_http10() -> None:
    # RFC 9112 §6.1: a server MUST NOT send Transfer-Encoding to an HTTP/1.0 request.
    conn = Connection(limits_with())
    feed(conn, b"GET / HTTP/1.0\r\n\r\n")
    head = conn.response_head(200, [(b"transfer-encoding", b"chunked")], DEFAULTS)
    assert head == b"HTTP/1.1 200 OK\r\nconnection: close\r\n" + DEFAULTS + b"\r\n"
    assert conn.body_bytes(b"raw") == b"raw"
    assert conn.end_bytes() == b""
    assert conn.start_next_cycle() is False


@pytest.mark.parametrize(
    "headers",
    [[], [(b"content-length", b"42")], [(b"transfer-encoding", b"chunked")]],
    ids=["no-length", "content-length", "chunked"],
)
def test_head_response_has_no_body(headers: Headers) -> None:
    conn = Connection(limits_with())
    feed(conn, b"HEAD /file HTTP/1.1\r\nHost: h\r\n\r\n")
    head = conn.response_head(200, headers, DEFAULTS)
    # With no length, the framing field a GET would get (RFC 9110 §9.3.2), and no chunk.
    fields = headers or [(b"transfer-encoding", b"chunked")]
    expected = b"".join(b"%s: %s\r\n" % pair for pair in fields)
    assert head == b"HTTP/1.1 200 OK\r\n" + expected + DEFAULTS + b"\r\n"
    assert conn.body_bytes(b"x" * 42) == b""
    assert conn.end_bytes() == b""
    assert conn.keep_alive
    assert conn.start_next_cycle() is True


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    conn = Connection(limits_with())
    feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    head = conn.response_head(status, [(b"etag", b'"v1"')], DEFAULTS)
    assert head == status_line(status) + b'etag: "v1"\r\n' + DEFAULTS + b"\r\n"
    assert conn.body_bytes(b"ignored") == b""
    assert conn.end_bytes() == b""
    assert conn.start_next_cycle() is True


def test_204_drops_framing_headers_from_the_app() -> None:
    # RFC 9110 §8.6 and RFC 9112 §6.1: no Content-Length or Transfer-Encoding in a 204.
    conn = Connection(limits_with())
    feed(conn, b"DELETE /x HTTP/1.1\r\nHost: h\r\n\r\n")
    head = conn.response_head(
        204, [(b"content-length", b"0"), (b"transfer-encoding", b"chunked")], DEFAULTS
    )
    assert head == b"HTTP/1.1 204 No Content\r\n" + DEFAULTS + b"\r\n"
    assert conn.end_bytes() == b""
    assert conn.start_next_cycle() is True


def test_304_keeps_the_content_length_of_the_representation() -> None:
    conn = Connection(limits_with())
    feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\nIf-None-Match: *\r\n\r\n")
    head = conn.response_head(304, [(b"content-length", b"1234")], DEFAULTS)
    assert b"content-length: 1234" in head_lines(head)
    assert conn.body_bytes(b"x") == b""
    assert conn.end_bytes() == b""
    assert conn.start_next_cycle() is True


def test_app_server_header_replaces_the_default() -> None:
    conn = Connection(limits_with())
    feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    head = conn.response_head(
        200, [(b"Server", b"custom/1.0"), (b"content-length", b"0")], DEFAULTS
    )
    assert head == (
        b"HTTP/1.1 200 OK\r\nServer: custom/1.0\r\ncontent-length: 0\r\n"
        b"date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"
    )


def test_app_date_header_replaces_the_default() -> None:
    conn = Connection(limits_with())
    feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    head = conn.response_head(
        200, [(b"Date", b"Mon, 01 Jan 2001 00:00:00 GMT"), (b"content-length", b"0")], DEFAULTS
    )
    assert head == (
        b"HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2001 00:00:00 GMT\r\ncontent-length: 0\r\n"
        b"server: aserve\r\n\r\n"
    )


def test_status_given_as_an_int_enum() -> None:
    conn = Connection(limits_with())
    feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    head = conn.response_head(HTTPStatus.NOT_FOUND, [(b"content-length", b"0")], DEFAULTS)
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\n")


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"identity, chunked", b"gzip"])
def test_transfer_codings_other_than_chunked_get_501(coding: bytes) -> None:
    conn = Connection(limits_with())
    events = feed(
        conn, b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: " + coding + b"\r\n\r\n0\r\n\r\n"
    )
    assert summary(events) == [("failure", 501, True)]


def test_status_lines() -> None:
    assert status_line(200) == b"HTTP/1.1 200 OK\r\n"
    assert status_line(418) == b"HTTP/1.1 418 I'm a Teapot\r\n"
    # RFC 9112 §4: the space before an empty reason phrase is required.
    assert status_line(599) == b"HTTP/1.1 599 \r\n"
    assert status_line(200, b"Fine") == b"HTTP/1.1 200 Fine\r\n"
    assert status_line(404, b"Not Found") == b"HTTP/1.1 404 Not Found\r\n"
    # 1xx are interim responses: as a final status they would leave the client waiting.
    for bad in (0, 99, 100, 101, 199, 600, 1000):
        with pytest.raises(AppProtocolError):
            status_line(bad)
    with pytest.raises(AppProtocolError):
        status_line(200, b"OK\r\nX-Injected: 1")


# -- Expect: 100-continue --------------------------------------------------------------------

EXPECT_HEAD = b"PUT /big HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"


def test_continue_is_sent_once() -> None:
    conn = Connection(limits_with())
    request = only_request(feed(conn, EXPECT_HEAD))
    assert request.expect_continue
    assert conn.continue_bytes() == CONTINUE
    assert conn.continue_bytes() == b""
    assert summary(feed(conn, b"data")) == [("data", b"data"), ("end",)]
    assert respond(conn, body=b"ok").endswith(b"\r\n\r\nok")
    assert conn.start_next_cycle() is True


def test_no_continue_after_the_response_started() -> None:
    conn = Connection(limits_with())
    feed(conn, EXPECT_HEAD)
    head = conn.response_head(417, [(b"content-length", b"0")], DEFAULTS)
    assert conn.continue_bytes() == b""
    # The client may still send the body it announced: the connection cannot be reused.
    assert b"connection: close" in head_lines(head)
    conn.end_bytes()
    assert conn.start_next_cycle() is False


def test_no_continue_once_the_body_arrived() -> None:
    conn = Connection(limits_with())
    feed(conn, EXPECT_HEAD + b"data")
    assert conn.continue_bytes() == b""


def test_no_continue_for_http10() -> None:
    conn = Connection(limits_with())
    request = only_request(
        feed(conn, b"PUT / HTTP/1.0\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    )
    assert not request.expect_continue
    assert conn.continue_bytes() == b""


def test_other_expectations_get_no_continue() -> None:
    conn = Connection(limits_with())
    request = only_request(
        feed(conn, b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nExpect: later\r\n\r\n")
    )
    assert not request.expect_continue
    assert conn.continue_bytes() == b""


# -- the app breaking the protocol -----------------------------------------------------------

BAD_RESPONSE_HEADERS = [
    (b"x-a", b"one\r\nx-injected: 1"),
    (b"x-a", b"one\rtwo"),
    (b"x-a", b"one\ntwo"),
    (b"x-a", b"nul\x00"),
    (b"x a", b"v"),
    (b"x:a", b"v"),
    (b"", b"v"),
    (b"x-a\r\n", b"v"),
    (b"x-\x00", b"v"),
    (b"caf\xc3\xa9", b"v"),
    (b"content-length", b"+5"),
    (b"content-length", b"-1"),
    (b"content-length", b"1_0"),
    (b"content-length", b"five"),
    (b"content-length", b""),
    (b"transfer-encoding", b"gzip"),
]


@pytest.mark.parametrize("bad", BAD_RESPONSE_HEADERS, ids=repr)
def test_invalid_response_header_is_refused(bad: tuple[bytes, bytes]) -> None:
    conn = Connection(limits_with())
    feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    with pytest.raises(AppProtocolError):
        conn.response_head(200, [(b"x-ok", b"1"), bad], DEFAULTS)
    # Nothing was produced and nothing changed: a valid response can still be sent.
    assert not conn.response_started
    assert conn.response_head(500, [(b"content-length", b"0")], DEFAULTS).startswith(
        b"HTTP/1.1 500 Internal Server Error\r\n"
    )


def test_repeated_fields_are_validated_every_time_they_differ() -> None:
    # Valid fields are remembered (see FieldMemo), here across connections as in a server; a
    # field that differs only in its value or in the case of its name is checked afresh.
    memo: http11.FieldMemo = {}
    for _ in range(3):
        conn = Connection(limits_with(), field_memo=memo)
        feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        head = conn.response_head(200, [(b"X-Seen", b"v"), (b"content-length", b"0")], DEFAULTS)
        assert b"\r\nX-Seen: v\r\n" in head
    assert memo == {b"X-Seen": {b"v": b"X-Seen: v\r\n"}}
    for bad in [(b"X-Seen", b"v\r\nx-injected: 1"), (b"X-Seen ", b"v"), (b"X-Seen", b"v\x00")]:
        conn = Connection(limits_with(), field_memo=memo)
        feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        with pytest.raises(AppProtocolError):
            conn.response_head(200, [bad], DEFAULTS)


def test_unremembered_fields_are_still_checked_and_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http11, "FIELD_MEMO_NAMES", 1)
    monkeypatch.setattr(http11, "FIELD_MEMO_VALUES", 2)
    memo: http11.FieldMemo = {}
    conn = Connection(limits_with(), field_memo=memo)
    feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    fields = [
        (b"x-long", b"v" * (http11.FIELD_MEMO_VALUE_MAX + 1)),  # too long to be remembered
        (b"x-first", b"1"),  # fills the memo's names
        (b"x-second", b"2"),  # a name beyond them: checked and sent, not remembered
        (b"x-first", b"2"),
        (b"x-first", b"3"),  # a value beyond the name's: checked and sent, not remembered
        (b"content-length", b"0"),
    ]
    head = conn.response_head(200, fields, DEFAULTS)
    assert b"\r\nx-long: vvv" in head
    assert b"\r\nx-first: 1\r\nx-second: 2\r\nx-first: 2\r\nx-first: 3\r\n" in head
    assert memo == {b"x-first": {b"1": b"x-first: 1\r\n", b"2": b"x-first: 2\r\n"}}
    for bad in [(b"x-second", b"2\n"), (b"x array", b"1"), (b"x-first", b"3\r\nx: y")]:
        conn = Connection(limits_with(), field_memo=memo)
        feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        with pytest.raises(AppProtocolError):
            conn.response_head(200, [bad], DEFAULTS)
        assert not conn.response_started


def test_both_content_length_and_chunked_is_refused() -> None:
    conn = Connection(limits_with())
    feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    with pytest.raises(AppProtocolError):
        conn.response_head(
            200, [(b"content-length", b"3"), (b"transfer-encoding", b"chunked")], DEFAULTS
        )
    assert not conn.response_started


def test_body_longer_than_content_length() -> None:
    conn = Connection(limits_with())
    feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    conn.response_head(200, [(b"content-length", b"5")], DEFAULTS)
    assert conn.body_bytes(b"abc") == b"abc"
    with pytest.raises(AppProtocolError):
        conn.body_bytes(b"def")


def test_body_shorter_than_content_length_closes() -> None:
    conn = Connection(limits_with())
    feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    conn.response_head(200, [(b"content-length", b"5")], DEFAULTS)
    conn.body_bytes(b"abc")
    assert conn.end_bytes() == b""
    assert conn.keep_alive is False
    assert conn.start_next_cycle() is False


def test_response_calls_out_of_order() -> None:
    conn = Connection(limits_with())
    with pytest.raises(AppProtocolError):
        conn.response_head(200, [], DEFAULTS)
    feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    with pytest.raises(AppProtocolError):
        conn.body_bytes(b"x")
    with pytest.raises(AppProtocolError):
        conn.end_bytes()
    conn.response_head(200, [(b"content-length", b"0")], DEFAULTS)
    with pytest.raises(AppProtocolError):
        conn.response_head(200, [], DEFAULTS)
    with pytest.raises(AppProtocolError):
        conn.start_next_cycle()


def test_error_response_bytes() -> None:
    conn = Connection(limits_with())
    failed = failure(feed(conn, b"GET / HTTP/1.1\r\n\r\n"))
    assert (failed.status, failed.respond) == (400, True)
    assert conn.error_response(400, DEFAULTS, "missing Host") == (
        b"HTTP/1.1 400 Bad Request\r\n"
        b"content-type: text/plain; charset=utf-8\r\n"
        b"content-length: 13\r\n"
        b"connection: close\r\n" + DEFAULTS + b"\r\nmissing Host\n"
    )
    assert not conn.keep_alive


# -- the client breaking the protocol --------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            id="cl-then-te",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 3\r\n\r\n0\r\n\r\n",
            id="te-then-cl",
        ),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="no-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two-hosts"),
        pytest.param(b"GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n", id="two-hosts-1.0"),
        pytest.param(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", id="http2"),
        pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", id="h2-preface"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: v\r\n\r\n", id="space-in-name"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nName : v\r\n\r\n", id="space-before-colon"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n", id="obs-fold"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", id="cl-neg"),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            id="cl-twice",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            id="chunked-not-last",
        ),
        # RFC 9112 §6.1: Transfer-Encoding in a 1.0 request is faulty framing (fixed here).
        pytest.param(
            b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n",
            id="te-in-http10",
        ),
        # RFC 9112 §3.2.4: the asterisk-form belongs to OPTIONS only (fixed here).
        pytest.param(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", id="asterisk-get"),
    ],
)
def test_bad_request_gets_400(raw: bytes) -> None:
    conn = Connection(limits_with())
    events = feed(conn, raw)
    assert summary(events)[-1] == ("failure", 400, True)
    assert not any(isinstance(e, Request) for e in events)
    # A broken connection ignores whatever comes next.
    assert feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n") == []


def test_chunk_size_error_after_the_head() -> None:
    conn = Connection(limits_with())
    events = feed(
        conn, b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5x\r\nhello\r\n"
    )
    assert summary(events)[0][:2] == ("request", b"POST")
    assert summary(events)[-1] == ("failure", 400, True)


def test_options_asterisk_is_accepted() -> None:
    conn = Connection(limits_with())
    request = only_request(feed(conn, b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"))
    assert request.target == b"*"


def test_host_may_be_missing_in_http10() -> None:
    conn = Connection(limits_with())
    request = only_request(feed(conn, b"GET /old HTTP/1.0\r\nAccept: */*\r\n\r\n"))
    assert (request.target, request.http_version) == (b"/old", "1.0")


def test_empty_host_is_accepted() -> None:
    # RFC 9112 §3.2: a client without an authority sends Host with an empty value.
    conn = Connection(limits_with())
    request = only_request(feed(conn, b"GET / HTTP/1.1\r\nHost:\r\n\r\n"))
    assert request.headers == [(b"host", b"")]


def test_request_line_over_the_limit_gets_414() -> None:
    limits = limits_with(request_line=20)
    assert only_request(
        feed(Connection(limits), b"GET /" + b"a" * 19 + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    )
    events = feed(Connection(limits), b"GET /" + b"a" * 20 + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert summary(events) == [("failure", 414, True)]
    # Byte by byte: the target is refused before its end is seen.
    conn = Connection(limits)
    events = []
    for byte in b"GET /" + b"a" * 40:
        events += feed(conn, bytes([byte]))
    assert summary(events) == [("failure", 414, True)]


def test_too_many_fields_gets_431() -> None:
    limits = limits_with(request_fields=3)
    ok = b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n"
    assert only_request(feed(Connection(limits), ok))
    events = feed(Connection(limits), b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n")
    assert summary(events) == [("failure", 431, True)]


def test_field_too_large_gets_431() -> None:
    limits = limits_with(request_field_size=16)
    # name + value: 4 + 12 = 16 is the most allowed.
    fits = b"GET / HTTP/1.1\r\nHost: h\r\nName: " + b"v" * 12 + b"\r\n\r\n"
    assert only_request(feed(Connection(limits), fits))
    events = feed(Connection(limits), fits.replace(b"v" * 12, b"v" * 13))
    assert summary(events) == [("failure", 431, True)]


def test_head_too_large_gets_431() -> None:
    limits = limits_with(request_head=64, request_field_size=40)
    fields = b"".join(b"F%d: %s\r\n" % (i, b"x" * 20) for i in range(4))
    events = feed(Connection(limits), b"GET / HTTP/1.1\r\nHost: h\r\n" + fields + b"\r\n")
    assert summary(events) == [("failure", 431, True)]


def test_endless_header_field_gets_431() -> None:
    conn = Connection(limits_with(request_head=1024, request_field_size=256))
    events = feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\nX-Endless: ")
    for _ in range(10):
        events += feed(conn, b"a" * 512)
    assert summary(events) == [("failure", 431, True)]


def test_endless_first_header_field_gets_431() -> None:
    conn = Connection(limits_with(request_head=1024, request_field_size=256))
    events = feed(conn, b"GET / HTTP/1.1\r\nX-Endless: ")
    for _ in range(10):
        events += feed(conn, b"a" * 512)
    assert summary(events) == [("failure", 431, True)]


def test_garbage_after_a_request_waits_for_its_response() -> None:
    conn = Connection(limits_with())
    events = feed(conn, b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n\x16\x03\x01 not http\r\n\r\n")
    assert [s[:3] for s in summary(events)] == [("request", b"GET", b"/ok"), ("end",)]
    assert conn.next_event() is None
    assert conn.has_queued_request
    assert respond(conn, body=b"fine").endswith(b"fine")
    assert conn.start_next_cycle()
    assert summary(pull(conn)) == [("failure", 400, True)]


def test_garbage_in_the_same_feed_as_a_body() -> None:
    conn = Connection(limits_with())
    events = feed(
        conn, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nokGARBAGE GARBAGE\r\n\r\n"
    )
    assert summary(events)[1:] == [("data", b"ok"), ("end",)]
    respond(conn)
    assert conn.start_next_cycle()
    assert summary(pull(conn)) == [("failure", 400, True)]


# -- the app answering before it read the body -----------------------------------------------


def test_unread_body_within_the_drain_limit_is_discarded() -> None:
    conn = Connection(limits_with(drain=10))
    events = feed(conn, b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\nabc")
    assert summary(events)[1:] == [("data", b"abc")]
    respond(conn, body=b"early")
    assert conn.start_next_cycle() is True
    # The 9 bytes left of the body are dropped, not parsed as a request.
    events = feed(conn, b"defghijklGET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    assert [s[:3] for s in summary(events)] == [("request", b"GET", b"/b"), ("end",)]


def test_unread_body_received_but_not_pulled_is_dropped() -> None:
    conn = Connection(limits_with(drain=0))
    conn.receive_data(
        b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz"
        b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    assert isinstance(conn.next_event(), Request)
    respond(conn)
    assert conn.start_next_cycle() is True
    assert [s[:3] for s in summary(pull(conn))] == [("request", b"GET", b"/b"), ("end",)]


@pytest.mark.parametrize(("length", "kept"), [(13, True), (14, False), (1_000_000, False)])
def test_the_response_says_close_when_more_body_may_come_than_is_drained(
    length: int, kept: bool
) -> None:
    # A response never promises a connection that the drain limit then closes: with 3 bytes
    # arrived and a drain of 10, 10 more can be drained and 11 cannot.
    conn = Connection(limits_with(drain=10))
    feed(conn, b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\nabc" % length)
    out = respond(conn, body=b"early")
    assert (b"connection: close\r\n" in out) is not kept
    assert conn.start_next_cycle() is kept


@pytest.mark.parametrize(("length", "kept"), [(13, True), (14, False)])
def test_an_http10_keep_alive_response_is_kept_only_when_drainable(length: int, kept: bool) -> None:
    conn = Connection(limits_with(drain=10))
    feed(
        conn,
        b"POST /a HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: %d\r\n\r\nabc" % length,
    )
    out = respond(conn, body=b"early")
    assert (b"connection: keep-alive\r\n" in out) is kept
    assert (b"connection: close\r\n" in out) is not kept
    assert conn.start_next_cycle() is kept


def test_an_incomplete_chunked_body_makes_the_response_say_close() -> None:
    # How much of a chunked body is left cannot be known: the connection may have to close.
    conn = Connection(limits_with(drain=100))
    feed(conn, b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    assert b"connection: close\r\n" in respond(conn)
    assert conn.start_next_cycle() is False


def test_a_complete_unread_chunked_body_is_dropped_and_the_connection_kept() -> None:
    conn = Connection(limits_with(drain=0))
    conn.receive_data(
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    assert isinstance(conn.next_event(), Request)
    assert b"connection: close" not in respond(conn)
    assert conn.start_next_cycle() is True
    assert [s[:3] for s in summary(pull(conn))] == [("request", b"GET", b"/b"), ("end",)]


# -- Upgrade ---------------------------------------------------------------------------------

H2C_UPGRADE = (
    b"GET /u HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
)


@pytest.mark.parametrize("piece", [0, 1, 5])
def test_h2c_upgrade_is_answered_as_http11(piece: int) -> None:
    # The request after it is only parsed once the upgrade request is answered.
    conn = Connection(limits_with())
    raw = H2C_UPGRADE + b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n"
    events: list[Event] = []
    for start in range(0, len(raw), piece or len(raw)):
        events += feed(conn, raw[start : start + (piece or len(raw))])
    assert [s[:3] for s in summary(events)] == [("request", b"GET", b"/u"), ("end",)]
    # No 101: a plain response, and the connection goes on.
    assert respond(conn, body=b"plain").startswith(b"HTTP/1.1 200 OK\r\n")
    assert conn.start_next_cycle()
    assert [s[:3] for s in summary(pull(conn))] == [("request", b"GET", b"/after"), ("end",)]


@pytest.mark.parametrize(
    "framing",
    [b"Content-Length: %d\r\n", b"Transfer-Encoding: chunked\r\n"],
    ids=["content-length", "chunked"],
)
def test_upgrade_request_with_a_body_is_served_with_it(framing: bytes) -> None:
    # RFC 9110 §7.8: an Upgrade nobody accepts is ignored and the request served, body and
    # all (curl --http2 -d on http://). llhttp skips such a body: parsed as the next request,
    # it would be smuggled past whatever checked the first. Here it is the body, framed by
    # its own Content-Length or chunks, and only what follows it is the next request.
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
    body = (
        smuggled
        if framing.startswith(b"Content-Length")
        else b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    )
    raw = (
        b"POST /u HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        + (framing % len(smuggled) if b"%d" in framing else framing)
        + b"\r\n"
        + body
        + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    for cut in (0, 1, 60, len(raw) - 40):
        conn = Connection(limits_with())
        events = feed(conn, raw[:cut] if cut else raw) + (feed(conn, raw[cut:]) if cut else [])
        seen = summary(events)
        assert [s[:3] if s[0] == "request" else s for s in seen] == [
            ("request", b"POST", b"/u"),
            ("data", smuggled),
            ("end",),
        ]
        request = only_request(events)
        assert request.upgrade is None  # served as plain HTTP: never switched
        respond(conn, body=b"plain")
        assert conn.start_next_cycle()
        assert [s[:3] for s in summary(pull(conn))] == [("request", b"GET", b"/next"), ("end",)]


@pytest.mark.parametrize(
    "attempt",
    [
        # A body both chunked and sized: llhttp's own 400.
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        # A length that is not 1*DIGIT.
        b"Content-Length: 5, 5\r\n\r\nhello",
        # A bad chunk in the body is a bad body, not a new request.
        b"Transfer-Encoding: chunked\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    ],
    ids=["cl-and-te", "list-length", "request-as-chunk"],
)
def test_smuggling_through_an_upgrade_request_is_refused(attempt: bytes) -> None:
    conn = Connection(limits_with())
    events = feed(
        conn,
        b"POST /u HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n" + attempt,
    )
    assert not any(isinstance(e, Request) and e.target == b"/smuggled" for e in events + pull(conn))
    assert failure(events).status == 400


def test_connect_with_a_body_is_refused() -> None:
    # RFC 9110 §9.3.6: CONNECT has no content; llhttp would take it for the tunnel's bytes.
    conn = Connection(limits_with())
    events = feed(
        conn,
        b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\nContent-Length: 28\r\n\r\n"
        b"GET /smuggled HTTP/1.1\r\n\r\n",
    )
    assert summary(events) == [("failure", 400, True)]


def test_nothing_after_an_upgrade_request_is_parsed_before_its_answer() -> None:
    # What follows may be the new protocol's bytes (a WebSocket accepted) or the next
    # request (the upgrade ignored): only the answer tells.
    conn = Connection(limits_with())
    events = feed(conn, H2C_UPGRADE + b"\x00\x01 not HTTP yet")
    assert only_request(events).upgrade == b"h2c"
    assert conn.has_queued_request
    assert pull(conn) == []


def test_connect_without_a_body_is_answered_and_parsing_goes_on() -> None:
    conn = Connection(limits_with())
    events = feed(
        conn,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
        b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    assert [s[:3] for s in summary(events)] == [
        ("request", b"CONNECT", b"example.com:443"),
        ("end",),
    ]
    respond(conn, status=405)
    assert conn.start_next_cycle()
    assert [s[:3] for s in summary(pull(conn))] == [("request", b"GET", b"/after"), ("end",)]


def test_request_after_a_closing_response_is_never_released() -> None:
    conn = Connection(limits_with())
    events = feed(conn, b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    assert [s[:3] for s in summary(events)] == [("request", b"GET", b"/a"), ("end",)]
    respond(conn, body=b"bye")
    assert conn.next_event() is None
    assert conn.start_next_cycle() is False
    assert conn.next_event() is None
    assert conn.keep_alive is False


# -- request body limit ------------------------------------------------------------------------


def test_content_length_over_the_body_limit_gets_413_before_any_request() -> None:
    head = b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n"
    fits = feed(Connection(limits_with(request_body=10)), head % 10)
    assert [s[:3] for s in summary(fits)] == [("request", b"POST", b"/up")]
    conn = Connection(limits_with(request_body=10))
    # Refused on the head alone: the app never sees the request, the body is never read.
    assert summary(feed(conn, head % 11)) == [("failure", 413, True)]
    assert feed(conn, b"x" * 11 + b"GET / HTTP/1.1\r\nHost: h\r\n\r\n") == []


def test_pipelined_request_over_the_body_limit_waits_for_the_one_before() -> None:
    conn = Connection(limits_with(request_body=4))
    events = feed(
        conn,
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
    )
    assert [s[:3] for s in summary(events)] == [("request", b"GET", b"/a"), ("end",)]
    respond(conn)
    assert conn.start_next_cycle()
    assert summary(pull(conn)) == [("failure", 413, True)]


def test_chunked_body_is_cut_off_when_it_passes_the_limit() -> None:
    conn = Connection(limits_with(request_body=10))
    events = feed(
        conn, b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n"
    )
    assert summary(events)[1:] == [("data", b"abcdef")]
    # 6 + 5 > 10: no byte of the chunk that passes the limit is handed out.
    events = feed(conn, b"5\r\nghijk\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert summary(events) == [("failure", 413, True)]


def test_chunked_body_exactly_at_the_limit_is_accepted() -> None:
    conn = Connection(limits_with(request_body=10))
    events = feed(
        conn,
        b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"6\r\nabcdef\r\n4\r\nghij\r\n0\r\n\r\n",
    )
    assert summary(events)[1:] == [("data", b"abcdefghij"), ("end",)]


def test_body_limit_counts_each_request_on_its_own() -> None:
    conn = Connection(limits_with(request_body=3))
    chunked = (
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    for _ in range(3):
        assert summary(feed(conn, chunked))[1:] == [("data", b"abc"), ("end",)]
        respond(conn)
        assert conn.start_next_cycle()


def test_body_limit_zero_means_no_limit() -> None:
    conn = Connection(limits_with(request_body=0))
    events = feed(conn, b"PUT /big HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999\r\n\r\n")
    assert [s[:3] for s in summary(events)] == [("request", b"PUT", b"/big")]


# -- pending pipelined requests ----------------------------------------------------------------


def tiny_get(path: bytes) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path


def requested(seen: list[Summary]) -> list[bytes]:
    """The paths of the requests seen, without their query."""
    return [bytes(cast(bytes, s[2])).partition(b"?")[0] for s in seen if s[0] == "request"]


def answer_released(conn: Connection, events: list[Event]) -> list[Summary]:
    """Answer every request as it is released; the events seen, in order."""
    seen = summary(events)
    while conn.request is not None:
        respond(conn)
        if not conn.start_next_cycle():
            break
        seen += summary(pull(conn))
    return seen


def test_pipelined_requests_within_the_limit_are_all_answered() -> None:
    conn = Connection(limits_with(pipeline=3))
    events = feed(conn, b"".join(tiny_get(b"/%d" % i) for i in range(4)))
    seen = answer_released(conn, events)
    assert [s[2] for s in seen if s[0] == "request"] == [b"/0", b"/1", b"/2", b"/3"]
    assert not any(s[0] == "failure" for s in seen)


def test_requests_beyond_the_pipeline_limit_wait_unparsed_and_are_all_answered() -> None:
    # Requests as large as a parsing slice: the limit holds to the request.
    conn = Connection(limits_with(pipeline=3))
    big = [tiny_get(b"/%d?%s" % (i, b"p" * 2000)) for i in range(40)]
    events = feed(conn, b"".join(big))
    assert conn._queued <= 3 + 1
    assert conn.has_queued_request
    seen = answer_released(conn, events)
    assert requested(seen) == [b"/%d" % i for i in range(40)]
    assert not any(s[0] == "failure" for s in seen)


def test_a_thousand_tiny_pipelined_requests_in_one_read_are_all_answered_in_order() -> None:
    conn = Connection(limits_with(pipeline=32))
    events = feed(conn, b"".join(tiny_get(b"/%d" % i) for i in range(1000)))
    # Parsing stops within a slice of the limit; the rest of the read waits unparsed.
    assert conn._queued <= 32 + 2048 // len(tiny_get(b"/999"))
    seen = answer_released(conn, events)
    assert requested(seen) == [b"/%d" % i for i in range(1000)]


def test_pipeline_limit_counts_requests_behind_the_one_in_progress() -> None:
    conn = Connection(limits_with(pipeline=2))
    big = [tiny_get(b"/%s?%s" % (name, b"p" * 2040)) for name in (b"a", b"b", b"c", b"d")]
    assert requested(summary(feed(conn, big[0]))) == [b"/a"]
    # /a is being answered: two more are parsed, the third waits unparsed.
    assert feed(conn, b"".join(big[1:])) == []
    assert conn._queued == 2
    assert conn.has_queued_request
    seen = answer_released(conn, [])
    assert requested(seen) == [b"/b", b"/c", b"/d"]


def test_requests_waiting_to_be_parsed_keep_their_bodies() -> None:
    conn = Connection(limits_with(pipeline=0))
    post = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz"
    events = feed(conn, tiny_get(b"/a") + post + tiny_get(b"/c"))
    seen = answer_released(conn, events)
    assert [s[:3] if s[0] == "request" else s for s in seen] == [
        ("request", b"GET", b"/a"),
        ("end",),
        ("request", b"POST", b"/p"),
        ("data", b"xyz"),
        ("end",),
        ("request", b"GET", b"/c"),
        ("end",),
    ]


def test_pipeline_limit_zero_parses_one_request_ahead_at_most() -> None:
    conn = Connection(limits_with(pipeline=0))
    big = [tiny_get(b"/%s?%s" % (name, b"p" * 2040)) for name in (b"a", b"b", b"c")]
    events = feed(conn, b"".join(big))
    assert conn._queued <= 1
    seen = answer_released(conn, events)
    assert requested(seen) == [b"/a", b"/b", b"/c"]


# -- head progress (what the transport's head timeout watches) -----------------------------------


def test_head_in_progress_from_its_first_byte_to_its_end() -> None:
    conn = Connection(limits_with())
    assert not conn.head_in_progress
    # Empty lines before a request are skipped (RFC 9112 §2.2): they start no head.
    conn.receive_data(b"\r\n")
    assert not conn.head_in_progress
    conn.receive_data(b"G")
    assert conn.head_in_progress
    conn.receive_data(b"ET / HTTP/1.1\r\nHost: h\r\n")
    assert conn.head_in_progress
    conn.receive_data(b"\r\n")
    assert not conn.head_in_progress
    assert isinstance(conn.next_event(), Request)


def test_head_in_progress_ignores_body_bytes_and_trailers() -> None:
    conn = Connection(limits_with())
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab")
    assert not conn.head_in_progress
    conn.receive_data(b"c\r\n0\r\nX-Trailer: 1")
    assert not conn.head_in_progress
    conn.receive_data(b"\r\n\r\nGET /next HT")
    assert conn.head_in_progress


def test_no_head_in_progress_once_the_connection_failed() -> None:
    conn = Connection(limits_with())
    conn.receive_data(b"GET / HTTP/1.1\r\nBad Name: x\r\n")
    assert summary(pull(conn)) == [("failure", 400, True)]
    assert not conn.head_in_progress


# -- protocols llhttp takes that are not HTTP, and chunk-size lines ------------------------------


@pytest.mark.parametrize("line", [b"GET / RTSP/1.0", b"SOURCE / ICE/1.0"])
def test_a_non_http_request_line_is_refused_however_it_arrives(line: bytes) -> None:
    raw = line + b"\r\nHost: h\r\n\r\n"
    conn = Connection(limits_with())
    events: list[Event] = []
    for byte in raw:
        events += feed(conn, bytes([byte]))
    assert summary(events) == [("failure", 400, True)]


def test_an_http_request_line_split_into_single_bytes_is_accepted() -> None:
    raw = b"GET /a/b?c HTTP/1.1\r\nHost: h\r\nX-Long: " + b"v" * 3000 + b"\r\n\r\n"
    conn = Connection(limits_with())
    events: list[Event] = []
    for byte in raw:
        events += feed(conn, bytes([byte]))
    assert only_request(events).target == b"/a/b?c"


@pytest.mark.parametrize(("extension", "refused"), [(3000, False), (9000, True)])
def test_a_chunk_size_line_is_bounded(extension: int, refused: bool) -> None:
    conn = Connection(limits_with())
    feed(conn, b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;x=")
    events: list[Event] = []
    for _ in range(extension // 1000):
        events += feed(conn, b"y" * 1000)
    events += feed(conn, b"\r\nabc\r\n0\r\n\r\n")
    if refused:
        assert failure(events).status == 400
    else:
        assert summary(events) == [("data", b"abc"), ("end",)]
