"""A client's FIN is "no more requests", not "abort" (RFC 9112 §9.6); a reset is an abort.

A client that half-closes after its request (shutdown(SHUT_WR), as some proxies and one-shot
clients do) gets every answer it asked for, then the close. And when the server closes an idle
keep-alive connection (shutdown of a retiring worker, keep-alive timeout) it sends its FIN
first and drops what still comes for a moment: a request already on its way then meets a
clean close, which a client can retry, instead of a reset.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from tests.apps.core_apps import App, Probe, Receive, Scope, Send, read_body, respond
from tests.conftest import RunningServer
from tests.helpers import (
    Serve,
    Wire,
    request,
    statuses_of,
    until_closed,
    until_closed_cleanly,
    wait_until,
)


def held_app(probe: Probe, gate: threading.Semaphore) -> App:
    """Reads its body, reports ("start", path), waits for one release of `gate`, answers."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        probe.put(("start", scope["path"]))
        deadline = time.monotonic() + 20
        while not gate.acquire(blocking=False) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await respond(send, 200, b"%s %d" % (scope["path"].encode(), len(body)))

    return app


def server_saw_fin(srv: RunningServer) -> bool:
    state = srv.server.state
    assert state is not None
    return any(getattr(conn, "eof", False) for conn in list(state.connections))


@pytest.mark.parametrize(
    ("data", "paths"),
    [
        (request("/one"), ["/one"]),
        (request("/post", "POST", "Content-Length: 5\r\n", b"hello"), ["/post"]),
        (request("/a") + request("/b"), ["/a", "/b"]),
        (
            request("/a") + request("/b", "POST", "Transfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
            ["/a", "/b"],
        ),
    ],
    ids=["get", "post", "two-pipelined", "pipelined-chunked"],
)
def test_a_half_closed_client_gets_its_answers_then_the_close(
    serve: Serve, data: bytes, paths: list[str]
) -> None:
    probe, gate = Probe(), threading.Semaphore(0)
    with serve(held_app(probe, gate)) as srv, srv.connect() as sock:
        sock.sendall(data)
        assert probe.get() == ("start", paths[0])
        sock.shutdown(socket.SHUT_WR)
        for path in paths[1:]:
            # Reading is paused while a pipelined request waits: the FIN is read once the
            # last one runs.
            gate.release()
            assert probe.get() == ("start", path)
        # The last app answers only once the server has seen the FIN.
        wait_until(lambda: server_saw_fin(srv), "the server to see the FIN")
        gate.release()
        raw = until_closed(sock)
    assert statuses_of(raw) == [200] * len(paths), raw
    for path in paths:
        assert path.encode() in raw


def test_a_half_close_inside_a_body_is_an_abort(serve: Serve) -> None:
    """The body will never be complete: the app's receive() gets http.disconnect and the
    connection closes with no answer."""
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            probe.put((await receive())["type"])
            probe.put((await receive())["type"])

    with serve(app) as srv, srv.connect() as sock:
        sock.sendall(request("/", "POST", "Content-Length: 10\r\n", b"12345"))
        assert probe.get() == "http.request"
        sock.shutdown(socket.SHUT_WR)
        assert probe.get() == "http.disconnect"
        assert until_closed(sock) == b""


def test_a_half_close_after_a_partial_head_closes(serve: Serve) -> None:
    with serve(held_app(Probe(), threading.Semaphore(0))) as srv, srv.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost:")
        sock.shutdown(socket.SHUT_WR)
        assert until_closed(sock) == b""


def test_many_half_closed_requests_are_all_answered(serve: Serve) -> None:
    """The issue's shape: request, FIN, read (it failed 20 times out of 20)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await respond(send, 200, b"ok")

    with serve(app) as srv:
        for _ in range(20):
            with srv.connect() as sock:
                sock.sendall(request("/"))
                sock.shutdown(socket.SHUT_WR)
                assert statuses_of(until_closed(sock)) == [200]


def test_a_request_racing_the_shutdown_of_an_idle_connection_meets_no_reset(
    serve: Serve,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await respond(send, 200, b"ok")

    with serve(app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/"))
        assert wire.response().status == 200
        # Hold the server's loop so that the next request lands in its socket unread, then
        # let the shutdown run before that read: the request is in flight as the idle
        # connection closes. (The exit event wakes the server's task in the loop pass that
        # follows, ahead of the read callbacks of that pass.)
        held, go = threading.Event(), threading.Event()

        def hold_then_exit() -> None:
            held.set()
            go.wait(5)
            srv.server.handle_exit()

        srv.loop.call_soon_threadsafe(hold_then_exit)
        assert held.wait(5)
        sock.sendall(request("/late"))  # on loopback: in the server's receive queue now
        go.set()
        data = until_closed_cleanly(sock)
    # Dropped unanswered (the client may retry it), or read before the shutdown and answered
    # (uvloop may run that read first).
    assert data == b"" or statuses_of(data) == [200], data


def test_after_a_half_close_receive_reports_disconnect_but_the_answer_is_delivered(
    serve: Serve,
) -> None:
    """A FIN looks the same whether the client only stopped sending or left: an app that
    watches receive() for a disconnect (a long poll) is told, and what it still sends is
    delivered (a client that did leave makes send() fail at the next writes)."""
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await read_body(receive)
            probe.put("body read")
            probe.put((await receive())["type"])
            await respond(send, 200, b"still here")

    with serve(app) as srv, srv.connect() as sock:
        sock.sendall(request("/"))
        assert probe.get() == "body read"
        sock.shutdown(socket.SHUT_WR)
        assert probe.get() == "http.disconnect"
        raw = until_closed(sock)
    assert statuses_of(raw) == [200] and raw.endswith(b"still here"), raw
