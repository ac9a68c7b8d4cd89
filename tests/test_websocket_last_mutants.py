"""Tests written for the last surviving mutants of server/protocols/websocket.py (issue 16,
session 14): the close timeout's own bookkeeping, a second close after the HTTP answer that
replaced a handshake, a send after the peer's FIN, back-pressure carried across the upgrade,
and the graceful timeout meeting a refused handshake still flushing. docs/testing.md lists
which mutant each one kills."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import threading
from typing import Any

import h2.errors
import h2.events
import pytest
from websockets.frames import Frame, Opcode

from fastserve.protocols.h2 import H2Protocol
from fastserve.protocols.websocket import OPEN, WebSocketProtocol
from tests.apps.core_apps import Probe
from tests.apps.ws_apps import RawWS, flooder
from tests.helpers import Serve, error_log, loop_held, settle, stalled, wait_until
from tests.test_http2 import H2Client
from tests.test_http2_websocket import WS, h2_reading_paused, with_http, ws_echo

BIG = 16 * 1024 * 1024  # far more than the kernel's socket buffers on loopback hold


def upgrade_request(version: bytes = b"13") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: %s\r\n\r\n" % (key, version)
    )


def websockets_of(state: Any) -> list[WebSocketProtocol]:
    """The server's WebSocket connections, as the test thread sees them."""
    return [c for c in list(state.connections) if isinstance(c, WebSocketProtocol)]


# -- on_close_timeout: the peer never answers our Close -------------------------------------------


