"""HTTP/2 attack limits over real sockets, on both loops: each flood ends (or is held) after a
bounded count of frames or bytes, and another client is served meanwhile.

What bounds each one: zttp ends CONTINUATION floods (16 frames or a 64 KiB header block) and
HPACK bombs (a 64 KiB decoded header list) with GOAWAY ENHANCE_YOUR_CALM; fastserve applies
--limit-request-field* to the decoded list, stops reading while the client does not read the
ACKs of its PINGs and SETTINGS, ends empty DATA floods, holds a response at the client's
window, and resets streams whose body never comes (protocols/h2.py).
"""

from __future__ import annotations

import resource
import select
import time
from collections.abc import Iterator
from typing import Any

import h2.errors
import h2.events
import hpack
import pytest

from fastserve.protocols.h2 import H2Protocol
from tests.apps.core_apps import Probe, Receive, Scope, Send
from tests.conftest import RunningServer
from tests.helpers import Serve, sent_and_read, settle, stalled, wait_until
from tests.test_http2 import H2Client, close_clients, echo_app  # noqa: F401 (the fixture)
from tests.test_http2_frames import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PING,
    SETTINGS,
    RawH2,
    frame,
    setting,
)

pytest.importorskip("zttp")

ENHANCE_YOUR_CALM = 0xB
REQUEST = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "t")]
POST = [(":method", "POST"), (":scheme", "http"), (":path", "/"), (":authority", "t")]


@pytest.fixture
def raws() -> Iterator[list[RawH2]]:
    opened: list[RawH2] = []
    yield opened
    for raw in opened:
        raw.close()


def goaway_now(srv: RunningServer, raw: RawH2) -> int | None:
    """After a read barrier: the GOAWAY's error code if the server sent one for what it has
    read (its loop has gone round since, so whatever it answered is in our socket), else
    None."""
    settle(srv, 5)  # (the read and its answer are one callback: one pass would do)
    while select.select([raw.sock], [], [], 0)[0]:
        got = raw.next_frame()
        if got is None:
            raise AssertionError(f"closed without a GOAWAY: {raw.frames}")
        if got[0] == GOAWAY:
            return int.from_bytes(got[3][4:8])
    return None


def frames_until_goaway(
    srv: RunningServer, raw: RawH2, frames: list[bytes]
) -> tuple[int, int | None]:
    """Sends `frames` one read at a time until the server answers one with a GOAWAY: (how
    many it read, the GOAWAY's code or None if it took them all)."""
    for count, one in enumerate(frames, 1):
        sent_and_read(raw.sock, one)
        code = goaway_now(srv, raw)
        if code is not None:
            return count, code
    return len(frames), None


def served(srv: RunningServer) -> bytes:
    """Another client's request, on a connection of its own: its body."""
    other = H2Client(srv.port)
    return other.response(other.request("/other"))[1]


