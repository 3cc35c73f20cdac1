"""The reload template process and the worker it forks.

The supervisor starts `python -m aserve.reload.template CONTROL_FD LISTEN_FD`: the template
imports the third-party modules the last worker used (never project code), then forks one
worker per request. A fork with Django and its dependencies already imported starts a worker
in tens of milliseconds instead of the few hundred a fresh interpreter needs.

Messages are JSON over SOCK_SEQPACKET socket pairs (one message per packet); each worker gets
its own channel to the supervisor, passed with SCM_RIGHTS, and exits when it closes.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

MAX_MESSAGE = 1 << 20


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def decode(data: bytes) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(data)
    return message


# -- the template process ---------------------------------------------------------------------


def preload(names: list[str]) -> int:
    """Import what can be imported of `names`; modules that fail (a Django models module
    before setup, say) are left for the worker."""
    loaded = 0
    for name in names:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except BaseException:
            continue
        loaded += 1
    return loaded


def template_main(control: socket.socket, listen_fd: int) -> int:
    request = decode(control.recv(MAX_MESSAGE))
    names: list[str] = request.get("preload", [])
    loaded = preload(names)
    gc.collect()  # the imports' garbage, before gc.freeze() below keeps it for good
    # Forking with threads alive copies their locks in whatever state they are: say so.
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    send(control, {"event": "ready", "loaded": loaded, "threads": threads})
    while True:
        readable, _, _ = select.select([control], [], [], 0.5)
        _reap(control)
        if not readable:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, 4)
        except OSError:
            return 0
        if not data:
            return 0  # the supervisor is gone
        message = decode(data)
        # Frozen objects are out of the collector's reach: without this, the first full
        # collection in a worker walks every object the template imported, writing to (and so
        # copying) each page of them, about half a Django worker's start-up time.
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            control.close()
            code = 1
            try:
                code = worker_main(message, listen_fd, fds[0])
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        for fd in fds:
            os.close(fd)


def _reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        try:
            send(control, {"event": "exited", "pid": pid, "code": code})
        except OSError:
            return


# -- the worker -------------------------------------------------------------------------------


class _LastErrors(logging.Handler):
    """Keeps the worker's last error records, for the supervisor's error page."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += "\n" + "".join(traceback.format_exception(record.exc_info[1]))
        self.lines = [*self.lines[-4:], text]


def worker_main(message: dict[str, Any], listen_fd: int, channel_fd: int) -> int:
    """In the forked child: import the app, serve on the inherited socket, report over the
    channel; stop when the supervisor says so or goes away."""
    from aserve.config import Config
    from aserve.errors import AppLoadError
    from aserve.loader import load
    from aserve.logs import configure
    from aserve.server import Server

    channel = socket.socket(fileno=channel_fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    send(channel, {"event": "hello", "pid": os.getpid()})
    config = Config(**message["config"])
    configure(config.log_level)
    roots = [Path(p) for p in message["roots"]]
    try:
        loaded = load(message["app"], factory=config.factory, interface=config.interface)
    except BaseException as exc:
        cause = exc.__cause__ if isinstance(exc, AppLoadError) and exc.__cause__ else exc
        send(
            channel,
            {
                "event": "failed",
                "title": "The application could not be imported",
                "summary": str(exc) or type(exc).__name__,
                "details": user_traceback(cause),
            },
        )
        return 1

    errors = _LastErrors()
    logging.getLogger("aserve").addHandler(errors)
    server = Server(loaded, config)
    listen = socket.socket(fileno=os.dup(listen_fd))

    def on_ready() -> None:
        import asyncio

        send(channel, {"event": "ready", "modules": third_party_modules(roots)})
        loop = asyncio.get_running_loop()
        channel.setblocking(False)

        def on_message() -> None:
            try:
                data = channel.recv(MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data or decode(data).get("command") == "stop":
                loop.remove_reader(channel.fileno())
                server.request_stop()

        loop.add_reader(channel.fileno(), on_message)

    server.on_ready = on_ready
    code = server.run([listen])
    if code != 0 and not server.started.is_set():
        with contextlib.suppress(OSError):
            send(
                channel,
                {
                    "event": "failed",
                    "title": "The application failed to start",
                    "summary": f"the worker exited with code {code}",
                    "details": "\n".join(errors.lines),
                },
            )
    return code


def user_traceback(exc: BaseException) -> str:
    """The traceback without the frames of aserve's loader and importlib, which only say
    that an import happened."""
    summary = traceback.TracebackException.from_exception(exc)
    aserve_dir = os.path.dirname(os.path.dirname(__file__)) + os.sep
    summary.stack = traceback.StackSummary.from_list(
        [
            frame
            for frame in summary.stack
            if not frame.filename.startswith(aserve_dir)
            and not frame.filename.startswith("<frozen importlib")
            and "/importlib/" not in frame.filename
        ]
    )
    return "".join(summary.format())


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


def main() -> int:
    control = socket.socket(fileno=int(sys.argv[1]))
    listen_fd = int(sys.argv[2])
    # The supervisor owns Ctrl-C: a terminal's SIGINT must not reach the template.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return template_main(control, listen_fd)


if __name__ == "__main__":
    raise SystemExit(main())
