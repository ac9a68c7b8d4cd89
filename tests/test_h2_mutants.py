"""The rules of server/protocols/h2.py that a mutation pass (mutmut 3, docs/testing.md) found
unchecked: every test here failed against at least one mutant the rest of the suite let live.
Over real sockets (TCP, and a Unix socket where the peer has no address), with hand-built
frames where the `h2` library would not send them.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import h2.errors
import h2.events
import hpack
import pytest
from websockets.frames import Frame, Opcode

from fastserve.protocols.h2 import H2WebSocket
from tests.apps.core_apps import App, Probe, Receive, Scope, Send
from tests.apps.ws_apps import flooder
from tests.conftest import run_server
from tests.helpers import abort, error_log, sent_and_read, settle, until_closed, wait_until
from tests.test_http2 import H2Client, close_clients, echo_app  # noqa: F401 (the fixture)
from tests.test_http2_flow import connection
from tests.test_http2_frames import (
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    REQUEST,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    Frames,
    RawH2,
    frame,
    setting,
    u32,
)
from tests.test_http2_websocket import WS, h2_reading_paused, with_http
from tests.test_metrics import samples, value

pytest.importorskip("zttp")


GATES: list[asyncio.Event] = []
ENDS: list[str] = []


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """/hold waits for the client to go; /never never reads (cancelled at shutdown);
    anything else reads its body and is served."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/never":
        ENDS.append("/never: running")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            ENDS.append("/never: cancelled")
            raise
    if scope["path"] == "/gate":  # reads once the test opens GATES[0], and records the end
        gate = asyncio.Event()
        GATES.append(gate)
        await gate.wait()
        while (message := await receive()).get("more_body"):
            pass
        ENDS.append(message["type"])
        return
    if scope["path"] == "/hold":
        while (await receive())["type"] != "http.disconnect":
            pass
        ENDS.append("/hold: http.disconnect")
        return
    if scope["path"] == "/two":  # 300 bytes, then (once GATES[0] opens) 1 more
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"a" * 300, "more_body": True})
        gate = asyncio.Event()
        GATES.append(gate)
        await gate.wait()
        await send({"type": "http.response.body", "body": b"b"})
        return
    if scope["path"] == "/big":  # 100,000 bytes, then 1 more
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"a" * 100000, "more_body": True})
        await send({"type": "http.response.body", "body": b"b"})
        return
    if scope["path"] == "/early":  # answers without reading its body
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"early"})
        return
    if scope["path"] == "/started":  # answers at once, then reads until the disconnect
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200})
    await send({"type": "http.response.body", "body": b"ok"})


