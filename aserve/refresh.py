"""The browser refresh of `--reload-browser`, as the browser sees it: the script tag put into
pages, the script and its shared worker, and the server-sent events they listen for. The
runner that serves them is `runners.browser`; the supervisor that sends the events,
`reload.browser`."""

from __future__ import annotations

PREFIX = b"/__aserve__/"
SCRIPT_PATH = b"/__aserve__/reload.js"
WORKER_PATH = b"/__aserve__/reload-worker.js"
EVENTS_PATH = b"/__aserve__/events"
TAG = b'<script src="/__aserve__/reload.js" defer></script>'
# How long the browser waits before it reconnects to a closed event stream (ms): the supervisor
# only closes it when it stops, and a restarted one is back within a second.
RETRY_MS = 500

# One EventSource per page would use up a browser's six HTTP/1.1 connections to the server
# with six tabs open; a SharedWorker holds one for every tab of the origin. Where there is no
# SharedWorker (Safari before 16, a CSP without worker-src), each page has its own.
RELOAD_JS = b"""\
(() => {
  "use strict";
  const EVENTS = "/__aserve__/events";
  const swapStylesheets = () => {
    for (const link of document.querySelectorAll('link[rel~="stylesheet"][href]')) {
      const url = new URL(link.href);
      url.searchParams.set("aserve-reload", Date.now().toString());
      link.href = url.href;
    }
  };
  const handle = (kind) => {
    if (kind === "css") swapStylesheets();
    else if (kind === "reload") location.reload();
  };
  const direct = () => {
    const source = new EventSource(EVENTS);
    source.addEventListener("reload", () => handle("reload"));
    source.addEventListener("css", () => handle("css"));
  };
  if (typeof SharedWorker === "undefined") {
    direct();
    return;
  }
  try {
    const worker = new SharedWorker("/__aserve__/reload-worker.js", { name: "aserve-reload" });
    worker.port.onmessage = (event) => handle(event.data);
    worker.onerror = direct;
    worker.port.start();
    addEventListener("pagehide", () => worker.port.postMessage("bye"));
  } catch (error) {
    direct();
  }
})();
"""
WORKER_JS = b"""\
"use strict";
const ports = new Set();
const source = new EventSource("/__aserve__/events");
for (const kind of ["reload", "css"]) {
  source.addEventListener(kind, () => {
    for (const port of ports) port.postMessage(kind);
  });
}
onconnect = (event) => {
  const port = event.ports[0];
  ports.add(port);
  port.onmessage = (message) => {
    if (message.data === "bye") ports.delete(port);
  };
  port.start();
};
"""
# The head of the event stream, which then stays open: its end is the connection's close.
EVENTS_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream\r\n"
    b"cache-control: no-store\r\n"
    b"connection: close\r\n"
    b"\r\n" + b"retry: %d\n\n" % RETRY_MS
)


def event(kind: str) -> bytes:
    """One server-sent event of type `kind` (`reload` or `css`)."""
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), kind.encode())
