"""HTTP/2 request-body flow control over real sockets, on both loops (protocols/h2.py): a
stream's receive window is credited back (WINDOW_UPDATE) as its app's receive() takes the
bytes, in batches of at least half a window; the connection's as DATA arrives. DATA past a
stream's window is RST_STREAM FLOW_CONTROL_ERROR, past the connection's GOAWAY
FLOW_CONTROL_ERROR. The `h2` library is the client where it keeps to the windows, raw frames
where it must not.
"""

from __future__ import annotations

import asyncio
import select
import threading
import time
from typing import Any

import h2.errors
import h2.events
import pytest

from fastserve.protocols.h2 import H2Protocol
from tests.apps.core_apps import Receive, Scope, Send
from tests.conftest import RunningServer
from tests.helpers import Serve, sent_and_read, settle, unread_by_server, wait_until
from tests.test_http2 import H2Client, close_clients  # noqa: F401 (the fixture)
from tests.test_http2_frames import DATA, END_STREAM, PADDED, WINDOW_UPDATE, Frames, RawH2, frame

pytest.importorskip("zttp")

WINDOW = 65535
FLOW_CONTROL_ERROR = 0x3


class Apps:
    """/gate reads once `gate` is set; /never never calls receive() (it returns on
    `release()`, or when the server cancels it); /read reads the whole body; /return
    answers without reading. Each answers the size read."""

    def __init__(self) -> None:
        self.gate: asyncio.Event | None = None
        self.read: dict[str, int] = {}
        self.waiting: list[asyncio.Event] = []

    def release(self, srv: RunningServer) -> None:
        for event in self.waiting:
            srv.loop.call_soon_threadsafe(event.set)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path.startswith("/never"):
            event = asyncio.Event()
            self.waiting.append(event)
            await event.wait()
            return
        if path.startswith("/gate"):
            self.gate = asyncio.Event()
            await self.gate.wait()
        size = 0
        if not path.startswith("/return"):
            while True:
                message = await receive()
                size += len(message.get("body", b""))
                self.read[path] = size
                if not message.get("more_body"):
                    break
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"%d" % size})


def connection(srv: RunningServer) -> H2Protocol:
    state = srv.server.state
    assert state is not None
    found: list[H2Protocol] = []

    def one() -> bool:
        found[:] = [c for c in state.connections if isinstance(c, H2Protocol)]
        return len(found) == 1

    wait_until(one, "one HTTP/2 connection")
    return found[0]


def available(client: H2Client) -> None:
    """The events of whatever the server has sent so far (no wait)."""
    while select.select([client.sock], [], [], 0)[0]:
        client.read()
        if client.closed:
            return


def push(client: H2Client, bodies: dict[int, int], done: Any = None, chunk: int = 16384) -> None:
    """Sends `bodies` (stream: bytes to send, ended after) as the windows allow, reading the
    server's credit when none is left, until `done()` (20 s at most; by default, until all
    is sent)."""
    if done is None:
        done = lambda: not any(bodies.values())  # noqa: E731
    deadline = time.monotonic() + 20
    while not done():
        assert time.monotonic() < deadline, f"stalled with {bodies} to send"
        sent = False
        for stream, left in bodies.items():
            if not left:
                continue
            room = min(client.conn.local_flow_control_window(stream), chunk, left)
            if room > 0:
                bodies[stream] = left - room
                client.conn.send_data(stream, b"b" * room, end_stream=left == room)
                sent = True
        client.flush()
        if not sent and not done():
            client.read(timeout=max(0.1, deadline - time.monotonic()))


def credits(client: H2Client, stream: int) -> list[int]:
    return [
        e.delta
        for e in client.events
        if isinstance(e, h2.events.WindowUpdated) and e.stream_id == stream
    ]


