"""The reload template process, which forks the workers.

The supervisor starts `python -m aserve.reload.template CONTROL_FD LISTEN_FD`: the template
imports the third-party modules the last worker used (never project code), then forks one
worker per request. A fork with Django and its dependencies already imported starts a worker
in tens of milliseconds instead of the few hundred a fresh interpreter needs.

Each worker gets its own channel to the supervisor (aserve.reload.ipc), passed along with the
fork request, and exits when it closes.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.abc
import importlib.machinery
import os
import select
import signal
import sys
import threading
import types
from collections.abc import Iterable, Sequence

from aserve.reload.ipc import (
    TEMPLATE_LINK,
    WORKER_LINK,
    Channel,
    Exited,
    Fork,
    FromTemplate,
    IPCError,
    Preload,
    TemplateReady,
    ToTemplate,
    inherit_channel,
)
from aserve.reload.worker import preloadable_directory, worker_main

# A Fork brings the worker's channel and its dump pipe.
FORK_FDS = 2


def preload(names: Iterable[str]) -> None:
    """Import what can be imported of `names`; modules that fail (a Django models module
    before setup, say) are left for the worker. Project code is refused while they import:
    an installed module may import the project's at import time (a Django migration reads
    settings.INSTALLED_APPS, importing the settings module), and every worker forked from
    this template would then run that code as it was when the template started."""
    refuse = _ProjectCodeRefused()
    sys.meta_path.insert(0, refuse)
    try:
        for name in names:
            if name in sys.modules:
                continue
            with contextlib.suppress(BaseException):
                importlib.import_module(name)
    finally:
        sys.meta_path.remove(refuse)


class _ProjectCodeRefused(importlib.abc.MetaPathFinder):
    """An import finder that fails imports of modules outside the standard library and
    installed packages (see `worker.preloadable_directory`)."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is None:
                continue
            origin = spec.origin
            if spec.has_location and origin and not preloadable_directory(os.path.dirname(origin)):
                raise ImportError(f"{fullname} is project code, never preloaded", name=fullname)
            return None  # the finders below find it again, as if this one were not here
        return None


def template_main(control: Channel[ToTemplate, FromTemplate], listen_fd: int) -> int:
    request = control.recv()
    if request is None:
        return 0  # the supervisor is gone
    if not isinstance(request, Preload):
        raise IPCError(f"the template expected Preload first, not {request}")
    preload(request.modules)
    gc.collect()  # the imports' garbage, before gc.freeze() below keeps it for good
    # Forking with threads alive copies their locks in whatever state they are: say so.
    threads = tuple(t.name for t in threading.enumerate() if t is not threading.main_thread())
    try:
        control.send(TemplateReady(threads))
    except OSError:
        return 0  # the supervisor went away while this template preloaded
    # A worker's exit is reported at once: SIGCHLD wakes the select below through a pipe (the
    # supervisor's crash page names the exit code or signal).
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(wake_write)
    while True:
        readable, _, _ = select.select([control.fileno(), wake_read], [], [])
        if wake_read in readable:
            os.read(wake_read, 512)
            _reap(control)
        if control.fileno() not in readable:
            continue
        received = control.recv_fds()
        if received is None:
            return 0  # the supervisor is gone
        message, fds = received
        if not isinstance(message, Fork) or len(fds) != FORK_FDS:
            for fd in fds:
                os.close(fd)
            raise IPCError(f"the template expected Fork with two descriptors, not {message}")
        # Frozen objects are out of the collector's reach: without this, the first full
        # collection in a worker walks every object the template imported, writing to (and so
        # copying) each page of them, about half a Django worker's start-up time.
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            control.close()
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(wake_read)
            os.close(wake_write)
            code = 1
            try:
                code = worker_main(message, listen_fd, inherit_channel(fds[0], WORKER_LINK), fds[1])
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        for fd in fds:
            os.close(fd)


def _reap(control: Channel[ToTemplate, FromTemplate]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        try:
            control.send(Exited(pid, code))
        except OSError:
            return


def main() -> int:
    control = inherit_channel(int(sys.argv[1]), TEMPLATE_LINK)
    listen_fd = int(sys.argv[2])
    # The supervisor owns Ctrl-C: a terminal's SIGINT must not reach the template.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return template_main(control, listen_fd)


if __name__ == "__main__":
    raise SystemExit(main())
