"""Static files under STATIC_URL as runserver serves them (staticfiles' finders, Django's static
view: content types, Last-Modified, 304 on If-Modified-Since, 404 pages), streamed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import IO, Any, Literal, cast

from django.contrib.staticfiles.handlers import (
    ASGIStaticFilesHandler,
    StaticFilesHandler,
    StaticFilesHandlerMixin,
)
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest
from django.http.response import HttpResponseBase

# What a thread reads of a static file for each piece sent: Django's FileResponse reads 4 KiB
# at a time, one thread hand-off each, which over ASGI would cost more than the reading.
CHUNK = 65536


def with_static_files(handler: object, interface: Literal["asgi", "wsgi"]) -> object:
    """`handler` behind the static-files handler: Django's own, or any ASGI app that
    ASGI_APPLICATION names (a Channels router, say), whose other paths go to it untouched."""
    if interface == "asgi":
        return StreamingASGIStaticFilesHandler(cast(ASGIHandler, handler))
    # Its FileResponse goes out through wsgi.file_wrapper: aserve's WSGI runner streams it.
    return StaticFilesHandler(cast(WSGIHandler, handler))


class StreamingASGIStaticFilesHandler(ASGIStaticFilesHandler):
    """staticfiles' ASGI handler, but the file is streamed: Django's own reads the whole file
    into memory before sending any of it (sync_to_async(list))."""

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        response = await StaticFilesHandlerMixin.get_response_async(self, request)
        # What Django's own does with the response (its private closers: the request is
        # closed with it), and, for a file, what it could not: read it a piece at a time.
        served: Any = response
        served._resource_closers.append(request.close)
        if served.streaming and not served.is_async:
            stream: IO[bytes] | None = getattr(served, "file_to_stream", None)
            served.streaming_content = (
                _read_in_thread(stream)
                if stream is not None
                else _iterate_in_thread(served.streaming_content)
            )
        return response


async def _read_in_thread(stream: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(stream.read, CHUNK):
        yield chunk


async def _iterate_in_thread(content: Iterator[Any]) -> AsyncIterator[Any]:
    iterator = iter(content)
    done = object()
    while (chunk := await asyncio.to_thread(next, iterator, done)) is not done:
        yield chunk
