"""HttpProtocol in memory: a fake transport, a recording app runner, a real event loop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aserve.exchange import Cycle
from aserve.net.connection import HttpProtocol, ServerState
from aserve.protocols.http11 import Limits
from tests.support import limits_with

CLIENT = ("127.0.0.1", 50123)
SERVER = ("127.0.0.1", 8000)
DEFAULT_HEADERS = b"server: aserve\r\n"


class FakeTransport(asyncio.Transport):
    """Records what the protocol writes; closing reports connection_lost on the next tick."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.protocol: HttpProtocol | None = None
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.reading = True

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)

    def write(self, data: bytes | bytearray | memoryview[Any]) -> None:
        assert not self.closed, "write after close"
        self.writes.append(bytes(data))

    def _lose(self) -> None:
        if not self.closed:
            self.closed = True
            if self.protocol is not None:
                self.loop.call_soon(self.protocol.connection_lost, None)

    def close(self) -> None:
        self._lose()

    def abort(self) -> None:
        self.aborted = True
        self._lose()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        assert self.reading, "pause_reading while paused"
        self.reading = False

    def resume_reading(self) -> None:
        assert not self.reading, "resume_reading while reading"
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (16384, 65536)

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": CLIENT, "sockname": SERVER}.get(name, default)


class Runner:
    """An app runner that only records cycles; the test answers through them."""

    websockets = False

    def __init__(self) -> None:
        self.cycles: list[Cycle] = []
        # Answer each request inside `handle`, as an app started eagerly can: the response
        # to a pipelined request then ends within `response_done` of the one before.
        self.eager = False

    async def startup(self) -> None:
        pass

    def handle(self, cycle: Cycle) -> None:
        self.cycles.append(cycle)
        if self.eager:
            self.answer()

    async def shutdown(self, timeout: float) -> None:
        pass

    def answer(self, index: int = -1, body: bytes = b"ok", status: int = 200) -> None:
        cycle = self.cycles[index]
        cycle.send_start(status, [(b"content-length", b"%d" % len(body))])
        cycle.send_end(body)


