"""The frame walk of server/protocols/h2.py (check_priorities) that a mutation pass (mutmut 3,
docs/testing.md, issue 16) found unchecked: every test here failed against at least one mutant
the rest of the suite let live. Over a real socket, with hand-built frames.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest

from tests.apps.core_apps import Receive, Scope, Send
from tests.conftest import RunningServer, run_server
from tests.helpers import error_log, loop_held, sent_and_read, settle
from tests.test_http2_frames import (
    DATA,
    END_HEADERS,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PRIORITY,
    PROTOCOL_ERROR,
    RST_STREAM,
    WINDOW_UPDATE,
    Frames,
    RawH2,
    app,
    frame,
    u32,
)

pytest.importorskip("zttp")


PATHS: list[str] = []


async def counting(scope: Scope, receive: Receive, send: Send) -> None:
    """/count reads its body and answers with its size; the rest as tests/test_http2_frames.py's
    app (/hold waits for the client to go, anything else is served at once). Each request's
    path goes to PATHS as its app starts."""
    if scope["type"] == "http":
        PATHS.append(scope["path"])
    if scope["type"] == "http" and scope["path"] == "/count":
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": str(size).encode()})
        return
    await app(scope, receive, send)


@pytest.fixture(scope="module")
def srv() -> Iterator[RunningServer]:
    with run_server(counting, loop="asyncio") as running:
        yield running


@pytest.mark.timeout(30)
@pytest.mark.parametrize("cut", [3, 9, 10, 12, 13])
def test_the_walk_keeps_its_place_after_a_frame_cut_across_reads(
    srv: RunningServer, cut: int
) -> None:
    """A self-dependence cut across two reads is seen, and so is one in a later read: the walk
    starts that read at its first frame, with nothing of the cut frame left over."""
    raw = RawH2(srv.port)
    try:
        frames = Frames()
        sent_and_read(raw.sock, frames.post(1, "/hold"))
        for stream in (1, 3):
            priority = frame(PRIORITY, 0, stream, u32(stream) + b"\x10")
            if stream == 1:  # cut: the walk keeps its start for the next read
                sent_and_read(raw.sock, priority[:cut])
                sent_and_read(raw.sock, priority[cut:])
            else:  # then a post in a read of its own, and a whole frame in the next
                sent_and_read(raw.sock, frames.post(3, "/hold"))
                raw.send(priority)
            assert raw.reset_code(stream) == PROTOCOL_ERROR
        assert raw.served(frames, 5) == b"ok /ok"
    finally:
        raw.close()


def read_alone(raw: RawH2) -> None:
    """A PING answered: the server has read what was sent before it."""
    raw.send(frame(PING, 0, 0, b"readdone"))
    while raw.until(PING)[3] != b"readdone":
        pass


def in_one_read(srv: RunningServer, raw: RawH2, data: bytes) -> None:
    """Send `data` while the server's loop is held, and let it go once the server's kernel
    holds every byte: asyncio reads up to 256 KiB at once, so `data` is one read."""
    with loop_held(srv, raw.sock):
        raw.send(data)


@pytest.mark.timeout(30)
def test_a_frame_of_64_kib_is_stepped_over_whole(srv: RunningServer) -> None:
    """A HEADERS frame of 65,536 bytes (over SETTINGS_MAX_FRAME_SIZE: zttp would refuse it
    with FRAME_SIZE_ERROR) and, in the same read, a PRIORITY frame on stream 0: the walk
    reads the frame's 24-bit length whole (its first byte is 1), steps over its payload of
    zeros, and finds the PRIORITY frame first (PROTOCOL_ERROR)."""
    raw = RawH2(srv.port)
    try:
        read_alone(raw)
        big = frame(HEADERS, 0, 1, bytes(65536))
        in_one_read(srv, raw, big + frame(PRIORITY, 0, 0, u32(1) + b"\x10"))
        assert raw.goaway()[1] == PROTOCOL_ERROR
    finally:
        raw.close()


@pytest.mark.timeout(30)
def test_a_padded_data_frame_cut_after_its_header_is_followed(srv: RunningServer) -> None:
    """A padded DATA frame whose header ends a read: its pad length is in the next read,
    where the walk takes the frame up again (the connection serves on)."""
    raw = RawH2(srv.port)
    try:
        frames = Frames()
        sent_and_read(raw.sock, frames.post(1, "/hold"))
        padded = frame(DATA, PADDED, 1, b"\x02abc\x00\x00")
        sent_and_read(raw.sock, padded[:9])
        sent_and_read(raw.sock, padded[9:])
        assert raw.served(frames, 3) == b"ok /ok"
    finally:
        raw.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("ended", [True, False])
def test_a_body_of_exactly_the_window_in_one_read_is_taken(srv: RunningServer, ended: bool) -> None:
    """65,535 bytes of body (the stream's window and the connection's, exactly) in one read:
    neither window is overdrawn. Ended there, the body is served whole; not ended, its app's
    reads give the stream credit, and the client ends it after that."""
    raw = RawH2(srv.port)
    try:
        read_alone(raw)
        frames = Frames()
        body = frame(DATA, 0, 1, b"x" * 16384) * 3
        last = frame(DATA, END_STREAM if ended else 0, 1, b"x" * 16383)
        in_one_read(srv, raw, frames.post(1, "/count") + body + last)
        if not ended:
            raw.until(WINDOW_UPDATE, 1)
            raw.send(frame(DATA, END_STREAM, 1))
        assert raw.until(DATA, 1)[3] == b"65535"
        assert not [f for f in raw.frames if f[0] in (GOAWAY, RST_STREAM)]
    finally:
        raw.close()


@pytest.mark.timeout(30)
def test_a_hundred_empty_data_frames_are_not_a_flood(srv: RunningServer) -> None:
    """The empty-DATA budget is 100 frames (the 101st is a flood, tests/test_h2_mutants.py):
    100 in one read leave the connection serving."""
    raw = RawH2(srv.port)
    try:
        read_alone(raw)
        frames = Frames()
        in_one_read(srv, raw, frames.post(1, "/hold") + frame(DATA, 0, 1) * 100)
        assert raw.served(frames, 3) == b"ok /ok"
        assert not [f for f in raw.frames if f[0] in (GOAWAY, RST_STREAM)]
    finally:
        raw.close()


@pytest.mark.timeout(30)
def test_data_past_the_connection_window_is_logged_as_such(srv: RunningServer) -> None:
    """65,536 bytes in one read, 32,768 on each of two streams: within each stream's window,
    one past the connection's: GOAWAY FLOW_CONTROL_ERROR and one line that says why."""
    raw = RawH2(srv.port)
    try:
        frames = Frames()
        read_alone(raw)
        sent_and_read(raw.sock, frames.post(1, "/hold") + frames.post(3, "/hold"))
        half = frame(DATA, 0, 1, b"x" * 16384) * 2 + frame(DATA, 0, 3, b"x" * 16384) * 2
        with error_log(logging.INFO) as records:
            in_one_read(srv, raw, half)
            assert raw.goaway()[1] == FLOW_CONTROL_ERROR
            lines = [r.getMessage() for r in records if "HTTP/2" in r.getMessage()]
        port = raw.sock.getsockname()[1]
        why = "connection error: DATA past the connection window"
        assert lines == [f"127.0.0.1:{port} - HTTP/2 {why}"]
    finally:
        raw.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "payload", [b"\x00\x00\x01\x05", b"\x00\x01\x05"], ids=["4 bytes", "3 bytes"]
)
def test_a_short_priority_frame_cut_before_its_last_byte_is_a_frame_size_error(
    srv: RunningServer, payload: bytes
) -> None:
    """A PRIORITY frame on idle stream 1 too short for its fields (RFC 9113 §6.3: 5 bytes),
    sent but for its last byte: what has come of its dependency reads as 1, its own stream,
    yet the walk reads no dependency out of a part of one. The frame, whole, is zttp's
    FRAME_SIZE_ERROR."""
    raw = RawH2(srv.port)
    try:
        read_alone(raw)
        short = frame(PRIORITY, 0, 1, payload)
        sent_and_read(raw.sock, short[:-1])
        raw.send(short[-1:])
        assert raw.goaway()[1] == FRAME_SIZE_ERROR
    finally:
        raw.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("refused", "code"),
    [
        (lambda f: f.get(1, "/a") + frame(PRIORITY, 0, 0, u32(1) + b"\x10"), PROTOCOL_ERROR),
        (lambda f: f.post(1, "/a") + frame(DATA, 0, 1) * 101, 0xB),  # ENHANCE_YOUR_CALM
        (
            lambda f: (
                f.post(1, "/a")
                + f.post(3, "/b")
                + frame(DATA, 0, 1, b"x" * 16384) * 2
                + frame(DATA, 0, 3, b"x" * 16384) * 2
            ),
            FLOW_CONTROL_ERROR,
        ),
    ],
    ids=["PRIORITY on stream 0", "empty DATA flood", "DATA past the connection window"],
)
def test_a_read_refused_by_the_walk_starts_none_of_its_requests(
    srv: RunningServer, refused: Callable[[Frames], bytes], code: int
) -> None:
    """The walk refuses a read (a connection error) before zttp parses it: no request of
    that read reaches its app, neither one before the refused frame nor one after it."""
    raw = RawH2(srv.port)
    try:
        read_alone(raw)
        PATHS.clear()
        frames = Frames()
        in_one_read(srv, raw, refused(frames) + frames.get(7, "/c"))
        assert raw.goaway() == (0, code)
        settle(srv)
        assert PATHS == []
    finally:
        raw.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("padded", [False, True])
