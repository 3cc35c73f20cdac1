"""Replay of gunicorn's public request corpus against aserve: real servers and bare http11.

The corpus (``shared/corpora/gunicorn-requests``, beside the repository; see its README.md) holds
raw requests that gunicorn's parser must accept ("valid", with the requests it must parse) or
refuse ("invalid"). Each case goes over a socket (then a half-close) to an ASGI server and a
WSGI server whose apps record what they were given. Every case, even one skipped over the
socket, is also fed to a bare ``http11.Connection`` whole, byte by byte and in seeded random
pieces, which must all give the same events. ``test_tallies`` pins the counts of outcomes.

Policy:

* An invalid case gets one 4xx response, or the connection closes without one; never a 2xx.
* A valid case gets one 2xx per expected request and the app sees the expected method, target,
  HTTP version, header fields (names compared case-insensitively) and body. Exceptions:

  - an HTTP/1.1 request without Host is answered 400 (RFC 9112 §3.2: a server MUST), and the
    connection then closes, so requests pipelined after it get no response;
  - ``REFUSED_VALID`` lists the cases aserve refuses on purpose (strict llhttp parsing that
    RFC 9112 allows), ``ACCEPTED_INVALID`` those it accepts on purpose (gunicorn refuses more
    than the RFCs ask);
  - header names with an underscore are left out: gunicorn drops them by default, aserve's
    WSGI environ drops them too, its ASGI scope keeps every field;
  - request trailers are not checked: aserve gives apps none (RFC 9110 §6.5.1 lets it discard);
  - ``TRUNCATED_VALID``: a case whose body is shorter than its Content-Length; the app gets
    what arrived, the connection closes without a response.

* ``HANGS`` are cases a known server bug mishandles; their socket replays are strict xfails.
* The WSGI app is wrapped in ``wsgiref.validate.validator`` except for asterisk-form and
  authority-form targets, for which no PATH_INFO can satisfy it (see ``wsgi_recorder``).

* The target the app sees is the path and query of the request-target (absolute-form reduced
  to them, RFC 9112 §3.2.2); the bare Connection replay checks the raw target byte for byte.
* Limits: cases are served with gunicorn's defaults (4094-byte request line, 100 fields, 8190
  bytes a field) mapped onto aserve's settings, and their ``cfg`` limit overrides likewise.
  gunicorn measures a whole field line with ": " and CRLF, aserve name plus value, hence the 4
  bytes taken off; aserve measures the request-target where gunicorn measures the line, which
  can only make aserve a few bytes more lenient. A ``cfg`` needing any other knob (proxy
  protocol, obsolete line folding, header maps, ...) has no aserve equivalent: the case is
  skipped, naming the knob.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from threading import Lock
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment
from wsgiref.validate import validator

import pytest

from aserve import Server
from aserve.protocols.http11 import (
    Connection,
    EndOfMessage,
    Event,
    Limits,
    ProtocolFailure,
)
from aserve.types import Receive, Scope, Send
from tests.support import limits_with
from tests.support.client import connect
from tests.support.http import Response
from tests.support.http11_events import Summary, summary
from tests.support.servers import running

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "gunicorn-requests"
if not (CORPUS / "manifest.json").is_file():
    pytest.skip(
        f"gunicorn request corpus not found at {CORPUS} (clone shared/ beside the repo)",
        allow_module_level=True,
    )

# gunicorn's defaults, which the cases without a cfg override were written against.
GUNICORN_LIMITS = {
    "limit_request_line": 4094,
    "limit_request_fields": 100,
    "limit_request_field_size": 8190,
}
# ": " and CRLF: in gunicorn's measure of a field line, not in aserve's.
FIELD_LINE_OVERHEAD = 4

# Verdicts that differ from the corpus's, by case id, with the reason.
REFUSED_VALID = {
    "valid/009": "Transfer-Encoding: identity beside Content-Length: llhttp refuses the pair, "
    "which RFC 9112 §6.1 allows a server to do (it is also an HTTP/1.1 request without Host)",
    "valid/027": "raw non-ASCII bytes in the request-target: RFC 9112 §3.2 takes RFC 3986's ASCII "
    "URI grammar, and llhttp refuses them",
    "valid/031": "'-BLARGH' is a token but no method llhttp knows; llhttp refuses unknown methods "
    "(RFC 9110 §9.1 would have a 501)",
    "valid/rfc9112_smuggle_gzip_chunked_01": "a coding before chunked (gzip, chunked): aserve "
    "decodes no content coding, so it answers 501 (RFC 9112 §6.1) rather than hand the app a "
    "body still encoded",
    "valid/rfc9112_smuggle_te_identity_chunked_01": "identity before chunked: 'identity' is no "
    "registered transfer coding any more (RFC 9112 §7), so 501 like any unknown one",
}
# The status of a refused case, where it is not 400.
REFUSED_STATUS = {
    "valid/rfc9112_smuggle_gzip_chunked_01": 501,
    "valid/rfc9112_smuggle_te_identity_chunked_01": 501,
}
ACCEPTED_INVALID = {
    "invalid/041": "two Content-Type fields: RFC 9110 §5.3 bars senders from this but asks no "
    "recipient to refuse it; the app sees both",
    "invalid/rfc9110_trailer_forbidden_host_01": "a Host trailer field: RFC 9110 §6.5.1 lets a "
    "recipient discard trailers, which aserve does (the Host header is the one kept)",
}
TRUNCATED_VALID = {
    "valid/099": "Content-Length: 17914 announces more than the 8599 body bytes in the file "
    "(gunicorn's harness compares what arrived): the client half-closes with the body "
    "incomplete, so the request is truncated (RFC 9112 §8): 400, and the connection closes",
}
# Known server bugs, by case id with the reason: their socket replays are strict xfails.
HANGS: dict[str, str] = {}
# How long a replay may take before the server counts as hung.
REPLAY_TIMEOUT = 3.0


# -- the corpus --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    method: bytes
    target: bytes
    version: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    @property
    def missing_host(self) -> bool:
        return self.version == "1.1" and not any(name == b"host" for name, _ in self.headers)


@dataclass(frozen=True)
class Case:
    split: str
    name: str
    raw: bytes
    cfg: dict[str, Any]
    requests: tuple[Expected, ...]
    error: str | None

    @property
    def id(self) -> str:
        return f"{self.split}/{self.name}"

    @property
    def verdict(self) -> str:
        """valid, refused, truncated, invalid or accepted: what the policy expects."""
        if self.id in REFUSED_VALID:
            return "refused"
        if self.id in TRUNCATED_VALID:
            return "truncated"
        if self.id in ACCEPTED_INVALID:
            return "accepted"
        return self.split

    @property
    def origin_form(self) -> bool:
        """The first target is origin-form or absolute-form, so PATH_INFO can start with /."""
        target = self.raw.split(b"\r\n", 1)[0].split(b" ")[1:2]
        return bool(target) and (target[0].startswith(b"/") or b"://" in target[0])

    @property
    def unsupported_knobs(self) -> list[str]:
        return sorted(set(self.cfg) - set(GUNICORN_LIMITS))

    @property
    def settings(self) -> tuple[tuple[str, int], ...]:
        """aserve's limit settings equivalent to gunicorn's for this case."""
        limits = {**GUNICORN_LIMITS, **{k: v for k, v in self.cfg.items() if k in GUNICORN_LIMITS}}
        # limit_header_default_01 shows that 0 selects gunicorn's default.
        field_size = (
            limits["limit_request_field_size"] or GUNICORN_LIMITS["limit_request_field_size"]
        )
        return (
            ("limit_request_line", limits["limit_request_line"]),
            ("limit_request_fields", limits["limit_request_fields"]),
            ("limit_request_field_size", field_size - FIELD_LINE_OVERHEAD),
        )

    @property
    def limits(self) -> Limits:
        values = dict(self.settings)
        return limits_with(
            request_line=values["limit_request_line"],
            request_fields=values["limit_request_fields"],
            request_field_size=values["limit_request_field_size"],
        )


def load_cases() -> list[Case]:
    manifest = json.loads((CORPUS / "manifest.json").read_text())
    cases = []
    for entry in manifest["cases"]:
        requests = tuple(
            Expected(
                method=r["method"].encode("latin-1"),
                target=r["target"].encode("latin-1"),
                version="{}.{}".format(*r["version"]),
                headers=tuple(
                    (name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in r["headers"]
                ),
                body=base64.b64decode(r["body_b64"]),
            )
            for r in entry.get("expect_requests") or ()
        )
        cases.append(
            Case(
                split=entry["split"],
                name=entry["name"],
                raw=base64.b64decode(entry["raw_b64"]),
                cfg=entry["cfg"],
                requests=requests,
                error=entry.get("expect_error"),
            )
        )
    return cases


CASES = load_cases()


def case_param(case: Case) -> Any:
    knobs = case.unsupported_knobs
    marks: list[pytest.MarkDecorator] = []
    if knobs:
        marks.append(pytest.mark.skip(reason=f"aserve has no {', '.join(knobs)} knob"))
    if case.id in HANGS:
        marks.append(pytest.mark.xfail(strict=True, reason=HANGS[case.id]))
    return pytest.param(case, id=case.id, marks=marks)


SERVER_PARAMS = [case_param(case) for case in CASES]


def visible_headers(headers: tuple[tuple[bytes, bytes], ...]) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in headers if b"_" not in name]


def origin_parts(target: bytes) -> tuple[bytes, bytes]:
    """The path and query an app should see for a request-target."""
    target = target.partition(b"#")[0]  # RFC 3986 §3.5: a fragment is never sent on
    if re.match(rb"[A-Za-z][A-Za-z0-9+.-]*://", target):
        parts = urlsplit(target)
        return parts.path or b"/", parts.query
    path, _, query = target.partition(b"?")
    return path, query


# -- recording apps ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One request as an app saw it, in terms both interfaces can express."""

    method: bytes
    path: bytes
    query: bytes
    version: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


