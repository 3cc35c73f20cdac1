"""Proxy headers, sans-IO: which peers are trusted (`--forwarded-allow-ips`), and what a trusted
proxy's `Forwarded` (RFC 7239) or `X-Forwarded-For/-Proto/-Host` fields say of the client."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from aserve.types import Headers

# The request fields that make a request worth a look (http11 flags a request carrying one).
FIELDS = frozenset({b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})

_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
# RFC 9110 §7.2's Host: a reg-name or IPv4 address, or a bracketed IPv6 one, and a port.
_HOST = re.compile(r"(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
# RFC 7239 §4: forwarded-pair = token "=" ( token / quoted-string ).
_PAIR = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)=("(?:[^"\\]|\\.)*"|[^;,"\s]*)\s*')
_MEMO_SIZE = 1024


class Trusted:
    """The peers whose proxy headers count: addresses and networks, or every peer (`*`)."""

    __slots__ = ("_everyone", "_memo", "_networks")

    def __init__(self, spec: str) -> None:
        entries = [entry.strip() for entry in spec.split(",") if entry.strip()]
        self._everyone = "*" in entries
        # ValueError for an entry that is neither (Config refuses those with a message).
        self._networks = [
            ipaddress.ip_network(entry, strict=False) for entry in entries if entry != "*"
        ]
        self._memo: dict[str, bool] = {}

    def __contains__(self, host: str) -> bool:
        if self._everyone:
            return True
        known = self._memo.get(host)
        if known is not None:
            return known
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            trusted = False
        else:
            trusted = any(address in network for network in self._networks)
        if len(self._memo) < _MEMO_SIZE:
            self._memo[host] = trusted
        return trusted

    def trusts(self, peer: tuple[str, int] | None) -> bool:
        """Whether a connection from `peer` is a trusted proxy's. A Unix socket's peer (None)
        is: only local processes allowed by the file's permissions reach it, as over
        loopback."""
        return peer is None or peer[0] in self


@dataclass(frozen=True, slots=True)
class Forwarded:
    """What a trusted proxy says of the request: each None where it said nothing valid."""

    client: tuple[str, int] | None
    scheme: str | None
    host: str | None


def forwarded(headers: Headers, trusted: Trusted) -> Forwarded:
    """The client, scheme and host a chain of proxies reports, `Forwarded` before the
    X-Forwarded fields. Proxies append, so the list is read from the right: the first entry
    from a peer not trusted is the client (uvicorn reads X-Forwarded-For so since 0.30);
    when every entry is trusted, the left-most."""
    fields: dict[bytes, list[str]] = {}
    for name, value in headers:
        if name in FIELDS:
            # RFC 9110 §5.3: repeated fields are one list.
            fields.setdefault(name, []).append(value.decode("latin-1"))
    standard = fields.get(b"forwarded")
    if standard is not None:
        return _from_forwarded(",".join(standard), trusted)
    chain = _items(fields.get(b"x-forwarded-for"))
    index = _client_index(chain, trusted) if chain else -1
    client = _node(chain[index]) if chain else None
    proto = _at(_items(fields.get(b"x-forwarded-proto")), index, len(chain))
    host = _at(_items(fields.get(b"x-forwarded-host")), index, len(chain))
    return Forwarded(client, _scheme(proto), _host(host))


def _items(values: list[str] | None) -> list[str]:
    if not values:
        return []
    return [item.strip() for item in ",".join(values).split(",")]


def _client_index(chain: list[str], trusted: Trusted) -> int:
    for index in range(len(chain) - 1, -1, -1):
        node = _node(chain[index])
        if node is None or node[0] not in trusted:
            return index
    return 0


def _at(items: list[str], index: int, chain_length: int) -> str | None:
    """The entry of a list parallel to X-Forwarded-For at the client's position; the last
    (the nearest proxy's) when the lists do not line up."""
    if not items:
        return None
    if len(items) == chain_length and index >= 0:
        return items[index]
    return items[-1]


def _from_forwarded(value: str, trusted: Trusted) -> Forwarded:
    elements = [
        pairs for element in _split_elements(value) if (pairs := _pairs(element)) is not None
    ]
    if not elements:
        return Forwarded(None, None, None)
    chosen = elements[0]
    for element in reversed(elements):
        node = _node(element.get("for", ""))
        if node is None or node[0] not in trusted:
            chosen = element
            break
    return Forwarded(
        _node(chosen.get("for", "")), _scheme(chosen.get("proto")), _host(chosen.get("host"))
    )


def _split_elements(value: str) -> list[str]:
    """Split at the commas outside quoted strings (a quoted IPv6 node holds none, but a
    quoted host or extension value may)."""
    elements, start, quoted, escaped = [], 0, False, False
    for index, char in enumerate(value):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            elements.append(value[start:index])
            start = index + 1
    elements.append(value[start:])
    return elements


def _pairs(element: str) -> dict[str, str] | None:
    """An element's parameters (names lower-cased, RFC 7239 §4); None if it is malformed."""
    pairs: dict[str, str] = {}
    for pair in _quoted_split(element):
        if not pair.strip():
            continue
        match = _PAIR.fullmatch(pair)
        if match is None:
            return None
        name, value = match.group(1).lower(), match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        pairs[name] = value
    return pairs


def _quoted_split(element: str) -> list[str]:
    """The pairs of an element, split at the semicolons outside quoted strings."""
    return [m.group(0) for m in re.finditer(r'(?:"(?:[^"\\]|\\.)*"|[^;"])+', element)]


def _node(text: str) -> tuple[str, int] | None:
    """An address and port from an X-Forwarded-For entry or a `for=` node (RFC 7239 §6):
    `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]:4711`, a bare IPv6 address; None for
    `unknown`, an obfuscated `_name` or anything else."""
    port = 0
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            return None
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                return None
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        if not number.isdigit():
            return None
        port = int(number)
    else:
        host = text
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if port > 65535:
        return None
    return str(address), port


def _scheme(value: str | None) -> str | None:
    return _SCHEMES.get(value.strip().lower()) if value is not None else None


def _host(value: str | None) -> str | None:
    if value is None or not _HOST.fullmatch(value):
        return None
    return value
