"""A reload worker, in the child the template forked: import the app, serve on the inherited
socket, report to the supervisor over its channel, and list the modules the next template
can preload."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
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
    Changed,
    Channel,
    Failed,
    Fork,
    FromWorker,
    Handled,
    Hello,
    Ready,
    Stop,
    ToWorker,
    Watch,
    inherit_channel,
)
from aserve.server import Server

logger = logging.getLogger("aserve.error")

# Error records the error page shows when the app fails to start: a failed lifespan startup
# logs one or two; earlier ones are in the terminal.
ERRORS_KEPT = 5


class ReloadLink:
    """What an app may tell the reloader while it loads in a worker (see `current_link`): more
    to watch, and that it wants to hear of changes first, to deal with those it can itself
    (Django resets its template loaders on a template edit) instead of a restart."""

    def __init__(self) -> None:
        self.dirs: list[tuple[str, str]] = []
        self.files: list[str] = []
        self._on_change: Callable[[list[str]], bool] | None = None

    def watch_dir(self, path: str, glob: str) -> None:
        """Watch the files below `path` that match `glob` (relative to it, `**/` for any
        depth), whatever the watch filter would otherwise say of them."""
        self.dirs.append((path, glob))

    def watch_file(self, path: str) -> None:
        self.files.append(path)

    def on_change(self, callback: Callable[[list[str]], bool]) -> None:
        """Before a restart, `callback(paths)` runs in the worker: True means it dealt with
        every one of them, and the worker stays."""
        self._on_change = callback

    def message(self) -> Watch | None:
        if not self.dirs and not self.files and self._on_change is None:
            return None
        return Watch(
            dirs=tuple(path for path, _ in self.dirs),
            globs=tuple(glob for _, glob in self.dirs),
            files=tuple(self.files),
            changes=self._on_change is not None,
        )

    def handle(self, paths: list[str]) -> bool:
        callback = self._on_change
        if callback is None:
            return False
        try:
            return callback(paths)
        except Exception:
            logger.exception("Exception in the app's handling of changed files; restarting")
            return False


# The link of the worker whose app is loading in this context: an app factory finds it with
# `current_link()` (None outside a reload worker).
_LINK: contextvars.ContextVar[ReloadLink | None] = contextvars.ContextVar(
    "aserve_reload_link", default=None
)


def current_link() -> ReloadLink | None:
    """The reloader's link, when called while the app loads in a reload worker."""
    return _LINK.get()


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
    link = ReloadLink()
    token = _LINK.set(link)
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
    finally:
        _LINK.reset(token)
    if (watch := link.message()) is not None:
        channel.send(watch)

    errors = _LastErrors()
    logging.getLogger("aserve").addHandler(errors)
    server = Server(loaded, config)
    listen = socket.socket(fileno=os.dup(listen_fd))

    # The loop keeps only weak references to tasks.
    obeying: set[asyncio.Task[None]] = set()

    def on_ready() -> None:
        channel.send(Ready(tuple(third_party_modules(roots))))
        obeying.add(asyncio.ensure_future(_obey(channel, server.request_restart, link)))

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


async def _obey(
    channel: Channel[ToWorker, FromWorker], stop: Callable[[], None], link: ReloadLink
) -> None:
    """Stop the server when the supervisor says so or goes away; let the app deal with
    changed files when it asked to."""
    while True:
        match await channel.receive():
            case Stop() | None:
                stop()
                return
            case Changed(paths):
                # The app's handlers are synchronous code (Django's signal receivers).
                handled = await asyncio.to_thread(link.handle, list(paths))
                channel.send(Handled(all=handled))


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
