"""App runners: ASGI and WSGI behind one interface, `exchange.AppRunner`; `make_runner` picks
the one a loaded app needs, so that the server knows neither."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from aserve.config import Config
from aserve.exchange import AppRunner
from aserve.loader import LoadedApp
from aserve.runners.asgi import ASGIRunner
from aserve.runners.browser import BrowserReload
from aserve.runners.wsgi import WSGIRunner


def make_runner(
    loaded: LoadedApp,
    config: Config,
    hand_over: Callable[[socket.socket], None] | None = None,
) -> AppRunner:
    """The runner for `loaded`, on the running loop. Under --reload-browser, `hand_over` gets
    the connections that ask for the browser's event stream (see runners.browser)."""
    runner = _app_runner(loaded, config)
    return BrowserReload(runner, hand_over) if config.reload_browser else runner


def _app_runner(loaded: LoadedApp, config: Config) -> AppRunner:
    loop = asyncio.get_running_loop()
    if loaded.kind == "asgi":
        return ASGIRunner(
            loaded.asgi,
            loop,
            root_path=config.root_path,
            lifespan=config.lifespan,
            debug=config.reload,
        )
    return WSGIRunner(
        loaded.wsgi,
        loop,
        threads=config.threads,
        limit_buffer=config.limit_buffer,
        root_path=config.root_path,
        debug=config.reload,
    )
