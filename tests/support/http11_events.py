"""Pulling events out of an http11.Connection, and comparable summaries of them, for the
byte-level and fuzz tests."""

from __future__ import annotations

from aserve.protocols.http11 import Connection, Data, EndOfMessage, Event, Request

Summary = tuple[object, ...]


def pull(conn: Connection) -> list[Event]:
    """Every event ready now."""
    events: list[Event] = []
    while (event := conn.next_event()) is not None:
        events.append(event)
    return events


def feed(conn: Connection, data: bytes) -> list[Event]:
    conn.receive_data(data)
    return pull(conn)


def summary(events: list[Event]) -> list[Summary]:
    """Comparable tuples for events; adjacent Data pieces are joined (their split is free)."""
    out: list[Summary] = []
    for event in events:
        if isinstance(event, Request):
            out.append(
                (
                    "request",
                    event.method,
                    event.target,
                    event.http_version,
                    tuple(event.headers),
                    event.keep_alive,
                    event.expect_continue,
                )
            )
        elif isinstance(event, Data):
            previous = out[-1] if out else ()
            if previous[:1] == ("data",) and isinstance(previous[1], bytes):
                out[-1] = ("data", previous[1] + event.data)
            else:
                out.append(("data", event.data))
        elif isinstance(event, EndOfMessage):
            out.append(("end",))
        else:
            out.append(("failure", event.status, event.respond))
    return out
