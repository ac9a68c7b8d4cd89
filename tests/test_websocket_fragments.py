"""Fragmented WebSocket messages (RFC 6455 §5.4) over a real server on both loops: what an
unfinished message costs, and a Close that comes between the fragments of a message.

The client writes masked frames itself (`frame_bytes`), so each test decides exactly how a
message is cut; what the server sends back goes through the websockets library's sans-I/O
`ClientProtocol`, an independent parser that also checks the handshake and every frame.
"""

from __future__ import annotations

import socket
import tracemalloc
from collections import deque

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from tests.apps.core_apps import Probe
from tests.apps.ws_apps import frame_bytes, recorder
from tests.helpers import Serve

TEXT, BINARY, CONT, PING, PONG, CLOSE = (
    Opcode.TEXT,
    Opcode.BINARY,
    Opcode.CONT,
    Opcode.PING,
    Opcode.PONG,
    Opcode.CLOSE,
)


class Peer:
    """A client on a plain socket: raw frames out, the server's parsed by `ClientProtocol`.

    Waiting never passes for an answer: a read that times out raises `TimeoutError`, and
    `at_eof` says False, so a server that stays silent fails the test.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.client = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/"), max_size=None)
        self.events: deque[object] = deque()
        self.client.send_request(self.client.connect())
        self.sock.sendall(b"".join(self.client.data_to_send()))
        response = self.next_event()
        assert isinstance(response, Response) and response.status_code == 101, response

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, opcode: Opcode, payload: bytes, fin: bool = True) -> None:
        self.sock.sendall(frame_bytes(opcode, payload, fin))

    def next_event(self, timeout: float = 5.0) -> object:
        self.sock.settimeout(timeout)
        while not self.events:
            data = self.sock.recv(65536)
            if data:
                self.client.receive_data(data)
            else:
                self.client.receive_eof()
            assert self.client.parser_exc is None, (
                f"invalid from the server: {self.client.parser_exc}"
            )
            self.events.extend(self.client.events_received())
            if not data and not self.events:
                raise EOFError("the server closed the connection")
        return self.events.popleft()

    def recv_frame(self) -> Frame:
        event = self.next_event()
        assert isinstance(event, Frame), event
        return event

    def sync(self, payload: bytes = b"sync") -> None:
        """Ping and wait for the pong: the server has handled every frame sent before."""
        self.send(PING, payload)
        frame = self.recv_frame()
        assert (frame.opcode, bytes(frame.data)) == (PONG, payload)

    def at_eof(self, timeout: float = 5.0) -> bool:
        """True when the server closes TCP within `timeout` and sends nothing more first."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


# -- reassembly and memory --------------------------------------------------------------------

MESSAGES = {
    # Cut every 7 bytes: most of the 2- and 3-byte characters straddle two fragments.
    TEXT: "fragmént ✓ ünïcode ".encode() * 30,
    BINARY: bytes(range(256)) * 3,
}


def as_received(opcode: Opcode, payload: bytes) -> dict[str, object]:
    if opcode is TEXT:
        return {"type": "websocket.receive", "text": payload.decode()}
    return {"type": "websocket.receive", "bytes": payload}


@pytest.mark.parametrize("opcode", [TEXT, BINARY], ids=["text", "binary"])
def test_a_message_in_100_fragments_arrives_whole(serve: Serve, opcode: Opcode) -> None:
    payload = MESSAGES[opcode]
    cuts = [payload[i : i + 7] for i in range(0, 99 * 7, 7)] + [payload[99 * 7 :]]
    assert len(cuts) == 100 and b"".join(cuts) == payload
    probe = Probe()
    with serve(recorder(probe), ws_per_message_deflate=False) as srv, Peer(srv.port) as peer:
        peer.sock.sendall(
            frame_bytes(opcode, cuts[0], fin=False)
            + b"".join(frame_bytes(CONT, cut, fin=False) for cut in cuts[1:-1])
            + frame_bytes(CONT, b"", fin=False)  # empty fragments are allowed (§5.4)
            + frame_bytes(CONT, cuts[-1], fin=True)
        )
        peer.send(opcode, b"next")  # nothing of the first message is left over
        assert probe.get() == as_received(opcode, payload)
        assert probe.get() == as_received(opcode, b"next")