@dataclass
class Recorder:
    """Requests seen by an app, by client port (one connection per case)."""

    seen: dict[int, list[Seen]] = field(default_factory=dict)
    lock: Lock = field(default_factory=Lock)

    def add(self, port: int, seen: Seen) -> None:
        with self.lock:
            self.seen.setdefault(port, []).append(seen)

    def pop(self, port: int) -> list[Seen]:
        with self.lock:
            return self.seen.pop(port, [])


def asgi_recorder(recorder: Recorder) -> Callable[[Scope, Receive, Send], Any]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        recorder.add(
            scope["client"][1],
            Seen(
                method=scope["method"].encode("ascii"),
                path=scope["raw_path"],
                query=scope["query_string"],
                version=scope["http_version"],
                headers=tuple(scope["headers"]),
                body=body,
            ),
        )
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def wsgi_recorder(recorder: Recorder, *, validate: bool) -> WSGIApplication:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        body = b""
        while chunk := stream.read(65536):
            body += chunk
        headers = tuple(
            sorted(
                (key.encode("latin-1"), value.encode("latin-1"))
                for key, value in environ.items()
                if key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH")
            )
        )
        recorder.add(
            int(environ["REMOTE_PORT"]),
            Seen(
                method=environ["REQUEST_METHOD"].encode("latin-1"),
                path=environ["PATH_INFO"].encode("latin-1"),
                query=environ["QUERY_STRING"].encode("latin-1"),
                version=environ["SERVER_PROTOCOL"].removeprefix("HTTP/"),
                headers=headers,
                body=body,
            ),
        )
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    # wsgiref.validate wants PATH_INFO to start with "/", which no environ for an asterisk-form
    # (OPTIONS *) or authority-form (CONNECT) target can do: RFC 3875 §4.1.5 has no form for
    # them, and aserve gives the target as wsgiref's own server does. Those go unvalidated.
    return validator(app) if validate else app


