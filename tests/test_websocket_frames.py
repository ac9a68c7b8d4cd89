"""Frames read by the server itself (websocket.py `read_frames`): a whole text or binary
message in one masked frame is parsed without the websockets library when no extension was
negotiated; every other frame goes to the library whole and in order. These tests talk raw
frames (tests/apps/ws_apps.py RawWS, which offers no extension) so that the server's own
reader is the one at work, and check what must hold whichever reader parsed a frame: the
messages, their order among control frames and fragments, the limits and the failures.
"""

from __future__ import annotations

import socket
import struct
from functools import partial
from typing import Any

import pytest
from websockets.frames import Frame, Opcode

from fastserve.protocols.websocket import VIEW_SIZE, frame_head
from tests.apps.core_apps import Probe
from tests.apps.ws_apps import (
    RawWS,
    echo_app,
    events_of_a_closing_burst,
    events_to_disconnect,
    frame_bytes,
    recorder,
)
from tests.helpers import Serve, wait_until


def server_side(srv: Any) -> Any:
    """The server's WebSocketProtocol of the one WebSocket open."""
    state = srv.server.state
    found: list[Any] = []

    def one() -> bool:
        found[:] = [c for c in state.connections if type(c).__name__ == "WebSocketProtocol"]
        return len(found) == 1 and getattr(found[0], "plain", False)

    wait_until(one, "the WebSocket accepted")
    return found[0]


def holds(ws: Any, count: int) -> bool:
    """The server's reader keeps `count` bytes of a frame not whole yet."""
    return len(ws.rx) == count


def test_frames_of_every_kind_in_one_read_keep_their_order(serve: Serve) -> None:
    """Own-parsed messages (7-bit, 16-bit and 64-bit lengths), a ping and a fragmented
    message with a ping between its fragments, all in one send: each echo in order, the
    pongs where the pings were."""
    big = bytes(range(256)) * 300  # 76,800 bytes: a 64-bit length
    burst = b"".join(
        [
            frame_bytes(Opcode.TEXT, "héllo".encode()),
            frame_bytes(Opcode.BINARY, b"b" * 300),  # a 16-bit length
            frame_bytes(Opcode.PING, b"p1"),
            frame_bytes(Opcode.TEXT, b"frag", fin=False),
            frame_bytes(Opcode.PING, b"p2"),
            frame_bytes(Opcode.CONT, b"mented", fin=True),
            frame_bytes(Opcode.BINARY, big),
            frame_bytes(Opcode.TEXT, b"last"),
        ]
    )
    with serve(echo_app()) as srv, RawWS(srv.port) as raw:
        raw.sock.sendall(burst)
        got = [raw.recv_frame() for _ in range(7)]
    # A pong answers as its ping is read; an echo waits for the app: pongs may come first.
    pongs = [payload for opcode, _, payload in got if opcode == Opcode.PONG]
    echoes = [(opcode, payload) for opcode, _, payload in got if opcode != Opcode.PONG]
    assert pongs == [b"p1", b"p2"]
    assert echoes == [
        (Opcode.TEXT, "héllo".encode()),
        (Opcode.BINARY, b"b" * 300),
        (Opcode.TEXT, b"fragmented"),
        (Opcode.BINARY, big),
        (Opcode.TEXT, b"last"),
    ]


