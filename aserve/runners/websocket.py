"""The ASGI `websocket` scope's messages: `receive`/`send` with the spec's order, the
denial-response extension, and what happens when the app breaks the order, raises or returns."""

from __future__ import annotations

import asyncio
import enum
import logging

from aserve.errorpage import Page
from aserve.errors import AppProtocolError, ClientDisconnected
from aserve.exchange import Cycle, Messages, WebSocketOffer, as_bytes
from aserve.types import ASGIApp, Headers, Message, Scope

logger = logging.getLogger("aserve.error")

# What the app hears when the connection ended without a close frame (RFC 6455 §7.1.5).
_ABNORMAL = 1006
# RFC 6455 §7.4.1: the server met a condition that kept it from fulfilling the request.
_INTERNAL_ERROR = 1011


class _State(enum.Enum):
    CONNECTING = "before websocket.connect"
    HANDSHAKE = "before the handshake was answered"
    ACCEPTED = "after websocket.accept"
    RESPONSE = "during the denial response"
    CLOSED = "after the WebSocket closed"


_CONNECTING, _HANDSHAKE = _State.CONNECTING, _State.HANDSHAKE
_ACCEPTED, _RESPONSE, _CLOSED = _State.ACCEPTED, _State.RESPONSE, _State.CLOSED


class WebSocketCycle:
    """One WebSocket as its ASGI app sees it, from the handshake to the close."""

    __slots__ = ("cycle", "debug", "messages", "offer", "state")

    def __init__(self, cycle: Cycle, offer: WebSocketOffer, debug: bool) -> None:
        self.cycle = cycle
        self.offer = offer
        self.debug = debug
        self.state = _CONNECTING
        self.messages: Messages | None = None

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        try:
            await app(scope, self.receive, self.send)
        except asyncio.CancelledError:
            self._end(_INTERNAL_ERROR, None)
            raise
        except ClientDisconnected:
            self._end(_INTERNAL_ERROR, None)
        except Exception as exc:
            if not self._gone:
                logger.exception("Exception in ASGI application")
            self._end(_INTERNAL_ERROR, self.cycle.error_page(exc) if self.debug else None)
        else:
            state = self.state
            if state in (_CONNECTING, _HANDSHAKE, _RESPONSE) and not self._gone:
                logger.error(
                    "ASGI app returned %s",
                    "without completing its denial response"
                    if state is _RESPONSE
                    else "without accepting or closing the WebSocket",
                )
            # ASGI: an app that returns closes its WebSocket; 1000 says nothing went wrong.
            self._end(1000, None)

    @property
    def _gone(self) -> bool:
        messages = self.messages
        if messages is not None:
            return messages.closed is not None
        return self.cycle.disconnected

    def _end(self, code: int, page: Page | None) -> None:
        """The app is done: close what it left open."""
        state, self.state = self.state, _CLOSED
        messages = self.messages
        if state is _ACCEPTED and messages is not None:
            if code == 1000:
                messages.sink.close(code, "")
            else:
                messages.sink.fail(code, "")
        elif state is not _CLOSED:
            self.cycle.fail(page)

    async def receive(self) -> Message:
        messages = self.messages
        if messages is not None:
            message = messages.take()
            if message is None:
                await messages.wait()
                message = messages.take()
                if message is None:
                    code, reason = messages.closed or (_ABNORMAL, "")
                    return {"type": "websocket.disconnect", "code": code, "reason": reason}
            if type(message) is str:
                return {"type": "websocket.receive", "text": message}
            return {"type": "websocket.receive", "bytes": message}
        if self.state is _CONNECTING:
            self.state = _HANDSHAKE
            return {"type": "websocket.connect"}
        # Before an accept nothing but the client leaving can happen.
        await self.cycle.body.wait_disconnect()
        return {"type": "websocket.disconnect", "code": _ABNORMAL, "reason": ""}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        state = self.state
        if kind == "websocket.send" and state is _ACCEPTED:
            await self._send_message(message)
        elif state is _CONNECTING or state is _HANDSHAKE:
            self._answer_handshake(kind, message)
        elif kind == "websocket.close" and state is _ACCEPTED:
            messages = self.messages
            assert messages is not None
            messages.sink.close(message.get("code") or 1000, message.get("reason") or "")
            self.state = _CLOSED
        elif kind == "websocket.http.response.body" and state is _RESPONSE:
            self._denial_body(message)
        elif state is _CLOSED and kind in ("websocket.send", "websocket.close"):
            # ASGI: sending on a closed connection raises an OSError subclass.
            raise ClientDisconnected("the WebSocket is closed")
        else:
            raise AppProtocolError(f"{kind!r} sent {state.value}")

    async def _send_message(self, message: Message) -> None:
        messages = self.messages
        assert messages is not None
        sink = messages.sink
        text = message.get("text")
        data = message.get("bytes")
        payload: str | bytes
        if type(text) is str and data is None:
            payload = text
        elif isinstance(data, bytes | bytearray) and text is None:
            payload = bytes(data)
        else:
            raise AppProtocolError("websocket.send needs 'bytes' (bytes) or 'text' (str)")
        if sink.closing:
            raise ClientDisconnected("the WebSocket is closed")
        sink.send_message(payload)
        if sink.write_paused:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def writable() -> None:
                if not future.done():
                    future.set_result(None)

            sink.on_writable(writable)
            await future

    def _answer_handshake(self, kind: str, message: Message) -> None:
        cycle = self.cycle
        if kind == "websocket.accept":
            if cycle.disconnected:
                raise ClientDisconnected("client disconnected")
            headers: Headers = list(message.get("headers") or [])
            self.messages = self.offer.accept(cycle, message.get("subprotocol"), headers)
            self.state = _ACCEPTED
        elif kind == "websocket.close":
            # ASGI: a close before the accept is an HTTP 403 (the denial, plain).
            self.state = _CLOSED
            cycle.send_start(403, [(b"content-length", b"0")])
            cycle.send_end()
        elif kind == "websocket.http.response.start":
            headers = list(message.get("headers") or [])
            try:
                cycle.send_start(message["status"], headers)
            except (TypeError, ValueError, KeyError) as exc:
                raise AppProtocolError(f"invalid websocket.http.response.start: {exc}") from exc
            self.state = _RESPONSE
        else:
            raise AppProtocolError(f"{kind!r} sent {self.state.value}")

    def _denial_body(self, message: Message) -> None:
        cycle = self.cycle
        data = as_bytes(message.get("body", b""), "websocket.http.response.body's body")
        if message.get("more_body", False):
            cycle.send_body(data)
            cycle.flush()
        else:
            self.state = _CLOSED
            cycle.send_end(data)