class UnixH2(RawH2):
    """RawH2 on a Unix socket."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self.buffer = b""
        self.frames: list[tuple[int, int, int, bytes]] = []
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))


OPEN: list[RawH2] = []


@pytest.fixture(autouse=True)
def close_raw_clients() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


Server = Callable[..., AbstractContextManager[Callable[[], RawH2]]]


@pytest.fixture(params=["tcp", "unix"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Server:
    """`with server(**options) as connect:` a server on TCP or a Unix socket; each client
    `connect()` gives has the `name` the log lines give its peer."""

    @contextmanager
    def serving(**options: Any) -> Iterator[Callable[[], RawH2]]:
        if request.param == "unix":
            path = str(tmp_path / "h2.sock")
            with run_server(app, uds=path, **options):

                def unix() -> RawH2:
                    client = UnixH2(path)
                    client.name = "-:0"  # type: ignore[attr-defined]
                    OPEN.append(client)
                    return client

                yield unix
            return
        with run_server(app, **options) as srv:

            def tcp() -> RawH2:
                client = RawH2(srv.port)
                port = client.sock.getsockname()[1]
                client.name = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
                OPEN.append(client)
                return client

            yield tcp

    return serving


def read_alone(raw: RawH2, data: bytes) -> None:
    """Send `data` and a PING, and wait for the PING's ACK: the server has handled `data`,
    and what is sent next is in a read of its own."""
    raw.send(data + frame(PING, 0, 0, b"readdone"))
    while raw.until(PING)[3] != b"readdone":
        pass


def trickle_until_reset(raw: RawH2, trickling: int, stalled: int) -> None:
    """Send a byte on stream `trickling` every 50 ms or so (reading what comes) until the
    server resets stream `stalled`."""
    deadline = time.monotonic() + 10
    while not any(got[:3] == (RST_STREAM, 0, stalled) for got in raw.frames):
        assert time.monotonic() < deadline, f"no reset: {raw.frames}"
        raw.send(frame(DATA, 0, trickling, b"y"))
        if select.select([raw.sock], [], [], 0.05)[0] or len(raw.buffer) >= 9:
            assert raw.next_frame() is not None


def h2_lines(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if "HTTP/2" in r.getMessage()]


@contextmanager
def logged(expected: str) -> Iterator[None]:
    """The block makes the server log exactly `expected` (and no other HTTP/2 line)."""
    with error_log(logging.INFO) as records:
        yield
        wait_until(lambda: bool(h2_lines(records)), "the line logged")
    assert h2_lines(records) == [expected]


def self_dependent(f: Frames) -> bytes:
    block = u32(1) + b"\x10" + f.block()
    return frame(HEADERS, END_HEADERS | END_STREAM | PRIORITY_FLAG, 1, block)


@pytest.mark.timeout(30)
def test_a_stream_past_its_window_is_logged_with_its_peer(server: Server) -> None:
    with server(timeout_graceful_shutdown=0.2) as connect:
        raw = connect()
        frames = Frames()
        with logged(f"{raw.name} - HTTP/2 stream 1: DATA past its window"):  # type: ignore[attr-defined]
            raw.send(frames.post(1, "/never"))
            raw.send(frame(DATA, 0, 1, b"x" * 16384) * 2 + frame(DATA, 0, 1, b"x" * 7232))
            raw.until(WINDOW_UPDATE, 0)
            raw.send(frame(DATA, 0, 1, b"x" * 16384) + frame(DATA, 0, 1, b"x" * 9152))
            assert int.from_bytes(raw.until(RST_STREAM, 1)[3]) == 0x3
        assert raw.served(frames, 3) == b"ok"


@pytest.mark.timeout(30)
def test_a_stream_past_its_window_is_a_disconnect_and_the_connection_takes_more_bodies() -> None:
    """The app of a stream reset for DATA past its window gets the body it was given, then
    http.disconnect; later uploads on the connection are served."""
    GATES.clear()
    ENDS.clear()
    with run_server(app) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        frames = Frames()
        raw.send(frames.post(1, "/gate"))
        raw.send(frame(DATA, 0, 1, b"x" * 16384) * 2 + frame(DATA, 0, 1, b"x" * 7232))
        raw.until(WINDOW_UPDATE, 0)
        raw.send(frame(DATA, 0, 1, b"x" * 16384) + frame(DATA, 0, 1, b"x" * 9152))
        assert int.from_bytes(raw.until(RST_STREAM, 1)[3]) == 0x3
        wait_until(lambda: len(GATES) == 1, "the app to wait")
        srv.loop.call_soon_threadsafe(GATES[0].set)
        wait_until(lambda: ENDS == ["http.disconnect"], "the app to see the disconnect")
        for stream in (3, 5):
            raw.send(frames.post(stream, "/") + frame(DATA, END_STREAM, stream, b"abc"))
            assert raw.until(DATA, stream)[3] == b"ok"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (frame(PRIORITY, 0, 0, u32(1) + b"\x10"), 0x1),
        (frame(DATA, 0, 5, b"") * 101, 0xB),
    ],
)
def test_a_connection_error_names_the_last_stream_taken(frames: bytes, code: int) -> None:
    with run_server(app) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        f = Frames()
        raw.send(f.get(1, "/ok") + f.post(3, "/hold") + f.post(5, "/hold"))
        assert raw.until(DATA, 1)[3] == b"ok"
        raw.send(frame(HEADERS, END_HEADERS | END_STREAM, 7, f.block([*REQUEST, ("X-Up", "1")])))
        assert int.from_bytes(raw.until(RST_STREAM, 7)[3]) == 0x1  # zttp's: never taken
        raw.send(frames)
        assert raw.goaway() == (5, code)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("frames", "line"),
    [
        (
            lambda f: frame(PRIORITY, 0, 0, u32(1) + b"\x10"),
            "connection error: PRIORITY on stream 0",
        ),
        (self_dependent, "stream 1: depends on itself"),
        (
            lambda f: frame(PRIORITY, 0, 5, u32(5) + b"\x10"),
            "connection error: stream 5 depends on itself",
        ),
        (lambda f: frame(DATA, 0, 0, b"x"), "connection error: "),
        (
            lambda f: [f.post(3, "/hold"), frame(PRIORITY, 0, 3, u32(3) + b"\x10")],
            "stream 3: depends on itself",
        ),
        (
            lambda f: f.post(1, "/hold") + frame(DATA, 0, 1, b"") * 101,
            "empty DATA frames: GOAWAY ENHANCE_YOUR_CALM",
        ),
        (
            lambda f: f.post(1) + frame(DATA, END_STREAM, 1, b"x" * 1001),
            "stream 1: request body too large",
        ),
        (lambda f: f.post(1), "stream 1: request body timeout"),
    ],
)
def test_refusals_are_logged_with_their_peer(
    server: Server, frames: Callable[[Frames], bytes | list[bytes]], line: str
) -> None:
    with server(limit_request_body=1000, timeout_request_body=0.3) as connect:
        raw = connect()
        with error_log(logging.INFO) as records:
            pieces = frames(Frames())
            if isinstance(pieces, list):
                *first, last = pieces
                for piece in first:
                    read_alone(raw, piece)
                pieces = last
            raw.send(pieces)
            got = raw.next_frame()
            while got is not None and got[0] not in (GOAWAY, RST_STREAM, HEADERS):
                got = raw.next_frame()
            wait_until(lambda: bool(h2_lines(records)), "the line logged")
        expected = f"{raw.name} - HTTP/2 {line}"  # type: ignore[attr-defined]
        if line.endswith(": "):  # zttp's own reason follows
            assert [x[: len(expected)] for x in h2_lines(records)] == [expected]
        else:
            assert h2_lines(records) == [expected]


@pytest.mark.timeout(30)
def test_a_stream_depending_on_itself_twice_on_a_connection() -> None:
    """Two open streams made to depend on themselves, one read after the other: each is
    reset, its app gets http.disconnect, and the connection serves on."""
    ENDS.clear()
    with run_server(app) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        f = Frames()
        for count, stream in enumerate((1, 3), 1):
            read_alone(raw, f.post(stream, "/hold"))
            raw.send(frame(PRIORITY, 0, stream, u32(stream) + b"\x10"))
            assert int.from_bytes(raw.until(RST_STREAM, stream)[3]) == 0x1
            wait_until(lambda: len(ENDS) == count, "the app to see the disconnect")  # noqa: B023
        assert raw.served(f, 5) == b"ok"


@pytest.mark.timeout(30)
def test_a_body_over_the_limit_gets_a_whole_413() -> None:
    with run_server(app, limit_request_body=1000) as srv:
        client = H2Client(srv.port)
        stream = client.request("/hold", "POST", open_body=True)
        client.conn.send_data(stream, b"x" * 1001)
        client.flush()
        head, body = client.response(stream)
        assert head.pop("date")
        assert head == {
            ":status": "413",
            "content-type": "text/plain; charset=utf-8",
            "server": "fastserve",
        }
        assert body == b"Request body too large"
        assert client.response(client.request("/ok"))[1] == b"ok"


@pytest.mark.timeout(30)
def test_a_body_over_the_limit_after_the_head_resets_the_stream() -> None:
    with run_server(app, limit_request_body=1000) as srv:
        client = H2Client(srv.port)
        stream = client.request("/started", "POST", open_body=True)
        client.until(h2.events.ResponseReceived, stream)
        client.conn.send_data(stream, b"x" * 1001)
        client.flush()
        reset = client.until(h2.events.StreamReset, stream)
        assert reset.error_code == h2.errors.ErrorCodes.CANCEL
        assert client.response(client.request("/ok"))[1] == b"ok"


@pytest.mark.timeout(30)
def test_window_updates_after_a_wait_for_the_window_are_taken() -> None:
    """A response that waited for the client's window (100 bytes): once the wait is over,
    more WINDOW_UPDATE frames (stream and connection) are taken; the response completes."""
    GATES.clear()
    with run_server(app) as srv:
        raw = RawH2(srv.port, PREFACE + frame(SETTINGS, 0, 0, setting(4, 100)))
        OPEN.append(raw)
        raw.send(Frames().get(1, "/two"))
        assert len(raw.until(DATA, 1)[3]) == 100
        raw.send(frame(WINDOW_UPDATE, 0, 1, u32(1000)))
        assert len(raw.until(DATA, 1)[3]) == 200
        wait_until(lambda: len(GATES) == 1, "the wait for the window to end")
        raw.send(frame(WINDOW_UPDATE, 0, 1, u32(10)) + frame(WINDOW_UPDATE, 0, 0, u32(10)))
        read_alone(raw, b"")
        srv.loop.call_soon_threadsafe(GATES[0].set)
        rest = b""
        while not (got := raw.until(DATA, 1))[1] & END_STREAM:
            rest += got[3]
        assert rest + got[3] == b"b"


@pytest.mark.timeout(30)
def test_the_body_timer_stops_once_no_body_is_on_its_way() -> None:
    with run_server(app, timeout_request_body=0.1) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        f = Frames()
        raw.send(f.post(1, "/") + frame(DATA, END_STREAM, 1, b"abc"))
        assert raw.until(DATA, 1)[3] == b"ok"
        conn = connection(srv)
        wait_until(lambda: conn.body_timer is None, "the body timer to stop", timeout=5)


@pytest.mark.timeout(30)
def test_the_body_timeout_resets_only_the_stalled_streams() -> None:
    """With --timeout-request-body 0.5: a GET whose app runs (1), an upload its app has not
    read (3), a stalled upload (5) and an upload that trickles in (7, a byte at a time
    until the reset): only 5 is reset (CANCEL); 7 then ends and is answered."""
    with run_server(app, timeout_request_body=0.5, timeout_graceful_shutdown=0.2) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        f = Frames()
        raw.send(f.get(1, "/hold") + f.post(3, "/never") + frame(DATA, 0, 3, b"x" * 10))
        raw.send(f.post(5, "/hold") + f.post(7, "/"))
        trickle_until_reset(raw, 7, 5)
        resets = [(got[2], int.from_bytes(got[3])) for got in raw.frames if got[0] == RST_STREAM]
        assert resets == [(5, 0x8)]
        raw.send(frame(DATA, END_STREAM, 7, b"z"))
        assert raw.until(DATA, 7)[3] == b"ok"
        assert [got[2] for got in raw.frames if got[0] == RST_STREAM] == [5]


@pytest.mark.timeout(30)
def test_a_websocket_waiting_for_its_stream_window_is_not_woken_by_the_connections() -> None:
    """A WebSocket app sending 10 kB messages to a client that grants no credit stops at
    the stream's window; WINDOW_UPDATE frames for the connection (not the stream) do not let
    it send more."""
    probe = Probe()
    app = with_http(flooder(probe, 10000, 100))
    with run_server(app, ws_per_message_deflate=False, timeout_graceful_shutdown=0.2) as srv:
        client = H2Client(srv.port)
        ws = WS(client)
        assert ws.head()[":status"] == "200"
        conn = connection(srv)

        def paused() -> bool:
            stream = conn.streams.get(ws.stream_id)
            return isinstance(stream, H2WebSocket) and bool(stream.ws.write_paused)

        wait_until(paused, "the app to wait for the window")
        settle(srv)
        sent = probe.counter
        for _ in range(3):
            client.conn.increment_flow_control_window(1000)
            client.conn.ping(b"wakeup!!")
            client.flush()
            client.until(h2.events.PingAckReceived)
            client.events.clear()
            settle(srv)
        assert probe.counter == sent
        client.close()


def lagging(gates: dict[str, asyncio.Event]) -> App:
    """A WebSocket app that accepts, reads nothing until its gate (by path) opens, then
    reads 5 messages and sends what they say, and waits for the disconnect."""

    async def ws_app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        gate = gates[scope["path"]] = asyncio.Event()
        await gate.wait()
        texts = [(await receive())["text"] for _ in range(5)]
        await send({"type": "websocket.send", "text": " ".join(texts)})
        while (await receive())["type"] != "websocket.disconnect":
            pass

    return with_http(ws_app)


@pytest.mark.timeout(30)
def test_the_connection_reads_again_only_once_every_lagging_websocket_caught_up() -> None:
    """Two WebSockets whose apps do not read fill their queues (--ws-max-queue 4) in one
    read: the connection stops reading; when one app catches up it still does not read;
    when the other does too, it reads again."""
    gates: dict[str, asyncio.Event] = {}
    options = {"ws_max_queue": 4, "ws_per_message_deflate": False}
    with run_server(lagging(gates), timeout_graceful_shutdown=0.2, **options) as srv:
        client = H2Client(srv.port)
        first, second = WS(client, "/a"), WS(client, "/b")
        first.head()
        second.head()
        wait_until(lambda: len(gates) == 2, "both apps to wait")
        for ws in (first, second):
            for i in range(5):
                ws.ws.send_frame(Frame(Opcode.TEXT, b"m%d" % i))
            client.conn.send_data(ws.stream_id, b"".join(ws.ws.data_to_send()))
        client.flush()  # (one write: the server reads both in one pass)
        wait_until(lambda: h2_reading_paused(srv), "the connection to stop reading")
        srv.loop.call_soon_threadsafe(gates["/a"].set)
        assert first.message().data == b"m0 m1 m2 m3 m4"
        settle(srv)
        assert h2_reading_paused(srv)
        srv.loop.call_soon_threadsafe(gates["/b"].set)
        assert second.message().data == b"m0 m1 m2 m3 m4"
        wait_until(lambda: not h2_reading_paused(srv), "the connection to read again")
        client.close()


@pytest.mark.timeout(30)
def test_a_response_waiting_for_the_connections_window_goes_on_with_its_credit() -> None:
    """A client with 1 MiB stream windows and the default 65,535-byte connection window: a
    101,000-byte response stops at the connection's window; a WINDOW_UPDATE for the
    connection (none for the stream) lets the app send the rest."""
    with run_server(app) as srv:
        raw = RawH2(srv.port, PREFACE + frame(SETTINGS, 0, 0, setting(4, 2**20)))
        OPEN.append(raw)
        raw.send(Frames().get(1, "/big"))
        got = 0
        while got < 65535:
            got += len(raw.until(DATA, 1)[3])
        assert got == 65535
        raw.send(frame(WINDOW_UPDATE, 0, 0, u32(2**20)))
        while not (data := raw.until(DATA, 1))[1] & END_STREAM:
            got += len(data[3])
        assert got + len(data[3]) == 100001


@pytest.mark.timeout(30)
def test_the_connection_window_is_granted_back_byte_for_byte() -> None:
    """Two uploads of 40,000 bytes, one after the other's credit, to an app that reads:
    the connection's WINDOW_UPDATE frames add up to exactly the 80,000 bytes received."""
    with run_server(app) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        raw.send(Frames().post(1, "/"))
        batch = frame(DATA, 0, 1, b"x" * 16384) * 2 + frame(DATA, 0, 1, b"x" * 7232)

        def granted(stream: int) -> int:
            return sum(
                int.from_bytes(f[3]) for f in raw.frames if f[:3] == (WINDOW_UPDATE, 0, stream)
            )

        for total in (40000, 80000):
            raw.send(batch)
            while min(granted(0), granted(1)) <= total - 40000:  # (both credits came)
                assert raw.next_frame() is not None
        raw.send(frame(DATA, END_STREAM, 1))
        assert raw.until(DATA, 1)[3] == b"ok"
        assert granted(0) == 80000