class Harness:
    def __init__(
        self,
        *,
        limit_body_buffer: int = 65536,
        keep_alive_timeout: float = 5.0,
        limits: Limits | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.runner = Runner()
        self.state = ServerState(
            loop,
            self.runner,
            limits=limits or limits_with(),
            limit_body_buffer=limit_body_buffer,
            limit_concurrency=0,
            keep_alive_timeout=keep_alive_timeout,
            head_timeout=10.0,
            body_timeout=30.0,
            access_log=None,
        )
        self.state.default_headers = DEFAULT_HEADERS
        self.protocol = HttpProtocol(self.state)
        self.transport = FakeTransport(loop)
        self.transport.protocol = self.protocol
        self.protocol.connection_made(self.transport)

    @property
    def cycles(self) -> list[Cycle]:
        return self.runner.cycles

    def feed(self, data: bytes) -> None:
        self.protocol.data_received(data)


def get(path: bytes = b"/", extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nhost: test\r\n%s\r\n" % (path, extra)


def post(size: int, chunk: bytes = b"") -> bytes:
    return b"POST /up HTTP/1.1\r\nhost: test\r\ncontent-length: %d\r\n\r\n%s" % (size, chunk)


def ok_response(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s%s\r\n%s" % (
        len(body),
        extra,
        DEFAULT_HEADERS,
        body,
    )


async def tick() -> None:
    """Let callbacks scheduled with call_soon run."""
    for _ in range(3):
        await asyncio.sleep(0)


# -- requests in ---------------------------------------------------------------------------------


async def test_a_request_is_handed_to_the_runner_once_parsed() -> None:
    h = Harness()
    h.feed(b"GET /path?q=1 HTTP/1.1\r\nHost: te")
    assert h.cycles == []
    h.feed(b"st\r\nX-Thing: 1\r\n\r\n")
    assert len(h.cycles) == 1
    cycle = h.cycles[0]
    assert cycle.request.method == b"GET"
    assert cycle.request.target == b"/path?q=1"
    assert cycle.request.http_version == "1.1"
    assert cycle.request.headers == [(b"host", b"test"), (b"x-thing", b"1")]
    assert cycle.info.client == CLIENT
    assert cycle.info.server == SERVER
    assert cycle.info.scheme == "http"
    assert cycle.body.complete
    assert not cycle.response_started
    assert h.protocol in h.state.connections


async def test_pipelined_request_waits_with_reading_paused() -> None:
    h = Harness()
    h.feed(get(b"/first") + get(b"/second"))
    assert [c.request.target for c in h.cycles] == [b"/first"]
    assert not h.transport.reading
    h.runner.answer(0, b"one")
    assert [c.request.target for c in h.cycles] == [b"/first", b"/second"]
    # The second request was already read whole: reading stays on for what comes next.
    assert h.transport.reading
    h.runner.answer(1, b"two")
    assert h.transport.data == ok_response(b"one") + ok_response(b"two")
    assert not h.transport.closed


async def test_pipelined_responses_ended_within_the_one_before_keep_the_connection() -> None:
    # `response_done` starts the next pipelined cycle, which here ends before it returns: code
    # after that call must not trust what it saw of the connection before it (a compiled
    # build trusts mypy's narrowing, and once answered this with `connection: close`).
    h = Harness()
    h.runner.eager = True
    h.feed(get(b"/1") + get(b"/2") + get(b"/3"))
    h.feed(get(b"/4"))
    assert [c.request.target for c in h.cycles] == [b"/1", b"/2", b"/3", b"/4"]
    assert h.transport.data == ok_response() * 4
    assert all(c.done for c in h.cycles)
    assert h.protocol.cycle is None
    assert h.transport.reading
    assert not h.transport.closed


async def test_half_closed_pipeline_ended_within_the_response_before_closes_after_the_last() -> (
    None
):
    h = Harness()
    h.feed(get(b"/1") + get(b"/2") + get(b"/3"))
    assert h.protocol.eof_received()  # the client half-closes: every response still goes out
    h.runner.eager = True
    h.runner.answer(0)
    assert h.transport.data == ok_response() * 3
    await tick()
    assert h.transport.closed


async def test_unread_body_beyond_limit_body_buffer_pauses_reading_until_taken() -> None:
    h = Harness(limit_body_buffer=1024)
    h.feed(post(5000, b"a" * 600))
    cycle = h.cycles[0]
    assert h.transport.reading
    assert not cycle.body.paused
    h.feed(b"b" * 600)
    assert cycle.body.paused
    assert not h.transport.reading
    assert cycle.body.take(from_thread=False) == b"a" * 600 + b"b" * 600
    assert not cycle.body.paused
    assert h.transport.reading
    h.feed(b"c" * 3800)
    assert not h.transport.reading
    assert cycle.body.take(from_thread=False) == b"c" * 3800
    assert cycle.body.complete
    assert h.transport.reading


async def test_take_from_a_thread_resumes_reading_on_the_loop() -> None:
    h = Harness(limit_body_buffer=100)
    h.feed(post(1000, b"x" * 200))
    cycle = h.cycles[0]
    assert not h.transport.reading
    data = await asyncio.to_thread(cycle.body.take, from_thread=True)
    assert data == b"x" * 200
    await tick()
    assert h.transport.reading


async def test_body_waiter_wakes_when_data_arrives() -> None:
    h = Harness()
    h.feed(post(10))
    body = h.cycles[0].body
    waiter = asyncio.ensure_future(body.wait())
    await tick()
    assert not waiter.done()
    h.feed(b"0123456789")
    await asyncio.wait_for(waiter, 1)
    assert body.take(from_thread=False) == b"0123456789"
    assert body.complete


# -- responses out -------------------------------------------------------------------------------


async def test_write_flow_control_pauses_the_cycle_and_runs_on_writable_callbacks() -> None:
    h = Harness()
    h.feed(get())
    cycle = h.cycles[0]
    calls: list[str] = []
    assert not cycle.write_paused
    h.protocol.pause_writing()
    assert cycle.write_paused
    cycle.on_writable(lambda: calls.append("first"))
    cycle.on_writable(lambda: calls.append("second"))
    await tick()
    assert calls == []
    h.protocol.resume_writing()
    assert not cycle.write_paused
    assert calls == ["first", "second"]
    # Not paused: the callback still runs, on the next loop iteration.
    cycle.on_writable(lambda: calls.append("third"))
    assert calls == ["first", "second"]
    await tick()
    assert calls == ["first", "second", "third"]


async def test_send_start_and_send_body_coalesce_into_one_write() -> None:
    h = Harness()
    h.feed(get())
    cycle = h.cycles[0]
    cycle.send_start(200, [(b"content-type", b"text/plain")])
    assert h.transport.writes == []
    cycle.send_body(b"hello")
    assert h.transport.writes == [
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n"
        + DEFAULT_HEADERS
        + b"\r\n5\r\nhello\r\n"
    ]
    cycle.send_end()
    assert h.transport.writes[1:] == [b"0\r\n\r\n"]


async def test_send_start_and_send_end_coalesce_into_one_write() -> None:
    h = Harness()
    h.feed(get())
    h.runner.answer(0, b"whole")
    assert h.transport.writes == [ok_response(b"whole")]


async def test_flush_writes_a_waiting_head_alone() -> None:
    h = Harness()
    h.feed(get())
    cycle = h.cycles[0]
    cycle.send_start(204, [])
    cycle.flush()
    assert h.transport.writes == [b"HTTP/1.1 204 No Content\r\n" + DEFAULT_HEADERS + b"\r\n"]
    cycle.flush()
    assert len(h.transport.writes) == 1


async def test_fail_before_start_writes_500_and_closes() -> None:
    h = Harness()
    h.feed(get())
    cycle = h.cycles[0]
    cycle.fail()
    assert h.transport.data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"connection: close\r\n" in h.transport.data
    assert h.transport.closed
    assert cycle.status == 500


async def test_fail_with_only_a_head_waiting_replaces_it_with_500() -> None:
    h = Harness()
    h.feed(get())
    cycle = h.cycles[0]
    cycle.send_start(200, [(b"x-app", b"1")])
    cycle.fail()
    assert h.transport.data.startswith(b"HTTP/1.1 500 ")
    assert b"x-app" not in h.transport.data
    assert h.transport.closed


async def test_fail_after_start_closes_without_another_response() -> None:
    h = Harness()
    h.feed(get())
    cycle = h.cycles[0]
    cycle.send_start(200, [])
    cycle.send_body(b"partial")
    written = h.transport.data
    cycle.fail()
    assert h.transport.data == written
    assert b" 500 " not in written
    assert h.transport.closed
    await tick()
    assert h.protocol not in h.state.connections


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nhost: a\r\nx-long: " + b"v" * 300 + b"\r\n\r\n", b"431"),
        (b"GET /" + b"p" * 300 + b" HTTP/1.1\r\nhost: a\r\n\r\n", b"414"),
    ],
    ids=["no-host", "field-too-large", "target-too-long"],
)
async def test_protocol_failure_writes_the_4xx_and_closes(data: bytes, status: bytes) -> None:
    h = Harness(limits=limits_with(request_line=200, request_field_size=200))
    h.feed(data)
    assert h.cycles == []
    assert h.transport.data.startswith(b"HTTP/1.1 " + status + b" ")
    assert b"connection: close\r\n" in h.transport.data
    assert h.transport.closed


