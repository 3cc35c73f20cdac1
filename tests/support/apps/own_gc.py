"""A WSGI app that sets up the garbage collector itself at import time; aserve must keep it."""

from __future__ import annotations

import gc

from tests.support.apps.wsgi_apps import app

gc.set_threshold(1234, 5, 6)

__all__ = ["app"]
