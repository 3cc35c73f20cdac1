"""App runners: ASGI and WSGI behind one interface, `exchange.AppRunner`; `make_runner` picks
the one a loaded app needs, so that the server knows neither."""

from __future__ import annotations

import asyncio

from aserve.config import Config
from aserve.exchange import AppRunner
from aserve.loader import LoadedApp
from aserve.runners.asgi import ASGIRunner
from aserve.runners.wsgi import WSGIRunner


def make_runner(loaded: LoadedApp, config: Config) -> AppRunner:
    """The runner for `loaded`, on the running loop."""
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
