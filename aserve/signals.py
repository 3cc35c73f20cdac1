"""SIGINT and SIGTERM (and Windows' SIGBREAK, Ctrl-Break) in every serving mode: the first asks
for a graceful stop, a second one forces the exit, and the handlers that were there before come
back afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

logger = logging.getLogger("aserve.error")

# Windows delivers Ctrl-C as SIGINT and Ctrl-Break as SIGBREAK, and SIGTERM never (only a
# raise() in the process itself): TerminateProcess cannot be caught.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM) + (
    (signal.SIGBREAK,) if hasattr(signal, "SIGBREAK") else ()
)
# process.PORTABLE_ENV, which this module cannot import (it imports nothing of aserve): set to
# 1, the loop's signals are taken as where it has no add_signal_handler (Windows).
_PORTABLE_ENV = "ASERVE_PORTABLE"

_Handler = Callable[[int, FrameType | None], Any] | int | None


class StopSignals:
    """Routes SIGINT/SIGTERM to `on_stop` (the first) and `on_force` (any later one).

    Through the loop's signal handlers when there is a loop, so that the callbacks run on it
    between callbacks; else through `signal.signal`, where they run in the main thread between
    bytecodes (and may raise to leave a blocking call). Neither asyncio nor uvloop restores
    what was installed before `add_signal_handler`: `restore()` does.

    A loop without `add_signal_handler` (Windows', or any under ASERVE_PORTABLE=1) gets
    `signal.signal` handlers that hand the signal to it thread-safely, and a wakeup socket
    (`signal.set_wakeup_fd`) the loop watches: a select() on Windows is not interrupted by a
    signal, and the handler runs only once the loop wakes.
    """

    def __init__(
        self, on_stop: Callable[[int], None], on_force: Callable[[int], None], what: str
    ) -> None:
        self._on_stop = on_stop
        self._on_force = on_force
        self._what = what
        self._saved: dict[int, _Handler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # The wakeup socket pair of a loop without signal handlers, the loop it is registered
        # with, and the wakeup descriptor it replaced.
        self._wakeup: tuple[socket.socket, socket.socket, asyncio.AbstractEventLoop, int] | None
        self._wakeup = None
        self.received = 0

    def install(self, loop: asyncio.AbstractEventLoop | None = None) -> bool:
        """Take over the signals; False off the main thread, where Python delivers none (the
        thread's owner handles them)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        portable = os.environ.get(_PORTABLE_ENV) == "1"
        for sig in STOP_SIGNALS:
            self._saved[sig] = signal.getsignal(sig)
            if loop is None:
                signal.signal(sig, self._from_signal)
                continue
            try:
                if portable:
                    raise NotImplementedError
                loop.add_signal_handler(sig, self.deliver, sig)
                self._loop = loop
            except NotImplementedError:
                # Windows' loops have no signal handlers: the handler runs between bytecodes
                # and hands the signal to the loop.
                self._wake(loop)
                signal.signal(sig, self._to_loop(loop))
        return True

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have the C-level signal handler write to a socket the loop reads, so that a loop
        blocked in select() wakes and the Python-level handler gets to run."""
        if self._wakeup is not None:
            return
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        try:
            loop.add_reader(reader.fileno(), _drain, reader)
        except (NotImplementedError, OSError):
            # A loop that cannot watch a socket (a proactor) wakes by itself: asyncio's
            # ProactorEventLoop sets its own wakeup descriptor as it runs.
            reader.close()
            writer.close()
            return
        replaced = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self._wakeup = (reader, writer, loop, replaced)

    def restore(self) -> None:
        if self._wakeup is not None:
            reader, writer, wake_loop, replaced = self._wakeup
            self._wakeup = None
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(replaced)
            if not wake_loop.is_closed():
                with contextlib.suppress(RuntimeError, ValueError):
                    wake_loop.remove_reader(reader.fileno())
            reader.close()
            writer.close()
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


def _drain(sock: socket.socket) -> None:
    """Empty the wakeup socket: the signal's handler already ran, or runs next."""
    with contextlib.suppress(OSError):
        while sock.recv(512):
            pass
