"""The notes pages, and small views that show how the server runs the project: an async view, a
response streamed from an async and from a sync generator, and the process serving them."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator

from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render

from .models import Note

# The streamed responses: how many chunks, and the pause before each one after the first, long
# enough for a client to see every chunk arrive on its own.
CHUNKS = 5
INTERVAL = 0.5


def note_list(request: HttpRequest) -> HttpResponse:
    return render(request, "notes/note_list.html", {"notes": Note.objects.all()})


async def hello_async(request: HttpRequest) -> HttpResponse:
    count = await Note.objects.acount()
    # Under WSGI, Django (asgiref's async_to_sync) runs this coroutine on a new event loop in a
    # thread of its own while the request's thread waits; under ASGI it runs on the server's loop.
    interface = "ASGI" if isinstance(request, ASGIRequest) else "WSGI"
    return _text(f"Hello from an async view, served over {interface}. Notes: {count}.\n")


async def stream(request: HttpRequest) -> StreamingHttpResponse:
    # Over ASGI each chunk goes out as it is produced. Django's WSGI handler cannot iterate an
    # async generator, so it warns and collects all of it first: stream_sync is the WSGI one.
    async def chunks() -> AsyncIterator[str]:
        for n in range(1, CHUNKS + 1):
            if n > 1:
                await asyncio.sleep(INTERVAL)
            yield f"chunk {n} of {CHUNKS}\n"

    return StreamingHttpResponse(chunks(), content_type="text/plain; charset=utf-8")


def stream_sync(request: HttpRequest) -> StreamingHttpResponse:
    # The mirror image: streamed over WSGI, collected first (with a warning) over ASGI.
    def chunks() -> Iterator[str]:
        for n in range(1, CHUNKS + 1):
            if n > 1:
                time.sleep(INTERVAL)
            yield f"chunk {n} of {CHUNKS}\n"

    return StreamingHttpResponse(chunks(), content_type="text/plain; charset=utf-8")


def run_main(request: HttpRequest) -> HttpResponse:
    # Django's autoreloader sets RUN_MAIN=true in the child it serves from; code that must run
    # once per server, not once per reload, tests it. Empty when unset.
    return _text(os.environ.get("RUN_MAIN", ""))


def pid(request: HttpRequest) -> HttpResponse:
    # A new number after a reload: whether a change was picked up by a restart or in place.
    return _text(str(os.getpid()))


def _text(body: str) -> HttpResponse:
    return HttpResponse(body, content_type="text/plain; charset=utf-8")