@pytest.mark.timeout(30)
def test_expect_100_continue_gets_its_100_over_http2() -> None:
    with run_server(app) as srv:
        client = H2Client(srv.port)
        stream = client.request("/", "POST", headers=[("expect", "100-continue")], open_body=True)
        interim = client.until(h2.events.InformationalResponseReceived, stream)
        assert dict(interim.headers)[":status"] == "100"
        client.conn.send_data(stream, b"abc", end_stream=True)
        client.flush()
        assert client.response(stream)[1] == b"ok"


@pytest.mark.timeout(30)
def test_an_app_still_running_after_the_graceful_timeout_is_cancelled() -> None:
    ENDS.clear()
    with run_server(app, timeout_graceful_shutdown=0.2) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        raw.send(Frames().post(1, "/never"))
        wait_until(lambda: ENDS == ["/never: running"], "the app to run")
        srv.stop()
    assert ENDS == ["/never: running", "/never: cancelled"]


@pytest.mark.timeout(30)
def test_a_body_of_exactly_the_limit_is_taken() -> None:
    with run_server(app, limit_request_body=1000) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        raw.send(Frames().post(1, "/") + frame(DATA, END_STREAM, 1, b"x" * 1000))
        assert raw.until(DATA, 1)[3] == b"ok"


@pytest.mark.timeout(30)
def test_an_upload_to_an_app_that_answered_without_reading_gets_its_credit() -> None:
    """The app answers and returns before the body: the client may still send 100,000
    bytes (more than a window) on the stream; the dropped bytes are credited back."""
    with run_server(app) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        raw.send(Frames().post(1, "/early"))
        assert raw.until(DATA, 1)[3] == b"early"
        window, left = 65535, 100000
        while left:
            size = min(16384, window, left)
            if size:
                raw.send(frame(DATA, END_STREAM if size == left else 0, 1, b"x" * size))
                window, left = window - size, left - size
            else:
                window += int.from_bytes(raw.until(WINDOW_UPDATE, 1)[3])
        read_alone(raw, b"")  # (the connection serves on)


