"""A reload worker, in the child the template forked: import the app, serve on the inherited
socket, report to the supervisor over its channel, and list the modules the next template
can preload."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from aserve.config import Config
from aserve.errorpage import user_traceback
from aserve.errors import AppLoadError
from aserve.loader import load
from aserve.logs import configure
from aserve.reload.ipc import (
    WORKER_LINK,
    Channel,
    Failed,
    Fork,
    FromWorker,
    Hello,
    Ready,
    Stop,
    ToWorker,
    inherit_channel,
)
from aserve.server import Server

# Error records the error page shows when the app fails to start: a failed lifespan startup
# logs one or two; earlier ones are in the terminal.
ERRORS_KEPT = 5


class _LastErrors(logging.Handler):
    """Keeps the worker's last error records, for the supervisor's error page."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += "\n" + "".join(traceback.format_exception(record.exc_info[1]))
        self.lines = [*self.lines, text][-ERRORS_KEPT:]


def worker_main(message: Fork, listen_fd: int, channel_fd: int) -> int:
    """In the forked child: import the app, serve on the inherited socket, report over the
    channel; stop when the supervisor says so or goes away."""
    channel = inherit_channel(channel_fd, WORKER_LINK)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    channel.send(Hello(os.getpid()))
    config = Config(**message.config)
    configure(config.log_level)
    roots = [Path(p) for p in message.roots]
    try:
        loaded = load(message.app, factory=config.factory, interface=config.interface)
    except BaseException as exc:
        cause = exc.__cause__ if isinstance(exc, AppLoadError) and exc.__cause__ else exc
        channel.send(
            Failed(
                title="The application could not be imported",
                summary=str(exc) or type(exc).__name__,
                details=user_traceback(cause),
            )
        )
        return 1

    errors = _LastErrors()
    logging.getLogger("aserve").addHandler(errors)
    server = Server(loaded, config)
    listen = socket.socket(fileno=os.dup(listen_fd))

    # The loop keeps only weak references to tasks.
    obeying: set[asyncio.Task[None]] = set()

    def on_ready() -> None:
        channel.send(Ready(tuple(third_party_modules(roots))))
        obeying.add(asyncio.ensure_future(_obey(channel, server.request_stop)))

    server.on_ready = on_ready
    code = server.run([listen])
    if code != 0 and not server.started.is_set():
        with contextlib.suppress(OSError):
            channel.send(
                Failed(
                    title="The application failed to start",
                    summary=f"the worker exited with code {code}",
                    details="\n".join(errors.lines),
                )
            )
    return code


async def _obey(channel: Channel[ToWorker, FromWorker], stop: Callable[[], None]) -> None:
    """Stop the server when the supervisor says so or goes away."""
    while True:
        match await channel.receive():
            case Stop() | None:
                stop()
                return


def third_party_modules(roots: list[Path]) -> list[str]:
    """Imported modules that are not project code: what the next template can preload.

    Project code is anything under a watched directory, except installed packages there
    (a virtual environment inside the project).
    """
    resolved = [str(root.resolve()) + os.sep for root in roots]
    names = []
    # realpath() lstat()s every component of a path, and this runs on the new worker's loop,
    # which accepts nothing until it returns: resolve each directory once, a file only when it
    # is a link.
    real_dirs: dict[str, str] = {}
    for name, module in list(sys.modules.items()):
        if name == "__main__" or module is None:
            continue
        path = getattr(module, "__file__", None)
        if path is None:
            names.append(name)
            continue
        directory, base = os.path.split(path)
        real = real_dirs.get(directory)
        if real is None:
            real = real_dirs[directory] = os.path.realpath(directory)
        full = os.path.realpath(path) if os.path.islink(path) else os.path.join(real, base)
        if any(full.startswith(root) for root in resolved) and not (
            "site-packages" in full or "dist-packages" in full
        ):
            continue
        names.append(name)
    return names
