"""Tests written for the h2.py mutants that survived when session 15 ran again, one at a time,
the mutants whose kills had come from mutmut's own runner (issue 16): the rapid-reset budget
(its exact size and its refill; test_http2.py's rapid-reset test checks the line that names
it), what the graceful timeout cancels on an HTTP/2 connection, and the receive-window books
as streams end (entries dropped, unread bytes credited back). docs/testing.md lists which
mutant each one kills."""

from __future__ import annotations

import asyncio
import logging

import h2.errors
import h2.events
import pytest

from fastserve.protocols import h2 as h2_module
from fastserve.protocols.h2 import RESET_BURST, spend
from tests.apps.core_apps import Probe, Receive, Scope, Send
from tests.helpers import Serve, error_log, wait_until
from tests.test_http2 import H2Client, close_clients, echo_app  # noqa: F401 (the fixture)
from tests.test_http2_flow import connection
from tests.test_http2_websocket import WS

pytest.importorskip("zttp")


def test_the_reset_budget_refills_by_its_rate_a_second_up_to_its_burst() -> None:
    assert spend(10.0, 1.0, 3.0, 200.0, 50.0) == 109.0  # 10 + 2 s x 50, less the one spent
    assert spend(150.0, 0.0, 10.0, 200.0, 50.0) == 199.0  # never above the burst
    assert spend(0.0, 5.0, 5.0, 200.0, 50.0) == -1.0  # no time, no refill: spent


def test_exactly_the_reset_budget_leaves_the_connection_serving(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RESET_BURST resets spend the budget to 0, which is not below it: no GOAWAY. (With no
    refill, so that the budget is exactly 0: the module's rate is patched, which the
    interpreted build reads at each reset.)"""
    monkeypatch.setattr(h2_module, "RESET_RATE", 0.0)
    with serve(echo_app()) as srv:
        client = H2Client(srv.port)
        for _ in range(int(RESET_BURST)):  # one write
            stream = client.request("/", "POST", open_body=True, send=False)
            client.conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
        client.flush()
        assert client.response(client.request("/after"))[1] == b"2 GET /after 0"
        assert not [e for e in client.events if isinstance(e, h2.events.ConnectionTerminated)]
        client.close()


def test_an_http2_request_cancelled_at_shutdown_is_one_warning(serve: Serve) -> None:
    """The graceful timeout passes with a request's app still running: the connection cancels
    it before it closes, so the app's CancelledError is a cancellation (a warning), not an
    exception raised after a disconnect (a debug line)."""

    async def stuck(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        await asyncio.Event().wait()

    with serve(stuck, timeout_graceful_shutdown=0.1) as srv, error_log() as records:
        client = H2Client(srv.port)
        stream = client.request("/")
        assert client.until(h2.events.DataReceived, stream).data == b"partial"
        srv.stop()  # the graceful timeout passes: the app is cancelled
        client.close()
    lines = [(r.levelno, r.getMessage()) for r in records]
    assert (logging.WARNING, "request cancelled (server shutting down)") in lines, lines
    assert (logging.WARNING, "graceful shutdown timed out: cancelling 1 tasks") in lines, lines
    assert [r for r in records if r.levelno >= logging.ERROR] == [], lines


def test_the_graceful_timeout_with_an_http2_websocket_open_stops_the_server(
    serve: Serve,
) -> None:
    """A WebSocket stream has no request cycle: the connection's cancel() passes over it (its
    app's task is the server's to cancel) and the server stops."""
    probe = Probe()

    async def stubborn(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        probe.put("accepted")
        await asyncio.Event().wait()  # ignores the close: cancelled at the deadline

    with serve(stubborn, timeout_graceful_shutdown=0.2) as srv, error_log() as records:
        client = H2Client(srv.port)
        WS(client)
        assert probe.get() == "accepted"
        srv.loop.call_soon_threadsafe(srv.server.handle_exit)
        srv.thread.join(10)
        assert not srv.thread.is_alive(), "the server did not stop"
        client.close()
    lines = [(r.levelno, r.getMessage()) for r in records]
    assert (logging.WARNING, "graceful shutdown timed out: cancelling 1 tasks") in lines, lines
    assert [r for r in records if r.levelno >= logging.ERROR] == [], lines


async def reads_or_not(scope: Scope, receive: Receive, send: Send) -> None:
    """/read: reads the whole body, then answers; /started: answers its head, then reads the
    body; /early: answers without reading it."""
    start = {"type": "http.response.start", "status": 200, "headers": []}
    if scope["path"] == "/started":
        await send(start)
        await send({"type": "http.response.body", "body": b"started", "more_body": True})
    if scope["path"] != "/early":
        while (await receive()).get("more_body"):
            pass
    if scope["path"] != "/started":
        await send(start)
    await send({"type": "http.response.body", "body": b"done"})


def test_a_connections_window_books_are_emptied_as_its_streams_end(serve: Serve) -> None:
    """Each stream's receive window (`windows`) and the credit it is still owed (`owed`) go
    when it ends: by END_STREAM with credit owed, and by the server's reset (a body over the
    limit after the response's head). Checked while another stream keeps the connection busy
    (an idle connection starts its books afresh): one that is never idle, for thousands of
    streams, keeps no entry per ended one."""
    with serve(reads_or_not, limit_request_body=1000) as srv:
        client = H2Client(srv.port)
        conn = connection(srv)
        busy = client.request("/read", "POST", open_body=True)  # ended last
        read = client.request("/read", "POST", open_body=True)
        client.conn.send_data(read, b"x" * 100)
        client.flush()
        # Taken by the app: owed, under half a window (no WINDOW_UPDATE yet).
        wait_until(lambda: conn.owed.get(read) == 100, "the credit owed")
        client.conn.send_data(read, b"", end_stream=True)
        client.flush()
        assert client.response(read)[1] == b"done"
        wait_until(lambda: read not in conn.windows, "the window dropped")
        assert read not in conn.owed
        over = client.request("/started", "POST", open_body=True)
        client.until(h2.events.ResponseReceived, over)
        client.conn.send_data(over, b"x" * 1001)
        client.flush()
        client.until(h2.events.StreamReset, over)
        wait_until(lambda: over not in conn.windows, "the window dropped after a reset")
        assert over not in conn.owed
        assert list(conn.windows) == [busy]
        client.conn.send_data(busy, b"", end_stream=True)
        client.flush()
        assert client.response(busy)[1] == b"done"
        client.close()


def test_a_body_left_unread_is_credited_back_when_its_stream_is_done(serve: Serve) -> None:
    """The app answered without reading the body, whose stream the client has not ended: the
    bytes it never took are dropped with the request, and the stream's window gets them back
    (one WINDOW_UPDATE: more than half a window), so the client is not left stalled; so do
    the bytes it sends after that."""
    with serve(reads_or_not) as srv:
        client = H2Client(srv.port)
        early = client.request("/early", "POST", open_body=True)
        for _ in range(4):
            client.conn.send_data(early, b"x" * 10_000)
        client.flush()
        assert client.response(early)[1] == b"done"
        update = client.until(h2.events.WindowUpdated, early)
        assert update.delta == 40_000
        # More of the body after the request is done: dropped and credited at once.
        client.events.clear()
        for _ in range(4):
            client.conn.send_data(early, b"x" * 10_000)
        client.flush()
        assert client.until(h2.events.WindowUpdated, early).delta == 40_000
        client.close()
