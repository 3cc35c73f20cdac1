"""`--reload`: the supervisor holds the listening socket for its whole life, forks workers from
a pre-warmed template process (or spawns each as a fresh interpreter, see aserve.reload.spawn),
restarts them on file changes with no request refused, and serves the error page while the
app cannot start. It never imports the application.

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
import subprocess
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
from aserve.reload.browser import BrowserHub
from aserve.reload.errorpage import error_app
from aserve.reload.filter import ReloadFilter
from aserve.reload.ipc import (
    TEMPLATE_LINK,
    WORKER_LINK,
    Changed,
    Channel,
    Draining,
    EventStream,
    Exited,
    Failed,
    Fork,
    FromTemplate,
    FromWorker,
    Handled,
    Hello,
    IPCError,
    Modules,
    Preload,
    Ready,
    Stop,
    TemplateReady,
    ToTemplate,
    ToWorker,
    Watch,
    channel_pair,
)
from aserve.reload.spawn import start_worker, worker_kind
from aserve.reload.worker import DUMP_SIGNAL
from aserve.server import Server
from aserve.signals import StopSignals
from aserve.sockets import bound

logger = logging.getLogger("aserve.error")

# What every worker imports before the app: the first template preloads these.
BASE_PRELOAD = ["aserve.server", "aserve.reload.worker", "uvloop", "httptools", "asyncio"]
# A worker that does not exit this long after its drain timeout is killed.
KILL_GRACE = 1.0
# A retired template exits as soon as it reads the end of its channel; this leaves room for
# an interpreter with a large app imported to tear down before it is killed.
TEMPLATE_EXIT_WAIT = 2.0
# How long a page about a worker that died waits for the template to report how: the template
# reaps on SIGCHLD, so the code arrives within milliseconds.
EXIT_CODE_WAIT = 1.0
# After asking a worker that hangs in start-up for its stacks, how long faulthandler may take
# to write them (it writes from its signal handler, at once).
DUMP_WAIT = 0.2
# The most of a stack dump kept for the error page.
DUMP_MAX = 256 * 1024
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
# Changed paths named in a reload's log line; the rest are counted, so a `git switch` stays
# one line.
NAMED_CHANGES = 3
# How long the browser's reload waits for the old worker to stop accepting (it does within
# milliseconds of being told; a worker that hangs is not waited for).
DRAIN_WAIT = 1.0
# How long a worker that asked to hear of changes (Django's file_changed receivers) may take
# to say whether it dealt with them; a template cache reset takes microseconds, and a worker
# that does not answer in time is restarted as if it had said no.
CHANGE_ANSWER_WAIT = 2.0


class Worker:
    """The supervisor's side of one worker's channel.

    One coroutine at a time reads the channel (the loop keeps a single reader per file
    descriptor): `started()` until the worker is ready, then the monitor task until EOF.
    """

    def __init__(
        self,
        channel: Channel[FromWorker, ToWorker],
        dump: int | None,
        template: Template | Spawner,
        process: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.channel = channel
        # The read end of the pipe the worker's stacks are dumped to (see `stacks`); None
        # where there is no way to dump them (Windows).
        self.dump = dump
        self.template = template
        # A spawned worker's process, the supervisor's child; a forked one is the template's.
        self.process = process
        self.pid: int | None = None
        self.modules: tuple[str, ...] = ()
        self.failure: Failed | None = None
        # What the app asked to watch, and whether it wants to hear of changes first.
        self.watch: Watch | None = None
        # Called with the modules a ready worker reports later (see ipc.Modules).
        self.on_modules: Callable[[tuple[str, ...]], None] | None = None
        # Given the descriptor of each browser event stream the worker hands over.
        self.on_event_stream: Callable[[int], None] | None = None
        self.stopping = False
        # Set once a worker told to stop accepts nothing more (see ipc.Draining), or exited.
        self.draining = asyncio.Event()
        self.exited = asyncio.Event()
        self._monitor: asyncio.Task[None] | None = None
        self._answer: asyncio.Future[bool] | None = None

    async def _next(self) -> FromWorker | None:
        return self._take(await self.channel.receive_fds())

    def _take(self, received: tuple[FromWorker, list[int]] | None) -> FromWorker | None:
        if received is None:
            self.exited.set()
            self.draining.set()
            return None
        message, fds = received
        if isinstance(message, EventStream) and fds and self.on_event_stream is not None:
            self.on_event_stream(fds.pop())
        for fd in fds:
            socket.close(fd)  # a socket handle on Windows, where os.close() cannot close it
        return message

    async def started(self) -> bool:
        """True once the worker accepts; False when it failed (see `failure`) or died."""
        while True:
            message = await self._next()
            if message is None:
                return False
            if self._starting(message):
                return True

    def heard_ready(self) -> bool:
        """Whether the worker's Ready is among the messages that arrived and were not read,
        as when its start is cancelled between the two: it accepts from that moment, and is
        then watched as a ready worker is. Reads only what is there."""
        while True:
            try:
                message = self._take(self.channel.recv_fds_nowait())
            except (OSError, IPCError):  # nothing more has come (BlockingIOError), or bad
                return False
            if message is None:
                return False
            if self._starting(message):
                return True

    def _starting(self, message: FromWorker) -> bool:
        """Take in what a starting worker says; True at its Ready."""
        match message:
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
        return False

    async def _read_until_exit(self) -> None:
        while not self.exited.is_set():
            message = await self._next()
            if isinstance(message, Draining):
                self.draining.set()
                continue
            if isinstance(message, Modules):
                self.modules = message.modules
                if self.on_modules is not None:
                    self.on_modules(message.modules)
                continue
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

    async def stop(self, timeout: float, *, replaced: bool = False) -> None:
        """Ask for a graceful stop; kill after `timeout` plus a grace period. `replaced`: a
        new worker (or the error page) takes over from this one."""
        self.stopping = True
        if not self.exited.is_set():
            with contextlib.suppress(OSError):
                self.channel.send(Stop(replaced))
            try:
                await asyncio.wait_for(self.exited.wait(), timeout + KILL_GRACE)
            except TimeoutError:
                if self.pid is not None:
                    logger.warning("Worker %d did not stop in time: killing it", self.pid)
                self.kill()
                await self.exited.wait()
        self.close()

    async def stacks(self) -> str:
        """What the worker's threads are doing, from faulthandler (the worker hangs)."""
        if self.pid is None or self.dump is None or DUMP_SIGNAL is None:
            return ""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, DUMP_SIGNAL)
        await asyncio.sleep(DUMP_WAIT)
        try:
            return os.read(self.dump, DUMP_MAX).decode("utf-8", "replace")
        except BlockingIOError:
            return ""

    def kill(self) -> None:
        if self.exited.is_set():
            return
        if self.process is not None:
            self.process.kill()  # TerminateProcess on Windows, which has no SIGKILL
        elif self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def abandon(self) -> None:
        """Kill a worker that never got ready and forget it (its template reaps it)."""
        self.kill()
        self.close()
        self.exited.set()

    def close(self) -> None:
        self.channel.close()
        if self.dump is not None:
            with contextlib.suppress(OSError):
                os.close(self.dump)


