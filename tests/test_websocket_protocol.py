"""protocols/websocket, bytes in and bytes out: the handshake checked and answered, messages
read (on the fast path and through the library), frames written, closes."""

from __future__ import annotations

import base64

import pytest
from websockets.frames import Opcode
from websockets.protocol import OPEN, Protocol, Side

from aserve.errors import AppProtocolError
from aserve.protocols.websocket import Closed, Handshake, Session, Settings
from aserve.types import Headers

KEY = base64.b64encode(b"0123456789abcdef")
HEADERS: Headers = [
    (b"host", b"test"),
    (b"upgrade", b"websocket"),
    (b"connection", b"Upgrade"),
    (b"sec-websocket-key", KEY),
    (b"sec-websocket-version", b"13"),
]


def handshake(
    headers: Headers = HEADERS, *, deflate: bool = False, max_size: int = 1 << 20
) -> Handshake:
    return Handshake(b"GET", b"/chat", "1.1", headers, Settings(max_size, deflate))


def session(max_size: int = 1 << 20) -> Session:
    _, opened = handshake(max_size=max_size).accept(None, [])
    return opened


def client() -> Protocol:
    return Protocol(Side.CLIENT, state=OPEN, max_size=None)


def frames(*messages: str | bytes, fragment: bool = False) -> bytes:
    peer = client()
    for message in messages:
        data = message.encode() if isinstance(message, str) else message
        send = peer.send_text if isinstance(message, str) else peer.send_binary
        if fragment:
            send(data[:2], fin=False)
            peer.send_continuation(data[2:], fin=True)
        else:
            send(data)
    return b"".join(peer.data_to_send())


def read_back(data: bytes) -> list[tuple[Opcode, bytes]]:
    """What a client makes of the bytes a server sent."""
    peer = client()
    peer.receive_data(data)
    return [(frame.opcode, bytes(frame.data)) for frame in peer.events_received()]  # type: ignore[union-attr]


# -- the handshake -----------------------------------------------------------------------------


def test_a_valid_handshake_offers_the_subprotocols_and_accepts() -> None:
    offered = handshake([*HEADERS, (b"sec-websocket-protocol", b"chat, superchat")])
    assert offered.refusal is None
    assert offered.subprotocols == ["chat", "superchat"]
    head, _ = offered.accept("superchat", [(b"x-room", b"1")])
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    # RFC 6455 §4.2.2: the accept value for the key above.
    assert b"\r\nSec-WebSocket-Accept: " in head
    assert b"\r\nSec-WebSocket-Protocol: superchat\r\n" in head
    assert b"\r\nx-room: 1\r\n" in head
    assert b"\r\nServer: aserve\r\n" in head
    assert head.endswith(b"\r\n\r\n")


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ((b"sec-websocket-version", b"8"), 400),
        ((b"sec-websocket-key", b"short"), 400),
        ((b"upgrade", b"h2c"), 426),
    ],
)
def test_an_invalid_handshake_is_refused(change: tuple[bytes, bytes], status: int) -> None:
    headers = [change if name == change[0] else (name, value) for name, value in HEADERS]
    refusal = handshake(headers).refusal
    assert refusal is not None
    assert refusal[0] == status
    assert b"Failed to open a WebSocket connection" in refusal[2]


@pytest.mark.parametrize(
    ("subprotocol", "headers"),
    [
        ("unoffered", []),
        (None, [(b"x-bad", b"a\r\nset-cookie: x")]),
        (None, [(b"sec-websocket-accept", b"forged")]),
        (None, [(b"bad name", b"x")]),
    ],
)
def test_the_apps_choices_are_checked(subprotocol: str | None, headers: Headers) -> None:
    with pytest.raises(AppProtocolError):
        handshake().accept(subprotocol, headers)


# -- reading -----------------------------------------------------------------------------------


def test_messages_of_every_length_form_arrive_whole() -> None:
    opened = session()
    messages: list[str | bytes] = ["short", "é" * 100, b"\x00" * 70000, ""]
    assert opened.receive_data(frames(*messages)) == messages


