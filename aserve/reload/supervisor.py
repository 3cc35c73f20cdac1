"""`--reload`: the supervisor holds the listening socket for its whole life, forks workers from
a pre-warmed template process, restarts them on file changes with no request refused, and
serves the error page while the app cannot start. It never imports the application.

A restart starts the new worker first; once it accepts, the old one stops accepting and
drains. Between workers, connections wait in the listen backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from pathlib import Path
from typing import Any

from watchfiles import Change, awatch

from aserve.config import Config
from aserve.errors import ConfigError
from aserve.loader import LoadedApp
from aserve.logs import configure
from aserve.process import loop_factory
from aserve.reload.errorpage import error_app
from aserve.reload.filter import ReloadFilter
from aserve.reload.ipc import (
    TEMPLATE_LINK,
    WORKER_LINK,
    Changed,
    Channel,
    Exited,
    Failed,
    Fork,
    FromTemplate,
    FromWorker,
    Handled,
    Hello,
    IPCError,
    Preload,
    Ready,
    Stop,
    TemplateReady,
    ToTemplate,
    ToWorker,
    Watch,
    channel_pair,
)
from aserve.server import Server
from aserve.signals import StopSignals
from aserve.sockets import bound

logger = logging.getLogger("aserve.error")

# What every worker imports before the app: the first template preloads these.
BASE_PRELOAD = ["aserve.server", "aserve.reload.worker", "uvloop", "httptools", "asyncio"]
# A worker that does not exit this long after its drain timeout is killed.
KILL_GRACE = 1.0
# A replaced template exits as soon as it reads the end of its channel; this leaves room for
# an interpreter with a large app imported to tear down before it is killed.
TEMPLATE_EXIT_WAIT = 2.0
# How long the crash page waits for the template to report the worker's exit code. The page
# should come up at once, but the template reaps only every template.REAP_INTERVAL, so the
# code is often still unknown (tests/test_reload.py::test_crash_page_names_the_exit_code).
EXIT_CODE_WAIT = 0.05
# watchfiles yields a batch once it saw no new change for `step` ms (--reload-delay), or this
# many ms after the first, so a tree written without pause still restarts. watchfiles' default.
WATCH_DEBOUNCE_MS = 1600
# _settle waits no longer for files still being written: a file written without pause (a log
# inside the project) must not hold the restart back; an editor's or formatter's burst of
# writes is over well within it.
SETTLE_LIMIT = 1.0
# The tail of a burst is reported right after the restart it caused (watchfiles keeps what
# changed during the restart): a batch reported later is new, whatever its change times say.
TAIL_WINDOW = 5.0
# The kernel stamps change times with a coarse clock, up to a tick (10 ms at HZ=100) behind
# time.time(): allow two.
CTIME_MARGIN = 0.02
# Changed paths named in the "restarting" log line; the rest are counted, so a `git switch`
# stays one line.
NAMED_CHANGES = 3
# How long a worker that asked to hear of changes (Django's file_changed receivers) may take
# to say whether it dealt with them; a template cache reset takes microseconds, and a worker
# that does not answer in time is restarted as if it had said no.
CHANGE_ANSWER_WAIT = 2.0


class Worker:
    """The supervisor's side of one worker's channel.

    One coroutine at a time reads the channel (the loop keeps a single reader per file
    descriptor): `started()` until the worker is ready, then the monitor task until EOF.
    """

    def __init__(self, channel: Channel[FromWorker, ToWorker]) -> None:
        self.channel = channel
        self.pid: int | None = None
        self.modules: tuple[str, ...] = ()
        self.failure: Failed | None = None
        # What the app asked to watch, and whether it wants to hear of changes first.
        self.watch: Watch | None = None
        self.stopping = False
        self.exited = asyncio.Event()
        self._monitor: asyncio.Task[None] | None = None
        self._answer: asyncio.Future[bool] | None = None

    async def _next(self) -> FromWorker | None:
        message = await self.channel.receive()
        if message is None:
            self.exited.set()
        return message

    async def started(self) -> bool:
        """True once the worker accepts; False when it failed (see `failure`) or died."""
        while True:
            match await self._next():
                case None:
                    return False
                case Hello(pid):
                    self.pid = pid
                case Ready(modules):
                    self.modules = modules
                    self._monitor = asyncio.create_task(self._read_until_exit())
                    return True
                case Failed() as failure:
                    self.failure = failure
                case Watch() as watch:
                    self.watch = watch

    async def _read_until_exit(self) -> None:
        while not self.exited.is_set():
            message = await self._next()
            answer = self._answer
            if answer is not None and not answer.done():
                if isinstance(message, Handled):
                    answer.set_result(message.all)
                elif message is None:
                    answer.set_result(False)

    @property
    def wants_changes(self) -> bool:
        return self.watch is not None and self.watch.changes and not self.exited.is_set()

    async def handles(self, paths: list[str]) -> bool:
        """Tell the worker what changed; whether its app dealt with all of it itself."""
        self._answer = asyncio.get_running_loop().create_future()
        try:
            self.channel.send(Changed(tuple(paths)))
            return await asyncio.wait_for(self._answer, CHANGE_ANSWER_WAIT)
        except (OSError, TimeoutError):
            return False
        finally:
            self._answer = None

    async def wait_exit(self) -> None:
        await self.exited.wait()

    async def stop(self, timeout: float) -> None:
        """Ask for a graceful stop; kill after `timeout` plus a grace period."""
        self.stopping = True
        if not self.exited.is_set():
            with contextlib.suppress(OSError):
                self.channel.send(Stop())
            try:
                await asyncio.wait_for(self.exited.wait(), timeout + KILL_GRACE)
            except TimeoutError:
                if self.pid is not None:
                    logger.warning("Worker %d did not stop in time: killing it", self.pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGKILL)
                await self.exited.wait()
        self.channel.close()

    def kill(self) -> None:
        if self.pid is not None and not self.exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


class Template:
    """The pre-warmed template process that forks workers."""

    def __init__(
        self, process: asyncio.subprocess.Process, control: Channel[FromTemplate, ToTemplate]
    ) -> None:
        self.process = process
        self.control = control
        self.preloaded: set[str] = set()
        self.exit_codes: dict[int, int] = {}
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, preload: list[str], listen: socket.socket) -> Template:
        ours, theirs = channel_pair(TEMPLATE_LINK)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "aserve.reload.template",
            str(theirs.fileno()),
            str(listen.fileno()),
            pass_fds=(theirs.fileno(), listen.fileno()),
            # Its own session: a terminal's Ctrl-C reaches the supervisor, which stops the
            # workers in order, and not the template or workers behind its back.
            start_new_session=True,
        )
        theirs.close()
        template = cls(process, ours)
        ours.send(Preload(tuple(preload)))
        ready = await ours.receive()
        if not isinstance(ready, TemplateReady):
            raise IPCError("the reload template exited before it was ready")
        if ready.threads:
            logger.debug("The reload template runs threads: %s", list(ready.threads))
        template.preloaded = set(preload)
        template._reader = asyncio.create_task(template._read())
        return template

    async def _read(self) -> None:
        while (message := await self.control.receive()) is not None:
            if isinstance(message, Exited):
                self.exit_codes[message.pid] = message.code

    def fork(self, request: Fork) -> Worker:
        ours, theirs = channel_pair(WORKER_LINK)
        try:
            self.control.send(request, fds=[theirs.fileno()])
        finally:
            theirs.close()
        return Worker(ours)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self.control.close()
        try:
            await asyncio.wait_for(self.process.wait(), TEMPLATE_EXIT_WAIT)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


class _Changes:
    """watchfiles' batches of changed paths, over roots that may grow while it watches: each
    root the app adds later (a directory it asked to watch outside the others) gets a watch
    of its own at once, so that nothing changed meanwhile is missed."""

    def __init__(
        self, roots: list[Path], watch_filter: ReloadFilter, step_ms: int, poll: bool = False
    ) -> None:
        self.roots = list(roots)
        self._filter = watch_filter
        self._step_ms = step_ms
        self._poll = poll
        self._stop = asyncio.Event()
        self._pending: dict[
            asyncio.Future[set[tuple[Change, str]]], AsyncGenerator[set[tuple[Change, str]]]
        ] = {}

    def start(self) -> None:
        """Begin watching (changes made from now on are kept until `next()`)."""
        self._watch(self.roots)

    def add_roots(self, paths: Iterable[Path]) -> list[Path]:
        """Watch these too; the ones that were not watched yet."""
        new = [p for p in paths if not any(p.is_relative_to(root) for root in self.roots)]
        new = [p for i, p in enumerate(new) if not any(p.is_relative_to(q) for q in new[:i])]
        if new:
            self.roots += new
            self._watch(new)
        return new

    def _watch(self, roots: list[Path]) -> None:
        feed = awatch(
            *roots,
            watch_filter=self._filter,
            stop_event=self._stop,
            # Whole milliseconds, and at least one: watchfiles sleeps `step` between two looks
            # at its change set, so --reload-delay 0 would make its thread spin.
            step=self._step_ms,
            debounce=WATCH_DEBOUNCE_MS,
            # None unless --reload-poll: watchfiles then decides, honouring
            # WATCHFILES_FORCE_POLLING (False would override it) and polling on WSL.
            force_polling=True if self._poll else None,
        )
        self._pending[asyncio.ensure_future(anext(feed))] = feed

    def stop(self) -> None:
        self._stop.set()

    async def next(self) -> list[str] | None:
        """The next batch of changed paths; None once stopped."""
        while self._pending:
            done, _ = await asyncio.wait(self._pending, return_when=asyncio.FIRST_COMPLETED)
            batch: list[str] = []
            for future in done:
                feed = self._pending.pop(future)
                try:
                    changes = future.result()
                except StopAsyncIteration:
                    continue  # stopped
                except OSError as exc:
                    # A root gone since (a directory removed): the other watches go on.
                    logger.warning("Watching stopped for part of the tree: %s", exc)
                    continue
                self._pending[asyncio.ensure_future(anext(feed))] = feed
                batch += [path for _, path in changes]
            if batch:
                return batch
        return None


class Supervisor:
    def __init__(
        self,
        app: str,
        config: Config,
        on_serving: Callable[[], None] | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self.app = app
        # A listening socket bound by the caller (runserver binds itself, for its own
        # messages); else the supervisor binds the one the settings ask for.
        self._given = sock
        # Called once, when the first worker (or the error page) serves: the Django command
        # prints runserver's banner then.
        self._on_serving = on_serving
        # Workers keep reload=True: it tells their runners they serve a developer (the
        # traceback page of a request that failed).
        self.config = config
        self.roots = [Path(d).resolve() for d in (config.reload_dirs or ["."])]
        self.filter = ReloadFilter(self.roots, config.reload_includes, config.reload_excludes)
        step_ms = max(1, int(config.reload_delay * 1000))
        self._changes = _Changes(self.roots, self.filter, step_ms, config.reload_poll)
        self.worker: Worker | None = None
        self.template: Template | None = None
        self._error_server: Server | None = None
        self._error_task: asyncio.Task[int] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()
        self._force = False

    def run(self) -> int:
        configure(self.config.log_level)
        for root in self.roots:
            if not root.is_dir():
                raise ConfigError(f"--reload-dir {root} is not a directory")
        with contextlib.nullcontext(self._given) if self._given else bound(self.config) as sock:
            sock.set_inheritable(True)
            if self.config.uds is None and self.config.fd is None and self.config.port == 0:
                # Log (and tell the workers) the port the kernel picked, not 0.
                self.config = self.config.replace(port=sock.getsockname()[1])
            with asyncio.Runner(loop_factory=loop_factory(self.config.loop)) as runner:
                return runner.run(self._supervise(sock))

    async def _supervise(self, sock: socket.socket) -> int:
        signals = StopSignals(self._on_stop, self._on_force, "stopping")
        with signals.installed(asyncio.get_running_loop()):
            return await self._watch_and_restart(sock)

    async def _watch_and_restart(self, sock: socket.socket) -> int:
        self.sock = sock
        logger.info(
            "aserve supervisor on %s, watching %s%s",
            self.config.bind_description,
            ", ".join(str(r) for r in self.roots),
            " by polling" if self.config.reload_poll else "",
        )
        self.template = await Template.start(BASE_PRELOAD, sock)
        # Watch before the first worker starts, or a save just after "ready" is missed;
        # watchfiles keeps collecting changes between iterations, also during a restart.
        self._changes.start()
        await asyncio.sleep(0)
        restarted_at = time.time()
        await self._restart()
        while (changed := await self._changes.next()) is not None:
            if _older_than(changed, restarted_at):
                logger.debug("Already loaded by the current worker: %s", ", ".join(changed))
                continue
            paths = sorted({_display(Path(path), self.roots) for path in changed})
            left = len(paths) - NAMED_CHANGES
            named = ", ".join(paths[:NAMED_CHANGES]) + (f" and {left} more" if left > 0 else "")
            worker = self.worker
            if worker is not None and worker.wants_changes and await worker.handles(changed):
                logger.info("Changed: %s; the app took it in without a restart", named)
                continue
            logger.info("Changed: %s; restarting", named)
            await _settle(changed, self.config.reload_delay)
            _forget_bytecode(changed)
            restarted_at = time.time()
            await self._restart()
        await self._shutdown()
        return 0

    def _on_stop(self, sig: int) -> None:
        self._stop.set()
        self._changes.stop()

    def _on_force(self, sig: int) -> None:
        self._force = True
        if self.worker is not None:
            self.worker.kill()

    def _request(self) -> Fork:
        return Fork(
            app=self.app,
            config=dataclasses.asdict(self.config),
            roots=tuple(str(r) for r in self.roots),
        )

    async def _restart(self) -> None:
        assert self.template is not None
        started = time.perf_counter()
        new = self.template.fork(self._request())
        if await new.started():
            await self._hide_error()
            old, self.worker = self.worker, new
            self._spawn(self._watch(new))
            if old is not None:
                self._spawn(old.stop(self.config.timeout_graceful_shutdown))
            elapsed = (time.perf_counter() - started) * 1e3
            logger.info("Worker %s ready in %.0f ms", new.pid, elapsed)
            if new.watch is not None:
                self._watch_more(new.watch)
            self._serving()
            if not set(new.modules) <= self.template.preloaded:
                self._spawn(self._refresh_template(new.modules))
            return
        # The new code cannot run: stop the old worker and show why, until the next change.
        if self.worker is not None:
            old, self.worker = self.worker, None
            await old.stop(self.config.timeout_graceful_shutdown)
        failure = new.failure or Failed(
            title="The worker exited before serving",
            summary=f"exit code {self.template.exit_codes.get(new.pid or -1, 'unknown')}",
            details="",
        )
        new.channel.close()
        logger.error("%s: %s", failure.title, failure.summary)
        await self._show_error(failure.title, failure.summary, failure.details)

    def _watch_more(self, watch: Watch) -> None:
        """Take in what the app asked to watch. Installed packages' directories (a third-party
        app's templates) are left out: they change only when packages do."""
        dirs = [
            (Path(path).resolve(), glob)
            for path, glob in zip(watch.dirs, watch.globs, strict=True)
            if not _installed(path) and os.path.isdir(path)
        ]
        files = [
            Path(path).resolve()
            for path in watch.files
            if not _installed(path) and os.path.isdir(os.path.dirname(path))
        ]
        self.filter.add(dirs, files)
        added = self._changes.add_roots([d for d, _ in dirs] + [f.parent for f in files])
        if added:
            logger.info("Also watching %s, as the app asked", ", ".join(map(str, added)))

    def _serving(self) -> None:
        callback, self._on_serving = self._on_serving, None
        if callback is not None:
            callback()

    async def _watch(self, worker: Worker) -> None:
        """A worker that dies while current is a crash: show it until the next change."""
        await worker.wait_exit()
        if worker is self.worker and not worker.stopping and not self._stop.is_set():
            self.worker = None
            await asyncio.sleep(EXIT_CODE_WAIT)
            assert self.template is not None
            code = self.template.exit_codes.get(worker.pid or -1, "unknown")
            logger.error("Worker %s exited unexpectedly (code %s)", worker.pid, code)
            await self._show_error(
                "The worker exited unexpectedly",
                f"exit code {code}; save a file to restart it",
                "See the terminal running aserve for its output.",
            )

    async def _refresh_template(self, modules: Iterable[str]) -> None:
        """Replace the template with one that preloads what the app imports."""
        template = await Template.start(sorted(set(BASE_PRELOAD) | set(modules)), self.sock)
        old, self.template = self.template, template
        if old is not None:
            await old.close()

    async def _show_error(self, title: str, summary: str, details: str) -> None:
        await self._hide_error()
        page = LoadedApp(kind="asgi", app=error_app(title, summary, details), name="error page")
        server = Server(page, self.config.replace(lifespan="off", tune_gc=False))
        self._error_server = server
        self._error_task = asyncio.create_task(
            server.serve([self.sock.dup()], handle_signals=False)
        )
        self._serving()

    async def _hide_error(self) -> None:
        server, task = self._error_server, self._error_task
        self._error_server = self._error_task = None
        if server is not None and task is not None:
            server.request_stop()
            await task

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _shutdown(self) -> None:
        await self._hide_error()
        if self.worker is not None:
            worker, self.worker = self.worker, None
            await worker.stop(0 if self._force else self.config.timeout_graceful_shutdown)
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.template is not None:
            await self.template.close()
        logger.info("aserve supervisor stopped")