MAX_SIZE = 256 * 1024
BATCH = 500  # fragments a round trip


@pytest.mark.parametrize("opcode", [TEXT, BINARY], ids=["text", "binary"])
def test_tiny_fragments_count_against_max_size_and_close_with_1009(
    serve: Serve, opcode: Opcode
) -> None:
    # Two bytes a fragment: the payload alone would pass MAX_SIZE only after 131,072 of them,
    # while the server's bookkeeping for each (54 to 81 bytes when nothing bounded it) would
    # by then hold ~8 MB. The server must refuse first, having never held more than MAX_SIZE.
    batch = frame_bytes(CONT, b"cd", fin=False) * BATCH
    ping = frame_bytes(PING, b"sync")
    probe = Probe()
    with (
        serve(recorder(probe), ws_max_size=MAX_SIZE, ws_per_message_deflate=False) as srv,
        Peer(srv.port) as peer,
    ):
        # Traced from here: what the server (this process, another thread) allocates and keeps.
        tracing = tracemalloc.is_tracing()
        if not tracing:
            tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            peer.send(opcode, b"ab", fin=False)
            sent = 1
            while True:
                if not peer.events:  # (a Close may be queued behind the last pong)
                    assert sent < MAX_SIZE // 2, "no Close before the payload passed the limit"
                    try:
                        peer.sock.sendall(batch + ping)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # it closed: its Close frame is still ours to read
                    sent += BATCH
                frame = peer.recv_frame()
                if frame.opcode is CLOSE:
                    break
                assert (frame.opcode, bytes(frame.data)) == (PONG, b"sync")
                # The pong left after every fragment before it was handled.
                held = tracemalloc.get_traced_memory()[0] - before
                assert held < MAX_SIZE, f"{held} bytes held for {sent} fragments of 2 bytes"
        finally:
            if not tracing:
                tracemalloc.stop()
        assert Close.parse(frame.data).code == CloseCode.MESSAGE_TOO_BIG
        assert peer.at_eof()
        assert probe.get() == {
            "type": "websocket.disconnect",
            "code": CloseCode.MESSAGE_TOO_BIG,
            "reason": "fragmented message too big",
        }


# -- a Close between fragments ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason"),
    [(1000, ""), (4001, "bye now"), (None, "")],
    ids=["1000", "4001-reason", "no-code"],
)
@pytest.mark.parametrize("opcode", [TEXT, BINARY], ids=["text", "binary"])
@pytest.mark.parametrize("apart", [False, True], ids=["one-write", "fragment-read-first"])
def test_a_close_between_fragments_is_echoed(
    serve: Serve, opcode: Opcode, code: int | None, reason: str, apart: bool
) -> None:
    # RFC 6455 §5.4: control frames may come between fragments; §5.5.1: a Close is answered
    # with a Close, "typically echoing the status code it received" (an empty one, empty).
    close = b"" if code is None else Close(code, reason).serialize()
    probe = Probe()
    with serve(recorder(probe), ws_per_message_deflate=False) as srv, Peer(srv.port) as peer:
        first = frame_bytes(opcode, b"unfinished", fin=False)
        rest = frame_bytes(CLOSE, close) + frame_bytes(CONT, b" message", fin=True)
        if apart:
            peer.sock.sendall(first)
            peer.sync()  # the server holds the first fragment when the Close comes
            peer.sock.sendall(rest)
        else:
            peer.sock.sendall(first + rest)
        frame = peer.recv_frame()
        assert frame.opcode is CLOSE
        assert bytes(frame.data) == close
        # After a Close the server reads nothing more (§1.4), closes TCP (§7.1.1), and the
        # app learns the peer's code, the same as on the wire; the message never arrives.
        assert peer.at_eof()
        expected = CloseCode.NO_STATUS_RCVD if code is None else code
        assert probe.get() == {"type": "websocket.disconnect", "code": expected, "reason": reason}
