"""The ASGI lifespan protocol around the server's life: startup before the first request,
shutdown after the last; `off` skips it, `auto` goes on without it for apps that lack it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aserve.config import LifespanMode
from aserve.errors import AppProtocolError, LifespanError
from aserve.types import ASGIApp, Message, Scope

logger = logging.getLogger("aserve.error")

ASGI_VERSION = "3.0"
ASGI_SPEC_VERSION = "2.4"


class Lifespan:
    """The ASGI lifespan protocol around the server's life; `off` skips it."""

    def __init__(self, app: ASGIApp, mode: LifespanMode, state: dict[str, Any]) -> None:
        self.app = app
        self.mode = mode
        self.state = state
        self._receive: asyncio.Queue[Message] = asyncio.Queue()
        self._startup_done = asyncio.Event()
        self._shutdown_done = asyncio.Event()
        self._failure: str | None = None
        self._unsupported = False
        self._received = False
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Run startup; raises LifespanError when the app reports or raises a failure."""
        if self.mode == "off":
            return
        self._task = asyncio.get_running_loop().create_task(self._main())
        await self._receive.put({"type": "lifespan.startup"})
        await self._startup_done.wait()
        if self._failure is not None:
            raise LifespanError(self._failure)

    async def shutdown(self) -> None:
        if self.mode == "off" or self._unsupported or self._task is None:
            return
        await self._receive.put({"type": "lifespan.shutdown"})
        await self._shutdown_done.wait()
        if self._failure is not None:
            logger.error("Lifespan shutdown failed: %s", self._failure)

    async def _main(self) -> None:
        scope: Scope = {
            "type": "lifespan",
            "asgi": {"version": ASGI_VERSION, "spec_version": ASGI_SPEC_VERSION},
            "state": self.state,
        }
        try:
            await self.app(scope, self._receive_message, self._send)
        except asyncio.CancelledError:
            # The loop is closing under an app still waiting in receive(): not its failure.
            raise
        except Exception as exc:
            if self._startup_done.is_set() and self._shutdown_done.is_set():
                return
            if self.mode == "auto" and not self._received:
                # Apps without lifespan support raise on the unknown scope type before they
                # ever call receive(); one that raised later supports it and really failed.
                logger.info("ASGI lifespan unsupported by the app (%s); going on without it", exc)
                self._unsupported = True
            else:
                logger.error("Exception in ASGI lifespan", exc_info=exc)
                self._failure = f"{type(exc).__name__}: {exc}"
        finally:
            self._startup_done.set()
            self._shutdown_done.set()

    async def _receive_message(self) -> Message:
        self._received = True
        return await self._receive.get()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind in ("lifespan.startup.complete", "lifespan.startup.failed"):
            if self._startup_done.is_set():
                raise AppProtocolError(f"{kind} sent after startup ended")
            if kind == "lifespan.startup.failed":
                self._failure = message.get("message", "") or "startup failed"
            self._startup_done.set()
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            if kind == "lifespan.shutdown.failed":
                self._failure = message.get("message", "") or "shutdown failed"
            self._shutdown_done.set()
        else:
            raise AppProtocolError(f"unexpected lifespan message type {kind!r}")
