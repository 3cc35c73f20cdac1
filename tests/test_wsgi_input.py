"""`wsgi.input` (aserve.runners.wsgi.InputStream) reads like a file over the body as it arrives.

The body is fed in arbitrary chunks; any sequence of read(n), read(), readline(n),
readlines() and iteration must return exactly what `io.BytesIO` returns over the same bytes.
"""

from __future__ import annotations

import asyncio
import io
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aserve.errors import ClientDisconnected
from aserve.exchange import RequestBody
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

    def wait_blocking(self, want: int = 1) -> None:
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


@settings(max_examples=300, derandomize=True, deadline=None)
@given(chunks=bodies, sizes=st.lists(st.integers(min_value=0, max_value=40), max_size=12))
def test_readinto_fills_a_buffer_as_bytesio_does(chunks: list[bytes], sizes: list[int]) -> None:
    """Every chunking of the body, every buffer size: readinto copies what BytesIO would."""
    expected = io.BytesIO(b"".join(chunks))
    actual = stream(chunks)
    for size in [*sizes, 1 << 12]:
        mine, theirs = bytearray(size), bytearray(size)
        assert actual.readinto(mine) == expected.readinto(theirs), size
        assert mine == theirs


def test_readinto_takes_memoryviews_of_other_shapes_and_mixes_with_read() -> None:
    body = stream([b"abc", b"defgh", b"ij"])
    words = memoryview(bytearray(4)).cast("H")  # 2 items of 2 bytes: 4 bytes to fill
    assert body.readinto(words) == 4
    assert words.tobytes() == b"abcd"
    assert body.read(2) == b"ef"
    buffer = bytearray(10)
    assert body.readinto(buffer) == 4
    assert buffer[:4] == b"ghij"
    assert body.readinto(buffer) == 0


def test_a_waiting_reader_is_woken_for_what_it_asked() -> None:
    """A thread that needs 100 bytes sleeps through a first segment of 10: one wake-up, not two."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        body = RequestBody(loop, lambda body: None)
        woke = threading.Event()

        def reader() -> None:
            body.wait_blocking(100)
            woke.set()

        thread = threading.Thread(target=reader)
        thread.start()
        await asyncio.sleep(0.05)
        body.feed(b"x" * 10, limit=1000)
        await asyncio.sleep(0.1)
        assert not woke.is_set()
        body.feed(b"x" * 90, limit=1000)
        await asyncio.to_thread(woke.wait, 2)
        assert woke.is_set()
        thread.join()
        # A full buffer wakes it however little it is, as does the end of the body.
        for end in (lambda: body.feed(b"y", limit=1), body.finish):
            body.take_chunks(from_thread=False)
            woke.clear()
            thread = threading.Thread(target=reader)
            thread.start()
            await asyncio.sleep(0.05)
            assert not woke.is_set()
            end()
            await asyncio.to_thread(woke.wait, 2)
            assert woke.is_set()
            thread.join()

    asyncio.run(main())


def test_a_thread_wakes_the_loop_once_for_takes_before_it_runs() -> None:
    """Taking from a full buffer and then finding it empty, before the loop has run, asks the
    loop once: the queued call sees both (resume reading, then wait for the body)."""

    async def main() -> None:
        calls: list[tuple[bool, bool]] = []
        body = RequestBody(
            asyncio.get_running_loop(), lambda body: calls.append((body.paused, body.has_data))
        )
        body.feed(b"x" * 10, limit=10)
        assert body.paused
        assert body.take_chunks(from_thread=True) == [b"x" * 10]
        assert body.take_chunks(from_thread=True) == []
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert calls == [(False, False)]
        # Once it has run, the next empty take asks again (the body timeout starts there).
        assert body.take_chunks(from_thread=True) == []
        await asyncio.sleep(0)
        assert len(calls) == 2
        # On the loop, each take that needs it calls at once.
        body.take_chunks(from_thread=False)
        assert len(calls) == 3

    asyncio.run(main())


class LastBytesRaceBody(TrickleBody):
    """The loop feeds the last bytes and finishes the body while the thread is between an
    empty take and its look at `complete`."""

    def __init__(self, last: bytes) -> None:
        super().__init__([])
        self._last = last
        self._finished = False

    @property
    def complete(self) -> bool:
        return self._finished

    def take_chunks(self, *, from_thread: bool) -> list[bytes]:
        taken = super().take_chunks(from_thread=from_thread)
        if not self._finished:
            self._chunks.append(self._last)  # fed, then finished, just after this take
            self._finished = True
        return taken

    def wait_blocking(self, want: int = 1) -> None:
        assert self._finished  # as RequestBody's, it returns at once once the body is over


def test_bytes_fed_just_before_the_end_are_read() -> None:
    body = InputStream(LastBytesRaceBody(b"the last bytes"))
    assert body.read(100) == b"the last bytes"
    assert body.read(100) == b""