def wsgi_headers(headers: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[bytes, bytes], ...]:
    """The environ keys (PEP 3333) that header fields become; repeats join with commas."""
    environ: dict[bytes, bytes] = {}
    for name, value in visible_headers(headers):
        key = name.upper().replace(b"-", b"_")
        if key not in (b"CONTENT_TYPE", b"CONTENT_LENGTH"):
            key = b"HTTP_" + key
        environ[key] = environ[key] + b"," + value if key in environ else value
    return tuple(sorted(environ.items()))


def expected_seen(expected: Expected, interface: str) -> Seen:
    path, query = origin_parts(expected.target)
    if interface == "wsgi":
        return Seen(
            expected.method,
            # The asterisk-form and authority-form have no path: PATH_INFO is empty.
            unquote_to_bytes(path) if path.startswith(b"/") else b"",
            query,
            expected.version,
            wsgi_headers(expected.headers),
            expected.body,
        )
    return Seen(
        expected.method,
        path,
        query,
        expected.version,
        tuple(visible_headers(expected.headers)),
        expected.body,
    )


def comparable(seen: Seen, interface: str) -> Seen:
    if interface == "wsgi":
        return seen
    return Seen(
        seen.method,
        seen.path,
        seen.query,
        seen.version,
        tuple(visible_headers(seen.headers)),
        seen.body,
    )


# -- talking to a server -----------------------------------------------------------------------