def test_the_connection_credit_for_a_data_frame_goes_out_with_its_header(
    srv: RunningServer, padded: bool
) -> None:
    """The walk charges a DATA frame on its header (with its pad length, when padded), and
    the connection's credit is granted as the charge reaches half the window: 16,384 bytes
    and then the header of another 16,384 (32,768) get the WINDOW_UPDATE before the rest of
    that frame is sent."""
    raw = RawH2(srv.port)
    try:
        frames = Frames()
        sent_and_read(raw.sock, frames.post(1, "/hold"))
        if padded:
            second = frame(DATA, PADDED, 1, b"\x10" + b"y" * 16367 + bytes(16))
            head = 10
        else:
            second = frame(DATA, 0, 1, b"y" * 16384)
            head = 9
        sent_and_read(raw.sock, frame(DATA, 0, 1, b"x" * 16384) + second[:head])
        assert int.from_bytes(raw.until(WINDOW_UPDATE, 0)[3]) == 32768
        raw.send(second[head:])
        assert raw.served(frames, 3) == b"ok /ok"
    finally:
        raw.close()


@pytest.mark.timeout(30)
def test_a_self_dependence_is_acted_on_once_its_dependency_is_read(srv: RunningServer) -> None:
    """A PRIORITY frame making open stream 1 depend on itself, sent but for its weight (the
    last byte): the dependency is read whole, and the stream is reset before the frame ends."""
    raw = RawH2(srv.port)
    try:
        frames = Frames()
        sent_and_read(raw.sock, frames.post(1, "/hold"))
        priority = frame(PRIORITY, 0, 1, u32(1) + b"\x10")
        raw.send(priority[:-1])
        assert raw.reset_code(1) == PROTOCOL_ERROR
        raw.send(priority[-1:])
        assert raw.served(frames, 3) == b"ok /ok"
    finally:
        raw.close()


