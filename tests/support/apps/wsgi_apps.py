"""WSGI apps served by the subprocess tests, each wrapped in wsgiref.validate.validator."""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.validate import validator

BODY = b"fedcba9876543210" * 4096

# Two requests to /together meet here only if the server runs them at the same time.
_meeting = threading.Barrier(2, timeout=3.0)


def _respond(start_response: StartResponse, body: bytes, status: str = "200 OK") -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path: str = environ["PATH_INFO"]
    if path.startswith("/sleep/"):
        print(f"app: started {path}", file=sys.stderr, flush=True)
        time.sleep(float(path.removeprefix("/sleep/")))
        return _respond(start_response, BODY)
    if path == "/together":
        try:
            _meeting.wait()
        except threading.BrokenBarrierError:
            return _respond(start_response, b"alone")
        return _respond(start_response, b"together")
    if path == "/headers":
        lines = sorted(f"{key}={value}" for key, value in environ.items() if key[:5] == "HTTP_")
        return _respond(start_response, "\n".join(lines).encode("latin-1"))
    if path == "/runtime":
        # How the process and the thread serving this request are set up.
        state = {
            "gc_threshold": list(gc.get_threshold()),
            "gc_frozen": gc.get_freeze_count(),
            "gc_enabled": gc.isenabled(),
            "sched_batch": os.sched_getscheduler(0) == os.SCHED_BATCH,
        }
        return _respond(start_response, json.dumps(state).encode())
    return _respond(start_response, b"hello")


app = validator(_app)
