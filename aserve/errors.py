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
    """The client went away; raised into WSGI apps reading `wsgi.input`, and from an ASGI
    `send()` once the connection is gone."""


class RequestBodyTooLarge(ClientDisconnected):
    """The request body passed `--limit-request-body`: the client got its 413 and nothing more
    of the body will come. An OSError, so that frameworks handle it as the end of the body
    (Django's UnreadablePostError)."""
