"""aserve: an asyncio development server for ASGI and WSGI apps.

The names below are imported on first use, so that `aserve --help` and `aserve --version`
load no server code.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Config", "Server", "__version__", "build", "run"]

if TYPE_CHECKING:
    from aserve.config import Config
    from aserve.server import Server, run

_LAZY = {"Config": "aserve.config", "Server": "aserve.server", "run": "aserve.server"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aserve' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def build() -> str:
    """Which build runs: "compiled" when setup.py compiled the hot modules with mypyc (they
    are then extension modules beside their sources), else "pure Python"."""
    # Found, not imported: `--version` and `--help` stay as quick as the rest of the parser.
    spec = importlib.util.find_spec("aserve.exchange")
    origin = spec.origin if spec is not None else None
    return "pure Python" if origin is None or origin.endswith(".py") else "compiled"
