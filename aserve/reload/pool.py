"""`--workers N`: a supervisor that binds once and keeps N workers, forked from a pre-warmed
template, serving on the shared socket; it replaces one that dies (backing off when they die
at once), restarts them one by one on SIGHUP, and drains them all on SIGTERM or SIGINT.

The reloader's machinery without the watching: the same template, worker and IPC. Workers
serve as in production (no error page, no traceback for the client); their stderr, and so
their access lines, is the supervisor's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from aserve.config import Config
from aserve.errors import AppLoadError
from aserve.logs import configure
from aserve.process import loop_factory
from aserve.reload.ipc import Fork, IPCError
from aserve.reload.spawn import worker_kind
from aserve.reload.supervisor import (
    BASE_PRELOAD,
    KILL_GRACE,
    Spawner,
    Template,
    Worker,
    cancel_and_wait,
    describe_exit,
)
from aserve.signals import StopSignals
from aserve.sockets import bound

logger = logging.getLogger("aserve.error")

# A worker that exits sooner than this after it was started (or that never gets ready) died
# "at once": an import that fails after a deploy, a crash on start-up. Its replacement waits,
# longer after each such death, so a crash loop does not fork hundreds of processes a second.
QUICK_EXIT = 5.0
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 10.0
# A worker's own exit codes (aserve.reload.worker): its app could not be imported; its
# lifespan startup failed (aserve.server.EXIT_LIFESPAN_FAILED).
EXIT_IMPORT_FAILED = 1
EXIT_LIFESPAN_FAILED = 3
# The signals that change the pool rather than stop it; the first ones are StopSignals'.
HUP, MORE, FEWER = signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU


class StartFailed(Exception):
    """A worker did not get ready: why, and how it exited."""

    def __init__(
        self, summary: str, code: int | None, details: str = "", *, reported: bool = False
    ) -> None:
        super().__init__(summary)
        self.summary = summary
        self.code = code
        self.details = details
        # Whether the worker said why itself (ipc.Failed), rather than only dying.
        self.reported = reported


class Pool:
    """The `--workers` supervisor. `run()` blocks until SIGTERM/SIGINT; the exit code."""

    def __init__(self, app: str, config: Config) -> None:
        self.app = app
        self.config = config
        self.count = config.workers
        # Ready workers, oldest first; a worker told to stop leaves the list at once.
        self.workers: list[Worker] = []
        self.template: Template | Spawner | None = None
        self._templates: list[Template | Spawner] = []
        self._started: dict[Worker, float] = {}
        self._backoff = 0.0
        # Set whenever the count of workers may be short or over (a death, TTIN, TTOU).
        self._resize = asyncio.Event()
        self._rolling: asyncio.Task[None] | None = None
        self._roll_again = False
        self._background: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()
        self._force = False
        self._serving = False

    def run(self) -> int:
        configure(self.config.log_level)
        with bound(self.config) as sock:
            sock.set_inheritable(True)
            if self.config.uds is None and self.config.fd is None and self.config.port == 0:
                self.config = self.config.replace(port=sock.getsockname()[1])
            with asyncio.Runner(loop_factory=loop_factory(self.config.loop)) as runner:
                return runner.run(self._supervise(sock))

    async def _supervise(self, sock: socket.socket) -> int:
        self.sock = sock
        loop = asyncio.get_running_loop()
        signals = StopSignals(self._on_stop, self._on_force, "stopping the workers")
        with signals.installed(loop), _pool_signals(loop, self._on_pool_signal):
            try:
                return await self._serve()
            finally:
                await self._shutdown()

    async def _serve(self) -> int:
        # Where fork is unsafe or missing (macOS, Windows), each worker is a fresh interpreter,
        # as under --reload (Config.reload_worker).
        if worker_kind(self.config) == "spawn":
            self.template = Spawner(self.sock)
        else:
            self.template = await Template.start(BASE_PRELOAD, self.sock)
        self._templates.append(self.template)
        starts = [self._start(announce=i == 0) for i in range(self.count)]
        startup = asyncio.ensure_future(asyncio.gather(*starts, return_exceptions=True))
        stopped = asyncio.ensure_future(self._stop.wait())
        waiting: list[asyncio.Future[Any]] = [startup, stopped]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not startup.done():  # a signal while the workers start: they are abandoned
            await cancel_and_wait(startup)
            return 0
        results = startup.result()
        failed = [r for r in results if isinstance(r, BaseException)]
        for result in results:
            if isinstance(result, Worker):
                self.workers.append(result)
        if failed:
            return _startup_failure(failed[0])
        # Once they serve: an app that cannot start is then one line, as without --workers.
        logger.info("aserve supervisor on %s, %d workers", self.config.bind_description, self.count)
        self._serving = True
        # Replacements fork from a template that has imported what the app uses, as the
        # reloader's later templates do: they start in milliseconds and share its pages.
        self._spawn(self._refresh_template(self.workers[0].modules))
        keeper = asyncio.create_task(self._keep_count())
        try:
            await self._stop.wait()
        finally:
            await cancel_and_wait(keeper)
        return 0

    # -- starting and replacing workers ------------------------------------------------------

    async def _start(self, announce: bool = False) -> Worker:
        """A new worker, once it accepts; StartFailed when it could not start."""
        template = self.template
        assert template is not None
        settings = dataclasses.asdict(self.config)
        request = Fork(app=self.app, config=settings, announce=announce)
        try:
            worker = template.fork(request)
        except OSError:
            # The template is gone (killed): a new one forks from now on.
            template = await self._new_template(sorted(template.preloaded))
            worker = template.fork(request)
        began = time.perf_counter()
        timeout = self.config.timeout_worker_start
        try:
            ok = await asyncio.wait_for(worker.started(), timeout)
        except TimeoutError:
            stacks = await worker.stacks()
            worker.abandon()
            raise StartFailed(
                f"worker {worker.pid} was not serving after {timeout:g} s (--timeout-worker-start)",
                None,
                f"Where it was:\n{stacks}" if stacks else "",
            ) from None
        except BaseException:
            worker.abandon()
            raise
        if not ok:
            code = await template.exit_code(worker.pid)
            worker.close()
            failure = worker.failure
            if failure is not None:
                raise StartFailed(failure.summary, code, failure.details, reported=True)
            raise StartFailed(f"worker {worker.pid} exited before serving", code)
        self._started[worker] = time.monotonic()
        logger.info("Worker %s ready in %.0f ms", worker.pid, (time.perf_counter() - began) * 1e3)
        self._spawn(self._watch(worker))
        return worker

    async def _watch(self, worker: Worker) -> None:
        """A worker that exits without being told to is replaced (see `_keep_count`)."""
        await worker.wait_exit()
        started = self._started.pop(worker, time.monotonic())
        if worker.stopping or self._stop.is_set():
            return
        if worker in self.workers:
            self.workers.remove(worker)
        code = await worker.template.exit_code(worker.pid)
        worker.close()
        lived = time.monotonic() - started
        logger.error(
            "Worker %s exited unexpectedly (%s) after %.1f s",
            worker.pid,
            describe_exit(code),
            lived,
        )
        if lived < QUICK_EXIT:
            self._back_off()
        else:
            self._backoff = 0.0
        self._resize.set()

    def _back_off(self) -> None:
        self._backoff = min(BACKOFF_MAX, max(BACKOFF_FIRST, self._backoff * 2))

    async def _keep_count(self) -> None:
        """Start workers while fewer than the count serve, one at a time, after the back-off;
        stop the newest while more do."""
        while True:
            await self._resize.wait()
            self._resize.clear()
            while len(self.workers) < self.count:
                if self._backoff:
                    logger.warning("Starting a worker in %.1f s (they exit at once)", self._backoff)
                    await asyncio.sleep(self._backoff)
                try:
                    self.workers.append(await self._start())
                except StartFailed as failure:
                    _log_start_failure(failure)
                    self._back_off()
            while len(self.workers) > self.count:
                self._spawn(self._retire(self.workers.pop()))

    async def _retire(self, worker: Worker) -> None:
        await worker.stop(self.config.timeout_graceful_shutdown)

    async def _new_template(self, preload: list[str]) -> Template | Spawner:
        if isinstance(self.template, Spawner):
            return self.template  # a spawned worker imports everything afresh anyway
        template = await Template.start(sorted(set(BASE_PRELOAD) | set(preload)), self.sock)
        old, self.template = self.template, template
        self._templates.append(template)
        if old is not None:
            await old.retire()
        self._templates = [t for t in self._templates if t.running]
        return template

    async def _refresh_template(self, modules: tuple[str, ...]) -> None:
        try:
            await self._new_template(list(modules))
        except (OSError, IPCError) as exc:
            logger.warning("Could not start a template preloading the app's modules: %s", exc)

    # -- SIGHUP: a rolling restart -----------------------------------------------------------

    async def _roll(self) -> None:
        """Replace each worker by a new one, the new one ready before the old one stops, so
        that the shared socket always has a worker accepting."""
        while True:
            self._roll_again = False
            began = time.perf_counter()
            # A new interpreter: a deploy's upgraded packages are imported afresh too.
            modules = self.workers[0].modules if self.workers else ()
            try:
                await self._new_template(list(modules))
            except (OSError, IPCError) as exc:
                logger.error("Restart abandoned: could not start a new template: %s", exc)
                return
            replaced = 0
            for old in list(self.workers):
                if old not in self.workers:
                    continue  # it died meanwhile, and was replaced already
                try:
                    new = await self._start()
                except StartFailed as failure:
                    _log_start_failure(failure)
                    logger.error("Restart abandoned: the workers not replaced yet go on serving")
                    return
                replaced += 1
                if old not in self.workers:
                    # It died while the new one started: `_keep_count` stops any extra.
                    self.workers.append(new)
                    self._resize.set()
                    continue
                self.workers[self.workers.index(old)] = new
                self._spawn(old.stop(self.config.timeout_graceful_shutdown, replaced=True))
            elapsed = (time.perf_counter() - began) * 1e3
            logger.info("Restarted %d workers in %.0f ms", replaced, elapsed)
            if not self._roll_again:
                return

    # -- signals -----------------------------------------------------------------------------

    def _on_pool_signal(self, sig: int) -> None:
        if self._stop.is_set():
            return
        if sig == HUP:
            if self._rolling is not None and not self._rolling.done():
                self._roll_again = True
                return
            logger.info("SIGHUP received: restarting the workers one by one")
            self._rolling = asyncio.create_task(self._roll())
            self._rolling.add_done_callback(_log_failure)
            return
        if sig == MORE:
            self.count += 1
        elif self.count > 1:
            self.count -= 1
        else:
            logger.info("SIGTTOU received: one worker is the fewest")
            return
        logger.info("%s received: %d workers", signal.Signals(sig).name, self.count)
        self._resize.set()

    def _on_stop(self, sig: int) -> None:
        self._stop.set()

    def _on_force(self, sig: int) -> None:
        """A second signal: every worker dies now, the shutdown waits for nothing more."""
        self._force = True
        self._stop.set()
        for template in self._templates:
            for worker in template.workers:
                worker.kill()

    # -- stopping ----------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    async def _shutdown(self) -> None:
        self._stop.set()
        if self._rolling is not None:
            await cancel_and_wait(self._rolling)
        # Nobody accepts from now on: the templates (which hold the listening socket to pass it
        # on) and the supervisor's copy close at once, each worker its own as it stops, so a
        # new client is refused rather than left waiting in the backlog.
        for template in self._templates:
            await template.close()
        self.sock.close()
        timeout = 0 if self._force else self.config.timeout_graceful_shutdown
        workers, self.workers = self.workers, []
        await asyncio.gather(*(worker.stop(timeout) for worker in workers))
        # Workers replaced just before (a SIGHUP) may still be draining: they get the same
        # time; what is left then (a template still preloading) is given up.
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout + KILL_GRACE)
        for task in list(self._background):
            await cancel_and_wait(task)
        logger.log(logging.INFO if self._serving else logging.DEBUG, "aserve supervisor stopped")


@contextlib.contextmanager
def _pool_signals(
    loop: asyncio.AbstractEventLoop, handler: Callable[[int], None]
) -> Iterator[None]:
    """SIGHUP, SIGTTIN and SIGTTOU to `handler` on the loop, the previous handlers back after."""
    saved = {sig: signal.getsignal(sig) for sig in (HUP, MORE, FEWER)}
    for sig in saved:
        loop.add_signal_handler(sig, handler, sig)
    try:
        yield
    finally:
        for sig, previous in saved.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)


def _startup_failure(error: BaseException) -> int:
    """The exit code when the first workers could not start, or the error the CLI reports."""
    if not isinstance(error, StartFailed):
        raise error
    if error.code == EXIT_IMPORT_FAILED and error.reported:
        logger.debug("%s", error.details)
        raise AppLoadError(error.summary)
    _log_start_failure(error)
    return EXIT_LIFESPAN_FAILED if error.code == EXIT_LIFESPAN_FAILED else 1


def _log_start_failure(failure: StartFailed) -> None:
    if failure.reported and failure.code == EXIT_LIFESPAN_FAILED:
        # The worker logged why itself, as a single process does.
        logger.error("A worker could not start (%s)", describe_exit(failure.code))
        return
    how = f" ({describe_exit(failure.code)})" if failure.code is not None else ""
    logger.error("A worker could not start%s: %s", how, failure.summary)
    if failure.details:
        logger.error("%s", failure.details.rstrip())


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("The worker pool failed to act", exc_info=exc)
