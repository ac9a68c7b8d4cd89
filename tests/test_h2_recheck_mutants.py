"""Tests written for the h2.py mutants that survived when session 15 ran again, one at a time,
the mutants whose kills had come from mutmut's own runner (issue 16): the rapid-reset budget
(its exact size and its refill; test_http2.py's rapid-reset test checks the line that names
it) and what the graceful timeout cancels on an HTTP/2 connection. docs/testing.md lists
which mutant each one kills."""

from __future__ import annotations

import asyncio
import logging

import h2.errors
import h2.events
import pytest

from fastserve.protocols import h2 as h2_module
from fastserve.protocols.h2 import RESET_BURST, spend
from tests.apps.core_apps import Probe, Receive, Scope, Send
from tests.helpers import Serve, error_log
from tests.test_http2 import H2Client, close_clients, echo_app  # noqa: F401 (the fixture)
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
