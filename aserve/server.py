"""The worker: event loop, listening sockets, signals, graceful drain; `Server` and `run()` for
programs and tests. It knows neither ASGI nor WSGI: the runner factory picks the runner."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import threading
from collections.abc import Callable
from email.utils import formatdate
from types import TracebackType
from typing import Any

from aserve import __version__
from aserve.config import Config, check_trusted
from aserve.errors import ConfigError, LifespanError
from aserve.exchange import AppRunner, Cycle
from aserve.loader import LoadedApp, load, load_env_file
from aserve.logs import AccessLog, configure
from aserve.net.acceptor import Acceptor
from aserve.net.connection import SHUTDOWN_GRACE, HttpProtocol, ServerState, Upgrades
from aserve.net.tls import TLSFacts
from aserve.process import loop_factory, tune_gc
from aserve.protocols.forwarded import Trusted
from aserve.protocols.http11 import Limits
from aserve.runners import make_runner
from aserve.signals import StopSignals
from aserve.sockets import bound, listening_url
from aserve.tls import ServerTLS, server_tls

logger = logging.getLogger("aserve.error")

EXIT_OK = 0
EXIT_LIFESPAN_FAILED = 3

# While connections finish after a shutdown began, how often to look whether any are left.
_DRAIN_POLL = 0.02


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
        # Whether it logs (at INFO) where it serves and that it stopped: a reload worker leaves
        # both to the supervisor, but for the first worker's line saying where it serves.
        self.log_serving = True
        self.log_stopped = True
        # Called on the loop once it accepts nothing more and its idle connections are closed:
        # the next request reaches another server (a reload's new worker).
        self.on_draining: Callable[[], None] | None = None
        # On shutdown, how long a connection opened but not yet used may take to send its
        # request (see net.connection.SHUTDOWN_GRACE).
        self.shutdown_grace = SHUTDOWN_GRACE
        # Under --reload-browser, who takes the connections asking for the event stream.
        self.browser_events: Callable[[socket.socket], None] | None = None
        # Called on the loop as each request reaches the app (gunicorn's worker counts them
        # for --max-requests); None costs nothing per request.
        self.on_request: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # asyncio.Event binds to a loop only when first awaited (Python 3.10+).
        self._exit = asyncio.Event()
        self._force = False
        self._restart = False
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.tls: ServerTLS | None = None

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
        scheme = "https" if self.config.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    # the server itself

    def request_stop(self, *, restart: bool = False, force: bool = False) -> None:
        """Begin a graceful shutdown without waiting for it; from any thread. `restart`: the
        server stops to be replaced (a reload), and its WebSockets are told so (1012).
        `force`: requests in flight are not waited for (a second Ctrl-C, gunicorn's SIGINT)."""
        if restart and not self._exit.is_set():
            self._restart = True
        if force:
            self._force = True
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
        if config.workers > 1 and not sockets:
            # Rather than one process where several were asked for. Given its sockets, it is
            # one of the `workers` processes that share them (a pool's, gunicorn's).
            raise ConfigError(
                "Server and run() serve in one process: --workers is the aserve command's "
                "(in production: gunicorn -k aserve.workers.AserveWorker)"
            )
        loop = asyncio.get_running_loop()
        self._loop = loop
        configure(config.log_level)
        # Before the app is loaded: a certificate that cannot be used is a usage error at once.
        self.tls = server_tls(config)
        if isinstance(self.app, LoadedApp):
            loaded = self.loaded = self.app
        else:
            load_env_file(config.env_file)  # as uvicorn.run(env_file=...) does
            loaded = self.loaded = load(
                self.app, factory=config.factory, interface=config.interface
            )
        runner = make_runner(loaded, config, self.browser_events)
        if self.on_request is not None:
            runner = _Observed(runner, self.on_request)
        signals = StopSignals(self._on_stop, self._on_force, "finishing in-flight requests")
        with contextlib.ExitStack() as stack:
            if handle_signals:
                stack.enter_context(signals.installed(loop))
            # Bind before the app's startup: a port in use is then a one-line usage error,
            # not a lifespan cancelled half-way with its traceback.
            self.sockets = sockets or [stack.enter_context(bound(config))]
            try:
                await runner.startup()
            except LifespanError as exc:
                logger.error("Application startup failed: %s", exc)
                self.exit_code = EXIT_LIFESPAN_FAILED
                self.started.set()
                await runner.shutdown(0.0)
                return EXIT_LIFESPAN_FAILED
            if config.tune_gc and threading.current_thread() is threading.main_thread():
                tune_gc()  # the process is aserve's (as for signals); the app is loaded now
            try:
                await self._serve(runner)
            finally:
                await runner.shutdown(0.0 if self._force else config.timeout_graceful_shutdown)
            quiet_stop = loaded.stand_in or not self.log_stopped
            logger.log(logging.DEBUG if quiet_stop else logging.INFO, "aserve stopped")
            return EXIT_OK

    async def _serve(self, runner: AppRunner) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        access_log = AccessLog.create(config.access_log, loop, config.access_log_style)
        state = ServerState(
            loop,
            runner,
            limits=request_limits(config),
            limit_body_buffer=config.limit_body_buffer,
            limit_concurrency=config.limit_concurrency,
            keep_alive_timeout=config.timeout_keep_alive,
            head_timeout=config.timeout_request_head,
            body_timeout=config.timeout_request_body,
            access_log=access_log,
        )
        state.upgrades = websocket_upgrades(config, state) if runner.websockets else None
        tls = self.tls
        if tls is not None:
            state.tls = TLSFacts(tls.context, tls.certificate)
        state.proxies = trusted_proxies(config)
        acceptors = [
            Acceptor(
                loop,
                sock,
                lambda: HttpProtocol(state),
                tls.context if tls is not None else None,
                # The head timeout covers the handshake too (see HttpProtocol._connected_at).
                config.timeout_request_head,
            )
            for sock in self.sockets
        ]
        date_timer = self._refresh_date(state, loop)
        if config.workers > 1:
            # Several processes share the socket and every one wakes when connections wait:
            # one that took 64 at a time took a burst (a load balancer's or wrk's 50
            # connections) nearly all to itself (measured: 49 and 1, 50 and 0); one at a
            # time, mostly from 27 and 23 to 43 and 7 (BENCHMARKS.md).
            for acceptor in acceptors:
                acceptor.batch = 1
        assert self.loaded is not None
        # Under runserver, its banner says where the server listens, once; the supervisor says
        # why a stand-in is up.
        quiet = (
            config.access_log_style == "runserver" or self.loaded.stand_in or not self.log_serving
        )
        logger.log(
            logging.DEBUG if quiet else logging.INFO,
            "aserve %s serving %s app %s on %s; quit with CONTROL-C",
            __version__,
            self.loaded.kind.upper(),
            self.loaded.name,
            listening_url(config, self.sockets[0]),
        )
        self.started.set()
        if self.on_ready is not None:
            self.on_ready()
        await self._exit.wait()

        # Graceful shutdown: stop accepting, close idle connections, let the busy ones finish;
        # WebSockets are closed with 1012 when the server is replaced, else 1001.
        state.going_away = 1012 if self._restart else 1001
        for acceptor in acceptors:
            await acceptor.close()
        for connection in list(state.connections):
            connection.shutdown(self.shutdown_grace)
        if self.on_draining is not None:
            # Until the connections opened but not yet used have sent a request or closed.
            while any(c.in_grace for c in state.connections) and not self._force:
                await asyncio.sleep(_DRAIN_POLL)
            self.on_draining()
        began = loop.time()
        deadline = began + config.timeout_graceful_shutdown
        while state.connections and loop.time() < deadline and not self._force:
            await asyncio.sleep(_DRAIN_POLL)
        if state.connections:
            # A second signal ends the wait early; past the deadline, the poll's overshoot is
            # not worth reporting.
            waited = min(loop.time() - began, config.timeout_graceful_shutdown)
            logger.warning(
                "Cancelling %d request(s) still running after %.1fs",
                len(state.connections),
                waited,
            )
            for connection in list(state.connections):
                connection.abort()
        date_timer[0].cancel()
        if access_log is not None:
            access_log.flush()

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

    def _on_stop(self, sig: int) -> None:
        self._exit.set()

    def _on_force(self, sig: int) -> None:
        self._force = True
        self._exit.set()


def trusted_proxies(config: Config) -> Trusted | None:
    """The peers whose proxy headers count, None when --no-proxy-headers. The variable is
    uvicorn's, read when the server starts rather than when the settings are made."""
    if not config.proxy_headers:
        return None
    spec = config.forwarded_allow_ips
    if spec is None:
        spec = os.environ.get("FORWARDED_ALLOW_IPS") or "127.0.0.1"
        check_trusted(spec, "FORWARDED_ALLOW_IPS")
    return Trusted(spec)


def websocket_upgrades(config: Config, state: ServerState) -> Upgrades | None:
    """The WebSocket side of a server whose runner takes them, per `--ws`."""
    if config.ws == "off":
        return None
    try:
        from aserve.net.websocket import Upgrades as WebSocketUpgrades
        from aserve.net.websocket import WebSocketSettings
        from aserve.protocols.websocket import Settings
    except ImportError as exc:
        if config.ws == "on":
            raise ConfigError(f"--ws on needs the websockets library: {exc}") from exc
        return None
    settings = WebSocketSettings(
        Settings(config.ws_max_size, config.ws_per_message_deflate),
        max_queue=config.ws_max_queue,
        ping_interval=config.ws_ping_interval,
        ping_timeout=config.ws_ping_timeout,
    )
    return WebSocketUpgrades(state, settings)


def run(app: object, **settings: Any) -> int:
    """Serve `app` (an import string or the app) until SIGINT/SIGTERM; the exit code."""
    return Server(app, **settings).run()


class _Observed:
    """A runner that calls `on_request` before handing each request to the one it wraps."""

    def __init__(self, runner: AppRunner, on_request: Callable[[], None]) -> None:
        self._runner = runner
        self._on_request = on_request
        self.websockets = runner.websockets

    async def startup(self) -> None:
        await self._runner.startup()

    def handle(self, cycle: Cycle) -> None:
        self._on_request()
        self._runner.handle(cycle)

    async def shutdown(self, timeout: float) -> None:
        await self._runner.shutdown(timeout)
