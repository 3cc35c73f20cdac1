"""Request targets: the raw path and query of each form, and the bounded memo of parsed targets
that the runners share."""

from __future__ import annotations

import pytest

from aserve.protocols import target as target_module
from aserve.protocols.target import decode_path, decode_path_latin1, split_target
from aserve.runners import asgi
from aserve.runners.asgi import parse_target


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/a/b?x=1&y=2", (b"/a/b", b"x=1&y=2")),
        (b"/a?x=1#frag", (b"/a", b"x=1")),
        (b"/a#frag?not-a-query", (b"/a", b"")),
        (b"http://example.com/p?q=1", (b"/p", b"q=1")),
        (b"http://example.com", (b"/", b"")),
        (b"*", (b"*", b"")),
    ],
)
def test_split_target(target: bytes, expected: tuple[bytes, bytes]) -> None:
    assert split_target(target) == expected


def test_parsed_targets_are_remembered_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(target_module, "TARGET_MEMO_MAX", 2)
    memo: asgi.TargetMemo = {}
    assert parse_target(b"/caf%C3%A9?x=%20", memo) == (b"/caf%C3%A9", b"x=%20", "/caf\u00e9")
    assert list(memo) == [b"/caf%C3%A9?x=%20"]
    # A remembered target is not parsed again. (Not checked with `is`: the compiled build
    # returns a tuple as a new object to Python callers, though its own code reads the one
    # in the memo.)
    memo[b"/seen"] = (b"/from-memo", b"", "/from-memo")
    assert parse_target(b"/seen", memo) == (b"/from-memo", b"", "/from-memo")
    del memo[b"/seen"]
    parse_target(b"/b", memo)
    assert len(memo) == 2
    assert parse_target(b"http://h/c?d", memo) == (b"/c", b"d", "/c")  # full: emptied first
    assert list(memo) == [b"http://h/c?d"]


@pytest.mark.parametrize(
    ("raw", "text", "latin1"),
    [
        (b"/plain", "/plain", "/plain"),
        (b"/caf%C3%A9", "/caf\u00e9", "/caf\u00c3\u00a9"),
        (b"/a%2Fb", "/a/b", "/a/b"),
        (b"/%FF", "/\ufffd", "/\u00ff"),
    ],
)
def test_decoded_paths(raw: bytes, text: str, latin1: str) -> None:
    # ASGI's path is UTF-8 text; PEP 3333's PATH_INFO is the decoded bytes as latin-1.
    assert decode_path(raw) == text
    assert decode_path_latin1(raw) == latin1
