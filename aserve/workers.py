"""gunicorn's worker class on aserve: `gunicorn -k aserve.workers.AserveWorker app:application`
serves WSGI and ASGI apps with aserve's HTTP layer and runners, under gunicorn's arbiter, its
settings and its signals."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from typing import Any

from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

from aserve.config import CertReqs, Config, LogLevel
from aserve.loader import LoadedApp, load
from aserve.logs import ACCESS
from aserve.process import loop_factory
from aserve.server import EXIT_LIFESPAN_FAILED, Server

_DEFAULTS = Config()
# How often to tell the arbiter the worker lives when gunicorn's --timeout is 0 (never kill).
_IDLE_HEARTBEAT = 1.0
# Of gunicorn's --graceful-timeout, what is kept for lifespan shutdown after the drain: the
# arbiter kills a worker still there when it runs out, and an app's shutdown (closing its
# database pool) should not be what is cut off.
_SHUTDOWN_RESERVE = 1.0
_LOG_LEVELS: tuple[LogLevel, ...] = ("critical", "error", "warning", "info", "debug")
# gunicorn's --cert-reqs is ssl.VerifyMode's number.
_CERT_REQS: dict[int, CertReqs] = {0: "none", 1: "optional", 2: "required"}


def config_from(cfg: Any) -> Config:
    """aserve's settings from gunicorn's, for those both have."""
    head = _DEFAULTS.limit_request_head
    level = str(cfg.loglevel).lower()
    log_level: LogLevel = next((known for known in _LOG_LEVELS if known == level), "info")
    return Config(
        # gunicorn's default of 1 thread, meant for its sync worker, would run one WSGI
        # request at a time: below 2 the pool keeps aserve's size.
        threads=cfg.threads if cfg.threads > 1 else _DEFAULTS.threads,
        timeout_keep_alive=cfg.keepalive,
        timeout_graceful_shutdown=max(0.0, cfg.graceful_timeout - _SHUTDOWN_RESERVE),
        # 0 means no limit to gunicorn; the whole head stays bounded by aserve's own limit.
        limit_request_line=cfg.limit_request_line or head,
        limit_request_fields=cfg.limit_request_fields or head,
        limit_request_field_size=cfg.limit_request_field_size or head,
        limit_concurrency=cfg.worker_connections,
        workers=cfg.workers,
        access_log=cfg.accesslog is not None,
        log_level=log_level,
        # gunicorn's --certfile/--keyfile/--ca-certs/--cert-reqs/--ciphers: aserve's loop
        # does the TLS (gunicorn's own wrapping is for its synchronous workers).
        ssl_certfile=cfg.certfile,
        ssl_keyfile=cfg.keyfile,
        ssl_ca_certs=cfg.ca_certs,
        ssl_cert_reqs=_CERT_REQS.get(cfg.cert_reqs, "none"),
        ssl_ciphers=cfg.ciphers,
        # gunicorn reads FORWARDED_ALLOW_IPS into its list already; "*" trusts every peer.
        proxy_headers=True,
        forwarded_allow_ips=",".join(cfg.forwarded_allow_ips),
    )


class AserveWorker(Worker):  # type: ignore[misc]  # gunicorn ships no type information
    """A gunicorn worker serving on aserve's event loop. The arbiter's signals: SIGTERM and
    SIGQUIT stop it gracefully within --graceful-timeout, SIGINT at once, SIGUSR1 reopens the
    log files; it tells the arbiter it lives every --timeout / 2 seconds from the loop, so an
    app that blocks the loop longer is killed and replaced."""

    config: Config
    loaded: LoadedApp
    alive: bool

    def init_process(self) -> None:
        self.config = config_from(self.cfg)
        self._route_logs()
        super().init_process()  # loads the app (load_wsgi), then run()

    def init_signals(self) -> None:
        # gunicorn's handlers run between two bytecodes, sys.exit() in the middle of whatever
        # the loop runs: the stop signals get the loop's own handlers in `run` instead.
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGUSR1, self.handle_usr1)
        signal.siginterrupt(signal.SIGUSR1, False)
        # The arbiter's SIGABRT for a worker past --timeout: gunicorn's worker_abort hook, then
        # out, even from a loop that an app holds.
        signal.signal(signal.SIGABRT, self.handle_abort)

    def load_wsgi(self) -> None:
        # gunicorn imports the app (--chdir, --pythonpath, `module:factory()`, paste); aserve
        # tells ASGI from WSGI. Both before the worker counts as booted, so that an app that
        # cannot be loaded exits with the boot error code and the arbiter stops.
        super().load_wsgi()
        self.loaded = load(self.wsgi)

    def run(self) -> None:
        server = Server(self.loaded, self.config)
        server.log_serving = False  # gunicorn says where it listens, and when a worker exits
        server.log_stopped = False
        if self.max_requests < sys.maxsize:
            server.on_request = lambda: self._count(server)
        sockets = [_listening(sock) for sock in self.sockets]
        with asyncio.Runner(loop_factory=loop_factory(self.config.loop)) as runner:
            code = runner.run(self._serve(server, sockets))
        if code == EXIT_LIFESPAN_FAILED:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    async def _serve(self, server: Server, sockets: list[socket.socket]) -> int:
        loop = asyncio.get_running_loop()
        stops = {signal.SIGTERM: False, signal.SIGQUIT: False, signal.SIGINT: True}
        for sig, quick in stops.items():
            loop.add_signal_handler(sig, self._stop, server, sig, quick)
        heartbeat = asyncio.create_task(self._heartbeat(server))
        try:
            return await server.serve(sockets, handle_signals=False)
        finally:
            heartbeat.cancel()
            for sig in stops:
                loop.remove_signal_handler(sig)

    async def _heartbeat(self, server: Server) -> None:
        """Tell the arbiter the loop is free, as long as the worker runs (draining too)."""
        interval = self.timeout if self.timeout > 0 else _IDLE_HEARTBEAT
        while True:
            self.notify()
            if self.alive and os.getppid() != self.ppid:
                self.log.info("Parent changed, shutting down: %s", self)
                self.alive = False
                server.request_stop()
            await asyncio.sleep(interval)

    def _stop(self, server: Server, sig: int, quick: bool) -> None:
        self.alive = False
        if quick:
            self.cfg.worker_int(self)
        server.request_stop(force=quick)

    def _count(self, server: Server) -> None:
        self.nr += 1
        if self.nr == self.max_requests:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False
            server.request_stop()

    def _route_logs(self) -> None:
        """aserve's records through gunicorn's handlers: --error-logfile, --access-logfile,
        --log-level and --log-config apply to them."""
        errors = logging.getLogger("aserve")
        errors.handlers = list(self.log.error_log.handlers)
        errors.setLevel(self.log.error_log.level)
        errors.propagate = False
        access = logging.getLogger(ACCESS)
        access.handlers = list(self.log.access_log.handlers)
        access.setLevel(logging.INFO)
        access.propagate = False


def _listening(sock: Any) -> socket.socket:
    """The socket object of one of gunicorn's listeners (a wrapper that holds it)."""
    real: socket.socket = getattr(sock, "sock", sock)
    real.setblocking(False)
    return real
