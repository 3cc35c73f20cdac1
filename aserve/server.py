"""The worker: event loop, listening sockets, loop signal handlers, graceful drain; `Server`
and `run()` for programs and tests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import gc
import logging
import os
import signal
import socket
import stat
import threading
from collections.abc import Callable
from email.utils import formatdate
from types import FrameType, TracebackType
from typing import Any

from aserve import __version__
from aserve.config import Config, LoopKind
from aserve.errors import ConfigError, LifespanError
from aserve.loader import LoadedApp, load
from aserve.logs import AccessLog, configure
from aserve.net.connection import AppRunner, HttpProtocol, ServerState
from aserve.protocols.http11 import Limits
from aserve.runners.asgi import ASGIRunner, Lifespan
from aserve.runners.wsgi import WSGIRunner

logger = logging.getLogger("aserve.error")

EXIT_OK = 0
EXIT_LIFESPAN_FAILED = 3

SignalHandler = Callable[[int, FrameType | None], Any] | int | None

# accept() failing for want of a descriptor or memory would fail again at once: accepting
# pauses instead, 50 ms at first, doubling up to asyncio's own 1 s (ACCEPT_RETRY_DELAY).
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Errors of one waiting connection, not of the listening socket: accept(2) says to retry.
_CONNECTION_ERRORS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "EPERM",
        "ENETDOWN",
        "ENETUNREACH",
        "EHOSTDOWN",
        "EHOSTUNREACH",
        "ENONET",
        "ENOPROTOOPT",
        "EOPNOTSUPP",
    )
    if hasattr(errno, name)
)
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0
# Connections accepted per readiness event before other callbacks get a turn.
_ACCEPT_BATCH = 64


def bind_socket(config: Config) -> socket.socket:
    """The listening socket the settings ask for: TCP, a Unix socket, or an inherited fd."""
    if config.fd is not None:
        sock = socket.socket(fileno=config.fd)
    elif config.uds is not None:
        path = config.uds
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)  # a stale socket left by an earlier run
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
    else:
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((config.host, config.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot bind {config.bind_description}: {exc.strerror}") from exc
    sock.listen(config.backlog)
    sock.setblocking(False)
    return sock


class Acceptor:
    """Accepts connections on one listening socket; backs off when out of file descriptors.

    `loop.create_server` would hide running out: under uvloop, libuv accepts the waiting
    connections and drops them; asyncio logs a traceback every second. Here accepting pauses
    (the connections wait in the listen backlog), the first failure is logged once, and
    serving resumes by itself when descriptors are free again.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.factory = factory
        self._fd = sock.fileno()
        self._connecting: set[asyncio.Task[None]] = set()
        self._backoff = 0.0
        self._failures = 0
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False
        sock.setblocking(False)
        loop.add_reader(self._fd, self._accept)

    def _accept(self) -> None:
        accept = self.sock.accept
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _ = accept()
            except (BlockingIOError, InterruptedError):
                if self._failures:
                    logger.info(
                        "Accepting connections again (%d attempt(s) had failed)", self._failures
                    )
                    self._failures = 0
                    self._backoff = 0.0
                return
            except OSError as exc:
                if exc.errno in _CONNECTION_ERRORS:
                    continue  # e.g. the client gave up while waiting in the backlog
                self._pause(exc)
                return
            conn.setblocking(False)
            task = self.loop.create_task(self._connect(conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.factory, conn)
        except OSError:
            conn.close()  # the client left before its transport was made

    def _pause(self, exc: OSError) -> None:
        self.loop.remove_reader(self._fd)
        if not self._failures:
            hint = (
                "; raise the limit (ulimit -n) or lower --limit-concurrency"
                if exc.errno in _OUT_OF_RESOURCES
                else ""
            )
            logger.error(
                "Cannot accept connections: %s. Pausing and retrying%s.", exc.strerror or exc, hint
            )
        self._failures += 1
        self._backoff = min(max(self._backoff * 2, _BACKOFF_FIRST), _BACKOFF_MAX)
        self._retry = self.loop.call_later(self._backoff, self._resume)

    def _resume(self) -> None:
        self._retry = None
        if not self._closed:
            self.loop.add_reader(self._fd, self._accept)

    async def close(self) -> None:
        """Stop accepting and close the socket; connections being set up are then served."""
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        else:
            self.loop.remove_reader(self._fd)
        self.sock.close()
        if self._connecting:
            await asyncio.wait(list(self._connecting))


# The young generation is collected after this many net allocations of tracked objects
# (Python's default: 700; see Config.tune_gc). Measured: 50,000 did no better at 1000
# connections and cost a Django view 6-12% (a young generation that no longer fits in the
# CPU caches); 5,000 keeps the gain of the freeze and the Django rate.
GC_YOUNG_THRESHOLD = 5_000
_PYTHON_YOUNG_THRESHOLD = 700


def tune_gc() -> None:
    """Keep the garbage collector off the request path of a process aserve owns.

    Everything alive once the app is loaded (modules, the app, its settings) is frozen out of
    collections, so a full collection walks only what requests allocate; and the young
    generation waits for 5,000 allocations, so fewer requests still in flight are promoted
    and collected over and over. An app that disabled the collector or set its own thresholds
    keeps them.
    """
    if not gc.isenabled():
        return
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    if young == _PYTHON_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def loop_factory(kind: LoopKind) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise ConfigError("--loop uvloop: uvloop is not installed") from None
        else:
            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
            return factory
    return asyncio.new_event_loop


def request_limits(config: Config) -> Limits:
    """The protocol's limits: each is the setting `limit_` + its name."""
    return Limits(
        **{f.name: getattr(config, "limit_" + f.name) for f in dataclasses.fields(Limits)}
    )


def http_date_headers() -> bytes:
    return b"date: %s\r\nserver: aserve\r\n" % formatdate(usegmt=True).encode("ascii")


class Server:
    """One aserve worker. `run()` blocks; `start()`/`stop()` run it on a background thread."""

    def __init__(self, app: object, config: Config | None = None, **settings: Any) -> None:
        base = config or Config()
        self.config = base.replace(**settings) if settings else base
        self.app = app
        self.loaded: LoadedApp | None = None
        self.sockets: list[socket.socket] = []
        self.exit_code: int | None = None
        self.started = threading.Event()
        # Called on the loop once the sockets accept (the reload worker reports readiness).
        self.on_ready: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # asyncio.Event binds to a loop only when first awaited (Python 3.10+).
        self._exit = asyncio.Event()
        self._force = False
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # blocking entry points

    def run(self, sockets: list[socket.socket] | None = None) -> int:
        """Serve until told to stop; the exit code (0, or 3 when lifespan startup failed)."""
        with asyncio.Runner(loop_factory=loop_factory(self.config.loop)) as runner:
            self.exit_code = runner.run(self.serve(sockets))
        return self.exit_code

    def start(self, timeout: float = 10.0) -> Server:
        """Serve on a background thread; returns once the socket listens."""

        def target() -> None:
            try:
                self.run()
            except BaseException as exc:
                self._error = exc
                self.started.set()

        self._thread = threading.Thread(target=target, name="aserve-server", daemon=True)
        self._thread.start()
        if not self.started.wait(timeout):
            raise TimeoutError("aserve did not start in time")
        if self._error is not None:
            raise self._error
        if self.exit_code is not None:
            raise LifespanError(f"server exited with code {self.exit_code} during startup")
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Shut down gracefully (from any thread) and wait for the server to finish."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The TCP port bound (useful with port=0)."""
        return int(self.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # the server itself

    def request_stop(self) -> None:
        """Begin a graceful shutdown without waiting for it; from any thread."""
        loop = self._loop
        if loop is None:
            self._exit.set()  # not serving yet: serve() will return at once
        elif not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._exit.set)

    async def serve(
        self, sockets: list[socket.socket] | None = None, *, handle_signals: bool = True
    ) -> int:
        """Serve until stopped. `sockets` already listen (else one is bound from the config);
        `handle_signals=False` leaves SIGINT/SIGTERM to the caller (the reload supervisor)."""
        config = self.config
        loop = asyncio.get_running_loop()
        self._loop = loop
        configure(config.log_level)
        if isinstance(self.app, LoadedApp):
            loaded = self.loaded = self.app
        else:
            loaded = self.loaded = load(
                self.app, factory=config.factory, interface=config.interface
            )
        runner: AppRunner
        lifespan: Lifespan | None = None
        if loaded.kind == "asgi":
            asgi_runner = ASGIRunner(loaded.asgi, loop)
            lifespan = Lifespan(loaded.asgi, config.lifespan, asgi_runner.state)
            runner = asgi_runner
        else:
            runner = WSGIRunner(
                loaded.wsgi, loop, threads=config.threads, limit_buffer=config.limit_buffer
            )
        restore_signals = self._install_signal_handlers(loop) if handle_signals else (lambda: None)
        try:
            # Bind before the app's startup: a port in use is then a one-line usage error,
            # not a lifespan cancelled half-way with its traceback.
            self.sockets = sockets or [bind_socket(config)]
            if lifespan is not None:
                try:
                    await lifespan.startup()
                except LifespanError as exc:
                    logger.error("Application startup failed: %s", exc)
                    if sockets is None:
                        for sock in self.sockets:
                            sock.close()
                    self.exit_code = EXIT_LIFESPAN_FAILED
                    self.started.set()
                    return EXIT_LIFESPAN_FAILED
            if config.tune_gc and threading.current_thread() is threading.main_thread():
                tune_gc()  # the process is aserve's (as for signals); the app is loaded now
            return await self._serve(runner, lifespan)
        finally:
            if isinstance(runner, WSGIRunner):
                await asyncio.to_thread(runner.shutdown, 1.0)
            restore_signals()

    async def _serve(self, runner: AppRunner, lifespan: Lifespan | None) -> int:
        config = self.config
        loop = asyncio.get_running_loop()
        access_log = AccessLog.create(config.access_log, loop)
        state = ServerState(
            loop,
            runner,
            limits=request_limits(config),
            limit_buffer=config.limit_buffer,
            keep_alive_timeout=config.timeout_keep_alive,
            head_timeout=config.timeout_request_head,
            body_timeout=config.timeout_request_body,
            limit_concurrency=config.limit_concurrency,
            root_path=config.root_path,
            access_log=access_log,
        )
        acceptors = [Acceptor(loop, sock, lambda: HttpProtocol(state)) for sock in self.sockets]
        date_timer = self._refresh_date(state, loop)
        assert self.loaded is not None
        logger.info(
            "aserve %s serving %s app %s on %s; quit with CONTROL-C",
            __version__,
            self.loaded.kind.upper(),
            self.loaded.name,
            self._listening_on(),
        )
        self.started.set()
        if self.on_ready is not None:
            self.on_ready()
        await self._exit.wait()

        # Graceful shutdown: stop accepting, close idle connections, let the busy ones finish.
        for acceptor in acceptors:
            await acceptor.close()
        for connection in list(state.connections):
            connection.shutdown()
        deadline = loop.time() + config.timeout_graceful_shutdown
        while state.connections and loop.time() < deadline and not self._force:
            await asyncio.sleep(0.02)
        if state.connections:
            logger.warning(
                "Cancelling %d request(s) still running after %.1fs",
                len(state.connections),
                config.timeout_graceful_shutdown,
            )
            for connection in list(state.connections):
                connection.abort()
        if isinstance(runner, ASGIRunner) and runner.tasks:
            for task in list(runner.tasks):
                task.cancel()
            await asyncio.wait(list(runner.tasks), timeout=1.0)
        date_timer[0].cancel()
        if lifespan is not None and not self._force:
            await lifespan.shutdown()
        if access_log is not None:
            access_log.flush()
        logger.info("aserve stopped")
        return EXIT_OK

    def _listening_on(self) -> str:
        config = self.config
        if config.uds is None and config.fd is None and self.sockets:
            host = config.host if ":" not in config.host else f"[{config.host}]"
            return f"http://{host}:{self.port}"
        return config.bind_description

    def _refresh_date(
        self, state: ServerState, loop: asyncio.AbstractEventLoop
    ) -> list[asyncio.TimerHandle]:
        """Keep the Date line current; formatting it per response would cost ~2 us each."""
        handle: list[asyncio.TimerHandle] = []

        def tick() -> None:
            state.default_headers = http_date_headers()
            handle[:] = [loop.call_at(int(loop.time()) + 1.0, tick)]

        tick()
        return handle

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """SIGINT/SIGTERM through the loop; the previous handlers come back afterwards.

        Neither asyncio nor uvloop restores what was installed before `add_signal_handler`,
        and both refuse off the main thread: there the owner of the thread handles signals.
        """
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        saved: dict[int, SignalHandler] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                saved[sig] = signal.getsignal(sig)
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (ValueError, RuntimeError, NotImplementedError):
                saved.pop(sig, None)

        def restore() -> None:
            for sig, previous in saved.items():
                with contextlib.suppress(ValueError, RuntimeError):
                    loop.remove_signal_handler(sig)
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)

        return restore

    def _on_signal(self, sig: int) -> None:
        if self._exit.is_set():
            logger.warning("Second %s: exiting now", signal.Signals(sig).name)
            self._force = True
            return
        logger.info("%s received: finishing in-flight requests", signal.Signals(sig).name)
        self._exit.set()


def run(app: object, **settings: Any) -> int:
    """Serve `app` (an import string or the app) until SIGINT/SIGTERM; the exit code."""
    return Server(app, **settings).run()
