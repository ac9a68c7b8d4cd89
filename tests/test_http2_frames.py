"""RFC 9113's connection and stream errors, frame by frame, over a real socket on both loops.

Each case sends hand-built frames (the `h2` library would refuse to write most of them) after
the preface and reads the server's frames with a small parser: a connection error is a GOAWAY
with the error code and then the close (§5.4.1); a stream error is an RST_STREAM for that
stream with the connection still serving the next request (§5.4.2); frames to be ignored
leave the connection serving. Most rules are zttp's; §5.3.1 and §6.3's PRIORITY checks are
fastserve's (protocols/h2.py: zttp 0.0.35 lets those frames through).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import hpack
import pytest

from tests.apps.core_apps import Receive, Scope, Send
from tests.conftest import LOOPS, RunningServer, run_server
from tests.helpers import sent_and_read, until_closed

pytest.importorskip("zttp")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113 §6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE = 0x0, 0x1, 0x2, 0x3, 0x4, 0x5
PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x6, 0x7, 0x8, 0x9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20

# Error codes (RFC 9113 §7).
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED = 0x1, 0x3, 0x5
FRAME_SIZE_ERROR, COMPRESSION_ERROR = 0x6, 0x9


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One frame: 24-bit length, type, flags, 31-bit stream id, payload (RFC 9113 §4.1)."""
    head = len(payload).to_bytes(3, "big") + bytes([kind, flags])
    return head + stream.to_bytes(4, "big") + payload


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def setting(ident: int, value: int) -> bytes:
    return ident.to_bytes(2, "big") + u32(value)


@dataclass
class Frames:
    """Builds one case's frames; header blocks share one HPACK encoder (its dynamic table
    is the connection's)."""

    encoder: hpack.Encoder = field(default_factory=hpack.Encoder)

    def block(self, fields: list[tuple[str, str]] | None = None, path: str = "/") -> bytes:
        if fields is None:
            fields = [(":method", "GET"), (":scheme", "http"), (":path", path)]
            fields.append((":authority", "t"))
        data: bytes = self.encoder.encode(fields)
        return data

    def get(self, stream: int, path: str = "/") -> bytes:
        return frame(HEADERS, END_HEADERS | END_STREAM, stream, self.block(path=path))

    def post(self, stream: int, path: str = "/hold") -> bytes:
        """A request whose body is still to come (the stream stays open)."""
        fields = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "t")]
        return frame(HEADERS, END_HEADERS, stream, self.block(fields))

    def fields(self, fields: list[tuple[str, str]], flags: int = END_HEADERS | END_STREAM) -> bytes:
        return frame(HEADERS, flags, 1, self.block(fields))