@pytest.mark.timeout(30)
def test_a_stream_not_yet_stalled_at_a_body_check_is_checked_again() -> None:
    """Stream 1 stalls, stream 3 trickles in until 1 is reset (CANCEL), then stalls too:
    a later check resets it."""
    with run_server(app, timeout_request_body=0.5) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        f = Frames()
        raw.send(f.post(1, "/hold") + f.post(3, "/hold"))
        trickle_until_reset(raw, 3, 1)
        assert int.from_bytes(raw.until(RST_STREAM, 3)[3]) == 0x8


@pytest.mark.timeout(30)
def test_the_body_over_the_limit_and_what_follows_it_are_credited() -> None:
    """The DATA frame that passes --limit-request-body (1,001 bytes) and one read with it
    (31,766 in two frames): all are dropped, and credited back (half a window: one
    WINDOW_UPDATE)."""
    with run_server(app, limit_request_body=1000) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        raw.send(Frames().post(1, "/hold"))
        more = frame(DATA, 0, 1, b"x" * 16384) + frame(DATA, 0, 1, b"x" * 15382)
        raw.send(frame(DATA, 0, 1, b"x" * 1001) + more)
        assert int.from_bytes(raw.until(WINDOW_UPDATE, 1)[3]) == 32767


# -- session 10: the mutants the first pass never reached ------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(f"x-{i}", "v") for i in range(4)], (200, b"2 GET / 0")),  # 5 fields with host
        ([(f"x-{i}", "v") for i in range(5)], (431, b"Too many request header fields")),
        ([("x-a", "v" * 97)], (200, b"2 GET / 0")),  # 3 + 97 bytes
        ([("x-a", "v" * 98)], (431, b"Request header field too large")),
        ([("content-length", "1001")], (413, b"Request body too large")),
        ([("content-length", "1000")], (200, b"2 POST / 1000")),
    ],
)
def test_each_request_limit_at_and_just_past_its_value(
    headers: list[tuple[str, str]], expected: tuple[int, bytes]
) -> None:
    """--limit-request-fields 5, --limit-request-field-size 100 (name and value) and
    --limit-request-body 1000 by content-length: at the limit the request is served, one
    past it refused with its status and reason."""
    options = {"limit_request_fields": 5, "limit_request_field_size": 100}
    with run_server(echo_app(), limit_request_body=1000, **options) as srv:
        client = H2Client(srv.port)
        if headers[0][0] == "content-length":
            stream = client.request("/", "POST", headers=headers, open_body=True)
            if expected[0] == 200:
                client.conn.send_data(stream, b"x" * 1000, end_stream=True)
                client.flush()
        else:
            stream = client.request("/", headers=headers)
        head, body = client.response(stream)
        assert (int(head[":status"]), body) == expected


@pytest.mark.timeout(30)
def test_a_content_length_without_a_body_limit_is_served() -> None:
    with run_server(echo_app()) as srv:
        client = H2Client(srv.port)
        stream = client.request("/", "POST", headers=[("content-length", "3")], open_body=True)
        client.conn.send_data(stream, b"abc", end_stream=True)
        client.flush()
        assert client.response(stream)[1] == b"2 POST / 3"


def settings_entries(payload: bytes) -> list[tuple[int, int]]:
    return [
        (int.from_bytes(payload[at : at + 2]), int.from_bytes(payload[at + 2 : at + 6]))
        for at in range(0, len(payload), 6)
    ]


ZTTP_SETTINGS = [(0x6, 65536), (0x1, 4096), (0x5, 16384)]  # zttp's own, kept as they are


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("options", "settings", "second"),
    [
        ({}, [*ZTTP_SETTINGS, (0x8, 1), (0x3, 100)], (SETTINGS, 1, 0, b"")),
        ({"ws": "none"}, [*ZTTP_SETTINGS, (0x3, 100)], (SETTINGS, 1, 0, b"")),
        (
            {"http2_initial_window_size": 100000, "http2_max_concurrent_streams": 7},
            [*ZTTP_SETTINGS, (0x8, 1), (0x3, 7), (0x4, 100000)],
            (WINDOW_UPDATE, 0, 0, u32(100000 - 65535)),
        ),
    ],
    ids=["defaults", "no websockets", "window and streams"],
)
def test_the_servers_first_settings_frame_entry_by_entry(
    options: dict[str, Any], settings: list[tuple[int, int]], second: tuple[int, int, int, bytes]
) -> None:
    """zttp's SETTINGS with its MAX_CONCURRENT_STREAMS (128) and ENABLE_CONNECT_PROTOCOL
    replaced by ours, each once, in a well-formed frame; then the connection's
    WINDOW_UPDATE when the window is not the default, else the ACK of the client's
    SETTINGS (nothing in between)."""
    with run_server(echo_app(), **options) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        kind, flags, stream, payload = raw.next_frame() or (0, 0, 0, b"")
        assert (kind, flags, stream) == (SETTINGS, 0, 0)
        assert settings_entries(payload) == settings
        assert raw.next_frame() == second
        assert raw.served(Frames(), 1) == b"2 GET /ok 0"


def upload(raw: RawH2, stream: int, size: int, mark: int = 0) -> None:
    """`size` bytes on `stream` (its frames' stream ids or'ed with `mark`), sent as the
    stream's window allows: each WINDOW_UPDATE for it is waited for (silence fails)."""
    window, left = 65535, size
    while left:
        chunk = min(16384, window, left)
        if chunk:
            flags = END_STREAM if chunk == left else 0
            raw.send(frame(DATA, flags, stream | mark, b"x" * chunk))
            window, left = window - chunk, left - chunk
        else:
            window += int.from_bytes(raw.until(WINDOW_UPDATE, stream)[3])


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("stream", "mark"),
    [(0x01020305, 0), (0x7F000001, 0), (1, 0x80000000)],
    ids=["every byte of the id", "the top byte", "the reserved bit set"],
)
def test_an_upload_on_a_stream_id_of_every_byte_gets_its_credit(stream: int, mark: int) -> None:
    """The frame walk reads a frame's 31-bit stream id from its four bytes (the reserved
    bit ignored, RFC 9113 §4.1): a 100,000-byte upload (more than a window) on such a
    stream gets its credit and its answer."""
    with run_server(echo_app()) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        fields = [(":method", "POST"), (":scheme", "http"), (":path", "/"), (":authority", "t")]
        raw.send(frame(HEADERS, END_HEADERS, stream | mark, Frames().block(fields)))
        upload(raw, stream, 100000, mark)
        assert raw.until(DATA, stream)[3] == b"2 POST / 100000"


async def answers_then_waits(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers at once without reading its body, then runs on (until cancelled)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200})
    await send({"type": "http.response.body", "body": b"answered"})
    await asyncio.Event().wait()


