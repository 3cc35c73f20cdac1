"""Error pages for a developer: a traceback as HTML for browsers and as plain text for anything
else. The reloader shows one while the app cannot start; in development (`--reload`) a request
whose app raised gets one, if its client is on this machine."""

from __future__ import annotations

import html
import ipaddress
import os
import traceback
from dataclasses import dataclass

_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; margin: 0; background: #fff; color: #222; }}
header {{ background: #c0392b; color: #fff; padding: 1em 2em; }}
h1 {{ font-size: 1.3em; margin: 0; }}
header p {{ margin: .3em 0 0; opacity: .9; }}
main {{ padding: 1em 2em; }}
pre {{ background: #f6f6f6; border: 1px solid #ddd; padding: 1em; overflow-x: auto;
       font: 13px/1.4 ui-monospace, monospace; white-space: pre-wrap; }}
</style></head>
<body><header><h1>{title}</h1><p>{summary}</p></header>
<main><pre>{details}</pre>
<p>{footer}</p></main>
</body></html>
"""

WATCHING = "aserve is watching your files: save a fix and reload this page."
REQUEST_FAILED = (
    "An exception escaped the app. aserve shows this page in development (--reload), to "
    "clients on this machine only; anyone else gets a plain 500."
)


@dataclass(frozen=True, slots=True)
class Page:
    """A rendered error page: its content type and body."""

    content_type: bytes
    body: bytes


def render(title: str, summary: str, details: str, footer: str, accept: bytes) -> Page:
    """The page for a client whose Accept field is `accept`: HTML for a browser, text else."""
    if b"text/html" in accept:
        body = _HTML.format(
            title=html.escape(title),
            summary=html.escape(summary),
            details=html.escape(details),
            footer=html.escape(footer),
        )
        return Page(b"text/html; charset=utf-8", body.encode())
    return Page(b"text/plain; charset=utf-8", f"{title}\n\n{summary}\n\n{details}\n".encode())


def for_exception(exc: BaseException, request_line: str, accept: bytes) -> Page:
    """The page for a request whose app raised `exc`."""
    summary = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return render(
        f"Exception in the app: {request_line}",
        summary,
        user_traceback(exc),
        REQUEST_FAILED,
        accept,
    )


def user_traceback(exc: BaseException) -> str:
    """The traceback, its causes included, without the frames of aserve and importlib, which
    only say that aserve called the app or that an import happened."""
    summary = traceback.TracebackException.from_exception(exc)
    aserve_dir = os.path.dirname(__file__) + os.sep  # this module is at the package's top
    importlib_dir = os.sep + "importlib" + os.sep
    link: traceback.TracebackException | None = summary
    while link is not None:
        link.stack = traceback.StackSummary.from_list(
            [
                frame
                for frame in link.stack
                if not frame.filename.startswith(aserve_dir)
                and not frame.filename.startswith("<frozen importlib")
                and importlib_dir not in frame.filename
            ]
        )
        link = link.__cause__ or link.__context__
    return "".join(summary.format())


def is_local(client: tuple[str, int] | None) -> bool:
    """Whether a client is on this machine: loopback, or a Unix socket's peer (no address)."""
    if client is None:
        return True
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False
