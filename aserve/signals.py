"""SIGINT and SIGTERM in every serving mode: the first asks for a graceful stop, a second one
forces the exit, and the handlers that were there before come back afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

logger = logging.getLogger("aserve.error")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_Handler = Callable[[int, FrameType | None], Any] | int | None


class StopSignals:
    """Routes SIGINT/SIGTERM to `on_stop` (the first) and `on_force` (any later one).

    Through the loop's signal handlers when there is a loop, so that the callbacks run on it
    between callbacks; else through `signal.signal`, where they run in the main thread between
    bytecodes (and may raise to leave a blocking call). Neither asyncio nor uvloop restores
    what was installed before `add_signal_handler`: `restore()` does.
    """

    def __init__(
        self, on_stop: Callable[[int], None], on_force: Callable[[int], None], what: str
    ) -> None:
        self._on_stop = on_stop
        self._on_force = on_force
        self._what = what
        self._saved: dict[int, _Handler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.received = 0

    def install(self, loop: asyncio.AbstractEventLoop | None = None) -> bool:
        """Take over the signals; False off the main thread, where Python delivers none (the
        thread's owner handles them)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for sig in STOP_SIGNALS:
            self._saved[sig] = signal.getsignal(sig)
            if loop is None:
                signal.signal(sig, self._from_signal)
                continue
            try:
                loop.add_signal_handler(sig, self.deliver, sig)
                self._loop = loop
            except NotImplementedError:
                # Windows' loops have no signal handlers: the handler runs between bytecodes
                # and hands the signal to the loop.
                signal.signal(sig, self._to_loop(loop))
        return True

    def restore(self) -> None:
        loop, self._loop = self._loop, None
        for sig, previous in self._saved.items():
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(ValueError, RuntimeError):
                    loop.remove_signal_handler(sig)
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._saved.clear()

    @contextlib.contextmanager
    def installed(self, loop: asyncio.AbstractEventLoop | None = None) -> Iterator[bool]:
        installed = self.install(loop)
        try:
            yield installed
        finally:
            if installed:
                self.restore()

    def _from_signal(self, sig: int, frame: FrameType | None) -> None:
        self.deliver(sig)

    def _to_loop(self, loop: asyncio.AbstractEventLoop) -> Callable[[int, FrameType | None], None]:
        def handler(sig: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(self.deliver, sig)

        return handler

    def deliver(self, sig: int) -> None:
        """Act on `sig` as if it had arrived (also for a stop asked by other means)."""
        self.received += 1
        name = signal.Signals(sig).name
        if self.received == 1:
            logger.info("%s received: %s", name, self._what)
            self._on_stop(sig)
        else:
            logger.warning("Second %s: exiting now", name)
            self._on_force(sig)