def exchange(port: int, data: bytes) -> tuple[int, list[Response], bool]:
    """Send `data`, half-close, read the responses until the server closes.

    Returns our port, the responses, and whether the server kept the connection open past
    `REPLAY_TIMEOUT` (then the responses are those that came before).
    """
    # A close with unread request bytes resets; what came before still counts.
    with connect(port, timeout=REPLAY_TIMEOUT, reset_is_close=True) as client:
        try:
            responses = client.exchange(data)
        except TimeoutError:
            return client.local_port, client.received, True
        for response in responses:
            assert response.version == b"HTTP/1.1", response
            assert response.header(b"content-length") is not None, response
        return client.local_port, responses, False


@dataclass(frozen=True)
class Outcome:
    responses: tuple[Response, ...]
    seen: tuple[Seen, ...]
    hung: bool

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


class Replayer:
    """Servers by interface and limit settings, started on first use; outcomes cached."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack
        self._servers: dict[tuple[str, bool, tuple[tuple[str, int], ...]], Server] = {}
        self._outcomes: dict[tuple[str, str], Outcome] = {}
        self.recorders = {"asgi": Recorder(), "wsgi": Recorder()}

    def server(
        self, interface: str, validate: bool, settings: tuple[tuple[str, int], ...]
    ) -> Server:
        key = (interface, validate, settings)
        if key not in self._servers:
            recorder = self.recorders[interface]
            app: object = asgi_recorder(recorder)
            if interface == "wsgi":
                app = wsgi_recorder(recorder, validate=validate)
            self._servers[key] = self._stack.enter_context(
                running(app, interface=interface, lifespan="off", **dict(settings))
            )
        return self._servers[key]

    def outcome(self, case: Case, interface: str) -> Outcome:
        key = (interface, case.id)
        if key not in self._outcomes:
            server = self.server(interface, case.origin_form, case.settings)
            port, responses, hung = exchange(server.port, case.raw)
            self._outcomes[key] = Outcome(
                tuple(responses), tuple(self.recorders[interface].pop(port)), hung
            )
        return self._outcomes[key]


@pytest.fixture(scope="module")
def replayer() -> Iterator[Replayer]:
    with ExitStack() as stack:
        yield Replayer(stack)


# -- over a socket -----------------------------------------------------------------------------


@pytest.mark.parametrize("interface", ["asgi", "wsgi"])
@pytest.mark.parametrize("case", SERVER_PARAMS)
def test_server_replay(replayer: Replayer, case: Case, interface: str) -> None:
    outcome = replayer.outcome(case, interface)
    assert not outcome.hung, "the server never closed the connection"
    statuses = outcome.statuses
    verdict = case.verdict
    if verdict == "refused":
        assert statuses == [REFUSED_STATUS.get(case.id, 400)]
        assert outcome.seen == ()
    elif verdict == "truncated":
        assert statuses == [400]
        assert outcome.seen == ()
    elif verdict == "invalid":
        assert statuses == [] or (len(statuses) == 1 and 400 <= statuses[0] < 500), statuses
        assert outcome.seen == ()
    elif verdict == "accepted":
        assert statuses == [200]
        (seen,) = outcome.seen
        # Whatever else, one Host reached the app (a Host trailer is not merged in).
        hosts = [value for name, value in seen.headers if name in (b"host", b"HTTP_HOST")]
        assert len(hosts) == 1
        assert b"," not in hosts[0]
    else:
        answered = 0
        for expected in case.requests:
            if expected.missing_host:
                assert statuses[answered:] == [400]
                assert b"Host" in outcome.responses[answered].body
                break
            assert statuses[answered] == 200
            assert comparable(outcome.seen[answered], interface) == expected_seen(
                expected, interface
            )
            answered += 1
        else:
            assert len(statuses) == len(case.requests)
        assert len(outcome.seen) == answered


# -- bare http11.Connection --------------------------------------------------------------------


def replay(raw: bytes, cuts: list[int], limits: Limits) -> list[Summary]:
    """Feed `raw` cut at `cuts`, answering each complete request; the events, Data joined."""
    conn = Connection(limits)
    events: list[Event] = []
    bounds = [0, *sorted(set(cuts)), len(raw)]
    for start, end in itertools.pairwise(bounds):
        conn.receive_data(raw[start:end])
        while True:
            event = conn.next_event()
            if event is None:
                if not (conn.response_pending and isinstance(events[-1], EndOfMessage)):
                    break
                conn.response_head(200, [(b"content-length", b"0")], b"")
                conn.end_bytes()
                if not conn.start_next_cycle():
                    return summary(events)
                continue
            events.append(event)
            if isinstance(event, ProtocolFailure):
                return summary(events)
    return summary(events)


def expected_events(case: Case) -> list[Summary]:
    """What a Connection must produce for a valid case under the policy above."""
    out: list[Summary] = []
    for expected in case.requests:
        if expected.missing_host:
            return [*out, ("failure", 400, True)]
        out.append(("request", expected.method, expected.target, expected.version))
        if expected.body:
            out.append(("data", expected.body))
        out.append(("end",))
    if case.verdict == "truncated":
        out.pop()  # the body never ends
    return out


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in CASES])
def test_connection_replay(case: Case) -> None:
    raw = case.raw
    whole = replay(raw, [], case.limits)
    assert replay(raw, list(range(1, len(raw))), case.limits) == whole
    rng = random.Random(case.id)
    for _ in range(3):
        cuts = rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.randint(1, 12)))
        assert replay(raw, cuts, case.limits) == whole, cuts
    if case.unsupported_knobs:
        return  # aserve's verdict on these is not gunicorn's with that knob: nothing to compare
    verdict = case.verdict
    if verdict in ("valid", "truncated"):
        # Raw targets byte for byte; header lists as sent, names lower-cased.
        assert [e[:4] for e in whole] == expected_events(case)
        headers = [e[4] for e in whole if e[0] == "request"]
        for got, expected in zip(headers, case.requests, strict=False):
            assert isinstance(got, tuple)
            assert visible_headers(got) == visible_headers(expected.headers)
    elif verdict == "accepted":
        assert [e[0] for e in whole][-1] == "end"
    else:
        # Refused: a 4xx failure, or the input ends before any request is complete.
        last = whole[-1] if whole else ("nothing",)
        if last[0] == "failure":
            assert last[1] in range(400, 500) or last[1] == REFUSED_STATUS.get(case.id), last
        else:
            assert ("end",) not in whole, whole


# -- tallies -----------------------------------------------------------------------------------


def tally(replayer: Replayer, interface: str) -> dict[str, int]:
    """How many cases ended which way over a socket."""
    counts: Counter[str] = Counter()
    for case in CASES:
        if case.unsupported_knobs:
            counts[f"skipped: no {', '.join(case.unsupported_knobs)} knob"] += 1
            continue
        if case.id in HANGS:
            counts["known bug (xfail)"] += 1
            continue
        outcome = replayer.outcome(case, interface)
        statuses = outcome.statuses
        end = "hung" if outcome.hung else "closed"
        verdict = case.verdict
        if verdict in ("invalid", "accepted"):
            counts[f"{verdict}: answered {statuses[0] if statuses else 'nothing'}, {end}"] += 1
        elif verdict != "valid":
            counts[f"valid, {verdict}: answered {statuses or 'nothing'}, {end}"] += 1
        elif any(r.missing_host for r in case.requests):
            missing = statuses[-1:] == [400] and b"Host" in outcome.responses[-1].body
            counts[f"valid: {'answered 400 for a missing Host' if missing else statuses}"] += 1
        elif statuses == [200] * len(case.requests):
            counts[f"valid: accepted, {len(statuses)} response(s), {end}"] += 1
        else:
            counts[f"valid: answered {statuses}, {end}"] += 1
    return dict(counts)


@pytest.mark.parametrize("interface", ["asgi", "wsgi"])
def test_tallies(replayer: Replayer, interface: str) -> None:
    # Observed on both interfaces; update deliberately when aserve's verdicts change.
    assert tally(replayer, interface) == {
        "valid: accepted, 1 response(s), closed": 28,
        "valid: answered 400 for a missing Host": 18,
        "valid, refused: answered [400], closed": 3,
        "valid, refused: answered [501], closed": 2,
        "valid, truncated: answered [400], closed": 1,
        "invalid: answered 400, closed": 55,
        "invalid: answered 414, closed": 1,
        "invalid: answered 431, closed": 8,
        "invalid: answered nothing, closed": 1,
        "accepted: answered 200, closed": 2,
        "skipped: no proxy_protocol knob": 8,
        "skipped: no header_map knob": 3,
        "skipped: no permit_obsolete_folding knob": 3,
        "skipped: no strip_header_spaces knob": 1,
        "skipped: no casefold_http_method, permit_unconventional_http_method knob": 1,
        "skipped: no permit_unconventional_http_method knob": 1,
        "skipped: no forwarded_allow_ips knob": 1,
    }
