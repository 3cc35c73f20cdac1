"""Type names shared across layers: application callables and header lists."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from types import TracebackType
from typing import Any, TypeAlias
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

Headers: TypeAlias = list[tuple[bytes, bytes]]
# Response fields as an app may give them: ASGI apps send lists of [name, value] lists, tuples
# of tuples, bytearray and memoryview values. Typed this loosely so that compiled code takes
# them as they come; `exchange.as_fields` turns them into `Headers`.
AppHeaders: TypeAlias = Iterable[Iterable[Any]]

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

# What sys.exc_info() returns, as start_response takes it.
ExcInfo: TypeAlias = (
    tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]
)
# The standard library's WSGI types (Python 3.11+), so apps typed with either check alike.
Environ: TypeAlias = WSGIEnvironment
WSGIApp: TypeAlias = WSGIApplication

__all__ = [
    "ASGIApp",
    "AppHeaders",
    "Environ",
    "ExcInfo",
    "Headers",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "StartResponse",
    "WSGIApp",
]