@pytest.mark.timeout(30)
def test_the_close_timeout_drops_the_peer_says_why_and_forgets_the_connection(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The debug line names the reason; connection_lost then runs to its end (the access
    log forgets the client, nothing raises in the loop's callbacks)."""
    from fastserve.protocols import websocket

    monkeypatch.setattr(websocket, "CLOSE_TIMEOUT", 0.2)
    probe = Probe()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await receive()
        await send({"type": "websocket.close", "code": 1000})
        probe.put(await receive())

    with serve(app, access_log=True) as srv:
        state = srv.server.state
        assert state is not None and state.access_log is not None
        with (
            error_log(logging.DEBUG) as records,
            error_log(name="asyncio") as loop_errors,
            RawWS(srv.port) as raw,
        ):
            raw.send(Opcode.TEXT, b"x")
            assert raw.recv_close() == (1000, "")
            assert state.access_log.heads  # (the 101's line: remembered for the connection)
            # Neither a Close back nor a FIN: the server drops the connection at the timeout.
            assert raw.at_eof(timeout=5)
            wait_until(lambda: not state.connections, "the connection to be gone")
            messages = [record.getMessage() for record in records]
        assert "WebSocket closing handshake timed out: dropping the connection" in messages
        assert probe.get()["type"] == "websocket.disconnect"
        assert not state.access_log.heads
        assert [r.getMessage() for r in loop_errors] == []


# -- responded: the HTTP answer that replaced the handshake ---------------------------------------


@pytest.mark.timeout(30)
def test_a_second_close_after_the_403_is_harmless(serve: Serve) -> None:
    """websocket.close before accept is a 403; closing again is a no-op, not an error."""
    probe = Probe()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.close"})
        try:
            await send({"type": "websocket.close"})
        except Exception as exc:  # the mutant's TypeError, reported to the test
            probe.put(repr(exc))
        else:
            probe.put("closed twice")

    with serve(app) as srv, error_log() as records, RawWS(srv.port) as raw:
        assert raw.status == 403
        assert probe.get() == "closed twice"
        assert raw.at_eof()
    assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == []


# -- eof_received: the peer's end ends the WebSocket at once ------------------------------------


@pytest.mark.timeout(30)
def test_a_send_after_the_peers_end_stream_fails_at_once(serve: Serve) -> None:
    """Over HTTP/2, a message and the client's END_STREAM in one DATA frame: the server reads
    both before the app, woken by the message, answers. The WebSocket ended with the stream
    (as after a FIN), so the answer fails with OSError (ASGI 2.4) instead of vanishing."""
    probe = Probe()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        probe.put(message.get("text"))
        try:
            await send({"type": "websocket.send", "text": "answer"})
        except OSError as exc:
            probe.put(type(exc).__name__)
        else:
            probe.put("sent")
        probe.put(await receive())

    with serve(with_http(app), ws_per_message_deflate=False) as srv:
        client = H2Client(srv.port)
        ws = WS(client)
        assert ws.head()[":status"] == "200"
        ws.ws.send_frame(Frame(Opcode.TEXT, b"question"))
        client.conn.send_data(ws.stream_id, b"".join(ws.ws.data_to_send()), end_stream=True)
        client.flush()
        assert probe.get() == "question"
        assert probe.get() == "ClientDisconnected"
        assert probe.get() == {"type": "websocket.disconnect", "code": 1006, "reason": ""}
        ws.until_ended()
        client.close()


# -- __init__: write back-pressure carried across the upgrade -------------------------------------


def unread_then_upgrade_app(probe: Probe, total: int, returned: Probe) -> Any:
    """HTTP: a 16 MiB response whose final send() runs on in a task of its own (waiting
    for the client to read) while the app returns (`returned` gets whether that send had
    finished). WebSocket: tests/apps/ws_apps.flooder (64 KiB messages, the sends that
    returned counted in `probe.counter`)."""
    background: list[asyncio.Task[None]] = []
    websocket = flooder(probe, 65536, total)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            body = {"type": "http.response.body", "body": b"b" * BIG}
            background.append(asyncio.ensure_future(send(body)))
            await asyncio.sleep(0)  # its first step writes it all, then waits for a drain
            returned.put(background[0].done())
            return
        for task in background:
            task.cancel()  # (its bytes are in the transport; it waits for a drain)
        await websocket(scope, receive, send)

    return app


@pytest.mark.timeout(60)
def test_a_websocket_upgraded_behind_an_unread_response_waits_to_send(serve: Serve) -> None:
    """The transport's buffer was full before the upgrade (the client has not read the earlier
    response): the WebSocket's send() waits for the client from its first message on."""
    probe, returned = Probe(), Probe()
    total = 512  # 32 MiB if nothing held the app back
    with (
        serve(unread_then_upgrade_app(probe, total, returned), ws_per_message_deflate=False) as srv,
        srv.connect() as sock,
    ):
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        state = srv.server.state
        assert state is not None
        assert returned.get(timeout=10) is False  # (its send waits for the client)
        wait_until(lambda: state.in_flight == 0, "the HTTP exchange to end")
        sock.sendall(upgrade_request())  # and reads nothing
        wait_until(
            lambda: any(ws.phase == OPEN for ws in websockets_of(state)),
            "the app to accept",
        )
        sent = stalled(srv, lambda: probe.counter, "the app's send() calls to stop returning")
        assert sent < total // 2  # send() is waiting for the client
        assert probe.events.empty()
        sock.close()
        assert isinstance(probe.get(timeout=10), OSError)


# -- cancel: the graceful timeout meets a handshake refused while the buffer was full --------------


@pytest.mark.timeout(60)
def test_the_graceful_timeout_drops_a_refused_handshake_still_flushing(serve: Serve) -> None:
    """A refused handshake (426: a WebSocket version we do not speak) has no app task; its
    answer waits behind 16 MiB the client has not read. At the graceful timeout the server
    drops the connection and stops cleanly, with no connection left."""
    probe, returned = Probe(), Probe()
    srv_cm = serve(unread_then_upgrade_app(probe, 1, returned), timeout_graceful_shutdown=0.5)
    with srv_cm as srv, srv.connect() as sock:
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        state = srv.server.state
        assert state is not None
        assert returned.get(timeout=10) is False
        wait_until(lambda: state.in_flight == 0, "the HTTP exchange to end")
        sock.sendall(upgrade_request(b"12"))
        wait_until(
            lambda: bool(websockets_of(state)),
            "the handshake to reach the WebSocket protocol",
        )
        srv.stop()
        assert not state.connections
        # The connection was dropped: the client reads what got through, then the end.
        sock.settimeout(10)
        try:
            while sock.recv(1 << 20):
                pass
        except ConnectionResetError:
            pass


# -- HTTP/2: the WebSocket stream's end (h2.py H2WebSocket) ----------------------------------------


@pytest.mark.timeout(30)
def test_a_websocket_that_ends_while_its_app_lags_gives_the_connection_back(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--ws-max-queue 1 and an app that does not receive: the HTTP/2 connection stops reading
    (every stream waits). The app closes; the client's answer cannot be read, so the close
    timeout resets the stream. The connection reads again: a request on it is answered."""
    from fastserve.protocols import websocket

    monkeypatch.setattr(websocket, "CLOSE_TIMEOUT", 0.2)
    release, probe = threading.Event(), Probe()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while not release.is_set():
            await asyncio.sleep(0.005)
        await send({"type": "websocket.close", "code": 1000})
        probe.put("closed")

    with serve(with_http(app), ws_max_queue=1, ws_per_message_deflate=False) as srv:
        client = H2Client(srv.port)
        ws = WS(client)
        assert ws.head()[":status"] == "200"
        ws.send_text("fills the queue")
        wait_until(lambda: h2_reading_paused(srv), "the connection to stop reading")
        release.set()
        assert probe.get() == "closed"
        assert ws.close_frame().code == 1000
        assert ws.until_reset() == h2.errors.ErrorCodes.CANCEL
        headers, _ = client.response(client.request("/after"))
        assert headers[":status"] == "200"
        client.close()


@pytest.mark.timeout(30)
def test_end_stream_ends_the_websocket_once(serve: Serve) -> None:
    """The client's END_STREAM ends the WebSocket (and our side of the stream) once: one
    "connection closed" debug line, one disconnect for the app."""
    probe = Probe()
    with serve(ws_echo(probe), log_level="debug") as srv:
        state = srv.server.state
        assert state is not None and state.log_connections
        with error_log(logging.DEBUG) as records:
            client = H2Client(srv.port)
            ws = WS(client)
            assert probe.get()["type"] == "websocket"
            ws.end()
            assert probe.get() == {"type": "websocket.disconnect", "code": 1006, "reason": ""}
            ws.until_ended()
            wait_until(
                lambda: not websockets_of(state),
                "the WebSocket to be gone",
            )
            settle(srv)
            closed = [r for r in records if "WebSocket connection closed" in r.getMessage()]
            client.close()
    assert len(closed) == 1, [r.getMessage() for r in closed]


@pytest.mark.timeout(30)
def test_a_denial_body_after_the_client_reset_the_stream_raises(serve: Serve) -> None:
    """A denial response (403) whose body waits for the client's window; the client's
    WINDOW_UPDATE and RST_STREAM are read in one pass, so the app's next piece of body meets a
    stream that is gone: send() raises OSError (ASGI 2.4), saying the client disconnected, as
    for any request."""
    probe = Probe()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.http.response.start", "status": 403, "headers": []})
        try:
            for piece in (b"x" * 100, b"y"):
                body = {"type": "websocket.http.response.body", "body": piece, "more_body": True}
                await send(body)
                probe.put(piece[:1])
        except OSError as exc:
            probe.put(str(exc))

    with serve(with_http(app)) as srv:
        client = H2Client(srv.port, window=10)
        ws = WS(client)
        assert ws.head()[":status"] == "403"
        client.until(h2.events.DataReceived, ws.stream_id)  # 10 bytes: the window
        with loop_held(srv, client.sock):
            client.conn.increment_flow_control_window(90, ws.stream_id)
            client.conn.reset_stream(ws.stream_id)
            client.flush()
        assert probe.get() == b"x"  # the window came: the first piece is out
        assert probe.get() == "client disconnected"
        client.close()


# -- HTTP/2: reading resumes with writing (h2.py H2Protocol.resume_writing) ----------------------


@pytest.mark.timeout(60)
def test_an_http2_connection_reads_again_once_the_client_read_what_was_held(serve: Serve) -> None:
    """A client that reads slowly: the response fills the server's write buffer, so the
    connection stops reading too (h2.py pause_writing). Once the client has read it all, the
    connection reads again: the next request on it is answered."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b"b" * BIG if scope["path"] == "/big" else b"after"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    with serve(app) as srv:
        state = srv.server.state
        assert state is not None
        client = H2Client(srv.port, window=2**31 - 1, receive_buffer=16384)
        client.conn.increment_flow_control_window(2**31 - 1 - 65535)
        first = client.request("/big")
        wait_until(
            lambda: any(isinstance(c, H2Protocol) and c.write_paused for c in state.connections),
            "the server's write buffer to fill",
        )
        (conn,) = [c for c in state.connections if isinstance(c, H2Protocol)]
        assert conn.read_paused  # (what makes the next request wait)
        headers, body = client.response(first)
        assert (headers[":status"], len(body)) == ("200", BIG)
        headers, body = client.response(client.request("/after"))
        assert (headers[":status"], body) == ("200", b"after")
        client.close()