@pytest.mark.timeout(30)
def test_an_upload_to_an_app_that_answered_and_runs_on_gets_its_credit() -> None:
    """The app answered and still runs: the body that comes after is dropped and credited
    back to the stream (100,000 bytes, more than a window, get through)."""
    with run_server(answers_then_waits, timeout_graceful_shutdown=0.2) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        raw.send(Frames().post(1, "/"))
        assert raw.until(DATA, 1)[3] == b"answered"
        upload(raw, 1, 100000)
        read_alone(raw, b"")  # (the connection serves on)
        assert raw.served(Frames(), 3) == b"answered"


@pytest.mark.timeout(30)
def test_a_dropped_body_that_stalls_is_a_body_timeout() -> None:
    """The app answered and runs on; the body the client sends is dropped, then stalls:
    --timeout-request-body resets the stream (CANCEL), from the dropped bytes' arrival."""
    with run_server(answers_then_waits, timeout_request_body=0.3) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        raw.send(Frames().post(1, "/"))
        assert raw.until(DATA, 1)[3] == b"answered"
        raw.send(frame(DATA, 0, 1, b"x"))
        assert int.from_bytes(raw.until(RST_STREAM, 1)[3]) == 0x8


async def shapes(scope: Scope, receive: Receive, send: Send) -> None:
    """Responses of each shape, by path."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    headers: list[tuple[bytes, bytes]] = [(b"X-Mixed", b"1")]
    if path == "/hop":  # connection-specific fields, dropped
        for name in (b"Connection", b"Keep-Alive", b"Proxy-Connection", b"Upgrade"):
            headers.append((name, b"x"))
        headers.append((b"Transfer-Encoding", b"chunked"))
    if path == "/length":
        headers.append((b"content-length", b"5"))
    if path == "/server":
        headers.append((b"Server", b"mine"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if path == "/stream":
        await send({"type": "http.response.body", "body": b"ab", "more_body": True})
        await send({"type": "http.response.body", "body": b"cd"})
    elif path == "/empty":
        await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.body", "body": b"hello"})


def exchange_frames(
    raw: RawH2, stream: int, method: str, path: str
) -> tuple[list[tuple[bytes, bytes]], list[tuple[int, int, bytes]]]:
    """A request's response: its header fields (as sent, date left out) and its frames
    (type, flags, payload) up to END_STREAM."""
    fields = [(":method", method), (":scheme", "http"), (":path", path), (":authority", "t")]
    raw.send(frame(HEADERS, END_HEADERS | END_STREAM, stream, Frames().block(fields)))
    got: list[tuple[int, int, bytes]] = []
    while not got or not got[-1][1] & END_STREAM:
        kind, flags, on, payload = raw.next_frame() or (-1, END_STREAM, stream, b"")
        if on == stream:
            got.append((kind, flags, payload))
    assert got[0][0] == HEADERS, got
    head = hpack.Decoder().decode(got[0][2], raw=True)
    return [(n, v) for n, v in head if n != b"date"], [(k, f, p) for k, f, p in got[1:]]


SHAPES: list[tuple[str, str, list[tuple[bytes, bytes]], list[bytes]]] = [
    ("GET", "/", [(b"content-length", b"5")], [b"hello"]),
    ("GET", "/hop", [(b"content-length", b"5")], [b"hello"]),
    ("GET", "/length", [(b"content-length", b"5")], [b"hello"]),
    ("GET", "/stream", [], [b"ab", b"cd"]),
    ("GET", "/empty", [(b"content-length", b"0")], []),
    ("HEAD", "/", [], []),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("method", "path", "length", "bodies"), SHAPES)
def test_response_heads_and_frames_of_each_shape(
    method: str, path: str, length: list[tuple[bytes, bytes]], bodies: list[bytes]
) -> None:
    """Lower-case names, no connection-specific field, one content-length (the app's, or
    ours for a whole body, none for a streamed one or a HEAD), the defaults after; a
    response without body is one HEADERS frame with END_STREAM."""
    with run_server(shapes) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        head, frames = exchange_frames(raw, 1, method, path)
        assert head == [
            (b":status", b"200"),
            (b"x-mixed", b"1"),
            *length,
            (b"server", b"fastserve"),
        ]
        if not bodies:
            assert frames == []
        else:
            # (zttp's end_message() ends the stream with an empty DATA frame of its own)
            assert [(k, p) for k, _, p in frames] == [(DATA, b) for b in [*bodies, b""]]
            assert [f & END_STREAM for _, f, _ in frames] == [0] * len(bodies) + [1]


@pytest.mark.timeout(30)
def test_an_apps_own_server_field_replaces_the_default() -> None:
    with run_server(shapes) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        head, _ = exchange_frames(raw, 1, "GET", "/server")
        assert [v for n, v in head if n == b"server"] == [b"mine"]


@pytest.mark.timeout(30)
def test_a_body_that_never_comes_to_an_app_that_never_reads_is_a_body_timeout() -> None:
    """No DATA at all, and an app that has not called receive(): nothing waits unread, so
    --timeout-request-body resets the stream (CANCEL)."""
    with run_server(app, timeout_request_body=0.3, timeout_graceful_shutdown=0.2) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        raw.send(Frames().post(1, "/never"))
        assert int.from_bytes(raw.until(RST_STREAM, 1)[3]) == 0x8


@pytest.mark.timeout(30)
def test_a_closed_connection_checks_no_more_bodies() -> None:
    """Two uploads that stall, to apps that never end; the client leaves: no body timeout
    is logged for them later (one timer for the connection, cancelled at the close).
    Another connection's stream, opened after, times out and is the only line."""
    ENDS.clear()
    with (
        run_server(app, timeout_request_body=0.3, timeout_graceful_shutdown=0.2) as srv,
        error_log(logging.INFO) as records,
    ):
        raw = RawH2(srv.port)
        OPEN.append(raw)
        f = Frames()
        raw.send(f.post(1, "/never") + f.post(3, "/never"))
        wait_until(lambda: ENDS == ["/never: running"] * 2, "both apps to run")
        conn = connection(srv)
        raw.close()
        wait_until(lambda: conn.closed, "the connection to close")
        other = RawH2(srv.port)
        OPEN.append(other)
        other.send(Frames().post(1, "/hold"))
        assert int.from_bytes(other.until(RST_STREAM, 1)[3]) == 0x8
        port = other.sock.getsockname()[1]
        wait_until(lambda: bool(h2_lines(records)), "the line logged")
        assert h2_lines(records) == [f"127.0.0.1:{port} - HTTP/2 stream 1: request body timeout"]


@pytest.mark.timeout(60)
def test_one_byte_credits_add_up_to_a_window_update_at_exactly_half_a_window() -> None:
    """PADDED DATA frames with no data and no padding (a payload of the pad-length byte
    alone) each give one byte back: 32,766 of them earn no WINDOW_UPDATE, the 32,767th
    (half the 65,535-byte window) one of exactly 32,767; and again from zero."""
    with run_server(app, timeout_graceful_shutdown=0.2) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        raw.send(Frames().post(1, "/hold"))
        pad = frame(DATA, PADDED, 1, b"\x00")

        def credited() -> list[int]:
            return [int.from_bytes(f[3]) for f in raw.frames if f[:3] == (WINDOW_UPDATE, 0, 1)]

        for updates in ([32767], [32767, 32767]):
            read_alone(raw, pad * 32766)
            assert credited() == updates[:-1]
            read_alone(raw, pad)
            assert credited() == updates