@pytest.mark.parametrize(
    ("fragment", "most"),
    [
        (b"", 17),  # zttp: at most 16 CONTINUATION frames
        (b"a" * 16384, 5),  # zttp: a header block of at most 64 KiB
    ],
    ids=["empty frames", "16 KiB frames"],
)
def test_a_continuation_flood_ends_with_enhance_your_calm(
    serve: Serve, raws: list[RawH2], fragment: bytes, most: int
) -> None:
    """CVE-2024-27316 (CONTINUATION flood): a header block that never ends. The server
    keeps no more than a bounded count of frames (and bytes) of it, then GOAWAY. (Until its
    block ends the stream is not open: the connection counts as idle, and a slow run must not
    meet the keep-alive timeout's GOAWAY first.)"""
    with serve(echo_app(), timeout_keep_alive=120) as srv:
        raw = RawH2(srv.port)
        raws.append(raw)
        # A literal field whose value (10 MB, declared) never completes.
        block = hpack.Encoder().encode(REQUEST) + b"\x00\x03x-a\x7f\xff\xff\xff\x04"
        head = frame(HEADERS, END_STREAM, 1, block)
        flood = [head] + [frame(CONTINUATION, 0, 1, fragment)] * 100
        assert frames_until_goaway(srv, raw, flood[: most // 2]) == (most // 2, None)
        assert served(srv) == b"2 GET /other 0"  # while the flood is on
        count, code = frames_until_goaway(srv, raw, flood[most // 2 :])
        assert code == ENHANCE_YOUR_CALM
        assert most // 2 + count <= most + 1  # (the HEADERS frame included)


def test_an_hpack_bomb_ends_with_enhance_your_calm_and_memory_stays_flat(
    serve: Serve, raws: list[RawH2]
) -> None:
    """A 4,000-byte field put in the HPACK table once, then referenced 60,000 times by a
    one-byte index: 60 KB on the wire decode to 240 MB. zttp stops at a 64 KiB decoded list
    (GOAWAY ENHANCE_YOUR_CALM); the peak RSS of this process (which runs the server) does
    not grow by the decoded size."""
    with serve(echo_app()) as srv:
        raw = RawH2(srv.port)
        raws.append(raw)
        encoder = hpack.Encoder()
        big = ("x-big", "v" * 4000)
        raw.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, encoder.encode([*REQUEST, big])))
        raw.until(DATA, 1)  # answered: the field is in both tables now
        block = encoder.encode(REQUEST) + encoder.encode([big]) * 60000
        parts = [block[at : at + 16384] for at in range(0, len(block), 16384)]
        bomb = frame(HEADERS, END_STREAM, 3, parts[0])
        for i, part in enumerate(parts[1:], 2):
            bomb += frame(CONTINUATION, END_HEADERS if i == len(parts) else 0, 3, part)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
        raw.send(bomb)
        assert raw.goaway()[1] == ENHANCE_YOUR_CALM
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
        assert grown < 100 * 1024, f"peak RSS grew by {grown} KiB"
        assert served(srv) == b"2 GET /other 0"


@pytest.mark.parametrize(
    ("fields", "options"),
    [
        ([("x-big", "v" * 2000)], {"limit_request_field_size": 1000}),
        ([(f"x-{i}", "v") for i in range(20)], {"limit_request_fields": 10}),
    ],
    ids=["a field too large", "too many fields"],
)
def test_request_field_limits_apply_to_the_decoded_list(
    serve: Serve, raws: list[RawH2], fields: list[tuple[str, str]], options: dict[str, Any]
) -> None:
    """--limit-request-field-size / --limit-request-fields on the decoded header list, the
    block split over HEADERS and CONTINUATION frames: a 431 on the stream, the connection
    lives on."""
    probe = Probe()
    with serve(echo_app(probe), **options) as srv:
        raw = RawH2(srv.port)
        raws.append(raw)
        block = hpack.Encoder().encode(REQUEST + fields)
        cut = len(block) // 3
        raw.send(frame(HEADERS, END_STREAM, 1, block[:cut]))
        raw.send(frame(CONTINUATION, 0, 1, block[cut : 2 * cut]))
        raw.send(frame(CONTINUATION, END_HEADERS, 1, block[2 * cut :]))
        head = raw.until(HEADERS, 1)[3]
        assert dict(hpack.Decoder().decode(head, raw=True))[b":status"] == b"431"
        assert served(srv) == b"2 GET /other 0"
    assert probe.events.qsize() == 1  # only the other client's request reached the app


@pytest.mark.parametrize(
    "flood",
    [frame(PING, 0, 0, b"12345678"), frame(SETTINGS, 0, 0, setting(0x1, 4096))],
    ids=["PING", "SETTINGS"],
)
def test_a_control_frame_flood_from_a_client_that_does_not_read_is_bounded(
    serve: Serve, flood: bytes
) -> None:
    """zttp answers every PING and SETTINGS frame (an ACK each) and queues the ACKs without
    limit (measured: 900 KB of ACKs for 100,000 SETTINGS frames, none sent); the server
    writes them out after each read and reads no more while its write buffer is full, so a
    client that never reads cannot make it queue more (CVE-2019-9512, CVE-2019-9515). The
    server's buffered bytes are sampled while frames are pushed until it stops reading
    (after ~9 MiB: the kernel's buffers take that much first). Without that stop, zttp would
    end the connection after ~550,000 PINGs as a protocol error, having queued what the
    kernel does not take."""
    with serve(echo_app()) as srv:
        state = srv.server.state
        assert state is not None
        client = H2Client(srv.port, receive_buffer=16384)

        def h2_connections() -> list[H2Protocol]:
            return [c for c in state.connections if isinstance(c, H2Protocol)]

        wait_until(lambda: len(h2_connections()) == 1, "the connection handed over to HTTP/2")
        (conn,) = h2_connections()
        batch = flood * (65536 // len(flood))
        client.sock.setblocking(False)
        sent, largest = 0, 0
        deadline = time.monotonic() + 20
        while not conn.read_paused:
            assert time.monotonic() < deadline, f"still reading after {sent} bytes"
            assert sent < 64 * 1024 * 1024, "the server takes everything"
            assert not conn.closed, "zttp's own flood limit acted first"
            try:
                sent += client.sock.send(batch[sent % len(batch) :])  # (whole frames)
            except BlockingIOError:
                time.sleep(0.001)  # let the server run (not a wait for a condition)
            largest = max(largest, conn.transport.get_write_buffer_size())
        # Its write buffer's high-water mark (64 KiB) and one read's worth of ACKs at most.
        assert largest < 512 * 1024, largest
        settle(srv)
        assert conn.read_paused and not conn.closed
        client.close()
        assert served(srv) == b"2 GET /other 0"


def test_an_empty_data_flood_ends_with_enhance_your_calm(serve: Serve, raws: list[RawH2]) -> None:
    """CVE-2019-9518: DATA frames with no payload, which zttp takes without limit (measured:
    2,000,000 in a row). fastserve allows a budget of 100 (refilled by 10 a second)."""
    with serve(echo_app()) as srv:
        started = time.monotonic()  # (before the connection: its budget starts with it)
        raw = RawH2(srv.port)
        raws.append(raw)
        raw.send(frame(HEADERS, END_HEADERS, 1, hpack.Encoder().encode(POST)))
        batch = frame(DATA, 0, 1) * 10
        assert frames_until_goaway(srv, raw, [batch] * 5) == (5, None)
        assert served(srv) == b"2 GET /other 0"  # while the flood is on
        count, code = frames_until_goaway(srv, raw, [batch] * 300)
        elapsed = time.monotonic() - started
        assert code == ENHANCE_YOUR_CALM
        # Past the budget of 100, and not much later: it refills by 10 a second while the
        # flood goes on (on a loaded machine the flood is slower and gets more), plus the
        # batch in which the budget ran out.
        sent = (5 + count) * 10
        assert 100 < sent <= 100 + 10 * elapsed + 10, (sent, elapsed)


def test_a_zero_window_client_holds_the_app_not_the_server(serve: Serve) -> None:
    """A client whose window is 0 (SETTINGS_INITIAL_WINDOW_SIZE 0) asks for 100 MiB on each
    of 10 streams: every app gets one send() of 64 KiB through (parked by zttp for credit)
    and then waits, so the server holds about 640 KiB, not 1 GiB; another client is served
    meanwhile. Credit for one stream lets that one go on."""
    piece = b"z" * 65536
    sent = [0] * 11

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/other":
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body", "body": b"other"})
            return
        index = int(scope["path"][1:])
        await send({"type": "http.response.start", "status": 200})
        for _ in range(1600):  # 100 MiB
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            sent[index] += 1
        await send({"type": "http.response.body"})

    with serve(app) as srv:
        client = H2Client(srv.port, window=0)
        streams = [client.request(f"/{i}") for i in range(1, 11)]
        for stream in streams:
            client.until(h2.events.ResponseReceived, stream)
        total = stalled(srv, lambda: sum(sent), "the apps to stop sending")
        assert total <= 2 * 10, sent
        assert served(srv) == b"other"
        state = srv.server.state
        assert state is not None
        (conn,) = [c for c in state.connections if isinstance(c, H2Protocol) and not c.idle]
        assert conn.transport.get_write_buffer_size() < 64 * 1024
        # Credit for stream 1 (1 MiB on it and on the connection): it goes on, alone.
        client.conn.increment_flow_control_window(2**20, streams[0])
        client.conn.increment_flow_control_window(2**20)
        client.flush()
        client.sock.setblocking(False)

        def moved_on() -> bool:
            try:
                while client.sock.recv(1 << 20):  # (read, so that nothing else holds it)
                    pass
            except BlockingIOError:
                pass
            return sent[1] >= 15

        wait_until(moved_on, "stream 1 to move on")
        assert sum(sent[2:]) <= 2 * 9
        client.close()


def test_streams_whose_body_never_comes_free_their_slots(serve: Serve) -> None:
    """Every stream slot (--http2-max-concurrent-streams 4) taken by a POST whose body never
    comes: a fifth is refused, another client is served meanwhile, and after
    --timeout-request-body the four are reset (CANCEL) and the slots serve again."""
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            message = await receive()
            probe.put(message["type"])
            if message["type"] == "http.request":
                await send({"type": "http.response.start", "status": 200})
                await send({"type": "http.response.body", "body": b"fine"})

    with serve(app, http2_max_concurrent_streams=4, timeout_request_body=0.5) as srv:
        client = H2Client(srv.port)
        # Sent before the server's SETTINGS are read: the client does not know the limit.
        held = [client.request("/up", "POST", open_body=True) for _ in range(4)]
        fifth = client.request("/up", "POST", open_body=True)
        refused = client.until(h2.events.StreamReset, fifth)
        assert refused.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
        assert served(srv) == b"fine"
        for stream in held:
            reset = client.until(h2.events.StreamReset, stream)
            assert reset.error_code == h2.errors.ErrorCodes.CANCEL
        messages = sorted(probe.get() for _ in range(5))
        assert messages == ["http.disconnect"] * 4 + ["http.request"]  # (the other client's)
        again = client.request("/again")
        assert client.response(again)[1] == b"fine"
        client.close()