def test_no_credit_for_a_stream_until_its_app_reads(serve: Serve) -> None:
    """40,000 bytes (more than zttp's own 32 KiB step) to an app that has not called
    receive(): the connection's window comes back, the stream's does not; once the app
    reads, the stream's credit comes."""
    apps = Apps()
    with serve(apps) as srv:
        client = H2Client(srv.port)
        stream = client.request("/gate", "POST", open_body=True)
        wait_until(lambda: apps.gate is not None, "the app to wait")
        client.conn.send_data(stream, b"a" * 16384)
        client.conn.send_data(stream, b"a" * 16384)
        client.conn.send_data(stream, b"a" * 7232)
        sent_and_read(client.sock, client.conn.data_to_send())
        settle(srv)
        available(client)
        assert credits(client, 0), "the connection's window did not come back"
        assert credits(client, stream) == []
        gate = apps.gate
        assert gate is not None
        srv.loop.call_soon_threadsafe(gate.set)
        wait_until(lambda: apps.read.get("/gate") == 40000, "the app to read")
        while not credits(client, stream):
            client.read()
        assert sum(credits(client, stream)) == 40000
        client.conn.end_stream(stream)
        client.flush()
        assert client.response(stream)[1] == b"40000"


def test_a_stream_whose_app_does_not_read_does_not_stall_the_others(serve: Serve) -> None:
    """App A never reads its 1 MiB upload; app B, on the same connection, reads its own to
    the end and answers."""
    apps = Apps()
    with serve(apps, timeout_graceful_shutdown=1) as srv:
        client = H2Client(srv.port)
        a = client.request("/never", "POST", open_body=True)
        b = client.request("/read", "POST", open_body=True)
        push(client, {a: 2**20, b: 2**20}, lambda: apps.read.get("/read") == 2**20)
        assert client.response(b)[1] == b"%d" % 2**20
        assert credits(client, a) == []
        apps.release(srv)


def test_a_large_upload_is_credited_in_batches(serve: Serve) -> None:
    """10 MiB in 1 KiB DATA frames to an app that reads it: credit keeps coming, each
    WINDOW_UPDATE for at least half a window (not one per DATA frame)."""
    apps = Apps()
    size = 10 * 2**20
    with serve(apps) as srv:
        client = H2Client(srv.port)
        stream = client.request("/read", "POST", open_body=True)
        push(client, {stream: size}, lambda: apps.read.get("/read") == size, chunk=1024)
        assert client.response(stream)[1] == b"%d" % size
        updates = credits(client, stream)
        assert min(updates) >= WINDOW // 2, updates
        assert len(updates) <= size // (WINDOW // 2) + 1  # 10,240 DATA frames
        assert len(credits(client, 0)) <= size // (WINDOW // 2) + 1


def test_data_past_a_stream_window_resets_the_stream(serve: Serve) -> None:
    """40,000 bytes and then 25,536 (one past the window) on a stream whose app does not
    read: RST_STREAM FLOW_CONTROL_ERROR; the connection serves another stream."""
    apps = Apps()
    with serve(apps, timeout_graceful_shutdown=1) as srv:
        raw = RawH2(srv.port)
        frames = Frames()
        raw.send(frames.post(1, "/never"))
        raw.send(frame(DATA, 0, 1, b"x" * 16384) * 2 + frame(DATA, 0, 1, b"x" * 7232))
        raw.until(WINDOW_UPDATE, 0)  # the connection's: its window is whole again
        raw.send(frame(DATA, 0, 1, b"x" * 16384) + frame(DATA, 0, 1, b"x" * 9152))
        assert raw.reset_code(1) == FLOW_CONTROL_ERROR
        assert raw.served(frames, 3) == b"0"
        assert all(f[2] != 1 for f in raw.frames if f[0] == WINDOW_UPDATE)
        raw.close()
        apps.release(srv)