class Template:
    """The pre-warmed template process that forks workers. A template replaced by a newer one
    is retired: it forks nothing more, and exits once the last worker it forked is gone, so
    that the exit code of each is still reported."""

    def __init__(
        self, process: asyncio.subprocess.Process, control: Channel[FromTemplate, ToTemplate]
    ) -> None:
        self.process = process
        self.control = control
        self.preloaded: set[str] = set()
        self.exit_codes: dict[int, int] = {}
        self.workers: set[Worker] = set()
        self.retired = False
        self._reported = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._watchers: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> bool:
        return self.process.returncode is None

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
        try:
            ours.send(Preload(tuple(preload)))
            ready = await ours.receive()
            if not isinstance(ready, TemplateReady):
                raise IPCError("the reload template exited before it was ready")
        except BaseException:
            # Cancelled by a shutdown while it imports: it holds the listening socket too.
            process.kill()
            await process.wait()
            ours.close()
            raise
        if ready.threads:
            logger.debug("The reload template runs threads: %s", list(ready.threads))
        template.preloaded = set(preload)
        template._reader = asyncio.create_task(template._read())
        return template

    async def _read(self) -> None:
        while (message := await self.control.receive()) is not None:
            if isinstance(message, Exited):
                self._exited(message.pid, message.code)

    def _exited(self, pid: int, code: int) -> None:
        self.exit_codes[pid] = code
        self._reported.set()
        self._reported = asyncio.Event()

    async def exit_code(self, pid: int | None) -> int | None:
        """How worker `pid` exited (negative: the signal that killed it), once reported."""
        return await _reported_code(self, pid)

    def fork(self, request: Fork) -> Worker:
        ours, theirs = channel_pair(WORKER_LINK)
        dump_read, dump_write = os.pipe()
        os.set_blocking(dump_read, False)
        try:
            self.control.send(request, fds=[theirs.fileno(), dump_write])
        finally:
            theirs.close()
            os.close(dump_write)
        worker = Worker(ours, dump_read, self)
        self.workers.add(worker)
        watcher = asyncio.ensure_future(self._forget_when_gone(worker))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return worker

    async def _forget_when_gone(self, worker: Worker) -> None:
        await worker.exited.wait()
        await self.exit_code(worker.pid)  # reported before the template may go
        self.workers.discard(worker)
        if self.retired and not self.workers:
            await self.close()

    async def retire(self) -> None:
        """No more forks: exit now if no worker of this template lives, else after the last."""
        self.retired = True
        if not self.workers:
            await self.close()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self.control.close()
        try:
            await asyncio.wait_for(self.process.wait(), TEMPLATE_EXIT_WAIT)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