class RawH2:
    """A client that writes bytes and reads frames: (type, flags, stream, payload)."""

    def __init__(self, port: int, start: bytes = PREFACE + frame(SETTINGS, 0, 0)) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buffer = b""
        self.frames: list[tuple[int, int, int, bytes]] = []
        self.sock.sendall(start)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next_frame(self) -> tuple[int, int, int, bytes] | None:
        """The next frame the server sent; None when it closed. Silence is a failure."""
        while len(self.buffer) < 9 or len(self.buffer) < 9 + int.from_bytes(self.buffer[:3]):
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            except TimeoutError:
                raise AssertionError(
                    f"the server sent nothing in time; got {self.frames}"
                ) from None
            if not data:
                return None
            self.buffer += data
        length = int.from_bytes(self.buffer[:3])
        kind, flags = self.buffer[3], self.buffer[4]
        stream = int.from_bytes(self.buffer[5:9]) & 0x7FFFFFFF
        payload = self.buffer[9 : 9 + length]
        self.buffer = self.buffer[9 + length :]
        self.frames.append((kind, flags, stream, payload))
        return kind, flags, stream, payload

    def until(self, kind: int, stream: int | None = None) -> tuple[int, int, int, bytes]:
        while True:
            got = self.next_frame()
            if got is None:
                raise AssertionError(f"closed before frame type {kind}: {self.frames}")
            if got[0] == kind and (stream is None or got[2] == stream):
                return got

    def goaway(self) -> tuple[int, int]:
        """The GOAWAY's (last stream id, error code); the server then closes."""
        payload = self.until(GOAWAY)[3]
        last, code = int.from_bytes(payload[:4]) & 0x7FFFFFFF, int.from_bytes(payload[4:8])
        until_closed(self.sock)
        return last, code

    def reset_code(self, stream: int) -> int:
        return int.from_bytes(self.until(RST_STREAM, stream)[3])

    def served(self, frames: Frames, stream: int) -> bytes:
        """A GET on `stream` gets its whole response (the connection lives on): its body."""
        self.send(frames.get(stream, "/ok"))
        body = b""
        while True:
            _, flags, _, payload = self.until(DATA, stream)
            body += payload
            if flags & END_STREAM:
                return body

    def close(self) -> None:
        self.sock.close()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """/hold waits for the client to go (its stream stays open); anything else is served."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/hold":
        while (await receive())["type"] != "http.disconnect":
            pass
        return
    await send({"type": "http.response.start", "status": 200})
    await send({"type": "http.response.body", "body": b"ok " + scope["path"].encode()})


@pytest.fixture(scope="module", params=LOOPS)
def srv(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """One server per loop for the module: every case is a connection of its own."""
    with run_server(app, loop=request.param) as running:
        yield running


@pytest.fixture
def client(srv: RunningServer) -> Iterator[RawH2]:
    raw = RawH2(srv.port)
    yield raw
    raw.close()


Case = Callable[[Frames], bytes]

REQUEST = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "t")]
PAD = b"\x00" * 4
OPEN = 3  # the stream a case opens (POST /hold) when it needs one

# Connection errors: (RFC section and what is sent, the frames, the GOAWAY's error code).
CONNECTION_ERRORS: list[tuple[str, Case, int]] = [
    (
        "4.2 HEADERS over MAX_FRAME_SIZE",
        lambda f: frame(HEADERS, 0, 1, PAD * 4097),
        FRAME_SIZE_ERROR,
    ),
    # A DATA frame too large and a PRIORITY frame of the wrong size may be stream errors
    # (§4.2, §6.3); zttp makes them connection errors, which §5.4.2 allows.
    (
        "4.2 DATA over MAX_FRAME_SIZE",
        lambda f: f.post(1) + frame(DATA, 0, 1, b"x" * 16385),
        FRAME_SIZE_ERROR,
    ),
    ("4.2 PING of 6 bytes", lambda f: frame(PING, 0, 0, b"123456"), FRAME_SIZE_ERROR),
    (
        "4.3 undecodable header block",
        lambda f: frame(HEADERS, 5, 1, b"\xff" * 8),
        COMPRESSION_ERROR,
    ),
    (
        "4.3 table size update over the setting",
        lambda f: frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\x3f\xe2\x1f" + f.block()),
        COMPRESSION_ERROR,
    ),
    (
        "4.3 PRIORITY inside a header block",
        lambda f: (
            frame(HEADERS, END_STREAM, 1, f.block()) + frame(PRIORITY, 0, 1, u32(0) + b"\x10")
        ),
        PROTOCOL_ERROR,
    ),
    ("5.1 DATA on an idle stream", lambda f: frame(DATA, 0, 1, b"x"), PROTOCOL_ERROR),
    ("5.1 RST_STREAM on an idle stream", lambda f: frame(RST_STREAM, 0, 1, u32(8)), PROTOCOL_ERROR),
    (
        "5.1 WINDOW_UPDATE on an idle stream",
        lambda f: frame(WINDOW_UPDATE, 0, 1, u32(1)),
        PROTOCOL_ERROR,
    ),
    (
        "5.1 CONTINUATION on an idle stream",
        lambda f: frame(CONTINUATION, 4, 1, f.block()),
        PROTOCOL_ERROR,
    ),
    (
        "5.1 CONTINUATION on a half-closed stream",
        lambda f: f.get(1, "/hold") + frame(CONTINUATION, 4, 1, f.block()),
        PROTOCOL_ERROR,
    ),
    ("5.1.1 an even stream id", lambda f: f.get(2), PROTOCOL_ERROR),
    ("5.1.1 a stream id below the last one", lambda f: f.get(5) + f.get(3), PROTOCOL_ERROR),
    (
        "5.3.1 PRIORITY on an idle stream depending on itself",
        lambda f: frame(PRIORITY, 0, 5, u32(5) + b"\x10"),
        PROTOCOL_ERROR,
    ),
    (
        "5.5 unknown frame inside a header block",
        lambda f: frame(HEADERS, END_STREAM, 1, f.block()) + frame(0x20, 0, 1, b"x"),
        PROTOCOL_ERROR,
    ),
    ("6.1 DATA on stream 0", lambda f: frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),
    (
        "6.1 DATA padding as long as the payload",
        lambda f: f.post(1) + frame(DATA, PADDED, 1, b"\x04abc"),
        PROTOCOL_ERROR,
    ),
    ("6.2 HEADERS on stream 0", lambda f: frame(HEADERS, 5, 0, f.block()), PROTOCOL_ERROR),
    (
        "6.2 HEADERS padding longer than the payload",
        lambda f: frame(HEADERS, END_HEADERS | PADDED, 1, b"\xff" + f.block()),
        PROTOCOL_ERROR,
    ),
    (
        "6.2 a header block interrupted by DATA",
        lambda f: frame(HEADERS, 0, 1, f.block()) + frame(DATA, 0, 1, b"x"),
        PROTOCOL_ERROR,
    ),
    (
        "6.2 CONTINUATION for another stream",
        lambda f: frame(HEADERS, 0, 1, f.block()[:2]) + frame(CONTINUATION, 4, 3, f.block()[2:]),
        PROTOCOL_ERROR,
    ),
    ("6.3 PRIORITY on stream 0", lambda f: frame(PRIORITY, 0, 0, u32(1) + b"\x10"), PROTOCOL_ERROR),
    (
        "6.3 PRIORITY of 4 bytes",
        lambda f: f.post(OPEN) + frame(PRIORITY, 0, OPEN, u32(0)),
        FRAME_SIZE_ERROR,
    ),
    ("6.4 RST_STREAM on stream 0", lambda f: frame(RST_STREAM, 0, 0, u32(8)), PROTOCOL_ERROR),
    (
        "6.4 RST_STREAM of 3 bytes",
        lambda f: f.get(1, "/hold") + frame(RST_STREAM, 0, 1, b"\x00\x00\x08"),
        FRAME_SIZE_ERROR,
    ),
    (
        "6.5 SETTINGS ACK with a payload",
        lambda f: frame(SETTINGS, ACK, 0, setting(1, 0)),
        FRAME_SIZE_ERROR,
    ),
    ("6.5 SETTINGS on a stream", lambda f: frame(SETTINGS, 0, 1, setting(1, 0)), PROTOCOL_ERROR),
    ("6.5 SETTINGS of 3 bytes", lambda f: frame(SETTINGS, 0, 0, b"\x00\x01\x00"), FRAME_SIZE_ERROR),
    ("6.5.2 ENABLE_PUSH 2", lambda f: frame(SETTINGS, 0, 0, setting(2, 2)), PROTOCOL_ERROR),
    (
        "6.5.2 INITIAL_WINDOW_SIZE 2^31",
        lambda f: frame(SETTINGS, 0, 0, setting(4, 2**31)),
        FLOW_CONTROL_ERROR,
    ),
    (
        "6.5.2 MAX_FRAME_SIZE 16383",
        lambda f: frame(SETTINGS, 0, 0, setting(5, 16383)),
        PROTOCOL_ERROR,
    ),
    (
        "6.5.2 MAX_FRAME_SIZE 2^24",
        lambda f: frame(SETTINGS, 0, 0, setting(5, 2**24)),
        PROTOCOL_ERROR,
    ),
    ("6.7 PING on a stream", lambda f: frame(PING, 0, 1, PAD * 2), PROTOCOL_ERROR),
    ("6.8 GOAWAY on a stream", lambda f: frame(GOAWAY, 0, 1, u32(0) + u32(0)), PROTOCOL_ERROR),
    (
        "6.9 WINDOW_UPDATE of 0 on stream 0",
        lambda f: frame(WINDOW_UPDATE, 0, 0, u32(0)),
        PROTOCOL_ERROR,
    ),
    (
        "6.9 WINDOW_UPDATE of 3 bytes",
        lambda f: frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"),
        FRAME_SIZE_ERROR,
    ),
    (
        "6.9.1 connection window past 2^31-1",
        lambda f: frame(WINDOW_UPDATE, 0, 0, u32(2**31 - 1)),
        FLOW_CONTROL_ERROR,
    ),
    (
        "6.9.2 INITIAL_WINDOW_SIZE pushing a stream window past 2^31-1",
        lambda f: (
            f.post(OPEN)
            + frame(WINDOW_UPDATE, 0, OPEN, u32(2**31 - 1 - 65535))
            + frame(SETTINGS, 0, 0, setting(4, 65536))
        ),
        FLOW_CONTROL_ERROR,
    ),
    (
        "6.10 CONTINUATION after END_HEADERS",
        lambda f: f.get(1, "/hold") + frame(CONTINUATION, 4, 1, f.block()),
        PROTOCOL_ERROR,
    ),
    (
        "6.10 CONTINUATION on stream 0",
        lambda f: frame(HEADERS, 1, 1, f.block()[:2]) + frame(CONTINUATION, 4, 0, b""),
        PROTOCOL_ERROR,
    ),
    (
        "8.4 PUSH_PROMISE from a client",
        lambda f: frame(PUSH_PROMISE, 4, 1, u32(2) + f.block()),
        PROTOCOL_ERROR,
    ),
]

# Stream errors: (section, frames, the stream reset, the RST_STREAM's error code).
STREAM_ERRORS: list[tuple[str, Case, int, int]] = [
    (
        "5.1 DATA on a half-closed stream",
        lambda f: f.get(1, "/hold") + frame(DATA, 0, 1, b"x"),
        1,
        STREAM_CLOSED,
    ),
    (
        "5.3.1 HEADERS depending on its own stream",
        lambda f: frame(
            HEADERS, END_HEADERS | END_STREAM | PRIORITY_FLAG, 1, u32(1) + b"\x10" + f.block()
        ),
        1,
        PROTOCOL_ERROR,
    ),
    (
        "5.3.1 padded HEADERS depending on its own stream",
        lambda f: frame(
            HEADERS,
            END_HEADERS | END_STREAM | PRIORITY_FLAG | PADDED,
            1,
            b"\x02" + u32(1) + b"\x10" + f.block() + b"\x00\x00",
        ),
        1,
        PROTOCOL_ERROR,
    ),
    (
        "5.3.1 PRIORITY of an open stream depending on itself",
        lambda f: f.post(OPEN) + frame(PRIORITY, 0, OPEN, u32(OPEN) + b"\x10"),
        OPEN,
        PROTOCOL_ERROR,
    ),
    (
        "6.9 WINDOW_UPDATE of 0 on a stream",
        lambda f: f.post(OPEN) + frame(WINDOW_UPDATE, 0, OPEN, u32(0)),
        OPEN,
        PROTOCOL_ERROR,
    ),
    (
        "6.9.1 stream window past 2^31-1",
        lambda f: f.post(OPEN) + frame(WINDOW_UPDATE, 0, OPEN, u32(2**31 - 1)),
        OPEN,
        FLOW_CONTROL_ERROR,
    ),
    (
        "8.1 DATA shorter than content-length",
        lambda f: (
            frame(
                HEADERS,
                END_HEADERS,
                1,
                f.block(
                    [
                        (":method", "POST"),
                        (":scheme", "http"),
                        (":path", "/"),
                        (":authority", "t"),
                        ("content-length", "5"),
                    ]
                ),
            )
            + frame(DATA, END_STREAM, 1, b"abc")
        ),
        1,
        PROTOCOL_ERROR,
    ),
    (
        "8.1 trailers with a pseudo-header",
        lambda f: (
            f.post(1) + frame(HEADERS, END_HEADERS | END_STREAM, 1, f.block([(":path", "/x")]))
        ),
        1,
        PROTOCOL_ERROR,
    ),
    (
        "8.1 trailers that do not end the stream",
        lambda f: f.post(1) + frame(HEADERS, END_HEADERS, 1, f.block([("x-t", "1")])),
        1,
        PROTOCOL_ERROR,
    ),
    ("8.2 an upper-case name", lambda f: f.fields([*REQUEST, ("X-Up", "1")]), 1, PROTOCOL_ERROR),
    (
        "8.2.2 connection",
        lambda f: f.fields([*REQUEST, ("connection", "close")]),
        1,
        PROTOCOL_ERROR,
    ),
    (
        "8.2.2 te other than trailers",
        lambda f: f.fields([*REQUEST, ("te", "gzip")]),
        1,
        PROTOCOL_ERROR,
    ),
    (
        "8.3 an unknown pseudo-header",
        lambda f: f.fields([*REQUEST, (":foo", "1")]),
        1,
        PROTOCOL_ERROR,
    ),
    (
        "8.3 a response pseudo-header",
        lambda f: f.fields([*REQUEST, (":status", "200")]),
        1,
        PROTOCOL_ERROR,
    ),
    (
        "8.3 a pseudo-header after a field",
        lambda f: f.fields([*REQUEST[:3], ("x", "1"), REQUEST[3]]),
        1,
        PROTOCOL_ERROR,
    ),
    ("8.3 :method twice", lambda f: f.fields([*REQUEST, (":method", "GET")]), 1, PROTOCOL_ERROR),
    ("8.3.1 no :method", lambda f: f.fields(REQUEST[1:]), 1, PROTOCOL_ERROR),
    ("8.3.1 no :scheme", lambda f: f.fields([REQUEST[0], *REQUEST[2:]]), 1, PROTOCOL_ERROR),
    ("8.3.1 no :path", lambda f: f.fields([*REQUEST[:2], REQUEST[3]]), 1, PROTOCOL_ERROR),
    (
        "8.3.1 an empty :path",
        lambda f: f.fields([*REQUEST[:2], (":path", ""), REQUEST[3]]),
        1,
        PROTOCOL_ERROR,
    ),
    (
        "RFC 8441 §4 a :protocol other than websocket",
        lambda f: f.fields(
            [(":method", "CONNECT"), (":protocol", "webtransport"), *REQUEST[1:]], END_HEADERS
        ),
        1,
        PROTOCOL_ERROR,
    ),
    (
        "RFC 8441 §4 :protocol websocket on a GET",
        lambda f: f.fields([*REQUEST, (":protocol", "websocket")], END_HEADERS),
        1,
        PROTOCOL_ERROR,
    ),
    (
        "8.5 a plain CONNECT",
        lambda f: f.fields([(":method", "CONNECT"), (":authority", "x:443")], END_HEADERS),
        1,
        PROTOCOL_ERROR,
    ),
]

# Frames to ignore (or answer): the connection serves the next request as if they had not come.
IGNORED: list[tuple[str, Case]] = [
    ("5.5 an unknown frame type", lambda f: frame(0x20, 0, 0, b"anything")),
    ("5.5 an unknown flag", lambda f: frame(PING, 0x80, 0, PAD * 2)),
    ("6.3 PRIORITY on an idle stream", lambda f: frame(PRIORITY, 0, 9, u32(0) + b"\x10")),
    ("6.5.2 an unknown setting", lambda f: frame(SETTINGS, 0, 0, setting(0xFF, 1))),
    ("6.7 an unsolicited PING ACK", lambda f: frame(PING, ACK, 0, PAD * 2)),
    ("8.2.2 te: trailers", lambda f: f.fields([*REQUEST, ("te", "trailers")])),
]


@pytest.mark.parametrize(
    ("case", "code"), [c[1:] for c in CONNECTION_ERRORS], ids=[c[0] for c in CONNECTION_ERRORS]
)
def test_connection_errors(client: RawH2, case: Case, code: int) -> None:
    client.send(case(Frames()))
    assert client.goaway()[1] == code


@pytest.mark.parametrize(
    ("case", "stream", "code"), [c[1:] for c in STREAM_ERRORS], ids=[c[0] for c in STREAM_ERRORS]
)
def test_stream_errors(client: RawH2, case: Case, stream: int, code: int) -> None:
    frames = Frames()
    client.send(case(frames))
    assert client.reset_code(stream) == code
    assert client.served(frames, 11) == b"ok /ok"
    assert not [f for f in client.frames if f[0] == GOAWAY]


@pytest.mark.parametrize("case", [c[1] for c in IGNORED], ids=[c[0] for c in IGNORED])
def test_ignored_frames(client: RawH2, case: Case) -> None:
    frames = Frames()
    client.send(case(frames))
    assert client.served(frames, 11) == b"ok /ok"
    assert not [f for f in client.frames if f[0] in (GOAWAY, RST_STREAM)]


@pytest.mark.parametrize("loop", LOOPS)
def test_extended_connect_without_websockets(loop: str) -> None:
    """--ws none: SETTINGS_ENABLE_CONNECT_PROTOCOL is not offered, and an extended CONNECT is
    malformed (RFC 8441 §4, RFC 9113 §8.5): RST_STREAM PROTOCOL_ERROR, the connection lives
    on. (With WebSockets on, it is one: tests/test_http2_websocket.py.)"""
    with run_server(app, loop=loop, ws="none") as srv:
        raw = RawH2(srv.port)
        settings = raw.until(SETTINGS)[3]
        offered = [
            int.from_bytes(settings[at : at + 2], "big") for at in range(0, len(settings), 6)
        ]
        assert 0x3 in offered and 0x8 not in offered  # MAX_CONCURRENT_STREAMS, not 8441's
        frames = Frames()
        connect = [(":method", "CONNECT"), (":protocol", "websocket"), *REQUEST[1:]]
        raw.send(frames.fields(connect, END_HEADERS))
        assert raw.reset_code(1) == PROTOCOL_ERROR
        assert raw.served(frames, 3) == b"ok /ok"
        raw.close()


def test_the_first_frame_must_be_settings(srv: RunningServer) -> None:
    """§3.4: the preface is followed by a SETTINGS frame."""
    raw = RawH2(srv.port, PREFACE + frame(PING, 0, 0, PAD * 2))
    assert raw.goaway() == (0, PROTOCOL_ERROR)
    raw.close()


def test_settings_and_ping_are_acknowledged(client: RawH2) -> None:
    """§6.5.3: our SETTINGS acknowledged; §6.7: a PING answered with the same payload."""
    client.send(frame(PING, 0, 0, b"8 bytes!"))
    client.until(SETTINGS)  # the server's own
    ack = [f for f in client.frames if f[0] == SETTINGS and f[1] & ACK]
    while not ack:
        kind, flags, _, payload = client.until(SETTINGS)
        if flags & ACK:
            ack.append((kind, flags, 0, payload))
    assert ack[0][3] == b""
    kind, flags, stream, payload = client.until(PING)
    assert (flags, stream, payload) == (ACK, 0, b"8 bytes!")


def test_a_connection_error_ends_the_streams_in_flight(srv: RunningServer) -> None:
    """§5.4.1: GOAWAY names the last stream the server took; then it closes."""
    raw = RawH2(srv.port)
    frames = Frames()
    raw.send(frames.get(1, "/hold") + frames.get(3, "/hold"))
    raw.send(frame(PING, 0, 1, PAD * 2))
    assert raw.goaway() == (3, PROTOCOL_ERROR)
    raw.close()


@pytest.mark.parametrize("cut", [3, 9, 10, 12, 13])
def test_frames_cut_across_reads_are_followed(srv: RunningServer, cut: int) -> None:
    """The frame walk that finds self-dependencies keeps its place across reads: a DATA
    payload that looks like a PRIORITY frame on stream 0 is body, and a PRIORITY frame cut
    inside its header (3, 9) or its dependency (10, 12) is still seen."""
    raw = RawH2(srv.port)
    frames = Frames()
    fake = frame(PRIORITY, 0, 0, u32(1) + b"\x10")  # inside a body: not a frame
    body = frame(DATA, 0, 1, fake * 100)
    priority = frame(PRIORITY, 0, 1, u32(1) + b"\x10")  # stream 1 depends on itself
    data = frames.post(1) + body + priority
    at = len(data) - len(priority) + cut
    for part in (data[:100], data[100:at], data[at:]):
        sent_and_read(raw.sock, part)
    assert raw.reset_code(1) == PROTOCOL_ERROR
    assert raw.served(frames, 3) == b"ok /ok"
    raw.close()