def test_data_past_the_connection_window_is_a_connection_error(serve: Serve) -> None:
    """32,766 bytes on one stream (under half the window: no credit for them yet), then
    32,770 on another, read by the server at once (its loop is held while they are sent):
    one byte past the connection's window, within each stream's: GOAWAY
    FLOW_CONTROL_ERROR."""
    apps = Apps()
    with serve(apps, timeout_graceful_shutdown=1) as srv:
        raw = RawH2(srv.port)
        frames = Frames()
        raw.send(frames.post(1, "/never") + frames.post(3, "/never"))
        sent_and_read(raw.sock, frame(DATA, 0, 1, b"x" * 16383) * 2)
        started, held = threading.Event(), threading.Event()

        def hold() -> None:
            started.set()
            held.wait(10)  # (blocks the server's loop)

        srv.loop.call_soon_threadsafe(hold)
        assert started.wait(5)
        burst = frame(DATA, 0, 3, b"x" * 16384) * 2 + frame(DATA, 0, 3, b"xx")
        raw.send(burst)
        wait_until(lambda: unread_by_server(raw.sock) == len(burst), "the burst to arrive")
        held.set()
        assert raw.goaway()[1] == FLOW_CONTROL_ERROR
        assert not [f for f in raw.frames if f[0] == WINDOW_UPDATE]
        raw.close()
        apps.release(srv)


def test_an_app_that_returns_without_reading_gives_the_window_back(serve: Serve) -> None:
    """60,000 bytes to an app that answers without reading them: the connection's window
    comes back, and a 1 MiB upload on the same connection goes through."""
    apps = Apps()
    with serve(apps) as srv:
        client = H2Client(srv.port)
        first = client.request("/return", "POST", open_body=True)
        client.until(h2.events.StreamEnded, first)  # answered (and the app returned)
        push(client, {first: 60000})
        second = client.request("/read", "POST", open_body=True)
        push(client, {second: 2**20}, lambda: apps.read.get("/read") == 2**20)
        assert client.response(second)[1] == b"%d" % 2**20


def test_apps_that_do_not_read_hold_a_window_each(serve: Serve) -> None:
    """Ten streams whose apps never read, the client sending as fast as the windows let
    it: each stream takes one window (the connection's keeps coming back) and then no
    credit comes; the server holds about 10 windows."""
    apps = Apps()
    with serve(apps, timeout_graceful_shutdown=1) as srv:
        client = H2Client(srv.port)
        streams = [client.request(f"/never/{i}", "POST", open_body=True) for i in range(10)]
        bodies = dict.fromkeys(streams, 2**20)
        push(client, bodies, lambda: all(left == 2**20 - WINDOW for left in bodies.values()))
        conn = connection(srv)

        def buffered() -> int:
            return sum(s.cycle.body_size for s in conn.streams.values() if s.cycle is not None)

        wait_until(lambda: buffered() >= 10 * WINDOW, "the server to read the windows")
        settle(srv)
        assert buffered() == 10 * WINDOW
        available(client)
        assert not any(credits(client, stream) for stream in streams)
        apps.release(srv)


def test_padding_counts_against_the_window_and_comes_back(serve: Serve) -> None:
    """Padded DATA (RFC 9113 §6.9.1: the whole payload counts): 37 frames of 1,256 bytes,
    1,000 of content each, to an app that reads the content: the stream's window comes back
    whole (the credit sent and the credit still owed, in the server's state, make up the
    whole payloads, padding included) and the client saw the credit the server counts."""
    apps = Apps()
    with serve(apps) as srv:
        raw = RawH2(srv.port)
        frames = Frames()
        raw.send(frames.post(1, "/read"))
        padded = frame(DATA, PADDED, 1, bytes([255]) + b"c" * 1000 + b"\0" * 255)
        raw.send(padded * 37)  # 46,472 bytes, 37,000 of content
        wait_until(lambda: apps.read.get("/read") == 37000, "the app to read the content")
        settle(srv)
        try:
            conn = connection(srv)
            left, owed = conn.windows[1], conn.owed.get(1, 0)
            assert left + owed == WINDOW
            sent = left - (WINDOW - 46472)  # the credit the server counts as sent

            def granted() -> int:
                updates = [f[3] for f in raw.frames if f[:3] == (WINDOW_UPDATE, 0, 1)]
                return sum(int.from_bytes(update) for update in updates)

            # Written is not yet readable (a loaded machine's loopback may deliver later):
            # reads that wait (the socket's 5 s timeout) until that much came, then the rest.
            while granted() < sent:
                assert raw.next_frame() is not None
            while raw.buffer or select.select([raw.sock], [], [], 0)[0]:
                assert raw.next_frame() is not None
            assert granted() == sent
            raw.send(frame(DATA, END_STREAM, 1))
            assert raw.until(DATA, 1)[3] == b"37000"
        finally:
            raw.close()