async def test_protocol_failure_after_a_pipelined_request_answers_it_first() -> None:
    h = Harness()
    h.feed(get(b"/good") + b"BROKEN\r\n\r\n")
    assert len(h.cycles) == 1
    assert h.transport.data == b""
    h.runner.answer(0, b"good")
    assert h.transport.data.startswith(ok_response(b"good") + b"HTTP/1.1 400 ")
    assert h.transport.closed


# -- timers, shutdown, disconnects ---------------------------------------------------------------


async def test_idle_connection_closes_after_keep_alive_timeout() -> None:
    h = Harness(keep_alive_timeout=0.05)
    await asyncio.sleep(0.1)
    assert h.transport.closed
    await tick()
    assert h.protocol not in h.state.connections


async def test_keep_alive_timer_runs_only_between_requests() -> None:
    h = Harness(keep_alive_timeout=0.05)
    h.feed(get())
    await asyncio.sleep(0.1)
    assert not h.transport.closed, "closed while the app was still answering"
    h.runner.answer(0)
    await asyncio.sleep(0.02)
    assert not h.transport.closed
    await asyncio.sleep(0.08)
    assert h.transport.closed


async def test_shutdown_closes_an_idle_connection_at_once() -> None:
    h = Harness()
    h.feed(get())
    h.runner.answer(0)
    h.protocol.shutdown()
    assert h.transport.closed


