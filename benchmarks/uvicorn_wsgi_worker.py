"""uvicorn's gunicorn worker told that the app is WSGI, for the A/B against AserveWorker:
`uvicorn.workers.UvicornWorker` detects ASGI only, and answers every request to a WSGI app
with a 500. Run from the checkout: `gunicorn -k benchmarks.uvicorn_wsgi_worker.Worker`."""

from __future__ import annotations

from typing import Any

from uvicorn.workers import UvicornWorker


class Worker(UvicornWorker):
    # Declared as the base class declares it.
    CONFIG_KWARGS: dict[str, Any] = {**UvicornWorker.CONFIG_KWARGS, "interface": "wsgi"}  # noqa: RUF012
