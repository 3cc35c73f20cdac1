"""`--reload`: hold the listening socket, run the worker in a child process, restart it when
watched files change. The supervisor never imports the application."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import socket
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path

from watchfiles import PythonFilter, awatch

from aserve.config import Config
from aserve.logs import configure
from aserve.server import Server, bind_socket

logger = logging.getLogger("aserve.error")


def _worker(app: str, config: Config, sock: socket.socket) -> None:
    raise SystemExit(Server(app, config).run([sock]))


class Supervisor:
    def __init__(self, app: str, config: Config) -> None:
        self.app = app
        self.config = config.replace(reload=False)
        self.dirs: Sequence[str] = config.reload_dirs or ["."]
        self._context = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None

    def run(self) -> int:
        configure(self.config.log_level)
        sock = bind_socket(self.config)
        try:
            return asyncio.run(self._supervise(sock))
        finally:
            sock.close()

    def _spawn(self, sock: socket.socket) -> None:
        process = self._context.Process(
            target=_worker, args=(self.app, self.config, sock), name="aserve-worker"
        )
        process.start()
        self._process = process

    async def _stop_worker(self) -> None:
        process = self._process
        if process is None or not process.is_alive():
            return
        assert process.pid is not None
        process.terminate()
        deadline = self.config.timeout_graceful_shutdown + 1.0
        await asyncio.to_thread(process.join, deadline)
        if process.is_alive():
            process.kill()
            await asyncio.to_thread(process.join)

    async def _supervise(self, sock: socket.socket) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        dirs = [str(Path(d).resolve()) for d in self.dirs]
        logger.info("Watching %s for changes", ", ".join(dirs))
        self._spawn(sock)
        async for changes in awatch(*dirs, watch_filter=PythonFilter(), stop_event=stop):
            names = sorted({Path(path).name for _, path in changes})
            logger.info("Change in %s: restarting the worker", ", ".join(names))
            await self._stop_worker()
            self._spawn(sock)
        await self._stop_worker()
        return 0