async def test_shutdown_waits_for_the_first_request_of_a_new_connection() -> None:
    # Connected just before the shutdown (a reload swapping workers): its request is answered.
    h = Harness()
    h.protocol.shutdown(grace=0.2)
    assert not h.transport.closed
    h.feed(get())
    h.runner.answer(0)
    assert h.transport.data == ok_response(b"ok", b"connection: close\r\n")
    assert h.transport.closed


async def test_shutdown_waits_for_a_head_in_progress() -> None:
    h = Harness()
    h.feed(get())
    h.runner.answer(0)
    request = get(b"/second")
    h.feed(request[:10])
    h.protocol.shutdown(grace=0.2)
    assert not h.transport.closed
    h.feed(request[10:])
    assert len(h.cycles) == 2
    h.runner.answer(1)
    assert h.transport.closed


async def test_shutdown_closes_a_silent_new_connection_after_the_grace() -> None:
    h = Harness()
    h.protocol.shutdown(grace=0.05)
    assert not h.transport.closed
    await asyncio.sleep(0.15)
    assert h.transport.closed
    assert h.transport.data == b""


async def test_shutdown_closes_a_busy_connection_after_its_response() -> None:
    h = Harness()
    h.feed(get())
    h.protocol.shutdown()
    assert not h.transport.closed
    h.runner.answer(0)
    # The response had not started: it says itself that the connection ends.
    assert h.transport.data == ok_response(b"ok", b"connection: close\r\n")
    assert h.transport.closed


async def test_shutdown_after_the_response_started_still_waits_for_its_end() -> None:
    h = Harness()
    h.feed(get() + get(b"/never"))
    cycle = h.cycles[0]
    cycle.send_start(200, [(b"content-length", b"4")])
    cycle.send_body(b"ab")
    h.protocol.shutdown()
    assert not h.transport.closed
    cycle.send_end(b"cd")
    assert h.transport.data == ok_response(b"abcd")
    assert h.transport.closed
    # The pipelined request is never started on a connection being shut down.
    assert len(h.cycles) == 1


async def test_connection_lost_during_a_request_wakes_body_and_drain_waiters() -> None:
    h = Harness()
    h.feed(post(10, b"abc"))
    cycle = h.cycles[0]
    assert cycle.body.take(from_thread=False) == b"abc"
    body_waiter = asyncio.ensure_future(cycle.body.wait())
    drained: list[bool] = []
    h.protocol.pause_writing()
    cycle.on_writable(lambda: drained.append(cycle.disconnected))
    await tick()
    assert not body_waiter.done()
    h.protocol.connection_lost(ConnectionResetError())
    await asyncio.wait_for(body_waiter, 1)
    assert cycle.disconnected
    assert cycle.body.disconnected
    assert drained == [True]
    assert h.protocol not in h.state.connections
    # Writes after the loss go nowhere; the response cannot be finished.
    h.transport.closed = True
    cycle.send_start(200, [])
    cycle.send_end(b"late")
    assert h.transport.writes == []


async def test_half_close_with_a_complete_request_still_gets_the_response() -> None:
    h = Harness()
    h.feed(get())
    cycle = h.cycles[0]
    assert h.protocol.eof_received() is True
    # A long poll learns of it, but the response still goes out before the close.
    await asyncio.wait_for(cycle.body.wait_disconnect(), 1)
    assert not cycle.disconnected
    h.runner.answer(0)
    assert h.transport.data == ok_response()
    assert h.transport.closed


async def test_half_close_in_the_middle_of_a_body_disconnects_the_request() -> None:
    h = Harness()
    h.feed(post(100, b"partial"))
    waiter = asyncio.ensure_future(h.cycles[0].body.wait_disconnect())
    assert h.protocol.eof_received() is True
    await asyncio.wait_for(waiter, 1)
    assert h.cycles[0].disconnected


async def test_half_close_while_idle_lets_the_transport_close() -> None:
    h = Harness()
    assert h.protocol.eof_received() is False
