"""The one exception hierarchy of aserve; protocol errors carry the status to answer with."""

from __future__ import annotations


class AserveError(Exception):
    """Base of every error aserve raises on purpose."""


class ConfigError(AserveError):
    """A setting has a value aserve cannot use."""


class AppLoadError(AserveError):
    """The application could not be imported or is neither ASGI nor WSGI."""


class LifespanError(AserveError):
    """The application's lifespan startup failed."""


class ProtocolError(AserveError):
    """The peer broke HTTP/1.1; `status` is the response to send before closing."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class AppProtocolError(AserveError):
    """The application broke its side of ASGI or WSGI (a bad header, a message out of order)."""


class ClientDisconnected(OSError):
    """The client went away; raised into WSGI apps reading `wsgi.input`."""
