"""A reload worker, in the child the template forked (or a spawned interpreter, see
aserve.reload.spawn): import the app, serve on the inherited socket, report to the supervisor
over its channel, and list the modules the next template can preload."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import faulthandler
import functools
import io
import logging
import os
import signal
import socket
import sys
import sysconfig
import threading
import traceback
from collections.abc import Callable

from aserve.config import Config
from aserve.errorpage import user_traceback
from aserve.errors import AppLoadError
from aserve.loader import LoadedApp, load, load_env_file
from aserve.logs import configure
from aserve.reload.ipc import (
    Changed,
    Channel,
    Draining,
    EventStream,
    Failed,
    Fork,
    FromWorker,
    Handled,
    Hello,
    Modules,
    Ready,
    Stop,
    ToWorker,
    Watch,
)
from aserve.server import Server

logger = logging.getLogger("aserve.error")

# Error records the error page shows when the app fails to start: a failed lifespan startup
# logs one or two; earlier ones are in the terminal.
ERRORS_KEPT = 5
# The signal on which a worker writes its threads' stacks to its dump pipe; Windows has none
# (nor faulthandler.register), and a worker that hangs there is shown without its stacks.
DUMP_SIGNAL: signal.Signals | None = getattr(signal, "SIGUSR1", None)
# A replaced worker's wait for requests on connections opened but not yet used. Browsers
# open spare connections and leave them idle for seconds: one used after the reload would
# get the old code. A client that connects to send a request sends it within milliseconds.
REPLACED_GRACE = 0.2
# When, after it is ready, a worker looks again for modules its first requests imported
# (seconds, each after the one before): a reload shortly after starts with the modules of
# the requests made meanwhile, a browser's first page load within the first few seconds.
LATE_MODULE_CHECKS = (1.0, 4.0, 15.0)


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


def worker_main(
    message: Fork, listen_fd: int, channel: Channel[ToWorker, FromWorker], dump_fd: int | None
) -> int:
    """In the forked or spawned worker: import the app, serve on the inherited socket, report
    over the channel; stop when the supervisor says so or goes away."""
    if dump_fd is not None and DUMP_SIGNAL is not None and sys.platform != "win32":
        # The supervisor asks for the stacks of a worker that takes too long to start (an
        # import that hangs): faulthandler writes them from its C handler, whatever Python is
        # doing.
        faulthandler.register(DUMP_SIGNAL, file=dump_fd, all_threads=True, chain=False)
    channel.send(Hello(os.getpid()))
    # Into a pipe (docker, an IDE's console, `| tee`) stdout is block-buffered: what the app
    # prints as it starts (Django's system checks) would come out when the worker exits.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    config = Config(**message.config)
    configure(config.log_level)
    link = ReloadLink()
    token = _LINK.set(link)
    try:
        # Here, not in the template or the supervisor: each worker reads the file as it is
        # now, so an edit of it takes effect with the restart it causes.
        load_env_file(config.env_file)
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
    # The worker's only descriptor of the listening socket, closed as it begins to stop: the
    # kernel refuses new clients once the supervisor and the templates closed theirs too.
    listen = socket.socket(fileno=listen_fd)
    if config.server == "wsgiref":
        return _serve_wsgiref(loaded, config, listen, channel, link, message.announce)
    server = Server(loaded, config)
    server.log_serving = message.announce
    server.log_stopped = False
    server.shutdown_grace = REPLACED_GRACE
    if config.reload_browser:
        _link_browser(server, channel)

    # The loop keeps only weak references to tasks.
    obeying: set[asyncio.Task[None]] = set()

    def stop(replaced: bool) -> None:
        server.request_stop(restart=replaced)

    def on_ready() -> None:
        modules = preloadable_modules()
        channel.send(Ready(modules))
        obeying.add(asyncio.ensure_future(_obey(channel, stop, link)))
        obeying.add(asyncio.ensure_future(_report_late_modules(channel, set(modules))))

    server.on_ready = on_ready
    code = server.run([listen])
    if code != 0 and not obeying:
        # Never ready: a lifespan startup that failed (its message is the last error logged).
        summary = errors.lines[-1].splitlines()[0] if errors.lines else ""
        with contextlib.suppress(OSError):
            channel.send(
                Failed(
                    title="The application failed to start",
                    summary=summary or f"the worker exited with code {code}",
                    details="\n".join(errors.lines),
                )
            )
    return code


def _link_browser(server: Server, channel: Channel[ToWorker, FromWorker]) -> None:
    """--reload-browser: the supervisor serves the browsers' event streams (they outlive this
    worker), and tells them to reload once this worker, replaced, takes no more requests."""

    def hand_over(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            channel.send(EventStream(), fds=[sock.fileno()])
        sock.close()

    def draining() -> None:
        with contextlib.suppress(OSError):
            channel.send(Draining())

    server.browser_events = hand_over
    server.on_draining = draining


def _serve_wsgiref(
    loaded: LoadedApp,
    config: Config,
    listen: socket.socket,
    channel: Channel[ToWorker, FromWorker],
    link: ReloadLink,
    announce: bool,
) -> int:
    """`--server wsgiref --reload`: the threaded fallback serves in the worker; a thread
    reads the channel, since the fallback has no event loop."""
    from aserve.fallback import WSGIRefServer

    server = WSGIRefServer(loaded, config, listen)

    def obey() -> None:
        while True:
            match channel.recv():
                case Stop() | None:
                    server.stop()
                    return
                case Changed(paths):
                    channel.send(Handled(all=link.handle(list(paths))))

    threading.Thread(target=obey, name="aserve-obey", daemon=True).start()
    channel.send(Ready(preloadable_modules()))
    server.serve(announce)
    return 0


async def _report_late_modules(channel: Channel[ToWorker, FromWorker], reported: set[str]) -> None:
    """Tell the supervisor of the preloadable modules the first requests import, so that the
    next template has them too: a quiet moment some seconds after each check."""
    for delay in LATE_MODULE_CHECKS:
        await asyncio.sleep(delay)
        modules = preloadable_modules()
        if not set(modules) <= reported:
            reported.update(modules)
            with contextlib.suppress(OSError):
                channel.send(Modules(modules))


async def _obey(
    channel: Channel[ToWorker, FromWorker], stop: Callable[[bool], None], link: ReloadLink
) -> None:
    """Stop the server when the supervisor says so or goes away; let the app deal with
    changed files when it asked to."""
    while True:
        match await channel.receive():
            case Stop(replaced):
                stop(replaced)
                return
            case None:  # the supervisor is gone: nothing replaces this worker
                stop(False)
                return
            case Changed(paths):
                # The app's handlers are synchronous code (Django's signal receivers).
                handled = await asyncio.to_thread(link.handle, list(paths))
                channel.send(Handled(all=handled))


def preloadable_modules() -> tuple[str, ...]:
    """Imported modules that are not the project's: the standard library's, installed
    packages' (site-packages, whether a virtual environment's or not), built-ins. The next
    template imports them before forking. A project module is never preloaded, wherever it
    is and whatever is watched: a module outside the watched directories would otherwise be
    preloaded with everything it imported, and an edit to one of those served stale."""
    names = []
    # realpath() lstat()s every component of a path: resolve each directory once.
    verdicts: dict[str, bool] = {}
    for name, module in list(sys.modules.items()):
        if name == "__main__" or module is None:
            continue
        path = getattr(module, "__file__", None)
        if path is None:
            names.append(name)  # built into the interpreter, or a namespace package
            continue
        directory = os.path.dirname(path)
        verdict = verdicts.get(directory)
        if verdict is None:
            verdict = verdicts[directory] = preloadable_directory(directory)
        if verdict:
            names.append(name)
    return tuple(names)


def preloadable_directory(directory: str) -> bool:
    """Whether modules in `directory` are the standard library's or installed packages'."""
    real = os.path.realpath(directory) + os.sep
    parts = real.split(os.sep)
    return "site-packages" in parts or "dist-packages" in parts or real.startswith(_stdlib())


@functools.cache
def _stdlib() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple(os.path.realpath(paths[key]) + os.sep for key in ("stdlib", "platstdlib"))