@pytest.mark.timeout(30)
def test_a_body_ended_by_trailers_gets_no_window_credit(srv: RunningServer) -> None:
    """40,000 bytes (more than half a window) and trailers (HEADERS with END_STREAM) in one
    read, read by the app after that: the stream takes no more DATA, so no WINDOW_UPDATE
    for it (the connection's is granted as the bytes arrive)."""
    raw = RawH2(srv.port)
    try:
        read_alone(raw)
        frames = Frames()
        body = frame(DATA, 0, 1, b"x" * 16384) * 2 + frame(DATA, 0, 1, b"x" * 7232)
        trailers = frame(HEADERS, END_HEADERS | END_STREAM, 1, frames.block([("x-t", "1")]))
        in_one_read(srv, raw, frames.post(1, "/count") + body + trailers)
        assert raw.until(DATA, 1)[3] == b"40000"
        read_alone(raw)
        assert [f[2] for f in raw.frames if f[0] == WINDOW_UPDATE] == [0]
    finally:
        raw.close()


@pytest.mark.timeout(30)
def test_a_header_block_is_not_read_as_a_dependency(srv: RunningServer) -> None:
    """HEADERS without the PRIORITY flag on stream 0x20202085, whose block starts with the
    same four bytes: three dynamic table size updates to 0 (0x20) and :path /index.html
    (0x85, static entry 5). The walk reads no dependency there: the request is served."""
    raw = RawH2(srv.port)
    try:
        stream = 0x20202085
        block = u32(stream) + b"\x82\x86\x01\x01t"  # GET, http, :authority t
        raw.send(frame(HEADERS, END_HEADERS | END_STREAM, stream, block))
        assert raw.until(DATA, stream)[3] == b"ok /index.html"
    finally:
        raw.close()


@pytest.mark.timeout(30)
def test_the_connection_credit_goes_out_at_exactly_half_the_window(srv: RunningServer) -> None:
    """32,767 bytes of DATA (half the 65,535-byte window, rounded down) in one read: the
    connection's WINDOW_UPDATE of 32,767 goes out at once."""
    raw = RawH2(srv.port)
    try:
        frames = Frames()
        sent_and_read(raw.sock, frames.post(1, "/hold"))
        in_one_read(srv, raw, frame(DATA, 0, 1, b"x" * 16384) + frame(DATA, 0, 1, b"x" * 16383))
        assert int.from_bytes(raw.until(WINDOW_UPDATE, 0)[3]) == 32767
        assert raw.served(frames, 3) == b"ok /ok"
    finally:
        raw.close()


@pytest.mark.timeout(30)
def test_a_short_priority_frame_on_stream_0_is_refused_from_its_header(
    srv: RunningServer,
) -> None:
    """A PRIORITY frame on stream 0 of 3 bytes (too short for a dependency), sent but for its
    last byte: the walk does not wait for a dependency the frame cannot hold, and refuses
    it at once (RFC 9113 §6.3: GOAWAY PROTOCOL_ERROR)."""
    raw = RawH2(srv.port)
    try:
        read_alone(raw)
        raw.send(frame(PRIORITY, 0, 0, b"\x00\x00\x01")[:-1])
        assert raw.goaway()[1] == PROTOCOL_ERROR
    finally:
        raw.close()