class Spawner:
    """Makes each worker a fresh interpreter (`--reload-worker spawn`): the supervisor's own
    child, whose exit code it learns itself. It stands where a template does, preloading
    nothing: each worker imports the app and its libraries from scratch."""

    def __init__(self, listen: socket.socket) -> None:
        self.listen = listen
        self.preloaded: set[str] = set()
        self.exit_codes: dict[int, int] = {}
        self.workers: set[Worker] = set()
        self.retired = False
        self.running = True
        self._reported = asyncio.Event()
        self._watchers: set[asyncio.Task[None]] = set()

    def fork(self, request: Fork) -> Worker:
        ours, theirs = channel_pair(WORKER_LINK)
        # Windows has no faulthandler.register to dump a worker's stacks with.
        dump_read, dump_write = os.pipe() if DUMP_SIGNAL is not None else (None, None)
        try:
            process = start_worker(theirs)
            ours.peer = process.pid
            fds = [self.listen.fileno()] + ([dump_write] if dump_write is not None else [])
            ours.send(request, fds=fds)
        except BaseException:
            ours.close()
            if dump_read is not None:
                os.close(dump_read)
            raise
        finally:
            theirs.close()
            if dump_write is not None:
                os.close(dump_write)
        if dump_read is not None:
            os.set_blocking(dump_read, False)
        worker = Worker(ours, dump_read, self, process)
        self.workers.add(worker)
        watcher = asyncio.ensure_future(self._reap(worker, process))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return worker

    async def _reap(self, worker: Worker, process: subprocess.Popen[bytes]) -> None:
        # A thread waits: asyncio's child watchers differ by platform and version, and
        # Windows' loop for sockets (a selector) has none.
        code = await asyncio.to_thread(process.wait)
        self.exit_codes[process.pid] = code
        self._reported.set()
        self._reported = asyncio.Event()
        await worker.exited.wait()
        self.workers.discard(worker)

    async def exit_code(self, pid: int | None) -> int | None:
        return await _reported_code(self, pid)

    async def retire(self) -> None:
        self.retired = True

    async def close(self) -> None:
        """Nothing to close: the workers stop on their own, as after a template's exit."""