@pytest.mark.timeout(30)
def test_a_new_stream_read_with_another_streams_self_dependence_is_served() -> None:
    """One read: a PRIORITY frame making open stream 3 depend on itself, and a GET on
    stream 5. Stream 3 is reset (PROTOCOL_ERROR); stream 5 is served."""
    with run_server(app) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        f = Frames()
        read_alone(raw, f.post(3, "/hold"))
        raw.send(frame(PRIORITY, 0, 3, u32(3) + b"\x10") + f.get(5, "/ok"))
        assert int.from_bytes(raw.until(RST_STREAM, 3)[3]) == 0x1
        # Stream 5's answer may come before or after the reset (both are right): reading up
        # to the reset may have passed it already.
        if not any(got[0] == DATA and got[2] == 5 for got in raw.frames):
            raw.until(DATA, 5)
        assert b"".join(got[3] for got in raw.frames if got[0] == DATA and got[2] == 5) == b"ok"
        assert [got[2] for got in raw.frames if got[0] == RST_STREAM] == [3]


def connection_lines(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if "HTTP/2 connection" in r.getMessage()]


@pytest.mark.timeout(30)
def test_with_log_connections_a_client_closing_is_one_closed_line(server: Server) -> None:
    with server(log_level="debug") as connect, error_log(logging.DEBUG) as records:
        raw = connect()
        assert raw.served(Frames(), 1) == b"ok"
        raw.close()
        wait_until(lambda: bool(connection_lines(records)), "the line logged")
        assert connection_lines(records) == [f"{raw.name} - HTTP/2 connection closed"]  # type: ignore[attr-defined]


@pytest.mark.timeout(30)
def test_with_log_connections_a_client_resetting_is_one_reset_line() -> None:
    with run_server(app, log_level="debug") as srv, error_log(logging.DEBUG) as records:
        raw = RawH2(srv.port)
        port = raw.sock.getsockname()[1]
        assert raw.served(Frames(), 1) == b"ok"
        abort(raw.sock)
        wait_until(lambda: bool(connection_lines(records)), "the line logged")
        assert connection_lines(records) == [f"127.0.0.1:{port} - HTTP/2 connection reset"]