def test_the_body_timeout_waits_for_an_app_that_has_not_read(serve: Serve) -> None:
    """--timeout-request-body measures the client: a stream whose window is full because its
    app has not read is not reset, however long the app takes (the server's check runs
    three times); once the app reads, the client's clock starts again."""
    apps = Apps()
    with serve(apps, timeout_request_body=0.2) as srv:
        client = H2Client(srv.port)
        stream = client.request("/gate", "POST", open_body=True)
        wait_until(lambda: apps.gate is not None, "the app to wait")
        window = client.conn.local_flow_control_window
        push(client, {stream: WINDOW + 1}, lambda: window(stream) == 0)
        conn = connection(srv)
        timers: list[Any] = []

        def checked() -> bool:
            timer = conn.body_timer  # (a new one after each check; kept: ids are reused)
            if timer is not None and all(timer is not seen for seen in timers):
                timers.append(timer)
            return len(timers) >= 4

        wait_until(checked, "three body-timeout checks")
        available(client)
        assert not [e for e in client.events if isinstance(e, h2.events.StreamReset)]
        assert stream in conn.streams
        gate = apps.gate
        assert gate is not None
        srv.loop.call_soon_threadsafe(gate.set)
        reset = client.until(h2.events.StreamReset, stream)  # the last byte never comes
        assert reset.error_code == h2.errors.ErrorCodes.CANCEL


def test_a_client_reset_in_the_middle_of_an_upload(serve: Serve) -> None:
    """RST_STREAM CANCEL after 40,000 bytes of an upload its app is reading: the app's next
    receive() is `http.disconnect` (after the body it was given, never a fake end of it),
    the server keeps no window for the stream, and a 1 MiB upload then goes through on the
    same connection."""
    apps = Apps()
    seen: list[dict[str, Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/watch":
            while not seen or seen[-1]["type"] != "http.disconnect":
                seen.append(await receive())
            return
        await apps(scope, receive, send)

    def taken() -> int:
        return sum(len(message.get("body", b"")) for message in seen)

    with serve(app) as srv:
        client = H2Client(srv.port)
        stream = client.request("/watch", "POST", open_body=True)
        client.conn.send_data(stream, b"a" * 16384)
        client.conn.send_data(stream, b"a" * 16384)
        client.conn.send_data(stream, b"a" * 7232)
        client.flush()
        wait_until(lambda: taken() == 40000, "the app to read 40,000 bytes")
        conn = connection(srv)
        assert stream in conn.windows
        client.conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
        client.flush()
        wait_until(lambda: seen[-1]["type"] == "http.disconnect", "http.disconnect")
        assert all(m["type"] == "http.request" and m["more_body"] for m in seen[:-1]), seen
        wait_until(lambda: stream not in conn.streams, "the stream to be gone")
        assert stream not in conn.windows and stream not in conn.owed
        second = client.request("/read", "POST", open_body=True)
        push(client, {second: 2**20}, lambda: apps.read.get("/read") == 2**20)
        assert client.response(second)[1] == b"%d" % 2**20