async def _reported_code(source: Template | Spawner, pid: int | None) -> int | None:
    """How worker `pid` exited (negative: the signal that killed it), once `source` knows."""
    if pid is None:
        return None
    deadline = asyncio.get_running_loop().time() + EXIT_CODE_WAIT
    while pid not in source.exit_codes:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(source._reported.wait(), left)
    return source.exit_codes[pid]


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
        # Set when a root is added while `next()` waits: it waits on the new watch too.
        self._grown = asyncio.Event()
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
        self._grown.set()

    def stop(self) -> None:
        self._stop.set()

    async def next(self) -> list[str] | None:
        """The next batch of changed paths; None once stopped."""
        while self._pending:
            self._grown.clear()
            grown = asyncio.ensure_future(self._grown.wait())
            waiting: list[asyncio.Future[Any]] = [*self._pending, grown]
            try:
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                grown.cancel()
            batch: list[str] = []
            for future in [future for future in self._pending if future in done]:
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
        self.filter.ignore_output()
        # Under --reload-browser: the pages listening for reload events.
        self.browser = BrowserHub() if config.reload_browser else None
        if self.browser is not None:
            self.filter.watch_assets()
        step_ms = max(1, int(config.reload_delay * 1000))
        self._changes = _Changes(self.roots, self.filter, step_ms, config.reload_poll)
        self.worker: Worker | None = None
        self.template: Template | Spawner | None = None
        # Every template whose workers may still run: the current one, and retired ones.
        self._templates: list[Template | Spawner] = []
        self._starting: asyncio.Task[None] | None = None
        self._announced = False
        # Modules the next template will preload, asked for before it is up.
        self._preloading: set[str] = set()
        self._error_server: Server | None = None
        self._error_task: asyncio.Task[int] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._refreshing: asyncio.Task[None] | None = None
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
        if worker_kind(self.config) == "spawn":
            self.template = Spawner(sock)
        else:
            self.template = await Template.start(BASE_PRELOAD, sock)
        self._templates.append(self.template)
        # Watch before the first worker starts, or a save just after "ready" is missed;
        # watchfiles keeps collecting changes between iterations, also during a restart.
        self._changes.start()
        await asyncio.sleep(0)
        restarted_at = time.time()
        self._begin_restart("")
        while (changed := await self._changes.next()) is not None:
            if _older_than(changed, restarted_at):
                logger.debug("Already loaded by the current worker: %s", ", ".join(changed))
                continue
            paths = sorted({_display(Path(path), self.roots) for path in changed})
            left = len(paths) - NAMED_CHANGES
            named = ", ".join(paths[:NAMED_CHANGES]) + (f" and {left} more" if left > 0 else "")
            if self.browser is not None and all(
                self.filter.browser_only(Path(path)) for path in changed
            ):
                css = all(path.endswith(".css") for path in changed)
                logger.info(
                    "Changed: %s; no restart, the browser %s",
                    named,
                    "swaps its stylesheets" if css else "reloads its pages",
                )
                self.browser.send("css" if css else "reload")
                continue
            worker = self.worker
            starting = self._starting is not None and not self._starting.done()
            if (
                not starting
                and worker is not None
                and worker.wants_changes
                and await worker.handles(changed)
            ):
                logger.info("Changed: %s; the app took it in without a restart", named)
                self._tell_browser()
                continue
            logger.debug("Changed: %s; restarting", named)
            await self._cancel_start()  # a worker still starting (an import that hangs)
            await _settle(changed, self.config.reload_delay)
            _forget_bytecode(changed)
            restarted_at = time.time()
            self._begin_restart(named)
        await self._shutdown()
        return 0

    def _on_stop(self, sig: int) -> None:
        self._stop.set()
        self._changes.stop()

    def _on_force(self, sig: int) -> None:
        """A second signal: every worker dies now, the shutdown waits for nothing more."""
        self._force = True
        self._stop.set()
        self._changes.stop()
        for template in self._templates:
            for worker in template.workers:
                worker.kill()

    def _request(self, announce: bool) -> Fork:
        return Fork(app=self.app, config=dataclasses.asdict(self.config), announce=announce)

    def _begin_restart(self, changed: str) -> None:
        """Start a worker without holding up the watch: a save while it starts (an import
        that hangs, a long one) replaces it with the next."""
        self._starting = asyncio.create_task(self._restart(changed))
        self._starting.add_done_callback(_log_failure)

    async def _cancel_start(self) -> None:
        starting, self._starting = self._starting, None
        if starting is not None and not starting.done():
            await cancel_and_wait(starting)

    async def _restart(self, changed: str) -> None:
        assert self.template is not None
        started = time.perf_counter()
        new = self.template.fork(self._request(announce=not self._announced))
        if self.browser is not None:
            new.on_event_stream = self.browser.add_fd
        timeout = self.config.timeout_worker_start
        try:
            ok = await asyncio.wait_for(new.started(), timeout)
        except asyncio.CancelledError:
            if new.heard_ready():
                # It accepts (a worker says Ready before its loop first runs) and may hold a
                # request already: it stops as a replaced worker does, answering it.
                self._spawn(new.stop(self.config.timeout_graceful_shutdown, replaced=True))
            else:
                new.abandon()
            raise
        except TimeoutError:
            stacks = await new.stacks()
            new.abandon()
            await self._fail(
                changed,
                Failed(
                    title="The app took too long to start",
                    summary=f"it was not serving after {timeout:g} s (--timeout-worker-start)",
                    details=f"Where it was:\n\n{stacks}" if stacks else "",
                ),
            )
            return
        if not ok:
            code = await self.template.exit_code(new.pid)
            failure = new.failure or Failed(
                title="The worker exited before serving",
                summary=describe_exit(code),
                details="See the terminal running aserve for its output.",
            )
            new.close()
            if new.watch is not None:
                self._watch_more(new.watch)  # what it asked to watch may hold the fix
            await self._fail(changed, failure)
            return
        await self._hide_error()
        self._announced = True
        old, self.worker = self.worker, new
        self._spawn(self._watch(new))
        if old is not None:
            self._spawn(old.stop(self.config.timeout_graceful_shutdown, replaced=True))
        elapsed = (time.perf_counter() - started) * 1e3
        if changed:
            logger.info("Reloaded in %.0f ms (files: %s; worker %s)", elapsed, changed, new.pid)
        else:
            logger.info("Worker %s ready in %.0f ms", new.pid, elapsed)
        if new.watch is not None:
            self._watch_more(new.watch)
        self._serving()
        if changed and self.browser is not None:
            self._spawn(self._tell_browser_once_drained(old))
        new.on_modules = self._preload_later
        self._preload_later(new.modules)

    async def _fail(self, changed: str, failure: Failed) -> None:
        """The new code cannot run: stop the old worker and show why, until the next change."""
        if self.worker is not None:
            old, self.worker = self.worker, None
            await old.stop(self.config.timeout_graceful_shutdown, replaced=True)
        files = f" (files: {changed})" if changed else ""
        logger.error("%s: %s%s", failure.title, failure.summary, files)
        await self._show_error(failure.title, failure.summary, failure.details)

    def _preload_later(self, modules: tuple[str, ...]) -> None:
        """The next worker comes from a template that has `modules` imported already."""
        assert self.template is not None
        if isinstance(self.template, Spawner):
            return  # a spawned worker imports everything afresh: nothing to preload
        if set(modules) <= self.template.preloaded | self._preloading:
            return
        self._preloading |= set(modules)
        self._refreshing = asyncio.create_task(self._refresh_template(self._refreshing))

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
            code = await worker.template.exit_code(worker.pid)
            logger.error("Worker %s exited unexpectedly (%s)", worker.pid, describe_exit(code))
            await self._show_error(
                "The worker exited unexpectedly",
                f"{describe_exit(code)}; save a file to restart it",
                "See the terminal running aserve for its output.",
            )

    async def _refresh_template(self, previous: asyncio.Task[None] | None) -> None:
        """Replace the template with one that preloads what the app imports; the old one is
        retired, and exits once its last worker does. One at a time, in order (`previous`
        first): the newest template has the most modules."""
        if previous is not None:
            await previous
        assert self.template is not None
        preloaded = self.template.preloaded
        if self._preloading <= preloaded:
            return
        preload = sorted(set(BASE_PRELOAD) | preloaded | self._preloading)
        try:
            template = await Template.start(preload, self.sock)
        except (OSError, IPCError) as exc:
            # The current template goes on forking: restarts are only slower.
            logger.warning("Could not start a reload template preloading more modules: %s", exc)
            return
        new = sorted(set(preload) - preloaded)
        logger.debug("A new template preloads %d modules more: %s", len(new), ", ".join(new))
        old, self.template = self.template, template
        self._templates.append(template)
        if old is not None:
            await old.retire()
        self._templates = [t for t in self._templates if t.running]

    async def _show_error(self, title: str, summary: str, details: str) -> None:
        await self._hide_error()
        page = LoadedApp(
            kind="asgi", app=error_app(title, summary, details), name="error page", stand_in=True
        )
        server = Server(page, self.config.replace(lifespan="off", tune_gc=False))
        if self.browser is not None:
            server.browser_events = self.browser.add
        self._error_server = server
        self._error_task = asyncio.create_task(
            server.serve([self.sock.dup()], handle_signals=False)
        )
        self._serving()
        self._tell_browser()

    async def _hide_error(self) -> None:
        server, task = self._error_server, self._error_task
        self._error_server = self._error_task = None
        if server is not None and task is not None:
            server.request_stop()
            await task

    async def _tell_browser_once_drained(self, old: Worker | None) -> None:
        """A page reloaded while the old worker still accepts could get the old code."""
        if old is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(old.draining.wait(), DRAIN_WAIT)
        self._tell_browser()

    def _tell_browser(self) -> None:
        """The pages open in the browser are out of date: they reload."""
        if self.browser is not None:
            self.browser.send("reload")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _shutdown(self) -> None:
        await self._cancel_start()
        if self._refreshing is not None:
            await cancel_and_wait(self._refreshing)
        # Nobody accepts from now on: the templates (which hold the listening socket to pass
        # it on) go at once, so does the supervisor's copy, and each worker closes its own as
        # it stops; a client that connects now is refused at once instead of waiting in the
        # backlog for nobody.
        for template in self._templates:
            await template.close()
        await self._hide_error()
        self.sock.close()
        if self.browser is not None:
            self.browser.close()
        if self.worker is not None:
            worker, self.worker = self.worker, None
            await worker.stop(0 if self._force else self.config.timeout_graceful_shutdown)
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError):
                await task
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


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel `task` and wait until it has unwound (its `finally` blocks), its cancellation
    swallowed; what else it raises is raised."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _log_failure(task: asyncio.Task[None]) -> None:
    """A background task's exception, in the log rather than lost until shutdown."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("Could not start a worker", exc_info=exc)


def describe_exit(code: int | None) -> str:
    """How a worker exited, for a person: its exit code, or the signal that killed it."""
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
