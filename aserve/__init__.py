"""aserve: an asyncio development server for ASGI and WSGI apps."""

from __future__ import annotations

__version__ = "0.1.0"

from aserve.config import Config
from aserve.server import Server, run

__all__ = ["Config", "Server", "__version__", "run"]