@pytest.mark.parametrize("opcode", [Opcode.BINARY, Opcode.TEXT], ids=["binary", "text"])
@pytest.mark.parametrize("size", [5, 300, 70_000], ids=["7-bit", "16-bit", "64-bit"])
def test_a_frame_in_pieces_is_kept_until_whole(serve: Serve, size: int, opcode: Opcode) -> None:
    """A frame cut inside its header, its length, its mask and its payload: each piece read
    on its own (the server is seen holding exactly what came), one message at the end; the
    frame behind it in the last read is a message too."""
    payload = bytes(48 + i % 43 for i in range(size))  # (ASCII: valid text too)
    frame = frame_bytes(opcode, payload)
    cuts = sorted(
        cut
        for cut in {1, 2, 3, 4, 5, 7, 9, 11, 13, 15, len(frame) // 2, len(frame) - 1}
        if cut < len(frame)
    )
    with serve(echo_app()) as srv, RawWS(srv.port) as raw:
        raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ws = server_side(srv)
        sent = 0
        for cut in cuts:
            raw.sock.sendall(frame[sent:cut])
            sent = cut
            wait_until(partial(holds, ws, cut), f"the server to hold {cut} bytes")
        raw.sock.sendall(frame[sent:] + frame_bytes(Opcode.BINARY, b"next"))
        assert raw.recv_frame() == (opcode, True, payload)
        assert raw.recv_frame() == (Opcode.BINARY, True, b"next")
        assert len(ws.rx) == 0


def test_payloads_on_both_sides_of_the_view_size_in_one_read(serve: Serve) -> None:
    """Payloads from VIEW_SIZE on are unmasked from a view of the read, shorter ones from a
    slice: text and binary, just under, at and well over it, each echoed byte for byte."""
    sizes = (VIEW_SIZE - 1, VIEW_SIZE, 3 * VIEW_SIZE + 5)
    texts = [("é" * size)[: size // 2].encode()[:size] for size in sizes]
    blobs = [bytes(range(256)) * (size // 256) + bytes(size % 256) for size in sizes]
    frames = [(Opcode.TEXT, t) for t in texts] + [(Opcode.BINARY, b) for b in blobs]
    with serve(echo_app()) as srv, RawWS(srv.port) as raw:
        raw.sock.sendall(b"".join(frame_bytes(opcode, data) for opcode, data in frames))
        got = [raw.recv_frame() for _ in frames]
    assert [(opcode, payload) for opcode, _, payload in got] == frames
    assert [len(b) for b in blobs] == list(sizes)


def test_invalid_utf8_in_a_frame_read_in_pieces_closes_1007(serve: Serve) -> None:
    frame = frame_bytes(Opcode.TEXT, b"a" * 40_000 + b"\xff")
    probe = Probe()
    with serve(recorder(probe)) as srv, RawWS(srv.port) as raw:
        raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ws = server_side(srv)
        raw.sock.sendall(frame[:20_000])
        wait_until(partial(holds, ws, 20_000), "the server to hold the first piece")
        raw.sock.sendall(frame[20_000:] + frame_bytes(Opcode.TEXT, b"never"))
        assert raw.recv_close()[0] == 1007
        assert raw.at_eof()
        got = events_to_disconnect(probe)
    assert [m["type"] for m in got] == ["websocket.disconnect"]


@pytest.mark.parametrize("size", [200, 70_000], ids=["16-bit", "64-bit"])
def test_a_frame_that_starts_inside_a_read_is_kept_from_its_own_first_byte(
    serve: Serve, size: int
) -> None:
    """A whole message, then the first bytes of the next frame, in one read: the server keeps
    only the next frame's bytes, and each message comes out once."""
    first = frame_bytes(Opcode.TEXT, b"whole")
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    second = frame_bytes(Opcode.BINARY, payload)
    cut = len(second) // 2
    with serve(echo_app()) as srv, RawWS(srv.port) as raw:
        raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ws = server_side(srv)
        raw.sock.sendall(first + second[:cut])
        wait_until(partial(holds, ws, cut), "the server to hold the second frame's start")
        raw.sock.sendall(second[cut:])
        assert raw.recv_frame() == (Opcode.TEXT, True, b"whole")
        assert raw.recv_frame() == (Opcode.BINARY, True, payload)
        raw.send(Opcode.TEXT, b"after")
        assert raw.recv_frame() == (Opcode.TEXT, True, b"after")


def test_a_large_fragment_read_in_pieces_goes_to_the_library(serve: Serve) -> None:
    """A frame kept until whole that is not a whole message (here the first fragment of
    one) is the library's: the message comes out whole once its last fragment came."""
    first = frame_bytes(Opcode.BINARY, b"1" * 50_000, fin=False)
    with serve(echo_app()) as srv, RawWS(srv.port) as raw:
        raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ws = server_side(srv)
        raw.sock.sendall(first[:10_000])
        wait_until(partial(holds, ws, 10_000), "the server to hold the first piece")
        raw.sock.sendall(first[10_000:] + frame_bytes(Opcode.CONT, b"2" * 10))
        assert raw.recv_frame() == (Opcode.BINARY, True, b"1" * 50_000 + b"2" * 10)


def test_a_frame_after_a_fragmented_message_in_the_same_read_is_kept_whole(
    serve: Serve,
) -> None:
    """A fragmented message ends inside a read that also holds the first part of the next
    frame: that part waits with the server's reader, so the next read is taken for the rest
    of the frame, not for a new one. (The payload's bytes where the read is cut look like a
    frame header, which a reader that lost its place would take as one; the mask is zero, so
    they are on the wire as written.)"""
    fake = frame_bytes(Opcode.BINARY, b"bogus")  # a 5-byte frame, masked: 11 bytes
    payload = b"a" * 1000 + fake + b"b" * 2000
    big = bytes([0x82, 0x80 | 126]) + len(payload).to_bytes(2, "big") + bytes(4) + payload
    cut = 8 + 1000  # the header, the mask and 1,000 bytes: the fake header comes next
    first = frame_bytes(Opcode.TEXT, b"frag", fin=False) + frame_bytes(Opcode.CONT, b"mented")
    with serve(echo_app()) as srv, RawWS(srv.port) as raw:
        raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ws = server_side(srv)
        raw.sock.sendall(first + big[:cut])
        assert raw.recv_frame() == (Opcode.TEXT, True, b"fragmented")
        wait_until(partial(holds, ws, cut), "the server to hold the next frame's start")
        raw.sock.sendall(big[cut:] + frame_bytes(Opcode.TEXT, b"after"))
        assert raw.recv_frame() == (Opcode.BINARY, True, payload)
        assert raw.recv_frame() == (Opcode.TEXT, True, b"after")


def test_a_frame_too_big_for_what_a_fragmented_message_has_left_closes_1009_at_once(
    serve: Serve,
) -> None:
    """Inside a fragmented message the limit is what the message has left: a fragment over
    it is refused from its header, as the library would, not kept until whole."""
    with serve(echo_app(), ws_max_size=1000) as srv, RawWS(srv.port) as raw:
        raw.sock.sendall(frame_bytes(Opcode.BINARY, b"x" * 600, fin=False))
        raw.sock.sendall(frame_bytes(Opcode.CONT, b"y" * 500)[:8])  # 600 + 500 > 1000
        assert raw.recv_close()[0] == 1009
        assert raw.at_eof()


def test_a_frame_of_exactly_max_size_is_taken_and_one_byte_more_closes_1009(
    serve: Serve,
) -> None:
    with serve(echo_app(), ws_max_size=1000) as srv, RawWS(srv.port) as raw:
        raw.send(Opcode.BINARY, b"x" * 1000)
        assert raw.recv_frame() == (Opcode.BINARY, True, b"x" * 1000)
        # Only the header of the frame too big: the close comes without its payload.
        raw.sock.sendall(frame_bytes(Opcode.BINARY, b"y" * 1001)[:8])
        assert raw.recv_close()[0] == 1009
        assert raw.at_eof()


@pytest.mark.parametrize(
    "header",
    [
        bytes([0x81, 0x05]),  # unmasked, 5 bytes announced and not sent
        bytes([0x83, 0x85]),  # reserved opcode 3
    ],
    ids=["unmasked", "reserved-opcode"],
)
def test_a_bad_header_closes_1002_before_its_payload(serve: Serve, header: bytes) -> None:
    """The library fails these as soon as the two header bytes are read: so must the
    server's own reader, not wait for a payload that may never come."""
    with serve(echo_app()) as srv, RawWS(srv.port) as raw:
        raw.sock.sendall(header)
        assert raw.recv_close()[0] == 1002
        assert raw.at_eof()


def test_a_reserved_bit_without_an_extension_closes_1002(serve: Serve) -> None:
    frame = bytearray(frame_bytes(Opcode.TEXT, b"hi"))
    frame[0] |= 0x40  # RSV1: only permessage-deflate may set it, and none was negotiated
    with serve(echo_app()) as srv, RawWS(srv.port) as raw:
        raw.sock.sendall(bytes(frame))
        assert raw.recv_close()[0] == 1002
        assert raw.at_eof()


def test_invalid_utf8_after_a_good_message_in_one_read_closes_1007(serve: Serve) -> None:
    """The message before is delivered; the one after the bad frame is not (§7.1.7)."""
    burst = b"".join(
        [
            frame_bytes(Opcode.TEXT, b"ok"),
            frame_bytes(Opcode.TEXT, b"\xff\xfe"),
            frame_bytes(Opcode.BINARY, b"never"),
        ]
    )
    got = events_of_a_closing_burst(serve, burst, 1007)
    assert [m.get("text") for m in got[:-1]] == ["ok"]
    assert got[-1]["code"] == 1007


def test_a_close_ends_reading_and_what_follows_is_discarded(serve: Serve) -> None:
    burst = frame_bytes(Opcode.CLOSE, struct.pack("!H", 1000)) + frame_bytes(Opcode.TEXT, b"x")
    with serve(echo_app()) as srv, RawWS(srv.port) as raw:
        raw.send(Opcode.TEXT, b"first")
        assert raw.recv_frame() == (Opcode.TEXT, True, b"first")
        raw.sock.sendall(burst)
        assert raw.recv_frame()[0] == Opcode.CLOSE  # the echo of ours, not a text frame
        assert raw.at_eof()


def test_nothing_after_a_close_in_the_same_read_reaches_the_app(serve: Serve) -> None:
    """RFC 6455 §1.4: after a Close, further data is discarded."""
    burst = b"".join(
        [
            frame_bytes(Opcode.TEXT, b"a"),
            frame_bytes(Opcode.CLOSE, struct.pack("!H", 1000)),
            frame_bytes(Opcode.TEXT, b"after"),
        ]
    )
    got = events_of_a_closing_burst(serve, burst, 1000)
    assert [m.get("text") for m in got[:-1]] == ["a"]
    assert got[-1]["code"] == 1000


def test_a_whole_message_inside_a_fragmented_one_closes_1002(serve: Serve) -> None:
    """A new text frame where a continuation was due (RFC 6455 §5.4), in the same read: the
    library's verdict, not a message."""
    burst = frame_bytes(Opcode.TEXT, b"start", fin=False) + frame_bytes(Opcode.TEXT, b"whole")
    got = events_of_a_closing_burst(serve, burst, 1002)
    assert [m["type"] for m in got] == ["websocket.disconnect"]


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65_535, 65_536, 70_000])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "text"])
def test_frame_head_is_the_librarys_header(binary: bool, length: int) -> None:
    """Without extensions the server writes its frames' headers itself: byte for byte what
    the library's Frame.serialize writes for a server (no mask)."""
    payload = b"x" * length
    frame = Frame(Opcode.BINARY if binary else Opcode.TEXT, payload)
    assert frame_head(binary, length) + payload == frame.serialize(mask=False, extensions=[])
