"""`wsgi.input` (aserve.runners.wsgi.InputStream) reads like a file over the body as it arrives.

The body is fed in arbitrary chunks; any sequence of read(n), read(), readline(n),
readlines() and iteration must return exactly what `io.BytesIO` returns over the same bytes.
"""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aserve.errors import ClientDisconnected
from aserve.runners.wsgi import InputStream


class TrickleBody:
    """Stands in for RequestBody as a `BodySource`, the protocol InputStream takes (a compiled
    build refuses, at run time, a stand-in for a declared class): one given chunk per take."""

    def __init__(self, chunks: list[bytes], *, disconnect: bool = False) -> None:
        self._chunks = [c for c in chunks if c]
        self._disconnect = disconnect
        self.takes = 0
        self.error: ClientDisconnected | None = None

    @property
    def complete(self) -> bool:
        return not self._chunks and not self._disconnect

    @property
    def disconnected(self) -> bool:
        return not self._chunks and self._disconnect

    def take_chunks(self, *, from_thread: bool) -> list[bytes]:
        assert from_thread
        self.takes += 1
        return [self._chunks.pop(0)] if self._chunks else []

    def wait_blocking(self) -> None:
        raise AssertionError("never waits: every chunk is there")


def stream(chunks: list[bytes], **kwargs: bool) -> InputStream:
    return InputStream(TrickleBody(chunks, **kwargs))


Op = tuple[str, int]
ops = st.lists(
    st.tuples(
        st.sampled_from(["read", "readline", "readlines", "iter", "read-all"]),
        st.integers(min_value=-1, max_value=40),
    ),
    max_size=12,
)
bodies = st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\x00", b"\n")), max_size=8)


def apply(target: InputStream | io.BytesIO, op: Op) -> object:
    name, n = op
    if name == "read":
        return target.read(n)
    if name == "readline":
        return target.readline(n)
    if name == "readlines":
        return target.readlines(n)
    if name == "iter":
        return next(iter(target), None)
    return target.read()


@settings(max_examples=300, derandomize=True, deadline=None)
@given(chunks=bodies, operations=ops)
def test_reads_match_bytesio(chunks: list[bytes], operations: list[Op]) -> None:
    expected = io.BytesIO(b"".join(chunks))
    actual = stream(chunks)
    for op in operations:
        assert apply(actual, op) == apply(expected, op), op
    assert actual.read() == expected.read()


def test_a_read_of_exactly_one_chunk_returns_it_uncopied() -> None:
    chunk = b"a" * 1000
    body = stream([chunk, b"b" * 1000])
    assert body.read(1000) is chunk


def test_reads_span_chunks_and_split_them() -> None:
    body = stream([b"abc", b"defg", b"hij"])
    assert body.read(2) == b"ab"
    assert body.read(4) == b"cdef"
    assert body.read(5) == b"ghij"
    assert body.read(1) == b""


def test_readline_finds_a_newline_in_a_later_chunk() -> None:
    body = stream([b"no newline ", b"here", b" but\nthere", b"\nend"])
    assert body.readline() == b"no newline here but\n"
    assert body.readline(2) == b"th"
    assert body.readline() == b"ere\n"
    assert list(body) == [b"end"]


def test_only_as_much_is_taken_as_a_read_needs() -> None:
    trickle = TrickleBody([b"12345", b"67890", b"abcde"])
    body = InputStream(trickle)
    assert body.read(3) == b"123"
    assert trickle.takes == 1
    assert body.read(5) == b"45678"
    assert trickle.takes == 2


def test_disconnect_mid_body_raises_after_what_arrived() -> None:
    body = stream([b"partial"], disconnect=True)
    assert body.read(7) == b"partial"
    with pytest.raises(ClientDisconnected):
        body.read(1)
