"""Request targets (RFC 9112 §3.2): the raw path and query of each form, the decoded path, and
a bounded memo of targets seen lately, shared by every protocol and runner."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar
from urllib.parse import unquote, unquote_to_bytes

# A development server sees the same few URLs over and over: a runner remembers what it made
# of each target, emptying its memo when full.
TARGET_MEMO_MAX = 1024
_Parsed = TypeVar("_Parsed")


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """Raw path and query string of a request target (origin-form or absolute-form)."""
    if target[:1] != b"/" and target != b"*":
        # absolute-form (RFC 9112 §3.2.2): keep the path component only.
        scheme_end = target.find(b"://")
        if scheme_end != -1:
            slash = target.find(b"/", scheme_end + 3)
            target = target[slash:] if slash != -1 else b"/"
    # A fragment is never sent by a conforming client (RFC 9112 §3.2); drop a stray one.
    path, _, query = target.partition(b"#")[0].partition(b"?")
    return path, query


def decode_path(raw_path: bytes) -> str:
    """The percent-decoded path as text (UTF-8 escapes decoded, as the ASGI `path` is)."""
    text = raw_path.decode("latin-1")
    return unquote(text) if "%" in text else text


def decode_path_latin1(raw_path: bytes) -> str:
    """The percent-decoded path bytes as latin-1 text, as PEP 3333 wants `PATH_INFO`."""
    if b"%" not in raw_path:
        return raw_path.decode("latin-1")
    return unquote_to_bytes(raw_path).decode("latin-1")


def remember_target(
    memo: dict[bytes, _Parsed], target: bytes, parse: Callable[[bytes], _Parsed]
) -> _Parsed:
    """`parse(target)`, from `memo` when the target was seen before."""
    parsed = memo.get(target)
    if parsed is None:
        parsed = parse(target)
        if len(memo) >= TARGET_MEMO_MAX:
            memo.clear()
        memo[target] = parsed
    return parsed