def test_a_frame_split_across_reads() -> None:
    opened = session()
    data = frames("first", "second", "third")
    cut = len(frames("first")) + 3  # in the middle of the second frame
    assert opened.receive_data(data[:cut]) == ["first"]
    assert opened.receive_data(data[cut : cut + 1]) == []
    assert opened.receive_data(data[cut + 1 :]) == ["second", "third"]
    assert opened.receive_data(frames("fourth")) == ["fourth"]


def test_control_frames_between_messages_and_fragments() -> None:
    opened = session()
    peer = client()
    peer.send_text(b"one")
    peer.send_ping(b"are you there")
    peer.send_binary(b"fr", fin=False)
    peer.send_ping(b"still")
    peer.send_continuation(b"agment", fin=True)
    peer.send_text(b"two")
    assert opened.receive_data(b"".join(peer.data_to_send())) == ["one", b"fragment", "two"]
    pongs = read_back(b"".join(opened.data_to_send()))
    assert pongs == [(Opcode.PONG, b"are you there"), (Opcode.PONG, b"still")]


def test_fragmented_text_is_decoded_whole() -> None:
    opened = session()
    assert opened.receive_data(frames("héllo wörld", fragment=True)) == ["héllo wörld"]


def test_invalid_utf8_closes_with_1007() -> None:
    peer = client()
    peer.send_text(b"\xff\xfe")
    events = session().receive_data(b"".join(peer.data_to_send()))
    assert len(events) == 1
    assert isinstance(events[0], Closed)
    assert events[0].code == 1007


def test_a_message_over_the_limit_closes_with_1009() -> None:
    opened = session(max_size=100)
    assert opened.receive_data(frames("x" * 100)) == ["x" * 100]
    (closed,) = opened.receive_data(frames("x" * 101))
    assert isinstance(closed, Closed)
    assert closed.code == 1009
    sent = read_back(b"".join(opened.data_to_send()))
    assert sent[0][0] is Opcode.CLOSE
    assert not opened.open


def test_the_peers_close_and_a_close_in_a_fragmented_message() -> None:
    opened = session()
    peer = client()
    peer.send_text(b"unfinished", fin=False)
    peer.send_close(1000, "bye")
    assert opened.receive_data(b"".join(peer.data_to_send())) == [Closed(1000, "bye")]
    assert read_back(b"".join(opened.data_to_send()))[0] == (Opcode.CLOSE, b"\x03\xe8bye")


def test_an_eof_without_a_close_is_1006() -> None:
    opened = session()
    assert opened.receive_eof() == [Closed(1006, "")]


# -- writing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("message", ["text é", b"bytes", b"x" * 300, "y" * 70000])
def test_frames_written_directly_read_back(message: str | bytes) -> None:
    frame = session().frame(message)
    assert frame is not None
    opcode = Opcode.TEXT if isinstance(message, str) else Opcode.BINARY
    data = message.encode() if isinstance(message, str) else message
    assert read_back(frame) == [(opcode, data)]


def test_the_library_writes_once_closing_or_compressing() -> None:
    opened = session()
    opened.close(4000, "done")
    assert opened.frame("late") is None
    deflating = handshake(
        [*HEADERS, (b"sec-websocket-extensions", b"permessage-deflate")], deflate=True
    )
    head, compressed = deflating.accept(None, [])
    assert b"permessage-deflate" in head
    assert compressed.frame("compress me") is None


def test_close_codes_an_endpoint_may_not_send_are_refused() -> None:
    opened = session()
    with pytest.raises(AppProtocolError):
        opened.close(1005, "")
    opened.close(4001, "é" * 100)  # a long reason is cut at a character boundary
    ((opcode, payload),) = read_back(b"".join(opened.data_to_send()))
    assert opcode is Opcode.CLOSE
    assert len(payload) <= 125
    payload[2:].decode()