@pytest.mark.timeout(30)
def test_without_log_connections_no_h2_connection_line_is_logged() -> None:
    """At --log-level info, whatever the logger's level: no connection line (a connection
    error's own line is the only one)."""
    with run_server(app, log_level="info") as srv, error_log(logging.DEBUG) as records:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        assert raw.served(Frames(), 1) == b"ok"
        raw.send(frame(PRIORITY, 0, 0, u32(1) + b"\x10"))
        raw.goaway()
        wait_until(lambda: bool(h2_lines(records)), "the line logged")
        peer = f"127.0.0.1:{raw.sock.getsockname()[1]}"
        assert h2_lines(records) == [f"{peer} - HTTP/2 connection error: PRIORITY on stream 0"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("end", ["END_STREAM", "RST_STREAM"])
def test_a_stream_whose_body_ended_gets_no_window_credit(end: str) -> None:
    """40,000 bytes (more than half a window) read by the app after the client ended the
    stream (END_STREAM on the last DATA frame) or reset it: no WINDOW_UPDATE for the
    stream, which takes no more DATA; the connection's is granted as the bytes arrive."""
    GATES.clear()
    ENDS.clear()
    with run_server(app) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        raw.send(Frames().post(1, "/gate"))
        body = frame(DATA, 0, 1, b"x" * 16384) * 2 + frame(DATA, 0, 1, b"x" * 7232)
        if end == "END_STREAM":
            body += frame(DATA, END_STREAM, 1)
        else:
            body += frame(RST_STREAM, 0, 1, u32(0x8))
        read_alone(raw, body)
        wait_until(lambda: len(GATES) == 1, "the app to wait")
        srv.loop.call_soon_threadsafe(GATES[0].set)
        ended = ["http.request" if end == "END_STREAM" else "http.disconnect"]
        wait_until(lambda: ended == ENDS, "the app to read the body")
        read_alone(raw, b"")
        assert [f[2] for f in raw.frames if f[0] == WINDOW_UPDATE] == [0]


@pytest.mark.timeout(30)
def test_the_ack_of_the_drain_ping_with_no_drain_begun_ends_the_connection_cleanly() -> None:
    """A PING ACK carrying the server's drain payload (b"fs-drain") is taken as the end
    of a graceful GOAWAY even when none was begun (no timer to cancel): the last GOAWAY
    (NO_ERROR, the last stream taken), then the close."""
    with run_server(app) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        assert raw.served(Frames(), 3) == b"ok"
        raw.send(frame(PING, 0x1, 0, b"fs-drain"))
        assert raw.goaway() == (3, 0x0)


@pytest.mark.timeout(30)
def test_a_second_ack_of_the_drain_ping_sends_no_second_goaway() -> None:
    """With a stream in flight, two PING ACKs carrying the drain payload: one GOAWAY
    (NO_ERROR, the last stream taken); the connection stays for the stream."""
    with run_server(app, timeout_graceful_shutdown=0.2) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        read_alone(raw, Frames().post(1, "/hold"))
        ack = frame(PING, 0x1, 0, b"fs-drain")
        read_alone(raw, ack)
        read_alone(raw, ack)
        goaways = [f[3] for f in raw.frames if f[0] == GOAWAY]
        assert goaways == [u32(1) + u32(0)]


@pytest.mark.timeout(30)
def test_the_last_goaway_names_the_last_stream_taken_not_one_the_engine_refused() -> None:
    """Streams 1 (served) and 3 (in flight) are taken; 5 is malformed (an upper-case field
    name: zttp resets it, it is never taken). The drain's last GOAWAY names 3."""
    with run_server(app, timeout_graceful_shutdown=0.2) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        f = Frames()
        assert raw.served(f, 1) == b"ok"
        read_alone(raw, f.post(3, "/hold"))
        raw.send(frame(HEADERS, END_HEADERS | END_STREAM, 5, f.block([*REQUEST, ("X-Up", "1")])))
        assert int.from_bytes(raw.until(RST_STREAM, 5)[3]) == 0x1
        read_alone(raw, frame(PING, 0x1, 0, b"fs-drain"))
        assert [got[3] for got in raw.frames if got[0] == GOAWAY] == [u32(3) + u32(0)]


@pytest.mark.timeout(30)
def test_http2_metrics_count_each_connection_byte_and_refusal_once() -> None:
    """Two prior-knowledge connections: one served, one refused (431, too many fields).
    fastserve_received_bytes_total is exactly what they sent (the read carrying the preface
    is counted once, though http1.py reads it first and hands it over), two h2
    connections, one 431."""
    with run_server(app, metrics=True, metrics_port=0, limit_request_fields=5) as srv:
        assert srv.server.metrics is not None
        served, refused = RawH2(srv.port), RawH2(srv.port)
        OPEN.extend([served, refused])
        get = Frames().get(1, "/ok")
        served.send(get)
        assert served.until(DATA, 1)[3] == b"ok"
        fields = [*REQUEST, *[(f"x-{i}", "v") for i in range(6)]]
        many = frame(HEADERS, END_HEADERS | END_STREAM, 1, Frames().block(fields))
        refused.send(many)
        head = dict(hpack.Decoder().decode(refused.until(HEADERS, 1)[3], raw=True))
        assert head[b":status"] == b"431"
        found = samples(srv.server.metrics.port)
    start = PREFACE + frame(SETTINGS, 0, 0)
    assert value(found, "fastserve_received_bytes_total") == 2 * len(start) + len(get + many)
    assert value(found, "fastserve_connections_total", protocol="h2") == 2
    assert value(found, "fastserve_requests_rejected_total", status="431") == 1


@pytest.mark.timeout(30)
def test_a_connection_error_before_any_stream_names_stream_0() -> None:
    with run_server(app) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        raw.send(frame(PRIORITY, 0, 0, u32(1) + b"\x10"))
        assert raw.goaway() == (0, 0x1)


@pytest.mark.timeout(30)
def test_a_shutdown_after_the_idle_goaway_sends_no_second_drain() -> None:
    """An idle connection got its first GOAWAY (after --timeout-keep-alive) and did not
    answer the PING; the server then shuts down: no second PING and GOAWAY, only the last
    GOAWAY (NO_ERROR, stream 1) once the wait is over, and the close."""
    with run_server(app, timeout_keep_alive=0.3) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        assert raw.served(Frames(), 1) == b"ok"
        assert raw.until(GOAWAY)[3] == u32(2**31 - 1) + u32(0)
        srv.loop.call_soon_threadsafe(srv.server.handle_exit)
        while raw.next_frame() is not None:
            pass
        goaways = [got[3] for got in raw.frames if got[0] == GOAWAY]
        assert goaways == [u32(2**31 - 1) + u32(0), u32(1) + u32(0)]
        assert [got[3] for got in raw.frames if got[0] == PING] == [b"fs-drain"]


@pytest.mark.timeout(30)
def test_after_a_connection_error_what_the_client_still_sends_is_read_and_dropped() -> None:
    """The GOAWAY and the FIN go out, then the server lingers (linger.py): bytes the client
    sends after are read (and dropped), not answered by a reset."""
    with run_server(app) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        raw.send(frame(PRIORITY, 0, 0, u32(1) + b"\x10"))
        assert raw.goaway() == (0, 0x1)
        sent_and_read(raw.sock, frame(PING, 0, 0, b"12345678") * 100)


@pytest.mark.timeout(30)
def test_a_new_stream_depending_on_itself_is_reset_before_its_app_runs() -> None:
    """HEADERS that make new stream 1 (/never) depend on itself: the stream is reset
    (PROTOCOL_ERROR) and its app never starts; stream 3, opened after it, is served (its
    app started after stream 1's would have)."""
    ENDS.clear()
    with run_server(app) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        f = Frames()
        block = u32(1) + b"\x10" + f.block(path="/never")
        raw.send(frame(HEADERS, END_HEADERS | END_STREAM | PRIORITY_FLAG, 1, block))
        assert raw.reset_code(1) == 0x1
        assert raw.served(f, 3) == b"ok"
        assert ENDS == []


@pytest.mark.timeout(30)
def test_a_ping_from_the_client_with_the_drain_payload_is_only_answered() -> None:
    """A PING (not an ACK) carrying the server's drain payload is answered with its ACK and
    nothing else: no GOAWAY, and the connection serves on."""
    with run_server(app) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        raw.send(frame(PING, 0, 0, b"fs-drain"))
        assert raw.until(PING) == (PING, 0x1, 0, b"fs-drain")
        assert raw.served(Frames(), 1) == b"ok"
        assert [got for got in raw.frames if got[0] == GOAWAY] == []


@pytest.mark.timeout(30)
def test_an_engine_connection_error_is_logged_with_the_engines_reason() -> None:
    """DATA on stream 0 (zttp's connection error): the line gives zttp's reason."""
    with run_server(app) as srv, error_log(logging.INFO) as records:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        peer = f"127.0.0.1:{raw.sock.getsockname()[1]}"
        raw.send(frame(DATA, 0, 0, b"x"))
        assert raw.goaway() == (0, 0x1)
        wait_until(lambda: bool(h2_lines(records)), "the line logged")
        assert h2_lines(records) == [f"{peer} - HTTP/2 connection error: HTTP/2 protocol error"]


@pytest.mark.timeout(30)
def test_the_keep_alive_timeout_runs_from_the_end_of_the_last_stream() -> None:
    """--timeout-keep-alive 1.5: a request made 1 s after the connection opened (the
    connection was idle, then busy) is served; the idle GOAWAY comes 1.5 s after that
    response, not 1.5 s after the connection opened."""
    with run_server(app, timeout_keep_alive=1.5) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        read_alone(raw, b"")
        time.sleep(1.0)  # (the input: an idle second before the request)
        assert raw.served(Frames(), 1) == b"ok"
        served = time.monotonic()
        assert raw.until(GOAWAY)[3] == u32(2**31 - 1) + u32(0)
        assert time.monotonic() - served > 1.0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("busy", [False, True])
def test_a_closed_connection_leaves_the_servers_connection_and_idle_lists(busy: bool) -> None:
    """The client closes an idle connection, or one whose stream's app (/hold) is still
    running and ends on the disconnect: the server keeps it in neither list."""
    ENDS.clear()
    with run_server(app, timeout_keep_alive=60) as srv:
        state = srv.server.state
        assert state is not None
        raw = RawH2(srv.port)
        OPEN.append(raw)
        assert raw.served(Frames(), 1) == b"ok"
        conn = connection(srv)
        wait_until(lambda: conn in state.idle_conns.deadlines, "the connection to be idle")
        if busy:
            read_alone(raw, Frames().post(3, "/hold"))
        raw.close()
        if busy:
            wait_until(lambda: ENDS == ["/hold: http.disconnect"], "the app to end")
        wait_until(
            lambda: conn not in state.connections and conn not in state.idle_conns.deadlines,
            "the connection to leave both lists",
        )


def get_batch(raw: RawH2, f: Frames, streams: range) -> None:
    """GETs on `streams`, in one write; until every one is answered (no GOAWAY meanwhile)."""
    raw.send(b"".join(f.get(stream, "/ok") for stream in streams))
    ended = 0
    while ended < len(streams):
        got = raw.next_frame()
        assert got is not None and got[0] != GOAWAY, f"{got}"
        if got[0] == DATA and got[1] & END_STREAM:
            ended += 1


@pytest.mark.timeout(90)
def test_a_connection_is_retired_after_its_4000th_stream_not_before() -> None:
    """3,999 GETs (in batches of 100) are served with no GOAWAY; the 4,000th is served,
    then the first GOAWAY of the retirement (NO_ERROR, 2^31-1) comes. (A long keep-alive
    timeout: the idle connection's GOAWAY, the same frame, must not stand in for it.)"""
    with run_server(app, timeout_keep_alive=60) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        f = Frames()
        for first in range(1, 7999, 200):
            get_batch(raw, f, range(first, min(first + 200, 7999), 2))
        read_alone(raw, b"")
        assert [got for got in raw.frames if got[0] == GOAWAY] == []
        get_batch(raw, f, range(7999, 8000))
        assert raw.until(GOAWAY)[3] == u32(2**31 - 1) + u32(0)


@pytest.mark.timeout(90)
def test_the_4080th_stream_of_a_connection_never_idle_gets_the_last_goaway() -> None:
    """Stream 1 (/hold) keeps the connection busy (no retirement at an idle moment); 4,078
    GETs (in batches of 99) are served with no GOAWAY; the 4,080th stream taken gets the
    last GOAWAY at once (NO_ERROR, naming it)."""
    with run_server(app, timeout_graceful_shutdown=0.2) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        f = Frames()
        read_alone(raw, f.post(1, "/hold"))
        for first in range(3, 8159, 198):
            get_batch(raw, f, range(first, min(first + 198, 8159), 2))
        read_alone(raw, b"")
        assert [got for got in raw.frames if got[0] == GOAWAY] == []
        read_alone(raw, f.get(8159, "/ok"))
        assert [got[3] for got in raw.frames if got[0] == GOAWAY] == [u32(8159) + u32(0)]


@pytest.mark.timeout(30)
def test_an_extended_connect_that_ends_its_stream_at_once_is_cancelled() -> None:
    """An extended CONNECT (:protocol websocket) with END_STREAM on its HEADERS: the client
    ended the WebSocket before it began. The stream is reset (CANCEL) and gets no response;
    the connection serves on."""
    with run_server(app) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        f = Frames()
        connect = [(":method", "CONNECT"), (":protocol", "websocket"), *REQUEST[1:]]
        raw.send(f.fields([*connect, ("sec-websocket-version", "13")]))
        assert raw.reset_code(1) == 0x8
        assert raw.served(f, 3) == b"ok"
        assert [got[:3] for got in raw.frames if got[2] == 1] == [(RST_STREAM, 0, 1)]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("extra", [[], [("x-note", "100-continue")]])
def test_an_upload_without_expect_gets_no_100_continue(extra: list[tuple[str, str]]) -> None:
    """A POST without `expect: 100-continue` whose app waits in receive() before its body
    comes: no 100 is sent; the stream's only HEADERS are the response's (200). (Also with
    that value in another field: only an `expect` field asks.)"""
    with run_server(app) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        f = Frames()
        fields = [(":method", "POST"), (":scheme", "http"), (":path", "/"), (":authority", "t")]
        read_alone(raw, f.fields(fields + extra, END_HEADERS))
        conn = connection(srv)

        def waiting() -> bool:
            stream = conn.streams.get(1)
            cycle = stream.cycle if stream is not None else None
            return cycle is not None and cycle.waiter is not None

        wait_until(waiting, "the app to wait for its body")
        raw.send(frame(DATA, END_STREAM, 1, b"abc"))
        assert raw.until(DATA, 1)[3] == b"ok"
        heads = [got[3] for got in raw.frames if got[0] == HEADERS and got[2] == 1]
        assert len(heads) == 1
        assert dict(hpack.Decoder().decode(heads[0], raw=True))[b":status"] == b"200"


@pytest.mark.timeout(30)
def test_a_requests_scope_names_the_client_and_the_server() -> None:
    """scope["client"] and scope["server"] of an HTTP/2 request are the connection's two
    ends: the client's address and port, and the server's."""
    probe = Probe()

    async def ends(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            probe.put((scope["client"], scope["server"]))
        await app(scope, receive, send)

    with run_server(ends) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        assert raw.served(Frames(), 1) == b"ok"
        client, server = probe.get()
        assert tuple(client) == raw.sock.getsockname()
        assert tuple(server) == raw.sock.getpeername()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("busy", [False, True])
def test_a_goaway_from_the_client_closes_the_connection_once_its_streams_are_done(
    busy: bool,
) -> None:
    """The client's GOAWAY (NO_ERROR): on an idle connection the server closes at once; with
    stream 1 (/two) between its two writes, a stream opened after the GOAWAY is refused
    (REFUSED_STREAM), stream 1 ends, and then the server closes."""
    GATES.clear()
    with run_server(app) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        f = Frames()
        goaway = frame(GOAWAY, 0, 0, u32(0) + u32(0))
        if busy:
            raw.send(f.get(1, "/two"))
            assert raw.until(DATA, 1)[3] == b"a" * 300
            wait_until(lambda: len(GATES) == 1, "the app to wait")
            raw.send(goaway + f.get(3, "/ok"))
            assert raw.reset_code(3) == 0x7
            srv.loop.call_soon_threadsafe(GATES[0].set)
            rest = [raw.until(DATA, 1)]
            while not rest[-1][1] & END_STREAM:
                rest.append(raw.until(DATA, 1))
            assert b"".join(got[3] for got in rest) == b"b"
        else:
            raw.send(goaway)
        until_closed(raw.sock)
        assert [got for got in raw.frames if got[2] == 3] == [(RST_STREAM, 0, 3, u32(0x7))] * busy


@pytest.mark.timeout(60)
def test_a_client_that_does_not_read_holds_the_app_whatever_its_windows() -> None:
    """A client that opens every window (2^31-1) and then reads nothing: the app, which
    yields after each 64 KiB of its 32 MiB body, is held in send() once the transport's
    buffer is full (the kernel's buffers take a few MiB), not left to queue the whole body."""
    chunk = b"x" * 65536
    sent: list[int] = []

    async def sender(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200})
        for _ in range(512):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent.append(len(chunk))
            await asyncio.sleep(0)  # (the loop pass that writes, and so may pause writing)
        await send({"type": "http.response.body", "body": b""})
        sent.append(0)

    settings = frame(SETTINGS, 0, 0, setting(0x4, 2**31 - 1))
    grant = frame(WINDOW_UPDATE, 0, 0, u32(2**31 - 1 - 65535))
    with run_server(sender, timeout_graceful_shutdown=0.2) as srv:
        raw = RawH2(srv.port, PREFACE + settings + grant)
        OPEN.append(raw)
        raw.send(Frames().get(1, "/"))
        conn = connection(srv)

        def held() -> bool:
            stream = conn.streams.get(1)
            return stream is not None and stream.waiter is not None and conn.write_paused

        wait_until(lambda: held() or sent[-1:] == [0], "the app held, or done", timeout=30)
        assert held()
        assert sum(sent) < 16 * 2**20
        raw.close()


@pytest.mark.timeout(30)
def test_cookie_crumbs_reach_the_app_as_one_field_and_only_as_it() -> None:
    """Two cookie fields (RFC 9113 §8.2.3 crumbs) around another field: the app gets the
    other field once and one cookie field, "a=1; b=2", after it, and no crumb."""
    probe = Probe()

    async def fields(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            probe.put(scope["headers"])
        await app(scope, receive, send)

    with run_server(fields) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        crumbs = [("cookie", "a=1"), ("x-a", "1"), ("cookie", "b=2")]
        raw.send(Frames().fields([*REQUEST, *crumbs]))
        assert raw.until(DATA, 1)[3] == b"ok"
        headers = probe.get()
        named = [(n, v) for n, v in headers if n in (b"cookie", b"x-a")]
        assert named == [(b"x-a", b"1"), (b"cookie", b"a=1; b=2")]