async def _settle(paths: list[str], quiet: float) -> None:
    """Wait (at most SETTLE_LIMIT) until none of `paths` was written in the last `quiet` seconds.

    watchfiles yields once the set of changed paths stops growing: for a file written again
    and again (a formatter, a save in several writes) that is after the first write. The
    inode change time, unlike mtime, cannot be set back by `cp -p`, `tar` or `rsync`.
    """
    deadline = time.time() + SETTLE_LIMIT
    while True:
        newest = 0.0
        for path in paths:
            with contextlib.suppress(OSError):
                newest = max(newest, os.stat(path).st_ctime)
        wait = min(newest + quiet, deadline) - time.time()
        if wait <= 0:
            return
        await asyncio.sleep(wait)


def _older_than(paths: list[str], started: float) -> bool:
    """Whether every path last changed before the worker started at `started` did: the tail
    of a burst that `_settle` waited out, which needs no second restart. A path gone, or a
    clock stepped back, restarts as usual.
    """
    if not 0 <= time.time() - started < TAIL_WINDOW:
        return False
    for path in paths:
        try:
            if os.stat(path).st_ctime >= started - CTIME_MARGIN:
                return False
        except OSError:
            return False
    return True


def _forget_bytecode(paths: Iterable[str]) -> None:
    """Delete the cached bytecode of changed modules. Python trusts a .pyc whose recorded source
    mtime (whole seconds) and size match: a same-size edit within a second of the previous one
    would otherwise import the old code."""
    for path in paths:
        if path.endswith(".py"):
            with contextlib.suppress(OSError, ValueError):
                os.unlink(importlib.util.cache_from_source(path))


def _display(path: Path, roots: list[Path]) -> str:
    for root in roots:
        if path.is_relative_to(root):
            return str(path.relative_to(root))
    return str(path)


def _installed(path: str) -> bool:
    """Whether `path` lies in installed packages (site-packages, a distribution's packages)."""
    parts = Path(path).parts
    return "site-packages" in parts or "dist-packages" in parts
